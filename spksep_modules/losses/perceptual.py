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
- total: ``lb * L_basic + lp * L_perc``                           (eq. 9, ``SeparationLoss``)

Each of the paper's perceptual models is one small class over the shared distance code
(:class:`PerceptualTerm`): :class:`WeightedSum`, :class:`TripletLike`, and the Table II
ablations :class:`PositiveOnly` and :class:`NegativeOnly`. A term maps PIT-aligned
estimates and clean sources to ``{"perceptual": L_perc, "D_pos": ..., "D_neg": ...}``;
:class:`spksep_modules.losses.SeparationLoss` weighs it against the uPIT SI-SNR loss.
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


class PerceptualTerm(nn.Module):
    """Distances between frozen features of estimates and clean sources (eqs. 3-5).

    Subclasses say how the per-source distances make one loss (``combine``).

    Arguments
    ---------
    representation : nn.Module
        Maps ``wav [N, time]`` to features ``[N, frames, dim]``. It must already be frozen
        by its owner (eval mode, ``requires_grad=False``; see
        ``spksep_modules.nnet.frozen.Frozen``); gradients still pass through it to the
        estimates.
    """

    def __init__(self, representation: nn.Module):
        super().__init__()
        trainable = [name for name, p in representation.named_parameters() if p.requires_grad]
        if trainable:
            # Otherwise the optimiser would update the representation through this loss.
            raise ValueError(
                f"{type(self).__name__}: the representation has trainable parameters "
                f"({trainable[0]}, ...); freeze it first (spksep_modules.nnet.frozen.Frozen)"
            )
        self.representation = representation

    def features(self, wav: torch.Tensor) -> torch.Tensor:
        """``[B, time, C]`` -> ``[B, C, frames, dim]`` in one call on ``B * C`` waveforms."""
        batch, time, num_spks = wav.shape
        feats = self.representation(wav.transpose(1, 2).reshape(batch * num_spks, time))
        if feats.dim() != 3:
            raise ValueError(
                f"{type(self).__name__}: representation must return [N, frames, dim], got "
                f"{tuple(feats.shape)}"
            )
        return feats.reshape(batch, num_spks, *feats.shape[1:])

    def combine(self, dist_pos: torch.Tensor, dist_neg: torch.Tensor) -> torch.Tensor:
        """``[batch, num_spks]`` distances -> the scalar perceptual loss L_perc."""
        raise NotImplementedError

    def forward(self, est_aligned: torch.Tensor, ref: torch.Tensor) -> dict:
        """``est_aligned, ref [batch, time, num_spks]`` (estimates in reference order) ->
        ``{"perceptual": L_perc, "D_pos", "D_neg"}`` (the distances detached, to log)."""
        feat_est = self.features(est_aligned)
        with torch.no_grad():
            feat_ref = self.features(ref)
        dist_pos, dist_neg = perceptual_distances(feat_est, feat_ref)
        return {
            "perceptual": self.combine(dist_pos, dist_neg),
            "D_pos": dist_pos.mean().detach(),
            "D_neg": dist_neg.mean().detach(),
        }


class WeightedSum(PerceptualTerm):
    """P weighted-sum: ``l1 * D_pos + l2 / D_neg`` (eq. 6); paper: l1 100, l2 0.001.

    Example
    -------
    >>> term = WeightedSum(ToyFeatures(), l1=1.0, l2=1.0)
    >>> ref = torch.randn(2, 400, 2)
    >>> bool(term(ref, ref)["D_pos"] == 0), sorted(term(ref, ref))
    (True, ['D_neg', 'D_pos', 'perceptual'])
    """

    def __init__(self, representation, l1: float = 100.0, l2: float = 1e-3,
                 neg_floor: float = NEG_FLOOR):
        super().__init__(representation)
        self.l1, self.l2, self.neg_floor = float(l1), float(l2), float(neg_floor)

    def combine(self, dist_pos, dist_neg):
        return weighted_sum_loss(dist_pos, dist_neg, self.l1, self.l2, self.neg_floor)


class TripletLike(PerceptualTerm):
    """P triplet-like: ``mean relu(dist_pos - dist_neg + alpha)`` (eq. 8); paper: alpha
    0.0035 (with lp 300).

    Example
    -------
    >>> ref = torch.randn(2, 400, 2)
    >>> float(TripletLike(ToyFeatures(), alpha=0.5)(ref, ref)["perceptual"])  # pos 0 < neg
    0.0
    """

    def __init__(self, representation, alpha: float = 0.0035):
        super().__init__(representation)
        self.alpha = float(alpha)

    def combine(self, dist_pos, dist_neg):
        return triplet_like_loss(dist_pos, dist_neg, self.alpha)


class PositiveOnly(PerceptualTerm):
    """Table II ablation: the weighted sum without its negative term, ``l1 * D_pos``.

    Example
    -------
    >>> ref = torch.randn(2, 400, 2)
    >>> float(PositiveOnly(ToyFeatures())(ref, ref)["perceptual"])
    0.0
    """

    def __init__(self, representation, l1: float = 100.0):
        super().__init__(representation)
        self.l1 = float(l1)

    def combine(self, dist_pos, dist_neg):
        return self.l1 * dist_pos.mean()


class NegativeOnly(PerceptualTerm):
    """Table II ablation: the weighted sum without its positive term, ``l2 / D_neg``.

    Example
    -------
    >>> ref = torch.randn(2, 400, 2)
    >>> bool(NegativeOnly(ToyFeatures(), l2=1.0)(ref, ref)["perceptual"] > 0)
    True
    """

    def __init__(self, representation, l2: float = 1e-3, neg_floor: float = NEG_FLOOR):
        super().__init__(representation)
        self.l2, self.neg_floor = float(l2), float(neg_floor)

    def combine(self, dist_pos, dist_neg):
        return self.l2 / dist_neg.mean().clamp(min=self.neg_floor)


class ToyFeatures(nn.Module):
    """A parameter-free stand-in representation for examples and tests: 80-sample frames
    as feature vectors, ``wav [N, time] -> [N, time // 80, 80]``."""

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        frames = wav.shape[-1] // 80
        return wav[:, : frames * 80].reshape(wav.shape[0], frames, 80)
