"""Shared fixtures: real BoolQ rows from the shipped validation split, as local datasets."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    import psutil

REPO = Path(__file__).resolve().parent.parent
BOOLQ_VALIDATION = REPO / "data" / "boolq" / "validation.jsonl"
FIXTURES = Path(__file__).resolve().parent / "fixtures"
PRIME_RL_PIN = "6cae5cca734d0063951efaf700ca9e4bc39c8677"


def git_dir_from_env(var: str, what: str) -> Path:
    """A git dir (clone or bare) named by the environment variable ``var``, else skip the test.

    The repository ships no copy of prime-rl; tests that read its source or validate configs
    against its classes run where a developer points ``var`` at one.
    """
    value = os.environ.get(var)
    if not value:
        pytest.skip(f"set {var} to a git dir of {what} to run this test")
    path = Path(value)
    assert path.exists(), f"{var}={value} does not exist"
    return path


def pinned_prime_rl_source(path: str) -> str:
    """The text of ``path`` (e.g. ``src/prime_rl/orchestrator/eval_utils.py``) at the pin."""
    git = git_dir_from_env("PRIME_RL_GIT", "PrimeIntellect-ai/prime-rl")
    return subprocess.run(
        ["git", "-C", str(git), "show", f"{PRIME_RL_PIN}:{path}"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout


def read_boolq(n: int | None = None, start: int = 0) -> list[dict]:
    """Rows of the shipped BoolQ validation split, verbatim."""
    with BOOLQ_VALIDATION.open(encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    return rows[start:] if n is None else rows[start : start + n]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return path


@pytest.fixture(scope="session")
def boolq_rows() -> list[dict]:
    return read_boolq()


@pytest.fixture
def local_boolq(tmp_path: Path) -> Path:
    """A hub-like local folder: ``train.jsonl`` (real rows 0-299), ``validation.jsonl`` (300-459).

    The train file is made of validation rows because the train split is not shipped; the code
    path is the same whatever the file holds.
    """
    rows = read_boolq(460)
    write_jsonl(tmp_path / "boolq" / "train.jsonl", rows[:300])
    write_jsonl(tmp_path / "boolq" / "validation.jsonl", rows[300:])
    return tmp_path / "boolq"


def ctrl_c_as_in_a_terminal() -> None:
    """A ``preexec_fn``: SIGINT at its default and unblocked, so that Python turns it into
    KeyboardInterrupt. A shell starts background jobs (``cmd &``, as a CI runner may) with SIGINT
    ignored, and children inherit that: a test that sends SIGINT would then test nothing."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def alive(processes: list[psutil.Process]) -> list[psutil.Process]:
    """The processes still running (a zombie waiting to be reaped is not)."""
    import psutil  # not in tests/v1's venvs, which load this conftest too

    def running(p: psutil.Process) -> bool:
        try:
            return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    return [p for p in processes if running(p)]
