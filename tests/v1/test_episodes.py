"""calibrated_qa/analysis/episodes.py on episode files in the real format: verifiers' own
``Episode.to_record()``, laid out as prime-rl 559b447's ``FileMonitor.log_episodes`` writes them,
next to the generation log that ``GenerationLogEnv.finalize`` wrote for the same episodes."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import verifiers.v1 as vf

from calibrated_qa.analysis.episodes import read_episode_rollouts, steps_of_records
from calibrated_qa.records import LOG_FILE_NAMES, validate_record
from tests.v1.test_taskset import BOOLQ, log_env, trace_of

REPLIES = [
    "Short.\nANSWER: YES with 60% probability",
    "It says no such thing.\nANSWER: NO with 75% probability",
    "No idea.",
]


def write_episodes(run_dir: Path, step: int, split: str, episodes: list[vf.Episode]) -> None:
    """As ``FileMonitor.log_episodes`` (orjson there, the same JSON text), ``all`` subset."""
    path = run_dir / "rollouts" / f"step_{step}" / split / "all" / "traces.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        for episode in episodes:
            f.write(json.dumps(episode.to_record(), default=str) + "\n")


def test_every_logged_record_gets_the_step_its_episode_was_written_at(tmp_path: Path) -> None:
    log_dir, run_dir = tmp_path / "log", tmp_path / "run"
    env = log_env(
        dataset_name=BOOLQ,
        dataset_split="validation",
        log_split="train",
        task={"log_dir": str(log_dir)},
    )
    tasks = list(env.taskset)[:4]
    expected_steps = []
    # Steps 0 and 1, two questions each, three rollouts per question. The same text recurs within
    # a group, and question 0 gets REPLIES[0] at both steps: that key is ambiguous (3 records),
    # and assigning it in order still gives each record its step.
    plan = {
        0: [(tasks[0], [REPLIES[0], REPLIES[1], REPLIES[0]]), (tasks[1], REPLIES)],
        1: [(tasks[0], [REPLIES[2], REPLIES[0], REPLIES[2]]), (tasks[2], REPLIES)],
    }
    for step, groups in plan.items():
        episodes = []
        for task, replies in groups:
            for reply in replies:
                trace = trace_of(task, reply)
                asyncio.run(task.score(trace))
                trace.ok = True
                episode = vf.Episode(task=trace.task, traces=[trace], ok=True)
                asyncio.run(env.finalize(task, episode))
                episodes.append(episode)
                expected_steps.append(step)
        failed = trace_of(tasks[3], REPLIES[0])  # not scored: neither logged nor a candidate
        episodes.append(vf.Episode(task=failed.task, traces=[failed]))
        write_episodes(run_dir, step, "train", episodes)

    log = log_dir / LOG_FILE_NAMES["train"]
    records = [validate_record(json.loads(line), str(log)) for line in log.read_text().splitlines()]
    rollouts = read_episode_rollouts(run_dir)
    assert len(rollouts) == len(records) + 2
    assert [r.reward for r in rollouts if r.ok] == [r["reward"] for r in records]
    match = steps_of_records(records, rollouts)
    assert match.steps == expected_steps
    assert (match.unmatched, match.ambiguous) == (0, 3)
