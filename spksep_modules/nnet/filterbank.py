"""Learned filterbanks: framing a waveform into an encoder, overlap-adding it back.

Conv-TasNet and the conditioned separator share these: an encoder ``nn.Conv1d(1, N, L,
stride)`` followed by a ReLU, and a decoder with the weights of ``nn.ConvTranspose1d(N, 1,
L, stride)``, computed as a matrix product plus overlap-add.
"""

import torch
import torch.nn.functional as F


def padded_length(length, kernel, stride):
    """Smallest length >= ``length`` (and >= ``kernel``) that frames of ``kernel`` samples
    every ``stride`` samples tile exactly.

    Example
    -------
    >>> padded_length(1001, kernel=16, stride=8), padded_length(3, kernel=16, stride=8)
    (1008, 16)
    """
    frames = max(0, -(-(length - kernel) // stride)) + 1
    return (frames - 1) * stride + kernel


def encode_padded(encoder, mix):
    """``ReLU(encoder(mix))`` for a filterbank ``encoder`` (``nn.Conv1d`` 1 -> N), with
    ``mix [batch, time]`` zero-padded at the end so that its frames tile it exactly and a
    decoder can give back every sample: ``-> [batch, N, frames]``.

    Example
    -------
    >>> encoder = torch.nn.Conv1d(1, 32, 16, stride=8, bias=False)
    >>> encode_padded(encoder, torch.randn(2, 1001)).shape   # 1008 samples: 125 frames
    torch.Size([2, 32, 125])
    """
    length = mix.shape[-1]
    kernel, stride = encoder.kernel_size[0], encoder.stride[0]
    if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        # The same padding in arithmetic an exported graph keeps symbolic (no max()):
        # inputs of at least one frame, which is all an export is traced and used on.
        pad = (stride - (length - kernel) % stride) % stride
    else:
        pad = padded_length(length, kernel, stride) - length
    mix = F.pad(mix, (0, pad))
    return F.relu(encoder(mix.unsqueeze(1)))


def overlap_add_decode(src_w, weight, stride):
    """``conv_transpose1d(src_w, weight, stride=stride)`` for one output channel.

    Each frame's ``N`` coefficients become ``L`` samples through a 1x1 conv (a plain
    matrix product), and frame ``k``'s samples are added at ``k * stride``. The frames
    are cut into ``Q = ceil(L / stride)`` chunks of ``stride`` samples; chunk ``q`` of
    frame ``k`` lands on output chunk ``k + q``. Faster on CPU than ``conv_transpose1d``
    (~2.5x forward, ~1.2x forward + backward, N=512, batch 8 x 6000 frames).

    Shapes: ``src_w [batch, N, frames]``, ``weight [N, 1, L]`` -> ``[batch, samples]``
    with ``samples = (frames - 1) * stride + L``.

    Example
    -------
    >>> w, x = torch.randn(32, 1, 16), torch.randn(2, 32, 125)
    >>> y = overlap_add_decode(x, w, stride=8)
    >>> y.shape, torch.allclose(y, F.conv_transpose1d(x, w, stride=8)[:, 0], atol=1e-5)
    (torch.Size([2, 1008]), True)
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
