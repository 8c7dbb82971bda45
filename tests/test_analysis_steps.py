"""Step attribution, eval rounds, the orchestrator cross-check, configs, ensemble, bootstrap."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from calibrated_qa.analysis.bootstrap import with_intervals
from calibrated_qa.analysis.metrics import ensemble, step_rows
from calibrated_qa.analysis.readers import AnalysisInputError, read_rollouts
from calibrated_qa.analysis.steps import (
    RunShape,
    attribute,
    attribute_eval_rounds,
    attribute_steps,
    group_purity,
    read_orchestrator_eval_rewards,
    read_orchestrator_rewards,
    read_run_shape,
)
from calibrated_qa.run_config import EvalSchedule
from tests.conftest import pinned_prime_rl_source
from tests.fixtures.analysis.build import Rollout, project_record, run, write_project

REPO = Path(__file__).resolve().parent.parent


def _read(tmp_path: Path, rollouts: list[Rollout]):
    return read_rollouts([write_project(tmp_path / "p.jsonl", rollouts)], progress=False)[0]


def test_steps_are_index_floor_batch_size(tmp_path: Path) -> None:
    r = _read(tmp_path, run(n_steps=3))
    attribution = attribute_steps(r, 16)
    assert list(r.step) == [i // 16 for i in range(48)]
    assert "index // 16" in attribution.method


def test_count_not_multiple_of_batch_size_is_an_error_unless_allowed(tmp_path: Path) -> None:
    r = _read(tmp_path, run(n_steps=3)[:40])
    with pytest.raises(AnalysisInputError, match=r"40 records is not a multiple of batch_size=16"):
        attribute_steps(r, 16)
    attribution = attribute_steps(r, 16, allow_partial=True)
    assert attribution.partial_step == 2 and attribution.partial_count == 8


def test_unknown_batch_size_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(AnalysisInputError, match="--config or --batch-size"):
        attribute_steps(_read(tmp_path, run(n_steps=1)), None)


def _prime_rl_compute_eval_ckpt_step(
    ckpt_step: int, prev_ckpt_step: int, last_eval_step: int, interval: int, eval_base_model: bool
) -> int | None:
    """Copied from prime-rl 6cae5cc, src/prime_rl/orchestrator/eval_utils.py."""
    if ckpt_step <= prev_ckpt_step:
        return None
    highest_interval_step = (ckpt_step // interval) * interval
    if highest_interval_step > prev_ckpt_step and highest_interval_step > last_eval_step:
        if highest_interval_step == 0:
            if ckpt_step == 0 and eval_base_model:
                return 0
        else:
            return highest_interval_step
    return None


def prime_rl_eval_rounds(max_steps: int, interval: int, base_model: bool) -> list[int]:
    """The checkpoints evaluated, in log order, by prime-rl 6cae5cc's orchestrator loop.

    ``orchestrator.py``: at the top of each iteration ``ckpt_step = scheduler.ckpt_step``; with
    ``max_async_level = 0`` the scheduler has loaded checkpoint ``step - 1`` (0 at step 0) while
    generating the previous batch. The loop breaks when ``step >= max_steps`` *before* its eval
    block; then the final eval runs on the last ``ckpt_step``.
    """
    rounds = []
    prev_ckpt_step = last_eval_step = -1
    step = 0
    while True:
        ckpt_step = max(step - 1, 0)
        if step >= max_steps:
            break
        if (
            _prime_rl_compute_eval_ckpt_step(
                ckpt_step, prev_ckpt_step, last_eval_step, interval, base_model
            )
            is not None
        ):
            last_eval_step = ckpt_step
            rounds.append(ckpt_step)
        prev_ckpt_step = ckpt_step
        step += 1
    rounds.append(ckpt_step)  # "Running final evals"
    return rounds


def test_simulation_copy_matches_the_pinned_prime_rl() -> None:
    text = pinned_prime_rl_source("src/prime_rl/orchestrator/eval_utils.py")
    body = text[text.index("    if ckpt_step <= prev_ckpt_step:") : text.index("    return None\n")]
    import inspect

    assert body in inspect.getsource(_prime_rl_compute_eval_ckpt_step)


@pytest.mark.parametrize(
    ("max_steps", "interval", "base_model"),
    [(50, 10, True), (50, 10, False), (7, 3, True), (12, 5, True), (4, 1, True)],
)
def test_eval_rounds_follow_prime_rl_cadence(
    tmp_path: Path, max_steps: int, interval: int, base_model: bool
) -> None:
    expected = prime_rl_eval_rounds(max_steps, interval, base_model)
    size = 4
    rollouts = [
        Rollout(q, f"q{q}", q % 2 == 0, "YES", split="eval")
        for _ in range(len(expected))
        for q in range(size)
    ]
    r = read_rollouts(
        [write_project(tmp_path / "e.jsonl", rollouts)], split="eval", progress=False
    )[0]
    shape = RunShape(
        eval_size=size, eval_interval=interval, eval_base_model=base_model, max_steps=max_steps
    )
    attribution = attribute_eval_rounds(r, shape)
    assert r.step.tolist() == [c for c in expected for _ in range(size)]
    assert attribution.final_step == expected[-1] == max_steps - 1
    assert "final" in attribution.round_names[max_steps - 1]
    # the final round never shares a label with an online round
    assert len(set(expected)) == len(expected)


@pytest.mark.parametrize(("interval", "base_model"), [(10, True), (10, False), (3, True)])
def test_eval_rounds_before_a_resume_follow_prime_rl_cadence(
    interval: int, base_model: bool
) -> None:
    """Rounds prepare-resume keeps: prime-rl's online rounds of checkpoints < the resume step."""
    online = prime_rl_eval_rounds(60, interval, base_model)[:-1]
    schedule = EvalSchedule(interval, base_model, -1, 1, None, 1.0, ())
    for step in range(0, 50):
        expected = sum(1 for c in online if c < step)
        assert schedule.rounds_before(step) == expected, step


def test_eval_rounds_without_max_steps_or_final(tmp_path: Path) -> None:
    r = _read(tmp_path, run(n_steps=3))  # 3 rounds of 16
    attribute_eval_rounds(r, RunShape(eval_size=16, eval_interval=10))
    assert sorted(set(r.step.tolist())) == [0, 10, 20]
    attribute_eval_rounds(r, RunShape(eval_size=16, eval_interval=10, eval_base_model=False))
    assert sorted(set(r.step.tolist())) == [10, 20, 30]
    # a run stopped before the end: online rounds only, no final
    attribution = attribute_eval_rounds(r, RunShape(eval_size=16, eval_interval=10, max_steps=50))
    assert sorted(set(r.step.tolist())) == [0, 10, 20] and attribution.final_step is None
    # 3 rounds cannot come from a 5-step run with interval 10 (base + final only)
    with pytest.raises(AnalysisInputError, match="evaluates only 2"):
        attribute_eval_rounds(r, RunShape(eval_size=16, eval_interval=10, max_steps=5))
    with pytest.raises(AnalysisInputError, match="eval round size 20"):
        attribute_eval_rounds(r, RunShape(eval_size=20, eval_interval=10))


def test_surplus_past_max_steps_is_cut_and_counted(tmp_path: Path) -> None:
    r = _read(tmp_path, run(n_steps=3)[:40])  # 2 steps of 16 + 8 in-flight records
    kept, attribution = attribute(r, split="train", shape=RunShape(batch_size=16, max_steps=2))
    assert len(kept) == 32 and sorted(set(kept.step.tolist())) == [0, 1]
    assert attribution.surplus == 8 and "8 training records" in (attribution.surplus_note or "")
    with pytest.raises(AnalysisInputError, match="not a multiple"):
        attribute(r, split="train", shape=RunShape(batch_size=16))
    # more than a batch of surplus is suspicious and says so
    _, attribution = attribute(r, split="train", shape=RunShape(batch_size=16, max_steps=1))
    assert attribution.surplus == 24 and "more than one batch" in (attribution.surplus_note or "")


def test_eval_cross_check_reads_evaluated_lines(tmp_path: Path) -> None:
    log = tmp_path / "orchestrator.stdout"
    log.write_text(
        "\x1b[32m10:00:00 SUCCESS\x1b[0m Evaluated calibrated-qa in 41.20s (Avg@1=0.1234, "
        "No-response: 0.0%, Completion Length: 300.00 (±1.00, ∈[1.00, 9.00]), Truncated: 0.0%)\n"
        "10:00:01 SUCCESS Step 0 | Time: 8.98s | Reward: 0.3787 | Seq. Length: 1 tokens/sample\n"
        "10:09:00 SUCCESS Evaluated calibrated-qa in 40.00s (Avg@1=0.5, Pass@1: 0.5000, "
        "No-response: 0.0%)\n"
    )
    assert read_orchestrator_eval_rewards(log) == [0.1234, 0.5]
    (tmp_path / "none.log").write_text("SUCCESS Step 0 | Time: 1s | Reward: 0.1 |\n")
    with pytest.raises(AnalysisInputError, match="not against training-step rewards"):
        read_orchestrator_eval_rewards(tmp_path / "none.log")


def test_eval_round_size_from_distinct_questions(tmp_path: Path) -> None:
    # num_examples = -1: the same 4 questions x 4 rollouts evaluated in each of 2 rounds
    rollouts = [
        Rollout(q, f"q{q}", q % 2 == 0, "YES", split="eval")
        for _ in range(2)
        for q in range(4)
        for _ in range(4)
    ]
    r = read_rollouts(
        [write_project(tmp_path / "e.jsonl", rollouts)], split="eval", progress=False
    )[0]
    attribute_eval_rounds(r, RunShape(eval_interval=10, eval_rollouts_per_example=4))
    assert sorted(set(r.step.tolist())) == [0, 10]


def test_orchestrator_stdout_and_tsv(tmp_path: Path) -> None:
    stdout = tmp_path / "orchestrator.stdout"
    stdout.write_text(
        "19:07:16    INFO Starting orchestrator step 0\n"
        "\x1b[32m19:07:16 SUCCESS\x1b[0m Step 0 | Time: 8.98s | Reward: 0.3787 | Seq. Length: "
        "473.6 tokens/sample | Async Level: 0 | Max. Off-Policy Level: 0\n"
        "19:09:11 SUCCESS Step 1 | Time: 114.00s | Reward: 0.3305 | Val. Reward: 0.9000 | Seq. "
        "Length: 470.2 tokens/sample | Async Level: 0 | Max. Off-Policy Level: 1\n"
    )
    assert read_orchestrator_rewards(stdout) == {0: 0.3787, 1: 0.3305}
    tsv = REPO / "data" / "reference-run" / "orchestrator_steps.tsv"
    rewards = read_orchestrator_rewards(tsv)
    assert len(rewards) == 50 and rewards[0] == 0.3787 and rewards[49] == 0.9110
    empty = tmp_path / "empty.log"
    empty.write_text("nothing here\n")
    with pytest.raises(AnalysisInputError, match="no per-step rewards"):
        read_orchestrator_rewards(empty)


def test_config_nested_and_top_level(tmp_path: Path) -> None:
    shape = read_run_shape(REPO / "configs" / "calibrated_qa_gemma2_2b.toml")
    assert (shape.batch_size, shape.rollouts_per_example) == (1024, 8)
    assert shape.eval_interval == 10 and shape.eval_rollouts_per_example == 1
    assert shape.eval_size is None  # num_examples = -1: derived from the log
    assert shape.max_steps == 50
    flat = tmp_path / "orch.toml"
    flat.write_text(
        "batch_size = 64\nrollouts_per_example = 8\n[sampling]\nmax_tokens = 256\n"
        "[eval]\ninterval = 5\nnum_examples = 10\nrollouts_per_example = 2\n"
    )
    shape = read_run_shape(flat)
    assert (shape.batch_size, shape.eval_size, shape.eval_interval) == (64, 20, 5)
    bad = tmp_path / "bad.toml"
    bad.write_text("[orchestrator]\nbatch_size = 0\n")
    with pytest.raises(AnalysisInputError, match="batch_size must be a positive integer"):
        read_run_shape(bad)


def test_run_shape_applies_prime_rl_eval_defaults(tmp_path: Path) -> None:
    def shape_of(text: str) -> RunShape:
        (tmp_path / "c.toml").write_text(text)
        return read_run_shape(tmp_path / "c.toml")

    shape = shape_of('[[orchestrator.eval.env]]\nid = "x"\n')
    assert (shape.eval_interval, shape.eval_base_model) == (100, True)
    assert (shape.eval_size, shape.eval_rollouts_per_example) == (None, 1)
    shape = shape_of(
        '[orchestrator.eval]\nnum_examples = 9\n[[orchestrator.eval.env]]\nid = "x"\n'
        "num_examples = 5\nrollouts_per_example = 2\n"
    )
    assert shape.eval_size == 10  # a single eval env's values override the table's
    assert shape_of("[orchestrator]\n").eval_interval is None
    with pytest.raises(
        AnalysisInputError, match=r"c.toml: \[orchestrator.eval\] interval must be a positive"
    ):
        shape_of("[orchestrator.eval]\ninterval = 0\n")


def test_self_ensemble_groups_by_question_not_adjacent_lines(tmp_path: Path) -> None:
    rollouts = run(n_steps=1, questions=4, rollouts=4, interleave=True, unparseable_every=10**6)
    r = _read(tmp_path, rollouts)
    attribute_steps(r, 16)
    p, _, _, empty = ensemble(r)
    expected = {}
    for ro, p_yes in zip(rollouts, r.p_yes, strict=True):
        expected.setdefault(ro.example_id, []).append(p_yes)
    assert empty == 0
    np.testing.assert_allclose(sorted(p), sorted(np.mean(v) for v in expected.values()))
    adjacent = [np.mean(r.p_yes[i : i + 4]) for i in range(0, 16, 4)]  # the original's grouping
    assert sorted(adjacent) != pytest.approx(sorted(p))


def test_group_purity_sees_rollouts_crossing_a_step_boundary(tmp_path: Path) -> None:
    rollouts = run(n_steps=2, interleave=False, unparseable_every=10**6)
    rollouts[15], rollouts[16] = rollouts[16], rollouts[15]  # one swap across the boundary
    r = _read(tmp_path, rollouts)
    attribute_steps(r, 16)
    assert group_purity(r, 4) == (4, 10)
    assert group_purity(r, None) is None


def test_bootstrap_resamples_questions_and_is_wider_than_rollouts(tmp_path: Path) -> None:
    # 20 questions x 8 identical rollouts: rollouts are perfectly correlated within a question
    rollouts = [
        Rollout(q, f"q{q}", True, "YES" if q % 3 else "NO", pct=80, words=30)
        for q in range(20)
        for _ in range(8)
    ]
    r = _read(tmp_path, rollouts)
    attribute_steps(r, 160)
    by_question, unit = with_intervals(r, resamples=300)
    assert unit == "questions"
    r.question[:] = -1  # forget identity: falls back to rollouts
    by_rollout, unit = with_intervals(r, resamples=300)
    assert unit.startswith("rollouts")
    acc_q, acc_r = by_question["accuracy"], by_rollout["accuracy"]
    assert acc_q.value == acc_r.value == pytest.approx(13 / 20)
    assert acc_q.low <= acc_q.value <= acc_q.high
    assert (acc_q.high - acc_q.low) > 2 * (acc_r.high - acc_r.low)


def test_step_rows_hold_every_step(tmp_path: Path) -> None:
    r = _read(tmp_path, run(n_steps=3))
    attribute_steps(r, 16)
    rows = step_rows(r)
    assert [row["step"] for row in rows] == [0, 1, 2]
    assert all(row["n"] == 16 and row["n_questions"] == 4 for row in rows)


def _eval_log(tmp_path: Path, rounds: list[list[int]], gap: float = 600.0) -> Path:
    """An eval log of rounds of question ids in log order; each round ``gap`` seconds apart."""
    path = tmp_path / "eval_generations.jsonl"
    with open(path, "w") as f:
        for k, questions in enumerate(rounds):
            for i, q in enumerate(questions):
                record = project_record(Rollout(q, f"q{q}", q % 2 == 0, "YES", split="eval"))
                record["time"] = 1.7e9 + k * gap + i
                f.write(json.dumps(record) + "\n")
    return path


def _rounds(
    path: Path, max_steps: int | None = None, strict: bool = False
) -> tuple[list[int], object]:
    shape = RunShape(eval_interval=10, eval_rollouts_per_example=1, max_steps=max_steps)
    r = read_rollouts([path], split="eval", progress=False)[0]
    attribution = attribute_eval_rounds(r, shape, strict=strict)
    steps, counts = np.unique(r.step, return_counts=True)
    return [int(c) for c in counts[np.argsort(steps)]], attribution


def test_a_short_eval_round_is_reported_not_an_error(tmp_path: Path) -> None:
    # prime-rl evaluates with max_retries=0: question 2 failed in the second round
    log = _eval_log(tmp_path, [[0, 1, 2, 3], [1, 0, 3], [3, 2, 1, 0]])
    sizes, attribution = _rounds(log, max_steps=12)
    assert sizes == [4, 3, 4]
    assert attribution.warnings == [  # type: ignore[attr-defined]
        "eval round checkpoint 10 is short: 3 of 4 records (failed eval rollouts are not "
        "retried: prime-rl runs eval with max_retries=0)"
    ]
    assert "checkpoint 10 n=3" in attribution.method  # type: ignore[attr-defined]
    with pytest.raises(AnalysisInputError, match="short: 3 of 4.*--strict-eval"):
        _rounds(log, strict=True)


def test_a_missing_question_first_in_the_next_round_stays_in_its_round(tmp_path: Path) -> None:
    # question 2 failed in round 0 and comes first in round 1: identity alone would put it in
    # round 0; the time gap between rounds (training ran in between) puts it back in round 1.
    log = _eval_log(tmp_path, [[0, 1, 3], [2, 0, 1, 3], [0, 1, 2, 3]])
    assert _rounds(log)[0] == [3, 4, 4]
    # without times (a converted log), or with no gap to go by, the boundary stays where
    # identity puts it
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    for time in (0, 1.7e9):
        log.write_text("".join(json.dumps(r | {"time": time}) + "\n" for r in lines))
        assert _rounds(log)[0] == [4, 3, 4]


def test_an_eval_round_larger_than_expected_is_an_error(tmp_path: Path) -> None:
    log = _eval_log(tmp_path, [[0, 1, 2, 3, 4], [0, 1, 2, 3, 4]])
    r = read_rollouts([log], split="eval", progress=False)[0]
    with pytest.raises(AnalysisInputError, match="holds 5 records, more than the 4 expected"):
        attribute_eval_rounds(
            r, RunShape(eval_size=4, eval_interval=10, eval_rollouts_per_example=1)
        )
