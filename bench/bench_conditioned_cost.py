"""Where a conditioned training step spends its time: the frozen basic model's forward
pass and the speaker embeddings of its estimates (the same every epoch for the same
segment, when K = 1) against the whole step (forward, backward, optimiser).

    python bench/bench_conditioned_cost.py                 # paper sizes, batch 2 x 3 s
    python bench/bench_conditioned_cost.py --speaker_net=ge2e --batch=4
"""

import argparse
import statistics
import time

import torch

from spksep_modules.losses import SeparationLoss
from spksep_modules.models import ConditionedSeparator, ConvTasNet
from spksep_modules.nnet.frozen import Frozen
from spksep_modules.speakers.ge2e import load_ge2e
from spksep_modules.speakers.rawnet2 import RawNet2

SIZES = dict(N=512, L=16, B=128, H=512, P=3, X=8, R=3)


def timed(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--speaker_net", default="rawnet2", choices=["rawnet2", "ge2e"])
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    net = RawNet2() if args.speaker_net == "rawnet2" else load_ge2e()
    model = ConditionedSeparator(ConvTasNet(**SIZES), Frozen(net, 16000, 16000), residual=True)
    model.train()
    loss_fn = SeparationLoss()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    mix = torch.randn(args.batch, int(args.seconds * 16000))
    sources = torch.randn(args.batch, mix.shape[1], 2)

    def step():
        loss_fn(model(mix), sources)["loss"].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def basic():
        model.separate_basic(mix)

    def basic_and_embeddings():
        model.embed(model.separate_basic(mix))

    step()  # warm-up
    t_step = timed(step, args.steps)
    t_basic = timed(basic, args.steps)
    t_both = timed(basic_and_embeddings, args.steps)
    print(f"Conditioned training step, paper-size Conv-TasNet, {args.speaker_net}, batch "
          f"{args.batch} x {args.seconds} s, {args.threads} threads, median of {args.steps}\n")
    print("| part | seconds | share of the step |")
    print("|---|---|---|")
    for name, value in [("whole step", t_step), ("basic model forward", t_basic),
                        ("basic model + embeddings (K = 1)", t_both)]:
        print(f"| {name} | {value:.2f} | {value / t_step:.0%} |", flush=True)


if __name__ == "__main__":
    main()
