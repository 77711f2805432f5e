"""Time to quality: SI-SNRi on the test split after the same compute budget, ours against
SpeechBrain's own Conv-TasNet.

Every variant trains the small configuration (N128 L16 B64 H128 P3 X6 R2, batch 4,
2 s segments) in a plain loop with Adam and gradient clipping at 5, on any
LibriMix-layout folder (default: the demo set, written on first use), and is evaluated
with the same metric code (``spksep_modules.metrics.evaluate_mixture``) on the whole test
utterances each time its clock passes a budget. A budget's figure is the mean of the test
scores at a few nearby points (``--nearby``: 0.9 and 0.95 of the budget, and its end), so the
exact stopping step does not decide it; a ``train.py`` run keeps its weights at those points
(``budget_snapshots``). Evaluation is not charged to the clock. For a run with a cool-down,
0.9 of the budget is halfway through the cool-down, weights no user would keep: with
``--nearby_runs`` a ``train.py`` variant's nearby points are runs of their own length
instead (18, 19 and 20 minutes, each cooled down by its end). ``--curve`` adds points of the
learning curve and ``--equal_steps`` a figure at equal steps, from the same runs.

Variants (``--variants``), each changing one thing in one before it:

- ``speechbrain``: SpeechBrain's lobes (``dual_path.Encoder``, ``conv_tasnet.MaskNet``,
  ``dual_path.Decoder``, wired as its LibriMix recipe wires them) and its uPIT SI-SNR loss
  (``get_si_snr_with_pitwrapper``), Adam at the recipes' 1e-3, random crops of the
  training mixtures.
- ``ours``: spksep's ConvTasNet (its CPU kernels) and ``SeparationLoss``, the same data,
  optimiser and learning rate: what our speed alone buys.
- ``ours+lr2x``: ``ours`` at twice the constant rate.
- ``ours+schedule``: a learning-rate schedule that knows the budget: linear warm-up over
  the first 3% of it to ``--peak_lr``, then a cosine decay to zero at its end.
- ``ours+decay``: the same schedule at SpeechBrain's rate: warm-up to ``--lr`` (not
  ``--peak_lr``), then cosine to zero at the budget's end; ``ours+decay2x`` peaks at twice it.
- ``train.py``: the user's path: ``recipes/LibriMix/separation/train.py
  hparams/convtasnet.yaml`` at the same sizes, one run per budget with ``budget_minutes``
  (``spksep_modules.training.budget``; ``--optimizer_step_limit`` with ``--clock steps``), its
  validation (dev utterances cut to ``--valid_seconds``), checkpoints and best-checkpoint
  selection included in the budget, tested by the recipe itself; ``train.py+cooldown``
  adds ``cooldown: 0.15``, ``train.py+lr2x+cooldown`` at twice the rate,
  ``train.py+bf16auto+cooldown`` with ``bf16_products: auto`` (the recipe's defaults), and
  ``train.py+paper-shape+cooldown`` with the paper's mask network (skip path, biases) in
  place of the recipe's default (SpeechBrain's shape; ``ours`` in the plain loop has it too);
  ``train.py+bf16auto+dm-split+cooldown`` adds dynamic mixing at the training split's levels
  (``dynamic_mixing: True``, ``dm_loudness: train_split``), and
  ``train.py+bf16auto+dm-utt+cooldown`` gives those levels to the whole utterances the
  segments are cut from (``dm_level_on: utterance``) rather than to each segment.
- ``ours+ema``: ``ours``, evaluated with an exponential moving average of its weights
  (decay 0.99 per step, ``torch.optim.swa_utils``): it smooths the step-to-step noise of
  a constant-rate run.
- ``ours+dm``: ``ours+schedule`` trained on dynamic mixing
  (``spksep_modules.data.dynamic_mixing``): new mixtures of the training speakers'
  utterances at every step instead of crops of the fixed mixtures.
- ``ours+cooldown``: ``ours``, whose rate decays linearly to zero over the last 15% of
  each budget (a warmup-stable-decay schedule without the warm-up): the run keeps the
  constant rate, and at 85% of each budget a copy of it takes the decay and is scored; the
  copy's compute is charged to that budget alone, as it would be in a run of that length.
- ``ours+lr2x+cooldown``: the same cool-down from twice the constant rate.
- ``ours+bf16``: ``ours`` with mixed precision where it pays on CPU: the TCN's 1x1
  convolutions multiply in bf16 in training steps (``ConvTasNet(bf16_products=True)``);
  ``ours+bf16+cooldown`` adds the cool-down.
- ``ours+dm-const``: ``ours`` (constant rate) on dynamic mixing, LibriMix's loudness rule.
- ``ours+dm-split``: the same, each new mixture taking the loudness of the sources of a
  random training mixture (``dm_loudness: train_split``) instead of LibriMix's rule;
  ``ours+dm-split+cooldown`` and ``ours+dm-split+lr2x+cooldown`` add the cool-downs.

The clock (``--clock``) is the training process's CPU time by default (all its threads;
data loading runs in the process, so it is charged too), which a busy machine does not
distort; ``wall`` is wall-clock time; ``steps`` counts training steps (for variants of one
model, whose steps cost the same: an ablation that no load can bias). ``--jobs`` variants train at once, each in its own
process with ``--threads`` threads: with ``--jobs 2 --threads 1`` on 2 cores both get a
core, and load from other programs hits them alike.

    python bench/bench_time_to_quality.py                            # 5, 10, 20 minutes
    python bench/bench_time_to_quality.py --budgets 1 2 --variants speechbrain ours+dm
    python bench/bench_time_to_quality.py --data /data/Libri2Mix --sample_rate 8000

Results (one JSON per variant) go to ``--out``; the table is printed at the end. Findings:
``bench/NOTES.md``.
"""

import argparse
import copy
import functools
import json
import math
import os
import subprocess
import sys
import time

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HERE = os.path.dirname(os.path.abspath(__file__))
for path in (REPO, HERE):
    if path not in sys.path:
        sys.path.insert(0, path)

VARIANTS = {
    "speechbrain": dict(model="speechbrain", schedule=False, dynamic_mixing=False),
    "ours": dict(model="ours", schedule=False, dynamic_mixing=False),
    # lr_x: the constant rate, or the schedule's peak, as a multiple of --lr (without it,
    # a schedule peaks at --peak_lr).
    "ours+lr2x": dict(model="ours", schedule=False, dynamic_mixing=False, lr_x=2.0),
    "ours+schedule": dict(model="ours", schedule=True, dynamic_mixing=False),
    "ours+decay": dict(model="ours", schedule=True, dynamic_mixing=False, lr_x=1.0),
    "ours+decay2x": dict(model="ours", schedule=True, dynamic_mixing=False, lr_x=2.0),
    "ours+dm": dict(model="ours", schedule=True, dynamic_mixing=True),
    "ours+dm-const": dict(model="ours", schedule=False, dynamic_mixing=True),
    "ours+dm-split": dict(model="ours", schedule=False, dynamic_mixing=True, loudness="train_split"),
    # cooldown: the fraction of each budget spent decaying the rate linearly to zero, in a
    # copy branched off the constant-rate run (so one run serves every budget).
    "ours+cooldown": dict(model="ours", schedule=False, dynamic_mixing=False, cooldown=0.15),
    "ours+dm-split+cooldown": dict(model="ours", schedule=False, dynamic_mixing=True,
                                   loudness="train_split", cooldown=0.15),
    # bf16_products: the TCN's 1x1 convs multiply in bf16 in training steps (AMX).
    "ours+bf16": dict(model="ours", schedule=False, dynamic_mixing=False, bf16_products=True),
    "ours+bf16+cooldown": dict(model="ours", schedule=False, dynamic_mixing=False,
                               bf16_products=True, cooldown=0.15),
    "ours+lr2x+cooldown": dict(model="ours", schedule=False, dynamic_mixing=False, lr_x=2.0,
                               cooldown=0.15),
    "ours+dm-split+lr2x+cooldown": dict(model="ours", schedule=False, dynamic_mixing=True,
                                        loudness="train_split", lr_x=2.0, cooldown=0.15),
    # ``ours``, evaluated with an exponential moving average of its weights (this decay).
    "ours+ema": dict(model="ours", schedule=False, dynamic_mixing=False, ema=0.99),
    # The user's path: recipes/LibriMix/separation/train.py, one run per budget.
    "train.py": dict(model="ours", schedule=False, dynamic_mixing=False, recipe=True),
    "train.py+cooldown": dict(model="ours", schedule=False, dynamic_mixing=False, recipe=True,
                              cooldown=0.15),
    "train.py+lr2x+cooldown": dict(model="ours", schedule=False, dynamic_mixing=False,
                                   recipe=True, lr_x=2.0, cooldown=0.15),
    # The paper's mask-network shape (summed skips feed the masks, biases): the recipe's
    # default until SpeechBrain's shape (no skips, no biases) proved better on real speech.
    "train.py+paper-shape+cooldown": dict(model="ours", schedule=False, dynamic_mixing=False,
                                          recipe=True, cooldown=0.15,
                                          overrides=["--skip_connections=True", "--bias=True"]),
    # bf16 products where this CPU has them natively (AVX512-BF16, AMX), fp32 elsewhere.
    "train.py+bf16auto+cooldown": dict(model="ours", schedule=False, dynamic_mixing=False,
                                       recipe=True, cooldown=0.15, bf16_products="auto"),
    # ... with new training mixtures every epoch from the training split's utterances, at
    # their own levels (a small training set is seen tens of times in 20 minutes).
    "train.py+bf16auto+dm-split+cooldown": dict(
        model="ours", schedule=False, dynamic_mixing=True, loudness="train_split", recipe=True,
        cooldown=0.15, bf16_products="auto"),
    # ... levelling whole utterances, so a segment keeps its level within its utterance.
    "train.py+bf16auto+dm-utt+cooldown": dict(
        model="ours", schedule=False, dynamic_mixing=True, loudness="train_split", level_on="utterance",
        recipe=True, cooldown=0.15, bf16_products="auto"),
}
RECIPE = os.path.join(REPO, "recipes", "LibriMix", "separation")
# What `make bench` runs: SpeechBrain's model, ours in the same plain loop, and ours through
# the user's path (train.py). The learning-rate, dynamic-mixing and bf16 ablations
# (NOTES.md; bf16 products pay only with AMX) are there for --variants.
DEFAULT_VARIANTS = ["speechbrain", "ours+cooldown", "train.py+cooldown"]
SIZES = dict(N=128, L=16, B=64, H=128, P=3, X=6, R=2)
# ``ours`` in the plain loop has the recipe's mask-network shape (hparams/separators/
# convtasnet.yaml: SpeechBrain's, no skips, no biases; the paper's until this session).
SHAPE = dict(skip=False, bias=False)
# The demo's data (spksep_modules/demo.py): enough speakers for a small model to
# generalise to the unseen test speakers.
DEMO_DATA = dict(num_train=200, num_train_speakers=80)


class BudgetClock:
    """Seconds of training so far: CPU time of this process (all threads) or wall time,
    with ``pause()``/``resume()`` around what is not charged (evaluation).

    Example
    -------
    >>> clock = BudgetClock("cpu")
    >>> _ = sum(i * i for i in range(10 ** 5))
    >>> clock.pause(); spent = clock.seconds(); _ = sum(range(10 ** 6)); clock.resume()
    >>> clock.seconds() - spent < 0.01  # what ran while paused was not charged
    True
    """

    def __init__(self, kind="cpu"):
        if kind not in ("cpu", "wall"):
            raise ValueError(f"clock: cpu or wall, got {kind!r}")
        self.now = time.process_time if kind == "cpu" else time.perf_counter
        self.start, self.paused_at = self.now(), None

    def seconds(self):
        return (self.paused_at if self.paused_at is not None else self.now()) - self.start

    def pause(self):
        self.paused_at = self.now()

    def resume(self):
        self.start += self.now() - self.paused_at
        self.paused_at = None


def budget_lr(fraction, peak, warmup=0.03):
    """Learning rate at ``fraction`` of the budget: linear warm-up, then cosine to zero.

    Example
    -------
    >>> [round(budget_lr(f, 1.0), 3) for f in (0.0, 0.015, 0.03, 0.515, 1.0)]
    [0.0, 0.5, 1.0, 0.5, 0.0]
    """
    if fraction < warmup:
        return peak * fraction / warmup
    progress = min(1.0, (fraction - warmup) / (1.0 - warmup))
    return peak * 0.5 * (1.0 + math.cos(math.pi * progress))


def peak_lr(config, args):
    """The variant's constant rate, or its schedule's peak.

    Example
    -------
    >>> args = argparse.Namespace(lr=1e-3, peak_lr=3e-3)
    >>> [peak_lr(VARIANTS[name], args) for name in ("ours", "ours+lr2x", "ours+schedule",
    ...                                              "ours+decay", "ours+decay2x")]
    [0.001, 0.002, 0.003, 0.001, 0.002]
    """
    if "lr_x" in config:
        return args.lr * config["lr_x"]
    return args.peak_lr if config["schedule"] else args.lr


def build_model(kind, bf16_products=False):
    if kind == "speechbrain":
        from bench_convtasnet import SpeechBrainConvTasNet

        return SpeechBrainConvTasNet(num_spks=2, **SIZES)
    from spksep_modules.models import ConvTasNet

    return ConvTasNet(num_spks=2, bf16_products=bf16_products, **SIZES, **SHAPE)


def build_loss(kind):
    """``loss(est [B, T, C], sources [B, T, C]) -> scalar``."""
    if kind == "speechbrain":
        from speechbrain.nnet.losses import get_si_snr_with_pitwrapper

        return lambda est, sources: get_si_snr_with_pitwrapper(sources, est).mean()
    from spksep_modules.losses import SeparationLoss

    loss = SeparationLoss()
    return lambda est, sources: loss(est, sources)["loss"]


def data_folder(args):
    """``--data``, or the demo set (written on first use)."""
    if args.data is not None:
        return args.data
    from spksep_modules.data.demo import make_demo_data

    return make_demo_data(os.path.join(args.out, "demo_data"), sample_rate=args.sample_rate,
                          **DEMO_DATA)


def prepare_data(args):
    from spksep_modules.data.librimix import prepare_librimix

    return prepare_librimix(data_folder(args), os.path.join(args.out, "csv"), args.sample_rate)


@functools.lru_cache(maxsize=None)
def training_split_loudness(train_csv, sample_rate):
    """``split_loudness`` once per process: the run and its cool-down branches share it."""
    from spksep_modules.data.dynamic_mixing import split_loudness

    return split_loudness(train_csv, 2, sample_rate)


def train_loader(csvs, config, args, seed):
    from speechbrain.dataio.batch import PaddedBatch

    if config["dynamic_mixing"]:
        from spksep_modules.data.dynamic_mixing import (LOUDNESS_RANGE, DynamicMixingDataset,
                                                        split_utterances)

        with open(csvs["train"]) as f:
            epoch_mixtures = sum(1 for _ in f) - 1
        loudness = LOUDNESS_RANGE
        if config.get("loudness") == "train_split":
            loudness = training_split_loudness(csvs["train"], args.sample_rate)
        dataset = DynamicMixingDataset(
            split_utterances(csvs["train"], 2, args.sample_rate), args.sample_rate, 2,
            epoch_mixtures=epoch_mixtures, segment_seconds=args.segment, seed=seed, rank=0,
            loudness=loudness, level_on=config.get("level_on", "segment"))
    else:
        from spksep_modules.data.pipeline import build_datasets

        dataset = build_datasets({"train": csvs["train"]}, args.sample_rate, 2,
                                 segment_seconds=args.segment)["train"]
    generator = torch.Generator().manual_seed(seed)
    # In this process (num_workers=0): its cost is charged to the clock like the step's.
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch, shuffle=True,
                                         drop_last=True, collate_fn=PaddedBatch,
                                         generator=generator)
    return dataset, loader


@torch.no_grad()
def evaluate(model, test_set, rate):
    from spksep_modules.metrics import evaluate_mixture

    model.eval()
    rows, ids = [], []
    for item in test_set:
        mix, sources = item["mix_sig"], item["sources"]
        est = model(mix[None]).as_subclass(torch.Tensor)[0]
        rows.append(evaluate_mixture(mix, est, sources, rate))
        ids.append(item["id"])
    model.train()
    return scores(ids, rows)


def scores(ids, rows):
    """Means of SI-SNRi and STOI, and the per-mixture values (for paired intervals)."""
    keys = ("si_snr_i", "stoi")
    means = {key: sum(float(r[key]) for r in rows) / len(rows) for key in keys}
    return dict(means, per_mixture=dict(ids=list(ids), **{k: [float(r[k]) for r in rows] for k in keys}))


def train_via_recipe(name, args):
    """``train.py hparams/convtasnet.yaml`` at the bench's sizes, one run per budget (each
    from scratch: its cool-down needs to know where it ends). The budget is charged from
    the start of ``fit`` to its end, validation and checkpoints included
    (``spksep_modules.training.budget``); the test is not. Data loading runs in the process
    (``num_workers: 0``), as in the plain loop, so the CPU clock charges it. A budget's nearby
    points are snapshots of its run, or with ``--nearby_runs`` (variants with a cool-down)
    runs of their own that length. A run folder that holds a finished run is not trained
    again: ``train.py`` only tests it again."""
    config = VARIANTS[name]
    results = []
    for budget in sorted(args.budgets):
        end, steps, minutes, out = run_recipe(name, args, budget)
        own_runs = args.nearby_runs and config.get("cooldown")
        wanted = {f"at-{f:.3f}" for f in snapshot_fractions(args, nearby=not own_runs)}
        wanted |= {f"step-{n}" for n in args.equal_steps}
        snapshots = recipe_snapshot_scores(out, args, wanted)  # each scoring is a test pass
        at = lambda fraction: snapshots[f"at-{round(fraction, 6):.3f}"]
        if own_runs:
            # a shorter run cools down by its own end, as the user's run of that length
            # would; a snapshot at 0.9 of this run is halfway through its cool-down
            nearby = [dict(run_recipe(name, args, f * budget)[0], fraction=f) for f in sorted(args.nearby)]
        else:
            nearby = [at(f) for f in sorted(args.nearby)]
        results.append(dict(budget_min=budget, steps=steps, train_minutes=minutes,
                            **mean_of_points([*nearby, end])))
        # the curve and the equal-step figure: the longest budget's run (where the bench's
        # budgets come from a single run in the plain loop, too)
        curve = [dict(curve_fraction=c, **mean_of_points([at(c * f) for f in (*args.nearby, 1.0)]))
                 for c in sorted(args.curve)]
        reached = [snapshots[f"step-{n}"] for n in args.equal_steps if f"step-{n}" in snapshots]
        print(f"[{name}] {brief(results[-1])}", flush=True)
        write_results(name, config, args, results, curve, equal_step_figure(reached, args))


def run_recipe(name, args, budget):
    """One ``train.py`` run of ``budget`` (minutes, or steps with ``--clock steps``); returns
    its end point (test scores, with steps), its steps, its minutes and its folder."""
    import csv

    config = VARIANTS[name]
    out = os.path.join(args.out, "recipe", f"{name}-seed{args.seed}-{round(budget, 6):g}")
    if args.clock == "steps":
        limit = [f"--optimizer_step_limit={int(budget)}"]
    else:
        limit = [f"--budget_minutes={budget}", f"--budget_clock={args.clock}"]
    fractions = "[" + ",".join(f"{f:g}" for f in snapshot_fractions(args)) + "]"
    marks = "[" + ",".join(str(n) for n in args.equal_steps) + "]"
    sizes = [f"--{key}={value}" for key, value in SIZES.items()]
    # The variant's data keys, as the plain loop's train_loader reads them.
    mixing = ["--dynamic_mixing=True", f"--dm_loudness={config.get('loudness', 'librimix')}",
              f"--dm_level_on={config.get('level_on', 'segment')}"] if config["dynamic_mixing"] else []
    command = [sys.executable, "train.py", "hparams/convtasnet.yaml",
               f"--data_folder={data_folder(args)}", f"--output_folder={out}",
               f"--sample_rate={args.sample_rate}", *sizes, f"--batch_size={args.batch}",
               f"--segment_seconds={args.segment}", f"--lr={args.lr * config.get('lr_x', 1.0)}",
               f"--seed={args.seed}", "--num_workers=0", "--device=cpu", "--noprogressbar",
               f"--valid_segment_seconds={args.valid_seconds}",
               f"--cooldown={config.get('cooldown', 0.0)}",
               f"--bf16_products={config.get('bf16_products', False)}",
               f"--budget_snapshots={fractions}", f"--budget_snapshot_steps={marks}",
               *mixing, *config.get("overrides", []), *limit]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), PYTHONWARNINGS="ignore")
    proc = subprocess.run(command, cwd=RECIPE, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"{name}: train.py failed ({proc.returncode}): {proc.stderr[-2000:]}")
    with open(os.path.join(out, "test_results.csv")) as f:
        rows = list(csv.DictReader(f))
    steps, minutes = recipe_progress(os.path.join(out, "train_log.txt"))
    end = dict(fraction=1.0, steps=steps, **scores([r["mixture_ID"] for r in rows], rows))
    return end, steps, minutes, out


def snapshot_fractions(args, nearby=True):
    """The fractions of a budget at which a ``train.py`` run keeps its weights: the
    ``--nearby`` points (unless ``nearby`` is False: with ``--nearby_runs`` they are runs of
    their own), and each ``--curve`` point with its own nearby points.

    Example
    -------
    >>> snapshot_fractions(argparse.Namespace(nearby=[0.9, 0.95], curve=[0.5]))
    [0.45, 0.475, 0.5, 0.9, 0.95]
    >>> snapshot_fractions(argparse.Namespace(nearby=[0.9, 0.95], curve=[0.5]), nearby=False)
    [0.45, 0.475, 0.5]
    """
    fractions = {round(f, 6) for f in args.nearby} if nearby else set()
    fractions |= {round(c * f, 6) for c in args.curve for f in (*args.nearby, 1.0)}
    return sorted(fractions)


def recipe_snapshot_scores(run, args, names=None):
    """Test scores of the weights a ``train.py`` run kept (``budget_snapshots``,
    ``budget_snapshot_steps``), by snapshot name, with this file's evaluation (the recipe's
    metric code); each point's ``fraction`` is the budget's share at its name. ``names``:
    score only these (None: every snapshot)."""
    import glob

    from spksep_modules.data.pipeline import build_datasets
    from spksep_modules.loading import load_separator

    paths = sorted(glob.glob(os.path.join(run, "budget_snapshots", "*.ckpt")))
    if names is not None:
        paths = [p for p in paths if os.path.basename(p)[:-len(".ckpt")] in names]
    if not paths:
        return {}
    test_set = build_datasets({"test": prepare_data(args)["test"]}, args.sample_rate, 2)["test"]
    model, _ = load_separator(run)
    points = {}
    for path in paths:
        snapshot = torch.load(path, weights_only=True)
        model.load_state_dict(snapshot["separator"])
        name = snapshot["name"]
        fraction = float(name[3:]) if name.startswith("at-") else snapshot["fraction"]
        points[name] = dict(fraction=fraction, steps=snapshot["steps"],
                            **evaluate(model, test_set, args.sample_rate))
    return points


def equal_step_figure(points, args):
    """The mean over the ``--equal_steps`` points the run reached (None if it reached none);
    ``complete`` says whether it reached them all: the table compares two runs at the same
    steps or not at all, and a run cut short keeps what it reached for the record."""
    if not args.equal_steps or not points:
        return None
    return dict(complete=len(points) == len(args.equal_steps), **mean_of_points(points))


def mean_of_points(points):
    """One budget's figure: the mean over its evaluation points (``--nearby`` fractions of
    the budget and its end) of each mixture's scores, so one lucky or unlucky stopping step
    does not decide it; the points' own means are kept under ``points``.

    Example
    -------
    >>> p = lambda f, a, b: dict(fraction=f, steps=int(10 * f), si_snr_i=(a + b) / 2,
    ...     stoi=0.5, per_mixture=dict(ids=["x", "y"], si_snr_i=[a, b], stoi=[0.5, 0.5]))
    >>> m = mean_of_points([p(0.9, 1.0, 3.0), p(1.0, 3.0, 5.0)])
    >>> m["si_snr_i"], m["per_mixture"]["si_snr_i"], [q["steps"] for q in m["points"]]
    (3.0, [2.0, 4.0], [9, 10])
    """
    keys = ("si_snr_i", "stoi")
    ids = points[-1]["per_mixture"]["ids"]
    per_mixture = dict(ids=list(ids))
    for key in keys:
        by_id = [dict(zip(p["per_mixture"]["ids"], p["per_mixture"][key])) for p in points]
        per_mixture[key] = [sum(b[i] for b in by_id) / len(by_id) for i in ids]
    means = {key: sum(per_mixture[key]) / len(ids) for key in keys}
    brief_points = [{k: v for k, v in p.items() if k != "per_mixture"} for p in points]
    return dict(means, per_mixture=per_mixture, points=brief_points)


def brief(result):
    return {key: value for key, value in result.items() if key not in ("per_mixture", "points")}


def recipe_progress(train_log):
    """(optimiser steps, minutes charged) at the last validation of a budgeted run."""
    import re

    steps = minutes = None
    with open(train_log) as f:
        for line in f:
            found = re.search(r"steps: (\d+), budget_spent: ([0-9.]+) min", line)
            if found:
                steps, minutes = int(found.group(1)), float(found.group(2))
    return steps, minutes


def train_step(model, optimiser, loss_fn, batch, lr=None):
    """One update (Adam, clipping at 5); ``lr``: set the rate first. Returns the loss."""
    if lr is not None:
        for group in optimiser.param_groups:
            group["lr"] = lr
    est = model(batch.mix_sig.data)
    loss = loss_fn(est, batch.sources.data)
    optimiser.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
    optimiser.step()
    return loss


def cool_down(model, optimiser, loss_fn, loader, length, kind, marks=(), on_mark=None):
    """A copy of ``model`` trained ``length`` more (steps, or seconds of ``kind``'s clock)
    with its rate decayed linearly from the current one to zero; the originals are not
    touched, so the run it branched from goes on as if it had not. ``marks``: (tag, length
    so far) pairs at which ``on_mark(tag, copy, steps)`` is called (not charged). Returns
    (copy, steps, last loss)."""
    model, optimiser = copy.deepcopy((model, optimiser))  # one memo: the copy's optimiser
    peak = optimiser.param_groups[0]["lr"]                 # steps the copy's parameters
    clock, steps, loss = BudgetClock("cpu" if kind == "steps" else kind), 0, None
    spent = (lambda: steps) if kind == "steps" else clock.seconds
    marks = sorted(marks, key=lambda mark: mark[1])
    while spent() < length:
        for batch in loader:
            while marks and spent() >= marks[0][1]:
                clock.pause()
                on_mark(marks.pop(0)[0], model, steps)
                clock.resume()
            if spent() >= length:
                break
            lr = peak * max(0.0, 1.0 - spent() / length)
            loss = train_step(model, optimiser, loss_fn, batch, lr)
            steps += 1
    return model, steps, loss


def evaluation_points(budgets, nearby, cooldown):
    """When a plain-loop run is scored: each budget at its ``nearby`` fractions and at its
    end (``point``), or, with a cool-down, where the copy that cools down branches off
    (``branch``: the points inside the cool-down are scored in the copy). Sorted (clock,
    budget, kind, fraction) tuples.

    Example
    -------
    >>> [(t, k, f) for t, _, k, f in evaluation_points([100.0], [0.9, 0.8], cooldown=0.15)]
    [(80.0, 'point', 0.8), (85.0, 'branch', None)]
    >>> [(t, k, f) for t, _, k, f in evaluation_points([100.0], [0.9], cooldown=0.0)]
    [(90.0, 'point', 0.9), (100.0, 'point', 1.0)]
    """
    events = []
    for budget in budgets:
        branch = (1.0 - cooldown) * budget
        for fraction in [*sorted(nearby), 1.0]:
            if not (cooldown and fraction * budget > branch):
                events.append((fraction * budget, budget, "point", fraction))
        if cooldown:
            events.append((branch, budget, "branch", None))
    return sorted(events, key=lambda e: (e[0], e[1]))


def train_variant(name, args):
    """Train ``name`` until the largest budget, evaluating at each (the mean over its
    ``--nearby`` points); write its JSON."""
    config = VARIANTS[name]
    if config.get("recipe"):
        return train_via_recipe(name, args)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    csvs = prepare_data(args)
    from spksep_modules.data.pipeline import build_datasets

    test_set = build_datasets({"test": csvs["test"]}, args.sample_rate, 2)["test"]
    dataset, loader = train_loader(csvs, config, args, args.seed)
    model = build_model(config["model"], config.get("bf16_products", False)).train()
    loss_fn = build_loss(config["model"])
    peak = peak_lr(config, args)
    optimiser = torch.optim.Adam(model.parameters(), lr=peak)
    averaged = None
    if config.get("ema"):
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        averaged = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(config["ema"]),
                                 use_buffers=True)
    cooldown = config.get("cooldown", 0.0)
    if cooldown:  # its own shuffling, so that the run it branches from stays the plain one's
        branch_loader = train_loader(csvs, config, args, args.seed + 1)[1]
    scale = 1.0 if args.clock == "steps" else 60.0  # budgets in steps, or minutes -> seconds
    budgets = sorted(scale * b for b in args.budgets)
    events = evaluation_points(budgets, args.nearby, cooldown)
    # the learning curve: the run's weights (before any cool-down) near fractions of the
    # longest budget, as a train.py run keeps them
    events += [(c * f * budgets[-1], c, "curve", c * f) for c in sorted(args.curve)
               for f in (*sorted(args.nearby), 1.0)]
    events.sort(key=lambda event: event[0])
    step_marks = sorted(args.equal_steps)
    points = {budget: [] for budget in budgets}
    curve, at_steps_points = {c: [] for c in args.curve}, []
    results, steps, epoch = [], 0, 0
    clock = BudgetClock("cpu" if args.clock == "steps" else args.clock)
    spent = (lambda: steps) if args.clock == "steps" else clock.seconds

    def score(target, fraction, scored, at_steps):
        target.append(dict(fraction=fraction, steps=at_steps,
                           **evaluate(scored, test_set, args.sample_rate)))

    def write():
        curve_figures = [dict(curve_fraction=c, **mean_of_points(curve[c]))
                         for c in sorted(curve) if len(curve[c]) == len(args.nearby) + 1]
        write_results(name, config, args, results, curve_figures,
                      equal_step_figure(at_steps_points, args))

    while events:
        epoch += 1
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(epoch)
        for batch in loader:
            lr = budget_lr(spent() / budgets[-1], peak) if config["schedule"] else None
            loss = train_step(model, optimiser, loss_fn, batch, lr)
            if averaged is not None:
                averaged.update_parameters(model)
            steps += 1
            while step_marks and steps >= step_marks[0]:
                clock.pause()
                score(at_steps_points, spent() / budgets[-1],
                      averaged.module if averaged is not None else model, step_marks.pop(0))
                clock.resume()
            while events and spent() >= events[0][0]:
                clock.pause()
                _, budget, kind, fraction = events.pop(0)
                scored, total_steps, last_loss = averaged.module if averaged is not None else model, steps, loss
                if kind == "curve":  # here ``budget`` is the curve's point
                    score(curve[budget], fraction, scored, steps)
                elif kind == "point":
                    score(points[budget], fraction, scored, steps)
                else:  # the cool-down copy: its compute is charged to this budget only
                    marks = [(f, f * budget - spent()) for f in args.nearby
                             if f * budget > (1.0 - cooldown) * budget]
                    scored, extra, branch_loss = cool_down(
                        model, optimiser, loss_fn, branch_loader, budget - spent(), args.clock,
                        marks, lambda f, copy_, n: score(points[budget], f, copy_, steps + n))
                    total_steps += extra
                    last_loss = loss if branch_loss is None else branch_loss  # None: no room left
                    score(points[budget], 1.0, scored, total_steps)
                if kind != "curve" and points[budget] and points[budget][-1]["fraction"] == 1.0:
                    results.append(dict(budget_min=budget / scale, steps=total_steps,
                                        epochs=epoch, cpu_seconds=clock.seconds(),
                                        train_loss=float(last_loss.detach()),
                                        **mean_of_points(points[budget])))
                    print(f"[{name}] {brief(results[-1])}", flush=True)
                    write()  # kept if a later budget is cut off
                clock.resume()
            if not events:
                break
    write()  # the curve's and the equal-step figure's last points


def write_results(name, config, args, results, curve=(), equal_steps=None):
    """``results``: a figure per budget; ``curve``: a figure per ``--curve`` point of the
    longest budget's run; ``equal_steps``: the figure at ``--equal_steps`` (or None)."""
    with open(os.path.join(args.out, f"{name}.json"), "w") as f:
        json.dump(dict(variant=name, config=config, args=vars(args), results=results,
                       curve=list(curve), equal_steps=equal_steps), f, indent=1)


def table(args):
    """The results found in ``args.out``, a row per variant; a budget a variant did not
    reach (cut off) shows as '-'. With ``--equal_steps``, a column at those steps; with
    ``--curve``, a second table: the learning curve."""
    runs = {}
    for name in args.variants:
        path = os.path.join(args.out, f"{name}.json")
        if os.path.isfile(path):
            with open(path) as f:
                runs[name] = json.load(f)
    rows = {name: {r["budget_min"]: r for r in run["results"]} for name, run in runs.items()}
    budgets = sorted(args.budgets)
    base = rows.get("speechbrain")
    unit = "steps" if args.clock == "steps" else "min"
    head = " | ".join(f"{b:g} {unit}: SI-SNRi (steps)" for b in budgets)
    where = " and ".join(f"{f:g}" for f in sorted(args.nearby))
    points = f"; each figure the mean of the test scores at {where} of the budget and at its end" if where else ""
    marks = "/".join(str(n) for n in sorted(args.equal_steps))
    steps_head = f" at {marks} steps: SI-SNRi, - SpeechBrain [95% paired CI] |" if marks else ""
    lines = [f"{args.clock} clock, {args.threads} thread(s) per variant, {args.jobs} at once{points}",
             f"| variant | {head} | STOI at {budgets[-1]:g} {unit} | x SpeechBrain at {budgets[-1]:g} {unit} "
             f"| - SpeechBrain, dB [95% paired CI] |{steps_head}",
             "|---|" + "---|" * (len(budgets) + 3 + bool(marks))]
    base_steps = (runs.get("speechbrain") or {}).get("equal_steps")
    for name, by_budget in rows.items():
        cells = [f"{by_budget[b]['si_snr_i']:.2f} ({by_budget[b]['steps']})" if b in by_budget
                 else "-" for b in budgets]
        last, base_last = by_budget.get(budgets[-1]), (base or {}).get(budgets[-1])
        stoi = f"{last['stoi']:.3f}" if last else "-"
        ratio = f"{last['si_snr_i'] / base_last['si_snr_i']:.2f}" if last and base_last else "-"
        line = (f"| {name} | " + " | ".join(cells) + f" | {stoi} | {ratio} | "
                f"{paired_gain(last, base_last)} |")
        if marks:
            at_steps = runs[name].get("equal_steps")
            if at_steps and at_steps.get("complete", True):
                both = base_steps and base_steps.get("complete", True)
                line += f" {at_steps['si_snr_i']:.2f}, {paired_gain(at_steps, base_steps) if both else '-'} |"
            else:
                line += " - (not all reached) |" if at_steps else " - |"
        lines.append(line)
    curves = {name: {p["curve_fraction"]: p for p in run.get("curve", [])} for name, run in runs.items()}
    if args.curve and any(curves.values()):
        longest, base_curve = budgets[-1], curves.get("speechbrain", {})
        lines += ["", f"learning curve of the {longest:g}-{unit} runs (before any cool-down; each "
                  "point the mean at its own nearby points): SI-SNRi (steps), - SpeechBrain [95% paired CI]",
                  "| variant | " + " | ".join(f"{c * longest:g} {unit}" for c in sorted(args.curve))
                  + f" | {longest:g} {unit} (the budget's figure) |",
                  "|---|" + "---|" * (len(args.curve) + 1)]
        for name, curve in curves.items():
            cells = []
            for c in sorted(args.curve):
                p = curve.get(c)
                cells.append(f"{p['si_snr_i']:.2f} ({p['points'][-1]['steps']}), "
                             f"{paired_gain(p, base_curve.get(c))}" if p else "-")
            last = rows[name].get(longest)
            cells.append(f"{last['si_snr_i']:.2f} ({last['steps']})" if last else "-")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paired_gain(result, baseline):
    """``result - baseline`` SI-SNRi over the same test mixtures, with its 95% bootstrap
    interval ('-' where either lacks per-mixture scores)."""
    if not (result and baseline and "per_mixture" in result and "per_mixture" in baseline):
        return "-"
    from spksep_modules.reports.stats import paired_difference

    ours = dict(zip(result["per_mixture"]["ids"], result["per_mixture"]["si_snr_i"]))
    base = dict(zip(baseline["per_mixture"]["ids"], baseline["per_mixture"]["si_snr_i"]))
    if set(ours) != set(base):
        return "-"
    ids = sorted(ours)
    d = paired_difference([ours[i] for i in ids], [base[i] for i in ids])
    return f"{d['mean']:+.2f} [{d['low']:+.2f}, {d['high']:+.2f}]"


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=None, help="a LibriMix-layout folder (default: the demo set)")
    parser.add_argument("--out", default=os.path.join(HERE, "out", "time_to_quality"))
    parser.add_argument("--sample_rate", type=int, default=16000)
    parser.add_argument("--budgets", type=float, nargs="+", default=[5, 10, 20], help="minutes")
    parser.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS, choices=list(VARIANTS))
    parser.add_argument("--clock", choices=("cpu", "wall", "steps"), default="cpu",
                        help="steps: --budgets count training steps (equal compute for "
                             "variants of the same model, whatever the machine's load)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=2, help="variants trained at once")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--segment", type=float, default=2.0, help="seconds")
    parser.add_argument("--lr", type=float, default=1e-3, help="constant learning rate")
    parser.add_argument("--peak_lr", type=float, default=3e-3, help="with the schedule")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--valid_seconds", type=float, default=4.0,
                        help="train.py variants: dev utterances cut to their first this many "
                             "seconds (the validation that picks the checkpoint costs little)")
    parser.add_argument("--nearby", type=float, nargs="*", default=[0.9, 0.95],
                        help="fractions of each budget also scored: a budget's figure is the "
                             "mean over these points and its end (none: the end alone)")
    parser.add_argument("--nearby_runs", action="store_true",
                        help="train.py variants with a cool-down: each nearby point is a run of "
                             "that length (cooled down by its own end), not a snapshot inside "
                             "the cool-down of the budget's run")
    parser.add_argument("--curve", type=float, nargs="*", default=[],
                        help="learning curve: fractions of the longest budget at which the run "
                             "(before any cool-down) is also scored, each the mean over its own "
                             "nearby points (say 0.25 0.5)")
    parser.add_argument("--equal_steps", type=int, nargs="*", default=[],
                        help="training steps at which every variant is also scored (say 760 800 "
                             "840): a figure at equal steps beside the one at equal time")
    parser.add_argument("--train", default=None, help=argparse.SUPPRESS)  # one variant, here
    parser.add_argument("--table", action="store_true", help="only print the table of --out")
    return parser.parse_args(argv)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    if args.train:
        train_variant(args.train, args)
        return
    if args.table:
        print(table(args))
        return
    prepare_data(args)  # once, before the variants share it
    # The compiled TCN kernels are built (once per machine) before any clock starts.
    from spksep_modules.nnet.native import tcn_kernels
    tcn_kernels()
    pending, running = list(args.variants), []
    while pending or running:
        while pending and len(running) < args.jobs:
            name = pending.pop(0)
            env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
            running.append(subprocess.Popen(
                [sys.executable, os.path.abspath(__file__), *argv, "--train", name], env=env))
        running[0].wait()
        if running[0].returncode:
            print(f"variant failed: {running[0].args[-1]} (exit {running[0].returncode})")
        running.pop(0)
    print(table(args))


if __name__ == "__main__":
    main()
