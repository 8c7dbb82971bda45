"""Run ``transformers serve`` on 127.0.0.1 for as long as a ``with`` block lasts, and never longer.

The server gets its own process group (``start_new_session``) so that stopping it kills everything
it started and nothing else, and so that a Ctrl-C in the terminal reaches only the dry run, which
then stops the server in order. It is stopped on success, on any exception, on Ctrl-C
(``KeyboardInterrupt``) and on SIGTERM (``terminate_on_sigterm`` turns it into ``SystemExit`` so
that ``finally`` blocks run; Python's default would die without running them). Only a SIGKILL of
the dry run itself leaves the server behind, which no handler can prevent.

``transformers serve`` is started with the model folder as its forced model: it loads the model
before it starts listening, so a healthy ``/health`` means the model is ready, and requests must
name the model by that same path.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

HOST = "127.0.0.1"


class ServerError(RuntimeError):
    """The server did not come up; the message carries the end of its log."""


@dataclass(frozen=True)
class Server:
    process: subprocess.Popen
    url: str  # http://127.0.0.1:PORT, without /v1
    model: str  # the name requests must use: the model folder's path
    log_path: Path

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])


def free_port() -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def server_command(model_dir: Path, port: int, seed: int | None) -> list[str]:
    """The ``transformers serve`` command line (run with this interpreter, so with this venv)."""
    command = [
        sys.executable,
        "-m",
        "transformers.cli.transformers",
        "serve",
        str(model_dir),
        "--host",
        HOST,
        "--port",
        str(port),
        "--device",
        "cpu",
        "--log-level",
        "info",
    ]
    if seed is not None:
        command += ["--default-seed", str(seed)]
    return command


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def wait_healthy(server: Server, timeout: float) -> None:
    """Poll ``/health`` until it answers 200; fail early if the process exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise ServerError(
                f"transformers serve exited with code {server.process.returncode} before it was "
                f"ready; end of {server.log_path}:\n{_tail(server.log_path)}"
            )
        try:
            with urllib.request.urlopen(f"{server.url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise ServerError(
        f"transformers serve was not healthy after {timeout:.0f} s; end of {server.log_path}:\n"
        f"{_tail(server.log_path)}"
    )


def stop(process: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM the server's process group, SIGKILL it after ``grace`` seconds, reap the process.

    Ctrl-C and SIGTERM are ignored meanwhile (main thread only), so an impatient second Ctrl-C
    cannot interrupt the cleanup and orphan the server.
    """
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, signal.SIG_IGN)
    try:
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, sig)
            try:
                process.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        # The leader may be gone while other members of its group live on: make sure of them too.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def serve(
    model_dir: Path,
    log_path: Path,
    *,
    port: int | None = None,
    seed: int | None = 0,
    startup_timeout: float = 180.0,
) -> Iterator[Server]:
    """Start ``transformers serve`` on ``model_dir``, wait until healthy, yield, always stop it."""
    model_dir = Path(model_dir).absolute()  # not resolve(): a symlink's name is the model name
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",  # a local folder; never ask the hub
        "HF_HUB_DISABLE_UPDATE_CHECK": "1",  # the CLI otherwise checks PyPI for a newer release
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONUNBUFFERED": "1",  # the server log is current, also when the server is killed
        # One thread: a 0.2M-parameter model gains nothing from more, and OpenMP threads spinning
        # against the client's process on a 2-core machine slowed generation down 5-20x.
        "OMP_NUM_THREADS": "1",
    }
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            server_command(model_dir, port, seed),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    try:
        server = Server(process, f"http://{HOST}:{port}", str(model_dir), log_path)
        wait_healthy(server, startup_timeout)
        yield server
    finally:
        stop(process)


def terminate_on_sigterm() -> None:
    """Make SIGTERM raise ``SystemExit(143)`` in the main thread, so ``finally`` blocks run."""

    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)
