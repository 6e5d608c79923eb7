"""Confidence intervals by the bootstrap (scipy.stats.bootstrap) for every figure a report shows.

One rule everywhere: a 95% percentile interval over N_RESAMPLES resamples drawn from a generator seeded with SEED.
Resampling the *indices* of the test set, with the same seed, draws the same resamples for every rung, so the
difference of two rungs is measured on paired resamples and has its own, usually much narrower, interval.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from scipy.stats import bootstrap

N_RESAMPLES = 1000
CONFIDENCE = 0.95
SEED = 0
METHOD = (f"{CONFIDENCE:.0%} percentile bootstrap, {N_RESAMPLES} resamples of the test set (seed {SEED}; "
          "the same resamples for every rung, so differences are paired)")


def _interval(data: tuple[np.ndarray, ...], statistic: Callable[..., float], seed: int) -> list[float]:
    result = bootstrap(data, statistic, vectorized=False, paired=False, n_resamples=N_RESAMPLES,
                       confidence_level=CONFIDENCE, method="percentile", random_state=np.random.default_rng(seed))
    low, high = result.confidence_interval
    return [float(low), float(high)]


def interval(statistic: Callable[[np.ndarray], float], n: int, seed: int = SEED) -> list[float] | None:
    """The interval of `statistic(indices)` over resamples of range(n); None when n < 2 (nothing to resample)."""
    if n < 2:
        return None
    return _interval((np.arange(n),), statistic, seed)


def stratified_interval(statistic: Callable[..., float], sizes: list[int], seed: int = SEED) -> list[float] | None:
    """The interval of `statistic(indices_0, indices_1, ...)` when each group is resampled on its own, keeping its
    size (the names of each group of a counterfactual probe); None when a group has fewer than two members."""
    if min(sizes) < 2:
        return None
    return _interval(tuple(np.arange(n) for n in sizes), statistic, seed)


def metric_intervals(metrics: dict[str, Callable], gold: np.ndarray, predicted: np.ndarray) -> dict[str, list]:
    """Per metric `name -> fn(gold, predicted)`, the interval of its value on resamples of the examples."""
    return {name: interval(lambda idx, fn=fn: fn(gold[idx], predicted[idx]), len(gold)) for name, fn in
            metrics.items()}


def paired_difference(metric: Callable, gold: np.ndarray, first: np.ndarray, second: np.ndarray) -> dict:
    """metric(first) - metric(second) on the same examples, with its interval on paired resamples, and whether
    the interval excludes 0 (the two can be told apart)."""
    difference = metric(gold, first) - metric(gold, second)
    bounds = interval(lambda idx: metric(gold[idx], first[idx]) - metric(gold[idx], second[idx]), len(gold))
    distinct = bounds is not None and (bounds[0] > 0 or bounds[1] < 0)
    return {"difference": float(difference), "interval": bounds, "distinguishable": distinct}
