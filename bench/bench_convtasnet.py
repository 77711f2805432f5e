"""Conv-TasNet training-step speed and peak memory: ours against SpeechBrain's.

Both models are built at the same sizes and fed the same mixtures. SpeechBrain's model is
wired as its LibriMix/WSJ0Mix Conv-TasNet recipe wires it: ``dual_path.Encoder`` ->
``conv_tasnet.MaskNet`` -> mask * encoding -> ``dual_path.Decoder`` per source. Ours is
timed as the paper defines it (skip path, biases), in the shape of SpeechBrain's MaskNet (no
skip path, no biases, same parameter count up to one PReLU weight: the strict
like-for-like comparison, and the recipe's default), with ``bf16_products: auto``, and
(``train.py``) as ``train.py`` runs it: SpeechBrain's shape, ``bf16_products: auto`` and
freed memory kept for reuse (``spksep_modules.allocator``, a process-wide setting, so that
row is timed in its own process after the others; SpeechBrain's recipe does not set it).

A step is forward + MSE loss + backward. Steps of the models are interleaved (so load
from other processes hits all of them alike) and the median is reported. Peak memory is
measured per model in a fresh subprocess: its peak resident set size (CPU) or peak
allocated CUDA memory.

    python bench/bench_convtasnet.py                      # paper config, batch 4 x 3 s
    python bench/bench_convtasnet.py --batch 1 --seconds 1 --steps 3
    python bench/bench_convtasnet.py --device cuda --bf16
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from spksep_modules.models.conv_tasnet import ConvTasNet  # noqa: E402

MODELS = ("speechbrain", "ours", "ours-sb-shape", "ours+bf16auto", "train.py")
LABELS = {
    "speechbrain": "SpeechBrain MaskNet + dual_path Encoder/Decoder",
    "ours": "spksep ConvTasNet (paper shape: skips, biases)",
    "ours-sb-shape": "spksep ConvTasNet (SpeechBrain's shape: no skips, no biases)",
    "ours+bf16auto": "spksep ConvTasNet, paper shape, bf16_products: auto (bf16 products where native)",
    "train.py": "spksep ConvTasNet as train.py runs it (SpeechBrain's shape, bf16 auto, freed memory kept)",
}
OWN_PROCESS = ("train.py",)  # process-wide settings: timed in a fresh interpreter


class SpeechBrainConvTasNet(nn.Module):
    """SpeechBrain's Conv-TasNet, wired as in its LibriMix separation recipe.

    Shapes: ``[batch, time] -> [batch, time, C]``.
    """

    def __init__(self, N, L, B, H, P, X, R, num_spks):
        super().__init__()
        from speechbrain.lobes.models.conv_tasnet import MaskNet
        from speechbrain.lobes.models.dual_path import Decoder, Encoder

        self.num_spks = num_spks
        self.encoder = Encoder(kernel_size=L, out_channels=N)
        self.masknet = MaskNet(
            N, B, H, P, X, R, num_spks, norm_type="gLN", causal=False,
            mask_nonlinear="relu",
        )
        self.decoder = Decoder(
            in_channels=N, out_channels=1, kernel_size=L, stride=L // 2, bias=False
        )

    def forward(self, mix):
        mix_w = self.encoder(mix)  # [batch, N, frames]
        est_mask = self.masknet(mix_w)  # [C, batch, N, frames]
        sep_h = torch.stack([mix_w] * self.num_spks) * est_mask
        est = torch.cat(
            [self.decoder(sep_h[i]).unsqueeze(-1) for i in range(self.num_spks)], dim=-1
        )
        # The recipe's length fix: the encoder drops the tail that does not fill a frame.
        T, T_est = mix.shape[1], est.shape[1]
        if T > T_est:
            return F.pad(est, (0, 0, 0, T - T_est))
        return est[:, :T, :]


def build(name, args):
    """One of MODELS at the sizes in ``args``."""
    sizes = dict(N=args.N, L=args.L, B=args.B, H=args.H, P=args.P, X=args.X, R=args.R)
    if name == "speechbrain":
        return SpeechBrainConvTasNet(num_spks=args.num_spks, **sizes)
    if name == "ours":
        return ConvTasNet(num_spks=args.num_spks, checkpoint=args.checkpoint, **sizes)
    if name == "ours+bf16auto":
        return ConvTasNet(num_spks=args.num_spks, checkpoint=args.checkpoint,
                          bf16_products="auto", **sizes)
    if name == "ours-sb-shape":
        return ConvTasNet(
            num_spks=args.num_spks, skip=False, bias=False,
            checkpoint=args.checkpoint, **sizes,
        )
    if name == "train.py":  # hparams/separators/convtasnet.yaml's defaults
        return ConvTasNet(num_spks=args.num_spks, skip=False, bias=False, bf16_products="auto",
                          checkpoint=args.checkpoint, **sizes)
    raise ValueError(f"unknown model {name!r}")


def make_step(model, args):
    """A closure running one training step (forward, MSE loss, backward) of ``model``."""
    device = torch.device(args.device)
    gen = torch.Generator().manual_seed(0)
    samples = int(args.seconds * args.sample_rate)
    mix = torch.randn(args.batch, samples, generator=gen).to(device)
    target = torch.randn(args.batch, samples, args.num_spks, generator=gen).to(device)
    model.to(device).train()
    amp = args.bf16 and device.type == "cuda"

    def step():
        model.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            est = model(mix)
        loss = F.mse_loss(est.float(), target)
        loss.backward()
        if device.type == "cuda":
            torch.cuda.synchronize()

    return step


def time_models(names, args):
    """Median seconds per step of each model, steps interleaved across models."""
    steps = {}
    for name in names:
        torch.manual_seed(0)
        steps[name] = make_step(build(name, args), args)
    for _ in range(args.warmup):
        for name in names:
            steps[name]()
    times = {name: [] for name in names}
    for _ in range(args.steps):
        for name in names:
            t0 = time.perf_counter()
            steps[name]()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def process_settings(name):
    """What ``train.py`` sets for the whole process before it trains (``train.py`` row)."""
    if name in OWN_PROCESS:
        from spksep_modules.allocator import keep_freed_memory

        keep_freed_memory()


def time_in_own_process(name, argv):
    """``time_models([name])`` in a fresh interpreter with ``name``'s process settings."""
    cmd = [sys.executable, os.path.abspath(__file__), *argv, "--_time-of", name]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["seconds"]


def measure_memory_here(name, args):
    """Peak memory in MB of a process that builds ``name`` and runs one warm step."""
    process_settings(name)
    torch.manual_seed(0)
    model = build(name, args)
    step = make_step(model, args)
    if args.device == "cuda":
        step()
        torch.cuda.reset_peak_memory_stats()
        step()
        return torch.cuda.max_memory_allocated() / 2**20
    step()
    step()
    return peak_rss_mb()


def peak_rss_mb():
    """This process's peak resident set size in MB.

    Read from /proc (VmHWM) where there is one: ``getrusage``'s ``ru_maxrss`` carries the
    parent's peak over ``fork`` + ``exec``, so a subprocess would report at least the
    size of the (large) benchmarking parent.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale / 1024


def measure_memory(name, argv):
    """Run ``measure_memory_here`` in a fresh interpreter so peaks do not mix."""
    cmd = [sys.executable, os.path.abspath(__file__), *argv, "--_memory-of", name]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_mb"]


def count_params(model):
    return sum(p.numel() for p in model.parameters())


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for key, default, what in [
        ("N", 512, "encoder filters"), ("L", 16, "filter length"),
        ("B", 128, "bottleneck channels"), ("H", 512, "hidden channels"),
        ("P", 3, "kernel size"), ("X", 8, "blocks per repeat"), ("R", 3, "repeats"),
    ]:
        p.add_argument(f"--{key}", type=int, default=default, help=f"{what} ({default})")
    p.add_argument("--num-spks", type=int, default=2)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--sample-rate", type=int, default=16000)
    p.add_argument("--steps", type=int, default=5, help="timed steps per model")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per model")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (cuda only)")
    p.add_argument("--checkpoint", action="store_true",
                   help="our model with activation checkpointing")
    p.add_argument("--models", default=",".join(MODELS),
                   help=f"comma-separated subset of {','.join(MODELS)}")
    p.add_argument("--no-memory", action="store_true", help="skip the memory runs")
    p.add_argument("--_memory-of", dest="memory_of", default=None, help=argparse.SUPPRESS)
    p.add_argument("--_time-of", dest="time_of", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device available")
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    bad = [n for n in names if n not in MODELS]
    if bad or not names:
        p.error(f"--models: unknown {bad}, expected a subset of {','.join(MODELS)}")
    args.names = names
    return args


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_of:
        print(json.dumps({"peak_mb": measure_memory_here(args.memory_of, args)}))
        return
    if args.time_of:
        process_settings(args.time_of)
        print(json.dumps({"seconds": time_models([args.time_of], args)[args.time_of]}))
        return

    names = args.names
    params = {n: count_params(build(n, args)) for n in names}
    secs = time_models([n for n in names if n not in OWN_PROCESS], args)
    secs.update({n: time_in_own_process(n, argv) for n in names if n in OWN_PROCESS})
    peak = {} if args.no_memory else {n: measure_memory(n, argv) for n in names}

    samples = int(args.seconds * args.sample_rate)
    print(
        f"Conv-TasNet training step (forward + backward), N={args.N} L={args.L} "
        f"B={args.B} H={args.H} P={args.P} X={args.X} R={args.R} C={args.num_spks}, "
        f"batch {args.batch} x {args.seconds:g} s ({samples} samples), "
        f"device {args.device}{' bf16' if args.bf16 else ''}, "
        f"{torch.get_num_threads()} threads, median of {args.steps} steps\n"
    )
    mem_col = "peak GPU alloc MB" if args.device == "cuda" else "peak RSS MB"
    print(f"| model | params | ms/step | {mem_col} | SB/this time | SB/this memory |")
    print("|---|---|---|---|---|---|")
    ref = "speechbrain" if "speechbrain" in names else None
    for n in names:
        label = LABELS[n] + (", checkpointing" if args.checkpoint and n != "speechbrain" else "")
        ms = 1000 * secs[n]
        mb = f"{peak[n]:.0f}" if n in peak else "-"
        t_ratio = f"{secs[ref] / secs[n]:.2f}x" if ref else "-"
        m_ratio = f"{peak[ref] / peak[n]:.2f}x" if ref and peak else "-"
        print(f"| {label} | {params[n]:,} | {ms:.0f} | {mb} | {t_ratio} | {m_ratio} |")


if __name__ == "__main__":
    main()
