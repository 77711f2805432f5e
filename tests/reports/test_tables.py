"""`spksep table`: Table I / II with the paired gains over the baseline, on fabricated runs
with known per-mixture differences; CSV and JSON; runs on different test sets refused."""

import csv
import json

import numpy as np
import pytest

from spksep_modules import SpkSepError
from spksep_modules.cli import main
from spksep_modules.reports.tables import paired_gains, report, tables

IDS = [f"mix{i:03d}" for i in range(60)]
BASE = np.random.default_rng(0).normal(10.0, 4.0, len(IDS))


def fake_run(root, name, model, si_snr_i, ids=IDS, pesq=None):
    """A finished run folder as train.py leaves it (only what the tables read)."""
    run = root / name
    run.mkdir()
    columns = ["mixture_ID", "si_snr", "si_snr_i", "sdr", "sdr_i", "stoi"] + (["pesq"] if pesq else [])
    with open(run / "test_results.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for i, (mix, v) in enumerate(zip(ids, si_snr_i)):
            writer.writerow([mix, v + 0.1, v, v + 0.5, v + 0.8, 0.9] + ([pesq] if pesq else []))
    summary = {"si_snr": float(np.mean(si_snr_i)) + 0.1, "si_snr_i": float(np.mean(si_snr_i)),
               "sdr": 0.0, "sdr_i": 0.0, "stoi": 0.9, "model": model, "num_test": len(ids)}
    if pesq:
        summary["pesq"] = pesq
    (run / "test_summary.json").write_text(json.dumps(summary))
    return run


@pytest.fixture
def runs(tmp_path):
    noise = np.random.default_rng(1).normal(0.0, 3.0, len(IDS))
    return {
        "base": fake_run(tmp_path, "base", "convtasnet", BASE),
        "better": fake_run(tmp_path, "ws", "weighted_sum", BASE + 0.4),  # +0.4 on every mixture
        "same": fake_run(tmp_path, "tl", "triplet_like", BASE),          # identical to the baseline
        "noisy": fake_run(tmp_path, "cond", "conditioning", BASE + 0.1 + noise),
    }


def row(text, label):
    return next(line for line in text.splitlines() if line.startswith(f"| {label} |")
                and "%" in line)


def test_gains_of_known_differences(runs):
    gains = paired_gains(list(runs.values()))
    by_model = {g["model"]: g for g in gains["gains"]}
    assert gains["baseline"] == str(runs["base"]) and gains["num_test"] == len(IDS)
    better, same, noisy = by_model["weighted_sum"], by_model["triplet_like"], by_model["conditioning"]
    assert better["mean"] == pytest.approx(0.4) and better["low"] > 0 and better["improved"] == 1.0
    assert better["significant"] and better["p_value"] < 1e-6
    assert (same["mean"], same["low"], same["high"], same["improved"]) == (0.0, 0.0, 0.0, 0.0)
    assert same["p_value"] == 1.0 and not same["significant"]
    assert noisy["low"] < 0 < noisy["high"] and not noisy["significant"]
    assert better["paper_gap"] == pytest.approx(14.319 - 14.118)


def test_markdown_marks_gaps_whose_interval_excludes_zero(runs):
    text = tables(list(runs.values()), significance=True)
    assert "### Table I" in text and "### Gains over the baseline" in text
    assert "Wilcoxon signed-rank" in text and "10000 resamples, seed 0" in text
    assert row(text, "P weighted-sum").startswith("| P weighted-sum | +0.201 | **+0.400** | **[+0.400, +0.400]** | 100% |")
    assert "**" not in row(text, "P triplet-like") and "| +0.000 | [+0.000, +0.000] | 0% | 1.000 |" in row(text, "P triplet-like")
    assert "**" not in row(text, "Conditioning")
    assert "| Conv-TasNet |" not in text.split("### Gains")[1]  # the baseline is not paired with itself


def test_cli_writes_the_same_to_csv_and_json(runs, tmp_path, capsys):
    out_csv, out_json = tmp_path / "t.csv", tmp_path / "t.json"
    status = main(["table", *map(str, runs.values()), "--csv", str(out_csv), "--json", str(out_json),
                   "--resamples", "2000", "--seed", "3"])
    text = capsys.readouterr().out
    assert status == 0 and "2000 resamples, seed 3" in text
    data = json.loads(out_json.read_text())
    assert data["pairing"] == {"baseline": str(runs["base"]), "metric": "si_snr_i", "resamples": 2000,
                               "seed": 3, "test": "Wilcoxon signed-rank, two-sided", "num_test": 60}
    records = {r["model"]: r for r in data["runs"]}
    assert records["convtasnet"]["mean"] is None and records["convtasnet"]["paper_si_snr"] == 14.118
    assert records["weighted_sum"]["mean"] == pytest.approx(0.4) and records["weighted_sum"]["significant"]
    with open(out_csv, newline="") as f:
        rows = {r["model"]: r for r in csv.DictReader(f)}
    assert set(rows) == set(records)
    for model, record in records.items():  # the same numbers as the JSON
        for key in ("si_snr_i", "mean", "low", "high", "improved", "p_value", "paper_gap"):
            want = record[key]
            assert (rows[model][key] == "") if want is None else float(rows[model][key]) == pytest.approx(want)
    # the Markdown shows them too
    assert f"{records['conditioning']['mean']:+.3f}" in row(text, "Conditioning")


def test_runs_on_different_test_sets_are_refused_with_one_line(runs, tmp_path, capsys):
    other = fake_run(tmp_path, "other", "weighted_sum", BASE, ids=[f"x{i}" for i in range(60)])
    status = main(["table", str(runs["base"]), str(other)])
    err = capsys.readouterr().err.strip()
    assert status == 2 and len(err.splitlines()) == 1
    assert err.startswith("error: ") and "different test sets" in err and "cannot be paired" in err
    fewer = fake_run(tmp_path, "fewer", "weighted_sum", BASE[:50], ids=IDS[:50])
    with pytest.raises(SpkSepError, match="10 of its 60 missing"):
        paired_gains([runs["base"], fewer])


def test_missing_results_and_ambiguous_baselines_are_one_line_errors(runs, tmp_path, capsys):
    (runs["better"] / "test_results.csv").unlink()
    assert main(["table", str(runs["base"]), str(runs["better"])]) == 2
    assert "ws/test_results.csv: missing" in capsys.readouterr().err
    # without the pairing the summaries are enough
    assert main(["table", str(runs["base"]), str(runs["better"]), "--no_significance"]) == 0
    assert "Gains" not in capsys.readouterr().out
    # Two Conv-TasNet runs are its seeds (tests/reports/test_table_seeds.py); given as two named
    # groups, the table cannot tell which is the baseline
    second = fake_run(tmp_path, "base2", "convtasnet", BASE + 1.0)
    assert main(["table", f"a={runs['base']}", f"b={second}", str(runs["same"])]) == 2
    assert "several baseline (convtasnet) runs given: a, b" in capsys.readouterr().err
    # naming one resolves it; the other Conv-TasNet run is then paired like any model
    assert main(["table", f"a={runs['base']}", f"b={second}", "--baseline", "a"]) == 0
    text = capsys.readouterr().out
    assert "| b | +0.000 | **+1.000** |" in text


def test_baseline_given_apart_from_the_runs_and_no_baseline(runs, capsys):
    assert main(["table", str(runs["better"]), "--baseline", str(runs["base"])]) == 0
    assert "| P weighted-sum | +0.201 | **+0.400** |" in capsys.readouterr().out
    text, data = report([runs["better"], runs["same"]])
    assert "No baseline (convtasnet) run given" in text and data["pairing"]["baseline"] is None


def test_pesq_column_appears_when_the_runs_have_it(tmp_path):
    base = fake_run(tmp_path, "b", "convtasnet", BASE, pesq=2.5)
    ours = fake_run(tmp_path, "w", "weighted_sum", BASE, pesq=2.75)
    text, data = report([base, ours], metric="pesq")
    assert "| PESQ ours |" in text and "| 0.930 | 0.900 | 2.75 | 60 |" in text
    assert "ΔPESQ" in text and "| P weighted-sum | +0.201 | **+0.250** |" in text
    assert data["runs"][1]["pesq"] == 2.75
    assert "PESQ" not in tables([fake_run(tmp_path, "n", "convtasnet", BASE)])
