"""A budgeted run (``budget.TrainingBudget``) stops mid-epoch, validates and checkpoints the
partial epoch, cools its learning rate down on top of the plateau scheduler, keeps its
budget across a kill, and a rerun of a finished run trains no more."""

import pytest
import torch
from speechbrain.dataio.batch import PaddedBatch
from speechbrain.utils.epoch_loop import EpochCounterWithStopper
from speechbrain.utils.train_logger import FileTrainLogger

from spksep_modules import SpkSepError
from spksep_modules.checkpoints import AtomicCheckpointer
from spksep_modules.losses import SeparationLoss
from spksep_modules.models import ConvTasNet
from spksep_modules.training import budget as budget_module
from spksep_modules.training.brains import SeparationBrain
from spksep_modules.training.budget import TrainingBudget


def always_halve(optimizers, epoch, loss):
    """A plateau scheduler that never sees an improvement."""
    lr = optimizers[0].param_groups[0]["lr"]
    return lr, lr / 2


def items(count, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(count):
        sources = torch.randn(400, 2, generator=g)
        out.append({"id": f"m{i}", "mix_sig": sources.sum(-1), "sources": sources})
    return out


def make_brain(folder, budget, step_limit=None):
    torch.manual_seed(0)
    model = ConvTasNet(N=8, L=4, B=4, H=8, P=3, X=1, R=1)
    counter = EpochCounterWithStopper(100, limit_to_stop=100, limit_warmup=0, direction="min")
    hparams = dict(training_budget=budget, lr_scheduler=always_halve, epoch_counter=counter,
                   train_logger=FileTrainLogger(folder / "train_log.txt"))
    checkpointer = AtomicCheckpointer(folder / "save", recoverables={
        "separator": model, "epoch_counter": counter, "training_budget": budget})
    run_opts = {"device": "cpu", "noprogressbar": True}
    if step_limit is not None:
        run_opts["optimizer_step_limit"] = step_limit
    brain = SeparationBrain(modules={"separator": model, "loss": SeparationLoss()},
                            opt_class=lambda p: torch.optim.SGD(p, lr=0.1), hparams=hparams,
                            run_opts=run_opts, checkpointer=checkpointer)
    rates = []
    step = brain.optimizers_step
    brain.optimizers_step = lambda: (rates.append(brain.optimizer.param_groups[0]["lr"]), step())
    return brain, rates


def fit(brain):
    loader = dict(batch_size=2, collate_fn=PaddedBatch)
    brain.fit(brain.hparams.epoch_counter, torch.utils.data.DataLoader(items(6), **loader),
              torch.utils.data.DataLoader(items(2, seed=1), **loader))


def test_step_budget_cools_down_stops_mid_epoch_and_a_rerun_trains_no_more(tmp_path):
    brain, rates = make_brain(tmp_path, TrainingBudget(cooldown=0.5), step_limit=8)
    fit(brain)  # 3 steps an epoch: epochs 1 and 2, then 2 steps of epoch 3
    # rate = (rate the scheduler set) x min(1, (1 - step / 8) / 0.5): the halvings after
    # epochs 1 and 2 compose with the cool-down, which starts at step 4
    assert rates == pytest.approx([0.1, 0.1, 0.1, 0.05, 0.05, 0.0375, 0.0125, 0.00625])
    log = (tmp_path / "train_log.txt").read_text().splitlines()
    assert len(log) == 3 and "epoch: 3, steps: 8," in log[-1]  # the partial epoch is validated
    assert len(list((tmp_path / "save").glob("CKPT+*"))) == 1  # ... and checkpointed

    again, rates = make_brain(tmp_path, TrainingBudget(cooldown=0.5), step_limit=8)
    fit(again)
    assert rates == [] and (tmp_path / "train_log.txt").read_text().splitlines() == log


def test_budget_snapshots_keep_the_weights_at_their_fractions_and_steps_once(tmp_path):
    budget = TrainingBudget(cooldown=0.5, snapshots=[0.75, 0.5], snapshot_steps=[3])
    brain, _ = make_brain(tmp_path, budget, step_limit=8)
    fit(brain)
    folder = tmp_path / "budget_snapshots"
    snaps = {p.name: torch.load(p, weights_only=True) for p in sorted(folder.glob("*.ckpt"))}
    assert sorted(snaps) == ["at-0.500.ckpt", "at-0.750.ckpt", "step-3.ckpt"]
    # taken before steps 5 and 7, and after step 3; each knows where it was taken
    assert [(snaps[n]["steps"], snaps[n]["fraction"]) for n in sorted(snaps)] == [
        (4, 0.5), (6, 0.75), (3, 0.375)]
    final = brain.modules.separator.state_dict()
    for snap in snaps.values():  # a copy of the weights then, not a reference to them now
        assert set(snap["separator"]) == set(final)
        assert not torch.equal(snap["separator"]["encoder.weight"], final["encoder.weight"])
    assert not torch.equal(snaps["at-0.500.ckpt"]["separator"]["encoder.weight"],
                           snaps["at-0.750.ckpt"]["separator"]["encoder.weight"])
    assert not torch.equal(snaps["step-3.ckpt"]["separator"]["encoder.weight"],
                           snaps["at-0.500.ckpt"]["separator"]["encoder.weight"])
    # a resumed run knows which it has taken (none is written again)
    resumed = TrainingBudget(cooldown=0.5, snapshots=[0.5, 0.75], snapshot_steps=[3])
    again, _ = make_brain(tmp_path, resumed, step_limit=8)
    again.checkpointer.recover_if_possible()
    assert sorted(resumed.snapshots_taken) == ["at-0.500", "at-0.750", "step-3"]
    assert resumed.due_snapshots(8, 8) == []
    with pytest.raises(SpkSepError, match="budget_snapshots: fractions of the budget between 0 and 1"):
        TrainingBudget(minutes=5, snapshots=[1.0])
    with pytest.raises(SpkSepError, match="budget_snapshot_steps: optimiser step counts of at least 1"):
        TrainingBudget(snapshot_steps=[0])


def test_step_snapshots_need_no_budget_and_old_saved_state_still_loads(tmp_path):
    budget = TrainingBudget(snapshot_steps=[2])  # no minutes, no step limit
    assert [budget.due_snapshots(step) for step in (1, 2, 3)] == [[], ["step-2"], []]
    torch.save({"spent_seconds": 3.0, "base_lrs": None, "snapshots_taken": [0.9]},
               tmp_path / "budget.ckpt")  # as runs before step snapshots saved it
    old = TrainingBudget(minutes=1.0, snapshots=[0.9])
    old.load(tmp_path / "budget.ckpt")
    assert old.snapshots_taken == ["at-0.900"] and old.due_snapshots(0, 1) == []


def test_minutes_budget_on_a_clock_and_resume_keeps_what_was_spent(tmp_path, monkeypatch):
    now = [0.0]

    def clock():  # every reading is 10 s later
        now[0] += 10.0
        return now[0]

    monkeypatch.setitem(budget_module.CLOCKS, "wall", clock)
    budget = TrainingBudget(minutes=1.0)
    brain, rates = make_brain(tmp_path, budget)
    fit(brain)
    assert budget.exhausted() and 60.0 <= budget.spent_seconds < 90.0
    assert 3 <= len(rates) < 9  # stopped by the clock, not by the 100 epochs
    assert all(rate in (0.1, 0.05, 0.025) for rate in rates)  # no cool-down asked

    resumed = TrainingBudget(minutes=1.0)
    brain, _ = make_brain(tmp_path, resumed)
    brain.checkpointer.recover_if_possible()
    assert resumed.spent_seconds == budget.spent_seconds and resumed.exhausted()


def test_bad_budget_settings_are_one_line_errors():
    with pytest.raises(SpkSepError, match="budget_clock: must be one of wall, cpu"):
        TrainingBudget(minutes=5, clock="gpu")
    with pytest.raises(SpkSepError, match="cooldown: must be at least 0 and below 1"):
        TrainingBudget(minutes=5, cooldown=1.0)
    # no budget: never exhausted, and a cool-down with no end in sight leaves the rate alone
    budget = TrainingBudget(cooldown=0.2)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.3)
    budget.scale_lr(opt)
    assert not budget.exhausted() and opt.param_groups[0]["lr"] == 0.3
