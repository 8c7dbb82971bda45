"""The bootstrap: weighting each unit's sums by its draw count gives what resampling the rollouts
themselves gives, one explicit resample at a time."""

from __future__ import annotations

import math
from dataclasses import fields

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from calibrated_qa.analysis import bootstrap as bootstrap_module
from calibrated_qa.analysis.bootstrap import LEVEL, Interval, bootstrap, with_intervals
from calibrated_qa.analysis.metrics import question_groups, summarize, tally
from calibrated_qa.analysis.readers import Rollouts
from tests.fixtures.analysis.build import in_memory_rollouts

COLUMNS = [f.name for f in fields(Rollouts) if f.name != "fmt"]


def make_rollouts(
    n_questions: int, per_question: int, seed: int, *, identity: bool = True
) -> Rollouts:
    """One step of interleaved rollouts: integer-percent answers, some unparseable, lengths."""
    rng = np.random.default_rng(seed)
    n = n_questions * per_question
    question = rng.permutation(np.repeat(np.arange(n_questions), per_question))
    truth = rng.random(n_questions) < 0.5
    ok = rng.random(n) > 0.1
    pct = rng.integers(50, 101, n)
    p = np.where(rng.random(n) < 0.5, pct / 100, 1 - pct / 100)
    length = rng.integers(20, 400, n).astype(float)
    return in_memory_rollouts(
        y=truth[question],
        p_yes=np.where(ok, p, np.nan),
        length_penalty=np.where(length > 300, -(length - 300) / 100, 0.0),
        length=length,
        question=question if identity else np.full(n, -1),
    )


def explicit_resample(r: Rollouts, unit: np.ndarray, drawn: np.ndarray) -> Rollouts:
    """The rollouts of the drawn units, each draw a distinct question (as a resample means)."""
    parts = []
    for k, u in enumerate(drawn):
        part = r.subset(unit == u)
        if r.has_identity:
            part.question[:] = k
        parts.append(part)
    return Rollouts(**{name: np.concatenate([getattr(p, name) for p in parts]) for name in COLUMNS})


def loop_bootstrap(r: Rollouts, resamples: int, seed: int) -> dict[str, Interval]:
    """The straightforward bootstrap: build each resample's rollouts and summarize them."""
    unit, n_units = question_groups(r) if r.has_identity else (np.arange(len(r)), len(r))
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {name: [] for name in summarize(r)}
    for _ in range(resamples):
        drawn = rng.integers(0, n_units, n_units)
        for name, value in summarize(explicit_resample(r, unit, drawn)).items():
            draws[name].append(value)
    tail = (1 - LEVEL) / 2 * 100
    out = {}
    for name, value in summarize(r).items():
        finite = np.array(draws[name])[np.isfinite(draws[name])]
        low, high = np.percentile(finite, [tail, 100 - tail]) if finite.size else (math.nan,) * 2
        out[name] = Interval(value, float(low), float(high))
    return out


def assert_same(a: float, b: float) -> None:
    assert (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("identity", [True, False])
def test_unit_sums_give_the_explicit_resamples_intervals(identity: bool) -> None:
    r = make_rollouts(n_questions=12, per_question=4, seed=7, identity=identity)
    loop = loop_bootstrap(r, resamples=60, seed=3)
    got, unit = with_intervals(r, resamples=60, seed=3)
    assert unit.startswith("questions" if identity else "rollouts")
    assert loop.keys() == got.keys()
    for name in loop:
        for end in ("value", "low", "high"):
            assert_same(getattr(got[name], end), getattr(loop[name], end))
    assert got["brier"].low < got["brier"].value < got["brier"].high  # real intervals


def test_batching_does_not_change_the_draws(monkeypatch: pytest.MonkeyPatch) -> None:
    r = make_rollouts(n_questions=24, per_question=4, seed=11)
    whole, _ = with_intervals(r, resamples=50, seed=5)
    monkeypatch.setattr(bootstrap_module, "BATCH_WEIGHTS", 24 * 7)  # 7 resamples per batch
    batched, _ = with_intervals(r, resamples=50, seed=5)
    for name in whole:  # the same draws; the matrix product may round differently per shape
        for end in ("value", "low", "high"):
            assert_same(getattr(batched[name], end), getattr(whole[name], end))


def test_bootstrap_is_seeded() -> None:
    r = make_rollouts(n_questions=16, per_question=8, seed=2)
    first, _ = with_intervals(r, resamples=100, seed=9)
    assert with_intervals(r, resamples=100, seed=9)[0] == first
    assert with_intervals(r, resamples=100, seed=10)[0]["accuracy"] != first["accuracy"]


def test_paired_difference_of_a_log_with_itself_is_exactly_zero() -> None:
    r = make_rollouts(n_questions=20, per_question=3, seed=4)
    t = tally(r, r.question, 20)
    delta = bootstrap(t, minus=t, resamples=100, seed=1)
    assert (delta["accuracy"].value, delta["accuracy"].low, delta["accuracy"].high) == (0, 0, 0)


def test_no_resamples_gives_points_without_intervals() -> None:
    r = make_rollouts(n_questions=5, per_question=2, seed=1)
    got, _ = with_intervals(r, resamples=0)
    assert got["accuracy"].value == summarize(r)["accuracy"] and math.isnan(got["accuracy"].low)
    assert got["accuracy"].format().count("[") == 0 and Interval(math.nan).format() == "n/a"


@settings(max_examples=40, deadline=None)
@given(
    n_questions=st.integers(1, 8),
    per_question=st.integers(1, 4),
    seed=st.integers(0, 10**6),
    identity=st.booleans(),
)
def test_any_draw_of_units_is_summarize_of_its_rollouts(
    n_questions: int, per_question: int, seed: int, identity: bool
) -> None:
    from calibrated_qa.analysis.metrics import finish

    r = make_rollouts(n_questions, per_question, seed, identity=identity)
    unit, n_units = question_groups(r) if identity else (np.arange(len(r)), len(r))
    t = tally(r, unit, n_units)
    drawn = np.random.default_rng(seed).integers(0, n_units, n_units)
    counts = np.bincount(drawn, minlength=n_units).astype(float)
    expected = summarize(explicit_resample(r, unit, drawn))
    for name, value in finish(counts @ t.sums, t.levels, t.identity).items():
        assert_same(value, expected[name])
