"""Do the perceptual losses help? Baseline, weighted-sum, triplet-like and both ablations,
trained for the same number of steps, evaluated on the same test mixtures.

    python bench/bench_perceptual_quality.py                       # the demo set, GE2E
    python bench/bench_perceptual_quality.py --data_folder=/data/Libri2Mix --epochs=...

Every model uses the recipes' own yaml files with the same small Conv-TasNet as
``make demo`` (its sizes and segment length), GE2E as the representation (it runs offline),
normalised distances and calibrated weights (``--perceptual_share``, after a warm-up of
``--warmup`` batches). Prints, per model, test SI-SNRi and STOI with the paired difference
against the baseline (mean and 95% bootstrap interval over test mixtures), and how D_neg
moved during training (first and last epoch). Runs that already finished are reused.
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
           f"--number_of_epochs={args.epochs}", f"--seed={args.seed}"]
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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data_folder", default=None, help="LibriMix-layout folder (default: demo set)")
    parser.add_argument("--workdir", default="bench/out/perceptual_quality")
    parser.add_argument("--epochs", type=int, default=25)
    parser.add_argument("--share", type=float, default=0.03)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--alpha", type=float, default=1.0, help="triplet margin (normalised)")
    parser.add_argument("--seed", type=int, default=1234)
    args = parser.parse_args(argv)
    data = args.data_folder or make_demo_data(os.path.join(args.workdir, "data"), **DATA)
    runs = {m: os.path.abspath(os.path.join(args.workdir, f"{m}_{args.seed}")) for m in MODELS}
    for name, out in runs.items():
        train(name, data, out, args)

    base = results(runs["convtasnet"])
    ids = sorted(base)
    print(f"\nSame steps for every model ({args.epochs} epochs), {len(ids)} test mixtures, "
          f"GE2E, normalised distances, share {args.share}, warm-up {args.warmup} batches.\n")
    print("| model | SI-SNRi (dB) | vs baseline [95% CI] | STOI | vs baseline [95% CI] | D_neg first -> last epoch |")
    print("|---|---|---|---|---|---|")
    for name, out in runs.items():
        rows = results(out)
        if sorted(rows) != ids:
            raise SystemExit(f"{out}: evaluated on other test mixtures than the baseline")
        cells = []
        for key in ("si_snr_i", "stoi"):
            ours = [float(rows[i][key]) for i in ids]
            mean = sum(ours) / len(ours)
            if name == "convtasnet":
                cells += [f"{mean:.3f}", "-"]
                continue
            d = paired_difference(ours, [float(base[i][key]) for i in ids])
            cells += [f"{mean:.3f}", f"{d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]"]
        trace = d_neg_trace(out)
        cells.append("-" if trace is None else f"{trace[0]:.3f} -> {trace[1]:.3f}")
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
