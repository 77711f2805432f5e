"""Frozen pretrained speech representations for the perceptual loss, built by name from the
yaml keys ``representation`` / ``representation_ckpt``: wav2vec 1.0, wav2vec 2.0, HuBERT,
WavLM and GE2E's frame-level outputs. (Speaker embedders: ``spksep_modules.speakers``.)

Every network comes back wrapped in :class:`~spksep_modules.nnet.frozen.Frozen`: eval mode,
no parameter gradients, gradients flowing through to the input, and resampling from the
data's rate to its own.
"""

from spksep_modules import SpkSepError
from spksep_modules.nnet.frozen import Frozen, keeps_global_rng

REPRESENTATIONS = ("wav2vec1", "wav2vec2", "hubert", "wavlm", "ge2e")

_WHERE = {
    "wav2vec1": "the fairseq wav2vec 1.0 file wav2vec_large.pt",
    "wav2vec2": "a torchaudio wav2vec 2.0 state dict (e.g. wav2vec2_fairseq_base_ls960.pth)",
    "hubert": "a torchaudio HuBERT state dict (e.g. hubert_fairseq_base_ls960.pth)",
    "wavlm": "a torchaudio WavLM state dict (e.g. wavlm_base.pth)",
}


def _need_ckpt(name: str, ckpt):
    if not ckpt:
        raise SpkSepError(f"representation_ckpt: required for representation={name}: "
                          f"point it at {_WHERE[name]}")


@keeps_global_rng
def build_representation(name: str, ckpt=None, sample_rate: int = 16000, output: str = "c",
                         layer=None, level_dbfs=None) -> Frozen:
    """Frozen frame-level representation: ``wav [N, T]`` -> ``[N, frames, dim]``.

    ``output`` picks wav2vec 1.0's encoder (``z``) or context (``c``) features; ``layer``
    picks a transformer layer of the wav2vec 2.0 family (default: the last). ``level_dbfs``
    (GE2E only, see ``spksep_modules.speakers.build_speaker_net``): the yamls set -30. The
    others do not see the input's level (wav2vec 1.0's and the group-norm encoders' norms,
    the layer-norm ones' waveform normalisation), which matters because SI-SNR leaves a
    separator's output level free.

    Example
    -------
    >>> import torch
    >>> rep = build_representation("ge2e", sample_rate=8000)  # 1 s at 8 kHz: 101 frames
    >>> rep(torch.randn(2, 8000)).shape
    torch.Size([2, 101, 256])
    """
    if name == "ge2e":  # weights ship with the resemblyzer package: no file needed
        from spksep_modules.speakers.ge2e import load_ge2e

        return Frozen(load_ge2e(ckpt, level_dbfs=level_dbfs), 16000, sample_rate)
    if name == "wav2vec1":
        from spksep_modules.features.wav2vec1 import load_wav2vec1

        _need_ckpt(name, ckpt)
        return Frozen(load_wav2vec1(ckpt, output=output), 16000, sample_rate)
    if name in ("wav2vec2", "hubert", "wavlm"):
        from spksep_modules.features.ssl_models import load_ssl

        _need_ckpt(name, ckpt)
        return Frozen(load_ssl(name, ckpt, layer=layer), 16000, sample_rate)
    raise SpkSepError(f"representation: unknown '{name}', expected one of {', '.join(REPRESENTATIONS)}")


__all__ = ["REPRESENTATIONS", "build_representation"]
