"""The dry run's pure parts: reading a prime-rl config, the overrides, the proxy's request summary
and the checks that compare the generation log with what the server received. No server here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from calibrated_qa.records import make_record, validate_record
from calibrated_qa.reward import score_completion
from dryrun.proxy import summarize
from dryrun.run import DEFAULT_CONFIG, DryRunError, check, dry_run_env_args, read_config
from tests.conftest import FIXTURES

CONFIGS = FIXTURES / "dryrun"
REPO = Path(__file__).resolve().parent.parent


def test_reads_the_training_config() -> None:
    config = read_config(DEFAULT_CONFIG)
    assert config.max_tokens == 512
    assert config.temperature == 1.0  # prime-rl's default; the config sets none
    assert config.env_args["max_tokens"] == 512


def test_reads_a_minimal_config_and_applies_the_dry_run_overrides(tmp_path: Path) -> None:
    config = read_config(CONFIGS / "minimal.toml")
    assert (config.max_tokens, config.temperature) == (64, 0.7)
    args = dry_run_env_args(
        config, max_tokens=32, dataset=tmp_path / "boolq", split="validation", log_dir=tmp_path
    )
    assert args == {
        "include_passage": False,  # kept from the config
        "seed": 7,
        "dataset_name": str(tmp_path / "boolq"),
        "dataset_split": "validation",
        "eval_split": "validation",
        "length_unit": "tokens",
        "max_tokens": 32,  # the sampler's and the environment's, together
        "log_dir": str(tmp_path),
    }


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("max_tokens_mismatch.toml", "differs from the sampler's"),
        ("no_calibrated_qa_env.toml", "expected one"),
    ],
)
def test_refuses_a_config_it_cannot_follow(name: str, message: str) -> None:
    with pytest.raises(DryRunError, match=message):
        read_config(CONFIGS / name)


def request(roles: list[str], content: str, completion_tokens: int, status: int = 200) -> dict:
    body = {"messages": [{"role": r, "content": "..."} for r in roles], "max_completion_tokens": 8}
    answer = {
        "choices": [{"message": {"content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 9, "completion_tokens": completion_tokens},
    }
    return summarize(
        "POST",
        "/v1/chat/completions",
        status,
        json.dumps(body).encode(),
        json.dumps(answer).encode() if status == 200 else b"Internal Server Error",
    )


def record(completion: str, completion_tokens: int | None, unit: str = "tokens") -> dict:
    score = score_completion(
        completion, True, max_tokens=8, length_unit=unit, completion_tokens=completion_tokens
    )
    made = make_record(
        score=score,
        example_id=0,
        split="train",
        question="is it",
        label=True,
        completion=completion,
        completion_tokens=completion_tokens,
        truncated=False,
        max_tokens=8,
    )
    return validate_record(json.loads(json.dumps(made)), "test")


def test_summarize_keeps_roles_usage_and_content() -> None:
    line = request(["user"], "abc", 3)
    assert line["roles"] == ["user"]
    assert line["usage"]["completion_tokens"] == 3
    assert (line["content"], line["finish_reason"], line["max_completion_tokens"]) == (
        "abc",
        "stop",
        8,
    )
    refused = request(["system", "user"], "", 0, status=500)
    assert refused["roles"] == ["system", "user"]
    assert refused["usage"] is None and refused["content"] is None


def test_a_consistent_run_passes() -> None:
    requests = [request(["user"], "one", 1), request(["user"], "two words", 2)]
    records = [record("two words", 2), record("one", 1)]  # completion order differs: fine
    result = check(records, requests, expected=2)
    assert result.problems == []
    assert (result.one_user_message, result.usage_matches, result.tokens_unit) == (2, 2, 2)


def test_every_broken_invariant_is_reported() -> None:
    requests = [
        request(["system", "user"], "one", 1),
        request(["user"], "two", 2),
        request(["user"], "three", 3),
    ]
    records = [
        record("one", 1),
        record("two", 5),  # disagrees with the server's usage
        record("three", None, unit="chars"),  # no exact count
    ]
    problems = check(records, requests, expected=4).problems
    assert any("3 log records for 4 rollouts" in p for p in problems)
    assert any("received 3 requests for 4" in p for p in problems)
    assert any("not exactly one user message" in p and "system" in p for p in problems)
    assert any("1 records without exact tokens" in p for p in problems)
    assert any("2 records disagree with the server's usage" in p for p in problems)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "dry_run.py"), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_help() -> None:
    run = run_cli("--help")
    assert run.returncode == 0
    assert "--max-tokens" in run.stdout and "--serve" in run.stdout


def test_cli_refuses_a_bad_config_before_building_or_serving(tmp_path: Path) -> None:
    run = run_cli(
        "--config",
        str(CONFIGS / "max_tokens_mismatch.toml"),
        "--out",
        str(tmp_path / "out"),
        "--cache-dir",
        str(tmp_path / "cache"),
    )
    assert run.returncode == 1
    assert "dry run failed" in run.stderr and "differs from the sampler's" in run.stderr
    assert "starting transformers serve" not in run.stdout
    assert not (tmp_path / "cache").exists()
