"""What every recipe's ``train.py`` does around its ``main``: composing the yaml, loading
it with one-line errors, and leaving DDP cleanly.

A recipe yaml may start with ``extends: [base.yaml, ...]``: it is then its bases, merged
in order, with its own top-level keys replacing theirs (a whole value each, not a deep
merge). A variant of a model is therefore a few lines naming what differs, and every
top-level key of every base stays a plain ``--key=value`` override. A base is looked up
next to the file that names it, then in the project's shared ``hparams/`` folder.
"""

import io
import os
import sys
from pathlib import Path

import ruamel.yaml
import torch
from hyperpyyaml import load_hyperpyyaml

from spksep_modules import SpkSepError, one_line

EXTENDS = "extends"
SHARED_HPARAMS = Path(__file__).resolve().parents[1] / "hparams"


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
    """The yaml text of ``hparams_file`` with its ``extends`` bases merged in.

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
    return out.getvalue()


def load_hparams(hparams_file, overrides):
    """The recipe's yaml (composed) with its command-line overrides; an override naming
    no key of the yaml, or a ``!PLACEHOLDER`` left unset, is a one-line ``SpkSepError``.

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
    >>> tmp.cleanup()
    """
    text = compose_hparams(hparams_file)
    try:
        return load_hyperpyyaml(text, overrides)
    except (KeyError, ValueError) as err:
        message = " ".join(map(str, err.args))
        if not any(w in message for w in ("Override", "overrides", "PLACEHOLDER")):
            raise
        raise SpkSepError(f"{hparams_file}: {message}") from None


def start_run(hparams_file, overrides, output_folder):
    """``sb.create_experiment_directory`` with the *composed* yaml, overrides resolved,
    saved as the run's ``hyperparams.yaml`` (what rebuilds the run later).

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

    sb.create_experiment_directory(experiment_directory=output_folder)
    if sb.utils.distributed.if_main_process():
        resolved = resolve_references(compose_hparams(hparams_file), overrides)
        with open(os.path.join(output_folder, "hyperparams.yaml"), "w", encoding="utf-8") as f:
            f.write(f"# Composed from {os.path.abspath(hparams_file)}\n")
            f.write(resolved.getvalue())


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


def run(main):
    """Call ``main(argv)``; a user's mistake (``SpkSepError``) ends with one line and exit
    status 2, not a traceback.

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
    try:
        main(sys.argv[1:])
        shutdown_distributed()
    except SpkSepError as err:
        print(f"error: {one_line(err)}", file=sys.stderr)
        sys.exit(2)
