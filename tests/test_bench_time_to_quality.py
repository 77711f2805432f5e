"""The time-to-quality benchmark runs end to end (a few steps, tiny data) and its
learning-rate variants use the rates they name."""

import json
import os

import pytest
import torch

from bench_scripts import load_bench
from spksep_modules.data.demo import make_demo_data


@pytest.fixture(scope="module")
def ttq():
    return load_bench("bench_time_to_quality")


@pytest.fixture
def data(tmp_path):
    """A tiny 8 kHz demo set."""
    return make_demo_data(str(tmp_path / "data"), num_train=8, num_dev=2, num_test=2,
                          seconds=1.0, sample_rate=8000, num_train_speakers=4,
                          num_dev_speakers=2, num_test_speakers=2)


def train_variants(ttq, args):
    """Train each of ``args.variants`` in this process (main() would start one per variant),
    then restore the thread count (train_variant sets --threads for its process)."""
    threads = torch.get_num_threads()
    try:
        for name in args.variants:
            ttq.train_variant(name, args)
    finally:
        torch.set_num_threads(threads)


def test_learning_rate_variants(ttq):
    args = ttq.parse_args(["--lr", "0.001", "--peak_lr", "0.003"])
    assert args.variants == ttq.DEFAULT_VARIANTS
    rates = {name: ttq.peak_lr(config, args) for name, config in ttq.VARIANTS.items()}
    assert rates["ours"] == rates["speechbrain"] == rates["ours+decay"] == 0.001
    assert rates["ours+lr2x"] == rates["ours+decay2x"] == rates["ours+lr2x+cooldown"] == 0.002
    assert rates["ours+cooldown"] == rates["ours+dm-split"] == 0.001
    assert rates["ours+schedule"] == rates["ours+dm"] == 0.003
    # the schedule ends at zero, whatever its peak
    assert ttq.budget_lr(1.0, rates["ours+decay2x"]) == 0.0


def test_variants_train_and_are_evaluated_at_each_budget(ttq, data, tmp_path):
    out = tmp_path / "out"
    argv = ["--data", data, "--out", str(out), "--sample_rate", "8000", "--clock", "steps",
            "--budgets", "1", "2", "--segment", "0.5", "--variants", "ours", "ours+decay",
            "ours+ema"]
    args = ttq.parse_args(argv)
    os.makedirs(out)
    train_variants(ttq, args)
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


def test_cool_down_trains_a_copy_at_a_rate_falling_to_zero(ttq, tmp_path):
    from spksep_modules.losses import SeparationLoss

    torch.manual_seed(0)
    model = ttq.build_model("ours")
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    batch = type("Batch", (), {})()  # what train_step reads of a PaddedBatch
    batch.mix_sig = type("Padded", (), {"data": torch.randn(2, 800)})()
    batch.sources = type("Padded", (), {"data": torch.randn(2, 800, 2)})()
    loss = SeparationLoss()
    loss_fn = lambda est, sources: loss(est, sources)["loss"]  # noqa: E731
    ttq.train_step(model, optimiser, loss_fn, batch)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    rates = []
    real_step = ttq.train_step

    def spy(model_, optimiser_, loss_fn_, batch_, lr=None):
        rates.append(lr)
        return real_step(model_, optimiser_, loss_fn_, batch_, lr)

    ttq.train_step = spy
    try:
        copy, steps, last = ttq.cool_down(model, optimiser, loss_fn, [batch] * 3, 4, "steps")
    finally:
        ttq.train_step = real_step
    assert steps == 4 and torch.isfinite(last)
    assert rates == pytest.approx([1e-3, 0.75e-3, 0.5e-3, 0.25e-3])  # linear, to zero at the end
    # the branch trained a copy: the original model and its optimiser are untouched
    assert all(torch.equal(before[k], v) for k, v in model.named_parameters())
    assert optimiser.param_groups[0]["lr"] == 1e-3
    assert optimiser.state[next(model.parameters())]["step"] == 1
    assert any(not torch.equal(before[k], v) for k, v in copy.named_parameters())


def half_cooled(ttq, monkeypatch, variant, tmp_path, data, *argv):
    """Parsed arguments for a step-clock run of tiny data in ``tmp_path/out``, with
    ``variant``'s cool-down set to half of each budget."""
    monkeypatch.setitem(ttq.VARIANTS, variant, {**ttq.VARIANTS[variant], "cooldown": 0.5})
    os.makedirs(tmp_path / "out")
    return ttq.parse_args(["--data", data, "--out", str(tmp_path / "out"), "--sample_rate", "8000",
                           "--clock", "steps", "--segment", "0.5", *argv])


def test_cooldown_variant_scores_a_branch_at_each_budget(ttq, data, tmp_path, monkeypatch):
    out = tmp_path / "out"
    # half of each budget in the branch: at 2 and 4 steps, branches off steps 1 and 2
    args = half_cooled(ttq, monkeypatch, "ours+cooldown", tmp_path, data, "--budgets", "2", "4",
                       "--variants", "ours", "ours+cooldown", "--nearby", "0.75")
    train_variants(ttq, args)
    ours, cooled = (json.loads((out / f"{name}.json").read_text())["results"]
                    for name in args.variants)
    assert [r["steps"] for r in cooled] == [r["steps"] for r in ours] == [2, 4]
    assert [r["epochs"] for r in cooled] == [1, 1]  # branched off at steps 1 and 2 of the run
    assert all(c["si_snr_i"] != o["si_snr_i"] for c, o in zip(cooled, ours))
    # each budget is scored at 3/4 of it and at its end; the cooled run's 3/4 point lies in
    # its cool-down copy (1 step after the branch), and the figure is the points' mean
    assert [[p["steps"] for p in r["points"]] for r in ours] == [[2, 2], [3, 4]]
    assert [[p["steps"] for p in r["points"]] for r in cooled] == [[2, 2], [3, 4]]
    for r in ours + cooled:
        assert r["si_snr_i"] == pytest.approx(sum(p["si_snr_i"] for p in r["points"]) / 2)
    assert ours[1]["points"][0]["si_snr_i"] != ours[1]["points"][1]["si_snr_i"]


def test_recipe_variant_runs_train_py_per_budget_and_pairs_with_the_plain_loop(ttq, data, tmp_path):
    out = tmp_path / "out"
    argv = ["--data", data, "--out", str(out), "--sample_rate", "8000", "--clock", "steps",
            "--budgets", "4", "--segment", "0.5", "--valid_seconds", "0.5", "--nearby", "0.5",
            "--curve", "0.5", "--equal_steps", "1", "3", "--variants", "speechbrain",
            "train.py+cooldown"]
    args = ttq.parse_args(argv)
    os.makedirs(out)
    train_variants(ttq, args)
    recipe = json.loads((out / "train.py+cooldown.json").read_text())["results"]
    # the recipe stopped at the step budget, and its test rows came back per mixture
    assert [r["steps"] for r in recipe] == [4]
    assert len(recipe[0]["per_mixture"]["si_snr_i"]) == 2
    run = out / "recipe" / "train.py+cooldown-seed0-4"
    assert "cooldown: 0.15" in (run / "hyperparams.yaml").read_text()
    # the weights kept at half the budget are scored too, and the figure is the mean
    assert [(p["fraction"], p["steps"]) for p in recipe[0]["points"]] == [(0.5, 2), (1.0, 4)]
    assert recipe[0]["si_snr_i"] == pytest.approx(
        sum(p["si_snr_i"] for p in recipe[0]["points"]) / 2)
    assert (run / "budget_snapshots" / "at-0.500.ckpt").is_file()
    # the learning curve at half the budget (the mean at 1/4 and 1/2 of it), and the figure
    # at steps 1 and 3, from the same run; the plain loop scores the same points
    runs = {name: json.loads((out / f"{name}.json").read_text()) for name in args.variants}
    for name, run in runs.items():
        (point,) = run["curve"]
        assert point["curve_fraction"] == 0.5
        assert [(p["fraction"], p["steps"]) for p in point["points"]] == [(0.25, 1), (0.5, 2)], name
        assert [p["steps"] for p in run["equal_steps"]["points"]] == [1, 3], name
        assert run["equal_steps"]["si_snr_i"] == pytest.approx(
            sum(p["si_snr_i"] for p in run["equal_steps"]["points"]) / 2)
        assert run["equal_steps"]["complete"]
    # a run that stopped short of a mark keeps what it reached, marked incomplete
    reached = runs["speechbrain"]["equal_steps"]["points"][:1]
    reached[0]["per_mixture"] = runs["speechbrain"]["equal_steps"]["per_mixture"]
    partial = ttq.equal_step_figure(reached, args)
    assert not partial["complete"] and [p["steps"] for p in partial["points"]] == [1]
    # the recipe's curve point at 1/2 is the snapshot its budget figure used too
    assert runs["train.py+cooldown"]["curve"][0]["points"][1]["si_snr_i"] == recipe[0]["points"][0]["si_snr_i"]
    table = ttq.table(args).splitlines()
    row = next(line for line in table if line.startswith("| train.py+cooldown |"))
    assert row.count("[") == 2  # paired intervals at equal time and at equal steps
    assert "at 1/3 steps" in table[1] and any(line.startswith("learning curve") for line in table)
    assert table[-1].startswith("| train.py+cooldown | ") and "(2), " in table[-1]


def test_nearby_runs_end_their_own_cool_down(ttq, data, tmp_path, monkeypatch):
    out = tmp_path / "out"
    args = half_cooled(ttq, monkeypatch, "train.py+cooldown", tmp_path, data, "--budgets", "6",
                       "--valid_seconds", "0.5", "--nearby", "0.5", "--nearby_runs", "--variants",
                       "train.py+cooldown")
    train_variants(ttq, args)
    (result,) = json.loads((out / "train.py+cooldown.json").read_text())["results"]
    # the point at half the budget is a 3-step run of its own, cooled down by its end ...
    short = out / "recipe" / "train.py+cooldown-seed0-3"
    assert ttq.recipe_progress(str(short / "train_log.txt"))[0] == 3
    assert [(p["fraction"], p["steps"]) for p in result["points"]] == [(0.5, 3), (1.0, 6)]
    rows = (short / "test_results.csv").read_text().splitlines()[1:]
    own_end = sum(float(r.split(",")[2]) for r in rows) / len(rows)
    assert result["points"][0]["si_snr_i"] == pytest.approx(own_end)
    # ... not the 6-step run's snapshot at step 3, taken before that run's cool-down began
    snapshot = ttq.recipe_snapshot_scores(str(out / "recipe" / "train.py+cooldown-seed0-6"), args)
    assert snapshot["at-0.500"]["steps"] == 3
    assert snapshot["at-0.500"]["si_snr_i"] != pytest.approx(result["points"][0]["si_snr_i"])


@pytest.mark.parametrize("name,expected", [
    ("train.py+bf16auto+cooldown", []),
    ("train.py+bf16auto+dm-split+cooldown",
     ["--dynamic_mixing=True", "--dm_loudness=train_split", "--dm_level_on=segment"]),
    ("train.py+bf16auto+dm-utt+cooldown",
     ["--dynamic_mixing=True", "--dm_loudness=train_split", "--dm_level_on=utterance"]),
])
def test_recipe_variants_pass_their_data_keys_to_train_py(ttq, tmp_path, monkeypatch, name, expected):
    """A recipe variant's train.py run mixes its data as the variant's config says (the plain
    loop reads the same keys), so the JSON's config describes the run."""
    commands = []

    def stop(command, **kwargs):
        commands.append(command)
        raise RuntimeError("stop before training")

    monkeypatch.setattr(ttq.subprocess, "run", stop)
    args = ttq.parse_args(["--out", str(tmp_path), "--variants", name])
    with pytest.raises(RuntimeError, match="stop before training"):
        ttq.run_recipe(name, args, 20.0)
    mixing = [a for a in commands[0] if a.startswith(("--dynamic_mixing", "--dm_"))]
    assert mixing == expected
