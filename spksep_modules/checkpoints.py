"""Checkpoint safety: a SpeechBrain Checkpointer that survives being killed at any moment,
one check that a loaded state dict fits a model (:func:`check_state_dict`), and one that
an output folder can be written before any work goes into it
(:func:`prepare_output_folder`: runs, exports, figures).

SpeechBrain lists a folder ``CKPT+...`` as a checkpoint as soon as its ``CKPT.yaml`` exists,
but it writes that file *before* the parameter files and deletes old checkpoints with a
plain ``rmtree``. A run killed in either window leaves a checkpoint that is listed but
cannot be loaded, and the next run stops with ``KeyError: 'separator'``. Here ``CKPT.yaml``
is written last (atomically, via a temporary file), a checkpoint missing any parameter
file is not listed, and half-written folders are cleaned up. A save that fails (disk full)
removes its half-written folder and stops the run with one line; the previous checkpoint
stays (SpeechBrain deletes old checkpoints only after a successful save).
"""

import fnmatch
import logging
import os
import shutil
import tempfile
import time
import traceback

import torch
import yaml
from speechbrain.utils.checkpoints import CKPT_PREFIX, METAFNAME, PARAMFILE_EXT, Checkpointer
from speechbrain.utils.distributed import ddp_barrier, if_main_process, main_process_only

from spksep_modules import SpkSepError

logger = logging.getLogger(__name__)


class AtomicCheckpointer(Checkpointer):
    """``speechbrain.utils.checkpoints.Checkpointer`` with crash-safe saving and deleting.

    Example
    -------
    >>> import tempfile
    >>> model = torch.nn.Linear(2, 2)
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     ckpt = AtomicCheckpointer(folder, recoverables={"model": model})
    ...     _ = ckpt.save_checkpoint(meta={"loss": 1.0})
    ...     [c.meta["loss"] for c in ckpt.list_checkpoints()]
    [1.0]
    """

    def __init__(self, checkpoints_dir, *args, clean=True, **kwargs):
        super().__init__(checkpoints_dir, *args, **kwargs)
        self._pending_meta = None
        if clean:  # readers of a run that may still be training pass clean=False
            self._remove_incomplete()

    @main_process_only
    def _remove_incomplete(self):
        """Folders a killed run left half-written (no ``CKPT.yaml``) are not checkpoints."""
        if not self.checkpoints_dir.is_dir():
            return
        for path in self.checkpoints_dir.iterdir():
            if path.is_dir() and path.name.startswith(CKPT_PREFIX) and not (path / METAFNAME).exists():
                logger.warning(f"removing incomplete checkpoint {path}")
                shutil.rmtree(path, ignore_errors=True)

    def _save_checkpoint_metafile(self, fpath, meta_to_include={}, end_of_epoch=True):
        # Called by save_checkpoint before the parameter files: only remember the meta.
        meta = {"unixtime": time.time(), "end-of-epoch": end_of_epoch, **meta_to_include}
        self._pending_meta = (fpath, meta)
        return meta

    def save_checkpoint(self, *args, **kwargs):
        try:
            checkpoint = super().save_checkpoint(*args, **kwargs)
            if if_main_process() and self._pending_meta is not None:
                fpath, meta = self._pending_meta
                tmp = fpath.with_name(METAFNAME + ".tmp")
                with open(tmp, "w", encoding="utf-8") as f:
                    f.write("# yamllint disable\n")
                    f.write(yaml.dump(meta))
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, fpath)  # the checkpoint exists from here on, complete
                self._pending_meta = None
        except (OSError, RuntimeError) as err:
            if isinstance(err, RuntimeError) and not _is_write_failure(err):
                raise
            raise SpkSepError(self._save_failed(err)) from None
        # Every process must see the new checkpoint before any of them lists checkpoints
        # again (save_and_keep_only deletes next, one collective per deletion).
        ddp_barrier()
        return checkpoint

    def _save_failed(self, err) -> str:
        """Removes the half-written checkpoint; the message for a save that failed (disk
        full, quota, ...). Older checkpoints are untouched: save_and_keep_only deletes
        them only after a save succeeded."""
        folder = self._pending_meta[0].parent if self._pending_meta else None
        self._pending_meta = None
        if folder is not None and if_main_process():
            shutil.rmtree(folder, ignore_errors=True)
        if isinstance(err, OSError):
            reason = err.strerror or str(err)
        else:  # torch.save's writer reports a full disk as e.g. "unexpected pos 576 vs 534"
            reason = "torch.save failed: " + str(err).splitlines()[0]
        try:
            reason += f"; {shutil.disk_usage(self.checkpoints_dir).free / 2**20:.0f} MB free on that disk"
        except OSError:
            pass
        kept = self.find_checkpoint()
        previous = f"{kept.path} is kept" if kept is not None else "no earlier checkpoint exists"
        return (f"{self.checkpoints_dir}: cannot save a checkpoint ({reason}); {previous}: "
                "free some space and rerun the same command to resume")

    def load_checkpoint(self, checkpoint):
        """SpeechBrain's loading, with one line naming the checkpoint when its files do
        not fit what the yaml built (a run of another model, a damaged file)."""
        try:
            super().load_checkpoint(checkpoint)
        except SpkSepError as err:
            if str(checkpoint.path) in str(err):
                raise
            raise SpkSepError(f"{checkpoint.path}: {err}") from None
        except Exception as err:  # torch.load / load_state_dict: multi-line, names no file
            lines = [line.strip() for line in str(err).splitlines() if line.strip()]
            reason = f"{type(err).__name__}: {lines[0] if lines else ''}".rstrip(": ")
            if len(reason) > 200:
                reason = reason[:200] + "..."
            raise SpkSepError(
                f"{checkpoint.path}: cannot load this checkpoint into the model the yaml builds "
                f"({reason}): a run of another model or a damaged file; choose another "
                "--output_folder"
            ) from None

    def list_checkpoints(self):
        # A run killed while SpeechBrain deleted an old checkpoint (rmtree, in any file
        # order) may leave its CKPT.yaml without some parameter files: skip those.
        return [
            ckpt for ckpt in super().list_checkpoints()
            if all(
                (ckpt.path / f"{name}{PARAMFILE_EXT}").exists()
                for name in self.recoverables
                if name not in self.optional_recoverables  # e.g. the AMP scaler
            )
        ]


def _is_write_failure(err: RuntimeError) -> bool:
    """torch.save's C++ writer turns a failed write (a full disk) into a RuntimeError whose
    text varies ("unexpected pos 576 vs 534", "basic_ios::clear: iostream error", ...):
    recognised by being raised inside ``torch.serialization``."""
    text = str(err)
    if any(w in text for w in ("PytorchStreamWriter", "inline_container", "iostream error")):
        return True
    frames = traceback.extract_tb(err.__traceback__)
    return any(os.path.basename(f.filename) == "serialization.py"
               and os.path.basename(os.path.dirname(f.filename)) == "torch" for f in frames)


def _short_list(items, limit: int = 3) -> str:
    more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def check_state_dict(expected, state: dict, path, what: str, ignore=()) -> None:
    """Raises a one-line ``SpkSepError`` unless ``state`` has exactly the keys and tensor
    shapes of ``expected``, so that a wrong file is reported before ``load_state_dict``
    (whose multi-line error names neither the file nor what it should have been).

    Arguments
    ---------
    expected : nn.Module or dict
        The model, or the state dict it expects.
    state : dict
        The loaded state dict.
    path : str or Path
        The file ``state`` came from; the message starts with it.
    what : str
        What the file should be, as in ``"{path}: not {what}: ..."`` (e.g. "a RawNet2
        checkpoint").
    ignore : sequence of str
        ``fnmatch`` patterns of keys that may be missing from ``state`` or extra in it
        (e.g. ``"*.num_batches_tracked"``, bookkeeping that older files lack).

    Example
    -------
    >>> net = torch.nn.Linear(3, 2)  # weight [2, 3], bias [2]
    >>> check_state_dict(net, net.state_dict(), "ok.pt", "a Linear checkpoint")
    >>> check_state_dict(net, {"weight": torch.zeros(2, 4), "scale": torch.ones(1)},
    ...                  "bad.pt", "a Linear checkpoint")
    Traceback (most recent call last):
    spksep_modules.SpkSepError: bad.pt: not a Linear checkpoint: missing keys bias; unexpected keys scale; shape mismatch for weight: checkpoint (2, 4), model (2, 3)
    """
    if not isinstance(expected, dict):
        expected = expected.state_dict()

    def ignored(key):
        return any(fnmatch.fnmatchcase(key, pattern) for pattern in ignore)

    missing = [k for k in expected if k not in state and not ignored(k)]
    unexpected = [k for k in state if k not in expected and not ignored(k)]
    mismatched = []
    for key in (k for k in expected if k in state):
        got, want = state[key], tuple(expected[key].shape)
        if not torch.is_tensor(got) or tuple(got.shape) != want:
            shape = tuple(got.shape) if torch.is_tensor(got) else type(got).__name__
            mismatched.append(f"{key}: checkpoint {shape}, model {want}")
    problems = []
    if missing:
        problems.append(f"missing keys {_short_list(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_short_list(unexpected)}")
    if mismatched:  # one in full: shapes hold commas
        more = f" (+{len(mismatched) - 1} more)" if len(mismatched) > 1 else ""
        problems.append(f"shape mismatch for {mismatched[0]}{more}")
    if problems:
        raise SpkSepError(f"{path}: not {what}: {'; '.join(problems)}")


def prepare_output_folder(output_folder) -> str:
    """Creates ``output_folder`` and checks that files can be written in it; returns it.

    Example
    -------
    >>> import tempfile
    >>> with tempfile.NamedTemporaryFile() as f:  # doctest: +ELLIPSIS
    ...     prepare_output_folder(os.path.join(f.name, "run"))
    Traceback (most recent call last):
        ...
    spksep_modules.SpkSepError: .../run: cannot create the output folder (Not a directory)
    """
    if not isinstance(output_folder, (str, os.PathLike)) or not os.fspath(output_folder):
        raise SpkSepError(f"output_folder: expected a folder path, got {output_folder!r}")
    path = os.fspath(output_folder)
    if os.path.exists(path) and not os.path.isdir(path):
        raise SpkSepError(f"{path}: the output folder is a file, not a folder")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as err:
        raise SpkSepError(f"{path}: cannot create the output folder ({err.strerror})") from None
    try:  # every process its own probe: DDP processes may share the folder
        fd, probe = tempfile.mkstemp(prefix=".write_test", dir=path)
        os.close(fd)
        os.remove(probe)
    except OSError as err:
        raise SpkSepError(f"{path}: cannot write in the output folder ({err.strerror})") from None
    return path
