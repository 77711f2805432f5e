"""Small layers of the TCN separators, in plain PyTorch.

Their hand-written CPU kernels (same parameters, same function) are in
``spksep_modules.nnet.cpu_kernels``; a model opts in with ``use_cpu_kernels(model)``.
"""

import torch  # noqa: F401  (docstring examples)
from torch import nn

from spksep_modules import SpkSepError
import torch.nn.functional as F

from spksep_modules.nnet.norms import FrameLayerNorm, GlobalLayerNorm


class PReLUGLN(nn.Module):
    """PReLU (one slope) followed by gLN, the activation-norm pair of every TCN block.

    Arguments
    ---------
    channels : int
        Number of channels C.
    eps : float
        gLN's variance floor.

    Example
    -------
    >>> PReLUGLN(8)(torch.randn(2, 8, 50)).shape   # [batch, C, frames]
    torch.Size([2, 8, 50])
    """

    def __init__(self, channels, eps=1e-8):
        super().__init__()
        self.act = nn.PReLU()
        self.norm = GlobalLayerNorm(channels, eps)

    def forward(self, x):
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

    Example
    -------
    >>> DepthwiseConv1d(8, kernel_size=3, dilation=4)(torch.randn(2, 8, 50)).shape
    torch.Size([2, 8, 50])
    """

    def __init__(self, channels, kernel_size, dilation, bias=True):
        if kernel_size % 2 == 0:
            raise SpkSepError(
                f"P: depthwise kernel size must be odd for 'same' padding, got {kernel_size}"
            )
        super().__init__(
            channels, channels, kernel_size, dilation=dilation,
            padding=dilation * (kernel_size - 1) // 2, groups=channels, bias=bias,
        )


class PReLUFrameNorm(PReLUGLN):
    """PReLU followed by a per-frame layer norm (:class:`FrameLayerNorm`): the causal
    TCN's activation-norm pair. Same parameters and state-dict keys as :class:`PReLUGLN`;
    the CPU kernels (which compute gLN) leave it alone.

    Example
    -------
    >>> layer, x = PReLUFrameNorm(8), torch.randn(1, 8, 20)
    >>> torch.allclose(layer(x)[..., :5], layer(x[..., :5]))  # causal
    True
    """

    def __init__(self, channels, eps=1e-8):
        super().__init__(channels, eps)
        self.norm = FrameLayerNorm(channels, eps)


class CausalDepthwiseConv1d(DepthwiseConv1d):
    """Dilated depthwise conv padded on the left only: output frame t reads frames
    ``t - (P - 1) * dilation .. t``. Same parameters as :class:`DepthwiseConv1d`.

    ``left_context`` frames of input are what a streaming run keeps from one chunk to
    the next.

    Example
    -------
    >>> conv, x = CausalDepthwiseConv1d(8, 3, dilation=2), torch.randn(1, 8, 20)
    >>> conv.left_context, torch.allclose(conv(x)[..., :7], conv(x[..., :7]))
    (4, True)
    """

    def __init__(self, channels, kernel_size, dilation, bias=True):
        super().__init__(channels, kernel_size, dilation, bias)
        self.padding = (0,)
        self.left_context = dilation * (kernel_size - 1)

    def forward(self, x):
        return super().forward(F.pad(x, (self.left_context, 0)))
