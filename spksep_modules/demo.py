"""``make demo``: the whole pipeline on synthetic data, on a laptop CPU, in minutes.

Writes the demo set, trains the paper's models briefly at small sizes (the same recipes and
yaml files as for LibriMix, with command-line overrides), evaluates each, prints Table I with
the paired gains over the baseline, and writes the figures of ``spksep plot`` into
``<workdir>/plots``.
A model whose run already has ``test_summary.json`` is not trained again, and an
interrupted run resumes from its last checkpoint.

Models train ``--jobs`` at a time (default: half the CPU cores, at least 2), each on
its share of the cores: these small models use one core far better than two (a training
step on 2 threads is far from twice as fast as on 1), so two runs side by side finish
sooner than the same runs one after the other. The conditioned model waits for the
baseline it starts from. Each run's output goes to ``runs/<model>/demo.log``.
"""

import argparse
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from spksep_modules.data.demo import make_demo_data
from spksep_modules.plots import plot_runs
from spksep_modules.tables import read_summary, tables

RECIPE = os.path.join(os.path.dirname(__file__), "..", "recipes", "LibriMix", "separation")

# Small enough for 2 CPU cores; the model is the same Conv-TasNet, only narrower and shallower.
SMALL = [
    "--N=128", "--L=32", "--B=64", "--H=128", "--P=3", "--X=6", "--R=2",
    "--batch_size=8", "--num_workers=0", "--segment_seconds=1.0", "--lr=0.002",
]
# The paper's loss weights were set for wav2vec 1.0 features of 3 s segments; the demo uses
# GE2E on 1 s segments, so it takes distances that do not depend on either (normalised) and
# weights calibrated after a warm-up so that each perceptual part starts at 3% of the
# SI-SNR loss's gradient (0.1 cost 0.06 dB there with GE2E's positive term: see
# bench/bench_perceptual_quality.py and the README).
CALIBRATED = ["--representation=ge2e", "--normalised_distances=True", "--perceptual_share=0.03",
              "--perceptual_warmup=100"]
MODELS = {
    "convtasnet": ["hparams/convtasnet.yaml", "--number_of_epochs=10"],
    "weighted_sum": ["hparams/weighted_sum.yaml", "--number_of_epochs=10", *CALIBRATED],
    "triplet_like": ["hparams/triplet_like.yaml", "--number_of_epochs=10", *CALIBRATED,
                     "--alpha=1.0"],
    # Starts from the trained baseline, as in the paper.
    "conditioning": ["hparams/conditioning.yaml", "--number_of_epochs=6", "--speaker_net=ge2e"],
}
# More speakers than the generator's default, so that the small model generalises to the
# unseen test speakers within a few minutes of training.
DATA = dict(num_train=200, num_train_speakers=80)


def train(name: str, data: str, runs: str, extra=(), threads: int = None) -> str:
    """Train and test model ``name`` (a key of ``MODELS``) at demo size with the LibriMix
    recipe, in a subprocess, on the data in ``data``; returns its run folder,
    ``runs/<name>``. A run that already has ``test_summary.json`` is not trained again.
    ``threads``: the subprocess's intra-op threads (default: torch's); its output goes to
    ``runs/<name>/demo.log``.

    Example
    -------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as runs:  # doctest: +ELLIPSIS
    ...     os.makedirs(os.path.join(runs, "convtasnet"))  # a finished run: nothing to train
    ...     open(os.path.join(runs, "convtasnet", "test_summary.json"), "w").close()
    ...     train("convtasnet", "demo_run/data", runs) == os.path.join(runs, "convtasnet")
    [demo] convtasnet: already trained (.../convtasnet)
    True
    """
    out = os.path.abspath(os.path.join(runs, name))
    if os.path.isfile(os.path.join(out, "test_summary.json")):
        print(f"[demo] {name}: already trained ({out})")
        return out
    hparams, *model_args = MODELS[name]
    cmd = [
        sys.executable, "train.py", hparams, f"--data_folder={data}", f"--output_folder={out}",
        "--device=cpu", "--noprogressbar", *SMALL, *model_args, *extra,
    ]
    os.makedirs(out, exist_ok=True)
    log = os.path.join(out, "demo.log")
    print(f"[demo] training {name} (log: {log}): {' '.join(cmd[1:])}", flush=True)
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    start = time.time()
    with open(log, "a") as f:
        proc = subprocess.Popen(cmd, cwd=RECIPE, stdout=f, stderr=subprocess.STDOUT, env=env)
        # wait4: this child's own CPU time (all its threads), even with other runs alongside
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        with open(log) as f:
            tail = "".join(f.readlines()[-20:])
        raise SystemExit(f"[demo] {name} failed (exit {proc.returncode}); the end of {log}:\n{tail}")
    cpu = usage.ru_utime + usage.ru_stime
    print(f"[demo] {name}: done in {time.time() - start:.0f} s ({cpu:.0f} s of CPU)", flush=True)
    return out


def train_all(names, data: str, runs: str, jobs: int) -> list:
    """Train ``names`` in ``jobs`` lanes side by side; returns their run folders in the
    order of ``names``. The first lane trains the baseline and then the conditioned model
    that starts from it; the other models share the other lanes (all lanes, with one job).

    Example
    -------
    >>> lanes(["convtasnet", "weighted_sum", "triplet_like", "conditioning"], jobs=2)
    [['convtasnet', 'conditioning'], ['weighted_sum', 'triplet_like']]
    """
    threads = max(1, (os.cpu_count() or 1) // jobs)
    done = {}

    def run_lane(lane):
        for name in lane:
            extra = [f"--basic_model={done['convtasnet']}"] if name == "conditioning" else []
            done[name] = train(name, data, runs, extra, threads)

    plan = lanes(names, jobs)
    with ThreadPoolExecutor(max_workers=len(plan)) as pool:
        for future in [pool.submit(run_lane, lane) for lane in plan]:
            future.result()  # a failed run raises here
    return [done[name] for name in names]


def lanes(names, jobs: int) -> list:
    """Split ``names`` into at most ``jobs`` lists trained one after the other: the baseline
    and the conditioned model (which needs it) in the first, the rest round-robin."""
    chain = [n for n in ("convtasnet", "conditioning") if n in names]
    if "conditioning" in names and "convtasnet" not in names:
        chain.insert(0, "convtasnet")  # its basic model, trained (or found) first
    rest = [n for n in names if n not in chain]
    plan = [chain] + [[] for _ in range(max(1, jobs) - 1)]
    others = plan[1:] or plan
    for i, name in enumerate(rest):
        others[i % len(others)].append(name)
    return [lane for lane in plan if lane]


def main(argv=None):
    """``make demo``: write the demo set under ``--workdir``, train and test ``--models``
    (default: all of ``MODELS``; the conditioned model starts from the trained baseline),
    print Table I and the gains over the baseline, and write the figures into
    ``<workdir>/plots``.

    Example
    -------
    >>> try:  # an unknown model is a usage error, before any data is written
    ...     main(["--workdir", "demo_run", "--models", "wavenet"])
    ... except SystemExit as exit:
    ...     exit.code
    2
    """
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", default="demo_run")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--jobs", type=int, default=max(2, (os.cpu_count() or 1) // 2),
                        help="models trained at once (default: half the CPU cores, at least 2)")
    args = parser.parse_args(argv)

    data = make_demo_data(os.path.join(args.workdir, "data"), **DATA)
    runs = os.path.join(args.workdir, "runs")
    start = time.time()
    done = train_all(args.models, data, runs, max(1, args.jobs))
    print(f"\n[demo] trained in {(time.time() - start) / 60:.1f} min")
    print(tables(done, significance=True))  # + the paired gains over the baseline
    for run in done:
        summary = read_summary(run)
        if "si_snr_intermediate" in summary:
            print(f"\n[demo] {summary['model']}: test SI-SNR {summary['si_snr']:.2f} dB, its basic "
                  f"model's (intermediate) estimates {summary['si_snr_intermediate']:.2f} dB: "
                  f"conditioning adds {summary['si_snr'] - summary['si_snr_intermediate']:+.2f} dB")
    plots = plot_runs(done, os.path.join(args.workdir, "plots"))
    print("\n[demo] figures (learning curves, per-mixture SI-SNRi, spectrograms of the median "
          "test mixture):")
    for path in plots:
        print(f"[demo]   {path}")


if __name__ == "__main__":
    main()
