"""Read a generation log into numpy columns, validating at the edge.

One schema (``calibrated_qa.records``); the original formats are converted a batch at a time
(``convert.columns``). Completion texts are never kept: memory does not grow with their length.
"""

from __future__ import annotations

import csv
import gc
import gzip
import math
import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from itertools import compress, repeat
from json import JSONDecodeError
from operator import itemgetter
from pathlib import Path
from typing import Any, BinaryIO, Literal

import numpy as np
from numpy.typing import NDArray

from calibrated_qa import records as schema  # its tables (_ENUMS, ...) define a valid record
from calibrated_qa.analysis import convert
from calibrated_qa.records import RECORD_FIELDS, SPLITS, RecordError, validate_record
from calibrated_qa.reward import answer_confidence, is_correct

Format = Literal["project", "original-log", "original-csv"]
GZIP_MAGIC = b"\x1f\x8b"
BLOCK = 1 << 16  # bytes parsed by one ``loads`` call (small blocks stay in the CPU cache)
BATCH = 1 << 22  # bytes of records validated together: memory is flat in the log's size
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
    gzipped = raw.read(2) == GZIP_MAGIC
    raw.seek(0)
    return gzip.GzipFile(fileobj=raw, mode="rb") if gzipped else raw  # type: ignore[return-value]


def detect_format(path: str | os.PathLike[str]) -> Format:
    """The format of one file, from its first non-blank line; a clear error when unknown/empty."""
    if not (path := Path(path)).is_file():
        raise AnalysisInputError(f"{path}: no such file")
    with open_binary(path) as stream:
        first = next((line for line in stream if line.strip()), b"").decode("utf-8", "replace")
    if not (first := first.strip()):
        raise AnalysisInputError(f"{path}: empty file (no records)")
    if not first.startswith("{"):
        if set(convert.CSV_FIELDS) <= {name.strip() for name in first.split(",")}:
            return "original-csv"
        raise AnalysisInputError(
            f"{path}: unknown format: first line {first[:80]!r} is neither a JSON object nor the "
            f"per-rollout CSV header ({','.join(convert.CSV_FIELDS)})"
        )
    try:
        keys = sorted(loads(first))  # a JSON object: the line starts with "{"
    except JSONDecodeError as exc:
        raise AnalysisInputError(f"{path}:1: first line is not valid JSON ({exc})") from exc
    if "schema" in keys or "full_prompt" in keys:
        return "project" if "schema" in keys else "original-log"
    raise AnalysisInputError(
        f"{path}: unknown format: JSON lines with keys ({', '.join(keys[:12])}); expected this "
        "project's generation log (has 'schema') or the original recipe's log (has 'full_prompt')"
    )


def _blocks(path: Path) -> Iterator[tuple[int, bytearray, int]]:
    """(first line number, "[" + whole lines, newlines) of a file, about ``BLOCK`` bytes at a
    time; the "[" lets the lines, joined by ",", parse as one JSON array after a single copy."""
    stream, first, rest = open_binary(path), 1, b""
    try:
        while data := stream.read(BLOCK):
            if not (cut := data.rfind(b"\n") + 1):
                rest += data
                continue
            block = bytearray(b"[") + rest
            block += memoryview(data)[:cut]
            rest = data[cut:]
            newlines = int(np.count_nonzero(np.frombuffer(block, np.uint8) == 10))  # 2x .count
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
    else:
        report.torn_lines.append(where)
        message = f"{where}: last line is an incomplete record (a writer stopped mid-line); skipped"
        warnings.warn(message, TornLineWarning, stacklevel=5)


def _parsed(path: Path, fmt: Format, report: ReadReport, skip: bool) -> Iterator[tuple[list, list]]:
    """(line numbers, parsed lines) of one file, ``BATCH`` bytes at a time: JSON values, or the
    CSV's rows as dicts keyed by its header."""
    header, numbers, objs, size = None, [], [], 0
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
                block = bytearray(b"[")  # done; else a bad, blank or torn line: one by one below
        lines = [part + b"\n" for part in bytes(block[1:]).split(b"\n")]  # only "\n" ends a line
        lines[-1] = lines[-1][:-1]  # after the last newline: b"" or a torn line
        for number, line in enumerate(lines, first):
            try:
                if not line.strip():
                    continue
                if fmt != "original-csv":
                    objs.append(loads(line))
                    numbers.append(number)
                    continue
                values = [value.strip() for value in next(csv.reader([line.decode("utf-8")]))]
                if header is None:
                    header = values
                elif len(values) != len(header):
                    raise RecordError(f"{len(values)} fields, the header has {len(header)}")
                else:
                    objs.append(dict(zip(header, values, strict=True)))
                    numbers.append(number)
            except (RecordError, JSONDecodeError, UnicodeDecodeError, csv.Error) as exc:
                _torn_or_bad(report, f"{path}:{number}", line, exc, skip)
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
) -> Iterator[tuple[list[int], dict[str, Sequence[Any]]]]:
    """(line numbers, record columns) of one file's valid records, ``BATCH`` bytes at a time:
    this project's checked column by column (a failure gets ``validate_record``'s message), the
    original formats' rows converted by ``convert.columns`` (which checks every value it takes).
    ``split`` leaves out this project's records of the other split."""
    path = Path(path)
    report = report or ReadReport([str(path)], detect_format(path))  # read_rollouts detected it
    fmt = report.fmt
    options = (split if split in SPLITS else "train", max_tokens)
    for numbers, objs in _parsed(path, fmt, report, skip_bad_lines):
        if fmt != "project":
            try:
                col = convert.columns(fmt, objs, report.conversion, *options)
            except RecordError:  # the bad rows, found one at a time, are skipped or reported
                good = []
                for number, obj in zip(numbers, objs, strict=True):
                    try:
                        convert.columns(fmt, [obj], convert.Conversion(), *options)
                        good.append((number, obj))
                    except RecordError as exc:
                        _torn_or_bad(report, f"{path}:{number}", b"", exc, skip_bad_lines)
                if not good:
                    continue
                numbers, objs = map(list, zip(*good, strict=True))
                col = convert.columns(fmt, objs, report.conversion, *options)
            yield numbers, col
            continue
        try:
            col = dict(zip(RECORD_FIELDS, zip(*map(_GET, objs), strict=True), strict=True))
        except (KeyError, TypeError):  # a missing field, or not a JSON object
            _raise_first_invalid(objs, numbers, path)
        steps = list(map(dict.get, objs, repeat("step"), repeat(-1)))  # a converted CSV's own
        if steps.count(-1) < len(steps):
            col["step"] = steps
        if split is not None and set(col["split"]) != {split}:
            keep = [s == split or s not in SPLITS for s in col["split"]]
            report.other_split += keep.count(False)
            col = {name: list(compress(values, keep)) for name, values in col.items()}
            numbers = list(compress(numbers, keep))
        if numbers and not _all_valid(col):
            _raise_first_invalid(_rows(col), numbers, path)
        if numbers:
            yield numbers, col


def _rows(col: dict[str, Sequence[Any]]) -> Iterator[dict[str, Any]]:
    return (dict(zip(col, values, strict=True)) for values in zip(*col.values(), strict=True))


def records(path: str | os.PathLike[str], **options: Any) -> Iterator[tuple[int, dict]]:
    """(line number, record) of every valid record of one file: ``batches`` one by one."""
    for numbers, col in batches(path, **options):
        yield from zip(numbers, _rows(col), strict=True)


_GET = itemgetter(*RECORD_FIELDS)
_EXACT = {int: {int}, float: {int, float}, str: {str}, bool: {bool}}  # JSON's own types


def _within(values: Sequence[Any], low: float, high: float) -> bool:
    array = np.asarray(values, dtype=np.float64)  # NaN fails both comparisons
    return bool(np.all((array >= low) & (array <= high)))


def _all_valid(col: dict[str, Sequence[Any]]) -> bool:
    """``validate_record`` over whole columns at once (never looser); a failure's message comes
    from ``validate_record`` itself (``_raise_first_invalid``)."""
    try:
        parse = np.asarray(col["parseable"], dtype=bool)
        ok, no = parse.tolist(), (~parse).tolist()
        pct, p, brier = (list(compress(col[name], ok)) for name in ("pct", "p_yes", "brier"))
        tokens = [t for t in col["completion_tokens"] if t is not None]
        return (
            set(col["schema"]) == {schema.SCHEMA_VERSION}
            and all(set(col[name]) <= set(values) for name, values in schema._ENUMS.items())
            and all(set(map(type, col[k])) <= _EXACT[t[-1]] for k, t in schema._TYPES.items())
            and all(_within(col[name], *limits) for name, limits in schema._RANGES.items())
            and np.array_equal(parse, [v is not None for v in col["p_yes"]])
            and set(compress(col["answer"], ok)) <= {"YES", "NO"}
            and set(map(type, pct)) <= {int}
            and set(map(type, p + brier)) <= _EXACT[float]
            and _within(pct, 0, 100) & _within(p, 0, 1) & _within(brier, 0, 1)
            and all(set(compress(col[name], no)) <= {None} for name in ("pct", "answer", "brier"))
            and set(map(type, tokens)) <= {int}
            and min(tokens, default=0) >= 0
            and bool(np.all(np.isfinite(np.asarray(col["length"], dtype=np.float64))))
        )
    except (TypeError, ValueError):  # a list or dict where a scalar belongs
        return False


def _raise_first_invalid(objs: Iterable[Any], numbers: Sequence[int], path: Path) -> None:
    """The error of the first invalid record, as ``validate_record`` words it."""
    for obj, number in zip(objs, numbers, strict=False):
        validate_record(obj, f"{path}:{number}")
    raise AssertionError("a column check failed but no record is invalid")  # pragma: no cover


def _arrays(col: dict[str, Sequence[Any]], numbers: list[int], file: int) -> dict[str, NDArray]:
    """One batch's columns as arrays; ``reward``'s functions run once per distinct P(YES)."""
    n = len(numbers)
    p = np.array([math.nan if v is None else v for v in col["p_yes"]], dtype=np.float64)
    y = np.array([truth == "true" for truth in col["ground_truth"]], dtype=bool)
    values, inverse = np.unique(p, return_inverse=True)
    listed = [None if math.isnan(v) else v for v in values.tolist()]
    yes = np.array([is_correct(v, True) for v in listed], dtype=bool)[inverse]
    no = np.array([is_correct(v, False) for v in listed], dtype=bool)[inverse]
    conf = [math.nan if v is None else answer_confidence(v) for v in listed]
    length = np.asarray(col["length"], dtype=np.float64)
    floats = ("reward", "calibration_reward", "length_penalty", "time")
    return {
        "file": np.full(n, file, dtype=np.int64),
        "line": np.asarray(numbers, dtype=np.int64),
        "step": np.asarray(col.get("step", [-1] * n), dtype=np.int64),
        "question": np.maximum(np.asarray(col["example_id"], dtype=np.int64), -1),
        "y": y,
        "parseable": np.asarray(col["parseable"], dtype=bool),
        "correct": np.where(y, yes, no),
        "p_yes": p,
        "confidence": np.asarray(conf, dtype=np.float64)[inverse],
        "brier": np.array([math.nan if v is None else v for v in col["brier"]], dtype=np.float64),
        "length": np.where(length >= 0, length, math.nan),
    } | {name: np.asarray(col[name], dtype=np.float64) for name in floats}


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
    if progress:
        from tqdm import tqdm  # only for a visible bar: its import costs ~50 ms
    bar = tqdm(unit=" records", disable=None, leave=False) if progress else None
    collecting = gc.isenabled()
    gc.disable()  # parsed lines hold no cycles: the collector's rescans of them cost ~5%
    try:
        for file_no, path in enumerate(paths):
            kept = len(parts)
            for numbers, col in batches(
                path, split=split, report=report, skip_bad_lines=skip_bad_lines
            ):
                report.max_tokens |= set(col["max_tokens"])
                report.length_units |= set(col["length_unit"])
                parts.append(_arrays(col, numbers, file_no))
                if bar is not None:
                    bar.update(len(numbers))
            if kept == len(parts):
                detail = f" of split {split!r}" if split and report.other_split else ""
                raise AnalysisInputError(f"{path}: no valid records{detail}")
    finally:
        if collecting:
            gc.enable()
        if bar is not None:
            bar.close()
    arrays = {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}
    report.n_records = len(arrays["line"])
    if fmt != "project":
        if split is not None:
            note = f"the {fmt} format records no split: all records are taken as {split}"
            report.notes.append(note)
        report.notes += report.conversion.notes(fmt)
    for what, values in (("length units", report.length_units), ("max_tokens", report.max_tokens)):
        if len(values) > 1:
            report.notes.append(f"records mix {what} {sorted(values)}")
    return Rollouts(index=np.arange(report.n_records), **arrays, fmt=fmt), report


def read_lines(path: str | os.PathLike[str], wanted: set[int]) -> dict[int, dict[str, Any]]:
    """The records at the given line numbers of one log (a second, targeted pass)."""
    return {n: record for n, record in records(path) if n in wanted}
