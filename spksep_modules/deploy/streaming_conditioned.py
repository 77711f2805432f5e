"""Streaming the speaker-conditioned separator: embeddings only from audio already seen.

Offline, :class:`~spksep_modules.models.ConditionedSeparator` embeds each intermediate
estimate *as a whole* and conditions every frame of the stack on that: frame 0 already
knows the speaker's voice from the end of the recording. A stream cannot. Here the
embeddings come from the past only, by this rule:

- **Refresh.** The embeddings are piecewise constant in time. At the frames
  ``f_r = r * R`` (r = 1, 2, ...; ``R = round(refresh_seconds * rate / S)`` frames of hop
  S, so a refresh falls on a frame boundary, every ``refresh_seconds`` up to half a hop)
  they are recomputed from the last ``window_seconds`` of the pass's input estimates
  (the intermediate ones, for the first pass) before sample ``f_r * S``: samples that
  were final, and returned, before frame ``f_r`` is computed. Frames ``f_r .. f_{r+1} - 1``
  use that embedding (FiLM scale and shift); frames before ``f_1`` have none.
- **Before the first refresh** there is no speaker evidence yet: the output *is* the
  intermediate estimates (what a ``residual`` model starts from anyway), and the stack
  starts at frame ``f_1`` with zero left context, as it starts on any signal. Its layers
  then keep their left context across later refreshes: a new embedding changes how the
  stack goes on, not what it remembers. (A ``residual=False`` model switches from the
  intermediate estimates to its own output at sample ``f_1 * S``; its first ``L - S``
  samples there miss the overlap-add half of frame ``f_1 - 1``, which has no embedding.)
- **Refinement** (``refine_iterations`` K > 1) chains K such passes: pass k takes the
  stream of pass k - 1's outputs as its estimates (embedding window, cue and residual
  base), as the offline model re-embeds its final estimates.

Defaults: refresh every 1 s from the last 3 s. Speaker networks are trained on
utterances of a few seconds (GE2E's partials are 1.6 s, RawNet2's windows 3.7 s), so a
3 s window gives them what they were trained on while following a change of speaker
within 3 s; a refresh every second costs one embedding per second (the expensive chunks:
``bench/bench_streaming.py`` reports the worst one) and tracks the estimates as they
improve. Both are settings (``spksep separate --stream --refresh_seconds --window_seconds``).

**What runs per chunk.** The basic Conv-TasNet streams with
:class:`~spksep_modules.deploy.streaming.StreamingSeparator`; each pass then runs the
model's own streaming mode, ``ConditionedSeparator.forward_streaming`` (its stack's and
layers' ``forward_streaming``, time-major frames, each layer keeping its left context),
with FiLM from the current segment's embeddings. This module keeps only the two streams'
samples, the refresh schedule, the pass-through before the first refresh and the latency.

**Latency.** With ``estimate_cue`` the cue of frame j reads the estimate's samples
``j*S .. j*S + L - 1``, which are final only once the previous stage has computed the
following frame: each such pass lags ``ceil(L/S) - 1`` hops (one, for L = 2S) behind the
one before. Algorithmic latency is thus ``chunk + L - 1 + K * S`` samples for L = 2S
(12.9 ms for 10 ms chunks at 8 kHz with L = 16, K = 1), ``chunk + L - 1`` without the
cue. The refresh chunks also compute the embeddings (a GE2E or RawNet2 pass over the
window): compute, not algorithmic latency, but a player needs that much output buffered.

:func:`offline_reference` computes the same causal rule on whole-signal tensors with the
model's own offline pass (``stack_pass`` with FiLM parameters per frame); the
streamed output equals it to float tolerance whatever the chunk sizes, and its output
up to a time never changes when later audio does (``tests/deploy/test_streaming_conditioned.py``).
Note that this is *not* the offline model's output (whose embeddings see the whole
recording): a model trained offline meets here embeddings of a few seconds of its
own estimates, as it meets shorter signals.
"""

import math

import torch
import torch.nn.functional as F

from spksep_modules import SpkSepError
from spksep_modules.nnet.filterbank import encode_padded, padded_length
from spksep_modules.nnet.layers import reset_streaming_state
from spksep_modules.deploy.streaming import StreamingSeparator


def chunk_samples(sample_rate: int, chunk_ms: float) -> int:
    """Samples in a chunk of ``chunk_ms`` milliseconds at ``sample_rate`` (at least 1).

    Example
    -------
    >>> chunk_samples(8000, 10), chunk_samples(16000, 10), chunk_samples(8000, 0.01)
    (80, 160, 1)
    """
    if not chunk_ms > 0:
        raise SpkSepError(f"stream_chunk_ms: must be positive, got {chunk_ms}")
    return max(1, int(round(sample_rate * chunk_ms / 1000)))


def check_streamable(model) -> None:
    """Raise a one-line :class:`SpkSepError` unless ``model`` is a conditioned separator
    that can stream: causal stack (``causal: True``) on a causal Conv-TasNet."""
    from spksep_modules.models import ConditionedSeparator, ConvTasNet

    if not isinstance(model, ConditionedSeparator):
        raise SpkSepError(f"streaming: expected a ConditionedSeparator, got {type(model).__name__}")
    if not model.stack.causal:  # as recorded when the model was built
        raise SpkSepError("streaming: the conditioned model is not causal "
                          "(train it with causal: True on a causal basic model)")
    basic = model.basic_model
    if not (isinstance(basic, ConvTasNet) and basic.causal):
        kind = "non-causal " if isinstance(basic, ConvTasNet) else ""
        raise SpkSepError(f"streaming: the conditioned model's basic model is not a causal "
                          f"ConvTasNet (it is a {kind}{type(basic).__name__})")


def _schedule(model, sample_rate, refresh_seconds, window_seconds):
    """``(sample_rate, R frames between refreshes, W window samples)``, checked."""
    if sample_rate is None:
        sample_rate = getattr(model.speaker_net, "input_rate", None)
    if not sample_rate:
        raise SpkSepError("streaming: the model's sample rate is unknown (pass sample_rate)")
    if not refresh_seconds > 0:
        raise SpkSepError(f"refresh_seconds: must be positive, got {refresh_seconds}")
    if not window_seconds > 0:
        raise SpkSepError(f"window_seconds: must be positive, got {window_seconds}")
    every = max(1, int(round(refresh_seconds * sample_rate / model.stride)))
    window = max(1, int(round(window_seconds * sample_rate)))
    return int(sample_rate), every, window


def _film(model, estimates):
    """Embeddings of ``estimates [n, C]`` -> FiLM ``(scale, shift)``, ``[C, layers, Ch]`` each."""
    return model.film(model.embed(estimates[None]))


# ----------------------------------------------------------------------------- offline
@torch.no_grad()
def offline_reference(model, mix: torch.Tensor, sample_rate: int = None,
                      refresh_seconds: float = 1.0, window_seconds: float = 3.0) -> torch.Tensor:
    """The streaming rule (module docstring) computed on whole signals: ``mix [T]`` ->
    ``[T, C]``, what :class:`StreamingConditionedSeparator` returns chunk by chunk.

    Each pass is the model's own ``stack_pass`` over frames ``f_1 ..`` at once, with
    per-frame FiLM scales and shifts that are piecewise constant between refreshes.

    Example
    -------
    >>> from spksep_modules.models import ConditionedSeparator, ConvTasNet
    >>> from spksep_modules.speakers.ge2e import GE2E
    >>> model = ConditionedSeparator(ConvTasNet(N=16, L=8, B=8, H=16, P=3, X=2, R=1,
    ...     causal=True), GE2E(), stack_channels=8, num_layers=2, layers_per_group=2,
    ...     film_hidden=8, causal=True, residual=True).eval()
    >>> mix = torch.randn(1600)  # 0.1 s at 16 kHz
    >>> short = offline_reference(model, mix, refresh_seconds=1.0)  # no refresh yet
    >>> torch.equal(short, model.separate_basic(mix[None])[0])  # the intermediate estimates
    True
    >>> offline_reference(model, mix, refresh_seconds=0.02, window_seconds=0.05).shape
    torch.Size([1600, 2])
    """
    check_streamable(model)
    _, every, window = _schedule(model, sample_rate, refresh_seconds, window_seconds)
    mix = mix.reshape(1, -1).to(model.encoder.weight)
    estimates = model.separate_basic(mix)[0]  # [T, C]
    frames = (padded_length(mix.shape[1], model.kernel, model.stride) - model.kernel) \
        // model.stride + 1
    if frames <= every:  # no refresh within the signal
        return estimates
    enc = encode_padded(model.encoder, mix)  # [1, N, F]
    for _ in range(model.refine_iterations):
        estimates = _offline_pass(model, enc, estimates, every, window)
    return estimates


def _offline_pass(model, enc, estimates, every, window):
    """One pass by the refresh rule: the model's own :meth:`stack_pass` on the frames from
    the first refresh on, with FiLM parameters that are constant between refreshes."""
    S, frames = model.stride, enc.shape[-1]
    refreshes = list(range(every, frames, every))
    first = refreshes[0]
    scale = enc.new_empty(model.num_spks, model.stack.num_layers, model.stack.channels,
                          frames - first)
    shift = torch.empty_like(scale)
    for r, frame in enumerate(refreshes):
        end = refreshes[r + 1] if r + 1 < len(refreshes) else frames
        sc, sh = _film(model, estimates[max(0, frame * S - window): frame * S])
        scale[..., frame - first: end - first] = sc[..., None]
        shift[..., frame - first: end - first] = sh[..., None]
    out = estimates.clone()
    out[first * S:] = model.stack_pass(enc[..., first:], scale, shift, estimates[None, first * S:])[0]
    return out


# ----------------------------------------------------------------------------- streaming
class _StreamingPass:
    """One pass of the stack, chunk by chunk: (mixture, estimates) streams in, new
    estimates out, by the refresh rule of the module docstring.

    The computation is the model's own streaming mode
    (``ConditionedSeparator.forward_streaming``, time-major frames); this class keeps the
    two streams' samples, the refresh schedule and the pass-through before it.
    """

    def __init__(self, owner):
        self.owner = owner
        model = owner.model
        self.model, self.stack = model, model.stack
        self.L, self.S = model.kernel, model.stride
        # Estimate samples frame j needs beyond j*S before it can run: its cue frame, or
        # only its own hop (its residual base).
        self.need = self.L if model.estimate_cue else self.S
        self.state = model.streaming_state()  # the layers' context, the overlap-add tail
        self.reset()

    def reset(self):
        weight = self.model.encoder.weight
        self.frames = 0  # frames done (before f_1: passed through)
        self.mix = weight.new_zeros(0)  # mixture samples from frames * S on
        self.est = weight.new_zeros(0, self.owner.num_spks)  # estimates from est_start on
        self.est_start = 0
        reset_streaming_state(self.state)
        self.ran = False  # whether the stack has run (from the first refresh on)
        self.film = None  # the current segment's (scale, shift), [C, layers, Ch] each

    def _estimates(self, start, stop):
        return self.est[start - self.est_start: stop - self.est_start]

    def feed(self, mix_chunk, est_chunk):
        """Append samples of both streams; return this pass's outputs made final ``[n, C]``."""
        self.mix = torch.cat([self.mix, mix_chunk])
        self.est = torch.cat([self.est, est_chunk])
        mix_end = self.frames * self.S + self.mix.shape[0]
        est_end = self.est_start + self.est.shape[0]
        ready = min(mix_end - self.L, est_end - self.need)
        return self._run(ready // self.S + 1 if ready >= 0 else 0)

    def finish(self, est_rest, total):
        """The last estimates; the signal had ``total`` samples: zero-pad both streams to
        whole frames as the offline model does and return the remaining outputs."""
        self.est = torch.cat([self.est, est_rest])
        padded = padded_length(total, self.L, self.S)
        start = self.frames * self.S
        self.mix = F.pad(self.mix, (0, padded - start - self.mix.shape[0]))
        self.est = F.pad(self.est, (0, 0, 0, padded - self.est_start - self.est.shape[0]))
        out = [self._run((padded - self.L) // self.S + 1)]
        emitted = self.frames * self.S
        rest = self._estimates(emitted, max(emitted, total))
        if self.ran:  # the stack's last overlap-add tail
            rest = self.model.combine(rest, self.state["filterbank"].flush()[:, : rest.shape[0]].T)
        out.append(rest)
        return torch.cat(out)[: max(0, total - start)]

    def _run(self, target):
        every = self.owner.every
        out = []
        while self.frames < target:
            start = self.frames
            if start < every:  # no embedding yet: the estimates pass through
                stop = min(target, every)
                out.append(self._estimates(start * self.S, stop * self.S))
            else:
                if start % every == 0:
                    window = self.owner.window
                    self.film = _film(self.model, self._estimates(
                        max(0, start * self.S - window), start * self.S))
                stop = min(target, (start // every + 1) * every)
                out.append(self._stack_frames(start, stop))
            self.frames = stop
            self.mix = self.mix[(stop - start) * self.S:]
            keep = max(self.est_start, stop * self.S - self.owner.window)  # the next window
            self.est = self.est[keep - self.est_start:]
            self.est_start = keep
        return torch.cat(out) if out else self.est.new_zeros(0, self.owner.num_spks)

    def _stack_frames(self, start, stop):
        """Frames ``start .. stop - 1`` through the model's stack -> output samples
        ``start*S .. stop*S - 1``, ``[n, C]``."""
        S = self.S
        span = (stop - start - 1) * S + self.L  # samples the frames read, from start * S
        self.ran = True
        return self.model.forward_streaming(
            self.mix[:span], self._estimates(start * S, start * S + span),
            self._estimates(start * S, stop * S), *self.film, self.state)


class StreamingConditionedSeparator:
    """Chunk-by-chunk separation with a causal :class:`~spksep_modules.models.ConditionedSeparator`.

    Speaker embeddings come from audio already seen: refreshed every ``refresh_seconds``
    from the last ``window_seconds`` of estimates (module docstring). Same interface as
    :class:`~spksep_modules.deploy.streaming.StreamingSeparator`.

    Arguments
    ---------
    model : ConditionedSeparator
        Built with ``causal=True`` on a causal ConvTasNet; used in eval mode, not changed.
    sample_rate : int
        The model's rate (default: its speaker network's ``input_rate``).
    refresh_seconds, window_seconds : float
        The refresh interval and the window the embeddings are computed from.

    ``push(chunk [T] or [1, T]) -> [T', C]`` (the samples made final by this chunk),
    ``flush() -> [T'', C]`` (the rest, then the state is reset), ``reset()``,
    ``separate_signal(mix [T], chunk=...)``, ``latency_samples(chunk)``.

    Example
    -------
    >>> from spksep_modules.models import ConditionedSeparator, ConvTasNet
    >>> from spksep_modules.speakers.ge2e import GE2E
    >>> model = ConditionedSeparator(ConvTasNet(N=16, L=8, B=8, H=16, P=3, X=2, R=1,
    ...     causal=True), GE2E(), stack_channels=8, num_layers=2, layers_per_group=2,
    ...     film_hidden=8, causal=True, residual=True).eval()
    >>> stream = StreamingConditionedSeparator(model, 16000, refresh_seconds=0.02,
    ...                                        window_seconds=0.05)
    >>> mix = torch.randn(1600)
    >>> pieces = [stream.push(mix[i: i + 160]) for i in range(0, 1600, 160)]  # 10 ms
    >>> out = torch.cat(pieces + [stream.flush()])
    >>> want = offline_reference(model, mix, 16000, refresh_seconds=0.02, window_seconds=0.05)
    >>> out.shape, torch.allclose(out, want, atol=1e-5)
    (torch.Size([1600, 2]), True)
    >>> stream.latency_samples(160)  # a chunk, a filter less one sample, the cue's hop
    171
    """

    def __init__(self, model, sample_rate: int = None, refresh_seconds: float = 1.0,
                 window_seconds: float = 3.0):
        check_streamable(model)
        self.model = model.eval()
        self.sample_rate, self.every, self.window = _schedule(
            model, sample_rate, refresh_seconds, window_seconds)
        self.refresh_seconds, self.window_seconds = refresh_seconds, window_seconds
        self.num_spks = model.num_spks
        self.basic = StreamingSeparator(model.basic_model)
        self.passes = [_StreamingPass(self) for _ in range(model.refine_iterations)]
        self.reset()

    def reset(self):
        """Forget the signal so far (the next ``push`` starts a new one)."""
        self.basic.reset()
        for one_pass in self.passes:
            one_pass.reset()
        self.received = 0

    def latency_samples(self, chunk: int) -> int:
        """Algorithmic latency, in samples, for chunks of ``chunk`` samples: the basic
        model's, plus, with ``estimate_cue``, the hops each pass waits for its cue."""
        lag = 0
        if self.model.estimate_cue:
            L, S = self.model.kernel, self.model.stride
            lag = (math.ceil(L / S) - 1) * S * len(self.passes)
        return self.basic.latency_samples(chunk) + lag

    @torch.no_grad()
    def push(self, chunk: torch.Tensor) -> torch.Tensor:
        """Feed the next samples; returns the output samples they made final, ``[n, C]``."""
        chunk = chunk.reshape(-1).to(self.model.encoder.weight)
        self.received += chunk.shape[0]
        estimates = self.basic.push(chunk).to(chunk)
        for one_pass in self.passes:
            estimates = one_pass.feed(chunk, estimates)
        return estimates

    @torch.no_grad()
    def flush(self) -> torch.Tensor:
        """End the signal (zero-padded to whole frames, as offline); return the remaining
        output samples ``[n, C]`` and reset."""
        total = self.received
        estimates = self.basic.flush().to(self.model.encoder.weight)
        if total:
            for one_pass in self.passes:
                estimates = one_pass.finish(estimates, total)
        self.reset()
        return estimates

    @torch.no_grad()
    def separate_signal(self, mix: torch.Tensor, chunk: int = None) -> torch.Tensor:
        """A whole signal ``mix [T]`` chunk by chunk (default 10 ms) -> ``[T, C]``, equal to
        :func:`offline_reference`."""
        chunk = int(chunk or chunk_samples(self.sample_rate, 10))
        self.reset()
        mix = mix.reshape(-1)
        pieces = [self.push(mix[i: i + chunk]) for i in range(0, mix.numel(), chunk)]
        return torch.cat(pieces + [self.flush()]).float()


def make_streamer(separator, sample_rate: int, refresh_seconds: float = 1.0,
                  window_seconds: float = 3.0):
    """The streamer for ``separator``: a conditioned model streams with
    :class:`StreamingConditionedSeparator`, a Conv-TasNet with
    :class:`~spksep_modules.deploy.streaming.StreamingSeparator` (which refuses, in one line, a
    model that cannot stream).

    Example
    -------
    >>> from spksep_modules.models import ConvTasNet
    >>> model = ConvTasNet(N=16, L=8, B=8, H=16, P=3, X=2, R=1, causal=True)
    >>> type(make_streamer(model, 8000)).__name__
    'StreamingSeparator'
    """
    from spksep_modules.models import ConditionedSeparator

    if isinstance(separator, ConditionedSeparator):
        return StreamingConditionedSeparator(separator, sample_rate, refresh_seconds,
                                             window_seconds)
    return StreamingSeparator(separator)
