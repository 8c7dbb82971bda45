"""Readers: the three formats agree, gzip by magic bytes, and every kind of bad input is loud."""

from __future__ import annotations

import gzip
import json
import math
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest

from calibrated_qa.analysis.convert import main as convert_main
from calibrated_qa.analysis.convert import question_from_prompt
from calibrated_qa.analysis.metrics import summarize
from calibrated_qa.analysis.readers import AnalysisInputError, TornLineWarning, read_rollouts
from calibrated_qa.analysis.steps import attribute_steps
from calibrated_qa.records import RecordError, validate_record
from tests.fixtures.analysis.build import (
    Rollout,
    project_record,
    run,
    write_csv,
    write_original,
    write_project,
)

REPO = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "analysis"
REFERENCE_CSV = FIXTURES / "reference_steps_0_11.csv"


def analyze_cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(REPO / "analyze_calibration.py"), "--quiet", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )


def test_three_formats_read_to_the_same_metrics(tmp_path: Path) -> None:
    rollouts = run(n_steps=2, questions=4, rollouts=4)
    paths = [
        write_project(tmp_path / "p.jsonl", rollouts),
        write_original(tmp_path / "o.jsonl", rollouts),
        write_csv(tmp_path / "c.csv", rollouts, batch_size=16),
    ]
    results = [summarize(read_rollouts([p], progress=False)[0]) for p in paths]
    assert results[0]["parse_rate"] < 1  # the fixture holds unparseable rollouts
    for name, value in results[0].items():
        assert results[1][name] == pytest.approx(value, nan_ok=True), name
        if name not in ("mean_length", "ensemble_brier", "ensemble_ece_pyes"):  # not in the CSV
            assert results[2][name] == pytest.approx(value, nan_ok=True), name


def test_gzip_is_detected_by_magic_bytes_not_name(tmp_path: Path) -> None:
    rollouts = run(n_steps=1)
    plain = write_project(tmp_path / "plain.jsonl", rollouts)
    disguised = tmp_path / "compressed.jsonl"  # gzip content, plain name
    disguised.write_bytes(gzip.compress(plain.read_bytes()))
    a, _ = read_rollouts([plain], progress=False)
    b, _ = read_rollouts([disguised], progress=False)
    np.testing.assert_array_equal(a.p_yes, b.p_yes)


def test_original_log_unparseable_rows_are_not_fifty_percent_predictions(tmp_path: Path) -> None:
    rollouts = [
        Rollout(1, "q one", True, "YES", pct=90, words=30),
        Rollout(2, "q two", True, None, words=30),  # original log: p_yes 0.5, brier 0.25
    ]
    r, _ = read_rollouts([write_original(tmp_path / "o.jsonl", rollouts)], progress=False)
    values = summarize(r)
    assert values["parse_rate"] == 0.5
    assert values["accuracy"] == 0.5  # the unparseable one is wrong, not dropped
    assert values["brier"] == pytest.approx(0.01)  # its 0.25 is not averaged in


def test_original_log_question_is_the_last_question_line() -> None:
    prompt = "[user] Example\nQuestion: Is it the example?\n\nPassage: x\n\nQuestion: is it real?\n"
    assert question_from_prompt(prompt) == "is it real"


def test_reference_csv_detects_certainly_unparseable_rows() -> None:
    r, report = read_rollouts([REFERENCE_CSV], progress=False)
    assert report.fmt == "original-csv"
    assert report.conversion.certain_unparseable == 12
    assert int((~r.parseable).sum()) == 12
    assert not r.has_identity
    assert sorted(set(r.step.tolist())) == [0, 11]
    assert any("parseable column is 1 on every row" in note for note in report.notes)


def test_several_files_are_one_run_in_order(tmp_path: Path) -> None:
    rollouts = run(n_steps=2)
    first = write_project(tmp_path / "a.jsonl", rollouts[:16])
    second = write_project(tmp_path / "b.jsonl.gz", rollouts[16:], gz=True)
    r, report = read_rollouts([first, second], progress=False)
    assert len(r) == 32 and list(r.index) == list(range(32))
    assert list(r.file[:16]) == [0] * 16 and list(r.file[16:]) == [1] * 16
    assert report.files == [str(first), str(second)]


def test_split_filter_counts_the_other_split(tmp_path: Path) -> None:
    rollouts = [*run(n_steps=1), Rollout(99, "held out", True, "YES", split="eval")]
    r, report = read_rollouts(
        [write_project(tmp_path / "p.jsonl", rollouts)], split="train", progress=False
    )
    assert len(r) == 16 and report.other_split == 1


def test_torn_last_line_warns_and_continues(tmp_path: Path) -> None:
    path = write_project(tmp_path / "p.jsonl", run(n_steps=1))
    with open(path, "a") as f:
        f.write(json.dumps(project_record(run(n_steps=1)[0]))[:40])  # no newline: torn
    with pytest.warns(TornLineWarning, match=r"p\.jsonl:17"):
        r, report = read_rollouts([path], progress=False)
    assert len(r) == 16 and report.torn_lines == [f"{path}:17"]


def _with_bad_middle_line(tmp_path: Path) -> Path:
    lines = write_project(tmp_path / "p.jsonl", run(n_steps=1)).read_text().splitlines(True)
    lines.insert(5, '{"schema": 1, "time": 1.0, "pid\n')  # line 6, newline-terminated
    path = tmp_path / "bad.jsonl"
    path.write_text("".join(lines))
    return path


def test_malformed_middle_line_is_an_error_naming_file_and_line(tmp_path: Path) -> None:
    path = _with_bad_middle_line(tmp_path)
    with pytest.raises(AnalysisInputError, match=r"bad\.jsonl:6: malformed line"):
        read_rollouts([path], progress=False)
    done = analyze_cli("--generations", path, "--batch-size", "16", "--out", tmp_path / "o")
    assert done.returncode == 2
    assert f"{path}:6" in done.stderr and "--skip-bad-lines" in done.stderr
    assert not (tmp_path / "o" / "summary.md").exists()


def test_skip_bad_lines_skips_and_counts(tmp_path: Path) -> None:
    path = _with_bad_middle_line(tmp_path)
    r, report = read_rollouts([path], skip_bad_lines=True, progress=False)
    assert len(r) == 16 and report.skipped_lines == [f"{path}:6"]
    out = tmp_path / "o"
    done = analyze_cli(
        "--generations",
        path,
        "--batch-size",
        "16",
        "--out",
        out,
        "--skip-bad-lines",
        "--no-plots",
        "--bootstrap",
        "20",
    )
    assert done.returncode == 0, done.stderr
    assert "1 malformed line(s) skipped" in (out / "summary.md").read_text()


def test_empty_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text("")
    done = analyze_cli("--generations", path, "--batch-size", "16", "--out", tmp_path / "o")
    assert done.returncode == 2 and "empty file" in done.stderr


def test_missing_field_is_an_error_naming_it(tmp_path: Path) -> None:
    record = project_record(run(n_steps=1)[0])
    del record["ground_truth"]
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps(record) + "\n")
    with pytest.raises(RecordError, match=r"p\.jsonl:1: missing field\(s\) ground_truth"):
        read_rollouts([path], progress=False)
    done = analyze_cli("--generations", path, "--batch-size", "1", "--out", tmp_path / "o")
    assert done.returncode == 2 and "ground_truth" in done.stderr


BAD_VALUES = [
    {"schema": 2}, {"split": "dev"}, {"split": ["train"]}, {"ground_truth": True},
    {"time": "now"}, {"pid": 1.5}, {"example_id": "3"}, {"question": None}, {"completion": 5},
    {"parseable": "yes"}, {"correct": 1}, {"reward": 2.0}, {"length_penalty": 0.5},
    {"calibration_reward": True}, {"length": None}, {"truncated": 0}, {"max_tokens": 512.0},
    {"length_unit": "words"}, {"p_yes": None}, {"pct": 101}, {"pct": 80.0}, {"answer": "MAYBE"},
    {"brier": None}, {"brier": 1.5}, {"p_yes": [0.8]}, {"completion_tokens": -1},
    {"completion_tokens": True}, {"parseable": False},
]  # fmt: skip


@pytest.mark.parametrize("bad", BAD_VALUES, ids=lambda bad: f"{bad}")
def test_a_bad_value_anywhere_fails_as_validate_record_words_it(tmp_path: Path, bad: dict) -> None:
    # Records are validated column by column after parsing; the error must still be the one
    # validate_record gives for that record, with its file, line and field.
    records = [project_record(r) for r in run(n_steps=2)]
    records[21] |= bad
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    with pytest.raises(RecordError) as expected:
        validate_record(json.loads(json.dumps(records[21])), f"{path}:22")
    with pytest.raises(RecordError) as raised:
        read_rollouts([path], progress=False)
    assert str(raised.value) == str(expected.value)
    records[21] = project_record(run(n_steps=1)[0]) | {"length": math.inf}  # not JSON
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    with pytest.raises(AnalysisInputError, match=r"p\.jsonl:22: malformed line"):
        read_rollouts([path], progress=False)


def test_unknown_format_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "other.jsonl"
    path.write_text('{"prompt": "x", "answer": "y"}\n')
    done = analyze_cli("--generations", path, "--batch-size", "1", "--out", tmp_path / "o")
    assert done.returncode == 2 and "unknown format" in done.stderr
    text = tmp_path / "notes.txt"
    text.write_text("hello\n")
    with pytest.raises(AnalysisInputError, match="unknown format"):
        read_rollouts([text], progress=False)


def test_mixed_formats_are_an_error(tmp_path: Path) -> None:
    rollouts = run(n_steps=1)
    a = write_project(tmp_path / "a.jsonl", rollouts)
    b = write_original(tmp_path / "b.jsonl", rollouts)
    with pytest.raises(AnalysisInputError, match="different formats"):
        read_rollouts([a, b], progress=False)


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    done = analyze_cli(
        "--generations", tmp_path / "nope.jsonl", "--batch-size", "1", "--out", tmp_path / "o"
    )
    assert done.returncode == 2 and "no such file" in done.stderr


def test_nan_free_columns_for_parseable_rollouts(tmp_path: Path) -> None:
    r, _ = read_rollouts([write_project(tmp_path / "p.jsonl", run())], progress=False)
    assert not np.isnan(r.p_yes[r.parseable]).any()
    assert np.isnan(r.p_yes[~r.parseable]).all()
    assert not math.isnan(float(r.length.mean()))


def test_converted_file_reads_as_this_projects_log_column_for_column(tmp_path: Path) -> None:
    rollouts = run(n_steps=2, questions=4, rollouts=4)
    for source in (
        write_original(tmp_path / "o.jsonl", rollouts),
        write_original(tmp_path / "o.jsonl.gz", rollouts, gz=True),
        write_csv(tmp_path / "c.csv", rollouts, batch_size=16),
    ):
        out = tmp_path / (source.name + ".converted.jsonl")
        assert convert_main([str(source), "--out", str(out)]) == 0
        direct, _ = read_rollouts([source], progress=False)
        converted, report = read_rollouts([out], progress=False)  # validated as this schema
        assert report.fmt == "project" and report.max_tokens == {512}
        for column in fields(direct):
            if column.name != "fmt":
                a, b = getattr(direct, column.name), getattr(converted, column.name)
                if column.name == "line" and source.suffix == ".csv":
                    a = a - 1  # the CSV's header line
                np.testing.assert_array_equal(a, b, err_msg=f"{source.name}: {column.name}")
        for name, value in summarize(direct).items():
            assert summarize(converted)[name] == pytest.approx(value, nan_ok=True), name
    # the converted CSV keeps its own step column, checked against the batch size
    assert "CSV's own step column" in attribute_steps(converted, 16).method
    with pytest.raises(AnalysisInputError, match="do not hold batch_size=15"):
        attribute_steps(converted, 15)


def test_original_log_questions_are_keyed_by_a_stable_example_id(tmp_path: Path) -> None:
    rollouts = run(n_steps=1, questions=4, rollouts=2)
    a, _ = read_rollouts([write_original(tmp_path / "a.jsonl", rollouts)], progress=False)
    b, _ = read_rollouts([write_original(tmp_path / "b.jsonl", rollouts[::-1])], progress=False)
    assert a.has_identity and np.unique(a.question).size == 4
    np.testing.assert_array_equal(a.question, b.question[::-1])  # same text, same id


def test_records_longer_than_a_read_block_and_blank_lines(tmp_path: Path) -> None:
    records = [project_record(r) for r in run(n_steps=1)]
    records[3]["completion"] = "x" * (3 * (1 << 16)) + records[3]["completion"]  # > 3 blocks
    path = tmp_path / "p.jsonl"
    lines = [json.dumps(r) + "\n" for r in records]
    path.write_text("".join(lines[:5]) + "\n  \n" + "".join(lines[5:]))
    r, report = read_rollouts([path], progress=False)
    assert len(r) == len(records) and report.n_records == len(records)
    assert r.line.tolist() == [1, 2, 3, 4, 5, *range(8, 8 + len(records) - 5)]


@pytest.mark.parametrize("fmt", ["log", "csv"])
def test_a_bad_original_row_names_its_line_and_field_or_is_skipped(
    tmp_path: Path, fmt: str
) -> None:
    rollouts = run(n_steps=1)
    if fmt == "log":
        path = write_original(tmp_path / "o.jsonl", rollouts)
        lines = path.read_text().splitlines(True)
        bad = json.loads(lines[4])
        del bad["approx_tokens"]
        lines[4] = json.dumps(bad) + "\n"
        lines[9] = json.dumps(json.loads(lines[9]) | {"reward": "high"}) + "\n"
        expected = ["missing field(s) approx_tokens", "field 'reward'"]
    else:
        path = write_csv(tmp_path / "c.csv", rollouts, batch_size=16)
        lines = path.read_text().splitlines(True)  # line 1 is the header
        lines[4] = lines[4].replace("True", "maybe").replace("False", "maybe")
        lines[9] = ",".join([*lines[9].split(",")[:4], "abc", *lines[9].split(",")[5:]])
        expected = ["field 'ground_truth' must be true/false", "field 'p_yes'"]
    path.write_text("".join(lines))
    with pytest.raises(AnalysisInputError, match=rf"{path.name}:5: malformed line") as raised:
        read_rollouts([path], progress=False)
    assert expected[0] in str(raised.value)
    path.write_text("".join(lines[:4] + lines[5:]))
    with pytest.raises(AnalysisInputError, match=rf"{path.name}:9: malformed line") as raised:
        read_rollouts([path], progress=False)
    assert expected[1] in str(raised.value)
    path.write_text("".join(lines))
    r, report = read_rollouts([path], skip_bad_lines=True, progress=False)
    assert report.skipped_lines == [f"{path}:5", f"{path}:10"] and len(r) == len(rollouts) - 2
    out = tmp_path / "converted.jsonl"  # the converter refuses it the same way
    done = subprocess.run(
        [sys.executable, "-m", "calibrated_qa.analysis.convert", str(path), "--out", str(out)],
        capture_output=True, text=True, cwd=REPO, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2 and f"{path}:5" in done.stderr and expected[0] in done.stderr


def test_a_file_of_the_other_split_only_is_an_error(tmp_path: Path) -> None:
    rollouts = [Rollout(i, f"held out {i}", True, "YES", split="eval") for i in range(3)]
    path = write_project(tmp_path / "p.jsonl", rollouts)
    with pytest.raises(AnalysisInputError, match="no valid records of split 'train'"):
        read_rollouts([path], split="train", progress=False)
    assert len(read_rollouts([path], split="eval", progress=False)[0]) == 3
