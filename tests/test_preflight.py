"""The preflight's pieces on real inputs: the disk formula on real safetensors headers, the
smoke report on a finished smoke run's layout, W&B's key check against a loopback server, and
the CUDA check with this machine's CPU-only torch."""

from __future__ import annotations

import json
import struct
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from calibrated_qa.run_config import read_run_config
from scripts import disk_need
from scripts.launch_checks import CheckError, cuda_devices, wandb_check
from scripts.smoke_report import smoke_report
from tests.fixtures.scripts.run_dir import fake_run, records, write_log

REPO = Path(__file__).resolve().parent.parent
MAIN = REPO / "configs" / "calibrated_qa_gemma2_2b.toml"
SMOKE = REPO / "configs" / "smoke.toml"
GEMMA2_2B = 2_614_341_888  # parameters of google/gemma-2-2b-it (its safetensors index)


def safetensors(path: Path, tensors: dict[str, tuple[str, list[int]]]) -> Path:
    """A safetensors file's header (no tensor data: the formula reads headers only)."""
    header = {
        name: {"dtype": d, "shape": s, "data_offsets": [0, 0]} for name, (d, s) in tensors.items()
    }
    header["__metadata__"] = {"format": "pt"}
    raw = json.dumps(header).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw)
    return path


def test_model_size_sums_every_shard(tmp_path: Path) -> None:
    safetensors(tmp_path / "model-00001.safetensors", {"a": ("BF16", [1000, 1000])})
    safetensors(tmp_path / "model-00002.safetensors", {"b": ("F32", [10]), "c": ("BF16", [5])})
    size = disk_need.model_size(tmp_path)
    assert (size.parameters, size.file_bytes) == (1_000_015, 2_000_050)


def test_model_size_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(disk_need.DiskNeedError, match="no \\*.safetensors files"):
        disk_need.model_size(tmp_path)
    (tmp_path / "bad.safetensors").write_bytes(b"\x05")
    with pytest.raises(disk_need.DiskNeedError, match="bad.safetensors: not a safetensors file"):
        disk_need.model_size(tmp_path)


def test_reference_run_needs_about_100_gb() -> None:
    """The estimate in issue 10: 95-105 GB at the peak for the reference config."""
    size = disk_need.ModelSize(GEMMA2_2B, 2 * GEMMA2_2B)
    need = disk_need.disk_need(read_run_config(MAIN), size)
    assert (need.checkpoints, need.weights, need.broadcasts) == (2, 2, 3)
    ckpt, model = 12 * GEMMA2_2B, 2 * GEMMA2_2B
    rollouts = 50 * 1024 * 2048 * disk_need.ROLLOUT_BYTES_PER_TOKEN
    assert need.need_bytes == int((2 * ckpt + 5 * model + rollouts) * disk_need.MARGIN)
    assert need.need_gb == 101
    # Without the pruner prime-rl keeps the broadcast of every checkpoint step (5), plus 2.
    unpruned = disk_need.disk_need(read_run_config(MAIN), size, pruned=False)
    assert unpruned.broadcasts == 6 and unpruned.need_gb == 118


def finished_smoke_run(out: Path, results: Path) -> None:
    """What a passing `run_training.sh --smoke` leaves: 4 steps of 64, checkpoints 2 and 4."""
    fake_run(
        out,
        trainer=(4,),
        orchestrator=(2, 4),
        broadcasts=(4,),
        rollouts=(0, 1, 2, 3),
        weights=(4,),
    )
    steps = [f"SUCCESS Step {s} | Time: {10 + s:.2f}s | Reward: 0.4 |\n" for s in range(4)]
    reload = ["INFO Orchestrator resumed: checkpoint 2 ready\n"]
    write_log(out / "logs" / "orchestrator.stdout", steps[:2] + reload + steps[2:])
    write_log(out / "generations.jsonl", records(range(4), 64))
    write_log(out / "eval_generations.jsonl", records(range(3), 32, split="eval"))
    for name in ("summary.md", "eval/comparison.md"):
        write_log(results / name, ["# ok\n"])


def test_smoke_report_passes_a_finished_smoke_run(tmp_path: Path) -> None:
    out, results = tmp_path / "out", tmp_path / "results"
    finished_smoke_run(out, results)
    report = smoke_report(str(SMOKE), str(out), str(results))
    assert "step 3: 13.0 s" in report
    assert "checkpoints/step_4: 0.00 GB" in report and "run_default/broadcasts/step_4" in report
    assert "FAIL" not in report
    assert report.endswith("Smoke run: 9 of 9 checks passed")


@pytest.mark.parametrize(
    ("damage", "failed"),
    [
        (lambda out: (out / "weights" / "step_4" / "STABLE").unlink(), "FAIL final weights"),
        (lambda out: (out / "checkpoints" / "step_4" / "STABLE").unlink(), "FAIL final trainer"),
        (lambda out: write_log(out / "logs" / "orchestrator.stdout", []), None),
        (lambda out: (out / "eval_generations.jsonl").write_text(""), "FAIL 0 eval records"),
    ],
)
def test_smoke_report_names_each_failed_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], damage, failed
) -> None:
    out, results = tmp_path / "out", tmp_path / "results"
    finished_smoke_run(out, results)
    damage(out)
    if failed is None:  # appending nothing changes nothing: the control case
        assert "9 of 9 checks passed" in smoke_report(str(SMOKE), str(out), str(results))
        return
    with pytest.raises(SystemExit):
        smoke_report(str(SMOKE), str(out), str(results))
    printed = capsys.readouterr().out
    assert failed in printed and "8 of 9 checks passed" in printed


class _WandbApi(BaseHTTPRequestHandler):
    """W&B's GraphQL viewer query: a known key gets a user, another an HTTP 401."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        good = self.headers["Authorization"] == "Basic YXBpOmdvb2Qta2V5"  # api:good-key
        body = {"data": {"viewer": {"username": "ada", "entity": "lab"}}} if good else {}
        self.send_response(200 if good else 401)
        self.end_headers()
        self.wfile.write(json.dumps(body).encode())

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def wandb_api() -> Iterator[str]:
    server = HTTPServer(("127.0.0.1", 0), _WandbApi)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def test_wandb_key_is_checked_with_wandb(
    wandb_api: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("WANDB_BASE_URL", wandb_api)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.setenv("WANDB_API_KEY", "good-key")
    assert wandb_check() == "W&B key accepted (user ada, entity lab)"
    monkeypatch.setenv("WANDB_API_KEY", "wrong-key")
    with pytest.raises(CheckError, match="HTTP 401") as rejected:
        wandb_check()
    assert "wrong-key" not in str(rejected.value)
    monkeypatch.delenv("WANDB_API_KEY")
    with pytest.raises(CheckError, match="needs WANDB_API_KEY"):
        wandb_check()
    (tmp_path / ".netrc").write_text("machine 127.0.0.1\n  login user\n  password good-key\n")
    (tmp_path / ".netrc").chmod(0o600)
    assert wandb_check().startswith("W&B key accepted")


def test_unreachable_wandb(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # discard port: nothing listens
    monkeypatch.setenv("WANDB_API_KEY", "k")
    with pytest.raises(CheckError, match="could not reach W&B"):
        wandb_check(timeout=2)


def test_cuda_check_fails_fast_without_a_device() -> None:
    """This machine's torch is a CPU build: the check names torch's CUDA and the likely cause."""
    pytest.importorskip("torch")
    with pytest.raises(CheckError, match="sees no CUDA device"):
        cuda_devices(2)


def test_prefetch_failure_is_a_check_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No network (the hub offline, an empty cache): the download fails first, named."""
    from scripts.launch_checks import prefetch

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(CheckError, match="could not download google/gemma-2-2b-it"):
        prefetch("google/gemma-2-2b-it", str(REPO / "data" / "boolq"))
    # Once cached (the hub's cache layout), the same call returns the snapshot folder offline:
    # the folder whose safetensors headers the disk formula reads.
    revision = "0" * 40
    repo = tmp_path / "hub" / "models--google--gemma-2-2b-it"
    safetensors(repo / "snapshots" / revision / "model.safetensors", {"w": ("BF16", [8])})
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    path = prefetch("google/gemma-2-2b-it", str(REPO / "data" / "boolq"))
    assert disk_need.model_size(Path(path)).parameters == 8
