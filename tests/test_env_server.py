"""prime-rl's real rollout path: a ZMQ env server with 2 worker processes, real HTTP to a model.

The orchestrator side is reproduced call for call from prime-rl (6cae5cc): the training env is
wrapped in ``vf.EnvGroup``; each env gets its own env server (``Environment.start_server``, the
same ``ZMQEnvServer.run_server`` in a ``spawn`` process as prime-rl's ``spawn_env_server``) whose
workers call ``vf.load_environment(env_id, **args)`` then ``env.set_kwargs(score_rollouts=True,
max_seq_len=...)``; training rollouts go one by one through ``EnvGroup.run_rollout`` (as the
scheduler does) with prime-rl's vLLM sampling args and its token client ("TITO",
``openai_chat_completions_token``; a single-turn rollout only uses ``/v1/chat/completions``, so
no vLLM-only route is needed); eval rollouts go through ``run_group`` on the eval env's inputs
(prime-rl's ``evaluate``) with the plain chat-completions client. The model is
``tests.fake_openai_server``, a stdlib HTTP server answering scripted completions with usage,
token ids and logprobs. Everything else (workers, clients, rubric, cleanup, log) is real.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from pathlib import Path

import psutil
import pytest
import verifiers as vf

from calibrated_qa.records import validate_record
from calibrated_qa.reward import score_completion
from tests.conftest import read_boolq, write_jsonl
from tests.fake_openai_server import FakeOpenAIServer, default_token_count
from tests.scripted_client import assert_scored_as
from tests.test_environment import QUESTIONS, script

ENV_ID = "calibrated-qa"
MODEL = "fake/gemma-2-2b-it"
MAX_TOKENS = 512
SEQ_LEN = 2048
N_GROUPS, GROUP_SIZE = 8, 4
N_EVAL_EXAMPLES, EVAL_ROLLOUTS = 6, 2
REQUIRED_STATE_COLUMNS = ["trajectory", "sampling_args"]  # prime_rl.orchestrator.vf_utils

# prime_rl.orchestrator.utils.get_sampling_args for a vLLM server (temperature 1.0)
TRAIN_SAMPLING_ARGS = {
    "temperature": 1.0,
    "max_tokens": MAX_TOKENS,
    "seed": None,
    "top_p": 1.0,
    "logprobs": True,
    "extra_body": {"top_k": -1, "min_p": 0.0, "return_token_ids": True},
}
# prime_rl.orchestrator.eval_utils.get_eval_sampling_args with temperature and max_tokens set
EVAL_SAMPLING_ARGS = {"temperature": 1.0, "max_tokens": MAX_TOKENS, "extra_body": {}}


@pytest.fixture
def fake_server():
    with FakeOpenAIServer(script, token_count=default_token_count) as server:
        yield server


def client_config(server: FakeOpenAIServer, client_type: str) -> vf.ClientConfig:
    """As prime_rl.utils.client.setup_clients builds it (no retries: fail fast in a test)."""
    return vf.ClientConfig(
        client_idx=0,
        client_type=client_type,
        api_base_url=server.base_url,
        api_key_var="CALIBRATED_QA_TEST_NO_KEY",  # unset: the client sends "EMPTY"
        timeout=120.0,  # generous: CI runs this beside other heavy tests
        max_retries=0,
    )


def read_log(path: Path) -> list[dict]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return [validate_record(json.loads(line), f"{path}:{i}") for i, line in enumerate(lines, 1)]


def server_processes(env: vf.Environment) -> list[psutil.Process]:
    """The env server process and everything it spawned (router's workers)."""
    root = psutil.Process(env.env_server_process.pid)
    return [root, *root.children(recursive=True)]


def left_running(processes: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """The processes still running after ``timeout`` s; an exited one counts as gone even while
    it is a zombie (a worker outliving the router is reparented to a PID 1 that may not reap)."""

    def running(process: psutil.Process) -> bool:
        try:
            return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    deadline = time.monotonic() + timeout
    while (alive := [p for p in processes if running(p)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    return alive


def expected_score(question: str, completion: str):
    """The score of a completion with the fake server's token count (length_unit="tokens")."""
    return score_completion(
        completion,
        QUESTIONS[question],
        max_tokens=MAX_TOKENS,
        length_unit="tokens",
        completion_tokens=default_token_count(completion),
    )


def check_output(output: dict, split: str) -> None:
    assert output.get("error") is None, output.get("error")
    assert output["info"]["split"] == split
    expected = expected_score(output["info"]["question"], output["completion"][-1]["content"])
    assert output["answer"] == ("true" if QUESTIONS[output["info"]["question"]] else "false")
    assert_scored_as(output, expected)


def check_records(records: list[dict], outputs: list[dict], split: str) -> None:
    assert len(records) == len(outputs)
    assert {r["split"] for r in records} == {split}
    # one record per rollout: same (example_id, question, completion) multiset as the outputs
    assert Counter((r["example_id"], r["question"], r["completion"]) for r in records) == Counter(
        (o["example_id"], o["info"]["question"], o["completion"][-1]["content"]) for o in outputs
    )
    for record in records:
        expected = expected_score(record["question"], record["completion"])
        # completion_tokens is the fake server's usage count; length is exact tokens
        assert record["completion_tokens"] == default_token_count(record["completion"])
        assert record["length_unit"] == "tokens"
        assert record["length"] == expected.length
        assert record["reward"] == pytest.approx(expected.reward)
        assert record["p_yes"] == expected.p_yes
        assert record["brier"] == expected.brier
        assert record["ground_truth"] == ("true" if QUESTIONS[record["question"]] else "false")
        assert record["truncated"] is False
        assert record["max_tokens"] == MAX_TOKENS


@pytest.mark.timeout(120)
def test_prime_rl_env_server_path(tmp_path: Path, fake_server: FakeOpenAIServer) -> None:
    rows = read_boolq(460)
    data = tmp_path / "boolq"
    write_jsonl(data / "train.jsonl", rows[:300])
    write_jsonl(data / "validation.jsonl", rows[300:])
    log_dir = tmp_path / "generations"
    env_args = {
        "dataset_name": str(data),
        "log_dir": str(log_dir),
        "length_unit": "tokens",
        "max_tokens": MAX_TOKENS,
    }
    train_client = client_config(fake_server, "openai_chat_completions_token")
    eval_client = client_config(fake_server, "openai_chat_completions")

    # orchestrator: EnvGroup of the training env, a separate eval env (prime-rl's layout)
    train_group = vf.EnvGroup(envs=[vf.load_environment(ENV_ID, **env_args)], env_names=[ENV_ID])
    train_env = train_group.envs[0]
    eval_env = vf.load_environment(ENV_ID, **env_args)
    train_dataset = train_group.get_dataset(seed=0)
    examples = [train_dataset[i] for i in range(N_GROUPS)]
    eval_inputs = eval_env._get_eval_inputs(N_EVAL_EXAMPLES, EVAL_ROLLOUTS)

    processes: list[psutil.Process] = []

    async def main() -> tuple[list[dict], list[dict], set[int]]:
        started = time.monotonic()
        try:
            await asyncio.gather(
                train_env.start_server(
                    num_workers=2,
                    extra_env_kwargs={"score_rollouts": True, "max_seq_len": SEQ_LEN},
                    log_dir=str(tmp_path / "env-server" / "train"),
                    console_logging=False,
                ),
                eval_env.start_server(
                    num_workers=1,
                    log_dir=str(tmp_path / "env-server" / "eval"),
                    console_logging=False,
                ),
            )
            print(f"env servers up in {time.monotonic() - started:.1f}s")

            # training: every rollout scheduled on its own, all in flight at once (scheduler)
            train_tasks = [
                train_group.run_rollout(
                    vf.RolloutInput(**example),
                    client=train_client,
                    model=MODEL,
                    sampling_args=TRAIN_SAMPLING_ARGS,
                    max_retries=0,
                    state_columns=REQUIRED_STATE_COLUMNS,
                )
                for example in examples
                for _ in range(GROUP_SIZE)
            ]
            # eval: run_group per (already repeated) input, rollouts_per_example=1 (evaluate)
            eval_tasks = [
                eval_env.run_group(
                    [vf.RolloutInput(**row)],
                    client=eval_client,
                    model=MODEL,
                    sampling_args=EVAL_SAMPLING_ARGS,
                    max_retries=0,
                    state_columns=REQUIRED_STATE_COLUMNS,
                )
                for row in eval_inputs
            ]
            train_outputs, eval_groups = await asyncio.gather(
                asyncio.gather(*train_tasks), asyncio.gather(*eval_tasks)
            )
            train_worker_pids = {p.pid for p in server_processes(train_env)[1:]}
            processes.extend(server_processes(train_env) + server_processes(eval_env))
            print(f"{len(fake_server.requests)} requests in {time.monotonic() - started:.1f}s")
            return list(train_outputs), [o for g in eval_groups for o in g], train_worker_pids
        finally:
            await asyncio.gather(train_env.stop_server(), eval_env.stop_server())

    train_outputs, eval_outputs, train_worker_pids = asyncio.run(main())

    # the server processes (router and workers) are all gone
    alive = left_running(processes, timeout=60)
    assert not alive, f"env server processes left running: {alive}"
    assert len(processes) >= 1 + 2 + 1 + 1

    # the model saw one user message per request, no system prompt, max_tokens = M
    n_train, n_eval = N_GROUPS * GROUP_SIZE, N_EVAL_EXAMPLES * EVAL_ROLLOUTS
    assert not fake_server.errors
    assert len(fake_server.requests) == n_train + n_eval
    for body in fake_server.requests:
        assert [m["role"] for m in body["messages"]] == ["user"]
        assert body["model"] == MODEL
        assert body["max_completion_tokens"] == MAX_TOKENS  # the client renames max_tokens
    token_requests = [b for b in fake_server.requests if b.get("return_token_ids")]
    assert len(token_requests) == n_train
    assert all(b["logprobs"] is True and b["top_k"] == -1 for b in token_requests)

    # training outputs: scored as score_completion says, with the server's token counts
    assert len(train_outputs) == n_train
    for output in train_outputs:
        check_output(output, "train")
        (step,) = output["trajectory"]
        n = default_token_count(output["completion"][-1]["content"])
        assert step["response"]["usage"]["completion_tokens"] == n
        assert step["tokens"] is not None and len(step["tokens"]["completion_ids"]) == n
        assert len(step["tokens"]["completion_logprobs"]) == n
    train_records = read_log(log_dir / "generations.jsonl")
    check_records(train_records, train_outputs, "train")
    pids = {r["pid"] for r in train_records}
    assert len(pids) >= 2, f"all training records written by one worker: {pids}"
    assert pids <= train_worker_pids

    # eval outputs go to eval_generations.jsonl only, from held-out questions
    assert len(eval_outputs) == n_eval
    for output in eval_outputs:
        check_output(output, "eval")
        assert output["trajectory"][0]["tokens"] is None  # plain client: no token ids
    eval_records = read_log(log_dir / "eval_generations.jsonl")
    check_records(eval_records, eval_outputs, "eval")
    assert {r["question"] for r in eval_records} <= {r["question"] for r in rows[300:]}
    assert not {r["pid"] for r in eval_records} & pids
    assert sorted(p.name for p in log_dir.iterdir()) == [
        "eval_generations.jsonl",
        "generations.jsonl",
    ]
