"""Turning a folder into a separator: the one place that knows every kind of folder a
trained separator is kept in.

- a ``train.py`` run folder (``hyperparams.yaml`` and ``save/CKPT+*/``): the best
  checkpoint's state dict describes the separator and holds its weights; runs saved by
  spksep 0.1, whose checkpoints carry no description, are rebuilt from the run's yaml;
- a package written by ``spksep package`` (``package.json`` and ``model.ckpt``; written by
  ``deploy.package``, read here by :func:`load_package`);
- a SpeechBrain separator folder or a SpeechBrain recipe's training folder
  (``models.speechbrain_folder``).

:func:`load_separator` takes any of them. The yaml files use two of its forms:
:func:`load_basic_model` (the conditioned model's ``basic_model``, checked against the
sizes the yaml asks for) and :func:`initialised` (a fine-tuning run's ``init_from``).
Separating users' files, packaging and exporting (``deploy``), training (``training``) and
figures (``reports``) all load through here; this module imports none of them.
"""

import json
import os

import ruamel.yaml
import torch
from hyperpyyaml import load_hyperpyyaml

from spksep_modules import SpkSepError, with_current_names
from spksep_modules.checkpoints import AtomicCheckpointer
from spksep_modules.models.base import separator_from_state
from spksep_modules.models.speechbrain_folder import (
    is_speechbrain_folder,
    is_speechbrain_training_folder,
    load_speechbrain_folder,
)
from spksep_modules.nnet.frozen import keeps_global_rng

# ------------------------------------------------------------------ packages
PACKAGE_FILE = "package.json"
WEIGHTS_FILE = "model.ckpt"
FORMAT = "spksep-package"


def is_package(folder) -> bool:
    """Whether ``folder`` is a package folder (holds ``package.json``).

    Example
    -------
    >>> is_package("no/such/folder")
    False
    """
    return os.path.isfile(os.path.join(os.fspath(folder), PACKAGE_FILE))


def load_package(folder, device: str = "cpu"):
    """``(separator in eval mode on device, sample_rate)`` of a package folder.

    Example
    -------
    >>> load_package("no/such/folder")
    Traceback (most recent call last):
        ...
    spksep_modules.SpkSepError: no/such/folder: not a package (no package.json)
    """
    folder = os.fspath(folder)
    if not is_package(folder):
        raise SpkSepError(f"{folder}: not a package (no {PACKAGE_FILE})")
    try:
        with open(os.path.join(folder, PACKAGE_FILE), encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, ValueError) as err:
        raise SpkSepError(f"{folder}/{PACKAGE_FILE}: cannot read it ({err})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or "sample_rate" not in meta:
        raise SpkSepError(f"{folder}/{PACKAGE_FILE}: not an spksep package description")
    path = os.path.join(folder, os.path.basename(meta.get("weights", WEIGHTS_FILE)))
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # missing, truncated or foreign file
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise SpkSepError(f"{path}: cannot read the package's weights ({reason})") from None
    separator = separator_from_state(state, path)
    return separator.to(device).eval(), int(meta["sample_rate"])


# ------------------------------------------------------------------ run folders
# Objects a run's yaml builds for training only. Only runs saved before separators
# carried their own description are rebuilt from the yaml, and they must not need e.g.
# the wav2vec checkpoint the perceptual loss was trained with.
_TRAINING_ONLY = ("perceptual", "perceptual_loss", "perceptual_term", "frozen_representation")


def _run_yaml(run_dir: str) -> str:
    hparams_file = os.path.join(run_dir, "hyperparams.yaml")
    if not os.path.isfile(hparams_file):
        raise SpkSepError(
            f"{run_dir}: not a training run folder (no hyperparams.yaml); "
            "train one with recipes/LibriMix/separation/train.py"
        )
    with open(hparams_file, encoding="utf-8") as f:
        return f.read()


def _from_run_yaml(run_dir: str, text: str, keys: dict, state: dict):
    """Runs saved by spksep 0.1: the separator as the run's yaml (``text``, parsed as
    ``keys``) builds it, with the names of functions and modules that have moved since
    brought up to date (:func:`spksep_modules.with_current_names`)."""
    unused = {k: None for k in _TRAINING_ONLY if k in keys}
    if "loss" in keys:
        unused["loss"] = None
    try:
        separator = load_hyperpyyaml(with_current_names(text), overrides=unused)["separator"]
        separator.load_state_dict(state)
    except SpkSepError:
        raise
    except Exception:  # names this version moved or dropped, weights of another layout
        raise SpkSepError(
            f"{run_dir}: saved by an older spksep whose weights this version cannot load; "
            "retrain it with recipes/LibriMix/separation/train.py"
        ) from None
    return separator


def load_separator(run_dir: str, device: str = "cpu"):
    """Rebuild a trained separator from a folder of any kind it is kept in.

    A ``train.py`` run folder: the best checkpoint (lowest validation loss) in ``save/``
    gives both its description and its weights. A SpeechBrain separator folder
    (``hyperparams.yaml``, ``encoder.ckpt``, ``masknet.ckpt``, ``decoder.ckpt``, as
    SpeechBrain publishes its SepFormers), or the output folder of a SpeechBrain
    separation recipe (``hyperparams.yaml`` and ``save/CKPT+*/``) works too
    (``models.speechbrain_folder``), and so does a package folder written by
    ``spksep package`` (:func:`load_package`).

    Returns ``(separator, sample_rate)``; the separator is in eval mode on ``device``.

    Example
    -------
    >>> import pathlib, tempfile
    >>> from spksep_modules.models import ConvTasNet
    >>> with tempfile.TemporaryDirectory() as run:  # what train.py leaves, in miniature
    ...     _ = pathlib.Path(run, "hyperparams.yaml").write_text("sample_rate: 8000\\n")
    ...     model = ConvTasNet(N=16, L=8, B=8, H=16, P=3, X=2, R=1)
    ...     saver = AtomicCheckpointer(os.path.join(run, "save"), {"separator": model})
    ...     _ = saver.save_checkpoint(meta={"loss": -10.0})  # validation loss -10
    ...     separator, rate = load_separator(run)
    >>> same_weights = torch.equal(separator.encoder.weight, model.encoder.weight)
    >>> type(separator).__name__, same_weights, rate, separator.training
    ('ConvTasNet', True, 8000, False)
    """
    if is_package(run_dir):
        return load_package(run_dir, device)
    if is_speechbrain_folder(run_dir) or is_speechbrain_training_folder(run_dir):
        separator, rate = load_speechbrain_folder(run_dir)
        return separator.to(device).eval(), rate
    text = _run_yaml(run_dir)
    checkpointer = AtomicCheckpointer(os.path.join(run_dir, "save"), {}, clean=False)
    ckpt = checkpointer.find_checkpoint(min_key="loss")
    if ckpt is None:
        raise SpkSepError(f"{run_dir}: no checkpoint in save/ (the run has not finished an epoch)")
    if "separator" not in ckpt.paramfiles:
        raise SpkSepError(f"{run_dir}: not a separation run (its checkpoints hold "
                          f"{', '.join(sorted(ckpt.paramfiles))}, no separator)")
    path = ckpt.paramfiles["separator"]
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # truncated or foreign file
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise SpkSepError(f"{path}: cannot read checkpoint ({reason})") from None
    keys = ruamel.yaml.YAML().load(text)  # parsed, not built: only its sample rate is read
    if state.get("_extra_state"):
        separator = separator_from_state(state, path)
    else:
        separator = _from_run_yaml(run_dir, text, keys, state)
    rate = keys.get("sample_rate")
    if rate is None:
        raise SpkSepError(f"{run_dir}/hyperparams.yaml: no sample_rate")
    return separator.to(device).eval(), int(rate)


# ------------------------------------------------------------------ what the yaml files call
def check_sample_rate(source, rate, data_rate, what):
    """One-line error unless a model at ``rate`` Hz (from ``source``) fits data at
    ``data_rate`` Hz (``None``: unchecked). Models are not resampled
    (``models.speechbrain_folder``'s docstring).

    Example
    -------
    >>> check_sample_rate("sepformer-libri2mix", 8000, 8000, "init_from")
    >>> check_sample_rate("sepformer-libri2mix", 8000, 16000, "init_from")
    Traceback (most recent call last):
        ...
    spksep_modules.SpkSepError: init_from: sepformer-libri2mix separates at 8000 Hz but sample_rate is 16000: train at its rate (--sample_rate=8000, LibriMix's wav8k) or use a model trained at 16000 Hz
    """
    if data_rate is None or int(rate) == int(data_rate):
        return
    raise SpkSepError(
        f"{what}: {source} separates at {int(rate)} Hz but sample_rate is {int(data_rate)}: "
        f"train at its rate (--sample_rate={int(rate)}, LibriMix's wav{int(rate) // 1000}k) "
        f"or use a model trained at {int(data_rate)} Hz")


@keeps_global_rng
def load_basic_model(run_dir: str, expected: dict = None, sample_rate: int = None):
    """The trained separator of a run (or of a SpeechBrain separator folder), as the
    conditioned model's basic model (on CPU; the Brain moves it with the rest).

    ``expected`` maps constructor arguments (``N``, ``num_spks``, ...) to the values the
    conditioned yaml asks for; ``None`` values mean "whatever the run has". They are
    checked against the arguments the checkpoint recorded: a mismatch is an error rather
    than a silently different model. ``sample_rate``, the data's, must be the model's
    (``None``: unchecked); a model is not resampled.

    Example
    -------
    >>> load_basic_model("no/such/run", {"N": 512})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
        ...
    spksep_modules.SpkSepError: basic_model: 'no/such/run' is not a run folder; train the baseline first: ...
    """
    if not run_dir or not os.path.isdir(str(run_dir)):
        raise SpkSepError(
            f"basic_model: {run_dir!r} is not a run folder; train the baseline first: "
            "python train.py hparams/convtasnet.yaml --data_folder=... --output_folder=RUN_DIR, "
            "then pass --basic_model=RUN_DIR"
        )
    separator, rate = load_separator(run_dir)
    check_sample_rate(run_dir, rate, sample_rate, "basic_model")
    config = getattr(separator, "config", {})
    for key, want in (expected or {}).items():
        if want is None:
            continue
        if key not in config:
            raise SpkSepError(
                f"basic_model: {run_dir} holds a {type(separator).__name__}, which has no "
                f"{key} (set {key} to null)"
            )
        if config[key] != want:
            raise SpkSepError(
                f"basic_model: {run_dir} was trained with {key}={config[key]}, "
                f"this yaml asks for {key}={want} (set it to null to take the run's)"
            )
    return separator


def initialised(separator, init_from=None, sample_rate=None):
    """``separator`` with the weights of ``init_from`` (a SpeechBrain separator or
    training folder, or a ``train.py`` run folder) of the same family and sizes, or as it
    is when ``init_from`` is null: the start of
    a fine-tuning run (the yaml's ``init_from``). The sizes must match (a one-line error
    names the one to set), and so must the sample rates (``check_sample_rate``).

    A resumed run then loads its own checkpoint over these weights, as any run does.

    Example
    -------
    >>> import tempfile
    >>> from spksep_modules.models import SepFormer, save_speechbrain_folder
    >>> small = dict(N=16, num_layers=1, K=10, intra_layers=1, inter_layers=1, nhead=2,
    ...              d_ffn=32)
    >>> trained, folder = SepFormer(**small), tempfile.TemporaryDirectory()
    >>> save_speechbrain_folder(trained, folder.name, sample_rate=16000)
    >>> model = initialised(SepFormer(**small), folder.name, sample_rate=16000)
    >>> torch.equal(model.encoder.weight, trained.encoder.weight)
    True
    >>> initialised(SepFormer(**{**small, "N": 32}), folder.name)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
        ...
    spksep_modules.SpkSepError: init_from: ...: checkpoint was trained with N=16, the model here has N=32: set N=16 (or retrain)
    >>> folder.cleanup()
    """
    if init_from is None or init_from == "":
        return separator
    init_from = os.fspath(init_from)
    if not os.path.isdir(init_from):
        raise SpkSepError(f"init_from: {init_from!r} is not a folder (expected a SpeechBrain "
                          "separator folder such as sepformer-libri2mix, a SpeechBrain "
                          "training folder, or a run folder)")
    source, rate = load_separator(init_from)
    check_sample_rate(init_from, rate, sample_rate, "init_from")
    try:
        separator.load_state_dict(source.state_dict())
    except SpkSepError as err:
        raise SpkSepError(f"init_from: {init_from}: {err}") from None
    return separator
