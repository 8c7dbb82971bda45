"""prime-rl 6cae5cca's rollout path with real env-server processes and real HTTP to a model.

The orchestrator side is ``dryrun.orchestrator`` (the project's copy of prime-rl's, file and
function cited there): ``vf.EnvGroup`` of the training env, one ZMQ env server per env with the
worker counts prime-rl resolves for the reference config (4 + 4), ``score_rollouts`` and
``max_seq_len`` for training workers, the log directory inherited through
``CALIBRATED_QA_LOG_DIR``, the config's env args (``length_unit = "chars"``), the token client
for training and eval, prime-rl's sampling args, per-rollout scheduling with refill and
cancel-at-stop, eval as ``run_group`` per repeated input. The model is
``tests.fake_openai_server`` (scripted completions with usage, token ids and logprobs).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
import time
from collections import Counter
from pathlib import Path

import psutil
import pytest
import verifiers as vf

from calibrated_qa.records import LOG_DIR_ENV_VAR, validate_record
from calibrated_qa.reward import score_completion
from calibrated_qa.run_config import read_run_config
from dryrun.orchestrator import (
    TOKEN_CLIENT,
    Scheduler,
    eval_sampling_args,
    evaluate,
    sent_fields,
    start_env_server,
    train_sampling_args,
)
from tests.conftest import read_boolq, write_jsonl
from tests.fake_openai_server import FakeOpenAIServer, default_token_count
from tests.scripted_client import assert_scored_as
from tests.test_environment import QUESTIONS, question_of, script

REPO = Path(__file__).resolve().parent.parent
CONFIG = read_run_config(REPO / "configs" / "calibrated_qa_gemma2_2b.toml")
MODEL = "fake/gemma-2-2b-it"
BATCH, GROUP, INFLIGHT, STEPS = 32, 4, 40, 2
N_EVAL, EVAL_ROLLOUTS = 8, 2


def long_script(user_text: str) -> str:
    """``script``, with a 6,000-character first word for a third of the questions: records
    larger than PIPE_BUF (4,096 bytes), where unsynchronised appends would interleave."""
    digest = hashlib.sha256(question_of(user_text).encode()).digest()
    return ("z" * 6000 + " " if digest[0] % 3 == 0 else "") + script(user_text)


def client_config(server: FakeOpenAIServer) -> vf.ClientConfig:
    """As prime_rl.utils.client.setup_clients builds it, with the token client (no retries)."""
    return vf.ClientConfig(
        client_idx=0,
        client_type=TOKEN_CLIENT,
        api_base_url=server.base_url,
        api_key_var="CALIBRATED_QA_TEST_NO_KEY",
        timeout=120.0,
        max_retries=0,
    )


def read_log(path: Path) -> list[dict]:
    """Every line a valid record: one torn or interleaved line fails here."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return [validate_record(json.loads(line), f"{path}:{i}") for i, line in enumerate(lines, 1)]


def key(record_or_output: dict) -> tuple:
    if "completion_tokens" in record_or_output:  # a record
        return record_or_output["example_id"], record_or_output["completion"]
    return record_or_output["example_id"], record_or_output["completion"][-1]["content"]


def check_scored(output: dict, split: str, env_args: dict) -> None:
    assert output.get("error") is None, output.get("error")
    assert output["info"]["split"] == split
    completion = output["completion"][-1]["content"]
    expected = score_completion(
        completion, QUESTIONS[output["info"]["question"]], max_tokens=env_args["max_tokens"],
        length_unit=env_args["length_unit"], completion_tokens=default_token_count(completion),
    )  # fmt: skip
    assert_scored_as(output, expected)
    (step,) = output["trajectory"]  # the token client's ids and logprobs came back
    n = default_token_count(completion)
    assert len(step["tokens"]["completion_ids"]) == len(step["tokens"]["completion_logprobs"]) == n


def server_tree(env: vf.Environment) -> list[psutil.Process]:
    root = psutil.Process(env.env_server_process.pid)
    return [root, *root.children(recursive=True)]


def gone(processes: list[psutil.Process], timeout: float = 60) -> bool:
    def running(p: psutil.Process) -> bool:
        try:
            return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    deadline = time.monotonic() + timeout
    while any(map(running, processes)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not any(map(running, processes))


@pytest.fixture
def boolq(tmp_path: Path) -> Path:
    rows = read_boolq(460)
    write_jsonl(tmp_path / "boolq" / "train.jsonl", rows[:300])
    write_jsonl(tmp_path / "boolq" / "validation.jsonl", rows[300:])
    return tmp_path / "boolq"


@pytest.mark.timeout(300)
def test_prime_rl_path_with_the_reference_worker_counts(
    tmp_path: Path, boolq: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """4 + 4 workers append to both logs at once: 0 records lost, 0 interleaved."""
    log_dir = tmp_path / "run"
    monkeypatch.setenv(LOG_DIR_ENV_VAR, str(log_dir))  # run_training.sh exports it
    train_args = {**CONFIG.train_env().args, "dataset_name": str(boolq)}
    eval_args = {**CONFIG.eval.envs[0].args, "dataset_name": str(boolq)}
    assert train_args["length_unit"] == eval_args["length_unit"] == "chars"
    assert (CONFIG.env_workers, CONFIG.eval_env_workers) == (4, 4)
    sampling = train_sampling_args(CONFIG, CONFIG.temperature)
    evaluation = eval_sampling_args(CONFIG)
    assert sampling == {
        "temperature": 1.0, "max_tokens": 512, "seed": None, "top_p": 1.0, "logprobs": True,
        "extra_body": {"top_k": -1, "min_p": 0.0, "return_token_ids": True},
    }  # fmt: skip
    assert evaluation == {"temperature": 1.0, "max_tokens": 512, "extra_body": {}}

    async def main(server: FakeOpenAIServer) -> tuple:
        client = client_config(server)
        group = vf.EnvGroup(envs=[vf.load_environment("calibrated-qa", **train_args)],
                            env_names=["calibrated-qa"])  # fmt: skip
        eval_env = vf.load_environment("calibrated-qa", **eval_args)
        servers = (group.envs[0], eval_env)
        train_kwargs = {"max_seq_len": CONFIG.seq_len, "score_rollouts": True}
        try:
            await asyncio.gather(
                start_env_server(servers[0], train_kwargs, CONFIG.env_workers,
                                 str(tmp_path / "envs" / "train")),
                start_env_server(servers[1], {}, CONFIG.eval_env_workers,
                                 str(tmp_path / "envs" / "eval")),
            )  # fmt: skip
            scheduler = Scheduler(env=group, examples=list(group.get_dataset()), client=client,
                                  model=MODEL, sampling_args=sampling, batch_size=BATCH,
                                  rollouts_per_example=GROUP, max_inflight=INFLIGHT)  # fmt: skip
            batches = [await scheduler.generate_batch() for _ in range(STEPS)]
            evals = await evaluate(eval_env, client, MODEL, evaluation, N_EVAL, EVAL_ROLLOUTS)
            await scheduler.stop()
            trees = [server_tree(s) for s in servers]
            return batches, evals, scheduler, trees
        finally:
            for s in servers:
                await s.stop_server()

    with FakeOpenAIServer(long_script) as server:
        batches, evals, scheduler, trees = asyncio.run(main(server))
        requests = list(server.requests)
    assert all(gone(tree) for tree in trees), "env server processes left running"
    assert [len(tree) for tree in trees] == [1 + 4, 1 + 4]

    # every request carried prime-rl's fields, as the token client sends them
    fields = [{k: v for k, v in r.items() if k not in ("model", "messages")} for r in requests]
    names = {
        json.dumps(sent_fields(sampling), sort_keys=True): "train",
        json.dumps(sent_fields(evaluation), sort_keys=True): "eval",
    }
    shapes = Counter(names.get(json.dumps(f, sort_keys=True), repr(f)) for f in fields)
    assert set(shapes) == {"train", "eval"} and shapes["eval"] == N_EVAL * EVAL_ROLLOUTS
    # every rollout started sent its request, but one cancelled at stop before it did
    assert scheduler.started - scheduler.cancelled <= shapes["train"] <= scheduler.started
    assert all([m["role"] for m in r["messages"]] == ["user"] for r in requests)

    train = read_log(log_dir / "generations.jsonl")
    consumed = [o for batch in batches for o in batch]
    assert [len(b) for b in batches] == [BATCH] * STEPS
    for batch in batches:  # whole groups (an example drawn twice, with replacement, gives 2)
        assert all(n % GROUP == 0 for n in Counter(o["example_id"] for o in batch).values())
    for output in consumed:
        check_scored(output, "train", train_args)
    # 0 lost: every consumed rollout is logged; the surplus (refills) is logged too
    assert not Counter(map(key, consumed)) - Counter(map(key, train))
    assert BATCH * STEPS <= len(train) <= scheduler.started
    assert {r["split"] for r in train} == {"train"}
    assert all(r["length_unit"] == "chars" and r["max_tokens"] == 512 for r in train)
    assert len({r["pid"] for r in train}) == 4
    assert any(len(json.dumps(r)) > 4096 for r in train)

    eval_records = read_log(log_dir / "eval_generations.jsonl")
    assert len(evals) == len(eval_records) == N_EVAL * EVAL_ROLLOUTS
    for output in evals:
        check_scored(output, "eval", eval_args)
    assert Counter(map(key, evals)) == Counter(map(key, eval_records))
    assert len({r["pid"] for r in eval_records}) == 4
    assert not {r["pid"] for r in eval_records} & {r["pid"] for r in train}
    assert sorted(p.name for p in log_dir.iterdir()) == [
        "eval_generations.jsonl",
        "generations.jsonl",
    ]


class GatedServer(FakeOpenAIServer):
    """Holds every answer until ``gate`` is set."""

    def __init__(self) -> None:
        super().__init__(script)
        self.gate = threading.Event()

    def respond(self, body: dict) -> dict:
        assert self.gate.wait(60)
        return super().respond(body)

    def wait_for(self, n: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while len(self.requests) < n:
            assert time.monotonic() < deadline, f"{len(self.requests)} of {n} requests arrived"
            time.sleep(0.05)


@pytest.mark.timeout(180)
def test_a_cancelled_rollout_writes_no_record(
    tmp_path: Path, boolq: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Scheduler.stop cancels a rollout whose request is in flight: its worker never scores it."""
    log = tmp_path / "run" / "generations.jsonl"
    monkeypatch.setenv(LOG_DIR_ENV_VAR, str(log.parent))
    args = {**CONFIG.train_env().args, "dataset_name": str(boolq)}

    async def main(server: GatedServer) -> tuple[int, int]:
        group = vf.EnvGroup(envs=[vf.load_environment("calibrated-qa", **args)],
                            env_names=["calibrated-qa"])  # fmt: skip
        try:
            await start_env_server(group.envs[0], {"score_rollouts": True}, 1, str(tmp_path))
            scheduler = Scheduler(env=group, examples=list(group.get_dataset()),
                                  client=client_config(server), model=MODEL,
                                  sampling_args=train_sampling_args(CONFIG, 1.0), batch_size=GROUP,
                                  rollouts_per_example=GROUP, max_inflight=GROUP)  # fmt: skip
            scheduler._fill()
            await asyncio.to_thread(server.wait_for, GROUP)  # in flight: the model has them
            await scheduler.stop()  # all GROUP rollouts are waiting for their answer
            # The cancel reaches the worker asynchronously (client -> router -> worker): an answer
            # that beats it is scored and logged (seen here: 2-3 of 4 when the gate opened at
            # once). prime-rl has the same race; a second covers it here.
            await asyncio.sleep(1)
            server.gate.set()  # the answers now arrive, to nobody
            await asyncio.sleep(3)
            cancelled = scheduler.cancelled
            assert not log.exists()
            batch = await scheduler.generate_batch()  # the same worker still logs what it scores
            return cancelled, len(batch)
        finally:
            await group.envs[0].stop_server()

    with GatedServer() as server:
        cancelled, batch = asyncio.run(main(server))
    assert cancelled == GROUP and batch == GROUP
    records = read_log(log)
    assert GROUP <= len(records) <= 2 * GROUP  # the batch and its refill, nothing cancelled
