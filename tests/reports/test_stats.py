"""Paired statistics on fabricated per-mixture scores with known differences."""

import numpy as np
import pytest
from scipy import stats as scipy_stats

from spksep_modules.reports.stats import paired_difference, wilcoxon_p


def scores(n=200, seed=0):
    return np.random.default_rng(seed).normal(10.0, 4.0, n)  # SI-SNRi-like, wide spread


def test_better_on_every_mixture_gives_an_interval_above_zero():
    base = scores()
    gain = np.random.default_rng(1).uniform(0.05, 0.6, base.size)  # small, always positive
    d = paired_difference(base + gain, base)
    assert d["low"] > 0 and d["high"] > d["low"] and d["significant"]
    assert d["mean"] == pytest.approx(gain.mean())
    assert d["low"] <= d["mean"] <= d["high"]
    assert d["improved"] == 1.0
    assert d["p_value"] < 1e-10 and d["n"] == base.size


def test_identical_runs_give_zero():
    base = scores()
    d = paired_difference(base, base.copy())
    assert (d["mean"], d["low"], d["high"], d["improved"]) == (0.0, 0.0, 0.0, 0.0)
    assert d["p_value"] == 1.0 and not d["significant"]


def test_worse_on_every_mixture_gives_an_interval_below_zero():
    base = scores()
    d = paired_difference(base - 0.3, base)
    assert d["high"] < 0 and d["significant"] and d["improved"] == 0.0


def test_a_gap_within_the_noise_is_not_significant():
    """A mean gap of 0.2 dB that is noise around zero: the interval spans zero."""
    base = scores(n=100)
    noise = np.random.default_rng(2).normal(0.0, 3.0, base.size)
    d = paired_difference(base + noise, base)
    assert d["low"] < 0 < d["high"] and not d["significant"]
    assert d["p_value"] > 0.05


def test_bootstrap_is_seeded_and_matches_a_direct_computation():
    base, ours = scores(50, 3), scores(50, 4)
    a = paired_difference(ours, base, resamples=2000, seed=7)
    assert a == paired_difference(ours, base, resamples=2000, seed=7)
    assert a != paired_difference(ours, base, resamples=2000, seed=8)
    diff = ours - base  # the same draws in one go (the function draws them in chunks)
    idx = np.random.default_rng(7).integers(0, diff.size, size=(2000, diff.size))
    low, high = np.percentile(diff[idx].mean(axis=1), [2.5, 97.5])
    assert (a["low"], a["high"]) == pytest.approx((low, high))


def test_p_value_is_scipys_two_sided_wilcoxon():
    base, ours = scores(40, 5), scores(40, 6)
    expected = scipy_stats.wilcoxon(ours - base, alternative="two-sided").pvalue
    assert paired_difference(ours, base)["p_value"] == pytest.approx(expected)
    assert wilcoxon_p([0.0, 0.0]) == 1.0


def test_unpaired_or_non_finite_input_is_refused():
    with pytest.raises(ValueError, match="equal-length"):
        paired_difference([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="non-finite"):
        paired_difference([1.0, float("inf")], [1.0, 2.0])
