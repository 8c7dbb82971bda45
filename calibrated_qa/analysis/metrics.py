"""Calibration metrics: the one definition of each number the analysis reports.

Every function takes plain numpy arrays, checks them at the edge, and accepts optional per-rollout
``weights`` so that the bootstrap (which resamples whole questions, i.e. gives each rollout the
multiplicity of its question) reuses exactly these definitions instead of a second copy.

Definitions (also printed into every report, see ``DEFINITIONS``):

- parse rate: parseable rollouts / all rollouts. Unparseable rollouts are never dropped silently.
- accuracy: rollouts whose stated answer word matches the truth / **all** rollouts; an unparseable
  rollout counts as wrong.
- Brier: mean ``(P(YES) - y)^2`` over parseable rollouts, ``y = 1`` for a true answer.
- ECE: 10 equal-width bins on the **integer percent** ``round(100 p)`` (half up): bins [0,10),
  [10,20), ..., [90,100], the last closed. ``sum_b n_b / n * |mean p_b - freq_b|``. Integer
  binning matters: with float edges 0.3 and 0.6 fall into the bin below (0.3 != 3 * 0.1).
  ``ece_pyes`` bins P(YES) against y (the recipe's view); ``ece_conf`` bins the confidence in the
  chosen answer against its correctness (the literature's view). Both over parseable rollouts.
- AUROC: probability that a correct parseable rollout states a higher confidence in its answer than
  a wrong one (ties count one half): how well confidence separates right from wrong.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

N_BINS = 10
# A length penalty below -PENALTY_TOLERANCE counts as "penalized"; the reference CSV stores rewards
# in reduced precision, so an exact zero test would be fragile.
PENALTY_TOLERANCE = 1e-6

DEFINITIONS: dict[str, str] = {
    "parse_rate": "parseable rollouts / all rollouts (unparseable rollouts are never dropped)",
    "accuracy": "stated answer word matches the truth, over ALL rollouts (unparseable = wrong)",
    "brier": "mean (P(YES) - y)^2 over parseable rollouts, y = 1 when the true answer is yes",
    "ece_pyes": (
        "10 equal-width bins on integer percent round(100*P(YES)) ([0,10), ..., [90,100] closed), "
        "sum_b n_b/n * |mean P(YES)_b - fraction true_b|, over parseable rollouts"
    ),
    "ece_conf": (
        "same binning on the confidence in the chosen answer vs whether it is correct, "
        "over parseable rollouts"
    ),
    "auroc": (
        "P(confidence of a correct rollout > that of a wrong one), ties 1/2, over parseable "
        "rollouts"
    ),
    "reward": "mean reward = calibration_reward + length_penalty, over all rollouts",
    "calibration_reward": "mean of 1 - Brier (0 when unparseable), over all rollouts",
    "length_penalty": "mean bucket length penalty (<= 0), over all rollouts",
    "penalized_frac": f"fraction of rollouts with length penalty < -{PENALTY_TOLERANCE:g}",
    "mean_length": "mean completion length L of the length penalty (its unit: see the log)",
    "mean_p_yes": "mean stated P(YES) over parseable rollouts",
    "ensemble": (
        "self-ensemble: mean P(YES) over the parseable rollouts of one question within one step "
        "(grouped by question identity, never by adjacent lines); Brier/ECE over those means"
    ),
}


def _array(values: ArrayLike, name: str, dtype: type) -> NDArray:
    arr = np.asarray(values, dtype=dtype)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    return arr


def _weights(weights: ArrayLike | None, n: int) -> NDArray[np.float64]:
    if weights is None:
        return np.ones(n)
    w = _array(weights, "weights", np.float64)
    if w.shape != (n,):
        raise ValueError(f"weights has {w.size} entries for {n} values")
    if w.size and not (w.min() >= 0 and np.isfinite(w.sum())):  # one pass each; NaN fails
        raise ValueError("weights must be finite and non-negative")
    return w


def _probabilities(p: ArrayLike, name: str) -> NDArray[np.float64]:
    arr = _array(p, name, np.float64)
    if not np.all((arr >= 0) & (arr <= 1)):  # also rejects NaN
        raise ValueError(f"{name} must lie in [0, 1] (no NaN): drop unparseable rollouts first")
    return arr


def _outcomes(y: ArrayLike, n: int, name: str) -> NDArray[np.float64]:
    arr = _array(y, name, np.float64)
    if arr.shape != (n,):
        raise ValueError(f"{name} has {arr.size} entries for {n} probabilities")
    if not np.all((arr == 0) | (arr == 1)):
        raise ValueError(f"{name} must be 0/1 (or bool)")
    return arr


def weighted_mean(values: ArrayLike, weights: ArrayLike | None = None) -> float:
    """Mean of ``values`` under ``weights``; NaN when the total weight is zero."""
    v = _array(values, "values", np.float64)
    w = _weights(weights, v.size)
    total = w.sum()
    return float(np.dot(v, w) / total) if total > 0 else float("nan")


def percent_bin(p: ArrayLike) -> NDArray[np.int64]:
    """Bin index 0..9 of each probability: integer percent ``round(100 p)`` half up, then // 10.

    ``np.round(., 6)`` first removes float noise (``1 - 0.7`` is 0.30000000000000004) so a stated
    30% always lands in [30, 40); 100% lands in the last, closed bin.
    """
    pct = np.floor(np.round(_probabilities(p, "p") * 100, 6) + 0.5)
    return np.minimum(pct.astype(np.int64) // 10, N_BINS - 1)


def reliability_bins(
    p: ArrayLike, y: ArrayLike, weights: ArrayLike | None = None
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """Per bin (10 integer-percent bins): weighted count, mean predicted p, observed frequency.

    Empty bins have count 0 and NaN mean/frequency. This is the reliability diagram's data.
    """
    prob = _probabilities(p, "p")
    out = _outcomes(y, prob.size, "y")
    w = _weights(weights, prob.size)
    bins = percent_bin(prob)
    count = np.bincount(bins, weights=w, minlength=N_BINS)
    sum_p = np.bincount(bins, weights=w * prob, minlength=N_BINS)
    sum_y = np.bincount(bins, weights=w * out, minlength=N_BINS)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = np.where(count > 0, sum_p / count, np.nan)
        freq = np.where(count > 0, sum_y / count, np.nan)
    return count, mean_p, freq


def expected_calibration_error(
    p: ArrayLike, y: ArrayLike, weights: ArrayLike | None = None
) -> float:
    """ECE: count-weighted mean of ``|mean p - frequency|`` over 10 integer-percent bins.

    NaN when there is nothing to bin (no parseable rollouts).
    """
    count, mean_p, freq = reliability_bins(p, y, weights)
    total = count.sum()
    if total <= 0:
        return float("nan")
    filled = count > 0
    return float(np.sum(count[filled] * np.abs(mean_p[filled] - freq[filled])) / total)


def brier(p: ArrayLike, y: ArrayLike, weights: ArrayLike | None = None) -> float:
    """Mean squared error of P(YES) against the 0/1 outcome; NaN when there are no rollouts."""
    prob = _probabilities(p, "p")
    out = _outcomes(y, prob.size, "y")
    return weighted_mean((prob - out) ** 2, weights)


def auroc(score: ArrayLike, label: ArrayLike, weights: ArrayLike | None = None) -> float:
    """Area under the ROC curve of ``score`` for ``label`` (Mann-Whitney form, ties count 1/2).

    Computed on the unique score levels, so it is exact for any scores and cheap for integer
    percents. NaN when either class is absent (the area is undefined, not 0.5).
    """
    s = _array(score, "score", np.float64)
    if not np.all(np.isfinite(s)):
        raise ValueError("score must be finite: drop unparseable rollouts first")
    lab = _outcomes(label, s.size, "label").astype(bool)
    w = _weights(weights, s.size)
    levels, inverse = np.unique(s, return_inverse=True)
    pos = np.bincount(inverse, weights=w * lab, minlength=levels.size)
    neg = np.bincount(inverse, weights=w * ~lab, minlength=levels.size)
    total_pos, total_neg = pos.sum(), neg.sum()
    if total_pos <= 0 or total_neg <= 0:
        return float("nan")
    neg_below = np.cumsum(neg) - neg
    return float(np.sum(pos * (neg_below + 0.5 * neg)) / (total_pos * total_neg))


def rollout_metrics(
    *,
    parseable: NDArray[np.bool_],
    correct: NDArray[np.bool_],
    p_yes: NDArray[np.float64],
    confidence: NDArray[np.float64],
    y: NDArray[np.bool_],
    weights: NDArray[np.float64] | None = None,
) -> dict[str, float]:
    """The calibration metrics of one set of rollouts (see the module docstring).

    ``p_yes`` and ``confidence`` may hold NaN where ``parseable`` is False; those rollouts count
    in parse rate and accuracy and nowhere else.
    """
    n = parseable.size
    w = _weights(weights, n)
    ok = parseable.astype(bool)
    wp = w[ok]
    p, conf, yy, right = p_yes[ok], confidence[ok], y[ok], correct[ok]
    return {
        "parse_rate": weighted_mean(ok, w),
        "accuracy": weighted_mean(correct & ok, w),
        "brier": brier(p, yy, wp),
        "ece_pyes": expected_calibration_error(p, yy, wp),
        "ece_conf": expected_calibration_error(conf, right, wp),
        "auroc": auroc(conf, right, wp),
        "mean_p_yes": weighted_mean(p, wp),
    }
