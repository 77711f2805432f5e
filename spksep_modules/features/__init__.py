"""Frozen pretrained networks: speech representations (perceptual loss) and speaker
embedders (conditioning), built by name from the yaml keys ``representation`` /
``representation_ckpt`` and ``speaker_net`` / ``speaker_net_ckpt``.

Every network comes back wrapped in :class:`Frozen`: eval mode, no parameter gradients,
gradients flowing through to the input, and resampling from the data's rate to its own.
"""

from spksep_modules import SpkSepError
from spksep_modules.features.frozen import Frozen

REPRESENTATIONS = ("wav2vec1", "wav2vec2", "hubert", "wavlm", "ge2e")
SPEAKER_NETS = ("rawnet2", "ge2e", "ecapa")

_WHERE = {
    "wav2vec1": "the fairseq wav2vec 1.0 file wav2vec_large.pt",
    "wav2vec2": "a torchaudio wav2vec 2.0 state dict (e.g. wav2vec2_fairseq_base_ls960.pth)",
    "hubert": "a torchaudio HuBERT state dict (e.g. hubert_fairseq_base_ls960.pth)",
    "wavlm": "a torchaudio WavLM state dict (e.g. wavlm_base.pth)",
    "rawnet2": "rawnet2_best_weights.pt from the RawNet authors, or a checkpoint written by "
    "recipes/LibriMix/speaker_id/train.py",
    "ecapa": "a local SpeechBrain ECAPA model folder (hyperparams.yaml + embedding_model.ckpt, "
    "e.g. spkrec-ecapa-voxceleb)",
}


def _need_ckpt(key: str, name: str, ckpt):
    if not ckpt:
        raise SpkSepError(f"{key}_ckpt: required for {key}={name}: point it at {_WHERE[name]}")


def build_representation(name: str, ckpt=None, sample_rate: int = 16000, output: str = "c", layer=None):
    """Frozen frame-level representation: ``wav [N, T]`` -> ``[N, frames, dim]``.

    ``output`` picks wav2vec 1.0's encoder (``z``) or context (``c``) features; ``layer``
    picks a transformer layer of the wav2vec 2.0 family (default: the last).
    """
    if name == "ge2e":  # weights ship with the resemblyzer package: no file needed
        from spksep_modules.features.ge2e import load_ge2e

        return Frozen(load_ge2e(ckpt), 16000, sample_rate)
    if name == "wav2vec1":
        from spksep_modules.features.wav2vec1 import load_wav2vec1

        _need_ckpt("representation", name, ckpt)
        return Frozen(load_wav2vec1(ckpt, output=output), 16000, sample_rate)
    if name in ("wav2vec2", "hubert", "wavlm"):
        from spksep_modules.features.ssl_models import load_ssl

        _need_ckpt("representation", name, ckpt)
        return Frozen(load_ssl(name, ckpt, layer=layer), 16000, sample_rate)
    raise SpkSepError(f"representation: unknown '{name}', expected one of {', '.join(REPRESENTATIONS)}")


def build_speaker_net(name: str, ckpt=None, sample_rate: int = 16000):
    """Frozen speaker embedder with ``embed(wav [N, T]) -> [N, dim]`` and ``embedding_dim``."""
    if name == "ge2e":
        from spksep_modules.features.ge2e import load_ge2e

        net = load_ge2e(ckpt)
    elif name == "rawnet2":
        from spksep_modules.models.rawnet2 import load_rawnet2

        _need_ckpt("speaker_net", name, ckpt)
        net = load_rawnet2(ckpt)
    elif name == "ecapa":
        from spksep_modules.features.ecapa import load_ecapa

        _need_ckpt("speaker_net", name, ckpt)
        net = load_ecapa(ckpt)
    else:
        raise SpkSepError(f"speaker_net: unknown '{name}', expected one of {', '.join(SPEAKER_NETS)}")
    frozen = Frozen(net, net.sample_rate, sample_rate)
    frozen.embedding_dim = net.embedding_dim
    return frozen


__all__ = ["Frozen", "build_representation", "build_speaker_net"]
