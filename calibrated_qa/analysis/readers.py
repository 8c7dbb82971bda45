"""Read rollouts from the three log formats into columns, streaming and validating at the edge.

Formats (detected from the first line, after gzip detection by magic bytes):

- ``project``: this project's generation log (``calibrated_qa.records``, schema v1). The truth,
  P(YES) and question identity (``example_id``) are read from the record; correctness and
  confidence are recomputed from P(YES) (see below), not taken from ``correct``/``pct``.
- ``original-log``: the original recipe's ``generations.jsonl`` (``full_prompt, ground_truth,
  p_yes, p_yes_extracted, parseable, ...``). Its ``p_yes`` is 0.5 and its ``brier_score`` 0.25 for
  unparseable rollouts, so parseable is ``parseable and p_yes_extracted is not None`` and Brier is
  recomputed. The question identity is the last
  ``Question:`` line of ``full_prompt`` (the instructions' worked examples have their own).
- ``original-csv``: the original per-rollout table (``index,step,reward,brier_score,p_yes,
  ground_truth,parseable``). Its ``parseable`` is 1 on every row (``p_yes`` was defaulted to 0.5),
  so a row with ``p_yes == 0.5`` and ``reward < -0.25`` is marked unparseable: a parseable 50%
  answer earns at least ``0.75 - 1``. Rows with ``p_yes == 0.5`` and reward in [-0.25, 0] could be
  either and stay parseable; they are counted in ``ReadReport.ambiguous``. The table carries no
  question identity and no length; its ``step`` column is used as is. This project's own
  ``calibration_metrics.csv`` is the same table with a true ``parseable`` and extra columns.

Prediction, correctness and confidence have one definition for all three formats, the reward's
(``calibrated_qa.reward``): the prediction is YES iff P(YES) > 0.5 (a stated 50% counts as NO,
``predicts_yes``), correct iff that prediction matches the truth (``is_correct``; never for an
unparseable rollout), confidence = ``max(P(YES), 1 - P(YES))`` (``answer_confidence``). The answer
word is not used: the reward ignores it ("YES with 30%" and "NO with 70%" score the same), and the
original formats do not record it.

Completion texts are never kept: memory does not grow with completion length.
"""

from __future__ import annotations

import csv
import gzip
import json
import math
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal

import numpy as np
from numpy.typing import NDArray

from calibrated_qa.records import RecordError, validate_record
from calibrated_qa.reward import answer_confidence, is_correct

Format = Literal["project", "original-log", "original-csv"]
GZIP_MAGIC = b"\x1f\x8b"
ORIGINAL_LOG_FIELDS = (
    "full_prompt",
    "ground_truth",
    "p_yes",
    "p_yes_extracted",
    "parseable",
    "brier_score",
    "reward",
    "length_penalty",
    "approx_tokens",
)
CSV_FIELDS = ("step", "reward", "brier_score", "p_yes", "ground_truth", "parseable")
# A parseable answer of 50% earns 1 - 0.25 = 0.75 plus a penalty >= -1: reward >= -0.25.
CSV_UNPARSEABLE_BELOW = -0.25
QUESTION_MARKER = "\nQuestion: "


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
    ambiguous: int = 0  # CSV rows that may be unparseable (see the module docstring)
    certain_unparseable: int = 0  # CSV rows detected unparseable by the reward rule
    length_units: set[str] = field(default_factory=set)
    notes: list[str] = field(default_factory=list)
    # question code -> its identity in the file (example_id, or the original log's question
    # text), so that logs of the same questions can be paired
    question_keys: list[Any] = field(default_factory=list)


@dataclass
class Rollouts:
    """One row per rollout, as numpy columns. NaN marks a value that does not exist."""

    index: NDArray[np.int64]  # position among the records read, across files in order
    file: NDArray[np.int64]  # which input file (position in ReadReport.files)
    line: NDArray[np.int64]  # line number in that file (1-based)
    step: NDArray[np.int64]  # -1 until attributed; the CSV's own step column otherwise
    question: NDArray[np.int64]  # question identity code, -1 when the format has none
    y: NDArray[np.bool_]  # the true answer is yes
    parseable: NDArray[np.bool_]
    correct: NDArray[np.bool_]  # reward.is_correct: P(YES) > 0.5 matches the truth
    p_yes: NDArray[np.float64]  # NaN when unparseable
    confidence: NDArray[np.float64]  # reward.answer_confidence; NaN when unparseable
    reward: NDArray[np.float64]
    calibration_reward: NDArray[np.float64]
    length_penalty: NDArray[np.float64]
    length: NDArray[np.float64]  # NaN when the format does not carry it
    fmt: Format

    def __len__(self) -> int:
        return int(self.index.size)

    @property
    def has_identity(self) -> bool:
        """Whether rollouts can be grouped by question (false for the original CSV)."""
        return bool(len(self)) and bool(np.all(self.question >= 0))

    def subset(self, mask: NDArray[np.bool_]) -> Rollouts:
        """The rollouts selected by a boolean mask (or an index array)."""
        columns = {
            name: getattr(self, name)[mask] for name in self.__dataclass_fields__ if name != "fmt"
        }
        return Rollouts(**columns, fmt=self.fmt)


_COLUMNS = (
    "index",
    "file",
    "line",
    "step",
    "question",
    "y",
    "parseable",
    "correct",
    "p_yes",
    "confidence",
    "reward",
    "calibration_reward",
    "length_penalty",
    "length",
)
_DTYPES = {name: np.int64 for name in ("index", "file", "line", "step", "question")}
_BOOLS = {"y", "parseable", "correct"}


def open_binary(path: Path) -> tuple[BinaryIO, BinaryIO]:
    """(raw file, decoded stream): gzip is recognised by its magic bytes, not by the file name."""
    raw = open(path, "rb")  # noqa: SIM115 - closed by the caller
    magic = raw.read(2)
    raw.seek(0)
    stream: BinaryIO = gzip.GzipFile(fileobj=raw, mode="rb") if magic == GZIP_MAGIC else raw  # type: ignore[assignment]
    return raw, stream


def _first_line(path: Path) -> bytes:
    raw, stream = open_binary(path)
    try:
        for line in stream:
            if line.strip():
                return line
        return b""
    except (OSError, EOFError) as exc:
        raise AnalysisInputError(f"{path}: cannot read ({exc})") from exc
    finally:
        stream.close()
        raw.close()


def detect_format(path: str | os.PathLike[str]) -> Format:
    """The format of one file, from its first non-blank line; a clear error when unknown/empty."""
    path = Path(path)
    if not path.is_file():
        raise AnalysisInputError(f"{path}: no such file")
    first = _first_line(path)
    if not first:
        raise AnalysisInputError(f"{path}: empty file (no records)")
    text = first.decode("utf-8", errors="replace").strip()
    if text.startswith("{"):
        try:
            obj = json.loads(text)
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
    header = [name.strip() for name in text.split(",")]
    if set(CSV_FIELDS) <= set(header):
        return "original-csv"
    raise AnalysisInputError(
        f"{path}: unknown format: first line {text[:80]!r} is neither a JSON object nor the "
        f"per-rollout CSV header ({','.join(CSV_FIELDS)})"
    )


def question_from_prompt(full_prompt: str) -> str | None:
    """The question of an original-log prompt: its last ``Question:`` line, without ``?``."""
    start = full_prompt.rfind(QUESTION_MARKER)
    if start < 0:
        if not full_prompt.startswith("Question: "):
            return None
        start = -1
    line = full_prompt[start + len(QUESTION_MARKER) :].split("\n", 1)[0]
    return line.strip().rstrip("?").strip() or None


def _is_true(value: Any) -> bool:
    text = str(value).strip().lower()
    if text not in ("true", "false", "1", "0"):
        raise ValueError(f"ground_truth must be true/false, got {value!r}")
    return text in ("true", "1")


def _finite(value: Any, name: str) -> float:
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"field {name!r} is not finite: {value!r}")
    return number


class _Columns:
    """Column builder: one tuple per rollout (in ``_COLUMNS`` order), numpy arrays at the end."""

    def __init__(self) -> None:
        self.rows: list[tuple] = []
        self.codes: dict[Any, int] = {}

    def code(self, key: Any) -> int:
        if key is None:
            return -1
        return self.codes.setdefault(key, len(self.codes))

    def add(self, *values: Any) -> None:
        self.rows.append(values)

    def build(self, fmt: Format) -> Rollouts:
        columns = zip(*self.rows, strict=True) if self.rows else [()] * len(_COLUMNS)
        arrays = {}
        for name, values in zip(_COLUMNS, columns, strict=True):
            dtype = bool if name in _BOOLS else _DTYPES.get(name, np.float64)
            arrays[name] = np.asarray(values, dtype=dtype)
        return Rollouts(**arrays, fmt=fmt)


def _project_row(obj: Any, where: str, cols: _Columns, position: tuple[int, int, int]) -> str:
    # validate_record is the full schema check (types, ranges, parseable <-> p_yes/pct/answer);
    # only what it leaves open is checked here: a finite length (JSON admits NaN there).
    record = validate_record(obj, where)
    length = record["length"]
    if not math.isfinite(length):
        raise RecordError(f"{where}: field 'length' is not finite: {length!r}")
    parseable = record["parseable"]
    p_yes = float(record["p_yes"]) if parseable else None  # type: ignore[arg-type]
    y = record["ground_truth"] == "true"
    cols.rows.append(
        (
            *position,
            -1,
            cols.code(record["example_id"]),
            y,
            parseable,
            is_correct(p_yes, y),
            math.nan if p_yes is None else p_yes,
            math.nan if p_yes is None else answer_confidence(p_yes),
            float(record["reward"]),
            float(record["calibration_reward"]),
            float(record["length_penalty"]),
            float(length),
        )
    )
    return record["length_unit"]


def _original_row(obj: Any, where: str, cols: _Columns, position: tuple[int, int, int]) -> None:
    if not isinstance(obj, dict):
        raise RecordError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    missing = [name for name in ORIGINAL_LOG_FIELDS if name not in obj]
    if missing:
        raise RecordError(f"{where}: missing field(s) {', '.join(missing)}")
    try:
        y = _is_true(obj["ground_truth"])
        parseable = bool(obj["parseable"]) and obj["p_yes_extracted"] is not None
        p = _finite(obj["p_yes"], "p_yes") if parseable else math.nan
        if parseable and not 0 <= p <= 1:
            raise ValueError(f"p_yes out of [0, 1]: {p}")
        calibration = 1 - (p - y) ** 2 if parseable else 0.0
        cols.add(
            *position,
            -1,
            cols.code(question_from_prompt(str(obj["full_prompt"]))),
            y,
            parseable,
            is_correct(p if parseable else None, y),
            p,
            answer_confidence(p) if parseable else math.nan,
            _finite(obj["reward"], "reward"),
            calibration,
            _finite(obj["length_penalty"], "length_penalty"),
            _finite(obj["approx_tokens"], "approx_tokens"),
        )
    except (TypeError, ValueError) as exc:
        raise RecordError(f"{where}: {exc}") from exc


class _NoBar:
    """Stands in for a tqdm bar when no progress is shown (tqdm is then never imported)."""

    n = 0

    def update(self, amount: int) -> None:
        self.n += amount

    def close(self) -> None:
        pass


class _LineReader:
    """Streams the lines of one file with a progress bar, line numbers and torn-line detection."""

    def __init__(self, path: Path, progress: bool) -> None:
        self.path = path
        self.progress = progress

    def __iter__(self) -> Iterator[tuple[int, bytes, bool]]:
        """Yields (line number, line, is_complete) for non-blank lines."""
        raw, stream = open_binary(self.path)
        size = os.path.getsize(self.path)
        if self.progress:
            from tqdm import tqdm  # only for a visible bar: its import costs ~50 ms

            bar: Any = tqdm(
                total=size,
                unit="B",
                unit_scale=True,
                desc=self.path.name,
                disable=None,
                leave=False,
            )
        else:
            bar = _NoBar()
        try:
            for number, line in enumerate(stream, 1):
                if number % 2048 == 0:
                    bar.update(raw.tell() - bar.n)
                if line[0] > 32 or line.strip():  # cheap test first (a line is never b"")
                    yield number, line, line.endswith(b"\n")
            bar.update(size - bar.n)
        except (OSError, EOFError) as exc:
            raise AnalysisInputError(f"{self.path}: cannot read ({exc})") from exc
        finally:
            bar.close()
            stream.close()
            raw.close()


def _read_jsonl(
    path: Path,
    file_no: int,
    fmt: Format,
    cols: _Columns,
    report: ReadReport,
    split: str | None,
    skip_bad_lines: bool,
    progress: bool,
) -> None:
    loads = json.loads
    name = str(path)
    for number, line, complete in _LineReader(path, progress):
        where = f"{name}:{number}"
        try:
            obj = loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            if not complete:
                report.torn_lines.append(where)
                warnings.warn(
                    f"{where}: last line is an incomplete record (a writer stopped mid-line); "
                    "skipped",
                    TornLineWarning,
                    stacklevel=2,
                )
                continue
            if skip_bad_lines:
                report.skipped_lines.append(where)
                continue
            raise AnalysisInputError(
                f"{where}: malformed line ({exc.__class__.__name__}: {exc}); "
                "pass --skip-bad-lines to skip such lines and count them"
            ) from exc
        if fmt == "project":
            other = obj.get("split") if isinstance(obj, dict) else None
            if split is not None and other != split and other in ("train", "eval"):
                report.other_split += 1
                continue
            position = (report.n_records, file_no, number)
            unit = _project_row(obj, where, cols, position)
            report.length_units.add(unit)
        else:
            _original_row(obj, where, cols, (report.n_records, file_no, number))
        report.n_records += 1


def _read_csv(
    path: Path,
    file_no: int,
    cols: _Columns,
    report: ReadReport,
    skip_bad_lines: bool,
    progress: bool,
) -> None:
    lines = ((n, line.decode("utf-8")) for n, line, _ in _LineReader(path, progress))
    _, header_line = next(lines)
    header = next(csv.reader([header_line]))
    position = {name.strip(): i for i, name in enumerate(header)}
    has_length = "length" in position and "length_penalty" in position
    question_column = position.get("question_id")
    for number, text in lines:
        where = f"{path}:{number}"
        row = next(csv.reader([text]))
        try:
            if len(row) != len(header):
                raise ValueError(f"{len(row)} fields, header has {len(header)}")
            get = {name: row[i].strip() for name, i in position.items()}
            reward = _finite(get["reward"], "reward")
            y = _is_true(get["ground_truth"])
            parseable = get["parseable"] not in ("0", "False", "false") and get["p_yes"] != ""
            p = _finite(get["p_yes"], "p_yes") if parseable else math.nan
            if parseable and p == 0.5:
                if reward < CSV_UNPARSEABLE_BELOW:
                    parseable, p = False, math.nan
                    report.certain_unparseable += 1
                elif reward <= 0:
                    report.ambiguous += 1
            if parseable and not 0 <= p <= 1:
                raise ValueError(f"p_yes out of [0, 1]: {p}")
            calibration = 1 - (p - y) ** 2 if parseable else 0.0
            question = -1
            if question_column is not None and row[question_column].strip():
                question = cols.code(int(row[question_column]))
            cols.add(
                report.n_records,
                file_no,
                number,
                int(get["step"]),
                question,
                y,
                parseable,
                is_correct(p if parseable else None, y),
                p,
                answer_confidence(p) if parseable else math.nan,
                reward,
                calibration,
                _finite(get["length_penalty"], "length_penalty")
                if has_length
                else reward - calibration,
                float(get["length"]) if has_length and get["length"] else math.nan,
            )
        except (KeyError, TypeError, ValueError) as exc:
            if skip_bad_lines:
                report.skipped_lines.append(where)
                continue
            raise AnalysisInputError(
                f"{where}: malformed CSV row ({exc}); pass --skip-bad-lines to skip such rows"
            ) from exc
        report.n_records += 1


def read_rollouts(
    paths: Sequence[str | os.PathLike[str]],
    *,
    split: str | None = None,
    skip_bad_lines: bool = False,
    progress: bool = True,
) -> tuple[Rollouts, ReadReport]:
    """Read one log, or several files in order (a resumed run), into columns.

    ``split`` keeps only records of that split where the format records one (this project's
    log); the original formats carry none, which the report notes. Raises
    ``AnalysisInputError`` (or ``calibrated_qa.records.RecordError``) on input that would make
    the output wrong: an empty file, a malformed line in the middle (unless ``skip_bad_lines``),
    a missing field, mixed formats, an unknown format.
    """
    if not paths:
        raise AnalysisInputError("no input files given")
    files = [Path(p) for p in paths]
    formats = {str(path): detect_format(path) for path in files}
    if len(set(formats.values())) > 1:
        listing = ", ".join(f"{path} ({fmt})" for path, fmt in formats.items())
        raise AnalysisInputError(f"files of different formats cannot form one run: {listing}")
    fmt = formats[str(files[0])]
    report = ReadReport(files=[str(p) for p in files], fmt=fmt)
    cols = _Columns()
    for file_no, path in enumerate(files):
        before = report.n_records
        if fmt == "original-csv":
            _read_csv(path, file_no, cols, report, skip_bad_lines, progress)
        else:
            _read_jsonl(path, file_no, fmt, cols, report, split, skip_bad_lines, progress)
        if report.n_records == before:
            detail = f" of split {split!r}" if split and report.other_split else ""
            raise AnalysisInputError(f"{path}: no valid records{detail}")
    if fmt != "project" and split is not None:
        report.notes.append(f"the {fmt} format records no split: all records are taken as {split}")
    if fmt == "original-csv":
        report.notes.append(
            "the original CSV's parseable column is 1 on every row (p_yes was defaulted to 0.5); "
            f"{report.certain_unparseable} rows with p_yes = 0.5 and reward < "
            f"{CSV_UNPARSEABLE_BELOW} are certainly unparseable and counted so; "
            f"{report.ambiguous} rows with p_yes = 0.5 and reward in [-0.25, 0] may be either "
            "and are counted parseable"
        )
    if fmt != "project":
        report.notes.append(
            f"the {fmt} format records no answer word: answer = YES iff P(YES) > 0.5 "
            "(a stated 50% counts as NO), confidence = probability of that answer"
        )
    if len(report.length_units) > 1:
        report.notes.append(f"records mix length units {sorted(report.length_units)}")
    report.question_keys = list(cols.codes)  # insertion order = code order
    return cols.build(fmt), report


def read_lines(path: str | os.PathLike[str], wanted: set[int]) -> dict[int, dict[str, Any]]:
    """The parsed JSON objects at the given line numbers of one log (a second, targeted pass).

    For tools that need full records, completions included (``sample_generations``): the first
    pass (``read_rollouts``) keeps no text, this one keeps only the lines asked for.
    """
    found: dict[int, dict[str, Any]] = {}
    for number, line, _ in _LineReader(Path(path), progress=False):
        if number in wanted:
            found[number] = json.loads(line)
    return found
