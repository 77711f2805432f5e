"""Process-wide settings that make CPU training and inference faster.

Why: glibc's ``malloc`` serves every block above its mmap threshold (32 MB at most) with a
fresh ``mmap`` and hands it back to the OS on ``free``. A Conv-TasNet activation on 8 s of
audio is 32.8 MB (``[1, 512, 16000]`` floats), so without this every such tensor is new
memory whose first write page-faults, 8,000 times per tensor, and that costs more than
the arithmetic of the element-wise op that fills it. Keeping freed blocks in the heap lets
the next tensor reuse pages that are already mapped: the whole speaker-conditioned
pipeline ran 1.6x faster on 8 s of audio (RTF 0.52 -> 0.32, 2 threads, fp32).

Training gains the most: at the paper's sizes every activation of a batch of 4 x 3 s is
49 MB (``[4, 512, 6000]``), above the threshold, and a step allocates hundreds of them, so
``train.py`` calls :func:`keep_freed_memory` too (yaml ``keep_freed_memory``, on by
default): the training step at the paper's sizes (2 threads, AVX2 limits) took 0.45x the time
with it (11.1 -> 5.0 s, ``bench/bench_convtasnet.py``), at the small configuration, whose
activations are 8 MB, 0.93-0.94x (``bench/bench_forms.py``, both instruction sets).

The price: freed blocks stay resident, and when a process allocates blocks of many
different sizes the heap fragments and grows past the process's real peak (a process
training at the paper's sizes peaked at 7.4 GB with it against 6.1 GB without). A benchmark process
that timed SpeechBrain's and our training steps one after the other at the paper's sizes
grew to 21 GB with it (OOM-killed on a 24 GB machine) against a 16 GB peak without, which
is why benchmarks set it per process. A library import never calls it;
``SPKSEP_MALLOC=system`` in the environment, or ``keep_freed_memory: False`` in a training
yaml, turns it off.
"""

import ctypes
import ctypes.util
import os

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


_kept = False  # whether keep_freed_memory took effect in this process


def freed_memory_kept() -> bool:
    """Whether :func:`keep_freed_memory` took effect in this process."""
    return _kept


def keep_freed_memory(trim_threshold: int = 1 << 30) -> bool:
    """Serve large blocks from the heap and keep up to ``trim_threshold`` bytes of freed
    heap top for reuse. Returns whether it took effect (glibc only; else a no-op).

    Arguments
    ---------
    trim_threshold : int
        Bytes of freed memory at the top of the heap kept mapped (glibc's
        ``M_TRIM_THRESHOLD``); default 1 GiB.

    Returns
    -------
    bool
        True when glibc accepted both settings; False (nothing changed) with
        ``SPKSEP_MALLOC=system`` or on another C library.

    Example
    -------
    >>> from unittest import mock
    >>> with mock.patch.dict(os.environ, {"SPKSEP_MALLOC": "system"}):
    ...     keep_freed_memory()  # opted out: the allocator is left alone
    False
    """
    if os.environ.get("SPKSEP_MALLOC", "").lower() == "system":
        return False
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS): leave the allocator alone
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    global _kept
    _kept = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, trim_threshold))
    return _kept
