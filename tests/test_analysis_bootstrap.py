"""The vectorised bootstrap: batches of weight vectors give exactly what one vector at a time gives.

``cluster_bootstrap`` hands the metric functions a ``(resamples, rollouts)`` weight matrix; these
tests check it against the straightforward loop (one resample, one ``summarize`` call at a time),
which uses the 1-D path of the same metric functions.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from calibrated_qa.analysis.aggregate import group_keys, summarize, with_intervals
from calibrated_qa.analysis.bootstrap import LEVEL, Interval, cluster_bootstrap
from calibrated_qa.analysis.metrics import (
    auroc,
    brier,
    expected_calibration_error,
    reliability_bins,
    weighted_mean,
)
from calibrated_qa.analysis.readers import Rollouts
from tests.fixtures.analysis.build import in_memory_rollouts


def make_rollouts(
    n_questions: int, per_question: int, seed: int, *, identity: bool = True
) -> Rollouts:
    """One step of interleaved rollouts: integer-percent answers, some unparseable, lengths."""
    rng = np.random.default_rng(seed)
    n = n_questions * per_question
    question = rng.permutation(np.repeat(np.arange(n_questions), per_question))
    truth = rng.random(n_questions) < 0.5
    y = truth[question]
    ok = rng.random(n) > 0.1
    pct = rng.integers(50, 101, n)
    says_yes = rng.random(n) < 0.5
    p = np.where(says_yes, pct / 100, 1 - pct / 100)
    length = rng.integers(20, 400, n).astype(float)
    return in_memory_rollouts(
        y=y,
        p_yes=np.where(ok, p, np.nan),
        length_penalty=np.where(length > 300, -(length - 300) / 100, 0.0),
        length=length,
        question=question if identity else np.full(n, -1),
    )


def loop_bootstrap(rollouts: Rollouts, resamples: int, seed: int) -> dict[str, Interval]:
    """The straightforward bootstrap: one resample of whole questions, one summarize, at a time."""
    clusters = group_keys(rollouts) if rollouts.has_identity else np.arange(len(rollouts))
    point = summarize(rollouts)
    codes, member = np.unique(clusters, return_inverse=True)
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {name: [] for name in point}
    for _ in range(resamples):
        multiplicity = np.bincount(rng.integers(0, codes.size, codes.size), minlength=codes.size)
        for name, value in summarize(rollouts, multiplicity[member].astype(float)).items():
            draws[name].append(value)
    tail = (1 - LEVEL) / 2 * 100
    out = {}
    for name, value in point.items():
        finite = np.array(draws[name])[np.isfinite(draws[name])]
        if finite.size == 0:
            out[name] = Interval(value, math.nan, math.nan)
        else:
            low, high = np.percentile(finite, [tail, 100 - tail])
            out[name] = Interval(value, float(low), float(high))
    return out


def assert_same(a: float, b: float) -> None:
    assert (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("identity", [True, False])
def test_vectorised_bootstrap_gives_the_loops_intervals(identity: bool) -> None:
    rollouts = make_rollouts(n_questions=24, per_question=4, seed=7, identity=identity)
    loop = loop_bootstrap(rollouts, resamples=200, seed=3)
    vectorised, unit = with_intervals(rollouts, resamples=200, seed=3)
    assert unit.startswith("questions" if identity else "rollouts")
    assert loop.keys() == vectorised.keys()
    for name in loop:
        for field in ("value", "low", "high"):
            assert_same(getattr(vectorised[name], field), getattr(loop[name], field))
    # the intervals are real ones, not all NaN
    assert vectorised["brier"].low < vectorised["brier"].value < vectorised["brier"].high


@pytest.mark.parametrize("batch_elements", [1, 96 * 7, 10**9])
def test_batching_does_not_change_the_draws(batch_elements: int) -> None:
    """One resample per batch, a partial last batch, or all in one: the same intervals."""
    rollouts = make_rollouts(n_questions=24, per_question=4, seed=11)
    clusters = group_keys(rollouts)
    reference = loop_bootstrap(rollouts, resamples=50, seed=5)
    got = cluster_bootstrap(
        lambda w: summarize(rollouts, w),
        clusters,
        resamples=50,
        seed=5,
        batch_elements=batch_elements,
    )
    for name in reference:
        assert_same(got[name].low, reference[name].low)
        assert_same(got[name].high, reference[name].high)


def test_bootstrap_is_seeded() -> None:
    rollouts = make_rollouts(n_questions=16, per_question=8, seed=2)
    first, _ = with_intervals(rollouts, resamples=100, seed=9)
    again, _ = with_intervals(rollouts, resamples=100, seed=9)
    other, _ = with_intervals(rollouts, resamples=100, seed=10)
    assert first == again
    assert first["accuracy"] != other["accuracy"]


def test_a_statistic_that_ignores_the_batch_is_refused() -> None:
    with pytest.raises(ValueError, match="shape"):
        cluster_bootstrap(lambda w: {"x": 1.0}, np.arange(5), resamples=10)


def test_each_metric_row_by_row() -> None:
    rng = np.random.default_rng(0)
    n = 60
    p = rng.integers(0, 101, n) / 100
    y = rng.random(n) < p
    weights = rng.integers(0, 3, (9, n)).astype(float)
    weights[0] = 0  # nothing drawn: every metric undefined
    weights[1] = np.where(y, 1.0, 0.0)  # one class only: AUROC undefined
    count, mean_p, freq = reliability_bins(p, y, weights)
    for row, w in enumerate(weights):
        assert_same(weighted_mean(p, weights)[row], weighted_mean(p, w))
        assert_same(brier(p, y, weights)[row], brier(p, y, w))
        assert_same(
            expected_calibration_error(p, y, weights)[row], expected_calibration_error(p, y, w)
        )
        assert_same(auroc(p, y, weights)[row], auroc(p, y, w))
        one = reliability_bins(p, y, w)
        np.testing.assert_array_equal(count[row], one[0])
        np.testing.assert_allclose(mean_p[row], one[1], rtol=1e-12)
        np.testing.assert_allclose(freq[row], one[2], rtol=1e-12)
    assert math.isnan(brier(p, y, weights)[0]) and math.isnan(auroc(p, y, weights)[1])


def test_weights_of_the_wrong_shape_are_refused() -> None:
    with pytest.raises(ValueError, match="entries for 3 values"):
        weighted_mean([1.0, 2.0, 3.0], [1.0, 1.0])
    with pytest.raises(ValueError, match=r"shape \(3,\) or \(resamples, 3\)"):
        weighted_mean([1.0, 2.0, 3.0], np.ones((2, 4)))
    with pytest.raises(ValueError, match="non-negative"):
        weighted_mean([1.0, 2.0, 3.0], [[1.0, -1.0, 1.0]])


@settings(max_examples=60, deadline=None)
@given(
    n_questions=st.integers(1, 12),
    per_question=st.integers(1, 5),
    seed=st.integers(0, 10**6),
    identity=st.booleans(),
)
def test_summarize_of_a_batch_is_summarize_of_each_row(
    n_questions: int, per_question: int, seed: int, identity: bool
) -> None:
    rollouts = make_rollouts(n_questions, per_question, seed, identity=identity)
    rng = np.random.default_rng(seed)
    weights = rng.integers(0, 3, (5, len(rollouts))).astype(float)
    if identity:  # bootstrap weights: equal within a question
        weights = rng.integers(0, 3, (5, n_questions)).astype(float)[:, rollouts.question]
    batch = summarize(rollouts, weights)
    for row, w in enumerate(weights):
        for name, value in summarize(rollouts, w).items():
            assert batch[name].shape == (5,)
            assert_same(batch[name][row], value)
