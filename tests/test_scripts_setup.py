"""setup_runpod.sh on a fake fresh box: pinned install, verified commit, idempotent re-runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures.scripts.fakebox import PIN, REPO, FakeBox

WORK = ("pip install", "clone", "fetch", "checkout", "python install", "sync --")


def work_done(box: FakeBox) -> list[str]:
    calls = box.calls("python3") + box.calls("git") + box.calls("uv")
    return [c for c in calls if any(w in c for w in WORK) and "--check" not in c]


@pytest.fixture
def box(tmp_path: Path) -> FakeBox:
    return FakeBox(tmp_path)


def test_fresh_box_installs_the_pinned_stack(box: FakeBox) -> None:
    result = box.run("setup_runpod.sh")
    assert result.returncode == 0, result.stderr
    assert box.calls("python3") == ["-m pip install --quiet --disable-pip-version-check uv==0.13.9"]
    git = box.calls("git")
    assert f"clone https://github.com/PrimeIntellect-ai/prime-rl.git {box.prime_rl}" in git
    assert git[-2:] == [
        f"-C {box.prime_rl} -c advice.detachedHead=false checkout --detach {PIN}",
        f"-C {box.prime_rl} rev-parse HEAD",
    ]
    uv = box.calls("uv")
    assert "python install 3.12" in uv
    assert "sync --all-extras --locked --no-dev" in uv
    pip = [c for c in uv if c.startswith("pip install")]
    assert pip == [
        f"pip install --python {box.prime_rl}/.venv/bin/python --no-deps "
        f"--reinstall-package calibrated-qa {REPO}/calibrated_qa"
    ]
    # The environment is installed after the sync (which would remove it).
    assert uv.index(pip[0]) > uv.index("sync --all-extras --locked --no-dev")
    assert f"prime-rl:      {PIN}" in result.stdout
    # This checkout's analysis venv is built in setup, not first after ~2 h of training.
    assert f"sync --locked --no-dev --inexact --project {REPO}" in uv
    assert (box.state / "analysis_synced").exists()


def test_rerun_on_a_prepared_box_does_no_work_twice(box: FakeBox) -> None:
    assert box.run("setup_runpod.sh").returncode == 0
    box.reset_calls()
    result = box.run("setup_runpod.sh")
    assert result.returncode == 0, result.stderr
    assert work_done(box) == []
    assert "already" in result.stdout


def test_commit_override(box: FakeBox) -> None:
    other = "abcdef0123456789abcdef0123456789abcdef01"
    result = box.run("setup_runpod.sh", "--commit", other)
    assert result.returncode == 0, result.stderr
    assert (box.prime_rl / ".git" / "HEAD_SHA").read_text().strip() == other
    box.reset_calls()
    result = box.run("setup_runpod.sh", PRIME_RL_COMMIT=other)
    assert result.returncode == 0 and work_done(box) == []


def test_local_changes_block_switching_commits(box: FakeBox) -> None:
    box.prepare(commit="0" * 40)
    (box.prime_rl / ".git" / "DIRTY").write_text(" M pyproject.toml\n")
    result = box.run("setup_runpod.sh")
    assert result.returncode != 0
    assert "has local changes" in result.stderr


def test_broken_install_is_reported(box: FakeBox) -> None:
    result = box.run("setup_runpod.sh", FAKE_ENV_INSTALLED="stale")
    assert result.returncode != 0
    assert "calibrated-qa is not correctly installed" in result.stderr


def test_unknown_argument(box: FakeBox) -> None:
    result = box.run("setup_runpod.sh", "--frobnicate")
    assert result.returncode != 0 and "unknown argument: --frobnicate" in result.stderr


def test_analysis_venv_failure_is_reported(box: FakeBox) -> None:
    result = box.run("setup_runpod.sh", FAKE_ANALYSIS_SYNC_RC="1")
    assert result.returncode != 0
    assert "could not build the analysis venv" in result.stderr


def test_large_volume_takes_prime_rl_and_the_caches(box: FakeBox) -> None:
    """RunPod mounts a large volume at /workspace; the container disk is small and lost on
    restart. When one is mounted, prime-rl's venv, uv's cache and the HF cache go there."""
    volume = box.root / "workspace"
    volume.mkdir()
    env = {"CQA_VOLUME": str(volume), "FAKE_VOLUME": str(volume)}
    result = box.run("setup_runpod.sh", **env)
    assert result.returncode == 0, result.stderr
    assert f"Installing into {volume} (prime-rl: {volume}/prime-rl)" in result.stdout
    assert f"clone https://github.com/PrimeIntellect-ai/prime-rl.git {volume}/prime-rl" in (
        box.calls("git")
    )
    # run_training.sh resolves the same root: its outputs and prime-rl are on the volume too.
    train = box.run("run_training.sh", "--dry-run", HF_TOKEN="hf_x", **env)
    assert train.returncode == 0, train.stderr
    assert f"-> {volume}/outputs/calibrated_qa_gemma2_2b" in train.stdout
    assert f"into the Hugging Face cache ({volume}/.cache/huggingface/hub)" in train.stdout


def test_no_volume_means_home(box: FakeBox) -> None:
    result = box.run("setup_runpod.sh", CQA_VOLUME=str(box.root / "absent"))
    assert result.returncode == 0, result.stderr
    assert f"Installing into {box.home} (prime-rl: {box.prime_rl})" in result.stdout


def test_setup_refuses_a_small_disk_before_installing(box: FakeBox) -> None:
    result = box.run("setup_runpod.sh", FAKE_DF_KB=str(20 * 10**9 // 1024))
    assert result.returncode == 1
    assert "only 20 GB free" in result.stderr and "setup needs 60 GB" in result.stderr
    assert work_done(box) == [], "nothing installed on a disk that cannot hold it"
