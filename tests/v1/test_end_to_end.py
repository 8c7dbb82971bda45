"""One v1 rollout through verifiers' own eval CLI, the null harness and a streaming fake server;
the prime-rl 559b447 config checked against prime-rl's classes; the install leaves verifiers be.

The null harness is what prime-rl 559b447 runs (``[...env.agent.harness] id = "null"``): a chat
program that verifiers installs with ``uv sync --script`` on first use (cached by uv afterwards)
and that streams its one request through verifiers' interception server to the model.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import verifiers

from calibrated_qa.records import LOG_DIR_ENV_VAR, LOG_FILE_NAMES, validate_record
from calibrated_qa.reward import score_completion
from tests.fake_openai_server import FakeOpenAIServer

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
REPLY = "The passage says the show was renewed.\nANSWER: YES with 80% probability"
# verifiers 0.3.1.dev62's null-harness program asks uv for an unpinned `openai`; since openai
# 3.x (August 2026, on httpx2) that program dies building its client (httpx.Timeout refused).
# Seen here; a fresh uv cache with UV_EXCLUDE_NEWER=2026-08-01T00:00:00Z runs it (see the docs).
A60_HARNESS_ROT = verifiers.__version__ == "0.3.1.dev62" and not os.environ.get("UV_EXCLUDE_NEWER")


@pytest.mark.skipif(shutil.which("uv") is None, reason="the null harness runs its program with uv")
@pytest.mark.xfail(
    A60_HARNESS_ROT, reason="0.3.1.dev62's harness program vs openai 3.x", strict=True
)
def test_one_rollout_through_the_eval_cli_writes_a_valid_record(tmp_path: Path) -> None:
    # The v1 CLI is `vf-eval` in 0.4.0 and `eval` in 0.3.1.dev62 (where vf-eval is the classic one).
    cli = BIN / (
        "vf-eval" if (BIN / "vf-eval").exists() and not (BIN / "eval").exists() else "eval"
    )
    with FakeOpenAIServer(lambda _user: REPLY) as server:
        result = subprocess.run(
            [
                str(cli),
                "calibrated-qa",
                "--env.taskset.dataset-name",
                str(REPO / "data" / "boolq"),
                "--env.taskset.dataset-split",
                "validation",
                "--env.agent.harness.id",
                "null",
                "--env.agent.runtime.type",
                "subprocess",
                "--model",
                "fake-gemma",
                "--client.base-url",
                server.base_url,
                "--client.api-key-var",
                "FAKE_API_KEY",
                "--sampling.max-tokens",
                "512",
                "-n",
                "2",
                "-r",
                "1",
                "--output-dir",
                str(tmp_path / "out"),
            ],
            cwd=tmp_path,
            env=os.environ | {"FAKE_API_KEY": "x", LOG_DIR_ENV_VAR: str(tmp_path / "log")},
            capture_output=True,
            text=True,
            timeout=400,
            check=False,
        )
        requests = list(server.requests)
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(requests) == 2, requests
    assert {body.get("max_tokens", body.get("max_completion_tokens")) for body in requests} == {512}
    log = tmp_path / "log" / LOG_FILE_NAMES["eval"]
    assert log.exists(), result.stdout[-3000:] + result.stderr[-3000:]
    records = [validate_record(json.loads(line), str(log)) for line in log.read_text().splitlines()]
    assert sorted(r["example_id"] for r in records) == [0, 1]
    for record in records:
        expected = score_completion(REPLY, record["ground_truth"] == "true", max_tokens=512)
        assert record["completion"] == REPLY
        assert record["reward"] == expected.reward
        assert record["completion_tokens"] is not None  # usage came back through the stream


def test_the_prime_rl_main_configs_are_valid_for_prime_rl_559b447(tmp_path: Path) -> None:
    git = os.environ.get("PRIME_RL_GIT")
    if not git:
        pytest.skip("set PRIME_RL_GIT to a git dir of PrimeIntellect-ai/prime-rl to run this test")
    configs = REPO / "configs" / "prime-rl-main"
    recipe, no_passage = (
        configs / "calibrated_qa_gemma2_2b.toml",
        configs / "calibrated_qa_gemma2_2b_no_passage.toml",
    )
    typo, mismatch = tmp_path / "typo.toml", tmp_path / "mismatch.toml"
    typo.write_text(recipe.read_text().replace("length_unit =", "length_units =", 1))
    mismatch.write_text(
        recipe.read_text().replace("max_completion_tokens = 512", "max_completion_tokens = 1024", 1)
    )
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "check_prime_rl_main_config.py"),
            str(recipe),
            str(no_passage),
            str(typo),
            str(mismatch),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    lines = result.stdout.splitlines()
    assert result.returncode == 1, result.stdout + result.stderr
    shape = (
        "model=google/gemma-2-2b-it max_steps=50 batch_size=1024 group_size=8 "
        "max_completion_tokens=512 seq_len=2048"
    )
    assert lines[0].startswith(f"OK {recipe}: {shape} "), lines
    assert lines[0].count("include_passage=True") == 2 and "'validation'" in lines[0]
    assert lines[1].startswith(f"OK {no_passage}: {shape} "), lines
    assert lines[1].count("include_passage=False") == 2
    assert lines[2].startswith(f"INVALID {typo}") and "length-units" in lines[2], lines
    assert lines[3] == (
        f"INVALID {mismatch}: source 'boolq-train': sampling max_completion_tokens = 1024, "
        "but taskset.task.max_tokens = 512 (the length penalty's M): set both alike"
    )


@pytest.mark.skipif(shutil.which("uv") is None, reason="needs uv on PATH")
def test_installing_the_environment_leaves_this_venvs_verifiers_alone() -> None:
    """As into prime-rl's venv: with its dependencies and the v1 extra, nothing else moves."""
    plan = subprocess.run(
        [
            "uv",
            "pip",
            "install",
            "--dry-run",
            "--no-config",
            "--python",
            sys.executable,
            "--reinstall-package",
            "calibrated-qa",
            f"{REPO / 'calibrated_qa'}[v1]",
        ],
        capture_output=True,
        text=True,
        cwd="/",
        timeout=300,
        check=False,
    )
    assert plan.returncode == 0, plan.stderr
    changes = [
        line.strip() for line in plan.stderr.splitlines() if line.strip()[:2] in ("- ", "+ ")
    ]
    moved = {change[2:].split("==")[0].split(" @ ")[0] for change in changes}
    assert moved == {"calibrated-qa"}, changes  # verifiers and everything else stay
