"""run.sh, the main job: training on a box with 2+ GPUs, the CPU dry run elsewhere."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.fixtures.scripts.fakebox import REPO, FakeBox

DRY_RUN = "run --all-extras python dry_run.py"


@pytest.fixture
def box(tmp_path: Path) -> FakeBox:
    return FakeBox(tmp_path).prepare()


def dry_runs(box: FakeBox) -> list[str]:
    return [c for c in box.calls("uv") if c.startswith(DRY_RUN)]


@pytest.mark.parametrize(
    ("gpus", "expected"),
    [("0, 3\\n1, 5", "training"), ("0, 3\\n1, 5\\n2, 0\\n3, 0", "training"), ("0, 3", "dry")],
)
def test_auto_mode_follows_the_gpu_count(box: FakeBox, gpus: str, expected: str) -> None:
    result = box.run("run.sh", "--", "--help", FAKE_GPUS=gpus)
    assert result.returncode == 0, result.stderr
    if expected == "training":
        assert "Usage: run_training.sh" in result.stdout
        assert dry_runs(box) == []
    else:
        assert "training needs 2: running the CPU dry run" in result.stdout
        assert dry_runs(box) == [f"{DRY_RUN} --help"]


def test_no_driver_means_dry_run(box: FakeBox) -> None:
    box.remove_tool("nvidia-smi")
    result = box.run("run.sh", "--", "-n", "16", "-r", "4")
    assert result.returncode == 0, result.stderr
    assert "Detected 0 NVIDIA GPU(s)" in result.stdout
    assert dry_runs(box) == [f"{DRY_RUN} -n 16 -r 4"]


def test_failing_nvidia_smi_means_dry_run(box: FakeBox) -> None:
    result = box.run("run.sh", FAKE_NVIDIA_RC="9")
    assert result.returncode == 0, result.stderr
    assert dry_runs(box) == [DRY_RUN]


def test_forced_modes(box: FakeBox) -> None:
    assert (
        "Usage: run_training.sh"
        in box.run("run.sh", "--gpu", "--", "--help", FAKE_GPUS="0, 3").stdout
    )
    box.run("run.sh", "--cpu")
    assert dry_runs(box) == [DRY_RUN]


def test_installs_uv_from_pypi_when_missing(box: FakeBox) -> None:
    box.remove_tool("uv")
    box.remove_tool("nvidia-smi")
    (box.bin / "uv").unlink(missing_ok=True)
    result = box.run("run.sh")
    # the fake pip "installs" uv by recording the request; no uv appears on PATH afterwards
    assert box.calls("python3") == ["-m pip install --quiet --disable-pip-version-check uv==0.13.9"]
    assert result.returncode != 0
    assert "another uv comes first on PATH: none" in result.stderr


def test_unknown_option(box: FakeBox) -> None:
    result = box.run("run.sh", "--bogus")
    assert result.returncode == 1
    assert "ERROR: unknown option: --bogus" in result.stderr


def test_help() -> None:
    result = subprocess.run([str(REPO / "run.sh"), "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    assert "--gpu" in result.stdout and "--cpu" in result.stdout
