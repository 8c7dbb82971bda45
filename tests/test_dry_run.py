"""The dry run end to end, against a real ``transformers serve``: what the server received, what the
log holds, what the analysis counted, and that the server never outlives the command.

Every test here starts a real server (~10 s on 2 cores). The model is built once per module into
a temporary cache, so the repository's own ``.cache/`` is neither used nor touched.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from calibrated_qa.records import validate_record
from dryrun.build import BuiltModel, build_model
from dryrun.proxy import RecordingProxy, read_requests, recording_proxy
from dryrun.server import Server, ServerError, serve

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> BuiltModel:
    return build_model(tmp_path_factory.mktemp("dryrun-cache"))


@pytest.fixture(scope="module")
def served(
    built: BuiltModel, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Server, RecordingProxy]]:
    logs = tmp_path_factory.mktemp("served")
    with (
        serve(built.link, logs / "server.log") as server,
        recording_proxy(server.port, logs / "requests.jsonl") as proxy,
    ):
        yield server, proxy


def dry_run(out: Path, built: BuiltModel, *args: str) -> list[str]:
    return [
        sys.executable,
        str(REPO / "dry_run.py"),
        "--out",
        str(out),
        "--cache-dir",
        str(built.path.parent),
        *args,
    ]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def post(url: str, body: dict) -> tuple[int, dict | str]:
    request = urllib.request.Request(
        f"{url}/v1/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(errors="replace")


def server_pid(server_log: Path) -> int:
    """The server's pid, from uvicorn's "Started server process [PID]" line."""
    for line in server_log.read_text(errors="replace").splitlines():
        if "Started server process [" in line:
            return int(line.split("[", 1)[1].split("]", 1)[0])
    raise AssertionError(f"no server pid in {server_log}")


def assert_gone(pid: int) -> None:
    """No live process ``pid`` that is a model server (a zombie or a reused pid does not count)."""
    try:
        process = psutil.Process(pid)
        alive = process.status() != psutil.STATUS_ZOMBIE
        is_server = "transformers.cli.transformers" in " ".join(process.cmdline())
    except psutil.NoSuchProcess:
        return
    assert not (alive and is_server), f"server process {pid} is still running"


def test_dry_run_end_to_end(built: BuiltModel, tmp_path: Path) -> None:
    """16 rollouts (4 questions x 4) at the config's max_tokens (512), then every invariant."""
    out = tmp_path / "dry-run"
    started = time.perf_counter()
    run = subprocess.run(
        dry_run(out, built, "-n", "4", "-r", "4"),
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    seconds = time.perf_counter() - started
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "all checks passed" in run.stdout
    assert "a randomly initialised model writes no" in run.stdout  # parse rate 0 is explained

    # What the server received: 16 chat requests, each exactly one user message.
    requests = read_jsonl(out / "logs" / "server_requests.jsonl")
    chats = [r for r in requests if r["path"] == "/v1/chat/completions"]
    assert len(chats) == 16
    assert all(r["roles"] == ["user"] and r["status"] == 200 for r in chats)
    assert all(r["max_completion_tokens"] == 512 for r in chats)

    # The log: one valid record per rollout, exact token counts equal to the server's usage.
    log = out / "logs" / "generations.jsonl"
    records = [validate_record(r, f"{log}:{i}") for i, r in enumerate(read_jsonl(log), 1)]
    assert len(records) == 16
    assert {r["split"] for r in records} == {"train"}
    assert all(r["length_unit"] == "tokens" for r in records)
    usage = sorted((r["content"], r["usage"]["completion_tokens"]) for r in chats)
    logged = sorted((r["completion"], r["completion_tokens"]) for r in records)
    assert logged == usage
    assert all(r["length"] == r["completion_tokens"] <= 512 for r in records)
    assert all(r["truncated"] == (r["completion_tokens"] == 512) for r in records)
    questions = {r["example_id"]: r["question"] for r in records}
    assert len(questions) == 4

    # The analysis read that log: its outputs exist and count the same rollouts.
    with (out / "metrics_by_step.csv").open() as f:
        steps = list(csv.DictReader(f))
    assert sum(int(s["n"]) for s in steps) == 16
    assert len((out / "calibration_metrics.csv").read_text().splitlines()) == 1 + 16
    assert (out / "summary.md").exists()

    report = json.loads((out / "dry_run_report.json").read_text())
    assert report["rollouts"] == 16 and report["checks"]["problems"] == []
    assert report["checks"]["analysis_rollouts"] == 16
    assert_gone(server_pid(out / "logs" / "server.log"))
    print(
        f"dry run of 16 rollouts: {seconds:.1f} s, {report['rollouts_per_second']:.2f} rollouts/s"
    )


@pytest.mark.parametrize(
    ("signum", "exit_code"),
    [(signal.SIGINT, 130), (signal.SIGTERM, 143)],
    ids=["SIGINT", "SIGTERM"],
)
def test_interrupted_dry_run_leaves_no_server(
    built: BuiltModel, tmp_path: Path, signum: int, exit_code: int
) -> None:
    out = tmp_path / "dry-run"
    requests = out / "logs" / "server_requests.jsonl"
    cli = subprocess.Popen(
        dry_run(out, built, "-n", "16", "-r", "4", "--skip-analysis"),
        cwd=REPO,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 180
        while not (requests.exists() and requests.read_text().strip()):  # rollouts under way
            assert cli.poll() is None, cli.communicate()[0][-3000:]
            assert time.monotonic() < deadline, "the dry run never reached its rollouts"
            time.sleep(0.2)
        children = psutil.Process(cli.pid).children(recursive=True)
        assert any("transformers.cli.transformers" in " ".join(c.cmdline()) for c in children)
        cli.send_signal(signum)
        output, _ = cli.communicate(timeout=60)
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
    assert cli.returncode == exit_code, output[-3000:]
    _, alive = psutil.wait_procs(children, timeout=10)
    assert [p for p in alive if p.status() != psutil.STATUS_ZOMBIE] == []
    assert_gone(server_pid(out / "logs" / "server.log"))


def test_an_error_inside_serve_stops_the_server(built: BuiltModel, tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="injected"), serve(built.link, tmp_path / "log") as s:
        pid = s.process.pid
        assert s.process.poll() is None
        raise RuntimeError("injected failure while serving")
    assert s.process.returncode is not None
    assert_gone(pid)


def test_a_server_that_cannot_start_fails_fast(tmp_path: Path) -> None:
    started = time.monotonic()
    with (
        pytest.raises(ServerError, match="exited with code"),
        serve(tmp_path / "nothing", tmp_path / "log"),
    ):
        pass
    assert time.monotonic() - started < 120
    assert "nothing" in (tmp_path / "log").read_text()


def test_the_template_refuses_a_system_message(served: tuple[Server, RecordingProxy]) -> None:
    server, proxy = served
    sampling = {"model": server.model, "max_completion_tokens": 16, "temperature": 1.0}
    status, answer = post(
        proxy.url,
        {**sampling, "messages": [{"role": "system", "content": "Be brief."},
                                  {"role": "user", "content": "Is it?"}]},
    )  # fmt: skip
    assert status >= 400, answer
    # transformers serve answers 500 (vLLM: 400); the template's reason is in the server log,
    # written just after the response.
    deadline = time.monotonic() + 30
    while "System role not supported" not in server.log_path.read_text():
        assert time.monotonic() < deadline, "the server log does not say why it refused"
        time.sleep(0.2)

    user_only = {**sampling, "messages": [{"role": "user", "content": "Is it?"}]}
    status, answer = post(proxy.url, user_only)
    assert status == 200, answer
    assert 1 <= answer["usage"]["completion_tokens"] <= 16

    refused, answered = read_requests(proxy.log_path)[-2:]
    assert refused["roles"] == ["system", "user"] and refused["status"] >= 400
    assert answered["roles"] == ["user"] and answered["status"] == 200


def test_vf_eval_runs_against_the_server(
    served: tuple[Server, RecordingProxy], tmp_path: Path
) -> None:
    """The documented vf-eval command (docs/dry_run.md), scaled down."""
    server, proxy = served
    before = len(read_requests(proxy.log_path)) if proxy.log_path.exists() else 0
    env_args = {
        "max_tokens": 64,
        "length_unit": "tokens",
        "dataset_name": "data/boolq",
        "dataset_split": "validation",
        "eval_split": "validation",
        "log_dir": str(tmp_path),
    }
    command = [
        str(Path(sys.executable).parent / "vf-eval"), "calibrated-qa",
        "-m", server.model, "-b", f"{proxy.url}/v1", "-k", "DRYRUN_API_KEY",
        "-n", "2", "-r", "2", "-t", "64", "-T", "1.0", "-a", json.dumps(env_args),
    ]  # fmt: skip
    run = subprocess.run(command, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    log = tmp_path / "eval_generations.jsonl"
    records = [validate_record(r, f"{log}:{i}") for i, r in enumerate(read_jsonl(log), 1)]
    assert len(records) == 4
    assert all(r["split"] == "eval" and r["length_unit"] == "tokens" for r in records)
    chats = read_requests(proxy.log_path)[before:]
    assert len(chats) == 4 and all(r["roles"] == ["user"] for r in chats)
    assert sorted(r["completion_tokens"] for r in records) == sorted(
        r["usage"]["completion_tokens"] for r in chats
    )
