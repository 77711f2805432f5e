"""The speaker-conditioned separator (Sun et al., Section III-B, Fig. 3).

Pipeline, for a mixture ``mix [B, T]`` of C speakers::

    basic model (frozen Conv-TasNet)      mix -> intermediate estimates [B, T, C]
    speaker network (frozen, e.g. RawNet2) each estimate -> embedding [B, C, D]
    FiLM generator                        embedding -> scale, shift per layer and channel
    Wavesplit stack, FiLM-conditioned     mixture (+ estimate) -> final estimates [B, T, C]
    (optional recurrence)                 final estimates -> new embeddings -> stack again

Three design decisions the paper leaves open, and why we took them:

*Where the stack runs.* The stack works on the mixture's encoding by a learned encoder
(a Conv-TasNet-style filterbank, kernel L, stride L/2), predicts one mask per speaker,
and a learned decoder turns the masked encodings back into waveforms. The encoder and
decoder start as copies of the basic model's (already trained) ones and train with the
stack while the basic model itself stays frozen. With L = 16 there are 8x fewer encoder
frames than samples, so 40 dilated layers on frames cost 8x less than on raw 16 kHz
samples, and the receptive field of 4 groups of dilations 1..512 (about 8,200 frames,
4 s at 16 kHz) covers a whole training segment instead of half a second.

*How the C embeddings condition the stack.* The stack runs once per speaker (a batch of
B*C), each pass conditioned on that speaker's own embedding, concatenated with the mean
of the other speakers' embeddings (``interferer_context``). Output i therefore depends on
embedding i exactly as output j depends on embedding j: the model is
permutation-equivariant, so the outputs come out in the embeddings' order by
construction, the same weights serve any number of speakers, and each output is
conditioned on *its* speaker's individual embedding, which is the paper's point.
Wavesplit's alternative, one pass conditioned on all embeddings concatenated, costs one
pass instead of C but ties the weights to C and to an order of the embeddings that PIT
then has to untangle. The interferer mean keeps the equivariance and tells each pass
what to suppress. We pay the factor C with a narrow stack (64 channels by default):
the stack then costs well under half of the paper-size Conv-TasNet's time.

*What tells a pass which speaker to extract.* Per-speaker passes that see only the
mixture can tell the speakers apart only through their embeddings, and those can be
nearly equal: for same-gender pairs, and for non-speech signals (GE2E gave a sine and a
square tone a cosine similarity of 1.000); equal conditions give equal outputs. So by default
(``estimate_cue``) pass i also reads speaker i's current estimate (the intermediate one,
then the previous pass's), encoded by the same encoder, beside the mixture: the cue
says *which* source, the embedding says *who* it is, and the stack refines rather than
re-separates from scratch. ``estimate_cue=False`` gives the paper's literal reading
(the stack maps the mixture alone).

*Where training starts.* Read literally, the stack predicts new masks from scratch: at
initialisation its output is unrelated to the basic model's, and training must first
relearn what the basic model already does, at three times the step cost (measured on
real speech: after one epoch on a trained Conv-TasNet the final estimates were still below
the intermediate ones). With ``residual`` (the yaml's default) each pass adds a correction
to the current estimates, decoded from a real-valued mask whose last layer starts at zero:
at step 0 the model *is* its basic model, and every update can only add what the
speaker embeddings bring. ``residual=False`` keeps the literal reading.
"""

import copy

import torch
import torch.nn.functional as F
from torch import nn

from spksep_modules import SpkSepError
from spksep_modules.models.base import Separator, SeparatorOutput, as_batch
from spksep_modules.models.film import FiLM, FiLMGenerator
from spksep_modules.nnet.example_cache import ExampleCache
from spksep_modules.nnet.filterbank import (
    StreamingFilterbank,
    encode_padded,
    overlap_add_decode,
)
from spksep_modules.nnet.folding import norm_statistics, prelu_
from spksep_modules.nnet.frozen import Frozen
from spksep_modules.nnet.layers import FrameHistory, frames_affine, frames_matrix
from spksep_modules.nnet.norms import plain_norm
from spksep_modules.nnet.precision import widen, widen_under_autocast


class ConditionedLayer(nn.Module):
    """One layer of the stack: dilated conv -> norm -> FiLM -> PReLU, plus a residual.

    The norm has no affine of its own: FiLM is its (speaker-conditional) affine, as in
    conditional batch/layer norm; it keeps the 40-layer residual stack's activations at
    a steady scale. ``x [B, Ch, T]``, ``scale, shift [B, Ch]`` -> ``[B, Ch, T]``.

    The same step has two more modes, here beside it: :meth:`forward_streaming` (a causal
    layer on a stream's next frames) and :meth:`forward_folded` (no autograd: norm and
    FiLM as one in-place affine pass, ``models.fused``).

    Example
    -------
    >>> layer = ConditionedLayer(channels=8, kernel_size=3, dilation=4, causal=False)
    >>> layer(torch.randn(2, 8, 50), torch.ones(2, 8), torch.zeros(2, 8)).shape
    torch.Size([2, 8, 50])
    """

    def __init__(self, channels: int, kernel_size: int, dilation: int, causal: bool):
        super().__init__()
        self.causal = bool(causal)
        self.span = dilation * (kernel_size - 1)  # frames of left context when causal
        # 'same' length: all the padding on the left when causal, split otherwise. An even
        # split is left to the convolution itself, which saves a copy of the input.
        self.pad = (self.span, 0) if causal else (self.span // 2, self.span - self.span // 2)
        inner = 0
        if self.pad[0] == self.pad[1]:
            inner, self.pad = self.pad[0], None
        self.conv = nn.Conv1d(channels, channels, kernel_size, dilation=dilation, padding=inner)
        self.norm = plain_norm(channels, causal)
        self.film = FiLM()
        self.act = nn.PReLU()

    def forward(self, x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        y = self.conv(x if self.pad is None else F.pad(x, self.pad))
        return x + self.act(self.film(self.norm(y), scale, shift))

    def streaming_state(self) -> dict:
        """The state of :meth:`forward_streaming`: the left context, and the dilated conv
        as one matrix over its taps side by side (``[kernel * Ch, Ch]``, a copy)."""
        if not self.causal:
            raise SpkSepError("streaming: the conditioned stack is not causal")
        out_ch, in_ch, kernel = self.conv.weight.shape
        weight = self.conv.weight.permute(2, 1, 0).reshape(kernel * in_ch, out_ch)
        return dict(history=FrameHistory(self.span), weight=weight.contiguous(),
                    bias=self.conv.bias, slope=self.act.weight, eps=self.norm.eps,
                    dilation=self.conv.dilation[0], kernel=kernel, width=(out_ch,))

    def forward_streaming(self, h: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor,
                          state: dict) -> torch.Tensor:
        """:meth:`forward` of a causal layer on a stream's next frames, time-major:
        ``h [k, S, Ch]`` (S conditions), ``scale, shift [S, Ch]`` -> ``[k, S, Ch]``.

        Example
        -------
        >>> layer = ConditionedLayer(channels=4, kernel_size=3, dilation=2, causal=True)
        >>> x, scale, shift = torch.randn(2, 4, 12), torch.rand(2, 4), torch.randn(2, 4)
        >>> state = layer.streaming_state()
        >>> frames = x.permute(2, 0, 1)  # [12, 2, 4]
        >>> y = torch.cat([layer.forward_streaming(frames[i:i + 5], scale, shift, state)
        ...                for i in (0, 5, 10)])
        >>> torch.allclose(y.permute(1, 2, 0), layer(x, scale, shift), atol=1e-5)
        True
        """
        k, dilation, kernel = h.shape[0], state["dilation"], state["kernel"]
        taps = h
        if self.span:  # the kernel's taps side by side: tap p at channels p * Ch ..
            past = state["history"].append(h)
            taps = torch.cat([past[p * dilation: p * dilation + k] for p in range(kernel)], -1)
        y = frames_affine(taps.reshape(-1, taps.shape[-1]), state["weight"], state["bias"])
        y = F.layer_norm(y, state["width"], eps=state["eps"]).view(h.shape)  # conv, norm
        y = torch.addcmul(shift, y, scale)  # FiLM
        slope = state["slope"]
        if slope.numel() == 1:
            return h + F.prelu(y, slope)
        return h + torch.where(y >= 0, y, y * slope)  # one slope per channel, the last axis

    def forward_folded(self, x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor):
        """:meth:`forward` without autograd, for a non-causal layer: the gLN (per example)
        and FiLM are one per-channel affine map, applied in place, and the residual is
        added to ``x`` in place (pass a tensor the caller may overwrite)."""
        y = self.conv(x if self.pad is None else F.pad(x, self.pad))
        mean, var = norm_statistics(y)  # [B]
        gain = scale * torch.rsqrt(var + self.norm.eps)[:, None]  # [B, Ch]
        offset = shift - gain * mean[:, None]
        torch.addcmul(offset[..., None].to(y.dtype), y, gain[..., None].to(y.dtype), out=y)
        return x.add_(prelu_(y, self.act.weight))


class WavesplitStack(nn.Module):
    """Wavesplit's separation stack: FiLM-conditioned dilated convolutions.

    ``num_layers`` layers in groups of ``layers_per_group``; inside a group the dilation
    doubles from 1 (1, 2, 4, ..., 512 for groups of 10), and starts again at 1 in the
    next group. A 1x1 convolution maps ``in_channels`` to the stack's ``channels`` and
    another maps back to ``out_channels``.

    Wavesplit's stack is causal; ours is non-causal ('same' padding, half the context
    from the future) by default because separation here is offline and the basic
    Conv-TasNet is non-causal too. ``causal=True`` pads only on the left and uses a
    per-frame norm, so no output frame depends on a later input frame.

    Arguments
    ---------
    in_channels, channels, out_channels : int
        Input, internal and output widths (``out_channels`` defaults to ``in_channels``).
    num_layers, layers_per_group : int
        40 and 10 in the paper.
    kernel_size : int
        Width of each dilated convolution.
    causal : bool
        See above.

    ``forward(x [B, Cx, T], scale [B*S, num_layers, channels],
    shift [B*S, num_layers, channels], cue [B*S, in_channels - Cx, T] = None)
    -> [B*S, out_channels, T]``: each input ``x`` may be shared by S consecutive
    conditions (S = 1: one condition per input); the input projection then runs once per
    input instead of once per condition. ``cue``, one per condition, is read as if it
    were concatenated to ``x`` on the channels, without copying ``x`` S times.

    Example
    -------
    >>> stack = WavesplitStack(in_channels=16, channels=8, num_layers=4, layers_per_group=2)
    >>> x, scale, shift = torch.randn(2, 16, 50), torch.ones(6, 4, 8), torch.zeros(6, 4, 8)
    >>> stack.dilations, stack(x, scale, shift).shape  # each input shared by S = 3 conditions
    ([1, 2, 1, 2], torch.Size([6, 16, 50]))
    >>> stack(x[:, :10], scale, shift, cue=torch.randn(6, 6, 50)).shape  # 10 + 6 channels
    torch.Size([6, 16, 50])
    """

    def __init__(
        self,
        in_channels: int,
        channels: int,
        num_layers: int = 40,
        layers_per_group: int = 10,
        kernel_size: int = 3,
        out_channels: int = None,
        causal: bool = False,
    ):
        super().__init__()
        if num_layers % layers_per_group:
            raise ValueError(
                f"num_layers ({num_layers}) must be a multiple of "
                f"layers_per_group ({layers_per_group})"
            )
        self.num_layers = num_layers
        self.channels = channels
        self.causal = bool(causal)
        self.dilations = [2 ** (i % layers_per_group) for i in range(num_layers)]
        self.inp = nn.Conv1d(in_channels, channels, 1)
        self.layers = nn.ModuleList(
            ConditionedLayer(channels, kernel_size, d, causal) for d in self.dilations
        )
        self.out = nn.Conv1d(channels, out_channels or in_channels, 1)

    def forward(self, x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor,
                cue: torch.Tensor = None) -> torch.Tensor:
        if scale.shape[0] % x.shape[0]:
            raise ValueError(
                f"{scale.shape[0]} conditions cannot be shared by {x.shape[0]} inputs"
            )
        shared = scale.shape[0] // x.shape[0]
        if cue is None:
            h = self.inp(x).repeat_interleave(shared, dim=0)
        else:
            # inp(cat[x repeated, cue]) as inp_x(x), once per input, plus inp_cue(cue).
            weight = self.inp.weight
            h = widen_under_autocast(F.conv1d(cue, weight[:, x.shape[1]:]))
            h_x = F.conv1d(x, weight[:, : x.shape[1]], self.inp.bias)  # [B, Ch, T]
            h = (h.view(x.shape[0], shared, *h.shape[1:]) + h_x[:, None]).flatten(0, 1)
        # fp32 under autocast (the cue sum above already is): 40 residual sums in bf16
        # would lose what the later layers add.
        h = widen_under_autocast(h)
        for i, layer in enumerate(self.layers):
            h = layer(h, scale[:, i], shift[:, i])
        return self.out(h)

    def streaming_state(self, mix_channels: int) -> dict:
        """The state of :meth:`forward_streaming` (a causal stack only): each layer's, and
        the 1x1 convs laid out for time-major frames (the input conv split into its
        ``mix_channels`` mixture rows and the cue's)."""
        inp_t, inp_bias = frames_matrix(self.inp)
        return dict(layers=[(layer, layer.streaming_state()) for layer in self.layers],
                    inp_mix=inp_t[:mix_channels].contiguous(),
                    inp_cue=inp_t[mix_channels:].contiguous(), inp_bias=inp_bias,
                    out=frames_matrix(self.out))

    def forward_streaming(self, x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor,
                          state: dict, cue: torch.Tensor = None) -> torch.Tensor:
        """:meth:`forward` of a causal stack on a stream's next frames, time-major:
        ``x [k, Cx]`` shared by the S conditions ``scale, shift [S, num_layers, channels]``,
        ``cue [k, S, in_channels - Cx]`` (or None) -> ``[k, S, out_channels]``.

        Example
        -------
        >>> stack = WavesplitStack(in_channels=6, channels=4, num_layers=2, layers_per_group=2,
        ...                        causal=True)
        >>> x, cue = torch.randn(1, 4, 20), torch.randn(3, 2, 20)
        >>> scale, shift = torch.rand(3, 2, 4), torch.randn(3, 2, 4)
        >>> state = stack.streaming_state(mix_channels=4)
        >>> y = torch.cat([stack.forward_streaming(x[0, :, i:i + 10].T, scale, shift, state,
        ...                                        cue[..., i:i + 10].permute(2, 0, 1))
        ...                for i in (0, 10)])  # [20, 3, 6]
        >>> torch.allclose(y.permute(1, 2, 0), stack(x, scale, shift, cue), atol=1e-5)
        True
        """
        h = frames_affine(x, state["inp_mix"], state["inp_bias"])[:, None]  # [k, 1, Ch]
        if cue is None:
            h = h.expand(-1, scale.shape[0], -1)
        else:
            h = frames_affine(cue, state["inp_cue"]) + h  # [k, S, Ch]
        for (layer, layer_state), sc, sh in zip(state["layers"], scale.unbind(1), shift.unbind(1)):
            h = layer.forward_streaming(h, sc, sh, layer_state)
        return frames_affine(h, *state["out"])


class ConditionedSeparator(Separator):
    """Speaker-conditioned separation: basic model + speaker network + FiLM'd stack.

    See the module docstring for the pipeline and its design.

    Arguments
    ---------
    basic_model : Separator
        Any separator (``models.base``: ``forward(mix [B, T]) -> [B, T, C]`` with an
        ``encoder`` filterbank ``[B, 1, T] -> [B, N, F]``, kernel L, stride L/2, and a
        ``decoder`` ``[B, N, F] -> [B, 1, T']``). Its encoder and decoder are *copied* into
        the separation module, so they can train even when the basic model is frozen.
    speaker_net : nn.Module
        ``embed(wav [N, T]) -> [N, D]`` with an ``embedding_dim`` attribute (or a
        :class:`Frozen` around such a network). A bare network is wrapped in ``Frozen``
        without resampling: the mixture must then be at the network's rate; pass a
        ``Frozen(net, net_rate, input_rate)`` to resample.
        Always frozen: eval mode, no parameter gradients (gradients do flow through it to
        its input when that input needs them, e.g. in the refinement passes).
    num_spks : int
        Number C of speakers; must match the basic model's output.
    stack_channels, num_layers, layers_per_group, kernel_size, causal :
        The :class:`WavesplitStack`.
    film_hidden : int
        Hidden width of the :class:`FiLMGenerator`.
    refine_iterations : int
        K: how many times the stack runs. Pass k > 1 re-embeds the final estimates of
        pass k - 1. K = 1 is the paper's basic pipeline.
    freeze_basic_model : bool
        Keep the basic model in eval mode and out of the graph (no gradients, no
        parameter updates). False fine-tunes it together with the rest.
    interferer_context : bool
        Condition each speaker's pass on its own embedding and the mean of the others'
        (True), or on its own embedding only (False).
    estimate_cue : bool
        Give each speaker's pass that speaker's current estimate (encoded) next to the
        mixture (True, see the module docstring), or the mixture alone (False: the
        paper's literal description).
    mask_activation : str
        ``"relu"`` (Conv-TasNet's masks, unbounded above) or ``"sigmoid"``; used when
        ``residual`` is False.
    residual : bool
        Each pass *corrects* the current estimates: ``new_i = estimate_i +
        decode(M_i * enc)`` with a real-valued mask ``M_i`` whose last layer starts at
        zero, so at initialisation the model returns its basic model's estimates exactly
        and training can only add what the speaker embeddings bring. False: the paper's
        literal reading, each pass predicts new masks (``mask_activation``) from scratch,
        so training first has to relearn what the basic model already does.
    basic_cache_mb : float
        With a frozen basic model, keep up to this many MB of its estimates and their
        embeddings per training example (``nnet.example_cache``): with the data's
        ``fixed_crops`` the same segments come back every epoch and the basic model and
        the speaker network run once per segment instead of once per epoch (0: off).

    ``forward(mix [B, T]) -> SeparatorOutput``: final estimates ``[B, T, C]`` (in the
    order of the intermediate ones) with ``extras["intermediate"]``, the basic model's.

    Example
    -------
    >>> from spksep_modules.models import ConvTasNet
    >>> from spksep_modules.speakers.ge2e import load_ge2e
    >>> basic = ConvTasNet(N=16, L=8, B=8, H=16, P=3, X=2, R=1)
    >>> model = ConditionedSeparator(basic, load_ge2e(), stack_channels=8, num_layers=2,
    ...                              layers_per_group=2, film_hidden=8)
    >>> out = model(torch.randn(2, 8000))
    >>> out.shape, out.extras["intermediate"].shape
    (torch.Size([2, 8000, 2]), torch.Size([2, 8000, 2]))
    """

    RUNTIME_ARGS = ("basic_cache_mb",)

    def __init__(
        self,
        basic_model: nn.Module,
        speaker_net: nn.Module,
        num_spks: int = 2,
        stack_channels: int = 64,
        num_layers: int = 40,
        layers_per_group: int = 10,
        kernel_size: int = 3,
        causal: bool = False,
        film_hidden: int = 256,
        refine_iterations: int = 1,
        freeze_basic_model: bool = True,
        interferer_context: bool = True,
        estimate_cue: bool = True,
        mask_activation: str = "relu",
        residual: bool = False,
        basic_cache_mb: float = 0,
    ):
        super().__init__()
        if refine_iterations < 1:
            raise SpkSepError(f"refine_iterations: must be at least 1, got {refine_iterations}")
        if mask_activation not in ("relu", "sigmoid"):
            raise SpkSepError(f"mask_activation: expected relu or sigmoid, got {mask_activation!r}")
        self.num_spks = int(num_spks)
        self.refine_iterations = int(refine_iterations)
        self.freeze_basic_model = bool(freeze_basic_model)
        self.interferer_context = bool(interferer_context)
        self.estimate_cue = bool(estimate_cue)
        self.mask_activation = mask_activation
        self.residual = bool(residual)
        # A frozen basic model's estimates, and their embeddings, depend on the input alone.
        self.basic_cache = ExampleCache(basic_cache_mb) if basic_cache_mb > 0 else None

        self.basic_model = basic_model
        if self.freeze_basic_model:
            for p in self.basic_model.parameters():
                p.requires_grad_(False)
            self.basic_model.eval()

        if not isinstance(speaker_net, Frozen):
            rate = getattr(speaker_net, "sample_rate", 16000)
            speaker_net = Frozen(speaker_net, net_rate=rate, input_rate=rate)
        self.speaker_net = speaker_net
        emb_dim = getattr(speaker_net.net, "embedding_dim", None)
        if emb_dim is None:
            raise SpkSepError(
                f"speaker_net: {type(speaker_net.net).__name__} has no embedding_dim attribute"
            )
        self.embedding_dim = int(emb_dim)

        # Trainable copies of the basic model's filterbanks (see the module docstring).
        self.encoder = copy.deepcopy(basic_model.encoder)
        self.decoder = copy.deepcopy(basic_model.decoder)
        for p in list(self.encoder.parameters()) + list(self.decoder.parameters()):
            p.requires_grad_(True)
        self.kernel = self.encoder.kernel_size[0]
        self.stride = self.encoder.stride[0]
        enc_dim = self.encoder.out_channels
        if (self.decoder.kernel_size[0], self.decoder.stride[0]) != (self.kernel, self.stride):
            raise SpkSepError(
                "basic_model: encoder and decoder differ in kernel size or stride"
            )

        self.enc_norm = plain_norm(enc_dim, causal)
        cond_dim = self.embedding_dim * (2 if self.interferer_context else 1)
        self.film_generator = FiLMGenerator(
            cond_dim, num_layers, stack_channels, hidden=film_hidden
        )
        stack_in = enc_dim * (2 if self.estimate_cue else 1)
        self.stack = WavesplitStack(
            stack_in, stack_channels, num_layers, layers_per_group, kernel_size, enc_dim, causal
        )
        if self.residual:  # corrections start at exactly zero (see ``residual``)
            nn.init.zeros_(self.stack.out.weight)
            nn.init.zeros_(self.stack.out.bias)

    def train(self, mode: bool = True):
        # A frozen basic model stays in eval mode whatever the parent does.
        super().train(mode)
        if self.freeze_basic_model:
            self.basic_model.eval()
        return self

    # ----------------------------------------------------------------- pieces
    def basic_pass(self, mix: torch.Tensor):
        """``mix [B, T]`` -> the intermediate estimates ``[B, T, C]`` and their embeddings
        ``[B, C, D]``, from the cache when ``basic_cache_mb`` allows it (frozen basic model)."""

        def compute(m):
            inter = self.separate_basic(m)
            return inter, self.embed(inter)

        if self.basic_cache is None or not self.freeze_basic_model:
            return compute(mix)
        with torch.no_grad():
            return self.basic_cache(compute, mix)

    def separate_basic(self, mix: torch.Tensor) -> torch.Tensor:
        """The basic model: ``mix [B, T]`` -> intermediate estimates ``[B, T, C]``."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_basic_model):
            return self.basic_model(mix).as_subclass(torch.Tensor)

    def embed(self, estimates: torch.Tensor) -> torch.Tensor:
        """``estimates [B, T, C]`` -> unit-norm speaker embeddings ``[B, C, D]``.

        One batched call on the B*C waveforms. Unit norm: the speaker networks' output
        scale is arbitrary (and follows the estimate's loudness for some), while the
        identity is in the direction.
        """
        B, T, C = estimates.shape
        waves = estimates.transpose(1, 2).reshape(B * C, T)
        emb = self.speaker_net.embed(waves).reshape(B, C, -1)
        # fp32 under mixed precision: the networks' scale is arbitrary and an fp16 norm
        # overflows past 65504.
        return F.normalize(widen(emb), dim=-1)

    def conditions(self, emb: torch.Tensor) -> torch.Tensor:
        """``emb [B, C, D]`` -> one conditioning vector per speaker ``[B, C, D or 2D]``."""
        if not self.interferer_context:
            return emb
        C = emb.shape[1]
        if C == 1:
            others = torch.zeros_like(emb)
        else:
            others = (emb.sum(dim=1, keepdim=True) - emb) / (C - 1)
        return torch.cat([emb, others], dim=-1)

    def encode(self, mix: torch.Tensor) -> torch.Tensor:
        """``mix [B, T]`` -> encoding ``[B, N, F]`` by the separation module's encoder.

        The mixture is zero-padded at the end so that the frames tile it exactly and the
        decoder can give back every sample.
        """
        return encode_padded(self.encoder, mix)

    def decode(self, rep: torch.Tensor, length: int) -> torch.Tensor:
        """``rep [B', N, F]`` -> waveforms ``[B', length]`` by the copied decoder.

        Computes what ``self.decoder`` (a transposed conv N -> 1) computes, with Conv-TasNet's
        matrix product + overlap-add (``overlap_add_decode``).
        """
        wav = overlap_add_decode(rep, self.decoder.weight, self.stride)[:, :length]
        if self.decoder.bias is not None:
            wav = wav + self.decoder.bias
        return wav

    def separate_conditioned(self, enc: torch.Tensor, emb: torch.Tensor,
                             estimates: torch.Tensor) -> torch.Tensor:
        """One pass of the separation module.

        ``enc [B, N, F]`` (the mixture's encoding), ``emb [B, C, D]`` and the current
        ``estimates [B, T, C]`` (read only with ``estimate_cue``) -> new estimates
        ``[B, T, C]``, output i conditioned on embedding i (and estimate i).
        """
        return self.stack_pass(enc, *self.film(emb), estimates)

    def film(self, emb: torch.Tensor):
        """``emb [B, C, D]`` -> FiLM ``(scale, shift)``, ``[B*C, num_layers, channels]`` each:
        speaker i's own embedding (and the others' mean) for pass i."""
        B, C, _ = emb.shape
        return self.film_generator(self.conditions(emb).reshape(B * C, -1))

    def stack_pass(self, enc: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor,
                   estimates: torch.Tensor) -> torch.Tensor:
        """:meth:`separate_conditioned` from the FiLM parameters: ``scale, shift
        [B*C, num_layers, channels]`` (or ``[B*C, num_layers, channels, F]``, one per frame,
        for embeddings that change over time) -> new estimates ``[B, T, C]``."""
        B, length, C = estimates.shape
        x = self.enc_norm(enc)  # [B, N, F], shared by the C passes
        cue = None
        if self.estimate_cue:
            cue = self.enc_norm(self.encode(estimates.transpose(1, 2).reshape(B * C, length)))
        mask = self.mask(self.stack(x, scale, shift, cue))  # [B*C, N, F]
        masked = mask.view(B, C, *enc.shape[1:]) * enc.unsqueeze(1)  # [B, C, N, F]
        wav = self.decode(masked.flatten(0, 1), length)  # [B*C, length]
        return self.combine(estimates, wav.reshape(B, C, length).transpose(1, 2))

    def mask(self, score: torch.Tensor) -> torch.Tensor:
        """The stack's output -> what multiplies the encoding: a real-valued correction
        mask with ``residual``, else the ``mask_activation`` of it."""
        if self.residual:
            return score
        return torch.relu(score) if self.mask_activation == "relu" else torch.sigmoid(score)

    def combine(self, estimates: torch.Tensor, decoded: torch.Tensor) -> torch.Tensor:
        """The pass's output from its decoded waveforms (any layout, the same as
        ``estimates``): a correction of the estimates with ``residual``, else the output."""
        return estimates + decoded if self.residual else decoded

    # -------------------------------------------------------------- streaming
    def streaming_state(self) -> dict:
        """The state of one pass of :meth:`forward_streaming` (a causal model only): the
        stack's layers' left context and the decoder's overlap-add tail."""
        if not self.stack.causal:
            raise SpkSepError("streaming: the conditioned model is not causal "
                              "(train it with causal: True on a causal basic model)")
        return dict(stack=self.stack.streaming_state(self.encoder.out_channels),
                    filterbank=StreamingFilterbank(self.encoder, self.decoder))

    def forward_streaming(self, mix: torch.Tensor, cue: torch.Tensor, estimates: torch.Tensor,
                          scale: torch.Tensor, shift: torch.Tensor, state: dict) -> torch.Tensor:
        """One pass of :meth:`stack_pass` on a stream's next k frames, time-major:
        ``mix [(k - 1) * stride + L]`` (the frames' samples), ``cue [(k - 1) * stride + L,
        C]`` (the estimates over the same samples; read with ``estimate_cue``),
        ``estimates [k * stride, C]`` (what ``residual`` corrects), ``scale, shift [C,
        num_layers, channels]`` (the current embeddings') -> the ``k * stride`` output
        samples made final ``[k * stride, C]``; the overlap-add tail waits in ``state``.
        The buffering and the embeddings' refresh are ``deploy.streaming_conditioned``'s.
        """
        bank = state["filterbank"]
        enc = bank.encode(mix)  # [k, N]
        x = F.layer_norm(enc, enc.shape[-1:], eps=self.enc_norm.eps)  # per-frame norm
        cue_frames = None
        if self.estimate_cue:
            cue_enc = bank.encode(cue)  # [k, C, N]
            cue_frames = F.layer_norm(cue_enc, cue_enc.shape[-1:], eps=self.enc_norm.eps)
        mask = self.mask(self.stack.forward_streaming(x, scale, shift, state["stack"],
                                                      cue_frames))  # [k, C, N]
        return self.combine(estimates, bank.decode(mask * enc[:, None]).T)

    # ---------------------------------------------------------------- forward
    def forward(self, mix: torch.Tensor) -> SeparatorOutput:
        """``mix [B, T]`` (or ``[T]``) -> estimates ``[B, T, C]`` with
        ``extras["intermediate"]``."""
        mix = as_batch(mix, "ConditionedSeparator")
        intermediate, first_emb = self.basic_pass(mix)
        if intermediate.shape[-1] != self.num_spks:
            raise SpkSepError(
                f"basic_model: gives {intermediate.shape[-1]} sources, "
                f"but num_spks is {self.num_spks}"
            )
        enc = self.encode(mix)
        estimates = intermediate
        for k in range(self.refine_iterations):
            emb = first_emb if k == 0 else self.embed(estimates)
            estimates = self.separate_conditioned(enc, emb, estimates)
        return SeparatorOutput.of(estimates, intermediate=intermediate)
