"""The launch scripts are shellcheck clean, and every documented call of a project script uses
only options that script's --help lists."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

from tests.fixtures.scripts.fakebox import FAKES, REPO

SCRIPTS = sorted(str(p.relative_to(REPO)) for p in [*REPO.glob("*.sh"), *REPO.glob("scripts/*.sh")])
DOCS = [REPO / "README.md", REPO / "CLAUDE.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
PROJECT_SCRIPT = re.compile(r"(?:^|[\s/\"'])((?:scripts/)?[\w-]+\.(?:sh|py))(?=$|[\s\"';|&)])")


def test_shellcheck_clean() -> None:
    shellcheck = shutil.which("shellcheck") or str(Path(sys.executable).parent / "shellcheck")
    fakes = [str(p) for p in FAKES.iterdir()]
    result = subprocess.run(
        [shellcheck, "-x", *SCRIPTS, *fakes], cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


@cache
def help_text(script: str) -> str:
    path = REPO / script
    command = [str(path)] if script.endswith(".sh") else [sys.executable, str(path)]
    result = subprocess.run([*command, "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"{script} --help failed: {result.stderr}"
    return result.stdout


def documented_calls() -> list[tuple[str, str, list[str]]]:
    """(doc, script, flags) for each command line in a fenced block that runs a project script."""
    calls = []
    for doc in DOCS:
        if not doc.exists():
            continue
        for block in FENCE.findall(doc.read_text()):
            for line in block.replace("\\\n", " ").splitlines():
                line = line.split(" #", 1)[0]
                for match in PROJECT_SCRIPT.finditer(line):
                    script = match.group(1)
                    if not (REPO / script).is_file():
                        continue
                    rest = line[match.end() :]
                    rest = re.split(r"[;|&)]|>|\"|'", rest, maxsplit=1)[0]
                    words = shlex.split(rest, posix=True) if rest.strip() else []
                    flags = [w.split("=", 1)[0] for w in words if w.startswith("--")]
                    calls.append((doc.name, script, flags))
    return calls


def test_docs_call_the_scripts() -> None:
    scripts = {script for _doc, script, _flags in documented_calls()}
    if (REPO / "CLAUDE.md").exists():
        assert {"setup_runpod.sh", "run_training.sh"} <= scripts


@pytest.mark.parametrize(
    ("doc", "script", "flags"),
    documented_calls(),
    ids=[f"{d}:{s}:{' '.join(f) or '-'}" for d, s, f in documented_calls()],
)
def test_documented_flags_exist(doc: str, script: str, flags: list[str]) -> None:
    listed = set(re.findall(r"--[a-z][a-z0-9-]*", help_text(script)))
    unknown = [f for f in flags if f not in listed]
    assert not unknown, f"{doc}: {script} does not accept {unknown}"


def test_flag_extraction() -> None:
    line = 'ssh box "cd /root/x && bash run_training.sh --dry-run --wandb online" > log'
    match = next(PROJECT_SCRIPT.finditer(line))
    assert match.group(1) == "run_training.sh"


@pytest.mark.parametrize("script", [s for s in SCRIPTS if s != "scripts/common.sh"])
def test_every_script_answers_help(script: str) -> None:
    """--help describes the script and exits 0 without doing anything (common.sh is sourced)."""
    text = help_text(script)
    assert "usage" in text.lower(), f"{script} --help shows no usage:\n{text}"
