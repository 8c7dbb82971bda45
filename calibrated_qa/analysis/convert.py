"""The original recipe's two formats as records of this project's schema (version 1).

``columns`` is the one conversion: the analysis reads its columns, and
``python -m calibrated_qa.analysis.convert IN... --out OUT.jsonl`` writes them as records. What the
original never recorded is marked (-1, empty texts), never invented (docs/analysis.md).
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import compress
from operator import itemgetter
from typing import Any

import numpy as np

from calibrated_qa import reward
from calibrated_qa.records import _RANGES as RANGES  # the schema's ranges, defined once there
from calibrated_qa.records import SCHEMA_VERSION, RecordError

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
        csv = (
            "the original CSV's parseable column is 1 on every row (p_yes was defaulted to "
            f"0.5); {self.certain_unparseable} rows with p_yes = 0.5 and reward < "
            f"{CSV_UNPARSEABLE_BELOW} are certainly unparseable and counted so; {self.ambiguous} "
            "rows with p_yes = 0.5 and reward in [-0.25, 0] may be either and are counted parseable"
        )
        answer = (
            f"the {fmt} format records no answer word: answer = YES iff P(YES) > 0.5 "
            "(a stated 50% counts as NO), confidence = probability of that answer"
        )
        return [csv, answer] if fmt == "original-csv" else [answer]


def question_from_prompt(full_prompt: str) -> str:
    """The question of an original-log prompt: its last ``Question:`` line, without ``?``."""
    start = full_prompt.rfind(QUESTION_MARKER)
    if start < 0 and not full_prompt.startswith("Question: "):
        return ""
    return full_prompt[start + len(QUESTION_MARKER) :].split("\n", 1)[0].strip().rstrip("?").strip()


def question_id(question: str) -> int:
    """A stable id for a question text (48 bits of its SHA-256), -1 without a question."""
    digest = hashlib.sha256(question.encode()).digest()[:6]
    return int.from_bytes(digest, "big") if question else NO_IDENTITY


def _numbers(values: Sequence[Any], name: str, limits: tuple = (-math.inf, math.inf), kind=float):
    """``kind`` of each value (the log's numbers, the CSV's texts), checked finite and in range."""
    try:
        numbers = list(map(kind, values))
        array = np.array(numbers, dtype=np.float64)
    except (TypeError, ValueError, OverflowError) as exc:
        raise RecordError(f"field {name!r}: {exc}") from None
    if not (ok := np.isfinite(array) & (array >= limits[0]) & (array <= limits[1])).all():
        bad = values[int(np.argmin(ok))]
        raise RecordError(f"field {name!r} must be a finite number in {list(limits)}, got {bad!r}")
    return numbers


def _fields(rows: Sequence[dict], names: Sequence[str]) -> dict[str, Sequence[Any]]:
    """The named fields of every row, as columns; a missing one is a RecordError naming it."""
    try:
        return dict(zip(names, zip(*map(itemgetter(*names), rows), strict=True), strict=True))
    except KeyError:
        missing = [name for name in names if not all(name in row for row in rows)]
        raise RecordError(f"missing field(s) {', '.join(missing)}") from None


@functools.lru_cache(maxsize=4096)  # (P(YES), truth) pairs: about 200 in any log
def _scores(p_yes: float | None, label: bool) -> tuple[Any, ...]:
    """pct, answer, correct, brier and calibration_reward of a stated P(YES), by ``reward``."""
    correct, calibration = reward.is_correct(p_yes, label), reward.calibration_reward(p_yes, label)
    if p_yes is None:
        return None, None, correct, None, calibration
    answer = "YES" if reward.predicts_yes(p_yes) else "NO"
    pct = round(100 * reward.answer_confidence(p_yes))
    return pct, answer, correct, reward.brier_score(p_yes, label), calibration


def columns(
    fmt: str,
    rows: Sequence[Any],
    counts: Conversion,
    split: str = "train",
    max_tokens: int = ORIGINAL_MAX_TOKENS,
) -> dict[str, Sequence[Any]]:
    """The record columns of a batch of source rows (the log's JSON objects, the CSV's rows as
    dicts), every value checked: the reward's functions run once per distinct (P(YES), truth),
    the question's hash once per distinct question. A ``RecordError`` names the field;
    ``counts`` changes only when the whole batch converts."""
    log, n = fmt == "original-log", len(rows)
    if set(map(type, rows)) != {dict}:
        kind = next(type(row).__name__ for row in rows if type(row) is not dict)
        raise RecordError(f"expected a JSON object, got {kind}")
    try:  # the log's optional text in the same pass: a second pass over the rows costs 3x more
        source = _fields(rows, (*LOG_FIELDS, "full_completion") if log else CSV_FIELDS)
    except RecordError:
        source = _fields(rows, LOG_FIELDS if log else CSV_FIELDS)
        source["full_completion"] = [row.get("full_completion", "") for row in rows]
    texts = list(map(str, source["ground_truth"]))
    truth = {text: text.strip().lower() for text in set(texts)}
    if bad := [text for text, value in truth.items() if value not in ("true", "false", "1", "0")]:
        raise RecordError(f"field 'ground_truth' must be true/false, got {bad[0]!r}")
    label = list(map({text: value in ("true", "1") for text, value in truth.items()}.get, texts))
    rewards = _numbers(source["reward"], "reward", RANGES["reward"])
    if log:  # p_yes is 0.5 when unparseable: p_yes_extracted is null then
        pairs = zip(source["parseable"], source["p_yes_extracted"], strict=True)
        parse = [bool(a) and b is not None for a, b in pairs]
    else:  # the CSV's parseable is 1 on every row; this project's CSV leaves p_yes empty
        pairs = zip(source["parseable"], source["p_yes"], strict=True)
        parse = [a not in ("0", "False", "false") and b != "" for a, b in pairs]
    stated = iter(_numbers(list(compress(source["p_yes"], parse)), "p_yes", (0.0, 1.0)))
    p = [next(stated) if ok else None for ok in parse]
    if not log:  # a 50% with a reward below any parseable 50%'s is certainly unparseable
        certain = [v == 0.5 and r < CSV_UNPARSEABLE_BELOW for v, r in zip(p, rewards, strict=True)]
        p = [None if c else v for v, c in zip(p, certain, strict=True)]
        parse = [v is not None for v in p]
    pct, answer, correct, brier, calibration = zip(*map(_scores, p, label), strict=True)
    if log:
        # each prompt's question, read from its end: a prompt's hash would read all of it
        question = list(map(question_from_prompt, map(str, source["full_prompt"])))
        ids = {text: question_id(text) for text in set(question)}
        example_id = list(map(ids.__getitem__, question))
        completion = source["full_completion"]
        if set(map(type, completion)) != {str}:
            completion = list(map(str, completion))
        penalty = source["length_penalty"]
        length = _numbers(source["approx_tokens"], "approx_tokens")
    else:  # the length penalty, when not recorded, is what the calibration term leaves
        ids = [row.get("question_id") or NO_IDENTITY for row in rows]  # this project's CSV's
        example_id = _numbers(ids, "question_id", kind=int)
        question, completion = [""] * n, [""] * n
        derived = map(float.__sub__, rewards, calibration)
        penalty = [row.get("length_penalty") or d for row, d in zip(rows, derived, strict=True)]
        length = _numbers([row.get("length") or NOT_RECORDED for row in rows], "length")
    columns = {
        "schema": [SCHEMA_VERSION] * n, "time": [0.0] * n, "pid": [0] * n, "example_id": example_id,
        "split": [split] * n, "question": question,
        "ground_truth": list(map(("false", "true").__getitem__, label)), "completion": completion,
        "p_yes": p, "pct": pct, "answer": answer, "parseable": parse, "correct": correct,
        "brier": brier,
        "calibration_reward": calibration,
        "length_penalty": _numbers(penalty, "length_penalty", RANGES["length_penalty"]),
        "reward": rewards, "length": length, "length_unit": ["chars"] * n,
        "completion_tokens": [None] * n, "truncated": [False] * n, "max_tokens": [max_tokens] * n,
        "source": [fmt] * n,
    }  # fmt: skip
    if not log:
        columns["step"] = _numbers(source["step"], "step", kind=int)
        counts.certain_unparseable += sum(certain)
        counts.ambiguous += sum(v == 0.5 and r <= 0 for v, r in zip(p, rewards, strict=True))
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
