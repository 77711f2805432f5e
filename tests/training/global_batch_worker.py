"""One optimiser step of a tiny Conv-TasNet through ``SeparationBrain`` on a fixed set of
examples, alone or as one of several DDP processes (gloo, CPU): the helper of
``tests/training/test_global_batch.py``.

    python tests/training/global_batch_worker.py OUT --batch_size=4
    python -m torch.distributed.run --standalone --nproc_per_node=2 \\
        tests/training/global_batch_worker.py OUT --batch_size=2

Every process builds the same examples (``GLOBAL_BATCH`` mixtures, seeded), the Brain plans
the step (``global_batch_size``), and process ``r`` trains on its share of them, in
``accumulation`` batches. The main process writes the separator's weights after the step,
the plan, and the run's ``log.txt`` (SpeechBrain's logging, as ``train.py`` sets it up) to
``OUT``.
"""

import argparse
import os
import sys
from types import SimpleNamespace

GLOBAL_BATCH = 4
SAMPLES = 800
LR = 0.1  # SGD: the update is the (clipped) gradient itself, scaled


def examples():
    """The global batch: ``mix [GLOBAL_BATCH, SAMPLES]``, ``sources [.., 2]``."""
    import torch

    gen = torch.Generator().manual_seed(7)
    sources = torch.randn(GLOBAL_BATCH, SAMPLES, 2, generator=gen)
    return sources.sum(-1), sources


def tiny_separator():
    """The separator every process starts from (seeded: the same everywhere)."""
    import torch

    from spksep_modules.models import ConvTasNet

    torch.manual_seed(0)
    return ConvTasNet(N=16, L=8, B=8, H=16, P=3, X=2, R=1)


def as_batch(mix, sources):
    batch = SimpleNamespace(
        mix_sig=SimpleNamespace(data=mix, lengths=None),
        sources=SimpleNamespace(data=sources, lengths=None),
        id=[str(i) for i in range(len(mix))],
    )
    batch.to = lambda device: batch
    return batch


def one_step(batch_size, max_grad_norm=5.0, output_folder=None):
    """Build the Brain, train one optimiser step on this process's share of the global
    batch; returns ``(separator state dict, BatchPlan)``."""
    import speechbrain as sb
    import torch

    from spksep_modules.training.brains import SeparationBrain
    from spksep_modules.losses import SeparationLoss

    run_opts = {"device": "cpu", "distributed_backend": "gloo", "max_grad_norm": max_grad_norm}
    sb.utils.distributed.ddp_init_group(run_opts)  # nothing without torchrun's variables
    if output_folder is not None:
        sb.create_experiment_directory(output_folder)  # log.txt, as train.py's start_run
    separator = tiny_separator()
    brain = SeparationBrain(
        modules={"separator": separator, "loss": SeparationLoss()},
        opt_class=lambda params: torch.optim.SGD(params, lr=LR),
        hparams={"batch_size": batch_size, "global_batch_size": GLOBAL_BATCH},
        run_opts=run_opts,
    )
    brain.on_fit_start()  # logs the plan, wraps the separator in DDP, makes the optimiser
    brain.on_stage_start(sb.Stage.TRAIN, epoch=1)
    plan = brain.batch_plan
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    share = plan.per_process * plan.accumulation
    mix, sources = (x[rank * share:(rank + 1) * share] for x in examples())
    for start in range(0, share, plan.per_process):  # as fit() does: step, then fit_batch
        brain.step += 1
        brain.fit_batch(as_batch(mix[start:start + plan.per_process],
                                 sources[start:start + plan.per_process]))
    assert brain.optimizer_step == 1, brain.optimizer_step
    return {k: v.detach().clone() for k, v in separator.state_dict().items()
            if isinstance(v, torch.Tensor)}, plan


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="file to write the weights, plan and log to")
    parser.add_argument("--batch_size", type=int, required=True)
    parser.add_argument("--max_grad_norm", type=float, default=5.0)
    args = parser.parse_args(argv)

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
    import torch

    from spksep_modules.training.recipe import shutdown_distributed

    folder = args.out + ".run"
    state, plan = one_step(args.batch_size, args.max_grad_norm, folder)
    if int(os.environ.get("RANK", 0)) == 0:
        with open(os.path.join(folder, "log.txt"), encoding="utf-8") as f:
            log = f.read()
        torch.save({"state": state, "plan": tuple(plan), "log": log}, args.out)
    shutdown_distributed()


if __name__ == "__main__":
    main(sys.argv[1:])
