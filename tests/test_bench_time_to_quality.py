"""The time-to-quality benchmark runs end to end (a few steps, tiny data) and its
learning-rate variants use the rates they name."""

import importlib.util
import json
import os

import pytest
import torch

from spksep_modules.data.demo import make_demo_data

BENCH = os.path.join(os.path.dirname(__file__), "..", "bench", "bench_time_to_quality.py")


@pytest.fixture(scope="module")
def ttq():
    spec = importlib.util.spec_from_file_location("bench_time_to_quality", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_learning_rate_variants(ttq):
    args = ttq.parse_args(["--lr", "0.001", "--peak_lr", "0.003"])
    assert args.variants == ttq.DEFAULT_VARIANTS
    rates = {name: ttq.peak_lr(config, args) for name, config in ttq.VARIANTS.items()}
    assert rates["ours"] == rates["speechbrain"] == rates["ours+decay"] == 0.001
    assert rates["ours+lr2x"] == rates["ours+decay2x"] == 0.002
    assert rates["ours+schedule"] == rates["ours+dm"] == 0.003
    # the schedule ends at zero, whatever its peak
    assert ttq.budget_lr(1.0, rates["ours+decay2x"]) == 0.0


def test_variants_train_and_are_evaluated_at_each_budget(ttq, tmp_path):
    data = make_demo_data(str(tmp_path / "data"), num_train=8, num_dev=2, num_test=2,
                          seconds=1.0, sample_rate=8000, num_train_speakers=4,
                          num_dev_speakers=2, num_test_speakers=2)
    out = tmp_path / "out"
    argv = ["--data", data, "--out", str(out), "--sample_rate", "8000", "--clock", "steps",
            "--budgets", "1", "2", "--segment", "0.5", "--variants", "ours", "ours+decay",
            "ours+ema"]
    args = ttq.parse_args(argv)
    os.makedirs(out)
    threads = torch.get_num_threads()  # train_variant sets --threads for its process
    try:
        for name in args.variants:  # in this process (main() would start one per variant)
            ttq.train_variant(name, args)
    finally:
        torch.set_num_threads(threads)
    for name in args.variants:
        results = json.loads((out / f"{name}.json").read_text())["results"]
        assert [r["steps"] for r in results] == [1, 2]
        assert all(abs(r["si_snr_i"]) < 100 and 0 <= r["stoi"] <= 1 for r in results)
    # the same training run (same seed), scored with its averaged weights: another score
    ours, ema = (json.loads((out / f"{name}.json").read_text())["results"]
                 for name in ("ours", "ours+ema"))
    assert [r["train_loss"] for r in ema] == [r["train_loss"] for r in ours]
    assert ema[-1]["si_snr_i"] != ours[-1]["si_snr_i"]
    table = ttq.table(args)
    assert "| ours | " in table and "| ours+decay | " in table and "| ours+ema | " in table
