"""Inference real-time factor (seconds of compute per second of audio) at the default sizes.

Compared in one run, interleaved: SpeechBrain's own Conv-TasNet (same sizes), ours, and the
whole speaker-conditioned pipeline (our Conv-TasNet + speaker network + FiLM'd stack) with
RawNet2 (the authors' sizes; random weights, the cost does not depend on them) and with
GE2E (packaged weights), each in fp32 and under bf16 autocast (``spksep separate
--precision bf16``). Target for the conditioned pipeline: RTF <= 0.25 on 2 CPU cores.
"""

import argparse
import statistics
import time

import torch

from spksep_modules.allocator import keep_freed_memory
from spksep_modules.models import ConditionedSeparator, ConvTasNet, fuse_for_inference
from spksep_modules.nnet.frozen import Frozen
from spksep_modules.speakers.ge2e import load_ge2e
from spksep_modules.speakers.rawnet2 import RawNet2

SIZES = dict(N=512, L=16, B=128, H=512, P=3, X=8, R=3)


class SpeechBrainConvTasNet(torch.nn.Module):
    """SpeechBrain's encoder / MaskNet / decoder wired as in its Conv-TasNet recipes."""

    def __init__(self, N, L, B, H, P, X, R, num_spks=2):
        super().__init__()
        from speechbrain.lobes.models.conv_tasnet import MaskNet
        from speechbrain.lobes.models.dual_path import Decoder, Encoder

        self.num_spks = num_spks
        self.encoder = Encoder(kernel_size=L, out_channels=N)
        self.masknet = MaskNet(N=N, B=B, H=H, P=P, X=X, R=R, C=num_spks,
                               norm_type="gLN", causal=False, mask_nonlinear="relu")
        self.decoder = Decoder(in_channels=N, out_channels=1, kernel_size=L, stride=L // 2, bias=False)

    def forward(self, mix):
        enc = self.encoder(mix)
        masks = self.masknet(enc)
        est = torch.stack([self.decoder(enc * masks[i]) for i in range(self.num_spks)], dim=-1)
        return est[:, : mix.shape[1]]


@torch.no_grad()
def run_once(model, mix, precision):
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        start = time.perf_counter()
        model(mix)
        return time.perf_counter() - start


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precisions", default="fp32,bf16")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    keep_freed_memory()  # as spksep separate does
    torch.manual_seed(0)
    ours = ConvTasNet(**SIZES).eval()
    models = {
        "SpeechBrain Conv-TasNet": SpeechBrainConvTasNet(**SIZES).eval(),
        # Ours run their inference form, as spksep separate runs them.
        "Conv-TasNet (ours)": fuse_for_inference(ours),
        "Conditioned, RawNet2 (default)": fuse_for_inference(
            ConditionedSeparator(ours, Frozen(RawNet2(), 16000, 16000)).eval()),
        "Conditioned, GE2E": fuse_for_inference(
            ConditionedSeparator(ours, Frozen(load_ge2e(), 16000, 16000)).eval()),
    }
    runs = [(name, p) for p in args.precisions.split(",") for name in models]
    mix = torch.randn(1, int(args.seconds * 16000))
    times = {run: [] for run in runs}
    for name, precision in runs:  # warm-up
        run_once(models[name], mix, precision)
    for _ in range(args.repeats):  # interleaved, so that load changes hit every model alike
        for name, precision in runs:
            times[name, precision].append(run_once(models[name], mix, precision))

    print(f"Inference real-time factor, {args.seconds} s of 16 kHz audio, "
          f"{args.threads} threads, median of {args.repeats}\n")
    print("| model | precision | RTF | vs SpeechBrain Conv-TasNet, fp32 |")
    print("|---|---|---|---|")
    reference = None
    for name, precision in runs:
        value = statistics.median(times[name, precision]) / args.seconds
        reference = reference or value
        print(f"| {name} | {precision} | {value:.3f} | {value / reference:.2f} |", flush=True)


if __name__ == "__main__":
    main()
