"""The generation log: one JSON object per scored rollout, appended to ``generations.jsonl``.

Several env-server worker processes (4 in the reference run) append to the same file at once, and
the analysis must be able to trust every line. Hence:

- each record is serialised first and written with one ``O_APPEND`` write loop under an exclusive
  ``flock``, so records never interleave whatever their size (a 100 KB completion included);
- a writer that finds the file not ending in a newline (a previous writer was killed mid-record)
  terminates that torn line first, so the damage stays one bad line and never eats a new record;
- logging never makes a rollout fail: ``GenerationLog.append`` reports errors on stderr and returns.

Records of the ``eval`` split go to ``eval_generations.jsonl`` beside the training log, so the
analysis of training rollouts can never mix in held-out evaluation rollouts.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Literal, TypedDict

from calibrated_qa.reward import RolloutScore

SCHEMA_VERSION = 1
Split = Literal["train", "eval"]
SPLITS: tuple[Split, ...] = ("train", "eval")
LOG_FILE_NAMES: dict[Split, str] = {
    "train": "generations.jsonl",
    "eval": "eval_generations.jsonl",
}
LOG_DIR_ENV_VAR = "CALIBRATED_QA_LOG_DIR"


class GenerationRecord(TypedDict):
    """Schema version 1 of one line of the generation log (documented in the README)."""

    schema: int  # SCHEMA_VERSION
    time: float  # unix time the record was written
    pid: int  # the writing process (one per env-server worker)
    example_id: int  # the dataset row's id within its split, stable for a given seed
    split: Split  # "train" or "eval"
    question: str  # the raw BoolQ question, as in the dataset
    ground_truth: Literal["true", "false"]
    completion: str  # the full assistant text
    p_yes: float | None  # null when unparseable
    pct: int | None  # the stated integer percent, null when unparseable
    answer: Literal["YES", "NO"] | None
    parseable: bool
    correct: bool  # stated answer matches the truth; false when unparseable
    brier: float | None  # null when unparseable
    calibration_reward: float
    length_penalty: float
    reward: float
    length: float  # L of the length penalty, in length_unit
    length_unit: Literal["chars", "tokens"]  # "chars" means characters / 4
    completion_tokens: int | None  # exact count when the server reported one
    truncated: bool  # generation stopped at max_tokens
    max_tokens: int  # M of the length penalty (= the sampler's max_tokens)


RECORD_FIELDS: tuple[str, ...] = tuple(GenerationRecord.__annotations__)


def make_record(
    *,
    score: RolloutScore,
    example_id: int,
    split: Split,
    question: str,
    label: bool,
    completion: str,
    completion_tokens: int | None,
    truncated: bool,
    max_tokens: int,
) -> GenerationRecord:
    """Assemble one record from a rollout's score and identity."""
    return GenerationRecord(
        schema=SCHEMA_VERSION,
        time=time.time(),
        pid=os.getpid(),
        example_id=example_id,
        split=split,
        question=question,
        ground_truth="true" if label else "false",
        completion=completion,
        p_yes=score.p_yes,
        pct=score.pct,
        answer=score.answer,
        parseable=score.parseable,
        correct=score.correct,
        brier=score.brier,
        calibration_reward=score.calibration_reward,
        length_penalty=score.length_penalty,
        reward=score.reward,
        length=score.length,
        length_unit=score.length_unit,
        completion_tokens=completion_tokens,
        truncated=truncated,
        max_tokens=max_tokens,
    )


def append_line(path: Path, line: str) -> None:
    """Append one newline-terminated line atomically with respect to other appenders of ``path``."""
    data = line.encode("utf-8")
    if not data.endswith(b"\n") or b"\n" in data[:-1]:
        raise ValueError("append_line takes exactly one newline-terminated line")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            size = os.fstat(fd).st_size
            if size and _last_byte(path, size) != b"\n":
                data = b"\n" + data  # close a line torn by a writer that died mid-record
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _last_byte(path: Path, size: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(size - 1)
        return f.read(1)


class GenerationLog:
    """Appends records to ``<log_dir>/generations.jsonl`` (train) or ``eval_generations.jsonl``."""

    def __init__(self, log_dir: str | os.PathLike[str]) -> None:
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.written = 0

    def path(self, split: Split) -> Path:
        return self.log_dir / LOG_FILE_NAMES[split]

    def append(self, record: GenerationRecord) -> bool:
        """Write one record; on any failure say so on stderr and return False, never raise."""
        try:
            line = json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n"
            append_line(self.path(record["split"]), line)
        except Exception as exc:  # logging must never fail a rollout
            print(f"[calibrated_qa] could not log a record: {exc!r}", file=sys.stderr, flush=True)
            return False
        self.written += 1
        if self.written % 1000 == 0:
            print(
                f"[calibrated_qa] pid {os.getpid()} wrote {self.written} records to {self.log_dir}",
                file=sys.stderr,
                flush=True,
            )
        return True


class RecordError(ValueError):
    """A log line that is not a valid record; the message names the file, line and field."""


_NUMBER = (int, float)
_TYPES: dict[str, tuple[type, ...]] = {
    "time": _NUMBER,
    "pid": (int,),
    "example_id": (int,),
    "question": (str,),
    "completion": (str,),
    "parseable": (bool,),
    "correct": (bool,),
    "calibration_reward": _NUMBER,
    "length_penalty": _NUMBER,
    "reward": _NUMBER,
    "length": _NUMBER,
    "truncated": (bool,),
    "max_tokens": (int,),
}
_ENUMS: dict[str, tuple[Any, ...]] = {
    "split": SPLITS,
    "ground_truth": ("true", "false"),
    "length_unit": ("chars", "tokens"),
}
_RANGES: dict[str, tuple[float, float]] = {
    "calibration_reward": (0.0, 1.0),
    "length_penalty": (-1.0, 0.0),
    "reward": (-1.0, 1.0),
}


def validate_record(obj: Any, where: str) -> GenerationRecord:
    """Check one parsed line against schema version 1; ``where`` is ``"file:line"``.

    The one definition of a valid record: the dry run, the tests and the analysis all call it.
    Every error names the place and the field.
    """

    def fail(message: str) -> RecordError:
        return RecordError(f"{where}: {message}")

    if not isinstance(obj, dict):
        raise fail(f"expected a JSON object, got {type(obj).__name__}")
    missing = [name for name in RECORD_FIELDS if name not in obj]
    if missing:
        raise fail(f"missing field(s) {', '.join(missing)}")
    if obj["schema"] != SCHEMA_VERSION:
        raise fail(f"field 'schema' is {obj['schema']!r}, this code reads {SCHEMA_VERSION}")
    for name, allowed in _ENUMS.items():
        if obj[name] not in allowed:
            raise fail(f"field {name!r} must be one of {allowed}, got {obj[name]!r}")
    for name, types in _TYPES.items():
        value = obj[name]
        if not isinstance(value, types) or (bool not in types and isinstance(value, bool)):
            raise fail(
                f"field {name!r} has type {type(value).__name__}, expected {types[0].__name__}"
            )
    for name, (low, high) in _RANGES.items():
        if not low <= obj[name] <= high:
            raise fail(f"field {name!r} = {obj[name]!r} is outside [{low}, {high}]")
    if obj["parseable"] != (obj["p_yes"] is not None):
        raise fail("fields 'parseable' and 'p_yes' disagree")
    if obj["parseable"]:
        if obj["answer"] not in ("YES", "NO"):
            raise fail(f"field 'answer' must be 'YES' or 'NO', got {obj['answer']!r}")
        if (
            not isinstance(obj["pct"], int)
            or isinstance(obj["pct"], bool)
            or not 0 <= obj["pct"] <= 100
        ):
            raise fail(f"field 'pct' must be an integer in 0..100, got {obj['pct']!r}")
        for name in ("p_yes", "brier"):
            value = obj[name]
            if not isinstance(value, _NUMBER) or isinstance(value, bool) or not 0 <= value <= 1:
                raise fail(f"field {name!r} must be a number in [0, 1], got {value!r}")
    elif any(obj[name] is not None for name in ("pct", "answer", "brier")):
        raise fail("an unparseable record must have null 'pct', 'answer' and 'brier'")
    tokens = obj["completion_tokens"]
    if tokens is not None and (
        not isinstance(tokens, int) or isinstance(tokens, bool) or tokens < 0
    ):
        raise fail(f"field 'completion_tokens' must be null or a count, got {tokens!r}")
    if not math.isfinite(obj["length"]):  # JSON admits NaN and Infinity; a length does not
        raise fail(f"field 'length' is not finite: {obj['length']!r}")
    return obj  # type: ignore[return-value]
