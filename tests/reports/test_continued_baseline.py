"""The continued baseline: the conditioned model paired with the baseline trained on for the
same extra compute (``spksep table`` and ``make demo``), on fabricated runs; the budget it
takes from the conditioned run's log; the demo's lanes and command line for it."""

import os
import sys

import numpy as np
import pytest

from spksep_modules import SpkSepError, demo
from spksep_modules.cli import main
from spksep_modules.reports.run_logs import budget_spent
from spksep_modules.reports.tables import report, tables

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # --import-mode=importlib
from test_tables import BASE, IDS, fake_run, row  # noqa: E402

OVER = "### Conditioning over the continued baseline (same extra compute)"
NOISE = np.random.default_rng(2).normal(0.0, 0.2, len(IDS))
WANT = 0.2 + float(np.mean(NOISE))  # the conditioned model's mean gain over the continued one


@pytest.fixture
def runs(tmp_path):
    return {
        "base": fake_run(tmp_path, "base", "convtasnet", BASE),
        "continued": fake_run(tmp_path, "continued", "convtasnet_continued", BASE + 0.3),
        "cond": fake_run(tmp_path, "cond", "conditioning", BASE + 0.5 + NOISE),
    }


def test_conditioning_is_paired_with_the_continued_baseline_too(runs, capsys):
    text, data = report(list(runs.values()), resamples=2000)
    over_base, over_continued = text.split(OVER)
    # Over the baseline: both trained-on models, the continued one under its own label.
    assert "| Conv-TasNet (continued) | - | **+0.300** | **[+0.300, +0.300]** | 100% |" in over_base
    assert row(over_base, "Conditioning").startswith("| Conditioning | +0.745 |")
    # Over the continued baseline: the conditioned model only, its gain less the 0.3 dB.
    [pairing] = data["over_continued"]
    [gain] = pairing["gains"]
    assert pairing["baseline"] == str(runs["continued"]) and gain["model"] == "conditioning"
    assert gain["mean"] == pytest.approx(WANT) and gain["low"] > 0 and gain["paper_gap"] is None
    assert f"Baseline: `{runs['continued']}`, 60 test mixtures" in over_continued
    assert row(over_continued, "Conditioning").startswith(f"| Conditioning | - | **{WANT:+.3f}** |")
    assert "Conv-TasNet (continued) |" not in over_continued.split("|---|")[-1]
    # Table I gets the continued run's row (no paper numbers) after the paper's rows.
    table_i = [line for line in text.split("### Gains")[0].splitlines() if line.startswith("|")]
    assert table_i[-2].startswith("| Conditioning | 14.863 |")
    continued_row = table_i[-1]
    assert continued_row.startswith("| Conv-TasNet (continued) | - | ")
    assert continued_row.endswith("| - | 0.900 | 60 |")
    # The CLI prints the same section (and the explicit --baseline does not leak into it).
    assert main(["table", *map(str, runs.values()), "--baseline", str(runs["base"]),
                 "--resamples", "2000"]) == 0
    assert f"| Conditioning | - | **{WANT:+.3f}** |" in capsys.readouterr().out.split(OVER)[1]


def test_without_both_runs_the_report_is_as_before(runs):
    for pair in (("base", "cond"), ("base", "continued")):
        text, data = report([runs[k] for k in pair])
        assert OVER not in text and "over_continued" not in data
    assert "(continued)" not in tables([runs["base"], runs["cond"]], significance=True)
    # The continued run is not a second baseline: the plain convtasnet run stays the one.
    assert report([runs["continued"], runs["base"]])[1]["pairing"]["baseline"] == str(runs["base"])


def write_log(run, lines, clock="cpu"):
    run.mkdir(exist_ok=True)
    (run / "train_log.txt").write_text("".join(line + "\n" for line in lines))
    (run / "hyperparams.yaml").write_text(f"budget_minutes: null\nbudget_clock: {clock}  # wall | cpu\n")


def test_budget_spent_is_the_last_epoch_line_of_the_log(tmp_path):
    run = tmp_path / "cond"
    write_log(run, [
        "epoch: 1, steps: 25, budget_spent: 0.50 min, lr: 2.00e-03 - train loss: -1.00 - valid loss: -2.00",
        "epoch: 2, steps: 50, budget_spent: 1.00 min, lr: 2.00e-03 - train loss: -3.00 - valid loss: -4.00",
        # resumed from epoch 1's checkpoint: its budget goes on from there, the file's last line wins
        "epoch: 2, steps: 50, budget_spent: 1.25 min, lr: 2.00e-03 - train loss: -3.00 - valid loss: -4.00",
        "Epoch loaded: 2 - test si_snr: 5.00",
    ])
    assert budget_spent(run) == 1.25 and budget_spent(run, clock="cpu") == 1.25
    with pytest.raises(SpkSepError, match="budget_clock is cpu, not wall"):
        budget_spent(run, clock="wall")
    old = tmp_path / "old"  # trained before budgets
    write_log(old, ["epoch: 1, lr: 2.00e-03 - train loss: -1.00 - valid loss: -2.00"])
    with pytest.raises(SpkSepError, match="no budget_spent logged"):
        budget_spent(old)


def test_demo_trains_the_continued_baseline_after_the_conditioned_model():
    assert demo.lanes(list(demo.MODELS), jobs=2) == [
        ["convtasnet", "conditioning", "convtasnet_continued"], ["weighted_sum", "triplet_like"]]
    assert demo.lanes(["convtasnet_continued"], jobs=3) == [
        ["convtasnet", "conditioning", "convtasnet_continued"]]


def test_demo_command_of_the_continued_baseline(tmp_path):
    done = {"convtasnet": str(tmp_path / "convtasnet"), "conditioning": tmp_path / "conditioning"}
    write_log(done["conditioning"], [
        "epoch: 6, steps: 150, budget_spent: 3.21 min, lr: 2.00e-03 - train loss: -3.00 - valid loss: -4.00"])
    extra = demo.extra_args("convtasnet_continued", done)
    assert extra == [f"--init_from={done['convtasnet']}", "--budget_minutes=3.21"]
    cmd = demo.command("convtasnet_continued", "data", "runs/convtasnet_continued", extra)
    assert cmd[:3] == [sys.executable, "train.py", "hparams/convtasnet.yaml"]
    for arg in ("--budget_clock=cpu", "--number_of_epochs=1000", "--model_name=convtasnet_continued",
                "--output_folder=runs/convtasnet_continued", *extra, *demo.SMALL):
        assert arg in cmd
    # the budget must be on the clock the continued run counts in
    write_log(done["conditioning"], ["epoch: 6, budget_spent: 3.21 min, lr: 2.00e-03"], clock="wall")
    with pytest.raises(SystemExit, match="budget_clock is wall, not cpu"):
        demo.extra_args("convtasnet_continued", done)


def test_demo_prints_the_conditioned_model_over_the_continued_baseline(runs, monkeypatch, capsys):
    monkeypatch.setattr(demo, "make_demo_data", lambda folder, **sizes: folder)
    monkeypatch.setattr(demo, "train_all", lambda names, data, runs_dir, jobs: list(map(str, runs.values())))
    monkeypatch.setattr(demo, "plot_runs", lambda run_dirs, out: [])
    demo.main(["--workdir", "unused"])
    text = capsys.readouterr().out
    assert OVER in text
    line = next(line for line in text.splitlines() if "vs Conv-TasNet (continued)" in line)
    assert line.startswith("[demo] Conditioning vs Conv-TasNet (continued) (same extra CPU "
                           f"minutes): {WANT:+.2f} dB")
    assert line.endswith("(60 test mixtures)") and "95% interval [+" in line


def test_demo_trains_on_a_given_librimix_folder_without_writing_the_demo_set(runs, tmp_path, monkeypatch, capsys):
    data = tmp_path / "real" / "Libri2Mix"
    (data / "wav16k" / "min").mkdir(parents=True)
    trained_on = []
    monkeypatch.setattr(demo, "make_demo_data", lambda folder, **sizes: pytest.fail("wrote the demo set"))
    monkeypatch.setattr(demo, "train_all", lambda names, data_dir, runs_dir, jobs:
                        trained_on.append(data_dir) or list(map(str, runs.values())))
    monkeypatch.setattr(demo, "plot_runs", lambda run_dirs, out: [])
    demo.main(["--workdir", str(tmp_path / "w"), "--data", str(data)])
    assert trained_on == [str(data)]
    assert OVER in capsys.readouterr().out
