"""Calibration metrics: the one definition of each number the analysis reports.

Every function takes plain numpy arrays, checks them at the edge, and accepts optional per-rollout
``weights`` so that the bootstrap (which resamples whole questions, i.e. gives each rollout the
multiplicity of its question) reuses exactly these definitions instead of a second copy. The
weights may also be a ``(resamples, n)`` matrix, one weight vector per row: the metric is then
computed for every row at once (one array of values instead of a float), which is how the
bootstrap evaluates 1,000 resamples without 1,000 Python-level calls.

Definitions (also printed into every report, see ``DEFINITIONS``):

- parse rate: parseable rollouts / all rollouts. Unparseable rollouts are never dropped silently.
- prediction, correctness, confidence: ``calibrated_qa.reward``'s, for every input format. The
  prediction is YES iff P(YES) > 0.5 (a stated 50% counts as NO); a rollout is correct iff its
  prediction matches the truth; its confidence is ``max(P(YES), 1 - P(YES))``. The answer word is
  not used (the reward ignores it: "YES with 30%" predicts NO with confidence 0.7).
- accuracy: correct rollouts / **all** rollouts; an unparseable rollout counts as wrong.
- Brier: mean ``(P(YES) - y)^2`` over parseable rollouts, ``y = 1`` for a true answer.
- ECE: 10 equal-width bins on the **integer percent** ``round(100 p)`` (half up): bins [0,10),
  [10,20), ..., [90,100], the last closed. ``sum_b n_b / n * |mean p_b - freq_b|``. Integer
  binning matters: with float edges 0.3 and 0.6 fall into the bin below (0.3 != 3 * 0.1).
  ``ece_pyes`` bins P(YES) against y (the recipe's view); ``ece_conf`` bins the confidence in the
  predicted answer against its correctness (the literature's view). Both over parseable rollouts.
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
    "prediction": (
        "YES iff P(YES) > 0.5 (a stated 50% counts as NO), in every input format; the answer "
        "word is not used (the reward ignores it)"
    ),
    "confidence": "max(P(YES), 1 - P(YES)): the stated probability of the predicted answer",
    "accuracy": "prediction matches the truth, over ALL rollouts (unparseable = wrong)",
    "brier": "mean (P(YES) - y)^2 over parseable rollouts, y = 1 when the true answer is yes",
    "ece_pyes": (
        "10 equal-width bins on integer percent round(100*P(YES)) ([0,10), ..., [90,100] closed), "
        "sum_b n_b/n * |mean P(YES)_b - fraction true_b|, over parseable rollouts"
    ),
    "ece_conf": (
        "same binning on the confidence in the predicted answer vs whether it is correct, "
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
    """Weights of shape ``(n,)``, or ``(resamples, n)``: one weight vector per row."""
    if weights is None:
        return np.ones(n)
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim == 1 and w.shape != (n,):
        raise ValueError(f"weights has {w.size} entries for {n} values")
    if w.ndim not in (1, 2) or w.shape[-1] != n:
        raise ValueError(f"weights must have shape ({n},) or (resamples, {n}), got {w.shape}")
    if w.size and not (w.min() >= 0 and np.isfinite(w.sum())):  # one pass each; NaN fails
        raise ValueError("weights must be finite and non-negative")
    return w


def _result(value: NDArray[np.float64]) -> float | NDArray[np.float64]:
    """A float for one weight vector, an array of one value per row for a batch of them."""
    return float(value) if np.ndim(value) == 0 else value


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


def grouped_sum(
    index: NDArray[np.int64], weights: NDArray[np.float64], length: int
) -> NDArray[np.float64]:
    """``np.bincount(index, weights, minlength=length)`` of each row of ``weights``.

    ``index`` (values in ``[0, length)``) is shared by all rows; a 1-D ``weights`` gives one
    row's sums, a 2-D one gives ``(rows, length)``. Each row is summed in the same order as its
    own ``np.bincount``, so a batch gives exactly the sums of the rows one at a time.
    """
    if weights.ndim == 1:
        return np.bincount(index, weights=weights, minlength=length)
    rows = weights.shape[0]
    flat = (index + length * np.arange(rows)[:, None]).ravel()
    sums = np.bincount(flat, weights=weights.ravel(), minlength=rows * length)
    return sums.reshape(rows, length)


def weighted_mean(
    values: ArrayLike, weights: ArrayLike | None = None
) -> float | NDArray[np.float64]:
    """Mean of ``values`` under ``weights``; NaN when the total weight is zero.

    With weights of shape ``(resamples, n)``, one mean per row (as an array); the same holds
    for every weighted metric below.
    """
    v = _array(values, "values", np.float64)
    w = _weights(weights, v.size)
    total = w.sum(axis=-1)
    # einsum, not BLAS, for a batch: a multi-threaded gemv contends with anything else running
    dot = np.dot(v, w) if w.ndim == 1 else np.einsum("ri,i->r", w, v)
    with np.errstate(invalid="ignore", divide="ignore"):
        return _result(np.where(total > 0, dot / total, np.nan))


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
    With weights of shape ``(resamples, n)`` each array has shape ``(resamples, 10)``.
    """
    prob = _probabilities(p, "p")
    out = _outcomes(y, prob.size, "y")
    w = _weights(weights, prob.size)
    bins = percent_bin(prob)
    count = grouped_sum(bins, w, N_BINS)
    sum_p = grouped_sum(bins, w * prob, N_BINS)
    sum_y = grouped_sum(bins, w * out, N_BINS)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = np.where(count > 0, sum_p / count, np.nan)
        freq = np.where(count > 0, sum_y / count, np.nan)
    return count, mean_p, freq


def expected_calibration_error(
    p: ArrayLike, y: ArrayLike, weights: ArrayLike | None = None
) -> float | NDArray[np.float64]:
    """ECE: count-weighted mean of ``|mean p - frequency|`` over 10 integer-percent bins.

    NaN when there is nothing to bin (no parseable rollouts).
    """
    count, mean_p, freq = reliability_bins(p, y, weights)
    total = count.sum(axis=-1)
    gaps = np.where(count > 0, count * np.abs(mean_p - freq), 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return _result(np.where(total > 0, gaps.sum(axis=-1) / total, np.nan))


def brier(
    p: ArrayLike, y: ArrayLike, weights: ArrayLike | None = None
) -> float | NDArray[np.float64]:
    """Mean squared error of P(YES) against the 0/1 outcome; NaN when there are no rollouts."""
    prob = _probabilities(p, "p")
    out = _outcomes(y, prob.size, "y")
    return weighted_mean((prob - out) ** 2, weights)


def auroc(
    score: ArrayLike, label: ArrayLike, weights: ArrayLike | None = None
) -> float | NDArray[np.float64]:
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
    pos = grouped_sum(inverse, w * lab, levels.size)
    neg = grouped_sum(inverse, w * ~lab, levels.size)
    total_pos, total_neg = pos.sum(axis=-1), neg.sum(axis=-1)
    neg_below = np.cumsum(neg, axis=-1) - neg
    area = np.sum(pos * (neg_below + 0.5 * neg), axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        defined = (total_pos > 0) & (total_neg > 0)
        return _result(np.where(defined, area / (total_pos * total_neg), np.nan))


def rollout_metrics(
    *,
    parseable: NDArray[np.bool_],
    correct: NDArray[np.bool_],
    p_yes: NDArray[np.float64],
    confidence: NDArray[np.float64],
    y: NDArray[np.bool_],
    weights: NDArray[np.float64] | None = None,
) -> dict[str, float | NDArray[np.float64]]:
    """The calibration metrics of one set of rollouts (see the module docstring).

    ``p_yes`` and ``confidence`` may hold NaN where ``parseable`` is False; those rollouts count
    in parse rate and accuracy and nowhere else. With weights of shape ``(resamples, n)`` each
    value is an array of one value per row.
    """
    n = parseable.size
    w = _weights(weights, n)
    ok = parseable.astype(bool)
    wp = np.compress(ok, w, axis=-1)  # stays C-contiguous for a batch (w[..., ok] does not)
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
