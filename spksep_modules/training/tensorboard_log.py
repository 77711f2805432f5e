"""Per-epoch statistics in TensorBoard, through SpeechBrain's own ``TensorboardLogger``.

With ``tensorboard: True`` in the yaml, the Brain hands every ``log_stats`` call of the
text log (``train_log.txt``) to this logger too, which writes event files under
``<output_folder>/tensorboard`` (``tensorboard --logdir <output_folder>/tensorboard``).

SpeechBrain's logger numbers its points by counting calls, so a resumed run would start
again at step 1 and draw over its first epochs; here the step is the epoch itself, taken
from the ``epoch`` (or ``Epoch loaded``) entry of the call, and a resumed run continues its
curves. Values that are not numbers (the test summary's model name) are left out, and the
events are flushed after every call, so a killed run loses nothing that was logged.
"""

import numbers

from speechbrain.utils.train_logger import TensorboardLogger

from spksep_modules import SpkSepError


class EpochTensorboardLogger(TensorboardLogger):
    """SpeechBrain's ``TensorboardLogger`` with the epoch as the step.

    Arguments
    ---------
    save_dir : str
        Where the event files go (created if needed).

    Example
    -------
    >>> import glob, os, tempfile
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     logger = EpochTensorboardLogger(folder)
    ...     logger.log_stats({"epoch": 3, "lr": 1e-3}, {"loss": -5.0, "si_snr": 5.0},
    ...                      {"loss": -4.0, "si_snr": 4.0})
    ...     logger.log_stats({"Epoch loaded": 3}, test_stats={"si_snr": 4.1, "model": "convtasnet"})
    ...     steps = {k: dict(v) for k, v in logger.global_step.items() if k != "meta"}
    ...     events = len(glob.glob(os.path.join(folder, "events.out.tfevents.*")))
    >>> steps["valid"], steps["test"], events  # step = epoch; the model name is not a scalar
    ({'loss': 3, 'si_snr': 3}, {'si_snr': 3}, 1)
    """

    def __init__(self, save_dir):
        try:
            super().__init__(save_dir)
        except ImportError:
            raise SpkSepError(
                "tensorboard: True needs the tensorboard package (pip install tensorboard)"
            ) from None

    def log_stats(self, stats_meta, train_stats=None, valid_stats=None, test_stats=None,
                  verbose=False):
        """Log one epoch's (or the test's) numbers at step ``epoch``; see
        ``TrainLogger.log_stats``."""
        numeric = [
            {k: v for k, v in stats.items() if _is_number(v)} if stats is not None else None
            for stats in (stats_meta, train_stats, valid_stats, test_stats)
        ]
        stats_meta, train_stats, valid_stats, test_stats = numeric
        epoch = stats_meta.get("epoch", stats_meta.get("Epoch loaded"))
        if epoch is not None:  # the parent adds one to each counter before writing
            self.global_step["meta"] = int(epoch) - 1
            for dataset, stats in (("train", train_stats), ("valid", valid_stats),
                                   ("test", test_stats)):
                for key in stats or {}:
                    self.global_step[dataset][key] = int(epoch) - 1
        super().log_stats(stats_meta, train_stats, valid_stats, test_stats, verbose)
        if self.writer is not None:  # None on the other processes of a DDP run
            self.writer.flush()


def _is_number(value):
    return isinstance(value, numbers.Number) and not isinstance(value, bool)
