"""eval_model.sh on a fake GPU box: its checks, the served model, the vf-eval call, cleanup."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest

from tests.fixtures.scripts.fakebox import REPO, FakeBox


@pytest.fixture
def box(tmp_path: Path) -> FakeBox:
    return FakeBox(tmp_path).prepare()


@pytest.fixture
def checkpoint(box: FakeBox) -> Path:
    folder = box.root / "run" / "weights" / "step_50"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    return folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def evaluate(box: FakeBox, model: str, *args: str, **env: str):
    return box.run(
        "scripts/eval_model.sh", "--model", model, "--out", str(box.root / "eval"), *args, **env
    )


def server_stopped(box: FakeBox) -> bool:
    pid = int((box.state / "vllm.pid").read_text())
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A zombie (exited, not yet reaped by its reparented parent) counts as stopped.
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] == "Z"


def test_checkpoint_is_served_evaluated_and_stopped(box: FakeBox, checkpoint: Path) -> None:
    port = free_port()
    result = evaluate(
        box,
        str(checkpoint),
        "--port",
        str(port),
        "--temperature",
        "0",
        "--num-examples",
        "4",
        "--rollouts-per-example",
        "1",
        "--gpu",
        "1",
    )
    assert result.returncode == 0, result.stderr
    out = box.root / "eval"
    assert box.calls("vllm") == [
        f"serve {checkpoint} --host 127.0.0.1 --port {port} --gpu-memory-utilization 0.9"
    ]
    (vf_eval,) = box.calls("vf-eval")
    assert vf_eval.startswith(f"calibrated-qa --model {checkpoint} ")
    assert f"--api-base-url http://127.0.0.1:{port}/v1" in vf_eval
    assert "--num-examples 4 --rollouts-per-example 1 --temperature 0 --max-tokens 512" in vf_eval
    env_args = json.loads(vf_eval.split("--env-args ")[1].split(" --num-examples")[0])
    assert env_args == {"length_unit": "chars", "log_dir": str(out), "max_tokens": 512}
    rows = [json.loads(line) for line in (out / "eval_generations.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and {r["split"] for r in rows} == {"eval"}
    assert "temperature=0" in (out / "eval_args.txt").read_text()
    assert server_stopped(box)


def test_hub_model_checks_token_access(box: FakeBox) -> None:
    result = evaluate(
        box, "google/gemma-2-2b-it", "--port", str(free_port()), HF_TOKEN="x", FAKE_HF_ACCESS="no"
    )
    assert result.returncode != 0
    assert "cannot read google/gemma-2-2b-it" in result.stderr
    assert box.calls("vllm") == []


def test_server_crash_is_reported_and_nothing_left_running(box: FakeBox, checkpoint) -> None:
    result = evaluate(box, str(checkpoint), "--port", str(free_port()), FAKE_VLLM="oom")
    assert result.returncode != 0
    assert "exited during startup" in result.stderr
    assert "CUDA out of memory" in result.stderr
    assert box.calls("vf-eval") == []


def test_port_in_use(box: FakeBox, checkpoint: Path) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        result = evaluate(box, str(checkpoint), "--port", str(port))
    assert result.returncode != 0
    assert f"port {port} is in use" in result.stderr
    assert box.calls("vllm") == []


@pytest.mark.parametrize(
    ("model", "setup", "env", "message"),
    [
        ("{root}/run/weights/step_7", None, {}, "checkpoint folder not found"),
        ("{root}/run/weights", None, {}, "is not a model folder (no config.json)"),
        ("{ckpt}", lambda b: b.remove_tool("nvidia-smi"), {}, "nvidia-smi not found"),
        ("{ckpt}", None, {"FAKE_GPUS": "0, 40000"}, "GPU 0 is busy"),
        ("{ckpt}", None, {"FAKE_GPUS": "1, 3"}, "GPU 0 not found"),
    ],
    ids=["missing checkpoint", "not a model folder", "no GPU", "busy GPU", "no such GPU"],
)
def test_checks_fail_with_their_own_message(box, checkpoint, model, setup, env, message) -> None:
    if setup is not None:
        setup(box)
    model = model.format(root=box.root, ckpt=checkpoint)
    result = evaluate(box, model, "--port", str(free_port()), **env)
    assert result.returncode != 0
    assert message in result.stderr
    assert box.calls("vllm") == []


def test_refuses_to_mix_two_evaluations(box: FakeBox, checkpoint: Path) -> None:
    (box.root / "eval").mkdir()
    (box.root / "eval" / "eval_generations.jsonl").write_text('{"split": "eval"}\n')
    result = evaluate(box, str(checkpoint), "--port", str(free_port()))
    assert result.returncode != 0
    assert "already holds an eval log" in result.stderr


def test_required_arguments_and_help() -> None:
    import subprocess

    script = str(REPO / "scripts" / "eval_model.sh")
    help_text = subprocess.run([script, "--help"], capture_output=True, text=True).stdout
    for flag in (
        "--model",
        "--out",
        "--num-examples",
        "--rollouts-per-example",
        "--temperature",
        "--port",
    ):
        assert flag in help_text
    result = subprocess.run([script, "--out", "x"], capture_output=True, text=True)
    assert result.returncode != 0 and "--model is required" in result.stderr
