"""A global batch that means the same on 1 or N processes: the arithmetic, the line a run
logs, and one DDP step (2 CPU processes, gloo) against one single-process step."""

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import speechbrain as sb
import torch

from spksep_modules import SpkSepError
from spksep_modules.losses import SeparationLoss
from spksep_modules.training.brains import SeparationBrain
from spksep_modules.training.global_batch import plan_batches
from spksep_modules.training.recipe import check_overrides, compose_hparams

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # --import-mode=importlib
from global_batch_worker import GLOBAL_BATCH, one_step, tiny_separator  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
CONVTASNET_YAML = ROOT / "recipes" / "LibriMix" / "separation" / "hparams" / "convtasnet.yaml"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


# ---------------------------------------------------------------- the arithmetic


@pytest.mark.parametrize("batch_size,processes,accumulation,global_batch,expected", [
    (24, 1, None, None, (24, 1, 1)),  # no global batch: as before
    (6, 4, 4, None, (6, 4, 4)),  # ... with --grad_accumulation_factor
    (24, 1, None, 24, (24, 1, 1)),
    (8, 1, None, 24, (8, 1, 3)),  # one process: accumulate 3 batches of 8
    (8, 2, None, 24, (6, 2, 2)),  # 12 each: 2 batches of 6 (8 does not divide 12)
    (8, 4, None, 24, (6, 4, 1)),
    (8, 3, None, 24, (8, 3, 1)),
    (5, 1, None, 13, (1, 1, 13)),  # a prime share: batches of 1, still exact
    (8, 2, 3, 24, (4, 2, 3)),  # accumulation given: the batch follows
])
def test_plan_keeps_the_global_batch(batch_size, processes, accumulation, global_batch, expected):
    plan = plan_batches(batch_size, processes, accumulation, global_batch)
    assert tuple(plan) == expected
    if global_batch is not None:
        assert plan.global_batch == global_batch
        assert plan.per_process <= batch_size


def test_the_same_global_batch_on_1_2_4_and_8_processes():
    plans = [plan_batches(8, n, None, 32) for n in (1, 2, 4, 8)]
    assert [p.global_batch for p in plans] == [32] * 4
    assert [tuple(p) for p in plans] == [(8, 1, 4), (8, 2, 2), (8, 4, 1), (4, 8, 1)]


@pytest.mark.parametrize("args,message", [
    ((8, 5, None, 24), "global_batch_size: 24 does not split equally over 5 processes; "
                       "choose a multiple of 5"),
    ((8, 2, 5, 24), "global_batch_size: 24 is 12 examples per process on 2 processes, which "
                    "--grad_accumulation_factor=5 does not split into equal batches"),
    ((4, 1, 2, 24), "global_batch_size: 24 on 1 process with --grad_accumulation_factor=2 "
                    "needs batches of 12, more than batch_size=4: raise "
                    "--grad_accumulation_factor or --batch_size"),
    ((8, 1, None, 0), "global_batch_size: expected a whole number of at least 1, got 0"),
    ((8, 1, None, 2.5), "global_batch_size: expected a whole number of at least 1, got 2.5"),
])
def test_a_global_batch_that_does_not_split_is_one_line(args, message):
    with pytest.raises(SpkSepError) as err:
        plan_batches(*args)
    assert str(err.value) == message and "\n" not in message


def test_the_yaml_key_is_checked_like_the_other_sizes():
    text = compose_hparams(CONVTASNET_YAML)
    check_overrides(text, "global_batch_size: 48")
    check_overrides(text, "global_batch_size: null")
    with pytest.raises(SpkSepError, match="--global_batch_size: must be at least 1, got 0"):
        check_overrides(text, "global_batch_size: 0")
    with pytest.raises(SpkSepError, match="--global_batch_size: expected a number"):
        check_overrides(text, "global_batch_size: many")


# ---------------------------------------------------------------- the Brain


def make_brain(hparams, run_opts=None):
    return SeparationBrain(
        modules={"separator": torch.nn.Conv1d(1, 2, 1), "loss": SeparationLoss()},
        opt_class=lambda params: torch.optim.SGD(params, lr=0.1),
        hparams=hparams, run_opts={"device": "cpu", **(run_opts or {})},
    )


def test_the_brain_sets_accumulation_and_the_training_loader_batch():
    brain = make_brain({"batch_size": 4, "global_batch_size": 12})
    assert brain.grad_accumulation_factor == 3
    data = list(range(24))
    loader = brain.make_dataloader(data, sb.Stage.TRAIN, batch_size=99)
    assert loader.batch_size == 4
    # Validation and test loaders keep their own batch.
    assert brain.make_dataloader(data, sb.Stage.VALID, batch_size=1).batch_size == 1
    # An accumulation the user gave is kept, and the batch follows it.
    brain = make_brain({"batch_size": 8, "global_batch_size": 12}, {"grad_accumulation_factor": 2})
    assert (brain.batch_plan.per_process, brain.grad_accumulation_factor) == (6, 2)
    # Without a global batch nothing changes: the loader's batch and SpeechBrain's factor.
    brain = make_brain({"batch_size": 4, "global_batch_size": None}, {"grad_accumulation_factor": 2})
    assert brain.make_dataloader(data, sb.Stage.TRAIN, batch_size=4).batch_size == 4
    assert brain.grad_accumulation_factor == 2 and brain.batch_plan.global_batch == 8


def test_the_plan_is_logged_when_training_starts(caplog):
    brain = make_brain({"batch_size": 4, "global_batch_size": 12})
    with caplog.at_level(logging.INFO, logger="spksep_modules.training.brains"):
        brain.on_fit_start()
    assert "batch: 4 per process x 1 process x 3 accumulated = global batch 12" in caplog.text


# ---------------------------------------------------------------- DDP against one process


def same_weights(a, b):
    return a.keys() == b.keys() and all(torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-6) for k in a)


def test_a_ddp_step_on_two_processes_equals_one_process_step(tmp_path):
    """Global batch 4: 2 per process on 2 gloo processes, against 4 on one process and
    against 2 x 2 accumulated on one process. Gradient clipping is active (the gradient
    norm at initialisation is ~100, max_grad_norm 5): the processes' gradients must be
    averaged before the norm is taken, and the loss must be a mean over the examples."""
    out = tmp_path / "ddp.pt"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(HERE / "global_batch_worker.py"), str(out), "--batch_size=2"],
        cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ddp = torch.load(out, weights_only=False)
    assert ddp["plan"] == (2, 2, 1)
    # The run's log.txt (main process) says how the global batch was made.
    assert "batch: 2 per process x 2 processes x 1 accumulated = global batch 4" in ddp["log"]

    initial = tiny_separator().state_dict()  # what the step starts from
    single, plan = one_step(batch_size=GLOBAL_BATCH)
    assert tuple(plan) == (4, 1, 1)
    accumulated, plan = one_step(batch_size=2)
    assert tuple(plan) == (2, 1, 2)

    assert not same_weights(single, initial)  # the step moved the weights
    assert same_weights(ddp["state"], single)
    assert same_weights(accumulated, single)
