"""The perceptual-quality benchmark's report: the unprocessed mixtures' row, the average
over seeds, and the paired table (its training runs are the recipe's, tested elsewhere)."""

import pytest

from bench_scripts import load_bench
from spksep_modules.data.demo import make_demo_data


@pytest.fixture(scope="module")
def bench():
    return load_bench("bench_perceptual_quality")


def test_unprocessed_row_scores_the_mixture_itself(bench, tmp_path):
    data = make_demo_data(str(tmp_path / "data"), num_train=2, num_dev=1, num_test=3, seconds=1.0,
                          sample_rate=8000, num_train_speakers=2, num_dev_speakers=2,
                          num_test_speakers=2)
    rows = bench.input_scores(data, str(tmp_path / "work"), 8000)
    assert len(rows) == 3
    for row in rows.values():
        assert row["si_snr_i"] == pytest.approx(0.0, abs=1e-4)  # no improvement over itself
        assert 0.0 < row["stoi"] < 1.0  # the other speaker masks each source


def test_table_pairs_models_per_mixture_and_averages_seeds(bench, capsys):
    seed_a = {"m1": {"si_snr_i": 1.0, "stoi": 0.7}, "m2": {"si_snr_i": 3.0, "stoi": 0.8}}
    seed_b = {"m1": {"si_snr_i": 3.0, "stoi": 0.7}, "m2": {"si_snr_i": 5.0, "stoi": 0.8}}
    mean = bench.averaged([seed_a, seed_b])
    assert mean == {"m1": {"si_snr_i": 2.0, "stoi": 0.7}, "m2": {"si_snr_i": 4.0, "stoi": pytest.approx(0.8)}}
    better = {k: {"si_snr_i": v["si_snr_i"] + 0.5, "stoi": v["stoi"]} for k, v in mean.items()}
    inputs = {k: {"si_snr_i": 0.0, "stoi": 0.75} for k in mean}
    bench.print_table("t", mean, {"convtasnet": mean, "weighted_sum": better}, inputs)
    lines = capsys.readouterr().out.splitlines()
    row = next(line for line in lines if line.startswith("| weighted_sum |"))
    assert "| 3.500 | +0.500 [+0.500, +0.500] |" in row
    unprocessed = next(line for line in lines if line.startswith("| unprocessed mixture |"))
    assert "| 0.750 | -0.000 [" in unprocessed or "| 0.750 | +0.000 [" in unprocessed
    with pytest.raises(SystemExit, match="weighted_sum: evaluated on other test mixtures"):
        bench.print_table("t", mean, {"convtasnet": mean, "weighted_sum": {"m1": better["m1"]}})
