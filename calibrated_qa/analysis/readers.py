"""Read a generation log into columns, streaming and validating at the edge.

One schema: this project's record (``calibrated_qa.records``, validated by ``validate_record``).
The original recipe's formats are detected from the first line (after gzip detection by magic
bytes) and converted record by record by ``convert`` before they reach the same code.
Correctness and confidence come from ``calibrated_qa.reward`` (``is_correct``,
``answer_confidence``: the side of P(YES), not the answer word); completion texts are never
kept, so memory does not grow with completion length. Rollouts are keyed by ``example_id``.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, BinaryIO, Literal

import numpy as np
from numpy.typing import NDArray

from calibrated_qa.analysis import convert
from calibrated_qa.records import RecordError, validate_record
from calibrated_qa.reward import answer_confidence, is_correct

Format = Literal["project", "original-log", "original-csv"]
GZIP_MAGIC = b"\x1f\x8b"


class AnalysisInputError(ValueError):
    """Input the analysis cannot read correctly; the message says which file and line, and why."""


class TornLineWarning(UserWarning):
    """The last line of a file is an incomplete record (a writer died mid-line); it is skipped."""


@dataclass
class ReadReport:
    """What was read, and everything that was not read as a record (never silent)."""

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


_DTYPES = [np.int64] * 5 + [bool] * 3 + [np.float64] * 8


def open_binary(path: Path) -> BinaryIO:
    """The decoded byte stream of a file: gzip is recognised by its magic bytes, not its name."""
    raw = open(path, "rb")  # noqa: SIM115 - closed with the stream (GzipFile closes it too)
    if raw.read(2) != GZIP_MAGIC:
        raw.seek(0)
        return raw
    raw.seek(0)
    return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]


def _lines(path: Path, progress: bool) -> Iterator[tuple[int, bytes]]:
    """(line number, line) of the non-blank lines of one file, with an optional progress bar."""
    bar = None
    if progress:
        from tqdm import tqdm  # only for a visible bar: its import costs ~50 ms

        bar = tqdm(desc=path.name, unit=" lines", disable=None, leave=False)
    stream = open_binary(path)
    try:
        for number, line in enumerate(stream, 1):
            if bar is not None and number % 4096 == 0:
                bar.update(4096)
            if line[0] > 32 or line.strip():  # cheap test first (a line is never b"")
                yield number, line
    except (OSError, EOFError) as exc:
        raise AnalysisInputError(f"{path}: cannot read ({exc})") from exc
    finally:
        stream.close()
        if bar is not None:
            bar.close()


def detect_format(path: str | os.PathLike[str]) -> Format:
    """The format of one file, from its first non-blank line; a clear error when unknown/empty."""
    path = Path(path)
    if not path.is_file():
        raise AnalysisInputError(f"{path}: no such file")
    first = next(iter(_lines(path, False)), (0, b""))[1].decode("utf-8", "replace").strip()
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


def records(
    path: str | os.PathLike[str],
    *,
    split: str | None = None,
    max_tokens: int = convert.ORIGINAL_MAX_TOKENS,
    report: ReadReport | None = None,
    skip_bad_lines: bool = False,
    progress: bool = False,
) -> Iterator[tuple[int, str, dict[str, Any]]]:
    """(line number, "file:line", record in this project's schema) of every line of one file.

    The original formats are converted (``split`` and ``max_tokens`` are what they do not
    record). A torn last line warns; a malformed line is an error unless ``skip_bad_lines``.
    """
    path = Path(path)
    fmt = detect_format(path)
    report = report or ReadReport([str(path)], fmt)
    as_split = split if split in ("train", "eval") else "train"
    lines = _lines(path, progress)
    header = None
    if fmt == "original-csv":
        for number, line in lines:
            where = f"{path}:{number}"
            if header is None:
                header = convert.csv_header(line.decode("utf-8"), where)
                continue
            try:
                record = convert.from_csv_row(
                    header, line.decode("utf-8"), where, report.conversion, as_split, max_tokens
                )
            except RecordError as exc:
                _bad(report, where, exc, skip_bad_lines)
                continue
            yield number, where, record
        return
    loads = json.loads
    for number, line in lines:
        where = f"{path}:{number}"
        try:
            obj = loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            if not line.endswith(b"\n"):
                report.torn_lines.append(where)
                warnings.warn(
                    f"{where}: last line is an incomplete record (a writer stopped mid-line); "
                    "skipped",
                    TornLineWarning,
                    stacklevel=2,
                )
                continue
            _bad(report, where, exc, skip_bad_lines)
            continue
        if fmt == "original-log":
            obj = convert.from_original_log(obj, where, as_split, max_tokens)  # type: ignore[arg-type]
        yield number, where, obj


def _bad(report: ReadReport, where: str, exc: Exception, skip: bool) -> None:
    if not skip:
        raise AnalysisInputError(
            f"{where}: malformed line ({exc.__class__.__name__}: {exc}); "
            "pass --skip-bad-lines to skip such lines and count them"
        ) from exc
    report.skipped_lines.append(where)


def read_rollouts(
    paths: Sequence[str | os.PathLike[str]],
    *,
    split: str | None = None,
    skip_bad_lines: bool = False,
    progress: bool = True,
) -> tuple[Rollouts, ReadReport]:
    """Read one log, or several files in order (a resumed run), into columns.

    ``split`` keeps only records of that split (the original formats record none: all are
    taken as ``split``). Raises ``AnalysisInputError`` (or ``RecordError``) on input that would
    make the output wrong: an empty file, a malformed line in the middle (unless
    ``skip_bad_lines``), a missing field, mixed formats, an unknown format.
    """
    if not paths:
        raise AnalysisInputError("no input files given")
    formats = {str(path): detect_format(path) for path in paths}
    if len(set(formats.values())) > 1:
        listing = ", ".join(f"{path} ({fmt})" for path, fmt in formats.items())
        raise AnalysisInputError(f"files of different formats cannot form one run: {listing}")
    fmt = next(iter(formats.values()))
    report = ReadReport(files=[str(p) for p in paths], fmt=fmt)
    rows: list[tuple[Any, ...]] = []
    nan, isfinite = math.nan, math.isfinite
    for file_no, path in enumerate(paths):
        before = len(rows)
        for number, where, obj in records(
            path, split=split, report=report, skip_bad_lines=skip_bad_lines, progress=progress
        ):
            other = obj.get("split") if isinstance(obj, dict) else None
            if split is not None and other != split and other in ("train", "eval"):
                report.other_split += 1
                continue
            r = validate_record(obj, where)
            length = r["length"]
            if not isfinite(length):  # JSON admits NaN; validate_record checks only the type
                raise RecordError(f"{where}: field 'length' is not finite: {length!r}")
            p, y = r["p_yes"], r["ground_truth"] == "true"
            report.max_tokens.add(r["max_tokens"])
            report.length_units.add(r["length_unit"])
            rows.append(
                (
                    len(rows), file_no, number, obj.get("step", -1), max(r["example_id"], -1),
                    y, r["parseable"], is_correct(p, y),
                    nan if p is None else p, nan if p is None else answer_confidence(p),
                    nan if r["brier"] is None else r["brier"], r["reward"],
                    r["calibration_reward"], r["length_penalty"], length if length >= 0 else nan,
                    r["time"],
                )
            )  # fmt: skip
        if len(rows) == before:
            detail = f" of split {split!r}" if split and report.other_split else ""
            raise AnalysisInputError(f"{path}: no valid records{detail}")
    report.n_records = len(rows)
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
    columns = zip(*rows, strict=True) if rows else [()] * len(_DTYPES)
    names = [f.name for f in fields(Rollouts) if f.name != "fmt"]
    arrays = {n: np.asarray(v, dtype=t) for n, v, t in zip(names, columns, _DTYPES, strict=True)}
    return Rollouts(**arrays, fmt=fmt), report


def read_lines(path: str | os.PathLike[str], wanted: set[int]) -> dict[int, dict[str, Any]]:
    """The records at the given line numbers of one log (a second, targeted pass).

    For tools that need full records, completions included (``sample_generations``): the first
    pass (``read_rollouts``) keeps no text, this one keeps only the lines asked for.
    """
    return {n: record for n, _, record in records(path) if n in wanted}
