"""The answer parser: the accepted/refused table of ``calibrated_qa.parsing``'s docstring."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from calibrated_qa.parsing import answer_region, p_yes_from, parse_answer

# (completion text, expected (answer, pct) or None)
CASES: list[tuple[str, tuple[str, int] | None]] = [
    # the format the prompt asks for
    ("The passage says so.\nANSWER: YES with 90% probability", ("YES", 90)),
    ("It does not.\nANSWER: NO with 75% probability", ("NO", 75)),
    # prefix optional, case-insensitive, trailing word optional
    ("YES with 80% probability", ("YES", 80)),
    ("answer: no with 60% confidence", ("NO", 60)),
    ("Answer: Yes With 55%", ("YES", 55)),
    ("ANSWER:YES with 70% probability", ("YES", 70)),
    ("ANSWER: YES with 70 % probability", ("YES", 70)),
    ("ANSWER: NO, with 65% probability", ("NO", 65)),
    ("ANSWER: YES with 85%.", ("YES", 85)),
    # boundaries and clamping
    ("ANSWER: YES with 0% probability", ("YES", 0)),
    ("ANSWER: NO with 100% probability", ("NO", 100)),
    ("ANSWER: YES with 150% probability", ("YES", 100)),
    ("ANSWER: YES with 007% probability", ("YES", 7)),
    ("ANSWER: YES with " + "9" * 5000 + "% probability", ("YES", 100)),
    # decimals and non-ASCII digits are refused
    ("ANSWER: YES with 87.5% probability", None),
    ("ANSWER: NO with ８０% probability", None),
    # markdown emphasis
    ("**ANSWER: YES with 80% probability**", ("YES", 80)),
    ("ANSWER: **NO** with *65%* probability", ("NO", 65)),
    ("`ANSWER: YES with 40% probability`", ("YES", 40)),
    ("__ANSWER:__ NO with 30% probability", ("NO", 30)),
    # last statement wins; an ANSWER line beats unprefixed mentions in the reasoning
    ("I could say YES with 60% probability, but NO with 70% probability", ("NO", 70)),
    ("ANSWER: YES with 80% probability\n(One might say NO with 60% probability.)", ("YES", 80)),
    ("Maybe NO with 55%.\nANSWER: YES with 80% probability", ("YES", 80)),
    # the same answer repeated is fine; conflicting ANSWER lines are refused
    ("ANSWER: YES with 80% probability\nANSWER: YES with 80% probability", ("YES", 80)),
    ("ANSWER: YES with 80% probability\nANSWER: NO with 80% probability", None),
    ("ANSWER: YES with 80% probability\nANSWER: YES with 70% probability", None),
    ("ANSWER: YES with 80% probability\nANSWER: NO with 20% probability", ("NO", 20)),  # same P
    # </think> handling: only the text after the last </think> counts
    ("<think>NO with 90% probability</think>ANSWER: YES with 60% probability", ("YES", 60)),
    ("<think>a</think>x<think>b</think>\nANSWER: NO with 55% probability", ("NO", 55)),
    ("<think>ANSWER: YES with 90% probability</think>Nothing to add.", None),
    ("<think>I think ANSWER: YES with 90% probability", None),  # unclosed: truncated reasoning
    ("<think>a</think><think>still thinking ANSWER: NO with 20%", None),
    ("ANSWER: YES with 90% probability</think>", None),  # nothing after the last </think>
    # words that merely contain YES/NO, or a missing percent, do not count
    ("NOT with 90% probability", None),
    ("EYES with 90% probability", None),
    ("ANSWER: YES with high probability", None),
    ("ANSWER: YES 90% probability", None),
    ("ANSWER: MAYBE with 50% probability", None),
    # empty, whitespace, unicode
    ("", None),
    ("   \n\t ", None),
    ("Réponse : le passage l'indique ✓\nANSWER: YES with 66% probability 🙂", ("YES", 66)),
    ("答案：是\nANSWER: NO with 12% probability", ("NO", 12)),
]


@pytest.mark.parametrize(("text", "expected"), CASES)
def test_parse_table(text: str, expected: tuple[str, int] | None) -> None:
    parsed = parse_answer(text)
    if expected is None:
        assert parsed is None
    else:
        assert parsed is not None
        assert (parsed.answer, parsed.pct) == expected
        assert parsed.p_yes == p_yes_from(*expected)


def test_table_is_large_enough() -> None:
    assert len(CASES) >= 30


@pytest.mark.parametrize(
    ("answer", "pct", "p_yes"),
    [("YES", 90, 0.9), ("NO", 90, 0.1), ("YES", 0, 0.0), ("NO", 0, 1.0), ("NO", 30, 0.7)],
)
def test_p_yes_from(answer: str, pct: int, p_yes: float) -> None:
    assert p_yes_from(answer, pct) == pytest.approx(p_yes)


def test_p_yes_from_refuses_out_of_range() -> None:
    with pytest.raises(ValueError, match="0..100"):
        p_yes_from("YES", 101)


def test_answer_region() -> None:
    assert answer_region("plain") == "plain"
    assert answer_region("<think>x</think> tail") == " tail"
    assert answer_region("<think>open") is None


@given(st.text())
def test_any_text_gives_none_or_probability(text: str) -> None:
    parsed = parse_answer(text)
    assert parsed is None or (0.0 <= parsed.p_yes <= 1.0 and 0 <= parsed.pct <= 100)


answer_like = st.builds(
    lambda pre, word, pct, post: f"{pre}ANSWER: {word} with {pct}% probability{post}",
    st.text(max_size=50),
    st.sampled_from(["YES", "NO", "yes", "No"]),
    st.integers(min_value=0, max_value=10**6),
    st.text(max_size=50),
)


@given(answer_like)
def test_answer_like_text_never_raises(text: str) -> None:
    parsed = parse_answer(text)
    assert parsed is None or 0.0 <= parsed.p_yes <= 1.0
