"""Small layers of the TCN separators, in plain PyTorch.

Their hand-written CPU kernels (same parameters, same function) are in
``spksep_modules.nnet.cpu_kernels``; a model opts in with ``use_cpu_kernels(model)``.
"""

import torch  # noqa: F401  (docstring examples)
from torch import nn

from spksep_modules import SpkSepError
from spksep_modules.nnet.norms import GlobalLayerNorm


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
