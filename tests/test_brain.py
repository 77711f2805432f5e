"""The Brain skips and counts non-finite losses instead of crashing or poisoning an update."""

from types import SimpleNamespace

import speechbrain as sb
import torch

from spksep_modules.brains import SeparationBrain
from spksep_modules.losses import SeparationLoss


class Padded(SimpleNamespace):
    pass


def make_batch(mix, sources):
    batch = SimpleNamespace(
        mix_sig=Padded(data=mix, lengths=torch.ones(mix.shape[0])),
        sources=Padded(data=sources, lengths=torch.ones(mix.shape[0])),
        id=[f"m{i}" for i in range(mix.shape[0])],
    )
    batch.to = lambda device: batch
    return batch


def brain():
    model = torch.nn.Conv1d(1, 2, 1)
    separator = lambda mix: model(mix[:, None]).transpose(1, 2)  # noqa: E731  [B, T, 2]
    b = SeparationBrain(modules={"model": model, "loss": SeparationLoss()},
                        opt_class=lambda p: torch.optim.SGD(p, lr=0.1),
                        hparams={}, run_opts={"device": "cpu"})
    b.compute_forward = lambda batch, stage: separator(batch.mix_sig.data)
    return b, model


def test_a_nan_mixture_skips_the_batch_and_is_counted():
    b, model = brain()
    b.on_stage_start(sb.Stage.TRAIN)
    torch.manual_seed(0)
    sources = torch.randn(3, 400, 2)
    mix = sources.sum(-1)
    mix[1, 10] = float("nan")
    b.on_fit_batch_start(None, True)
    loss = b.compute_objectives(b.compute_forward(make_batch(mix, sources), None),
                                make_batch(mix, sources), sb.Stage.TRAIN)
    assert b.nonfinite.skipped == 1 and b.nonfinite.skip_step
    # A zero that still touches every parameter (DDP's all-reduce stays in step).
    assert loss.item() == 0
    loss.backward()
    assert all(torch.equal(p.grad, torch.zeros_like(p)) for p in model.parameters())


def test_a_batch_with_no_finite_loss_makes_no_update():
    b, model = brain()
    b.on_stage_start(sb.Stage.TRAIN)
    sources = torch.randn(2, 400, 2)
    mix = torch.full((2, 400), float("nan"))
    b.init_optimizers()
    before = [p.detach().clone() for p in model.parameters()]
    b.on_fit_batch_start(None, True)
    loss = b.compute_objectives(b.compute_forward(make_batch(mix, sources), None),
                                make_batch(mix, sources), sb.Stage.TRAIN)
    assert b.nonfinite.skip_step and b.nonfinite.skipped == 2 and loss.item() == 0 and loss.requires_grad
    b.optimizers_step()
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))
