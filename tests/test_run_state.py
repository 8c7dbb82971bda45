"""scripts/run_state.py: stale state of an earlier run, the common resume step, what a resume
moves aside, and a resumed run's logs reading as the uninterrupted run's."""

from __future__ import annotations

from pathlib import Path

import pytest

from scripts import run_state
from scripts.run_state import RunStateError, found_state, move_aside_all, prepare_resume
from tests.fixtures.scripts.run_dir import fake_run, read_steps, records, write_log

BATCH = 4


def aside_files(out: Path) -> list[str]:
    return sorted(p.relative_to(out).as_posix() for p in (out / "aside").rglob("*") if p.is_file())


# Each case: what a crashed run may leave without a finished trainer checkpoint. prime-rl's own
# guard (utils/pathing.py validate_output_dir) sees none of these.
STALE = {
    "broadcasts only": lambda out: fake_run(out, broadcasts=(1, 2)),
    "rollouts only": lambda out: fake_run(out, rollouts=(0, 1)),
    "training log only": lambda out: write_log(out / "generations.jsonl", records(range(1), 4)),
    "eval log only": lambda out: write_log(out / "eval_generations.jsonl", records(range(1), 2)),
    "orchestrator ahead": lambda out: fake_run(out, orchestrator=(10,), unfinished_trainer=(10,)),
    "logs of a run": lambda out: (
        write_log(out / "logs" / "orchestrator.stdout", ["Step 0\n"]),
        write_log(out / "pruner.log", ["pruned run_default/broadcasts/step_2\n"]),
    ),
}


@pytest.mark.parametrize("make", STALE.values(), ids=STALE.keys())
def test_each_stale_state_is_found_and_moved_aside_whole(tmp_path: Path, make) -> None:
    out = tmp_path / "out"
    make(out)
    before = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert found_state(out), "a fresh run would start on this"
    folder = move_aside_all(out)
    assert folder is not None and folder.parent == out / "aside"
    assert folder.name.endswith("-earlier-run")
    assert found_state(out) == []
    # Nothing deleted: every file is in the aside folder at its relative path.
    assert aside_files(out) == [f"aside/{folder.name}/{rel}" for rel in before]


def test_dry_run_leftovers_are_not_a_run(tmp_path: Path) -> None:
    """prime-rl's --dry-run writes logs/rl.log and configs/: a launch, not a run's state."""
    out = tmp_path / "out"
    write_log(out / "logs" / "rl.log", ["dry run\n"])
    write_log(out / "configs" / "rl.toml", ["x = 1\n"])
    write_log(out / "generations.jsonl", [])  # an empty log holds nothing
    assert found_state(out) == []


def test_two_move_asides_in_one_second_get_two_folders(tmp_path: Path) -> None:
    out = tmp_path / "out"
    fake_run(out, rollouts=(0,))
    first = move_aside_all(out)
    fake_run(out, rollouts=(0,))
    second = move_aside_all(out)
    assert first != second and first.exists() and second.exists()


# (name, layout, resume step or None): crashes at several points of a run with checkpoints
# every 2 steps. The orchestrator writes checkpoint N at the top of its step N, before the
# trainer finishes its own (orchestrator.py vs trainer/rl/train.py).
CRASHES = [
    ("before the first checkpoint", {"broadcasts": (1,), "rollouts": (0, 1)}, None),
    (
        "mid-step after checkpoint 2",
        {"trainer": (2,), "orchestrator": (2,), "broadcasts": (2, 3), "rollouts": (0, 1, 2, 3)},
        2,
    ),
    (
        "inside the save window of checkpoint 4",
        {
            "trainer": (2,),
            "unfinished_trainer": (4,),
            "orchestrator": (2, 4),
            "broadcasts": (2, 3, 4),
            "rollouts": (0, 1, 2, 3, 4),
            "weights": (2,),
        },
        2,
    ),
    (
        "after checkpoint 4 finished",
        {
            "trainer": (4,),
            "orchestrator": (2, 4),
            "broadcasts": (2, 4, 5),
            "rollouts": (0, 1, 2, 3, 4, 5),
            "weights": (4,),
        },
        4,
    ),
    ("trainer checkpoint without its broadcast", {"trainer": (2,), "orchestrator": (2,)}, None),
]


@pytest.mark.parametrize(
    ("layout", "expected"), [c[1:] for c in CRASHES], ids=[c[0] for c in CRASHES]
)
def test_resume_step_is_the_newest_step_both_sides_hold(tmp_path: Path, layout, expected) -> None:
    out = fake_run(tmp_path / "out", **layout)
    if expected is None:
        with pytest.raises(RunStateError, match="no step that the trainer, the orchestrator"):
            run_state.resume_step(out)
    else:
        assert run_state.resume_step(out).step == expected


@pytest.mark.parametrize("crash", [c for c in CRASHES if c[2] is not None], ids=lambda c: c[0])
def test_resumed_logs_read_as_the_uninterrupted_run(tmp_path: Path, crash) -> None:
    """Crash, prepare the resume, let the resumed run append: the training log read in order
    (parts, then the current file) holds exactly the steps of an uninterrupted 6-step run."""
    _name, layout, step = crash
    out = fake_run(tmp_path / "out", **layout)
    crashed_at = max(layout["rollouts"])
    # The crashed run logged every step it started, the last one partly, then a torn line.
    write_log(
        out / "generations.jsonl",
        records(range(crashed_at), BATCH) + records(range(crashed_at, crashed_at + 1), 2),
        torn='{"example_id": 3, "st',
    )
    write_log(out / "logs" / "orchestrator.stdout", ["Step 0 | Time: 1.00s\n"])
    messages = prepare_resume(out, step, BATCH, None)
    assert any("logs/ -> logs.part1/" in m for m in messages)
    # Newer than the resume step: moved aside, never deleted; the resume step itself stays.
    assert run_state.steps(out, "orchestrator checkpoints")[-1] == step
    assert run_state.steps(out, "trainer checkpoints")[-1] == step
    assert max(run_state.steps(out, "broadcasts")) == step
    assert run_state.steps(out, "rollouts") == list(range(step))  # redone steps write them again
    assert any(p.name == "generations.redone.jsonl" for p in (out / "aside").rglob("*"))
    # The resumed run (prime-rl from `step`) appends the steps it redoes.
    write_log(out / "generations.jsonl", records(range(step, 6), BATCH))
    logs = [*run_state.kept_parts(out, "generations"), out / "generations.jsonl"]
    assert read_steps(*logs) == read_steps(
        write_log(tmp_path / "u.jsonl", records(range(6), BATCH))
    )


def test_second_resume_counts_the_earlier_parts(tmp_path: Path) -> None:
    out = fake_run(tmp_path / "out", trainer=(2,), orchestrator=(2,), broadcasts=(2,))
    write_log(out / "generations.jsonl", records(range(3), BATCH))
    prepare_resume(out, 2, BATCH, None)
    fake_run(out, trainer=(4,), orchestrator=(4,), broadcasts=(4, 5), rollouts=(2, 3, 4, 5))
    write_log(out / "generations.jsonl", records(range(2, 6), BATCH))
    assert run_state.resume_step(out).step == 4
    prepare_resume(out, 4, BATCH, None)
    parts = run_state.kept_parts(out, "generations")
    assert [p.name for p in parts] == ["generations.part1.jsonl", "generations.part2.jsonl"]
    assert read_steps(*parts) == [s for s in range(4) for _ in range(BATCH)]
    assert (out / "logs.part1").exists() is False  # no logs/ was there to rotate


def test_eval_log_keeps_the_rounds_before_the_resume_step(tmp_path: Path) -> None:
    out = fake_run(tmp_path / "out", trainer=(4,), orchestrator=(4,), broadcasts=(4,))
    # Rounds of 3 records: checkpoints 0, 2 and 4 (round 4 is evaluated again on resume).
    write_log(out / "eval_generations.jsonl", records(range(0, 6, 2), 3, split="eval"), torn="{")
    prepare_resume(out, 4, BATCH, eval_records_before=6)
    assert read_steps(out / "eval_generations.part1.jsonl") == [0, 0, 0, 2, 2, 2]
    redone = next((out / "aside").rglob("eval_generations.redone.jsonl"))
    assert read_steps(redone) == [4, 4, 4]
    assert not (out / "eval_generations.jsonl").exists()


def test_prune_keeps_what_a_resume_or_the_running_orchestrator_needs(tmp_path: Path) -> None:
    out = fake_run(
        tmp_path / "out",
        trainer=(4,),
        orchestrator=(2, 4),
        broadcasts=(2, 4, 5, 6),
        unfinished_trainer=(6,),
    )
    assert run_state.prune_broadcasts(out) == [2]
    assert run_state.steps(out, "broadcasts") == [4, 5, 6]
    # No common step yet (early in a run): nothing is pruned.
    fresh = fake_run(tmp_path / "fresh", broadcasts=(1, 2))
    assert run_state.prune_broadcasts(fresh) == []


def test_pruner_prunes_then_stops_when_its_launcher_is_killed(tmp_path: Path) -> None:
    """run_training.sh starts the pruner in the background; SIGKILL of the launcher (no trap
    runs) must not leave it running: it notices it was re-parented and exits."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out = fake_run(tmp_path / "out", trainer=(4,), orchestrator=(4,), broadcasts=(2, 4, 5))
    script = Path(__file__).resolve().parent.parent / "scripts" / "launch_checks.py"
    pid_file = tmp_path / "pruner.pid"
    launcher = subprocess.Popen(
        [
            "bash",
            "-c",
            f'"{sys.executable}" "{script}" prune-broadcasts "{out}" --parent $$ --every 0.1 &'
            f' echo $! > "{pid_file}"; wait',
        ],
    )
    deadline = time.monotonic() + 20
    while run_state.steps(out, "broadcasts") != [4, 5] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert run_state.steps(out, "broadcasts") == [4, 5]
    pruner = int(pid_file.read_text())
    os.kill(launcher.pid, signal.SIGKILL)
    launcher.wait()
    while time.monotonic() < deadline:
        try:
            os.kill(pruner, 0)
        except ProcessLookupError:
            break
        if Path(f"/proc/{pruner}/stat").read_text().split()[2] == "Z":
            break  # exited, waiting to be reaped by init
        time.sleep(0.1)
    else:
        os.kill(pruner, signal.SIGKILL)
        raise AssertionError("the pruner outlived its launcher")
