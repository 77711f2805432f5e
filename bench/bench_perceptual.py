"""What the perceptual loss costs, against what its representation network alone needs.

For each representation (wav2vec 1.0 at the large config, GE2E with its packaged weights)
three things are timed, interleaved and repeated (median):

- baseline: a Conv-TasNet training step (forward + backward, uPIT SI-SNR loss);
- perceptual term: the weighted-sum perceptual loss, forward + backward down to the
  estimates (what it adds to a step, measured alone so the separator's noise stays out);
- network alone: the representation's forward + backward on the B*C estimates plus its
  forward (no grad) on the B*C clean sources: the least any implementation must spend.

Printed: ``term / network alone`` (target <= 1.15: the loss adds little beyond the
network itself) and ``(baseline + term) / baseline``, the step-time overhead of the model.
Weights of wav2vec 1.0 are random (its cost does not depend on them).
"""

import argparse
import statistics
import time

import torch

from spksep_modules.features.wav2vec1 import Wav2Vec1
from spksep_modules.losses import WeightedSum
from spksep_modules.losses.pit import pit_si_snr
from spksep_modules.models import ConvTasNet
from spksep_modules.nnet.frozen import Frozen
from spksep_modules.speakers.ge2e import load_ge2e


def timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench(name, rep, sizes, batch, seconds, steps, rate=16000):
    torch.manual_seed(0)
    model = ConvTasNet(**sizes)
    term = WeightedSum(rep)
    mix = torch.randn(batch, int(seconds * rate))
    ref = torch.randn(batch, mix.shape[1], 2)

    def baseline():
        loss, _, _ = pit_si_snr(model(mix), ref)
        loss.mean().backward()
        model.zero_grad(set_to_none=True)

    est = ref.detach().flip(-1).clone().requires_grad_(True)  # estimates, PIT-aligned

    def perceptual():
        term(est, ref)["perceptual"].backward()
        est.grad = None

    def network_alone():
        est = ref.detach().transpose(1, 2).reshape(-1, mix.shape[1]).clone().requires_grad_(True)
        rep(est).sum().backward()
        with torch.no_grad():
            rep(ref.transpose(1, 2).reshape(-1, mix.shape[1]))

    for fn in (baseline, perceptual, network_alone):  # warm-up
        fn()
    times = {"baseline": [], "term": [], "network": []}
    for _ in range(steps):
        times["baseline"].append(timed(baseline))
        for _ in range(3):  # the short ones get more samples
            times["term"].append(timed(perceptual))
            times["network"].append(timed(network_alone))
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med["term"] / med["network"]
    print(
        f"| {name} | {med['baseline'] * 1e3:.0f} | {med['term'] * 1e3:.0f} | "
        f"{med['network'] * 1e3:.0f} | {ratio:.2f} | "
        f"{(med['baseline'] + med['term']) / med['baseline']:.2f} |",
        flush=True,
    )
    return ratio


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--small", action="store_true", help="small Conv-TasNet (quick check)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    sizes = dict(N=512, L=16, B=128, H=512, P=3, X=8, R=3)
    if args.small:
        sizes = dict(N=64, L=16, B=32, H=64, P=3, X=4, R=1)
    print(f"Perceptual loss cost, batch {args.batch} x {args.seconds} s, Conv-TasNet {sizes}, "
          f"{args.threads} threads, median of {args.steps} steps (ms)\n")
    print("| representation | baseline step | perceptual term | network alone | "
          "term / network | step overhead |")
    print("|---|---|---|---|---|---|")
    bench("GE2E (packaged weights)", Frozen(load_ge2e(), 16000, 16000), sizes,
          args.batch, args.seconds, args.steps)
    bench("wav2vec 1.0 large (c)", Frozen(Wav2Vec1(), 16000, 16000), sizes,
          args.batch, args.seconds, args.steps)


if __name__ == "__main__":
    main()
