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
ablations :class:`PositiveOnly` and :class:`NegativeOnly`. A term is a weighted sum of
named *parts* (``D_pos``, ``inv_D_neg`` = 1 / D_neg, ``triplet``); its ``weights`` are the
paper's l1, l2 (or 1 for the triplet), which ``SeparationLoss`` can also calibrate.

**Normalised distances** (``normalised=True``). The literal ``d`` sums over frames, so it
grows with the segment length, and its scale is the representation's. The normalised one
averages over frames and divides by the clean features' own spread ``s(x_i)`` (their
variance over frames, averaged over dimensions):
``d_norm(x_i, y) = mean_m ||phi_m(x_i) - phi_m(y)||^2 / D / s(x_i)``, the same for 1 s or
3 s segments and under any rescaling of the features: ``d_norm = d / (M * s)`` for ``M``
frames. With independent signals ``d_norm`` is about 2, identical ones give 0. The literal
weights map as ``l1_norm = l1 * M * s``, ``l2_norm = l2 / (M * s)`` and
``alpha_norm = alpha / (M * s)``, with ``M`` and ``s`` those of the paper's setup (wav2vec
1.0 context features, 3 s segments: ``M`` = 298 frames at 100 Hz).
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

    Example
    -------
    >>> a = torch.zeros(3, 4)            # 3 frames of dimension 4
    >>> float(frame_distance(a, a + 2))  # 3 frames x (4 * 2^2) / 4
    12.0
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


def feature_spread(feat: torch.Tensor, floor: float = 1e-8) -> torch.Tensor:
    """The features' variance over frames, averaged over dimensions: ``[..., frames, dim]
    -> [...]`` (at least ``floor``). The scale a normalised distance is measured in.

    Example
    -------
    >>> feat = torch.tensor([[1.0, 0.0], [3.0, 4.0]])   # 2 frames, 2 dims
    >>> float(feature_spread(feat))   # variances 1 and 4
    2.5
    """
    return feat.var(dim=-2, unbiased=False).mean(dim=-1).clamp_min(floor)


def perceptual_distances(feat_est: torch.Tensor, feat_ref: torch.Tensor, normalised=False):
    """Positive and negative distances of every source (eqs. 3 and 4).

    Arguments
    ---------
    feat_est : torch.Tensor
        ``[batch, num_spks, frames, dim]`` features of the PIT-aligned estimates.
    feat_ref : torch.Tensor
        ``[batch, num_spks, frames, dim]`` features of the clean sources.
    normalised : bool
        Mean over frames and divided by each clean source's :func:`feature_spread`
        (see the module docstring) instead of the paper's sum over frames.

    Returns
    -------
    dist_pos, dist_neg : torch.Tensor
        ``[batch, num_spks]`` each.

    Example
    -------
    >>> ref = torch.randn(2, 2, 50, 8)   # [batch, speakers, frames, dim]
    >>> pos, neg = perceptual_distances(ref, ref)
    >>> pos.shape, bool((pos == 0).all()), bool((neg > 0).all())
    (torch.Size([2, 2]), True, True)
    >>> pos, neg = perceptual_distances(ref, ref, normalised=True)   # independent: about 2
    >>> bool(((neg - 2).abs() < 0.5).all())
    True
    """
    # pairwise[b, i, j] = d(ref_i, est_j): all C x C distances in one broadcast.
    pairwise = frame_distance(feat_ref.unsqueeze(2), feat_est.unsqueeze(1))
    if normalised:
        frames = min(feat_est.shape[-2], feat_ref.shape[-2])
        pairwise = pairwise / (frames * feature_spread(feat_ref)[..., None])
    same = torch.eye(pairwise.shape[-1], dtype=torch.bool, device=pairwise.device)
    dist_pos = pairwise.diagonal(dim1=-2, dim2=-1)
    # Mask rather than "row sum minus diagonal", which would not be exactly >= 0.
    dist_neg = pairwise.masked_fill(same, 0.0).sum(dim=-1)
    return dist_pos, dist_neg


def weighted_sum_loss(
    dist_pos, dist_neg, l1: float = 100.0, l2: float = 1e-3, neg_floor: float = NEG_FLOOR
):
    """``l1 * D_pos + l2 / max(D_neg, neg_floor)`` (eq. 6); ``dist_*`` are ``[batch, num_spks]``.

    Example
    -------
    >>> float(weighted_sum_loss(torch.tensor([[1.0, 3.0]]), torch.tensor([[4.0, 4.0]]), 1.0, 8.0))
    4.0
    """
    return l1 * dist_pos.mean() + l2 / dist_neg.mean().clamp(min=neg_floor)


def triplet_like_loss(dist_pos, dist_neg, alpha: float = 0.0035):
    """``mean over (b, i) of relu(dist_pos - dist_neg + alpha)`` (eq. 8).

    Example
    -------
    >>> float(triplet_like_loss(torch.tensor([[1.0, 3.0]]), torch.tensor([[2.0, 2.0]]), 0.5))
    0.75
    """
    return torch.relu(dist_pos - dist_neg + alpha).mean()


class PerceptualTerm(nn.Module):
    """Distances between frozen features of estimates and clean sources (eqs. 3-5),
    combined as ``sum_k weights[k] * parts[k]``.

    Subclasses name their parts (``parts``) and set their ``weights``.

    Arguments
    ---------
    representation : nn.Module
        Maps ``wav [N, time]`` to features ``[N, frames, dim]``. It must already be frozen
        by its owner (eval mode, ``requires_grad=False``; see
        ``spksep_modules.nnet.frozen.Frozen``); gradients still pass through it to the
        estimates.
    normalised : bool
        Normalised distances (module docstring) instead of the paper's literal ones.
    """

    def __init__(self, representation: nn.Module, normalised: bool = False):
        super().__init__()
        trainable = [name for name, p in representation.named_parameters() if p.requires_grad]
        if trainable:
            # Otherwise the optimiser would update the representation through this loss.
            raise ValueError(
                f"{type(self).__name__}: the representation has trainable parameters "
                f"({trainable[0]}, ...); freeze it first (spksep_modules.nnet.frozen.Frozen)"
            )
        self.representation = representation
        self.normalised = bool(normalised)
        self.weights = {}  # part name -> weight (l1, l2, ...); SeparationLoss may calibrate

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

    def parts(self, dist_pos: torch.Tensor, dist_neg: torch.Tensor) -> dict:
        """``[batch, num_spks]`` distances -> the unweighted scalar parts, by name."""
        raise NotImplementedError

    def forward(self, est_aligned: torch.Tensor, ref: torch.Tensor) -> dict:
        """``est_aligned, ref [batch, time, num_spks]`` (estimates in reference order) ->
        ``{"perceptual": L_perc, "D_pos", "D_neg", "parts": {name: scalar}}`` (the
        distances detached, to log)."""
        feat_est = self.features(est_aligned)
        with torch.no_grad():
            feat_ref = self.features(ref)
        dist_pos, dist_neg = perceptual_distances(feat_est, feat_ref, self.normalised)
        parts = self.parts(dist_pos, dist_neg)
        return {
            "perceptual": sum(self.weights[k] * v for k, v in parts.items()),
            "D_pos": dist_pos.mean().detach(),
            "D_neg": dist_neg.mean().detach(),
            "parts": parts,
        }


def _inverse(dist_neg, floor):
    return 1.0 / dist_neg.mean().clamp(min=floor)


class WeightedSum(PerceptualTerm):
    """P weighted-sum: ``l1 * D_pos + l2 / D_neg`` (eq. 6); paper: l1 100, l2 0.001.

    Example
    -------
    >>> term = WeightedSum(ToyFeatures(), l1=1.0, l2=1.0)
    >>> ref = torch.randn(2, 400, 2)
    >>> out = term(ref, ref)
    >>> bool(out["D_pos"] == 0), sorted(out["parts"])
    (True, ['D_pos', 'inv_D_neg'])
    """

    def __init__(self, representation, l1: float = 100.0, l2: float = 1e-3,
                 neg_floor: float = NEG_FLOOR, normalised: bool = False):
        super().__init__(representation, normalised)
        self.weights = {"D_pos": float(l1), "inv_D_neg": float(l2)}
        self.neg_floor = float(neg_floor)

    def parts(self, dist_pos, dist_neg):
        return {"D_pos": dist_pos.mean(), "inv_D_neg": _inverse(dist_neg, self.neg_floor)}


class TripletLike(PerceptualTerm):
    """P triplet-like: ``mean relu(dist_pos - dist_neg + alpha)`` (eq. 8); paper: alpha
    0.0035 (with lp 300).

    Example
    -------
    >>> ref = torch.randn(2, 400, 2)
    >>> float(TripletLike(ToyFeatures(), alpha=0.5)(ref, ref)["perceptual"])  # pos 0 < neg
    0.0
    """

    def __init__(self, representation, alpha: float = 0.0035, normalised: bool = False):
        super().__init__(representation, normalised)
        self.alpha = float(alpha)
        self.weights = {"triplet": 1.0}

    def parts(self, dist_pos, dist_neg):
        return {"triplet": triplet_like_loss(dist_pos, dist_neg, self.alpha)}


class PositiveOnly(PerceptualTerm):
    """Table II ablation: the weighted sum without its negative term, ``l1 * D_pos``.

    Example
    -------
    >>> ref = torch.randn(2, 400, 2)
    >>> float(PositiveOnly(ToyFeatures())(ref, ref)["perceptual"])
    0.0
    """

    def __init__(self, representation, l1: float = 100.0, normalised: bool = False):
        super().__init__(representation, normalised)
        self.weights = {"D_pos": float(l1)}

    def parts(self, dist_pos, dist_neg):
        return {"D_pos": dist_pos.mean()}


class NegativeOnly(PerceptualTerm):
    """Table II ablation: the weighted sum without its positive term, ``l2 / D_neg``.

    Example
    -------
    >>> ref = torch.randn(2, 400, 2)
    >>> bool(NegativeOnly(ToyFeatures(), l2=1.0)(ref, ref)["perceptual"] > 0)
    True
    """

    def __init__(self, representation, l2: float = 1e-3, neg_floor: float = NEG_FLOOR,
                 normalised: bool = False):
        super().__init__(representation, normalised)
        self.weights = {"inv_D_neg": float(l2)}
        self.neg_floor = float(neg_floor)

    def parts(self, dist_pos, dist_neg):
        return {"inv_D_neg": _inverse(dist_neg, self.neg_floor)}


class ToyFeatures(nn.Module):
    """A parameter-free stand-in representation for examples and tests: 80-sample frames
    as feature vectors, ``wav [N, time] -> [N, time // 80, 80]``.

    Example
    -------
    >>> ToyFeatures()(torch.zeros(3, 800)).shape
    torch.Size([3, 10, 80])
    """

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        frames = wav.shape[-1] // 80
        return wav[:, : frames * 80].reshape(wav.shape[0], frames, 80)
