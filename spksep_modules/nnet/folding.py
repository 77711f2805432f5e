"""Folding gLN into the convolution that reads it: the maths of the inference path.

gLN's statistics are per example, so for one example gLN is a per-channel affine map
``scale * x + shift``, and a convolution of an affine map of ``x`` is a convolution of
``x`` itself with rescaled weights and another bias. Folding each gLN into the
convolution that reads it leaves one statistics pass where training needs centring,
scaling and shifting passes over every activation. Without autograd the PReLUs and
residual sums can then run in place (``spksep_modules.models.fused`` assembles these
pieces into the inference forms of the separators).
"""

import torch
import torch.nn.functional as F

from spksep_modules.nnet.cpu_kernels import shifted
from spksep_modules.nnet.precision import widen


def prelu_(x, weight):
    """PReLU in place (one slope: ``leaky_relu``, the same function).

    Example
    -------
    >>> prelu_(torch.tensor([-2.0, 3.0]), torch.tensor([0.25]))
    tensor([-0.5000,  3.0000])
    """
    if weight.numel() == 1:
        return F.leaky_relu(x, float(weight), inplace=True)
    return x.copy_(F.prelu(x, weight))


def norm_statistics(x):
    """Mean and variance of each example of ``x [B, ...]`` over everything else, in at
    least fp32: ``-> (mean [B], var [B])``.

    E[x^2] - E[x]^2 from two fused reductions (``torch.var_mean`` is ~20x slower here);
    after a PReLU or ReLU the mean is of the order of the spread, so the difference loses
    no accuracy that matters. bf16 input is widened first: its own sums are bf16.

    Example
    -------
    >>> mean, var = norm_statistics(torch.tensor([[1.0, 3.0], [0.0, 0.0]]))
    >>> mean.tolist(), var.tolist()
    ([2.0, 0.0], [1.0, 0.0])
    """
    x = widen(x).flatten(1)
    n = x.shape[1]
    mean = x.sum(1) / n
    var = (torch.linalg.vector_norm(x, dim=1).square() / n - mean.square()).clamp_min(0)
    return mean, var


def gln_as_affine(x, norm):
    """gLN ``norm`` of one example ``x [1, C, T]`` as ``(scale [C], shift [C])``.

    Example
    -------
    >>> from spksep_modules.nnet.norms import GlobalLayerNorm
    >>> norm, x = GlobalLayerNorm(4), torch.randn(1, 4, 30)
    >>> scale, shift = gln_as_affine(x, norm)
    >>> torch.allclose(scale[:, None] * x + shift[:, None], norm(x), atol=1e-5)
    True
    """
    mean, var = norm_statistics(x)
    scale = norm.gamma * torch.rsqrt(var + norm.eps)
    return scale, norm.beta - scale * mean  # in the wider of fp32 and the model's type


def pointwise_folded(x, conv, scale, shift):
    """``conv(scale * x + shift)`` for a kernel-1 ``conv``, without forming the affine map.

    Example
    -------
    >>> conv, x = torch.nn.Conv1d(4, 6, 1), torch.randn(1, 4, 30)
    >>> scale, shift = torch.rand(4), torch.randn(4)
    >>> ref = conv(scale[:, None] * x + shift[:, None])
    >>> torch.allclose(pointwise_folded(x, conv, scale, shift), ref, atol=1e-5)
    True
    """
    weight = conv.weight[:, :, 0]  # [out, in]
    bias = weight @ shift.to(weight.dtype)
    if conv.bias is not None:
        bias = bias + conv.bias
    folded = (weight * scale.to(weight.dtype)).unsqueeze(-1)
    return F.conv1d(x, folded, bias.to(conv.weight.dtype))


def depthwise_folded(x, dconv, scale, shift):
    """``dconv(scale * x + shift)`` for a 'same'-padded depthwise ``dconv``, zero padding
    included.

    The padding zeros are those of the *normalised* signal: taps that read outside
    ``[0, frames)`` contribute nothing, so their share of the folded constant is taken
    back on the first or last frames.

    Example
    -------
    >>> from spksep_modules.nnet.layers import DepthwiseConv1d
    >>> dconv, x = DepthwiseConv1d(4, 3, dilation=2), torch.randn(1, 4, 30)
    >>> scale, shift = torch.rand(4), torch.randn(4)
    >>> ref = dconv(scale[:, None] * x + shift[:, None])
    >>> torch.allclose(depthwise_folded(x, dconv, scale, shift), ref, atol=1e-5)
    True
    """
    T = x.shape[-1]
    w = dconv.weight[:, 0, :]  # [C, P]
    half = (w.shape[1] - 1) // 2
    taps = (w * scale[:, None]).to(x.dtype)
    const = shift * w.sum(1)
    if dconv.bias is not None:
        const = const + dconv.bias
    y = torch.addcmul(const.to(x.dtype)[:, None], x, taps[:, half, None])
    for k in range(w.shape[1]):
        off = (k - half) * dconv.dilation[0]
        if k == half:
            continue
        if abs(off) < T:
            dst, src = shifted(y, x, off)
            dst.addcmul_(src, taps[:, k, None])
        outside = y[..., max(T - off, 0):] if off > 0 else y[..., : min(-off, T)]
        outside.sub_((shift * w[:, k]).to(x.dtype)[:, None])
    return y
