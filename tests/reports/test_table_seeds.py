"""`spksep table` with several seeds per model, on fabricated runs whose per-mixture values
are model effect + seed offset + mixture noise, with fixed numbers: the three intervals
(mixtures, seeds, both), grouping by model, globs and names, records, errors."""

import json
import os
import sys

import numpy as np
import pytest

from spksep_modules import SpkSepError
from spksep_modules.cli import main
from spksep_modules.reports.stats import seeded_difference
from spksep_modules.reports.tables import group_runs, report, seed_gains

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # --import-mode=importlib
from test_tables import BASE, IDS, fake_run, row  # noqa: E402

SEEDS = (1234, 1235, 1236)
NOISE = np.random.default_rng(7).normal(0.0, 0.3, (2, len(SEEDS), len(IDS)))


def seed_runs(root, model, effect, offsets, noise):
    """One run per seed: BASE (each mixture's difficulty) + effect + the seed's offset + noise."""
    return [fake_run(root, f"{model}_seed{s}", model, BASE + effect + off + n)
            for s, off, n in zip(SEEDS, offsets, noise)]


def test_the_hierarchical_interval_holds_the_true_effect(tmp_path):
    base = seed_runs(tmp_path, "convtasnet", 0.0, (-0.15, 0.0, 0.15), NOISE[0])
    ours = seed_runs(tmp_path, "weighted_sum", 0.5, (0.1, -0.1, 0.0), NOISE[1])
    [gain] = seed_gains(group_runs(base + ours))["gains"]
    want = 0.5 + NOISE[1].mean() - NOISE[0].mean()  # the offsets average to zero on each side
    assert gain["mean"] == pytest.approx(want) and (gain["seeds"], gain["baseline_seeds"]) == (3, 3)
    assert gain["hier_low"] < 0.5 < gain["hier_high"] and gain["hier_low"] > 0
    assert gain["seed_low"] < 0.5 < gain["seed_high"]
    # the mixture interval ignores the seeds' spread: it is the narrowest of the three
    assert gain["high"] - gain["low"] < gain["hier_high"] - gain["hier_low"] < gain["seed_high"] - gain["seed_low"]


def test_a_gap_that_only_the_mixture_interval_calls_significant(tmp_path, capsys):
    """+0.2 dB on every mixture of the seed averages, but seeds spread by +-0.5 dB: the
    trained models differ on this test set; retraining could reverse it."""
    quiet = NOISE * 0.1
    base = seed_runs(tmp_path, "convtasnet", 0.0, (0.0, 0.4, -0.4), quiet[0])
    ours = seed_runs(tmp_path, "weighted_sum", 0.2, (0.5, -0.5, 0.0), quiet[1])
    [gain] = seed_gains(group_runs(base + ours))["gains"]
    assert gain["low"] > 0 and gain["significant"] and gain["p_value"] < 1e-6
    assert gain["seed_low"] < 0 < gain["seed_high"] and not gain["seed_significant"]
    assert gain["hier_low"] < 0 < gain["hier_high"] and not gain["hier_significant"]
    # The table says so: only the mixture interval in bold.
    assert main(["table", str(tmp_path / "convtasnet_seed*"), str(tmp_path / "weighted_sum_seed*"),
                 "--resamples", "2000"]) == 0
    text = capsys.readouterr().out
    line = row(text, "P weighted-sum")
    assert line.startswith(f"| P weighted-sum | 3 | +0.201 | {gain['mean']:+.3f} | **[+")
    assert line.count("**") == 2 and "| 100% |" in line
    assert "Baseline: Conv-TasNet (3 seeds: " in text and "means over seeds" in text


def test_seed_groups_as_the_shell_passes_them_with_records(tmp_path):
    base = seed_runs(tmp_path, "convtasnet", 0.0, (-0.15, 0.0, 0.15), NOISE[0])
    ours = seed_runs(tmp_path, "weighted_sum", 0.5, (0.1, -0.1, 0.0), NOISE[1])
    one = fake_run(tmp_path, "tl", "triplet_like", BASE + 0.3)  # one seed beside three
    out_json, out_csv = tmp_path / "t.json", tmp_path / "t.csv"
    assert main(["table", *map(str, base + ours), str(one), "--resamples", "1000",
                 "--json", str(out_json), "--csv", str(out_csv)]) == 0
    data = json.loads(out_json.read_text())
    records = {r["model"]: r for r in data["runs"]}
    assert [r["seeds"] for r in data["runs"]] == [3, 3, 1]
    assert records["convtasnet"]["runs"] == list(map(str, base))
    # Table I's numbers: the means over seeds of each run's test means
    assert records["weighted_sum"]["si_snr_i"] == pytest.approx(
        np.mean([json.loads((r / "test_summary.json").read_text())["si_snr_i"] for r in ours]))
    # one seed of the triplet: its seed interval uses the spread pooled from the baseline's
    triplet = records["triplet_like"]
    assert triplet["seed_low"] < 0.3 < triplet["seed_high"]
    assert triplet["mean"] == pytest.approx(0.3 - NOISE[0].mean())
    assert data["pairing"]["baseline"] == "Conv-TasNet" and data["pairing"]["baseline_runs"] == list(map(str, base))
    assert " ".join(map(str, ours)) in out_csv.read_text()


def test_same_seed_same_intervals_and_named_groups(tmp_path):
    base = seed_runs(tmp_path, "convtasnet", 0.0, (-0.15, 0.0, 0.15), NOISE[0])
    ours = seed_runs(tmp_path, "weighted_sum", 0.5, (0.1, -0.1, 0.0), NOISE[1])
    groups = group_runs(base + ours)
    first, again = (seed_gains(groups, seed=5)["gains"][0] for _ in range(2))
    assert first == again and seed_gains(groups, seed=6)["gains"][0]["hier_low"] != first["hier_low"]
    # NAME=RUN,RUN: groups of one's choosing, e.g. two setups of the baseline compared
    text, data = report([f"old={base[0]},{base[1]}", f"new={base[2]}", *map(str, ours)],
                        baseline="old", resamples=500)
    assert [(r["label"], r["seeds"]) for r in data["runs"]] == [("old", 2), ("new", 1), ("P weighted-sum", 3)]
    assert data["pairing"]["baseline"] == "old" and row(text, "new").startswith("| new | 1 | +0.000 |")


def test_grouping_errors_are_one_line(tmp_path, capsys):
    base = seed_runs(tmp_path, "convtasnet", 0.0, (0.0, 0.0, 0.0), NOISE[0])
    ws = fake_run(tmp_path, "ws", "weighted_sum", BASE)
    with pytest.raises(SpkSepError, match="a group holds the seeds of one model"):
        group_runs([f"mixed={base[0]},{ws}"])
    with pytest.raises(SpkSepError, match="given twice"):
        group_runs([str(base[0]), str(base[0])])
    assert main(["table", str(tmp_path / "nothing_seed*")]) == 2
    assert capsys.readouterr().err.strip().endswith("nothing_seed*: no run folder matches")
    other = fake_run(tmp_path, "other", "weighted_sum", BASE, ids=[f"x{i}" for i in range(60)])
    with pytest.raises(SpkSepError, match="different test sets"):
        seed_gains(group_runs([*base, other]))


def test_the_continued_baseline_with_seeds(tmp_path, capsys):
    seed_runs(tmp_path, "convtasnet", 0.0, (0.0, 0.1, -0.1), NOISE[0])
    seed_runs(tmp_path, "convtasnet_continued", 0.3, (0.0, 0.1, -0.1), NOISE[1])
    seed_runs(tmp_path, "conditioning", 0.6, (0.05, -0.05, 0.0), NOISE[0] * 0.5)
    text, data = report([str(tmp_path / "*_seed*")], resamples=500)
    [pairing] = data["over_continued"]
    [gain] = pairing["gains"]
    assert pairing["baseline"] == "Conv-TasNet (continued)" and gain["label"] == "Conditioning"
    assert gain["mean"] == pytest.approx(0.3 + (NOISE[0] * 0.5).mean() - NOISE[1].mean())
    assert "### Conditioning over the continued baseline (same extra compute)" in text


def test_seeded_difference_with_one_seed_each_is_the_paired_one():
    from spksep_modules.reports.stats import paired_difference

    ours, base = BASE + NOISE[1, 0], BASE
    d = seeded_difference([ours], [base], resamples=1000)
    assert {k: d[k] for k in ("mean", "low", "high", "p_value")} == {
        k: v for k, v in paired_difference(ours, base, resamples=1000).items()
        if k in ("mean", "low", "high", "p_value")}
    assert d["seed_low"] is None and d["seed_significant"] is None


# ---------------------------------------------------------------- make demo --seeds
def test_demo_trains_each_seed_from_its_own_runs(tmp_path, monkeypatch):
    from spksep_modules import demo
    from test_continued_baseline import write_log

    calls = {}

    def fake_train(name, data, runs, extra, threads, seed):
        calls[name, seed] = extra
        out = tmp_path / demo.run_name(name, seed)
        if name == "conditioning":  # each seed's conditioned run spent its own budget
            write_log(out, [f"epoch: 6, budget_spent: {seed - 1233}.50 min, lr: 2.00e-03"])
        return str(out)

    monkeypatch.setattr(demo, "train", fake_train)
    done = demo.train_all(list(demo.MODELS), "data", str(tmp_path), jobs=2, seeds=(1234, 1235))
    assert [os.path.basename(d) for d in done] == [f"{m}_seed{s}" for s in (1234, 1235) for m in demo.MODELS]
    base = tmp_path / "convtasnet_seed1235"
    assert calls["conditioning", 1235] == [f"--basic_model={base}"]
    assert calls["convtasnet_continued", 1235] == [f"--init_from={base}", "--budget_minutes=2.5"]
    assert calls["convtasnet_continued", 1234][1] == "--budget_minutes=1.5"
    # one seed: the folders and arguments of before (the yaml's seed, runs/<model>)
    monkeypatch.setattr(demo, "train", lambda name, data, runs, extra, threads, seed=None:
                        calls.__setitem__((name, seed), extra) or str(tmp_path / name))
    done = demo.train_all(["convtasnet", "conditioning"], "data", str(tmp_path), jobs=2)
    assert done == [str(tmp_path / "convtasnet"), str(tmp_path / "conditioning")]
    assert calls["conditioning", None] == [f"--basic_model={tmp_path / 'convtasnet'}"]


def test_demo_with_seeds_prints_the_seed_table_and_plots_the_first_seed(tmp_path, monkeypatch, capsys):
    from spksep_modules import demo

    runs = (seed_runs(tmp_path, "convtasnet", 0.0, (-0.15, 0.0, 0.15), NOISE[0])
            + seed_runs(tmp_path, "weighted_sum", 0.5, (0.1, -0.1, 0.0), NOISE[1]))
    by_seed = [str(r) for s in SEEDS for r in runs if r.name.endswith(str(s))]
    asked, plotted = [], []
    monkeypatch.setattr(demo, "make_demo_data", lambda folder, **sizes: folder)
    monkeypatch.setattr(demo, "train_all", lambda *args: asked.append(args) or by_seed)
    monkeypatch.setattr(demo, "plot_runs", lambda run_dirs, out: plotted.extend(run_dirs) or [])
    demo.main(["--workdir", str(tmp_path / "w"), "--models", "convtasnet", "weighted_sum",
               "--seeds", "3"])
    assert asked[0][-1] == SEEDS and plotted == by_seed[:2]
    text = capsys.readouterr().out
    assert "means over seeds" in text and row(text, "P weighted-sum").startswith("| P weighted-sum | 3 |")
