"""95% bootstrap intervals that resample whole questions (a step's 8 rollouts of a question are
correlated), as weights on each question's tally: no metric is defined twice."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from calibrated_qa.analysis.metrics import Tally, finish, question_groups, tally
from calibrated_qa.analysis.readers import Rollouts

DEFAULT_RESAMPLES = 1000
LEVEL = 0.95
BATCH_WEIGHTS = 1 << 20  # multiplicities held at once (memory stays bounded for large inputs)


@dataclass(frozen=True)
class Interval:
    """A point estimate with its percentile bootstrap interval (NaN when undefined)."""

    value: float
    low: float = float("nan")
    high: float = float("nan")

    def format(self, digits: int = 3, sign: str = "") -> str:
        """``0.812 [0.790, 0.833]``; ``n/a`` when the metric is undefined."""
        if np.isnan(self.value):
            return "n/a"
        if np.isnan(self.low):
            return f"{self.value:{sign}.{digits}f}"
        return (
            f"{self.value:{sign}.{digits}f} [{self.low:{sign}.{digits}f}, "
            f"{self.high:{sign}.{digits}f}]"
        )


def bootstrap(
    t: Tally, *, resamples: int = DEFAULT_RESAMPLES, seed: int = 0, minus: Tally | None = None
) -> dict[str, Interval]:
    """Every metric of ``t`` with a 95% percentile interval, resampling its rows (units);
    with ``minus`` (the same units), the paired difference ``t - minus``."""

    def metrics(sums_t: np.ndarray, sums_minus: np.ndarray | None) -> dict[str, float]:
        values = finish(sums_t, t.levels, t.identity)
        if minus is None or sums_minus is None:
            return values
        other = finish(sums_minus, minus.levels, minus.identity)
        return {name: values[name] - other[name] for name in values}

    units = t.sums.shape[0]
    point = metrics(t.sums.sum(axis=0), None if minus is None else minus.sums.sum(axis=0))
    if resamples <= 0 or units == 0:
        return {name: Interval(value) for name, value in point.items()}
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {name: [] for name in point}
    batch = max(1, BATCH_WEIGHTS // units)
    for start in range(0, resamples, batch):
        rows = range(min(batch, resamples - start))
        drawn = np.array(
            [np.bincount(rng.integers(0, units, units), minlength=units) for _ in rows]
        )
        weighted = drawn.astype(np.float64) @ t.sums
        weighted_minus = None if minus is None else drawn.astype(np.float64) @ minus.sums
        for i in rows:
            values = metrics(weighted[i], None if weighted_minus is None else weighted_minus[i])
            for name, value in values.items():
                draws[name].append(value)
    intervals = {}
    tail = (1 - LEVEL) / 2 * 100
    for name, value in point.items():
        finite = np.asarray(draws[name])
        finite = finite[np.isfinite(finite)]
        if finite.size == 0:
            intervals[name] = Interval(value)
        else:
            low, high = np.percentile(finite, [tail, 100 - tail])
            intervals[name] = Interval(value, float(low), float(high))
    return intervals


def with_intervals(
    r: Rollouts, *, resamples: int = DEFAULT_RESAMPLES, seed: int = 0
) -> tuple[dict[str, Interval], str]:
    """Metrics with 95% intervals, and the resampling unit used (questions, or rollouts)."""
    if r.has_identity:
        unit, n_units, words = (*question_groups(r), "questions")
    else:
        unit, n_units, words = np.arange(len(r)), len(r), "rollouts (no question identity)"
    return bootstrap(tally(r, unit, n_units), resamples=resamples, seed=seed), words
