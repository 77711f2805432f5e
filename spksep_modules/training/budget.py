"""A compute budget for a training run, and the learning-rate cool-down that ends it.

Short runs are how researchers compare ideas ("what does each model reach in 20 minutes?").
Killing a run at the deadline throws away everything since its last end-of-epoch
checkpoint, and a constant learning rate leaves the weights where the last noisy step put
them. With a budget, ``SeparationBrain`` stops training when the budget is spent (mid-epoch),
validates and checkpoints that last partial epoch, and tests the best checkpoint as usual;
with ``cooldown`` the rate decays linearly to zero over the last share of the budget (a
warmup-stable-decay schedule without the warm-up), which the time-to-quality benchmark
measured as the better end of a short run (``bench/NOTES.md``).

The budget counts minutes of ``fit`` (training, validation and checkpoints alike: what a
user waits for) on one of two clocks: ``wall`` (default) or ``cpu``, the process's CPU time
over all its threads (data loading with ``num_workers: 0`` included), which other programs
on a busy machine do not distort: benchmarks use it. A step budget is SpeechBrain's own
``--optimizer_step_limit``; the cool-down follows whichever of the two runs out first.
The minutes spent and the rate before cool-down are saved with the checkpoints, so a
killed and resumed run keeps its budget (the minutes between its last checkpoint and the
kill are not charged twice: they are lost, as the steps are).

A short run's test score depends on where exactly it stopped (a few dozen steps more or
less move it by tenths of a dB on real speech). ``snapshots`` names fractions of the budget
(say ``[0.9, 0.95]``) at which the separator's weights are also written to
``<output_folder>/budget_snapshots/``: the time-to-quality benchmark reports the mean of the
test scores at those points and at the end (``bench/bench_time_to_quality.py``).
``snapshot_steps`` does the same at optimiser-step counts (say ``[760, 800, 840]``), so two
runs whose steps cost differently can be compared at equal steps as well as at equal time.
"""

import time

import torch
from speechbrain.utils.checkpoints import mark_as_loader, mark_as_saver, register_checkpoint_hooks

from spksep_modules import SpkSepError

CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


@register_checkpoint_hooks
class TrainingBudget:
    """Minutes (and/or optimiser steps) of training, and the cool-down at their end.

    Arguments
    ---------
    minutes : float or None
        Training time after which the run stops (None: no time budget).
    clock : "wall" | "cpu"
        What a minute is: wall-clock time, or this process's CPU time (all threads).
    cooldown : float
        Share of the budget, in ``[0, 1)``, over which the learning rate decays linearly to
        zero. Needs ``minutes`` or a step limit to know where the run ends.
    snapshots : list of float
        Fractions of the budget, in ``(0, 1)``, at which to keep a copy of the separator's
        weights (``due_snapshots`` says when; the Brain writes them).
    snapshot_steps : list of int
        Optimiser steps after which to keep a copy of the weights too (any run, budgeted
        or not).

    Example
    -------
    >>> budget = TrainingBudget(minutes=None, cooldown=0.25)
    >>> opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    >>> [round(budget.lr_factor(step, step_limit=8), 2) for step in (0, 5, 6, 7, 8)]
    [1.0, 1.0, 1.0, 0.5, 0.0]
    >>> budget.scale_lr(opt, step=7, step_limit=8); opt.param_groups[0]["lr"]
    0.5
    >>> budget.restore_lr(opt); opt.param_groups[0]["lr"]  # what a plateau scheduler sees
    1.0
    >>> TrainingBudget(minutes=0)
    Traceback (most recent call last):
    ...
    spksep_modules.SpkSepError: budget_minutes: must be positive (or null for no time budget), got 0
    """

    def __init__(self, minutes=None, clock="wall", cooldown=0.0, snapshots=(), snapshot_steps=()):
        if minutes is not None and not minutes > 0:
            raise SpkSepError(f"budget_minutes: must be positive (or null for no time budget), got {minutes}")
        if clock not in CLOCKS:
            raise SpkSepError(f"budget_clock: must be one of {', '.join(CLOCKS)}, got {clock!r}")
        if not 0 <= cooldown < 1:
            raise SpkSepError(f"cooldown: must be at least 0 and below 1, got {cooldown}")
        snapshots = sorted(float(f) for f in (snapshots or ()))
        if any(not 0 < f < 1 for f in snapshots):
            raise SpkSepError(f"budget_snapshots: fractions of the budget between 0 and 1, got {snapshots}")
        self.minutes, self.clock, self.cooldown = minutes, clock, float(cooldown)
        steps = sorted(int(n) for n in (snapshot_steps or ()))
        if any(n < 1 for n in steps):
            raise SpkSepError(f"budget_snapshot_steps: optimiser step counts of at least 1, got {steps}")
        self.snapshots, self.snapshot_steps, self.snapshots_taken = snapshots, steps, []
        self.spent_seconds = 0.0
        self.base_lrs = None  # the rates the cool-down scales (those a scheduler set last)
        self._last = None

    def start(self):
        """Start charging (at the start of ``fit``; a resumed run goes on from its saved sum)."""
        self._last = CLOCKS[self.clock]()

    def tick(self):
        """Charge the time since the last tick (or ``start``)."""
        now = CLOCKS[self.clock]()
        if self._last is not None:
            self.spent_seconds += now - self._last
        self._last = now

    def fraction(self, step=0, step_limit=None) -> float:
        """How much of the budget is spent, in [0, 1]: the larger of minutes and steps."""
        parts = [0.0]
        if self.minutes is not None:
            parts.append(self.spent_seconds / (60.0 * self.minutes))
        if step_limit:
            parts.append(step / step_limit)
        return min(1.0, max(parts))

    def limited(self, step_limit=None) -> bool:
        """Whether the run has an end: minutes, or a step limit."""
        return self.minutes is not None or bool(step_limit)

    def exhausted(self, step=0, step_limit=None) -> bool:
        return self.limited(step_limit) and self.fraction(step, step_limit) >= 1.0

    def lr_factor(self, step=0, step_limit=None) -> float:
        """1 until the cool-down starts, then linearly down to 0 at the budget's end."""
        if not self.cooldown:
            return 1.0
        remaining = 1.0 - self.fraction(step, step_limit)
        return min(1.0, remaining / self.cooldown)

    def scale_lr(self, optimizer, step=0, step_limit=None):
        """Set each group's rate to its base rate times ``lr_factor`` (no-op without cool-down)."""
        if not self.cooldown or not self.limited(step_limit):
            return
        if self.base_lrs is None:
            self.keep_lr(optimizer)
        factor = self.lr_factor(step, step_limit)
        for group, base in zip(optimizer.param_groups, self.base_lrs):
            group["lr"] = base * factor

    def restore_lr(self, optimizer):
        """Put the base rates back (before a scheduler reads and changes them)."""
        if self.base_lrs is not None:
            for group, base in zip(optimizer.param_groups, self.base_lrs):
                group["lr"] = base

    def keep_lr(self, optimizer):
        """The optimiser's current rates become the base rates (after a scheduler ran)."""
        self.base_lrs = [group["lr"] for group in optimizer.param_groups]

    def due_snapshots(self, step=0, step_limit=None):
        """The names of the snapshots due since the last call (each is returned once):
        ``at-0.900`` for a fraction of the budget, ``step-800`` for a step count.

        Example
        -------
        >>> budget = TrainingBudget(snapshots=[0.9, 0.5], snapshot_steps=[6])
        >>> [budget.due_snapshots(step, step_limit=10) for step in (4, 5, 6, 10)]
        [[], ['at-0.500'], ['step-6'], ['at-0.900']]
        """
        names = [f"step-{n}" for n in self.snapshot_steps if step >= n]
        if self.limited(step_limit):
            spent = self.fraction(step, step_limit)
            names += [f"at-{f:.3f}" for f in self.snapshots if f <= spent]
        due = [name for name in names if name not in self.snapshots_taken]
        self.snapshots_taken += due
        return due

    @mark_as_saver
    def save(self, path):
        torch.save({"spent_seconds": self.spent_seconds, "base_lrs": self.base_lrs,
                    "snapshots_taken": self.snapshots_taken}, path)

    @mark_as_loader
    def load(self, path, end_of_epoch=True):
        state = torch.load(path, weights_only=True)
        self.spent_seconds, self.base_lrs = state["spent_seconds"], state["base_lrs"]
        # runs saved before step snapshots kept the fractions themselves
        self.snapshots_taken = [name if isinstance(name, str) else f"at-{name:.3f}"
                                for name in state.get("snapshots_taken", [])]
