"""Metrics of a set of rollouts (a step, a group of steps, a whole eval log), with intervals.

Composes the definitions of ``metrics`` (nothing is redefined here) into the rows of
``metrics_by_step.csv``, the self-ensemble, and the bootstrap intervals of ``summary.md``.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from calibrated_qa.analysis.bootstrap import DEFAULT_RESAMPLES, Interval, cluster_bootstrap
from calibrated_qa.analysis.metrics import (
    PENALTY_TOLERANCE,
    brier,
    expected_calibration_error,
    grouped_sum,
    rollout_metrics,
    weighted_mean,
)
from calibrated_qa.analysis.readers import Rollouts

# Column order of metrics_by_step.csv after "step" (and of the summary's tables).
METRIC_NAMES = (
    "parse_rate",
    "accuracy",
    "ece_pyes",
    "ece_conf",
    "brier",
    "auroc",
    "reward",
    "calibration_reward",
    "length_penalty",
    "mean_length",
    "penalized_frac",
    "mean_p_yes",
    "ensemble_brier",
    "ensemble_ece_pyes",
)


def group_keys(rollouts: Rollouts) -> NDArray[np.int64]:
    """One code per (step, question): the unit of the self-ensemble and of the bootstrap."""
    if not rollouts.has_identity:
        raise ValueError("these rollouts carry no question identity")
    width = int(rollouts.question.max()) + 1
    return (rollouts.step - rollouts.step.min()) * width + rollouts.question


def ensemble(
    rollouts: Rollouts, weights: NDArray[np.float64] | None = None
) -> tuple[NDArray[np.float64], NDArray[np.bool_], NDArray[np.float64], int]:
    """Self-ensemble: mean P(YES) over the parseable rollouts of each (step, question) group.

    Returns (mean P(YES), truth, group weight, groups without any parseable rollout). Grouping
    is by question identity, so interleaved appends from several workers cannot mix questions.
    With weights of shape ``(resamples, n)`` the group weights have shape ``(resamples, groups)``.
    """
    ok = rollouts.parseable
    keys = group_keys(rollouts)
    codes, inverse = np.unique(keys, return_inverse=True)
    n_groups = codes.size
    w = np.ones(len(rollouts)) if weights is None else weights
    n_parseable = np.bincount(inverse, weights=ok.astype(float), minlength=n_groups)
    sum_p = np.bincount(inverse[ok], weights=rollouts.p_yes[ok], minlength=n_groups)
    truth = np.zeros(n_groups, dtype=bool)
    truth[inverse] = rollouts.y
    # All rollouts of a question carry the same bootstrap weight; the mean recovers it.
    group_w = grouped_sum(inverse, w, n_groups) / np.bincount(inverse)
    has = n_parseable > 0
    group_w = np.compress(has, group_w, axis=-1)
    return sum_p[has] / n_parseable[has], truth[has], group_w, int(np.sum(~has))


def summarize(
    rollouts: Rollouts, weights: NDArray[np.float64] | None = None
) -> dict[str, float | NDArray[np.float64]]:
    """Every metric of ``METRIC_NAMES`` for these rollouts (under bootstrap weights if given).

    ``weights`` of shape ``(resamples, n)`` give one array of values per metric, one per row.
    """
    w = np.ones(len(rollouts)) if weights is None else weights
    values = rollout_metrics(
        parseable=rollouts.parseable,
        correct=rollouts.correct,
        p_yes=rollouts.p_yes,
        confidence=rollouts.confidence,
        y=rollouts.y,
        weights=w,
    )
    values["reward"] = weighted_mean(rollouts.reward, w)
    values["calibration_reward"] = weighted_mean(rollouts.calibration_reward, w)
    values["length_penalty"] = weighted_mean(rollouts.length_penalty, w)
    values["penalized_frac"] = weighted_mean(rollouts.length_penalty < -PENALTY_TOLERANCE, w)
    values["mean_length"] = weighted_mean(rollouts.length, w)
    if rollouts.has_identity:
        p, y, gw, _ = ensemble(rollouts, w)
        values["ensemble_brier"] = brier(p, y, gw)
        values["ensemble_ece_pyes"] = expected_calibration_error(p, y, gw)
    else:
        missing = float("nan") if w.ndim == 1 else np.full(w.shape[0], np.nan)
        values["ensemble_brier"] = values["ensemble_ece_pyes"] = missing
    return {name: values[name] for name in METRIC_NAMES}


def with_intervals(
    rollouts: Rollouts, *, resamples: int = DEFAULT_RESAMPLES, seed: int = 0
) -> tuple[dict[str, Interval], str]:
    """Metrics with 95% intervals, and the resampling unit used (questions, or rollouts)."""
    if rollouts.has_identity:
        clusters, unit = group_keys(rollouts), "questions"
    else:
        clusters, unit = np.arange(len(rollouts)), "rollouts (no question identity)"
    intervals = cluster_bootstrap(
        lambda w: summarize(rollouts, w), clusters, resamples=resamples, seed=seed
    )
    return intervals, unit


def step_rows(rollouts: Rollouts) -> list[dict[str, float]]:
    """One row per present step: step, n, questions, then ``METRIC_NAMES``."""
    rows = []
    for step in np.unique(rollouts.step):
        part = rollouts.subset(rollouts.step == step)
        row: dict[str, float] = {"step": int(step), "n": len(part)}
        row["n_questions"] = (
            int(np.unique(part.question).size) if part.has_identity else float("nan")
        )
        row.update(summarize(part))
        rows.append(row)
    return rows
