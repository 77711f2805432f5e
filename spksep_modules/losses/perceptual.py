"""Perceptual losses on frozen speech representations (Sun et al., eqs. 3-9).

Notation: a batch holds ``B`` mixtures of ``C`` sources; ``phi_m(x)`` is frame ``m`` of a
frozen representation of waveform ``x``, of dimension ``D``. With estimates already
aligned to the clean sources by PIT:

- ``d(x, y) = sum_m ||phi_m(x) - phi_m(y)||^2 / D``              (frame distance)
- ``dist_pos[b, i] = d(x_i, x~_i)``                               (eq. 3)
- ``dist_neg[b, i] = sum_{j != i} d(x_i, x~_j)``                  (eq. 4)
- ``D_pos``, ``D_neg``: means over the batch and its sources      (eq. 5)
- weighted-sum: ``l1 * D_pos + l2 / D_neg``                       (eq. 6)
- triplet-like: ``mean relu(dist_pos - dist_neg + alpha)``        (eq. 8)
- total: ``lb * L_basic + lp * L_perc``                           (eq. 9)
"""

import torch
from torch import nn

# Floor on D_neg inside l2 / D_neg. The repulsion term's gradient is -l2 / D_neg^2, so a
# batch whose estimates happen to match the other speakers' features (D_neg -> 0: a
# degenerate batch, silent sources, or a collapsed representation) would otherwise get an
# arbitrarily large step. Below the floor the term is a constant l2 / NEG_FLOOR (1.0 with
# the paper's l2 = 1e-3, the size of 1 dB of the SI-SNR loss) and contributes no gradient.
# D_neg is a sum over all frames of an utterance, so in normal training it is orders of
# magnitude above this floor and the floor never changes the loss.
NEG_FLOOR = 1e-3

# Frame counts of the two sides may differ by this much (rounding in a representation's
# framing); anything more means the waveforms had different lengths, which is a bug.
MAX_FRAME_MISMATCH = 2


def frame_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Sum over frames of the squared distance of frame vectors, divided by their dimension.

    Arguments
    ---------
    a, b : torch.Tensor
        ``[..., frames, dim]``; leading dimensions broadcast. If the frame counts differ
        by at most two, both are cropped to the shorter.

    Returns
    -------
    torch.Tensor
        ``[...]``.
    """
    frames_a, frames_b = a.shape[-2], b.shape[-2]
    if abs(frames_a - frames_b) > MAX_FRAME_MISMATCH:
        raise ValueError(
            f"frame_distance: frame counts {frames_a} and {frames_b} differ by more than "
            f"{MAX_FRAME_MISMATCH}"
        )
    frames = min(frames_a, frames_b)
    diff = a[..., :frames, :] - b[..., :frames, :]
    # mean over the feature dimension = the paper's 1/|phi_m| normalisation
    return (diff**2).mean(dim=-1).sum(dim=-1)


def perceptual_distances(feat_est: torch.Tensor, feat_ref: torch.Tensor):
    """Positive and negative distances of every source (eqs. 3 and 4).

    Arguments
    ---------
    feat_est : torch.Tensor
        ``[batch, num_spks, frames, dim]`` features of the PIT-aligned estimates.
    feat_ref : torch.Tensor
        ``[batch, num_spks, frames, dim]`` features of the clean sources.

    Returns
    -------
    dist_pos, dist_neg : torch.Tensor
        ``[batch, num_spks]`` each.
    """
    # pairwise[b, i, j] = d(ref_i, est_j): all C x C distances in one broadcast.
    pairwise = frame_distance(feat_ref.unsqueeze(2), feat_est.unsqueeze(1))
    same = torch.eye(pairwise.shape[-1], dtype=torch.bool, device=pairwise.device)
    dist_pos = pairwise.diagonal(dim1=-2, dim2=-1)
    # Mask rather than "row sum minus diagonal", which would not be exactly >= 0.
    dist_neg = pairwise.masked_fill(same, 0.0).sum(dim=-1)
    return dist_pos, dist_neg


def weighted_sum_loss(
    dist_pos, dist_neg, l1: float = 100.0, l2: float = 1e-3, neg_floor: float = NEG_FLOOR
):
    """``l1 * D_pos + l2 / max(D_neg, neg_floor)`` (eq. 6); ``dist_*`` are ``[batch, num_spks]``."""
    return l1 * dist_pos.mean() + l2 / dist_neg.mean().clamp(min=neg_floor)


def triplet_like_loss(dist_pos, dist_neg, alpha: float = 0.0035):
    """``mean over (b, i) of relu(dist_pos - dist_neg + alpha)`` (eq. 8)."""
    return torch.relu(dist_pos - dist_neg + alpha).mean()


class PerceptualLoss(nn.Module):
    """Basic loss plus a perceptual loss on a frozen representation (eq. 9).

    Arguments
    ---------
    representation : nn.Module
        Maps ``wav [N, time]`` to features ``[N, frames, dim]``. It must already be frozen
        by its owner (eval mode, ``requires_grad=False``; see
        ``spksep_modules.features.frozen.Frozen``); gradients still pass through it to
        the estimates.
    kind : str
        ``"weighted_sum"`` (P weighted-sum), ``"triplet_like"`` (P triplet-like), or the
        paper's Table II ablations ``"pos"`` (basic + l1 * D_pos) and ``"neg"``
        (basic + l2 / D_neg).
    lb, lp : float
        Weights of the basic and the perceptual loss.
    l1, l2 : float
        Weights of D_pos and 1 / D_neg.
    alpha : float
        Triplet margin.
    neg_floor : float
        Floor on D_neg inside ``l2 / D_neg`` (see ``NEG_FLOOR``).
    """

    KINDS = ("weighted_sum", "triplet_like", "pos", "neg")

    def __init__(
        self,
        representation: nn.Module,
        kind: str,
        lb: float = 1.0,
        lp: float = 1.0,
        l1: float = 100.0,
        l2: float = 1e-3,
        alpha: float = 0.0035,
        neg_floor: float = NEG_FLOOR,
    ):
        super().__init__()
        if kind not in self.KINDS:
            raise ValueError(f"PerceptualLoss: kind must be one of {self.KINDS}, got {kind!r}")
        trainable = [name for name, p in representation.named_parameters() if p.requires_grad]
        if trainable:
            # Otherwise the optimiser would update the representation through this loss.
            raise ValueError(
                "PerceptualLoss: the representation has trainable parameters "
                f"({trainable[0]}, ...); "
                "freeze it first (spksep_modules.features.frozen.Frozen)"
            )
        self.representation = representation
        self.kind = kind
        self.lb, self.lp = float(lb), float(lp)
        self.l1, self.l2 = float(l1), float(l2)
        self.alpha = float(alpha)
        self.neg_floor = float(neg_floor)

    def _features(self, wav: torch.Tensor) -> torch.Tensor:
        """``[B, time, C]`` -> ``[B, C, frames, dim]`` in one call on ``B * C`` waveforms."""
        batch, time, num_spks = wav.shape
        feats = self.representation(wav.transpose(1, 2).reshape(batch * num_spks, time))
        if feats.dim() != 3:
            raise ValueError(
                "PerceptualLoss: representation must return [N, frames, dim], got "
                f"{tuple(feats.shape)}"
            )
        return feats.reshape(batch, num_spks, *feats.shape[1:])

    def forward(
        self, est_aligned: torch.Tensor, ref: torch.Tensor, basic_loss: torch.Tensor
    ) -> dict:
        """
        Arguments
        ---------
        est_aligned : torch.Tensor
            ``[batch, time, num_spks]`` estimates in reference order (from PIT).
        ref : torch.Tensor
            ``[batch, time, num_spks]`` clean sources.
        basic_loss : torch.Tensor
            Scalar basic loss (uPIT negative SI-SNR).

        Returns
        -------
        dict
            ``loss`` (total, eq. 9), ``perceptual`` (L_perc, unweighted by lp), and
            detached scalars ``D_pos``, ``D_neg`` for logging.
        """
        feat_est = self._features(est_aligned)
        with torch.no_grad():
            feat_ref = self._features(ref)
        dist_pos, dist_neg = perceptual_distances(feat_est, feat_ref)

        if self.kind == "weighted_sum":
            perceptual = weighted_sum_loss(dist_pos, dist_neg, self.l1, self.l2, self.neg_floor)
        elif self.kind == "triplet_like":
            perceptual = triplet_like_loss(dist_pos, dist_neg, self.alpha)
        elif self.kind == "pos":
            perceptual = self.l1 * dist_pos.mean()
        else:  # "neg"
            perceptual = self.l2 / dist_neg.mean().clamp(min=self.neg_floor)

        return {
            "loss": self.lb * basic_loss + self.lp * perceptual,
            "perceptual": perceptual,
            "D_pos": dist_pos.mean().detach(),
            "D_neg": dist_neg.mean().detach(),
        }
