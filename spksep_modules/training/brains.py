"""The one Brain every separation recipe uses.

What differs between models is built by the yaml, not here: the separator
(``modules.separator``, any family: see ``models.base``) and the loss (``modules.loss``,
``losses.SeparationLoss``: uPIT SI-SNR plus an optional auxiliary term). The Brain logs
whatever named terms the loss returns.

Validation always scores negative SI-SNR, so early stopping, learning-rate halving and the
choice of the best checkpoint mean the same thing for every model. Validation and test run
the separator's inference form (``models.fuse_for_inference``: same function, faster).

Training at scale is the Brain's too: ``global_batch_size`` (see ``global_batch``) sets the
per-process batch and the gradient accumulation for the number of processes at hand, and
``compile: True`` wraps the separator (only) in ``torch.compile``.
"""

import csv
import json
import logging
import math
import os

import speechbrain as sb
import torch
from speechbrain.utils.distributed import if_main_process

from spksep_modules.allocator import keep_freed_memory
from spksep_modules.metrics import evaluate_mixture, pesq_mode
from spksep_modules.models.fused import fuse_for_inference
from spksep_modules.training.cpu_load import warn_if_oversubscribed
from spksep_modules.training.global_batch import plan_batches
from spksep_modules.training.nonfinite import SkipNonFinite

logger = logging.getLogger(__name__)

TEST_COLUMNS = ["mixture_ID", "si_snr", "si_snr_i", "sdr", "sdr_i", "stoi"]
PESQ_COLUMN = "pesq"  # appended when the yaml sets `pesq: True`
COMPILED_MODULES = ["separator"]  # the loss keeps Python state (step count, calibration)


def unwrapped(module: torch.nn.Module) -> torch.nn.Module:
    """``module`` without its DDP / DataParallel and ``torch.compile`` wrappers.

    Example
    -------
    >>> net = torch.nn.Linear(2, 2)
    >>> unwrapped(torch.nn.DataParallel(net)) is net
    True
    """
    while True:
        if isinstance(module, (torch.nn.parallel.DistributedDataParallel,
                               torch.nn.DataParallel)):
            module = module.module
        elif hasattr(module, "_orig_mod"):  # torch.compile's OptimizedModule
            module = module._orig_mod
        else:
            return module


def _processes() -> int:
    """DDP processes of this run (1 without DDP)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    if os.environ.get("RANK") is not None and os.environ.get("LOCAL_RANK") is not None:
        return int(os.environ.get("WORLD_SIZE", 1))
    return 1


def _set_by_user(name, run_opts, hparams) -> bool:
    """Whether run option ``name`` came from the command line, ``run_opts`` or the yaml
    (not SpeechBrain's default)."""
    given = getattr(run_opts, "overridden_args", None)
    if given is None:
        given = run_opts or {}
    return name in given or name in (hparams or {})


class NonFiniteBrain(sb.Brain):
    """The non-finite policy (``nonfinite.SkipNonFinite``) of both Brains: a training batch
    whose loss went through ``self.nonfinite.check`` and was non-finite makes no update.
    Subclasses call ``super()`` in ``on_stage_start`` and ``on_fit_batch_start``."""

    def on_stage_start(self, stage, epoch=None):
        if not hasattr(self, "nonfinite"):  # one policy per run: its count spans epochs
            self.nonfinite = SkipNonFinite(
                getattr(getattr(self, "hparams", None), "max_nonfinite_in_a_row", 20))
        self.nonfinite.skipped = 0  # examples skipped, counted per stage

    def on_fit_batch_start(self, batch, should_step):
        self.nonfinite.skip_step = False

    def optimizers_step(self):
        if self.nonfinite.skip_step:  # the batch's loss was non-finite: no update at all
            self.zero_grad(set_to_none=True)
            return
        super().optimizers_step()


class SeparationBrain(NonFiniteBrain):
    """Trains any separator with the yaml's loss; writes per-mixture test results.

    Example
    -------
    >>> from types import SimpleNamespace as Batch
    >>> from spksep_modules.losses import SeparationLoss
    >>> from spksep_modules.models import ConvTasNet
    >>> separator = ConvTasNet(N=16, L=8, B=8, H=16, P=3, X=2, R=1)
    >>> brain = SeparationBrain(modules={"separator": separator, "loss": SeparationLoss()},
    ...                         run_opts={"device": "cpu"})
    >>> brain.on_stage_start(sb.Stage.TRAIN)
    >>> batch = Batch(sources=Batch(data=torch.randn(2, 800, 2)))  # [batch, time, speakers]
    >>> loss = brain.compute_objectives(separator(torch.randn(2, 800)), batch, sb.Stage.TRAIN)
    >>> loss.shape, list(brain.stage_stats), brain.stage_stats["si_snr"][1]  # 2 mixtures logged
    (torch.Size([]), ['si_snr'], 2)

    With ``batch_size`` in its hparams the Brain also plans the global batch
    (:func:`~spksep_modules.training.global_batch.plan_batches`): ``global_batch_size`` sets the
    training loader's batch and ``grad_accumulation_factor`` for the processes at hand,
    and ``fit`` logs the plan when it starts.

    >>> brain = SeparationBrain(modules={"separator": separator, "loss": SeparationLoss()},
    ...                         hparams={"batch_size": 4, "global_batch_size": 12},
    ...                         run_opts={"device": "cpu"})
    >>> brain.batch_plan.describe(), brain.grad_accumulation_factor
    ('batch: 4 per process x 1 process x 3 accumulated = global batch 12', 3)
    """

    def __init__(self, modules=None, opt_class=None, hparams=None, run_opts=None,
                 checkpointer=None):
        super().__init__(modules, opt_class, hparams, run_opts, checkpointer)
        self.global_batch_size = (hparams or {}).get("global_batch_size")
        self.batch_plan = None
        if hparams and "batch_size" in hparams:
            explicit = _set_by_user("grad_accumulation_factor", run_opts, hparams)
            self.batch_plan = plan_batches(
                hparams["batch_size"], _processes(),
                self.grad_accumulation_factor if explicit else None, self.global_batch_size)
            self.grad_accumulation_factor = self.batch_plan.accumulation

    def make_dataloader(self, dataset, stage, ckpt_prefix="dataloader-", **loader_kwargs):
        if stage == sb.Stage.TRAIN and self.global_batch_size is not None:
            loader_kwargs["batch_size"] = self.batch_plan.per_process
        return super().make_dataloader(dataset, stage, ckpt_prefix, **loader_kwargs)

    def on_fit_start(self):
        if self.batch_plan is not None:  # goes to the run's log.txt
            logger.info(self.batch_plan.describe())
        # Training steps allocate hundreds of same-sized activations: reuse their pages
        # instead of page-faulting fresh ones (allocator.py; 0.45x the step time at the
        # paper's sizes on CPU).
        wanted = getattr(getattr(self, "hparams", None), "keep_freed_memory", False)
        if str(self.device).startswith("cpu"):
            warn_if_oversubscribed()  # other programs on the cores: a 20x slower run
        if wanted and keep_freed_memory():
            logger.info("allocator: freed large blocks are kept for reuse (keep_freed_memory; "
                        "SPKSEP_MALLOC=system or keep_freed_memory: False turns it off)")
        super().on_fit_start()
        if self.budget is not None:  # after recovery: a resumed run goes on from its sum
            self.budget.start()

    # -- the run's budget (``budget.TrainingBudget``: yaml ``training_budget``) ----------
    @property
    def budget(self):
        return getattr(getattr(self, "hparams", None), "training_budget", None)

    @property
    def step_limit(self):
        """``--optimizer_step_limit`` as a number (SpeechBrain's parser leaves it a string)."""
        limit = self.optimizer_step_limit
        return None if limit in (None, "", "None") else int(limit)

    @property
    def _optimizer_step_limit_exceeded(self):
        """SpeechBrain's step limit, or the budget spent: either ends the epoch's loop
        mid-epoch, and SpeechBrain then validates and checkpoints that partial epoch and
        stops. Under DDP the processes agree (their clocks differ), or one would wait
        forever for the others' gradients."""
        if self.budget is None:
            return self.step_limit is not None and self.optimizer_step >= self.step_limit
        done = self.budget.exhausted(self.optimizer_step, self.step_limit)
        # Only minutes differ between processes (step counts agree): no per-step
        # all-reduce for runs without a time budget.
        if self.budget.minutes is not None and _processes() > 1 and torch.distributed.is_initialized():
            flag = torch.tensor(float(done), device=self.device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            done = bool(flag.item())
        return done

    def fit(self, epoch_counter, *args, **kwargs):
        # A rerun of a finished budgeted run goes straight to testing, rather than
        # validating (and checkpointing) its last model once more per rerun.
        if (self.budget is not None and self.budget.limited(self.step_limit)
                and self.checkpointer is not None):
            self.checkpointer.recover_if_possible()
            if self.budget.exhausted(self.optimizer_step, self.step_limit):
                logger.info("the training budget is spent: no more training")
                return
        super().fit(epoch_counter, *args, **kwargs)

    def _compile(self):
        """``compile: True`` (or ``--compile``) compiles the separator, not the loss (its
        step count and calibration are Python state), unless ``--compile_module_keys``
        names others. SpeechBrain does it before wrapping in DDP, so DDP wraps the
        compiled module. The separator's hand-written CPU kernels stay on: Dynamo cannot
        trace them (the graph breaks around each), yet compiled with them a Conv-TasNet
        step is faster on CPU than compiled without them (README, Compilation)."""
        if not (self.compile and self.compile_module_keys is None):
            return super()._compile()  # off, or the modules the user named
        # Inductor's cache takes a file lock per graph, and SpeechBrain logs DEBUG to
        # log.txt: hundreds of lock lines per run otherwise.
        logging.getLogger("filelock").setLevel(logging.WARNING)
        for name in COMPILED_MODULES:
            if name in self.modules:  # as SpeechBrain's _compile calls it
                self.modules[name] = torch.compile(
                    self.modules[name], mode=self.compile_mode,
                    fullgraph=self.compile_using_fullgraph,
                    dynamic=self.compile_using_dynamic_shape_tracing,
                ).to(self.device)
        # SpeechBrain's own pass still serves --jit; with compile on it would compile every
        # module (the loss too), so it runs with compile off.
        self.compile = False
        try:
            super()._compile()
        finally:
            self.compile = True

    def compute_forward(self, batch, stage):
        """A ``SeparatorOutput``: estimates ``[B, T, C]`` (+ extras) for ``mix_sig [B, T]``."""
        batch = batch.to(self.device)
        separator = self.modules.separator if stage == sb.Stage.TRAIN else self.eval_separator
        return separator(batch.mix_sig.data)

    def compute_objectives(self, out, batch, stage):
        terms = self.modules.loss(out, batch.sources.data)
        for key, value in terms.items():
            if key != "loss":
                self._accumulate(key, value.detach().reshape(-1))
        if stage == sb.Stage.TEST:
            self._write_test_rows(batch, out.detach())
        return self.nonfinite.check(terms["loss"], terms["si_snr"],
                                    self.modules.parameters(), stage == sb.Stage.TRAIN)

    # -- bookkeeping -----------------------------------------------------------------
    def _accumulate(self, key, values):
        values = values[torch.isfinite(values)]  # skipped mixtures are counted apart
        total, count = self.stage_stats.get(key, (0.0, 0))
        self.stage_stats[key] = (total + float(values.sum()), count + values.numel())

    def on_fit_batch_start(self, batch, should_step):
        super().on_fit_batch_start(batch, should_step)
        if self.budget is not None:
            self.budget.tick()
            self.budget.scale_lr(self.optimizer, self.optimizer_step, self.step_limit)
            for name in self.budget.due_snapshots(self.optimizer_step, self.step_limit):
                self._save_budget_snapshot(name)

    def _save_budget_snapshot(self, name):
        """The separator's weights now (``budget_snapshots``, ``budget_snapshot_steps``), as
        ``<name>.ckpt`` beside the run's checkpoints; written by the main process only."""
        if not if_main_process():
            return
        folder = os.path.join(os.path.dirname(self.checkpointer.checkpoints_dir), "budget_snapshots")
        os.makedirs(folder, exist_ok=True)
        state = {"name": name, "fraction": self.budget.fraction(self.optimizer_step, self.step_limit),
                 "steps": self.optimizer_step, "minutes": self.budget.spent_seconds / 60.0,
                 "separator": unwrapped(self.modules.separator).state_dict()}
        path = os.path.join(folder, f"{name}.ckpt")
        torch.save(state, path + ".tmp")
        os.replace(path + ".tmp", path)  # a kill mid-write leaves no half file

    def on_stage_start(self, stage, epoch=None):
        super().on_stage_start(stage, epoch)
        self.stage_stats = {}
        if stage == sb.Stage.TRAIN and epoch is not None:
            # Datasets that draw their items per epoch (dynamic mixing) learn it here, before
            # the epoch's DataLoader iterator, and so its workers, are made.
            for dataset in getattr(self, "epoch_datasets", ()):
                if hasattr(dataset, "set_epoch"):
                    dataset.set_epoch(epoch)
        if stage != sb.Stage.TRAIN:
            # Evaluation runs eagerly: the folded inference form is faster than the
            # compiled training graph, and no_grad would make Dynamo compile anew.
            self.eval_separator = fuse_for_inference(unwrapped(self.modules.separator))
        if stage == sb.Stage.TEST:
            self.test_rows = []

    def on_stage_end(self, stage, stage_loss, epoch=None):
        if stage != sb.Stage.TRAIN and "si_snr" in self.stage_stats:
            # The mean over the finite mixtures (what SpeechBrain averages when every
            # mixture is finite); skipped ones are reported as nonfinite_skipped.
            total, count = self.stage_stats["si_snr"]
            stage_loss = -total / max(count, 1)
        stats = {"loss": stage_loss}
        stats.update({k: t / max(n, 1) for k, (t, n) in self.stage_stats.items()})
        if self.nonfinite.skipped:
            stats["nonfinite_skipped"] = self.nonfinite.skipped
        if stage == sb.Stage.TRAIN:
            self.train_stats = stats
        elif stage == sb.Stage.VALID:
            meta = {"epoch": epoch}
            if self.budget is not None:  # the scheduler halves the rate before cool-down
                self.budget.tick()
                self.budget.restore_lr(self.optimizer)
                meta.update(steps=self.optimizer_step,
                            budget_spent=f"{self.budget.spent_seconds / 60:.2f} min")
            old_lr, new_lr = self.hparams.lr_scheduler([self.optimizer], epoch, stage_loss)
            sb.nnet.schedulers.update_learning_rate(self.optimizer, new_lr)
            if self.budget is not None:
                self.budget.keep_lr(self.optimizer)
            self.hparams.epoch_counter.update_metric(stage_loss)
            # The checkpoint first: a kill before the line is logged resumes after this
            # epoch (one line missing), never before it (the epoch logged twice).
            self.checkpointer.save_and_keep_only(meta={"loss": stage_loss}, min_keys=["loss"])
            for train_logger in self._train_loggers():  # the text log (+ TensorBoard)
                train_logger.log_stats(
                    stats_meta={**meta, "lr": old_lr},
                    train_stats=self.train_stats,
                    valid_stats=stats,
                )
        elif stage == sb.Stage.TEST:
            summary = self._write_test_outputs()
            for train_logger in self._train_loggers():
                train_logger.log_stats(
                    stats_meta={"Epoch loaded": self.hparams.epoch_counter.current},
                    test_stats=summary,
                )

    def _train_loggers(self):
        """The yaml's ``train_logger``, and with ``tensorboard: True`` a TensorBoard logger
        under ``<output_folder>/tensorboard``, made once (see ``tensorboard_log``)."""
        if not getattr(self.hparams, "tensorboard", False):
            return [self.hparams.train_logger]
        if getattr(self, "_tensorboard_logger", None) is None:
            from spksep_modules.training.tensorboard_log import EpochTensorboardLogger

            folder = os.path.join(self.hparams.output_folder, "tensorboard")
            self._tensorboard_logger = EpochTensorboardLogger(folder)
        return [self.hparams.train_logger, self._tensorboard_logger]

    # -- test outputs ----------------------------------------------------------------
    def _test_columns(self):
        """``TEST_COLUMNS``, plus ``pesq`` when the yaml sets ``pesq: True``."""
        return TEST_COLUMNS + ([PESQ_COLUMN] if getattr(self.hparams, "pesq", False) else [])

    def _write_test_rows(self, batch, est):
        """Per-mixture metrics on whole utterances (test batches hold one mixture each)."""
        rate = self.hparams.sample_rate
        pesq = PESQ_COLUMN in self._test_columns()
        for i, mix_id in enumerate(batch.id):
            length = int(round(float(batch.mix_sig.lengths[i]) * batch.mix_sig.data.shape[1]))
            row = evaluate_mixture(
                batch.mix_sig.data[i, :length].cpu(),
                est[i, :length].cpu(),
                batch.sources.data[i, :length].cpu(),
                rate,
                pesq=pesq,
            )
            self.test_rows.append({"mixture_ID": mix_id, **row})

    def _write_test_outputs(self):
        columns = self._test_columns()
        n = len(self.test_rows)
        summary = {k: sum(r[k] for r in self.test_rows) / max(n, 1) for k in TEST_COLUMNS[1:]}
        if PESQ_COLUMN in columns:  # the mean over the mixtures PESQ could score
            scored = [r[PESQ_COLUMN] for r in self.test_rows if math.isfinite(r[PESQ_COLUMN])]
            summary[PESQ_COLUMN] = sum(scored) / len(scored) if scored else float("nan")
            summary["pesq_mode"] = pesq_mode(self.hparams.sample_rate)
        summary.update(model=self.hparams.model_name, num_test=n)
        # SI-SNR of the separator's extra estimates (the conditioned model's intermediate
        # ones), so a summary shows what the final pass adds over them.
        for key, (total, count) in self.stage_stats.items():
            if key.startswith("si_snr_") and count:
                summary[key] = total / count
        if if_main_process():
            folder = self.hparams.output_folder
            with open(os.path.join(folder, "test_results.csv"), "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=columns)
                writer.writeheader()
                for row in self.test_rows:
                    writer.writerow({k: row[k] for k in columns})
            with open(os.path.join(folder, "test_summary.json"), "w") as f:
                json.dump(summary, f, indent=2)
        return summary


class SpeakerIDBrain(NonFiniteBrain):
    """Speaker classification (cross-entropy) for training a speaker network such as RawNet2
    on the training speakers of LibriMix; validation tracks the classification error.

    Example
    -------
    >>> from types import SimpleNamespace as Batch
    >>> net = torch.nn.Linear(8, 2)  # stands in for RawNet2 (only its logits are used here)
    >>> brain = SpeakerIDBrain(modules={"speaker_net": net}, run_opts={"device": "cpu"})
    >>> brain.on_stage_start(sb.Stage.VALID)
    >>> logits = torch.tensor([[5.0, 0.0], [0.0, 5.0], [5.0, 0.0]])  # 3 utterances, 2 speakers
    >>> batch = Batch(label=Batch(data=torch.tensor([[0], [1], [1]])))  # the third is wrong
    >>> round(float(brain.compute_objectives(logits, batch, sb.Stage.VALID)), 3)  # cross-entropy
    1.673
    >>> brain.errors, brain.count
    (1, 3)
    """

    def compute_forward(self, batch, stage):
        batch = batch.to(self.device)
        return self.modules.speaker_net(batch.wav.data, classify=True)

    def compute_objectives(self, logits, batch, stage):
        labels = batch.label.data.squeeze(-1)
        if stage != sb.Stage.TRAIN:
            self.errors += int((logits.argmax(-1) != labels).sum())
            self.count += labels.numel()
        losses = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
        return self.nonfinite.check(losses.mean(), losses, self.modules.parameters(),
                                    stage == sb.Stage.TRAIN)

    def on_stage_start(self, stage, epoch=None):
        super().on_stage_start(stage, epoch)
        self.errors, self.count = 0, 0

    def on_stage_end(self, stage, stage_loss, epoch=None):
        skipped = {"nonfinite_skipped": self.nonfinite.skipped} if self.nonfinite.skipped else {}
        if stage == sb.Stage.TRAIN:
            self.train_stats = {"loss": stage_loss, **skipped}
            return
        stats = {"loss": stage_loss, "error_rate": self.errors / max(self.count, 1), **skipped}
        if stage == sb.Stage.VALID:
            old_lr, new_lr = self.hparams.lr_scheduler([self.optimizer], epoch, stage_loss)
            sb.nnet.schedulers.update_learning_rate(self.optimizer, new_lr)
            self.hparams.epoch_counter.update_metric(stats["error_rate"])
            # The checkpoint first, as in SeparationBrain.on_stage_end.
            self.checkpointer.save_and_keep_only(meta=stats, min_keys=["error_rate"])
            self.hparams.train_logger.log_stats(
                stats_meta={"epoch": epoch, "lr": old_lr},
                train_stats=self.train_stats,
                valid_stats=stats,
            )
