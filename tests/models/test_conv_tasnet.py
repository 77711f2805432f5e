"""Conv-TasNet: shapes, gradients, sizes, and the CPU kernels as a whole model."""

import pytest
import torch

from spksep_modules import SpkSepError
from spksep_modules.models import ConvTasNet
from spksep_modules.nnet.filterbank import padded_length

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
        masks = model.separator(enc)
        direct = model.decode(enc[:, None], 777)[..., 0]
    torch.testing.assert_close(masks.sum(1), torch.ones_like(masks[:, 0]))
    torch.testing.assert_close(est.sum(-1), direct, rtol=1e-4, atol=1e-5)


def test_encode_masks_decode_compose_to_forward():
    model = tiny().eval()
    mix = torch.randn(3, 1234)
    with torch.no_grad():
        enc = model.encode(mix)
        masks = model.separator(enc)
        out = model.decode(masks * enc[:, None], mix.shape[-1])
        assert enc.shape == (3, 16, (padded_length(1234, model.L, model.stride) - 8) // 4 + 1)
        assert masks.shape == (3, 2, 16, enc.shape[-1])
        assert (masks >= 0).all()  # relu masks
        torch.testing.assert_close(out, model(mix))


def test_padding_only_appends_zeros():
    # The encoder tiles the padded input exactly, and padding never changes the frames
    # that the real samples produce.
    model = tiny()
    for length in [1, 8, 9, 100, 101]:
        padded = padded_length(length, model.L, model.stride)
        assert padded >= max(length, model.L)
        assert (padded - model.L) % model.stride == 0
        assert padded - length < model.stride or length < model.L


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


def test_bf16_products_train_like_fp32_and_evaluate_as_fp32():
    """``bf16_products``: the 1x1 convs multiply in bf16 in training steps only. A few
    Adam steps from the same weights and batches stay within bf16's rounding of fp32's
    losses (the bound of tests/training/test_precision.py: 2% of the loss plus 0.05 dB), and the
    trained models, evaluated, are fp32 models: same output for the same weights."""
    from spksep_modules.losses import SeparationLoss

    torch.manual_seed(0)
    fp32 = tiny(X=3, R=2)
    mixed = tiny(X=3, R=2, bf16_products=True)
    mixed.load_state_dict(fp32.state_dict())
    loss_fn = SeparationLoss()
    mixes, sources = torch.randn(4, 2, 1200), torch.randn(4, 2, 1200, 2)
    losses = {}
    for name, model in (("fp32", fp32), ("mixed", mixed)):
        optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
        losses[name] = []
        for mix, src in zip(mixes, sources):
            loss = loss_fn(model(mix), src)["loss"]
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            losses[name].append(float(loss))
    assert losses["fp32"] != losses["mixed"]  # it did compute in bf16
    for want, got in zip(losses["fp32"], losses["mixed"]):
        assert abs(got - want) <= 0.02 * abs(want) + 0.05, (losses["fp32"], losses["mixed"])
    fp32.load_state_dict(mixed.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(mixed(mixes[0]), fp32(mixes[0]), rtol=0, atol=0)
