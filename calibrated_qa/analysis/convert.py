"""The original recipe's two formats converted into this project's record schema (version 1).

``columns`` is the one conversion: a batch of source rows becomes the schema's columns, which the
analysis reads directly and ``python -m calibrated_qa.analysis.convert IN... --out OUT.jsonl``
writes as records. What the original never recorded is marked (-1, empty texts), never invented;
docs/analysis.md lists the decisions.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import compress, repeat
from operator import itemgetter
from typing import Any

import numpy as np

from calibrated_qa.records import _RANGES as RANGES  # the schema's ranges, defined once there
from calibrated_qa.records import SCHEMA_VERSION, RecordError, Split
from calibrated_qa.reward import (
    answer_confidence,
    brier_score,
    calibration_reward,
    is_correct,
    predicts_yes,
)

ORIGINAL_MAX_TOKENS = 512  # the original recipe's sampler max_tokens (its run config)
LOG_FIELDS = ("full_prompt", "ground_truth", "p_yes", "p_yes_extracted", "parseable", "reward")
LOG_FIELDS += ("length_penalty", "approx_tokens")
CSV_FIELDS = ("step", "reward", "brier_score", "p_yes", "ground_truth", "parseable")
CSV_UNPARSEABLE_BELOW = -0.25  # a parseable 50% answer earns 1 - 0.25 plus a penalty >= -1
QUESTION_MARKER = "\nQuestion: "
NO_IDENTITY = -1  # example_id of a record whose source has no question identity
NOT_RECORDED = -1.0  # length of a record whose source has no length


@dataclass
class Conversion:
    """What the conversion had to decide, for the report (never silent)."""

    certain_unparseable: int = 0  # CSV rows detected unparseable by the reward rule
    ambiguous: int = 0  # CSV rows that may be unparseable

    def notes(self, fmt: str) -> list[str]:
        notes = [
            f"the {fmt} format records no answer word: answer = YES iff P(YES) > 0.5 "
            "(a stated 50% counts as NO), confidence = probability of that answer"
        ]
        if fmt == "original-csv":
            notes.insert(
                0,
                "the original CSV's parseable column is 1 on every row (p_yes was defaulted to "
                f"0.5); {self.certain_unparseable} rows with p_yes = 0.5 and reward < "
                f"{CSV_UNPARSEABLE_BELOW} are certainly unparseable and counted so; "
                f"{self.ambiguous} rows with p_yes = 0.5 and reward in [-0.25, 0] may be either "
                "and are counted parseable",
            )
        return notes


def question_from_prompt(full_prompt: str) -> str:
    """The question of an original-log prompt: its last ``Question:`` line, without ``?``."""
    start = full_prompt.rfind(QUESTION_MARKER)
    if start < 0 and not full_prompt.startswith("Question: "):
        return ""
    line = full_prompt[start + len(QUESTION_MARKER) :].split("\n", 1)[0]
    return line.strip().rstrip("?").strip()


def question_id(question: str) -> int:
    """A stable id for a question text (48 bits of its SHA-256), -1 without a question."""
    if not question:
        return NO_IDENTITY
    return int.from_bytes(hashlib.sha256(question.encode()).digest()[:6], "big")


def _truth(text: str) -> bool:
    if text.strip().lower() not in ("true", "false", "1", "0"):
        raise RecordError(f"field 'ground_truth' must be true/false, got {text!r}")
    return text.strip().lower() in ("true", "1")


def _numbers(
    values: Sequence[Any], name: str, low: float = -math.inf, high: float = math.inf, kind=float
) -> list[Any]:
    """``kind`` of each value (the log's numbers, the CSV's texts), checked finite and in range."""
    try:
        numbers = list(map(kind, values))
    except (TypeError, ValueError) as exc:
        raise RecordError(f"field {name!r}: {exc}") from None
    array = np.array(numbers, dtype=np.float64)
    ok = np.isfinite(array) & (array >= low) & (array <= high)
    if not ok.all():
        bad = values[int(np.argmin(ok))]
        raise RecordError(f"field {name!r} must be a finite number in [{low}, {high}], got {bad!r}")
    return numbers


def _get(rows: Sequence[dict[str, Any]], name: str, default: Any = None) -> Iterator[Any]:
    return map(dict.get, rows, repeat(name), repeat(default))


def _scores(p_yes: float | None, label: bool) -> tuple[Any, ...]:
    """pct, answer, correct, brier and calibration_reward of a stated P(YES), from ``reward``."""
    stated = p_yes is not None
    return (
        round(100 * answer_confidence(p_yes)) if stated else None,
        ("YES" if predicts_yes(p_yes) else "NO") if stated else None,
        is_correct(p_yes, label),
        brier_score(p_yes, label) if stated else None,
        calibration_reward(p_yes, label),
    )


def columns(
    fmt: str,
    rows: Sequence[Any],
    counts: Conversion,
    split: Split = "train",
    max_tokens: int = ORIGINAL_MAX_TOKENS,
) -> dict[str, Sequence[Any]]:
    """The record columns of a batch of source rows (the log's JSON objects, the CSV's rows as
    dicts): the reward's functions run once per distinct (P(YES), truth), the prompt parsing and
    hash once per distinct prompt. A ``RecordError`` names the field; ``counts`` changes only
    when the whole batch converts."""
    names = LOG_FIELDS if fmt == "original-log" else CSV_FIELDS
    if set(map(type, rows)) != {dict}:
        kind = next(type(row).__name__ for row in rows if type(row) is not dict)
        raise RecordError(f"expected a JSON object, got {kind}")
    try:
        source = dict(zip(names, zip(*map(itemgetter(*names), rows), strict=True), strict=True))
    except KeyError:
        missing = [name for name in names if not all(name in row for row in rows)]
        raise RecordError(f"missing field(s) {', '.join(missing)}") from None
    n = len(rows)
    texts = list(map(str, source["ground_truth"]))
    truth = {text: _truth(text) for text in set(texts)}
    label = list(map(truth.__getitem__, texts))
    reward = _numbers(source["reward"], "reward", *RANGES["reward"])
    if fmt == "original-log":  # p_yes is 0.5 when unparseable; p_yes_extracted is null then
        pairs = zip(source["parseable"], source["p_yes_extracted"], strict=True)
        parse = [bool(a) and b is not None for a, b in pairs]
    else:  # the CSV's parseable is 1 on every row; this project's CSV leaves p_yes empty
        pairs = zip(source["parseable"], source["p_yes"], strict=True)
        parse = [a not in ("0", "False", "false") and b != "" for a, b in pairs]
    stated = iter(_numbers(list(compress(source["p_yes"], parse)), "p_yes", 0.0, 1.0))
    p = [next(stated) if ok else None for ok in parse]
    if fmt == "original-csv":  # a 50% with a reward below any parseable one's is unparseable
        certain = [v == 0.5 and r < CSV_UNPARSEABLE_BELOW for v, r in zip(p, reward, strict=True)]
        p = [None if c else v for v, c in zip(p, certain, strict=True)]
    keys = list(zip(p, label, strict=True))
    scores = {key: _scores(*key) for key in set(keys)}
    pct, answer, correct, brier, calibration = zip(*map(scores.__getitem__, keys), strict=True)
    if fmt == "original-log":
        prompts = list(map(str, source["full_prompt"]))
        question = {prompt: question_from_prompt(prompt) for prompt in set(prompts)}
        ids = {prompt: question_id(text) for prompt, text in question.items()}
        example_id = list(map(ids.__getitem__, prompts))
        question = list(map(question.__getitem__, prompts))
        completion = list(map(str, _get(rows, "full_completion", "")))
        penalty = _numbers(source["length_penalty"], "length_penalty", *RANGES["length_penalty"])
        length = _numbers(source["approx_tokens"], "approx_tokens")
    else:
        ids = [v or NO_IDENTITY for v in _get(rows, "question_id")]
        example_id, question, completion = (
            _numbers(ids, "question_id", kind=int),
            [""] * n,
            [""] * n,
        )
        penalty = map(
            float.__sub__, reward, calibration
        )  # not recorded: what is left of the reward
        penalty = [v or d for v, d in zip(_get(rows, "length_penalty"), penalty, strict=True)]
        penalty = _numbers(penalty, "length_penalty", *RANGES["length_penalty"])
        length = _numbers([v or NOT_RECORDED for v in _get(rows, "length")], "length")
    columns = {
        "schema": [SCHEMA_VERSION] * n, "time": [0.0] * n, "pid": [0] * n, "example_id": example_id,
        "split": [split] * n, "question": question, "completion": completion,
        "ground_truth": ["true" if v else "false" for v in label], "p_yes": p, "pct": pct,
        "answer": answer, "parseable": [v is not None for v in p], "correct": correct,
        "brier": brier, "calibration_reward": calibration, "length_penalty": penalty,
        "reward": reward, "length": length, "length_unit": ["chars"] * n,
        "completion_tokens": [None] * n, "truncated": [False] * n, "max_tokens": [max_tokens] * n,
        "source": [fmt] * n,
    }  # fmt: skip
    if fmt == "original-csv":
        columns["step"] = _numbers(source["step"], "step", kind=int)
        counts.certain_unparseable += sum(certain)
        counts.ambiguous += sum(v == 0.5 and r <= 0 for v, r in zip(p, reward, strict=True))
    return columns


def main(argv: list[str] | None = None) -> int:
    """Write the converted records of one or more original files (in order) to ``--out``."""
    from calibrated_qa.analysis.readers import AnalysisInputError, records

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("inputs", nargs="+", help="original log(s) or per-rollout CSV(s)")
    parser.add_argument("--out", required=True, help="JSONL file to write")
    parser.add_argument("--split", choices=("train", "eval"), default="train")
    parser.add_argument("--max-tokens", type=int, default=ORIGINAL_MAX_TOKENS)
    args = parser.parse_args(argv)
    try:
        with open(args.out, "w", encoding="utf-8") as out:
            for path in args.inputs:
                for _, record in records(path, split=args.split, max_tokens=args.max_tokens):
                    out.write(json.dumps(record, ensure_ascii=False) + "\n")
    except (AnalysisInputError, RecordError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
