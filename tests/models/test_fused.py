"""fuse_for_inference: the folded no-autograd form computes the training path's function."""

import pytest
import torch

from spksep_modules.models import ConvTasNet, fuse_for_inference
from spksep_modules.models.fused import FusedTCN

TINY = dict(N=16, L=8, B=8, H=16, P=3, X=2, R=1)


def tiny(**kw):
    torch.manual_seed(0)
    return ConvTasNet(**{**TINY, **kw})


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
    # Without autograd, the fused view folds every gLN into the next convolution and works
    # in place; it must compute the same function as the path that trains.
    model = tiny(**kw).double()
    with torch.no_grad():  # non-trivial norms and biases, so that folding them matters
        for name, p in model.named_parameters():
            if name.endswith(("gamma", "beta", "bias")):
                p.normal_(0.3, 0.5)
    mix = torch.randn(3, length, dtype=torch.float64)
    fused = fuse_for_inference(model)
    calls = []
    one = FusedTCN.one_example
    monkeypatch.setattr(FusedTCN, "one_example", lambda self, enc: calls.append(enc.shape) or one(self, enc))
    trained_path = fused(mix)  # with autograd on, the view runs the plain layers
    assert not calls
    with torch.no_grad():
        inference_path = fused(mix)
    assert len(calls) == 3  # one example at a time: gLN statistics are per example
    torch.testing.assert_close(inference_path, trained_path.detach())


def test_inference_under_bf16_autocast_stays_close_to_fp32():
    model = tiny(X=4, R=2).eval()
    fused = fuse_for_inference(model)
    mix = torch.randn(1, 4000)
    with torch.no_grad():
        ref = model(mix)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = fused(mix)
    assert low.dtype == torch.bfloat16
    assert snr_db(ref, low) > 30  # bf16 keeps 8 bits of mantissa: ~40 dB at paper sizes


def test_a_model_cast_to_bf16_runs_without_autograd():
    model = tiny(X=3, R=2).to(torch.bfloat16)
    mix = torch.randn(2, 900).to(torch.bfloat16)
    trained_path = model(mix).detach()
    with torch.no_grad():
        inference_path = fuse_for_inference(model)(mix)
    assert inference_path.dtype == torch.bfloat16
    assert snr_db(trained_path, inference_path) > 20


def test_the_fused_view_shares_parameters_and_leaves_the_model_alone():
    model = tiny()
    fused = fuse_for_inference(model)
    assert type(model.separator).__name__ == "TCN" and isinstance(fused.separator, FusedTCN)
    assert fused.encoder.weight is model.encoder.weight
    with torch.no_grad():  # training the model updates the view too
        model.decoder.weight.mul_(2)
        mix = torch.randn(1, 500)
        torch.testing.assert_close(fused(mix), model(mix))
