"""uPIT SI-SNR loss (against SpeechBrain) and the perceptual distances and losses (by hand)."""

import pytest
import torch
from torch import nn

from spksep_modules.losses import (
    NegativeOnly,
    PositiveOnly,
    SeparationLoss,
    TripletLike,
    WeightedSum,
)
from spksep_modules.losses.perceptual import (
    NEG_FLOOR,
    frame_distance,
    perceptual_distances,
    triplet_like_loss,
    weighted_sum_loss,
)
from spksep_modules.losses.pit import pit_si_snr
from spksep_modules.models.base import SeparatorOutput
from spksep_modules.metrics import si_snr

# ---------------------------------------------------------------- uPIT SI-SNR


@pytest.mark.parametrize("num_spks", [2, 3])
def test_pit_matches_speechbrain(num_spks):
    from speechbrain.nnet.losses import PitWrapper, cal_si_snr, get_si_snr_with_pitwrapper

    gen = torch.Generator().manual_seed(num_spks)
    ref = torch.randn(4, 600, num_spks, generator=gen)
    noise = torch.randn(4, 600, num_spks, generator=gen)
    est = ref[..., torch.randperm(num_spks, generator=gen)] + 0.8 * noise
    est[1] = torch.randn(600, num_spks, generator=gen)  # one poor example too

    neg, est_aligned, perm = pit_si_snr(est, ref)
    # SpeechBrain's cal_si_snr scales its input in place: give it copies.
    expected = get_si_snr_with_pitwrapper(ref.clone(), est.clone())
    assert torch.allclose(neg, expected, atol=1e-4)

    # SpeechBrain's permutation maps estimate -> reference; ours maps reference -> estimate.
    _, sb_perms = PitWrapper(cal_si_snr)(ref.clone(), est.clone())
    for b, p in enumerate(sb_perms):
        assert perm[b].tolist() == torch.argsort(torch.tensor(p)).tolist()
    for b in range(4):
        assert torch.equal(est_aligned[b], est[b][:, perm[b]])


def test_pit_recovers_per_example_permutations():
    gen = torch.Generator().manual_seed(0)
    ref = torch.randn(3, 800, 3, generator=gen)
    orders = [[0, 1, 2], [2, 0, 1], [1, 2, 0]]
    est = torch.stack([ref[b][:, orders[b]] for b in range(3)])
    est = est + 0.05 * torch.randn(3, 800, 3, generator=gen)
    neg, est_aligned, perm = pit_si_snr(est, ref)
    for b in range(3):
        # est[:, perm[b, i]] is ref i, i.e. orders[b][perm[b, i]] == i
        assert [orders[b][j] for j in perm[b].tolist()] == [0, 1, 2]
    aligned_si_snr = si_snr(est_aligned.transpose(1, 2), ref.transpose(1, 2)).mean(-1)
    assert torch.allclose(-neg, aligned_si_snr, atol=1e-5)
    assert (-neg > 20).all()


def test_pit_loss_gradient_and_outputs():
    gen = torch.Generator().manual_seed(1)
    ref = torch.randn(2, 500, 2, generator=gen)
    est = (ref.flip(-1) + 0.3 * torch.randn(2, 500, 2, generator=gen)).requires_grad_(True)
    out = SeparationLoss()(est, ref)
    assert out["loss"].shape == () and out["si_snr"].shape == (2,)
    assert out["loss"].item() == pytest.approx(-out["si_snr"].mean().item())
    assert not out["si_snr"].requires_grad
    assert pit_si_snr(est, ref)[2].tolist() == [[1, 0], [1, 0]]
    out["loss"].backward()
    assert torch.isfinite(est.grad).all() and est.grad.abs().sum() > 0
    # A gradient step along -grad improves the loss.
    with torch.no_grad():
        stepped = SeparationLoss()(est - 1e-2 * est.grad / est.grad.norm(), ref)["loss"]
    assert stepped < out["loss"]


def test_pit_rejects_bad_shapes():
    with pytest.raises(ValueError):
        pit_si_snr(torch.randn(2, 100, 2), torch.randn(2, 100, 3))


# ---------------------------------------------------------------- distances


def test_frame_distance_by_hand_and_crop():
    a = torch.zeros(1, 2, 4)
    b = torch.tensor([[[1.0, 1.0, 1.0, 1.0], [2.0, 0.0, 0.0, 0.0]]])
    # (4 / 4) + (4 / 4)
    assert frame_distance(a, b).tolist() == [2.0]
    longer = torch.cat([b, torch.full((1, 2, 4), 9.0)], dim=1)  # two extra frames ignored
    assert frame_distance(a, longer).tolist() == [2.0]
    with pytest.raises(ValueError):
        frame_distance(a, torch.zeros(1, 5, 4))


def _scalar_features(values):
    """``[batch][spk] -> one 1-d frame each``: tensor ``[B, C, 1, 1]``."""
    return torch.tensor(values, dtype=torch.float64)[..., None, None]


def test_distances_two_speakers_by_hand():
    ref = _scalar_features([[0.0, 10.0]])
    est = _scalar_features([[1.0, 7.0]])
    # d(ref0, est0) = 1, d(ref0, est1) = 49, d(ref1, est0) = 81, d(ref1, est1) = 9
    pos, neg = perceptual_distances(est, ref)
    assert pos.tolist() == [[1.0, 9.0]]
    assert neg.tolist() == [[49.0, 81.0]]


def test_distances_three_speakers_by_hand():
    ref = _scalar_features([[0.0, 10.0, 20.0], [0.0, 0.0, 0.0]])
    est = _scalar_features([[1.0, 12.0, 17.0], [1.0, 2.0, 3.0]])
    pos, neg = perceptual_distances(est, ref)
    # ref0: [1, 144, 289]; ref1: [81, 4, 49]; ref2: [361, 64, 9]
    assert pos[0].tolist() == [1.0, 4.0, 9.0]
    assert neg[0].tolist() == [433.0, 130.0, 425.0]
    # all references equal: the other estimates' distances
    assert pos[1].tolist() == [1.0, 4.0, 9.0]
    assert neg[1].tolist() == [13.0, 10.0, 5.0]


def test_distances_multi_frame_and_dim():
    gen = torch.Generator().manual_seed(2)
    est = torch.randn(2, 3, 5, 4, generator=gen)
    ref = torch.randn(2, 3, 5, 4, generator=gen)
    pos, neg = perceptual_distances(est, ref)
    for b in range(2):
        for i in range(3):
            d = [((ref[b, i] - est[b, j]) ** 2).sum().item() / 4 for j in range(3)]
            assert pos[b, i].item() == pytest.approx(d[i], rel=1e-5)
            assert neg[b, i].item() == pytest.approx(sum(d) - d[i], rel=1e-5)


def test_weighted_sum_by_hand():
    pos = torch.tensor([[1.0, 9.0]])
    neg = torch.tensor([[49.0, 81.0]])
    assert weighted_sum_loss(pos, neg).item() == pytest.approx(100 * 5 + 1e-3 / 65)
    assert weighted_sum_loss(pos, neg, l1=2.0, l2=13.0).item() == pytest.approx(2 * 5 + 13.0 / 65)


def test_weighted_sum_floor_caps_the_repulsion_term():
    pos = torch.zeros(2, 2)
    neg = torch.full((2, 2), 1e-7, requires_grad=True)
    loss = weighted_sum_loss(pos, neg)
    assert loss.item() == pytest.approx(1e-3 / NEG_FLOOR)
    loss.backward()
    assert torch.all(neg.grad == 0)
    # above the floor the term is l2 / D_neg and pushes D_neg up
    neg_big = torch.full((2, 2), 0.5, requires_grad=True)
    weighted_sum_loss(pos, neg_big).backward()
    assert torch.all(neg_big.grad < 0)
    lower_floor = weighted_sum_loss(pos, torch.full((2, 2), 1e-7), neg_floor=1e-5)
    assert lower_floor.item() == pytest.approx(1e-3 / 1e-5)


def test_triplet_like_with_and_without_active_margin():
    pos = torch.tensor([[1.0, 9.0]])
    assert triplet_like_loss(pos, torch.tensor([[50.0, 100.0]])).item() == 0.0
    # first pair inside the margin: 1 - 1.001 + 0.0035 = 0.0025; second satisfied
    neg = torch.tensor([[1.001, 100.0]], dtype=torch.float64)
    assert triplet_like_loss(pos.double(), neg).item() == pytest.approx(0.0025 / 2)
    assert triplet_like_loss(pos.double(), neg, alpha=0.5).item() == pytest.approx((0.499) / 2)


# ---------------------------------------------------------------- PerceptualLoss


class ToyRepresentation(nn.Module):
    """Frozen strided Conv1d: ``[N, T] -> [N, frames, 4]``; counts its calls."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(1, 4, kernel_size=16, stride=8)
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()
        self.batch_sizes = []

    def forward(self, wav):
        self.batch_sizes.append(wav.shape[0])
        return torch.tanh(self.conv(wav.unsqueeze(1))).transpose(1, 2)


def _waves(batch, num_spks, seed):
    gen = torch.Generator().manual_seed(seed)
    ref = torch.randn(batch, 400, num_spks, generator=gen)
    est = ref + 0.5 * torch.randn(batch, 400, num_spks, generator=gen)
    return est, ref


TERMS = {
    "weighted_sum": lambda rep: WeightedSum(rep, l1=7.0, l2=11.0),
    "triplet_like": lambda rep: TripletLike(rep, alpha=0.2),
    "pos": lambda rep: PositiveOnly(rep, l1=7.0),
    "neg": lambda rep: NegativeOnly(rep, l2=11.0),
}


@pytest.mark.parametrize("num_spks", [2, 3])
@pytest.mark.parametrize("kind", TERMS)
def test_perceptual_terms_in_the_separation_loss(kind, num_spks):
    torch.manual_seed(0)
    rep = ToyRepresentation()
    est, ref = _waves(2, num_spks, seed=3)
    loss_fn = SeparationLoss(TERMS[kind](rep), lb=0.5, lp=3.0)
    out = loss_fn(est, ref)  # est is already in reference order: PIT keeps it
    # one batched call per side, each on batch * num_spks waveforms
    assert rep.batch_sizes == [2 * num_spks, 2 * num_spks]

    def feats(w):
        return torch.stack([rep(w[:, :, i]) for i in range(num_spks)], dim=1)

    pos, neg = perceptual_distances(feats(est), feats(ref))
    expected = {
        "weighted_sum": 7.0 * pos.mean() + 11.0 / neg.mean(),
        "triplet_like": torch.relu(pos - neg + 0.2).mean(),
        "pos": 7.0 * pos.mean(),
        "neg": 11.0 / neg.mean(),
    }[kind]
    basic = -si_snr(est.transpose(1, 2), ref.transpose(1, 2)).mean()
    assert out["perceptual"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert out["loss"].item() == pytest.approx(0.5 * basic.item() + 3.0 * expected.item(), rel=1e-4)
    assert out["D_pos"].item() == pytest.approx(pos.mean().item(), rel=1e-5)
    assert out["D_neg"].item() == pytest.approx(neg.mean().item(), rel=1e-5)
    assert not out["D_pos"].requires_grad and not out["D_neg"].requires_grad


def test_auxiliary_term_counts_in_training_only_and_extras_are_scored():
    est, ref = _waves(2, 2, seed=7)
    loss_fn = SeparationLoss(WeightedSum(ToyRepresentation()))
    out = SeparatorOutput.of(est, intermediate=ref.flip(-1))
    trained = loss_fn.train()(out, ref)
    evaluated = loss_fn.eval()(out, ref)
    assert "perceptual" in trained and "perceptual" not in evaluated
    assert evaluated["loss"].item() == pytest.approx(-evaluated["si_snr"].mean().item())
    assert (evaluated["si_snr_intermediate"] > 100).all()  # PIT undoes the flip
    # A batch with a non-finite SI-SNR gets no auxiliary term (its loss is skipped anyway).
    bad = est.clone()
    bad[0, 0, 0] = float("nan")
    assert "perceptual" not in loss_fn.train()(bad, ref)


def test_triplet_margin_is_active_in_the_module():
    rep = ToyRepresentation()
    est, ref = _waves(1, 2, seed=4)
    out_small = TripletLike(rep, alpha=0.0035)(est, ref)
    assert out_small["perceptual"].item() == 0.0  # good estimates: margin satisfied
    big = float(out_small["D_neg"] - out_small["D_pos"]) * 10
    out_big = TripletLike(rep, alpha=big)(est, ref)
    assert out_big["perceptual"] > 0


@pytest.mark.parametrize("num_spks", [2, 3])
def test_pit_then_perceptual_is_permutation_invariant(num_spks):
    torch.manual_seed(1)
    rep = ToyRepresentation()
    est, ref = _waves(2, num_spks, seed=5)
    loss_fn = SeparationLoss(WeightedSum(rep))
    order = list(range(1, num_spks)) + [0]
    plain, permuted = loss_fn(est, ref), loss_fn(est[..., order], ref)
    for key in ("loss", "perceptual", "D_pos", "D_neg"):
        assert permuted[key].item() == pytest.approx(plain[key].item(), rel=1e-6)
    # without alignment the distances would differ
    unaligned = WeightedSum(rep)(est[..., order], ref)
    assert unaligned["D_pos"] > plain["D_pos"]


def test_gradient_reaches_estimate_not_frozen_weights_nor_reference():
    rep = ToyRepresentation()
    est, ref = _waves(2, 2, seed=6)
    est.requires_grad_(True)
    ref.requires_grad_(True)
    out = SeparationLoss(WeightedSum(rep))(est, ref)
    out["loss"].backward()
    assert torch.isfinite(est.grad).all() and est.grad.abs().sum() > 0
    assert all(p.grad is None for p in rep.parameters())


def test_rejects_trainable_representation():
    for term in (WeightedSum, TripletLike, PositiveOnly, NegativeOnly):
        with pytest.raises(ValueError, match="trainable"):
            term(nn.Conv1d(1, 4, 3))


def test_the_loss_runs_in_fp32_under_bf16_autocast():
    est, ref = _waves(2, 2, seed=9)
    loss_fn = SeparationLoss(WeightedSum(ToyRepresentation()))
    exact = loss_fn(est, ref)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = loss_fn(est.bfloat16(), ref)
    assert low["loss"].dtype == torch.float32
    # Only the estimates' own bf16 rounding remains (~50 dB SNR): SI-SNR agrees to 0.05 dB.
    assert float(low["si_snr"].mean()) == pytest.approx(float(exact["si_snr"].mean()), abs=0.05)
