"""The compiled TCN kernels (``nnet.native``) against the PyTorch spelling of the same
maths (``nnet.cpu_kernels``) and the plain layers: values and gradients in float32, edge
shapes, threads; and the fallback where they are off or cannot be built."""

import os
import warnings

import pytest
import torch
import torch.nn.functional as F

from spksep_modules.models import ConvTasNet
from spksep_modules.nnet import native
from spksep_modules.nnet.cpu_kernels import DepthwiseConvFunction, PReLUGLNFunction

KERNELS = native.tcn_kernels()
needs_kernels = pytest.mark.skipif(KERNELS is None, reason="compiled kernels not available here")


def run_both(fn, monkeypatch, *inputs):
    """``fn``'s outputs and the inputs' gradients, with the compiled kernels and without."""
    results = []
    for compiled in (True, False):
        monkeypatch.setitem(native._loaded, native.capability(), KERNELS if compiled else None)
        leaves = [t.detach().clone().requires_grad_(t.requires_grad) for t in inputs]
        out = fn(*leaves)
        torch.manual_seed(1)
        out.backward(torch.randn_like(out))
        results.append((out.detach(), [t.grad for t in leaves if t.requires_grad]))
    return results


@needs_kernels
@pytest.mark.parametrize("shape,offset", [((2, 5, 40), 0.0), ((4, 64, 999), 0.0), ((1, 3, 1), 0.0),
                                          ((2, 8, 300), 50.0)])
def test_prelu_gln_matches_the_pytorch_kernel(monkeypatch, shape, offset):
    torch.manual_seed(0)
    x = (torch.randn(*shape) * 2 + offset).requires_grad_()
    alpha = torch.tensor([0.3], requires_grad=True)
    gamma = (torch.rand(shape[1]) + 0.5).requires_grad_()
    beta = torch.randn(shape[1], requires_grad=True)
    (y_c, g_c), (y_p, g_p) = run_both(
        lambda *a: PReLUGLNFunction.apply(*a, 1e-8), monkeypatch, x, alpha, gamma, beta)
    torch.testing.assert_close(y_c, y_p, atol=2e-5, rtol=1e-5)
    plain = F.group_norm(F.prelu(x.double(), alpha.double()), 1, gamma.double(), beta.double(), 1e-8)
    torch.testing.assert_close(y_c.double(), plain, atol=2e-5, rtol=1e-5)
    for name, c, p in zip(("x", "alpha", "gamma", "beta"), g_c, g_p):
        scale = p.abs().max().clamp_min(1.0)
        assert (c - p).abs().max() / scale < 1e-4, name


@needs_kernels
def test_prelu_gln_keeps_its_accuracy_under_a_large_offset():
    # The mean is kept in double: a float mean of ~1000 is off by up to 3e-5, which is 0.3%
    # of a 0.01 spread, on every output.
    x = 1000 + 0.01 * torch.randn(2, 4, 3000)
    y = PReLUGLNFunction.apply(x, torch.tensor([0.25]), torch.ones(4), torch.zeros(4), 1e-8)
    expected = F.group_norm(x.double(), 1, eps=1e-8)
    assert (y.double() - expected).abs().max() < 5e-4


@needs_kernels
@pytest.mark.parametrize("P,dilation,T,bias", [(3, 1, 50, True), (3, 16, 999, False), (3, 64, 40, True),
                                               (5, 3, 100, True), (1, 1, 7, False), (3, 2, 1, True),
                                               # taps partly in range; |offset| = T - 1 and T
                                               (5, 25, 40, True), (3, 39, 40, False), (3, 40, 40, True)])
def test_depthwise_matches_the_pytorch_kernel_and_conv1d(monkeypatch, P, dilation, T, bias):
    torch.manual_seed(0)
    x = torch.randn(3, 6, T, requires_grad=True)
    w = torch.randn(6, 1, P, requires_grad=True)
    b = torch.randn(6, requires_grad=True) if bias else None
    inputs = (x, w, b) if bias else (x, w)

    def conv(x, w, b=None):
        return DepthwiseConvFunction.apply(x, w, b, dilation)

    (y_c, g_c), (y_p, g_p) = run_both(conv, monkeypatch, *inputs)
    reference = F.conv1d(x, w, b, padding=(P - 1) // 2 * dilation, dilation=dilation, groups=6)
    torch.testing.assert_close(y_c, reference.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(y_c, y_p, atol=1e-5, rtol=1e-5)
    for c, p in zip(g_c, g_p):
        torch.testing.assert_close(c, p, atol=1e-4, rtol=1e-4)


@needs_kernels
def test_a_training_step_agrees_with_and_without_the_compiled_kernels(monkeypatch):
    """The whole small Conv-TasNet: loss and every parameter's gradient, on two threads
    (the kernels split rows across threads)."""
    torch.manual_seed(0)
    model = ConvTasNet(N=32, L=8, B=16, H=32, P=3, X=3, R=2, skip=False, bias=False)
    mix = torch.randn(3, 1600)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        outs = []
        for compiled in (True, False):
            monkeypatch.setitem(native._loaded, native.capability(), KERNELS if compiled else None)
            model.zero_grad()
            est = model(mix)
            est.square().mean().backward()
            outs.append((est.detach(), {k: p.grad.clone() for k, p in model.named_parameters()}))
    finally:
        torch.set_num_threads(threads)
    torch.testing.assert_close(outs[0][0], outs[1][0], atol=1e-5, rtol=1e-4)
    for key, grad in outs[0][1].items():
        scale = outs[1][1][key].abs().max().clamp_min(1e-3)
        assert (grad - outs[1][1][key]).abs().max() / scale < 1e-3, key


def test_off_by_environment_runs_the_pytorch_kernels(monkeypatch):
    monkeypatch.setenv("SPKSEP_NATIVE_KERNELS", "0")
    monkeypatch.setattr(native, "_loaded", {})
    assert native.tcn_kernels() is None
    x = torch.randn(2, 4, 30, requires_grad=True)
    y = PReLUGLNFunction.apply(x, torch.tensor([0.25]), torch.ones(4), torch.zeros(4), 1e-8)
    y.sum().backward()
    torch.testing.assert_close(y, F.group_norm(F.prelu(x, torch.tensor([0.25])), 1, eps=1e-8),
                               atol=1e-5, rtol=1e-5)


def test_a_failed_build_warns_once_falls_back_and_is_not_retried(monkeypatch, tmp_path):
    import torch.utils.cpp_extension as cpp

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    monkeypatch.delenv("SPKSEP_NATIVE_KERNELS", raising=False)
    monkeypatch.setattr(native, "_why_not", lambda: "")
    monkeypatch.setattr(native, "_loaded", {})
    calls = []

    def broken(**kwargs):
        calls.append(kwargs["name"])
        raise RuntimeError("Error building extension 'x': [1/2] c++ -O3 -mavx2 " + "-I/include " * 60
                           + "-c tcn_kernels.cpp\ng++: fatal error: no input files\nninja: build stopped")

    monkeypatch.setattr(cpp, "load", broken)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert native.tcn_kernels() is None
        assert native.tcn_kernels() is None  # cached in the process: no second build
    assert len(calls) == 1
    built = [str(w.message) for w in caught if "could not be built" in str(w.message)]
    assert built and "fatal error: no input files" in built[0]  # the error, not the command
    marker = native._marker(calls[0])
    assert os.path.exists(marker) and "no input files" in open(marker).read()
    # A new process (a fresh cache) does not build again: the marker says it failed.
    monkeypatch.setattr(native, "_loaded", {})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert native.tcn_kernels() is None
    assert len(calls) == 1 and any("failed before" in str(w.message) for w in caught)
    # Unless asked to retry; a retry that builds removes the marker.
    monkeypatch.setenv("SPKSEP_NATIVE_KERNELS", "1")
    monkeypatch.setattr(native, "_loaded", {})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        native.tcn_kernels()
    assert len(calls) == 2 and os.path.exists(marker)
    monkeypatch.setattr(cpp, "load", lambda **kwargs: calls.append(kwargs["name"]) or "module")
    monkeypatch.setattr(native, "_loaded", {})
    assert native.tcn_kernels() == "module" and not os.path.exists(marker)


def test_flags_follow_the_instruction_set_pytorch_uses():
    assert "-mavx2" in native.build_flags("AVX2") and "-mavx512f" not in native.build_flags("AVX2")
    assert "-mavx512f" in native.build_flags("AVX512")
    assert not any(f.startswith("-mavx") for f in native.build_flags("DEFAULT"))
    # one build per instruction set: an AVX2-limited run does not load the AVX-512 build
    assert native._build_name("AVX2") != native._build_name("AVX512")


def test_spksep_kernels_builds_them_or_says_why(monkeypatch, capsys):
    from spksep_modules.cli import main

    assert main(["kernels"]) == (0 if KERNELS is not None else 1)
    assert native.capability() in capsys.readouterr().out
    monkeypatch.setenv("SPKSEP_NATIVE_KERNELS", "0")
    monkeypatch.setattr(native, "_loaded", {})
    assert main(["kernels"]) == 1
    assert "not available" in capsys.readouterr().out


@needs_kernels
@pytest.mark.parametrize("compiled_forward", [True, False])
def test_the_backward_takes_the_forwards_path(monkeypatch, compiled_forward):
    """A forward under ``native.disabled()`` and its backward outside it (or the reverse)
    give the gradients of the PyTorch kernels: the two paths save different statistics."""
    torch.manual_seed(0)
    x = torch.randn(2, 6, 120, requires_grad=True)
    alpha, gamma, beta = torch.tensor([0.2]), torch.rand(6) + 0.5, torch.randn(6)
    w = torch.randn(6, 1, 3)
    want = torch.autograd.grad(
        F.conv1d(F.group_norm(F.prelu(x, alpha), 1, gamma, beta, 1e-8), w, padding=2, dilation=2,
                 groups=6).square().sum(), x)[0]
    monkeypatch.setitem(native._loaded, native.capability(), KERNELS if compiled_forward else None)
    y = DepthwiseConvFunction.apply(PReLUGLNFunction.apply(x, alpha, gamma, beta, 1e-8), w, None, 2)
    monkeypatch.setitem(native._loaded, native.capability(), None if compiled_forward else KERNELS)
    (grad,) = torch.autograd.grad(y.square().sum(), x)
    torch.testing.assert_close(grad, want, atol=1e-4, rtol=1e-4)


def fresh_build(monkeypatch, extensions_dir, ninja):
    """A process that has not built the kernels yet, with its build folder at
    ``extensions_dir`` and ninja there or not; building fails the test."""
    import torch.utils.cpp_extension as cpp

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(extensions_dir))
    monkeypatch.delenv("SPKSEP_NATIVE_KERNELS", raising=False)
    monkeypatch.setattr(native, "_why_not", lambda: "")
    monkeypatch.setattr(native, "_loaded", {})
    monkeypatch.setattr(cpp, "is_ninja_available", lambda: ninja)
    monkeypatch.setattr(cpp, "load", lambda **kwargs: pytest.fail("a build was tried"))


def test_without_ninja_it_warns_and_does_not_remember_a_failure(monkeypatch, tmp_path):
    fresh_build(monkeypatch, tmp_path, ninja=False)
    with pytest.warns(UserWarning, match="ninja not found"):
        assert native.tcn_kernels() is None
    assert not list(tmp_path.rglob("BUILD_FAILED"))  # installing ninja is enough to get them


def test_a_build_folder_that_cannot_be_made_warns_instead_of_failing(monkeypatch, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    fresh_build(monkeypatch, blocker / "extensions", ninja=True)
    with pytest.warns(UserWarning, match="TORCH_EXTENSIONS_DIR"):
        assert native.tcn_kernels() is None
    # and the layers run (the PyTorch kernels)
    x = torch.randn(1, 4, 20, requires_grad=True)
    PReLUGLNFunction.apply(x, torch.tensor([0.25]), torch.ones(4), torch.zeros(4), 1e-8).sum().backward()
    assert torch.isfinite(x.grad).all()
