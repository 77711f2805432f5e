"""Conv-TasNet (Luo & Mesgarani, 2019), written for training speed and memory.

The model is the paper's: a learned encoder (1-D conv + ReLU), a temporal convolutional
network (TCN) that estimates one multiplicative mask per speaker on the encoder output,
and a learned decoder (transposed 1-D conv) that turns each masked representation back
into a waveform. Sizes use the paper's names (N, L, B, H, P, X, R); skip channels equal
B, as in Asteroid.

What makes it fast and lean (measured against SpeechBrain's MaskNet with
bench/bench_convtasnet.py; on CPU a TCN step is bound by matrix products and by the
memory traffic of fresh full-size activations, so the work goes into fewer of those):
- channels-first ``[batch, channels, frames]`` throughout, the layout PyTorch's
  convolutions want: no transposes or ``contiguous`` copies between layers;
- PReLU + gLN is one autograd function: statistics in two cheap passes, normalisation
  in place, and it stores only its input (the PReLU is recomputed in backward);
- the dilated depthwise conv is P shifted in-place multiply-adds (~4x faster on CPU
  than oneDNN's depthwise kernel, forward and backward);
- the residual and skip 1x1 convolutions of a block run as one matrix product; the last
  block has no residual output (nothing reads it), so every parameter gets a gradient
  and DistributedDataParallel needs no ``find_unused_parameters``;
- the decoder is a 1x1 conv plus overlap-add (faster than ``conv_transpose1d``: ~2.5x
  forward only, ~1.2x forward + backward, N=512, batch 8 x 6000 frames);
- the mask activation runs in place;
- optional activation checkpointing per block (``checkpoint=True``) stores only the
  block inputs (~10% more time);
- without autograd (inference, validation) every gLN is folded into the convolution
  that reads it and the activations are updated in place, in fp32 or under bf16
  autocast (see "Inference path" below).
The hand-written kernels serve CPU tensors; on CUDA (and, for training, under autocast)
the same layers run PyTorch's own ops, which compute the same function (the tests check
that all paths agree).

Layouts follow SpeechBrain: ``forward`` takes ``[batch, time]`` and returns
``[batch, time, num_spks]``.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint as activation_checkpoint

from spksep_modules import SpkSepError

MASK_ACTIVATIONS = ("relu", "sigmoid", "softmax")


class GlobalLayerNorm(nn.Module):
    """gLN: normalise each example over channels and frames together.

    ``y = gamma * (x - mean) / sqrt(var + eps) + beta`` with ``mean``/``var`` taken over
    all channels and frames of one example, ``gamma``/``beta`` per channel. This is group
    normalisation with a single group, so it runs on PyTorch's fused ``group_norm``
    (one kernel each way; the same maths spelled out in tensor ops, with ``var_mean``,
    is ~6x slower forward + backward on CPU).

    Arguments
    ---------
    channels : int
        Number of channels C.
    eps : float
        Added to the variance, as in the paper's implementation.

    Shapes: ``[batch, C, frames] -> [batch, C, frames]``.
    """

    def __init__(self, channels, eps=1e-8):
        super().__init__()
        self.eps = eps
        self.gamma = nn.Parameter(torch.ones(channels))
        self.beta = nn.Parameter(torch.zeros(channels))

    def forward(self, x):
        return F.group_norm(x, 1, self.gamma, self.beta, self.eps)


# --------------------------------------------------------------------------------------
# Hand-written CPU kernels.
#
# On CPU, a training step of a TCN is dominated not by arithmetic but by memory traffic:
# every new full-size activation ([batch, H, frames], 49 MB at batch 4 x 3 s) is fresh
# memory from the OS, and filling it with page faults costs ~5x the arithmetic of an
# element-wise op. PyTorch's generic backward of PReLU (per-element weight gradient then
# a reduction), of gLN spelled as tensor ops, and of the depthwise conv allocate several
# such tensors each. The two autograd functions below do the same maths with one or two
# new tensors per call, update them in place, and store less for the backward pass:
# PReLU+gLN stores only its input and recomputes the PReLU (one cheap pass).
# The modules use them for CPU tensors only; elsewhere (CUDA, autocast) they run the
# plain PyTorch ops, which compute the same function (the tests check both agree).
# --------------------------------------------------------------------------------------


def _per_channel_dot(a, b, scratch):
    """``sum_t a[n, c, t] * b[n, c, t]`` as ``[batch, C]``; ``scratch`` is overwritten."""
    return torch.mul(a, b, out=scratch).sum(-1)


class _PReLUGLNFunction(torch.autograd.Function):
    """``gLN(PReLU(x))`` for ``x: [batch, C, frames]``, storing only ``x`` for backward.

    Forward: ``y = PReLU(x)``, centred in place (two-pass variance: accurate even when
    the mean is large against the spread), then scaled and shifted in place.
    Backward, with ``xhat = (y - mean) * rstd`` and means taken over (C, frames):
    ``dy = rstd * (gamma * g - mean(gamma * g) - xhat * mean(gamma * g * xhat))``,
    which is ``k1[n, c] * g + k2[n] * (y - mean) + k3[n]``: one in-place pass.
    """

    @staticmethod
    def forward(ctx, x, alpha, gamma, beta, eps):
        batch, C, T = x.shape
        y = F.prelu(x, alpha)
        flat = y.view(batch, C * T)
        mean = flat.sum(1) / (C * T)  # [batch]
        flat.sub_(mean[:, None])
        var = torch.linalg.vector_norm(flat, dim=1).square_() / (C * T)
        rstd = torch.rsqrt(var + eps)  # [batch]
        y.mul_(gamma[None, :, None] * rstd[:, None, None]).add_(beta[None, :, None])
        ctx.save_for_backward(x, alpha, gamma, mean, rstd)
        return y

    @staticmethod
    def backward(ctx, grad):
        x, alpha, gamma, mean, rstd = ctx.saved_tensors
        grad = grad.contiguous()
        batch, C, T = x.shape
        n = C * T
        yc = F.prelu(x, alpha).sub_(mean[:, None, None])  # y - mean
        scratch = torch.empty_like(x)

        # gLN backward.
        s_g = grad.sum(-1)  # [batch, C]: sum_t g
        s_gx = _per_channel_dot(grad, yc, scratch) * rstd[:, None]  # sum_t g * xhat
        grad_gamma = s_gx.sum(0)
        grad_beta = s_g.sum(0)
        mean_gg = (s_g * gamma).sum(1) / n  # [batch]: mean(gamma * g)
        mean_ggx = (s_gx * gamma).sum(1) / n  # [batch]: mean(gamma * g * xhat)
        k1 = gamma[None, :, None] * rstd[:, None, None]
        k2 = (-(rstd**2) * mean_ggx)[:, None, None]
        k3 = (-rstd * mean_gg)[:, None, None]
        dy = yc.mul_(k2).add_(k3).addcmul_(grad, k1)  # reuses yc's memory

        # PReLU backward: dx = dy where x > 0, alpha * dy elsewhere;
        # d alpha = sum of dy * x over x <= 0.
        neg = torch.clamp_max(x, 0, out=scratch)
        grad_alpha = torch.dot(dy.view(-1), neg.view(-1)).view(1)
        slope = torch.sign(x, out=scratch).clamp_min_(0)  # 1 where x > 0, else 0
        slope.mul_(1 - alpha).add_(alpha)
        return dy.mul_(slope), grad_alpha, grad_gamma, grad_beta, None


class _DepthwiseConvFunction(torch.autograd.Function):
    """Dilated depthwise conv with 'same' zero padding, as shifted multiply-adds.

    ``y[n, c, t] = bias[c] + sum_k w[c, k] * x[n, c, t + (k - (P - 1) / 2) * dilation]``
    (P odd), taps falling outside ``[0, frames)`` read zeros. With P = 3 that is three
    in-place passes, against oneDNN's depthwise kernel that is ~4x slower forward and
    backward at these sizes.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, dilation):
        T = x.shape[-1]
        w = weight[:, 0, :]  # [C, P]
        half = (w.shape[1] - 1) // 2
        y = torch.mul(x, w[:, half, None])
        if bias is not None:
            y.add_(bias[:, None])
        for k in range(w.shape[1]):
            off = (k - half) * dilation
            if k == half or abs(off) >= T:
                continue
            dst, src = _shifted(y, x, off)
            dst.addcmul_(src, w[:, k, None])
        ctx.save_for_backward(x, weight)
        ctx.dilation, ctx.has_bias = dilation, bias is not None
        return y

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad = grad.contiguous()
        T = x.shape[-1]
        w = weight[:, 0, :]
        P = w.shape[1]
        half = (P - 1) // 2
        buf = torch.empty_like(x)  # first scratch for the weight gradient, then dx
        grad_w = torch.zeros_like(w)
        for k in range(P):
            off = (k - half) * ctx.dilation
            if abs(off) >= T:
                continue
            # y[t] reads x[t + off]: the tap's gradient pairs grad[t] with x[t + off].
            g_part, x_part = _shifted(grad, x, off)
            s_buf, _ = _shifted(buf, x, off)
            grad_w[:, k] = _per_channel_dot(g_part, x_part, s_buf).sum(0)
        dx = torch.mul(grad, w[:, half, None], out=buf)
        for k in range(P):
            off = (k - half) * ctx.dilation
            if k == half or abs(off) >= T:
                continue
            # x[t + off] fed y[t]: the transposed shift.
            dst, src = _shifted(dx, grad, -off)
            dst.addcmul_(src, w[:, k, None])
        grad_bias = grad.sum(-1).sum(0) if ctx.has_bias else None
        return dx, grad_w[:, None, :], grad_bias, None


def _shifted(dst, src, off):
    """Views ``(dst[..., t], src[..., t + off])`` over the ``t`` where both exist."""
    T = dst.shape[-1]
    if off >= 0:
        return dst[..., : T - off], src[..., off:]
    return dst[..., -off:], src[..., : T + off]


def padded_length(length, kernel, stride):
    """Smallest length >= ``length`` (and >= ``kernel``) that frames of ``kernel`` samples
    every ``stride`` samples tile exactly."""
    frames = max(0, -(-(length - kernel) // stride)) + 1
    return (frames - 1) * stride + kernel


def encode_padded(encoder, mix):
    """``ReLU(encoder(mix))`` for a filterbank ``encoder`` (``nn.Conv1d`` 1 -> N), with
    ``mix [batch, time]`` zero-padded at the end so that its frames tile it exactly and a
    decoder can give back every sample: ``-> [batch, N, frames]``."""
    length = mix.shape[-1]
    kernel, stride = encoder.kernel_size[0], encoder.stride[0]
    mix = F.pad(mix, (0, padded_length(length, kernel, stride) - length))
    return F.relu(encoder(mix.unsqueeze(1)))


def overlap_add_decode(src_w, weight, stride):
    """``conv_transpose1d(src_w, weight, stride=stride)`` for one output channel.

    Each frame's ``N`` coefficients become ``L`` samples through a 1x1 conv (a plain
    matrix product), and frame ``k``'s samples are added at ``k * stride``. The frames
    are cut into ``Q = ceil(L / stride)`` chunks of ``stride`` samples; chunk ``q`` of
    frame ``k`` lands on output chunk ``k + q``.

    Shapes: ``src_w [batch, N, frames]``, ``weight [N, 1, L]`` -> ``[batch, samples]``
    with ``samples = (frames - 1) * stride + L``.
    """
    batch, _, K = src_w.shape
    L = weight.shape[-1]
    Q = -(-L // stride)
    basis = weight.permute(2, 0, 1)  # [L, N, 1]: one output channel per sample of a frame
    if Q * stride != L:
        basis = F.pad(basis, (0, 0, 0, 0, 0, Q * stride - L))
    frames = F.conv1d(src_w, basis)  # [batch, Q * stride, K]
    out = frames.new_zeros(batch, stride, K + Q - 1)
    for q in range(Q):
        out[..., q : q + K] += frames[:, q * stride : (q + 1) * stride]
    return out.transpose(1, 2).reshape(batch, -1)[:, : (K - 1) * stride + L]


# --------------------------------------------------------------------------------------
# Inference path (no autograd, CPU; fp32, or bf16 under autocast).
#
# gLN's statistics are per example, so for one example gLN is a per-channel affine map
# ``scale * x + shift``, and a convolution of an affine map of ``x`` is a convolution of
# ``x`` itself with rescaled weights and another bias. Folding each gLN into the
# convolution that reads it leaves one statistics pass where training needs centring,
# scaling and shifting passes over every ``[H, frames]`` activation; the PReLUs and
# residual sums run in place. With nothing stored for a backward pass that is ~1.3x faster
# (bench/bench_rtf.py). The residual and skip sums stay in fp32 under bf16 autocast.
# --------------------------------------------------------------------------------------


def _wide(x):
    """``x`` in at least fp32 (statistics are summed there whatever the activations' type)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def widen_under_autocast(x):
    """A residual or skip sum's type: fp32 when autocast narrows the activations (40 sums
    in bf16's 8-bit mantissa would lose what later blocks add); else the model's own."""
    return _wide(x) if torch.is_autocast_enabled(x.device.type) else x


def _prelu_(x, weight):
    """PReLU in place (one slope: ``leaky_relu``, the same function)."""
    if weight.numel() == 1:
        return F.leaky_relu(x, float(weight), inplace=True)
    return x.copy_(F.prelu(x, weight))


def _gln_as_affine(x, norm):
    """gLN of one example ``x [1, C, T]`` as ``(scale [C], shift [C])``, at least fp32."""
    # E[x^2] - E[x]^2 from two fused reductions (torch.var_mean is ~20x slower here);
    # after a PReLU or ReLU the mean is of the order of the spread, so the difference
    # loses no accuracy that matters. bf16 input is widened first: its sums are bf16.
    x = _wide(x)
    n = x.numel()
    mean = x.sum() / n
    var = (torch.linalg.vector_norm(x).square() / n - mean.square()).clamp_min(0)
    scale = norm.gamma * torch.rsqrt(var + norm.eps)
    return scale, norm.beta - scale * mean  # in the wider of fp32 and the model's type


def _pointwise_folded(x, conv, scale, shift):
    """``conv(scale * x + shift)`` for a kernel-1 ``conv``, without forming the affine map."""
    weight = conv.weight[:, :, 0]  # [out, in]
    bias = weight @ shift.to(weight.dtype)
    if conv.bias is not None:
        bias = bias + conv.bias
    folded = (weight * scale.to(weight.dtype)).unsqueeze(-1)
    return F.conv1d(x, folded, bias.to(conv.weight.dtype))


def _depthwise_folded(x, dconv, scale, shift):
    """``dconv(scale * x + shift)`` for a :class:`DepthwiseConv1d`, zero padding included.

    The padding zeros are those of the *normalised* signal: taps that read outside
    ``[0, frames)`` contribute nothing, so their share of the folded constant is taken
    back on the first or last frames.
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
            dst, src = _shifted(y, x, off)
            dst.addcmul_(src, taps[:, k, None])
        outside = y[..., max(T - off, 0):] if off > 0 else y[..., : min(-off, T)]
        outside.sub_((shift * w[:, k]).to(x.dtype)[:, None])
    return y


def as_batch(mix, model_name):
    """A separator's input as ``[batch, time]``: ``[time]`` gets a batch dimension, any
    other shape is an error naming ``model_name``."""
    if mix.dim() == 1:
        mix = mix.unsqueeze(0)
    if mix.dim() != 2:
        raise SpkSepError(
            f"{model_name} input: expected [batch, time] or [time], got shape "
            f"{tuple(mix.shape)}"
        )
    return mix


def _use_cpu_kernels(x, enabled):
    return enabled and x.device.type == "cpu" and not torch.is_autocast_enabled("cpu")


class PReLUGLN(nn.Module):
    """PReLU (one slope) followed by gLN, the activation-norm pair of every TCN block.

    Arguments
    ---------
    channels : int
        Number of channels C.
    eps : float
        gLN's variance floor.
    cpu_kernels : bool
        Use the hand-written fused kernel for CPU tensors.

    Shapes: ``[batch, C, frames] -> [batch, C, frames]``.
    """

    def __init__(self, channels, eps=1e-8, cpu_kernels=True):
        super().__init__()
        self.act = nn.PReLU()
        self.norm = GlobalLayerNorm(channels, eps)
        self.cpu_kernels = cpu_kernels

    def forward(self, x):
        if _use_cpu_kernels(x, self.cpu_kernels):
            return _PReLUGLNFunction.apply(
                x.contiguous(), self.act.weight, self.norm.gamma, self.norm.beta,
                self.norm.eps,
            )
        return self.norm(self.act(x))


class DepthwiseConv1d(nn.Conv1d):
    """Dilated depthwise conv, 'same' zero padding, odd kernel (an ``nn.Conv1d``).

    Arguments
    ---------
    channels : int
        Number of channels C (one filter each).
    kernel_size : int
        Taps per filter P (odd).
    dilation : int
        Spacing between taps, in frames.
    bias : bool
        One bias per channel.
    cpu_kernels : bool
        Use the hand-written shifted multiply-add kernel for CPU tensors.

    Shapes: ``[batch, C, frames] -> [batch, C, frames]``.
    """

    def __init__(self, channels, kernel_size, dilation, bias=True, cpu_kernels=True):
        if kernel_size % 2 == 0:
            raise SpkSepError(
                f"P: depthwise kernel size must be odd for 'same' padding, got {kernel_size}"
            )
        super().__init__(
            channels, channels, kernel_size, dilation=dilation,
            padding=dilation * (kernel_size - 1) // 2, groups=channels, bias=bias,
        )
        self.cpu_kernels = cpu_kernels

    def forward(self, x):
        if _use_cpu_kernels(x, self.cpu_kernels):
            return _DepthwiseConvFunction.apply(
                x.contiguous(), self.weight, self.bias, self.dilation[0]
            )
        return super().forward(x)


class TCNBlock(nn.Module):
    """One TCN block: 1x1 conv, PReLU, gLN, dilated depthwise conv, PReLU, gLN, 1x1 outs.

    Arguments
    ---------
    B : int
        Bottleneck (input, residual and skip) channels.
    H : int
        Hidden channels.
    P : int
        Depthwise kernel size (odd).
    dilation : int
        Dilation of the depthwise conv ('same' zero padding keeps the frame count).
    residual : bool
        Whether the block has a residual output (the last block of the stack does not).
    skip : bool
        Whether the block has a skip output.
    bias : bool
        Bias on the block's convolutions.
    cpu_kernels : bool
        Hand-written kernels for CPU tensors (see PReLUGLN, DepthwiseConv1d).

    Shapes: ``[batch, B, frames] -> (residual [batch, B, frames] or None,
    skip [batch, B, frames] or None)``.
    """

    def __init__(
        self, B, H, P, dilation, residual=True, skip=True, bias=True, cpu_kernels=True
    ):
        super().__init__()
        if not (residual or skip):
            raise ValueError("a TCN block needs a residual or a skip output")
        self.in_conv = nn.Conv1d(B, H, 1, bias=bias)
        self.act_norm1 = PReLUGLN(H, cpu_kernels=cpu_kernels)
        self.dconv = DepthwiseConv1d(H, P, dilation, bias=bias, cpu_kernels=cpu_kernels)
        self.act_norm2 = PReLUGLN(H, cpu_kernels=cpu_kernels)
        # Residual and skip projections share their input: one conv with stacked
        # outputs is one matrix product instead of two.
        self.out_splits = [B] * (int(residual) + int(skip))
        self.out_conv = nn.Conv1d(H, sum(self.out_splits), 1, bias=bias)
        self.has_residual = residual
        self.has_skip = skip

    def forward(self, x):
        y = self.act_norm1(self.in_conv(x))
        y = self.act_norm2(self.dconv(y))
        outs = list(torch.split(self.out_conv(y), self.out_splits, dim=1))
        res = outs.pop(0) if self.has_residual else None
        skp = outs.pop(0) if self.has_skip else None
        return res, skp

    def infer(self, x):
        """``forward`` for one example ``[1, B, frames]`` without autograd, gLNs folded."""
        y = _prelu_(self.in_conv(x), self.act_norm1.act.weight)
        scale, shift = _gln_as_affine(y, self.act_norm1.norm)
        y = _prelu_(_depthwise_folded(y, self.dconv, scale, shift), self.act_norm2.act.weight)
        scale, shift = _gln_as_affine(y, self.act_norm2.norm)
        outs = list(torch.split(_pointwise_folded(y, self.out_conv, scale, shift),
                                self.out_splits, dim=1))
        res = outs.pop(0) if self.has_residual else None
        skp = outs.pop(0) if self.has_skip else None
        return res, skp


class TCN(nn.Module):
    """The mask estimator: gLN, bottleneck, X*R blocks, PReLU, 1x1 conv, mask activation.

    Arguments
    ---------
    N, B, H, P, X, R : int
        Conv-TasNet sizes (encoder filters, bottleneck, hidden, kernel, blocks per
        repeat, repeats). Block ``x`` of each repeat has dilation ``2**x``.
    num_spks : int
        Number of masks C.
    mask_act : str
        "relu" (paper), "sigmoid", or "softmax" (across speakers).
    skip : bool
        Sum the blocks' skip outputs to feed the mask layer (paper, Asteroid); when False,
        the last block's residual stream feeds it (SpeechBrain's MaskNet).
    bias : bool
        Bias on the convolutions inside the TCN (the mask conv never has one).
    checkpoint : bool
        Recompute each block's activations in the backward pass instead of storing them.
    cpu_kernels : bool
        Hand-written PReLU+gLN and depthwise-conv kernels for CPU tensors.

    Shapes: ``[batch, N, frames] -> [batch, C, N, frames]``.
    """

    def __init__(
        self,
        N,
        B,
        H,
        P,
        X,
        R,
        num_spks,
        mask_act="relu",
        skip=True,
        bias=True,
        checkpoint=False,
        cpu_kernels=True,
    ):
        super().__init__()
        if mask_act not in MASK_ACTIVATIONS:
            raise SpkSepError(
                f"mask_act: unknown mask activation {mask_act!r}, "
                f"expected one of {', '.join(MASK_ACTIVATIONS)}"
            )
        self.N, self.num_spks, self.mask_act = N, num_spks, mask_act
        self.skip, self.checkpoint = skip, checkpoint
        self.in_norm = GlobalLayerNorm(N)
        self.bottleneck = nn.Conv1d(N, B, 1, bias=bias)
        n_blocks = X * R
        self.blocks = nn.ModuleList(
            TCNBlock(
                B,
                H,
                P,
                dilation=2**x,
                # With skips, the last residual output would never be read.
                residual=not (skip and r * X + x == n_blocks - 1),
                skip=skip,
                bias=bias,
                cpu_kernels=cpu_kernels,
            )
            for r in range(R)
            for x in range(X)
        )
        self.out_act = nn.PReLU()
        self.mask_conv = nn.Conv1d(B, num_spks * N, 1, bias=False)

    def _run_block(self, block, x):
        if self.checkpoint and torch.is_grad_enabled():
            return activation_checkpoint(block, x, use_reentrant=False)
        return block(x)

    def forward(self, enc):
        x = self.bottleneck(self.in_norm(enc))
        skip_sum = None
        for block in self.blocks:
            res, skp = self._run_block(block, x)
            if skp is not None:
                skip_sum = skp if skip_sum is None else skip_sum + skp
            if res is not None:
                x = x + res
        feats = skip_sum if self.skip else x
        return self._mask(self.mask_conv(self.out_act(feats)), enc)

    def _mask(self, score, enc):
        """Mask activation of ``score [batch, C * N, frames]`` -> ``[batch, C, N, frames]``."""
        score = score.view(enc.shape[0], self.num_spks, self.N, enc.shape[-1])
        # In place: the conv's backward does not need its output, and these activations'
        # backward reads only their result. Saves one [batch, C, N, frames] tensor.
        if self.mask_act == "relu":
            return score.relu_()
        if self.mask_act == "sigmoid":
            return score.sigmoid_()
        return torch.softmax(score, dim=1)

    def infer(self, enc):
        """``forward`` for one example ``[1, N, frames]`` without autograd (see the
        inference-path note above); under autocast the residual and skip sums are fp32."""
        scale, shift = _gln_as_affine(enc, self.in_norm)
        x = widen_under_autocast(_pointwise_folded(enc, self.bottleneck, scale, shift))
        skip_sum = None
        for block in self.blocks:
            res, skp = block.infer(x)
            if skp is not None:
                skip_sum = widen_under_autocast(skp) if skip_sum is None else skip_sum.add_(skp)
            if res is not None:
                x.add_(res)
        feats = _prelu_(skip_sum if self.skip else x, self.out_act.weight)
        return self._mask(self.mask_conv(feats), enc)

    def receptive_field(self):
        """Receptive field of the block stack, in encoder frames."""
        return 1 + sum(
            (b.dconv.kernel_size[0] - 1) * b.dconv.dilation[0] for b in self.blocks
        )


class ConvTasNet(nn.Module):
    """Conv-TasNet: encoder, TCN masks, decoder.

    Arguments
    ---------
    N : int
        Encoder filters (512).
    L : int
        Filter length in samples (16); the hop is ``L // 2``.
    B : int
        Bottleneck and skip channels (128).
    H : int
        Hidden channels in the blocks (512).
    P : int
        Depthwise kernel size (3).
    X : int
        Blocks per repeat, dilations 1, 2, ..., 2**(X-1) (8).
    R : int
        Repeats (3).
    num_spks : int
        Number of output sources.
    mask_act : str
        "relu" (paper), "sigmoid" or "softmax".
    skip : bool
        Skip-connection path of the paper (True); False gives SpeechBrain's MaskNet shape.
    bias : bool
        Bias on the TCN's convolutions (Asteroid: True; SpeechBrain: False).
    checkpoint : bool
        Activation checkpointing per TCN block (saves memory, costs time).
    cpu_kernels : bool
        Hand-written PReLU+gLN and depthwise-conv kernels for CPU tensors (faster, leaner;
        same function as the plain PyTorch ops used otherwise).

    Example
    -------
    >>> model = ConvTasNet(N=16, L=8, B=8, H=16, P=3, X=2, R=1)
    >>> model(torch.randn(2, 1001)).shape
    torch.Size([2, 1001, 2])
    """

    def __init__(
        self,
        N=512,
        L=16,
        B=128,
        H=512,
        P=3,
        X=8,
        R=3,
        num_spks=2,
        mask_act="relu",
        skip=True,
        bias=True,
        checkpoint=False,
        cpu_kernels=True,
    ):
        super().__init__()
        if L < 2:
            raise SpkSepError(f"L: filter length must be at least 2, got {L}")
        self.N, self.L, self.stride, self.num_spks = N, L, L // 2, num_spks
        self.cpu_kernels = cpu_kernels
        self.encoder = nn.Conv1d(1, N, L, stride=self.stride, bias=False)
        self.separator = TCN(
            N, B, H, P, X, R, num_spks, mask_act, skip, bias, checkpoint, cpu_kernels
        )
        self.decoder = nn.ConvTranspose1d(N, 1, L, stride=self.stride, bias=False)

    def padded_length(self, length):
        """Smallest length >= ``length`` (and >= L) that the encoder tiles exactly."""
        return padded_length(length, self.L, self.stride)

    def encode(self, mix):
        """Encoder: ``[batch, time] -> [batch, N, frames]`` (input right-padded with zeros)."""
        return encode_padded(self.encoder, mix)

    def masks(self, enc):
        """Masks: ``[batch, N, frames] -> [batch, num_spks, N, frames]``."""
        return self.separator(enc)

    def decode(self, src_w, length):
        """Decoder: ``[batch, C, N, frames] -> [batch, length, C]``.

        Every source goes through the same transposed conv (``self.decoder``'s weights),
        computed as a 1x1 conv to ``L`` samples per frame followed by overlap-add: the
        same result, faster on CPU than ``conv_transpose1d`` (~2.5x forward, ~1.2x forward
        + backward).
        The padding that ``encode`` added is cut so the output has ``length`` samples.
        """
        batch, C, N, frames = src_w.shape
        wav = overlap_add_decode(src_w.reshape(batch * C, N, frames), self.decoder.weight,
                                 self.stride)  # [batch*C, T_pad]
        return wav.view(batch, C, -1)[..., :length].transpose(1, 2)

    def forward(self, mix):
        """Separate: ``[batch, time]`` (or ``[time]``) -> ``[batch, time, num_spks]``."""
        mix = as_batch(mix, "ConvTasNet")
        if self.cpu_kernels and mix.device.type == "cpu" and not torch.is_grad_enabled():
            # Inference path, one example at a time (gLN statistics are per example).
            return torch.cat([self._infer(m[None]) for m in mix])
        enc = self.encode(mix)
        src_w = self.masks(enc) * enc.unsqueeze(1)
        return self.decode(src_w, mix.shape[-1])

    def _infer(self, mix):
        enc = self.encode(mix)
        src_w = self.separator.infer(enc).mul_(enc.unsqueeze(1))
        return self.decode(src_w, mix.shape[-1])
