"""A global batch that means the same on 1 or N processes.

One optimiser step averages the gradient over ``per_process x processes x accumulation``
examples: each process's loss is a mean over its batch, DDP averages the processes'
gradients, and SpeechBrain divides each of ``grad_accumulation_factor`` batches' losses by
that factor. With ``global_batch_size`` set in the yaml, the run picks the per-process
batch and the accumulation so that this product is the global batch whatever the number
of processes: ``batch_size`` is then the most one process holds at a time (what fits in its
memory), and fewer GPUs accumulate more batches.
"""

from typing import NamedTuple, Optional

from spksep_modules import SpkSepError


def _processes(count: int) -> str:
    return f"{count} process" + ("" if count == 1 else "es")


class BatchPlan(NamedTuple):
    """How one optimiser step's examples are split: ``per_process`` examples per batch on
    each of ``processes`` processes, ``accumulation`` batches per step."""

    per_process: int
    processes: int
    accumulation: int

    @property
    def global_batch(self) -> int:
        """Examples whose mean gradient one optimiser step takes."""
        return self.per_process * self.processes * self.accumulation

    def describe(self) -> str:
        """The line a run logs at its start.

        Example
        -------
        >>> BatchPlan(6, 2, 2).describe()
        'batch: 6 per process x 2 processes x 2 accumulated = global batch 24'
        """
        return (f"batch: {self.per_process} per process x {_processes(self.processes)} x "
                f"{self.accumulation} accumulated = global batch {self.global_batch}")


def _positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SpkSepError(f"{name}: expected a whole number of at least 1, got {value!r}")
    return value


def plan_batches(batch_size: int, processes: int = 1, accumulation: Optional[int] = None,
                 global_batch_size: Optional[int] = None) -> BatchPlan:
    """The per-process batch and accumulation of a run.

    Arguments
    ---------
    batch_size : int
        The yaml's ``batch_size``: the per-process batch without ``global_batch_size``,
        the largest per-process batch with it.
    processes : int
        DDP processes (1 without DDP).
    accumulation : int or None
        ``--grad_accumulation_factor`` when the user set it; None lets the plan choose
        (1 without ``global_batch_size``).
    global_batch_size : int or None
        The examples per optimiser step to keep whatever ``processes`` is; None keeps
        ``batch_size`` per process, as without this option.

    Without ``global_batch_size`` the plan is ``batch_size`` per process. With it, the
    global batch is shared equally by the processes, and each process's share is split
    into the fewest accumulated batches of at most ``batch_size`` that divide it exactly
    (or into ``accumulation`` batches when that is given). A global batch that does not
    split into whole equal batches is a one-line ``SpkSepError``.

    Example
    -------
    >>> plan_batches(24)                          # no global batch: as before
    BatchPlan(per_process=24, processes=1, accumulation=1)
    >>> plan_batches(8, processes=1, global_batch_size=24)   # one GPU: 3 batches of 8
    BatchPlan(per_process=8, processes=1, accumulation=3)
    >>> plan_batches(8, processes=4, global_batch_size=24)   # four GPUs: 6 each
    BatchPlan(per_process=6, processes=4, accumulation=1)
    >>> plan_batches(8, processes=5, global_batch_size=24)
    Traceback (most recent call last):
        ...
    spksep_modules.SpkSepError: global_batch_size: 24 does not split equally over 5 processes; choose a multiple of 5
    """
    batch_size = _positive_int("batch_size", batch_size)
    processes = _positive_int("processes", processes)
    if accumulation is not None:
        accumulation = _positive_int("grad_accumulation_factor", accumulation)
    if global_batch_size is None:
        return BatchPlan(batch_size, processes, accumulation or 1)
    global_batch_size = _positive_int("global_batch_size", global_batch_size)
    if global_batch_size % processes:
        raise SpkSepError(
            f"global_batch_size: {global_batch_size} does not split equally over {processes} "
            f"processes; choose a multiple of {processes}")
    share = global_batch_size // processes  # examples per process and optimiser step
    if accumulation is not None:
        if share % accumulation:
            raise SpkSepError(
                f"global_batch_size: {global_batch_size} is {share} examples per process on "
                f"{_processes(processes)}, which --grad_accumulation_factor={accumulation} "
                f"does not split into equal batches")
        if share // accumulation > batch_size:
            raise SpkSepError(
                f"global_batch_size: {global_batch_size} on {_processes(processes)} with "
                f"--grad_accumulation_factor={accumulation} needs batches of "
                f"{share // accumulation}, more than batch_size={batch_size}: raise "
                f"--grad_accumulation_factor or --batch_size")
        return BatchPlan(share // accumulation, processes, accumulation)
    # The fewest accumulated batches that fit: the largest divisor of the share that
    # batch_size allows (a batch of 1 always does).
    accumulation = next(a for a in range(-(-share // batch_size), share + 1) if share % a == 0)
    return BatchPlan(share // accumulation, processes, accumulation)
