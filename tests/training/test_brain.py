"""Both Brains skip and count non-finite losses instead of crashing or poisoning an update,
and save an epoch's checkpoint before logging it."""

from types import SimpleNamespace
from unittest.mock import Mock

import speechbrain as sb
import torch

from spksep_modules.losses import SeparationLoss
from spksep_modules.models import ConvTasNet
from spksep_modules.training.brains import SeparationBrain, SpeakerIDBrain


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


class SpeakerNet(torch.nn.Module):
    """Logits for 3 speakers, called as RawNet2 is (``classify=True``)."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(4, 3)

    def forward(self, wav, classify=False):
        return self.linear(wav)


def speaker_brain(**kwargs):
    net = SpeakerNet()
    b = SpeakerIDBrain(modules={"speaker_net": net}, opt_class=lambda p: torch.optim.SGD(p, lr=0.1),
                       run_opts={"device": "cpu"}, **kwargs)
    return b, net


def speaker_batch(wav):
    batch = SimpleNamespace(wav=Padded(data=wav), label=Padded(data=torch.tensor([[0], [1], [2]])))
    batch.to = lambda device: batch
    return batch


def test_a_nan_speaker_batch_is_skipped_counted_and_makes_no_update():
    b, net = speaker_brain(hparams={})
    b.init_optimizers()
    b.nonfinite_count = 0  # SpeechBrain's own count, which fit() sets
    b.on_stage_start(sb.Stage.TRAIN)
    before = [p.detach().clone() for p in net.parameters()]
    wav = torch.randn(3, 4)
    wav[1, 0] = float("nan")
    loss = b.fit_batch(speaker_batch(wav))  # the whole training step, optimizer included
    assert all(torch.equal(p, q) for p, q in zip(net.parameters(), before))
    assert b.nonfinite.skip_step and b.nonfinite.skipped == 1 and loss.item() == 0
    wav[1, 0] = 0.0  # a finite batch next: it updates again
    assert torch.isfinite(b.fit_batch(speaker_batch(wav))) and not b.nonfinite.skip_step
    assert not all(torch.equal(p, q) for p, q in zip(net.parameters(), before))


def checkpoint_then_log(make_brain, stats):
    """The order of the VALID stage's checkpoint save and epoch line: a kill between them
    must not leave the epoch logged but not saved (it would be logged again on resume)."""
    calls = Mock()
    hparams = {"lr_scheduler": lambda optimizers, epoch, loss: (0.1, 0.1),
               "epoch_counter": Mock(), "train_logger": calls.logger}
    b = make_brain(hparams=hparams, checkpointer=calls.checkpointer)
    b.init_optimizers()
    b.on_stage_start(sb.Stage.VALID, 1)
    b.train_stats = {"loss": 1.0}
    for name, value in stats.items():
        setattr(b, name, value)
    b.on_stage_end(sb.Stage.VALID, 1.0, epoch=1)
    order = [name for name, _, _ in calls.mock_calls
             if name in ("checkpointer.save_and_keep_only", "logger.log_stats")]
    assert order == ["checkpointer.save_and_keep_only", "logger.log_stats"]


def test_separation_brain_saves_the_checkpoint_before_logging_the_epoch():
    def make(**kwargs):
        separator = ConvTasNet(N=16, L=8, B=8, H=16, P=3, X=2, R=1)
        return SeparationBrain(modules={"separator": separator, "loss": SeparationLoss()},
                               opt_class=lambda p: torch.optim.SGD(p, lr=0.1),
                               run_opts={"device": "cpu"}, **kwargs)

    checkpoint_then_log(make, {"stage_stats": {"si_snr": (10.0, 2)}})


def test_speaker_id_brain_saves_the_checkpoint_before_logging_the_epoch():
    checkpoint_then_log(lambda **kwargs: speaker_brain(**kwargs)[0], {"errors": 1, "count": 3})
