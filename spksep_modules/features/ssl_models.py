"""wav2vec 2.0, HuBERT and WavLM features from a local torchaudio-format weight file.

The perceptual loss can use newer self-supervised models instead of wav2vec 1.0. torchaudio
implements all three (``torchaudio.models.wav2vec2_model`` / ``wavlm_model``); what is
needed here is to build the right architecture for a weight file without downloading
anything. The file is a torchaudio-format state dict, i.e. what ``torchaudio.pipelines``
bundles fetch (``wav2vec2_fairseq_base_ls960.pth``, ``hubert_fairseq_large_ll60k.pth``,
``wavlm_base_plus.pth``...; copy it from ``~/.cache/torch/hub/checkpoints/``) or the
``state_dict()`` of any model those builders make. fairseq ``.pt`` checkpoints and Hugging
Face folders are not read (``transformers`` is not a dependency).

The architecture is read off the weight shapes: layer count, embedding and feed-forward
sizes, conv kernels and channels, conv bias, extractor mode, positional-conv kernel/groups,
and (WavLM) heads and relative-position buckets. What shapes cannot tell is taken from the
convention that every torchaudio bundle follows:

- conv strides: the standard 7-layer encoder (kernels 10, 3, 3, 3, 3, 2, 2; strides 5, 2, ...,
  so 320 samples per frame: 50 frames/s at 16 kHz);
- attention heads (wav2vec 2.0 / HuBERT): 12 for a 768-d model, 16 for 1024/1280/1920;
- pre-norm transformer and input-waveform normalisation iff the conv encoder uses layer
  norm (the "large" recipes);
- WavLM maximum relative distance: 800.

Anything else goes in a JSON file beside the weights, same name with ``.json``
(``my_model.pth`` -> ``my_model.json``): any keyword of ``wav2vec2_model`` / ``wavlm_model``,
plus ``"normalize_waveform"``; its values override the inferred ones.
"""

import json
import os
import re

import torch
import torch.nn.functional as F
from torch import nn
from torchaudio.models import wav2vec2_model, wavlm_model

from spksep_modules import SpkSepError
from spksep_modules.checkpoints import check_state_dict

SAMPLE_RATE = 16000
KINDS = ("wav2vec2", "hubert", "wavlm")

_STANDARD_CONV_KERNELS = [10, 3, 3, 3, 3, 2, 2]
_STANDARD_CONV_STRIDES = [5, 2, 2, 2, 2, 2, 2]
_HEADS_BY_DIM = {768: 12, 1024: 16, 1280: 16, 1920: 16}
_WAVLM_MAX_DISTANCE = 800
# Weight-norm of the positional conv: torch's old (weight_g / weight_v) and current
# (parametrizations) names for the same two tensors.
_POS_CONV = "encoder.transformer.pos_conv_embed.conv."
_OLD_WEIGHT_NORM = {"weight_g": "parametrizations.weight.original0",
                    "weight_v": "parametrizations.weight.original1"}
# Everything but the architecture: dropout and layer drop only matter in training.
_NO_DROPOUT = dict(encoder_projection_dropout=0.0, encoder_attention_dropout=0.0,
                   encoder_ff_interm_dropout=0.0, encoder_dropout=0.0, encoder_layer_drop=0.0,
                   aux_num_out=None)


def _tiny_wav2vec2():
    """A toy wav2vec 2.0 for the examples: the standard conv encoder with 16 channels and
    two small transformer layers (width 32, not a standard one)."""
    return wav2vec2_model(
        extractor_mode="group_norm", extractor_conv_layer_config=[
            (16, k, s) for k, s in zip(_STANDARD_CONV_KERNELS, _STANDARD_CONV_STRIDES)],
        extractor_conv_bias=False, encoder_embed_dim=32, encoder_pos_conv_kernel=8,
        encoder_pos_conv_groups=4, encoder_num_layers=2, encoder_num_heads=4,
        encoder_ff_interm_features=48, encoder_layer_norm_first=False, **_NO_DROPOUT)


class SSLFeatures(nn.Module):
    """A transformer layer's output: ``wav [batch, time]`` at 16 kHz -> ``[batch, frames, dim]``.

    Arguments
    ---------
    model : torchaudio.models.Wav2Vec2Model
        wav2vec 2.0, HuBERT or WavLM (they share this class in torchaudio).
    layer : int or None
        Which transformer layer, 1 = first; None = the last. Layers above it are not run.
        Outputs are the layers' own, as ``Wav2Vec2Model.extract_features`` returns them.
    normalize_waveform : bool
        Zero-mean, unit-variance each waveform first, as the "large" models were trained.
        Done per utterance (fairseq normalises each file); torchaudio's bundle wrapper
        instead normalises the whole batch tensor at once.

    Example
    -------
    >>> tiny = _tiny_wav2vec2()  # 16-channel conv encoder, 2 small transformer layers
    >>> feats = SSLFeatures(tiny, layer=1).eval()
    >>> feats(torch.randn(2, 16000)).shape, feats.hop  # 320 samples per frame
    (torch.Size([2, 49, 32]), 320)
    """

    sample_rate = SAMPLE_RATE

    def __init__(self, model, layer=None, normalize_waveform=False):
        super().__init__()
        self.model = model
        self.num_layers = len(model.encoder.transformer.layers)
        self.layer = self.num_layers if layer is None else int(layer)
        if not 1 <= self.layer <= self.num_layers:
            raise ValueError(f"layer must be in 1..{self.num_layers}, got {layer}")
        self.normalize_waveform = bool(normalize_waveform)
        self.dim = model.encoder.feature_projection.projection.out_features
        self.hop = 1
        for conv_block in model.feature_extractor.conv_layers:
            self.hop *= conv_block.conv.stride[0]

    def forward(self, wav):
        """``wav [batch, time]`` -> features ``[batch, frames, dim]`` (50 frames/s)."""
        if self.normalize_waveform:
            wav = F.layer_norm(wav, wav.shape[-1:])
        feats, _ = self.model.extract_features(wav, num_layers=self.layer)
        return feats[-1]


def infer_config(state, wavlm):
    """Factory keywords for ``wav2vec2_model`` / ``wavlm_model`` and ``normalize_waveform``.

    ``state`` is a torchaudio-format state dict (current weight-norm names); returns
    ``(kwargs, normalize_waveform)``. Entries shapes cannot give are left out when unknown
    (``extractor_conv_layer_config`` for non-standard kernels, ``encoder_num_heads`` for an
    unusual width): the caller then needs them from the JSON file.

    Example
    -------
    >>> tiny = _tiny_wav2vec2()  # 16-channel conv encoder, 2 small transformer layers
    >>> kwargs, normalize = infer_config(tiny.state_dict(), wavlm=False)
    >>> kwargs["encoder_num_layers"], kwargs["encoder_embed_dim"], normalize
    (2, 32, False)
    >>> "encoder_num_heads" in kwargs  # not a standard width: needs the JSON file
    False
    """
    convs = []
    while f"feature_extractor.conv_layers.{len(convs)}.conv.weight" in state:
        convs.append(state[f"feature_extractor.conv_layers.{len(convs)}.conv.weight"].shape)
    kernels = [shape[2] for shape in convs]
    layer_norm_mode = "feature_extractor.conv_layers.1.layer_norm.weight" in state
    embed = state["encoder.feature_projection.projection.weight"].shape[0]
    pos = state[_POS_CONV + "parametrizations.weight.original1"].shape  # [E, E/groups, K]
    layer_ids = {int(m.group(1)) for k in state
                 if (m := re.match(r"encoder\.transformer\.layers\.(\d+)\.", k))}
    kwargs = dict(
        extractor_mode="layer_norm" if layer_norm_mode else "group_norm",
        extractor_conv_bias="feature_extractor.conv_layers.0.conv.bias" in state,
        encoder_embed_dim=embed,
        encoder_pos_conv_kernel=pos[2],
        encoder_pos_conv_groups=embed // pos[1],
        encoder_num_layers=max(layer_ids) + 1 if layer_ids else 0,
        encoder_ff_interm_features=state[
            "encoder.transformer.layers.0.feed_forward.intermediate_dense.weight"].shape[0],
        encoder_layer_norm_first=layer_norm_mode,
        **_NO_DROPOUT,
    )
    if kernels == _STANDARD_CONV_KERNELS:
        kwargs["extractor_conv_layer_config"] = [
            (shape[0], k, s) for shape, k, s in zip(convs, kernels, _STANDARD_CONV_STRIDES)]
    if wavlm:
        rel = state["encoder.transformer.layers.0.attention.rel_attn_embed.weight"].shape
        kwargs.update(encoder_num_buckets=rel[0], encoder_num_heads=rel[1],
                      encoder_max_distance=_WAVLM_MAX_DISTANCE)
    elif embed in _HEADS_BY_DIM:
        kwargs["encoder_num_heads"] = _HEADS_BY_DIM[embed]
    return kwargs, layer_norm_mode


def _read_state_dict(path):
    if not os.path.isfile(path):
        what = "is a folder, not a weight file" if os.path.isdir(path) else "file not found"
        raise SpkSepError(f"{path}: {what}")
    try:
        # Plain tensors only: a state dict never needs arbitrary unpickling.
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - report why, in one line
        reason = (str(err).splitlines() or [type(err).__name__])[0][:120]
        raise SpkSepError(f"{path}: not loadable as a torchaudio state dict ({reason})") from None
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise SpkSepError(f"{path}: not a state dict of tensors (want a torchaudio-format "
                          ".pth, e.g. wav2vec2_fairseq_base_ls960.pth)")
    if "feature_extractor.conv_layers.0.conv.weight" not in state:
        raise SpkSepError(f"{path}: not a torchaudio wav2vec 2.0/HuBERT/WavLM state dict "
                          "(no feature_extractor.conv_layers.0.conv.weight)")
    renamed = {}
    for key, value in state.items():
        if key.startswith("aux."):
            continue  # an ASR fine-tuning head: not part of the representation
        if key.startswith(_POS_CONV) and key[len(_POS_CONV):] in _OLD_WEIGHT_NORM:
            key = _POS_CONV + _OLD_WEIGHT_NORM[key[len(_POS_CONV):]]
        renamed[key] = value
    return renamed


def _read_overrides(path):
    """The optional ``<weights stem>.json`` beside the weights, as a dict."""
    json_path = os.path.splitext(path)[0] + ".json"
    if not os.path.isfile(json_path):
        return {}
    try:
        with open(json_path, encoding="utf-8") as f:
            overrides = json.load(f)
    except (OSError, ValueError) as err:
        raise SpkSepError(f"{json_path}: cannot read JSON ({str(err).splitlines()[0]})") from None
    if not isinstance(overrides, dict):
        raise SpkSepError(f"{json_path}: want a JSON object of model settings")
    if "extractor_conv_layer_config" in overrides:
        overrides["extractor_conv_layer_config"] = [
            tuple(layer) for layer in overrides["extractor_conv_layer_config"]]
    return overrides


def load_ssl(kind, path, layer=None):
    """Frozen-ready wav2vec 2.0 / HuBERT / WavLM features from a local weight file.

    Arguments
    ---------
    kind : str
        "wav2vec2", "hubert" or "wavlm". wav2vec 2.0 and HuBERT have identical weights
        layouts; WavLM's attention differs and is checked.
    path : str
        A torchaudio-format state dict (see the module docstring).
    layer : int or None
        Transformer layer to return (1-based); None = last.

    Returns :class:`SSLFeatures` in eval mode. Problems raise :class:`SpkSepError`, one line.

    Example
    -------
    >>> import tempfile
    >>> tiny = _tiny_wav2vec2()  # 16-channel conv encoder, 2 small transformer layers
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     torch.save(tiny.state_dict(), os.path.join(folder, "tiny.pth"))
    ...     with open(os.path.join(folder, "tiny.json"), "w") as f:  # what shapes cannot tell
    ...         json.dump({"encoder_num_heads": 4}, f)
    ...     feats = load_ssl("wav2vec2", os.path.join(folder, "tiny.pth"), layer=1)
    >>> feats(torch.randn(2, 16000)).shape
    torch.Size([2, 49, 32])
    """
    path = os.fspath(path)
    if kind not in KINDS:
        raise SpkSepError(f"{path}: unknown representation {kind!r} (want one of {KINDS})")
    state = _read_state_dict(path)
    is_wavlm = any(".attention.rel_attn_embed." in k or ".attention.gru_rel_pos" in k
                   for k in state)
    if is_wavlm != (kind == "wavlm"):
        found = "WavLM" if is_wavlm else "wav2vec 2.0/HuBERT"
        raise SpkSepError(f"{path}: holds {found} weights, but representation is {kind!r}")
    try:
        kwargs, normalize = infer_config(state, is_wavlm)
    except KeyError as err:
        raise SpkSepError(f"{path}: incomplete state dict, no {err.args[0]}") from None
    overrides = _read_overrides(path)
    normalize = bool(overrides.pop("normalize_waveform", normalize))
    kwargs.update(overrides)
    for needed, why in (("extractor_conv_layer_config", "conv strides (non-standard kernels)"),
                        ("encoder_num_heads", "attention heads (unusual width)")):
        if needed not in kwargs:
            raise SpkSepError(f"{path}: cannot infer {why}; set {needed} in "
                              f"{os.path.splitext(path)[0]}.json")
    factory = wavlm_model if is_wavlm else wav2vec2_model
    try:
        model = factory(**kwargs)
    except (TypeError, ValueError, AssertionError, RuntimeError) as err:
        raise SpkSepError(f"{path}: cannot build the model ({str(err).splitlines()[0]})") from None
    check_state_dict(model, state, path, f"a {kind} state dict of the inferred architecture")
    model.load_state_dict(state, strict=True)
    try:
        return SSLFeatures(model, layer=layer, normalize_waveform=normalize).eval()
    except ValueError as err:
        raise SpkSepError(f"{path}: {err}") from None

