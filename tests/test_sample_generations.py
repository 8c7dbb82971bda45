"""sample_generations.py: stratified, seeded, reads gzip, refuses inputs without text."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.fixtures.analysis.build import run, write_csv, write_original, write_project

REPO = Path(__file__).resolve().parent.parent


def sample_cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(REPO / "sample_generations.py"), *map(str, args)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )


def test_default_steps_are_first_and_last_and_strata_are_covered(tmp_path: Path) -> None:
    log = write_project(tmp_path / "g.jsonl.gz", run(n_steps=3, unparseable_every=5), gz=True)
    out = tmp_path / "samples.md"
    done = sample_cli("--generations", log, "--batch-size", "16", "--n", "8", "--out", out)
    assert done.returncode == 0, done.stderr
    text = out.read_text()
    assert "## Step 0 (16 rollouts)" in text and "## Step 2 (16 rollouts)" in text
    assert "## Step 1" not in text
    assert text.count("### ") == 16
    for stratum in ("### correct, confident", "### wrong, confident", "### unparseable"):
        assert stratum in text
    assert "ANSWER:" in text and "word word" in text  # the completion itself is shown
    again = tmp_path / "again.md"
    sample_cli("--generations", log, "--batch-size", "16", "--n", "8", "--out", again)
    assert again.read_text() == text  # seeded


def test_chosen_steps_and_original_log(tmp_path: Path) -> None:
    log = write_original(tmp_path / "o.jsonl", run(n_steps=3))
    out = tmp_path / "s.md"
    done = sample_cli(
        "--generations",
        log,
        "--batch-size",
        "16",
        "--steps",
        "1",
        "--n",
        "3",
        "--seed",
        "7",
        "--out",
        out,
    )
    assert done.returncode == 0, done.stderr
    text = out.read_text()
    assert "## Step 1" in text and text.count("### ") == 3 and "question" in text


def test_csv_and_missing_step_are_errors(tmp_path: Path) -> None:
    table = write_csv(tmp_path / "c.csv", run(n_steps=1), batch_size=16)
    done = sample_cli("--generations", table, "--out", tmp_path / "s.md")
    assert done.returncode == 2 and "no completion text" in done.stderr
    log = write_project(tmp_path / "g.jsonl", run(n_steps=1))
    done = sample_cli(
        "--generations", log, "--batch-size", "16", "--steps", "5", "--out", tmp_path / "s.md"
    )
    assert done.returncode == 2 and "step 5 is not in the log" in done.stderr


def test_run_shape_options_are_validated(tmp_path: Path) -> None:
    log = write_project(tmp_path / "g.jsonl", run(n_steps=1))
    for option, value in (("--batch-size", "0"), ("--n", "-3"), ("--max-steps", "x")):
        out = tmp_path / "s.md"
        done = sample_cli("--generations", log, "--batch-size", "16", option, value, "--out", out)
        assert done.returncode == 2 and "must be a positive integer" in done.stderr, option
        assert not out.exists()
