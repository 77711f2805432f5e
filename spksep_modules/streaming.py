"""Streaming separation with a causal Conv-TasNet: audio in small chunks, bounded latency.

A causal Conv-TasNet (``ConvTasNet(causal=True)``) computes encoder frame k from samples
``k*S .. k*S + L - 1`` (S = L/2, the hop), its TCN's frame k from frames up to k (per-frame
norms, left-padded depthwise convs) and decodes frame k onto samples ``k*S .. k*S + L - 1``.
:class:`StreamingSeparator` runs exactly that computation chunk by chunk, keeping as state

- the input samples not yet part of a whole frame (fewer than L);
- for every TCN block, the last ``(P - 1) * dilation`` frames its depthwise conv read
  (its left context, a ring of frames);
- the decoder's overlap-add tail (``L - S`` samples still to receive a later frame).

Each call ``push(chunk)`` returns the samples that are final: sample t is returned as
soon as the input up to ``k*S + L - 1`` has arrived, with k the last frame covering t.
The algorithmic latency (from a sample's arrival to its output, compute aside) is thus at
most ``chunk + L - 1`` samples. ``flush()`` ends the signal the way the offline model
pads it (zeros up to whole frames) and returns the rest, so the concatenated outputs equal
the offline causal model's on the whole signal, to float tolerance, whatever the chunk
sizes (``tests/deploy/test_streaming.py``).

The conditioned model does not stream yet (its speaker embeddings would have to come from
audio already seen): this module raises a one-line error for it.
"""

import torch
import torch.nn.functional as F

from spksep_modules import SpkSepError
from spksep_modules.nnet.filterbank import overlap_add_decode, padded_length


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
                "ConvTasNet does; the conditioned model does not stream yet)")
        if not separator.causal:
            raise SpkSepError("streaming: the model is not causal (train it with causal: True)")
        self.model = separator.eval()
        self.tcn = separator.separator
        self.L, self.S = separator.L, separator.stride
        self.num_spks = separator.num_spks
        self._prepare()
        self.reset()

    def reset(self):
        """Forget the signal so far (the next ``push`` starts a new one)."""
        self.pending = None  # input samples not yet consumed by a whole frame
        self.contexts = [None] * len(self.tcn.blocks)
        self.tail = None  # [C, L - S] overlap-add tail
        self.frames = 0  # frames computed
        self.received = 0  # input samples received
        self.emitted = 0  # output samples returned

    def latency_samples(self, chunk: int) -> int:
        """Algorithmic latency, in samples, for chunks of ``chunk`` samples: the first
        sample of a chunk waits for the rest of it and for the frame that completes it."""
        return chunk + self.L - 1

    # ---------------------------------------------------------------- the TCN, causal
    # Frames-first layout [frames, channels]: every 1x1 conv is one small matrix product
    # (F.linear), every per-frame norm a native layer_norm over the last axis, which on a
    # few frames costs far less than conv1d's setup.
    def _prepare(self):
        def lin(conv):
            return conv.weight[:, :, 0], conv.bias

        tcn = self.tcn
        self.plan = []
        for block in tcn.blocks:
            self.plan.append(dict(
                inp=lin(block.in_conv), out=lin(block.out_conv),
                a1=block.act_norm1, a2=block.act_norm2,
                dw=block.dconv.weight[:, 0, :].T.contiguous(),  # [P, H]
                db=block.dconv.bias, d=block.dconv.dilation[0],
                ctx=block.dconv.left_context, block=block))
        self.bottleneck = lin(tcn.bottleneck)
        self.mask_w = tcn.mask_conv.weight[:, :, 0]

    @staticmethod
    def _act_norm(layer, x):
        x = F.prelu(x, layer.act.weight)
        return F.layer_norm(x, x.shape[-1:], layer.norm.gamma, layer.norm.beta, layer.norm.eps)

    def _dconv(self, i, step, y):
        ctx = self.contexts[i]
        if ctx is None:
            ctx = y.new_zeros(step["ctx"], y.shape[1])
        full = torch.cat([ctx, y], dim=0)  # [ctx + k, H]
        self.contexts[i] = full[full.shape[0] - step["ctx"]:]
        k, d, w = y.shape[0], step["d"], step["dw"]
        out = full[:k] * w[0] if step["db"] is None else torch.addcmul(step["db"], full[:k], w[0])
        for p in range(1, w.shape[0]):
            out.addcmul_(full[p * d: p * d + k], w[p])
        return out

    def _masks(self, enc):
        """``enc [k, N]`` -> masks ``[C, N, k]``."""
        tcn = self.tcn
        x = F.linear(F.layer_norm(enc, enc.shape[-1:], tcn.in_norm.gamma, tcn.in_norm.beta,
                                  tcn.in_norm.eps), *self.bottleneck)
        skip_sum = None
        for i, step in enumerate(self.plan):
            y = self._act_norm(step["a1"], F.linear(x, *step["inp"]))
            y = self._act_norm(step["a2"], self._dconv(i, step, y))
            out = F.linear(y, *step["out"])  # [k, (res) + skip]
            res, skp = step["block"].split_outputs(out.T[None])
            if skp is not None:
                skip_sum = skp if skip_sum is None else skip_sum + skp
            if res is not None:
                x = x + res[0].T
        feats = skip_sum[0].T if tcn.skip else x
        score = F.linear(F.prelu(feats, tcn.out_act.weight), self.mask_w)  # [k, C*N]
        return tcn.mask(score.T[None])[0]  # [C, N, k]

    def _frames(self, samples):
        """Frames of ``samples [1, n]`` (n = (k - 1) * S + L) -> final output samples."""
        enc = F.relu(self.model.encoder(samples.unsqueeze(1)))  # [1, N, k]
        k = enc.shape[-1]
        src_w = self._masks(enc[0].T) * enc  # [C, N, k]
        wav = overlap_add_decode(src_w, self.model.decoder.weight, self.S)  # [C, (k-1)S+L]
        if self.tail is not None:
            wav[:, : self.tail.shape[1]] += self.tail
        self.frames += k
        self.tail = wav[:, k * self.S:]
        return wav[:, : k * self.S]

    # ---------------------------------------------------------------- public
    @torch.no_grad()
    def push(self, chunk: torch.Tensor) -> torch.Tensor:
        """Feed the next samples; returns the output samples they made final, ``[n, C]``."""
        chunk = chunk.reshape(1, -1).to(self.model.encoder.weight)
        self.received += chunk.shape[1]
        buf = chunk if self.pending is None else torch.cat([self.pending, chunk], dim=1)
        k = (buf.shape[1] - self.L) // self.S + 1 if buf.shape[1] >= self.L else 0
        if k <= 0:
            self.pending = buf
            return buf.new_zeros(0, self.num_spks)
        out = self._frames(buf[:, : (k - 1) * self.S + self.L])
        self.pending = buf[:, k * self.S:]
        return self._emit(out, self.received)

    def _emit(self, out, limit):
        out = out[:, : max(0, limit - self.emitted)]
        self.emitted += out.shape[1]
        return out.T.contiguous()

    @torch.no_grad()
    def flush(self) -> torch.Tensor:
        """End the signal: zero-pad to whole frames as the offline model does, return the
        remaining output samples ``[n, C]`` and reset."""
        total = self.received
        if total == 0:
            self.reset()
            return torch.zeros(0, self.num_spks)
        padded = padded_length(total, self.L, self.S)
        consumed = self.frames * self.S  # samples before the pending ones
        pending = self.pending if self.pending is not None else \
            self.model.encoder.weight.new_zeros(1, 0)
        need = padded - consumed - pending.shape[1]
        pieces = []
        if need > 0 or (pending.shape[1] >= self.L):
            buf = F.pad(pending, (0, max(0, need)))
            if buf.shape[1] >= self.L:
                pieces.append(self._frames(buf))
        if self.tail is not None:
            pieces.append(self.tail)
        out = torch.cat(pieces, dim=1) if pieces else pending.new_zeros(self.num_spks, 0)
        result = self._emit(out, total)
        self.reset()
        return result

    @torch.no_grad()
    def separate_signal(self, mix: torch.Tensor, chunk: int = None) -> torch.Tensor:
        """A whole signal ``mix [T]`` chunk by chunk (default: 10 ms at 8 kHz, 80 samples)
        -> ``[T, C]``, equal to the offline causal model's output."""
        chunk = int(chunk or 80)
        self.reset()
        mix = mix.reshape(-1)
        pieces = [self.push(mix[i: i + chunk]) for i in range(0, mix.numel(), chunk)]
        return torch.cat(pieces + [self.flush()]).float()
