"""What every recipe's ``train.py`` does around its ``main``: composing the yaml, loading
it with one-line errors, starting (or refusing to restart) a run folder, and leaving DDP
cleanly.

A recipe yaml may start with ``extends: [base.yaml, ...]``: it is then its bases, merged
in order, with its own top-level keys replacing theirs (a whole value each, not a deep
merge). A variant of a model is therefore a few lines naming what differs, and every
top-level key of every base stays a plain ``--key=value`` override. A base is looked up
next to the file that names it, then in the project's shared ``hparams/`` folder.
"""

import collections.abc
import errno
import io
import logging
import math
import os
import re
import sys
from pathlib import Path

import ruamel.yaml
import ruamel.yaml.constructor
import ruamel.yaml.nodes
import torch
from hyperpyyaml import load_hyperpyyaml

from spksep_modules import SpkSepError, one_line, with_current_names
from spksep_modules.checkpoints import prepare_output_folder

EXTENDS = "extends"
SHARED_HPARAMS = Path(__file__).resolve().parents[2] / "hparams"

logger = logging.getLogger(__name__)

# Ranges of the recipes' numeric keys, checked (with the overrides applied) before anything
# is built, so that e.g. a negative batch size is one line naming the key, not a traceback
# from deep inside a constructor. A key is checked only where the yaml has it.
AT_LEAST_ONE = (
    "batch_size", "number_of_epochs", "num_spks", "sample_rate", "calibration_batches",
    "N", "L", "B", "H", "P", "X", "R",
    "stack_channels", "num_layers", "layers_per_group", "stack_kernel_size", "film_hidden",
    "refine_iterations", "window", "sinc_filters", "sinc_length", "gru_units", "embedding_dim",
    "K", "kernel_size", "intra_layers", "inter_layers", "nhead", "d_ffn",
    "max_nonfinite_in_a_row", "global_batch_size",
)
POSITIVE = ("lr", "segment_seconds", "valid_segment_seconds", "max_grad_norm")
NON_NEGATIVE = ("num_workers", "patience", "ckpt_interval_minutes", "perceptual_warmup",
                "lb", "lp", "l1", "l2", "alpha")
SHARE = ("valid_share",)  # strictly between 0 and 1
UNIT_INTERVAL = ("dropout",)  # 0 <= value < 1
# Keys that may be null although the yaml gives a number (null: whole utterances).
NULLABLE = ("segment_seconds",)
# Booleans that may also be "auto": the model chooses per machine (bf16 products only where
# the CPU has native bf16: models.conv_tasnet).
AUTO_BOOLEANS = ("bf16_products",)

# A run folder that holds checkpoints is resumed only with the yaml it was started with;
# these keys may differ (where the data is now, more epochs, loader processes, ...).
MAY_CHANGE_ON_RESUME = ("output_folder", "data_folder", "number_of_epochs", "num_workers",
                        "ckpt_interval_minutes", "compile")
ALLOW_CHANGED_FLAG = "--allow_changed_hparams"
ALLOW_CHANGED_ENV = "SPKSEP_ALLOW_CHANGED_HPARAMS"
DEBUG_ENV = "SPKSEP_DEBUG"
# Errors of the machine, not of the code: one line, like a user's mistake.
_ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


def _find_base(name: str, folder: Path) -> Path:
    for candidate in (folder / name, SHARED_HPARAMS / name):
        if candidate.is_file():
            return candidate.resolve()
    raise SpkSepError(f"{folder / name}: base yaml not found (nor in {SHARED_HPARAMS})")


def _compose(path: Path, yaml, chain=()):
    if path in chain:
        raise SpkSepError(f"{path}: extends itself (through {chain[-1].name})")
    try:
        with open(path, encoding="utf-8") as fin:
            doc = yaml.load(fin)
    except OSError as err:
        raise SpkSepError(f"{path}: cannot read hparams file ({err.strerror})") from None
    except ruamel.yaml.YAMLError as err:
        raise SpkSepError(f"{path}: not valid yaml ({one_line(err)})") from None
    bases = doc.pop(EXTENDS, None) or []
    merged = None
    for name in [bases] if isinstance(bases, str) else bases:
        part = _compose(_find_base(name, path.parent), yaml, chain + (path,))
        if merged is None:
            merged = part
        else:
            merged.update(part)
    if merged is None:
        return doc
    for key, value in doc.items():  # a replaced key keeps its place, a new one is appended
        merged[key] = value
    return merged


def compose_hparams(hparams_file) -> str:
    """The yaml text of ``hparams_file`` with its ``extends`` bases merged in (and the
    names of modules and functions that have moved brought up to date).

    Example
    -------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     _ = Path(tmp, "base.yaml").write_text("lr: 0.001\\nN: 512\\n")
    ...     _ = Path(tmp, "small.yaml").write_text("extends: base.yaml\\nN: 64\\n")
    ...     print(compose_hparams(Path(tmp, "small.yaml")).strip())
    lr: 0.001
    N: 64
    """
    path = Path(hparams_file).resolve()
    yaml = ruamel.yaml.YAML()
    out = io.StringIO()
    yaml.dump(_compose(path, yaml), out)
    return with_current_names(out.getvalue())  # a yaml naming moved modules or functions


def load_hparams(hparams_file, overrides):
    """The recipe's yaml (composed) with its command-line overrides; an override naming
    no key of the yaml, a ``!PLACEHOLDER`` left unset, an override of the wrong type (a
    word where the yaml has a number, ...) or a value out of range (a batch size below 1,
    a non-positive learning rate, ...) is a one-line ``SpkSepError`` naming the key.

    Example
    -------
    >>> import tempfile
    >>> tmp = tempfile.TemporaryDirectory()
    >>> _ = Path(tmp.name, "train.yaml").write_text("lr: 0.001\\nbatch_size: 4\\n")
    >>> load_hparams(Path(tmp.name, "train.yaml"), "batch_size: 8")  # as from --batch_size=8
    {'lr': 0.001, 'batch_size': 8}
    >>> load_hparams(Path(tmp.name, "train.yaml"), "btach_size: 8")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
        ...
    spksep_modules.SpkSepError: .../train.yaml: Override 'btach_size' not found in: ['lr', 'batch_size']
    >>> load_hparams(Path(tmp.name, "train.yaml"), "lr: abc")
    Traceback (most recent call last):
        ...
    spksep_modules.SpkSepError: --lr: expected a number, got 'abc'
    >>> load_hparams(Path(tmp.name, "train.yaml"), "batch_size: -2")
    Traceback (most recent call last):
        ...
    spksep_modules.SpkSepError: --batch_size: must be at least 1, got -2
    >>> tmp.cleanup()
    """
    text = compose_hparams(hparams_file)
    check_overrides(text, overrides, hparams_file)
    try:
        return load_hyperpyyaml(text, overrides)
    except (KeyError, ValueError) as err:
        message = " ".join(map(str, err.args))
        if not any(w in message for w in ("Override", "overrides", "PLACEHOLDER")):
            raise
        raise SpkSepError(f"{hparams_file}: {message}") from None


def _parse_overrides(overrides, where):
    if not overrides:
        return {}
    if isinstance(overrides, str):
        try:
            overrides = ruamel.yaml.YAML().load(overrides)
        except ruamel.yaml.constructor.DuplicateKeyError as err:
            key = re.search(r'duplicate key "([^"]*)"', str(err))
            raise SpkSepError(f"--{key.group(1) if key else '?'}: given twice on the command line") from None
        except ruamel.yaml.YAMLError as err:
            raise SpkSepError(f"command-line overrides: not valid yaml ({one_line(err)})") from None
    if not isinstance(overrides, collections.abc.Mapping):
        raise SpkSepError(f"{where}: overrides must be key: value pairs, got {overrides!r}")
    return overrides


def _is_reference(value):
    """A ``!ref``, ``!new:``, ``!PLACEHOLDER``... node: what it stands for is not known yet."""
    return getattr(value, "tag", None) is not None and getattr(value.tag, "value", None) is not None


def _kind(value):
    """The type of a plain yaml value that an override must keep, with its name."""
    if isinstance(value, bool):
        return "a boolean (True or False)", lambda v: isinstance(v, bool)
    if isinstance(value, int):
        return "an integer", lambda v: isinstance(v, int) and not isinstance(v, bool)
    if isinstance(value, float):
        return "a number", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
    if isinstance(value, collections.abc.Mapping):
        return "a mapping such as {key: value, ...}", lambda v: isinstance(v, collections.abc.Mapping)
    if isinstance(value, list):
        return "a list such as [a, b]", lambda v: isinstance(v, list)
    return None, None


def check_overrides(yaml_text, overrides, hparams_file="hparams"):
    """Overrides keep the type of the yaml's own plain values, and the recipes' numeric
    keys their range (``AT_LEAST_ONE``, ``POSITIVE``, ``NON_NEGATIVE``, ``SHARE``,
    ``UNIT_INTERVAL``).

    Example
    -------
    >>> check_overrides("lr: 0.001\\nfreeze: True\\n", "lr: 1e-4\\nfreeze: False")  # fine
    >>> check_overrides("lr: 0.001\\nfreeze: True\\n", "freeze: maybe")
    Traceback (most recent call last):
        ...
    spksep_modules.SpkSepError: --freeze: expected a boolean (True or False), got 'maybe'
    >>> check_overrides("bf16_products: False\\n", "bf16_products: auto")  # chosen per machine
    >>> check_overrides("segment_seconds: 3.0\\n", "segment_seconds: 0")
    Traceback (most recent call last):
        ...
    spksep_modules.SpkSepError: --segment_seconds: must be positive, got 0
    """
    doc = ruamel.yaml.YAML().load(yaml_text) or {}
    given = _parse_overrides(overrides, hparams_file)
    for key, value in given.items():
        if key not in doc or _is_reference(value):
            continue  # unknown keys: load_hyperpyyaml's own message
        default = doc[key]
        if value is None:
            if default is None or key in NULLABLE or _is_reference(default) or isinstance(default, str):
                continue
            what, _ = _kind(default)
            if what is not None:
                raise SpkSepError(f"--{key}: expected {what}, got null")
            continue
        if key in AUTO_BOOLEANS and value == "auto":
            continue  # a boolean chosen per machine (see AUTO_BOOLEANS)
        what, fits = _kind(default)
        if default is None and key in AT_LEAST_ONE + POSITIVE + NON_NEGATIVE + SHARE + UNIT_INTERVAL:
            what, fits = _kind(0.0)
        if what is not None and not fits(value):
            raise SpkSepError(f"--{key}: expected {what}, got {value!r}")
    for key in AT_LEAST_ONE + POSITIVE + NON_NEGATIVE + SHARE + UNIT_INTERVAL:
        if key not in doc:
            continue
        value = given.get(key, doc[key])
        if value is None or _is_reference(value) or isinstance(value, bool) \
                or not isinstance(value, (int, float)):
            continue
        name = f"--{key}" if key in given else f"{hparams_file}: {key}"
        if not math.isfinite(value):
            raise SpkSepError(f"{name}: must be a finite number, got {value}")
        if key in AT_LEAST_ONE and value < 1:
            raise SpkSepError(f"{name}: must be at least 1, got {value}")
        if key in POSITIVE and not value > 0:
            raise SpkSepError(f"{name}: must be positive, got {value}")
        if key in NON_NEGATIVE and value < 0:
            raise SpkSepError(f"{name}: must be 0 or more, got {value}")
        if key in SHARE and not 0 < value < 1:
            raise SpkSepError(f"{name}: must be between 0 and 1 (exclusive), got {value}")
        if key in UNIT_INTERVAL and not 0 <= value < 1:
            raise SpkSepError(f"{name}: must be at least 0 and below 1, got {value}")


def start_run(hparams_file, overrides, output_folder):
    """``sb.create_experiment_directory`` with the *composed* yaml, overrides resolved,
    saved as the run's ``hyperparams.yaml`` (what rebuilds the run later).

    Before anything is written: the output folder must be creatable and writable, and a
    folder that already holds checkpoints must have been started with the same yaml
    (:func:`check_same_run`), so a rerun resumes the run it names and never mixes two.

    Example
    -------
    >>> import tempfile
    >>> from unittest import mock
    >>> sb_setup = mock.patch("speechbrain.create_experiment_directory")  # logging, env.log...
    >>> with tempfile.TemporaryDirectory() as run, sb_setup:
    ...     _ = Path(run, "train.yaml").write_text("lr: 0.001\\nbatch_size: 4\\n")
    ...     start_run(Path(run, "train.yaml"), "batch_size: 8", run)
    ...     Path(run, "hyperparams.yaml").read_text().splitlines()[1:]  # after "# Composed from"
    ['lr: 0.001', 'batch_size: 8']
    """
    import speechbrain as sb
    from hyperpyyaml import resolve_references

    output_folder = prepare_output_folder(output_folder)
    resolved = resolve_references(compose_hparams(hparams_file), overrides).getvalue()
    changed = check_same_run(resolved, hparams_file, overrides, output_folder)
    try:
        sb.create_experiment_directory(experiment_directory=output_folder)
        if sb.utils.distributed.if_main_process():
            with open(os.path.join(output_folder, "hyperparams.yaml"), "w", encoding="utf-8") as f:
                f.write(f"# Composed from {os.path.abspath(hparams_file)}\n")
                f.write(resolved)
    except OSError as err:
        raise SpkSepError(
            f"{err.filename or output_folder}: cannot write the run's files ({err.strerror})"
        ) from None
    if changed:
        logger.warning(f"{output_folder}: resuming with changed hyperparameters "
                       f"({', '.join(changed)}), as {ALLOW_CHANGED_FLAG} asked")


class _TagKeepingConstructor(ruamel.yaml.constructor.SafeConstructor):
    """Plain Python values; a tagged node (``!new:...``, ``!name:...``) becomes
    ``(tag, value)``, so two resolved yamls compare by value, not by layout or comments."""


def _tagged(constructor, suffix, node):
    if isinstance(node, ruamel.yaml.nodes.MappingNode):
        value = constructor.construct_mapping(node, deep=True)
    elif isinstance(node, ruamel.yaml.nodes.SequenceNode):
        value = constructor.construct_sequence(node, deep=True)
    else:
        value = constructor.construct_scalar(node)
    return ("!" + suffix, value)


_TagKeepingConstructor.add_multi_constructor("!", _tagged)


def _top_level(text: str) -> dict:
    """The top-level keys of a resolved yaml with their values, tags kept as tuples (with
    today's names: a run saved before a module moved compares equal to its yaml now)."""
    yaml = ruamel.yaml.YAML(typ="safe", pure=True)
    yaml.Constructor = _TagKeepingConstructor
    return dict(yaml.load(with_current_names(text)) or {})


def check_same_run(resolved: str, hparams_file, overrides, output_folder):
    """Refuses to resume a run folder that holds checkpoints with other hyperparameters
    than it was started with (its ``hyperparams.yaml``), naming the keys that changed (the
    keys of ``MAY_CHANGE_ON_RESUME`` may change), unless ``--allow_changed_hparams`` (or
    ``SPKSEP_ALLOW_CHANGED_HPARAMS=1``) asks for it; a run of another model
    (``model_name``) is always refused. Returns the changed keys that were allowed.
    ``resolved`` is the new composed yaml with its overrides resolved.

    Example
    -------
    >>> import tempfile
    >>> tmp = tempfile.TemporaryDirectory()
    >>> os.makedirs(os.path.join(tmp.name, "save", "CKPT+1"))  # a run with a checkpoint
    >>> _ = Path(tmp.name, "hyperparams.yaml").write_text("lr: 0.001\\nbatch_size: 4\\n")
    >>> check_same_run("lr: 0.001\\nbatch_size: 4\\n", "t.yaml", "", tmp.name)  # same: resume
    []
    >>> check_same_run("lr: 0.01\\nbatch_size: 4\\n", "t.yaml", "", tmp.name)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
        ...
    spksep_modules.SpkSepError: ...: holds a run started with other hyperparameters (changed: lr); ...
    >>> tmp.cleanup()
    """
    saved_file = os.path.join(output_folder, "hyperparams.yaml")
    save_dir = os.path.join(output_folder, "save")
    has_checkpoints = os.path.isdir(save_dir) and any(
        name.startswith("CKPT+") for name in os.listdir(save_dir))
    if not has_checkpoints or not os.path.isfile(saved_file):
        return []
    try:
        with open(saved_file, encoding="utf-8") as f:
            saved = _top_level(f.read())
    except (OSError, ruamel.yaml.YAMLError, UnicodeDecodeError):
        raise SpkSepError(f"{saved_file}: unreadable; this folder holds checkpoints of an "
                          "unknown run: choose another --output_folder") from None
    saved_name = saved.get("model_name")
    new = _top_level(resolved)
    new_name = new.get("model_name")
    if saved_name != new_name:
        raise SpkSepError(
            f"{output_folder}: holds a run of " + (f"model {saved_name!r}" if saved_name else "another recipe")
            + f", but {hparams_file} trains " + (f"{new_name!r}" if new_name else "another kind of model")
            + "; choose another --output_folder"
        )
    keep = {k: saved[k] for k in MAY_CHANGE_ON_RESUME
            if k in saved and k in new and not isinstance(saved[k], (tuple, dict, list))}
    if keep:
        # Resolve again with the saved values of the keys that may change, so that what
        # refers to them (output paths, loader options) compares equal too.
        from hyperpyyaml import resolve_references

        merged = dict(_parse_overrides(overrides, hparams_file))
        merged.update(keep)
        new = _top_level(resolve_references(compose_hparams(hparams_file), merged).getvalue())
    # Keys only one side has came with another version of the code (a new option and its
    # default), not from the user: they do not stop a resume.
    changed = [k for k in new if k in saved and k not in MAY_CHANGE_ON_RESUME and saved[k] != new[k]]
    if changed and not allow_changed_hparams():
        derived = _derived(changed, hparams_file)
        direct = [k for k in changed if k not in derived] or changed
        shown = ", ".join(direct[:8]) + (f" (+{len(direct) - 8} more)" if len(direct) > 8 else "")
        if derived and direct is not changed:
            shown += f"; through references: {', '.join(derived[:4])}" + ("..." if len(derived) > 4 else "")
        raise SpkSepError(
            f"{output_folder}: holds a run started with other hyperparameters (changed: {shown}); "
            f"rerun with the same ones to resume it, choose another --output_folder, or pass "
            f"{ALLOW_CHANGED_FLAG} to resume it with these"
        )
    return changed


def _derived(changed, hparams_file):
    """The keys of ``changed`` whose yaml value refers (``<key>``) to another changed key."""
    try:
        doc = ruamel.yaml.YAML().load(compose_hparams(hparams_file)) or {}
    except SpkSepError:
        return []
    derived = []
    for key in changed:
        if key not in doc:
            continue
        buf = io.StringIO()
        ruamel.yaml.YAML().dump({key: doc[key]}, buf)
        if any(f"<{other}>" in buf.getvalue() for other in changed if other != key):
            derived.append(key)
    return derived


def allow_changed_hparams() -> bool:
    """Whether ``--allow_changed_hparams`` (taken off the command line by :func:`run`) or
    ``SPKSEP_ALLOW_CHANGED_HPARAMS=1`` asks to resume a run with changed hyperparameters.

    Example
    -------
    >>> os.environ.pop(ALLOW_CHANGED_ENV, None); allow_changed_hparams()
    False
    """
    return os.environ.get(ALLOW_CHANGED_ENV, "").lower() not in ("", "0", "false", "no")


def shutdown_distributed():
    """Leave the process group together: a rank that exits while another still talks to
    it makes gloo abort (SIGABRT) at interpreter exit.

    Example
    -------
    >>> shutdown_distributed()  # without DDP (no process group) it does nothing
    >>> torch.distributed.is_available() and torch.distributed.is_initialized()
    False
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def _take_flags(argv):
    """``argv`` without spksep's own flags (SpeechBrain would read them as yaml overrides);
    ``--allow_changed_hparams[=True]`` sets ``SPKSEP_ALLOW_CHANGED_HPARAMS=1``."""
    rest = []
    for arg in argv:
        name, _, value = arg.partition("=")
        if name == ALLOW_CHANGED_FLAG:
            if value.lower() not in ("", "true", "1", "yes", "false", "0", "no"):
                raise SpkSepError(f"{ALLOW_CHANGED_FLAG}: expected True or False, got {value!r}")
            os.environ[ALLOW_CHANGED_ENV] = "0" if value.lower() in ("false", "0", "no") else "1"
        else:
            rest.append(arg)
    return rest


def run(main):
    """Call ``main(argv)``; a user's mistake (``SpkSepError``) ends with one line and exit
    status 2, not a traceback. So does an ``OSError`` of the machine rather than the code
    (disk full, quota, read-only file system, permission denied). ``SPKSEP_DEBUG=1``
    shows the traceback instead.

    Example
    -------
    >>> import contextlib
    >>> def main(argv):
    ...     raise SpkSepError("data/train.csv: CSV not found (run data preparation first)")
    >>> with contextlib.redirect_stderr(sys.stdout):  # show the line printed on stderr
    ...     try:
    ...         run(main)
    ...     except SystemExit as exit:
    ...         print("exit status", exit.code)
    error: data/train.csv: CSV not found (run data preparation first)
    exit status 2
    """
    debug = os.environ.get(DEBUG_ENV, "").lower() not in ("", "0", "false", "no")
    try:
        main(_take_flags(sys.argv[1:]))
        shutdown_distributed()
    except SpkSepError as err:
        if debug:
            raise
        print(f"error: {one_line(err)}", file=sys.stderr)
        sys.exit(2)
    except OSError as err:
        if debug or err.errno not in _ENVIRONMENT_ERRNOS:
            raise
        where = f"{err.filename}: " if err.filename else ""
        print(f"error: {where}{err.strerror or err} (set {DEBUG_ENV}=1 for the traceback)",
              file=sys.stderr)
        sys.exit(2)
