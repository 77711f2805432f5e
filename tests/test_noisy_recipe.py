"""train.py on LibriMix's noisy types, end to end: every paper model on ``mix_both`` (noisy
separation), Conv-TasNet on ``mix_single`` with ``num_spks=1`` (enhancement), statically and
with dynamic mixing from a noise folder. One tiny noisy demo set; the runs are forked from
one process that imported everything once (tests/entrypoints.py)."""

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from spksep_modules.data.demo import make_demo_data
from spksep_modules.metrics import si_snr

SEPARATION = Path(__file__).resolve().parents[1] / "recipes" / "LibriMix" / "separation"
SIZES = ["--N=16", "--L=8", "--B=8", "--H=16", "--X=2", "--R=1"]  # a tiny Conv-TasNet
OPTS = ["--device=cpu", "--noprogressbar", "--num_workers=0", "--segment_seconds=0.5",
        "--batch_size=2", "--number_of_epochs=1"]
BOTH = ["--mixture_type=mix_both"]
SINGLE = ["--mixture_type=mix_single", "--num_spks=1"]


@pytest.fixture(scope="module")
def noisy(tmp_path_factory):
    return make_demo_data(tmp_path_factory.mktemp("noisy"), num_train=4, num_dev=2, num_test=2,
                          seconds=0.6, num_train_speakers=4, num_dev_speakers=2, num_test_speakers=2,
                          noise=True)


def train(ep, yaml, data, out, *args):
    result = ep.train(SEPARATION, [f"hparams/{yaml}.yaml", f"--data_folder={data}",
                                   f"--output_folder={out}", *args])
    assert result.rc == 0, result
    return out


def check_run(out, model, mixture_type):
    """The run trained, validated and tested on ``mixture_type``'s mixtures; its test rows."""
    with open(out / "test.csv", newline="") as f:
        assert all(f"/{mixture_type}/" in row["mix_wav"] for row in csv.DictReader(f))
    summary = json.loads((out / "test_summary.json").read_text())
    assert summary["model"] == model and summary["num_test"] == 2
    assert all(np.isfinite(summary[k]) for k in ("si_snr", "si_snr_i", "sdr", "sdr_i", "stoi"))
    assert "valid si_snr" in (out / "train_log.txt").read_text()
    with open(out / "test_results.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def both_baseline(ep, noisy, tmp_path_factory):
    return train(ep, "convtasnet", noisy, tmp_path_factory.mktemp("runs") / "convtasnet", *SIZES, *OPTS, *BOTH)


def test_conv_tasnet_on_mix_both_reports_si_snri_against_the_noisy_mixture(both_baseline, noisy):
    rows = check_run(both_baseline, "convtasnet", "mix_both")
    test_dir = os.path.join(noisy, "wav16k", "min", "test")
    for row in rows:
        def read(sub):
            return torch.from_numpy(sf.read(os.path.join(test_dir, sub, row["mixture_ID"] + ".wav"),
                                            dtype="float32")[0]).double()
        sources = torch.stack([read("s1"), read("s2")])  # the targets: clean sources
        mix_score = {t: si_snr(read(t).expand_as(sources), sources).mean().item()
                     for t in ("mix_both", "mix_clean")}
        # SI-SNRi = SI-SNR(estimates) - SI-SNR(the mixture the model heard: the noisy one)
        gain = float(row["si_snr"]) - float(row["si_snr_i"])
        assert gain == pytest.approx(mix_score["mix_both"], abs=1e-3)
        assert abs(mix_score["mix_both"] - mix_score["mix_clean"]) > 0.1


@pytest.mark.parametrize("model", ["weighted_sum", "triplet_like", "ablation_pos", "ablation_neg"])
def test_perceptual_models_train_on_mix_both(model, ep, noisy, tmp_path):
    out = train(ep, model, noisy, tmp_path / model, "--representation=ge2e", *SIZES, *OPTS, *BOTH)
    check_run(out, model, "mix_both")
    log = (out / "train_log.txt").read_text()
    assert "train D_pos" in log and "train perceptual" in log  # distances to the clean sources


def test_conditioning_trains_on_mix_both(ep, noisy, both_baseline, tmp_path):
    out = train(ep, "conditioning", noisy, tmp_path / "cond", f"--basic_model={both_baseline}",
                "--speaker_net=ge2e", "--stack_channels=8", "--film_hidden=16", *OPTS, *BOTH)
    check_run(out, "conditioning", "mix_both")
    assert "valid si_snr_intermediate" in (out / "train_log.txt").read_text()


def test_conv_tasnet_enhances_mix_single_with_one_speaker(ep, noisy, tmp_path):
    out = train(ep, "convtasnet", noisy, tmp_path / "single", *SIZES, *OPTS, *SINGLE)
    rows = check_run(out, "convtasnet", "mix_single")
    with open(out / "train.csv", newline="") as f:
        assert list(next(csv.DictReader(f))) == ["ID", "duration", "mix_wav", "s1_wav", "spk1"]
    assert len(rows) == 2


def test_dynamic_mixing_adds_noise_from_the_noise_folder(ep, noisy, tmp_path):
    noise = os.path.join(noisy, "wav16k", "min", "train-100", "noise")  # LibriMix's own noise/
    out = train(ep, "convtasnet", noisy, tmp_path / "dm", *SIZES, *OPTS, *SINGLE, "--dynamic_mixing=True",
                "--dm_epoch_mixtures=4", f"--dm_noise_folder={noise}")
    check_run(out, "convtasnet", "mix_single")
    assert f"noise from 4 files ({noise})" in (out / "log.txt").read_text()
