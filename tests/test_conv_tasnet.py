"""Conv-TasNet: shapes, gradients, the hand-written CPU kernels, sizes, and the benchmark."""

import os
import sys

import pytest
import torch
import torch.nn.functional as F

from spksep_modules import SpkSepError
from spksep_modules.models.conv_tasnet import (
    ConvTasNet,
    GlobalLayerNorm,
    PReLUGLN,
    _DepthwiseConvFunction,
    _PReLUGLNFunction,
    overlap_add_decode,
)

TINY = dict(N=16, L=8, B=8, H=16, P=3, X=2, R=1)

torch.set_num_threads(1)


def tiny(**kw):
    torch.manual_seed(0)
    return ConvTasNet(**{**TINY, **kw})


@pytest.mark.parametrize("num_spks", [2, 3])
@pytest.mark.parametrize("length", [1, 7, 8, 13, 1001, 1600])
def test_output_has_input_length_for_any_length(num_spks, length):
    model = tiny(num_spks=num_spks)
    out = model(torch.randn(2, length))
    assert out.shape == (2, length, num_spks)
    assert torch.isfinite(out).all()


def test_time_only_input_gets_a_batch_dim_and_matches_batched_call():
    model = tiny().eval()
    mix = torch.randn(999)
    out = model(mix)
    assert out.shape == (1, 999, 2)
    torch.testing.assert_close(out, model(mix[None]))


def test_examples_are_separated_independently():
    # gLN statistics are per example: an example's output must not depend on its
    # batch neighbours.
    model = tiny().eval()
    a, b = torch.randn(1, 500), 100 * torch.randn(1, 500)
    torch.testing.assert_close(model(torch.cat([a, b]))[:1], model(a), rtol=1e-4, atol=1e-5)


def test_bad_input_rank_is_a_one_line_user_error():
    with pytest.raises(SpkSepError, match="expected \\[batch, time\\]"):
        tiny()(torch.randn(2, 1, 100))


def test_bad_settings_are_reported():
    with pytest.raises(SpkSepError, match="mask_act"):
        tiny(mask_act="tanh")
    with pytest.raises(SpkSepError, match="P: .*odd"):
        tiny(P=4)


@pytest.mark.parametrize("skip", [True, False])
def test_every_parameter_gets_a_gradient(skip):
    # DistributedDataParallel without find_unused_parameters needs this.
    model = tiny(skip=skip, bias=skip)
    model(torch.randn(2, 400)).square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert p.grad.abs().sum() > 0, name


def test_softmax_masks_split_the_autoencoded_mixture():
    # Softmax masks sum to one over speakers and the decoder is linear, so the sources
    # must add up to the mixture passed through encoder and decoder alone.
    model = tiny(mask_act="softmax", num_spks=3).eval()
    mix = torch.randn(2, 777)
    with torch.no_grad():
        est = model(mix)
        enc = model.encode(mix)
        masks = model.masks(enc)
        direct = model.decode(enc[:, None], 777)[..., 0]
    torch.testing.assert_close(masks.sum(1), torch.ones_like(masks[:, 0]))
    torch.testing.assert_close(est.sum(-1), direct, rtol=1e-4, atol=1e-5)


def test_encode_masks_decode_compose_to_forward():
    model = tiny().eval()
    mix = torch.randn(3, 1234)
    with torch.no_grad():
        enc = model.encode(mix)
        masks = model.masks(enc)
        out = model.decode(masks * enc[:, None], mix.shape[-1])
        assert enc.shape == (3, 16, (model.padded_length(1234) - 8) // 4 + 1)
        assert masks.shape == (3, 2, 16, enc.shape[-1])
        assert (masks >= 0).all()  # relu masks
        torch.testing.assert_close(out, model(mix))


def test_padding_only_appends_zeros():
    # The encoder tiles the padded input exactly, and padding never changes the frames
    # that the real samples produce.
    model = tiny()
    for length in [1, 8, 9, 100, 101]:
        padded = model.padded_length(length)
        assert padded >= max(length, model.L)
        assert (padded - model.L) % model.stride == 0
        assert padded - length < model.stride or length < model.L


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
        return _PReLUGLNFunction.apply(x, alpha, gamma, beta, 1e-8)

    plain = F.group_norm(F.prelu(x, alpha), 1, gamma, beta, 1e-8)
    torch.testing.assert_close(fused(x, alpha, gamma, beta), plain)
    assert torch.autograd.gradcheck(fused, (x, alpha, gamma, beta))


def test_fused_prelu_gln_is_accurate_when_mean_dwarfs_spread():
    # One-pass E[y^2] - E[y]^2 would lose every digit here; two-pass must not.
    module = PReLUGLN(4)
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
        return _DepthwiseConvFunction.apply(x, w, b, dilation)

    ref = F.conv1d(x, w, b, padding=dilation * (P - 1) // 2, dilation=dilation, groups=5)
    torch.testing.assert_close(kernel(x, w, b), ref)
    assert torch.autograd.gradcheck(kernel, (x, w, b))
    assert torch.autograd.gradcheck(
        lambda x, w: _DepthwiseConvFunction.apply(x, w, None, dilation), (x, w)
    )


@pytest.mark.parametrize("L,stride", [(16, 8), (5, 2), (2, 1), (7, 3), (4, 4)])
def test_overlap_add_decoder_equals_transposed_conv(L, stride):
    torch.manual_seed(0)
    src = torch.randn(3, 6, 11, dtype=torch.float64)
    w = torch.randn(6, 1, L, dtype=torch.float64)
    ref = F.conv_transpose1d(src, w, stride=stride)[:, 0]
    torch.testing.assert_close(overlap_add_decode(src, w, stride), ref)


@pytest.mark.parametrize("skip", [True, False])
def test_cpu_kernels_and_plain_ops_give_the_same_model(skip):
    fast = tiny(skip=skip, X=3, R=2).double()
    plain = tiny(skip=skip, X=3, R=2, cpu_kernels=False).double()
    plain.load_state_dict(fast.state_dict())
    mix = torch.randn(3, 1001, dtype=torch.float64)
    out_fast, out_plain = fast(mix), plain(mix)
    torch.testing.assert_close(out_fast, out_plain)
    out_fast.square().sum().backward()
    out_plain.square().sum().backward()
    for (name, p), q in zip(fast.named_parameters(), plain.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name)


def test_checkpointing_changes_memory_not_results():
    ref = tiny()
    ckpt = tiny(checkpoint=True)
    ckpt.load_state_dict(ref.state_dict())
    mix = torch.randn(2, 600)
    ref(mix).square().mean().backward()
    ckpt(mix).square().mean().backward()
    for (name, p), q in zip(ref.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name)


def test_dilations_and_receptive_field():
    model = tiny(X=4, R=3, P=3)
    dilations = [b.dconv.dilation[0] for b in model.separator.blocks]
    assert dilations == [1, 2, 4, 8] * 3
    # Each block widens the field by (P - 1) * dilation frames.
    assert model.separator.receptive_field() == 1 + 2 * 3 * (1 + 2 + 4 + 8)
    assert ConvTasNet().separator.receptive_field() == 1 + 2 * 3 * 255


def expected_params(N, L, B, H, P, X, R, num_spks, skip=True, bias=True):
    """Parameter count of the architecture, layer by layer."""
    blocks = X * R
    per_block = (
        B * H + bias * H  # 1x1 in
        + 1 + 2 * H  # PReLU, gLN
        + H * P + bias * H  # depthwise
        + 1 + 2 * H  # PReLU, gLN
    )
    n_outputs = blocks * 2 - 1 if skip else blocks  # residual and skip; last: skip only
    return (
        2 * N * L  # encoder, decoder
        + 2 * N  # input gLN
        + N * B + bias * B  # bottleneck
        + blocks * per_block
        + n_outputs * (H * B + bias * B)
        + 1  # PReLU before the mask conv
        + B * num_spks * N  # mask conv
    )


@pytest.mark.parametrize(
    "sizes",
    [TINY, dict(N=512, L=16, B=128, H=512, P=3, X=8, R=3), dict(N=20, L=4, B=6, H=10, P=5, X=3, R=2)],
)
@pytest.mark.parametrize("skip", [True, False])
def test_parameter_count_follows_the_architecture(sizes, skip):
    model = ConvTasNet(**sizes, num_spks=3, skip=skip, bias=skip)
    n = sum(p.numel() for p in model.parameters())
    assert n == expected_params(**sizes, num_spks=3, skip=skip, bias=skip)


def test_speechbrain_shape_has_speechbrains_parameter_count():
    # The benchmark's like-for-like row: same layers as SpeechBrain's MaskNet and
    # dual_path Encoder/Decoder, plus the single PReLU weight before the mask conv.
    from speechbrain.lobes.models.conv_tasnet import MaskNet
    from speechbrain.lobes.models.dual_path import Decoder, Encoder

    for s in [TINY, dict(N=512, L=16, B=128, H=512, P=3, X=8, R=3)]:
        sb = [
            Encoder(kernel_size=s["L"], out_channels=s["N"]),
            MaskNet(s["N"], s["B"], s["H"], s["P"], s["X"], s["R"], 2, norm_type="gLN"),
            Decoder(in_channels=s["N"], out_channels=1, kernel_size=s["L"],
                    stride=s["L"] // 2, bias=False),
        ]
        n_sb = sum(p.numel() for m in sb for p in m.parameters())
        ours = ConvTasNet(**s, skip=False, bias=False)
        assert sum(p.numel() for p in ours.parameters()) == n_sb + 1


@pytest.fixture
def bench_module():
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "bench"))
    import bench_convtasnet

    yield bench_convtasnet
    sys.path.pop(0)


def test_speechbrain_reference_model_keeps_the_input_length(bench_module):
    torch.manual_seed(0)
    sb = bench_module.SpeechBrainConvTasNet(**TINY, num_spks=2)
    for length in [800, 803]:
        assert sb(torch.randn(2, length)).shape == (2, length, 2)


def test_benchmark_prints_a_table_for_all_models(bench_module, capsys):
    sizes = [f"--{k}={v}" for k, v in TINY.items()]
    bench_module.main([*sizes, "--batch=1", "--seconds=0.05", "--steps=1", "--warmup=0",
                       "--no-memory", "--threads=1"])
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ") and "ms/step" not in line]
    assert len(rows) == 3
    assert "SpeechBrain" in rows[0] and rows[0].split("|")[5].strip() == "1.00x"


def test_memory_is_measured_in_a_fresh_process(bench_module):
    # A fresh interpreter reports its own peak, not the (larger) parent's.
    sizes = [f"--{k}={v}" for k, v in TINY.items()]
    argv = [*sizes, "--batch=1", "--seconds=0.05", "--threads=1"]
    hog = torch.ones(300 * 2**20 // 4)  # make the parent 300 MB bigger than a child
    parent = bench_module.peak_rss_mb()
    child = bench_module.measure_memory("ours", argv)
    del hog
    assert 50 < child < parent - 200


def snr_db(ref, est):
    ref, est = ref.double(), est.double()
    return float(10 * torch.log10(ref.square().sum() / (ref - est).square().sum()))


@pytest.mark.parametrize(
    "kw,length",
    [
        (dict(), 1001),
        (dict(X=8, R=1), 300),  # dilations up to 128 > 74 frames: taps fully outside
        (dict(P=5, skip=False, mask_act="sigmoid"), 257),
        (dict(mask_act="softmax", num_spks=3, bias=False), 640),
    ],
)
def test_inference_path_equals_the_training_path(kw, length, monkeypatch):
    # Without autograd, Conv-TasNet folds every gLN into the next convolution and works in
    # place; it must compute the same function as the path that trains.
    model = tiny(**kw).double()
    with torch.no_grad():  # non-trivial norms and biases, so that folding them matters
        for name, p in model.named_parameters():
            if name.endswith(("gamma", "beta", "bias")):
                p.normal_(0.3, 0.5)
    mix = torch.randn(3, length, dtype=torch.float64)
    calls = []
    infer = type(model.separator).infer
    monkeypatch.setattr(type(model.separator), "infer",
                        lambda self, enc: calls.append(enc.shape) or infer(self, enc))
    trained_path = model(mix)
    assert not calls
    with torch.no_grad():
        inference_path = model(mix)
    assert len(calls) == 3  # one example at a time: gLN statistics are per example
    torch.testing.assert_close(inference_path, trained_path.detach())


def test_inference_under_bf16_autocast_stays_close_to_fp32():
    model = tiny(X=4, R=2).eval()
    mix = torch.randn(1, 4000)
    with torch.no_grad():
        ref = model(mix)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(mix)
    assert low.dtype == torch.bfloat16
    assert snr_db(ref, low) > 30  # bf16 keeps 8 bits of mantissa: ~40 dB at paper sizes


def test_a_model_cast_to_bf16_runs_without_autograd():
    model = tiny(X=3, R=2).to(torch.bfloat16)
    mix = torch.randn(2, 900).to(torch.bfloat16)
    trained_path = model(mix).detach()
    with torch.no_grad():
        inference_path = model(mix)
    assert inference_path.dtype == torch.bfloat16
    assert snr_db(trained_path, inference_path) > 20
