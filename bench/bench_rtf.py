"""Inference real-time factor (seconds of compute per second of audio) at the default sizes.

Compared in one run: SpeechBrain's own Conv-TasNet (same sizes), ours, and the whole
speaker-conditioned pipeline (our Conv-TasNet + speaker network + FiLM'd stack) with
RawNet2 (the authors' sizes; random weights, the cost does not depend on them) and with
GE2E (packaged weights). Target for the conditioned pipeline: RTF <= 0.25 on 2 CPU cores.
"""

import argparse
import statistics
import time

import torch

from spksep_modules.features import Frozen
from spksep_modules.features.ge2e import load_ge2e
from spksep_modules.models import ConditionedSeparator, ConvTasNet, RawNet2

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
def rtf(model, seconds, repeats, rate=16000):
    mix = torch.randn(1, int(seconds * rate))
    model(mix)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(mix)
        times.append(time.perf_counter() - start)
    return statistics.median(times) / seconds


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    ours = ConvTasNet(**SIZES).eval()
    models = {
        "SpeechBrain Conv-TasNet": SpeechBrainConvTasNet(**SIZES).eval(),
        "Conv-TasNet (ours)": ours,
        "Conditioned, RawNet2 (default)": ConditionedSeparator(ours, Frozen(RawNet2(), 16000, 16000)).eval(),
        "Conditioned, GE2E": ConditionedSeparator(ours, Frozen(load_ge2e(), 16000, 16000)).eval(),
    }
    print(f"Inference real-time factor, {args.seconds} s of 16 kHz audio, "
          f"{args.threads} threads, median of {args.repeats}\n")
    print("| model | RTF | vs SpeechBrain Conv-TasNet |")
    print("|---|---|---|")
    reference = None
    for name, model in models.items():
        value = rtf(model, args.seconds, args.repeats)
        reference = reference or value
        print(f"| {name} | {value:.3f} | {value / reference:.2f} |", flush=True)


if __name__ == "__main__":
    main()
