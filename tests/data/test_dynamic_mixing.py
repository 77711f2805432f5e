"""Dynamic mixing (spksep_modules/data/dynamic_mixing.py) on a tiny demo set, and train.py
with ``--dynamic_mixing=True`` end to end."""

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyloudnorm
import pytest
import soundfile as sf
import speechbrain as sb
import torch
from speechbrain.dataio.batch import PaddedBatch
from speechbrain.dataio.dataloader import make_dataloader

from spksep_modules import SpkSepError
from spksep_modules.data.demo import make_demo_data
from spksep_modules.data.dynamic_mixing import (
    LOUDNESS_RANGE,
    MAX_AMP,
    NOISE_LOUDNESS_RANGE,
    DynamicMixingDataset,
    Utterance,
    dynamic_mixing_set,
    folder_utterances,
    integrated_loudness,
    noise_files,
    split_loudness,
    split_utterances,
)
from spksep_modules.data.librimix import prepare_librimix
from spksep_modules.data.pipeline import build_datasets

SR = 16000
NUM_TRAIN = 6


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """A tiny Libri2Mix (6 training mixtures of 4 speakers) and its prepared CSVs."""
    tmp = tmp_path_factory.mktemp("dm")
    root = make_demo_data(tmp, num_train=NUM_TRAIN, num_dev=2, num_test=2, seconds=0.8,
                          num_train_speakers=4, num_dev_speakers=2, num_test_speakers=2)
    return root, prepare_librimix(root, tmp / "csv", SR)


@pytest.fixture(scope="module")
def utterances(demo):
    return split_utterances(demo[1]["train"], 2, SR)


def dataset(utterances, epoch=1, **kwargs):
    kwargs = {"epoch_mixtures": 8, "segment_seconds": 0.5, "seed": 7, "rank": 0, **kwargs}
    data = DynamicMixingDataset(utterances, SR, 2, **kwargs)
    data.set_epoch(epoch)
    return data


def mixes(data, n=None):
    return [data[i]["mix_sig"] for i in range(len(data) if n is None else n)]


def expect_error(fragment, path, fn, *args, **kwargs):
    """fn raises a one-line SpkSepError naming ``path`` and containing ``fragment``."""
    with pytest.raises(SpkSepError) as err:
        fn(*args, **kwargs)
    text = str(err.value)
    assert str(path) in text and fragment in text and "\n" not in text, text


# ---------------------------------------------------------------- the utterance pools


def test_split_sources_are_utterances_labelled_by_their_id_prefix(demo, utterances):
    with open(demo[1]["train"], newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(utterances) == 2 * NUM_TRAIN  # LibriMix training splits use an utterance once
    for utt in utterances:
        assert utt.speaker == utt.utt_id.split("-")[0]
        assert os.path.basename(os.path.dirname(utt.path)) in ("s1", "s2")
        assert utt.num_samples == sf.info(utt.path).frames
    assert {u.speaker for u in utterances} == {r[f"spk{k}"] for r in rows for k in (1, 2)}


@pytest.fixture(scope="module")
def librispeech(utterances, tmp_path_factory):
    """The demo's sources as a LibriSpeech folder <speaker>/<chapter>/<utt>.flac."""
    root = tmp_path_factory.mktemp("LibriSpeech") / "train-clean-100"
    for utt in utterances:
        speaker, chapter, _ = utt.utt_id.split("-")
        os.makedirs(root / speaker / chapter, exist_ok=True)
        wav, _ = sf.read(utt.path, dtype="float32")
        sf.write(root / speaker / chapter / f"{utt.utt_id}.flac", wav, SR)
    return root


def test_librispeech_folder_is_a_source_of_utterances(librispeech, utterances):
    found = folder_utterances(librispeech, SR)
    assert sorted((u.utt_id, u.speaker, u.num_samples) for u in found) == sorted(
        (u.utt_id, u.speaker, u.num_samples) for u in utterances)
    item = dataset(found)[0]
    assert item["sources"].shape == (8000, 2) and len(set(item["spk_ids"])) == 2
    # and the recipe's key reads it
    data = dynamic_mixing_set(  # with both keys set, the training CSV is not read
        "unread.csv", {"sample_rate": SR, "num_spks": 2, "segment_seconds": 0.5, "short_policy": "pad", "seed": 1,
         "dm_folder": str(librispeech), "dm_epoch_mixtures": 3})
    assert len(data) == 3 and data[2]["id"].split("_")[0] in {u.utt_id for u in found}


def test_folder_errors_are_one_line_and_name_the_file(librispeech, tmp_path):
    expect_error("dm_folder not found", tmp_path / "missing", folder_utterances, tmp_path / "missing", SR)
    (tmp_path / "empty").mkdir()
    expect_error("no LibriSpeech-style", tmp_path / "empty", folder_utterances, tmp_path / "empty", SR)
    bad = tmp_path / "bad"
    shutil.copytree(librispeech, bad)
    wrong_rate = bad / "1" / "2" / "1-2-0000.flac"
    wrong_rate.parent.mkdir(parents=True)
    sf.write(wrong_rate, np.zeros(800), 8000)
    expect_error("16000 Hz expected, file is 8000 Hz", wrong_rate, folder_utterances, bad, SR)
    wrong_rate.unlink()
    stereo = bad / "1" / "2" / "1-2-0001.wav"
    sf.write(stereo, np.zeros((800, 2)), SR)
    expect_error("expected mono, got 2 channels", stereo, folder_utterances, bad, SR)


def test_too_few_speakers_is_an_error_naming_the_source(librispeech, tmp_path):
    one = tmp_path / "one"
    speaker = sorted(os.listdir(librispeech))[0]
    shutil.copytree(librispeech / speaker, one / speaker)
    utts = folder_utterances(one, SR)
    expect_error("needs 2 distinct speakers, found 1", one, DynamicMixingDataset, utts, SR, 2,
                 epoch_mixtures=4, where=str(one))
    # 'skip' keeps only utterances lasting a whole segment: none lasts 5 s here
    expect_error("at least segment_seconds=5.0", one, DynamicMixingDataset,
                 folder_utterances(librispeech, SR), SR, 2, epoch_mixtures=4, segment_seconds=5.0,
                 short_policy="skip", where=str(one))


# ---------------------------------------------------------------- the mixtures


def test_mixtures_have_distinct_speakers_and_are_the_sum_of_their_sources(utterances):
    data = dataset(utterances, epoch_mixtures=24)
    for i in range(len(data)):
        item = data[i]
        utt_ids = item["id"].split("_")
        assert len(utt_ids) == 2 and item["spk_ids"] == [u.split("-")[0] for u in utt_ids]
        assert len(set(item["spk_ids"])) == 2
        assert item["mix_sig"].dtype == item["sources"].dtype == torch.float32
        assert item["sources"].shape == (8000, 2)
        assert torch.equal(item["mix_sig"], item["sources"].sum(-1))
        assert item["mix_sig"].abs().max() <= MAX_AMP + 1e-6  # no clipping
    assert len({data[i]["id"] for i in range(len(data))}) > 1


@pytest.mark.parametrize("rate", [8000, 16000])
def test_loudness_is_pyloudnorms_without_its_loop(rate):
    meter = pyloudnorm.Meter(rate)
    for seconds in (0.4, 0.45, 3.0, 7.3):
        for seed in range(3):  # noise under a bursty envelope: the gates matter
            rng = np.random.default_rng(seed)
            n = int(seconds * rate)
            envelope = np.repeat(rng.uniform(0, 1, n // 100 + 1) ** 4, 100)[:n]
            signal = 0.3 * rng.standard_normal(n) * envelope
            assert integrated_loudness(meter, signal) == pytest.approx(
                meter.integrated_loudness(signal), abs=1e-9)


def test_sources_get_the_loudness_drawn_for_them(utterances):
    meter = pyloudnorm.Meter(SR)
    data = dataset(utterances, epoch_mixtures=6)
    for i in range(len(data)):
        mixture = data.mixture(i)
        for k, target in enumerate(mixture.target_lufs):
            assert LOUDNESS_RANGE[0] <= target <= LOUDNESS_RANGE[1]
            measured = meter.integrated_loudness(mixture.sources[:, k].double().numpy())
            # the drawn loudness, less what keeping the mixture's peak at 0.9 took off
            assert measured == pytest.approx(target + 20 * np.log10(mixture.peak_scale), abs=0.05)


def test_train_split_loudness_gives_each_new_mixture_the_levels_of_a_training_mixture(demo, utterances):
    meter = pyloudnorm.Meter(SR)
    table = split_loudness(demo[1]["train"], 2, SR)
    assert table.shape == (NUM_TRAIN, 2)
    with open(demo[1]["train"], newline="") as f:  # row 0 is the first mixture's sources
        first = next(csv.DictReader(f))
    for k in range(2):
        signal, _ = sf.read(first[f"s{k + 1}_wav"])
        assert table[0, k] == pytest.approx(meter.integrated_loudness(signal), abs=1e-6)
    data = dataset(utterances, epoch_mixtures=8, loudness=table)
    rows = {tuple(row) for row in table}
    for i in range(len(data)):
        mixture = data.mixture(i)
        assert tuple(mixture.target_lufs) in rows  # the levels of one training mixture, together
        for k, target in enumerate(mixture.target_lufs):
            measured = meter.integrated_loudness(mixture.sources[:, k].double().numpy())
            assert measured == pytest.approx(target + 20 * np.log10(mixture.peak_scale), abs=0.05)
    # LibriMix's rule would have drawn other levels for the same mixture
    assert data.mixture(0).target_lufs != dataset(utterances).mixture(0).target_lufs
    expect_error("loudness must be", "dynamic mixing", dataset, utterances, loudness=table[:, :1])
    # a sample of the mixtures, evenly spaced: 3 of the 6 are rows 0, 2 (2.5 rounded) and 5
    assert np.array_equal(split_loudness(demo[1]["train"], 2, SR, max_mixtures=3), table[[0, 2, 5]])
    expect_error("s3_wav", demo[1]["train"], split_loudness, demo[1]["train"], 3, SR)


def test_loud_mixtures_are_scaled_down_to_the_librimix_peak(utterances):
    data = dataset(utterances)
    data.mixer.loudness = np.array([-8.0, -8.0])  # far louder than LibriMix: the sum would clip
    for i in range(4):
        mixture = data.mixture(i)
        assert mixture.peak_scale < 1
        assert float(mixture.mix.abs().max()) == pytest.approx(MAX_AMP, abs=1e-6)
        assert torch.equal(mixture.mix, mixture.sources.sum(-1))


def test_segments_shorter_than_a_loudness_block_and_than_the_segment(utterances, tmp_path):
    meter = pyloudnorm.Meter(SR)
    short = dataset(utterances, segment_seconds=0.2)  # 0.2 s < pyloudnorm's 0.4 s block
    for i in range(3):
        mixture = short.mixture(i)
        assert mixture.sources.shape == (3200, 2) and torch.isfinite(mixture.sources).all()
        tiled = np.tile(mixture.sources[:, 0].double().numpy(), 3)
        measured = meter.integrated_loudness(tiled)
        assert measured == pytest.approx(mixture.target_lufs[0] + 20 * np.log10(mixture.peak_scale), abs=0.2)
    # longer than every utterance: 'pad' zero-pads the (shortest-utterance-long) mixture
    padded = dataset(utterances, segment_seconds=2.0)[0]
    assert padded["sources"].shape == (32000, 2)
    assert padded["mix_sig"][-1000:].abs().max() == 0 and padded["mix_sig"][:8000].abs().max() > 0
    # a silent utterance has no loudness (-inf LUFS): it stays silent, nothing is NaN
    sf.write(tmp_path / "1-1-0000.wav", np.zeros(SR), SR)
    silent = Utterance("1-1-0000", str(tmp_path / "1-1-0000.wav"), "1", SR)
    mixture = dataset([silent, utterances[0]]).mixture(0)
    k = mixture.speakers.index("1")
    assert torch.isfinite(mixture.mix).all() and mixture.sources[:, k].abs().max() == 0
    assert meter.integrated_loudness(mixture.sources[:, 1 - k].double().numpy()) == pytest.approx(
        mixture.target_lufs[1 - k] + 20 * np.log10(mixture.peak_scale), abs=0.05)


def test_utterance_levelling_keeps_each_segment_at_its_level_within_its_utterance(tmp_path):
    """``level_on="utterance"``: the gain is the whole utterance's, so a segment from a quiet
    stretch stays quiet (as in a crop of a LibriMix mixture) instead of reaching the target."""
    meter, rng, utts = pyloudnorm.Meter(SR), np.random.default_rng(3), []
    for speaker in ("1", "2"):  # a loud second, then a quiet one (20 dB down)
        wav = np.concatenate([0.1 * rng.standard_normal(SR), 0.01 * rng.standard_normal(SR)])
        path = tmp_path / f"{speaker}-1-0000.wav"
        sf.write(path, wav, SR, subtype="FLOAT")
        utts.append(Utterance(f"{speaker}-1-0000", str(path), speaker, 2 * SR))
    by_segment = dataset(utts, segment_seconds=0.5, epoch_mixtures=12)
    by_utterance = dataset(utts, segment_seconds=0.5, epoch_mixtures=12, level_on="utterance")
    spread = []
    for i in range(12):
        mixture = by_utterance.mixture(i)
        assert by_segment.mixer.draw(i) == by_utterance.mixer.draw(i)  # same draws, other gains
        _, starts, length, targets, _ = by_utterance.mixer.draw(i)
        for k, speaker in enumerate(mixture.speakers):
            whole, _ = sf.read(tmp_path / f"{speaker}-1-0000.wav")
            gain = 10 ** ((targets[k] - meter.integrated_loudness(whole)) / 20) * mixture.peak_scale
            raw = whole[starts[k]:starts[k] + length]
            np.testing.assert_allclose(mixture.sources[:, k].numpy(), raw * gain, rtol=1e-4, atol=1e-7)
            # the whole utterance at that gain has the drawn loudness (less the peak scaling)
            assert meter.integrated_loudness(whole * gain) == pytest.approx(
                targets[k] + 20 * np.log10(mixture.peak_scale), abs=0.05)
            spread.append(meter.integrated_loudness(mixture.sources[:, k].double().numpy()))
        assert torch.equal(mixture.mix, mixture.sources.sum(-1))
    # segments from the quiet second stay ~20 dB down; segment levelling evens them out
    assert max(spread) - min(spread) > 12
    again = [by_segment.mixture(i) for i in range(12)]
    evened = [meter.integrated_loudness(m.sources[:, k].double().numpy()) - 20 * np.log10(m.peak_scale)
              - m.target_lufs[k] for m in again for k in range(2)]
    assert max(abs(e) for e in evened) < 0.05
    # the clipping rule looks at the whole utterance's peak, not the segment's
    by_utterance.mixer.loudness = np.array([-3.0, -3.0])
    mixture = by_utterance.mixture(0)
    _, starts, length, _, _ = by_utterance.mixer.draw(0)
    k = 0
    whole, _ = sf.read(tmp_path / f"{mixture.speakers[k]}-1-0000.wav")
    expected = whole[starts[k]:starts[k] + length] * MAX_AMP / np.abs(whole).max() * mixture.peak_scale
    np.testing.assert_allclose(mixture.sources[:, k].numpy(), expected, rtol=1e-4, atol=1e-7)
    expect_error("'segment' or 'utterance'", "dm_level_on", dataset, utts, level_on="file")
    # measured when the dataset is made, so DataLoader workers inherit the levels
    assert set(dataset(utts, level_on="utterance").mixer._utterance_levels) == {u.path for u in utts}
    # a silent utterance has no loudness (-inf LUFS) and a zero peak: it stays silent, no NaN
    sf.write(tmp_path / "3-1-0000.wav", np.zeros(SR), SR)
    silent = Utterance("3-1-0000", str(tmp_path / "3-1-0000.wav"), "3", SR)
    mixture = dataset([silent, utts[0]], level_on="utterance").mixture(0)
    assert torch.isfinite(mixture.mix).all() and mixture.sources[:, mixture.speakers.index("3")].abs().max() == 0


# ---------------------------------------------------------------- determinism


def test_same_seed_epoch_rank_give_the_same_mixtures_and_others_differ(utterances):
    first = mixes(dataset(utterances))
    again = mixes(dataset(utterances))
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    for other in (dataset(utterances, epoch=2), dataset(utterances, rank=1),
                  dataset(utterances, seed=8)):
        assert not any(torch.equal(a, b) for a, b in zip(first, mixes(other)))
    # a dataset made later (a resumed run) draws epoch 1 again when told epoch 1
    resumed = dataset(utterances, epoch=5)
    resumed.set_epoch(1)
    assert all(torch.equal(a, b) for a, b in zip(first, mixes(resumed)))


def test_dataloader_workers_build_different_mixtures_and_the_same_batches(utterances):
    data = dataset(utterances)
    assert isinstance(PaddedBatch([data[0]]), PaddedBatch)
    batches = {}
    for workers in (0, 2):
        loader = make_dataloader(data, batch_size=2, num_workers=workers)  # PaddedBatch by default
        batches[workers] = [b.mix_sig.data for b in loader]
        assert batches[workers][0].shape == (2, 8000)
    assert all(torch.equal(a, b) for a, b in zip(batches[0], batches[2]))
    items = torch.cat(batches[2])  # worker 0 built batches 0 and 2, worker 1 batches 1 and 3
    assert len({tuple(x[:64].tolist()) for x in items}) == len(items)


def test_the_brain_tells_the_dataset_each_training_epoch(utterances):
    from spksep_modules.training.brains import SeparationBrain
    from spksep_modules.losses import SeparationLoss
    from spksep_modules.models import ConvTasNet

    brain = SeparationBrain(modules={"separator": ConvTasNet(N=8, L=8, B=8, H=8, P=3, X=1, R=1),
                                     "loss": SeparationLoss()}, run_opts={"device": "cpu"})
    data = dataset(utterances)
    brain.epoch_datasets = [data, build_datasets({}, SR, 2)]
    brain.on_stage_start(sb.Stage.TRAIN, 4)
    assert data.mixer.epoch == 4


def test_recipe_keys_epoch_length_and_refusals(demo):
    train_csv = demo[1]["train"]
    hparams = {"sample_rate": SR, "num_spks": 2, "segment_seconds": 0.5, "short_policy": "pad",
               "seed": 1, "dm_folder": None, "dm_epoch_mixtures": None}
    assert len(dynamic_mixing_set(train_csv, hparams)) == NUM_TRAIN  # as many as the static set
    assert len(dynamic_mixing_set(train_csv, {**hparams, "dm_epoch_mixtures": 11})) == 11
    for key, value in (("basic_cache_mb", 64), ("fixed_crops", True),
                       ("train_loader_opts", {"persistent_workers": True})):
        expect_error("must be", key, dynamic_mixing_set, train_csv, {**hparams, key: value})
    expect_error("positive integer", "dm_epoch_mixtures", dynamic_mixing_set, train_csv,
                 {**hparams, "dm_epoch_mixtures": 0})
    expect_error("'librimix' or 'train_split'", "dm_loudness", dynamic_mixing_set, train_csv,
                 {**hparams, "dm_loudness": "lufs"})
    split = dynamic_mixing_set(train_csv, {**hparams, "dm_loudness": "train_split"})
    assert split.mixer.loudness.shape == (NUM_TRAIN, 2)
    assert split.mixer.level_on == "segment"
    whole = dynamic_mixing_set(train_csv, {**hparams, "dm_loudness": "train_split", "dm_level_on": "utterance"})
    assert whole.mixer.level_on == "utterance"


# ---------------------------------------------------------------- noise (dm_noise_folder)


@pytest.fixture(scope="module")
def noise_folder(tmp_path_factory):
    """Two noise files: a stereo one longer than a segment (as WHAM!'s are) and, one level
    down, a mono one shorter than a segment (repeated to fill it)."""
    folder = tmp_path_factory.mktemp("noise")
    rng = np.random.default_rng(0)
    sf.write(folder / "cafe.wav", 0.1 * rng.standard_normal((2 * SR, 2)), SR)
    (folder / "street").mkdir()
    sf.write(folder / "street" / "short.flac", 0.05 * rng.standard_normal(SR // 4), SR)
    return folder


def test_noise_is_added_at_librimix_noise_level_and_the_targets_stay_clean(utterances, noise_folder):
    assert NOISE_LOUDNESS_RANGE == (-38.0, -30.0)  # LibriMix: the speech's range, 5 dB lower
    noises = noise_files(noise_folder, SR)
    assert [(os.path.basename(n.path), n.num_samples) for n in noises] == [("cafe.wav", 2 * SR),
                                                                          ("short.flac", SR // 4)]
    noisy, clean = dataset(utterances, noises=noises), dataset(utterances)
    meter, used = pyloudnorm.Meter(SR), set()
    for i in range(8):
        mixture, without = noisy.mixture(i), clean.mixture(i)
        used.add(noisy.mixer.draw(i)[4][0].path)
        # the same speech is drawn as without noise (the noise is drawn last) ...
        assert (mixture.mixture_id, mixture.target_lufs) == (without.mixture_id, without.target_lufs)
        # ... the noise is in the mixture only, the targets are the clean sources
        assert torch.equal(mixture.mix, mixture.sources.sum(-1) + mixture.noise)
        assert torch.allclose(mixture.sources, without.sources * mixture.peak_scale / without.peak_scale,
                              atol=1e-6)
        assert NOISE_LOUDNESS_RANGE[0] <= mixture.noise_lufs <= NOISE_LOUDNESS_RANGE[1]
        measured = integrated_loudness(meter, mixture.noise.numpy().astype(np.float64))
        assert measured == pytest.approx(mixture.noise_lufs + 20 * np.log10(mixture.peak_scale), abs=0.05)
        assert torch.equal(noisy[i]["mix_sig"], mixture.mix)
    assert len(used) == 2  # both files drawn; the short one repeated to the segment's length


def test_one_speaker_enhancement_mixtures_and_noise_errors(demo, utterances, noise_folder, tmp_path):
    one = split_utterances(demo[1]["train"], 1, SR)  # s1 only: what a mix_single CSV gives
    with open(demo[1]["train"], newline="") as f:
        assert {u.utt_id for u in one} == {row["ID"].split("_")[0] for row in csv.DictReader(f)}
    data = DynamicMixingDataset(one, SR, 1, 4, segment_seconds=0.5, seed=3, rank=0,
                                noises=noise_files(noise_folder, SR))
    data.set_epoch(1)
    item = data[0]
    assert item["sources"].shape == (SR // 2, 1) and len(item["spk_ids"]) == 1
    assert torch.allclose(item["mix_sig"], item["sources"][:, 0] + data.mixture(0).noise)
    # one source and no noise: the mixture would be its own target
    with pytest.raises(SpkSepError, match="dm_noise_folder: dynamic mixing with num_spks=1 needs noise"):
        DynamicMixingDataset(one, SR, 1, 4)
    expect_error("dm_noise_folder not found", tmp_path / "missing", noise_files, tmp_path / "missing", SR)
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "notes.txt").write_text("no audio here")
    expect_error("holds no .wav or .flac files", tmp_path / "empty", noise_files, tmp_path / "empty", SR)
    sf.write(tmp_path / "empty" / "sub" / "n8k.wav", np.zeros(800), 8000)
    expect_error("16000 Hz expected, file is 8000 Hz", tmp_path / "empty" / "sub" / "n8k.wav",
                 noise_files, tmp_path / "empty", SR)
    # the recipe key: dynamic_mixing_set reads dm_noise_folder from the hparams train.py passes
    hparams = {"sample_rate": SR, "num_spks": 2, "segment_seconds": 0.5, "short_policy": "pad",
               "seed": 1, "dm_folder": None, "dm_epoch_mixtures": 3, "dm_noise_folder": str(noise_folder)}
    assert len(dynamic_mixing_set(demo[1]["train"], hparams).mixer.noises) == 2
    expect_error("dm_noise_folder not found", tmp_path / "missing", dynamic_mixing_set, demo[1]["train"],
                 {**hparams, "dm_noise_folder": str(tmp_path / "missing")})


# ---------------------------------------------------------------- train.py end to end

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "LibriMix" / "separation"
TINY = ["--N=16", "--L=8", "--B=8", "--H=16", "--X=2", "--R=1", "--device=cpu", "--noprogressbar",
        "--num_workers=0", "--segment_seconds=0.5", "--batch_size=2", "--number_of_epochs=1",
        "--dynamic_mixing=True", "--dm_epoch_mixtures=4"]
SIZE_KEYS = {"--N", "--L", "--B", "--H", "--X", "--R"}  # the conditioned model takes its basic model's
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def train(args):
    proc = subprocess.run([sys.executable, "train.py", *map(str, args)], cwd=RECIPE, env=ENV,
                          capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise AssertionError(f"train.py failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="module")
def dm_baseline(demo, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "convtasnet"
    train(["hparams/convtasnet.yaml", f"--data_folder={demo[0]}", f"--output_folder={out}", *TINY])
    return out


def check_dm_run(out):
    assert "Dynamic mixing: 4 mixtures per epoch from 12 utterances of 4 speakers" in (
        out / "log.txt").read_text()
    log = (out / "train_log.txt").read_text()
    assert "epoch: 1" in log and "train si_snr" in log and "valid si_snr" in log
    assert (out / "test_summary.json").is_file()
    return log


def test_conv_tasnet_trains_with_dynamic_mixing(dm_baseline):
    check_dm_run(dm_baseline)


def test_perceptual_model_trains_with_dynamic_mixing(demo, tmp_path):
    out = tmp_path / "weighted_sum"
    train(["hparams/weighted_sum.yaml", f"--data_folder={demo[0]}", f"--output_folder={out}", *TINY,
           "--representation=ge2e", "--dm_level_on=utterance"])
    log = check_dm_run(out)
    assert "set on each utterance" in (out / "log.txt").read_text()  # the yaml key reached the mixer
    assert "train D_pos" in log and "train D_neg" in log  # on the drawn mixtures' sources


def test_conditioning_trains_with_dynamic_mixing(demo, dm_baseline, tmp_path):
    # (its basic_cache_mb is refused with dynamic mixing: test_recipe_keys_epoch_length_and_refusals)
    out = tmp_path / "cond"
    train(["hparams/conditioning.yaml", f"--data_folder={demo[0]}", f"--basic_model={dm_baseline}",
           f"--output_folder={out}", "--speaker_net=ge2e", "--stack_channels=8", "--film_hidden=16",
           *[a for a in TINY if a.split("=")[0] not in SIZE_KEYS]])
    assert "valid si_snr_intermediate" in check_dm_run(out)


def test_an_utterance_reused_by_the_split_is_drawn_from_every_copy(tmp_path):
    """A split that cuts one utterance at different places in different mixtures (the
    real-speech development set does) offers all of that speech to dynamic mixing."""
    rng = np.random.default_rng(0)
    rows = ["ID,duration,mix_wav,s1_wav,s2_wav"]
    partners = ["26-495-0002", "40-222-0003", "87-111-0004"]
    for i, partner in enumerate(partners):
        for name in (f"a{i}", f"b{i}"):
            sf.write(tmp_path / f"{name}.wav", 0.05 * rng.standard_normal(SR), SR)
        rows.append(f"19-198-0001_{partner},1.0,m.wav,{tmp_path}/a{i}.wav,{tmp_path}/b{i}.wav")
    (tmp_path / "train.csv").write_text("\n".join(rows) + "\n")
    utts = split_utterances(str(tmp_path / "train.csv"), 2, SR)
    assert sum(u.utt_id == "19-198-0001" for u in utts) == 3
    data = dataset(utts, epoch_mixtures=60)
    drawn = {u.path for i in range(len(data)) for u in data.mixer.draw(i)[0] if u.speaker == "19"}
    assert drawn == {f"{tmp_path}/a{i}.wav" for i in range(3)}
