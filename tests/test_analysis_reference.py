"""The reference run's facts (shared reference-run README) are reproduced from its own rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from calibrated_qa.analysis.metrics import step_rows
from calibrated_qa.analysis.readers import read_rollouts
from calibrated_qa.analysis.steps import read_orchestrator_rewards

INPUT = Path(__file__).resolve().parent.parent / "data" / "reference-run"
# step: (accuracy over all rollouts, ECE on P(YES) and Brier over parseable rollouts)
FACTS = {
    0: (0.801, 0.139, 0.169),
    5: (0.776, 0.092, 0.176),
    10: (0.761, 0.077, 0.175),
    11: (0.756, 0.040, 0.160),
    20: (0.829, 0.070, 0.141),
    30: (0.869, 0.093, 0.124),
    40: (0.864, 0.036, 0.118),
    49: (0.901, 0.040, 0.089),
}


@pytest.fixture(scope="module")
def reference():
    paths = [INPUT / f"metrics_step{s}.csv" for s in FACTS]
    rollouts, report = read_rollouts(paths, progress=False)
    return rollouts, report, {int(r["step"]): r for r in step_rows(rollouts)}


def test_per_step_facts(reference) -> None:
    _, _, rows = reference
    for step, (accuracy, ece, brier) in FACTS.items():
        assert round(rows[step]["accuracy"], 3) == accuracy, step
        assert round(rows[step]["ece_pyes"], 3) == ece, step
        assert round(rows[step]["brier"], 3) == brier, step


def test_unparseable_rows_and_length_penalty(reference) -> None:
    rollouts, report, rows = reference
    unparseable = {s: int(np.sum(~rollouts.parseable & (rollouts.step == s))) for s in FACTS}
    assert (unparseable[0], unparseable[11], unparseable[49]) == (8, 54, 0)
    assert report.conversion.certain_unparseable == sum(unparseable.values())
    assert round(rows[0]["penalized_frac"], 3) == 0.997
    assert round(rows[49]["penalized_frac"], 3) == 0.008
    assert round(rows[0]["reward"], 4) == 0.3688 and round(rows[49]["reward"], 4) == 0.9102


def test_orchestrator_gap(reference) -> None:
    _, _, rows = reference
    logged = read_orchestrator_rewards(INPUT / "orchestrator_steps.tsv")
    assert (logged[0], logged[11], logged[49]) == (0.3787, 0.3598, 0.9110)
    assert round(rows[11]["reward"], 4) == 0.3655
