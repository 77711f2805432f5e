"""The training objective of every model: uPIT SI-SNR plus at most one auxiliary term,
with an optional warm-up and weights calibrated from the first batches."""

import logging

import torch
from speechbrain.utils.checkpoints import mark_as_loader, mark_as_saver, register_checkpoint_hooks
from torch import nn

from spksep_modules import SpkSepError
from spksep_modules.losses.pit import pit_si_snr

logger = logging.getLogger(__name__)

# |L_basic| is floored here when it sets calibrated weights: at 0 dB SI-SNR the basic loss
# itself is 0 and any share of it would switch the auxiliary term off.
BASIC_FLOOR_DB = 1.0


def _all_reduce_mean(values: torch.Tensor) -> torch.Tensor:
    """Mean over DDP processes (unchanged without DDP): every process calibrates alike."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        values = values.clone()
        torch.distributed.all_reduce(values)
        values /= torch.distributed.get_world_size()
    return values


@register_checkpoint_hooks
class SeparationLoss(nn.Module):
    """``lb * L_basic + lp * L_aux`` (the paper's eq. 9), as named terms.

    ``L_basic`` is the uPIT negative SI-SNR of the estimates (mean over the batch);
    ``auxiliary`` (e.g. :class:`~spksep_modules.losses.perceptual.WeightedSum`) sees the
    estimates aligned to the sources by that same permutation and returns a dict whose
    ``"perceptual"`` entry is ``L_aux``, with ``"parts"`` (its unweighted parts) and
    statistics to log. The auxiliary term counts in training only (``self.training``; the
    Brain sets the mode per stage), and only for batches whose SI-SNR is finite everywhere.

    Arguments
    ---------
    auxiliary : nn.Module or None
        The auxiliary (perceptual) term.
    lb, lp : float
        Weights of the basic and the auxiliary loss.
    warmup_steps : int
        Training batches trained on ``L_basic`` alone before the auxiliary term comes in
        (distances between a random separator's output and clean speech say little).
    perceptual_share : float or None
        Calibrate the auxiliary term's part weights (l1 and l2, or the triplet's) over the
        ``calibration_batches`` batches after the warm-up so that each part starts at this
        share of the basic loss. Those batches train on ``L_basic`` alone; the chosen weights
        are logged, saved with the checkpoints (resumed runs reuse them) and logged per
        epoch as ``w_<part>``.
    calibrate_by : str
        What the share is of. ``"gradient"`` (default): the norm of each weighted part's
        gradient with respect to the estimates is ``share`` times that of ``L_basic``, which
        is what decides how much a term steers training. ``"value"``: each weighted part's
        value is ``share * |L_basic|`` (floored at 1 dB); a term can then hold a tenth of the
        loss and still barely move the separator, when its gradient is flat.
    calibration_batches : int
        How many batches the calibration averages over.

    ``forward(out, sources)`` with ``out`` a separator's output (estimates
    ``[batch, time, C]``, optionally with ``extras``) and ``sources [batch, time, C]``
    returns ``{"loss": scalar to minimise, "si_snr": [batch] dB (detached), ...}``: every
    entry but ``loss`` is a statistic to log, per example (``[batch]``) or per batch
    (scalar). Extra estimates of the separator (``out.extras``, e.g. the conditioned
    model's intermediate ones) are scored as ``si_snr_<name>``.

    Example
    -------
    >>> ref = torch.randn(2, 800, 2)
    >>> terms = SeparationLoss()(ref.flip(-1) + 0.01 * torch.randn(2, 800, 2), ref)
    >>> sorted(terms), terms["si_snr"].shape, bool(terms["loss"] < -30)
    (['loss', 'si_snr'], torch.Size([2]), True)
    """

    def __init__(self, auxiliary: nn.Module = None, lb: float = 1.0, lp: float = 1.0,
                 warmup_steps: int = 0, perceptual_share: float = None,
                 calibrate_by: str = "gradient", calibration_batches: int = 10):
        super().__init__()
        if perceptual_share is not None and not 0 < perceptual_share < 1:
            raise SpkSepError(f"perceptual_share: expected a share in (0, 1), got {perceptual_share}")
        if calibrate_by not in ("gradient", "value"):
            raise SpkSepError(f"calibrate_by: expected gradient or value, got {calibrate_by!r}")
        if warmup_steps < 0 or calibration_batches < 1:
            raise SpkSepError("warmup_steps must be >= 0 and calibration_batches >= 1, got "
                              f"{warmup_steps} and {calibration_batches}")
        self.auxiliary = auxiliary
        self.lb, self.lp = float(lb), float(lp)
        self.warmup_steps = int(warmup_steps)
        self.perceptual_share = perceptual_share
        self.calibration_batches = int(calibration_batches)
        self.calibrate_by = calibrate_by
        self.step = 0  # training batches seen (restored on resume)
        self.calibration = []  # per batch: [|L_basic|, part_1, part_2, ...]
        self.calibrated = perceptual_share is None

    def forward(self, out: torch.Tensor, sources: torch.Tensor) -> dict:
        # In fp32 whatever the separator ran in: SI-SNR's energy ratios and the distances'
        # sums lose most of their digits in bf16 (SpeechBrain's --precision=bf16 runs the
        # objectives under the same autocast as the forward pass).
        with torch.autocast(sources.device.type, enabled=False):
            return self._terms(out, sources.float())

    def _terms(self, out, sources):
        estimates = out.as_subclass(torch.Tensor).float()
        neg_si_snr, est_aligned, _ = pit_si_snr(estimates, sources)
        basic = neg_si_snr.mean()
        terms = {"loss": basic, "si_snr": -neg_si_snr.detach()}
        for name, extra in getattr(out, "extras", {}).items():
            terms[f"si_snr_{name}"] = -pit_si_snr(extra.detach().float(), sources)[0]
        if self.auxiliary is None or not self.training:
            return terms
        self.step += 1
        if self.step == self.warmup_steps + 1:
            logger.info("auxiliary loss term on from training batch %d", self.step)
        if self.step <= self.warmup_steps or not torch.isfinite(neg_si_snr).all():
            return terms
        if not self.calibrated:
            self._calibrate(self._scales(basic, estimates, est_aligned, sources))
            return terms
        aux = self.auxiliary(est_aligned, sources)
        terms.update({k: v for k, v in aux.items() if k != "parts"})
        terms["loss"] = self.lb * basic + self.lp * aux["perceptual"]
        if self.perceptual_share is not None:
            terms.update({f"w_{k}": torch.tensor(w) for k, w in self.auxiliary.weights.items()})
        return terms

    def _scales(self, basic, estimates, est_aligned, sources) -> dict:
        """What each part is measured by for calibration: ``{"basic": ..., part: ...}``,
        gradient norms with respect to the estimates, or values."""
        if self.calibrate_by == "value" or not estimates.requires_grad:
            with torch.no_grad():
                parts = self.auxiliary(est_aligned, sources)["parts"]
            return {"basic": max(float(basic.abs()), BASIC_FLOOR_DB),
                    **{k: float(v) for k, v in parts.items()}}
        parts = self.auxiliary(est_aligned, sources)["parts"]
        scales = {}
        for name, value in [("basic", basic), *parts.items()]:
            grad, = torch.autograd.grad(value, estimates, retain_graph=True, allow_unused=True)
            scales[name] = 0.0 if grad is None else float(grad.norm())
        return scales

    def _calibrate(self, scales):
        self.calibration.append(list(scales.values()))
        if len(self.calibration) < self.calibration_batches:
            return
        means = _all_reduce_mean(torch.tensor(self.calibration, dtype=torch.float64).mean(0))
        target = self.perceptual_share * float(means[0])
        parts = list(scales)[1:]
        for name, value in zip(parts, means[1:].tolist()):
            if value > 1e-12:  # a part that is exactly 0 (a satisfied margin) keeps its weight
                self.auxiliary.weights[name] = target / (self.lp * value)
        self.calibrated = True
        logger.info("perceptual weights calibrated at batch %d (%s share %s): %s",
                    self.step, self.calibrate_by, self.perceptual_share, self.auxiliary.weights)

    @mark_as_saver
    def _save(self, path):
        weights = getattr(self.auxiliary, "weights", None)
        torch.save({"step": self.step, "calibrated": self.calibrated,
                    "calibration": self.calibration, "weights": weights}, path)

    @mark_as_loader
    def _recover(self, path, end_of_epoch=False):
        state = torch.load(path, weights_only=True)
        self.step, self.calibrated = state["step"], state["calibrated"]
        self.calibration = state["calibration"]
        if state["weights"] is not None and self.auxiliary is not None:
            self.auxiliary.weights = dict(state["weights"])
