"""ONNX and TorchScript export of a trained separator.

The exported graph maps ``mix [batch, time]`` (float32, at the model's sample rate) to the
estimates ``[batch, time, num_spks]``; both axes are dynamic. It is the plain PyTorch
forward of a copy in the layers' ``export`` form (``nnet.forms``: the hand-written CPU
kernels, autograd functions, switched off), traced on an example input, so the
inference-only fast paths are not in it. A conditioned separator exports whole, its
speaker network inside: GE2E, RawNet2, ECAPA and the norms trace as they are (their
lengths and partials are tensor arithmetic), and the two SpeechBrain modules a trace would
freeze (the complex STFT, the pooling's mask) take the adapters of ``nnet.exportable``.

Separating a file with the ONNX model needs only ``onnxruntime`` and ``soundfile``::

    import onnxruntime, soundfile
    mix, rate = soundfile.read("mix.wav", dtype="float32")  # mono, at the model's rate
    session = onnxruntime.InferenceSession("model.onnx")
    est = session.run(None, {"mix": mix[None]})[0][0]       # [time, num_spks]
    for i in range(est.shape[1]):
        soundfile.write(f"mix_s{i + 1}.wav", est[:, i], rate)
"""

import copy
import os

import torch
import torch.nn.functional as F
from torch import nn

from spksep_modules import SpkSepError
from spksep_modules.checkpoints import prepare_output_folder
from spksep_modules.loading import load_separator
from spksep_modules.nnet.forms import as_form

FORMATS = ("onnx", "torchscript")
PAD_SLACK = 512  # samples; more than any filterbank's stride


class PlainEstimates(nn.Module):
    """``separator(mix)`` as a plain tensor ``[batch, time, C]`` (no extras): what an
    exported graph returns.

    Example
    -------
    >>> from spksep_modules.models import ConvTasNet
    >>> wrapped = PlainEstimates(ConvTasNet(N=16, L=8, B=8, H=16, P=3, X=2, R=1))
    >>> type(wrapped(torch.randn(1, 800))).__name__
    'Tensor'
    """

    def __init__(self, separator: nn.Module):
        super().__init__()
        self.separator = separator

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        est = self.separator(mix).as_subclass(torch.Tensor)
        # A separator that gives fewer samples than the input and zero-pads back to it
        # (SepFormer: the tail that fills no frame) decides so in Python, which a trace
        # bakes in: pad here by a constant and cut to the input's length, symbolically.
        est = F.pad(est, (0, 0, 0, PAD_SLACK))
        return est[:, : mix.shape[-1]]


def exportable(separator: nn.Module) -> nn.Module:
    """A copy of ``separator`` in its ``export`` form (``nnet.forms``: the plain fp32 layers,
    SpeechBrain modules' adapters, no extra state), in eval mode, without gradients or the
    example cache, wrapped in :class:`PlainEstimates`.

    Example
    -------
    >>> from spksep_modules.models import ConvTasNet
    >>> model = ConvTasNet(N=16, L=8, B=8, H=16, P=3, X=2, R=1)
    >>> from spksep_modules.nnet.forms import forms_of
    >>> forms_of(model), forms_of(exportable(model).separator)  # the copy: kernels off
    ({'cpu_kernels'}, {'export'})
    """
    model = as_form(copy.deepcopy(separator).cpu(), "export").eval()
    for module in model.modules():  # a Python dict keyed by the input: nothing to trace
        if getattr(module, "basic_cache", None) is not None:
            module.basic_cache = None
    for p in model.parameters():
        p.requires_grad_(False)
    return PlainEstimates(model).eval()


def export_separator(separator: nn.Module, fmt: str, out, sample_rate: int,
                     example_seconds: float = 1.0) -> str:
    """Write ``separator`` as an ONNX (``fmt="onnx"``) or TorchScript file ``out``.

    The graph is traced on ``example_seconds`` of noise (batch 1); time and batch are
    dynamic axes. Returns ``out``.

    Example
    -------
    >>> import tempfile
    >>> from spksep_modules.models import ConvTasNet
    >>> model = ConvTasNet(N=16, L=8, B=8, H=16, P=3, X=2, R=1).eval()
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     path = export_separator(model, "torchscript", os.path.join(tmp, "m.pt"), 8000)
    ...     loaded = torch.jit.load(path)
    >>> mix = torch.randn(1, 1234)
    >>> torch.allclose(loaded(mix), model(mix), atol=1e-5)  # another length than traced
    True
    """
    if fmt not in FORMATS:
        raise SpkSepError(f"format: expected one of {', '.join(FORMATS)}, got {fmt!r}")
    out = os.fspath(out)
    prepare_output_folder(os.path.dirname(out) or os.curdir)  # one error line, before tracing
    model = exportable(separator)
    torch.manual_seed(0)
    example = torch.randn(1, max(int(example_seconds * sample_rate), 64)) * 0.1
    with torch.no_grad():
        try:
            if fmt == "torchscript":
                traced = torch.jit.trace(model, (example,), check_trace=False)
                traced.save(out)
            else:
                _export_onnx(model, example, out)
        except SpkSepError:
            raise
        except Exception as err:
            line = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
            raise SpkSepError(
                f"cannot export a {type(separator).__name__} to {fmt}: {line}") from None
    return out


def _export_onnx(model, example, out):
    try:
        import onnx  # noqa: F401  (the exporter needs it)
    except ImportError:
        raise SpkSepError("ONNX export needs the onnx package: pip install onnx onnxscript "
                          "onnxruntime") from None
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about Python values in the graph
        torch.onnx.export(
            model, (example,), out, input_names=["mix"], output_names=["estimates"],
            dynamic_axes={"mix": {0: "batch", 1: "time"}, "estimates": {0: "batch", 1: "time"}},
            opset_version=17, dynamo=False,
        )


def export_run(run_dir, fmt: str, out, example_seconds: float = 1.0) -> str:
    """Export the separator of a run folder, package or SpeechBrain folder (see
    :func:`export_separator`).

    Example
    -------
    >>> export_run("no/such/run", "onnx", "m.onnx")
    Traceback (most recent call last):
        ...
    spksep_modules.SpkSepError: no/such/run: not a training run folder (no hyperparams.yaml); train one with recipes/LibriMix/separation/train.py
    """
    if fmt not in FORMATS:
        raise SpkSepError(f"format: expected one of {', '.join(FORMATS)}, got {fmt!r}")
    separator, rate = load_separator(os.fspath(run_dir))
    return export_separator(separator, fmt, out, rate, example_seconds)
