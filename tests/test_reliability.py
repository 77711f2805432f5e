"""Every bad input and fault through the real entry points (``train.py`` of both recipes,
``spksep``), end to end.

The matrix: each row runs an entry point on one broken input and checks what a user sees:
exit status 2, a last stderr line ``error: <file or key>: <problem>``, that line only
once, and no traceback. The faults: a full disk while a checkpoint is written, ``kill -9``
at random and chosen points (also under DDP), non-finite losses, reruns of a finished or
changed run, determinism, and memory that stays flat across epochs.

Rows run in processes forked from one zygote that imported torch and SpeechBrain once
(``tests/entrypoints.py``), so a row costs a fraction of a second instead of the 3-5 s of
a fresh ``python train.py``; DDP runs are real ``torchrun`` subprocesses.
"""

import csv
import glob
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from spksep_modules.data.demo import make_demo_data

ROOT = Path(__file__).resolve().parents[1]
SEPARATION = ROOT / "recipes" / "LibriMix" / "separation"
SPEAKER_ID = ROOT / "recipes" / "LibriMix" / "speaker_id"
SIZES = ["--N=16", "--L=8", "--B=8", "--H=16", "--X=2", "--R=1"]  # a tiny Conv-TasNet
OPTS = ["--device=cpu", "--noprogressbar", "--num_workers=0", "--segment_seconds=0.5"]
TINY = [*SIZES, *OPTS, "--batch_size=2", "--number_of_epochs=1"]
COND = ["--stack_channels=8", "--film_hidden=16", *OPTS, "--batch_size=2", "--number_of_epochs=1"]
RAWNET = ["--device=cpu", "--noprogressbar", "--window=4000", "--sinc_filters=8", "--sinc_length=31",
          "--block_channels=[8,8,16,16,16,16]", "--gru_units=16", "--embedding_dim=16",
          "--batch_size=4", "--num_workers=0", "--number_of_epochs=1"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


# ------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def master(tmp_path_factory):
    """The pristine tiny Libri2Mix; rows damage private copies of it."""
    return make_demo_data(
        tmp_path_factory.mktemp("master"), num_train=6, num_dev=2, num_test=2, seconds=0.8,
        num_train_speakers=4, num_dev_speakers=2, num_test_speakers=2,
    )


@pytest.fixture(scope="module")
def long_data(tmp_path_factory):
    """Enough training mixtures (40) for many steps per epoch: kills land inside one."""
    return make_demo_data(
        tmp_path_factory.mktemp("long"), num_train=40, num_dev=2, num_test=2, seconds=0.8,
        num_train_speakers=8, num_dev_speakers=2, num_test_speakers=2,
    )


@pytest.fixture(scope="module")
def baseline(ep, master, tmp_path_factory):
    """A finished tiny Conv-TasNet run; rows that change a run work on copies."""
    out = tmp_path_factory.mktemp("runs") / "convtasnet"
    result = ep.train(SEPARATION, ["hparams/convtasnet.yaml", f"--data_folder={master}",
                                   f"--output_folder={out}", *TINY])
    assert result.rc == 0, result
    return out


@pytest.fixture(scope="module")
def files(baseline, tmp_path_factory):
    """Files of the wrong kind for every loader."""
    import torch

    from spksep_modules.checkpoints import AtomicCheckpointer
    from spksep_modules.speakers.rawnet2 import RawNet2, save_rawnet2

    folder = tmp_path_factory.mktemp("wrong")
    text = folder / "notes.pt"
    text.write_text("these are my notes, not a checkpoint\n")
    rawnet2 = folder / "rawnet2.pt"
    save_rawnet2(RawNet2(window=2187, sinc_filters=4, sinc_length=11, block_channels=(4, 8),
                         gru_units=8, embedding_dim=6, num_classes=0), rawnet2)
    separator = next(baseline.glob("save/CKPT+*/separator.ckpt"))
    empty = folder / "empty"
    empty.mkdir()
    # What recipes/LibriMix/speaker_id/train.py leaves: a run folder without a separator.
    speaker_run = folder / "speaker_run"
    (speaker_run / "save").mkdir(parents=True)
    (speaker_run / "hyperparams.yaml").write_text(
        (SPEAKER_ID / "hparams" / "rawnet2.yaml").read_text().replace(
            "data_folder: !PLACEHOLDER", "data_folder: /data"))
    saver = AtomicCheckpointer(speaker_run / "save", {"speaker_net": torch.nn.Linear(2, 2)})
    saver.save_checkpoint(meta={"error_rate": 0.5})
    return {"text": text, "rawnet2": rawnet2, "separator": separator, "empty": empty,
            "speaker_run": speaker_run}


def merge(args, extra):
    """``args + extra``, an option of ``extra`` replacing the same option in ``args``."""
    extra = [str(a) for a in extra]
    given = {a.split("=", 1)[0] for a in extra if a.startswith("--")}
    return [a for a in args if a.split("=", 1)[0] not in given] + extra


def copy_data(master, dest, rewrite_metadata=True):
    """A private copy of the data set; its metadata names its own files unless told not to
    (then it still names the master's, as a copied LibriMix's does)."""
    root = str(Path(dest) / "Libri2Mix")
    shutil.copytree(master, root)
    if rewrite_metadata:
        for meta in glob.glob(os.path.join(base(root), "metadata", "*.csv")):
            text = Path(meta).read_text()
            Path(meta).write_text(text.replace(str(master), root))
    return root


def base(root):
    return os.path.join(root, "wav16k", "min")


def wav(root, split="train-100", sub="s1", index=0):
    folder = os.path.join(base(root), split, sub)
    return os.path.join(folder, sorted(os.listdir(folder))[index])


def meta(root, split="train-100"):
    return os.path.join(base(root), "metadata", f"mixture_{split}_mix_clean.csv")


def rewrite_csv(path, edit_rows=None, header=None):
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    fields = header or list(rows[0])
    if edit_rows:
        rows = edit_rows(rows)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def write_samples(path, data, rate=16000, subtype="PCM_16"):
    sf.write(path, data, rate, subtype=subtype)


def read(path):
    return sf.read(path, dtype="float32")[0]


def truncate(path):
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: len(data) // 2 + 1])


def with_value(path, value):
    data = read(path)
    data[len(data) // 3] = value
    write_samples(path, data, subtype="FLOAT")


def third_source(rows):
    return [dict(r, source_3_path=r["source_2_path"]) for r in rows]


# ----------------------------------------------------------------------- the matrix
#
# A row: (id, setup, fragments). ``setup(c)`` damages what it needs and returns
# ``(entry, args)``, entry one of "separation", "speaker_id", "spksep"; the last stderr line
# must contain every fragment (``{name}`` is formatted with ``c.names``).


class Context:
    """What a row's setup works with: a private tmp folder, copies of the data, the
    module's fixtures, the names its message must hold, faults to inject."""

    def __init__(self, tmp, master, request):
        self.tmp, self.master, self.request, self.names = tmp, master, request, {}
        self.out = tmp / "out"
        self.inject = []

    def data(self, damage=None, rewrite_metadata=True):
        root = copy_data(self.master, self.tmp / "data", rewrite_metadata)
        self.names["root"] = root
        if damage:
            damage(root)
        return root

    def fixture(self, name):
        return self.request.getfixturevalue(name)

    def sep(self, *args, yaml="convtasnet", data=None, sizes=TINY):
        data = self.data() if data is None else data
        return "separation", merge([f"hparams/{yaml}.yaml", f"--data_folder={data}",
                                    f"--output_folder={self.out}", *sizes], args)

    def damaged(self, damage, *args, name_file=None, rewrite_metadata=True):
        """A training run on a copy of the data damaged by ``damage(root)``; ``name_file``
        (root -> path) is the file the message must name."""
        root = self.data(rewrite_metadata=rewrite_metadata)
        if name_file:
            self.names["file"] = name_file(root)
        damage(root)
        return self.sep(*args, data=root)

    def conditioning(self, *args):
        baseline = self.fixture("baseline")
        return self.sep(f"--basic_model={baseline}", *args, yaml="conditioning", sizes=COND)

    def perceptual(self, *args):
        return self.sep(*args, yaml="weighted_sum")

    def speaker_id(self, *args, data=None):
        data = self.data() if data is None else data
        return "speaker_id", merge(["hparams/rawnet2.yaml", f"--data_folder={data}",
                                    f"--output_folder={self.out}", *RAWNET], args)

    def wrong(self, name):
        path = self.fixture("files")[name]
        self.names["file"] = str(path)
        return path

    def run_copy(self, name="run", yaml=True):
        """A copy of the finished baseline run (without its hyperparams.yaml if told)."""
        copy = self.tmp / name
        shutil.copytree(self.fixture("baseline"), copy)
        if not yaml:
            (copy / "hyperparams.yaml").unlink()
        self.out = copy
        self.names["run"] = str(copy)
        return copy

    def damaged_run(self):
        """A copy of the baseline run whose separator checkpoint was cut short."""
        run = self.run_copy("damaged")
        for path in run.glob("save/CKPT+*/separator.ckpt"):
            truncate(path)
            self.names["file"] = str(path)
        return run

    def unwritable_log(self):
        """The run can start, but its train_log.txt cannot be written (as for a file of
        another user, or a full disk): an OSError in the middle of training."""
        self.names["file"] = str(self.out / "train_log.txt")
        self.inject = [("unwritable", {"path": self.names["file"]})]
        return self.sep()

    def read_only(self):
        """A folder nothing can be written in."""
        out = self.tmp / "read_only"
        out.mkdir()
        out.chmod(0o555)  # enough for a user; root ignores it, hence the injection
        self.names["file"] = str(out)
        self.inject = [("unwritable", {"path": str(out)})]
        return out

    def read_only_output(self):
        return self.sep(f"--output_folder={self.read_only()}")

    def export(self, out):
        return "spksep", ["export", self.fixture("baseline"), "--format", "torchscript",
                          "--out", out, "--example_seconds=0.1"]

    def plot(self, out):
        return "spksep", ["plot", self.fixture("baseline"), "--plots", "curves", "--out", out]


S1 = lambda r: wav(r, "train-100", "s1")  # noqa: E731
MIX = lambda r: wav(r, "train-100", "mix_clean")  # noqa: E731

ROWS = [
    # --- data folder, split, metadata
    ("data_folder_missing", lambda c: c.sep(data="/nonexistent/Libri2Mix"),
     ["/nonexistent/Libri2Mix: data folder not found"]),
    ("data_folder_not_librimix", lambda c: c.sep(data=c.tmp),
     ["not a LibriMix folder"]),
    ("split_missing", lambda c: c.sep("--splits={train: train-360, valid: dev, test: test}"),
     ["train-360: split folder not found"]),
    ("source_folder_missing",
     lambda c: c.damaged(lambda r: shutil.rmtree(os.path.join(base(r), "train-100", "s2"))),
     ["train-100/s2: folder not found (num_spks=2)"]),
    ("extra_source_folder",
     lambda c: c.damaged(lambda r: os.makedirs(os.path.join(base(r), "dev", "s3"))),
     ["dev/s3: exists, but num_spks=2"]),
    ("metadata_of_three_speakers",
     lambda c: c.damaged(lambda r: rewrite_csv(meta(r), third_source, header=[
         "mixture_ID", "mixture_path", "source_1_path", "source_2_path", "source_3_path", "length"])),
     ["mixture_train-100_mix_clean.csv: mismatched CSV, it has source_3_path but num_spks=2"]),
    ("metadata_missing_column",
     lambda c: c.damaged(lambda r: rewrite_csv(meta(r, "dev"), header=[
         "mixture_ID", "mixture_path", "source_1_path", "length"])),
     ["mixture_dev_mix_clean.csv: mismatched CSV, missing column(s) source_2_path"]),
    ("metadata_empty_field",
     lambda c: c.damaged(lambda r: rewrite_csv(meta(r), lambda rows: [dict(rows[0], source_1_path="")] + rows[1:])),
     ["mixture_train-100_mix_clean.csv: line 2 has empty fields"]),
    ("metadata_wrong_length",
     lambda c: c.damaged(lambda r: rewrite_csv(meta(r), lambda rows: [dict(rows[0], length="123")] + rows[1:])),
     ["metadata says 123 samples"]),
    ("speaker_count_3_on_libri2mix", lambda c: c.sep("--num_spks=3"),
     ["train-100/s3: folder not found (num_spks=3)"]),
    ("empty_split",
     lambda c: c.damaged(lambda r: rewrite_csv(meta(r, "test"), lambda rows: [])),
     ["mixture_test_mix_clean.csv: split 'test' has no mixtures"]),
    # --- audio files
    ("file_missing", lambda c: c.damaged(lambda r: os.remove(c.names["file"]), name_file=S1),
     ["{file}: file not found (mixture"]),
    ("file_only_at_metadata_path",  # a partial copy: the rest would come from the original
     lambda c: c.damaged(lambda r: os.remove(c.names["file"]), name_file=S1, rewrite_metadata=False),
     ["{file}: missing from the data folder, though the metadata's", "exists"]),
    ("wrong_sample_rate",
     lambda c: c.damaged(lambda r: write_samples(c.names["file"], read(c.names["file"]), 8000), name_file=S1),
     ["{file}: 16000 Hz expected, file is 8000 Hz"]),
    ("stereo",
     lambda c: c.damaged(lambda r: write_samples(c.names["file"], np.stack([read(c.names["file"])] * 2, 1)),
                         name_file=MIX),
     ["{file}: expected mono, got 2 channels"]),
    ("truncated", lambda c: c.damaged(lambda r: truncate(c.names["file"]), name_file=S1),
     ["{file}: file is truncated"]),
    ("empty_file",
     lambda c: c.damaged(lambda r: write_samples(c.names["file"], np.zeros(0, np.float32)), name_file=S1),
     ["{file}: file is empty (0 samples)"]),
    ("nan_samples", lambda c: c.damaged(lambda r: with_value(c.names["file"], np.nan), name_file=S1),
     ["{file}: contains NaN or Inf samples", "nan"]),
    ("inf_samples", lambda c: c.damaged(lambda r: with_value(c.names["file"], np.inf), name_file=MIX),
     ["{file}: contains NaN or Inf samples", "inf"]),
    ("length_mismatch",
     lambda c: c.damaged(lambda r: write_samples(c.names["file"], read(c.names["file"])[:-100]), name_file=S1),
     ["{file}: length mismatch"]),
    ("not_audio",
     lambda c: c.damaged(lambda r: Path(c.names["file"]).write_text("<html>404</html>"), name_file=S1),
     ["{file}: cannot read audio header"]),
    ("speaker_id_data_folder_missing", lambda c: c.speaker_id(data="/nonexistent/Libri2Mix"),
     ["/nonexistent/Libri2Mix: data folder not found"]),
    ("speaker_id_nan_samples",
     lambda c: c.speaker_id(data=c.data(lambda r: with_value(c.names.setdefault("file", S1(r)), np.inf))),
     ["{file}: contains NaN or Inf samples"]),
    # --- overrides
    ("unknown_key", lambda c: c.sep("--no_such_key=1"), ["Override 'no_such_key' not found"]),
    ("placeholder_unset",
     lambda c: ("separation", ["hparams/convtasnet.yaml", f"--output_folder={c.out}", "--device=cpu"]),
     ["data_folder"]),
    ("override_given_twice", lambda c: ("separation", [*c.sep()[1], "--lr=0.1", "--lr=0.2"]),
     ["--lr: given twice on the command line"]),
    ("lr_not_a_number", lambda c: c.sep("--lr=abc"), ["--lr: expected a number, got 'abc'"]),
    ("lr_not_finite", lambda c: c.sep("--lr=.nan"), ["--lr: must be a finite number"]),
    ("lr_zero", lambda c: c.sep("--lr=0"), ["--lr: must be positive, got 0"]),
    ("batch_size_fraction", lambda c: c.sep("--batch_size=2.5"), ["--batch_size: expected an integer, got 2.5"]),
    ("batch_size_negative", lambda c: c.sep("--batch_size=-2"), ["--batch_size: must be at least 1, got -2"]),
    ("segment_seconds_negative", lambda c: c.sep("--segment_seconds=-1"),
     ["--segment_seconds: must be positive, got -1"]),
    ("number_of_epochs_zero", lambda c: c.sep("--number_of_epochs=0"),
     ["--number_of_epochs: must be at least 1, got 0"]),
    ("num_workers_negative", lambda c: c.sep("--num_workers=-1"), ["--num_workers: must be 0 or more"]),
    ("model_size_zero", lambda c: c.sep("--N=0"), ["--N: must be at least 1, got 0"]),
    ("model_size_word", lambda c: c.sep("--X=eight"), ["--X: expected an integer, got 'eight'"]),
    ("splits_not_a_mapping", lambda c: c.sep("--splits=train-100"), ["--splits: expected a mapping"]),
    ("sample_rate_not_librimix", lambda c: c.sep("--sample_rate=44100"),
     ["sample_rate: LibriMix comes at 8000 or 16000 Hz, got 44100"]),
    ("mode_unknown", lambda c: c.sep("--mode=mid"), ["mode: must be 'min' or 'max', got 'mid'"]),
    ("short_policy_unknown", lambda c: c.sep("--short_policy=drop"), ["short_policy: must be 'pad' or 'skip'"]),
    ("representation_unknown", lambda c: c.perceptual("--representation=wav2vec9"),
     ["representation: unknown 'wav2vec9'"]),
    ("speaker_net_unknown", lambda c: c.conditioning("--speaker_net=xvector"),
     ["speaker_net: unknown 'xvector'"]),
    ("boolean_not_a_boolean", lambda c: c.conditioning("--speaker_net=ge2e", "--freeze_basic_model=maybe"),
     ["--freeze_basic_model: expected a boolean (True or False), got 'maybe'"]),
    ("speaker_id_batch_size_zero", lambda c: c.speaker_id("--batch_size=0"),
     ["--batch_size: must be at least 1, got 0"]),
    ("speaker_id_valid_share", lambda c: c.speaker_id("--valid_share=1.5"),
     ["--valid_share: must be between 0 and 1"]),
    ("allow_flag_not_boolean", lambda c: c.sep("--allow_changed_hparams=perhaps"),
     ["--allow_changed_hparams: expected True or False, got 'perhaps'"]),
    # --- pretrained files of the wrong kind, every loader
    ("wav2vec1_no_file", lambda c: c.perceptual(), ["representation_ckpt: required for representation=wav2vec1"]),
    ("wav2vec1_text_file", lambda c: c.perceptual(f"--representation_ckpt={c.wrong('text')}"), ["{file}: "]),
    ("wav2vec1_rawnet2_file", lambda c: c.perceptual(f"--representation_ckpt={c.wrong('rawnet2')}"),
     ["{file}: "]),
    ("wav2vec2_rawnet2_file",
     lambda c: c.perceptual("--representation=wav2vec2", f"--representation_ckpt={c.wrong('rawnet2')}"),
     ["{file}: not a state dict of tensors"]),
    ("hubert_separator_file",
     lambda c: c.perceptual("--representation=hubert", f"--representation_ckpt={c.wrong('separator')}"),
     ["{file}: not a state dict of tensors"]),
    ("wavlm_text_file",
     lambda c: c.perceptual("--representation=wavlm", f"--representation_ckpt={c.wrong('text')}"),
     ["{file}: not loadable as a torchaudio state dict"]),
    ("ge2e_rawnet2_file",
     lambda c: c.perceptual("--representation=ge2e", f"--representation_ckpt={c.wrong('rawnet2')}"),
     ["{file}: not a GE2E checkpoint"]),
    ("rawnet2_no_file", lambda c: c.conditioning(), ["speaker_net_ckpt: required for speaker_net=rawnet2"]),
    ("rawnet2_separator_file", lambda c: c.conditioning(f"--speaker_net_ckpt={c.wrong('separator')}"),
     ["{file}: not a RawNet2 checkpoint"]),
    ("rawnet2_text_file", lambda c: c.conditioning(f"--speaker_net_ckpt={c.wrong('text')}"),
     ["{file}: cannot read checkpoint"]),
    ("ge2e_speaker_text_file",
     lambda c: c.conditioning("--speaker_net=ge2e", f"--speaker_net_ckpt={c.wrong('text')}"),
     ["{file}: not a readable torch checkpoint"]),
    ("ecapa_file_not_folder",
     lambda c: c.conditioning("--speaker_net=ecapa", f"--speaker_net_ckpt={c.wrong('rawnet2')}"),
     ["{file}: not a folder; speaker_net=ecapa needs"]),
    ("ecapa_run_folder",  # a separation run folder: hyperparams.yaml, no embedding_model.ckpt
     lambda c: c.conditioning("--speaker_net=ecapa", f"--speaker_net_ckpt={c.fixture('baseline')}"),
     ["embedding_model.ckpt: missing; not a SpeechBrain ECAPA model folder"]),
    ("basic_model_missing",
     lambda c: c.sep(f"--basic_model={c.tmp / 'none'}", "--speaker_net=ge2e", yaml="conditioning", sizes=COND),
     ["basic_model:", "hparams/convtasnet.yaml"]),
    ("basic_model_speaker_run",
     lambda c: c.sep(f"--basic_model={c.wrong('speaker_run')}", "--speaker_net=ge2e", yaml="conditioning",
                     sizes=COND),
     ["{file}: "]),
    ("basic_model_damaged_checkpoint",
     lambda c: c.sep(f"--basic_model={c.damaged_run()}", "--speaker_net=ge2e", yaml="conditioning", sizes=COND),
     ["{file}: cannot read checkpoint"]),
    ("separate_model_not_a_run",
     lambda c: ("spksep", ["separate", c.wrong("empty"), "--model", c.names["file"], "--out", c.tmp / "sep"]),
     ["{file}: not a training run folder"]),
    ("separate_model_speaker_run",
     lambda c: ("spksep", ["separate", S1(c.master), "--model", c.wrong("speaker_run"), "--out", c.tmp / "sep"]),
     ["{file}: "]),
    ("separate_damaged_checkpoint",
     lambda c: ("spksep", ["separate", S1(c.master), "--model", c.damaged_run(), "--out", c.tmp / "sep"]),
     ["{file}: cannot read checkpoint"]),
    # --- output folders
    ("output_folder_under_a_file",
     lambda c: c.sep(f"--output_folder={c.wrong('text')}/run"),
     ["{file}/run: cannot create the output folder (Not a directory)"]),
    ("output_folder_is_a_file", lambda c: c.sep(f"--output_folder={c.wrong('text')}"),
     ["{file}: the output folder is a file, not a folder"]),
    ("output_folder_read_only", lambda c: c.read_only_output(),
     ["{file}: cannot write in the output folder (Permission denied)"]),
    ("train_log_not_writable", lambda c: c.unwritable_log(),
     ["{file}: Permission denied (set SPKSEP_DEBUG=1 for the traceback)"]),
    ("speaker_id_output_folder_under_a_file",
     lambda c: c.speaker_id(f"--output_folder={c.wrong('text')}/run"),
     ["{file}/run: cannot create the output folder (Not a directory)"]),
    ("separate_out_under_a_file",
     lambda c: ("spksep", ["separate", S1(c.master), "--model", c.fixture("baseline"),
                           "--out", f"{c.wrong('text')}/sep"]),
     ["{file}/sep: cannot create the folder (Not a directory)"]),
    ("export_out_under_a_file", lambda c: c.export(f"{c.wrong('text')}/exported/model.pt"),
     ["{file}/exported: cannot create the output folder (Not a directory)"]),
    ("export_out_read_only", lambda c: c.export(f"{c.read_only()}/model.pt"),
     ["{file}: cannot write in the output folder (Permission denied)"]),
    ("plot_out_under_a_file", lambda c: c.plot(f"{c.wrong('text')}/plots"),
     ["{file}/plots: cannot create the output folder (Not a directory)"]),
    ("plot_out_read_only", lambda c: c.plot(f"{c.read_only()}/plots"),
     ["{file}/plots: cannot create the output folder (Permission denied)"]),
    # --- run folders
    ("run_folder_of_another_model",
     lambda c: c.sep(f"--output_folder={c.run_copy()}", f"--basic_model={c.fixture('baseline')}",
                     "--speaker_net=ge2e", yaml="conditioning", sizes=COND),
     ["holds a run of model 'convtasnet', but hparams/conditioning.yaml trains 'conditioning'"]),
    ("run_folder_of_another_recipe",
     lambda c: c.sep(f"--output_folder={c.wrong('speaker_run')}"),
     ["{file}: holds a run of another recipe"]),
    ("run_folder_changed_yaml",
     lambda c: c.sep(f"--output_folder={c.run_copy()}", "--lr=0.01", "--B=12"),
     ["holds a run started with other hyperparameters (changed: lr, B;", "--allow_changed_hparams"]),
    ("run_folder_checkpoint_of_another_model",  # no hyperparams.yaml left to tell
     lambda c: c.sep(f"--output_folder={c.run_copy(yaml=False)}", f"--basic_model={c.fixture('baseline')}",
                     "--speaker_net=ge2e", yaml="conditioning", sizes=COND),
     ["{run}/save/CKPT+", "checkpoint holds a ConvTasNet, not a ConditionedSeparator"]),
    ("run_folder_damaged_checkpoint",
     lambda c: c.sep(f"--output_folder={c.damaged_run()}", "--number_of_epochs=2"),
     ["cannot load this checkpoint into the model the yaml builds"]),
]


def run_entry(ep, entry, args, inject=(), env=None):
    if entry == "spksep":
        return ep.spksep(args, inject=inject, env=env)
    return ep.train(SEPARATION if entry == "separation" else SPEAKER_ID, args, inject=inject, env=env)


def assert_one_line_error(result, *fragments):
    """Exit status 2, the last stderr line is the only ``error:`` line and holds every
    fragment, and no traceback."""
    assert result.rc == 2, result
    assert "Traceback" not in result.stderr, result
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [result.last_line], result
    for fragment in fragments:
        assert fragment in result.last_line, (fragment, result.last_line)


@pytest.mark.parametrize("row", ROWS, ids=[r[0] for r in ROWS])
def test_matrix(row, ep, master, tmp_path, request):
    name, setup, fragments = row
    c = Context(tmp_path, master, request)
    entry, args = setup(c)
    result = run_entry(ep, entry, args, inject=c.inject)
    assert_one_line_error(result, *[f.format(**c.names) for f in fragments])
    if name != "train_log_not_writable":  # fails at epoch 1's line, its checkpoint saved
        assert not list((tmp_path / "out").glob("save/CKPT+*"))  # stopped before training


def test_debug_flag_shows_the_traceback(ep, master, tmp_path):
    c = Context(tmp_path, master, None)
    entry, args = c.sep("--lr=abc")
    result = run_entry(ep, entry, args, env={"SPKSEP_DEBUG": "1"})
    assert result.rc == 1 and "Traceback" in result.stderr
    assert result.last_line == "spksep_modules.SpkSepError: --lr: expected a number, got 'abc'"


def test_matrix_covers_every_kind_of_problem():
    ids = [r[0] for r in ROWS]
    assert len(ids) == len(set(ids))
    for kind in ("data_folder", "split", "metadata", "file", "stereo", "truncated", "empty", "nan",
                 "inf", "length", "lr", "batch_size", "segment_seconds", "representation",
                 "speaker_net", "wav2vec1", "wav2vec2", "hubert", "wavlm", "ge2e", "rawnet2",
                 "ecapa", "basic_model", "separate", "export", "plot", "output_folder", "run_folder"):
        assert any(kind in i for i in ids), kind


# ------------------------------------------------------------------------ the faults


def run_args(data, out, *extra, sizes=TINY):
    return merge(["hparams/convtasnet.yaml", f"--data_folder={data}", f"--output_folder={out}", *sizes],
                 extra)


KILLABLE = ["--batch_size=1", "--ckpt_interval_minutes=0", "--ckpt_interval_steps=4"]  # 40 steps/epoch


def complete_checkpoints(out):
    """The checkpoints a resumed run may load, oldest first."""
    import torch

    from spksep_modules.checkpoints import AtomicCheckpointer

    names = ["separator", "loss", "epoch_counter", "lr_scheduler"]
    saver = AtomicCheckpointer(out / "save", {n: torch.nn.Identity() for n in names}, clean=False)
    return sorted(saver.list_checkpoints(), key=lambda c: c.meta["unixtime"])


def assert_checkpoints_load(out):
    """Every checkpoint a run could resume from loads: no kill left one corrupted."""
    import torch

    for ckpt in complete_checkpoints(out):
        for name in ("separator", "loss", "lr_scheduler"):
            torch.load(ckpt.path / f"{name}.ckpt", map_location="cpu", weights_only=False)
        int((ckpt.path / "epoch_counter.ckpt").read_text())


def log_since(out, offset):
    try:
        return (out / "log.txt").read_text()[offset:]
    except FileNotFoundError:
        return ""


def log_size(out):
    return len(log_since(out, 0))


def loaded_from(log):
    """The checkpoint a run resumed from: a load logged before its first epoch starts (the
    test stage's load of the best checkpoint comes after training, and does not count)."""
    log = log.split("Going into epoch", 1)[0]
    found = re.findall(r"Loading a checkpoint from (\S+)", log)
    return Path(found[0]) if found else None


def epochs_logged(out):
    lines = (out / "train_log.txt").read_text().splitlines()
    return [int(re.match(r"epoch: (\d+)", line).group(1)) for line in lines if line.startswith("epoch:")]


def test_disk_full_while_a_checkpoint_is_saved_keeps_the_previous_one(ep, master, tmp_path):
    from spksep_modules.loading import load_separator

    for how in ("torch", "meta"):  # torch.save fails half-way / CKPT.yaml cannot be written
        out = tmp_path / how
        args = run_args(master, out, "--number_of_epochs=2")
        result = ep.train(SEPARATION, args, inject=[("disk_full_in_save", {"checkpoint": 2, "how": how})])
        assert_one_line_error(result, f"{out / 'save'}: cannot save a checkpoint", "is kept",
                              "free some space and rerun the same command to resume")
        assert len(list(out.glob("save/CKPT+*"))) == 1, "the half-written checkpoint was not removed"
        assert_checkpoints_load(out)
        separator, _ = load_separator(out)  # the previous checkpoint still serves inference
        assert epochs_logged(out) == [1]  # epoch 2's line waits for its checkpoint
        # Space freed: the same command resumes from the epoch-1 checkpoint and finishes.
        offset = log_size(out)
        result = ep.train(SEPARATION, args)
        assert result.rc == 0, result
        assert "Loading a checkpoint" in log_since(out, offset)
        assert (out / "test_summary.json").is_file()
        assert epochs_logged(out) == [1, 2]  # the redone epoch 2 logged once
        assert_checkpoints_load(out)


def test_kill_9_while_checkpoints_are_written_deleted_then_resumed(ep, long_data, tmp_path):
    out = tmp_path / "run"
    args = run_args(long_data, out, *KILLABLE, "--number_of_epochs=1")
    kills = [("kill_in_save", {"checkpoint": 2, "where": "param"}),   # half a parameter file
             ("kill_in_save", {"checkpoint": 2, "where": "meta"}),    # CKPT.yaml not yet renamed
             ("kill_in_save", {"checkpoint": 2, "where": "delete"})]  # an old one half-deleted
    resume_from = None
    for inject in [*kills, None]:
        offset = log_size(out)
        result = ep.train(SEPARATION, args, inject=[inject] if inject else [])
        assert loaded_from(log_since(out, offset)) == resume_from, (inject, result)
        if inject is None:
            assert result.rc == 0, result
            break
        assert result.rc == -signal.SIGKILL, (inject, result)
        assert_checkpoints_load(out)
        resume_from = complete_checkpoints(out)[-1].path  # the newest survives every kill
        if inject[1]["where"] == "delete":  # listed no more, though its CKPT.yaml is there
            half = [p for p in out.glob("save/CKPT+*") if not (p / "separator.ckpt").exists()]
            assert half and (half[0] / "CKPT.yaml").exists()
            assert half[0] not in [c.path for c in complete_checkpoints(out)]
    assert epochs_logged(out) == [1]
    assert (out / "test_summary.json").is_file()
    assert not [p for p in out.glob("save/CKPT+*") if not (p / "CKPT.yaml").exists()]


def test_kill_9_at_random_points_then_resume(ep, long_data, tmp_path):
    seed = int(os.environ.get("SPKSEP_KILL_SEED", random.SystemRandom().randrange(10**6)))
    rng = random.Random(seed)
    out = tmp_path / "run"
    args = run_args(long_data, out, *KILLABLE, "--number_of_epochs=2")
    resume_from, kills = None, 0
    for attempt in range(8):
        offset = log_size(out)
        delay = rng.uniform(0.5, 3.5) if attempt < 3 else None  # then let it finish
        result = ep.train(SEPARATION, args, inject=[("kill_after", {"seconds": delay})] if delay else [])
        why = f"seed {seed} (SPKSEP_KILL_SEED={seed} reruns it), attempt {attempt}, kill after {delay} s"
        loaded = loaded_from(log_since(out, offset))
        if result.rc == 0 or loaded is not None:  # else killed before it looked for one
            assert loaded == resume_from, why
        if result.rc == 0:
            break
        assert result.rc == -signal.SIGKILL, (why, result)
        kills += 1
        assert_checkpoints_load(out)
        checkpoints = complete_checkpoints(out)
        resume_from = checkpoints[-1].path if checkpoints else None
    assert result.rc == 0, (why, result)
    # Never an epoch twice (a kill in the instant between an epoch's checkpoint and its
    # line leaves that line out, rather than logging the redone epoch again).
    logged = epochs_logged(out)
    assert logged == sorted(set(logged)) and set(logged) <= {1, 2}, why
    assert (out / "test_summary.json").is_file(), why
    assert_checkpoints_load(out)


def test_kill_9_under_ddp_then_resume(long_data, tmp_path):
    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "train.py", *run_args(long_data, out, *KILLABLE, "--number_of_epochs=1",
                                     "--ckpt_interval_steps=2"), "--distributed_backend=gloo"]
    proc = subprocess.Popen(command, cwd=SEPARATION, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    try:  # kill -9 every process of the job as soon as an intra-epoch checkpoint exists
        while time.time() < deadline and proc.poll() is None:
            if any("end-of-epoch: false" in read_if_there(m) for m in out.glob("save/CKPT+*/CKPT.yaml")):
                break
            time.sleep(0.02)
    finally:
        kill_tree(proc)
    assert proc.returncode == -signal.SIGKILL, "the job ended on its own before it was killed"
    assert not (out / "test_summary.json").exists(), "the job finished before it was killed"
    assert_checkpoints_load(out)
    newest = complete_checkpoints(out)[-1].path
    offset = log_size(out)
    result = subprocess.run(command, cwd=SEPARATION, env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert loaded_from(log_since(out, offset)) == newest, (newest, log_since(out, offset)[-3000:])
    assert epochs_logged(out) == [1]
    summary = json.loads((out / "test_summary.json").read_text())
    assert summary["model"] == "convtasnet" and summary["num_test"] == 2
    assert_checkpoints_load(out)


def kill_tree(proc):
    """SIGKILL to a process and all its descendants (torchrun starts its workers in
    sessions of their own: killing its process group would leave them running)."""
    family, found = [proc.pid], True
    while found:
        found = False
        for stat in glob.glob("/proc/[0-9]*/stat"):
            try:
                fields = Path(stat).read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            pid = int(stat.split("/")[2])
            if int(fields[1]) in family and pid not in family:
                family.append(pid)
                found = True
    for pid in family:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()
    for pid in family[1:]:
        while running(pid):
            time.sleep(0.01)


def running(pid):
    """Neither gone nor a zombie that its new parent has not reaped yet."""
    state = read_if_there(Path(f"/proc/{pid}/stat")).rsplit(")", 1)[-1].split()[:1]
    return state not in ([], ["Z"], ["X"])


def read_if_there(path):
    try:
        return path.read_text()
    except FileNotFoundError:  # deleted by the run between glob and read
        return ""


def test_nonfinite_losses_are_skipped_and_counted(ep, master, tmp_path):
    out = tmp_path / "run"
    result = ep.train(SEPARATION, run_args(master, out), inject=[("nan_loss", {"every": 2})])
    assert result.rc == 0, result
    log = (out / "train_log.txt").read_text()
    assert "train nonfinite_skipped: 2" in log  # batch 2 of 3, both its mixtures
    assert (out / "test_summary.json").is_file()


def test_too_many_nonfinite_losses_in_a_row_stop_the_run(ep, long_data, tmp_path):
    out = tmp_path / "run"  # 40 batches per epoch, all NaN: the default limit (20) stops it
    result = ep.train(SEPARATION, run_args(long_data, out, "--batch_size=1"), inject=[("nan_loss", {})])
    assert_one_line_error(result, "training stopped: 20 training batches in a row had a NaN/Inf loss",
                          "lower lr")
    assert not (out / "test_summary.json").exists()


def test_rerunning_a_finished_run_does_not_retrain(ep, baseline, master, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(baseline, run)
    checkpoints = sorted(p.name for p in run.glob("save/CKPT+*"))
    log = (run / "train_log.txt").read_text()
    result = ep.train(SEPARATION, run_args(master, run))
    assert result.rc == 0, result
    new = (run / "train_log.txt").read_text()[len(log):]
    assert "epoch:" not in new and new.count("Epoch loaded") == 1  # evaluated again, not trained
    assert sorted(p.name for p in run.glob("save/CKPT+*")) == checkpoints


def test_changed_yaml_resumes_only_when_asked(ep, baseline, master, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(baseline, run)
    args = run_args(master, run, "--lr=0.0005", "--number_of_epochs=2")  # more epochs: allowed
    assert_one_line_error(ep.train(SEPARATION, args), "(changed: lr;")
    offset = log_size(run)
    result = ep.train(SEPARATION, [*args, "--allow_changed_hparams"])
    assert result.rc == 0, result
    assert "resuming with changed hyperparameters (lr, optimizer)" in log_since(run, offset)
    assert epochs_logged(run) == [1, 2]
    assert "lr: 0.0005" in (run / "hyperparams.yaml").read_text()


def test_same_seed_same_first_epoch(ep, master, tmp_path):
    import torch

    runs = []
    for name, inject in (("a", []), ("b", [("scramble_rngs", {"seed": 7})])):
        out = tmp_path / name
        result = ep.train(SEPARATION, run_args(master, out), inject=inject)
        assert result.rc == 0, result
        epoch = next(l for l in (out / "train_log.txt").read_text().splitlines() if l.startswith("epoch: 1"))
        weights = torch.load(next(out.glob("save/CKPT+*/separator.ckpt")), weights_only=False)
        runs.append((epoch, weights))
    assert runs[0][0] == runs[1][0]  # the same train and valid losses
    for key, value in runs[0][1].items():
        if torch.is_tensor(value):
            assert torch.equal(value, runs[1][1][key]), key


def test_memory_stays_flat_across_epochs(ep, long_data, tmp_path):
    """RSS after each epoch of a 6-epoch run, 20 steps each. After ``malloc_trim`` (what live
    objects hold) it was flat to 0.1 MB here, while keeping each step's loss graph (a
    classic leak) added 1.2 MB per epoch at these tiny sizes; the raw RSS wanders by a few
    MB with glibc's caching."""
    out, probe = tmp_path / "run", tmp_path / "rss.txt"
    result = ep.train(SEPARATION, run_args(long_data, out, "--number_of_epochs=6"),
                      inject=[("rss_per_epoch", {"path": str(probe)})])
    assert result.rc == 0, result
    raw, trimmed = np.array([[int(v) / 2**20 for v in line.split()]
                             for line in probe.read_text().splitlines()]).T
    assert len(trimmed) == 6
    settled = trimmed[1:]  # epoch 1 warms caches up
    assert settled.max() - settled[0] < 0.6, f"live memory grows: {np.round(trimmed, 2)} MB"
    slope = np.polyfit(np.arange(len(settled)), settled, 1)[0]
    assert slope < 0.12, f"{slope:.2f} MB per epoch: {np.round(trimmed, 2)} MB"
    assert raw[1:].max() - raw[1] < 16, f"RSS grows: {np.round(raw, 1)} MB"
