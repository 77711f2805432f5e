"""``make demo``: the whole pipeline on synthetic data, on a laptop CPU, in minutes.

Writes the demo set, trains the paper's models briefly at small sizes (the same recipes and
yaml files as for LibriMix, with command-line overrides), evaluates each and prints Table I.
A model whose run already has ``test_summary.json`` is not trained again, and an
interrupted run resumes from its last checkpoint.
"""

import argparse
import os
import subprocess
import sys
import time

from spksep_modules.data.demo import make_demo_data
from spksep_modules.tables import tables

RECIPE = os.path.join(os.path.dirname(__file__), "..", "recipes", "LibriMix", "separation")

# Small enough for 2 CPU cores; the model is the same Conv-TasNet, only narrower and shallower.
SMALL = [
    "--N=128", "--L=16", "--B=64", "--H=128", "--P=3", "--X=6", "--R=2",
    "--batch_size=4", "--num_workers=0", "--segment_seconds=2.0",
]
MODELS = {
    "convtasnet": ["hparams/convtasnet.yaml", "--number_of_epochs=30"],
    "weighted_sum": ["hparams/weighted_sum.yaml", "--number_of_epochs=30", "--representation=ge2e"],
    "triplet_like": ["hparams/triplet_like.yaml", "--number_of_epochs=30", "--representation=ge2e"],
    # Starts from the trained baseline, as in the paper.
    "conditioning": ["hparams/conditioning.yaml", "--number_of_epochs=15", "--speaker_net=ge2e"],
}


def train(name: str, data: str, runs: str, extra=()) -> str:
    out = os.path.abspath(os.path.join(runs, name))
    if os.path.isfile(os.path.join(out, "test_summary.json")):
        print(f"[demo] {name}: already trained ({out})")
        return out
    hparams, *model_args = MODELS[name]
    cmd = [
        sys.executable, "train.py", hparams, f"--data_folder={data}", f"--output_folder={out}",
        "--device=cpu", "--noprogressbar", *SMALL, *model_args, *extra,
    ]
    print(f"[demo] training {name}: {' '.join(cmd[1:])}", flush=True)
    start = time.time()
    subprocess.run(cmd, cwd=RECIPE, check=True)
    print(f"[demo] {name}: done in {time.time() - start:.0f} s", flush=True)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", default="demo_run")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    args = parser.parse_args(argv)

    data = make_demo_data(os.path.join(args.workdir, "data"))
    runs = os.path.join(args.workdir, "runs")
    done = []
    for name in args.models:
        extra = []
        if name == "conditioning":
            extra = [f"--basic_model={train('convtasnet', data, runs)}"]
        done.append(train(name, data, runs, extra))
    print()
    print(tables(done))


if __name__ == "__main__":
    main()
