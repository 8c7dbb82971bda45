"""A tiny OpenAI-compatible chat-completions server (stdlib only) answering with scripted text.

It stands in for vLLM's OpenAI server in tests that drive the real HTTP path: the env-server
workers' ``vf.Client`` (plain chat completions or prime-rl's token client) sends real requests to
``POST /v1/chat/completions``; the server answers ``script(user_text)`` with ``usage`` and, when
the request carries vLLM's ``return_token_ids`` (prime-rl sends it in ``extra_body``, which the
OpenAI client merges into the JSON body), ``prompt_token_ids``, ``choices[0].token_ids`` and, when
``logprobs`` is asked for, one logprob per completion token: what verifiers'
``OpenAIChatCompletionsClient.from_native_response`` reads to build ``ResponseTokens``.

A request with ``"stream": true`` (the v1 null harness's chat program streams) gets the same
completion as server-sent events, OpenAI's chunk format: the role, the text in a few pieces, the
finish reason, a usage chunk when ``stream_options.include_usage`` asks for one, ``[DONE]``.

Every request body is kept in ``requests`` (thread-safe) for assertions.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

CHAT_PATH = "/v1/chat/completions"


def default_token_count(text: str) -> int:
    """A deterministic stand-in for a tokenizer: whitespace words + 3."""
    return len(text.split()) + 3


def message_text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return content or ""


class FakeOpenAIServer:
    """``with FakeOpenAIServer(script) as server: ... server.base_url ...``.

    ``script(user_text) -> completion text``; ``token_count(text) -> int`` gives the completion's
    token count reported in ``usage`` (and the length of ``token_ids``). A completion whose count
    reaches the request's ``max_completion_tokens``/``max_tokens`` is reported with
    ``finish_reason = "length"``, as vLLM would; its text is not cut.
    """

    def __init__(
        self,
        script: Callable[[str], str],
        token_count: Callable[[str], int] = default_token_count,
    ) -> None:
        self.script = script
        self.token_count = token_count
        self.requests: list[dict[str, Any]] = []
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def port(self) -> int:
        assert self._httpd is not None, "server not started"
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        """The OpenAI ``base_url`` (``.../v1``), as given to ``vf.ClientConfig.api_base_url``."""
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> FakeOpenAIServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as httpx expects

            def log_message(self, format: str, *args: Any) -> None:
                return None

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                if self.path != CHAT_PATH:
                    self._send(404, {"error": {"message": f"no route {self.path}"}})
                    return
                try:
                    body = json.loads(raw)
                    with server._lock:
                        server.requests.append(body)
                    payload = server.respond(body)
                except Exception as exc:  # report, never hang the client
                    with server._lock:
                        server.errors.append(repr(exc))
                    self._send(500, {"error": {"message": repr(exc)}})
                    return
                if body.get("stream"):
                    self._stream(body, payload)
                else:
                    self._send(200, payload)

            def _stream(self, body: dict[str, Any], payload: dict[str, Any]) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Connection", "close")  # the end of the body ends the stream
                self.end_headers()
                self.close_connection = True
                for chunk in stream_chunks(body, payload):
                    self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                    self.wfile.flush()
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()

            def _send(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd = self._thread = None

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the model ---------------------------------------------------------------------------

    def respond(self, body: dict[str, Any]) -> dict[str, Any]:
        """The chat completion for one request body."""
        messages = body["messages"]
        user = [m for m in messages if m.get("role") == "user"]
        text = self.script(message_text(user[-1]))
        prompt_tokens = sum(len(message_text(m).split()) + 4 for m in messages)
        n = self.token_count(text)
        limit = body.get("max_completion_tokens", body.get("max_tokens"))
        finish_reason = "length" if limit is not None and n >= limit else "stop"
        choice: dict[str, Any] = {
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "finish_reason": finish_reason,
            "logprobs": None,
        }
        if body.get("logprobs"):
            choice["logprobs"] = {
                "content": [
                    {"token": f"t{i}", "logprob": -0.5, "bytes": None, "top_logprobs": []}
                    for i in range(n)
                ]
            }
        payload: dict[str, Any] = {
            "id": f"chatcmpl-fake-{len(self.requests)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", "fake"),
            "choices": [choice],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": n,
                "total_tokens": prompt_tokens + n,
            },
        }
        if body.get("return_token_ids"):  # vLLM's extension, used by prime-rl
            payload["prompt_token_ids"] = [7] * prompt_tokens
            choice["token_ids"] = [11] * n
        return payload


def stream_chunks(body: dict[str, Any], payload: dict[str, Any]) -> list[dict[str, Any]]:
    """A whole chat completion as the ``chat.completion.chunk`` objects of a stream."""
    choice = payload["choices"][0]
    text = choice["message"]["content"]
    head = {k: payload[k] for k in ("id", "created", "model")} | {"object": "chat.completion.chunk"}

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        return head | {
            "choices": [
                {"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}
            ]
        }

    size = max(1, len(text) // 3)
    pieces = [text[i : i + size] for i in range(0, len(text), size)]
    chunks = [chunk({"role": "assistant", "content": ""})]
    chunks += [chunk({"content": piece}) for piece in pieces]
    chunks.append(chunk({}, choice["finish_reason"]))
    if (body.get("stream_options") or {}).get("include_usage"):
        chunks.append(head | {"choices": [], "usage": payload["usage"]})
    return chunks
