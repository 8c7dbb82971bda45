"""Read a generation log into numpy columns, validating at the edge.

One schema (``calibrated_qa.records``); the original formats are converted first (``convert``).
Completion texts are never kept, so memory does not grow with completion length.
"""

from __future__ import annotations

import csv
import gc
import gzip
import json
import math
import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from itertools import compress, repeat
from json import JSONDecodeError
from operator import itemgetter
from pathlib import Path
from typing import Any, BinaryIO, Literal

import numpy as np
from numpy.typing import NDArray

from calibrated_qa.analysis import convert
from calibrated_qa.records import _ENUMS as ENUMS  # the schema's tables, defined once there
from calibrated_qa.records import _RANGES as RANGES
from calibrated_qa.records import _TYPES as TYPES
from calibrated_qa.records import (
    RECORD_FIELDS,
    SCHEMA_VERSION,
    SPLITS,
    RecordError,
    validate_record,
)
from calibrated_qa.reward import answer_confidence, is_correct

Format = Literal["project", "original-log", "original-csv"]
GZIP_MAGIC = b"\x1f\x8b"
try:  # orjson parses a log ~2x faster than json; both raise a json.JSONDecodeError subclass
    from orjson import loads
except ImportError:  # pragma: no cover - orjson is a dependency; plain json still reads a log
    from json import loads


class AnalysisInputError(ValueError):
    """Input the analysis cannot read correctly; the message says which file and line, and why."""


class TornLineWarning(UserWarning):
    """The last line of a file is an incomplete record (a writer died mid-line); it is skipped."""


@dataclass
class ReadReport:
    """What was read, and everything not read as a record (never silent)."""

    files: list[str]
    fmt: Format
    n_records: int = 0
    torn_lines: list[str] = field(default_factory=list)  # "file:line"
    skipped_lines: list[str] = field(default_factory=list)  # bad lines skipped on request
    other_split: int = 0  # records of the other split, left out
    conversion: convert.Conversion = field(default_factory=convert.Conversion)
    max_tokens: set[int] = field(default_factory=set)  # M of the records' length penalty
    length_units: set[str] = field(default_factory=set)
    notes: list[str] = field(default_factory=list)


@dataclass
class Rollouts:
    """One row per rollout, as numpy columns. NaN marks a value that does not exist."""

    index: NDArray[np.int64]  # position among the records read, across files in order
    file: NDArray[np.int64]  # which input file (position in ReadReport.files)
    line: NDArray[np.int64]  # line number in that file (1-based)
    step: NDArray[np.int64]  # -1 until attributed; the source's own step (the original CSV)
    question: NDArray[np.int64]  # example_id; -1 when the source has no question identity
    y: NDArray[np.bool_]  # the true answer is yes
    parseable: NDArray[np.bool_]
    correct: NDArray[np.bool_]  # reward.is_correct
    p_yes: NDArray[np.float64]  # NaN when unparseable
    confidence: NDArray[np.float64]  # reward.answer_confidence; NaN when unparseable
    brier: NDArray[np.float64]  # the record's; NaN when unparseable
    reward: NDArray[np.float64]
    calibration_reward: NDArray[np.float64]
    length_penalty: NDArray[np.float64]
    length: NDArray[np.float64]  # NaN when the source did not record it
    time: NDArray[np.float64]  # unix time the record was written; 0 when not recorded
    fmt: Format = "project"

    def __len__(self) -> int:
        return int(self.index.size)

    @property
    def has_identity(self) -> bool:
        """Whether rollouts can be grouped by question (false for the original CSV)."""
        return bool(len(self)) and bool(np.all(self.question >= 0))

    def subset(self, mask: NDArray[Any]) -> Rollouts:
        """The rollouts selected by a boolean mask (or an index array)."""
        columns = {f.name: getattr(self, f.name)[mask] for f in fields(self) if f.name != "fmt"}
        return Rollouts(**columns, fmt=self.fmt)


def open_binary(path: Path) -> BinaryIO:
    """The decoded byte stream of a file: gzip is recognised by its magic bytes, not its name."""
    raw = open(path, "rb")  # noqa: SIM115 - closed with the stream (GzipFile closes it too)
    if raw.read(2) != GZIP_MAGIC:
        raw.seek(0)
        return raw
    raw.seek(0)
    return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]


def detect_format(path: str | os.PathLike[str]) -> Format:
    """The format of one file, from its first non-blank line; a clear error when unknown/empty."""
    path = Path(path)
    if not path.is_file():
        raise AnalysisInputError(f"{path}: no such file")
    with open_binary(path) as stream:
        first = next((line for line in stream if line.strip()), b"")
    first = first.decode("utf-8", "replace").strip()
    if not first:
        raise AnalysisInputError(f"{path}: empty file (no records)")
    if first.startswith("{"):
        try:
            obj = json.loads(first)
        except json.JSONDecodeError as exc:
            raise AnalysisInputError(f"{path}:1: first line is not valid JSON ({exc})") from exc
        if isinstance(obj, dict) and "schema" in obj:
            return "project"
        if isinstance(obj, dict) and "full_prompt" in obj:
            return "original-log"
        keys = ", ".join(sorted(obj)[:12]) if isinstance(obj, dict) else type(obj).__name__
        raise AnalysisInputError(
            f"{path}: unknown format: JSON lines with keys ({keys}); expected this project's "
            "generation log (has 'schema') or the original recipe's log (has 'full_prompt')"
        )
    if set(convert.CSV_FIELDS) <= {name.strip() for name in first.split(",")}:
        return "original-csv"
    raise AnalysisInputError(
        f"{path}: unknown format: first line {first[:80]!r} is neither a JSON object nor the "
        f"per-rollout CSV header ({','.join(convert.CSV_FIELDS)})"
    )


BLOCK = 1 << 16  # bytes parsed by one ``loads`` call (small blocks stay in the CPU cache)
BATCH = 1 << 22  # bytes of records validated together: memory is flat in the log's size


def _blocks(path: Path) -> Iterator[tuple[int, bytearray, int]]:
    """(first line number, "[" + whole lines, newlines) of a file, about ``BLOCK`` bytes at a
    time: the "[" lets the lines, joined by ",", parse as one JSON array after a single copy."""
    stream, first, rest = open_binary(path), 1, b""
    try:
        while data := stream.read(BLOCK):
            if not (cut := data.rfind(b"\n") + 1):
                rest += data
                continue
            block = bytearray(b"[") + rest
            block += memoryview(data)[:cut]
            rest = data[cut:]
            newlines = int(np.count_nonzero(np.frombuffer(block, np.uint8) == 10))  # 2x bytes.count
            yield first, block, newlines
            first += newlines
        if rest:
            yield first, bytearray(b"[") + rest, 0
    except (OSError, EOFError) as exc:
        raise AnalysisInputError(f"{path}: cannot read ({exc})") from exc
    finally:
        stream.close()


def _torn_or_bad(report: ReadReport, where: str, line: bytes, exc: Exception, skip: bool) -> None:
    if line.endswith(b"\n") or isinstance(exc, RecordError):
        if not skip:
            raise AnalysisInputError(
                f"{where}: malformed line ({exc.__class__.__name__}: {exc}); "
                "pass --skip-bad-lines to skip such lines and count them"
            ) from exc
        report.skipped_lines.append(where)
        return
    report.torn_lines.append(where)
    warnings.warn(
        f"{where}: last line is an incomplete record (a writer stopped mid-line); skipped",
        TornLineWarning,
        stacklevel=6,
    )


def _parsed(
    path: Path, fmt: Format, report: ReadReport, skip: bool
) -> Iterator[tuple[list[int], list[Any]]]:
    """(line numbers, parsed lines) of one file, ``BATCH`` bytes at a time: JSON values, or the
    CSV's rows as dicts of their header's names."""
    header: list[str] | None = None
    numbers: list[int] = []
    objs: list[Any] = []
    size = 0
    for first, block, newlines in _blocks(path):
        size += len(block)
        if fmt != "original-csv":
            text = block.replace(b"\n", b",")
            text[-1:] = b"]" if newlines else text[-1:] + b"]"  # the last newline, or a torn line
            try:
                parsed = loads(text)
            except (JSONDecodeError, UnicodeDecodeError):
                parsed = []
            if len(parsed) == max(newlines, 1):  # one value per line
                numbers += range(first, first + len(parsed))
                objs += parsed
                block = b""  # done; else a bad, blank or torn line: line by line below
        lines = [
            part + b"\n" for part in bytes(block[1:]).split(b"\n")
        ]  # "\n" ends a line, nothing else
        lines[-1] = lines[-1][:-1]  # after the last newline: b"" or a torn line
        for number, line in enumerate(lines, first):
            if not line.strip():
                continue
            try:
                if fmt != "original-csv":
                    obj = loads(line)
                else:
                    values = [v.strip() for v in next(csv.reader([line.decode("utf-8")]))]
                    if header is None:
                        header = values
                        continue
                    if len(values) != len(header):
                        raise RecordError(f"{len(values)} fields, the header has {len(header)}")
                    obj = dict(zip(header, values, strict=True))
            except (RecordError, JSONDecodeError, UnicodeDecodeError, csv.Error) as exc:
                _torn_or_bad(report, f"{path}:{number}", line, exc, skip)
                continue
            numbers.append(number)
            objs.append(obj)
        if size >= BATCH and objs:
            yield numbers, objs
            numbers, objs, size = [], [], 0
    if objs:
        yield numbers, objs


def batches(
    path: str | os.PathLike[str],
    *,
    split: str | None = None,
    max_tokens: int = convert.ORIGINAL_MAX_TOKENS,
    report: ReadReport | None = None,
    skip_bad_lines: bool = False,
) -> Iterator[tuple[list[int], list[Any] | dict[str, Sequence[Any]]]]:
    """(line numbers, records) of one file, not yet validated: this project's parsed lines, or
    the original formats' rows converted a batch at a time (as columns, ``convert.columns``)."""
    path = Path(path)
    fmt = detect_format(path)
    report = report or ReadReport([str(path)], fmt)
    as_split = split if split in SPLITS else "train"
    for numbers, objs in _parsed(path, fmt, report, skip_bad_lines):
        if fmt == "project":
            yield numbers, objs
            continue
        try:
            yield numbers, convert.columns(fmt, objs, report.conversion, as_split, max_tokens)
            continue
        except RecordError:
            good = []
            for i, (number, obj) in enumerate(zip(numbers, objs, strict=True)):
                try:  # the failing lines, one at a time
                    convert.columns(fmt, [obj], convert.Conversion(), as_split, max_tokens)
                    good.append(i)
                except RecordError as exc:
                    _torn_or_bad(report, f"{path}:{number}", b"", exc, skip_bad_lines)
        if good:
            numbers, objs = [numbers[i] for i in good], [objs[i] for i in good]
            yield numbers, convert.columns(fmt, objs, report.conversion, as_split, max_tokens)


def _rows(col: dict[str, Sequence[Any]]) -> Iterator[dict[str, Any]]:
    """The records of a batch of columns."""
    return map(dict, map(zip, repeat(col), zip(*col.values(), strict=True)))


def records(path: str | os.PathLike[str], **options: Any) -> Iterator[tuple[int, Any]]:
    """(line number, record) of every record of one file: ``batches`` one by one."""
    for numbers, objs in batches(path, **options):
        yield from zip(numbers, _rows(objs) if isinstance(objs, dict) else objs, strict=True)


_GET = itemgetter(*RECORD_FIELDS)
_NUMBER = {int, float}
_EXACT_TYPES = {int: {int}, float: _NUMBER, str: {str}, bool: {bool}}  # JSON's own types


def _all_valid(col: dict[str, Sequence[Any]]) -> bool:
    """``validate_record`` over whole columns at once (never looser); a failure's message comes
    from ``validate_record`` itself (``_raise_first_invalid``)."""
    try:
        if set(col["schema"]) != {SCHEMA_VERSION}:
            return False
        for name, allowed in ENUMS.items():
            if not set(col[name]) <= set(allowed):
                return False
        for name, types in TYPES.items():
            if not set(map(type, col[name])) <= _EXACT_TYPES[types[-1]]:
                return False
        for name, (low, high) in RANGES.items():
            values = np.asarray(col[name], dtype=np.float64)
            if not np.all((values >= low) & (values <= high)):
                return False
        parse = np.asarray(col["parseable"], dtype=bool)
        if not np.array_equal(parse, [p is not None for p in col["p_yes"]]):
            return False
        ok, not_ok = parse.tolist(), (~parse).tolist()
        if not set(compress(col["answer"], ok)) <= {"YES", "NO"}:
            return False
        for name, kind, high in (("pct", {int}, 100), ("p_yes", _NUMBER, 1), ("brier", _NUMBER, 1)):
            values = list(compress(col[name], ok))
            if not set(map(type, values)) <= kind:
                return False
            array = np.asarray(values, dtype=np.float64)  # NaN fails both comparisons
            if not np.all((array >= 0) & (array <= high)):
                return False
        for name in ("pct", "answer", "brier"):
            if not set(compress(col[name], not_ok)) <= {None}:
                return False
        tokens = [t for t in col["completion_tokens"] if t is not None]
        if not set(map(type, tokens)) <= {int} or min(tokens, default=0) < 0:
            return False
    except (TypeError, ValueError):  # a list or dict where a scalar belongs
        return False
    return bool(np.all(np.isfinite(np.asarray(col["length"], dtype=np.float64))))


def _raise_first_invalid(objs: Iterable[Any], numbers: Sequence[int], path: Path) -> None:
    """The error of the first invalid record, as ``validate_record`` words it."""
    for obj, number in zip(objs, numbers, strict=False):
        validate_record(obj, f"{path}:{number}")
        if not math.isfinite(obj["length"]):  # JSON admits NaN; validate_record checks the type
            raise RecordError(f"{path}:{number}: field 'length' is not finite: {obj['length']!r}")
    raise AssertionError("a column check failed but no record is invalid")  # pragma: no cover


def _columns(
    col: dict[str, Sequence[Any]], numbers: Sequence[int], file_no: int
) -> dict[str, NDArray[Any]]:
    """One batch's columns as arrays; ``reward``'s functions run once per distinct P(YES)."""
    n = len(numbers)
    p = np.array([math.nan if v is None else v for v in col["p_yes"]], dtype=np.float64)
    y = np.array(col["ground_truth"]) == "true"
    values, inverse = np.unique(p, return_inverse=True)
    listed = [None if math.isnan(v) else v for v in values.tolist()]
    yes = np.array([is_correct(v, True) for v in listed], dtype=bool)[inverse]
    no = np.array([is_correct(v, False) for v in listed], dtype=bool)[inverse]
    conf = [math.nan if v is None else answer_confidence(v) for v in listed]
    length = np.asarray(col["length"], dtype=np.float64)
    floats = ("reward", "calibration_reward", "length_penalty", "time")
    return {
        "file": np.full(n, file_no, dtype=np.int64),
        "line": np.asarray(numbers, dtype=np.int64),
        "step": np.asarray(col["step"], dtype=np.int64) if "step" in col else np.full(n, -1),
        "question": np.maximum(np.asarray(col["example_id"], dtype=np.int64), -1),
        "y": y,
        "parseable": np.asarray(col["parseable"], dtype=bool),
        "correct": np.where(y, yes, no),
        "p_yes": p,
        "confidence": np.asarray(conf, dtype=np.float64)[inverse],
        "brier": np.array([math.nan if v is None else v for v in col["brier"]], dtype=np.float64),
        "length": np.where(length >= 0, length, math.nan),
    } | {name: np.asarray(col[name], dtype=np.float64) for name in floats}


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Parsed records hold no cycles (reference counting frees them): the cyclic collector's
    rescans of them would cost ~10% of a read."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@_gc_paused()
def read_rollouts(
    paths: Sequence[str | os.PathLike[str]],
    *,
    split: str | None = None,
    skip_bad_lines: bool = False,
    progress: bool = True,
) -> tuple[Rollouts, ReadReport]:
    """Read one log, or several files in order (a resumed run), into columns; ``split`` keeps
    only records of that split (the original formats record none)."""
    if not paths:
        raise AnalysisInputError("no input files given")
    formats = {str(path): detect_format(path) for path in paths}
    if len(set(formats.values())) > 1:
        listing = ", ".join(f"{path} ({fmt})" for path, fmt in formats.items())
        raise AnalysisInputError(f"files of different formats cannot form one run: {listing}")
    fmt = next(iter(formats.values()))
    report = ReadReport(files=[str(p) for p in paths], fmt=fmt)
    parts: list[dict[str, NDArray[Any]]] = []
    bar = None
    if progress:
        from tqdm import tqdm  # only for a visible bar: its import costs ~50 ms

        bar = tqdm(unit=" records", disable=None, leave=False)
    for file_no, path in enumerate(map(Path, paths)):
        kept = 0
        for numbers, objs in batches(
            path, split=split, report=report, skip_bad_lines=skip_bad_lines
        ):
            if isinstance(objs, dict):
                col = objs  # converted from an original format
            else:
                try:
                    col = dict(zip(RECORD_FIELDS, zip(*map(_GET, objs), strict=True), strict=True))
                except (KeyError, TypeError):  # a missing field, or not a JSON object
                    _raise_first_invalid(objs, numbers, path)
                col["step"] = list(
                    map(dict.get, objs, repeat("step"), repeat(-1))
                )  # converted CSV's
            if split is not None and set(col["split"]) != {split}:
                keep = [s == split or s not in SPLITS for s in col["split"]]
                report.other_split += keep.count(False)
                if not any(keep):
                    continue
                col = {name: list(compress(values, keep)) for name, values in col.items()}
                numbers = list(compress(numbers, keep))
            if not _all_valid(col):
                _raise_first_invalid(_rows(col), numbers, path)
            report.max_tokens |= set(col["max_tokens"])
            report.length_units |= set(col["length_unit"])
            parts.append(_columns(col, numbers, file_no))
            kept += len(numbers)
            if bar is not None:
                bar.update(len(numbers))
        if not kept:
            detail = f" of split {split!r}" if split and report.other_split else ""
            raise AnalysisInputError(f"{path}: no valid records{detail}")
    if bar is not None:
        bar.close()
    arrays = {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}
    report.n_records = len(arrays["line"])
    if fmt != "project":
        if split is not None:
            report.notes.append(
                f"the {fmt} format records no split: all records are taken as {split}"
            )
        report.notes += report.conversion.notes(fmt)
    if len(report.length_units) > 1:
        report.notes.append(f"records mix length units {sorted(report.length_units)}")
    if len(report.max_tokens) > 1:
        report.notes.append(f"records mix max_tokens {sorted(report.max_tokens)}")
    return Rollouts(index=np.arange(report.n_records), **arrays, fmt=fmt), report


def read_lines(path: str | os.PathLike[str], wanted: set[int]) -> dict[int, dict[str, Any]]:
    """The records at the given line numbers of one log (a second, targeted pass)."""
    return {n: record for n, record in records(path) if n in wanted}
