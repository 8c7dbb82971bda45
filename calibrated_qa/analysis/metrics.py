"""Calibration metrics: the one definition of each number the analysis reports.

Every metric is a ratio of sums: ``tally`` adds them up per unit, ``finish`` turns one vector of
sums into floats, so a step, a bootstrap resample and a diagram share one definition.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from calibrated_qa.analysis.readers import Rollouts
from calibrated_qa.reward import brier_score

N_BINS = 10
PENALTY_TOLERANCE = 1e-6  # "penalized": the reference CSV's rewards are of reduced precision

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
# Column order of metrics_by_step.csv after "step" (and of the summary's tables).
METRIC_NAMES = (
    "parse_rate", "accuracy", "ece_pyes", "ece_conf", "brier", "auroc", "reward",
    "calibration_reward", "length_penalty", "mean_length", "penalized_frac", "mean_p_yes",
    "ensemble_brier", "ensemble_ece_pyes",
)  # fmt: skip
# Sums per unit: scalar columns, then three blocks of bins (count, sum of p, sum of outcomes) for
# P(YES), confidence and the self-ensemble, then correct/wrong counts per confidence level.
_SCALARS = (
    "n", "parseable", "correct", "brier", "p_yes", "reward", "calibration_reward",
    "length_penalty", "penalized", "length", "groups", "ensemble_brier",
)  # fmt: skip
_COL = {name: i for i, name in enumerate(_SCALARS)}
_BINS = len(_SCALARS)  # start of the bin blocks: 3 blocks x (count, sum p, sum y) x N_BINS
_LEVELS = _BINS + 9 * N_BINS


def percent_bin(p: ArrayLike) -> NDArray[np.int64]:
    """Bin 0..9 of each probability: integer percent ``round(100 p)`` half up, // 10 (rounded to
    6 places first: ``1 - 0.7`` must land in [30, 40))."""
    arr = np.asarray(p, dtype=np.float64)
    if arr.ndim != 1 or not np.all((arr >= 0) & (arr <= 1)):  # also rejects NaN
        raise ValueError("probabilities must be a 1-D array in [0, 1] (drop unparseable first)")
    pct = np.floor(np.round(arr * 100, 6) + 0.5)
    return np.minimum(pct.astype(np.int64) // 10, N_BINS - 1)


@dataclass(frozen=True)
class Tally:
    """Sums per unit (rows) that every metric is a ratio of; ``finish`` reads one row or a sum."""

    sums: NDArray[np.float64]  # (units, columns)
    levels: int  # distinct confidence levels (AUROC)
    identity: bool  # rollouts grouped by question: the self-ensemble exists


def _bins(out: NDArray[np.float64], block: int, unit: NDArray, p: NDArray, y: NDArray) -> None:
    n_units = out.shape[0]
    index = unit * N_BINS + percent_bin(p)
    for k, weights in enumerate((None, p, y.astype(np.float64))):
        sums = np.bincount(index, weights=weights, minlength=n_units * N_BINS)
        start = _BINS + (3 * block + k) * N_BINS
        out[:, start : start + N_BINS] = sums.reshape(n_units, N_BINS)


def tally(r: Rollouts, unit: NDArray[np.int64], n_units: int) -> Tally:
    """The sums of every metric per unit (``unit``: each rollout's unit in range(n_units))."""
    ok = r.parseable
    levels, level = np.unique(r.confidence[ok], return_inverse=True)
    out = np.zeros((n_units, _LEVELS + 2 * levels.size))
    columns = {
        "n": None, "parseable": ok, "correct": r.correct & ok, "reward": r.reward,
        "calibration_reward": r.calibration_reward, "length_penalty": r.length_penalty,
        "penalized": r.length_penalty < -PENALTY_TOLERANCE, "length": r.length,
    }  # fmt: skip
    for name, values in columns.items():
        weights = None if values is None else values.astype(np.float64)
        out[:, _COL[name]] = np.bincount(unit, weights=weights, minlength=n_units)
    u = unit[ok]
    out[:, _COL["brier"]] = np.bincount(u, weights=r.brier[ok], minlength=n_units)
    out[:, _COL["p_yes"]] = np.bincount(u, weights=r.p_yes[ok], minlength=n_units)
    _bins(out, 0, u, r.p_yes[ok], r.y[ok])
    _bins(out, 1, u, r.confidence[ok], r.correct[ok])
    n_levels = levels.size
    for k, outcome in enumerate((r.correct[ok], ~r.correct[ok])):
        sums = np.bincount(u * n_levels + level, weights=outcome, minlength=n_units * n_levels)
        start = _LEVELS + k * n_levels
        out[:, start : start + n_levels] = sums.reshape(n_units, n_levels)
    identity = r.has_identity
    if identity:
        p, truth, group_unit, _ = ensemble(r, unit)
        briers = np.array(
            [brier_score(q, t) for q, t in zip(p.tolist(), truth.tolist(), strict=True)]
        )
        out[:, _COL["groups"]] = np.bincount(group_unit, minlength=n_units)
        out[:, _COL["ensemble_brier"]] = np.bincount(group_unit, briers, minlength=n_units)
        _bins(out, 2, group_unit, p, truth)
    return Tally(out, n_levels, identity)


def question_groups(r: Rollouts) -> tuple[NDArray[np.int64], int]:
    """Each rollout's (step, question) group code, and the number of groups."""
    _, question = np.unique(r.question, return_inverse=True)
    _, group = np.unique(r.step * (question.max(initial=0) + 1) + question, return_inverse=True)
    return group, int(group.max(initial=-1)) + 1


def ensemble(
    r: Rollouts, unit: NDArray[np.int64] | None = None
) -> tuple[NDArray[np.float64], NDArray[np.bool_], NDArray[np.int64], int]:
    """Self-ensemble: mean P(YES) over the parseable rollouts of each (step, question) group."""
    group, n_groups = question_groups(r)
    ok = r.parseable
    n_ok = np.bincount(group[ok], minlength=n_groups)
    sum_p = np.bincount(group[ok], weights=r.p_yes[ok], minlength=n_groups)
    truth = np.zeros(n_groups, dtype=bool)
    truth[group] = r.y
    group_unit = np.zeros(n_groups, dtype=np.int64)
    if unit is not None:
        group_unit[group] = unit
    has = n_ok > 0
    return sum_p[has] / n_ok[has], truth[has], group_unit[has], int(np.sum(~has))


def _ratio(a: float, b: float) -> float:
    return float(a / b) if b > 0 else float("nan")


def _eces(sums: NDArray[np.float64]) -> list[float]:
    """ECE of each bin block: sum_b n_b/n |mean p_b - freq_b| = sum_b |sum p_b - sum y_b| / n."""
    count, sum_p, sum_y = sums[_BINS:_LEVELS].reshape(3, 3, N_BINS).transpose(1, 0, 2)
    gaps, n = np.abs(sum_p - sum_y).sum(axis=1).tolist(), count.sum(axis=1).tolist()
    return [_ratio(gap, total) for gap, total in zip(gaps, n, strict=True)]


def _auroc(pos: NDArray[np.float64], neg: NDArray[np.float64]) -> float:
    below = np.cumsum(neg) - neg  # wrong rollouts at lower confidence levels
    return _ratio(float(np.sum(pos * (below + 0.5 * neg))), float(pos.sum() * neg.sum()))


def finish(sums: NDArray[np.float64], levels: int, identity: bool = True) -> dict[str, float]:
    """Every metric of ``METRIC_NAMES`` from one vector of tally sums."""
    s = dict(zip(_SCALARS, sums[: len(_SCALARS)].tolist(), strict=True))
    n, ok, groups = s["n"], s["parseable"], s["groups"]
    pos, neg = sums[_LEVELS : _LEVELS + levels], sums[_LEVELS + levels : _LEVELS + 2 * levels]
    nan = float("nan")
    ece_pyes, ece_conf, ece_ensemble = _eces(sums)
    return {
        "parse_rate": _ratio(ok, n),
        "accuracy": _ratio(s["correct"], n),
        "ece_pyes": ece_pyes,
        "ece_conf": ece_conf,
        "brier": _ratio(s["brier"], ok),
        "auroc": _auroc(pos, neg),
        "reward": _ratio(s["reward"], n),
        "calibration_reward": _ratio(s["calibration_reward"], n),
        "length_penalty": _ratio(s["length_penalty"], n),
        "mean_length": _ratio(s["length"], n),
        "penalized_frac": _ratio(s["penalized"], n),
        "mean_p_yes": _ratio(s["p_yes"], ok),
        "ensemble_brier": _ratio(s["ensemble_brier"], groups) if identity else nan,
        "ensemble_ece_pyes": ece_ensemble if identity else nan,
    }


def summarize(r: Rollouts) -> dict[str, float]:
    """Every metric of ``METRIC_NAMES`` for these rollouts."""
    t = tally(r, np.zeros(len(r), dtype=np.int64), 1)
    return finish(t.sums[0], t.levels, t.identity)


def step_rows(r: Rollouts) -> list[dict[str, float]]:
    """One row per present step: step, n, questions, then ``METRIC_NAMES``."""
    steps, unit = np.unique(r.step, return_inverse=True)
    t = tally(r, unit, steps.size)
    questions = [float("nan")] * steps.size
    if t.identity:  # distinct (step, question) groups per step
        first = np.unique(question_groups(r)[0], return_index=True)[1]
        questions = np.bincount(unit[first], minlength=steps.size).tolist()
    rows = []
    for i, step in enumerate(steps.tolist()):
        row: dict[str, float] = {"step": step, "n": int(t.sums[i, 0]), "n_questions": questions[i]}
        rows.append(row | finish(t.sums[i], t.levels, t.identity))
    return rows


def _block(p: ArrayLike, y: ArrayLike) -> NDArray[np.float64]:
    """The tally sums of the P(YES) reliability block alone (what diagrams and ECE read)."""
    p, y = np.asarray(p, dtype=np.float64), np.asarray(y)
    if y.shape != p.shape or not np.all((y == 0) | (y == 1)):
        raise ValueError("outcomes must be 0/1, one per probability")
    out = np.zeros((1, _LEVELS))
    _bins(out, 0, np.zeros(p.size, dtype=np.int64), p, y.astype(bool))
    return out[0]


def reliability_bins(p: ArrayLike, y: ArrayLike) -> tuple[NDArray, NDArray, NDArray]:
    """Per bin: count, mean predicted p, observed frequency (NaN in empty bins)."""
    count, sum_p, sum_y = _block(p, y)[_BINS : _BINS + 3 * N_BINS].reshape(3, N_BINS)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p, freq = (np.where(count > 0, s / count, np.nan) for s in (sum_p, sum_y))
    return count, mean_p, freq


def expected_calibration_error(p: ArrayLike, y: ArrayLike) -> float:
    """ECE of probabilities ``p`` against 0/1 outcomes ``y``; NaN when there is nothing to bin."""
    return _eces(_block(p, y))[0]
