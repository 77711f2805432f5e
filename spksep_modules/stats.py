"""Paired comparisons of two models on the same test mixtures."""

import numpy as np


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
        means) and ``improved`` (share of mixtures where ``ours`` is higher).

    Example
    -------
    >>> base = [1.0, 2.0, 3.0, 4.0]
    >>> d = paired_difference([b + 0.5 for b in base], base)
    >>> d["mean"], d["low"], d["high"], d["improved"]
    (0.5, 0.5, 0.5, 1.0)
    """
    diff = np.asarray(ours, dtype=np.float64) - np.asarray(baseline, dtype=np.float64)
    if diff.ndim != 1 or diff.size == 0:
        raise ValueError(f"paired_difference: expected two equal-length lists, got {diff.shape}")
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, diff.size, size=(resamples, diff.size))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return {"mean": float(diff.mean()), "low": float(low), "high": float(high),
            "improved": float((diff > 0).mean())}
