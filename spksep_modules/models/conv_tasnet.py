"""Conv-TasNet (Luo & Mesgarani, 2019).

A learned encoder (1-D conv + ReLU) turns the mixture into a non-negative representation;
a temporal convolutional network (TCN) estimates one multiplicative mask per speaker on
it; a learned decoder (transposed 1-D conv) turns each masked representation back into a
waveform. Sizes use the paper's names (N, L, B, H, P, X, R); skip channels equal B, as in
Asteroid. Layouts follow SpeechBrain: ``[batch, time]`` in, ``[batch, time, num_spks]`` out.

This file is the model only. Its layers are in ``spksep_modules.nnet``; how they run fast
is a separate layer, the layers' *forms* (``nnet.forms.as_form``): ``cpu_kernels=True``
(the default) switches the TCN's PReLU+gLN and depthwise conv to hand-written CPU kernels
(``nnet.cpu_kernels``), and ``as_form(model, "inference")`` gives the no-autograd form that
folds every gLN into the convolution after it (``models.fused``). Both compute the same
function. Streaming is a mode of the layers themselves (``forward_streaming``).
"""

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint as activation_checkpoint

from spksep_modules import SpkSepError
from spksep_modules.models.base import Separator, SeparatorOutput, as_batch
from spksep_modules.nnet.forms import as_form
from spksep_modules.nnet.filterbank import StreamingFilterbank, encode_padded, overlap_add_decode
from spksep_modules.nnet.layers import (
    CausalDepthwiseConv1d,
    DepthwiseConv1d,
    PReLUFrameNorm,
    PReLUGLN,
    frames_affine,
    frames_matrix,
)
from spksep_modules.nnet.norms import FrameLayerNorm, GlobalLayerNorm
from spksep_modules.nnet.precision import native_bf16_cpu, widen_under_autocast

MASK_ACTIVATIONS = ("relu", "sigmoid", "softmax")


class TCNBlock(nn.Module):
    """1x1 conv B->H, PReLU, gLN, dilated depthwise conv, PReLU, gLN, 1x1 convs H->B.

    The residual and skip 1x1 convs share their input, so they are one conv with stacked
    outputs (one matrix product). A block whose residual output nothing reads (the last,
    with skips) has none, so every parameter gets a gradient and DDP needs no
    ``find_unused_parameters``.

    Shapes: ``[batch, B, frames] -> (residual or None, skip or None)``, each
    ``[batch, B, frames]``.

    Example
    -------
    >>> res, skip = TCNBlock(B=8, H=16, P=3, dilation=2)(torch.randn(2, 8, 50))
    >>> res.shape, skip.shape
    (torch.Size([2, 8, 50]), torch.Size([2, 8, 50]))
    """

    def __init__(self, B, H, P, dilation, residual=True, skip=True, bias=True, causal=False):
        super().__init__()
        if not (residual or skip):
            raise ValueError("a TCN block needs a residual or a skip output")
        act_norm = PReLUFrameNorm if causal else PReLUGLN
        self.in_conv = nn.Conv1d(B, H, 1, bias=bias)
        self.act_norm1 = act_norm(H)
        self.dconv = (CausalDepthwiseConv1d if causal else DepthwiseConv1d)(H, P, dilation,
                                                                             bias=bias)
        self.act_norm2 = act_norm(H)
        self.out_splits = [B] * (int(residual) + int(skip))
        self.out_conv = nn.Conv1d(H, sum(self.out_splits), 1, bias=bias)
        self.has_residual, self.has_skip = residual, skip

    def split_outputs(self, out):
        """The stacked 1x1 conv's output -> ``(residual or None, skip or None)``."""
        outs = list(torch.split(out, self.out_splits, dim=1))
        res = outs.pop(0) if self.has_residual else None
        return res, (outs.pop(0) if self.has_skip else None)

    def forward(self, x):
        y = self.act_norm2(self.dconv(self.act_norm1(self.in_conv(x))))
        return self.split_outputs(self.out_conv(y))

    def streaming_state(self) -> dict:
        """The state of :meth:`forward_streaming` (a causal block only)."""
        return dict(inp=frames_matrix(self.in_conv), out=frames_matrix(self.out_conv),
                    act_norm1=self.act_norm1.streaming_state(), dconv=self.dconv.streaming_state(),
                    act_norm2=self.act_norm2.streaming_state(), dconv_layer=self.dconv)

    def forward_streaming(self, x, state):
        """:meth:`forward` of a causal block on the next frames, time-major ``[k, B]``
        (the layers' streaming mode, ``nnet.layers``)."""
        y = PReLUFrameNorm.forward_streaming(frames_affine(x, *state["inp"]), state["act_norm1"])
        y = state["dconv_layer"].forward_streaming(y, state["dconv"])
        y = PReLUFrameNorm.forward_streaming(y, state["act_norm2"])
        out = frames_affine(y, *state["out"])  # [k, (B residual) + (B skip)]
        # split_outputs' rule as two slices: torch.split costs more than the arithmetic on
        # a chunk's ~10 frames (measured with the streaming RTF, bench/NOTES.md)
        if not (self.has_residual and self.has_skip):
            return (out, None) if self.has_residual else (None, out)
        B = out.shape[1] // 2
        return out[:, :B], out[:, B:]


class TCN(nn.Module):
    """The mask estimator: gLN, bottleneck, X*R blocks (dilation ``2**x`` in each repeat),
    PReLU, 1x1 conv to C*N mask channels, mask activation.

    ``skip=True`` sums the blocks' skip outputs to feed the masks (paper, Asteroid);
    ``False`` feeds the last block's residual stream (SpeechBrain's MaskNet).
    ``checkpoint=True`` recomputes each block in the backward pass (less memory, ~10% time).
    ``causal=True``: per-frame layer norms instead of gLN and left-only depthwise padding,
    so no output frame depends on a later input frame.

    Shapes: ``[batch, N, frames] -> [batch, C, N, frames]``.

    Example
    -------
    >>> TCN(N=16, B=8, H=16, P=3, X=2, R=1, num_spks=2)(torch.rand(2, 16, 50)).shape
    torch.Size([2, 2, 16, 50])
    """

    def __init__(self, N, B, H, P, X, R, num_spks, mask_act="relu", skip=True, bias=True,
                 checkpoint=False, causal=False):
        super().__init__()
        if mask_act not in MASK_ACTIVATIONS:
            raise SpkSepError(
                f"mask_act: unknown mask activation {mask_act!r}, "
                f"expected one of {', '.join(MASK_ACTIVATIONS)}"
            )
        self.N, self.num_spks, self.mask_act = N, num_spks, mask_act
        self.skip, self.checkpoint, self.causal = skip, checkpoint, causal
        self.in_norm = FrameLayerNorm(N) if causal else GlobalLayerNorm(N)
        self.bottleneck = nn.Conv1d(N, B, 1, bias=bias)
        last = X * R - 1
        self.blocks = nn.ModuleList(
            TCNBlock(B, H, P, dilation=2**x, residual=not (skip and r * X + x == last),
                     skip=skip, bias=bias, causal=causal)
            for r in range(R)
            for x in range(X)
        )
        self.out_act = nn.PReLU()
        self.mask_conv = nn.Conv1d(B, num_spks * N, 1, bias=False)

    def forward(self, enc):
        # The residual stream and the skip sum are fp32 under mixed precision (as in the
        # inference form, models.fused): 24 sums in bf16 would lose what later blocks add.
        x = widen_under_autocast(self.bottleneck(self.in_norm(enc)))
        skip_sum = None
        for block in self.blocks:
            if self.checkpoint and torch.is_grad_enabled():
                res, skp = activation_checkpoint(block, x, use_reentrant=False)
            else:
                res, skp = block(x)
            if skp is not None:
                skip_sum = widen_under_autocast(skp) if skip_sum is None else skip_sum + skp
            if res is not None:
                x = x + res
        feats = skip_sum if self.skip else x
        return self.mask(self.mask_conv(self.out_act(feats)))

    def streaming_state(self) -> dict:
        """The state of :meth:`forward_streaming`: each block's, and the 1x1 convs'
        weights laid out for time-major frames. Causal TCNs only."""
        if not self.causal:
            raise SpkSepError("streaming: the model is not causal (train it with causal: True)")
        norm = self.in_norm
        return dict(blocks=[(block, block.streaming_state()) for block in self.blocks],
                    in_norm=(norm.shape, norm.gamma, norm.beta, norm.eps),
                    bottleneck=frames_matrix(self.bottleneck), out_act=self.out_act.weight,
                    mask=frames_matrix(self.mask_conv))

    def forward_streaming(self, enc, state):
        """:meth:`forward` on the next encoder frames of a stream, time-major: ``enc [k, N]``
        -> masks ``[k, C, N]``, with ``state`` from :meth:`streaming_state` carrying each
        block's left context from one call to the next.

        Example
        -------
        >>> tcn = TCN(N=16, B=8, H=16, P=3, X=2, R=1, num_spks=2, causal=True)
        >>> enc, state = torch.rand(1, 16, 30), tcn.streaming_state()
        >>> masks = torch.cat([tcn.forward_streaming(enc[0, :, i:i + 10].T, state)
        ...                    for i in (0, 10, 20)])  # [30, C, N]
        >>> torch.allclose(masks.permute(1, 2, 0), tcn(enc)[0], atol=1e-5)
        True
        """
        x = frames_affine(F.layer_norm(enc, *state["in_norm"]), *state["bottleneck"])
        skip_sum = None
        for block, block_state in state["blocks"]:
            res, skp = block.forward_streaming(x, block_state)
            if skp is not None:
                skip_sum = skp.clone() if skip_sum is None else skip_sum.add_(skp)
            if res is not None:
                x = x + res
        feats = skip_sum if self.skip else x
        score = frames_affine(F.prelu(feats, state["out_act"]), *state["mask"])  # [k, C*N]
        return self.mask(score.T[None])[0].permute(2, 0, 1)  # the same mask activation

    def mask(self, score):
        """Mask activation of ``score [batch, C * N, frames]`` -> ``[batch, C, N, frames]``."""
        score = score.view(score.shape[0], self.num_spks, self.N, score.shape[-1])
        # In place: the conv's backward does not need its output, and these activations'
        # backward reads only their result. Saves one [batch, C, N, frames] tensor.
        if self.mask_act == "relu":
            return score.relu_()
        if self.mask_act == "sigmoid":
            return score.sigmoid_()
        return torch.softmax(score, dim=1)

    def receptive_field(self):
        """Receptive field of the block stack, in encoder frames."""
        return 1 + sum((b.dconv.kernel_size[0] - 1) * b.dconv.dilation[0] for b in self.blocks)


class ConvTasNet(Separator):
    """Conv-TasNet: encoder, TCN masks, decoder.

    Arguments
    ---------
    N, L, B, H, P, X, R : int
        Encoder filters (512), filter length (16; hop ``L // 2``), bottleneck and skip
        channels (128), hidden channels (512), depthwise kernel (3), blocks per repeat (8),
        repeats (3).
    num_spks : int
        Number of output sources.
    mask_act : str
        "relu" (paper), "sigmoid" or "softmax".
    skip : bool
        The paper's skip-connection path (True); False gives SpeechBrain's MaskNet shape.
    bias : bool
        Bias on the TCN's convolutions (Asteroid: True; SpeechBrain: False).
    checkpoint : bool
        Activation checkpointing per TCN block (saves memory, costs time).
    cpu_kernels : bool
        Hand-written CPU kernels for the TCN layers (``nnet.cpu_kernels``; faster and
        leaner on CPU, the same function). They compute gLN and 'same' padding: a causal
        model runs the plain layers whatever this says.
    causal : bool
        Causal TCN (per-frame layer norms, left-only padding): output sample t depends
        on input samples up to ``t + L - 1`` only, so ``streaming.StreamingSeparator``
        can run it chunk by chunk. Same state-dict keys as the non-causal model.
    bf16_products : bool or "auto"
        Mixed precision for CPU training: the TCN's 1x1 convolutions compute their matrix
        products in bf16 in training steps (``nnet.cpu_kernels.BF16PointwiseConv1d``;
        everything else, evaluation and inference stay fp32). Pays on a CPU with AMX or
        AVX512-BF16 (0.54x the fp32 kernels' 0.77x of the plain step on an AMD EPYC with
        AVX512-BF16) and costs 3.7x where oneDNN emulates bf16 (AVX2):
        ``"auto"`` switches it on only where it is native (``nnet.precision.native_bf16_cpu``,
        which honours ``ONEDNN_MAX_CPU_ISA``). Off by default (it changes the numerics).

    Example
    -------
    >>> model = ConvTasNet(N=16, L=8, B=8, H=16, P=3, X=2, R=1)
    >>> model(torch.randn(2, 1001)).shape
    torch.Size([2, 1001, 2])
    """

    RUNTIME_ARGS = ("checkpoint", "cpu_kernels", "bf16_products")

    def __init__(self, N=512, L=16, B=128, H=512, P=3, X=8, R=3, num_spks=2, mask_act="relu",
                 skip=True, bias=True, checkpoint=False, cpu_kernels=True, causal=False,
                 bf16_products=False):
        super().__init__()
        if L < 2:
            raise SpkSepError(f"L: filter length must be at least 2, got {L}")
        self.N, self.L, self.stride, self.num_spks = N, L, L // 2, num_spks
        self.causal = bool(causal)
        self.encoder = nn.Conv1d(1, N, L, stride=self.stride, bias=False)
        self.separator = TCN(N, B, H, P, X, R, num_spks, mask_act, skip, bias, checkpoint,
                             self.causal)
        self.decoder = nn.ConvTranspose1d(N, 1, L, stride=self.stride, bias=False)
        if bf16_products == "auto":  # only where bf16 products are native (see above)
            bf16_products = native_bf16_cpu()
        elif not isinstance(bf16_products, bool):
            raise SpkSepError(f"bf16_products: expected True, False or auto, got {bf16_products!r}")
        as_form(self, *(["cpu_kernels"] if cpu_kernels else []),
                *(["bf16_products"] if bf16_products else []))

    def encode(self, mix):
        """``[batch, time] -> [batch, N, frames]`` (input right-padded with zeros so the
        frames tile it)."""
        return encode_padded(self.encoder, mix)

    def decode(self, src_w, length):
        """``[batch, C, N, frames] -> [batch, length, C]``: the decoder's transposed conv
        (as a matrix product plus overlap-add) on every source, padding cut."""
        batch, C, N, frames = src_w.shape
        wav = overlap_add_decode(src_w.reshape(batch * C, N, frames), self.decoder.weight,
                                 self.stride)
        return wav.view(batch, C, -1)[..., :length].transpose(1, 2)

    def forward(self, mix):
        """Separate: ``[batch, time]`` (or ``[time]``) -> estimates ``[batch, time, C]``."""
        mix = as_batch(mix, "ConvTasNet")
        enc = self.encode(mix)
        src_w = self.separator(enc) * enc.unsqueeze(1)
        return SeparatorOutput.of(self.decode(src_w, mix.shape[-1]))

    def streaming_state(self) -> dict:
        """The state of :meth:`forward_streaming` (a causal model only): the TCN's and the
        filterbank's."""
        return dict(tcn=self.separator.streaming_state(),
                    filterbank=StreamingFilterbank(self.encoder, self.decoder))

    def forward_streaming(self, samples, state):
        """:meth:`forward` on a stream: ``samples [n]``, the input of the next k whole
        frames (``n = (k - 1) * stride + L``, starting at frame boundary) -> the k * stride
        output samples they make final, ``[C, k * stride]``; the rest of the last frames'
        overlap-add waits in ``state`` (``state["filterbank"].flush()`` gives it at the
        end). The buffering of chunks into frames is ``deploy.streaming``'s.

        Example
        -------
        >>> model = ConvTasNet(N=16, L=8, B=8, H=16, P=3, X=2, R=1, causal=True).eval()
        >>> mix, state = torch.randn(804), model.streaming_state()  # 200 frames of hop 4
        >>> with torch.no_grad():
        ...     out = [model.forward_streaming(mix[i: i + 404], state) for i in (0, 400)]
        ...     out = torch.cat(out + [state["filterbank"].flush()], dim=1)
        ...     torch.allclose(out.T, model(mix)[0], atol=1e-5)
        True
        """
        bank = state["filterbank"]
        enc = bank.encode(samples)  # [k, N]
        return bank.decode(self.separator.forward_streaming(enc, state["tcn"]) * enc[:, None])
