"""The dry run's model server: the part of vLLM's OpenAI API that prime-rl uses, on a CPU.

``transformers serve`` refuses the vLLM-only fields prime-rl sends (``return_token_ids``, ``top_k``,
``min_p``: HTTP 422) and returns no token ids, so verifiers' token client cannot run against it.
This server generates with ``transformers`` directly and answers ``POST /v1/chat/completions`` as
vLLM 0.17 does when asked: ``prompt_token_ids`` at the top level, ``choices[0].token_ids`` (the
sampled ids, the stop token included, as vLLM counts it) and ``logprobs.content`` (the raw model
log-probability of each sampled token: vLLM's default ``raw_logprobs``). Unknown fields get 400.
A system message gets 400, as Gemma 2's template makes vLLM answer.

Requests with equal sampling settings are generated together as one left-padded batch (one
thread owns the model), so concurrent rollouts cost about what one does. ``--requests`` gets one
JSON line per request: path, status, the sampling fields received, roles, usage, the answer.

    python -m dryrun.server MODEL_DIR --port PORT --requests LOG
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import Future
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
CHAT = "/v1/chat/completions"
# What prime-rl 6cae5cca sends (orchestrator/utils.get_sampling_args, eval_utils.
# get_eval_sampling_args, verifiers' token client) plus the rest of vLLM's common sampling fields.
SAMPLING_FIELDS = {
    "max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k", "min_p", "seed",
    "logprobs", "return_token_ids", "min_tokens", "repetition_penalty", "n",
    "stream",
}  # fmt: skip
FIELDS = {"model", "messages", *SAMPLING_FIELDS}


class BadRequest(ValueError):
    """A request vLLM would refuse too (400)."""


class Generator:
    """The model, fed by a queue; one thread generates one batch of equal settings at a time."""

    def __init__(self, model_dir: str, max_batch: int = 16) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch.set_num_threads(1)
        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
        self.stop_ids = set(self.model.generation_config.eos_token_id)  # <eos>, <end_of_turn>
        self.pad_id = self.tokenizer.pad_token_id
        self.max_batch = max_batch
        self.jobs: queue.Queue[tuple[tuple, list[int], Future]] = queue.Queue()
        threading.Thread(target=self._loop, daemon=True).start()

    def submit(self, body: dict[str, Any]) -> dict[str, Any]:
        """Tokenise the chat, queue it, wait for its completion (raises ``BadRequest``)."""
        from jinja2.exceptions import TemplateError

        try:
            text = self.tokenizer.apply_chat_template(
                body["messages"], tokenize=False, add_generation_prompt=True
            )
        except (TemplateError, KeyError, TypeError) as exc:
            raise BadRequest(f"chat template: {exc}") from exc
        prompt = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        limit = body.get("max_completion_tokens") or body.get("max_tokens") or 16
        top_k = body.get("top_k") or -1
        settings = (
            float(body.get("temperature", 1.0)),
            0 if top_k < 0 else int(top_k),  # vLLM: -1 = off; transformers: 0 = off
            float(body.get("top_p") or 1.0),
            float(body.get("min_p") or 0.0),
            int(limit),
            # At least one token: verifiers rejects an empty answer (EmptyModelResponseError).
            max(1, int(body.get("min_tokens") or 0)),
            float(body.get("repetition_penalty") or 1.0),
            body.get("seed"),
        )
        future: Future = Future()
        self.jobs.put((settings, prompt, future))
        return future.result()

    def _loop(self) -> None:
        while True:
            batch = [self.jobs.get()]
            while len(batch) < self.max_batch:
                try:
                    batch.append(self.jobs.get_nowait())
                except queue.Empty:
                    break
            groups: dict[tuple, list] = {}
            for job in batch:  # a seeded request is reproducible only alone
                key = job[0] if job[0][-1] is None else (*job[0], id(job))
                groups.setdefault(key, []).append(job)
            for jobs in groups.values():
                try:
                    results = self._generate(jobs[0][0], [prompt for _, prompt, _ in jobs])
                    for (_, _, future), result in zip(jobs, results, strict=True):
                        future.set_result(result)
                except Exception as exc:  # fail the requests, keep serving
                    for _, _, future in jobs:
                        future.set_exception(exc)

    def _generate(self, settings: tuple, prompts: list[list[int]]) -> list[dict[str, Any]]:
        torch = self.torch
        temperature, top_k, top_p, min_p, limit, min_tokens, penalty, seed = settings
        if seed is not None:
            torch.manual_seed(seed)
        width = max(map(len, prompts))
        ids = torch.tensor([[self.pad_id] * (width - len(p)) + p for p in prompts])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        with torch.no_grad():
            out = self.model.generate(
                input_ids=ids,
                attention_mask=mask,
                do_sample=temperature > 0,
                temperature=temperature if temperature > 0 else None,
                top_k=top_k,
                top_p=top_p,
                min_p=min_p or None,
                repetition_penalty=penalty,
                max_new_tokens=limit,
                min_new_tokens=min_tokens,
                output_logits=True,
                return_dict_in_generate=True,
            )
        # Raw logits of every step: (batch, steps, vocab) -> log-probabilities of the sampled ids.
        logprobs = torch.stack(out.logits, dim=1).float().log_softmax(-1)
        sampled = out.sequences[:, width:]
        results = []
        for row, prompt in enumerate(prompts):
            tokens = sampled[row].tolist()
            end = next((i + 1 for i, t in enumerate(tokens) if t in self.stop_ids), None)
            tokens = tokens[:end] if end else tokens
            values = logprobs[row, torch.arange(len(tokens)), sampled[row, : len(tokens)]]
            results.append({
                "prompt_token_ids": prompt,
                "token_ids": tokens,
                "logprobs": values.tolist(),
                "finish_reason": "stop" if end else "length",
                "text": self.tokenizer.decode(tokens, skip_special_tokens=True),
            })  # fmt: skip
        return results


def completion(body: dict[str, Any], result: dict[str, Any], tokenizer: Any) -> dict[str, Any]:
    """The vLLM-shaped answer (token ids and logprobs only when asked, as vLLM does)."""
    n_prompt, n = len(result["prompt_token_ids"]), len(result["token_ids"])
    choice: dict[str, Any] = {
        "index": 0,
        "message": {"role": "assistant", "content": result["text"]},
        "finish_reason": result["finish_reason"],
        "logprobs": None,
    }
    if body.get("logprobs"):
        choice["logprobs"] = {"content": [
            {"token": tokenizer.convert_ids_to_tokens(t), "logprob": lp, "bytes": None,
             "top_logprobs": []}
            for t, lp in zip(result["token_ids"], result["logprobs"], strict=True)
        ]}  # fmt: skip
    answer: dict[str, Any] = {
        "id": f"chatcmpl-{time.time_ns()}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model"),
        "choices": [choice],
        "usage": {"prompt_tokens": n_prompt, "completion_tokens": n, "total_tokens": n_prompt + n},
    }
    if body.get("return_token_ids"):
        answer["prompt_token_ids"] = result["prompt_token_ids"]
        choice["token_ids"] = result["token_ids"]
    return answer


def serve(model_dir: str, port: int, requests_log: str) -> None:
    generator = Generator(model_dir)
    lock = threading.Lock()

    def record(entry: dict[str, Any]) -> None:
        with lock, open(requests_log, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as httpx expects

        def log_message(self, format: str, *args: Any) -> None:
            return None

        def do_GET(self) -> None:
            if self.path in ("/health", "/v1/models"):
                self._send(200, {"object": "list", "data": [{"id": model_dir}]})
            else:
                self._send(404, {"error": {"message": f"no route {self.path}"}})

        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            entry: dict[str, Any] = {"time": time.time(), "path": self.path}
            try:
                if self.path != CHAT:
                    raise LookupError(self.path)
                body = json.loads(raw)
                entry["sampling"] = {k: v for k, v in body.items() if k in SAMPLING_FIELDS}
                entry["roles"] = [m.get("role") for m in body.get("messages", [])]
                if unknown := sorted(set(body) - FIELDS):
                    raise BadRequest(f"unsupported fields: {unknown}")
                if body.get("stream") or (body.get("n") or 1) != 1:
                    raise BadRequest("only n = 1 without streaming is served")
                answer = completion(body, generator.submit(body), generator.tokenizer)
                status = 200
                choice = answer["choices"][0]
                entry["usage"], entry["finish_reason"] = answer["usage"], choice["finish_reason"]
                entry["content"] = choice["message"]["content"]
            except LookupError:
                status, answer = 404, {"error": {"message": f"no route {self.path}"}}
            except (BadRequest, json.JSONDecodeError) as exc:
                status, answer = 400, {"error": {"message": str(exc)}}
            except Exception as exc:
                status, answer = 500, {"error": {"message": repr(exc)}}
            record({**entry, "status": status})
            self._send(status, answer)

        def _send(self, status: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    httpd = ThreadingHTTPServer((HOST, port), Handler)
    httpd.daemon_threads = True
    print(f"serving {model_dir} on http://{HOST}:{port}", flush=True)
    httpd.serve_forever()


def die_with_parent() -> None:
    """Linux ``prctl(PR_SET_PDEATHSIG, SIGKILL)``: the kernel kills this process when its parent
    dies, however the parent dies (SIGKILL included). Run in the child before it execs."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG


@contextlib.contextmanager
def running(model_dir: Path, requests_log: Path, log: Path, timeout: float = 120) -> Iterator[str]:
    """This server in a child process for as long as the block lasts; yields its base URL.

    Its own session (a Ctrl-C in the terminal reaches only the dry run, which stops it in order)
    and ``die_with_parent`` (nothing can outlive the dry run, even a SIGKILL of it).
    """
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port = sock.getsockname()[1]
    command = [sys.executable, "-m", "dryrun.server", str(model_dir), "--port", str(port),
               "--requests", str(requests_log)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env,
                                   cwd=Path(__file__).resolve().parent.parent,
                                   start_new_session=True, preexec_fn=die_with_parent)  # fmt: skip
    url = f"http://{HOST}:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"model server not ready (exit {process.returncode}): {tail}")
            with contextlib.suppress(OSError):
                urllib.request.urlopen(f"{url}/health", timeout=2).close()
                break
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--requests", required=True, help="request log (JSON lines, appended)")
    args = parser.parse_args()
    serve(args.model_dir, args.port, args.requests)
