"""wav2vec 1.0 (Schneider et al., 2019) without fairseq: the network and its checkpoint loader.

The paper's perceptual loss compares frozen wav2vec features of clean and estimated sources.
fairseq, which released those weights (``wav2vec_large.pt``), no longer installs on current
Python, so this module re-implements the part of fairseq's ``Wav2VecModel`` that computes
features:

- the *feature extractor* (encoder, "z"): strided 1-D convolutions on the raw waveform, each
  followed by a one-group GroupNorm and ReLU, then ``log(1 + |x|)`` compression;
  the large model's strides multiply to 160, i.e. 100 frames/s at 16 kHz;
- the *feature aggregator* (context network, "c"): causal (left-padded) convolutions over z
  with scaled residual connections; it sees about 210 ms of past context per frame.

Module and parameter names follow fairseq's exactly, including the positions of
parameter-free layers inside each ``nn.Sequential``, so a fairseq state dict loads with
strict key matching. The training-only prediction head (``wav2vec_predictions.*``) is not
built; its weights in a checkpoint are skipped.

Two checkpoint layouts exist, and :func:`load_wav2vec1` reads both:

- old fairseq (the released ``wav2vec_large.pt``): ``{"args": argparse.Namespace, "model": ...}``;
  fields missing from ``args`` take the defaults of fairseq's ``base_wav2vec_architecture``;
- newer fairseq (hydra): ``{"cfg": {"model": {...}}, "model": ...}``; missing fields take the
  defaults of fairseq's ``Wav2VecConfig`` dataclass.

Only the "cnn" aggregator is implemented. fairseq's "gru" aggregator feeds a
``[batch, time, channel]`` tensor to a time-major ``nn.GRU``, so it recurs over the batch
rather than over time; its features would depend on what else is in the batch, which is no
use for a loss. No released checkpoint uses it.
"""

import argparse
import ast
import logging
import math
import os

import torch
import torch.nn.functional as F
from torch import nn

from spksep_modules import SpkSepError
from spksep_modules.checkpoints import check_state_dict

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000

# wav2vec large (the paper's wav2vec features), as in fairseq's Wav2VecConfig defaults.
LARGE_FEATURE_LAYERS = [(512, 10, 5), (512, 8, 4)] + [(512, 4, 2)] * 3 + [(512, 1, 1)] * 3
LARGE_AGGREGATOR_LAYERS = [(512, k, 1) for k in range(2, 14)]
LARGE_CONFIG = dict(
    conv_feature_layers=LARGE_FEATURE_LAYERS,
    conv_aggregator_layers=LARGE_AGGREGATOR_LAYERS,
    skip_connections_feat=False,
    skip_connections_agg=True,
    residual_scale=0.5,
    log_compression=True,
    non_affine_group_norm=False,
    conv_bias=True,
    agg_zero_pad=False,
    activation="relu",
)

# Defaults fairseq fills in for fields a checkpoint's config lacks. The old argparse path
# (``base_wav2vec_architecture``) and the dataclass path (``Wav2VecConfig``) disagree on
# several of them, so which set applies depends on the checkpoint layout.
_LEGACY_DEFAULTS = dict(
    conv_feature_layers="[(512, 10, 5)] + [(512, 8, 4)] + [(512, 4, 2)] * 3",
    conv_aggregator_layers="[(512, 3, 1)] * 9",
    encoder="cnn",
    aggregator="cnn",
    skip_connections_feat=False,
    skip_connections_agg=False,
    residual_scale=0.5,
    no_conv_bias=False,
    agg_zero_pad=False,
    log_compression=False,
    non_affine_group_norm=False,
    activation="relu",
    vq_type="none",
)
_DATACLASS_DEFAULTS = dict(  # where Wav2VecConfig differs from the argparse path
    _LEGACY_DEFAULTS,
    conv_feature_layers=str(LARGE_FEATURE_LAYERS),
    conv_aggregator_layers=str(LARGE_AGGREGATOR_LAYERS),
    skip_connections_agg=True,
    log_compression=True,
)
# Parameters of training-only parts of Wav2VecModel: present in checkpoints, unused here.
_TRAINING_ONLY_PREFIXES = ("wav2vec_predictions.", "project_features.")


def parse_layers(spec):
    """fairseq's layer spec -> list of ``(channels, kernel, stride)`` tuples.

    fairseq stores specs as Python expressions such as ``"[(512, 10, 5)] + [(512, 4, 2)] * 3"``
    and ``eval``-s them; here only list/tuple literals of integers, ``+`` and ``*`` are
    accepted, so a checkpoint cannot run code. Lists of tuples pass through.

    Example
    -------
    >>> parse_layers("[(512, 10, 5)] + [(512, 4, 2)] * 2")
    [(512, 10, 5), (512, 4, 2), (512, 4, 2)]
    """
    if not isinstance(spec, str):
        layers = [tuple(int(v) for v in layer) for layer in spec]
    else:
        layers = _eval_layers(ast.parse(spec, mode="eval").body)
    if not layers or any(len(layer) != 3 or min(layer) < 1 for layer in layers):
        raise ValueError(f"bad conv layer spec {spec!r}: want [(channels, kernel, stride), ...]")
    return [tuple(layer) for layer in layers]


def _eval_layers(node):
    if isinstance(node, ast.Constant) and isinstance(node.value, int):
        return node.value
    if isinstance(node, (ast.List, ast.Tuple)):
        items = [_eval_layers(n) for n in node.elts]
        return items if isinstance(node, ast.List) else tuple(items)
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mult)):
        left, right = _eval_layers(node.left), _eval_layers(node.right)
        return left + right if isinstance(node.op, ast.Add) else left * right
    raise ValueError(f"unsupported expression in conv layer spec: {ast.dump(node)[:60]}")


class Fp32GroupNorm(nn.GroupNorm):
    """GroupNorm computed in float32 (as fairseq's), so half-precision inputs stay stable.

    Example
    -------
    >>> Fp32GroupNorm(1, 4)(torch.randn(2, 4, 10).half()).dtype  # computed in float32
    torch.float16
    """

    def forward(self, x):
        weight = self.weight.float() if self.weight is not None else None
        bias = self.bias.float() if self.bias is not None else None
        return F.group_norm(x.float(), self.num_groups, weight, bias, self.eps).type_as(x)


class CausalPad(nn.Module):
    """Left-pads ``[batch, channels, time]`` by ``k - 1`` frames, replicating or with zeros.

    Example
    -------
    >>> CausalPad(2, zero=False)(torch.tensor([[[1.0, 2.0, 3.0]]]))
    tensor([[[1., 1., 1., 2., 3.]]])
    """

    def __init__(self, amount: int, zero: bool):
        super().__init__()
        self.amount = amount
        self.mode = "constant" if zero else "replicate"

    def forward(self, x):
        if self.amount == 0:
            return x
        return F.pad(x, (self.amount, 0), mode=self.mode)


def _activation(name):
    if name == "relu":
        return nn.ReLU()
    if name == "gelu":
        return nn.GELU()
    raise ValueError(f"unknown activation {name!r} (want 'relu' or 'gelu')")


class FeatureExtractor(nn.Module):
    """The wav2vec encoder: ``wav [batch, time]`` -> ``z [batch, channels, frames]``.

    Block ``i`` is ``conv_layers.i = Sequential(conv, -, norm, act)``; slot 1 is fairseq's
    dropout (always 0 there), kept as Identity so the norm's keys stay ``conv_layers.i.2.*``.

    Example
    -------
    >>> enc = FeatureExtractor([(8, 10, 5), (8, 4, 2)], log_compression=True,
    ...                        skip_connections=False, residual_scale=0.5,
    ...                        non_affine_group_norm=False, activation="relu")
    >>> enc(torch.randn(2, 1000)).shape  # 10 samples per frame
    torch.Size([2, 8, 98])
    """

    def __init__(self, layers, log_compression, skip_connections, residual_scale,
                 non_affine_group_norm, activation):
        super().__init__()
        self.conv_layers = nn.ModuleList()
        in_ch = 1
        for ch, k, stride in layers:
            self.conv_layers.append(nn.Sequential(
                nn.Conv1d(in_ch, ch, k, stride=stride, bias=False),
                nn.Identity(),
                Fp32GroupNorm(1, ch, affine=not non_affine_group_norm),
                _activation(activation),
            ))
            in_ch = ch
        self.log_compression = log_compression
        self.skip_connections = skip_connections
        self.residual_scale = math.sqrt(residual_scale)

    def forward(self, wav):
        x = wav.unsqueeze(1)
        for block in self.conv_layers:
            residual = x
            x = block(x)
            if self.skip_connections and x.size(1) == residual.size(1):
                # fairseq subsamples the residual to the block's output rate.
                step = residual.size(2) // x.size(2)
                x = (x + residual[..., ::step][..., : x.size(2)]) * self.residual_scale
        if self.log_compression:
            x = torch.log1p(x.abs())
        return x


class ConvAggregator(nn.Module):
    """The wav2vec context network: ``z [batch, embed, frames]`` -> ``c [batch, ch, frames]``.

    Block ``i`` is ``conv_layers.i = Sequential(pad, conv, -, norm, act)``; the left padding
    of ``k - 1`` frames makes every output frame depend only on the present and the past.
    With skip connections, a 1x1 ``residual_proj.i`` maps the residual when channels change.

    Example
    -------
    >>> agg = ConvAggregator([(8, 2, 1), (12, 3, 1)], embed=8, skip_connections=True,
    ...                      residual_scale=0.5, non_affine_group_norm=False, conv_bias=True,
    ...                      zero_pad=False, activation="relu")
    >>> agg(torch.randn(2, 8, 50)).shape  # causal: as many frames out as in
    torch.Size([2, 12, 50])
    """

    def __init__(self, layers, embed, skip_connections, residual_scale,
                 non_affine_group_norm, conv_bias, zero_pad, activation):
        super().__init__()
        blocks = []
        self.residual_proj = nn.ModuleList()
        in_ch = embed
        for ch, k, stride in layers:
            needs_proj = skip_connections and in_ch != ch
            self.residual_proj.append(nn.Conv1d(in_ch, ch, 1, bias=False) if needs_proj
                                      else nn.Identity())
            blocks.append(nn.Sequential(
                CausalPad(k - 1, zero_pad),
                nn.Conv1d(in_ch, ch, k, stride=stride, bias=conv_bias),
                nn.Identity(),
                Fp32GroupNorm(1, ch, affine=not non_affine_group_norm),
                _activation(activation),
            ))
            in_ch = ch
        self.conv_layers = nn.Sequential(*blocks)
        self.skip_connections = skip_connections
        self.residual_scale = math.sqrt(residual_scale)

    def forward(self, z):
        x = z
        for proj, block in zip(self.residual_proj, self.conv_layers):
            residual = x
            x = block(x)
            if self.skip_connections:
                x = (x + proj(residual)) * self.residual_scale
        return x


class Wav2Vec1(nn.Module):
    """wav2vec 1.0 features: ``wav [batch, time]`` at 16 kHz -> ``[batch, frames, dim]``.

    Arguments (fairseq's names; defaults are wav2vec large)
    ---------
    conv_feature_layers, conv_aggregator_layers : list of (channels, kernel, stride) or str
        Encoder and context-network layers (fairseq's string form is accepted).
    skip_connections_feat, skip_connections_agg : bool
        Residual connections in the encoder / the context network.
    residual_scale : float
        Residual sums are multiplied by ``sqrt(residual_scale)``.
    log_compression : bool
        ``z = log(1 + |x|)`` after the encoder.
    non_affine_group_norm : bool
        GroupNorm without scale and shift.
    conv_bias : bool
        Biases in the context network's convolutions (fairseq: ``not no_conv_bias``).
    agg_zero_pad : bool
        Zero instead of replicate left padding in the context network.
    activation : str
        "relu" or "gelu".
    output : str
        "c" (context network, the usual downstream features) or "z" (encoder).

    Example
    -------
    >>> net = Wav2Vec1(conv_feature_layers=[(8, 10, 5), (8, 8, 4)] + [(8, 4, 2)] * 3,
    ...                conv_aggregator_layers=[(12, 2, 1), (12, 3, 1)])
    >>> net(torch.randn(2, 16000)).shape, net.hop  # 160 samples per frame, as the large model
    (torch.Size([2, 98, 12]), 160)
    """

    sample_rate = SAMPLE_RATE

    def __init__(self, conv_feature_layers=LARGE_FEATURE_LAYERS,
                 conv_aggregator_layers=LARGE_AGGREGATOR_LAYERS, skip_connections_feat=False,
                 skip_connections_agg=True, residual_scale=0.5, log_compression=True,
                 non_affine_group_norm=False, conv_bias=True, agg_zero_pad=False,
                 activation="relu", output="c"):
        super().__init__()
        if output not in ("z", "c"):
            raise ValueError(f"output must be 'z' or 'c', got {output!r}")
        feat_layers = parse_layers(conv_feature_layers)
        agg_layers = parse_layers(conv_aggregator_layers)
        self.output = output
        self.feature_extractor = FeatureExtractor(
            feat_layers, log_compression, skip_connections_feat, residual_scale,
            non_affine_group_norm, activation)
        embed = feat_layers[-1][0]
        self.feature_aggregator = ConvAggregator(
            agg_layers, embed, skip_connections_agg, residual_scale, non_affine_group_norm,
            conv_bias, agg_zero_pad, activation)
        self.dim = embed if output == "z" else agg_layers[-1][0]
        # Samples per output frame (160 for large: 100 frames/s at 16 kHz).
        self.hop = math.prod(s for _, _, s in feat_layers) * math.prod(
            s for _, _, s in agg_layers)

    def forward(self, wav):
        """``wav [batch, time]`` -> ``z`` or ``c`` as ``[batch, frames, dim]``."""
        x = self.feature_extractor(wav)
        if self.output == "c":
            x = self.feature_aggregator(x)
        return x.transpose(1, 2)


def _numpy_safe_globals():
    """Harmless numpy pickle helpers found in fairseq checkpoints' training state."""
    try:
        import numpy as np
    except ImportError:
        return []
    core = getattr(np, "_core", None) or np.core
    found = [core.multiarray.scalar, np.dtype]
    found += [type(np.dtype(t)) for t in ("float64", "float32", "int64", "int32", "bool")]
    return found


def load_checkpoint(path):
    """``torch.load`` a fairseq-style checkpoint on the CPU, one-line errors for bad files.

    Tries ``weights_only=True`` with ``argparse.Namespace`` (old fairseq's ``args``) and numpy
    scalars allowed. If the file pickles anything else (e.g. optimiser state with other
    classes) it falls back to a full unpickle, which can run code from the file: only point
    this at checkpoints you trust (such as fairseq's own releases).

    Example
    -------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     path = os.path.join(folder, "w2v.pt")
    ...     torch.save({"args": argparse.Namespace(arch="wav2vec"), "model": {}}, path)
    ...     sorted(load_checkpoint(path))
    ['args', 'model']
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        what = "is a folder, not a checkpoint" if os.path.isdir(path) else "file not found"
        raise SpkSepError(f"{path}: {what}")
    allowed = [argparse.Namespace] + _numpy_safe_globals()
    try:
        if hasattr(torch.serialization, "safe_globals"):
            with torch.serialization.safe_globals(allowed):
                return torch.load(path, map_location="cpu", weights_only=True)
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any failure: retry without the allowlist
        first = err
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - report why, in one line
        reason = (str(err).splitlines() or [type(err).__name__])[0][:120]
        raise SpkSepError(f"{path}: not loadable by torch.load ({reason})") from None
    logger.warning("%s: loaded with weights_only=False (trusted file assumed): %s",
                   path, (str(first).splitlines() or [""])[0][:120])
    return ckpt


def _model_config(ckpt, path):
    """The checkpoint's model config as a plain dict with fairseq's defaults filled in."""
    args = ckpt.get("args")
    cfg = ckpt.get("cfg")
    if args is not None:
        fields, defaults = _as_dict(args), _LEGACY_DEFAULTS
    elif cfg is not None and _as_dict(cfg).get("model") is not None:
        fields, defaults = _as_dict(_as_dict(cfg)["model"]), _DATACLASS_DEFAULTS
    else:
        raise SpkSepError(f"{path}: no model config (neither 'args' nor 'cfg'['model'])")
    name = fields.get("_name") or fields.get("arch") or "wav2vec"
    if name != "wav2vec":
        raise SpkSepError(
            f"{path}: a '{name}' checkpoint, not wav2vec 1.0 (for wav2vec 2.0 / HuBERT / "
            "WavLM use a torchaudio-format file with representation wav2vec2/hubert/wavlm)")
    conf = {key: default if fields.get(key) is None else fields[key]
            for key, default in defaults.items()}
    if conf["aggregator"] != "cnn" or conf["encoder"] != "cnn":
        raise SpkSepError(f"{path}: aggregator '{conf['aggregator']}' is not supported "
                          "(only 'cnn', as in wav2vec_large.pt)")
    if conf["vq_type"] not in ("none", None):
        raise SpkSepError(f"{path}: vq-wav2vec checkpoints (vq_type '{conf['vq_type']}') "
                          "are not supported")
    return conf


def _as_dict(obj):
    if isinstance(obj, argparse.Namespace):
        return vars(obj)
    if isinstance(obj, dict):
        return obj
    try:  # omegaconf DictConfig and similar mappings
        return dict(obj)
    except (TypeError, ValueError):
        return {}


def load_wav2vec1(path, output="c"):
    """Build :class:`Wav2Vec1` from a fairseq wav2vec 1.0 checkpoint, in eval mode.

    ``path`` is e.g. fairseq's ``wav2vec_large.pt``. ``output`` picks "c" (context
    features, default) or "z" (encoder features). See :func:`load_checkpoint` about trust.
    Every problem raises :class:`SpkSepError` with one line naming ``path``.

    Example
    -------
    >>> import tempfile
    >>> layers = dict(conv_feature_layers="[(8, 10, 5)] + [(8, 8, 4)] + [(8, 4, 2)] * 3",
    ...               conv_aggregator_layers="[(12, 3, 1)] * 2")
    >>> weights = Wav2Vec1(**layers).state_dict()
    >>> with tempfile.TemporaryDirectory() as folder:  # fairseq's hydra layout
    ...     path = os.path.join(folder, "w2v.pt")
    ...     torch.save({"cfg": {"model": {"_name": "wav2vec", **layers}}, "model": weights}, path)
    ...     net = load_wav2vec1(path, output="z")
    >>> net(torch.randn(2, 16000)).shape  # encoder features, 100 frames/s
    torch.Size([2, 98, 8])
    """
    path = os.fspath(path)
    if output not in ("z", "c"):
        raise SpkSepError(f"{path}: output must be 'z' or 'c', got {output!r}")
    ckpt = load_checkpoint(path)
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict):
        raise SpkSepError(f"{path}: not a fairseq wav2vec 1.0 checkpoint: no 'model' state dict")
    conf = _model_config(ckpt, path)
    try:
        model = Wav2Vec1(
            conv_feature_layers=conf["conv_feature_layers"],
            conv_aggregator_layers=conf["conv_aggregator_layers"],
            skip_connections_feat=bool(conf["skip_connections_feat"]),
            skip_connections_agg=bool(conf["skip_connections_agg"]),
            residual_scale=float(conf["residual_scale"]),
            log_compression=bool(conf["log_compression"]),
            non_affine_group_norm=bool(conf["non_affine_group_norm"]),
            conv_bias=not conf["no_conv_bias"],
            agg_zero_pad=bool(conf["agg_zero_pad"]),
            activation=conf["activation"],
            output=output,
        )
    except (ValueError, SyntaxError, TypeError) as err:
        raise SpkSepError(f"{path}: bad wav2vec config ({str(err).splitlines()[0]})") from None
    state = {k: v for k, v in ckpt["model"].items() if not k.startswith(_TRAINING_ONLY_PREFIXES)}
    check_state_dict(model, state, path, "a wav2vec 1.0 checkpoint matching its config")
    model.load_state_dict(state, strict=True)
    return model.eval()

