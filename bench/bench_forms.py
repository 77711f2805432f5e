"""Does each layer form pay on this CPU? Every form of ``nnet.forms`` against the plain layers.

For the small Conv-TasNet of the time-to-quality runs (N128 L16 B64 H128 P3 X6 R2) and the
paper's sizes, one thread:

* training step (forward, SI-SNR-like loss, backward) of the plain layers, the
  ``cpu_kernels`` form with its PyTorch kernels and with the compiled ones (``nnet.native``,
  where they build), and ``cpu_kernels`` + ``bf16_products``;
* separation (no autograd, one 4 s mixture) of the plain layers, ``cpu_kernels`` (both
  kernels) and the ``inference`` form (gLN folded).

Then the process-wide settings, each run in fresh processes (they cannot be undone in one):

* the allocator: glibc's default against ``allocator.keep_freed_memory`` (freed
  large blocks kept for reuse), for the training step (``cpu_kernels``, as ``train.py``
  runs it) and the separation (``inference`` form, as ``spksep separate`` runs it);
* the thread count: one thread against two, wall-clock and CPU time (two threads finish a
  step sooner but spend more CPU on it: what two runs side by side on two cores lose).

Each variant's steps are interleaved with the others' (so load from other processes hits
them alike) and timed on this thread's CPU clock; the table gives the median and the ratio
to the plain layers (below 1: the form pays). ``bench/bench.py --parts bench_forms.py``
runs it under the machine's full instruction set and under AVX2 limits, with the CPU's
model and flags printed above each table.

    python bench/bench_forms.py --steps 5
"""

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from spksep_modules.models import ConvTasNet  # noqa: E402
from spksep_modules.nnet import native  # noqa: E402
from spksep_modules.nnet.forms import as_form  # noqa: E402

SIZES = {
    "small": dict(N=128, L=16, B=64, H=128, P=3, X=6, R=2),
    "paper": dict(N=512, L=16, B=128, H=512, P=3, X=8, R=3),
}
# The recipe's mask-network shape (hparams/separators/convtasnet.yaml: SpeechBrain's).
SHAPE = dict(skip=False, bias=False)
# "cpu_kernels" runs the compiled kernels where they build (nnet.native); the row marked
# "PyTorch kernels" runs the same form with them off (what a machine without a compiler gets).
PYTORCH_KERNELS = "cpu_kernels, PyTorch kernels"
TRAIN = {"plain": (), PYTORCH_KERNELS: ("cpu_kernels",), "cpu_kernels": ("cpu_kernels",),
         "cpu_kernels+bf16_products": ("cpu_kernels", "bf16_products")}
INFER = {"plain": (), PYTORCH_KERNELS: ("cpu_kernels",), "cpu_kernels": ("cpu_kernels",),
         "inference": ("inference",), "cpu_kernels+inference": ("cpu_kernels", "inference")}


def timed(fn, reps):
    start = time.thread_time()
    for _ in range(reps):
        fn()
    return (time.thread_time() - start) / reps


def kernels_for(name):
    """Turns the compiled kernels off for the "PyTorch kernels" row (the others run them)."""
    return native.disabled() if name == PYTORCH_KERNELS else contextlib.nullcontext()


def train_step(model, mix, sources):
    est = model(mix)
    loss = -(est * sources).sum() / (est.norm() * sources.norm() + 1e-8)
    loss.backward()


def measure(size, batch, seconds, steps, rate=16000):
    torch.manual_seed(0)
    model = ConvTasNet(**SIZES[size], **SHAPE, cpu_kernels=False)
    mix = torch.randn(batch, int(seconds * rate))
    sources = torch.randn(batch, mix.shape[1], 2)
    long_mix = torch.randn(1, 4 * rate)
    rows = []
    train = {name: [] for name in TRAIN}
    infer = {name: [] for name in INFER}
    for _ in range(steps + 1):  # the first round warms up
        for name, forms in TRAIN.items():
            as_form(model, *forms)
            with kernels_for(name):
                train[name].append(timed(lambda: train_step(model, mix, sources), 1))
            model.zero_grad(set_to_none=True)
        for name, forms in INFER.items():
            view = as_form(model, *forms)
            with torch.no_grad(), kernels_for(name):
                infer[name].append(timed(lambda: view(long_mix), 1))
    as_form(model)
    for kind, table in (("training step", train), ("separation, 4 s", infer)):
        base = statistics.median(table["plain"][1:])
        for name, times in table.items():
            t = statistics.median(times[1:])
            rows.append((size, kind, name, t * 1000, t / base))
    return rows


# Process-wide settings: (name, keep_freed_memory, threads), each timed for both kinds of
# work; the first is what the rows are divided by.
SETTINGS = [("glibc default, 1 thread", False, 1), ("malloc tuning, 1 thread", True, 1),
            ("glibc default, 2 threads", False, 2)]
WORK = ("training step", "separation, 4 s")


def one_process(what, size, malloc, threads, batch, seconds, reps):
    """In a fresh process: (wall ms, CPU ms) medians of ``reps`` training steps
    (``cpu_kernels``) or separations (``inference`` form), after one warm-up."""
    if malloc:
        from spksep_modules.allocator import keep_freed_memory

        if not keep_freed_memory():
            raise SystemExit("malloc tuning is not available here (glibc only)")
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = ConvTasNet(**SIZES[size], **SHAPE)  # cpu_kernels on, as train.py builds it
    if what == "training step":
        mix = torch.randn(batch, int(seconds * 16000))
        sources = torch.randn(batch, mix.shape[1], 2)

        def run():
            train_step(model, mix, sources)
            model.zero_grad(set_to_none=True)
    else:
        view, long_mix = as_form(model, "inference"), torch.randn(1, 4 * 16000)

        def run():
            with torch.no_grad():
                view(long_mix)
    walls, cpus = [], []
    for i in range(reps + 1):
        wall, cpu = time.perf_counter(), time.process_time()
        run()
        if i:  # the first is the warm-up
            walls.append(time.perf_counter() - wall)
            cpus.append(time.process_time() - cpu)
    return 1000 * statistics.median(walls), 1000 * statistics.median(cpus)


def measure_settings(size, batch, seconds, rounds, reps=3):
    """Rows for SETTINGS: each setting in its own process, the processes interleaved over
    ``rounds`` so that load from other programs hits them alike."""
    rows = []
    for what in WORK:
        times = {name: [] for name, _, _ in SETTINGS}
        for _ in range(rounds):
            for name, malloc, threads in SETTINGS:
                out = subprocess.run(
                    [sys.executable, os.path.abspath(__file__), "--_one", json.dumps(
                        [what, size, malloc, threads, batch, seconds, reps])],
                    check=True, capture_output=True, text=True).stdout
                times[name].append(json.loads(out.strip().splitlines()[-1]))
        base_wall = statistics.median(w for w, _ in times[SETTINGS[0][0]])
        base_cpu = statistics.median(c for _, c in times[SETTINGS[0][0]])
        for name, _, _ in SETTINGS:
            wall = statistics.median(w for w, _ in times[name])
            cpu = statistics.median(c for _, c in times[name])
            rows.append((size, what, name, wall, wall / base_wall, cpu, cpu / base_cpu))
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sizes", nargs="+", default=["small"], choices=list(SIZES))
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seconds", type=float, default=2.0, help="training segment (2 s)")
    p.add_argument("--steps", type=int, default=5, help="timed rounds (5)")
    p.add_argument("--no-settings", action="store_true", help="only the layer forms")
    p.add_argument("--_one", default=None, help=argparse.SUPPRESS)  # one settings process
    args = p.parse_args(argv)
    if args._one:
        print(json.dumps(one_process(*json.loads(args._one))))
        return
    torch.set_num_threads(1)
    print(f"| config | what | form | ms (CPU, median) | / plain |\n|---|---|---|---|---|")
    for size in args.sizes:
        for row in measure(size, args.batch, args.seconds, args.steps):
            print("| %s | %s | %s | %.1f | %.2f |" % row, flush=True)
    if args.no_settings:
        return
    print("\n| config | what | process setting | wall ms | / first | CPU ms | / first |\n"
          "|---|---|---|---|---|---|---|")
    for size in args.sizes:
        for row in measure_settings(size, args.batch, args.seconds, max(2, args.steps // 2)):
            print("| %s | %s | %s | %.1f | %.2f | %.1f | %.2f |" % row, flush=True)


if __name__ == "__main__":
    main()
