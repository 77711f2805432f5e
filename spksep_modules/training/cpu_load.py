"""A warning when a CPU training run starts on cores that other programs already keep busy.

PyTorch's OpenMP threads wait for each other at the end of every parallel region, so one
thread that has to share its core with another program stalls all of them: on a 2-core
machine a 2-thread ``train.py`` beside one other busy process ran 20x slower per step
(bench/NOTES.md, "The perceptual terms on real speech"), far more than the half of the
machine it lost. The fix is the user's (fewer threads, or one training at a time); this
only says so at the start of the run, in its log.
"""

import logging
import os
from typing import Optional

import torch

logger = logging.getLogger(__name__)

# Load (runnable processes, averaged over a minute) below which a core counts as free:
# short bursts of other programs do not justify a warning.
SLACK = 0.5


def oversubscription(threads: int, load: float, cores: int) -> Optional[str]:
    """The warning for a run of ``threads`` threads on ``cores`` cores that already carry
    ``load`` (the 1-minute load average of everything else), or None if they fit.

    Example
    -------
    >>> oversubscription(threads=2, load=0.1, cores=2) is None
    True
    >>> print(oversubscription(threads=2, load=1.0, cores=2))  # doctest: +ELLIPSIS
    2 threads on 2 cores, 1.0 of which other programs already keep busy: ...
    """
    if threads + load <= cores + SLACK:
        return None
    free = max(1, int(cores - load + SLACK))
    return (f"{threads} threads on {cores} cores, {load:.1f} of which other programs already "
            "keep busy: threads that wait for a busy core can slow CPU training many times "
            f"over (20x measured); run one training at a time, or start this one with "
            f"OMP_NUM_THREADS={free}")


def warn_if_oversubscribed() -> Optional[str]:
    """Log :func:`oversubscription` for this process (its thread count, the cores it may
    run on, the machine's 1-minute load average) and return the message, if any. The load
    average counts this process too while it starts up; at most its start-up, a fraction
    of one core, since the run's threads only start with training."""
    try:
        load = os.getloadavg()[0]
    except OSError:  # not available on this platform
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    message = oversubscription(torch.get_num_threads(), load, cores or 1)
    if message:
        logger.warning(message)
    return message
