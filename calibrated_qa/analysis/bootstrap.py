"""95% bootstrap intervals that resample whole questions, not single rollouts.

A training step holds 128 distinct questions x 8 rollouts of the same policy: the 8 rollouts of a
question are correlated, so resampling rollouts would pretend there are 1,024 independent draws
and give intervals far too narrow. Each resample draws questions with replacement and gives each
rollout the multiplicity of its question as a weight; the metric functions of
``calibrated_qa.analysis.metrics`` take those weights, so the definitions are never duplicated.
Without question identity (the original CSV) the unit falls back to the rollout, and the report
says so.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

DEFAULT_RESAMPLES = 1000
LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    """A point estimate with its percentile bootstrap interval (NaN when undefined)."""

    value: float
    low: float
    high: float

    def format(self, digits: int = 3) -> str:
        """``0.812 [0.790, 0.833]``; ``n/a`` when the metric is undefined."""
        if np.isnan(self.value):
            return "n/a"
        if np.isnan(self.low):
            return f"{self.value:.{digits}f}"
        return f"{self.value:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"


def cluster_bootstrap(
    statistics: Callable[[NDArray[np.float64] | None], dict[str, float]],
    clusters: NDArray[np.int64],
    *,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> dict[str, Interval]:
    """Point estimates and 95% percentile intervals of every statistic, resampling clusters.

    ``statistics(weights)`` computes all metrics under per-rollout weights (None = unweighted);
    ``clusters`` gives each rollout its cluster code (question, or its own index as fallback).
    Resamples where a metric is undefined (e.g. AUROC with one class) are left out of its interval.
    """
    point = statistics(None)
    if resamples <= 0 or clusters.size == 0:
        return {k: Interval(v, float("nan"), float("nan")) for k, v in point.items()}
    codes, member = np.unique(clusters, return_inverse=True)
    rng = np.random.default_rng(seed)
    draws = {name: np.empty(resamples) for name in point}
    for b in range(resamples):
        multiplicity = np.bincount(rng.integers(0, codes.size, codes.size), minlength=codes.size)
        values = statistics(multiplicity[member].astype(np.float64))
        for name, value in values.items():
            draws[name][b] = value
    tail = (1 - LEVEL) / 2 * 100
    intervals = {}
    for name, value in point.items():
        finite = draws[name][np.isfinite(draws[name])]
        if finite.size == 0:
            intervals[name] = Interval(value, float("nan"), float("nan"))
        else:
            low, high = np.percentile(finite, [tail, 100 - tail])
            intervals[name] = Interval(value, float(low), float(high))
    return intervals
