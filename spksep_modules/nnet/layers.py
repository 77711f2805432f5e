"""Small layers of the TCN separators, in plain PyTorch.

Their hand-written CPU kernels (same parameters, same function) are in
``spksep_modules.nnet.cpu_kernels``; a model opts in with ``nnet.forms.as_form(model, "cpu_kernels")``.

**Streaming mode.** A causal layer also runs on a stream: ``forward_streaming(frames,
state)`` takes the next frames *time-major* (``[k, channels]``, or ``[k, ..., channels]``)
and a state from ``streaming_state()``, which holds the layer's left context (a
:class:`FrameHistory`) and its weights laid out for a few frames at a time (each 1x1 conv
as a transposed, contiguous matrix: on a chunk's ~10 frames a plain matrix product costs a
fifth of ``F.linear``'s or ``conv1d``'s setup). The state is a snapshot: a stream serves
the weights the layer had when the state was made.
"""

import torch
import torch.nn.functional as F
from torch import nn

from spksep_modules import SpkSepError
from spksep_modules.nnet.norms import FrameLayerNorm, GlobalLayerNorm


class FrameHistory:
    """The last ``context`` frames a causal dilated conv reads, kept across chunks:
    time-major, ``[frames, ...]`` (any trailing shape, fixed by the first append).

    A linear buffer with room for several chunks after the context: ``append(y)`` writes
    the new frames after the current ones and returns a view of the context followed by
    them, so the taps are plain slices (no concatenation per chunk). When the room runs
    out, the context is moved back to the front. The room is at least twice the context,
    so that move (context frames) costs at most half a frame per frame appended. Before
    the first frame the context is zeros, as a left-padded conv sees it.

    Example
    -------
    >>> history = FrameHistory(context=4)
    >>> history.append(torch.ones(3, 1)).flatten().tolist()  # zeros before the signal
    [0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0]
    >>> history.append(2 * torch.ones(2, 1)).flatten().tolist()
    [0.0, 1.0, 1.0, 1.0, 2.0, 2.0]
    """

    def __init__(self, context: int):
        self.context = context
        self.buffer = None
        self.end = context  # frames before ``end`` hold the history

    def reset(self):
        """Forget the frames (the next append starts a new signal: zero context)."""
        self.buffer, self.end = None, self.context

    def append(self, frames: torch.Tensor) -> torch.Tensor:
        k = frames.shape[0]
        if self.buffer is None:
            self.buffer = frames.new_zeros(self._size(k), *frames.shape[1:])
        elif self.end + k > self.buffer.shape[0]:
            start = self.end - self.context
            history = self.buffer[start: self.end]
            if start < self.context:  # overlaps the front: copy it out first
                history = history.clone()
            if self.context + k > self.buffer.shape[0]:
                self.buffer = self.buffer.new_zeros(self._size(k), *frames.shape[1:])
            self.buffer[: self.context] = history
            self.end = self.context
        self.buffer[self.end: self.end + k] = frames
        self.end += k
        return self.buffer[self.end - k - self.context: self.end]

    def _size(self, k: int) -> int:
        """Buffer frames: the context and a room of at least twice it (and 8 appends of k)."""
        return self.context + max(64, 2 * self.context, 8 * k)


def reset_streaming_state(state):
    """Start a new signal with a streaming state (``streaming_state()`` of any layer or
    model): every :class:`FrameHistory` and filterbank tail in it is reset, the weights
    laid out for streaming are kept (they are made once per stream, not per signal).

    Example
    -------
    >>> conv = CausalDepthwiseConv1d(2, 3, dilation=1)
    >>> state, x = conv.streaming_state(), torch.randn(5, 2)
    >>> first = conv.forward_streaming(x, state)
    >>> _ = conv.forward_streaming(x, state)  # context from the first call
    >>> reset_streaming_state(state)
    >>> torch.equal(conv.forward_streaming(x, state), first)
    True
    """
    if hasattr(state, "reset"):
        state.reset()
    elif isinstance(state, dict):
        for value in state.values():
            reset_streaming_state(value)
    elif isinstance(state, (list, tuple)):
        for value in state:
            reset_streaming_state(value)


def frames_matrix(conv: nn.Conv1d):
    """A 1x1 conv's ``(weight [in, out], bias)`` for time-major frames (see
    :func:`frames_affine`): transposed and contiguous, a copy made once.

    Example
    -------
    >>> conv, x = nn.Conv1d(4, 6, 1), torch.randn(2, 4, 5)
    >>> y = frames_affine(x[0].T, *frames_matrix(conv))  # frames of example 0: [5, 6]
    >>> torch.allclose(y, conv(x)[0].T, atol=1e-6)
    True
    """
    return conv.weight[:, :, 0].T.contiguous(), conv.bias


def frames_affine(x: torch.Tensor, weight_t: torch.Tensor, bias=None) -> torch.Tensor:
    """``x [..., in] @ weight_t [in, out] + bias``: a 1x1 conv on time-major frames.
    With the weight stored transposed and contiguous this is ~5x faster than
    ``F.linear`` on a chunk's few rows (measured, [20, 192] x [192, 64], one thread: 9 us
    against 45 us)."""
    if x.dim() == 2:
        return torch.mm(x, weight_t) if bias is None else torch.addmm(bias, x, weight_t)
    y = frames_affine(x.reshape(-1, x.shape[-1]), weight_t, bias)
    return y.view(*x.shape[:-1], y.shape[-1])


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

    def streaming_state(self) -> tuple:
        """What :meth:`forward_streaming` reads (no context: each frame alone)."""
        norm = self.norm
        return self.act.weight, norm.shape, norm.gamma, norm.beta, norm.eps

    @staticmethod
    def forward_streaming(x, state):
        """The same on time-major frames ``[k, C]``, with ``state`` from
        :meth:`streaming_state` (the parameters, looked up once per stream)."""
        slope, shape, gamma, beta, eps = state
        return F.layer_norm(F.prelu(x, slope), shape, gamma, beta, eps)


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

    def streaming_state(self) -> dict:
        """The state of :meth:`forward_streaming`: the left context and the taps."""
        taps = self.weight[:, 0, :].T.contiguous()  # [P, C]
        bias = self.bias if self.bias is not None else taps.new_zeros(taps.shape[1])
        return dict(history=FrameHistory(self.left_context), taps=list(taps.unbind(0)),
                    bias=bias, dilation=self.dilation[0])

    def forward_streaming(self, x, state):
        """The next frames, time-major ``[k, C]`` -> ``[k, C]``, reading the frames before
        them from ``state`` (:meth:`streaming_state`), as :meth:`forward` reads them.

        Example
        -------
        >>> conv, x = CausalDepthwiseConv1d(4, 3, dilation=2), torch.randn(1, 4, 9)
        >>> state = conv.streaming_state()
        >>> y = torch.cat([conv.forward_streaming(x[0, :, i:i + 3].T, state) for i in (0, 3, 6)])
        >>> torch.allclose(y.T, conv(x)[0], atol=1e-6)
        True
        """
        taps, d, k = state["taps"], state["dilation"], x.shape[0]
        if len(taps) == 1:  # P = 1: no context
            return torch.addcmul(state["bias"], x, taps[0])
        past = state["history"].append(x)  # frames t - (P - 1) * d .. t + k - 1, a view
        out = torch.addcmul(state["bias"], past[:k], taps[0])
        for p in range(1, len(taps) - 1):
            out.addcmul_(past[p * d: p * d + k], taps[p])
        return out.addcmul_(x, taps[-1])  # the last tap reads the new frames themselves
