"""The speaker networks trace and export as they are: GE2E's partials and RawNet2's windows
are counted from the traced length, GE2E's front end is a DFT convolution while traced,
ECAPA's wrapper passes no lengths. Each is checked against a plain Python-loop reference
of the rule it implements, in eager mode and through a trace made at another length."""

import ast
import copy
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from spksep_modules import SpkSepError
from spksep_modules.nnet.forms import as_form
from spksep_modules.nnet.frozen import Frozen
from spksep_modules.speakers import ge2e as ge2e_module
from spksep_modules.speakers.ge2e import GE2E, GE2EFrontEnd, load_ge2e, partial_starts
from spksep_modules.speakers.rawnet2 import RawNet2, window_starts

torch.set_num_threads(1)


class Embed(torch.nn.Module):
    """``net.embed`` as ``forward``: what a trace records."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, wav):
        return self.net.embed(wav)


def trace(module, example):
    with torch.no_grad():
        return torch.jit.trace(module, (example,), check_trace=False)


def modulated_noise(batch, length, seed=0):
    """Noise whose level and colour change over time, so that windows and partials differ."""
    gen = torch.Generator().manual_seed(seed)
    t = torch.arange(length) / 16000
    noise = torch.randn(batch, length, generator=gen)
    coloured = noise + 0.9 * F.pad(noise, (1, 0))[:, :-1] * torch.sin(2 * math.pi * 0.3 * t)
    return 0.1 * coloured * (1.2 + torch.sin(2 * math.pi * 0.7 * t + torch.arange(batch)[:, None]))


# --- GE2E ---------------------------------------------------------------------------

def resemblyzer_starts(n_samples, rate=1.3, min_coverage=0.75):
    """resemblyzer's ``VoiceEncoder.compute_partial_slices`` (mel starts), as it writes it."""
    samples_per_frame = 160
    n_frames = int(np.ceil((n_samples + 1) / samples_per_frame))
    frame_step = int(np.round((16000 / rate) / samples_per_frame))
    starts = []
    for i in range(0, max(1, n_frames - 160 + frame_step + 1), frame_step):
        starts.append(i)
    coverage = (n_samples - starts[-1] * samples_per_frame) / (160 * samples_per_frame)
    if coverage < min_coverage and len(starts) > 1:
        starts = starts[:-1]
    return starts


def reference_ge2e_embed(net, wav, starts):
    """``embed_utterance``'s steps, one partial at a time: pad to the last partial's end,
    embed each partial, average, normalise (the waveform first at GE2E's input level)."""
    wav = net.at_level(wav)
    end = (starts[-1] + 160) * 160
    if end > wav.shape[-1]:
        wav = F.pad(wav, (0, end - wav.shape[-1]))
    mel = net.mel(wav)
    partials = [net._embed_partials(mel[:, s:s + 160]) for s in starts]
    return F.normalize(torch.stack(partials).mean(0), dim=-1)


# 0.006 s; 1 s; a second start appears but covers 51% (dropped); exactly 1.6 s; one sample
# under and at 75% coverage of the second partial; 4 steps exactly; 5 s + 7 samples.
GE2E_LENGTHS = (100, 16000, 25440, 25600, 31519, 31520, 49280, 80007)


@pytest.fixture(scope="module")
def ge2e():
    try:
        return load_ge2e()  # the real weights: a random GE2E embeds every partial alike
    except SpkSepError as err:
        pytest.skip(str(err))


@pytest.fixture(scope="module")
def traced_ge2e(ge2e):
    return trace(Embed(ge2e), modulated_noise(1, 8000))  # 0.5 s: one partial


def test_partial_count_is_resemblyzers_rule_at_every_length():
    lengths = torch.arange(0, 70000)
    for rate, min_coverage in [(1.3, 0.75), (1.3, 1.0), (2.0, 0.5), (0.625, 0.1), (5.0, 0.9),
                               (100.0, 0.75)]:
        step = int(round(16000 / rate / 160))
        got = ge2e_module._partial_count(lengths, step, min_coverage).tolist()
        for n in range(0, 70000, 1 if (rate, min_coverage) == (1.3, 0.75) else 7):
            assert got[n] == len(resemblyzer_starts(n, rate, min_coverage)), (n, rate)
    for n in (0, 1, 25439, 25440, 31519, 31520, 16000 * 60 + 3):
        assert partial_starts(n) == resemblyzer_starts(n)
        assert partial_starts(n, 2.0, 0.5) == resemblyzer_starts(n, 2.0, 0.5)


def test_bad_partial_settings_fail_when_built():
    with pytest.raises(ValueError, match="min_coverage must be in"):
        GE2E(min_coverage=0)
    with pytest.raises(ValueError, match="partial step of 200 frames"):
        GE2E(rate=0.5)


@pytest.mark.parametrize("length", GE2E_LENGTHS)
def test_ge2e_embed_equals_the_partial_loop_eager_and_traced(ge2e, traced_ge2e, length):
    wav = modulated_noise(2, length, seed=length)
    starts = resemblyzer_starts(length)
    with torch.no_grad():
        want = reference_ge2e_embed(ge2e, wav, starts)
        got = ge2e.embed(wav)
        traced = traced_ge2e(wav)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    torch.testing.assert_close(traced, want, atol=2e-6, rtol=0)
    # The tolerances are far below what one partial more or fewer changes.
    other = starts[:-1] if len(starts) > 1 else starts + [starts[-1] + 77]
    with torch.no_grad():
        assert (reference_ge2e_embed(ge2e, wav, other) - want).abs().max() > 1e-4


def test_ge2e_onnx_export_counts_partials_in_the_graph(ge2e, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    net = copy.deepcopy(ge2e)
    modes = []
    hook = net.lstm.register_forward_pre_hook(lambda module, args: modes.append(module.training))
    path = str(tmp_path / "ge2e.onnx")
    with torch.no_grad():
        torch.onnx.export(Embed(net).eval(), (modulated_noise(1, 8000),), path,
                          input_names=["wav"], dynamic_axes={"wav": {0: "batch", 1: "time"}},
                          opset_version=17, dynamo=False)
    hook.remove()
    assert modes == [False]  # exported in eval mode, the LSTM included
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    for length in (100, 31519, 31520, 49280):
        wav = modulated_noise(2, length, seed=length)
        with torch.no_grad():
            want = reference_ge2e_embed(ge2e, wav, resemblyzer_starts(length))
        got = torch.from_numpy(session.run(None, {"wav": wav.numpy()})[0])
        torch.testing.assert_close(got, want, atol=2e-6, rtol=0)


def test_front_end_is_a_convolution_only_while_traced():
    mel = GE2EFrontEnd()
    traced = trace(mel, torch.randn(1, 4000))
    graph = str(traced.graph)
    assert "aten::stft" not in graph and "aten::_convolution" in graph
    assert list(mel.state_dict()) == []  # the DFT kernels are not saved
    for length in (1234, 16037):
        wav = modulated_noise(2, length)
        with torch.no_grad():
            eager = mel(wav)
            spec = torch.stft(wav, 400, 160, window=mel.window, center=True,
                              pad_mode="constant", return_complex=True)
            by_fft = torch.matmul((spec.real.pow(2) + spec.imag.pow(2)).transpose(1, 2),
                                  mel.fbank)
            assert torch.equal(eager, by_fft)  # eager mode: the FFT
            got = traced(wav)
        assert got.shape == eager.shape
        assert (got - eager).abs().max() < 1e-5 * eager.abs().max()


def test_lstm_follows_the_module_off_cuda():
    net = GE2E()
    assert net.lstm.training
    assert not net.eval().lstm.training  # an export sees eval mode
    assert net.train().lstm.training
    frozen = Frozen(net, 16000, 16000).train()
    assert not frozen.net.training and not frozen.net.lstm.training
    frozen.cpu()  # moving the parameters decides again, on the same rule
    assert not frozen.net.lstm.training
    wav = modulated_noise(1, 8000).requires_grad_()
    frozen.embed(wav).sum().backward()  # the CPU backward takes eval mode
    assert wav.grad.abs().sum() > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (cuDNN's LSTM)")
def test_lstm_stays_in_training_mode_on_cuda_for_the_backward():
    frozen = Frozen(GE2E(), 16000, 16000).cuda()  # eval mode before the move
    assert not frozen.net.training and frozen.net.lstm.training
    frozen.train()
    assert frozen.net.lstm.training
    wav = modulated_noise(2, 20000).cuda().requires_grad_()
    (frozen(wav).pow(2).mean() + frozen.embed(wav).sum()).backward()
    assert torch.isfinite(wav.grad).all() and wav.grad.abs().sum() > 0
    assert not frozen.cpu().net.lstm.training


# --- RawNet2 -------------------------------------------------------------------------

RAWNET2 = dict(window=2187, hop=1000, sinc_filters=4, sinc_length=11, block_channels=(4, 8),
               gru_units=8, embedding_dim=6, num_classes=0)


def reference_window_starts(length, window, hop):
    if length <= window:
        return [0]
    starts = list(range(0, length - window, hop))
    return starts + [length - window]


def reference_rawnet2_embed(net, wav):
    """The authors' evaluation, one window at a time: tile a short signal, window a long one."""
    length = wav.shape[-1]
    if length < net.window:
        wav = torch.cat([wav] * (net.window // length + 1), dim=-1)[:, :net.window]
    starts = reference_window_starts(wav.shape[-1], net.window, net.hop)
    return torch.stack([net(wav[:, s:s + net.window]) for s in starts]).mean(0)


@pytest.fixture(scope="module")
def rawnet2():
    torch.manual_seed(0)
    return RawNet2(**RAWNET2).eval()


def test_window_starts_are_the_loops():
    for window, hop in [(100, 30), (100, 100), (2187, 1000), (7, 3)]:
        for length in range(1, 4 * window + 3):
            assert window_starts(length, window, hop) == \
                reference_window_starts(length, window, hop), (length, window, hop)


# Tiled: 1 sample, 900 (not a divisor of the window), half the window; one window
# exactly; one sample over; windows ending exactly on a hop; a last window clamped.
RAWNET2_LENGTHS = (1, 900, 1093, 2187, 2188, 5187, 7777)


def test_rawnet2_embed_equals_the_window_loop_eager_and_traced(rawnet2):
    traced = trace(Embed(rawnet2), modulated_noise(1, 5000))  # 4 windows when traced
    for length in RAWNET2_LENGTHS:
        wav = modulated_noise(3, length, seed=length)
        with torch.no_grad():
            want = reference_rawnet2_embed(rawnet2, wav)
            torch.testing.assert_close(rawnet2.embed(wav), want, atol=1e-6, rtol=1e-5)
            torch.testing.assert_close(traced(wav), want, atol=1e-6, rtol=1e-5)
    # The tolerance is far below what a wrong tiling or window changes.
    wav = modulated_noise(3, 7777)
    with torch.no_grad():
        assert (rawnet2(wav[:, -2187:]) - reference_rawnet2_embed(rawnet2, wav)).abs().max() > 1e-3
        short = wav[:, :900]
        zero_padded = F.pad(short, (0, 2187 - 900))
        assert (rawnet2(zero_padded) - reference_rawnet2_embed(rawnet2, short)).abs().max() > 1e-3


def test_rawnet2_embed_passes_gradients_after_tiling(rawnet2):
    wav = modulated_noise(2, 900).requires_grad_()
    rawnet2.embed(wav).pow(2).sum().backward()
    assert torch.isfinite(wav.grad).all() and (wav.grad.abs().sum(-1) > 0).all()


# --- ECAPA ---------------------------------------------------------------------------

def test_ecapa_traces_at_one_batch_and_length_and_runs_at_others():
    from speechbrain.lobes.features import Fbank
    from speechbrain.lobes.models.ECAPA_TDNN import ECAPA_TDNN
    from speechbrain.processing.features import InputNormalization

    from spksep_modules.speakers.ecapa import EcapaSpeakerNet

    torch.manual_seed(0)
    ecapa = ECAPA_TDNN(24, channels=[16, 16, 16, 16, 48], attention_channels=8, lin_neurons=12)
    net = EcapaSpeakerNet(Fbank(n_mels=24), InputNormalization(norm_type="sentence"), ecapa)
    traced = trace(Embed(as_form(copy.deepcopy(net), "export").eval()), modulated_noise(1, 8000))
    for batch, length in [(1, 8000), (2, 12000), (3, 5000)]:
        wav = modulated_noise(batch, length)
        with torch.no_grad():
            want = net.embed(wav)
            torch.testing.assert_close(traced(wav), want, atol=1e-4, rtol=1e-4)


def test_nnet_exportable_imports_no_speaker_network():
    import spksep_modules.nnet.exportable as exportable

    tree = ast.parse(Path(exportable.__file__).read_text())
    imported = [node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
    imported += [a.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                 for a in node.names]
    assert not [m for m in imported if "speakers" in m or "models" in m.split(".")[1:2]]
