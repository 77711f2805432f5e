"""Perceptual weights that transfer: normalised distances, calibrated weights, warm-up."""

import pytest
import torch

from spksep_modules import SpkSepError
from spksep_modules.checkpoints import AtomicCheckpointer
from spksep_modules.losses import SeparationLoss, TripletLike, WeightedSum, pit_si_snr
from spksep_modules.losses.perceptual import ToyFeatures, perceptual_distances


def waves(seed, batch=2, time=800, num_spks=2):
    gen = torch.Generator().manual_seed(seed)
    ref = torch.randn(batch, time, num_spks, generator=gen)
    return ref + 0.5 * torch.randn(batch, time, num_spks, generator=gen), ref


def distances(est, ref, normalised, scale=1.0):
    feats = ToyFeatures()  # frame-local: a signal twice has its frames twice

    def f(w):
        return scale * torch.stack([feats(w[..., i]) for i in range(w.shape[-1])], dim=1)

    return perceptual_distances(f(est), f(ref), normalised)


def test_normalised_distances_do_not_depend_on_segment_length():
    est, ref = waves(0)
    twice = (torch.cat([est, est], dim=1), torch.cat([ref, ref], dim=1))
    for got, want in zip(distances(*twice, True), distances(est, ref, True)):
        torch.testing.assert_close(got, want)
    # The paper's literal distances sum over frames: twice the signal, twice the distance.
    for got, want in zip(distances(*twice, False), distances(est, ref, False)):
        torch.testing.assert_close(got, 2 * want)


def test_normalised_distances_do_not_depend_on_the_features_scale():
    est, ref = waves(1)
    for got, want in zip(distances(est, ref, True, scale=7.0), distances(est, ref, True)):
        torch.testing.assert_close(got, want)
    for got, want in zip(distances(est, ref, False, scale=7.0), distances(est, ref, False)):
        torch.testing.assert_close(got, 49 * want)


def calibrated_loss(**kw):
    return SeparationLoss(WeightedSum(ToyFeatures(), normalised=True), perceptual_share=0.1,
                          calibration_batches=2, **kw).train()


def test_gradient_calibration_gives_each_part_the_chosen_share_of_the_gradient():
    est, ref = waves(2)
    est.requires_grad_(True)
    loss_fn = calibrated_loss(lp=2.0)
    for _ in range(2):
        assert "perceptual" not in loss_fn(est, ref)

    def grad_norm(value):
        return float(torch.autograd.grad(value, est, retain_graph=True)[0].norm())

    basic = grad_norm(pit_si_snr(est, ref)[0].mean())
    for name, value in loss_fn.auxiliary(est, ref)["parts"].items():
        share = grad_norm(2.0 * loss_fn.auxiliary.weights[name] * value) / basic
        assert share == pytest.approx(0.1, rel=1e-4), name


def test_value_calibration_gives_each_part_the_chosen_share():
    est, ref = waves(2)
    loss_fn = calibrated_loss(lp=2.0, calibrate_by="value")
    for _ in range(2):  # the calibration batches train on the basic loss alone
        terms = loss_fn(est, ref)
        assert "perceptual" not in terms and terms["loss"] == -terms["si_snr"].mean()
    terms = loss_fn(est, ref)
    basic = float(-terms["si_snr"].mean())
    parts = loss_fn.auxiliary(est, ref)["parts"]
    for name, value in parts.items():
        share = 2.0 * loss_fn.auxiliary.weights[name] * float(value) / abs(basic)
        assert share == pytest.approx(0.1, rel=1e-4), name
    assert float(terms["loss"]) == pytest.approx(basic + 0.2 * abs(basic), rel=1e-4)  # 2 parts
    assert float(terms["w_D_pos"]) == pytest.approx(loss_fn.auxiliary.weights["D_pos"])  # logged


def test_calibrated_weights_survive_a_resume(tmp_path):
    est, ref = waves(3)
    loss_fn = calibrated_loss()
    for _ in range(3):
        loss_fn(est, ref)
    weights = dict(loss_fn.auxiliary.weights)
    AtomicCheckpointer(tmp_path, {"loss": loss_fn}).save_checkpoint()

    resumed = calibrated_loss()
    AtomicCheckpointer(tmp_path, {"loss": resumed}).recover_if_possible()
    assert resumed.auxiliary.weights == weights and resumed.step == 3
    other_est, other_ref = waves(4)  # other data must not recalibrate a resumed run
    assert "perceptual" in resumed(other_est, other_ref)
    assert resumed.auxiliary.weights == weights


def test_warmup_then_the_term_and_evaluation_does_not_count():
    est, ref = waves(5)
    loss_fn = SeparationLoss(WeightedSum(ToyFeatures()), warmup_steps=2)
    loss_fn.eval()(est, ref)
    loss_fn.train()
    assert ["perceptual" in loss_fn(est, ref) for _ in range(4)] == [False, False, True, True]
    assert loss_fn.step == 4


def test_a_satisfied_margin_keeps_its_weight_and_bad_settings_are_refused():
    est, ref = waves(6)
    loss_fn = SeparationLoss(TripletLike(ToyFeatures(), alpha=0.0, normalised=True),
                             perceptual_share=0.1, calibration_batches=1,
                             calibrate_by="value").train()
    loss_fn(ref, ref)  # perfect estimates: relu(pos - neg) = 0
    assert loss_fn.auxiliary.weights == {"triplet": 1.0} and loss_fn.calibrated
    with pytest.raises(SpkSepError, match="perceptual_share"):
        SeparationLoss(perceptual_share=1.5)
    with pytest.raises(SpkSepError, match="calibrate_by"):
        SeparationLoss(calibrate_by="norm")
    with pytest.raises(SpkSepError, match="warmup_steps"):
        SeparationLoss(warmup_steps=-1)
