"""A recording reverse proxy in front of the model server: what did the server actually receive?

``transformers serve`` logs no request bodies, and the point of the dry run is to check the wire:
that every chat request holds exactly one ``user`` message (Gemma 2 refuses a system role) and that
the token counts in the generation log are the server's own ``usage``. Every request that reaches
the server goes through here (the server's port is known to nobody else), and one JSON line per
request is appended to ``requests.jsonl``:

    {"time", "method", "path", "status", "roles", "max_completion_tokens",
     "usage", "finish_reason", "content"}

``roles`` is the list of message roles sent (null for requests without messages); ``usage``,
``finish_reason`` and ``content`` are read from the server's JSON answer (null when absent).
The proxy handles plain (non-streaming) HTTP/1.1 requests, which is all verifiers sends.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from dryrun.server import HOST

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}


def summarize(method: str, path: str, status: int, request: bytes, response: bytes) -> dict:
    """The recorded line for one request/response pair (bodies that are not JSON give nulls)."""
    body = _json(request)
    answer = _json(response)
    messages = body.get("messages") if isinstance(body, dict) else None
    choice = (answer.get("choices") or [{}])[0] if isinstance(answer, dict) else {}
    return {
        "time": time.time(),
        "method": method,
        "path": path,
        "status": status,
        "roles": [m.get("role") for m in messages] if isinstance(messages, list) else None,
        "max_completion_tokens": body.get("max_completion_tokens", body.get("max_tokens"))
        if isinstance(body, dict)
        else None,
        "usage": answer.get("usage") if isinstance(answer, dict) else None,
        "finish_reason": choice.get("finish_reason"),
        "content": (choice.get("message") or {}).get("content"),
    }


def _json(data: bytes) -> Any:
    try:
        return json.loads(data) if data else None
    except ValueError:
        return None


class RecordingProxy(ThreadingHTTPServer):
    """Forwards every request to ``upstream`` (host, port) and records it in ``log_path``."""

    daemon_threads = True
    # The default listen backlog (5) resets connections in a burst of concurrent rollouts.
    request_queue_size = 1024

    def __init__(self, upstream_port: int, log_path: Path, port: int = 0) -> None:
        super().__init__((HOST, port), _Handler)
        self.upstream_port = upstream_port
        self.log_path = Path(log_path)
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.server_address[1]}"

    def record(self, line: dict) -> None:
        with self._lock, self.log_path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(line, ensure_ascii=False) + "\n")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: RecordingProxy

    def _forward(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        request = self.rfile.read(length) if length else b""
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
        # One upstream connection per request: nothing is left open when the server is stopped.
        upstream = http.client.HTTPConnection(HOST, self.server.upstream_port, timeout=3600)
        try:
            upstream.request(self.command, self.path, body=request or None, headers=headers)
            reply = upstream.getresponse()
            response = reply.read()
            status, reply_headers = reply.status, reply.getheaders()
        except OSError as exc:
            status, reply_headers = 502, [("Content-Type", "text/plain")]
            response = f"dry-run proxy: upstream failed: {exc!r}".encode()
        finally:
            upstream.close()
        self.server.record(summarize(self.command, self.path, status, request, response))
        self.send_response(status)
        for key, value in reply_headers:
            if key.lower() not in _HOP_BY_HOP:
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(response)))
        self.end_headers()
        self.wfile.write(response)

    do_GET = do_POST = _forward

    def log_message(self, format: str, *args: Any) -> None:  # quiet: requests.jsonl is the log
        pass


@contextmanager
def recording_proxy(upstream_port: int, log_path: Path, port: int = 0) -> Iterator[RecordingProxy]:
    """Run a ``RecordingProxy`` in a background thread for the duration of the block."""
    proxy = RecordingProxy(upstream_port, log_path, port)
    thread = threading.Thread(target=proxy.serve_forever, name="dryrun-proxy", daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        proxy.shutdown()
        proxy.server_close()
        thread.join(timeout=5)


def read_requests(log_path: Path) -> list[dict]:
    """The recorded requests, in order."""
    with Path(log_path).open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
