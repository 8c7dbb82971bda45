"""The one user message the model sees: instructions, two worked examples, passage, question.

There is no system message: Gemma 2's chat template raises on a ``system`` role and vLLM answers
400, so everything lives in the single user turn.
"""

from __future__ import annotations

DEFAULT_MAX_PASSAGE_CHARS = 1500
ELLIPSIS = "..."

_FORMAT = """\
Think it through in 1 to 3 sentences first. Then end with exactly one final line in this format:
ANSWER: YES with XX% probability
or
ANSWER: NO with XX% probability
where XX is a whole number from 0 to 100: the probability that your answer is correct.
Write only one ANSWER line."""

INSTRUCTIONS = "Answer the yes/no question about the passage.\n" + _FORMAT
INSTRUCTIONS_NO_PASSAGE = "Answer the yes/no question from what you know.\n" + _FORMAT

# (passage, question, reasoning, answer line): one YES and one NO, both in the asked format.
_EXAMPLES = (
    (
        "The Great Barrier Reef, off the coast of Queensland, is the world's largest coral reef "
        "system and can be seen from outer space.",
        "Is the Great Barrier Reef located in Australia?",
        "Queensland is a state of Australia and the reef lies off its coast, so the reef is in "
        "Australian waters.",
        "ANSWER: YES with 95% probability",
    ),
    (
        "Mercury is the smallest planet in the Solar System and the closest to the Sun. It has "
        "no natural satellites.",
        "Does Mercury have a moon?",
        "Mercury has no natural satellites, and a moon is a natural satellite.",
        "ANSWER: NO with 90% probability",
    ),
)


def worked_examples(include_passage: bool = True) -> str:
    """The two worked examples, with or without their passages (the no-passage variant)."""
    blocks = []
    for number, (passage, question, reasoning, answer) in enumerate(_EXAMPLES, 1):
        lines = [f"Example {number}"]
        if include_passage:
            lines.append(f"Passage: {passage}")
        lines += [f"Question: {question}", reasoning, answer]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def truncate_passage(passage: str, max_chars: int = DEFAULT_MAX_PASSAGE_CHARS) -> str:
    """Keep the first ``max_chars`` characters and mark the cut with ``...``.

    Long passages cost context (``seq_len`` is 2048 tokens) without helping most questions.
    """
    if max_chars <= 0:
        raise ValueError(f"max_passage_chars must be positive, got {max_chars}")
    return passage if len(passage) <= max_chars else passage[:max_chars] + ELLIPSIS


def format_question(question: str) -> str:
    """BoolQ questions are lower case without a question mark: capitalise and add one."""
    text = question.strip()
    if not text:
        raise ValueError("empty question")
    text = text[0].upper() + text[1:]
    return text if text.endswith("?") else text + "?"


def build_user_message(
    question: str,
    passage: str | None,
    *,
    include_passage: bool = True,
    max_passage_chars: int = DEFAULT_MAX_PASSAGE_CHARS,
) -> str:
    """The full text of the single user turn for one BoolQ row."""
    instructions = INSTRUCTIONS if include_passage else INSTRUCTIONS_NO_PASSAGE
    parts = [instructions, worked_examples(include_passage), "Now your turn."]
    if include_passage:
        parts.append(f"Passage: {truncate_passage(passage or '', max_passage_chars)}")
    parts.append(f"Question: {format_question(question)}")
    return "\n\n".join(parts)


def build_prompt(
    question: str,
    passage: str | None,
    *,
    include_passage: bool = True,
    max_passage_chars: int = DEFAULT_MAX_PASSAGE_CHARS,
) -> list[dict[str, str]]:
    """The chat prompt: exactly one ``user`` message."""
    content = build_user_message(
        question, passage, include_passage=include_passage, max_passage_chars=max_passage_chars
    )
    return [{"role": "user", "content": content}]
