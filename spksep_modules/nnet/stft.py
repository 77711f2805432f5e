"""The STFT as a strided ``conv1d`` with fixed real DFT kernels.

The ONNX exporter refuses ``torch.stft`` (its output is complex); the same frames
computed as a convolution export as they are. An FFT is cheaper, so the modules that
use these (GE2E's front end, the export adapter of SpeechBrain's ``STFT``) take this
path only while a graph is traced or exported.
"""

import math

import torch
import torch.nn.functional as F


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


__all__ = ["conv_stft", "dft_kernels"]
