"""95% bootstrap intervals that resample whole questions, not single rollouts.

A training step holds 128 distinct questions x 8 rollouts of the same policy: the 8 rollouts of a
question are correlated, so resampling rollouts would pretend there are 1,024 independent draws
and give intervals far too narrow. Each resample draws questions with replacement and gives each
rollout the multiplicity of its question as a weight; the metric functions of
``calibrated_qa.analysis.metrics`` take those weights, so the definitions are never duplicated.
They take a whole batch of resamples at once (a ``(resamples, rollouts)`` weight matrix), so
1,000 resamples cost a few matrix operations, not 1,000 Python-level passes; the draws are the
same, in the same order, as one resample at a time. Without question identity (the original CSV)
the unit falls back to the rollout, and the report says so.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

DEFAULT_RESAMPLES = 1000
LEVEL = 0.95
# Weights per batch of resamples (1,000 resamples x 1,024 rollouts of a step fit in one).
BATCH_ELEMENTS = 1 << 20


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


def resample_multiplicity(
    rng: np.random.Generator, n_clusters: int, resamples: int
) -> NDArray[np.float64]:
    """``(resamples, clusters)``: how often each cluster is drawn, row by row (``n_clusters``
    draws with replacement per row)."""
    multiplicity = np.empty((resamples, n_clusters), dtype=np.float64)
    for row in multiplicity:
        row[:] = np.bincount(rng.integers(0, n_clusters, n_clusters), minlength=n_clusters)
    return multiplicity


def resample_weights(
    rng: np.random.Generator, member: NDArray[np.int64], n_clusters: int, resamples: int
) -> NDArray[np.float64]:
    """``(resamples, rollouts)`` weights: each row draws ``n_clusters`` clusters with replacement
    and gives each rollout the multiplicity of its cluster (``member`` = its cluster's position).

    Row by row, so the draws do not depend on how the resamples are split into batches.
    """
    multiplicity = resample_multiplicity(rng, n_clusters, resamples)
    return np.take(multiplicity, member, axis=1)  # C-contiguous (multiplicity[:, member] is not)


def cluster_bootstrap(
    statistics: Callable[[NDArray[np.float64] | None], Mapping[str, float | NDArray[np.float64]]],
    clusters: NDArray[np.int64],
    *,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    batch_elements: int = BATCH_ELEMENTS,
) -> dict[str, Interval]:
    """Point estimates and 95% percentile intervals of every statistic, resampling clusters.

    ``statistics(weights)`` computes all metrics: ``statistics(None)`` the point estimates (one
    float each), ``statistics(W)`` with ``W`` of shape ``(resamples, rollouts)`` one array per
    metric with a value per row of ``W`` (the metric functions of ``metrics`` do both).
    ``clusters`` gives each rollout its cluster code (question, or its own index as fallback).
    Resamples are evaluated in batches of at most ``batch_elements`` weights (memory stays
    bounded for large inputs). Resamples where a metric is undefined (e.g. AUROC with one class)
    are left out of its interval.
    """
    point = statistics(None)
    if resamples <= 0 or clusters.size == 0:
        return {k: Interval(v, float("nan"), float("nan")) for k, v in point.items()}
    codes, member = np.unique(clusters, return_inverse=True)
    rng = np.random.default_rng(seed)
    draws = {name: np.empty(resamples) for name in point}
    batch = max(1, min(resamples, batch_elements // clusters.size))
    for start in range(0, resamples, batch):
        rows = min(batch, resamples - start)
        values = statistics(resample_weights(rng, member, codes.size, rows))
        for name, value in values.items():
            if np.shape(value) != (rows,):
                raise ValueError(
                    f"statistic {name!r} gave shape {np.shape(value)} for {rows} resamples"
                )
            draws[name][start : start + rows] = value
    return _percentile_intervals(point, draws)


def paired_cluster_bootstrap(
    statistics_a: Callable[[NDArray[np.float64] | None], Mapping[str, float | NDArray[np.float64]]],
    statistics_b: Callable[[NDArray[np.float64] | None], Mapping[str, float | NDArray[np.float64]]],
    member_a: NDArray[np.int64],
    member_b: NDArray[np.int64],
    n_clusters: int,
    *,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    batch_elements: int = BATCH_ELEMENTS,
) -> dict[str, Interval]:
    """Difference ``b - a`` of every statistic, with a paired 95% percentile interval.

    Both samples measure the same clusters (questions): ``member_a``/``member_b`` give each
    rollout of ``a``/``b`` its cluster's position in ``range(n_clusters)``. Each resample draws
    the clusters once and weights the rollouts of *both* samples with the same multiplicities,
    so the question-to-question variation common to both cancels in the difference.
    """
    point_a, point_b = statistics_a(None), statistics_b(None)
    point = {name: point_b[name] - point_a[name] for name in point_a}
    if resamples <= 0 or n_clusters == 0:
        return {k: Interval(v, float("nan"), float("nan")) for k, v in point.items()}
    rng = np.random.default_rng(seed)
    draws = {name: np.empty(resamples) for name in point}
    size = max(member_a.size, member_b.size, 1)
    batch = max(1, min(resamples, batch_elements // size))
    for start in range(0, resamples, batch):
        rows = min(batch, resamples - start)
        multiplicity = resample_multiplicity(rng, n_clusters, rows)
        values_a = statistics_a(np.take(multiplicity, member_a, axis=1))
        values_b = statistics_b(np.take(multiplicity, member_b, axis=1))
        for name in point:
            draws[name][start : start + rows] = np.asarray(values_b[name]) - np.asarray(
                values_a[name]
            )
    return _percentile_intervals(point, draws)


def _percentile_intervals(
    point: Mapping[str, float | NDArray[np.float64]], draws: Mapping[str, NDArray[np.float64]]
) -> dict[str, Interval]:
    """Point estimates with the 95% percentile interval of their finite draws."""
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
