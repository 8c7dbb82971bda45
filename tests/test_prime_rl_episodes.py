"""scripts/prime_rl_episodes.py without verifiers: the step line, the file layout, bad input.
(The real episode format is tested in tests/v1/test_episodes.py, under verifiers v1.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scripts.prime_rl_episodes import (
    EpisodeFileError,
    episode_files,
    read_episode_rollouts,
    read_step_rewards,
)

# As prime-rl 559b447 logs them (orchestrator.py: log_train_batch, finalize_eval_batch).
ORCHESTRATOR_LOG = """\
12:01:02 SUCCESS Step 0 |  41.2s | Reward 0.1234 | Trainable 1024/1024 (100.0%) | Turns 1.0 | \
Branches 1.0 | Max Off-Policy 0 | Error 0.0% | Cancelled 0.0% | Truncation 0.0%
12:01:40 INFO Evaluated boolq-validation (Step 1) | Policy v0 | 1m 3s | Reward 0.2000 | x
12:02:09 SUCCESS Step 1 |   1m 2s | Reward -0.0500 | Trainable 1000/1024 (97.7%) | Turns 1.0 | \
Branches 1.0 | Max Off-Policy 0 | Error 0.0% | Cancelled 0.0% | Truncation 1.2%
"""


def episode(idx: object, reply: str = "ANSWER: YES with 70% probability") -> dict:
    nodes = [
        {"message": {"role": "user", "content": "q"}, "sampled": False},
        {"message": {"role": "assistant", "content": reply}, "sampled": True},
    ]
    rewards = {
        "calibration_reward": {"score": 0.91, "weight": 1.0},
        "length_penalty": {"score": -0.5},
    }
    return {
        "task": {"data": {"idx": idx}},
        "traces": [{"nodes": nodes, "rewards": rewards, "ok": True}],
    }


def write(run: Path, step: int, split: str, lines: list[str], subset: str = "all") -> Path:
    path = run / "rollouts" / f"step_{step}" / split / subset / "traces.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(lines))
    return path


def test_step_lines_of_the_new_format() -> None:
    assert read_step_rewards(ORCHESTRATOR_LOG) == {0: 0.1234, 1: -0.05}  # not the eval line


def test_files_by_step_split_and_subset(tmp_path: Path) -> None:
    assert episode_files(tmp_path) == []  # no rollouts/ folder: nothing to read
    line = json.dumps(episode(3)) + "\n"
    write(tmp_path, 10, "train", [line])
    write(tmp_path, 2, "eval", [line])
    write(tmp_path, 2, "train", [line], subset="effective")
    (tmp_path / "rollouts" / "step_x").mkdir()
    assert [(s, k) for s, k, _ in episode_files(tmp_path)] == [(2, "eval"), (10, "train")]
    (rollout, _) = read_episode_rollouts(tmp_path)
    assert (rollout.step, rollout.split, rollout.example_id, rollout.ok) == (2, "eval", 3, True)
    assert rollout.completion == "ANSWER: YES with 70% probability"
    assert rollout.reward == pytest.approx(0.41)


def test_a_torn_last_line_is_skipped_any_other_bad_line_named(tmp_path: Path) -> None:
    good = json.dumps(episode(1)) + "\n"
    write(tmp_path, 0, "train", [good, good[:40]])  # a writer killed mid-line
    assert len(read_episode_rollouts(tmp_path)) == 1
    path = write(tmp_path, 0, "train", [good, good[:40] + "\n", good])
    with pytest.raises(EpisodeFileError, match=rf"{path}:2: not JSON"):
        read_episode_rollouts(tmp_path)
    path = write(tmp_path, 0, "train", [good, json.dumps(episode("7")) + "\n"])
    with pytest.raises(
        EpisodeFileError, match=rf"{path}:2: field 'task.data.idx' .* not of type int"
    ):
        read_episode_rollouts(tmp_path)
