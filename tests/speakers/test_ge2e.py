"""GE2E encoder: resemblyzer's weights load, our torch path reproduces resemblyzer's numbers,
and the frozen encoder passes gradients to its input."""

import numpy as np
import pytest
import scipy.signal
import torch

from spksep_modules import SpkSepError
from spksep_modules.nnet.frozen import Frozen
from spksep_modules.speakers.ge2e import GE2E, GE2EFrontEnd, load_ge2e, packaged_weights, partial_starts

resemblyzer = pytest.importorskip("resemblyzer")
from resemblyzer import audio as rz_audio  # noqa: E402  (needs the importorskip above)

SR = 16000


def speech_like(seconds: float, f0: float, seed: int) -> np.ndarray:
    """A voiced-speech caricature: a glottal-like harmonic source with gliding pitch, shaped
    by three formant resonators that move over time, with syllable-rate gaps and noise."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SR)
    t = np.arange(n) / SR
    pitch = f0 * (1 + 0.15 * np.sin(2 * np.pi * 0.7 * t + seed))
    phase = 2 * np.pi * np.cumsum(pitch) / SR
    source = sum(np.sin(k * phase) / k for k in range(1, 30))
    out = np.zeros(n)
    block = SR // 10  # formants change every 100 ms
    for start in range(0, n, block):
        seg = source[start:start + block]
        shaped = np.zeros_like(seg)
        for formant, bw in zip(rng.uniform([300, 900, 2200], [800, 2000, 3200]), (80, 120, 200)):
            r = np.exp(-np.pi * bw / SR)
            a = [1, -2 * r * np.cos(2 * np.pi * formant / SR), r * r]
            shaped += scipy.signal.lfilter([1 - r], a, seg)
        out[start:start + block] = shaped
    envelope = np.clip(np.sin(2 * np.pi * 2.5 * t) + 0.3, 0, None)  # ~4 syllables/s with pauses
    out = out * envelope + 0.003 * rng.standard_normal(n)
    return (0.3 * out / np.abs(out).max()).astype(np.float32)


def at_minus_30_dbfs(wav: np.ndarray) -> np.ndarray:
    """The level resemblyzer's ``preprocess_wav`` raises quiet input to (here both ways)."""
    return (wav * np.sqrt(10 ** (-30 / 10) / np.mean(wav.astype(np.float64) ** 2))).astype(np.float32)


@pytest.fixture(scope="module")
def net():
    torch.set_num_threads(1)
    return load_ge2e()


@pytest.fixture(scope="module")
def voice_encoder():
    return resemblyzer.VoiceEncoder(device="cpu", verbose=False)


def test_packaged_weights_load(net):
    assert packaged_weights().name == "pretrained.pt"
    state = torch.load(packaged_weights(), map_location="cpu", weights_only=True)["model_state"]
    assert torch.equal(net.lstm.weight_hh_l2, state["lstm.weight_hh_l2"])
    assert torch.equal(net.linear.bias, state["linear.bias"])
    assert not net.training
    # State-dict keys are resemblyzer's: the fixed front-end buffers are not saved.
    assert set(net.state_dict()) <= set(state)
    assert (net.sample_rate, net.embedding_dim, net.feature_dim) == (16000, 256, 256)


@pytest.mark.parametrize("num_samples", [1000, 16000, 16000 * 2 + 37])
def test_mel_matches_resemblyzer(num_samples):
    wav = speech_like(num_samples / SR, 140.0, seed=num_samples)
    ref = rz_audio.wav_to_mel_spectrogram(wav)
    ours = GE2EFrontEnd()(torch.from_numpy(wav)[None])[0].numpy()
    assert ours.shape == ref.shape == (1 + num_samples // 160, 40)
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-5 * ref.max())


@pytest.mark.parametrize("num_samples", [100, 25599, 25600, 48000, 50000, 60000, 16000 * 7 + 5])
def test_partials_match_resemblyzer(num_samples):
    _, mel_slices = resemblyzer.VoiceEncoder.compute_partial_slices(num_samples, 1.3, 0.75)
    assert partial_starts(num_samples) == [s.start for s in mel_slices]


@pytest.mark.parametrize("seconds, f0", [(3.7, 120.0), (1.0, 210.0)])  # 1 s: under one partial
def test_embedding_matches_resemblyzer(net, voice_encoder, seconds, f0):
    wav = speech_like(seconds, f0, seed=int(f0))
    # embed_utterance at -30 dBFS: resemblyzer's path with preprocess_wav's VAD skipped.
    ref = voice_encoder.embed_utterance(at_minus_30_dbfs(wav))
    with torch.no_grad():
        ours = net.embed(torch.from_numpy(wav)[None])[0].numpy()
    cosine = float(ours @ ref / np.linalg.norm(ours) / np.linalg.norm(ref))
    print(f"cosine(ours, resemblyzer) at {seconds} s: {cosine:.7f}")
    assert cosine > 0.9999
    np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_frames_are_lstm_outputs_on_resemblyzer_mel(net, voice_encoder):
    wav = speech_like(1.2, 150.0, seed=3)
    mel = torch.from_numpy(rz_audio.wav_to_mel_spectrogram(at_minus_30_dbfs(wav)))[None]
    with torch.no_grad():
        ref, _ = voice_encoder.lstm(mel)
        ours = net.frames(torch.from_numpy(wav)[None])
    assert ours.shape == (1, 1 + len(wav) // 160, 256)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-4)


def test_batch_equals_one_by_one(net):
    wavs = torch.from_numpy(np.stack([speech_like(2.0, f0, seed=i)
                                      for i, f0 in enumerate((100.0, 180.0, 260.0))]))
    with torch.no_grad():
        emb = net.embed(wavs)
        frames = net(wavs)
        for i in range(len(wavs)):
            torch.testing.assert_close(emb[i:i + 1], net.embed(wavs[i:i + 1]), atol=1e-6, rtol=1e-5)
            torch.testing.assert_close(frames[i:i + 1], net(wavs[i:i + 1]), atol=1e-6, rtol=1e-5)
    # Different voices give different embeddings, so the check above is not vacuous.
    assert float(emb[0] @ emb[2]) < 0.99
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(3))


def test_gradients_reach_input_not_parameters():
    frozen = Frozen(load_ge2e(), 16000, 16000)
    frozen.train()  # a parent module going to train mode must not unfreeze the encoder
    assert not frozen.net.training
    # On CUDA the LSTM itself stays in training mode (cuDNN's backward needs it; without
    # dropout that computes the same as eval mode); elsewhere it follows the module.
    assert frozen.net.lstm.training == frozen.net.lstm.weight_ih_l0.is_cuda
    assert frozen.net.lstm.dropout == 0
    wav = torch.from_numpy(speech_like(1.0, 130.0, seed=7))[None].repeat(2, 1).requires_grad_()
    loss = frozen(wav).pow(2).mean() + frozen.embed(wav)[:, :10].sum()
    loss.backward()
    assert wav.grad is not None and torch.isfinite(wav.grad).all() and wav.grad.abs().sum() > 0
    assert all(p.grad is None for p in frozen.parameters())


def test_8k_input_is_resampled():
    frozen = Frozen(load_ge2e(), 16000, 8000)
    wav = torch.from_numpy(speech_like(1.5, 170.0, seed=9)[::2].copy())[None].requires_grad_()
    feats = frozen(wav)
    emb = frozen.embed(wav)
    assert feats.shape == (1, 1 + 24000 // 160, 256)
    assert emb.shape == (1, 256)
    (feats.mean() + emb.sum()).backward()
    assert torch.isfinite(wav.grad).all() and wav.grad.abs().sum() > 0


def test_missing_file(tmp_path):
    path = tmp_path / "nope.pt"
    with pytest.raises(SpkSepError, match="nope.pt: GE2E checkpoint not found") as err:
        load_ge2e(path)
    assert "\n" not in str(err.value)


def test_wrong_state_dict(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"model_state": torch.nn.Linear(3, 4).state_dict()}, path)
    with pytest.raises(SpkSepError, match=r"other.pt: not a GE2E checkpoint: missing keys lstm"):
        load_ge2e(path)


def test_wrong_shapes(tmp_path):
    path = tmp_path / "small.pt"
    state = GE2E().state_dict()
    state["linear.weight"] = torch.zeros(128, 256)
    torch.save(state, path)  # a bare state dict is accepted, but this one does not fit
    with pytest.raises(SpkSepError, match=r"small.pt: not a GE2E checkpoint: shape mismatch for linear.weight: "
                       r"checkpoint \(128, 256\), model \(256, 256\)$"):
        load_ge2e(path)


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "notes.pt"
    path.write_text("hello\n")
    with pytest.raises(SpkSepError, match="notes.pt: not a readable torch checkpoint") as err:
        load_ge2e(path)
    assert "\n" not in str(err.value)


def test_features_do_not_depend_on_the_input_level(net):
    """A separator trained on SI-SNR outputs at any level: GE2E must not see it."""
    wav = torch.from_numpy(speech_like(2.0, 130.0, seed=5))[None]
    with torch.no_grad():
        for gain in (1e-3, 75.0):  # 75: where a real-speech Conv-TasNet's estimates came out
            torch.testing.assert_close(net.frames(gain * wav), net.frames(wav), atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(net.embed(gain * wav), net.embed(wav), atol=1e-5, rtol=1e-4)
        assert torch.isfinite(net.frames(torch.zeros(1, 3200))).all()  # silence stays silent


def test_raw_level_on_request(net):
    """``level_dbfs=None``: the raw waveform, as resemblyzer's network sees it unscaled."""
    raw = GE2E(level_dbfs=None)
    raw.load_state_dict(net.state_dict())
    raw.eval()
    wav = speech_like(1.2, 150.0, seed=3)
    mel = torch.from_numpy(rz_audio.wav_to_mel_spectrogram(wav))[None]
    with torch.no_grad():
        ref, _ = raw.lstm(mel)
        ours = raw.frames(torch.from_numpy(wav)[None])
        torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-4)
        louder = raw.frames(75.0 * torch.from_numpy(wav)[None])
    assert float((louder - ours).abs().max()) > 0.1  # the level shows without the scaling
