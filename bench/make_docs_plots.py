#!/usr/bin/env python3
"""The README's figures and gains table, from real (small) runs.

    python bench/make_docs_plots.py                      # trains the runs (see below)
    python bench/make_docs_plots.py --runs demo_run/runs/convtasnet demo_run/runs/weighted_sum ...

Without ``--runs`` it writes a demo set (the synthetic LibriMix-layout data of ``make demo``)
under ``--workdir`` and trains, with the LibriMix recipe, a Conv-TasNet baseline, P
weighted-sum (GE2E representation, the demo's calibrated weights) and the conditioned model
(GE2E embeddings) on that baseline, smaller and shorter than ``make demo``: about 15
minutes of CPU time here (29 minutes on 2 cores shared with other work). Finished runs are
reused. It then writes ``learning_curves.png``, ``si_snri.png`` and ``spectrograms.png`` into
``--out`` (default ``docs/``) with a 256-colour palette, checks each is under 200 kB, and
prints the tables with the gains (``spksep table``).
"""

import argparse
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from spksep_modules.data.demo import make_demo_data  # noqa: E402
from spksep_modules.reports.plots import plot_runs  # noqa: E402
from spksep_modules.reports.tables import tables  # noqa: E402

RECIPE = os.path.join(ROOT, "recipes", "LibriMix", "separation")
SMALL = ["--N=64", "--L=16", "--B=32", "--H=64", "--P=3", "--X=4", "--R=2", "--batch_size=8",
         "--num_workers=0", "--segment_seconds=1.0", "--lr=0.003"]
# The demo's calibrated perceptual setting, with the warm-up and calibration short enough
# that the term trains for most of the 60 steps (6 epochs of 10 batches).
CALIBRATED = ["--representation=ge2e", "--normalised_distances=True", "--perceptual_share=0.1",
              "--perceptual_warmup=10", "--calibration_batches=5"]
MODELS = {
    "convtasnet": ["hparams/convtasnet.yaml", "--number_of_epochs=6", *SMALL],
    "weighted_sum": ["hparams/weighted_sum.yaml", "--number_of_epochs=6", *SMALL, *CALIBRATED],
    "conditioning": ["hparams/conditioning.yaml", "--number_of_epochs=3", "--speaker_net=ge2e",
                     "--stack_channels=32", "--num_layers=20", "--film_hidden=64",
                     "--batch_size=8", "--num_workers=0", "--segment_seconds=1.0"],
}
DATA = dict(num_train=80, num_dev=8, num_test=24, seconds=2.0, num_train_speakers=40)
MAX_BYTES = 200_000


def train(name, data, runs, extra=()):
    out = os.path.join(runs, name)
    if os.path.isfile(os.path.join(out, "test_summary.json")):
        print(f"[docs] {name}: already trained ({out})")
        return out
    hparams, *args = MODELS[name]
    cmd = [sys.executable, "train.py", hparams, f"--data_folder={data}", f"--output_folder={out}",
           "--device=cpu", "--noprogressbar", *args, *extra]
    print(f"[docs] training {name}", flush=True)
    start = time.time()
    subprocess.run(cmd, cwd=RECIPE, check=True)
    print(f"[docs] {name}: {time.time() - start:.0f} s", flush=True)
    return out


def shrink(path):
    """Rewrite a PNG with a 256-colour palette: a third of the bytes, no visible change."""
    from PIL import Image

    with Image.open(path) as image:
        small = image.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    small.save(path, optimize=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default=os.path.join(ROOT, "bench", "out", "docs_runs"))
    parser.add_argument("--out", default=os.path.join(ROOT, "docs"))
    parser.add_argument("--runs", nargs="+", help="finished run folders to plot instead of "
                                                  "training the small ones")
    parser.add_argument("--dpi", type=int, default=72)
    args = parser.parse_args(argv)

    runs = args.runs
    if not runs:
        data = make_demo_data(os.path.join(args.workdir, "data"), **DATA)
        folder = os.path.join(args.workdir, "runs")
        base = train("convtasnet", data, folder)
        runs = [base, train("weighted_sum", data, folder),
                train("conditioning", data, folder, [f"--basic_model={base}"])]
    written = plot_runs(runs, args.out, dpi=args.dpi)
    for path in written:
        shrink(path)
        size = os.path.getsize(path)
        print(f"{path}: {size / 1000:.0f} kB")
        if size > MAX_BYTES:
            raise SystemExit(f"{path}: {size} bytes, over {MAX_BYTES}: lower --dpi")
    print()
    print(tables(runs, significance=True))


if __name__ == "__main__":
    main()
