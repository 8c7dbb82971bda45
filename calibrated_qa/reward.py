"""The reward of one rollout: calibration term + bucket length penalty, and every ingredient.

Pure functions of plain values (no verifiers types, no I/O) so the environment, the analysis and
the tests compute the same numbers. Definitions:

- calibration term: ``1 - (P(YES) - y)^2`` with ``y = 1`` when the true answer is yes; 0 when the
  completion is unparseable (so guessing a format never pays more than answering).
- length penalty, with ``L`` the completion length and ``M`` the sampler's ``max_tokens``:
  ``-(1 - L/(M/5))`` for ``L < M/5``; ``-min((L - 4M/5)/(M/5), 1)`` for ``L > 4M/5``; else 0.
- reward = calibration term + length penalty, in [-1, 1].

``L`` is measured in one of two units. ``"chars"`` is completion characters / 4, what the reference
run used, kept so its numbers can be reproduced exactly. ``"tokens"`` is the exact completion token
count of the rollout; when a rollout carries no count it falls back to characters / 4 and the score
says so (``length_unit``), so no record silently mixes units.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from calibrated_qa.parsing import Answer, parse_answer

LengthUnit = Literal["chars", "tokens"]
LENGTH_UNITS: tuple[LengthUnit, ...] = ("chars", "tokens")
CHARS_PER_TOKEN = 4
DEFAULT_MAX_TOKENS = 512  # the reference recipe's sampler max_tokens, the M of the penalty


def brier_score(p_yes: float, label: bool) -> float:
    """Squared error of the stated P(YES) against the outcome (1 for a true answer, 0 for false)."""
    return (p_yes - float(label)) ** 2


def predicts_yes(p_yes: float) -> bool:
    """The side of 0.5 a stated P(YES) takes: the prediction accuracy and confidence are about.

    Defined on P(YES), not on the answer word, because the reward is: "YES with 30%" and
    "NO with 70%" score the same, so RL has no reason to keep the word consistent, and the
    original recipe's logs record no word at all. A stated 50% takes no side and counts as NO
    (the usual 0.5 threshold), in every input format.
    """
    return p_yes > 0.5


def answer_confidence(p_yes: float) -> float:
    """Confidence in the predicted answer: ``max(P(YES), 1 - P(YES))``, in [0.5, 1]."""
    return p_yes if predicts_yes(p_yes) else 1.0 - p_yes


def is_correct(p_yes: float | None, label: bool) -> bool:
    """The predicted answer matches the truth; an unparseable rollout (None) is never correct."""
    return p_yes is not None and predicts_yes(p_yes) == label


def calibration_reward(p_yes: float | None, label: bool) -> float:
    """``1 - Brier`` for a parsed answer, 0 for an unparseable one (``p_yes is None``)."""
    return 0.0 if p_yes is None else 1.0 - brier_score(p_yes, label)


def length_penalty(length: float, max_tokens: int) -> float:
    """Bucket penalty in [-1, 0]: asks for some reasoning (>= M/5) without rambling (<= 4M/5)."""
    if max_tokens <= 0:
        raise ValueError(f"max_tokens must be positive, got {max_tokens}")
    # Written in 5L and M rather than L and M/5, so the breakpoints are exact in floating point
    # (L = M gives -1.0, not -0.9999999999999998).
    scaled = 5 * max(length, 0.0)
    if scaled < max_tokens:
        return -(1.0 - scaled / max_tokens)
    if scaled > 4 * max_tokens:
        return -min((scaled - 4 * max_tokens) / max_tokens, 1.0)
    return 0.0


def completion_length(
    text: str, completion_tokens: int | None, unit: LengthUnit
) -> tuple[float, LengthUnit]:
    """The ``L`` of the length penalty and the unit actually used (see the module docstring)."""
    if unit not in LENGTH_UNITS:
        raise ValueError(f"length_unit must be one of {LENGTH_UNITS}, got {unit!r}")
    if unit == "tokens" and completion_tokens is not None:
        return float(completion_tokens), "tokens"
    return len(text) / CHARS_PER_TOKEN, "chars"


def check_sampler_max_tokens(sampled: int | None, max_tokens: int, *, settings: str) -> None:
    """Refuse a sampler ``max_tokens`` other than the length penalty's ``M``.

    A mismatch would silently skew the penalty (e.g. M = 512 while sampling 1,024 tokens lets
    rambling go unpunished up to the cut-off), so it is an error, not a warning. ``settings``
    names the two config keys to align, which differ between the classic and v1 configs.
    """
    if sampled is not None and sampled != max_tokens:
        raise ValueError(
            f"the sampler's max_tokens ({sampled}) differs from the environment's max_tokens "
            f"({max_tokens}), the M of the length penalty: set both to the same value "
            f"({settings})"
        )


@dataclass(frozen=True)
class RolloutScore:
    """Everything the reward is made of, for one completion; None where a value does not exist."""

    answer: Answer | None
    pct: int | None
    p_yes: float | None
    parseable: bool
    correct: bool
    brier: float | None
    calibration_reward: float
    length: float
    length_unit: LengthUnit
    length_penalty: float
    reward: float


def score_completion(
    text: str,
    label: bool,
    *,
    max_tokens: int,
    length_unit: LengthUnit = "chars",
    completion_tokens: int | None = None,
) -> RolloutScore:
    """Score one completion against the true answer (``correct``: see ``is_correct``)."""
    parsed = parse_answer(text)
    p_yes = None if parsed is None else parsed.p_yes
    length, unit_used = completion_length(text, completion_tokens, length_unit)
    calibration = calibration_reward(p_yes, label)
    penalty = length_penalty(length, max_tokens)
    reward = calibration + penalty
    if not math.isfinite(reward):  # pragma: no cover - guarded by construction, kept as a tripwire
        raise AssertionError(f"non-finite reward {reward} for length {length}")
    return RolloutScore(
        answer=None if parsed is None else parsed.answer,
        pct=None if parsed is None else parsed.pct,
        p_yes=p_yes,
        parseable=parsed is not None,
        correct=is_correct(p_yes, label),
        brier=None if p_yes is None else brier_score(p_yes, label),
        calibration_reward=calibration,
        length=length,
        length_unit=unit_used,
        length_penalty=penalty,
        reward=reward,
    )
