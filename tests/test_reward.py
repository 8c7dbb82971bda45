"""Reward terms: exact values at the penalty breakpoints, both length units, and bounds."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from calibrated_qa.reward import (
    answer_confidence,
    brier_score,
    calibration_reward,
    completion_length,
    is_correct,
    length_penalty,
    score_completion,
)

M = 512
# L -> penalty for M = 512: M/5 = 102.4, 4M/5 = 409.6
BREAKPOINTS = [
    (0.0, -1.0),
    (51.2, -0.5),
    (102.4, 0.0),
    (409.6, 0.0),
    (460.8, -0.5),
    (512.0, -1.0),
    (1000.0, -1.0),
]


@pytest.mark.parametrize(("length", "penalty"), BREAKPOINTS)
def test_length_penalty_breakpoints(length: float, penalty: float) -> None:
    assert length_penalty(length, M) == pytest.approx(penalty, abs=1e-12)


ANSWER = "\nANSWER: YES with 90% probability"


@pytest.mark.parametrize("tokens", [0, 51, 52, 102, 103, 409, 410, 460, 461, 512, 1000])
def test_tokens_unit_uses_exact_counts(tokens: int) -> None:
    score = score_completion(
        ANSWER, True, max_tokens=M, length_unit="tokens", completion_tokens=tokens
    )
    assert score.length_unit == "tokens"
    assert score.length == tokens
    assert score.length_penalty == pytest.approx(length_penalty(tokens, M))
    assert score.reward == pytest.approx(score.calibration_reward + score.length_penalty)


def test_exact_token_breakpoints() -> None:
    assert length_penalty(0, M) == -1.0
    assert length_penalty(512, M) == -1.0
    assert length_penalty(256, M) == 0.0


def test_tokens_unit_falls_back_to_chars_without_a_count() -> None:
    score = score_completion("y" * 400 + ANSWER, True, max_tokens=M, length_unit="tokens")
    assert score.length_unit == "chars"
    assert score.length == (400 + len(ANSWER)) / 4


def test_chars_unit_ignores_token_counts() -> None:
    assert completion_length("abcd" * 10, 999, "chars") == (10.0, "chars")


def test_unknown_length_unit() -> None:
    with pytest.raises(ValueError, match="length_unit"):
        completion_length("x", None, "words")  # type: ignore[arg-type]


def test_max_tokens_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_tokens"):
        length_penalty(10, 0)


@pytest.mark.parametrize(
    ("p_yes", "label", "brier"),
    [(0.9, True, 0.01), (0.9, False, 0.81), (0.0, False, 0.0), (0.5, True, 0.25)],
)
def test_brier_and_calibration_reward(p_yes: float, label: bool, brier: float) -> None:
    assert brier_score(p_yes, label) == pytest.approx(brier)
    assert calibration_reward(p_yes, label) == pytest.approx(1 - brier)


def test_unparseable_scores_zero_calibration_but_keeps_length_penalty() -> None:
    score = score_completion("no answer here", True, max_tokens=M)
    assert not score.parseable and not score.correct
    assert score.p_yes is None and score.brier is None and score.answer is None
    assert score.calibration_reward == 0.0
    assert score.length_penalty == pytest.approx(length_penalty(len("no answer here") / 4, M))
    assert score.reward == score.length_penalty


def test_correct_is_the_side_of_one_half_p_yes_takes() -> None:
    text = "r" * 600 + "\nANSWER: NO with 80% probability"
    no_on_false = score_completion(text, False, max_tokens=M)
    no_on_true = score_completion(text, True, max_tokens=M)
    assert no_on_false.correct and not no_on_true.correct
    assert no_on_false.p_yes == pytest.approx(0.2)
    assert no_on_false.brier == pytest.approx(0.04)
    assert no_on_false.reward == pytest.approx(0.96)
    assert no_on_true.reward == pytest.approx(1 - 0.64)


@pytest.mark.parametrize(
    ("statement", "label", "correct", "confidence"),
    [
        ("YES with 30%", False, True, 0.7),  # P(YES) = 0.3: predicts NO, whatever the word
        ("YES with 30%", True, False, 0.7),
        ("NO with 5%", True, True, 0.95),  # P(YES) = 0.95
        ("YES with 50%", False, True, 0.5),  # no side taken: counts as NO
        ("NO with 50%", True, False, 0.5),
        ("YES with 51%", True, True, 0.51),
    ],
)
def test_prediction_and_confidence_come_from_p_yes(
    statement: str, label: bool, correct: bool, confidence: float
) -> None:
    score = score_completion("r" * 600 + f"\nANSWER: {statement} probability", label, max_tokens=M)
    assert score.correct is correct
    assert is_correct(score.p_yes, label) is correct
    assert answer_confidence(score.p_yes) == pytest.approx(confidence)


def test_equivalent_statements_score_the_same() -> None:
    yes30 = score_completion("r" * 600 + "\nANSWER: YES with 30% probability", True, max_tokens=M)
    no70 = score_completion("r" * 600 + "\nANSWER: NO with 70% probability", True, max_tokens=M)
    assert (yes30.reward, yes30.correct, yes30.brier) == (no70.reward, no70.correct, no70.brier)


@given(
    text=st.text(),
    label=st.booleans(),
    tokens=st.none() | st.integers(min_value=0, max_value=10**9),
    unit=st.sampled_from(["chars", "tokens"]),
    max_tokens=st.integers(min_value=1, max_value=10**6),
)
def test_any_completion_gives_a_finite_reward_in_range(
    text: str, label: bool, tokens: int | None, unit: str, max_tokens: int
) -> None:
    score = score_completion(
        text, label, max_tokens=max_tokens, length_unit=unit, completion_tokens=tokens
    )
    assert math.isfinite(score.reward)
    assert -1.0 <= score.reward <= 1.0
    assert -1.0 <= score.length_penalty <= 0.0
    assert 0.0 <= score.calibration_reward <= 1.0


@pytest.mark.parametrize(
    ("n_chars", "length", "penalty"),
    [(0, 0.0, -1.0), (2048, 512.0, -1.0), (4000, 1000.0, -1.0), (1024, 256.0, 0.0)],
)
def test_exact_breakpoints_in_chars_unit(n_chars: int, length: float, penalty: float) -> None:
    """The breakpoints that characters / 4 can hit exactly (51.2 would need 204.8 characters)."""
    text = "z" * n_chars
    score = score_completion(text, False, max_tokens=M, length_unit="chars")
    assert score.length == length
    assert score.length_penalty == penalty
    assert score.reward == penalty  # unparseable: no calibration term


# Literal values at the reachable neighbours of each breakpoint (M = 512), worked by hand:
# short side -(1 - L/102.4), long side -min((L - 409.6)/102.4, 1).
@pytest.mark.parametrize(
    ("tokens", "penalty"),
    [
        (51, -0.501953125),  # 1 - 51/102.4
        (52, -0.4921875),
        (102, -0.00390625),
        (103, 0.0),
        (409, 0.0),
        (410, -0.00390625),
        (460, -0.4921875),
        (461, -0.501953125),
    ],
)
def test_literal_penalties_next_to_the_breakpoints_in_tokens(tokens: int, penalty: float) -> None:
    score = score_completion("", True, max_tokens=M, length_unit="tokens", completion_tokens=tokens)
    assert score.length_penalty == pytest.approx(penalty, abs=1e-12)


@pytest.mark.parametrize(
    ("n_chars", "penalty"),
    [
        (205, -0.49951171875),  # L = 51.25
        (409, -0.00146484375),  # L = 102.25
        (410, 0.0),  # L = 102.5
        (1638, 0.0),  # L = 409.5
        (1639, -0.00146484375),  # L = 409.75
        (1843, -0.49951171875),  # L = 460.75
    ],
)
def test_literal_penalties_next_to_the_breakpoints_in_chars(n_chars: int, penalty: float) -> None:
    score = score_completion("q" * n_chars, True, max_tokens=M, length_unit="chars")
    assert score.length == n_chars / 4
    assert score.length_penalty == pytest.approx(penalty, abs=1e-12)
