"""Mixed-precision training steps (``--precision=bf16`` and fp16) for every separator family
and every loss, through the Brain's own ``fit_batch``, at toy sizes.

bf16 goes through SpeechBrain's own ``run_opts={"precision": "bf16"}`` (autocast around the
forward pass and the objectives, no GradScaler). SpeechBrain refuses ``--precision=fp16``
on CPU, so the fp16 steps install on a CPU Brain exactly what it installs for fp16 on
CUDA: ``TorchAutocast(dtype=float16)`` as the training context and an enabled
``GradScaler`` (default initial scale 2**16, so a first step may overflow and be skipped,
as on a GPU).

Tolerance. The loss (negative SI-SNR, in dB; about 20-35 at initialisation here) of a step
in reduced precision is compared with the fp32 step's from the same weights and batch.
bf16 keeps 8 significant bits (a rounding error of 2**-9 = 0.2% per operation) and fp16
11 (0.03%); over the few dozen rounded layers of these models the measured differences
are at most 0.4% (bf16) and 0.06% (fp16). The bounds, 2% (bf16) and 0.5% (fp16) plus
0.05, leave 5x and 8x margin over that and still fail on what breaks precision: the loss
or a norm in reduced precision overflowing (inf/NaN), or masks that collapse (the loss
moves by tens of dB). The logged terms (SI-SNR, D_pos, D_neg) are held to the same bounds each.
The triplet-like loss is ``lp * relu(dist_pos - dist_neg + alpha)`` with both distances
about equal at initialisation, a difference that cancels most of their digits: its bound
is relative to ``lp * (D_pos + D_neg)``, the size of what it subtracts, not to its result.
The update itself must point where fp32's does (cosine > 0.98; measured >= 0.997) and
leave every parameter finite.
"""

import copy
from types import SimpleNamespace

import pytest
import speechbrain as sb
import torch
from speechbrain.utils.autocast import TorchAutocast
from torch import nn

from spksep_modules.losses import NegativeOnly, PositiveOnly, SeparationLoss, TripletLike, WeightedSum
from spksep_modules.models import ConvTasNet, SepFormer
from spksep_modules.models.conditioned import ConditionedSeparator
from spksep_modules.training.brains import SeparationBrain

torch.set_num_threads(1)

LOW_PRECISIONS = ["bf16", "fp16"]
RELATIVE_TOLERANCE = {"bf16": 0.02, "fp16": 0.005}
ABSOLUTE_TOLERANCE = 0.05
MAX_SCALER_ATTEMPTS = 12  # fp16: the GradScaler halves its scale after each overflow
LR = 1e-3


class TinySpeakerNet(nn.Module):
    """Conv + mean-pool 'speaker network' (no download)."""

    embedding_dim = 6

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(1, self.embedding_dim, 9, stride=4)

    def embed(self, wav):  # [N, T] -> [N, D]
        return torch.tanh(self.conv(wav.unsqueeze(1))).mean(-1)


class ToyRepresentation(nn.Module):
    """A frozen strided conv standing in for wav2vec: ``[N, T] -> [N, frames, 4]``."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(1, 4, kernel_size=16, stride=8)
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()

    def forward(self, wav):
        return torch.tanh(self.conv(wav.unsqueeze(1))).transpose(1, 2)


def tiny_convtasnet(causal=False):
    return ConvTasNet(N=16, L=8, B=8, H=16, P=3, X=3, R=2, causal=causal)


def tiny_conditioned():
    """The yaml's defaults (estimate cue, residual passes) at toy size; the residual
    output layer starts at zero, so it is moved off zero to let gradients reach the stack."""
    model = ConditionedSeparator(
        ConvTasNet(N=16, L=8, B=8, H=16, P=3, X=2, R=1), TinySpeakerNet(),
        stack_channels=8, num_layers=4, layers_per_group=2, film_hidden=16, residual=True)
    with torch.no_grad():
        model.stack.out.weight.normal_(0.0, 0.1)
    return model


SEPARATORS = {
    "convtasnet": tiny_convtasnet,
    "convtasnet-causal": lambda: tiny_convtasnet(causal=True),
    "conditioned": tiny_conditioned,
    "sepformer": lambda: SepFormer(N=16, num_layers=1, K=10, intra_layers=1, inter_layers=1,
                                   nhead=2, d_ffn=32),
}
# The recipes' losses (losses/*.yaml) on a toy representation, auxiliary term on from the
# first batch (no warm-up, fixed weights).
LOSSES = {
    "si_snr": lambda: SeparationLoss(),
    "weighted_sum": lambda: SeparationLoss(WeightedSum(ToyRepresentation(), l1=100.0, l2=1e-3)),
    "triplet_like": lambda: SeparationLoss(TripletLike(ToyRepresentation(), alpha=0.0035),
                                           lp=300.0),
    "ablation_pos": lambda: SeparationLoss(PositiveOnly(ToyRepresentation(), l1=100.0)),
    "ablation_neg": lambda: SeparationLoss(NegativeOnly(ToyRepresentation(), l2=1e-3)),
}


def make_batch(seed=1, batch=2, samples=1600):
    gen = torch.Generator().manual_seed(seed)
    sources = torch.randn(batch, samples, 2, generator=gen)
    batch = SimpleNamespace(
        mix_sig=SimpleNamespace(data=sources.sum(-1), lengths=torch.ones(batch)),
        sources=SimpleNamespace(data=sources, lengths=torch.ones(batch)),
        id=[f"m{i}" for i in range(batch)],
    )
    batch.to = lambda device: batch
    return batch


def make_brain(separator, loss, precision):
    """A SeparationBrain set up as ``fit`` sets it up, training in ``precision``."""
    brain = SeparationBrain(
        modules={"separator": separator, "loss": loss},
        opt_class=lambda params: torch.optim.SGD(params, lr=LR),
        run_opts={"device": "cpu", "precision": "fp32" if precision == "fp16" else precision},
    )
    if precision == "fp16":  # what SpeechBrain sets up for --precision=fp16 on CUDA
        brain.training_ctx = TorchAutocast(device_type="cpu", dtype=torch.float16)
        brain.scaler = torch.GradScaler("cpu", enabled=True)
    brain.on_fit_start()  # optimiser (no checkpointer, no DDP here)
    brain.on_stage_start(sb.Stage.TRAIN, epoch=1)
    return brain


def train_step(separator, loss, precision):
    """One optimiser step on a copy of ``separator`` (fp16: batches repeat until the
    GradScaler accepts one). Returns the first batch's loss, the logged terms (means over
    the batches), the update per parameter, the updated model and the separator output's
    dtype."""
    model = copy.deepcopy(separator)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    dtypes = []
    model.register_forward_hook(lambda module, args, out: dtypes.append(out.dtype))
    brain = make_brain(model, loss, precision)
    losses = []
    for _ in range(MAX_SCALER_ATTEMPTS if precision == "fp16" else 1):
        brain.step += 1
        losses.append(float(brain.fit_batch(make_batch())))
        if any(not torch.equal(p, before[n]) for n, p in model.named_parameters()):
            break
    updates = {name: (p.detach() - before[name]) for name, p in model.named_parameters()}
    stats = {k: total / count for k, (total, count) in brain.stage_stats.items()}
    return losses[0], stats, updates, model, dtypes[0]


def cosine(a: dict, b: dict) -> float:
    x = torch.cat([v.flatten() for v in a.values()]).double()
    y = torch.cat([b[k].flatten() for k in a]).double()
    return float(x @ y / (x.norm() * y.norm()))


def check_against_fp32(separator, loss_fn, precision):
    # Both steps start from the same weights, separator's and representation's.
    ref_loss, ref_stats, ref_updates, _, ref_dtype = train_step(
        separator, copy.deepcopy(loss_fn), "fp32")
    loss, stats, updates, model, dtype = train_step(separator, copy.deepcopy(loss_fn), precision)
    assert ref_dtype == torch.float32
    # The forward pass really ran in reduced precision (autocast was on).
    assert dtype == {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    assert torch.isfinite(torch.tensor(loss))
    rel = RELATIVE_TOLERANCE[precision]
    for key in ("si_snr", "D_pos", "D_neg"):
        if key in ref_stats:
            bound = rel * abs(ref_stats[key]) + ABSOLUTE_TOLERANCE
            assert abs(stats[key] - ref_stats[key]) <= bound, (key, stats[key], ref_stats[key])
    scale = abs(ref_loss)
    if isinstance(loss_fn.auxiliary, TripletLike):  # see the module docstring
        scale += loss_fn.lp * (ref_stats["D_pos"] + ref_stats["D_neg"])
    assert abs(loss - ref_loss) <= rel * scale + ABSOLUTE_TOLERANCE, (loss, ref_loss)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert any(u.abs().sum() > 0 for u in updates.values()), "no parameter was updated"
    assert cosine(updates, ref_updates) > 0.98


@pytest.mark.parametrize("precision", LOW_PRECISIONS)
@pytest.mark.parametrize("family", sorted(SEPARATORS))
def test_every_separator_trains_in_reduced_precision(family, precision):
    torch.manual_seed(0)
    check_against_fp32(SEPARATORS[family](), LOSSES["si_snr"](), precision)


@pytest.mark.parametrize("precision", LOW_PRECISIONS)
@pytest.mark.parametrize("loss", [name for name in LOSSES if name != "si_snr"])
def test_every_loss_trains_in_reduced_precision(loss, precision):
    torch.manual_seed(0)
    check_against_fp32(tiny_convtasnet(), LOSSES[loss](), precision)


def test_the_loss_terms_are_fp32_under_autocast():
    """SI-SNR and the perceptual distances are computed in fp32 whatever the separator ran
    in: the loss is a plain fp32 tensor under bf16 and fp16 autocast."""
    est, ref = torch.randn(2, 1600, 2), torch.randn(2, 1600, 2)
    for dtype in (torch.bfloat16, torch.float16):
        loss_fn = SeparationLoss(WeightedSum(ToyRepresentation(), l1=100.0, l2=1e-3))
        with torch.autocast("cpu", dtype=dtype):
            terms = loss_fn(est.to(dtype), ref)
        assert terms["loss"].dtype == torch.float32
        assert terms["D_pos"].dtype == terms["D_neg"].dtype == torch.float32
