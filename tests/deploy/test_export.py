"""ONNX (run with onnxruntime) and TorchScript exports agree with PyTorch at 1e-4 relative."""

import math

import pytest
import torch

from spksep_modules import SpkSepError
from spksep_modules.deploy.export import export_run, export_separator
from spksep_modules.models import SepFormer

from deploy_helpers import RATE, tiny_convtasnet, write_run

torch.set_num_threads(1)
LENGTHS = (4000, 1234, 9001)  # the traced length, and two others (not multiples of the stride)


def tiny_sepformer():
    torch.manual_seed(0)
    return SepFormer(N=16, num_layers=1, K=20, intra_layers=1, inter_layers=1, nhead=2,
                     d_ffn=32).eval()


def load_exported(path, fmt):
    """``mix -> estimates`` by onnxruntime or the TorchScript interpreter."""
    if fmt == "onnx":
        ort = pytest.importorskip("onnxruntime")
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return lambda mix: torch.from_numpy(session.run(None, {"mix": mix.numpy()})[0])
    return torch.jit.load(str(path))


def run_exported(path, fmt, mix):
    return load_exported(path, fmt)(mix)


def relative_error(got, want):
    assert got.shape == want.shape
    return float((got - want).abs().max() / want.abs().max())


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
@pytest.mark.parametrize("family", ["convtasnet", "sepformer", "causal_convtasnet"])
def test_export_matches_pytorch_at_any_length(tmp_path, fmt, family):
    if fmt == "onnx":
        pytest.importorskip("onnx")
    model = {"convtasnet": tiny_convtasnet, "sepformer": tiny_sepformer,
             "causal_convtasnet": lambda: tiny_convtasnet(causal=True)}[family]()
    path = export_separator(model, fmt, tmp_path / f"model.{fmt}", RATE, example_seconds=0.5)
    exported = load_exported(path, fmt)
    torch.manual_seed(1)
    for length in LENGTHS:
        mix = torch.randn(2, length) * 0.1
        with torch.no_grad():
            want = model(mix).as_subclass(torch.Tensor)
            got = exported(mix)
        assert relative_error(got, want) < 1e-4


# At 8 kHz; the speaker network sees them at 16 kHz. GE2E cuts 1.6 s partials every 77
# frames and drops the last one when under 75% of it is audio; RawNet2 (toy window 0.41 s)
# tiles a shorter input and windows a longer one. The traced 0.5 s gives one partial and
# two windows: a trace that froze either count would fail at some of these.
COND_LENGTHS = (2399, 14401, 18403, 24805)  # 0.3 s, 1.8 s, 2.3 s, 3.1 s
GE2E_PARTIALS = (1, 1, 2, 3)  # 0.3 s zero-padded to one; 1.8 s: the second one dropped
SPEAKER_NETS = ("ge2e", "rawnet2", "ecapa")


def tiny_speaker_net(name):
    torch.manual_seed(2)
    if name == "ge2e":
        # The real weights: a random GE2E gives nearly the same embedding to every partial
        # (1e-3 apart), too little for a wrong partial count to show at the outputs.
        from spksep_modules.speakers.ge2e import load_ge2e

        return load_ge2e()
    if name == "rawnet2":
        from spksep_modules.speakers.rawnet2 import RawNet2

        return RawNet2(window=6561, hop=4000, sinc_filters=4, sinc_length=11,
                       block_channels=(4, 8), gru_units=8, embedding_dim=6, num_classes=0)
    from speechbrain.lobes.features import Fbank
    from speechbrain.lobes.models.ECAPA_TDNN import ECAPA_TDNN
    from speechbrain.processing.features import InputNormalization

    from spksep_modules.speakers.ecapa import EcapaSpeakerNet

    ecapa = ECAPA_TDNN(24, channels=[16, 16, 16, 16, 48], attention_channels=8, lin_neurons=12)
    return EcapaSpeakerNet(Fbank(n_mels=24), InputNormalization(norm_type="sentence"), ecapa)


def conditioned(speaker):
    """A toy conditioned model whose outputs depend on its embeddings: the FiLM generator's
    and the stack's last layers start at zero, so they are made random here."""
    from spksep_modules.models import ConditionedSeparator
    from spksep_modules.nnet.frozen import Frozen

    net = Frozen(tiny_speaker_net(speaker), net_rate=16000, input_rate=RATE)
    model = ConditionedSeparator(tiny_convtasnet(), net, stack_channels=8, num_layers=4,
                                 layers_per_group=2, film_hidden=8)
    with torch.no_grad():
        for p in [*model.stack.out.parameters(), *model.film_generator.out.parameters()]:
            p.normal_(0, 0.1)
    return model.eval()


def modulated_noise(batch, length):
    """Noise whose level swings over 2.5 s, so that the partials and windows differ."""
    t = torch.arange(length) / RATE
    return torch.randn(batch, length) * 0.1 * (1 + torch.sin(2 * math.pi * 0.4 * t))


def test_the_lengths_cover_several_partial_and_window_counts():
    from spksep_modules.speakers.ge2e import partial_starts
    from spksep_modules.speakers.rawnet2 import window_starts

    assert tuple(len(partial_starts(2 * n)) for n in COND_LENGTHS) == GE2E_PARTIALS
    assert len(partial_starts(2 * 4000)) == 1  # the traced example
    assert [len(window_starts(2 * n, 6561, 4000)) for n in (4000,) + COND_LENGTHS] == \
        [2, 1, 7, 9, 12]  # 0.3 s: tiled up to one window


@pytest.mark.parametrize("speaker", SPEAKER_NETS)
def test_toy_conditioned_outputs_depend_on_the_embeddings(speaker):
    # Else the parity test below would pass with any embedding, e.g. a wrong partial count.
    model = conditioned(speaker)
    mix = torch.randn(2, 4000) * 0.1
    with torch.no_grad():
        inter, emb = model.basic_pass(mix)
        enc = model.encode(mix)
        out = model.separate_conditioned(enc, emb, inter)
        other = model.separate_conditioned(enc, emb.roll(1, dims=-1), inter)
    assert relative_error(other, out) > 1e-2


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
@pytest.mark.parametrize("speaker", SPEAKER_NETS)
def test_conditioned_export_matches_pytorch_at_any_length(tmp_path, fmt, speaker):
    if fmt == "onnx":
        pytest.importorskip("onnx")
    model = conditioned(speaker)
    path = export_separator(model, fmt, tmp_path / f"cond.{fmt}", RATE, example_seconds=0.5)
    exported = load_exported(path, fmt)
    torch.manual_seed(1)
    for batch, length in [(1, 4000)] + [(2, n) for n in COND_LENGTHS]:
        mix = modulated_noise(batch, length)
        with torch.no_grad():
            want = model(mix).as_subclass(torch.Tensor)
            got = exported(mix)
        assert relative_error(got, want) < 1e-4, (batch, length)


@pytest.mark.parametrize("speaker", SPEAKER_NETS)
def test_the_exported_copy_keeps_the_state_dict_keys(speaker):
    from spksep_modules.deploy.export import exportable

    model = conditioned(speaker)
    copy = exportable(model)
    net = copy.separator.speaker_net.net
    assert type(net) is type(model.speaker_net.net) and not net.training  # exports as it is
    # only SpeechBrain's own modules (ECAPA's STFT and pooling) get export adapters
    assert any(type(m).__name__.startswith("Exportable") for m in copy.modules()) == (speaker == "ecapa")
    tensors = [k for k in model.state_dict() if not k.endswith("_extra_state")]
    assert list(copy.separator.state_dict()) == tensors  # the descriptions are left out


def test_onnx_global_layer_norm_stays_accurate_over_long_inputs(tmp_path):
    # 10 s at the paper's sizes: 512 channels x 20,000 frames. onnxruntime's own reduction
    # over both axes at once (what group_norm exports to) was 3.5e-4 off.
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from spksep_modules.nnet.forms import as_form
    from spksep_modules.nnet.norms import GlobalLayerNorm

    norm = as_form(GlobalLayerNorm(512), "export").eval()
    path = str(tmp_path / "gln.onnx")
    torch.onnx.export(norm, (torch.randn(1, 512, 100),), path, input_names=["x"],
                      dynamic_axes={"x": {0: "batch", 2: "frames"}}, opset_version=17,
                      dynamo=False)
    x = torch.randn(1, 512, 20000) * 0.3 + 0.5
    got = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(
        None, {"x": x.numpy()})[0]
    want = torch.nn.functional.group_norm(x.double(), 1, eps=1e-8)
    assert relative_error(torch.from_numpy(got).double(), want) < 1e-5


def test_export_of_a_conditioned_run_folder(tmp_path):
    pytest.importorskip("onnx")
    model = conditioned("ge2e")
    run = write_run(tmp_path / "run", model)
    path = export_run(run, "onnx", tmp_path / "cond.onnx", example_seconds=0.25)
    mix = modulated_noise(1, 18403)  # two GE2E partials, against one when traced
    with torch.no_grad():
        want = model(mix).as_subclass(torch.Tensor)
    assert relative_error(run_exported(path, "onnx", mix), want) < 1e-4


def test_export_of_a_run_folder_and_bad_format(tmp_path):
    run = write_run(tmp_path / "run", tiny_convtasnet())
    path = export_run(run, "torchscript", tmp_path / "out" / "m.pt", example_seconds=0.25)
    assert torch.jit.load(path)(torch.randn(1, 1000)).shape == (1, 1000, 2)
    with pytest.raises(SpkSepError, match="format: expected one of onnx, torchscript"):
        export_run(run, "tflite", tmp_path / "m.tflite")


def test_a_model_trained_with_bf16_products_exports_its_plain_fp32_layers(tmp_path):
    from spksep_modules.deploy.export import exportable
    from spksep_modules.models import ConvTasNet

    torch.manual_seed(0)
    model = ConvTasNet(N=16, L=8, B=8, H=16, P=3, X=2, R=1, bf16_products=True)
    copy = exportable(model)
    kinds = {type(m).__name__ for m in copy.modules()}
    assert "BF16PointwiseConv1d" not in kinds and "Conv1d" in kinds
    assert any(type(m).__name__ == "BF16PointwiseConv1d" for m in model.modules())  # untouched
    path = export_separator(model, "torchscript", str(tmp_path / "model.pt"), 8000)
    mix = torch.randn(1, 1200)
    with torch.no_grad():
        want = model(mix).as_subclass(torch.Tensor)
    got = torch.jit.load(path)(mix)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
