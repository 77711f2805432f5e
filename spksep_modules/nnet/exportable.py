"""Export-only variants of the speaker networks (and of the group norms): the same
function, in operations that a trace keeps general.

``torch.jit.trace`` (and the ONNX exporter, which traces too) records tensor operations
and freezes every Python value as a constant. The speaker networks inside a conditioned
separator have three things a trace cannot keep general:

* complex STFTs (GE2E's mel front end, SpeechBrain's ``Fbank``), which the ONNX exporter
  refuses: here the STFT is a strided ``conv1d`` with fixed real DFT kernels;
* window counts and paddings computed in Python from the input's length (GE2E's 1.6 s
  partials, RawNet2's windows and its tiling of short inputs): here index tensors built
  from the traced length, so a file traced on 0.5 s works at 3 s;
* SpeechBrain's length masks, whose batch size is a Python ``len()``: a speaker network
  always embeds whole signals, which need no mask.

One more swap is about precision, not generality: onnxruntime sums a float32 reduction
over several axes in one long run, so a global layer norm over a paper-size encoding (512
channels x 20,000 frames for 10 s) came out 3e-4 off in ONNX (PyTorch's ``group_norm``:
1e-7). In an ONNX export the group norms reduce over frames, then over channels
(:func:`group_norm_by_rows`).

:func:`make_exportable` swaps these modules' classes in place (as ``use_cpu_kernels``
does): weights, buffers and state-dict keys stay as they are (the DFT kernels are
non-persistent buffers). It is meant for the copy that ``export.exportable`` makes; the
training code keeps the plain classes (an FFT is cheaper than the DFT convolution, and
GE2E's LSTM must stay in training mode for cuDNN's backward).
"""

import math

import torch
import torch.nn.functional as F
from speechbrain.lobes.models.ECAPA_TDNN import AttentiveStatisticsPooling
from speechbrain.processing.features import STFT
from torch import nn

from spksep_modules.nnet.norms import GlobalLayerNorm
from spksep_modules.speakers.ecapa import EcapaSpeakerNet
from spksep_modules.speakers.ge2e import GE2E, HOP, PARTIAL_FRAMES, SAMPLE_RATE, GE2EFrontEnd
from spksep_modules.speakers.rawnet2 import RawNet2


def dft_kernels(window: torch.Tensor, n_fft: int, onesided: bool = True) -> torch.Tensor:
    """``conv1d`` weights ``[2 * bins, 1, n_fft]`` that compute ``torch.stft``'s frames:
    first the real parts of the ``bins`` frequencies, then the imaginary parts.

    A window shorter than ``n_fft`` is zero-padded on both sides, as ``torch.stft`` does.
    Computed in float64 (the angle reduced modulo ``n_fft`` first) and rounded once.

    Example
    -------
    >>> dft_kernels(torch.hann_window(8), 8).shape  # 5 bins: 5 real, 5 imaginary rows
    torch.Size([10, 1, 8])
    """
    window = window.detach().to(torch.float64)
    left = (n_fft - window.shape[-1]) // 2
    window = F.pad(window, (left, n_fft - window.shape[-1] - left))
    bins = n_fft // 2 + 1 if onesided else n_fft
    n = torch.arange(n_fft, dtype=torch.int64)
    k = torch.arange(bins, dtype=torch.int64)
    angle = 2 * math.pi * ((k[:, None] * n[None, :]) % n_fft).to(torch.float64) / n_fft
    kernels = torch.cat([torch.cos(angle), -torch.sin(angle)]) * window
    return kernels.to(torch.float32).unsqueeze(1)


def conv_stft(wav: torch.Tensor, kernels: torch.Tensor, hop: int, center: bool = True,
              pad_mode: str = "constant"):
    """``torch.stft(wav, ...)`` of ``wav [batch, time]`` as ``(real, imag)``, each
    ``[batch, bins, frames]``, with kernels from :func:`dft_kernels`.

    Example
    -------
    >>> wav, window = torch.randn(2, 1000), torch.hann_window(64)
    >>> re, im = conv_stft(wav, dft_kernels(window, 64), hop=16)
    >>> want = torch.stft(wav, 64, 16, window=window, center=True, pad_mode="constant",
    ...                   return_complex=True)
    >>> bool(torch.allclose(torch.complex(re, im), want, atol=1e-4))
    True
    """
    x = wav.unsqueeze(1)
    n_fft = kernels.shape[-1]
    if center:
        x = F.pad(x, (n_fft // 2, n_fft // 2), mode=pad_mode)
    out = F.conv1d(x, kernels.to(x.dtype), stride=hop)
    bins = kernels.shape[0] // 2
    return out[:, :bins], out[:, bins:]


def group_norm_by_rows(x: torch.Tensor, groups: int, weight=None, bias=None,
                       eps: float = 1e-5) -> torch.Tensor:
    """``F.group_norm`` of ``x [batch, C, ...]`` with each statistic taken in two steps:
    over each channel's own values first, then over the channels of a group.

    onnxruntime sums a reduction over several axes in one long float32 run (a gLN over
    512 x 20,000 values came out 3e-4 off); its reductions over the last axis, and the
    short ones over channels, stay within 1e-6 (measured), at about the same speed.

    Example
    -------
    >>> x = torch.randn(2, 8, 50) + 3
    >>> bool(torch.allclose(group_norm_by_rows(x, 2), F.group_norm(x, 2), atol=1e-5))
    True
    """
    rows = x.reshape(x.shape[0], groups, x.shape[1] // groups, -1)
    mean = rows.mean(-1, keepdim=True).mean(-2, keepdim=True)
    centred = rows - mean
    var = centred.pow(2).mean(-1, keepdim=True).mean(-2, keepdim=True)
    y = (centred * torch.rsqrt(var + eps)).reshape(x.shape)
    per_channel = (1, -1) + (1,) * (x.dim() - 2)
    if weight is not None:
        y = y * weight.view(per_channel)
    if bias is not None:
        y = y + bias.view(per_channel)
    return y


class _Swapped:
    """Mixin of the export variants: ``swap(module)`` turns an instance of the plain class
    into the variant in place, then ``_prepare`` adds what the variant needs (buffers that
    stay out of the state dict)."""

    @classmethod
    def swap(cls, module: nn.Module) -> nn.Module:
        module.__class__ = cls
        module._prepare()
        return module

    def _prepare(self) -> None:
        pass


def _length(wav: torch.Tensor) -> torch.Tensor:
    # A 0-d tensor in eager mode, the traced size under torch.jit.trace: arithmetic on it
    # stays in the graph, where a Python int would be frozen.
    return torch.as_tensor(wav.shape[-1])


class ExportableGlobalLayerNorm(_Swapped, GlobalLayerNorm):
    """:class:`GlobalLayerNorm` with :func:`group_norm_by_rows` in an ONNX export (see the
    module docstring); a TorchScript trace keeps ``group_norm``, accurate already.

    Example
    -------
    >>> norm = ExportableGlobalLayerNorm.swap(GlobalLayerNorm(4))
    >>> x = torch.randn(2, 4, 30)
    >>> bool(torch.allclose(norm(x), F.group_norm(x, 1, eps=1e-8), atol=1e-5))
    True
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.onnx.is_in_onnx_export():
            return super().forward(x)
        return group_norm_by_rows(x, 1, self.gamma, self.beta, self.eps)


class ExportableGroupNorm(_Swapped, nn.GroupNorm):
    """``nn.GroupNorm`` (the conditioned stack's gLN) with :func:`group_norm_by_rows` in an
    ONNX export, as :class:`ExportableGlobalLayerNorm`.

    Example
    -------
    >>> norm = ExportableGroupNorm.swap(nn.GroupNorm(1, 4, affine=False))
    >>> type(norm).__name__, tuple(norm(torch.randn(2, 4, 30)).shape)
    ('ExportableGroupNorm', (2, 4, 30))
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.onnx.is_in_onnx_export():
            return super().forward(x)
        return group_norm_by_rows(x, self.num_groups, self.weight, self.bias, self.eps)


class ExportableGE2EFrontEnd(_Swapped, GE2EFrontEnd):
    """:class:`GE2EFrontEnd` with its STFT as a convolution (ONNX has no complex STFT).

    Example
    -------
    >>> plain = GE2EFrontEnd()
    >>> wav = torch.randn(2, 4000)
    >>> want = plain(wav)
    >>> got = ExportableGE2EFrontEnd.swap(plain)(wav)
    >>> bool((got - want).abs().max() < 1e-5 * want.abs().max())
    True
    """

    def _prepare(self) -> None:
        self.register_buffer("dft", dft_kernels(self.window, self.n_fft), persistent=False)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        re, im = conv_stft(wav, self.dft, self.hop, center=True, pad_mode="constant")
        power = re.pow(2) + im.pow(2)  # [batch, freqs, frames]
        return torch.matmul(power.transpose(1, 2), self.fbank.to(power.dtype))


class ExportableGE2E(_Swapped, GE2E):
    """:class:`GE2E` whose ``embed`` cuts its partials with tensor operations.

    The partial count and the last partial's coverage test of ``partial_starts`` are
    computed from the traced length. Instead of padding to the end of the last partial
    (an amount only Python knows), the audio is padded by a constant 1.6 s + n_fft / 2,
    more than any partial needs: a frame only reads samples up to 200 past its partial's
    end, and those are zeros in both versions, so the frames used are the same.

    Example
    -------
    >>> plain = GE2E().eval()
    >>> wav = torch.randn(2, 36000)  # 2.25 s: two partials
    >>> want = plain.embed(wav)
    >>> got = ExportableGE2E.swap(plain).embed(wav)
    >>> bool((got - want).abs().max() < 1e-5)
    True
    """

    def train(self, mode: bool = True):
        # The plain class keeps its LSTM in training mode for cuDNN's backward; an export
        # needs no gradients, and the ONNX exporter wants the whole graph in eval mode.
        return nn.Module.train(self, mode)

    def embed(self, wav: torch.Tensor) -> torch.Tensor:
        self._check(wav)
        step = int(round(SAMPLE_RATE / self.rate / HOP))
        n = _length(wav)
        frames = 1 + torch.div(n, HOP, rounding_mode="floor")
        upper = (frames - PARTIAL_FRAMES + step + 1).clamp(min=1)
        count = torch.div(upper + step - 1, step, rounding_mode="floor")
        # The last partial is dropped when less than min_coverage of it is real audio,
        # unless it is the only one (float64: the same test as partial_starts's).
        coverage = (n - (count - 1) * step * HOP).to(torch.float64) / (PARTIAL_FRAMES * HOP)
        count = count - ((coverage < self.min_coverage) & (count > 1)).to(count.dtype)
        starts = torch.arange(count) * step
        index = (starts[:, None] + torch.arange(PARTIAL_FRAMES)).to(wav.device)

        padded = F.pad(wav, (0, PARTIAL_FRAMES * HOP + self.mel.n_fft // 2))
        mels = self.mel(padded)[:, index]  # [batch, partials, 160, 40]
        partials = self._embed_partials(mels.flatten(0, 1))
        partials = partials.view(wav.shape[0], -1, partials.shape[-1])
        return F.normalize(partials.mean(dim=1), dim=-1)


class ExportableRawNet2(_Swapped, RawNet2):
    """:class:`RawNet2` whose ``embed`` tiles and windows with tensor operations.

    A signal shorter than ``window`` is tiled up to it by indexing with
    ``arange(max(length, window)) % length`` (the identity for longer signals); the
    windows start every ``hop`` samples, the last one clamped to end on the last sample,
    which is ``window_starts``'s rule.

    Example
    -------
    >>> plain = RawNet2(window=2187, hop=1000, sinc_filters=4, sinc_length=11,
    ...                 block_channels=(4, 8), gru_units=8, embedding_dim=6).eval()
    >>> wav = torch.randn(2, 5000)
    >>> want = [plain.embed(wav), plain.embed(wav[:, :900])]
    >>> net = ExportableRawNet2.swap(plain)
    >>> [bool(torch.allclose(g, w, atol=1e-6)) for g, w in zip([net.embed(wav),
    ...                                                         net.embed(wav[:, :900])], want)]
    [True, True]
    """

    def embed(self, wav: torch.Tensor) -> torch.Tensor:
        if wav.dim() != 2:
            raise ValueError(f"RawNet2.embed expects [batch, time] waveforms, got "
                             f"{tuple(wav.shape)}")
        n = _length(wav)
        total = n.clamp(min=self.window)
        wav = wav[:, (torch.arange(total) % n).to(wav.device)]
        count = torch.div(total - self.window + self.hop - 1, self.hop,
                          rounding_mode="floor") + 1
        starts = torch.minimum(torch.arange(count) * self.hop, total - self.window)
        index = (starts[:, None] + torch.arange(self.window)).to(wav.device)
        emb = self(wav[:, index].reshape(-1, self.window))
        return emb.view(wav.shape[0], -1, emb.shape[-1]).mean(1)


class ExportableEcapaSpeakerNet(_Swapped, EcapaSpeakerNet):
    """:class:`EcapaSpeakerNet` that passes no relative lengths: its signals are whole,
    so the masks SpeechBrain builds from lengths (with a batch size frozen by ``len()``)
    are all ones, and leaving them out computes the same.

    Example
    -------
    >>> from speechbrain.lobes.features import Fbank
    >>> from speechbrain.lobes.models.ECAPA_TDNN import ECAPA_TDNN
    >>> from speechbrain.processing.features import InputNormalization
    >>> ecapa = ECAPA_TDNN(24, channels=[16, 16, 16, 16, 48], attention_channels=8,
    ...                    lin_neurons=12)
    >>> net = EcapaSpeakerNet(Fbank(n_mels=24), InputNormalization(norm_type="sentence"), ecapa)
    >>> wav = torch.randn(2, 8000)
    >>> want = net.embed(wav)
    >>> got = make_exportable(net).embed(wav)
    >>> type(net).__name__, bool(torch.allclose(got, want, atol=1e-4))
    ('ExportableEcapaSpeakerNet', True)
    """

    def embed(self, wav: torch.Tensor) -> torch.Tensor:
        feats = self.mean_var_norm(self.compute_features(wav))
        return self.embedding_model(feats).reshape(wav.shape[0], -1)


class ExportableSTFT(_Swapped, STFT):
    """SpeechBrain's ``STFT`` (``[batch, time]`` -> ``[batch, frames, bins, 2]``), the
    front end of its ``Fbank``, as a convolution.

    Example
    -------
    >>> plain = STFT(sample_rate=16000)
    >>> wav = torch.randn(2, 4000)
    >>> want = plain(wav)
    >>> got = ExportableSTFT.swap(plain)(wav)
    >>> got.shape, bool((got - want).abs().max() < 1e-5 * want.abs().max())
    (torch.Size([2, 26, 201, 2]), True)
    """

    def _prepare(self) -> None:
        self.register_buffer("dft", dft_kernels(self.window, self.n_fft, self.onesided),
                             persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2:  # multi-channel input: the plain (non-exportable) path
            return super().forward(x)
        re, im = conv_stft(x, self.dft, self.hop_length, self.center, self.pad_mode)
        stft = torch.stack([re, im], dim=-1)  # [batch, bins, frames, 2]
        if self.normalized_stft:
            stft = stft * self.n_fft ** -0.5
        return stft.transpose(2, 1)


class ExportableAttentiveStatisticsPooling(_Swapped, AttentiveStatisticsPooling):
    """ECAPA's attentive pooling over whole signals (``lengths=None``): no padding mask,
    hence no ``len()`` of the batch in the graph; SpeechBrain builds an all-ones mask.

    Example
    -------
    >>> plain = AttentiveStatisticsPooling(8, attention_channels=4).eval()
    >>> x = torch.randn(3, 8, 20)
    >>> want = plain(x)
    >>> got = ExportableAttentiveStatisticsPooling.swap(plain)(x)
    >>> got.shape, bool(torch.allclose(got, want, atol=1e-5))
    (torch.Size([3, 16, 1]), True)
    """

    def forward(self, x: torch.Tensor, lengths=None) -> torch.Tensor:
        if lengths is not None:
            return super().forward(x, lengths)

        def stats(weights):  # weighted mean and std over time, as SpeechBrain's
            mean = (weights * x).sum(2)
            var = (weights * (x - mean.unsqueeze(2)).pow(2)).sum(2)
            return mean, var.clamp(self.eps).sqrt()

        attn = x
        if self.global_context:
            mean, std = stats(torch.ones_like(x[:, :1]) / x.shape[-1])
            attn = torch.cat([x, mean.unsqueeze(2).expand_as(x),
                              std.unsqueeze(2).expand_as(x)], dim=1)
        attn = F.softmax(self.conv(self.tanh(self.tdnn(attn))), dim=2)
        mean, std = stats(attn)
        return torch.cat((mean, std), dim=1).unsqueeze(2)


_VARIANTS = {GlobalLayerNorm: ExportableGlobalLayerNorm, nn.GroupNorm: ExportableGroupNorm,
             GE2EFrontEnd: ExportableGE2EFrontEnd, GE2E: ExportableGE2E,
             RawNet2: ExportableRawNet2, EcapaSpeakerNet: ExportableEcapaSpeakerNet,
             STFT: ExportableSTFT, AttentiveStatisticsPooling: ExportableAttentiveStatisticsPooling}


def make_exportable(model: nn.Module) -> nn.Module:
    """Swap, in place, every module of ``model`` that has an export variant here (exact
    class match) to that variant, and turn off a conditioned separator's example cache
    (a Python dict keyed by the input). Returns ``model``.

    Example
    -------
    >>> net = nn.Sequential(GE2E())
    >>> keys = list(net.state_dict())
    >>> [type(m).__name__ for m in make_exportable(net).modules()][:3]
    ['Sequential', 'ExportableGE2E', 'ExportableGE2EFrontEnd']
    >>> list(net.state_dict()) == keys
    True
    """
    for module in list(model.modules()):
        variant = _VARIANTS.get(type(module))
        if variant is not None:
            variant.swap(module)
        if getattr(module, "basic_cache", None) is not None:
            module.basic_cache = None
    return model


__all__ = ["conv_stft", "dft_kernels", "group_norm_by_rows", "make_exportable"]
