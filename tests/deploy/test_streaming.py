"""Causal Conv-TasNet, its fast-path fallbacks, and streaming equal to the offline model."""

import pytest
import torch

from spksep_modules import SpkSepError
from spksep_modules.audio import read_wav, write_wav
from spksep_modules.deploy.separate import separate_files
from spksep_modules.models import ConvTasNet, fuse_for_inference
from spksep_modules.nnet.forms import as_form
from spksep_modules.deploy.streaming import StreamingSeparator
from spksep_modules.nnet.layers import FrameHistory

from deploy_helpers import RATE, tiny_conditioned, tiny_convtasnet, write_run

torch.set_num_threads(1)


def test_causal_model_never_reads_the_future():
    model = tiny_convtasnet(causal=True)
    mix = torch.randn(1, 3000)
    with torch.no_grad():
        whole = model(mix)[0]
        changed = mix.clone()
        changed[:, 2000:] = torch.randn(1, 1000)  # a different future
        other = model(changed)[0]
    # samples before 2000 - L + 1 depend only on samples < 2000
    torch.testing.assert_close(whole[: 2000 - model.L + 1], other[: 2000 - model.L + 1])
    assert not torch.allclose(whole[2000:], other[2000:])


def test_causal_model_keeps_state_dict_keys_and_refuses_a_non_causal_checkpoint():
    causal, plain = tiny_convtasnet(causal=True), tiny_convtasnet()
    assert sorted(causal.state_dict()) == sorted(plain.state_dict())
    with pytest.raises(SpkSepError, match="causal=False"):
        causal.load_state_dict(plain.state_dict())


def test_fast_paths_fall_back_to_the_plain_layers_for_a_causal_model():
    model = tiny_convtasnet(causal=True)
    as_form(model, "cpu_kernels")  # gLN kernels must not replace the per-frame norms
    names = {type(m).__name__ for m in model.modules()}
    assert "FastPReLUGLN" not in names and "FastDepthwiseConv1d" not in names
    mix = torch.randn(2, 2001)
    with torch.no_grad():
        torch.testing.assert_close(fuse_for_inference(model)(mix), model(mix))


@pytest.mark.parametrize("chunk", [1, 7, 80, 160, 333, 5000])
@pytest.mark.parametrize("L", [8, 12])
def test_streaming_equals_the_offline_causal_model(chunk, L):
    model = tiny_convtasnet(causal=True, L=L)
    torch.manual_seed(2)
    mix = torch.randn(2003)
    with torch.no_grad():
        want = model(mix)[0]
    stream = StreamingSeparator(model)
    got = stream.separate_signal(mix, chunk=chunk)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    # ragged chunks, and the state resets between signals
    sizes, pieces, start = [3, 50, 1, 400, 77], [], 0
    while start < mix.numel():
        size = sizes[len(pieces) % len(sizes)]
        pieces.append(stream.push(mix[start: start + size]))
        start += size
    torch.testing.assert_close(torch.cat(pieces + [stream.flush()]), want, atol=1e-5,
                               rtol=1e-4)


@pytest.mark.parametrize("context", [1, 6, 256])
def test_frame_history_equals_concatenating_the_whole_past(context):
    # ragged appends, small and larger than the room, so the buffer wraps (its context
    # overlapping the front or not) and grows
    history, past = FrameHistory(context), torch.zeros(context, 3)
    generator = torch.Generator().manual_seed(context)
    for size in [10] * 40 + [1, 3, 700, 2, 10, 1000] + [10] * 60:
        frames = torch.randn(size, 3, generator=generator)
        past = torch.cat([past, frames])
        assert torch.equal(history.append(frames), past[-(context + size):])


def test_streaming_outputs_come_with_bounded_latency():
    model = tiny_convtasnet(causal=True)
    stream, chunk = StreamingSeparator(model), 80
    received = emitted = 0
    for piece in torch.randn(2000).split(chunk):
        emitted += stream.push(piece).shape[0]
        received += piece.numel()
        assert received - emitted <= stream.latency_samples(chunk) - chunk + 1


def test_non_causal_and_conditioned_models_are_refused_with_a_pointer():
    with pytest.raises(SpkSepError, match="not causal"):
        StreamingSeparator(tiny_convtasnet())
    with pytest.raises(SpkSepError, match="streams with streaming_conditioned"):
        StreamingSeparator(tiny_conditioned(causal=True))


def test_separate_files_stream_equals_the_offline_run(tmp_path):
    model = tiny_convtasnet(causal=True)
    run = write_run(tmp_path / "run", model)
    write_wav(tmp_path / "mix.wav", torch.randn(3001) * 0.1, RATE)
    offline = separate_files([tmp_path / "mix.wav"], str(run), str(tmp_path / "a"),
                             precision="fp32")
    streamed = separate_files([tmp_path / "mix.wav"], str(run), str(tmp_path / "b"),
                              precision="fp32", stream=True)
    for x, y in zip(offline, streamed):
        torch.testing.assert_close(read_wav(y), read_wav(x), atol=1e-5, rtol=1e-4)
