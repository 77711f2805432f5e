"""A SpeechBrain Checkpointer that survives being killed at any moment.

SpeechBrain lists a folder ``CKPT+...`` as a checkpoint as soon as its ``CKPT.yaml`` exists,
but it writes that file *before* the parameter files and deletes old checkpoints with a
plain ``rmtree``. A run killed in either window leaves a checkpoint that is listed but
cannot be loaded, and the next run stops with ``KeyError: 'separator'``. Here ``CKPT.yaml``
is written last (atomically, via a temporary file), a checkpoint missing any parameter
file is not listed, and half-written folders are cleaned up.
"""

import logging
import os
import shutil
import time

import yaml
from speechbrain.utils.checkpoints import CKPT_PREFIX, METAFNAME, PARAMFILE_EXT, Checkpointer
from speechbrain.utils.distributed import ddp_barrier, if_main_process, main_process_only

logger = logging.getLogger(__name__)


class AtomicCheckpointer(Checkpointer):
    """``speechbrain.utils.checkpoints.Checkpointer`` with crash-safe saving and deleting."""

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
        # Every process must see the new checkpoint before any of them lists checkpoints
        # again (save_and_keep_only deletes next, one collective per deletion).
        ddp_barrier()
        return checkpoint

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
