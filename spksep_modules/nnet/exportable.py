"""Export adapters for SpeechBrain's own modules, swapped in on the copy that is exported.

Our own networks and norms trace and export as they are: GE2E and RawNet2 count their
partials and windows from the traced length, while traced GE2E's front end is a DFT
convolution and ECAPA's wrapper passes no lengths, and the group norms take two-step
statistics in an ONNX export. What is left here wraps two SpeechBrain modules inside
ECAPA's front end and network:

* ``STFT`` (the front end of ``Fbank``) is complex, which the ONNX exporter refuses: here
  a strided convolution with DFT kernels (:mod:`spksep_modules.nnet.stft`);
* ``AttentiveStatisticsPooling`` builds its all-ones mask with the batch size as a Python
  value, which a trace freezes: here no mask (a speaker network embeds whole signals).

:func:`make_exportable` swaps these modules' classes in place: weights, buffers and
state-dict keys stay as they are (the DFT kernels are non-persistent buffers).
"""

import torch
import torch.nn.functional as F
from speechbrain.lobes.models.ECAPA_TDNN import AttentiveStatisticsPooling
from speechbrain.processing.features import STFT
from torch import nn

from spksep_modules.nnet.stft import conv_stft, dft_kernels


class _Swapped:
    """Mixin of the adapters: ``swap(module)`` turns an instance of the SpeechBrain class
    into the adapter in place, then ``_prepare`` adds what it needs (buffers that stay out
    of the state dict)."""

    @classmethod
    def swap(cls, module: nn.Module) -> nn.Module:
        module.__class__ = cls
        module._prepare()
        return module

    def _prepare(self) -> None:
        pass


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


_ADAPTERS = {STFT: ExportableSTFT, AttentiveStatisticsPooling: ExportableAttentiveStatisticsPooling}


def make_exportable(model: nn.Module) -> nn.Module:
    """Swap, in place, every SpeechBrain module of ``model`` that has an adapter here
    (exact class match) to it, and turn off a conditioned separator's example cache (a
    Python dict keyed by the input). Returns ``model``.

    Example
    -------
    >>> from speechbrain.lobes.features import Fbank
    >>> net = nn.Sequential(Fbank(n_mels=24))
    >>> wav, keys = torch.randn(2, 4000), list(net.state_dict())
    >>> want = net(wav)
    >>> [type(m).__name__ for m in make_exportable(net).modules()][2]
    'ExportableSTFT'
    >>> list(net.state_dict()) == keys, bool(torch.allclose(net(wav), want, atol=1e-3))
    (True, True)
    """
    for module in list(model.modules()):
        adapter = _ADAPTERS.get(type(module))
        if adapter is not None:
            adapter.swap(module)
        if getattr(module, "basic_cache", None) is not None:
            module.basic_cache = None
    return model


__all__ = ["make_exportable"]
