"""The part of vLLM's OpenAI API that prime-rl uses, served on a CPU by ``transformers``.

``transformers serve`` answers prime-rl's vLLM-only fields (``return_token_ids``, ``top_k``,
``min_p``) with 422 and returns no token ids, so verifiers' token client cannot run against it.
This one answers ``POST /v1/chat/completions`` as vLLM 0.17 does when asked: ``prompt_token_ids``,
``choices[0].token_ids`` (the stop token included) and raw ``logprobs.content``; what vLLM refuses
gets 400. Equal settings are generated as one batch: concurrent rollouts cost about one.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

CHAT = "/v1/chat/completions"
# What prime-rl 6cae5cca sends (orchestrator/utils.get_sampling_args, eval_utils.
# get_eval_sampling_args, verifiers' token client) plus the rest of vLLM's common sampling fields.
SAMPLING_FIELDS = {"max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k", "min_p",
                   "seed", "logprobs", "return_token_ids", "min_tokens", "repetition_penalty", "n",
                   "stream"}  # fmt: skip
MAX_BATCH = 16
PR_SET_PDEATHSIG = 1  # linux/prctl.h


class Generator:
    """The model behind a queue that one thread drains. ``ValueError``: what vLLM refuses too."""

    def __init__(self, model_dir: str) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch.set_num_threads(1)
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
        self.stop_ids = set(self.model.generation_config.eos_token_id)  # <eos>, <end_of_turn>
        self.jobs: queue.Queue[tuple[Any, dict, list[int], Future]] = queue.Queue()
        threading.Thread(target=self._loop, daemon=True).start()

    def submit(self, body: dict[str, Any]) -> dict[str, Any]:
        """The vLLM-shaped answer to a chat request (token ids and logprobs only when asked)."""
        try:
            chat = self.tokenizer.apply_chat_template(body["messages"], add_generation_prompt=True)
        except Exception as exc:  # e.g. a system message: Gemma 2's template raises
            raise ValueError(f"chat template: {exc}") from exc
        prompt = chat["input_ids"]
        t = float(body.get("temperature", 1.0))
        limit = body.get("max_completion_tokens") or body.get("max_tokens") or 16
        # vLLM's fields as generate() takes them (top_k: vLLM -1 = off, transformers 0); at least
        # one token, as verifiers rejects an empty answer (EmptyModelResponseError).
        settings = dict(do_sample=t > 0, temperature=t if t > 0 else None,
                        top_k=max(int(body.get("top_k") or 0), 0), max_new_tokens=int(limit),
                        top_p=float(body.get("top_p") or 1.0), min_p=body.get("min_p") or None,
                        min_new_tokens=max(1, int(body.get("min_tokens") or 0)),
                        repetition_penalty=float(body.get("repetition_penalty") or 1.0),
                        seed=body.get("seed"))  # fmt: skip
        future: Future = Future()
        # A seeded request is reproducible only alone: its key matches no other.
        key = json.dumps(settings) if settings["seed"] is None else object()
        self.jobs.put((key, settings, prompt, future))
        tokens, logprobs, stopped = future.result()
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": text},
                                  "finish_reason": "stop" if stopped else "length",
                                  "logprobs": None}  # fmt: skip
        if body.get("logprobs"):
            names = self.tokenizer.convert_ids_to_tokens(tokens)
            choice["logprobs"] = {"content": [
                {"token": name, "logprob": lp, "bytes": None, "top_logprobs": []}
                for name, lp in zip(names, logprobs, strict=True)
            ]}  # fmt: skip
        usage = {"prompt_tokens": len(prompt), "completion_tokens": len(tokens),
                 "total_tokens": len(prompt) + len(tokens)}  # fmt: skip
        answer = {"id": f"chatcmpl-{time.time_ns()}", "object": "chat.completion",
                  "created": int(time.time()), "model": body.get("model"), "choices": [choice],
                  "usage": usage}  # fmt: skip
        if body.get("return_token_ids"):
            answer["prompt_token_ids"], choice["token_ids"] = prompt, tokens
        return answer

    def _loop(self) -> None:
        while True:
            jobs = [self.jobs.get()]
            while len(jobs) < MAX_BATCH and not self.jobs.empty():
                jobs.append(self.jobs.get_nowait())
            groups: dict[Any, list] = {}
            for job in jobs:
                groups.setdefault(job[0], []).append(job)
            for group in groups.values():
                try:
                    results = self._generate(group[0][1], [prompt for _, _, prompt, _ in group])
                except Exception as exc:  # fail these requests, keep serving
                    for *_, future in group:
                        future.set_exception(exc)
                    continue
                for (*_, future), result in zip(group, results, strict=True):
                    future.set_result(result)

    def _generate(self, settings: dict, prompts: list[list[int]]) -> list[tuple]:
        """(sampled ids up to the first stop id, their raw logprobs, stopped) per prompt."""
        import torch

        settings = dict(settings)
        if (seed := settings.pop("seed")) is not None:
            torch.manual_seed(seed)
        width, pad = max(map(len, prompts)), self.tokenizer.pad_token_id
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        with torch.no_grad():
            out = self.model.generate(input_ids=ids, attention_mask=mask, **settings,
                                      output_logits=True, return_dict_in_generate=True)  # fmt: skip
        # Raw logits of every step: (batch, steps, vocab) -> log-probabilities of the sampled ids.
        logprobs = torch.stack(out.logits, dim=1).float().log_softmax(-1)
        sampled = out.sequences[:, width:]
        results = []
        for row, tokens in enumerate(sampled.tolist()):
            end = next((i + 1 for i, t in enumerate(tokens) if t in self.stop_ids), None)
            tokens = tokens[:end]
            values = logprobs[row, torch.arange(len(tokens)), sampled[row, : len(tokens)]]
            results.append((tokens, values.tolist(), end is not None))
        return results


class Server(ThreadingHTTPServer):
    # socketserver listens with a backlog of 5: the dry run's 16 rollouts connect at once and the
    # kernel dropped 1-4 handshakes per run (ListenOverflows). vLLM's uvicorn listens with 2048.
    request_queue_size = 2048


def serve(model_dir: str, requests_log: str) -> None:
    """Serve on a free port until killed, logging one JSON line per request: path, status, the
    sampling fields received, the roles, and for an answer its usage, finish reason and text."""
    generator = Generator(model_dir)
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as httpx expects

        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            entry: dict[str, Any] = {"time": time.time(), "path": self.path}
            try:
                if self.path != CHAT:
                    raise LookupError(f"no route {self.path}")
                body = json.loads(raw)
                entry["sampling"] = {k: v for k, v in body.items() if k in SAMPLING_FIELDS}
                entry["roles"] = [m.get("role") for m in body.get("messages", [])]
                if unknown := sorted(set(body) - SAMPLING_FIELDS - {"model", "messages"}):
                    raise ValueError(f"unsupported fields: {unknown}")
                if body.get("stream") or (body.get("n") or 1) != 1:
                    raise ValueError("only n = 1 without streaming is served")
                status, answer = 200, generator.submit(body)
                choice = answer["choices"][0]
                entry |= {"usage": answer["usage"], "finish_reason": choice["finish_reason"],
                          "content": choice["message"]["content"]}  # fmt: skip
            except Exception as exc:  # no route; what vLLM refuses (bad JSON too); a failure
                status = 404 if self.path != CHAT else 400 if isinstance(exc, ValueError) else 500
                answer = {"error": {"message": str(exc) if status < 500 else repr(exc)}}
            with lock, open(requests_log, "a", encoding="utf-8") as f:
                f.write(json.dumps({**entry, "status": status}) + "\n")
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    httpd = Server(("127.0.0.1", 0), Handler)  # listening from here on
    print(f"serving on http://127.0.0.1:{httpd.server_port} ({model_dir})", flush=True)
    httpd.serve_forever()


@contextlib.contextmanager
def running(model_dir: Path, requests_log: Path, log: Path, timeout: float = 120) -> Iterator[str]:
    """This server in a child process while the block lasts; yields its base URL. Its own session
    (a Ctrl-C reaches only the dry run, which stops it in order), and ``PR_SET_PDEATHSIG``: the
    kernel kills it when the dry run dies, however it dies (SIGKILL included)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "dryrun.server", str(model_dir), str(requests_log)],
            stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
            cwd=Path(__file__).resolve().parent.parent,
            preexec_fn=lambda: ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL),
        )  # fmt: skip
    try:
        deadline = time.monotonic() + timeout
        while not (ready := re.search(r"serving on (\S+)", log.read_text(errors="replace"))):
            if process.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"model server not ready (exit {process.returncode}): {tail}")
            time.sleep(0.2)
        yield ready[1]
    finally:
        process.kill()  # no state to save: SIGTERM would end it as abruptly
        process.wait()


if __name__ == "__main__":
    serve(sys.argv[1], sys.argv[2])
