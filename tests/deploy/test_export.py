"""ONNX (run with onnxruntime) and TorchScript exports agree with PyTorch at 1e-4 relative."""

import pytest
import torch

from spksep_modules import SpkSepError
from spksep_modules.export import export_run, export_separator
from spksep_modules.models import SepFormer

from deploy_helpers import RATE, tiny_conditioned, tiny_convtasnet, write_run

torch.set_num_threads(1)
LENGTHS = (4000, 1234, 9001)  # the traced length, and two others (not multiples of the stride)


def tiny_sepformer():
    torch.manual_seed(0)
    return SepFormer(N=16, num_layers=1, K=20, intra_layers=1, inter_layers=1, nhead=2,
                     d_ffn=32).eval()


def run_exported(path, fmt, mix):
    if fmt == "onnx":
        ort = pytest.importorskip("onnxruntime")
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return torch.from_numpy(session.run(None, {"mix": mix.numpy()})[0])
    return torch.jit.load(str(path))(mix)


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
    torch.manual_seed(1)
    for length in LENGTHS:
        mix = torch.randn(2, length) * 0.1
        with torch.no_grad():
            want = model(mix).as_subclass(torch.Tensor)
        assert relative_error(run_exported(path, fmt, mix), want) < 1e-4


def test_conditioned_torchscript_export_matches_pytorch(tmp_path):
    # GE2E cuts its input into 1.6 s partials in Python: the trace keeps the traced
    # example's partial count (one, up to ~1.2 s at 8 kHz), so the lengths tested share it.
    model = tiny_conditioned()
    path = export_separator(model, "torchscript", tmp_path / "cond.pt", RATE,
                            example_seconds=0.5)
    torch.manual_seed(1)
    for length in (4000, 1234, 8001):
        mix = torch.randn(2, length) * 0.1
        with torch.no_grad():
            want = model(mix).as_subclass(torch.Tensor)
        assert relative_error(run_exported(path, "torchscript", mix), want) < 1e-4


def test_export_of_a_run_folder_and_bad_format(tmp_path):
    run = write_run(tmp_path / "run", tiny_convtasnet())
    path = export_run(run, "torchscript", tmp_path / "out" / "m.pt", example_seconds=0.25)
    assert torch.jit.load(path)(torch.randn(1, 1000)).shape == (1, 1000, 2)
    with pytest.raises(SpkSepError, match="format: expected one of onnx, torchscript"):
        export_run(run, "tflite", tmp_path / "m.tflite")
