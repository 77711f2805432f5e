"""Paired comparisons of two models on the same test mixtures (and, trained with several
seeds, over seeds too: :func:`seeded_difference`).

A gain of a few tenths of a dB, reported as a single mean, says nothing about whether it
would survive another test set. Both models are scored on the same mixtures, so what
matters is the spread of the *per-mixture* differences:

- a 95% percentile-bootstrap interval of their mean (mixtures resampled with replacement,
  seeded, so the interval is reproducible),
- the share of mixtures on which the model is better,
- the two-sided Wilcoxon signed-rank test of "the differences are centred on zero"
  (``scipy.stats.wilcoxon``: exact for up to 50 mixtures without ties, the normal
  approximation above; zero differences are dropped, as in Wilcoxon's original test). It
  assumes nothing about the shape of the distribution of differences, which for SI-SNRi is
  skewed by the few mixtures a model gets badly wrong.
"""

import warnings

import numpy as np
from scipy import stats as _scipy_stats

# Bootstrap resamples drawn at once: bounds memory (3000 LibriMix test mixtures x 10000
# resamples would be a 240 MB index array in one go) without changing the draws.
_CHUNK = 500


def wilcoxon_p(diff) -> float:
    """Two-sided p-value of the Wilcoxon signed-rank test on paired differences.

    Arguments
    ---------
    diff : sequence of float
        ``ours - baseline``, one per mixture.

    Returns
    -------
    float
        The p-value; 1.0 when every difference is zero (nothing to test).

    Example
    -------
    >>> round(wilcoxon_p([0.5, 0.7, 0.2, 0.9, 0.4, 0.6]), 4)  # all 6 positive: 2 / 2**6
    0.0312
    >>> wilcoxon_p([0.0, 0.0, 0.0])
    1.0
    """
    diff = np.asarray(diff, dtype=np.float64)
    if not np.any(diff != 0):
        return 1.0
    with warnings.catch_warnings():  # small samples: scipy warns that the test is weak
        warnings.simplefilter("ignore")
        return float(_scipy_stats.wilcoxon(diff, zero_method="wilcox",
                                           alternative="two-sided").pvalue)


def paired_difference(ours, baseline, resamples: int = 10000, seed: int = 0) -> dict:
    """Mean per-mixture difference ``ours - baseline`` with a 95% bootstrap interval.

    Arguments
    ---------
    ours, baseline : sequence of float
        One value per test mixture, in the same mixture order.
    resamples : int
        Bootstrap resamples of the mixtures.
    seed : int
        The resampling seed (the interval is reproducible).

    Returns
    -------
    dict
        ``mean``, ``low``, ``high`` (the 2.5th and 97.5th percentiles of the resampled
        means), ``improved`` (share of mixtures where ``ours`` is higher), ``p_value``
        (two-sided Wilcoxon signed-rank, :func:`wilcoxon_p`), ``significant`` (the interval
        excludes zero) and ``n`` (the number of mixtures).

    Example
    -------
    >>> base = [1.0, 2.0, 3.0, 4.0]
    >>> d = paired_difference([b + 0.5 for b in base], base)
    >>> d["mean"], d["low"], d["high"], d["improved"]
    (0.5, 0.5, 0.5, 1.0)
    >>> d["significant"], d["n"], d["p_value"]  # 4 mixtures: the exact test can say 1/8 at best
    (True, 4, 0.125)
    >>> same = paired_difference(base, base)
    >>> [same[k] for k in ("mean", "low", "high", "improved", "p_value", "significant")]
    [0.0, 0.0, 0.0, 0.0, 1.0, False]
    """
    ours = np.asarray(ours, dtype=np.float64)
    baseline = np.asarray(baseline, dtype=np.float64)
    if ours.ndim != 1 or ours.shape != baseline.shape or ours.size == 0:
        raise ValueError(
            f"paired_difference: expected two equal-length lists, got {ours.shape} and "
            f"{baseline.shape}"
        )
    diff = ours - baseline
    if not np.isfinite(diff).all():
        raise ValueError("paired_difference: non-finite values")
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    for start in range(0, resamples, _CHUNK):
        count = min(_CHUNK, resamples - start)
        draws = rng.integers(0, diff.size, size=(count, diff.size))
        means[start : start + count] = diff[draws].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    mean = float(diff.mean())
    # Resampled means of a constant are that constant up to rounding: report it exactly.
    if np.all(diff == diff[0]):
        low = high = mean
    return {"mean": mean, "low": float(low), "high": float(high),
            "improved": float((diff > 0).mean()), "p_value": wilcoxon_p(diff),
            "significant": bool(low > 0 or high < 0), "n": int(diff.size)}


def seed_interval(ours, baseline, level: float = 0.95):
    """Interval of ``mean(ours) - mean(baseline)`` over training seeds: the two-sample
    Student t interval with the seeds' variance pooled over both models.

    Pooled, because the seed-to-seed spread is the training recipe's (same data, same
    schedule, only the seed differs), and it lets one model with a single seed be compared
    with one that has several. A t interval rather than a bootstrap over seeds: with three
    seeds a bootstrap has ten distinct resamples and its interval is far too narrow.

    Arguments
    ---------
    ours, baseline : sequence of float
        One value per seed: a run's mean over the test mixtures.

    Returns
    -------
    (float, float) or (None, None)
        The interval; ``(None, None)`` with one seed on each side (no spread to measure).

    Example
    -------
    >>> low, high = seed_interval([10.2, 10.6, 10.4], [10.0, 10.3, 10.2])
    >>> round(low, 3), round(high, 3)   # +0.233 +- t(4 dof) 2.776 x standard error 0.145
    (-0.17, 0.637)
    >>> seed_interval([10.4], [10.2])
    (None, None)
    """
    a = np.asarray(ours, dtype=np.float64)
    b = np.asarray(baseline, dtype=np.float64)
    dof = a.size + b.size - 2
    if dof < 1:
        return None, None
    pooled = (((a - a.mean()) ** 2).sum() + ((b - b.mean()) ** 2).sum()) / dof
    half = (_scipy_stats.t.ppf(0.5 + level / 2, dof)
            * np.sqrt(pooled * (1 / a.size + 1 / b.size)))
    gap = a.mean() - b.mean()
    return float(gap - half), float(gap + half)


def hierarchical_bootstrap(ours, baseline, resamples: int = 10000, seed: int = 0):
    """95% percentile interval of the mean difference with both sources of variance:
    each resample draws each model's seeds with replacement, then the mixtures with
    replacement (the same mixtures for both models: they stay paired), and takes the mean
    over the drawn seeds and mixtures of ``ours - baseline``.

    Arguments
    ---------
    ours, baseline : array [seeds, mixtures]
        Per-mixture values of each seed (each row a run), the mixtures in the same order.
    resamples, seed : int
        Of the bootstrap (reproducible for a given seed).

    Returns
    -------
    (float, float)

    Example
    -------
    >>> ours = [[1.5, 2.5, 3.5], [1.5, 2.5, 3.5]]   # +0.5 on every mixture, every seed
    >>> hierarchical_bootstrap(ours, [[1.0, 2.0, 3.0]])
    (0.5, 0.5)
    """
    ours = np.asarray(ours, dtype=np.float64)
    baseline = np.asarray(baseline, dtype=np.float64)
    rng = np.random.default_rng(seed)
    mixtures = ours.shape[1]
    means = np.empty(resamples)
    for start in range(0, resamples, _CHUNK):
        count = min(_CHUNK, resamples - start)
        # Seeds drawn as weights (how often each seed is drawn / seeds), so the mean over
        # drawn seeds of every mixture is one matrix product: [count, mixtures].
        per_mixture = (_draw_weights(rng, count, ours.shape[0]) @ ours
                       - _draw_weights(rng, count, baseline.shape[0]) @ baseline)
        drawn = rng.integers(0, mixtures, size=(count, mixtures))
        means[start : start + count] = np.take_along_axis(per_mixture, drawn, 1).mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    if np.all(means == means[0]):  # a constant: exact, not rounded percentiles of it
        low = high = means[0]
    return float(low), float(high)


def _draw_weights(rng, count, seeds):
    drawn = rng.integers(0, seeds, size=(count, seeds))
    weights = np.zeros((count, seeds))
    np.add.at(weights, (np.arange(count)[:, None], drawn), 1.0 / seeds)
    return weights


def seeded_difference(ours, baseline, resamples: int = 10000, seed: int = 0) -> dict:
    """Mean difference ``ours - baseline`` of two models trained with several seeds each,
    scored on the same test mixtures, with three 95% intervals that answer three questions:

    - ``low, high`` (**mixtures**): the per-mixture differences, each mixture's values
      averaged over the model's seeds minus the same for the baseline, bootstrapped over
      mixtures (:func:`paired_difference`). Would *these trained models* keep their gap on
      another test set drawn like this one? Training randomness is held fixed.
    - ``seed_low, seed_high`` (**seeds**): the runs' means over the test set, compared as
      two samples of seeds (:func:`seed_interval`). Would *retraining* keep the gap? The
      test set is held fixed.
    - ``hier_low, hier_high`` (**both**): :func:`hierarchical_bootstrap`, seeds then
      mixtures resampled. Would the gap survive retraining *and* a new test set: the
      interval to read before claiming that one training recipe beats another.

    Arguments
    ---------
    ours, baseline : array [seeds, mixtures]
        Per-mixture values, one row per seed (run), the mixtures in the same order in both.
    resamples, seed : int
        Of both bootstraps (reproducible for a given seed).

    Returns
    -------
    dict
        ``mean``, ``low``, ``high``, ``improved``, ``p_value``, ``significant``, ``n`` as
        :func:`paired_difference` gives them for the seed-averaged values; ``seeds`` and
        ``baseline_seeds`` (the number of runs of each), ``seed_low``, ``seed_high``,
        ``seed_significant`` (``None`` with a single seed on both sides), ``hier_low``,
        ``hier_high``, ``hier_significant``.

    Example
    -------
    >>> base = np.array([[8.0, 10.0, 12.0, 9.0]] * 3) + [[0.0], [0.4], [-0.4]]  # 3 seeds
    >>> ours = base + 0.2 + [[0.5], [-0.5], [0.0]]   # +0.2, but seeds spread by +-0.5
    >>> d = seeded_difference(ours, base)
    >>> round(d["mean"], 3), d["significant"], d["seed_significant"], d["hier_significant"]
    (0.2, True, False, False)
    """
    ours = np.asarray(ours, dtype=np.float64)
    baseline = np.asarray(baseline, dtype=np.float64)
    if (ours.ndim != 2 or baseline.ndim != 2 or ours.shape[1] != baseline.shape[1]
            or 0 in ours.shape or 0 in baseline.shape):
        raise ValueError(
            f"seeded_difference: expected [seeds, mixtures] arrays over the same mixtures, "
            f"got {ours.shape} and {baseline.shape}")
    out = paired_difference(ours.mean(axis=0), baseline.mean(axis=0), resamples, seed)
    seed_low, seed_high = seed_interval(ours.mean(axis=1), baseline.mean(axis=1))
    hier_low, hier_high = hierarchical_bootstrap(ours, baseline, resamples, seed)
    return {
        **out, "seeds": int(ours.shape[0]), "baseline_seeds": int(baseline.shape[0]),
        "seed_low": seed_low, "seed_high": seed_high,
        "seed_significant": None if seed_low is None else bool(seed_low > 0 or seed_high < 0),
        "hier_low": hier_low, "hier_high": hier_high,
        "hier_significant": bool(hier_low > 0 or hier_high < 0),
    }
