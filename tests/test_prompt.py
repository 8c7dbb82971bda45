"""The prompt is one user message, rendered by Gemma 2's chat template (which refuses system)."""

from __future__ import annotations

import jinja2
import pytest

from calibrated_qa.parsing import parse_answer
from calibrated_qa.prompt import (
    INSTRUCTIONS,
    INSTRUCTIONS_NO_PASSAGE,
    build_prompt,
    format_question,
    truncate_passage,
    worked_examples,
)
from tests.conftest import FIXTURES, read_boolq


def render_gemma2(messages: list[dict], add_generation_prompt: bool = True) -> str:
    """Render with a copy of Gemma 2's chat template, including its refusal of a system role."""

    def raise_exception(message: str) -> None:
        raise jinja2.TemplateError(message)

    env = jinja2.Environment()
    env.globals["raise_exception"] = raise_exception
    template = env.from_string((FIXTURES / "gemma2_chat_template.jinja").read_text())
    return template.render(
        messages=messages, bos_token="<bos>", add_generation_prompt=add_generation_prompt
    )


def test_prompt_is_a_single_user_message_the_gemma2_template_renders() -> None:
    row = read_boolq(1)[0]
    prompt = build_prompt(row["question"], row["passage"])
    assert [m["role"] for m in prompt] == ["user"]
    text = render_gemma2(prompt)
    assert text.startswith("<bos><start_of_turn>user\n")
    assert text.endswith("<end_of_turn>\n<start_of_turn>model\n")
    assert format_question(row["question"]) in text


def test_the_template_refuses_a_system_role() -> None:
    with pytest.raises(jinja2.TemplateError, match="System role not supported"):
        render_gemma2([{"role": "system", "content": "x"}, {"role": "user", "content": "y"}])


@pytest.mark.parametrize("include_passage", [True, False])
def test_worked_examples_follow_the_format_they_teach(include_passage: bool) -> None:
    """Each worked example ends in an answer line our own parser accepts."""
    examples = worked_examples(include_passage).split("\n\n")
    assert len(examples) == 2
    parsed = [parse_answer(example) for example in examples]
    assert [p.answer for p in parsed if p] == ["YES", "NO"]
    assert ("Passage:" in examples[0]) is include_passage


@pytest.mark.parametrize("instructions", [INSTRUCTIONS, INSTRUCTIONS_NO_PASSAGE])
def test_xx_has_one_meaning(instructions: str) -> None:
    """XX is the probability that the stated answer is correct, which is how the parser reads
    it (P(YES) = XX/100 for YES, 1 - XX/100 for NO); no second, contradictory definition."""
    assert "ANSWER: YES with XX% probability" in instructions
    assert instructions.count("XX is") == 1
    assert "the probability that your answer is correct" in instructions
    assert "likely" not in instructions and "answer is yes" not in instructions


def test_no_passage_prompt_never_mentions_a_passage() -> None:
    row = read_boolq(1)[0]
    (message,) = build_prompt(row["question"], row["passage"], include_passage=False)
    assert "passage" not in message["content"].lower()
    assert row["passage"][:100] not in message["content"]


@pytest.mark.parametrize(
    ("raw", "formatted"),
    [
        ("is the sky blue", "Is the sky blue?"),
        ("does it rain?", "Does it rain?"),
        ("  can cats swim  ", "Can cats swim?"),
    ],
)
def test_format_question(raw: str, formatted: str) -> None:
    assert format_question(raw) == formatted


def test_truncate_passage() -> None:
    assert truncate_passage("abc", 3) == "abc"
    assert truncate_passage("abcd", 3) == "abc..."
    with pytest.raises(ValueError, match="max_passage_chars"):
        truncate_passage("abc", 0)
