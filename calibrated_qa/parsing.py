"""Completion text -> the model's stated answer, or ``None`` when there is none to score.

This is the only parser in the project: the environment's reward, the analysis and the tests import
it from here, so what counts as "parseable" means the same thing everywhere.

The format the prompt asks for is one final line ``ANSWER: YES with XX% probability`` (or ``NO``).
The leniency policy is deliberate, because whatever the parser accepts, RL will learn to produce:

Accepted
- the ``ANSWER:`` prefix is optional (small models drop it); case-insensitive everywhere;
- ``probability`` / ``confidence`` after the percent is optional; spaces before ``%``; a comma or
  colon between the answer and ``with`` (``YES, with 80%``);
- markdown emphasis and code marks (``*``, ``_``, backticks) anywhere around or inside the line;
- percents above 100 are clamped to 100 (``YES with 150%`` -> 100);
- the same answer stated more than once.

Refused (unparseable: the calibration term is 0 and the length penalty still applies)
- no answer statement at all, or only inside an unfinished ``<think>`` block (truncated reasoning);
- decimal percents (``YES with 87.5%``): the format asks for an integer, and binning is on integers;
- non-ASCII digits (``YES with ８０%``);
- **conflicting answer lines**: two or more ``ANSWER:`` lines that imply different P(YES)
  (``YES with 80%`` and ``NO with 20%`` agree). Hedging across several final answers is exactly
  the behaviour RL would otherwise discover.

Which statement counts
- only the text after the last ``</think>`` is read (reasoning models may think out loud);
- when any ``ANSWER:``-prefixed statement exists, only those count, so a phrase such as
  "one could say YES with 60% probability" in the reasoning never overrides the answer line;
- otherwise the last unprefixed statement wins.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

Answer = Literal["YES", "NO"]

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"

# Emphasis and code marks are removed before matching: "**ANSWER:** *YES* with `80`%".
_EMPHASIS = str.maketrans("", "", "*_`")

_ANSWER_RE = re.compile(
    r"(?P<prefix>\banswer\s*:\s*)?"
    r"\b(?P<answer>yes|no)\b[ \t]*[,:]?[ \t]*"
    r"with[ \t]+(?P<pct>[0-9]+)(?![0-9]|\.[0-9])[ \t]*%"
    r"(?:[ \t]*(?:probability|confidence)\b)?",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class ParsedAnswer:
    """One stated answer: the word, the integer percent (clamped to 0..100) and P(YES)."""

    answer: Answer
    pct: int
    p_yes: float


def p_yes_from(answer: Answer, pct: int) -> float:
    """P(YES) implied by "ANSWER: <answer> with <pct>%": pct/100 for YES, 1 - pct/100 for NO."""
    if not 0 <= pct <= 100:
        raise ValueError(f"pct must be an integer percent in 0..100, got {pct!r}")
    return pct / 100 if answer == "YES" else 1 - pct / 100


def answer_region(text: str) -> str | None:
    """The part of a completion that may hold the final answer, or None if reasoning never closed.

    Text after the last ``</think>``; the whole text when there is no think block at all. An
    opening ``<think>`` with no ``</think>`` after it means generation stopped mid-thought.
    """
    close = text.rfind(THINK_CLOSE)
    if close >= 0:
        tail = text[close + len(THINK_CLOSE) :]
        return None if THINK_OPEN in tail else tail
    return None if THINK_OPEN in text else text


def _clamped_pct(digits: str) -> int:
    # Clamp on the digit string: int() refuses strings past 4,300 digits, and any text must parse.
    digits = digits.lstrip("0") or "0"
    return 100 if len(digits) > 3 else min(int(digits), 100)


def parse_answer(text: str) -> ParsedAnswer | None:
    """Parse a completion under the policy of this module's docstring; None when unparseable."""
    region = answer_region(text)
    if region is None:
        return None
    matches = list(_ANSWER_RE.finditer(region.translate(_EMPHASIS)))
    if not matches:
        return None
    prefixed = [m for m in matches if m.group("prefix")]
    candidates = prefixed or matches
    answers = [
        ParsedAnswer(answer=word, pct=pct, p_yes=p_yes_from(word, pct))  # type: ignore[arg-type]
        for word, pct in (
            (m.group("answer").upper(), _clamped_pct(m.group("pct"))) for m in candidates
        )
    ]
    if prefixed and len({a.p_yes for a in answers}) > 1:
        return None
    return answers[-1]
