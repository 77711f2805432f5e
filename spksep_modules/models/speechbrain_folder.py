"""SpeechBrain's trained separators as they are on disk.

SpeechBrain publishes its trained SepFormers (``speechbrain/sepformer-libri2mix``,
``sepformer-wsj02mix``, ``sepformer-whamr``...) as folders that its users already have
(``SepformerSeparation.from_hparams(savedir=...)`` leaves one, often as symbolic links
into the Hugging Face cache)::

    hyperparams.yaml   sample_rate, num_spks, the Encoder / MaskNet / Decoder it builds,
                       ``modules`` naming them encoder / masknet / decoder, a pretrainer
    encoder.ckpt       state dict of dual_path.Encoder        (conv1d.weight)
    masknet.ckpt       state dict of dual_path.Dual_Path_Model
    decoder.ckpt       state dict of dual_path.Decoder        (weight)

SpeechBrain's separation recipes (``recipes/LibriMix/separation``, ``WSJ0Mix/separation``:
``python train.py hparams/convtasnet.yaml``, ``sepformer-libri2mix.yaml``...) leave a
*training* folder, their ``output_folder``::

    hyperparams.yaml   the recipe's yaml, overrides applied: ``Encoder``, ``MaskNet``,
                       ``Decoder`` and ``modules`` naming them, as above
    save/CKPT+<date>/  encoder.ckpt, masknet.ckpt, decoder.ckpt (the same state dicts),
                       counter.ckpt, optimizer.ckpt, lr_scheduler.ckpt, CKPT.yaml (meta)

Its weights are those of the checkpoint SpeechBrain's recipe itself tests
(:func:`training_checkpoint`): the lowest ``si-snr`` in ``CKPT.yaml`` (the recipes store
the validation loss, the negative SI-SNR, under that key and evaluate with
``min_key="si-snr"``), the most recent one when none records it.

The mask network says which model it is: ``dual_path.Dual_Path_Model`` (SepFormer) is
rebuilt as our :class:`SepFormer`, ``conv_tasnet.MaskNet`` (SpeechBrain's Conv-TasNet
recipes) as :class:`SpeechBrainConvTasNet`, both around SpeechBrain's own modules; any
other is a one-line error naming it.

:func:`load_speechbrain_folder` turns either kind of folder into a separator with its
weights, so it can separate (``spksep separate --model FOLDER``), be the conditioned
model's ``basic_model``, or give the initial weights of a fine-tuning run of the same
family and sizes (the yaml's ``init_from``: ``sepformer.yaml`` for a SepFormer); those
uses go through :mod:`spksep_modules.loading`, which takes this folder as any other.
Nothing is downloaded: the yaml is read, not run (its ``pretrainer`` is never built); its
``!new:`` arguments, references resolved by HyperPyYAML, become our class's constructor
arguments, so the model it describes is rebuilt by our class and its checkpoints record
plain numbers.

Sample rates are checked, not converted. ``spksep separate`` resamples the recordings to
the folder's rate (as SpeechBrain's ``separate_file`` does). A model trained at 8 kHz
is not an initialisation or a basic model for 16 kHz data: its filters would see every
frequency doubled and its outputs would lack everything above 4 kHz. That is a one-line
error naming both rates (``loading.check_sample_rate``); train at the folder's rate
instead (``--sample_rate=8000`` reads Libri2Mix's ``wav8k``).

:func:`save_speechbrain_folder` writes the published layout from a SepFormer, which
SpeechBrain's ``SepformerSeparation.from_hparams(source=FOLDER)`` loads (or from a
SpeechBrainConvTasNet).
"""

import glob
import importlib
import inspect
import os
import re

import torch
from torch import nn

from spksep_modules import SpkSepError
from spksep_modules.checkpoints import check_state_dict
from spksep_modules.models.sb_conv_tasnet import SpeechBrainConvTasNet
from spksep_modules.models.sepformer import SepFormer

HPARAMS = "hyperparams.yaml"
MODULES = ("encoder", "masknet", "decoder")  # SepformerSeparation.MODULES_NEEDED
CKPT_FILES = tuple(f"{name}.ckpt" for name in MODULES)
FILES = (HPARAMS,) + CKPT_FILES
TOP_LEVEL = {"encoder": "Encoder", "masknet": "MaskNet", "decoder": "Decoder"}  # the recipes' keys
DUAL_PATH = "speechbrain.lobes.models.dual_path"
CONV_TASNET = "speechbrain.lobes.models.conv_tasnet"
SAVE = "save"        # a recipe's save_folder under its output_folder
META_KEY = "si-snr"  # what the recipes' checkpoints record, and test by (min_key)


def is_speechbrain_folder(path) -> bool:
    """Whether ``path`` looks like a SpeechBrain separator folder rather than a
    ``train.py`` run folder (which has ``save/``): it holds one of the ``.ckpt`` files,
    or a ``hyperparams.yaml`` with SpeechBrain's ``modules`` / ``MaskNet`` keys.

    Example
    -------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     before = is_speechbrain_folder(folder)
    ...     _ = open(os.path.join(folder, "masknet.ckpt"), "w").close()
    ...     before, is_speechbrain_folder(folder)
    (False, True)
    """
    path = os.fspath(path or "")
    if not os.path.isdir(path) or os.path.isdir(os.path.join(path, "save")):
        return False
    if any(os.path.lexists(os.path.join(path, f)) for f in FILES[1:]):
        return True
    text = _hparams_text(path)
    return text is not None and re.search(r"^(modules|MaskNet)\s*:", text, re.MULTILINE) is not None


def _hparams_text(path):
    """The text of the folder's ``hyperparams.yaml``; ``None`` when it cannot be read."""
    try:
        with open(os.path.join(path, HPARAMS), encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError):
        return None


# ------------------------------------------------------------------ reading the yaml
def _read_yaml(hparams_file):
    """The folder's yaml with HyperPyYAML's references resolved, nothing instantiated."""
    import ruamel.yaml
    from hyperpyyaml import resolve_references

    try:
        with open(hparams_file, encoding="utf-8") as f:
            text = f.read()
        return ruamel.yaml.YAML().load(resolve_references(text).getvalue())
    except OSError as err:
        raise SpkSepError(f"{hparams_file}: cannot read ({err.strerror})") from None
    except Exception as err:  # yaml syntax, a reference to a missing key...
        reason = " ".join(str(err).split()) or type(err).__name__
        raise SpkSepError(f"{hparams_file}: not a valid SpeechBrain yaml ({reason})") from None


def _plain(value, where):
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return str(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    raise SpkSepError(f"{where}: expected a number, a boolean or a string, "
                      f"got {type(value).__name__}")


def _tag_class(node, where):
    """The class a ``!new:`` mapping builds (imported, not built)."""
    tag = getattr(getattr(node, "tag", None), "value", None) or ""
    if not isinstance(node, dict) or not tag.startswith("!new:"):
        raise SpkSepError(f"{where}: expected a !new: mapping of a SpeechBrain module")
    module_name, _, name = tag[len("!new:"):].rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), name), tag[len("!new:"):]
    except (ImportError, AttributeError, ValueError):
        raise SpkSepError(f"{where}: unknown class {tag[len('!new:'):]}") from None


def _arguments(node, cls, where):
    """``{argument: value}`` of a ``!new:`` node that must build ``cls``, with ``cls``'s
    defaults filled in; nested ``!new:`` nodes are kept as they are."""
    built, name = _tag_class(node, where)
    if built is not cls:
        raise SpkSepError(f"{where}: is a {name}, not a {cls.__module__}.{cls.__name__}")
    signature = inspect.signature(nn.ConvTranspose1d if cls.__name__ == "Decoder" else cls)
    params = {k: p for k, p in signature.parameters.items()
              if k != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    args = {}
    for key, value in node.items():
        if key not in params:
            raise SpkSepError(f"{where}: unknown argument {key} of {cls.__name__}")
        args[key] = value if isinstance(value, dict) else _plain(value, f"{where}.{key}")
    for key, param in params.items():
        if key in args:
            continue
        if param.default is inspect.Parameter.empty:
            raise SpkSepError(f"{where}: no {key}")
        args[key] = param.default
    return args


def _require(condition, where, problem, family="SepFormer"):
    if not condition:
        raise SpkSepError(f"{where}: {problem}; not a {family} this version can load")


def _filterbank(modules, where, family):
    """``(N, kernel)`` of the folder's Encoder and Decoder, checked to be SpeechBrain's
    filterbank (``dual_path.Encoder`` / ``Decoder``, stride kernel / 2, no bias)."""
    from speechbrain.lobes.models.dual_path import Decoder, Encoder

    enc = _arguments(modules["encoder"], Encoder, f"{where}.encoder")
    dec = _arguments(modules["decoder"], Decoder, f"{where}.decoder")
    N, kernel = enc["out_channels"], enc["kernel_size"]
    _require(enc["in_channels"] == 1, f"{where}.encoder.in_channels", "not 1", family)
    expected_dec = {"in_channels": N, "out_channels": 1, "kernel_size": kernel,
                    "stride": kernel // 2, "padding": 0, "output_padding": 0, "groups": 1,
                    "bias": False, "dilation": 1}
    for key, want in expected_dec.items():
        _require(dec[key] == want, f"{where}.decoder.{key}", f"{dec[key]!r}, not {want!r}",
                 family)
    return N, kernel


def _sepformer_arguments(modules, where):
    """SepFormer's arguments and the sources of a ``Dual_Path_Model`` folder."""
    from speechbrain.lobes.models.dual_path import Dual_Path_Model, SBTransformerBlock

    N, kernel = _filterbank(modules, where, "SepFormer")
    mask = _arguments(modules["masknet"], Dual_Path_Model, f"{where}.masknet")
    intra = _arguments(mask["intra_model"], SBTransformerBlock, f"{where}.masknet.intra_model")
    inter = _arguments(mask["inter_model"], SBTransformerBlock, f"{where}.masknet.inter_model")
    _require(mask["in_channels"] == N, f"{where}.masknet.in_channels", f"not the encoder's {N}")
    width = mask["out_channels"]
    shared = ("nhead", "d_ffn", "dropout", "activation", "use_positional_encoding",
              "norm_before")
    for block, name in ((intra, "intra_model"), (inter, "inter_model")):
        at = f"{where}.masknet.{name}"
        _require(block["d_model"] == width, f"{at}.d_model", f"not masknet.out_channels ({width})")
        for key in ("input_shape", "kdim", "vdim"):
            _require(block[key] is None, f"{at}.{key}", f"{block[key]!r}, not null")
        _require(block["attention_type"] == "regularMHA", f"{at}.attention_type",
                 f"{block['attention_type']!r}, not regularMHA")
    for key in shared:
        _require(intra[key] == inter[key], f"{where}.masknet.inter_model.{key}",
                 f"{inter[key]!r}, differs from intra_model's {intra[key]!r}")
    args = dict(
        N=N, kernel_size=kernel, num_spks=mask["num_spks"], num_layers=mask["num_layers"],
        K=mask["K"], intra_layers=intra["num_layers"], inter_layers=inter["num_layers"],
        **{key: intra[key] for key in shared}, norm=mask["norm"],
        skip_around_intra=mask["skip_around_intra"],
        linear_layer_after_inter_intra=mask["linear_layer_after_inter_intra"],
        out_channels=None if width == N else width,
        use_global_pos_enc=mask["use_global_pos_enc"], max_length=mask["max_length"],
    )
    order = inspect.signature(SepFormer.__init__).parameters  # config's order
    return {k: args[k] for k in order if k in args}, mask["num_spks"]


def _convtasnet_arguments(modules, where):
    """SpeechBrainConvTasNet's arguments and the sources of a ``conv_tasnet.MaskNet``
    folder (SpeechBrain's Conv-TasNet recipes)."""
    from speechbrain.lobes.models.conv_tasnet import MaskNet

    N, kernel = _filterbank(modules, where, "Conv-TasNet")
    mask = _arguments(modules["masknet"], MaskNet, f"{where}.masknet")
    _require(mask["N"] == N, f"{where}.masknet.N", f"{mask['N']}, not the encoder's {N}",
             "Conv-TasNet")
    args = dict(N=N, L=kernel, **{k: mask[k] for k in ("B", "H", "P", "X", "R")},
                num_spks=mask["C"], norm_type=mask["norm_type"], causal=mask["causal"],
                mask_nonlinear=mask["mask_nonlinear"])
    return args, mask["C"]


# The mask networks a folder may hold -> (our family, its arguments from the yaml).
FAMILIES = {
    f"{DUAL_PATH}.Dual_Path_Model": (SepFormer, _sepformer_arguments),
    f"{CONV_TASNET}.MaskNet": (SpeechBrainConvTasNet, _convtasnet_arguments),
}


def separator_arguments(hparams_file):
    """``(separator class, its constructor arguments, sample_rate)`` that a SpeechBrain
    ``hyperparams.yaml`` describes (the yaml alone: no weights read): a
    :class:`SepFormer` for a ``dual_path.Dual_Path_Model`` mask network, a
    :class:`SpeechBrainConvTasNet` for a ``conv_tasnet.MaskNet``. The modules are those
    the yaml's ``modules`` names (published and training folders alike), else its
    top-level ``Encoder``, ``MaskNet`` and ``Decoder``.

    Example
    -------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     model = SpeechBrainConvTasNet(N=16, L=8, B=8, H=16, X=2, R=1)
    ...     save_speechbrain_folder(model, folder, sample_rate=8000)
    ...     cls, args, rate = separator_arguments(os.path.join(folder, HPARAMS))
    >>> cls.__name__, args == model.config, rate
    ('SpeechBrainConvTasNet', True, 8000)
    """
    hp = _read_yaml(hparams_file)
    if not isinstance(hp, dict):
        raise SpkSepError(f"{hparams_file}: not a mapping of keys")
    for key in ("sample_rate", "num_spks"):
        if key not in hp:
            raise SpkSepError(f"{hparams_file}: no {key} key")
    rate = hp["sample_rate"]
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or rate <= 0:
        raise SpkSepError(f"{hparams_file}: sample_rate: expected a rate in Hz, got {rate!r}")
    if "modules" in hp:
        modules, where = hp["modules"], f"{hparams_file}: modules"
        for name in MODULES:
            if not isinstance(modules, dict) or name not in modules:
                raise SpkSepError(f"{hparams_file}: no modules.{name} key")
    elif all(key in hp for key in TOP_LEVEL.values()):
        modules = {name: hp[key] for name, key in TOP_LEVEL.items()}
        where = f"{hparams_file}: top-level"
    else:
        raise SpkSepError(f"{hparams_file}: no modules key (nor Encoder, MaskNet, Decoder)")
    _, name = _tag_class(modules["masknet"], f"{where}.masknet")
    if name not in FAMILIES:
        raise SpkSepError(
            f"{where}.masknet: is a {name}; this version loads SepFormer "
            f"({DUAL_PATH}.Dual_Path_Model) and Conv-TasNet ({CONV_TASNET}.MaskNet) folders")
    cls, arguments = FAMILIES[name]
    args, num_spks = arguments(modules, where)
    if hp["num_spks"] != num_spks:
        raise SpkSepError(f"{hparams_file}: num_spks is {hp['num_spks']}, "
                          f"its mask network's {num_spks}")
    return cls, args, int(rate)


def sepformer_arguments(folder):
    """``(SepFormer constructor arguments, sample_rate)`` that a SpeechBrain SepFormer
    folder's ``hyperparams.yaml`` describes (see :func:`separator_arguments`).

    Example
    -------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     model = SepFormer(N=16, num_layers=1, K=10, intra_layers=1, inter_layers=1,
    ...                       nhead=2, d_ffn=32)
    ...     save_speechbrain_folder(model, folder, sample_rate=8000)
    ...     args, rate = sepformer_arguments(folder)
    >>> args == model.config, rate
    (True, 8000)
    """
    hparams_file = os.path.join(os.fspath(folder), HPARAMS)
    cls, args, rate = separator_arguments(hparams_file)
    if cls is not SepFormer:
        raise SpkSepError(f"{hparams_file}: a {cls.__name__}, not a SepFormer")
    return args, rate


# ------------------------------------------------------------------ training folders
def is_speechbrain_training_folder(path) -> bool:
    """Whether ``path`` is the output folder of a SpeechBrain separation recipe (its
    ``train.py``, not ours): a ``save/`` whose checkpoints hold ``masknet.ckpt`` (ours hold
    ``separator.ckpt``), or, before the first checkpoint, a ``hyperparams.yaml`` with the
    recipe's top-level ``MaskNet``.

    Example
    -------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     os.makedirs(os.path.join(folder, "save", "CKPT+2024-01-01+00-00-00+00"))
    ...     before = is_speechbrain_training_folder(folder)
    ...     _ = open(os.path.join(folder, "save", "CKPT+2024-01-01+00-00-00+00",
    ...                           "masknet.ckpt"), "w").close()
    ...     before, is_speechbrain_training_folder(folder)
    (False, True)
    """
    path = os.fspath(path or "")
    save = os.path.join(path, SAVE)
    if not os.path.isdir(save):
        return False
    if glob.glob(os.path.join(glob.escape(save), "CKPT+*", "masknet.ckpt")):
        return True
    text = _hparams_text(path)
    return (text is not None and re.search(r"^MaskNet\s*:", text, re.MULTILINE) is not None
            and re.search(r"^separator\s*:", text, re.MULTILINE) is None)


def training_checkpoint(folder) -> str:
    """The checkpoint folder (``save/CKPT+...``) of a SpeechBrain training folder that
    SpeechBrain's recipe itself tests: the lowest ``si-snr`` of the checkpoints' meta
    (the recipes save the validation loss, the negative SI-SNR, under that key and
    evaluate with ``min_key="si-snr"``), or the most recent checkpoint when none records
    it (e.g. only intra-epoch checkpoints).

    Example
    -------
    >>> import tempfile
    >>> from speechbrain.utils.checkpoints import Checkpointer
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     saver = Checkpointer(os.path.join(folder, "save"), {"masknet": nn.Linear(2, 2)})
    ...     best = saver.save_checkpoint(meta={"si-snr": -9.0})  # epoch 1: SI-SNR 9 dB
    ...     last = saver.save_checkpoint(meta={"si-snr": -8.5})  # epoch 2: worse
    ...     training_checkpoint(folder) == str(best.path)
    True
    """
    from speechbrain.utils.checkpoints import Checkpointer

    save = os.path.join(os.fspath(folder), SAVE)
    try:
        checkpointer = Checkpointer(save)
        ckpt = checkpointer.find_checkpoint(min_key=META_KEY) or checkpointer.find_checkpoint()
    except Exception as err:  # a CKPT.yaml that is not yaml, or a meta that is not a mapping
        reason = " ".join(str(err).split())[:120] or type(err).__name__
        raise SpkSepError(f"{save}: cannot read the checkpoints' CKPT.yaml ({reason})") from None
    if ckpt is None:
        raise SpkSepError(f"{save}: no checkpoint (the SpeechBrain run has not finished an epoch)")
    return str(ckpt.path)


# ------------------------------------------------------------------ weights
def _read_state(path, holds):
    if not os.path.isfile(path):
        raise SpkSepError(f"{path}: missing; {holds}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated, or not a torch file
        reason = " ".join(str(err).split())[:120] or type(err).__name__
        raise SpkSepError(f"{path}: cannot read checkpoint ({reason})") from None
    if not isinstance(state, dict):
        raise SpkSepError(f"{path}: not a state dict")
    return state


def _constant(key):
    # Sinusoidal tables (buffers, not weights): rebuilt here whatever the file holds.
    return key.endswith("pos_enc.pe")


def _layout(folder):
    """``(hparams_file, folder of the .ckpt files, what a folder of this kind holds)``
    of a published folder or a training folder (its chosen checkpoint)."""
    hparams_file = os.path.join(folder, HPARAMS)
    if is_speechbrain_training_folder(folder):
        if not os.path.isfile(hparams_file):
            raise SpkSepError(f"{hparams_file}: missing; a SpeechBrain training folder holds "
                              f"{HPARAMS} and {SAVE}/CKPT+*/ with {', '.join(CKPT_FILES)}")
        return (hparams_file, training_checkpoint(folder),
                f"a SpeechBrain training checkpoint holds {', '.join(CKPT_FILES)}")
    return hparams_file, folder, f"a SpeechBrain separator folder holds {', '.join(FILES)}"


def load_speechbrain_folder(folder):
    """``(separator with the folder's weights, in eval mode, sample_rate)`` of a local
    SpeechBrain folder (see the module docstring): a published separator folder or a
    recipe's training folder (:func:`training_checkpoint` picks its checkpoint); a
    :class:`SepFormer` or a :class:`SpeechBrainConvTasNet`, whichever its yaml describes.
    Every problem is one ``SpkSepError`` line naming the missing file, the key, or the file
    that does not fit.

    Example
    -------
    >>> import tempfile
    >>> model = SepFormer(N=16, num_layers=1, K=10, intra_layers=1, inter_layers=1,
    ...                   nhead=2, d_ffn=32)
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     save_speechbrain_folder(model, folder, sample_rate=8000)
    ...     twin, rate = load_speechbrain_folder(folder)
    ...     os.remove(os.path.join(folder, "masknet.ckpt"))
    ...     load_speechbrain_folder(folder)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
        ...
    spksep_modules.SpkSepError: .../masknet.ckpt: missing; a SpeechBrain separator folder holds hyperparams.yaml, encoder.ckpt, masknet.ckpt, decoder.ckpt
    >>> mix = torch.randn(1, 808)
    >>> rate, twin.training, torch.allclose(twin(mix), model.eval()(mix))
    (8000, False, True)
    """
    folder = os.fspath(folder or "")
    if not os.path.isdir(folder):
        raise SpkSepError(f"{folder or repr(folder)}: not a folder")
    hparams_file, weights, holds = _layout(folder)
    # name the first missing file before reading anything
    for path in [hparams_file] + [os.path.join(weights, f) for f in CKPT_FILES]:
        if not os.path.isfile(path):
            raise SpkSepError(f"{path}: missing; {holds}")
    cls, args, rate = separator_arguments(hparams_file)
    try:
        model = cls(**args)
    except SpkSepError as err:
        raise SpkSepError(f"{hparams_file}: {err}") from None
    full = model.state_dict()
    for name in MODULES:
        path = os.path.join(weights, f"{name}.ckpt")
        state = {k: v for k, v in _read_state(path, holds).items() if not _constant(k)}
        if name == "encoder":  # SpeechBrain's Encoder wraps our encoder conv as conv1d
            expected = {"conv1d.weight": full["encoder.weight"]}
            check_state_dict(expected, state, path, f"the encoder of {hparams_file}")
            full["encoder.weight"] = state["conv1d.weight"]
            continue
        expected = {k[len(name) + 1:]: v for k, v in full.items()
                    if k.startswith(name + ".") and not _constant(k)}
        check_state_dict(expected, state, path, f"the {name} of {hparams_file}")
        full.update({f"{name}.{k}": v for k, v in state.items()})
    model.load_state_dict(full)
    return model.eval(), rate


def save_speechbrain_folder(model, folder, sample_rate: int):
    """Write ``model`` (a :class:`SepFormer` or a :class:`SpeechBrainConvTasNet`) in
    SpeechBrain's layout (``hyperparams.yaml`` with the keys of SpeechBrain's published
    SepFormer folders, ``encoder.ckpt``, ``masknet.ckpt``, ``decoder.ckpt``), which
    ``SepformerSeparation.from_hparams(source=folder)`` and :func:`load_speechbrain_folder`
    load.

    Example
    -------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     save_speechbrain_folder(SepFormer(N=16, num_layers=1, K=10, intra_layers=1,
    ...                             inter_layers=1, nhead=2, d_ffn=32), folder, 16000)
    ...     sorted(os.listdir(folder))
    ['decoder.ckpt', 'encoder.ckpt', 'hyperparams.yaml', 'masknet.ckpt']
    """
    model = getattr(model, "module", model)
    if isinstance(model, SpeechBrainConvTasNet):
        text = _convtasnet_yaml(model.config, sample_rate)
    elif isinstance(model, SepFormer):
        text = _sepformer_yaml(model.config, sample_rate)
    else:
        raise SpkSepError(f"save_speechbrain_folder: a SepFormer or a SpeechBrainConvTasNet, "
                          f"not a {type(model).__name__}")
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, HPARAMS), "w", encoding="utf-8") as f:
        f.write(text)
    torch.save({"conv1d.weight": model.encoder.weight.detach().cpu()},
               os.path.join(folder, "encoder.ckpt"))
    for name in ("masknet", "decoder"):
        state = {k: t.detach().cpu() for k, t in getattr(model, name).state_dict().items()}
        torch.save(state, os.path.join(folder, f"{name}.ckpt"))


def _yaml_value(value):
    return {True: "true", False: "false", None: "null"}.get(value, value) \
        if isinstance(value, bool) or value is None else value


def _filterbank_yaml(N, kernel):
    return f"""Encoder: !new:{DUAL_PATH}.Encoder
  kernel_size: {kernel}
  out_channels: {N}

Decoder: !new:{DUAL_PATH}.Decoder
  in_channels: {N}
  out_channels: 1
  kernel_size: {kernel}
  stride: {kernel // 2}
  bias: false

modules:
  encoder: !ref <Encoder>
  decoder: !ref <Decoder>
  masknet: !ref <MaskNet>

pretrainer: !new:speechbrain.utils.parameter_transfer.Pretrainer
  loadables:
    encoder: !ref <Encoder>
    masknet: !ref <MaskNet>
    decoder: !ref <Decoder>
"""


def _convtasnet_yaml(c, sample_rate):
    v = _yaml_value
    return f"""# ################################
# Model: Conv-TasNet for source separation (written by spksep in SpeechBrain's layout)
# ################################

num_spks: {c['num_spks']}
sample_rate: {int(sample_rate)}

MaskNet: !new:{CONV_TASNET}.MaskNet
  N: {c['N']}
  B: {c['B']}
  H: {c['H']}
  P: {c['P']}
  X: {c['X']}
  R: {c['R']}
  C: {c['num_spks']}
  norm_type: {c['norm_type']}
  causal: {v(c['causal'])}
  mask_nonlinear: {c['mask_nonlinear']}

""" + _filterbank_yaml(c["N"], c["L"])


def _sepformer_yaml(c, sample_rate):
    width = c["N"] if c["out_channels"] is None else c["out_channels"]
    v = _yaml_value

    def block(num_layers):
        return "\n".join([
            f"  num_layers: {num_layers}", f"  d_model: {width}", f"  nhead: {c['nhead']}",
            f"  d_ffn: {c['d_ffn']}", f"  dropout: {c['dropout']}",
            f"  activation: {c['activation']}",
            f"  use_positional_encoding: {v(c['use_positional_encoding'])}",
            f"  norm_before: {v(c['norm_before'])}",
        ])

    return f"""# ################################
# Model: SepFormer for source separation (written by spksep in SpeechBrain's layout)
# https://arxiv.org/abs/2010.13154
# ################################

# Experiment params
num_spks: {c['num_spks']}
sample_rate: {int(sample_rate)}

# Encoder parameters
N_encoder_out: {c['N']}
out_channels: {width}
kernel_size: {c['kernel_size']}
kernel_stride: {c['kernel_size'] // 2}

# Specifying the network
SBtfintra: !new:{DUAL_PATH}.SBTransformerBlock
{block(c['intra_layers'])}

SBtfinter: !new:{DUAL_PATH}.SBTransformerBlock
{block(c['inter_layers'])}

MaskNet: !new:{DUAL_PATH}.Dual_Path_Model
  num_spks: {c['num_spks']}
  in_channels: {c['N']}
  out_channels: {width}
  num_layers: {c['num_layers']}
  K: {c['K']}
  intra_model: !ref <SBtfintra>
  inter_model: !ref <SBtfinter>
  norm: {c['norm']}
  linear_layer_after_inter_intra: {v(c['linear_layer_after_inter_intra'])}
  skip_around_intra: {v(c['skip_around_intra'])}
  use_global_pos_enc: {v(c['use_global_pos_enc'])}
  max_length: {c['max_length']}

""" + _filterbank_yaml(c["N"], c["kernel_size"])
