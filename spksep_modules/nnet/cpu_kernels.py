"""Hand-written CPU kernels for the TCN layers: the speed layer under Conv-TasNet.

On CPU, a training step of a TCN is dominated not by arithmetic but by memory traffic:
every new full-size activation ([batch, H, frames], 49 MB at batch 4 x 3 s) is fresh
memory from the OS, and filling it with page faults costs ~5x the arithmetic of an
element-wise op. PyTorch's generic backward of PReLU (per-element weight gradient then
a reduction), of gLN spelled as tensor ops, and of the depthwise conv allocate several
such tensors each. The next two autograd functions do the same maths with one or two
new tensors per call, update them in place, and store less for the backward pass:
PReLU+gLN stores only its input and recomputes the PReLU (one cheap pass); the dilated
depthwise conv is P shifted in-place multiply-adds (~4x faster on CPU than oneDNN's
depthwise kernel, forward and backward).

The form ``cpu_kernels`` (``nnet.forms.as_form(model, "cpu_kernels")``) turns every
:class:`PReLUGLN` and :class:`DepthwiseConv1d` of a model into its kernel-backed subclass:
same parameters and state-dict keys, same function. The kernels serve CPU tensors outside autocast; anywhere else (CUDA, bf16
autocast) the subclasses run the plain layers' PyTorch ops. The tests check that both
agree, values and gradients.

Below these two functions sit compiled kernels (``nnet.native``: the same maths fused into
one or two passes per activation, built on first use); where they cannot be built, the
PyTorch spelling here runs. Both are tested against the plain layers.

The one opt-in that changes numerics is separate: the form ``bf16_products`` makes the
1x1 convolutions multiply in bf16 in training steps (:class:`PointwiseConvBF16Function`,
fp32 everywhere else), the part of a step that native bf16 (AMX) speeds up.
"""

import torch
import torch.nn.functional as F

from spksep_modules.nnet import native
from spksep_modules.nnet.forms import form_of
from spksep_modules.nnet.layers import DepthwiseConv1d, PReLUGLN


def _per_channel_dot(a, b, scratch):
    """``sum_t a[n, c, t] * b[n, c, t]`` as ``[batch, C]``; ``scratch`` is overwritten."""
    return torch.mul(a, b, out=scratch).sum(-1)


def shifted(dst, src, off):
    """Views ``(dst[..., t], src[..., t + off])`` over the ``t`` where both exist.

    Example
    -------
    >>> a, b = shifted(torch.zeros(5), torch.arange(5.0), 2)
    >>> a.shape, b.tolist()
    (torch.Size([3]), [2.0, 3.0, 4.0])
    """
    T = dst.shape[-1]
    if off >= 0:
        return dst[..., : T - off], src[..., off:]
    return dst[..., -off:], src[..., : T + off]


class PReLUGLNFunction(torch.autograd.Function):
    """``gLN(PReLU(x))`` for ``x: [batch, C, frames]`` and one PReLU slope ``alpha: [1]``,
    storing only ``x`` for backward.

    Forward: ``y = PReLU(x)``, centred in place (two-pass variance: accurate even when
    the mean is large against the spread), then scaled and shifted in place.
    Backward, with ``xhat = (y - mean) * rstd`` and means taken over (C, frames):
    ``dy = rstd * (gamma * g - mean(gamma * g) - xhat * mean(gamma * g * xhat))``,
    which is ``k1[n, c] * g + k2[n] * (y - mean) + k3[n]``: one in-place pass.

    Example
    -------
    >>> layer, x = PReLUGLN(8), torch.randn(2, 8, 50, requires_grad=True)
    >>> y = PReLUGLNFunction.apply(x, layer.act.weight, layer.norm.gamma, layer.norm.beta,
    ...                            layer.norm.eps)
    >>> (grad,), (want,) = torch.autograd.grad(y.sum(), x), torch.autograd.grad(layer(x).sum(), x)
    >>> y.shape, torch.allclose(y, layer(x), atol=1e-5), torch.allclose(grad, want, atol=1e-5)
    (torch.Size([2, 8, 50]), True, True)
    """

    @staticmethod
    def forward(ctx, x, alpha, gamma, beta, eps):
        # The backward takes the forward's path: their saved statistics differ (the
        # compiled kernel keeps the mean in float64).
        ctx.kernels = native.tcn_kernels() if native.usable(x) and alpha.numel() == 1 else None
        if ctx.kernels is not None:
            y, mean, rstd = ctx.kernels.prelu_gln_forward(x, float(alpha), gamma, beta, eps)
            ctx.save_for_backward(x, alpha, gamma, mean, rstd)
            return y
        batch, C, T = x.shape
        y = F.prelu(x, alpha)
        flat = y.view(batch, C * T)
        mean = flat.sum(1) / (C * T)  # [batch]
        flat.sub_(mean[:, None])
        # Sum of squares per channel (vector_norm: fast, and accurate over T values), then
        # over channels in float64: one fp32 norm over all C*T values (3.2 M for 10 s at
        # the paper's sizes) drifts by ~1e-4 relative, the per-channel one by ~1e-8.
        per_channel = torch.linalg.vector_norm(y, dim=2)  # y and flat share memory
        var = (per_channel.double().square().sum(1) / (C * T)).to(y.dtype)
        rstd = torch.rsqrt(var + eps)  # [batch]
        y.mul_(gamma[None, :, None] * rstd[:, None, None]).add_(beta[None, :, None])
        ctx.save_for_backward(x, alpha, gamma, mean, rstd)
        return y

    @staticmethod
    def backward(ctx, grad):
        x, alpha, gamma, mean, rstd = ctx.saved_tensors
        grad = grad.contiguous()
        if ctx.kernels is not None and grad.dtype == torch.float32:
            dx, grad_alpha, grad_gamma, grad_beta = ctx.kernels.prelu_gln_backward(
                x, grad, float(alpha), gamma, mean, rstd)
            return dx, grad_alpha, grad_gamma, grad_beta, None
        mean, rstd = mean.to(x.dtype), rstd.to(x.dtype)
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

        # PReLU backward: d alpha = sum of dy * x over x <= 0; dx = dy where x > 0, alpha * dy
        # elsewhere, which is leaky ReLU's backward at slope alpha: one pass, where the
        # slope spelled as tensor ops (sign, clamp, scale, shift, multiply) took four.
        neg = torch.clamp_max(x, 0, out=scratch)
        grad_alpha = torch.dot(dy.view(-1), neg.view(-1)).view(1)
        dx = torch.ops.aten.leaky_relu_backward.grad_input(dy, x, float(alpha), False, grad_input=scratch)
        return dx, grad_alpha, grad_gamma, grad_beta, None


class DepthwiseConvFunction(torch.autograd.Function):
    """Dilated depthwise conv with 'same' zero padding, as shifted multiply-adds.

    ``y[n, c, t] = bias[c] + sum_k w[c, k] * x[n, c, t + (k - (P - 1) / 2) * dilation]``
    (P odd), taps falling outside ``[0, frames)`` read zeros. With P = 3 that is three
    in-place passes.

    Example
    -------
    >>> x, weight = torch.arange(1.0, 6.0).view(1, 1, 5), torch.tensor([[[1.0, 0.0, 0.0]]])
    >>> DepthwiseConvFunction.apply(x, weight, None, 1)  # tap 0 reads x[t - 1]
    tensor([[[0., 1., 2., 3., 4.]]])
    >>> DepthwiseConvFunction.apply(x, weight, torch.tensor([0.5]), 2)  # x[t - 2] + bias
    tensor([[[0.5000, 0.5000, 1.5000, 2.5000, 3.5000]]])
    """

    @staticmethod
    def forward(ctx, x, weight, bias, dilation):
        ctx.save_for_backward(x, weight)
        ctx.dilation, ctx.has_bias = dilation, bias is not None
        ctx.kernels = native.tcn_kernels() if native.usable(x) else None
        if ctx.kernels is not None:
            return ctx.kernels.depthwise_forward(
                x, weight[:, 0, :], bias if bias is not None else x.new_empty(0), dilation)
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
            dst, src = shifted(y, x, off)
            dst.addcmul_(src, w[:, k, None])
        return y

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad = grad.contiguous()
        if ctx.kernels is not None and grad.dtype == torch.float32:
            dx, grad_w, grad_bias = ctx.kernels.depthwise_backward(
                x, grad, weight[:, 0, :], ctx.dilation, ctx.has_bias)
            return dx, grad_w[:, None, :], grad_bias if ctx.has_bias else None, None
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
            g_part, x_part = shifted(grad, x, off)
            s_buf, _ = shifted(buf, x, off)
            grad_w[:, k] = _per_channel_dot(g_part, x_part, s_buf).sum(0)
        dx = torch.mul(grad, w[:, half, None], out=buf)
        for k in range(P):
            off = (k - half) * ctx.dilation
            if k == half or abs(off) >= T:
                continue
            # x[t + off] fed y[t]: the transposed shift.
            dst, src = shifted(dx, grad, -off)
            dst.addcmul_(src, w[:, k, None])
        grad_bias = grad.sum(-1).sum(0) if ctx.has_bias else None
        return dx, grad_w[:, None, :], grad_bias, None


class PointwiseConvBF16Function(torch.autograd.Function):
    """A 1x1 conv ``y = W x + b`` (``x: [batch, C_in, frames]``, ``W: [C_out, C_in, 1]``)
    whose three matrix products (forward, input and weight gradients) run in bf16.

    Mixed precision for the one place it pays on CPU: on a CPU with AMX or AVX512-BF16 a
    bf16 product runs ~3x faster than fp32's, while element-wise work gains nothing (it is
    bound by memory traffic, and casting it costs more). Inputs, outputs, weights, their
    gradients and the bias stay fp32; only the products' operands and results are rounded
    to bf16 (accumulation is fp32), a relative error of ~3e-3 on each.

    Example
    -------
    >>> x, weight, bias = torch.randn(2, 8, 50), torch.randn(16, 8, 1), torch.randn(16)
    >>> y = PointwiseConvBF16Function.apply(x, weight, bias)
    >>> y.dtype, ((y - F.conv1d(x, weight, bias)).norm() / y.norm()).item() < 1e-2
    (torch.float32, True)
    """

    @staticmethod
    def forward(ctx, x, weight, bias):
        x16 = x.to(torch.bfloat16)
        w16 = weight[:, :, 0].to(torch.bfloat16)
        y = torch.matmul(w16, x16).float()  # one product per example, [batch, C_out, frames]
        if bias is not None:
            y.add_(bias[:, None])
        ctx.save_for_backward(x16, w16)  # half the memory of the fp32 input
        ctx.has_bias = bias is not None
        return y

    @staticmethod
    def backward(ctx, grad):
        x16, w16 = ctx.saved_tensors
        g16 = grad.to(torch.bfloat16)
        grad_x = torch.matmul(w16.t(), g16).float()
        grad_w = torch.bmm(g16, x16.transpose(1, 2)).float().sum(0)[:, :, None]
        grad_bias = grad.sum((0, 2)) if ctx.has_bias else None
        return grad_x, grad_w, grad_bias


def bf16_products_apply(x) -> bool:
    """Whether :class:`BF16PointwiseConv1d` computes in bf16: an fp32 CPU tensor, while
    autograd records (training steps; evaluation and inference stay fp32), outside autocast.

    Example
    -------
    >>> x = torch.zeros(2, 8, 50)
    >>> bf16_products_apply(x)
    True
    >>> with torch.no_grad():
    ...     bf16_products_apply(x)
    False
    """
    return (x.device.type == "cpu" and x.dtype == torch.float32 and torch.is_grad_enabled()
            and not torch.is_autocast_enabled("cpu"))


def _pointwise(conv) -> bool:
    """A 1x1 convolution (stride 1, no padding, no groups): the ones bf16 products serve."""
    return conv.kernel_size == (1,) and conv.stride == (1,) and conv.groups == 1 and (
        conv.padding == (0,))


@form_of(torch.nn.Conv1d, "bf16_products", applies=_pointwise)
class BF16PointwiseConv1d(torch.nn.Conv1d):
    """A 1x1 ``nn.Conv1d`` through :class:`PointwiseConvBF16Function` in training steps on
    CPU (``bf16_products_apply``); the plain conv anywhere else.

    Example
    -------
    >>> conv = torch.nn.Conv1d(8, 16, 1)
    >>> plain = conv(x := torch.randn(2, 8, 50))
    >>> conv.__class__ = BF16PointwiseConv1d
    >>> ((conv(x) - plain).norm() / plain.norm()).item() < 1e-2
    True
    >>> with torch.no_grad():
    ...     torch.equal(conv(x), plain)  # evaluation: fp32, the plain conv
    True
    """

    def forward(self, x):
        if not bf16_products_apply(x):
            return super().forward(x)
        return PointwiseConvBF16Function.apply(x, self.weight, self.bias)


def kernels_apply(x) -> bool:
    """Whether the hand-written kernels serve ``x``: a CPU tensor outside autocast.

    Example
    -------
    >>> kernels_apply(torch.zeros(2, 8, 50))
    True
    >>> with torch.autocast("cpu", dtype=torch.bfloat16):
    ...     kernels_apply(torch.zeros(2, 8, 50))
    False
    """
    return x.device.type == "cpu" and not torch.is_autocast_enabled("cpu")


@form_of(PReLUGLN, "cpu_kernels")
class FastPReLUGLN(PReLUGLN):
    """:class:`PReLUGLN` through :class:`PReLUGLNFunction` on CPU tensors.

    Example
    -------
    >>> plain = PReLUGLN(8); fast = FastPReLUGLN(8); x = torch.randn(2, 8, 50)
    >>> torch.allclose(plain(x), fast(x), atol=1e-5)
    True
    """

    def forward(self, x):
        if not kernels_apply(x):
            return super().forward(x)
        return PReLUGLNFunction.apply(
            x.contiguous(), self.act.weight, self.norm.gamma, self.norm.beta, self.norm.eps
        )


@form_of(DepthwiseConv1d, "cpu_kernels")
class FastDepthwiseConv1d(DepthwiseConv1d):
    """:class:`DepthwiseConv1d` through :class:`DepthwiseConvFunction` on CPU tensors.

    Example
    -------
    >>> fast = FastDepthwiseConv1d(8, 3, dilation=2); x = torch.randn(2, 8, 50)
    >>> torch.allclose(fast(x), DepthwiseConv1d.forward(fast, x), atol=1e-5)
    True
    """

    def forward(self, x):
        if not kernels_apply(x):
            return super().forward(x)
        return DepthwiseConvFunction.apply(x.contiguous(), self.weight, self.bias, self.dilation[0])
