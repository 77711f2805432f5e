"""Demo data, LibriMix preparation and the SpeechBrain data pipeline, on tiny demo sets."""

import csv
import glob
import os
import re
import shutil

import numpy as np
import pytest
import soundfile as sf
import torch
from speechbrain.dataio.batch import PaddedBatch

from spksep_modules import SpkSepError
from spksep_modules.data.demo import make_demo_data
from spksep_modules.data.librimix import prepare_librimix
from spksep_modules.data.pipeline import build_datasets

SR = 16000
TINY = dict(num_train=6, num_dev=2, num_test=2, seconds=0.5, num_train_speakers=4,
            num_dev_speakers=2, num_test_speakers=2)
SPLIT_DIRS = ("train-100", "dev", "test")


@pytest.fixture(scope="module")
def demo_master(tmp_path_factory):
    """One tiny Libri2Mix demo set per module; tests that damage it use a copy."""
    return make_demo_data(tmp_path_factory.mktemp("master"), **TINY)


@pytest.fixture
def demo(demo_master, tmp_path):
    """A private copy ``<tmp>/data/Libri2Mix`` whose metadata names its own files."""
    root = str(tmp_path / "data" / "Libri2Mix")
    shutil.copytree(demo_master, root)
    for meta in glob.glob(os.path.join(base(root), "metadata", "*.csv")):
        with open(meta) as f:
            text = f.read()
        with open(meta, "w") as f:
            f.write(text.replace(demo_master, root))
    return root


def base(root):
    return os.path.join(root, "wav16k", "min")


def read_rows(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def first_id(root, split="test"):
    return sorted(os.listdir(os.path.join(base(root), split, "mix_clean")))[0][:-4]


def expect_error(fragment, path, fn, *args, **kwargs):
    """fn raises a one-line SpkSepError that names ``path`` and contains ``fragment``."""
    with pytest.raises(SpkSepError) as err:
        fn(*args, **kwargs)
    text = str(err.value)
    assert str(path) in text and fragment in text and "\n" not in text, text
    return text


# ---------------------------------------------------------------- demo data


def test_demo_layout_matches_librimix(demo_master):
    assert os.path.basename(demo_master) == "Libri2Mix"
    for split, count in zip(SPLIT_DIRS, (6, 2, 2)):
        meta = os.path.join(base(demo_master), "metadata", f"mixture_{split}_mix_clean.csv")
        with open(meta, newline="") as f:
            header = next(csv.reader(f))
        assert header == ["mixture_ID", "mixture_path", "source_1_path", "source_2_path", "length"]
        rows = read_rows(meta)
        assert len(rows) == count
        for row in rows:
            assert re.fullmatch(r"\d+-\d+-\d{4}_\d+-\d+-\d{4}", row["mixture_ID"])
            mix_path = row["mixture_path"]
            assert os.path.isabs(mix_path)
            assert mix_path == os.path.join(base(demo_master), split, "mix_clean", row["mixture_ID"] + ".wav")
            mix, sr = sf.read(mix_path, dtype="float32")
            s1, _ = sf.read(row["source_1_path"], dtype="float32")
            s2, _ = sf.read(row["source_2_path"], dtype="float32")
            assert sr == SR and sf.info(mix_path).subtype == "PCM_16"
            # min mode: every file has the mixture's length, at least `seconds`
            assert len(mix) == len(s1) == len(s2) == int(row["length"]) >= 0.5 * SR
            assert np.array_equal(mix, s1 + s2)  # exact: mixture made from the int16 sources
            assert np.abs(mix).max() <= 0.9 + 1e-4
            # both sources are audible speech-like signals within the +-5 dB gain range
            level = [10 * np.log10(np.mean(s**2)) for s in (s1, s2)]
            assert abs(level[0] - level[1]) < 5.0 + 1.0 and min(level) > -40


def test_demo_is_deterministic(demo_master, tmp_path):
    again = make_demo_data(tmp_path / "again", **TINY)
    other = make_demo_data(tmp_path / "other", **dict(TINY, seed=1))
    files = sorted(os.path.relpath(p, demo_master) for p in glob.glob(f"{demo_master}/**/*.wav", recursive=True))
    assert files == sorted(os.path.relpath(p, again) for p in glob.glob(f"{again}/**/*.wav", recursive=True))
    assert len(files) == 3 * 10
    for rel in files:
        with open(os.path.join(demo_master, rel), "rb") as a, open(os.path.join(again, rel), "rb") as b:
            assert a.read() == b.read(), rel
    assert sorted(os.listdir(os.path.join(base(other), "test", "mix_clean"))) != sorted(
        os.listdir(os.path.join(base(demo_master), "test", "mix_clean"))
    )


def test_demo_speakers_are_disjoint_across_splits(demo_master):
    speakers = {}
    for split in SPLIT_DIRS:
        ids = os.listdir(os.path.join(base(demo_master), split, "mix_clean"))
        speakers[split] = {utt.split("-")[0] for name in ids for utt in name[:-4].split("_")}
        for name in ids:  # two different speakers per mixture
            a, b = (u.split("-")[0] for u in name[:-4].split("_"))
            assert a != b
    assert speakers["dev"] and speakers["test"] and len(speakers["train-100"]) >= 3
    assert not speakers["train-100"] & speakers["dev"]
    assert not speakers["train-100"] & speakers["test"]
    assert not speakers["dev"] & speakers["test"]


def test_demo_reuses_its_own_set_and_never_overwrites_real_data(demo, tmp_path):
    mix = os.path.join(base(demo), "test", "mix_clean", first_id(demo) + ".wav")
    before = os.stat(mix).st_mtime_ns
    assert make_demo_data(os.path.dirname(demo), **TINY) == demo
    assert os.stat(mix).st_mtime_ns == before
    real = tmp_path / "real" / "Libri2Mix"
    real.mkdir(parents=True)
    expect_error("not written by spksep demo-data", real, make_demo_data, tmp_path / "real", **TINY)


# ---------------------------------------------------------------- preparation


def check_csvs(paths, root, num_spks=2):
    counts = {"train": 6, "valid": 2, "test": 2}
    for name, path in paths.items():
        rows = read_rows(path)
        assert list(rows[0]) == (["ID", "duration", "mix_wav"] + [f"s{i + 1}_wav" for i in range(num_spks)]
                                 + [f"spk{i + 1}" for i in range(num_spks)])
        assert len(rows) == counts[name]
        for row in rows:
            assert row["mix_wav"].startswith(str(root)) and os.path.isfile(row["mix_wav"])
            for i in range(num_spks):
                assert row[f"s{i + 1}_wav"] == row["mix_wav"].replace("mix_clean", f"s{i + 1}")
            assert round(float(row["duration"]) * SR) == sf.info(row["mix_wav"]).frames
            assert [row[f"spk{i + 1}"] for i in range(num_spks)] == [u.split("-")[0] for u in row["ID"].split("_")]


def test_prepare_from_metadata(demo, demo_master, tmp_path):
    paths = prepare_librimix(demo, tmp_path / "save")
    assert set(paths) == {"train", "valid", "test"}
    check_csvs(paths, demo)
    # A copy whose metadata names another existing copy: the prepared folder's files win.
    copy = str(tmp_path / "copy" / "Libri2Mix")
    shutil.copytree(demo_master, copy)
    check_csvs(prepare_librimix(copy, tmp_path / "save2"), copy)
    # Data moved, the recorded absolute paths exist no more: resolved by file name.
    moved = str(tmp_path / "moved" / "Libri2Mix")
    shutil.move(demo, moved)
    meta_rows = read_rows(os.path.join(base(moved), "metadata", "mixture_dev_mix_clean.csv"))
    assert all(not os.path.exists(r["mixture_path"]) for r in meta_rows)
    check_csvs(prepare_librimix(moved, tmp_path / "save3"), moved)


def test_prepare_by_scanning_equals_metadata(demo, tmp_path):
    from_meta = {n: read_rows(p) for n, p in prepare_librimix(demo, tmp_path / "a").items()}
    shutil.rmtree(os.path.join(base(demo), "metadata"))
    paths = prepare_librimix(demo, tmp_path / "b")
    check_csvs(paths, demo)
    for name, path in paths.items():
        key = lambda r: r["ID"]  # noqa: E731
        assert sorted(read_rows(path), key=key) == sorted(from_meta[name], key=key)


def test_data_folder_may_be_parent_or_librimix_folder(demo, tmp_path):
    a = prepare_librimix(demo, tmp_path / "a")
    b = prepare_librimix(os.path.dirname(demo), tmp_path / "b")
    for name in a:
        assert read_rows(a[name]) == read_rows(b[name])


def test_prepare_skips_when_up_to_date(demo, tmp_path):
    paths = prepare_librimix(demo, tmp_path / "save", verify="exists")
    stamps = {n: os.stat(p).st_mtime_ns for n, p in paths.items()}
    assert prepare_librimix(demo, tmp_path / "save", verify="exists") == paths
    assert {n: os.stat(p).st_mtime_ns for n, p in paths.items()} == stamps
    # other parameters -> rewritten
    prepare_librimix(demo, tmp_path / "save", verify="header")
    assert os.stat(paths["test"]).st_mtime_ns != stamps["test"]
    stamps = {n: os.stat(p).st_mtime_ns for n, p in paths.items()}
    # a mixture removed from the data (metadata gone too) -> rewritten, one row fewer
    shutil.rmtree(os.path.join(base(demo), "metadata"))
    mix_id = first_id(demo, "train-100")
    for sub in ("mix_clean", "s1", "s2"):
        folder = os.path.join(base(demo), "train-100", sub)
        os.remove(os.path.join(folder, mix_id + ".wav"))
        os.utime(folder, ns=(stamps["train"] + 10**9, stamps["train"] + 10**9))  # coarse clocks
    prepare_librimix(demo, tmp_path / "save")
    assert len(read_rows(paths["train"])) == 5


def test_three_speakers(tmp_path):
    root = make_demo_data(tmp_path / "d3", num_spks=3, **dict(TINY, num_dev_speakers=3, num_test_speakers=3))
    assert os.path.basename(root) == "Libri3Mix"
    paths = prepare_librimix(tmp_path / "d3", tmp_path / "save", num_spks=3)
    check_csvs(paths, root, num_spks=3)
    data = build_datasets(paths, SR, 3, segment_seconds=0.25)
    item = data["train"][0]
    assert item["sources"].shape == (4000, 3) and len(item["spk_ids"]) == 3
    assert torch.equal(item["mix_sig"], item["sources"].sum(-1))
    # Libri3Mix prepared as 2 speakers: caught at its s3 folder
    expect_error("exists, but num_spks=2", os.path.join(base(root), "train-100", "s3"),
                 prepare_librimix, root, tmp_path / "x", num_spks=2)


# ---------------------------------------------------------------- bad inputs


def test_bad_settings_and_missing_folders(demo, tmp_path):
    save = tmp_path / "save"
    missing = tmp_path / "nowhere"
    expect_error("data folder not found", missing, prepare_librimix, missing, save)
    expect_error("not a LibriMix folder", tmp_path, prepare_librimix, tmp_path, save)
    expect_error("must be 2 or 3", "num_spks", prepare_librimix, demo, save, num_spks=4)
    expect_error("8000 or 16000", "sample_rate", prepare_librimix, demo, save, sample_rate=22050)
    # Libri2Mix's parent with num_spks=3: there is no Libri3Mix
    expect_error("Libri3Mix", os.path.dirname(demo), prepare_librimix, os.path.dirname(demo), save, num_spks=3)
    # the Libri2Mix folder itself with num_spks=3: no s3 folder
    expect_error("folder not found (num_spks=3)", os.path.join(base(demo), "train-100", "s3"),
                 prepare_librimix, demo, save, num_spks=3)
    # max mode was not generated
    expect_error("split folder not found", os.path.join(demo, "wav16k", "max", "train-100"),
                 prepare_librimix, demo, save, mode="max")
    shutil.rmtree(os.path.join(base(demo), "dev"))
    expect_error("split folder not found", os.path.join(base(demo), "dev"), prepare_librimix, demo, save)
    assert not os.path.exists(save / "train.csv")  # nothing half-written


def test_extra_source_folder_is_a_speaker_mismatch(demo, tmp_path):
    os.makedirs(os.path.join(base(demo), "test", "s3"))
    expect_error("num_spks=2", os.path.join(base(demo), "test", "s3"), prepare_librimix, demo, tmp_path / "s")


@pytest.mark.parametrize("with_metadata", [True, False])
def test_missing_source_file(demo, tmp_path, with_metadata):
    if not with_metadata:
        shutil.rmtree(os.path.join(base(demo), "metadata"))
    path = os.path.join(base(demo), "test", "s2", first_id(demo) + ".wav")
    os.remove(path)
    expect_error("file not found", path, prepare_librimix, demo, tmp_path / "s", verify="exists")


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda x: (x, 8000), "16000 Hz expected, file is 8000 Hz"),
        (lambda x: (x[:-10], SR), "length mismatch"),
        (lambda x: (np.stack([x, x], 1), SR), "expected mono, got 2 channels"),
    ],
)
def test_header_checks(demo, tmp_path, damage, message):
    path = os.path.join(base(demo), "dev", "s1", first_id(demo, "dev") + ".wav")
    data, sr = damage(sf.read(path, dtype="int16")[0])
    sf.write(path, data, sr, subtype="PCM_16")
    expect_error(message, path, prepare_librimix, demo, tmp_path / "s")


def test_corrupt_file_and_metadata_length(demo, tmp_path):
    path = os.path.join(base(demo), "dev", "s2", first_id(demo, "dev") + ".wav")
    with open(path, "wb") as f:
        f.write(b"this is not a wav file")
    expect_error("cannot read audio header", path, prepare_librimix, demo, tmp_path / "s")
    shutil.copy(path.replace("s2", "s1"), path)
    meta = os.path.join(base(demo), "metadata", "mixture_dev_mix_clean.csv")
    text = open(meta).read()
    rows = read_rows(meta)
    open(meta, "w").write(text.replace("," + rows[0]["length"] + "\n", ",123\n", 1))
    expect_error("metadata says 123 samples", "mix_clean", prepare_librimix, demo, tmp_path / "s")


def test_empty_split(demo, tmp_path):
    meta = os.path.join(base(demo), "metadata", "mixture_test_mix_clean.csv")
    with open(meta) as f:
        header = f.readline()
    with open(meta, "w") as f:
        f.write(header)
    expect_error("has no mixtures", meta, prepare_librimix, demo, tmp_path / "s")
    os.remove(meta)
    for sub in ("mix_clean", "s1", "s2"):
        folder = os.path.join(base(demo), "test", sub)
        for name in os.listdir(folder):
            os.remove(os.path.join(folder, name))
    expect_error("has no mixtures", os.path.join(base(demo), "test", "mix_clean"),
                 prepare_librimix, demo, tmp_path / "s")


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda h: h.replace("source_2_path", "source_two"), "missing column(s) source_2_path"),
        (lambda h: h.replace("mixture_ID", "mix_id"), "missing column(s) mixture_ID"),
    ],
)
def test_mismatched_metadata_csv(demo, tmp_path, edit, message):
    meta = os.path.join(base(demo), "metadata", "mixture_train-100_mix_clean.csv")
    lines = open(meta).read().split("\n", 1)
    open(meta, "w").write(edit(lines[0]) + "\n" + lines[1])
    text = expect_error(message, meta, prepare_librimix, demo, tmp_path / "s")
    assert "mismatched CSV" in text


def test_metadata_with_a_third_source_for_two_speakers(demo, tmp_path):
    meta = os.path.join(base(demo), "metadata", "mixture_dev_mix_clean.csv")
    rows = read_rows(meta)
    with open(meta, "w", newline="") as f:
        writer = csv.DictWriter(f, ["mixture_ID", "mixture_path", "source_1_path", "source_2_path",
                                    "source_3_path", "length"])
        writer.writeheader()
        writer.writerows(dict(r, source_3_path=r["source_2_path"]) for r in rows)
    expect_error("has source_3_path but num_spks=2", meta, prepare_librimix, demo, tmp_path / "s")


def test_mixture_id_with_wrong_speaker_count(demo, tmp_path):
    shutil.rmtree(os.path.join(base(demo), "metadata"))
    mix_id = first_id(demo)
    for sub in ("mix_clean", "s1", "s2"):
        folder = os.path.join(base(demo), "test", sub)
        os.rename(os.path.join(folder, mix_id + ".wav"), os.path.join(folder, "19-198-0001.wav"))
    expect_error("does not hold 2 utterance IDs", os.path.join(base(demo), "test", "mix_clean"),
                 prepare_librimix, demo, tmp_path / "s")


# ---------------------------------------------------------------- pipeline


@pytest.fixture
def csvs(demo, tmp_path):
    return prepare_librimix(demo, tmp_path / "save")


def test_random_segments_are_aligned_crops(csvs):
    torch.manual_seed(0)
    data = build_datasets(csvs, SR, 2, segment_seconds=0.25)
    full = build_datasets({"test": csvs["train"]}, SR, 2)["test"]
    seg = 4000
    offsets = set()
    for i in range(len(data["train"])):
        for _ in range(2):
            item = data["train"][i]
            mix, src = item["mix_sig"], item["sources"]
            assert mix.shape == (seg,) and src.shape == (seg, 2)
            assert torch.equal(mix, src.sum(-1))  # the crop of the mixture matches its sources'
            whole = full[i]
            assert whole["id"] == item["id"]
            # locate the crop in the whole mixture; the sources come from the same offset
            starts = [s for s in range(len(whole["mix_sig"]) - seg + 1)
                      if torch.equal(whole["mix_sig"][s:s + seg], mix)]
            assert starts
            assert torch.equal(whole["sources"][starts[0]:starts[0] + seg], src)
            offsets.add(starts[0])
    assert len(offsets) > 3  # offsets are random


def test_fixed_crops_give_each_mixture_one_segment_every_epoch(csvs):
    torch.manual_seed(0)
    fixed = build_datasets(csvs, SR, 2, segment_seconds=0.25, fixed_crops=True)["train"]
    again = build_datasets(csvs, SR, 2, segment_seconds=0.25, fixed_crops=True)["train"]
    full = build_datasets({"test": csvs["train"]}, SR, 2)["test"]
    at_start = 0
    for i in range(len(fixed)):
        first = fixed[i]["mix_sig"]
        assert torch.equal(first, fixed[i]["mix_sig"]) and torch.equal(first, again[i]["mix_sig"])
        at_start += torch.equal(first, full[i]["mix_sig"][: len(first)])
    assert at_start < len(fixed)  # offsets are drawn, not all 0


def test_train_reads_only_the_segment(csvs, soundfile_reads):
    build_datasets({"train": csvs["train"]}, SR, 2, segment_seconds=0.1)["train"][0]
    assert soundfile_reads == [1600] * 3


def test_short_mixtures_pad_or_skip(csvs):
    durations = sorted(float(r["duration"]) for r in read_rows(csvs["train"]))
    longest = durations[-1]
    data = build_datasets(csvs, SR, 2, segment_seconds=longest + 0.5, short_policy="pad")["train"]
    assert len(data) == 6
    seg = round((longest + 0.5) * SR)
    for i in range(len(data)):
        item = data[i]
        assert item["mix_sig"].shape == (seg,) and item["sources"].shape == (seg, 2)
        assert torch.equal(item["mix_sig"], item["sources"].sum(-1))
        assert torch.all(item["mix_sig"][-SR // 2:] == 0)  # the padding is silence
    # skip: keep only the mixtures at least this long (the cut-off mixture itself included)
    middle = durations[3]
    kept = build_datasets(csvs, SR, 2, segment_seconds=middle, short_policy="skip")["train"]
    assert len(kept) == 3
    assert all(kept[i]["mix_sig"].shape == (round(middle * SR),) for i in range(len(kept)))
    expect_error("no mixture lasts", csvs["train"], build_datasets, csvs, SR, 2,
                 segment_seconds=longest + 0.5, short_policy="skip")
    expect_error("short_policy", "short_policy", build_datasets, csvs, SR, 2, short_policy="crop")


def test_valid_and_test_give_whole_or_cropped_utterances(csvs):
    data = build_datasets(csvs, SR, 2, segment_seconds=0.25, valid_segment_seconds=0.3)
    for name, crop in (("valid", int(0.3 * SR)), ("test", None)):
        for row, i in zip(read_rows(csvs[name]), range(2)):
            item = data[name][i]
            whole = sf.read(row["mix_wav"], dtype="float32")[0]
            n = len(whole) if crop is None else crop
            assert item["id"] == row["ID"] and item["mix_sig"].shape == (n,)
            assert np.array_equal(item["mix_sig"].numpy(), whole[:n])
            assert item["spk_ids"] == [row["spk1"], row["spk2"]]


def test_padded_batch_shapes(csvs):
    data = build_datasets(csvs, SR, 2)
    batch = PaddedBatch([data["test"][0], data["test"][1]])
    lengths = [data["test"][i]["mix_sig"].shape[0] for i in range(2)]
    assert batch.mix_sig.data.shape == (2, max(lengths))
    assert batch.sources.data.shape == (2, max(lengths), 2)
    assert torch.allclose(batch.mix_sig.lengths, torch.tensor(lengths) / max(lengths))
    assert len(batch.id) == 2 and len(batch.spk_ids) == 2 and len(batch.spk_ids[0]) == 2
    train = PaddedBatch([data["train"][i] for i in range(3)])
    assert train.sources.data.shape == (3, 3 * SR, 2)  # 0.5-0.65 s mixtures padded to 3 s


def test_pipeline_errors(csvs, demo, tmp_path):
    missing = tmp_path / "none.csv"
    expect_error("CSV not found", missing, build_datasets, {"train": missing}, SR, 2)
    expect_error("missing column(s) s3_wav", csvs["test"], build_datasets, {"test": csvs["test"]}, SR, 3)
    empty = tmp_path / "empty.csv"
    empty.write_text("ID,duration,mix_wav,s1_wav,s2_wav,spk1,spk2\n")
    expect_error("no rows", empty, build_datasets, {"test": empty}, SR, 2)
    # the data changed after preparation: a clear error when the item is read
    data = build_datasets(csvs, SR, 2, segment_seconds=0.25)
    row = read_rows(csvs["test"])[0]
    sf.write(row["s1_wav"], np.zeros(100, np.int16), SR, subtype="PCM_16")
    expect_error("length mismatch", row["s1_wav"], lambda: data["test"][0])
    expect_error("8000 Hz expected", row["mix_wav"], lambda: build_datasets(csvs, 8000, 2)["test"][0])


# ---------------------------------------------------------------- noisy types: mix_both, mix_single


@pytest.fixture(scope="module")
def noisy(tmp_path_factory):
    """The tiny Libri2Mix with LibriMix's noisy types (mix_both, mix_single, noise)."""
    return make_demo_data(tmp_path_factory.mktemp("noisy"), **TINY, noise=True)


def test_noisy_demo_writes_librimix_noisy_types(noisy, demo_master):
    assert not os.path.exists(os.path.join(base(demo_master), "test", "mix_both"))  # default: clean only
    headers = {"mix_both": ["mixture_ID", "mixture_path", "source_1_path", "source_2_path", "noise_path", "length"],
               "mix_single": ["mixture_ID", "mixture_path", "source_1_path", "noise_path", "length"]}
    snrs = []
    for split, count in zip(SPLIT_DIRS, (6, 2, 2)):
        for mix_type, header in headers.items():
            meta = os.path.join(base(noisy), "metadata", f"mixture_{split}_{mix_type}.csv")
            with open(meta, newline="") as f:
                assert next(csv.reader(f)) == header
            assert [r["mixture_ID"] for r in read_rows(meta)] == [
                r["mixture_ID"] for r in read_rows(meta.replace(mix_type, "mix_clean"))]
            assert len(read_rows(meta)) == count
        for name in os.listdir(os.path.join(base(noisy), split, "mix_both")):
            wav = {sub: sf.read(os.path.join(base(noisy), split, sub, name), dtype="int16")[0].astype(int)
                   for sub in ("mix_clean", "mix_both", "mix_single", "s1", "s2", "noise")}
            assert np.array_equal(wav["mix_clean"], wav["s1"] + wav["s2"])  # exact, as read back
            assert np.array_equal(wav["mix_both"], wav["s1"] + wav["s2"] + wav["noise"])
            assert np.array_equal(wav["mix_single"], wav["s1"] + wav["noise"])
            assert max(np.abs(w).max() for w in wav.values()) <= 0.9 * 32768 + 1
            snrs.append(10 * np.log10(np.mean(wav["s1"] ** 2.0) / np.mean(wav["noise"] ** 2.0)))
    # each speaker 5 dB above the noise on average (LibriMix: speech -29, noise -34 LUFS mean)
    assert 2 < np.mean(snrs) < 8 and min(snrs) > -5


@pytest.mark.parametrize("mixture_type, num_spks", [("mix_clean", 2), ("mix_both", 2), ("mix_single", 1)])
def test_prepare_each_mixture_type(noisy, tmp_path, mixture_type, num_spks):
    # the parent folder: mix_single (num_spks=1) finds Libri2Mix too
    paths = prepare_librimix(os.path.dirname(noisy), tmp_path / "a", num_spks=num_spks,
                             mixture_type=mixture_type)
    for name, path in paths.items():
        rows = read_rows(path)
        assert list(rows[0]) == (["ID", "duration", "mix_wav"] + [f"s{i + 1}_wav" for i in range(num_spks)]
                                 + [f"spk{i + 1}" for i in range(num_spks)])
        for row in rows:
            assert os.path.basename(os.path.dirname(row["mix_wav"])) == mixture_type
            for i in range(num_spks):  # the targets: the clean sources
                assert row[f"s{i + 1}_wav"] == row["mix_wav"].replace(mixture_type, f"s{i + 1}")
            speakers = [u.split("-")[0] for u in row["ID"].split("_")]  # the Libri2Mix ID, always
            assert [row[f"spk{i + 1}"] for i in range(num_spks)] == speakers[:num_spks]
    # without metadata (scanning the mixture folder): the same rows
    copy = str(tmp_path / "copy" / "Libri2Mix")
    shutil.copytree(noisy, copy)
    shutil.rmtree(os.path.join(base(copy), "metadata"))
    scanned = prepare_librimix(copy, tmp_path / "b", num_spks=num_spks, mixture_type=mixture_type)
    for name in paths:
        assert sorted((r["ID"], r["mix_wav"].replace(copy, noisy)) for r in read_rows(scanned[name])) == sorted(
            (r["ID"], r["mix_wav"]) for r in read_rows(paths[name]))


def test_prepare_rewrites_csvs_when_the_mixture_type_changes(noisy, tmp_path):
    save = tmp_path / "save"
    for mixture_type in ("mix_clean", "mix_both", "mix_clean"):
        paths = prepare_librimix(noisy, save, verify="exists", mixture_type=mixture_type)
        assert all(f"/{mixture_type}/" in r["mix_wav"] for r in read_rows(paths["train"]))
    single = prepare_librimix(noisy, save, verify="exists", num_spks=1, mixture_type="mix_single")
    assert "s2_wav" not in read_rows(single["test"])[0]


def test_mixture_type_errors(noisy, demo_master, tmp_path):
    save = tmp_path / "save"
    missing = os.path.join(base(demo_master), "train-100", "mix_both")
    text = expect_error("folder not found (mixture_type=mix_both)", missing, prepare_librimix,
                        demo_master, save, mixture_type="mix_both")
    assert "--types" in text
    expect_error("set num_spks=1, got 2", "mixture_type: mix_single", prepare_librimix, noisy, save,
                 mixture_type="mix_single")
    expect_error("1 is for mixture_type=mix_single", "num_spks", prepare_librimix, noisy, save,
                 num_spks=1, mixture_type="mix_both")
    expect_error("must be one of mix_clean, mix_both, mix_single", "mixture_type", prepare_librimix,
                 noisy, save, mixture_type="noisy")
    assert not os.path.exists(save)
    # a noisy metadata CSV without the target column it needs: named
    copy = str(tmp_path / "copy" / "Libri2Mix")
    shutil.copytree(noisy, copy)
    meta = os.path.join(base(copy), "metadata", "mixture_dev_mix_single.csv")
    lines = open(meta).read().split("\n", 1)
    open(meta, "w").write(lines[0].replace("source_1_path", "speech") + "\n" + lines[1])
    expect_error("missing column(s) source_1_path", meta, prepare_librimix, copy, save, num_spks=1,
                 mixture_type="mix_single")
