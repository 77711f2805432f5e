"""spksep_modules.audio: reading dataset files and user recordings, writing estimates."""

import numpy as np
import pytest
import soundfile as sf
import torch

from spksep_modules import SpkSepError
from spksep_modules.audio import read_any, read_wav, write_wav

SR = 16000


@pytest.fixture
def tone(tmp_path):
    """A 0.1 s mono float WAV of a ramp, so segments are easy to check."""
    x = np.linspace(-0.5, 0.5, 1600, dtype=np.float32)
    path = tmp_path / "tone.wav"
    sf.write(path, x, SR, subtype="FLOAT")
    return path, x


def test_read_wav_whole_and_segment(tone):
    path, x = tone
    whole = read_wav(path, SR)
    assert whole.dtype == torch.float32 and whole.shape == (1600,)
    assert torch.equal(whole, torch.from_numpy(x))
    seg = read_wav(path, SR, start=100, stop=350)
    assert torch.equal(seg, torch.from_numpy(x[100:350]))
    assert torch.equal(read_wav(str(path), None, start=1500), torch.from_numpy(x[1500:]))


def test_read_wav_reads_only_the_segment(tone, soundfile_reads):
    path, _ = tone
    read_wav(path, SR, start=1000, stop=1200)
    assert soundfile_reads == [200]


def _write(path, data, sr=SR, subtype="PCM_16"):
    sf.write(path, data, sr, subtype=subtype)
    return path


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p, "file not found"),
        (lambda p: (p.write_bytes(b"RIFF0000WAVEjunk" * 8), p)[1], "cannot read audio"),
        (lambda p: (p.write_text("not audio"), p)[1], "cannot read audio"),
        (lambda p: _write(p, np.zeros(0, np.float32)), "empty"),
        (lambda p: _write(p, np.zeros((100, 2), np.float32)), "expected mono, got 2 channels"),
        (lambda p: _write(p, np.zeros(100, np.float32), sr=8000), "16000 Hz expected, file is 8000 Hz"),
        (lambda p: _write(p, np.array([0.0, np.nan, 0.1], np.float32), subtype="FLOAT"), "NaN or Inf"),
        (lambda p: _write(p, np.array([0.0, np.inf, 0.1], np.float32), subtype="FLOAT"), "NaN or Inf"),
    ],
)
def test_read_wav_errors_name_the_file(tmp_path, make, message):
    path = make(tmp_path / "bad.wav")
    with pytest.raises(SpkSepError) as err:
        read_wav(path, SR)
    text = str(err.value)
    assert str(path) in text and message in text and "\n" not in text


def test_read_wav_rejects_folder_and_segment_past_end(tmp_path, tone):
    with pytest.raises(SpkSepError, match="is a folder"):
        read_wav(tmp_path, SR)
    path, _ = tone
    with pytest.raises(SpkSepError, match="outside the file"):
        read_wav(path, SR, start=1500, stop=1700)
    with pytest.raises(SpkSepError, match="outside the file"):
        read_wav(path, SR, start=1600)


def test_read_any_keeps_rate_and_channels(tmp_path):
    stereo = np.stack([np.linspace(0, 0.5, 441), -np.linspace(0, 0.5, 441)], axis=1).astype(np.float32)
    path = _write(tmp_path / "s.wav", stereo, sr=44100, subtype="FLOAT")
    wav, sr = read_any(path)
    assert sr == 44100 and wav.shape == (441, 2)
    assert torch.allclose(wav, torch.from_numpy(stereo))
    flac = tmp_path / "m.flac"
    sf.write(flac, stereo[:, 0], 22050)
    wav, sr = read_any(flac)
    assert sr == 22050 and wav.shape == (441, 1)


@pytest.mark.parametrize(
    "data, subtype, message",
    [(None, None, "file not found"), (np.zeros(0), "PCM_16", "empty"), (np.array([np.nan, 0.0]), "FLOAT", "NaN")],
)
def test_read_any_errors(tmp_path, data, subtype, message):
    path = tmp_path / "x.wav"
    if data is not None:
        sf.write(path, data.astype(np.float32), 8000, subtype=subtype)
    with pytest.raises(SpkSepError) as err:
        read_any(path)
    assert str(path) in str(err.value) and message in str(err.value)


def test_write_wav_float_keeps_peaks_and_creates_folders(tmp_path):
    x = torch.tensor([0.0, 1.7, -2.5, 0.25])
    path = tmp_path / "a" / "b" / "est.wav"
    write_wav(path, x, SR)
    back, sr = sf.read(path, dtype="float32")
    assert sr == SR and sf.info(path).subtype == "FLOAT"
    assert np.array_equal(back, x.numpy())  # no clipping, no rounding


def test_write_wav_pcm16_and_errors(tmp_path):
    x = np.array([0.0, 0.5, -0.5], np.float32)
    path = tmp_path / "p.wav"
    write_wav(path, x, 8000, subtype="PCM_16")
    assert sf.info(path).subtype == "PCM_16"
    assert np.allclose(sf.read(path)[0], x, atol=1e-4)
    with pytest.raises(SpkSepError, match="expected a mono signal"):
        write_wav(tmp_path / "q.wav", np.zeros((3, 2)), SR)
    with pytest.raises(SpkSepError, match="NaN"):
        write_wav(tmp_path / "r.wav", torch.tensor([0.0, float("nan")]), SR)
