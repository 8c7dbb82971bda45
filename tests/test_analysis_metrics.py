"""Metrics against independent oracles (scikit-learn, hand computation) and their edge cases."""

from __future__ import annotations

import math
from dataclasses import fields

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.calibration import calibration_curve
from sklearn.metrics import brier_score_loss, roc_auc_score

from calibrated_qa.analysis.metrics import (
    expected_calibration_error,
    finish,
    percent_bin,
    reliability_bins,
    summarize,
    tally,
)
from calibrated_qa.analysis.readers import Rollouts
from tests.fixtures.analysis.build import in_memory_rollouts

RNG = np.random.default_rng(1234)
COLUMNS = [f.name for f in fields(Rollouts) if f.name != "fmt"]


def off_edge_probabilities(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Integer percents that are not multiples of 10, so float and integer binning agree."""
    pct = RNG.integers(0, 100, n)
    pct = np.where(pct % 10 == 0, pct + 3, pct)
    p = pct / 100
    y = RNG.random(n) < p  # roughly calibrated, with noise
    return p, y


def summary(p: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """The analysis's metrics of parseable rollouts stating ``p`` with true answers ``y``."""
    zeros = np.zeros(len(p))
    rollouts = in_memory_rollouts(
        y=np.asarray(y, dtype=bool), p_yes=np.asarray(p, dtype=float), length_penalty=zeros,
        length=zeros, question=np.arange(len(p)),
    )  # fmt: skip
    return summarize(rollouts)


def test_brier_matches_sklearn() -> None:
    p, y = off_edge_probabilities(500)
    assert summary(p, y)["brier"] == pytest.approx(brier_score_loss(y, p), abs=1e-12)


def test_reliability_bins_match_sklearn_calibration_curve() -> None:
    p, y = off_edge_probabilities(2000)
    count, mean_p, freq = reliability_bins(p, y)
    prob_true, prob_pred = calibration_curve(y, p, n_bins=10, strategy="uniform")
    filled = count > 0
    np.testing.assert_allclose(freq[filled], prob_true, atol=1e-12)
    np.testing.assert_allclose(mean_p[filled], prob_pred, atol=1e-12)


def test_ece_matches_oracle_built_on_sklearn() -> None:
    p, y = off_edge_probabilities(2000)
    prob_true, prob_pred = calibration_curve(y, p, n_bins=10, strategy="uniform")
    counts = np.histogram(p, bins=np.linspace(0, 1, 11))[0]
    counts = counts[counts > 0]
    oracle = np.sum(counts * np.abs(prob_true - prob_pred)) / p.size
    assert expected_calibration_error(p, y) == pytest.approx(oracle, abs=1e-12)


def test_ece_hand_computed() -> None:
    # bin [20,30): p 0.2, 0.2 with outcomes 0, 1 -> |0.2 - 0.5| = 0.3, weight 2/4
    # bin [90,100]: p 0.9, 1.0 with outcomes 1, 1 -> |0.95 - 1| = 0.05, weight 2/4
    assert expected_calibration_error([0.2, 0.2, 0.9, 1.0], [0, 1, 1, 1]) == pytest.approx(0.175)
    assert math.isnan(expected_calibration_error([], []))


@pytest.mark.parametrize(
    ("p", "expected_bin"),
    [
        (0.3, 3),
        (0.6, 6),
        (0.7, 7),
        (1 - 0.7, 3),
        (1 - 0.4, 6),
        (0.0, 0),
        (1.0, 9),
        (0.99, 9),
        (0.094, 0),
        (0.095, 1),
        (0.29, 2),
    ],
)
def test_integer_percent_binning(p: float, expected_bin: int) -> None:
    """30%, 60%, 70% land in their own bins (float edges put 0.3 and 0.6 in the bin below)."""
    assert percent_bin([p])[0] == expected_bin


def test_float_edges_would_misbin_and_ours_do_not() -> None:
    edges = np.arange(0, 1.01, 0.1)  # the original recipe's edges
    assert np.searchsorted(edges, 0.3, side="right") - 1 == 2  # 0.3 < edges[3]: bin below
    assert list(percent_bin([0.3, 0.6, 0.7])) == [3, 6, 7]


def test_auroc_matches_sklearn_with_ties() -> None:
    # P(YES) > 0.5 throughout: the confidence is P(YES) and correct means "the truth is yes"
    score = RNG.integers(51, 101, 400) / 100  # many ties, as integer percents have
    label = RNG.random(400) < score
    auroc = summary(score, label)["auroc"]
    assert auroc == pytest.approx(roc_auc_score(label, score), abs=1e-12)


def test_auroc_undefined_with_one_class() -> None:
    assert math.isnan(summary(np.array([0.6, 0.9]), np.array([1, 1]))["auroc"])


def test_weighted_unit_sums_equal_repetition() -> None:
    """A bootstrap resample weights each unit's sums by its draw count: that must mean 'this
    unit appears w times', for every metric (the ensemble included)."""
    rows = [
        (bool(i % 3), None if i % 7 == 0 else 40 + i // 2, i % 2 == 0, -0.1 * (i % 4), i % 9)
        for i in range(45)
    ]
    r = _rollouts(rows)
    w = RNG.integers(0, 4, 9)
    t = tally(r, r.question, 9)
    weighted = finish(w.astype(float) @ t.sums, t.levels)
    copies = [r.subset(np.isin(r.question, np.flatnonzero(w > k))) for k in range(w.max())]
    for k, part in enumerate(copies):
        part.question[:] += 100 * k  # a question drawn twice is two questions of the sample
    columns = {name: np.concatenate([getattr(c, name) for c in copies]) for name in COLUMNS}
    repeated = summarize(Rollouts(**columns))
    for name, value in repeated.items():
        assert weighted[name] == pytest.approx(value, nan_ok=True), name


@pytest.mark.parametrize("bad", [[0.5, float("nan")], [1.2], [-0.1]])
def test_invalid_probabilities_are_refused(bad: list[float]) -> None:
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        expected_calibration_error(bad, [1] * len(bad))


def test_unparseable_rollouts_count_in_parse_rate_and_accuracy_only() -> None:
    rows = [(True, 90, True, 0.0, 0), (False, 80, True, 0.0, 1), (True, None, True, 0.0, 2)]
    values = summarize(_rollouts([*rows, (False, None, True, 0.0, 3)]))
    assert values["parse_rate"] == 0.5
    assert values["accuracy"] == 0.25  # 1 correct of 4 rollouts, not of 2 parseable
    assert values["brier"] == pytest.approx((0.01 + 0.64) / 2)


def _rollouts(rows: list[tuple[bool, int | None, bool, float, int]]) -> Rollouts:
    """(truth, pct or None, says YES, length penalty, question) per rollout."""
    pct = np.array([np.nan if r[1] is None else r[1] for r in rows], dtype=float)
    says_yes = np.array([r[2] for r in rows])
    return in_memory_rollouts(
        y=np.array([r[0] for r in rows]),
        p_yes=np.where(says_yes, pct / 100, 1 - pct / 100),
        length_penalty=np.array([r[3] for r in rows]),
        length=np.full(len(rows), 50.0),
        question=np.array([r[4] for r in rows]),
    )


rollout_rows = st.lists(
    st.tuples(
        st.booleans(),
        st.one_of(st.none(), st.integers(0, 100)),
        st.booleans(),
        st.floats(-1, 0),
        st.integers(0, 5),
    ),
    min_size=1,
    max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(rollout_rows)
def test_metrics_never_crash_on_valid_rollouts(rows: list) -> None:
    values = summarize(_rollouts(rows))
    for name in ("parse_rate", "accuracy", "penalized_frac"):
        assert 0 <= values[name] <= 1
    for name in ("brier", "ece_pyes", "ece_conf", "auroc", "ensemble_brier", "ensemble_ece_pyes"):
        assert math.isnan(values[name]) or 0 <= values[name] <= 1
    assert values["reward"] == pytest.approx(
        values["calibration_reward"] + values["length_penalty"]
    )
