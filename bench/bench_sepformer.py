"""SepFormer training-step speed: ours against SpeechBrain's own recipe model.

Both run SpeechBrain's dual-path modules at the same sizes on the same mixtures, with the
same weights. SpeechBrain's model is wired as its LibriMix separation recipe wires it
(``train.py``'s ``compute_forward``: ``dual_path.Encoder`` -> ``Dual_Path_Model`` masks ->
mask * encoding -> ``dual_path.Decoder`` per source, length fixed) and trained with its
own PIT loss (``speechbrain.nnet.losses.get_si_snr_with_pitwrapper``); ours is
``spksep_modules.models.SepFormer`` with ``spksep_modules.losses.pit_si_snr``, what
``train.py hparams/sepformer.yaml`` trains. The time ratio shows what our loop around
SpeechBrain's mask network costs (encoder framing, overlap-add decoder, PIT loss).

A step is forward + uPIT SI-SNR loss + backward; steps of the two models are interleaved
(load from other processes hits both alike) and the median is reported. Defaults: the
recipe's model sizes (N=256, 2 dual-path blocks of 8 + 8 transformer layers, 8 heads,
1024 feed-forward units, chunks of 250), batch 1 x 2 s at the recipe's 8 kHz, so it runs
on 2 CPU cores in about two minutes.

    python bench/bench_sepformer.py                 # recipe sizes
    python bench/bench_sepformer.py --small         # a quick check (tiny model)
    python bench/bench_sepformer.py --device cuda --batch 2 --seconds 4 --sample-rate 16000
"""

import argparse
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from spksep_modules.losses import pit_si_snr  # noqa: E402
from spksep_modules.models import SepFormer  # noqa: E402

RECIPE = dict(N=256, kernel_size=16, num_layers=2, K=250, intra_layers=8, inter_layers=8,
              nhead=8, d_ffn=1024)
SMALL = dict(N=64, kernel_size=16, num_layers=1, K=50, intra_layers=1, inter_layers=1,
             nhead=4, d_ffn=128)
LABELS = {
    "speechbrain": "SpeechBrain recipe (Encoder + Dual_Path_Model + Decoder, its PIT loss)",
    "ours": "spksep SepFormer (pit_si_snr)",
}


class SpeechBrainRecipeSepFormer(torch.nn.Module):
    """SpeechBrain's SepFormer as its separation recipe builds and runs it, holding the
    weights of ``ours``: ``[batch, time] -> [batch, time, C]``."""

    def __init__(self, ours: SepFormer):
        super().__init__()
        import copy

        from speechbrain.lobes.models.dual_path import Decoder, Encoder

        c = ours.config
        self.num_spks = c["num_spks"]
        self.encoder = Encoder(kernel_size=c["kernel_size"], out_channels=c["N"])
        self.encoder.conv1d.load_state_dict(ours.encoder.state_dict())
        self.masknet = copy.deepcopy(ours.masknet)
        self.decoder = Decoder(in_channels=c["N"], out_channels=1, kernel_size=c["kernel_size"],
                               stride=c["kernel_size"] // 2, bias=False)
        self.decoder.load_state_dict(ours.decoder.state_dict())

    def forward(self, mix):
        mix_w = self.encoder(mix)
        est_mask = self.masknet(mix_w)
        sep_h = torch.stack([mix_w] * self.num_spks) * est_mask
        est = torch.cat(
            [self.decoder(sep_h[i]).unsqueeze(-1) for i in range(self.num_spks)], dim=-1)
        T, T_est = mix.shape[1], est.shape[1]
        if T > T_est:
            return F.pad(est, (0, 0, 0, T - T_est))
        return est[:, :T, :]


def build(args):
    """``{"speechbrain": (model, loss), "ours": (model, loss)}`` with equal weights."""
    from speechbrain.nnet.losses import get_si_snr_with_pitwrapper

    torch.manual_seed(0)
    ours = SepFormer(num_spks=args.num_spks, **args.sizes)
    theirs = SpeechBrainRecipeSepFormer(ours)

    def our_loss(est, ref):
        return pit_si_snr(est, ref)[0].mean()

    def their_loss(est, ref):
        return get_si_snr_with_pitwrapper(ref, est).mean()

    return {"speechbrain": (theirs, their_loss), "ours": (ours, our_loss)}


def make_step(model, loss_fn, args):
    """A closure running one training step of ``model``; returns its loss."""
    device = torch.device(args.device)
    gen = torch.Generator().manual_seed(0)
    samples = int(args.seconds * args.sample_rate)
    sources = torch.randn(args.batch, samples, args.num_spks, generator=gen).to(device)
    mix = sources.sum(-1)
    model.to(device).train()

    def step():
        model.zero_grad(set_to_none=True)
        loss = loss_fn(model(mix), sources)
        loss.backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return float(loss.detach())

    return step


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--small", action="store_true", help=f"tiny sizes {SMALL}")
    for key, default in RECIPE.items():
        p.add_argument(f"--{key}", type=int, default=None, help=f"(recipe: {default})")
    p.add_argument("--num-spks", type=int, default=2)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("--sample-rate", type=int, default=8000, help="8000: the recipe's data")
    p.add_argument("--steps", type=int, default=2, help="timed steps per model")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per model")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device available")
    args.sizes = dict(SMALL if args.small else RECIPE)
    for key in RECIPE:
        if getattr(args, key) is not None:
            args.sizes[key] = getattr(args, key)
    return args


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    models = build(args)
    names = list(models)
    steps = {n: make_step(*models[n], args) for n in names}
    losses = {}
    for _ in range(args.warmup):
        for n in names:
            losses[n] = steps[n]()
    times = {n: [] for n in names}
    for _ in range(args.steps):
        for n in names:
            t0 = time.perf_counter()
            steps[n]()
            times[n].append(time.perf_counter() - t0)
    secs = {n: statistics.median(t) for n, t in times.items()}
    params = {n: sum(p.numel() for p in models[n][0].parameters()) for n in names}

    samples = int(args.seconds * args.sample_rate)
    sizes = " ".join(f"{k}={v}" for k, v in args.sizes.items())
    print(
        f"SepFormer training step (forward + uPIT SI-SNR + backward), {sizes} "
        f"C={args.num_spks}, batch {args.batch} x {args.seconds:g} s at {args.sample_rate} Hz "
        f"({samples} samples), device {args.device}, {torch.get_num_threads()} threads, "
        f"median of {args.steps} steps; first-step losses "
        + ", ".join(f"{n} {losses[n]:.4f}" for n in names) + " (same weights, same mixtures)\n"
    )
    print("| model | params | ms/step | SB/this time |")
    print("|---|---|---|---|")
    for n in names:
        print(f"| {LABELS[n]} | {params[n]:,} | {1000 * secs[n]:.0f} | "
              f"{secs['speechbrain'] / secs[n]:.2f}x |")


if __name__ == "__main__":
    main()
