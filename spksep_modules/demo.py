"""``make demo``: the whole pipeline on synthetic data, on a laptop CPU, in minutes.

Writes the demo set, trains the paper's models briefly at small sizes (the same recipes and
yaml files as for LibriMix, with command-line overrides), evaluates each, prints Table I with
the paired gains over the baseline, and writes the figures of ``spksep plot`` into
``<workdir>/plots``.
A model whose run already has ``test_summary.json`` is not trained again, and an
interrupted run resumes from its last checkpoint.

The conditioned model starts from the trained baseline and trains on, so its gain over
the baseline mixes conditioning with extra training. The continued baseline
(``convtasnet_continued``) tells them apart: the baseline trained on from its final weights
for as many CPU minutes of training as the conditioned model took (every demo run counts
its budget on the CPU clock, which runs side by side do not distort), and the report pairs
the conditioned model with it too.

While a model trains, each epoch prints a line (its validation SI-SNR and the minutes since
the run started). Models train ``--jobs`` at a time (default: half the CPU cores, at least 2), each on
its share of the cores: these small models use one core far better than two (a training
step on 2 threads is far from twice as fast as on 1), so two runs side by side finish
sooner than the same runs one after the other. The conditioned model waits for the
baseline it starts from, and the continued baseline for both. Each run's output goes to
``runs/<model>/demo.log``.

``--seeds N`` trains every model N times, with seeds 1234, 1235, ... into
``runs/<model>_seed<seed>`` (one run per model, ``--seeds 1``, keeps ``runs/<model>``): the
table then averages each model over its seeds and adds intervals over seeds, since on the
demo two seeds of the same baseline differ by about 0.4 dB. Each seed's conditioned model
starts from that seed's baseline, and its continued baseline takes that seed's budget.
"""

import argparse
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from spksep_modules import SpkSepError
from spksep_modules.data.demo import make_demo_data
from spksep_modules.reports.plots import plot_runs
from spksep_modules.reports.run_logs import budget_spent
from spksep_modules.reports.tables import CONTINUED_MODEL, model_label, read_summary, report

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
# The demo reproduces the paper's Table I, so its Conv-TasNets have the paper's shape (summed
# skip outputs feed the masks, biases). The recipe's default is SpeechBrain's shape, better
# per step and cheaper on real speech (hparams/separators/convtasnet.yaml).
PAPER_SHAPE = ["--skip_connections=True", "--bias=True"]
MODELS = {
    "convtasnet": ["hparams/convtasnet.yaml", "--number_of_epochs=10", *PAPER_SHAPE],
    "weighted_sum": ["hparams/weighted_sum.yaml", "--number_of_epochs=10", *PAPER_SHAPE,
                     *CALIBRATED],
    "triplet_like": ["hparams/triplet_like.yaml", "--number_of_epochs=10", *PAPER_SHAPE,
                     *CALIBRATED, "--alpha=1.0"],
    # Starts from the trained baseline, as in the paper.
    "conditioning": ["hparams/conditioning.yaml", "--number_of_epochs=6", "--speaker_net=ge2e"],
    # The baseline trained on for the conditioned model's CPU minutes (``extra_args``): its
    # budget stops it, not the epochs.
    "convtasnet_continued": ["hparams/convtasnet.yaml", "--number_of_epochs=1000", *PAPER_SHAPE,
                             "--model_name=convtasnet_continued"],
}
# The runs a model starts from or takes its budget from: trained before it, in its lane.
NEEDS = {"conditioning": ("convtasnet",), "convtasnet_continued": ("convtasnet", "conditioning")}
# More speakers than the generator's default, so that the small model generalises to the
# unseen test speakers within a few minutes of training.
DATA = dict(num_train=200, num_train_speakers=80)


FIRST_SEED = 1234  # training.yaml's seed: the one-seed demo trains with it


def run_name(name: str, seed: int = None) -> str:
    """The run folder's name of model ``name`` trained with ``seed`` (``None``: the
    one-seed demo, named after the model alone).

    Example
    -------
    >>> run_name("convtasnet"), run_name("convtasnet", 1235)
    ('convtasnet', 'convtasnet_seed1235')
    """
    return name if seed is None else f"{name}_seed{seed}"


def train(name: str, data: str, runs: str, extra=(), threads: int = None, seed: int = None) -> str:
    """Train and test model ``name`` (a key of ``MODELS``) at demo size with the LibriMix
    recipe, in a subprocess, on the data in ``data``; returns its run folder,
    ``runs/<name>`` (``runs/<name>_seed<seed>`` with ``--seed=<seed>`` when ``seed`` is
    given). A run that already has ``test_summary.json`` is not trained again.
    ``threads``: the subprocess's intra-op threads (default: torch's); its output goes to
    ``demo.log`` in the run folder.

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
    label = run_name(name, seed)
    out = os.path.abspath(os.path.join(runs, label))
    if os.path.isfile(os.path.join(out, "test_summary.json")):
        print(f"[demo] {label}: already trained ({out})")
        return out
    cmd = command(name, data, out, extra, seed)
    os.makedirs(out, exist_ok=True)
    log = os.path.join(out, "demo.log")
    print(f"[demo] training {label} (log: {log}): {' '.join(cmd[1:])}", flush=True)
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    start = time.time()
    progress = EpochProgress(label, os.path.join(out, "train_log.txt"), start)
    with open(log, "a") as f:
        proc = subprocess.Popen(cmd, cwd=RECIPE, stdout=f, stderr=subprocess.STDOUT, env=env)
        while True:  # wait4: this child's own CPU time (all its threads), even beside others
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            progress.report()
            time.sleep(PROGRESS_SECONDS)
        progress.report()
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        with open(log) as f:
            tail = "".join(f.readlines()[-20:])
        raise SystemExit(f"[demo] {label} failed (exit {proc.returncode}); the end of {log}:\n{tail}")
    cpu = usage.ru_utime + usage.ru_stime
    print(f"[demo] {label}: done in {time.time() - start:.0f} s ({cpu:.0f} s of CPU)", flush=True)
    return out


PROGRESS_SECONDS = 2.0  # how often a training run's new epoch lines are looked for


class EpochProgress:
    """Prints a run's epoch lines as its ``train_log.txt`` gains them, with the wall time
    since the run started: ``[demo] convtasnet: epoch 3, valid si_snr: 1.25 (0.8 min)``.
    Lines already there when the run (re)started are not repeated.

    Example
    -------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as run:
    ...     path = os.path.join(run, "train_log.txt")
    ...     progress = EpochProgress("convtasnet", path, time.time())
    ...     progress.report()  # no log yet: nothing to say
    ...     with open(path, "w") as f:
    ...         _ = f.write("epoch: 1, steps: 25, lr: 2.00e-03 - train loss: -1.0 - "
    ...                     "valid loss: -1.25, valid si_snr: 1.25\\n")
    ...     progress.report()
    [demo] convtasnet: epoch 1, steps: 25, valid si_snr: 1.25 (0.0 min)
    """

    def __init__(self, label: str, path: str, start: float):
        self.label, self.path, self.start = label, path, start
        self.seen = self._lines()

    def _lines(self) -> int:
        try:
            with open(self.path) as f:
                return sum(1 for _ in f)
        except OSError:
            return 0

    def report(self) -> None:
        try:
            with open(self.path) as f:
                lines = f.read().splitlines()[self.seen:]
        except OSError:
            return
        for line in lines:
            self.seen += 1
            fields = [field.strip() for part in line.split(" - ") for field in part.split(",")]
            keep = [f.replace("epoch: ", "epoch ") for f in fields
                    if f.startswith(("epoch:", "steps:", "valid si_snr:"))]
            if keep:
                print(f"[demo] {self.label}: {', '.join(keep)} "
                      f"({(time.time() - self.start) / 60:.1f} min)", flush=True)


def command(name: str, data: str, out: str, extra=(), seed: int = None) -> list:
    """The ``train.py`` command line (run in ``RECIPE``) that trains model ``name`` at demo
    size into ``out``; ``extra``: what :func:`extra_args` adds; ``seed``: the training
    seed (``None``: the yaml's, 1234).

    Example
    -------
    >>> cmd = command("convtasnet", "data", "runs/convtasnet")
    >>> cmd[1:3], "--budget_clock=cpu" in cmd, cmd[-3:]
    (['train.py', 'hparams/convtasnet.yaml'], True, ['--number_of_epochs=10', '--skip_connections=True', '--bias=True'])
    >>> command("convtasnet", "data", "runs/convtasnet_seed1235", seed=1235)[-1]
    '--seed=1235'
    """
    hparams, *model_args = MODELS[name]
    # Budgets in CPU minutes: the continued baseline's is the conditioned run's (``extra_args``).
    return [
        sys.executable, "train.py", hparams, f"--data_folder={data}", f"--output_folder={out}",
        "--device=cpu", "--noprogressbar", "--budget_clock=cpu", *SMALL, *model_args, *extra,
        *([f"--seed={seed}"] if seed is not None else []),
    ]


def extra_args(name: str, done: dict) -> list:
    """The arguments of model ``name`` that come from the runs it needs (``NEEDS``), from
    ``done`` (model -> finished run folder): the conditioned model's basic model, and the
    continued baseline's start (the baseline's weights) and budget (the CPU minutes the
    conditioned model spent in training and validation).

    Example
    -------
    >>> extra_args("conditioning", {"convtasnet": "runs/convtasnet"})
    ['--basic_model=runs/convtasnet']
    >>> extra_args("weighted_sum", {})
    []
    """
    if name == "conditioning":
        return [f"--basic_model={done['convtasnet']}"]
    if name == "convtasnet_continued":
        try:
            minutes = budget_spent(done["conditioning"], clock="cpu")
        except SpkSepError as err:
            raise SystemExit(f"[demo] {name}: no budget ({err}); delete "
                             f"{done['conditioning']} to train it again") from None
        return [f"--init_from={done['convtasnet']}", f"--budget_minutes={minutes}"]
    return []


def train_all(names, data: str, runs: str, jobs: int, seeds=(None,)) -> list:
    """Train ``names`` with each of ``seeds`` (``None``: the one-seed demo) in ``jobs``
    lanes side by side; returns their run folders, seed by seed in the order of
    ``names``. The first lane trains the baseline, then the conditioned model that starts
    from it, then the continued baseline, seed after seed; the other models share the
    other lanes (all lanes, with one job): see :func:`lanes`.
    """
    threads = max(1, (os.cpu_count() or 1) // jobs)
    done = {seed: {} for seed in seeds}  # seed -> model -> run folder

    def run_lane(lane):
        for name, seed in lane:  # what a run needs comes from its own seed's runs
            done[seed][name] = train(name, data, runs, extra_args(name, done[seed]), threads,
                                     seed)

    plan = _lanes(names, jobs, seeds)
    with ThreadPoolExecutor(max_workers=len(plan)) as pool:
        for future in [pool.submit(run_lane, lane) for lane in plan]:
            future.result()  # a failed run raises here
    return [done[seed][name] for seed in seeds for name in names]


def lanes(names, jobs: int, seeds=(None,)) -> list:
    """Split the runs of ``names`` x ``seeds`` into at most ``jobs`` lists trained one after
    the other: the baseline, the conditioned model and the continued baseline of every
    seed in the first (each needs the ones before of its seed: ``NEEDS``, trained or found
    even when not in ``names``), the rest round-robin. With the default single seed the
    lists hold model names; with several, ``(name, seed)`` pairs.

    Example
    -------
    >>> lanes(["convtasnet", "weighted_sum", "triplet_like", "conditioning"], jobs=2)
    [['convtasnet', 'conditioning'], ['weighted_sum', 'triplet_like']]
    >>> lanes(list(MODELS), jobs=2)
    [['convtasnet', 'conditioning', 'convtasnet_continued'], ['weighted_sum', 'triplet_like']]
    >>> lanes(["weighted_sum", "convtasnet_continued"], jobs=1)
    [['convtasnet', 'conditioning', 'convtasnet_continued', 'weighted_sum']]
    >>> lanes(["convtasnet", "conditioning", "weighted_sum"], jobs=2, seeds=(1234, 1235))
    [[('convtasnet', 1234), ('conditioning', 1234), ('convtasnet', 1235), ('conditioning', 1235)], [('weighted_sum', 1234), ('weighted_sum', 1235)]]
    """
    plan = _lanes(names, jobs, seeds)
    if tuple(seeds) == (None,):
        return [[name for name, _ in lane] for lane in plan]
    return plan


def _lanes(names, jobs, seeds):
    """:func:`lanes` as ``(name, seed)`` pairs, whatever the seeds."""
    wanted = set(names).union(*(NEEDS.get(n, ()) for n in names))
    chain = [n for n in ("convtasnet", "conditioning", "convtasnet_continued") if n in wanted]
    rest = [n for n in names if n not in chain]
    plan = [[(n, s) for s in seeds for n in chain]] + [[] for _ in range(max(1, jobs) - 1)]
    others = plan[1:] or plan
    for i, run in enumerate((n, s) for s in seeds for n in rest):
        others[i % len(others)].append(run)
    return [lane for lane in plan if lane]


def main(argv=None):
    """``make demo``: write the demo set under ``--workdir`` (or take ``--data``), train and test ``--models``
    (default: all of ``MODELS``; the conditioned model starts from the trained baseline,
    the continued baseline too) ``--seeds`` times each, print Table I and the gains over
    the baseline (and of the conditioned model over the continued baseline), and write
    the figures (of the first seed's runs) into ``<workdir>/plots``.

    Example
    -------
    >>> try:  # an unknown model is a usage error, before any data is written
    ...     main(["--workdir", "demo_run", "--models", "wavenet"])
    ... except SystemExit as exit:
    ...     exit.code
    2
    >>> try:  # so is a --data folder that is not in LibriMix's layout
    ...     main(["--workdir", "demo_run", "--data", "no/such/folder"])
    ... except SystemExit as exit:
    ...     exit.code
    2
    """
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", default="demo_run")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--jobs", type=int, default=max(2, (os.cpu_count() or 1) // 2),
                        help="models trained at once (default: half the CPU cores, at least 2)")
    parser.add_argument("--data", help="train on this LibriMix-layout folder (the one holding "
                        "wav8k/ or wav16k/, e.g. .../Libri2Mix) instead of writing the "
                        "synthetic demo set: the same models and sizes on real speech")
    parser.add_argument("--seeds", type=int, default=1,
                        help="train every model this many times, seeds 1234, 1235, ... into "
                             "runs/<model>_seed<seed>; the table averages over seeds and adds "
                             "intervals over them (default 1: runs/<model>)")
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error("--seeds: at least 1")
    seeds = (None,) if args.seeds == 1 else tuple(FIRST_SEED + i for i in range(args.seeds))

    if args.data:
        data = os.path.abspath(args.data)
        if not any(os.path.isdir(os.path.join(data, rate)) for rate in ("wav8k", "wav16k")):
            parser.error(f"--data: {data} holds no wav8k/ or wav16k/ folder (expected a "
                         "LibriMix-layout folder such as .../Libri2Mix)")
    else:
        data = make_demo_data(os.path.join(args.workdir, "data"), **DATA)
    runs = os.path.join(args.workdir, "runs")
    start = time.time()
    jobs = max(1, args.jobs)
    done = (train_all(args.models, data, runs, jobs) if args.seeds == 1
            else train_all(args.models, data, runs, jobs, seeds))
    print(f"\n[demo] trained in {(time.time() - start) / 60:.1f} min")
    # + the gains over the baseline, paired per mixture (and over seeds, with several)
    text, records = report(done, significance=True)
    print(text)
    for run in done:
        summary = read_summary(run)
        if "si_snr_intermediate" in summary:
            print(f"\n[demo] {summary['model']}: test SI-SNR {summary['si_snr']:.2f} dB, its basic "
                  f"model's (intermediate) estimates {summary['si_snr_intermediate']:.2f} dB: "
                  f"conditioning adds {summary['si_snr'] - summary['si_snr_intermediate']:+.2f} dB")
    for pairing in records.get("over_continued", []):  # same extra compute, paired per mixture
        for g in pairing["gains"]:
            both = (f", over seeds and mixtures [{g['hier_low']:+.2f}, {g['hier_high']:+.2f}] "
                    f"({g['seeds']} seeds)" if "hier_low" in g else "")
            print(f"\n[demo] {g['label']} vs {model_label(CONTINUED_MODEL)} (same extra CPU "
                  f"minutes): {g['mean']:+.2f} dB SI-SNRi per mixture, 95% interval "
                  f"[{g['low']:+.2f}, {g['high']:+.2f}]{both} ({g['n']} test mixtures)")
    # The figures of the first seed's runs: one line or violin per model stays readable.
    plots = plot_runs(done[: len(args.models)], os.path.join(args.workdir, "plots"))
    print("\n[demo] figures (learning curves, per-mixture SI-SNRi, spectrograms of the median "
          "test mixture):")
    for path in plots:
        print(f"[demo]   {path}")


if __name__ == "__main__":
    main()
