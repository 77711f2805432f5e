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

They are the layers' form ``export`` (``nnet.forms.as_form(model, "export")``, in place):
weights, buffers and state-dict keys stay as they are (the DFT kernels are non-persistent
buffers).
"""

import torch
import torch.nn.functional as F
from speechbrain.lobes.models.ECAPA_TDNN import AttentiveStatisticsPooling
from speechbrain.processing.features import STFT

from spksep_modules.nnet.forms import as_form, form_of  # noqa: F401  (as_form: examples)
from spksep_modules.nnet.stft import conv_stft, dft_kernels


@form_of(STFT, "export")
class ExportableSTFT(STFT):
    """SpeechBrain's ``STFT`` (``[batch, time]`` -> ``[batch, frames, bins, 2]``), the
    front end of its ``Fbank``, as a convolution.

    Example
    -------
    >>> plain = STFT(sample_rate=16000)
    >>> wav = torch.randn(2, 4000)
    >>> want = plain(wav)
    >>> got = as_form(plain, "export")(wav)
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


@form_of(AttentiveStatisticsPooling, "export")
class ExportableAttentiveStatisticsPooling(AttentiveStatisticsPooling):
    """ECAPA's attentive pooling over whole signals (``lengths=None``): no padding mask,
    hence no ``len()`` of the batch in the graph; SpeechBrain builds an all-ones mask.

    Example
    -------
    >>> plain = AttentiveStatisticsPooling(8, attention_channels=4).eval()
    >>> x = torch.randn(3, 8, 20)
    >>> want = plain(x)
    >>> got = as_form(plain, "export")(x)
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
