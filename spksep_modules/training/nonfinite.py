"""The policy for NaN/Inf losses: skip the batch, count it, keep DDP processes in step.

A batch with a NaN/Inf loss (a diverging step, a broken example) makes no update: NaN in
one example's forward pass would reach every gradient, even with that example's loss
masked out. Under DDP every process must skip the same step, or the gradient all-reduce
would pair one process's backward with another's next one.

A run whose training batches are all non-finite would otherwise spin through its epochs
without learning: after ``max_consecutive`` skipped training batches in a row the policy
stops the run with one line saying what to do.
"""

import logging

import torch

from spksep_modules import SpkSepError

logger = logging.getLogger(__name__)


def any_process(flag: bool, device) -> bool:
    """True when ``flag`` is True on any DDP process (just ``flag`` without DDP).

    Example
    -------
    >>> any_process(True, "cpu"), any_process(False, "cpu")  # no process group: the flag
    (True, False)
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return flag
    value = torch.tensor(float(flag), device=device)
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
    return bool(value.item())


class SkipNonFinite:
    """Counts non-finite batches and turns a training one into a no-op step; after
    ``max_consecutive`` skipped training batches in a row, stops the run.

    Example
    -------
    >>> policy, weight = SkipNonFinite(), torch.nn.Parameter(torch.ones(3))
    >>> loss = policy.check(torch.tensor(float("nan")), torch.tensor([1.0, float("nan")]),
    ...                     [weight], training=True)
    >>> float(loss), policy.skip_step, policy.skipped
    (0.0, True, 1)
    >>> policy = SkipNonFinite(max_consecutive=2)
    >>> for _ in range(2):  # doctest: +ELLIPSIS
    ...     _ = policy.check(torch.tensor(float("inf")), torch.tensor([float("inf")]),
    ...                      [weight], training=True)
    Traceback (most recent call last):
        ...
    spksep_modules.SpkSepError: training stopped: 2 training batches in a row had a NaN/Inf loss ...
    """

    def __init__(self, max_consecutive: int = 20):
        if max_consecutive is not None and max_consecutive < 1:
            raise SpkSepError(f"max_consecutive: must be at least 1 (or None), got {max_consecutive}")
        self.max_consecutive = max_consecutive  # None: never stop
        self.skipped = 0  # mixtures in skipped batches, this stage
        self.skip_step = False  # the current training batch must not update
        self.consecutive = 0  # training batches skipped in a row

    def check(self, loss, per_example, parameters, training: bool):
        """``loss`` unchanged when finite; else counted and, in training, replaced by a
        zero that touches every trainable parameter (so DDP's all-reduce still runs)."""
        bad = not bool(torch.isfinite(loss))
        if bad:
            finite = torch.isfinite(per_example)
            self.skipped += int((~finite).sum()) or len(finite)
            logger.warning("non-finite loss: batch skipped")
        if not training:
            return loss
        if not any_process(bad, loss.device):  # the same answer on every DDP process
            self.consecutive = 0
            return loss
        self.consecutive += 1
        if self.max_consecutive is not None and self.consecutive >= self.max_consecutive:
            # Every DDP process reaches this at the same batch: they stop together.
            raise SpkSepError(
                f"training stopped: {self.consecutive} training batches in a row had a NaN/Inf "
                "loss (the run diverged or the data is broken): lower lr (or max_grad_norm), "
                "check the data, then rerun to resume from the last checkpoint"
            )
        self.skip_step = True
        return sum(p.sum() for p in parameters if p.requires_grad) * 0.0
