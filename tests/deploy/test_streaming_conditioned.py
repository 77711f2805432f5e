"""The conditioned model streams: embeddings from audio already seen, output equal to the
offline computation of the same rule, never reading the future."""

import pytest
import torch

from spksep_modules import SpkSepError
from spksep_modules.audio import read_wav, write_wav
from spksep_modules.deploy.separate import _match_mixture_scale, separate_files
from spksep_modules.loading import load_separator
from spksep_modules.models import ConditionedSeparator
from spksep_modules.nnet.filterbank import encode_padded
from spksep_modules.nnet.frozen import Frozen
from spksep_modules.speakers.ge2e import GE2E
from spksep_modules.deploy.streaming_conditioned import (
    StreamingConditionedSeparator,
    offline_reference,
)

from deploy_helpers import RATE, tiny_conditioned, tiny_convtasnet, write_run

torch.set_num_threads(1)

# 0.05 s refreshes (100 frames of 4 samples) from 0.1 s windows: 4 refreshes (at samples
# 400, 800, 1200, 1600) in the 2003-sample signals below. Each costs a GE2E embedding.
SCHEDULE = dict(refresh_seconds=0.05, window_seconds=0.1)
CONFIGS = {
    "residual+cue": dict(residual=True),
    "masks, no cue": dict(residual=False, estimate_cue=False),
    "two passes": dict(residual=True, refine_iterations=2),
}


def causal_conditioned(config):
    return tiny_conditioned(causal=True, **CONFIGS[config])


def mixture(seed=2, length=2003):
    torch.manual_seed(seed)
    return torch.randn(length) * 0.1


@pytest.mark.parametrize("config", sorted(CONFIGS))
@pytest.mark.parametrize("chunk", [37, 80, 333])
def test_streaming_equals_the_offline_reference(config, chunk):
    model, mix = causal_conditioned(config), mixture()
    want = offline_reference(model, mix, RATE, **SCHEDULE)
    stream = StreamingConditionedSeparator(model, RATE, **SCHEDULE)
    got = stream.separate_signal(mix, chunk=chunk)
    assert got.shape == want.shape == (mix.numel(), 2)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    if chunk == 37 and config == "residual+cue":  # ragged chunks; state resets between signals
        sizes, pieces, start = [3, 50, 1, 400, 77], [], 0
        while start < mix.numel():
            size = sizes[len(pieces) % len(sizes)]
            pieces.append(stream.push(mix[start: start + size]))
            start += size
        torch.testing.assert_close(torch.cat(pieces + [stream.flush()]), want, atol=1e-5,
                                   rtol=1e-4)


@pytest.mark.parametrize("config", ["residual+cue", "masks, no cue"])
def test_the_reference_is_the_models_own_pass_from_the_first_refresh_on(config):
    # One refresh (at frame 60 of 109): before it, the intermediate estimates; from it on,
    # the model's own separate_conditioned on the frames from there, with the embedding
    # of the window before it.
    model, mix = causal_conditioned(config), mixture(length=440)
    got = offline_reference(model, mix, RATE, refresh_seconds=0.03, window_seconds=0.02)
    with torch.no_grad():
        inter = model.separate_basic(mix[None])  # [1, T, C]
        first = 60 * model.stride
        emb = model.embed(inter[:, first - 160: first])
        enc = encode_padded(model.encoder, mix[None])[..., 60:]
        tail = model.separate_conditioned(enc, emb, inter[:, first:])[0]
    torch.testing.assert_close(got[:first], inter[0, :first], atol=0, rtol=0)
    torch.testing.assert_close(got[first:], tail, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(got[first:], inter[0, first:], atol=1e-3)  # the stack acts


def test_before_the_first_refresh_the_output_is_the_intermediate_estimates():
    model, mix = causal_conditioned("residual+cue"), mixture(length=1500)
    stream = StreamingConditionedSeparator(model, RATE, refresh_seconds=0.5)  # 4000 samples
    got = stream.separate_signal(mix, chunk=80)
    with torch.no_grad():
        torch.testing.assert_close(got, model.separate_basic(mix[None])[0], atol=1e-5,
                                   rtol=1e-4)


@pytest.mark.parametrize("config", ["residual+cue", "two passes"])
def test_the_output_up_to_a_time_never_changes_with_later_audio(config):
    model, mix = causal_conditioned(config), mixture()
    changed = mix.clone()
    t = 1003  # between two refreshes: the one at 1200 reads the changed audio
    changed[t:] = torch.randn(mix.numel() - t) * 0.1
    stream = StreamingConditionedSeparator(model, RATE, **SCHEDULE)
    lag = stream.latency_samples(1) - 1  # L - 1 plus one hop per pass that reads its cue
    out, other = stream.separate_signal(mix, 80), stream.separate_signal(changed, 80)
    torch.testing.assert_close(out[: t - lag], other[: t - lag], atol=1e-6, rtol=1e-5)
    assert not torch.allclose(out[t:], other[t:], atol=1e-3)
    # the offline reference of the rule is just as causal
    want = offline_reference(model, changed, RATE, **SCHEDULE)
    torch.testing.assert_close(other, want, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_outputs_come_with_the_latency_announced(config):
    model = causal_conditioned(config)
    stream, chunk = StreamingConditionedSeparator(model, RATE, **SCHEDULE), 80
    received = emitted = 0
    for piece in mixture().split(chunk):
        emitted += stream.push(piece).shape[0]
        received += piece.numel()
        # every sample is out at most latency_samples(chunk) after its chunk began
        assert received - emitted <= stream.latency_samples(chunk) - chunk + 1
    lag = model.stride * (2 if config == "two passes" else 0 if config == "masks, no cue" else 1)
    assert stream.latency_samples(chunk) == chunk + model.kernel - 1 + lag


def test_models_that_cannot_stream_are_refused_in_one_line():
    with pytest.raises(SpkSepError, match="conditioned model is not causal"):
        StreamingConditionedSeparator(tiny_conditioned())
    net = Frozen(GE2E(), net_rate=16000, input_rate=RATE)
    on_offline_basic = ConditionedSeparator(tiny_convtasnet(), net, stack_channels=8,
                                            num_layers=2, layers_per_group=2, film_hidden=8,
                                            causal=True)
    with pytest.raises(SpkSepError, match="basic model is not a causal ConvTasNet"):
        StreamingConditionedSeparator(on_offline_basic)
    model = causal_conditioned("residual+cue")
    for bad, key in ((dict(refresh_seconds=0), "refresh_seconds"),
                     (dict(window_seconds=-1), "window_seconds")):
        with pytest.raises(SpkSepError, match=key):
            StreamingConditionedSeparator(model, RATE, **bad)


def conditioned_run(folder):
    model = tiny_conditioned(causal=True, residual=True)
    return write_run(folder, model)


def test_separate_files_and_the_cli_stream_a_conditioned_run(tmp_path, capsys):
    from spksep_modules.cli import main

    run = conditioned_run(tmp_path / "run")
    mix = mixture(length=2400)
    write_wav(tmp_path / "mix.wav", mix, RATE)
    model, _ = load_separator(str(run))
    want = _match_mixture_scale(offline_reference(model, mix, RATE, **SCHEDULE), mix)
    written = separate_files([tmp_path / "mix.wav"], str(run), str(tmp_path / "a"),
                             precision="fp32", stream=True, stream_chunk_ms=4.625,
                             **SCHEDULE)
    for i, path in enumerate(written):
        torch.testing.assert_close(read_wav(path), want[:, i], atol=1e-5, rtol=1e-4)
    assert main(["separate", str(tmp_path / "mix.wav"), "--model", str(run), "--out",
                 str(tmp_path / "b"), "--stream", "--precision", "fp32", "--no_progress",
                 "--stream_chunk_ms", "20", "--refresh_seconds", "0.05",
                 "--window_seconds", "0.1"]) == 0
    for i in range(2):
        torch.testing.assert_close(read_wav(tmp_path / "b" / f"mix_s{i + 1}.wav"),
                                   want[:, i], atol=1e-5, rtol=1e-4)
    capsys.readouterr()
    assert main(["separate", str(tmp_path / "mix.wav"), "--model", str(run), "--out",
                 str(tmp_path / "c"), "--stream", "--refresh_seconds", "0"]) == 2
    assert "error: refresh_seconds: must be positive" in capsys.readouterr().err


def test_stream_chunks_follow_the_models_rate(tmp_path, monkeypatch):
    from spksep_modules.deploy.streaming import StreamingSeparator

    chunks = []
    plain = StreamingSeparator.separate_signal

    def spy(self, mix, chunk=None):
        chunks.append(chunk)
        return plain(self, mix, chunk)

    monkeypatch.setattr(StreamingSeparator, "separate_signal", spy)
    run = write_run(tmp_path / "run", tiny_convtasnet(causal=True), rate=16000)
    write_wav(tmp_path / "mix.wav", torch.randn(1000) * 0.1, 16000)
    separate_files([tmp_path / "mix.wav"], str(run), str(tmp_path / "a"), precision="fp32",
                   stream=True)
    separate_files([tmp_path / "mix.wav"], str(run), str(tmp_path / "b"), precision="fp32",
                   stream=True, stream_chunk_ms=2.5)
    assert chunks == [160, 40]  # 10 ms and 2.5 ms at 16 kHz


def test_a_stack_with_one_prelu_slope_per_channel_streams_too():
    # The streaming mode is the layer's own: whatever PReLU the model has, it streams.
    model, mix = causal_conditioned("residual+cue"), mixture()
    shared = offline_reference(model, mix, RATE, **SCHEDULE)
    for layer in model.stack.layers:
        layer.act = torch.nn.PReLU(model.stack.channels)
        torch.nn.init.uniform_(layer.act.weight, 0.0, 0.5)
    want = offline_reference(model, mix, RATE, **SCHEDULE)
    assert not torch.allclose(want, shared, atol=1e-4)  # the slopes matter
    got = StreamingConditionedSeparator(model, RATE, **SCHEDULE).separate_signal(mix, chunk=80)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
