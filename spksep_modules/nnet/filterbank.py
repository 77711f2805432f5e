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


class StreamingFilterbank:
    """The filterbank of a stream: an encoder and a decoder run on a few frames at a time.

    ``encode(samples [n]) -> [k, N]``: the ReLU encoder on the k whole frames of ``samples``
    (``n = (k - 1) * stride + L``), time-major, as one matrix product on the unfolded frames.
    ``decode(pieces [k, C, N]) -> [C, k * stride]``: each frame decoded to its L samples and
    overlap-added, with the ``L - stride`` samples still waiting for the next frames kept as
    ``tail`` (added to the next call's output; ``flush`` gives them back). On a chunk's few
    frames conv1d's set-up would cost more than all its arithmetic. The weights are copied
    once, laid out for the matrix products.

    Example
    -------
    >>> encoder = torch.nn.Conv1d(1, 8, 4, stride=2, bias=False)
    >>> decoder = torch.nn.ConvTranspose1d(8, 1, 4, stride=2, bias=False)
    >>> bank, mix = StreamingFilterbank(encoder, decoder), torch.randn(1000)
    >>> enc = torch.cat([bank.encode(mix[i: i + 100 + 2]) for i in range(0, 900, 100)])
    >>> want = encode_padded(encoder, mix[None, :902])[0].T  # [450 frames, N]
    >>> torch.allclose(enc, want, atol=1e-6)
    True
    >>> wav = torch.cat([bank.decode(e[:, None]) for e in enc.split(7)] + [bank.flush()], 1)
    >>> torch.allclose(wav[0], decoder(want.T[None])[0, 0], atol=1e-5)
    True
    """

    def __init__(self, encoder, decoder):
        self.L, self.stride = encoder.kernel_size[0], encoder.stride[0]
        self.encoder_w = encoder.weight[:, 0, :].T.contiguous()  # [L, N]
        self.encoder_b = encoder.bias
        self.decoder_w = decoder.weight[:, 0, :].contiguous()  # [N, L]
        self.decoder_b = decoder.bias
        self.tail = None

    def encode(self, samples: torch.Tensor) -> torch.Tensor:
        """``samples [n]`` (or ``[n, C]``: C signals) -> ``[k, N]`` (``[k, C, N]``)."""
        frames = samples.unfold(0, self.L, self.stride)  # [k, L] or [k, C, L]
        flat = frames.reshape(-1, self.L)
        if self.encoder_b is None:
            enc = torch.mm(flat, self.encoder_w)
        else:
            enc = torch.addmm(self.encoder_b, flat, self.encoder_w)
        return torch.relu(enc).view(*frames.shape[:-1], -1)

    def decode(self, pieces: torch.Tensor) -> torch.Tensor:
        """``pieces [k, C, N]`` -> the ``[C, k * stride]`` samples they make final."""
        k, num_spks, N = pieces.shape
        frames = torch.mm(pieces.reshape(k * num_spks, N), self.decoder_w)
        wav = overlap_add_frames(frames.view(k, num_spks, self.L), self.stride)
        if self.tail is not None:
            wav[:, : self.tail.shape[1]] += self.tail
        self.tail = wav[:, k * self.stride:]
        return self._biased(wav[:, : k * self.stride])

    def reset(self):
        """Start a new signal (drop the tail)."""
        self.tail = None

    def flush(self) -> torch.Tensor:
        """The samples still in the tail (``[C, L - stride]``, nothing before any frame);
        the next frame starts a new signal."""
        tail, self.tail = self.tail, None
        return self._biased(tail) if tail is not None else self.decoder_w.new_zeros(0, 0)

    def _biased(self, wav):
        return wav if self.decoder_b is None else wav + self.decoder_b


def overlap_add_frames(frames: torch.Tensor, stride: int) -> torch.Tensor:
    """Decoded frames, time-major ``[k, C, L]`` -> their overlap-add ``[C, (k-1)*stride + L]``,
    frame j at sample ``j * stride`` (what :func:`overlap_add_decode` does after its
    matrix product).

    Example
    -------
    >>> frames = torch.ones(3, 1, 4)
    >>> overlap_add_frames(frames, 2).tolist()
    [[1.0, 1.0, 2.0, 2.0, 2.0, 2.0, 1.0, 1.0]]
    """
    k, num_spks, length = frames.shape
    parts = -(-length // stride)
    if parts * stride != length:
        frames = F.pad(frames, (0, parts * stride - length))
    pieces = frames.view(k, num_spks, parts, stride).transpose(0, 1)  # [C, k, Q, S]
    out = frames.new_zeros(num_spks, k + parts - 1, stride)
    for q in range(parts):  # piece q of frame j lands on output hop j + q
        out[:, q: q + k] += pieces[:, :, q]
    return out.view(num_spks, -1)[:, : (k - 1) * stride + length]
