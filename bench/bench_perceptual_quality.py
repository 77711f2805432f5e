"""Do the perceptual losses help? Baseline, weighted-sum, triplet-like and both ablations,
trained for the same number of steps, evaluated on the same test mixtures.

    python bench/bench_perceptual_quality.py                       # the demo set, GE2E
    python bench/bench_perceptual_quality.py --data_folder=/data/Libri2Mix --epochs=...
    python bench/bench_perceptual_quality.py --seeds 1234 7 --models convtasnet weighted_sum

Every model uses the recipes' own yaml files with the same small Conv-TasNet as
``make demo`` (its sizes and segment length), GE2E as the representation (it runs offline),
normalised distances and calibrated weights (``--perceptual_share``, after a warm-up of
``--warmup`` batches). Prints, per model, test SI-SNRi and STOI with the paired difference
against the baseline (mean and 95% bootstrap interval over test mixtures), and how D_neg
moved during training (first and last epoch). The unprocessed mixtures' row (each estimate
is the mixture itself) says whether the baseline has learnt to keep intelligibility yet: a
model below the input's STOI is too short a run to judge a perceptual term on. With several
``--seeds``, a table per seed and one over the seeds (each mixture's score averaged over
them, then paired). Runs that already finished are reused.
"""

import argparse
import csv
import os
import re
import subprocess
import sys

from spksep_modules.data.demo import make_demo_data
from spksep_modules.demo import DATA, RECIPE, SMALL
from spksep_modules.reports.stats import paired_difference

MODELS = ["convtasnet", "weighted_sum", "triplet_like", "ablation_pos", "ablation_neg"]


def train(name, data, out, args):
    if os.path.isfile(os.path.join(out, "test_results.csv")):
        return
    cmd = [sys.executable, "train.py", f"hparams/{name}.yaml", f"--data_folder={data}",
           f"--output_folder={out}", "--device=cpu", "--noprogressbar", *SMALL,
           f"--number_of_epochs={args.epochs}", f"--seed={args.seed}",
           f"--sample_rate={args.sample_rate}"]
    if name != "convtasnet":
        cmd += ["--representation=ge2e", "--normalised_distances=True",
                f"--perceptual_share={args.share}", f"--perceptual_warmup={args.warmup}"]
    if name == "triplet_like":  # a margin in units of the clean features' spread
        cmd += [f"--alpha={args.alpha}"]
    print(f"[bench] {name}: {' '.join(cmd[2:])}", flush=True)
    subprocess.run(cmd, cwd=RECIPE, check=True, stdout=subprocess.DEVNULL)


def results(out):
    with open(os.path.join(out, "test_results.csv")) as f:
        return {row["mixture_ID"]: row for row in csv.DictReader(f)}


def d_neg_trace(out):
    """D_neg of the first and last epoch that logged it (train stats)."""
    with open(os.path.join(out, "train_log.txt")) as f:
        values = [float(m) for m in re.findall(r"train D_neg: ([-\d.e+]+)", f.read())]
    return (values[0], values[-1]) if values else None


def input_scores(data, workdir, sample_rate):
    """The unprocessed mixtures' test rows: SI-SNRi 0 and the mixture's own STOI against
    each source (the estimate of every speaker is the mixture)."""
    import torch

    from spksep_modules.data.librimix import prepare_librimix
    from spksep_modules.data.pipeline import build_datasets
    from spksep_modules.metrics import evaluate_mixture

    csvs = prepare_librimix(data, os.path.join(workdir, "csv"), sample_rate)
    rows = {}
    for item in build_datasets({"test": csvs["test"]}, sample_rate, 2)["test"]:
        mix, sources = item["mix_sig"], item["sources"]
        est = torch.stack([mix] * sources.shape[-1], dim=-1)
        rows[item["id"]] = {k: float(v) for k, v in evaluate_mixture(mix, est, sources, sample_rate).items()}
    return rows


def averaged(tables):
    """Each mixture's scores averaged over runs (seeds): ``{id: {key: mean}}``.

    Example
    -------
    >>> averaged([{"m": {"si_snr_i": 1.0, "stoi": 0.5}}, {"m": {"si_snr_i": "3.0", "stoi": 0.7}}])
    {'m': {'si_snr_i': 2.0, 'stoi': 0.6}}
    """
    ids = tables[0].keys()
    return {i: {key: sum(float(t[i][key]) for t in tables) / len(tables)
                for key in ("si_snr_i", "stoi")} for i in ids}


def print_table(title, base, by_model, inputs=None, traces=None):
    ids = sorted(base)
    print(f"\n{title}\n")
    print("| model | SI-SNRi (dB) | vs baseline [95% CI] | STOI | vs baseline [95% CI] | D_neg first -> last epoch |")
    print("|---|---|---|---|---|---|")
    rows = ({"unprocessed mixture": inputs} if inputs else {}) | by_model
    for name, rows_of in rows.items():
        if sorted(rows_of) != ids:
            raise SystemExit(f"{name}: evaluated on other test mixtures than the baseline")
        cells = []
        for key in ("si_snr_i", "stoi"):
            ours = [float(rows_of[i][key]) for i in ids]
            cells.append(f"{sum(ours) / len(ours):.3f}")
            if name == "convtasnet":
                cells.append("-")
                continue
            d = paired_difference(ours, [float(base[i][key]) for i in ids])
            cells.append(f"{d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]")
        trace = (traces or {}).get(name)
        cells.append("-" if trace is None else f"{trace[0]:.3f} -> {trace[1]:.3f}")
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data_folder", default=None, help="LibriMix-layout folder (default: demo set)")
    parser.add_argument("--workdir", default="bench/out/perceptual_quality")
    parser.add_argument("--epochs", type=int, default=25)
    parser.add_argument("--share", type=float, default=0.03)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--alpha", type=float, default=1.0, help="triplet margin (normalised)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1234])
    parser.add_argument("--models", nargs="+", default=MODELS, choices=MODELS,
                        help="the baseline (convtasnet) is always trained")
    parser.add_argument("--sample_rate", type=int, default=16000, help="the recipe's default")
    args = parser.parse_args(argv)
    data = args.data_folder or make_demo_data(os.path.join(args.workdir, "data"), **DATA)
    models = ["convtasnet"] + [m for m in args.models if m != "convtasnet"]
    per_seed = {}
    for seed in args.seeds:
        args.seed = seed
        runs = {m: os.path.abspath(os.path.join(args.workdir, f"{m}_{seed}")) for m in models}
        for name, out in runs.items():
            train(name, data, out, args)
        per_seed[seed] = runs

    inputs = input_scores(data, args.workdir, args.sample_rate)
    setting = (f"{args.epochs} epochs, same steps for every model; GE2E, normalised distances, "
               f"share {args.share}, warm-up {args.warmup} batches")
    for seed, runs in per_seed.items():
        by_model = {name: results(out) for name, out in runs.items()}
        print_table(f"Seed {seed}: {setting}; {len(by_model['convtasnet'])} test mixtures.",
                    by_model["convtasnet"], by_model, inputs,
                    {name: d_neg_trace(out) for name, out in runs.items()})
    if len(args.seeds) > 1:
        pooled = {name: averaged([results(per_seed[s][name]) for s in args.seeds]) for name in models}
        print_table(f"Seeds {', '.join(map(str, args.seeds))}: each mixture's scores averaged over "
                    f"the seeds, then paired; {setting}.", pooled["convtasnet"], pooled, inputs)


if __name__ == "__main__":
    main()
