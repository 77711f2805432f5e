"""Streaming separation with a causal Conv-TasNet: audio in small chunks, bounded latency.

A causal Conv-TasNet (``ConvTasNet(causal=True)``) computes encoder frame k from samples
``k*S .. k*S + L - 1`` (S = L/2, the hop), its TCN's frame k from frames up to k (per-frame
norms, left-padded depthwise convs) and decodes frame k onto samples ``k*S .. k*S + L - 1``.
:class:`StreamingSeparator` runs exactly that computation chunk by chunk, keeping as state

- the input samples not yet part of a whole frame (fewer than L);
- for every TCN block, the last ``(P - 1) * dilation`` frames its depthwise conv read
  (its left context, a :class:`FrameHistory`);
- the decoder's overlap-add tail (``L - S`` samples still to receive a later frame).

Each call ``push(chunk)`` returns the samples that are final: sample t is returned as
soon as the input up to ``k*S + L - 1`` has arrived, with k the last frame covering t.
The algorithmic latency (from a sample's arrival to its output, compute aside) is thus at
most ``chunk + L - 1`` samples. ``flush()`` ends the signal the way the offline model
pads it (zeros up to whole frames) and returns the rest, so the concatenated outputs equal
the offline causal model's on the whole signal, to float tolerance, whatever the chunk
sizes (``tests/deploy/test_streaming.py``).

The speaker-conditioned model streams with
:class:`~spksep_modules.streaming_conditioned.StreamingConditionedSeparator`, which runs
this class for its basic model.
"""

import torch
import torch.nn.functional as F

from spksep_modules import SpkSepError
from spksep_modules.nnet.filterbank import padded_length


class FrameHistory:
    """The last ``context`` frames a causal dilated conv reads, kept across chunks.

    A linear buffer with room for several chunks after the context: ``append(y)`` writes
    the new frames after the current ones and returns a view of the context followed by
    them, so the taps are plain slices (no concatenation per chunk). When the room runs
    out, the context is moved back to the front. The room is at least twice the context,
    so that move (context frames) costs at most half a frame per frame appended: with a
    fixed room, the 256-frame contexts of the last blocks were copied every few chunks.

    Example
    -------
    >>> history = FrameHistory(context=4, channels=1)
    >>> history.append(torch.ones(3, 1)).flatten().tolist()  # zeros before the signal
    [0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0]
    >>> history.append(2 * torch.ones(2, 1)).flatten().tolist()
    [0.0, 1.0, 1.0, 1.0, 2.0, 2.0]
    """

    def __init__(self, context: int, channels: int, dtype=torch.float32):
        self.context = context
        self.buffer = torch.zeros(self._size(0), channels, dtype=dtype)
        self.end = context  # frames before ``end`` hold the history

    def append(self, frames: torch.Tensor) -> torch.Tensor:
        k = frames.shape[0]
        if self.end + k > self.buffer.shape[0]:
            start = self.end - self.context
            history = self.buffer[start: self.end]
            if start < self.context:  # overlaps the front: copy it out first
                history = history.clone()
            if self.context + k > self.buffer.shape[0]:
                self.buffer = self.buffer.new_zeros(self._size(k), frames.shape[1])
            self.buffer[: self.context] = history
            self.end = self.context
        self.buffer[self.end: self.end + k] = frames
        self.end += k
        return self.buffer[self.end - k - self.context: self.end]

    def _size(self, k: int) -> int:
        """Buffer frames: the context and a room of at least twice it (and 8 appends of k)."""
        return self.context + max(64, 2 * self.context, 8 * k)


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
    # (addmm with its weight transposed once, here), every per-frame norm a native
    # layer_norm over the last axis, which on a few frames costs far less than conv1d's
    # setup. At 10 frames a chunk the per-op cost, not the arithmetic, dominates, so the
    # loop below is the fewest ops that compute a block (timings: bench/bench_streaming.py).
    def _prepare(self):
        def lin(conv):  # a 1x1 conv as (bias, weight [in, out]) for addmm
            return conv.bias, conv.weight[:, :, 0].T.contiguous()

        def act_norm(layer):
            norm = layer.norm
            return layer.act.weight, (norm.gamma.shape[0],), norm.gamma, norm.beta, norm.eps

        tcn = self.tcn
        self.plan = []
        for block in tcn.blocks:
            taps = block.dconv.weight[:, 0, :].T.contiguous()  # [P, H]
            bias = block.dconv.bias
            self.plan.append(dict(
                inp=lin(block.in_conv), out=lin(block.out_conv),
                act_norm1=act_norm(block.act_norm1), act_norm2=act_norm(block.act_norm2),
                # the last tap reads the current frames themselves (lag 0)
                taps=list(taps.unbind(0)),
                dconv_bias=bias if bias is not None else taps.new_zeros(taps.shape[1]),
                dilation=block.dconv.dilation[0], context=block.dconv.left_context,
                res=block.has_residual, skip=block.has_skip, B=block.out_splits[0]))
        norm = tcn.in_norm
        self.in_norm = (norm.gamma.shape[0],), norm.gamma, norm.beta, norm.eps
        self.bottleneck = lin(tcn.bottleneck)
        model = self.model
        self.encoder_w = model.encoder.weight[:, 0, :].T.contiguous()  # [L, N]
        Q = -(-self.L // self.S)  # hops a frame spans; the decoder's pieces padded to Q hops
        self.decoder_w = F.pad(model.decoder.weight[:, 0, :], (0, Q * self.S - self.L))
        self.mask_w = tcn.mask_conv.weight[:, :, 0].T.contiguous()

    @staticmethod
    def _act_norm(params, x):
        slope, shape, gamma, beta, eps = params
        return F.layer_norm(F.prelu(x, slope), shape, gamma, beta, eps)

    def _dconv(self, i, step, y):
        """The causal depthwise conv of block ``i`` on the new frames ``y [k, H]``."""
        context = self.contexts[i]
        if context is None:
            context = self.contexts[i] = FrameHistory(step["context"], y.shape[1], y.dtype)
        taps, d, k = step["taps"], step["dilation"], y.shape[0]
        past = context.append(y)  # frames t - (P - 1) * d .. t + k - 1, as a view
        out = torch.addcmul(step["dconv_bias"], past[:k], taps[0])
        for p in range(1, len(taps) - 1):
            out.addcmul_(past[p * d: p * d + k], taps[p])
        return out.addcmul_(y, taps[-1])

    def _masks(self, enc):
        """``enc [k, N]`` -> masks ``[k, C, N]`` (a view)."""
        tcn = self.tcn
        shape, gamma, beta, eps = self.in_norm
        bias, weight = self.bottleneck
        x = torch.addmm(bias, F.layer_norm(enc, shape, gamma, beta, eps), weight)
        skip_sum = None
        for i, step in enumerate(self.plan):
            y = self._act_norm(step["act_norm1"], torch.addmm(step["inp"][0], x, step["inp"][1]))
            y = self._act_norm(step["act_norm2"], self._dconv(i, step, y))
            out = torch.addmm(step["out"][0], y, step["out"][1])  # [k, (res) + (skip)]
            B = step["B"]
            if step["res"]:
                x = x + out[:, :B]
            if step["skip"]:
                skp = out[:, B:] if step["res"] else out
                skip_sum = skp.clone() if skip_sum is None else skip_sum.add_(skp)
        feats = skip_sum if tcn.skip else x
        score = F.prelu(feats, tcn.out_act.weight) @ self.mask_w  # [k, C*N]
        return tcn.mask(score.T[None])[0].permute(2, 0, 1)  # the model's own mask activation

    def _frames(self, samples):
        """Frames of ``samples [1, n]`` (n = (k - 1) * S + L) -> final output samples.

        Framing and the encoder are one matrix product on the unfolded samples, the decoder
        one more and an overlap-add: on a chunk's few frames, conv1d's setup would cost
        more than all its arithmetic."""
        frames = samples[0].unfold(0, self.L, self.S)  # [k, L]
        enc = torch.relu(frames @ self.encoder_w)  # [k, N]
        k = enc.shape[0]
        src_w = self._masks(enc) * enc[:, None]  # [k, C, N]
        pieces = (src_w @ self.decoder_w).transpose(0, 1)  # [C, k, Q * S]
        C, S, Q = pieces.shape[0], self.S, self.decoder_w.shape[1] // self.S
        wav = pieces.new_zeros(C, k + Q - 1, S)  # overlap-add: piece q of frame j -> hop j + q
        for q in range(Q):
            wav[:, q: q + k] += pieces[..., q * S: (q + 1) * S]
        wav = wav.reshape(C, -1)
        if self.tail is not None:
            wav[:, : self.tail.shape[1]] += self.tail
        self.frames += k
        self.tail = wav[:, k * S: (k - 1) * S + self.L]
        return wav[:, : k * S]

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
        out = self._frames(buf[:, : (k - 1) * self.S + self.L])
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

    @torch.inference_mode()
    def separate_signal(self, mix: torch.Tensor, chunk: int = None) -> torch.Tensor:
        """A whole signal ``mix [T]`` chunk by chunk (default: 10 ms at 8 kHz, 80 samples)
        -> ``[T, C]``, equal to the offline causal model's output."""
        chunk = int(chunk or 80)
        self.reset()
        mix = mix.reshape(-1)
        pieces = [self.push(mix[i: i + chunk]) for i in range(0, mix.numel(), chunk)]
        return torch.cat(pieces + [self.flush()]).float()
