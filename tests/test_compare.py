"""analyze_calibration.py --compare: the table is right on constructed logs with known metrics."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import brier_score_loss, roc_auc_score

from calibrated_qa.analysis.compare import parse_spec
from calibrated_qa.analysis.readers import AnalysisInputError
from tests.fixtures.analysis.build import Rollout, write_csv, write_original, write_project

REPO = Path(__file__).resolve().parent.parent

# (label, answer, pct): 6 questions x 2 rollouts
BASE = [
    (True, "YES", 60),
    (True, "NO", 70),
    (False, "YES", 90),
    (False, "NO", 80),
    (True, "YES", 95),
    (True, None, 0),
    (False, "NO", 65),
    (False, "YES", 55),
    (True, "NO", 85),
    (True, "YES", 75),
    (False, "NO", 99),
    (False, None, 0),
]
TRAINED = [(t, "YES" if t else "NO", 70 + 3 * i) for i, (t, _, _) in enumerate(BASE[:10])] + [
    (True, "NO", 60),
    (False, "YES", 52),
]


def rollouts(rows: list[tuple[bool, str | None, int]]) -> list[Rollout]:
    return [
        Rollout(i // 2, f"q{i // 2}", t, a, pct=p, words=30, split="eval")
        for i, (t, a, p) in enumerate(rows)
    ]


def expected(rows: list[tuple[bool, str | None, int]]) -> dict[str, float]:
    ok = [(t, a, p) for t, a, p in rows if a is not None]
    y = np.array([t for t, _, _ in ok])
    p_yes = np.array([p / 100 if a == "YES" else 1 - p / 100 for _, a, p in ok])
    correct = np.array([(p > 0.5) == t for t, p in zip(y, p_yes, strict=True)])
    conf = np.maximum(p_yes, 1 - p_yes)
    return {
        "n": len(rows),
        "parse_rate": len(ok) / len(rows),
        "accuracy": correct.sum() / len(rows),
        "brier": brier_score_loss(y, p_yes),
        "auroc": roc_auc_score(correct, conf),
    }


def compare_cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "analyze_calibration.py", "--quiet", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )


def comparison_table(out: Path) -> dict[str, dict[str, str]]:
    """comparison.csv as {label: row}."""
    rows = csv.DictReader((out / "comparison.csv").read_text().splitlines())
    return {row["label"]: row for row in rows}


def test_comparison_table_matches_known_metrics(tmp_path: Path) -> None:
    base = write_project(tmp_path / "base.jsonl", rollouts(BASE))
    trained = write_original(tmp_path / "trained.jsonl.gz", rollouts(TRAINED), gz=True)
    out = tmp_path / "cmp"
    done = compare_cli(
        "--compare", f"base={base}", f"trained={trained}", "--out", out, "--bootstrap", "200"
    )
    assert done.returncode == 0, done.stderr
    table = comparison_table(out)
    for label, rows in (("base", BASE), ("trained", TRAINED)):
        for name, value in expected(rows).items():
            assert float(table[label][name]) == pytest.approx(value, abs=1e-5), (label, name)
        for name in ("ece_pyes", "ece_conf", "auroc", "brier", "accuracy"):
            low, high = float(table[label][f"{name}_low"]), float(table[label][f"{name}_high"])
            assert low <= float(table[label][name]) <= high
        assert table[label]["bootstrap_unit"] == "questions"
    md = (out / "comparison.md").read_text()
    assert "| base | 12 |" in md and "| trained | 12 |" in md and "[" in md
    assert (out / "comparison_reliability.png").stat().st_size > 0


def test_compare_step_of_an_online_eval_log_and_csv(tmp_path: Path) -> None:
    log = write_project(tmp_path / "eval.jsonl", rollouts(BASE) + rollouts(TRAINED))
    csv_log = write_csv(tmp_path / "c.csv", rollouts(BASE), batch_size=12)
    out = tmp_path / "cmp"
    done = compare_cli(
        "--compare",
        f"base={log}@0",
        f"trained={log}@10",
        f"csv={csv_log}",
        "--eval-size",
        "12",
        "--eval-interval",
        "10",
        "--out",
        out,
        "--no-plots",
        "--bootstrap",
        "50",
    )
    assert done.returncode == 0, done.stderr
    table = comparison_table(out)
    assert float(table["trained"]["auroc"]) == pytest.approx(expected(TRAINED)["auroc"])
    assert float(table["base"]["accuracy"]) == pytest.approx(float(table["csv"]["accuracy"]))
    assert table["csv"]["bootstrap_unit"].startswith("rollouts")


def test_bad_compare_specs() -> None:
    assert parse_spec("a=x/y.jsonl@10").step == 10
    assert parse_spec("a=x/y.jsonl").step is None
    assert parse_spec("a=x/y.jsonl@final").select == "final"
    assert parse_spec("a=x@y.jsonl@all") == parse_spec("a=x@y.jsonl@all")
    assert parse_spec("a=x@y.jsonl@all").path == "x@y.jsonl"
    with pytest.raises(AnalysisInputError, match="LABEL=PATH"):
        parse_spec("just-a-path")
    with pytest.raises(AnalysisInputError, match="step number"):
        parse_spec("a=x@last")


def three_rounds(tmp_path: Path) -> Path:
    """An online eval log: 3 rounds of the same 4 questions, one rollout each."""
    rows = [
        Rollout(q, f"q{q}", q % 2 == 0, "YES", pct=60 + 10 * r, split="eval")
        for r in range(3)
        for q in range(4)
    ]
    return write_project(tmp_path / "eval.jsonl", rows)


def test_several_rounds_without_a_selector_are_an_error(tmp_path: Path) -> None:
    log = three_rounds(tmp_path)
    out = tmp_path / "cmp"
    done = compare_cli("--compare", f"a={log}", "--out", out, "--no-plots")
    assert done.returncode == 2 and "looks like 3 eval rounds" in done.stderr
    shape = ["--eval-size", "4", "--eval-interval", "10"]
    done = compare_cli("--compare", f"a={log}", *shape, "--out", out, "--no-plots")
    assert done.returncode == 2, done.stderr
    assert "holds 3 eval rounds (@0 (base model (checkpoint 0)), @10 (checkpoint 10)" in (
        done.stderr
    )
    assert "@final" in done.stderr and "@all" in done.stderr
    done = compare_cli("--compare", f"a={log}@final", *shape, "--out", out, "--no-plots")
    assert done.returncode == 2 and "needs max_steps" in done.stderr
    done = compare_cli(
        "--compare", f"base={log}@0", f"trained={log}@final", f"all={log}@all", *shape,
        "--max-steps", "12", "--out", out, "--no-plots", "--bootstrap", "50",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    table = comparison_table(out)
    assert table["trained"]["path"].endswith("@final") and table["trained"]["n"] == "4"
    assert float(table["trained"]["mean_p_yes"]) == pytest.approx(0.8)  # the third round
    assert table["all"]["n"] == "12"
    assert "final (checkpoint 11)" in (out / "comparison.md").read_text()


def test_paired_delta_on_a_hand_constructed_case(tmp_path: Path) -> None:
    # 10 questions, one rollout each. The base model is wrong on question 0 only, the trained
    # model right everywhere: delta accuracy = +0.1, and in every paired draw it is
    # (multiplicity of question 0) / 10 >= 0, so the paired interval's low end is exactly 0.
    base = [Rollout(q, f"q{q}", True, "NO" if q == 0 else "YES", split="eval") for q in range(10)]
    trained = [Rollout(q, f"q{q}", True, "YES", split="eval") for q in reversed(range(10))]
    paths = [
        write_project(tmp_path / "b.jsonl", base),
        write_project(tmp_path / "t.jsonl", trained),
    ]
    csv_log = write_csv(tmp_path / "c.csv", trained, batch_size=10)
    out = tmp_path / "cmp"
    done = compare_cli(
        "--compare", f"base={paths[0]}", f"trained={paths[1]}", f"csv={csv_log}",
        "--out", out, "--no-plots", "--bootstrap", "1000",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    table = comparison_table(out)
    row = table["trained"]
    assert float(row["delta_accuracy"]) == pytest.approx(0.1)
    assert float(row["delta_accuracy_low"]) == 0.0
    assert 0.1 <= float(row["delta_accuracy_high"]) <= 0.4
    assert row["delta_vs"] == "base" and "paired over 10 common questions" in row["delta_pairing"]
    # the unpaired intervals overlap heavily: only pairing shows the difference is not noise
    assert float(table["base"]["accuracy_high"]) >= float(row["accuracy_low"])
    assert table["base"]["delta_accuracy"] == ""
    assert (
        table["csv"]["delta_accuracy"] == ""
        and "no paired interval" in table["csv"]["delta_pairing"]
    )
    md = (out / "comparison.md").read_text()
    assert "## Difference from `base`" in md and "+0.100 [+0.000," in md


def test_run_training_syntax_with_the_reference_config(tmp_path: Path) -> None:
    # configs/calibrated_qa_gemma2_2b.toml: max_steps 50, eval every 10 with the base model,
    # num_examples = -1 and 1 rollout: rounds of (questions x 1) records, checkpoints
    # 0, 10, 20, 30, 40 and the final round on checkpoint 49.
    rows = [
        Rollout(q, f"q{q}", q % 2 == 0, "YES", pct=51 + 8 * r, split="eval")
        for r in range(6)
        for q in range(5)
    ]
    log = write_project(tmp_path / "eval_generations.jsonl", rows)
    out = tmp_path / "cmp"
    done = compare_cli(
        "--split", "eval", "--config", REPO / "configs" / "calibrated_qa_gemma2_2b.toml",
        "--compare", f"base={log}@0", f"trained={log}@final", "--out", out, "--no-plots",
        "--bootstrap", "50",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    table = comparison_table(out)
    assert float(table["base"]["mean_p_yes"]) == pytest.approx(0.51)
    assert float(table["trained"]["mean_p_yes"]) == pytest.approx(0.91)
    assert "final (checkpoint 49)" in (out / "comparison.md").read_text()


def test_a_short_final_round_pairs_the_common_questions(tmp_path: Path) -> None:
    # The reference config's cadence (rounds at checkpoints 0..40 and final 49); question 3's
    # rollout failed in the final round (prime-rl evaluates with max_retries=0).
    rows = [
        Rollout(q, f"q{q}", q % 2 == 0, "YES", pct=51 + 8 * r, split="eval")
        for r in range(6)
        for q in range(5)
        if (r, q) != (5, 3)
    ]
    log = write_project(tmp_path / "eval_generations.jsonl", rows)
    out = tmp_path / "cmp"
    args = [
        "--split", "eval", "--config", REPO / "configs" / "calibrated_qa_gemma2_2b.toml",
        "--compare", f"base={log}@0", f"trained={log}@final", "--out", out, "--no-plots",
        "--bootstrap", "50",
    ]  # fmt: skip
    done = compare_cli(*args)
    assert done.returncode == 0, done.stderr
    assert "final (checkpoint 49) is short: 4 of 5 records" in done.stderr
    table = comparison_table(out)
    assert table["base"]["n"] == "5" and table["trained"]["n"] == "4"
    assert table["trained"]["delta_pairing"] == (
        "paired over 4 common questions; dropped 1 only in base, 0 only in trained"
    )
    assert float(table["trained"]["delta_mean_p_yes"]) == pytest.approx(0.4)
    assert (
        "**warning**: eval round final (checkpoint 49) is short"
        in (out / "comparison.md").read_text()
    )
    done = compare_cli(*args, "--strict-eval")
    assert done.returncode == 2 and "short: 4 of 5 records" in done.stderr
