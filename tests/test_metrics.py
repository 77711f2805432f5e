"""Metrics: SI-SNR by hand, SDR against mir_eval and fast_bss_eval, STOI, evaluate_mixture."""

import warnings

import numpy as np
import pytest
import torch

from spksep_modules.metrics import (
    best_permutation,
    evaluate_mixture,
    pairwise_si_snr,
    sdr,
    si_snr,
    stoi,
)

SR = 16000


def _zero_mean(x):
    return x - x.mean(-1, keepdim=True)


def _orthogonal_noise(ref, snr_db, gen):
    """Zero-mean noise orthogonal to zero-mean ``ref`` with energy ``|ref|^2 / 10^(snr/10)``."""
    ref = _zero_mean(ref)
    noise = _zero_mean(torch.randn(ref.shape, generator=gen, dtype=ref.dtype))
    noise = noise - (noise @ ref) / (ref @ ref) * ref
    return noise * torch.sqrt((ref @ ref) / (noise @ noise) / 10 ** (snr_db / 10))


def test_si_snr_hand_computed_zero_db():
    # ref and the added noise are zero-mean, orthogonal and of equal energy: 0 dB.
    ref = torch.tensor([1.0, -1.0, 1.0, -1.0])
    est = ref + torch.tensor([1.0, 1.0, -1.0, -1.0])
    assert si_snr(est, ref).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("snr_db", [-5.0, 0.0, 12.5, 30.0])
def test_si_snr_known_value_with_orthogonal_noise(snr_db):
    gen = torch.Generator().manual_seed(0)
    ref = torch.randn(2000, generator=gen, dtype=torch.float64)
    est = _zero_mean(ref) + _orthogonal_noise(ref, snr_db, gen)
    assert si_snr(est, ref).item() == pytest.approx(snr_db, abs=1e-6)


def test_si_snr_is_scale_and_offset_invariant_and_batched():
    gen = torch.Generator().manual_seed(1)
    ref = torch.randn(2, 3, 1000, generator=gen, dtype=torch.float64)
    est = ref + 0.5 * torch.randn(2, 3, 1000, generator=gen, dtype=torch.float64)
    base = si_snr(est, ref)
    assert base.shape == (2, 3)
    assert torch.allclose(si_snr(3.7 * est, ref), base, atol=1e-9)
    assert torch.allclose(si_snr(-0.2 * est + 5.0, ref), base, atol=1e-9)
    assert torch.allclose(si_snr(est, 10.0 * ref), base, atol=1e-9)
    for b in range(2):
        for c in range(3):
            assert base[b, c] == pytest.approx(si_snr(est[b, c], ref[b, c]).item())


def test_si_snr_perfect_estimate_is_very_large_and_finite():
    ref = torch.randn(1000)
    value = si_snr(ref.clone(), ref)
    assert torch.isfinite(value) and value > 80


def test_pairwise_si_snr_layout():
    gen = torch.Generator().manual_seed(2)
    est = torch.randn(3, 500, generator=gen)
    ref = torch.randn(3, 500, generator=gen)
    pair = pairwise_si_snr(est, ref)
    for i in range(3):
        for j in range(3):
            assert pair[i, j].item() == pytest.approx(si_snr(est[j], ref[i]).item(), abs=1e-5)


def _mixture_estimates(num_spks, num_samples, seed):
    """References and imperfect estimates: filtered target, interference and noise."""
    rng = np.random.default_rng(seed)
    ref = rng.standard_normal((num_spks, num_samples))
    est = np.empty_like(ref)
    for j in range(num_spks):
        taps = 0.3 * rng.standard_normal(24)
        taps[0] = 1.0
        est[j] = np.convolve(ref[j], taps)[:num_samples]
        est[j] += 0.3 * ref[(j + 1) % num_spks] + 0.2 * rng.standard_normal(num_samples)
    return ref, est


@pytest.mark.parametrize("num_spks", [2, 3])
def test_sdr_matches_mir_eval(num_spks):
    import mir_eval.separation

    ref, est = _mixture_estimates(num_spks, 6000, seed=num_spks)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # bss_eval_sources is deprecated there
        expected = mir_eval.separation.bss_eval_sources(ref, est, compute_permutation=False)[0]
    ours = sdr(torch.from_numpy(est), torch.from_numpy(ref))
    assert ours.shape == (num_spks,)
    np.testing.assert_allclose(ours.numpy(), expected, atol=1e-2)


def test_sdr_matches_fast_bss_eval_on_float32_input():
    import fast_bss_eval

    ref, est = _mixture_estimates(2, 20000, seed=7)
    ref32, est32 = torch.from_numpy(ref).float(), torch.from_numpy(est).float()
    # fast_bss_eval's torch backend (its numpy one fails with numpy 2).
    expected = fast_bss_eval.bss_eval_sources(
        ref32.double(), est32.double(), compute_permutation=False
    )[0]
    np.testing.assert_allclose(sdr(est32, ref32).numpy(), expected.numpy(), atol=1e-2)


def test_sdr_forgives_short_filters_but_si_snr_does_not():
    gen = torch.Generator().manual_seed(3)
    ref = torch.randn(2, 4000, generator=gen, dtype=torch.float64)
    ref[:, -8:] = 0.0  # so cropping the filtered signal to 4000 samples loses nothing
    taps = torch.tensor([1.0, -0.7, 0.4, 0.2], dtype=torch.float64)
    filtered = torch.stack(
        [torch.from_numpy(np.convolve(r.numpy(), taps.numpy())[:4000]) for r in ref]
    )
    assert (sdr(filtered, ref) > 100).all()
    assert (si_snr(filtered, ref) < 5).all()


def test_sdr_rejects_bad_shapes():
    with pytest.raises(ValueError):
        sdr(torch.randn(2, 100), torch.randn(2, 99))
    with pytest.raises(ValueError):
        sdr(torch.randn(100), torch.randn(100))


def test_stoi_identical_near_one_and_noise_lower():
    gen = torch.Generator().manual_seed(4)
    t = torch.arange(SR) / SR
    # Amplitude-modulated noise: speech-like envelope so that no frame counts as silent.
    ref = torch.randn(SR, generator=gen) * (1.2 + torch.sin(2 * torch.pi * 4 * t))
    assert stoi(ref, ref, SR) > 0.99
    noisy = ref + 2.0 * torch.randn(SR, generator=gen)
    unrelated = torch.randn(SR, generator=gen)
    assert stoi(noisy, ref, SR) < 0.9
    assert stoi(unrelated, ref, SR) < stoi(noisy, ref, SR)
    assert stoi(ref.numpy(), ref.numpy(), SR) == pytest.approx(stoi(ref, ref, SR))


def test_best_permutation():
    pair = torch.tensor([[1.0, 9.0, 0.0], [0.0, 0.0, 5.0], [7.0, 0.0, 0.0]])
    assert best_permutation(pair) == (1, 2, 0)


def _evaluation_case(num_spks, seed):
    gen = torch.Generator().manual_seed(seed)
    t = torch.arange(SR) / SR
    envelope = 1.2 + torch.sin(2 * torch.pi * 3 * t)
    ref = torch.randn(SR, num_spks, generator=gen, dtype=torch.float64) * envelope[:, None]
    mix = ref.sum(-1)
    est = ref + 0.3 * torch.randn(SR, num_spks, generator=gen, dtype=torch.float64)
    return mix, est, ref


@pytest.mark.parametrize("num_spks", [2, 3])
def test_evaluate_mixture_values_and_permutation(num_spks):
    mix, est, ref = _evaluation_case(num_spks, seed=5)
    result = evaluate_mixture(mix, est, ref, SR)
    assert set(result) == {"si_snr", "si_snr_i", "sdr", "sdr_i", "stoi"}

    si_est = si_snr(est.t(), ref.t())
    si_mix = si_snr(mix.expand(num_spks, -1), ref.t())
    sdr_est = sdr(est.t(), ref.t())
    sdr_mix = sdr(mix.expand(num_spks, -1), ref.t())
    assert result["si_snr"] == pytest.approx(si_est.mean().item(), abs=1e-6)
    assert result["si_snr_i"] == pytest.approx((si_est - si_mix).mean().item(), abs=1e-6)
    assert result["sdr"] == pytest.approx(sdr_est.mean().item(), abs=1e-6)
    assert result["sdr_i"] == pytest.approx((sdr_est - sdr_mix).mean().item(), abs=1e-6)
    assert result["si_snr_i"] > 0 and result["sdr_i"] > 0
    assert 0.5 < result["stoi"] <= 1.0

    # Estimates in another order score the same: alignment happens inside.
    order = list(range(1, num_spks)) + [0]
    permuted = evaluate_mixture(mix, est[:, order], ref, SR)
    for key, value in result.items():
        assert permuted[key] == pytest.approx(value, abs=1e-9)


def test_evaluate_mixture_rejects_mismatched_lengths():
    mix, est, ref = _evaluation_case(2, seed=6)
    with pytest.raises(ValueError):
        evaluate_mixture(mix, est[:-10], ref, SR)
