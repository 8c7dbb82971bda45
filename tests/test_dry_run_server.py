"""The dry run's model server speaks the part of vLLM's OpenAI API prime-rl uses: token ids and
logprobs when asked (and only then), vLLM's 400s, one request-log line per request.

One server (on a model built into a temporary cache) serves the whole module, ~10 s.
"""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from calibrated_qa.prompt import build_prompt
from dryrun.build import build_model
from dryrun.orchestrator import eval_sampling_args, sent_fields, train_sampling_args
from dryrun.server import running
from tests.conftest import read_boolq
from tests.test_dry_run_checks import REFERENCE

PROMPT = build_prompt(read_boolq(1)[0]["question"], read_boolq(1)[0]["passage"])
TRAIN = {"model": "m", "messages": PROMPT, **sent_fields(train_sampling_args(REFERENCE, 1.0))}
TRAIN["max_completion_tokens"] = 48


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path, object]]:
    built = build_model(tmp_path_factory.mktemp("cache"))
    logs = tmp_path_factory.mktemp("server")
    with running(built.path, logs / "requests.jsonl", logs / "server.log") as url:
        yield url, logs / "requests.jsonl", AutoTokenizer.from_pretrained(built.path)


def post(url: str, body: dict, path: str = "/v1/chat/completions") -> tuple[int, dict]:
    request = urllib.request.Request(url + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def last_logged(log: Path, n: int = 1) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()[-n:]]


def test_token_ids_and_logprobs_as_vllm_returns_them(server) -> None:
    url, log, tokenizer = server
    status, answer = post(url, TRAIN)
    assert status == 200, answer
    (choice,) = answer["choices"]
    ids, usage = choice["token_ids"], answer["usage"]
    assert usage["completion_tokens"] == len(ids) == len(choice["logprobs"]["content"]) >= 1
    text = tokenizer.apply_chat_template(PROMPT, add_generation_prompt=True, tokenize=False)
    assert text.startswith("<bos><start_of_turn>user\n") and text.endswith("<start_of_turn>model\n")
    prompt_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert answer["prompt_token_ids"] == prompt_ids and usage["prompt_tokens"] == len(prompt_ids)
    assert choice["message"]["content"] == tokenizer.decode(ids, skip_special_tokens=True)
    assert all(e["logprob"] <= 0 for e in choice["logprobs"]["content"])
    stopped = ids[-1] in {tokenizer.convert_tokens_to_ids(t) for t in ("<eos>", "<end_of_turn>")}
    assert choice["finish_reason"] == ("stop" if stopped else "length")
    assert stopped or len(ids) == 48
    (entry,) = last_logged(log)
    assert entry["path"] == "/v1/chat/completions" and entry["status"] == 200
    assert entry["sampling"] == {k: v for k, v in TRAIN.items() if k not in ("model", "messages")}
    assert entry["roles"] == ["user"] and entry["usage"] == usage


def test_plain_requests_get_no_token_ids(server) -> None:
    url, _, _ = server
    plain = {"model": "m", "messages": PROMPT, "max_tokens": 8, "temperature": 1.0}
    status, answer = post(url, plain)
    assert status == 200
    assert "prompt_token_ids" not in answer and "token_ids" not in answer["choices"][0]
    assert answer["choices"][0]["logprobs"] is None
    assert 1 <= answer["usage"]["completion_tokens"] <= 8


def test_a_seed_reproduces_and_concurrent_requests_are_each_answered(server) -> None:
    url, _, _ = server
    seeded = {**TRAIN, "seed": 3}
    assert (
        post(url, seeded)[1]["choices"][0]["token_ids"]
        == post(url, seeded)[1]["choices"][0]["token_ids"]
    )
    evals = {"model": "m", "messages": PROMPT, **sent_fields(eval_sampling_args(REFERENCE))}
    evals["max_completion_tokens"] = 24
    with ThreadPoolExecutor(6) as pool:  # batched together by the server
        answers = list(pool.map(lambda body: post(url, body), [TRAIN] * 3 + [evals] * 3))
    for (status, answer), limit in zip(answers, [48] * 3 + [24] * 3, strict=True):
        assert status == 200
        assert 1 <= len(answer["choices"][0]["token_ids"]) <= limit


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"messages": [{"role": "system", "content": "Be brief."}, *PROMPT]}, "System role"),
        ({"guided_json": {}}, "unsupported fields: ['guided_json']"),
        ({"n": 2}, "only n = 1"),
    ],
)
def test_what_vllm_refuses_gets_400_and_is_logged(server, change: dict, message: str) -> None:
    url, log, _ = server
    status, answer = post(url, {**TRAIN, **change})
    assert status == 400 and message in answer["error"]["message"]
    assert last_logged(log)[0]["status"] == 400
    assert post(url, {}, path="/v1/completions")[0] == 404
    assert last_logged(log)[0] == {**last_logged(log)[0], "path": "/v1/completions", "status": 404}


def listen_overflows() -> int:
    """Connections the kernel dropped because a listen queue was full (Linux's TcpExt counters)."""
    names, values = (
        line.split() for line in Path("/proc/net/netstat").read_text().splitlines()[:2]
    )
    return int(dict(zip(names, values, strict=True))["ListenOverflows"])


@pytest.mark.skipif(not Path("/proc/net/netstat").is_file(), reason="Linux's TCP counters")
def test_a_burst_of_connections_is_not_dropped(server) -> None:
    """prime-rl's workers connect once per concurrent rollout, all at once: with socketserver's
    listen backlog of 5 the kernel dropped some (and a dry run failed on a reset connection)."""
    address = urllib.parse.urlsplit(server[0])
    before = listen_overflows()
    connections = [socket.create_connection((address.hostname, address.port)) for _ in range(64)]
    for connection in connections:
        connection.close()
    assert listen_overflows() == before
