"""The generation log under concurrent appends from real OS processes, and after ``kill -9``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from calibrated_qa.records import (
    RECORD_FIELDS,
    GenerationLog,
    RecordError,
    append_line,
    validate_record,
)
from tests.log_writer import completion

REPO = Path(__file__).resolve().parent.parent


def start_writers(log_dir: Path, n: int, count: int) -> list[subprocess.Popen]:
    return [
        subprocess.Popen(
            [sys.executable, "-m", "tests.log_writer", str(log_dir), str(w), str(count)],
            cwd=REPO,
        )
        for w in range(n)
    ]


def parse_lines(path: Path) -> tuple[list[dict], list[int]]:
    """Valid records, and the 1-based numbers of lines that are not."""
    records, bad = [], []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            try:
                records.append(validate_record(json.loads(line), f"{path}:{number}"))
            except (json.JSONDecodeError, RecordError):
                bad.append(number)
    return records, bad


def assert_intact(record: dict) -> None:
    """The completion is exactly what its writer produced: nothing from another record inside."""
    writer, seq = divmod(record["example_id"], 1_000_000)
    assert record["completion"] == completion(writer, seq)


def test_four_processes_append_4000_records_without_loss_or_interleaving(tmp_path: Path) -> None:
    writers = start_writers(tmp_path, n=4, count=1000)
    for process in writers:
        assert process.wait(timeout=240) == 0
    records, bad = parse_lines(tmp_path / "generations.jsonl")
    assert bad == []
    assert len(records) == 4000
    ids = sorted(r["example_id"] for r in records)
    assert ids == sorted(w * 1_000_000 + s for w in range(4) for s in range(1000))
    assert len({r["pid"] for r in records}) == 4
    big = [r for r in records if len(r["completion"]) >= 100_000]
    assert len(big) == 400
    for record in records:
        assert_intact(record)


def test_kill_9_mid_run_leaves_at_most_one_torn_last_line(tmp_path: Path) -> None:
    log = tmp_path / "generations.jsonl"
    writers = start_writers(tmp_path, n=4, count=0)
    deadline = time.monotonic() + 60
    while (not log.exists() or log.stat().st_size < 5_000_000) and time.monotonic() < deadline:
        time.sleep(0.05)
    for process in writers:
        os.kill(process.pid, signal.SIGKILL)
    for process in writers:
        process.wait(timeout=30)
    records, bad = parse_lines(log)
    n_lines = len(records) + len(bad)
    assert len(records) > 10
    assert bad in ([], [n_lines])  # nothing damaged but (possibly) the very last line
    for record in records:
        assert_intact(record)


def test_a_torn_line_is_closed_before_the_next_record(tmp_path: Path) -> None:
    """A writer killed mid-record must not make the next record unreadable."""
    path = tmp_path / "generations.jsonl"
    path.write_text('{"schema": 1, "completion": "cut her')
    append_line(path, '{"ok": true}\n')
    assert path.read_text().splitlines() == ['{"schema": 1, "completion": "cut her', '{"ok": true}']


def test_append_line_takes_exactly_one_line(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="one newline-terminated line"):
        append_line(tmp_path / "x", "two\nlines\n")
    with pytest.raises(ValueError, match="one newline-terminated line"):
        append_line(tmp_path / "x", "no newline")


def test_unserialisable_record_is_reported_not_raised(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = GenerationLog(tmp_path)
    assert log.append({"split": "train", "p_yes": float("nan")}) is False  # type: ignore[typeddict-item]
    assert "could not log a record" in capsys.readouterr().err
    assert not (tmp_path / "generations.jsonl").exists()


def valid_record() -> dict:
    from calibrated_qa.records import make_record
    from calibrated_qa.reward import score_completion

    text = "x" * 800 + "\nANSWER: NO with 70% probability"
    record = make_record(
        score=score_completion(text, False, max_tokens=512),
        example_id=3,
        split="train",
        question="is it",
        label=False,
        completion=text,
        completion_tokens=None,
        truncated=False,
        max_tokens=512,
    )
    return json.loads(json.dumps(record))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: r.pop("p_yes"), "missing field"),
        (lambda r: r.update(schema=2), "field 'schema' is 2"),
        (lambda r: r.update(split="test"), "field 'split' must be one of"),
        (lambda r: r.update(ground_truth=True), "field 'ground_truth'"),
        (lambda r: r.update(length_unit="words"), "field 'length_unit' must be one of"),
        (lambda r: r.update(parseable=False), "'parseable' and 'p_yes' disagree"),
        (lambda r: r.update(reward=None), "field 'reward' has type NoneType"),
        (lambda r: r.update(reward="0.5"), "field 'reward' has type str"),
        (lambda r: r.update(example_id="3"), "field 'example_id' has type str"),
        (lambda r: r.update(parseable=1), "field 'parseable' has type int"),
        (lambda r: r.update(max_tokens=512.0), "field 'max_tokens' has type float"),
        (lambda r: r.update(reward=1.5), "field 'reward' = 1.5 is outside"),
        (lambda r: r.update(length_penalty=0.1), "field 'length_penalty' = 0.1 is outside"),
        (lambda r: r.update(p_yes=1.7), "field 'p_yes' must be a number in"),
        (lambda r: r.update(answer="MAYBE"), "field 'answer' must be 'YES' or 'NO'"),
        (lambda r: r.update(pct=101), "field 'pct' must be an integer"),
        (lambda r: r.update(completion_tokens=-1), "field 'completion_tokens'"),
        (lambda r: r.update(length=float("nan")), "field 'length' is not finite"),
        (lambda r: r.update(length=float("inf")), "field 'length' is not finite"),
        (
            lambda r: r.update(parseable=False, p_yes=None),
            "unparseable record must have null 'pct', 'answer' and 'brier'",
        ),
    ],
)
def test_validate_record_names_file_line_and_field(change, message: str) -> None:
    record = valid_record()
    validate_record(dict(record), "log.jsonl:1")
    change(record)
    with pytest.raises(RecordError, match=rf"^log.jsonl:7: .*{message}"):
        validate_record(record, "log.jsonl:7")


def test_records_the_environment_writes_are_valid() -> None:
    record = valid_record()
    assert set(record) == set(RECORD_FIELDS)
    assert validate_record(record, "x") is record
