"""The policy for NaN/Inf losses: skip the batch, count it, keep DDP processes in step.

A batch with a NaN/Inf loss (a diverging step, a broken example) makes no update: NaN in
one example's forward pass would reach every gradient, even with that example's loss
masked out. Under DDP every process must skip the same step, or the gradient all-reduce
would pair one process's backward with another's next one.
"""

import logging

import torch

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
    """Counts non-finite batches and turns a training one into a no-op step.

    Example
    -------
    >>> policy, weight = SkipNonFinite(), torch.nn.Parameter(torch.ones(3))
    >>> loss = policy.check(torch.tensor(float("nan")), torch.tensor([1.0, float("nan")]),
    ...                     [weight], training=True)
    >>> float(loss), policy.skip_step, policy.skipped
    (0.0, True, 1)
    """

    def __init__(self):
        self.skipped = 0  # mixtures in skipped batches, this stage
        self.skip_step = False  # the current training batch must not update

    def check(self, loss, per_example, parameters, training: bool):
        """``loss`` unchanged when finite; else counted and, in training, replaced by a
        zero that touches every trainable parameter (so DDP's all-reduce still runs)."""
        bad = not bool(torch.isfinite(loss))
        if bad:
            finite = torch.isfinite(per_example)
            self.skipped += int((~finite).sum()) or len(finite)
            logger.warning("non-finite loss: batch skipped")
        if not training or not any_process(bad, loss.device):
            return loss
        self.skip_step = True
        return sum(p.sum() for p in parameters if p.requires_grad) * 0.0
