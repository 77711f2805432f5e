"""Frozen speaker networks for conditioning, built by name from the yaml keys
``speaker_net`` / ``speaker_net_ckpt``: RawNet2 (``rawnet2``), GE2E (``ge2e``) and
SpeechBrain's ECAPA-TDNN (``ecapa``).

Every network comes back wrapped in :class:`~spksep_modules.nnet.frozen.Frozen`: eval mode,
no parameter gradients, gradients flowing through to the input, and resampling from the
data's rate to its own.
"""

from spksep_modules import SpkSepError
from spksep_modules.nnet.frozen import Frozen, keeps_global_rng

SPEAKER_NETS = ("rawnet2", "ge2e", "ecapa")

_WHERE = {
    "rawnet2": "rawnet2_best_weights.pt from the RawNet authors, or a checkpoint written by "
    "recipes/LibriMix/speaker_id/train.py",
    "ecapa": "a local SpeechBrain ECAPA model folder (hyperparams.yaml + embedding_model.ckpt, "
    "e.g. spkrec-ecapa-voxceleb)",
}


def _need_ckpt(name: str, ckpt):
    if not ckpt:
        raise SpkSepError(f"speaker_net_ckpt: required for speaker_net={name}: "
                          f"point it at {_WHERE[name]}")


@keeps_global_rng
def build_speaker_net(name: str, ckpt=None, sample_rate: int = 16000, level_dbfs=None) -> Frozen:
    """Frozen speaker embedder with ``embed(wav [N, T]) -> [N, dim]`` and ``embedding_dim``.

    ``level_dbfs`` (GE2E only): the level GE2E scales each waveform to before its
    level-sensitive front end; the yamls set -30 (``ge2e_level_dbfs``). None, the raw level,
    is what run folders written before that key rebuild with, as they were trained.

    Example
    -------
    >>> import torch
    >>> net = build_speaker_net("ge2e", sample_rate=8000)  # weights ship with resemblyzer
    >>> net.embed(torch.randn(2, 8000)).shape, net.embedding_dim
    (torch.Size([2, 256]), 256)
    """
    if name == "ge2e":
        from spksep_modules.speakers.ge2e import load_ge2e

        net = load_ge2e(ckpt, level_dbfs=level_dbfs)
    elif name == "rawnet2":
        from spksep_modules.speakers.rawnet2 import load_rawnet2

        _need_ckpt(name, ckpt)
        net = load_rawnet2(ckpt)
    elif name == "ecapa":
        from spksep_modules.speakers.ecapa import load_ecapa

        _need_ckpt(name, ckpt)
        net = load_ecapa(ckpt)
    else:
        raise SpkSepError(f"speaker_net: unknown '{name}', expected one of {', '.join(SPEAKER_NETS)}")
    return Frozen(net, net.sample_rate, sample_rate)


__all__ = ["SPEAKER_NETS", "build_speaker_net"]
