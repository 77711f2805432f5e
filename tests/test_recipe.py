"""End to end: train.py for every yaml, the speaker-ID recipe, the spksep command. Tiny
models on a tiny demo set, a couple of steps each. Bad inputs, kills (also under DDP) and
other faults: tests/test_reliability.py."""

import csv
import json
import os
import re
import subprocess
import sys
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
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    return make_demo_data(
        root, num_train=6, num_dev=2, num_test=2, seconds=0.8,
        num_train_speakers=4, num_dev_speakers=2, num_test_speakers=2,
    )


def run(script_dir, args, check=True, timeout=300):
    proc = subprocess.run(
        [sys.executable, "train.py", *map(str, args)], cwd=script_dir, env=ENV,
        capture_output=True, text=True, timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"train.py failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def check_run_outputs(out: Path, model: str, num_test: int = 2):
    assert (out / "train_log.txt").is_file()
    assert any((out / "save").glob("CKPT+*")), "no checkpoint saved"
    with open(out / "test_results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [*rows[0]] == ["mixture_ID", "si_snr", "si_snr_i", "sdr", "sdr_i", "stoi"]
    assert len(rows) == num_test
    summary = json.loads((out / "test_summary.json").read_text())
    assert summary["model"] == model and summary["num_test"] == num_test
    for key in ("si_snr", "si_snr_i", "sdr", "sdr_i", "stoi"):
        assert np.isfinite(summary[key])
        assert summary[key] == pytest.approx(np.mean([float(r[key]) for r in rows]))
    return summary


@pytest.fixture(scope="module")
def baseline(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "convtasnet"
    run(SEPARATION, ["hparams/convtasnet.yaml", f"--data_folder={data}", f"--output_folder={out}", *TINY])
    return out


def test_baseline_writes_every_run_output(baseline):
    check_run_outputs(baseline, "convtasnet")
    log = (baseline / "train_log.txt").read_text()
    assert "epoch: 1" in log and "valid si_snr" in log
    # the training process kept freed memory for reuse (glibc; keep_freed_memory: True)
    kept = "freed large blocks are kept for reuse" in (baseline / "log.txt").read_text()
    assert kept == sys.platform.startswith("linux")


@pytest.mark.parametrize("model", ["weighted_sum", "triplet_like", "ablation_pos", "ablation_neg"])
def test_perceptual_models_train_with_ge2e(model, data, tmp_path):
    out = tmp_path / model
    run(SEPARATION, [f"hparams/{model}.yaml", f"--data_folder={data}", f"--output_folder={out}",
                     "--representation=ge2e", *TINY])
    check_run_outputs(out, model)
    log = (out / "train_log.txt").read_text()
    assert "train D_pos" in log and "train D_neg" in log and "train perceptual" in log


def test_calibrated_weights_are_logged_and_kept_when_a_run_resumes(data, tmp_path):
    out = tmp_path / "calibrated"
    args = ["hparams/weighted_sum.yaml", f"--data_folder={data}", f"--output_folder={out}",
            "--representation=ge2e", "--normalised_distances=True", "--perceptual_share=0.1",
            "--calibration_batches=1", "--perceptual_warmup=1", *SIZES, *OPTS, "--batch_size=2"]
    run(SEPARATION, [*args, "--number_of_epochs=1"])
    assert "perceptual weights calibrated at batch 2" in (out / "log.txt").read_text()
    first = re.findall(r"train w_D_pos: ([-\d.e+]+)", (out / "train_log.txt").read_text())
    run(SEPARATION, [*args, "--number_of_epochs=2"])  # resumes after epoch 1
    log = (out / "train_log.txt").read_text()
    assert re.findall(r"train w_D_pos: ([-\d.e+]+)", log) == first * 2
    assert (out / "log.txt").read_text().count("calibrated at") == 1


@pytest.mark.parametrize("iterations", [1, 2])
def test_conditioning_trains_on_the_baseline(iterations, data, baseline, tmp_path):
    out = tmp_path / "cond"
    run(SEPARATION, ["hparams/conditioning.yaml", f"--data_folder={data}", f"--output_folder={out}",
                     f"--basic_model={baseline}", "--speaker_net=ge2e", f"--refine_iterations={iterations}",
                     *COND])
    summary = check_run_outputs(out, "conditioning")
    log = (out / "train_log.txt").read_text()
    assert "valid si_snr_intermediate" in log  # what conditioning adds, per epoch
    assert np.isfinite(summary["si_snr_intermediate"])  # and on the test set (demo prints it)


def test_speaker_id_recipe_feeds_conditioning(data, baseline, tmp_path):
    si = tmp_path / "si"
    run(SPEAKER_ID, ["hparams/rawnet2.yaml", f"--data_folder={data}", f"--output_folder={si}",
                     "--device=cpu", "--noprogressbar", "--window=4000", "--sinc_filters=8",
                     "--sinc_length=31", "--block_channels=[8,8,16,16,16,16]", "--gru_units=16",
                     "--embedding_dim=16", "--batch_size=4", "--num_workers=0", "--number_of_epochs=1"])
    assert (si / "rawnet2.pt").is_file()
    out = tmp_path / "cond"
    run(SEPARATION, ["hparams/conditioning.yaml", f"--data_folder={data}", f"--output_folder={out}",
                     f"--basic_model={baseline}", "--speaker_net=rawnet2",
                     f"--speaker_net_ckpt={si / 'rawnet2.pt'}", *COND])
    check_run_outputs(out, "conditioning")


def spksep(*args):
    return subprocess.run([sys.executable, "-m", "spksep_modules.cli", *map(str, args)],
                          env=ENV, capture_output=True, text=True, timeout=300)


def test_separate_any_rate_stereo_and_long_files(baseline, tmp_path):
    rng = np.random.default_rng(0)
    stereo = tmp_path / "rec.wav"
    sf.write(stereo, 0.1 * rng.standard_normal((44100 * 3, 2)).astype("float32"), 44100)
    proc = spksep("separate", stereo, "--model", baseline, "--out", tmp_path / "sep",
                  "--chunk_seconds=1", "--overlap_seconds=0.25", "--precision=bf16")
    assert proc.returncode == 0, proc.stderr
    assert "separating in bf16" in proc.stderr
    for i in (1, 2):
        info = sf.info(tmp_path / "sep" / f"rec_s{i}.wav")
        assert (info.samplerate, info.frames, info.channels) == (44100, 44100 * 3, 1)
    proc = spksep("separate", tmp_path / "missing.wav", "--model", baseline, "--out", tmp_path / "o")
    assert proc.returncode == 2 and "missing.wav" in proc.stderr


def test_table_puts_paper_numbers_beside_ours(baseline):
    proc = spksep("table", baseline)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((baseline / "test_summary.json").read_text())
    row = next(l for l in proc.stdout.splitlines() if l.startswith("| Conv-TasNet"))
    assert "14.118" in row and f"{summary['si_snr']:.3f}" in row
    assert "| P weighted-sum | 14.319 | - |" in proc.stdout


def test_demo_data_command(tmp_path):
    proc = spksep("demo-data", tmp_path / "d", "--seed", "1")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "d" / "Libri2Mix" / "wav16k" / "min" / "test" / "mix_clean").is_dir()
    assert not (tmp_path / "d" / "Libri2Mix" / "wav16k" / "min" / "test" / "mix_both").exists()
    proc = spksep("demo-data", tmp_path / "n", "--seed", "1", "--noise")
    assert proc.returncode == 0, proc.stderr
    for kind in ("mix_both", "mix_single", "noise"):
        assert (tmp_path / "n" / "Libri2Mix" / "wav16k" / "min" / "test" / kind).is_dir()


def test_test_only_evaluates_an_existing_run_without_training(data, baseline):
    log_before = (baseline / "train_log.txt").read_text()
    (baseline / "test_summary.json").unlink()
    run(SEPARATION, ["hparams/convtasnet.yaml", f"--data_folder={data}", f"--output_folder={baseline}",
                     *TINY, "--test_only"])
    check_run_outputs(baseline, "convtasnet")
    new_lines = (baseline / "train_log.txt").read_text()[len(log_before):]
    assert "epoch: 2" not in new_lines and "test si_snr" in new_lines


# ---------------------------------------------------------------- SepFormer family
SF_SIZES = ["--N=16", "--num_layers=1", "--K=10", "--intra_layers=1", "--inter_layers=1",
            "--nhead=2", "--d_ffn=32"]  # a tiny SepFormer
SF_TINY = [*SF_SIZES, *OPTS, "--batch_size=2", "--number_of_epochs=1"]


@pytest.fixture(scope="module")
def sepformer_run(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "sepformer"
    run(SEPARATION, ["hparams/sepformer.yaml", f"--data_folder={data}", f"--output_folder={out}",
                     *SF_TINY])
    return out


@pytest.fixture(scope="module")
def speechbrain_folder(tmp_path_factory):
    """A trained SepFormer as SpeechBrain publishes one (hyperparams.yaml + encoder,
    masknet, decoder .ckpt), at the sizes of SF_SIZES and the demo data's 16 kHz."""
    import torch

    from spksep_modules.models import SepFormer, save_speechbrain_folder

    folder = tmp_path_factory.mktemp("sepformer-libri2mix-16k")
    torch.manual_seed(0)
    model = SepFormer(N=16, num_layers=1, K=10, intra_layers=1, inter_layers=1, nhead=2, d_ffn=32)
    save_speechbrain_folder(model, folder, sample_rate=16000)
    return folder


def test_sepformer_trains_evaluates_and_resumes_on_two_ddp_processes(sepformer_run, data,
                                                                      tmp_path):
    import shutil

    check_run_outputs(sepformer_run, "sepformer")
    out = tmp_path / "sepformer"
    shutil.copytree(sepformer_run, out)  # one epoch done: run on to two, with DDP (gloo)
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "train.py", "hparams/sepformer.yaml", f"--data_folder={data}", f"--output_folder={out}",
         "--distributed_backend=gloo", *SF_SIZES, *OPTS, "--batch_size=2",
         "--number_of_epochs=2"],
        cwd=SEPARATION, env=ENV, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Loading a checkpoint" in (out / "log.txt").read_text()
    epochs = [l for l in (out / "train_log.txt").read_text().splitlines() if l.startswith("epoch:")]
    assert [l.split(",")[0] for l in epochs] == ["epoch: 1", "epoch: 2"]
    check_run_outputs(out, "sepformer")


def test_perceptual_sepformer_fine_tunes_a_speechbrain_folder(data, speechbrain_folder, tmp_path):
    import torch

    out = tmp_path / "sepformer_weighted_sum"
    run(SEPARATION, ["hparams/sepformer_weighted_sum.yaml", f"--data_folder={data}",
                     f"--output_folder={out}", "--representation=ge2e",
                     f"--init_from={speechbrain_folder}", *SF_TINY])
    check_run_outputs(out, "sepformer_weighted_sum")
    assert "train D_pos" in (out / "train_log.txt").read_text()
    # Three Adam steps at lr 1.5e-4 from the folder's weights (not from a fresh init).
    start = torch.load(speechbrain_folder / "encoder.ckpt")["conv1d.weight"]
    trained = torch.load(next((out / "save").glob("CKPT+*/separator.ckpt")))["encoder.weight"]
    assert 0 < (trained - start).abs().max() < 0.01


def test_conditioning_on_a_sepformer_run(data, sepformer_run, tmp_path):
    out = tmp_path / "cond"
    run(SEPARATION, ["hparams/sepformer_conditioning.yaml", f"--data_folder={data}",
                     f"--output_folder={out}", f"--basic_model={sepformer_run}",
                     "--speaker_net=ge2e", *COND])
    check_run_outputs(out, "sepformer_conditioning")
    assert "valid si_snr_intermediate" in (out / "train_log.txt").read_text()


# ---------------------------------------------------------------- SpeechBrain's own training runs
@pytest.fixture(scope="module")
def speechbrain_results(tmp_path_factory):
    """Output folders of SpeechBrain's separation recipes (Conv-TasNet, SepFormer), as their
    train.py leaves them, at toy sizes (tests/speechbrain_training.py)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from speechbrain_training import CONVTASNET, SEPFORMER, write_training_folder

    root = tmp_path_factory.mktemp("speechbrain_results")
    write_training_folder(root / "convtasnet" / "1234", CONVTASNET, losses=(-5.0, -6.0, -5.5))
    write_training_folder(root / "sepformer" / "1234", SEPFORMER, losses=(-3.0, -2.0))
    return root


def test_conditioning_on_a_speechbrain_training_folder(data, speechbrain_results, tmp_path):
    from spksep_modules.loading import load_separator

    out = tmp_path / "cond"
    run(SEPARATION, ["hparams/conditioning.yaml", f"--data_folder={data}", f"--output_folder={out}",
                     f"--basic_model={speechbrain_results / 'convtasnet' / '1234'}",
                     "--speaker_net=ge2e", *COND])
    check_run_outputs(out, "conditioning")
    model, _ = load_separator(out)  # the run rebuilds alone, SpeechBrain's Conv-TasNet inside
    assert type(model.basic_model).__name__ == "SpeechBrainConvTasNet"


def test_sepformer_starts_from_a_speechbrain_training_folder(data, speechbrain_results, tmp_path):
    import torch

    from spksep_modules.models.speechbrain_folder import training_checkpoint

    folder = speechbrain_results / "sepformer" / "1234"
    out = tmp_path / "sepformer"
    run(SEPARATION, ["hparams/sepformer.yaml", f"--data_folder={data}", f"--output_folder={out}",
                     f"--init_from={folder}", *SF_TINY])
    check_run_outputs(out, "sepformer")
    # Three Adam steps at lr 1.5e-4 from the best checkpoint (epoch 1), not the latest.
    trained = torch.load(next((out / "save").glob("CKPT+*/separator.ckpt")))["encoder.weight"]
    best = Path(training_checkpoint(folder))
    [latest] = [c for c in (folder / "save").glob("CKPT+*") if c != best]
    assert 0 < (trained - torch.load(best / "encoder.ckpt")["conv1d.weight"]).abs().max() < 0.01
    assert (trained - torch.load(latest / "encoder.ckpt")["conv1d.weight"]).abs().max() > 0.05


# ---------------------------------------------------------------- three speakers (Libri3Mix)
THREE = ["--num_spks=3"]


@pytest.fixture(scope="module")
def data3(tmp_path_factory):
    """A tiny Libri3Mix-layout set: three speakers in every mixture, none shared by splits."""
    return make_demo_data(
        tmp_path_factory.mktemp("demo3"), num_spks=3, num_train=6, num_dev=2, num_test=2,
        seconds=0.8, num_train_speakers=6, num_dev_speakers=3, num_test_speakers=3,
    )


@pytest.fixture(scope="module")
def baseline3(data3, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs3") / "convtasnet"
    run(SEPARATION, ["hparams/convtasnet.yaml", f"--data_folder={data3}", f"--output_folder={out}",
                     *TINY, *THREE])
    return out


def three_outputs(run_dir):
    import torch

    from spksep_modules.loading import load_separator

    model, _ = load_separator(run_dir)
    with torch.no_grad():
        return model(torch.randn(1, 8000)).shape[-1]


def test_three_speaker_baseline(data3, baseline3):
    assert Path(data3).name == "Libri3Mix"
    check_run_outputs(baseline3, "convtasnet")
    assert three_outputs(baseline3) == 3


@pytest.mark.parametrize("model", ["weighted_sum", "triplet_like", "ablation_pos", "ablation_neg"])
def test_three_speaker_perceptual_models(model, data3, tmp_path):
    out = tmp_path / model
    run(SEPARATION, [f"hparams/{model}.yaml", f"--data_folder={data3}", f"--output_folder={out}",
                     "--representation=ge2e", *TINY, *THREE])
    check_run_outputs(out, model)
    log = (out / "train_log.txt").read_text()
    assert "train D_pos" in log and "train D_neg" in log
    assert three_outputs(out) == 3


def test_three_speaker_conditioning(data3, baseline3, tmp_path):
    out = tmp_path / "cond"
    run(SEPARATION, ["hparams/conditioning.yaml", f"--data_folder={data3}", f"--output_folder={out}",
                     f"--basic_model={baseline3}", "--speaker_net=ge2e", *COND, *THREE])
    summary = check_run_outputs(out, "conditioning")
    assert np.isfinite(summary["si_snr_intermediate"])
    assert three_outputs(out) == 3
    # the three-speaker basic model under a two-speaker yaml: one line, before training
    proc = run(SEPARATION, ["hparams/conditioning.yaml", f"--data_folder={data3}",
                            f"--output_folder={tmp_path / 'two'}", f"--basic_model={baseline3}",
                            "--speaker_net=ge2e", *COND], check=False)
    assert proc.returncode != 0
    assert "was trained with num_spks=3, this yaml asks for num_spks=2" in proc.stderr
