"""The dry run's pure parts: prime-rl's sampling-args rules, the fields the token client sends,
the config's worker counts, and the checks failing when an invariant is broken. No server here.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from calibrated_qa.records import make_record
from calibrated_qa.reward import score_completion
from calibrated_qa.run_config import RunConfigError, parse_run_config, read_run_config
from dry_run import check
from dryrun.orchestrator import RunResult, eval_sampling_args, sent_fields, train_sampling_args
from tests.conftest import pinned_prime_rl_source

REPO = Path(__file__).resolve().parent.parent
DRY = read_run_config(REPO / "configs" / "dry_run.toml")
REFERENCE = read_run_config(REPO / "configs" / "calibrated_qa_gemma2_2b.toml")


def pinned_function(path: str, name: str) -> Any:
    """A function of prime-rl's source at the pin, compiled alone (its imports are not needed)."""
    tree = ast.parse(pinned_prime_rl_source(path))
    (node,) = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name]
    for arg in node.args.args:  # its annotations name prime-rl's classes: drop them
        arg.annotation = None
    node.returns = None
    namespace: dict[str, Any] = {"Any": Any}
    exec(compile(ast.Module([node], []), path, "exec"), namespace)
    return namespace[name]


class Table(dict):
    """A config table that also reads as attributes, as prime-rl's pydantic configs do."""

    __getattr__ = dict.__getitem__


def test_the_reference_configs_sampling_args_are_prime_rls() -> None:
    assert train_sampling_args(REFERENCE, REFERENCE.temperature) == {
        "temperature": 1.0, "max_tokens": 512, "seed": None, "top_p": 1.0, "logprobs": True,
        "extra_body": {"top_k": -1, "min_p": 0.0, "return_token_ids": True},
    }  # fmt: skip
    assert eval_sampling_args(REFERENCE) == {
        "temperature": 1.0,
        "max_tokens": 512,
        "extra_body": {},
    }


SAMPLING = {"temperature": 0.7, "max_tokens": 64, "min_tokens": 3, "repetition_penalty": 1.1,
            "seed": 5, "extra_body": {"skip_special_tokens": False}}  # fmt: skip
EVAL_SAMPLING = {"temperature": 0.0, "max_tokens": 64, "top_p": 0.9, "top_k": 20, "min_p": 0.1}


def test_sampling_args_follow_the_pinned_source() -> None:
    """utils.get_sampling_args and eval_utils.get_eval_sampling_args at 6cae5cca, run on the same
    tables (defaults of SamplingConfig / EvalSamplingConfig filled in as pydantic would)."""
    config = parse_run_config(
        {"orchestrator": {"sampling": SAMPLING, "eval": {"sampling": EVAL_SAMPLING}}}, "t.toml"
    )
    rule = pinned_function("src/prime_rl/orchestrator/utils.py", "get_sampling_args")
    table = Table(temp_scheduler=None, **SAMPLING)
    assert train_sampling_args(config, 0.7) == rule(table, temperature=0.7, is_vllm=True)
    eval_rule = pinned_function("src/prime_rl/orchestrator/eval_utils.py", "get_eval_sampling_args")
    defaults = dict.fromkeys(("repetition_penalty", "reasoning_effort", "min_tokens"))
    expected = eval_rule(Table(defaults | {"extra_body": {}} | EVAL_SAMPLING))
    assert eval_sampling_args(config) == expected


def test_sent_fields_are_what_the_token_client_sends() -> None:
    fields = sent_fields(train_sampling_args(REFERENCE, 1.0))
    assert fields == {
        "temperature": 1.0, "max_completion_tokens": 512, "top_p": 1.0, "logprobs": True,
        "top_k": -1, "min_p": 0.0, "return_token_ids": True,
    }  # fmt: skip
    assert sent_fields(eval_sampling_args(REFERENCE)) == {
        "temperature": 1.0, "max_completion_tokens": 512, "logprobs": True,
        "return_token_ids": True,
    }  # fmt: skip


def test_worker_counts_are_prime_rls() -> None:
    assert (REFERENCE.env_workers, REFERENCE.eval_env_workers) == (4, 4)  # 1024 and -1 -> 1024
    assert (DRY.env_workers, DRY.eval_env_workers) == (2, 2)  # num_workers = 2 in the config
    auto = parse_run_config({"orchestrator": {"batch_size": 513, "env": [{"id": "calibrated-qa"}],
                            "eval": {"num_examples": 100, "env": [{"id": "calibrated-qa"}]}}},
                            "t.toml")  # fmt: skip
    assert (auto.env_workers, auto.eval_env_workers) == (3, 1)
    with pytest.raises(RunConfigError, match=r"t.toml: .*num_workers must be"):
        parse_run_config({"orchestrator": {"env": [{"id": "x", "num_workers": 0}]}}, "t.toml")


def test_the_dry_run_config_is_scaled_down_and_consistent() -> None:
    assert DRY.max_tokens == DRY.eval.max_tokens == DRY.train_env().args["max_tokens"]
    assert DRY.train_env().args["length_unit"] == "chars"  # the reference recipe's unit
    assert DRY.max_inflight_rollouts == DRY.batch_size  # prime-rl's default
    assert DRY.eval.round_size and DRY.eval.interval >= DRY.max_steps  # rounds: base and final


# -- the checks -----------------------------------------------------------------------------------


def record(completion: str, pid: int, split: str, tokens: int) -> dict:
    score = score_completion(completion, True, max_tokens=256, length_unit="chars",
                             completion_tokens=tokens)  # fmt: skip
    made = make_record(score=score, example_id=1, split=split, question="is it", label=True,
                       completion=completion, completion_tokens=tokens, truncated=False,
                       max_tokens=256)  # fmt: skip
    return {**made, "pid": pid}


def write(out: Path, name: str, rows: list[dict]) -> None:
    (out / name).write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture
def run(tmp_path: Path) -> tuple[Path, RunResult]:
    """A consistent run folder: 32 train records (+2 surplus), 16 eval, all requests answered."""
    train_fields = sent_fields(train_sampling_args(DRY, DRY.temperature))
    eval_fields = sent_fields(eval_sampling_args(DRY))
    train = [record(f"t{i}", 100 + i % 2, "train", 5) for i in range(34)]
    evals = [record(f"e{i}", 200 + i % 2, "eval", 5) for i in range(16)]
    requests = [
        {"path": "/v1/chat/completions", "status": 200, "sampling": fields,
         "usage": {"completion_tokens": 5}, "content": r["completion"]}
        for fields, rows in ((train_fields, train), (eval_fields, evals)) for r in rows
    ]  # fmt: skip
    write(tmp_path, "generations.jsonl", train)
    write(tmp_path, "eval_generations.jsonl", evals)
    write(tmp_path, "server_requests.jsonl", requests)
    result = RunResult([[{}] * 8] * 2, 35, 1, 1.0)
    return tmp_path, result


def test_a_consistent_run_passes(run: tuple[Path, RunResult]) -> None:
    problems, figures = check(DRY, run[1], run[0])
    assert problems == []
    assert (figures["surplus_records"], figures["train_writer_pids"]) == (2, 2)


@pytest.mark.parametrize(
    ("break_it", "message"),
    [
        (lambda rows: rows[0]["sampling"].pop("top_k"), "without prime-rl's sampling fields"),
        (lambda rows: rows[0].update(status=500), "other than 200"),
        (lambda rows: rows[-1]["usage"].update(completion_tokens=6), "disagree with the server"),
    ],
)
def test_each_check_fails_when_broken(run, break_it, message: str) -> None:
    out, result = run
    rows = [json.loads(line) for line in (out / "server_requests.jsonl").read_text().splitlines()]
    break_it(rows)
    write(out, "server_requests.jsonl", rows)
    problems, _ = check(DRY, result, out)
    assert any(message in p for p in problems), problems


def test_one_writer_or_a_missing_record_fails(run: tuple[Path, RunResult]) -> None:
    out, result = run
    evals = [json.loads(line) for line in (out / "eval_generations.jsonl").read_text().splitlines()]
    write(out, "eval_generations.jsonl", [{**r, "pid": 7} for r in evals[:-1]])
    problems, _ = check(DRY, result, out)
    assert any("eval records written by fewer than 2" in p for p in problems)
    assert any("vs records" in p for p in problems)


def test_a_config_the_dry_run_cannot_run_is_refused_by_name(tmp_path: Path) -> None:
    config = tmp_path / "no_eval.toml"
    text = (REPO / "configs" / "dry_run.toml").read_text()
    config.write_text(text[: text.index("[orchestrator.eval]")])
    command = [sys.executable, str(REPO / "dry_run.py"), "--config", str(config), "--out",
               str(tmp_path / "out")]  # fmt: skip
    run = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert run.returncode == 1
    assert f"dry run failed: {config}: the dry run needs [orchestrator.eval]" in run.stderr
    assert not (tmp_path / "out").exists()


def test_an_unterminated_last_line_is_left_out_and_any_other_bad_line_fails(tmp_path: Path) -> None:
    """Env workers stopped mid-write leave a torn last line (records.py closes it on the next
    append); the check reads the whole lines, as the analysis does, and fails on any other."""
    from dry_run import read_jsonl

    log = tmp_path / "generations.jsonl"
    log.write_text('{"a": 1}\n{"b": 2}\n{"c": "to')
    assert read_jsonl(log) == [{"a": 1}, {"b": 2}]
    log.write_text('{"a": 1}\n{"c": "to\n{"b": 2}\n')
    with pytest.raises(json.JSONDecodeError):
        read_jsonl(log)
