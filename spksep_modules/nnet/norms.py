"""Normalisation layers of the separators.

gLN (Conv-TasNet's global layer norm) sees the whole signal; the per-frame channel norm
is what a causal model uses instead, since it never looks at later frames.
"""

import torch
import torch.nn.functional as F
from torch import nn

from spksep_modules.nnet.precision import widen


def group_norm_by_rows(x: torch.Tensor, groups: int, weight=None, bias=None,
                       eps: float = 1e-5) -> torch.Tensor:
    """``F.group_norm`` of ``x [batch, C, ...]`` with each statistic taken in two steps:
    over each channel's own values first, then over the channels of a group.

    What the group norms compute in an ONNX export: onnxruntime sums a reduction over
    several axes in one long float32 run (a gLN over 512 x 20,000 values, 10 s at the
    paper's sizes, came out 3e-4 off); its reductions over the last axis, and the short
    ones over channels, stay within 1e-6 (measured), at about the same speed.

    Example
    -------
    >>> x = torch.randn(2, 8, 50) + 3
    >>> bool(torch.allclose(group_norm_by_rows(x, 2), F.group_norm(x, 2), atol=1e-5))
    True
    """
    rows = x.reshape(x.shape[0], groups, x.shape[1] // groups, -1)
    mean = rows.mean(-1, keepdim=True).mean(-2, keepdim=True)
    centred = rows - mean
    var = centred.pow(2).mean(-1, keepdim=True).mean(-2, keepdim=True)
    y = (centred * torch.rsqrt(var + eps)).reshape(x.shape)
    per_channel = (1, -1) + (1,) * (x.dim() - 2)
    if weight is not None:
        y = y * weight.view(per_channel)
    if bias is not None:
        y = y + bias.view(per_channel)
    return y


class GlobalLayerNorm(nn.Module):
    """gLN: normalise each example over channels and frames together.

    ``y = gamma * (x - mean) / sqrt(var + eps) + beta`` with ``mean``/``var`` taken over
    all channels and frames of one example, ``gamma``/``beta`` per channel. This is group
    normalisation with a single group, so it runs on PyTorch's fused ``group_norm``
    (one kernel each way; the same maths spelled out in tensor ops, with ``var_mean``,
    is ~6x slower forward + backward on CPU). In an ONNX export it takes its statistics
    in two steps instead (:func:`group_norm_by_rows`).

    Arguments
    ---------
    channels : int
        Number of channels C.
    eps : float
        Added to the variance, as in the paper's implementation.

    Example
    -------
    >>> norm = GlobalLayerNorm(4)
    >>> y = norm(3 + 2 * torch.randn(2, 4, 100))   # [batch, C, frames]
    >>> y.shape, bool(y[0].mean().abs() < 1e-5), bool((y[1].std() - 1).abs() < 1e-2)
    (torch.Size([2, 4, 100]), True, True)
    """

    def __init__(self, channels, eps=1e-8):
        super().__init__()
        self.eps = eps
        self.gamma = nn.Parameter(torch.ones(channels))
        self.beta = nn.Parameter(torch.zeros(channels))

    def forward(self, x):
        if torch.onnx.is_in_onnx_export():
            return group_norm_by_rows(x, 1, self.gamma, self.beta, self.eps)
        return F.group_norm(x, 1, self.gamma, self.beta, self.eps)


class FrameLayerNorm(GlobalLayerNorm):
    """Per-frame layer norm with a learned per-channel affine: the causal TCN's norm.

    Each frame is normalised over its channels only, so no output frame depends on any
    other frame (what a causal, streamable model needs). Same parameters (and state-dict
    keys) as :class:`GlobalLayerNorm`. ``[batch, C, frames]``.

    Example
    -------
    >>> norm, x = FrameLayerNorm(8), torch.randn(1, 8, 5)
    >>> torch.allclose(norm(x)[..., :3], norm(x[..., :3]))  # causal
    True
    """

    def __init__(self, channels, eps=1e-8):
        super().__init__(channels, eps)
        self.shape = (int(channels),)  # a plain int: an exported graph keeps it constant

    def forward(self, x):
        y = F.layer_norm(x.transpose(1, 2), self.shape, self.gamma, self.beta, self.eps)
        return y.transpose(1, 2)


class ChannelNorm(nn.Module):
    """Normalises each frame over its channels (no learned affine): ``[B, Ch, T]``.

    The causal stack's norm: it must not look at future frames.

    Example
    -------
    >>> x = torch.randn(1, 8, 5)
    >>> torch.allclose(ChannelNorm()(x)[..., :3], ChannelNorm()(x[..., :3]))  # causal
    True
    >>> y = ChannelNorm()((1000 * x).half())  # statistics in fp32: no fp16 overflow
    >>> y.dtype, bool(torch.isfinite(y).all())
    (torch.float32, True)
    """

    def __init__(self, eps: float = 1e-8):
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # In fp32 under mixed precision: an fp16 variance overflows (inf) once the
        # activations pass ~256, and eps=1e-8 is 0 in fp16. (group_norm and layer_norm,
        # which the other norms run on, keep their statistics in fp32 themselves.)
        x = widen(x)
        var, mean = torch.var_mean(x, dim=1, correction=0, keepdim=True)
        return (x - mean) * torch.rsqrt(var + self.eps)


class PlainGlobalNorm(nn.GroupNorm):
    """gLN without learned affine: ``nn.GroupNorm(1, channels, eps=1e-8, affine=False)``
    (no state), with :func:`group_norm_by_rows` in an ONNX export as
    :class:`GlobalLayerNorm`.

    Example
    -------
    >>> norm, x = PlainGlobalNorm(4), torch.randn(2, 4, 30)
    >>> bool(torch.allclose(norm(x), F.group_norm(x, 1, eps=1e-8))), list(norm.state_dict())
    (True, [])
    """

    def __init__(self, channels: int, eps: float = 1e-8):
        super().__init__(1, channels, eps=eps, affine=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.onnx.is_in_onnx_export():
            return group_norm_by_rows(x, self.num_groups, self.weight, self.bias, self.eps)
        return super().forward(x)


def plain_norm(channels: int, causal: bool) -> nn.Module:
    """A norm without learned affine (a conditional or 1x1-conv affine map follows):
    gLN when the whole signal is visible, per-frame channel norm when causal.

    Example
    -------
    >>> type(plain_norm(8, causal=True)).__name__, type(plain_norm(8, causal=False)).__name__
    ('ChannelNorm', 'PlainGlobalNorm')
    """
    if causal:
        return ChannelNorm()
    return PlainGlobalNorm(channels)
