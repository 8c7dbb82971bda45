"""The original recipe's two formats converted into this project's record schema (version 1).

What they never recorded is marked (-1, empty texts), never invented; docs/analysis.md lists the
decisions. ``python -m calibrated_qa.analysis.convert IN... --out OUT.jsonl``.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import sys
from dataclasses import dataclass
from typing import Any

from calibrated_qa.records import SCHEMA_VERSION, RecordError, Split
from calibrated_qa.reward import (
    answer_confidence,
    brier_score,
    calibration_reward,
    is_correct,
    predicts_yes,
)

ORIGINAL_MAX_TOKENS = 512  # the original recipe's sampler max_tokens (its run config)
ORIGINAL_LOG_FIELDS = ("full_prompt", "ground_truth", "p_yes", "p_yes_extracted", "parseable")
ORIGINAL_LOG_FIELDS += ("reward", "length_penalty", "approx_tokens")
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


def question_from_prompt(full_prompt: str) -> str | None:
    """The question of an original-log prompt: its last ``Question:`` line, without ``?``."""
    start = full_prompt.rfind(QUESTION_MARKER)
    if start < 0 and not full_prompt.startswith("Question: "):
        return None
    line = full_prompt[start + len(QUESTION_MARKER) :].split("\n", 1)[0]
    return line.strip().rstrip("?").strip() or None


def question_id(question: str | None) -> int:
    """A stable id for a question text (48 bits of its SHA-256), -1 without a question."""
    if question is None:
        return NO_IDENTITY
    return int.from_bytes(hashlib.sha256(question.encode()).digest()[:6], "big")


def _truth(value: Any) -> bool:
    text = str(value).strip().lower()
    if text not in ("true", "false", "1", "0"):
        raise ValueError(f"ground_truth must be true/false, got {value!r}")
    return text in ("true", "1")


def _finite(value: Any, name: str) -> float:
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"field {name!r} is not finite: {value!r}")
    return number


def _record(
    *, source: str, split: Split, p_yes: float | None, label: bool, reward: float,
    penalty: float, length: float, max_tokens: int, example_id: int = NO_IDENTITY,
    question: str = "", completion: str = "",
) -> dict[str, Any]:  # fmt: skip
    if p_yes is not None and not 0 <= p_yes <= 1:
        raise ValueError(f"p_yes out of [0, 1]: {p_yes}")
    return {
        "schema": SCHEMA_VERSION, "time": 0.0, "pid": 0, "example_id": example_id,
        "split": split, "question": question, "ground_truth": "true" if label else "false",
        "completion": completion, "p_yes": p_yes,
        "pct": None if p_yes is None else round(100 * answer_confidence(p_yes)),
        "answer": None if p_yes is None else ("YES" if predicts_yes(p_yes) else "NO"),
        "parseable": p_yes is not None, "correct": is_correct(p_yes, label),
        "brier": None if p_yes is None else brier_score(p_yes, label),
        "calibration_reward": calibration_reward(p_yes, label), "length_penalty": penalty,
        "reward": reward, "length": length, "length_unit": "chars", "completion_tokens": None,
        "truncated": False, "max_tokens": max_tokens, "source": source,
    }  # fmt: skip


def from_original_log(
    obj: Any, where: str, split: Split = "train", max_tokens: int = ORIGINAL_MAX_TOKENS
) -> dict[str, Any]:
    """One line of the original recipe's log as this project's record."""
    if not isinstance(obj, dict):
        raise RecordError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    missing = [name for name in ORIGINAL_LOG_FIELDS if name not in obj]
    if missing:
        raise RecordError(f"{where}: missing field(s) {', '.join(missing)}")
    try:
        parseable = bool(obj["parseable"]) and obj["p_yes_extracted"] is not None
        question = question_from_prompt(str(obj["full_prompt"]))
        return _record(
            source="original-log",
            split=split,
            p_yes=_finite(obj["p_yes"], "p_yes") if parseable else None,
            label=_truth(obj["ground_truth"]),
            reward=_finite(obj["reward"], "reward"),
            penalty=_finite(obj["length_penalty"], "length_penalty"),
            length=_finite(obj["approx_tokens"], "approx_tokens"),
            max_tokens=max_tokens,
            example_id=question_id(question),
            question=question or "",
            completion=str(obj.get("full_completion", "")),
        )
    except (TypeError, ValueError) as exc:
        raise RecordError(f"{where}: {exc}") from exc


def csv_header(line: str, where: str) -> list[str]:
    """The column names of a per-rollout CSV; they must include ``CSV_FIELDS``."""
    header = [name.strip() for name in next(csv.reader([line]))]
    missing = [name for name in CSV_FIELDS if name not in header]
    if missing:
        raise RecordError(f"{where}: CSV header lacks {', '.join(missing)}")
    return header


def from_csv_row(
    header: list[str],
    line: str,
    where: str,
    counts: Conversion,
    split: Split = "train",
    max_tokens: int = ORIGINAL_MAX_TOKENS,
) -> dict[str, Any]:
    """One row of the original per-rollout CSV (or this project's) as a record with ``step``."""
    try:
        values = next(csv.reader([line]))
        if len(values) != len(header):
            raise ValueError(f"{len(values)} fields, the header has {len(header)}")
        row = {name: value.strip() for name, value in zip(header, values, strict=True)}
        reward = _finite(row["reward"], "reward")
        label = _truth(row["ground_truth"])
        parseable = row["parseable"] not in ("0", "False", "false") and row["p_yes"] != ""
        p = _finite(row["p_yes"], "p_yes") if parseable else None
        if p == 0.5 and reward < CSV_UNPARSEABLE_BELOW:
            p = None
            counts.certain_unparseable += 1
        elif p == 0.5 and reward <= 0:
            counts.ambiguous += 1
        penalty = row.get("length_penalty")
        length = row.get("length")
        record = _record(
            source="original-csv",
            split=split,
            p_yes=p,
            label=label,
            reward=reward,
            penalty=reward - calibration_reward(p, label) if not penalty else float(penalty),
            length=float(length) if length else NOT_RECORDED,
            max_tokens=max_tokens,
            example_id=int(row["question_id"]) if row.get("question_id") else NO_IDENTITY,
        )
        record["step"] = int(row["step"])
        return record
    except (KeyError, TypeError, ValueError) as exc:
        raise RecordError(f"{where}: malformed CSV row ({exc})") from exc


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
