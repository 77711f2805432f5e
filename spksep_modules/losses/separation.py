"""The training objective of every model: uPIT SI-SNR plus at most one auxiliary term."""

import torch
from torch import nn

from spksep_modules.losses.pit import pit_si_snr


class SeparationLoss(nn.Module):
    """``lb * L_basic + lp * L_aux`` (the paper's eq. 9), as named terms.

    ``L_basic`` is the uPIT negative SI-SNR of the estimates (mean over the batch);
    ``auxiliary`` (e.g. :class:`~spksep_modules.losses.perceptual.WeightedSum`) sees the
    estimates aligned to the sources by that same permutation and returns a dict whose
    ``"perceptual"`` entry is ``L_aux`` (its other entries are logged). The auxiliary term
    counts in training only (``self.training``; the Brain sets the mode per stage), and
    only for batches whose SI-SNR is finite everywhere.

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

    def __init__(self, auxiliary: nn.Module = None, lb: float = 1.0, lp: float = 1.0):
        super().__init__()
        self.auxiliary = auxiliary
        self.lb, self.lp = float(lb), float(lp)

    def forward(self, out: torch.Tensor, sources: torch.Tensor) -> dict:
        neg_si_snr, est_aligned, _ = pit_si_snr(out.as_subclass(torch.Tensor), sources)
        basic = neg_si_snr.mean()
        terms = {"loss": basic, "si_snr": -neg_si_snr.detach()}
        for name, extra in getattr(out, "extras", {}).items():
            terms[f"si_snr_{name}"] = -pit_si_snr(extra.detach(), sources)[0]
        if self.auxiliary is not None and self.training and torch.isfinite(neg_si_snr).all():
            aux = self.auxiliary(est_aligned, sources)
            terms.update(aux)
            terms["loss"] = self.lb * basic + self.lp * aux["perceptual"]
        return terms
