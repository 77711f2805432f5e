"""The speed layer's pieces against the plain PyTorch they replace: the fused PReLU+gLN
and depthwise-conv kernels (values and exact gradients), the overlap-add decoder, gLN."""

import pytest
import torch
import torch.nn.functional as F

from spksep_modules.nnet.cpu_kernels import (
    BF16PointwiseConv1d,
    DepthwiseConvFunction,
    FastPReLUGLN,
    PointwiseConvBF16Function,
    PReLUGLNFunction,
)
from spksep_modules.nnet.filterbank import overlap_add_decode
from spksep_modules.nnet.forms import as_form, forms_of
from spksep_modules.nnet.layers import DepthwiseConv1d, PReLUGLN
from spksep_modules.nnet.norms import GlobalLayerNorm


def test_gln_normalises_each_example():
    norm = GlobalLayerNorm(6)
    x = torch.randn(3, 6, 50) * torch.tensor([1.0, 10.0, 0.1])[:, None, None] + 5
    y = norm(x)
    torch.testing.assert_close(y.mean((1, 2)), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.var((1, 2), unbiased=False), torch.ones(3), atol=1e-4, rtol=0)


def test_fused_prelu_gln_matches_plain_ops_and_its_gradients_are_exact():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 40, dtype=torch.float64, requires_grad=True)
    alpha = torch.tensor([0.3], dtype=torch.float64, requires_grad=True)
    gamma = torch.randn(5, dtype=torch.float64, requires_grad=True)
    beta = torch.randn(5, dtype=torch.float64, requires_grad=True)

    def fused(x, alpha, gamma, beta):
        return PReLUGLNFunction.apply(x, alpha, gamma, beta, 1e-8)

    plain = F.group_norm(F.prelu(x, alpha), 1, gamma, beta, 1e-8)
    torch.testing.assert_close(fused(x, alpha, gamma, beta), plain)
    assert torch.autograd.gradcheck(fused, (x, alpha, gamma, beta))


def test_fused_prelu_gln_is_accurate_when_mean_dwarfs_spread():
    # One-pass E[y^2] - E[y]^2 would lose every digit here; two-pass must not.
    module = FastPReLUGLN(4)
    x = 1000 + 0.01 * torch.randn(2, 4, 3000)
    expected = F.group_norm(x.double(), 1, eps=1e-8).float()  # PReLU: x > 0, identity
    torch.testing.assert_close(module(x), expected, atol=2e-3, rtol=0)


@pytest.mark.parametrize("P,dilation", [(3, 1), (3, 4), (3, 39), (3, 64), (5, 3), (1, 1)])
def test_depthwise_kernel_matches_conv1d_and_its_gradients_are_exact(P, dilation):
    torch.manual_seed(0)
    x = torch.randn(2, 5, 40, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, 1, P, dtype=torch.float64, requires_grad=True)
    b = torch.randn(5, dtype=torch.float64, requires_grad=True)

    def kernel(x, w, b):
        return DepthwiseConvFunction.apply(x, w, b, dilation)

    ref = F.conv1d(x, w, b, padding=dilation * (P - 1) // 2, dilation=dilation, groups=5)
    torch.testing.assert_close(kernel(x, w, b), ref)
    assert torch.autograd.gradcheck(kernel, (x, w, b))
    assert torch.autograd.gradcheck(
        lambda x, w: DepthwiseConvFunction.apply(x, w, None, dilation), (x, w)
    )


@pytest.mark.parametrize("L,stride", [(16, 8), (5, 2), (2, 1), (7, 3), (4, 4)])
def test_overlap_add_decoder_equals_transposed_conv(L, stride):
    torch.manual_seed(0)
    src = torch.randn(3, 6, 11, dtype=torch.float64)
    w = torch.randn(6, 1, L, dtype=torch.float64)
    ref = F.conv_transpose1d(src, w, stride=stride)[:, 0]
    torch.testing.assert_close(overlap_add_decode(src, w, stride), ref)




def test_the_cpu_kernels_form_switches_classes_both_ways_and_keeps_the_state():
    model = torch.nn.Sequential(DepthwiseConv1d(6, 3, 2), PReLUGLN(6))
    keys = list(model.state_dict())
    as_form(model, "cpu_kernels")
    assert [type(m).__name__ for m in model] == ["FastDepthwiseConv1d", "FastPReLUGLN"]
    assert list(model.state_dict()) == keys and forms_of(model) == {"cpu_kernels"}
    as_form(model)
    assert [type(m) for m in model] == [DepthwiseConv1d, PReLUGLN]


def relative_error(got, want):
    return float((got - want).norm() / want.norm())


@pytest.mark.parametrize("bias", [True, False])
def test_bf16_pointwise_conv_is_the_fp32_conv_to_bf16_rounding(bias):
    torch.manual_seed(0)
    x = torch.randn(3, 24, 70, requires_grad=True)
    weight = (0.2 * torch.randn(40, 24, 1)).requires_grad_()
    b = torch.randn(40, requires_grad=True) if bias else None
    grad = torch.randn(3, 40, 70)
    inputs = (x, weight) + ((b,) if bias else ())
    want_y = F.conv1d(x, weight, b)
    want = torch.autograd.grad(want_y, inputs, grad)
    got_y = PointwiseConvBF16Function.apply(x, weight, b)
    got = torch.autograd.grad(got_y, inputs, grad)
    assert got_y.dtype == torch.float32 and all(g.dtype == torch.float32 for g in got)
    # bf16 keeps 8 significant bits: ~3e-3 relative, far from fp32's 1e-7 and from garbage
    assert 1e-5 < relative_error(got_y, want_y) < 1e-2
    for g, w in zip(got, want):
        assert relative_error(g, w) < 1e-2
    if bias:  # the bias gradient is a plain fp32 sum
        torch.testing.assert_close(got[2], want[2])


def test_bf16_products_only_in_training_steps_and_switch_both_ways():
    model = torch.nn.Sequential(torch.nn.Conv1d(6, 8, 1), torch.nn.Conv1d(8, 8, 3, padding=1),
                                torch.nn.Conv1d(8, 4, 1, stride=2))
    keys = list(model.state_dict())
    x = torch.randn(2, 6, 30)
    with torch.no_grad():
        plain = model(x)
    as_form(model, "bf16_products")
    # only the 1x1, stride-1 conv: the others have no single matrix product per example
    assert [type(m) for m in model] == [BF16PointwiseConv1d, torch.nn.Conv1d, torch.nn.Conv1d]
    assert list(model.state_dict()) == keys
    with torch.no_grad():  # evaluation and inference: the fp32 conv, bit for bit
        assert torch.equal(model(x), plain)
    trained = model(x)
    assert not torch.equal(trained, plain) and relative_error(trained.detach(), plain) < 1e-2
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast decides for itself
        assert model(x).dtype == torch.bfloat16
    as_form(model)
    assert [type(m) for m in model] == [torch.nn.Conv1d] * 3
