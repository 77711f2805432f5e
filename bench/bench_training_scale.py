"""What mixed precision and ``torch.compile`` buy a Conv-TasNet training step on CPU.

One training step is what ``train.py`` runs per batch: forward, the uPIT SI-SNR loss,
backward, gradient clipping and an Adam update. The variants share initial weights and
the same mixtures:

- ``fp32``: the default (hand-written CPU kernels on, no compilation);
- ``fp32-plain``: the plain PyTorch layers (``cpu_kernels=False``);
- ``bf16`` (and ``fp16`` on request): ``--precision=bf16`` (``fp16``): the forward pass
  under autocast, as SpeechBrain's Brain runs it; the CPU kernels stand aside under
  autocast, the loss runs in fp32;
- ``bf16-products``: fp32 with the CPU kernels, but the TCN's 1x1 convolutions multiply
  in bf16 (``ConvTasNet(bf16_products=True)``, ``nnet.cpu_kernels.BF16PointwiseConv1d``):
  mixed precision only where it pays on a CPU with AMX;
- ``compiled``: the separator wrapped in ``torch.compile`` with its CPU kernels on, what
  ``compile: True`` trains (the kernels are autograd functions that Dynamo cannot trace:
  the graph breaks around each, and the pieces between them are compiled);
- ``compiled-plain``: ``torch.compile`` of the plain layers (one graph each way), which
  is what the kernels are up against.

Steps are interleaved across variants (load from other processes hits all alike) and
timed in CPU time of this process (``time.process_time``), so waiting for a loaded machine
does not count: with one thread that is the step's own work; with more it is the work of
all threads, and the wall time (also reported) shows what the threads bought. The median
is reported, with the ratio to ``fp32``. Compiling happens in untimed warm-up steps; their
wall time is reported.

    python bench/bench_training_scale.py                      # paper sizes, batch 1 x 3 s
    python bench/bench_training_scale.py --batch 4 --steps 3  # the paper's batch
    python bench/bench_training_scale.py --variants fp32,bf16 --threads 2
"""

import argparse
import copy
import os
import statistics
import sys
import time

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from spksep_modules.nnet.precision import native_bf16_cpu  # noqa: E402
from spksep_modules.losses import SeparationLoss  # noqa: E402
from spksep_modules.models.conv_tasnet import ConvTasNet  # noqa: E402
from spksep_modules.nnet.forms import as_form  # noqa: E402

VARIANTS = ("fp32", "fp32-plain", "bf16", "bf16-products", "fp16", "compiled", "compiled-plain")
DEFAULT_VARIANTS = ("fp32", "fp32-plain", "bf16", "bf16-products", "compiled", "compiled-plain")
LABELS = {
    "fp32": "fp32, eager, CPU kernels (default)",
    "fp32-plain": "fp32, eager, plain layers",
    "bf16": "bf16 autocast, eager (kernels stand aside)",
    "bf16-products": "fp32, CPU kernels, 1x1 convs' products in bf16 (bf16_products: True)",
    "fp16": "fp16 autocast + GradScaler, eager",
    "compiled": "fp32, torch.compile, CPU kernels on (compile: True)",
    "compiled-plain": "fp32, torch.compile, plain layers",
}
AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


def make_step(variant, model, mix, sources, max_grad_norm=5.0):
    """A closure running one training step of ``variant`` on a copy of ``model``.

    Example
    -------
    >>> model = ConvTasNet(N=16, L=8, B=8, H=16, P=3, X=2, R=1)
    >>> step = make_step("bf16", model, torch.randn(1, 800), torch.randn(1, 800, 2))
    >>> loss = step(); bool(torch.isfinite(loss))
    True
    """
    model = copy.deepcopy(model).train()
    as_form(model, *(["cpu_kernels"] if variant in ("fp32", "bf16-products", "compiled") else []),
            *(["bf16_products"] if variant == "bf16-products" else []))
    forward = torch.compile(model) if variant.startswith("compiled") else model
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = SeparationLoss()
    dtype = AUTOCAST.get(variant)
    scaler = torch.GradScaler("cpu", enabled=variant == "fp16")

    def step():
        with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = loss_fn(forward(mix), sources)["loss"]
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    return step


def time_variants(names, args):
    """``{variant: (median CPU seconds per step, median wall seconds per step, warm-up
    wall seconds)}``, steps interleaved across variants after ``args.warmup`` untimed steps
    each."""
    gen = torch.Generator().manual_seed(0)
    samples = int(args.seconds * args.sample_rate)
    sources = torch.randn(args.batch, samples, args.num_spks, generator=gen)
    mix = sources.sum(-1)
    torch.manual_seed(0)
    model = ConvTasNet(N=args.N, L=args.L, B=args.B, H=args.H, P=args.P, X=args.X, R=args.R,
                       num_spks=args.num_spks)
    steps, warmup = {}, {}
    for name in names:
        steps[name] = make_step(name, model, mix, sources)
        t0 = time.perf_counter()
        for _ in range(args.warmup):  # compiles forward and backward for compiled variants
            steps[name]()
        warmup[name] = time.perf_counter() - t0
    cpu, wall = {name: [] for name in names}, {name: [] for name in names}
    for _ in range(args.steps):
        for name in names:
            t0, w0 = time.process_time(), time.perf_counter()
            steps[name]()
            cpu[name].append(time.process_time() - t0)
            wall[name].append(time.perf_counter() - w0)
    return {name: (statistics.median(cpu[name]), statistics.median(wall[name]), warmup[name])
            for name in names}


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for key, default, what in [
        ("N", 512, "encoder filters"), ("L", 16, "filter length"),
        ("B", 128, "bottleneck channels"), ("H", 512, "hidden channels"),
        ("P", 3, "kernel size"), ("X", 8, "blocks per repeat"), ("R", 3, "repeats"),
    ]:
        p.add_argument(f"--{key}", type=int, default=default, help=f"{what} ({default})")
    p.add_argument("--num-spks", type=int, default=2)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--sample-rate", type=int, default=16000)
    p.add_argument("--steps", type=int, default=3, help="timed steps per variant")
    p.add_argument("--warmup", type=int, default=2,
                   help="untimed steps per variant (compilation happens here)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1)")
    p.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                   help=f"comma-separated subset of {','.join(VARIANTS)}")
    args = p.parse_args(argv)
    names = [n.strip() for n in args.variants.split(",") if n.strip()]
    bad = [n for n in names if n not in VARIANTS]
    if bad or not names:
        p.error(f"--variants: unknown {bad}, expected a subset of {','.join(VARIANTS)}")
    args.names = names
    return args


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    torch.set_num_threads(args.threads)
    results = time_variants(args.names, args)
    samples = int(args.seconds * args.sample_rate)
    print(
        f"Conv-TasNet training step (forward, SI-SNR loss, backward, clip, Adam), "
        f"N={args.N} L={args.L} B={args.B} H={args.H} P={args.P} X={args.X} R={args.R} "
        f"C={args.num_spks}, batch {args.batch} x {args.seconds:g} s ({samples} samples), "
        f"{torch.get_num_threads()} thread(s), CPU time, median of {args.steps} interleaved "
        f"steps; native bf16 on this CPU: {native_bf16_cpu()}\n"
    )
    print("| variant | CPU ms / step | speed-up (CPU time) | wall ms / step | speed-up (wall) "
          "| warm-up wall s |")
    print("|---|---|---|---|---|---|")
    ref_cpu, ref_wall, _ = results.get("fp32", next(iter(results.values())))
    for name in args.names:
        cpu, wall, warm = results[name]
        print(f"| {LABELS[name]} | {1000 * cpu:.0f} | {ref_cpu / cpu:.2f}x | {1000 * wall:.0f} | "
              f"{ref_wall / wall:.2f}x | {warm:.1f} |")


if __name__ == "__main__":
    main()
