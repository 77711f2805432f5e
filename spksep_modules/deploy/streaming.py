"""Streaming separation with a causal Conv-TasNet: audio in small chunks, bounded latency.

A causal Conv-TasNet (``ConvTasNet(causal=True)``) computes encoder frame k from samples
``k*S .. k*S + L - 1`` (S = L/2, the hop), its TCN's frame k from frames up to k (per-frame
norms, left-padded depthwise convs) and decodes frame k onto samples ``k*S .. k*S + L - 1``.
:class:`StreamingSeparator` runs exactly that computation chunk by chunk, keeping as state

- the input samples not yet part of a whole frame (fewer than L);
- the model's own streaming state (``ConvTasNet.streaming_state()``): for every TCN
  block, the last ``(P - 1) * dilation`` frames its depthwise conv read (its left context,
  ``nnet.layers.FrameHistory``), and the decoder's overlap-add tail (``L - S`` samples
  still to receive a later frame).

The computation itself is the model's: ``ConvTasNet.forward_streaming`` and its layers'
``forward_streaming`` (time-major frames; see ``nnet.layers``). This class only cuts the
chunks into whole frames, keeps the samples between them, and ends the signal.

Each call ``push(chunk)`` returns the samples that are final: sample t is returned as
soon as the input up to ``k*S + L - 1`` has arrived, with k the last frame covering t.
The algorithmic latency (from a sample's arrival to its output, compute aside) is thus at
most ``chunk + L - 1`` samples. ``flush()`` ends the signal the way the offline model
pads it (zeros up to whole frames) and returns the rest, so the concatenated outputs equal
the offline causal model's on the whole signal, to float tolerance, whatever the chunk
sizes (``tests/deploy/test_streaming.py``).

The speaker-conditioned model streams with
:class:`~spksep_modules.deploy.streaming_conditioned.StreamingConditionedSeparator`, which runs
this class for its basic model.
"""

import torch
import torch.nn.functional as F

from spksep_modules import SpkSepError
from spksep_modules.nnet.filterbank import padded_length
from spksep_modules.nnet.layers import reset_streaming_state


class StreamingSeparator:
    """Chunk-by-chunk separation with a causal :class:`~spksep_modules.models.ConvTasNet`.

    Arguments
    ---------
    separator : ConvTasNet
        Built with ``causal=True`` (any sizes); used in eval mode, not changed.

    ``push(chunk [T] or [1, T]) -> [T', C]`` (the samples made final by this chunk),
    ``flush() -> [T'', C]`` (the rest, then the state is reset), ``reset()``,
    ``separate_signal(mix [T], chunk=...)`` (a whole signal, chunk by chunk).

    Example
    -------
    >>> from spksep_modules.models import ConvTasNet
    >>> model = ConvTasNet(N=16, L=8, B=8, H=16, P=3, X=2, R=1, causal=True).eval()
    >>> stream, mix = StreamingSeparator(model), torch.randn(1000)
    >>> pieces = [stream.push(mix[i : i + 80]) for i in range(0, 1000, 80)]  # 10 ms at 8 kHz
    >>> out = torch.cat(pieces + [stream.flush()])
    >>> out.shape, torch.allclose(out, model(mix)[0], atol=1e-5)
    (torch.Size([1000, 2]), True)
    >>> stream.latency_samples(80)  # a chunk plus one filter, less one sample
    87
    """

    def __init__(self, separator):
        from spksep_modules.models.conv_tasnet import ConvTasNet

        if not isinstance(separator, ConvTasNet):
            raise SpkSepError(
                f"streaming: a {type(separator).__name__} cannot stream (only a causal "
                "ConvTasNet does; a conditioned model streams with "
                "streaming_conditioned.StreamingConditionedSeparator)")
        if not separator.causal:
            raise SpkSepError("streaming: the model is not causal (train it with causal: True)")
        self.model = separator.eval()
        self.L, self.S = separator.L, separator.stride
        self.num_spks = separator.num_spks
        # the model's own streaming state: each block's left context, the overlap-add tail
        self.state = self.model.streaming_state()
        self.reset()

    def reset(self):
        """Forget the signal so far (the next ``push`` starts a new one)."""
        self.pending = None  # input samples not yet consumed by a whole frame
        reset_streaming_state(self.state)
        self.received = 0  # input samples received
        self.emitted = 0  # output samples returned

    def latency_samples(self, chunk: int) -> int:
        """Algorithmic latency, in samples, for chunks of ``chunk`` samples: the first
        sample of a chunk waits for the rest of it and for the frame that completes it."""
        return chunk + self.L - 1

    # ---------------------------------------------------------------- public
    @torch.inference_mode()
    def push(self, chunk: torch.Tensor) -> torch.Tensor:
        """Feed the next samples; returns the output samples they made final, ``[n, C]``."""
        chunk = chunk.reshape(1, -1).to(self.model.encoder.weight)
        self.received += chunk.shape[1]
        buf = chunk if self.pending is None else torch.cat([self.pending, chunk], dim=1)
        k = (buf.shape[1] - self.L) // self.S + 1 if buf.shape[1] >= self.L else 0
        if k <= 0:
            self.pending = buf
            return buf.new_zeros(0, self.num_spks)
        out = self.model.forward_streaming(buf[0, : (k - 1) * self.S + self.L], self.state)
        self.pending = buf[:, k * self.S:]
        return self._emit(out, self.received)

    def _emit(self, out, limit):
        out = out[:, : max(0, limit - self.emitted)]
        self.emitted += out.shape[1]
        return out.T.contiguous()

    @torch.inference_mode()
    def flush(self) -> torch.Tensor:
        """End the signal: zero-pad to whole frames as the offline model does, return the
        remaining output samples ``[n, C]`` and reset."""
        total = self.received
        if total == 0:
            self.reset()
            return torch.zeros(0, self.num_spks)
        padded = padded_length(total, self.L, self.S)
        pending = self.pending if self.pending is not None else \
            self.model.encoder.weight.new_zeros(1, 0)
        consumed = total - pending.shape[1]  # samples before the pending ones
        pieces = []
        buf = F.pad(pending, (0, max(0, padded - consumed - pending.shape[1])))
        if buf.shape[1] >= self.L:  # the last frames, zero-padded as the offline model pads
            pieces.append(self.model.forward_streaming(buf[0], self.state))
        pieces.append(self.state["filterbank"].flush())
        pieces = [p for p in pieces if p.numel()]
        out = torch.cat(pieces, dim=1) if pieces else pending.new_zeros(self.num_spks, 0)
        result = self._emit(out, total)
        self.reset()
        return result

    @torch.inference_mode()
    def separate_signal(self, mix: torch.Tensor, chunk: int = None) -> torch.Tensor:
        """A whole signal ``mix [T]`` chunk by chunk (default: 10 ms at 8 kHz, 80 samples)
        -> ``[T, C]``, equal to the offline causal model's output."""
        chunk = int(chunk or 80)
        self.reset()
        mix = mix.reshape(-1)
        pieces = [self.push(mix[i: i + chunk]) for i in range(0, mix.numel(), chunk)]
        return torch.cat(pieces + [self.flush()]).float()
