"""`spksep plot`: every figure is written and non-empty; learning curves and distributions on
fabricated runs, spectrograms (and the TensorBoard and PESQ switches) on a real tiny run."""

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from spksep_modules import SpkSepError
from spksep_modules.cli import main
from spksep_modules.data.demo import make_demo_data
from spksep_modules.reports.plots import median_mixture, plot_runs, plot_spectrograms
from spksep_modules.reports.run_logs import read_train_log

ROOT = Path(__file__).resolve().parents[2]
SEPARATION = ROOT / "recipes" / "LibriMix" / "separation"
TINY = ["--N=16", "--L=8", "--B=8", "--H=16", "--X=2", "--R=1", "--device=cpu", "--noprogressbar",
        "--num_workers=0", "--segment_seconds=0.5", "--batch_size=2", "--number_of_epochs=1"]
PNG = b"\x89PNG\r\n\x1a\n"


def is_png(path, min_bytes=5000):
    path = Path(path)
    return path.is_file() and path.read_bytes()[:8] == PNG and path.stat().st_size > min_bytes


def png_size(path):
    from matplotlib.image import imread

    return imread(path).shape[:2]


def fake_run(root, name, model, shift, epochs=4, terms=()):
    """A finished run: train_log.txt with SpeechBrain's format, test results and summary."""
    run = root / name
    run.mkdir()
    rng = np.random.default_rng(len(name))
    with open(run / "train_log.txt", "w") as f:
        for e in range(1, epochs + 1):
            extra = "".join(f", train {t}: {rng.uniform(0.1, 0.9):.2e}" for t in terms if t != "si_snr_intermediate")
            inter = f", valid si_snr_intermediate: {4 + e:.2f}" if "si_snr_intermediate" in terms else ""
            print(f"epoch: {e}, lr: 1.00e-03 - train loss: {-3.0 - e - shift:.2f}, train si_snr: "
                  f"{3.0 + e + shift:.2f}{extra} - valid loss: {-2.5 - e - shift:.2f}, valid si_snr: "
                  f"{2.5 + e + shift:.2f}{inter}", file=f)
        print("Epoch loaded: 4 - test si_snr: 7.00, test model: x", file=f)
    base = np.random.default_rng(0).normal(8.0, 3.0, 30)
    with open(run / "test_results.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["mixture_ID", "si_snr", "si_snr_i", "sdr", "sdr_i", "stoi"])
        for i, v in enumerate(base + shift + rng.normal(0, 0.3, base.size)):
            writer.writerow([f"m{i:02d}", v, v, v, v, 0.8])
    (run / "test_summary.json").write_text(json.dumps({"model": model, "num_test": 30}))
    return run


@pytest.fixture
def fake_runs(tmp_path):
    return [fake_run(tmp_path, "base", "convtasnet", 0.0),
            fake_run(tmp_path, "ws", "weighted_sum", 0.5, terms=("D_pos", "D_neg", "perceptual")),
            fake_run(tmp_path, "cond", "conditioning", 1.0, epochs=3, terms=("si_snr_intermediate",))]


def test_curves_and_distributions_are_written_and_non_empty(fake_runs, tmp_path):
    written = plot_runs(fake_runs, tmp_path / "plots", plots=["curves", "distributions"])
    assert [Path(p).name for p in written] == ["learning_curves.png", "si_snri.png"]
    assert all(is_png(p) for p in written)
    height, width = png_size(written[0])
    assert width > 1000 and height > 500  # 5 panels: SI-SNR, loss, D_pos, D_neg, intermediate
    only_base = plot_runs(fake_runs[:1], tmp_path / "one", plots=["curves", "distributions"])
    assert all(is_png(p) for p in only_base)
    assert png_size(only_base[1])[1] < png_size(written[1])[1]  # no paired panel without others


def test_curves_plot_runs_still_training(fake_runs, tmp_path):
    (fake_runs[0] / "test_results.csv").unlink()
    (fake_runs[0] / "test_summary.json").unlink()
    assert is_png(plot_runs(fake_runs, tmp_path / "p", plots=["curves"])[0])
    with pytest.raises(SpkSepError, match="base/test_results.csv: missing"):
        plot_runs(fake_runs, tmp_path / "p", plots=["distributions"])


def test_plot_command_and_its_one_line_errors(fake_runs, tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["plot", *map(str, fake_runs), "--out", str(out), "--plots", "curves", "distributions"]) == 0
    printed = capsys.readouterr().out.split()
    assert printed == [str(out / "learning_curves.png"), str(out / "si_snri.png")]
    other = fake_run(tmp_path, "other", "triplet_like", 0.0)
    rows = (other / "test_results.csv").read_text().replace("m00,", "zz,")
    (other / "test_results.csv").write_text(rows)
    assert main(["plot", str(fake_runs[0]), str(other), "--out", str(out), "--plots", "distributions"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "different test sets" in err
    assert main(["plot", str(tmp_path / "nothing"), "--out", str(out), "--plots", "curves"]) == 2
    assert "train_log.txt: missing" in capsys.readouterr().err


# -- a real tiny run: spectrograms need a model and test audio ------------------------------

@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    """One epoch of a tiny Conv-TasNet with the yaml switches `pesq` and `tensorboard` on."""
    root = tmp_path_factory.mktemp("real")
    data = make_demo_data(root / "data", num_train=6, num_dev=2, num_test=2, seconds=0.8,
                          num_train_speakers=4, num_dev_speakers=2, num_test_speakers=2)
    yaml = root / "switches.yaml"  # the keys hparams/training.yaml may not have yet
    yaml.write_text(f"extends: [{SEPARATION / 'hparams' / 'convtasnet.yaml'}]\n"
                    "pesq: True\ntensorboard: True\n")
    out = root / "runs" / "convtasnet"
    proc = subprocess.run([sys.executable, "train.py", str(yaml), f"--data_folder={data}",
                           f"--output_folder={out}", *TINY], cwd=SEPARATION, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_pesq_switch_adds_a_column(real_run):
    with open(real_run / "test_results.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[-1] == "pesq" and len(rows) == 2
    assert all(1.0 <= float(r["pesq"]) <= 4.65 for r in rows)
    summary = json.loads((real_run / "test_summary.json").read_text())
    assert summary["pesq_mode"] == "wb" and summary["pesq"] == pytest.approx(
        np.mean([float(r["pesq"]) for r in rows]))


def test_tensorboard_switch_logs_every_epoch_beside_the_text_log(real_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(real_run / "tensorboard"))
    events.Reload()
    scalars = events.Tags()["scalars"]
    for tag in ("loss/train", "si_snr/train", "loss/valid", "si_snr/valid", "lr", "si_snr_i/test"):
        assert tag in scalars
    valid = events.Scalars("si_snr/valid")
    assert [e.step for e in valid] == [1]  # the step is the epoch
    text_log = read_train_log(real_run)  # the same value as the text log (3 digits there)
    assert valid[0].value == pytest.approx(text_log[0]["valid si_snr"], rel=1e-2)


def test_spectrograms_of_the_median_mixture_and_a_chosen_one(real_run, tmp_path):
    second = tmp_path / "weighted_sum"  # a second "model": the same run under another name
    shutil.copytree(real_run, second)
    summary = json.loads((second / "test_summary.json").read_text())
    (second / "test_summary.json").write_text(json.dumps({**summary, "model": "weighted_sum"}))
    written = plot_runs([real_run, second], tmp_path / "plots")
    assert [Path(p).name for p in written] == ["learning_curves.png", "si_snri.png", "spectrograms.png"]
    assert all(is_png(p) for p in written)
    height, width = png_size(written[2])
    assert height > width * 0.5  # 3 rows (mixture and references, 2 models) of 3 panels
    with open(real_run / "test_results.csv") as f:
        ids = [r["mixture_ID"] for r in csv.DictReader(f)]
    assert median_mixture([real_run]) in ids
    chosen = plot_spectrograms([real_run], tmp_path / "one.png", mixture=ids[1])
    assert is_png(chosen)
    with pytest.raises(SpkSepError, match="mixture nope: not in the test.csv"):
        plot_spectrograms([real_run], tmp_path / "x.png", mixture="nope")
