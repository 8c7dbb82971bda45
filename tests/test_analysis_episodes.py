"""Exact steps from prime-rl 559b447's episode files (``--episodes``), its step and eval lines,
the file layout, bad input. (The real episode format: tests/v1/test_episodes.py, verifiers v1.)"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from calibrated_qa.analysis.cli import main
from calibrated_qa.analysis.episodes import EpisodeFileError, episode_files, read_episode_rollouts
from calibrated_qa.analysis.steps import read_orchestrator_eval_rewards, read_orchestrator_rewards
from tests.fixtures.analysis.build import Rollout, project_record

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


def test_step_and_eval_lines_of_the_new_format(tmp_path: Path) -> None:
    log = tmp_path / "orchestrator.stdout"
    log.write_text(ORCHESTRATOR_LOG)
    assert read_orchestrator_rewards(log) == {0: 0.1234, 1: -0.05}  # not the eval line
    assert read_orchestrator_eval_rewards(log) == [0.2]


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


def test_the_analysis_takes_each_record_s_step_from_the_episode_files(tmp_path: Path) -> None:
    # 2 steps x 4 rollouts; workers interleave: the log's 4th record finished for step 1 and
    # its 5th for step 0, so index // 4 would put both in the wrong step.
    steps = [0, 0, 0, 1, 0, 1, 1, 1, 1]  # the last record: in flight after the last step
    rollouts = [
        Rollout(i, f"q{i}", i % 2 == 0, "YES" if s else "NO", pct=60 + i, split="train")
        for i, s in enumerate(steps)
    ]
    log = tmp_path / "generations.jsonl"
    log.write_text("".join(json.dumps(project_record(r)) + "\n" for r in rollouts))
    run = tmp_path / "run"
    for step in (0, 1):
        lines = [
            json.dumps(episode(r.example_id, r.completion)) + "\n"
            for r, s in zip(rollouts[:-1], steps, strict=False)
            if s == step
        ]
        write(run, step, "train", lines)
    out = tmp_path / "out"
    args = ["--generations", str(log), "--batch-size", "4", "--out", str(out), "--no-plots"]
    assert main([*args, "--quiet", "--episodes", str(run), "--bootstrap", "20"]) == 0
    table = (out / "metrics_by_step.csv").read_text().splitlines()
    rows = [dict(zip(table[0].split(","), line.split(","), strict=True)) for line in table[1:]]
    assert [(r["step"], r["n"], r["mean_p_yes"]) for r in rows] == [
        ("0", "4", "0.3825"),  # NO at 60, 61, 62, 64%: P(YES) 0.40, 0.39, 0.38, 0.36
        ("1", "4", "0.6525"),  # YES at 63, 65, 66, 67%
    ]
    summary = (out / "summary.md").read_text()
    assert "exact: each record's step from prime-rl's episode files" in summary
    assert "1 records match no episode" in summary
    # the inferred attribution mixes the two steps
    assert main([*args, "--quiet", "--max-steps", "2", "--bootstrap", "20"]) == 0
    assert (out / "metrics_by_step.csv").read_text().splitlines()[1].split(",")[:2] == ["0", "4"]
    assert "0.3825" not in (out / "metrics_by_step.csv").read_text()


def test_eval_rounds_from_episode_files_in_a_comparison(tmp_path: Path) -> None:
    # an eval round is the step it ran at; question 2's rollout failed at step 5
    rounds = {
        step: [Rollout(q, f"q{q}", True, "YES", pct=pct, split="eval") for q in questions]
        for step, pct, questions in ((0, 60, range(4)), (5, 90, (0, 1, 3)))
    }
    log = tmp_path / "eval_generations.jsonl"
    log.write_text(
        "".join(json.dumps(project_record(r)) + "\n" for rr in rounds.values() for r in rr)
    )
    for step, rr in rounds.items():
        write(
            tmp_path / "run",
            step,
            "eval",
            [json.dumps(episode(r.example_id, r.completion)) + "\n" for r in rr],
        )
    out = tmp_path / "out"
    argv = ["--quiet", "--split", "eval", "--episodes", str(tmp_path / "run"), "--compare"]
    argv += [f"base={log}@0", f"trained={log}@5", "--out", str(out), "--no-plots"]
    assert main([*argv, "--bootstrap", "20"]) == 0
    rows = {r["label"]: r for r in csv.DictReader((out / "comparison.csv").open())}
    assert (rows["base"]["n"], rows["trained"]["n"]) == ("4", "3")
    assert float(rows["trained"]["delta_mean_p_yes"]) == pytest.approx(0.3)
    assert rows["trained"]["delta_pairing"].startswith("paired over 3 common questions; dropped 1")
