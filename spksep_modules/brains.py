"""The one Brain every separation recipe uses.

What differs between the paper's models is built by the yaml, not here:
- the separator (``modules.separator``): a Conv-TasNet, or the speaker-conditioned pipeline
  whose forward returns ``{"estimates", "intermediate"}``;
- the optional perceptual term (``hparams.perceptual_loss``), added to the uPIT SI-SNR loss
  in training only.

Validation always scores negative SI-SNR, so early stopping, learning-rate halving and the
choice of the best checkpoint mean the same thing for every model.
"""

import csv
import json
import logging
import os

import speechbrain as sb
import torch
from speechbrain.utils.distributed import if_main_process

from spksep_modules.losses.pit import pit_si_snr
from spksep_modules.metrics import evaluate_mixture

logger = logging.getLogger(__name__)

TEST_COLUMNS = ["mixture_ID", "si_snr", "si_snr_i", "sdr", "sdr_i", "stoi"]


def _any_process(flag: bool, device) -> bool:
    """True when ``flag`` is True on any DDP process (just ``flag`` without DDP)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return flag
    value = torch.tensor(float(flag), device=device)
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
    return bool(value.item())


class SeparationBrain(sb.Brain):
    """uPIT SI-SNR training for any separator, with an optional perceptual loss."""

    def compute_forward(self, batch, stage):
        """Returns ``{"estimates": [B, T, C], ...}`` for ``batch.mix_sig [B, T]``."""
        batch = batch.to(self.device)
        out = self.modules.separator(batch.mix_sig.data)
        if isinstance(out, tuple):  # the conditioned model's (estimates, intermediate)
            return out._asdict()
        return {"estimates": out}

    def compute_objectives(self, out, batch, stage):
        sources = batch.sources.data  # [B, T, C]
        est = out["estimates"]
        neg_si_snr, est_aligned, _ = pit_si_snr(est, sources)

        # A batch with a NaN/Inf loss (a diverging step, a broken example) makes no update:
        # NaN in one example's forward pass would reach every gradient, even with that
        # example's loss masked out. Its mixtures are counted and the run goes on.
        finite = torch.isfinite(neg_si_snr)
        loss = neg_si_snr.mean()
        if finite.any():
            self._accumulate("si_snr", -neg_si_snr[finite].detach())
        if "intermediate" in out:
            inter, _, _ = pit_si_snr(out["intermediate"].detach(), sources)
            self._accumulate("si_snr_intermediate", -inter[torch.isfinite(inter)])

        perceptual = getattr(self.hparams, "perceptual_loss", None)
        if perceptual is not None and stage == sb.Stage.TRAIN and finite.all():
            terms = perceptual(est_aligned, sources, loss)
            loss = terms["loss"]
            if torch.isfinite(loss):
                for key in ("perceptual", "D_pos", "D_neg"):
                    self._accumulate(key, terms[key].detach().reshape(1))

        if stage == sb.Stage.TEST:
            self._write_test_rows(batch, est.detach())
        bad = not torch.isfinite(loss)
        if bad:
            self.nonfinite_skipped += int((~finite).sum()) or len(finite)
            logger.warning("non-finite loss: batch skipped")
        if stage != sb.Stage.TRAIN:
            return loss
        if _any_process(bad, loss.device):
            # Every process skips this step together, so DDP's gradient all-reduce stays in
            # step: a zero that touches every trainable parameter, and no optimiser step.
            self.skip_step = True
            params = [p for p in self.modules.parameters() if p.requires_grad]
            return sum(p.sum() for p in params) * 0.0
        return loss

    # -- bookkeeping -----------------------------------------------------------------
    def _accumulate(self, key, values):
        total, count = self.stage_stats.get(key, (0.0, 0))
        self.stage_stats[key] = (total + float(values.sum()), count + values.numel())

    def on_fit_batch_start(self, batch, should_step):
        self.skip_step = False

    def optimizers_step(self):
        if self.skip_step:  # every loss in the batch was non-finite: no update at all
            self.zero_grad(set_to_none=True)
            return
        super().optimizers_step()

    def on_stage_start(self, stage, epoch=None):
        self.stage_stats = {}
        self.nonfinite_skipped = 0
        self.skip_step = False
        if stage == sb.Stage.TEST:
            self.test_rows = []

    def on_stage_end(self, stage, stage_loss, epoch=None):
        if stage != sb.Stage.TRAIN and "si_snr" in self.stage_stats:
            # The mean over the finite mixtures (what SpeechBrain averages when every
            # mixture is finite); skipped ones are reported as nonfinite_skipped.
            total, count = self.stage_stats["si_snr"]
            stage_loss = -total / count
        stats = {"loss": stage_loss}
        stats.update({k: t / max(n, 1) for k, (t, n) in self.stage_stats.items()})
        if self.nonfinite_skipped:
            stats["nonfinite_skipped"] = self.nonfinite_skipped
        if stage == sb.Stage.TRAIN:
            self.train_stats = stats
        elif stage == sb.Stage.VALID:
            old_lr, new_lr = self.hparams.lr_scheduler([self.optimizer], epoch, stage_loss)
            sb.nnet.schedulers.update_learning_rate(self.optimizer, new_lr)
            self.hparams.epoch_counter.update_metric(stage_loss)
            self.hparams.train_logger.log_stats(
                stats_meta={"epoch": epoch, "lr": old_lr},
                train_stats=self.train_stats,
                valid_stats=stats,
            )
            self.checkpointer.save_and_keep_only(meta={"loss": stage_loss}, min_keys=["loss"])
        elif stage == sb.Stage.TEST:
            summary = self._write_test_outputs()
            self.hparams.train_logger.log_stats(
                stats_meta={"Epoch loaded": self.hparams.epoch_counter.current},
                test_stats=summary,
            )

    # -- test outputs ----------------------------------------------------------------
    def _write_test_rows(self, batch, est):
        """Per-mixture metrics on whole utterances (test batches hold one mixture each)."""
        rate = self.hparams.sample_rate
        for i, mix_id in enumerate(batch.id):
            length = int(round(float(batch.mix_sig.lengths[i]) * batch.mix_sig.data.shape[1]))
            row = evaluate_mixture(
                batch.mix_sig.data[i, :length].cpu(),
                est[i, :length].cpu(),
                batch.sources.data[i, :length].cpu(),
                rate,
            )
            self.test_rows.append({"mixture_ID": mix_id, **row})

    def _write_test_outputs(self):
        n = len(self.test_rows)
        summary = {k: sum(r[k] for r in self.test_rows) / max(n, 1) for k in TEST_COLUMNS[1:]}
        summary.update(model=self.hparams.model_name, num_test=n)
        if if_main_process():
            folder = self.hparams.output_folder
            with open(os.path.join(folder, "test_results.csv"), "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=TEST_COLUMNS)
                writer.writeheader()
                for row in self.test_rows:
                    writer.writerow({k: row[k] for k in TEST_COLUMNS})
            with open(os.path.join(folder, "test_summary.json"), "w") as f:
                json.dump(summary, f, indent=2)
        return summary


class SpeakerIDBrain(sb.Brain):
    """Speaker classification (cross-entropy) for training a speaker network such as RawNet2
    on the training speakers of LibriMix; validation tracks the classification error."""

    def compute_forward(self, batch, stage):
        batch = batch.to(self.device)
        return self.modules.speaker_net(batch.wav.data, classify=True)

    def compute_objectives(self, logits, batch, stage):
        labels = batch.label.data.squeeze(-1)
        if stage != sb.Stage.TRAIN:
            self.errors += int((logits.argmax(-1) != labels).sum())
            self.count += labels.numel()
        return torch.nn.functional.cross_entropy(logits, labels)

    def on_stage_start(self, stage, epoch=None):
        self.errors, self.count = 0, 0

    def on_stage_end(self, stage, stage_loss, epoch=None):
        if stage == sb.Stage.TRAIN:
            self.train_stats = {"loss": stage_loss}
            return
        stats = {"loss": stage_loss, "error_rate": self.errors / max(self.count, 1)}
        if stage == sb.Stage.VALID:
            old_lr, new_lr = self.hparams.lr_scheduler([self.optimizer], epoch, stage_loss)
            sb.nnet.schedulers.update_learning_rate(self.optimizer, new_lr)
            self.hparams.epoch_counter.update_metric(stats["error_rate"])
            self.hparams.train_logger.log_stats(
                stats_meta={"epoch": epoch, "lr": old_lr},
                train_stats=self.train_stats,
                valid_stats=stats,
            )
            self.checkpointer.save_and_keep_only(meta=stats, min_keys=["error_rate"])
