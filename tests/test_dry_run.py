"""``dry_run.py`` end to end, and that no model server or env-server process outlives it, however
it is stopped (SIGINT, SIGTERM, SIGKILL). Slow (about 1 min + 3 x 20 s on 2 cores).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from calibrated_qa.records import validate_record
from dry_run import read_jsonl  # whole lines; an unterminated last line is left out
from dryrun.build import BuiltModel, build_model
from dryrun.orchestrator import eval_sampling_args, sent_fields, train_sampling_args
from tests.conftest import alive, ctrl_c_as_in_a_terminal
from tests.test_dry_run_checks import DRY

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> BuiltModel:
    return build_model(tmp_path_factory.mktemp("cache"))


def command(out: Path, built: BuiltModel) -> list[str]:
    return [sys.executable, str(REPO / "dry_run.py"), "--out", str(out),
            "--cache-dir", str(built.path.parent)]  # fmt: skip


@pytest.mark.timeout(600)
def test_dry_run_end_to_end(built: BuiltModel, tmp_path: Path) -> None:
    started = time.perf_counter()
    run = subprocess.run(command(tmp_path, built), cwd=tmp_path, capture_output=True, text=True,
                         timeout=600)  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "all checks passed" in run.stdout
    (out,) = tmp_path.iterdir()  # a new run-* folder
    report = json.loads((out / "dry_run_report.json").read_text())

    # both logs: valid records from 2 env-server workers each, in the config's unit
    train = [validate_record(r, "train") for r in read_jsonl(out / "generations.jsonl")]
    evals = [validate_record(r, "eval") for r in read_jsonl(out / "eval_generations.jsonl")]
    assert len({r["pid"] for r in train}) == len({r["pid"] for r in evals}) == 2
    assert {r["length_unit"] for r in train + evals} == {"chars"}
    assert len(evals) == 2 * DRY.eval.round_size  # base and final rounds
    assert DRY.batch_size * DRY.max_steps <= len(train) <= report["rollouts_started"]
    assert report["surplus_records"] == len(train) - DRY.batch_size * DRY.max_steps

    # every chat request: status 200 and prime-rl's sampling fields
    requests = read_jsonl(out / "server_requests.jsonl")
    train_fields = sent_fields(train_sampling_args(DRY, DRY.temperature))
    eval_fields = sent_fields(eval_sampling_args(DRY))
    assert all(r["status"] == 200 and r["roles"] == ["user"] for r in requests)
    sent = sum(r["sampling"] == train_fields for r in requests)  # a cancelled one may not have
    assert len(train) <= sent <= report["rollouts_started"]
    assert sum(r["sampling"] == eval_fields for r in requests) == len(evals)

    # the analysis (in-process): training steps, eval rounds, base vs trained
    for folder in ("train", "eval", "compare"):
        assert any((out / "analysis" / folder).iterdir()), folder
    assert "analyze_calibration.py --split eval --compare base=" in run.stdout
    print(f"dry run: {time.perf_counter() - started:.0f} s, report {report}")


def descendants(pid: int) -> list[psutil.Process]:
    return psutil.Process(pid).children(recursive=True)


@pytest.fixture
def mid_run(built: BuiltModel, tmp_path: Path) -> Iterator[tuple[subprocess.Popen, list]]:
    """A dry run stopped while its rollouts are under way: (process, its descendants then)."""
    cli = subprocess.Popen(command(tmp_path, built), cwd=tmp_path, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, start_new_session=True,
                           preexec_fn=ctrl_c_as_in_a_terminal)  # fmt: skip
    children: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 180
        while not list(tmp_path.glob("run-*/server_requests.jsonl")):  # rollouts under way
            assert cli.poll() is None and time.monotonic() < deadline, "no request was sent"
            time.sleep(0.2)
        children = descendants(cli.pid)
        lines = [" ".join(c.cmdline()) for c in children]
        assert sum("dryrun.server" in line for line in lines) == 1
        assert sum("spawn_main" in line for line in lines) >= 6  # 2 env servers, 2 x 2 workers
        yield cli, children
    finally:
        if cli.poll() is None:
            os.killpg(cli.pid, signal.SIGKILL)
            cli.wait()
        for process in alive(children):  # a failed test leaves none either
            process.kill()


@pytest.mark.timeout(300)
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL],
                         ids=["SIGINT", "SIGTERM", "SIGKILL"])  # fmt: skip
def test_a_stopped_dry_run_leaves_no_process(mid_run, signum: int) -> None:
    cli, children = mid_run
    cli.send_signal(signum)  # to the dry run alone, not to its process group
    assert cli.wait(timeout=60) != 0  # stopped, not finished
    deadline = time.monotonic() + 60
    while alive(children) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert alive(children) == [], [" ".join(p.cmdline()[:4]) for p in alive(children)]
