"""ECAPA-TDNN speaker embeddings from a local SpeechBrain model folder.

A SpeechBrain speaker-verification folder (e.g. ``speechbrain/spkrec-ecapa-voxceleb``,
downloaded once with ``git clone`` or ``huggingface-cli download``) holds
``hyperparams.yaml``, which builds the front end (``compute_features``: Fbank;
``mean_var_norm``: sentence-level mean normalisation) and the network
(``embedding_model``: ``ECAPA_TDNN``), and ``embedding_model.ckpt``, the network's state
dict. Nothing is downloaded: the yaml only builds the modules (its ``pretrainer`` is
never asked to fetch), and the weights come from the folder's own file.

The embedding is ``embedding_model(mean_var_norm(compute_features(wav)))``, what
SpeechBrain's ``EncoderClassifier.encode_batch`` returns with ``normalize=False``;
it is differentiable with respect to the waveform. While a graph is traced or exported,
no relative lengths are passed (see ``EcapaSpeakerNet.embed``); SpeechBrain's own modules
that still do not trace in general (its ``STFT``, the attentive pooling) have export
adapters in :mod:`spksep_modules.nnet.exportable`.
"""

import os

import torch
from hyperpyyaml import load_hyperpyyaml
from torch import nn

from spksep_modules import SpkSepError
from spksep_modules.checkpoints import check_state_dict

WEIGHTS = "embedding_model.ckpt"


class EcapaSpeakerNet(nn.Module):
    """SpeechBrain's ECAPA front end and network as one ``embed(wav [N, T]) -> [N, D]``.

    The parts are modules a SpeechBrain yaml built, so this class does not record
    constructor arguments (it is not ``Configurable``).

    Example
    -------
    >>> from speechbrain.lobes.features import Fbank
    >>> from speechbrain.lobes.models.ECAPA_TDNN import ECAPA_TDNN
    >>> from speechbrain.processing.features import InputNormalization
    >>> ecapa = ECAPA_TDNN(24, channels=[16, 16, 16, 16, 48], kernel_sizes=[5, 3, 3, 3, 1],
    ...                    dilations=[1, 2, 3, 4, 1], attention_channels=8, lin_neurons=12)
    >>> net = EcapaSpeakerNet(Fbank(n_mels=24), InputNormalization(norm_type="sentence"), ecapa)
    >>> net.embed(torch.randn(2, 8000)).shape, net.embedding_dim
    (torch.Size([2, 12]), 12)
    """

    def __init__(self, compute_features: nn.Module, mean_var_norm: nn.Module,
                 embedding_model: nn.Module, sample_rate: int = 16000):
        super().__init__()
        self.compute_features = compute_features
        self.mean_var_norm = mean_var_norm
        self.embedding_model = embedding_model
        self.sample_rate = int(sample_rate)
        self.eval()
        with torch.no_grad():  # the width of the last layer, whatever the yaml's sizes
            self.embedding_dim = int(self.embed(torch.zeros(1, self.sample_rate)).shape[-1])

    def embed(self, wav: torch.Tensor) -> torch.Tensor:
        """``wav [N, T]`` (whole signals, no padding) -> embeddings ``[N, D]``.

        ``encode_batch``'s computation, with relative lengths of 1. While a graph is traced
        or exported the lengths are left out: the masks SpeechBrain builds from them have a
        batch size a trace would freeze, and on whole signals they are all ones anyway.
        """
        if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
            feats = self.mean_var_norm(self.compute_features(wav))
            return self.embedding_model(feats).reshape(wav.shape[0], -1)
        lengths = torch.ones(wav.shape[0], device=wav.device)
        feats = self.mean_var_norm(self.compute_features(wav), lengths)
        return self.embedding_model(feats, lengths).reshape(wav.shape[0], -1)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        return self.embed(wav)


def load_ecapa(folder) -> EcapaSpeakerNet:
    """The ECAPA speaker network of a local SpeechBrain model folder, in eval mode.

    Raises ``SpkSepError`` naming the folder or file when the folder is missing, lacks
    ``hyperparams.yaml`` / ``embedding_model.ckpt``, or the weights do not fit the yaml.

    Example
    -------
    >>> import tempfile
    >>> yaml = '''
    ... compute_features: !new:speechbrain.lobes.features.Fbank
    ...     n_mels: 24
    ... mean_var_norm: !new:speechbrain.processing.features.InputNormalization
    ...     norm_type: sentence
    ... embedding_model: !new:speechbrain.lobes.models.ECAPA_TDNN.ECAPA_TDNN
    ...     input_size: 24
    ...     channels: [16, 16, 16, 16, 48]
    ...     attention_channels: 8
    ...     lin_neurons: 12
    ... '''
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     with open(os.path.join(folder, "hyperparams.yaml"), "w") as f:
    ...         _ = f.write(yaml)
    ...     model = load_hyperpyyaml(yaml)["embedding_model"]  # stands for trained weights
    ...     torch.save(model.state_dict(), os.path.join(folder, WEIGHTS))
    ...     net = load_ecapa(folder)
    >>> net.embed(torch.randn(2, 8000)).shape
    torch.Size([2, 12])
    """
    folder = os.fspath(folder or "")
    hparams_file = os.path.join(folder, "hyperparams.yaml")
    weights_file = os.path.join(folder, WEIGHTS)
    if not os.path.isdir(folder):
        raise SpkSepError(f"{folder or repr(folder)}: not a folder; speaker_net=ecapa needs a "
                          "local SpeechBrain model folder such as spkrec-ecapa-voxceleb")
    for path in (hparams_file, weights_file):
        if not os.path.isfile(path):
            raise SpkSepError(f"{path}: missing; not a SpeechBrain ECAPA model folder")
    try:
        with open(hparams_file, encoding="utf-8") as f:
            hparams = load_hyperpyyaml(f)
    except Exception as err:  # any yaml / construction problem is a bad folder
        raise SpkSepError(f"{hparams_file}: cannot build the model ({err})".splitlines()[0]) from None
    missing = [k for k in ("compute_features", "mean_var_norm", "embedding_model") if k not in hparams]
    if missing:
        raise SpkSepError(f"{hparams_file}: no {', '.join(missing)}: not a speaker-embedding model")
    try:
        state = torch.load(weights_file, map_location="cpu", weights_only=True)
    except Exception as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise SpkSepError(f"{weights_file}: cannot read checkpoint ({reason})") from None
    model = hparams["embedding_model"]
    if not isinstance(state, dict):
        raise SpkSepError(f"{weights_file}: not a state dict")
    # Wrong keys or shapes: the file does not belong to this yaml.
    check_state_dict(model, state, weights_file, f"weights that fit {hparams_file}")
    model.load_state_dict(state)
    try:  # the constructor embeds 1 s of silence: front end and network must fit
        net = EcapaSpeakerNet(hparams["compute_features"], hparams["mean_var_norm"], model,
                              int(hparams.get("sample_rate", 16000)))
    except Exception as err:
        raise SpkSepError(f"{hparams_file}: its front end and network do not fit together "
                          f"({str(err).strip().splitlines()[0]})") from None
    return net.eval()
