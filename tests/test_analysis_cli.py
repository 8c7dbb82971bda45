"""analyze_calibration.py end to end, as a subprocess: every output file, the cross-check."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.analysis.build import run, write_csv, write_project

REPO = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "analysis"
OUTPUTS = {
    "metrics_by_step.csv",
    "calibration_metrics.csv",
    "summary.md",
    "calibration_curves.png",
    "calibration_curves_ensemble.png",
    "brier_over_time.png",
    "pyes_histograms.png",
}


def analyze_cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(REPO / "analyze_calibration.py"), "--quiet", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )


@pytest.fixture(scope="module")
def full_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("cli")
    log = write_project(tmp / "generations.jsonl.gz", run(n_steps=3), gz=True)
    config = tmp / "rl.toml"
    config.write_text(
        "[orchestrator]\nbatch_size = 16\nrollouts_per_example = 4\n"
        "[orchestrator.sampling]\nmax_tokens = 512\n"
    )
    orchestrator = tmp / "orchestrator.stdout"
    orchestrator.write_text(
        "".join(
            f"12:00:00 SUCCESS Step {s} | Time: 1.00s | Reward: 0.3000 | Seq. Length: 1.0 "
            "tokens/sample | Async Level: 0 | Max. Off-Policy Level: 0\n"
            for s in range(3)
        )
    )
    out = tmp / "out"
    done = analyze_cli(
        "--generations",
        log,
        "--config",
        config,
        "--orchestrator-log",
        orchestrator,
        "--out",
        out,
        "--bootstrap",
        "50",
        "--readme-section",
        tmp / "RESULTS.md",
    )
    assert done.returncode == 0, done.stderr
    return out


def test_every_output_is_written(full_run: Path) -> None:
    assert {p.name for p in full_run.iterdir()} == OUTPUTS
    assert all((full_run / name).stat().st_size > 0 for name in OUTPUTS)
    assert (full_run.parent / "RESULTS.md").read_text().startswith("## Results")


def test_metrics_by_step_columns_and_cross_check(full_run: Path) -> None:
    rows = list(csv.DictReader((full_run / "metrics_by_step.csv").read_text().splitlines()))
    assert [r["step"] for r in rows] == ["0", "1", "2"]
    for column in (
        "n",
        "parse_rate",
        "accuracy",
        "ece_pyes",
        "ece_conf",
        "brier",
        "reward",
        "calibration_reward",
        "length_penalty",
        "mean_length",
        "penalized_frac",
        "mean_p_yes",
        "orchestrator_reward",
        "reward_gap",
    ):
        assert column in rows[0], column
    for r in rows:
        assert float(r["reward_gap"]) == pytest.approx(float(r["reward"]) - 0.3, abs=1e-5)


def test_per_rollout_csv_has_true_parseable_and_reads_back(full_run: Path) -> None:
    rows = list(csv.DictReader((full_run / "calibration_metrics.csv").read_text().splitlines()))
    assert len(rows) == 48
    unparseable = [r for r in rows if r["parseable"] == "0"]
    assert unparseable and all(r["p_yes"] == "" for r in unparseable)
    again = analyze_cli(
        "--generations",
        full_run / "calibration_metrics.csv",
        "--batch-size",
        "16",
        "--out",
        full_run.parent / "again",
        "--no-plots",
        "--bootstrap",
        "0",
    )
    assert again.returncode == 0, again.stderr
    first = list(csv.DictReader((full_run / "metrics_by_step.csv").read_text().splitlines()))
    second = list(
        csv.DictReader((full_run.parent / "again" / "metrics_by_step.csv").read_text().splitlines())
    )
    for a, b in zip(first, second, strict=True):
        for name in (
            "parse_rate",
            "accuracy",
            "ece_pyes",
            "ece_conf",
            "brier",
            "auroc",
            "reward",
            "ensemble_brier",
        ):
            assert float(a[name]) == pytest.approx(float(b[name]), abs=1e-5), name


def test_summary_states_definitions_intervals_and_cross_check(full_run: Path) -> None:
    text = (full_run / "summary.md").read_text()
    assert "## First vs last step (step 0 vs step 2)" in text
    assert "resamples of whole questions" in text
    assert "integer percent" in text and "unparseable = wrong" in text
    assert "Orchestrator log" in text and "mean |gap|" in text
    assert "0 of 12 (step, question) groups" in text


def test_count_not_multiple_of_batch_size_exits_non_zero(tmp_path: Path) -> None:
    log = write_project(tmp_path / "g.jsonl", run(n_steps=3)[:40])
    done = analyze_cli("--generations", log, "--batch-size", "16", "--out", tmp_path / "o")
    assert done.returncode == 2 and "not a multiple of batch_size=16" in done.stderr
    done = analyze_cli(
        "--generations",
        log,
        "--batch-size",
        "16",
        "--out",
        tmp_path / "o",
        "--allow-partial-step",
        "--no-plots",
        "--bootstrap",
        "0",
    )
    assert done.returncode == 0, done.stderr
    assert "step 2 is partial: 8 of 16" in (tmp_path / "o" / "summary.md").read_text()


def test_no_plots_and_reference_csv(tmp_path: Path) -> None:
    out = tmp_path / "ref"
    done = analyze_cli(
        "--generations",
        FIXTURES / "reference_steps_0_11.csv",
        "--out",
        out,
        "--no-plots",
        "--bootstrap",
        "20",
    )
    assert done.returncode == 0, done.stderr
    assert not list(out.glob("*.png"))
    text = (out / "summary.md").read_text()
    assert "resamples of whole rollouts (no question identity)" in text
    assert "12 rows with p_yes = 0.5 and reward < -0.25 are certainly unparseable" in text


def test_help_lists_the_options() -> None:
    done = analyze_cli("--help")
    for option in (
        "--generations",
        "--compare",
        "--config",
        "--batch-size",
        "--group-size",
        "--max-steps",
        "--orchestrator-log",
        "--split",
        "--no-plots",
        "--skip-bad-lines",
    ):
        assert option in done.stdout


def test_in_flight_surplus_after_the_last_step_is_left_out_loudly(tmp_path: Path) -> None:
    log = write_project(tmp_path / "g.jsonl", run(n_steps=3)[:40])  # 2 steps + 8 in flight
    config = tmp_path / "rl.toml"
    config.write_text("max_steps = 2\n[orchestrator]\nbatch_size = 16\n")
    out = tmp_path / "o"
    done = analyze_cli(
        "--generations", log, "--config", config, "--out", out, "--no-plots", "--bootstrap", "0"
    )
    assert done.returncode == 0, done.stderr
    assert "8 training records" in done.stderr and "max_steps=2" in done.stderr
    summary = (out / "summary.md").read_text()
    assert "**Warning**: 8 training records" in summary
    steps = [
        row["step"]
        for row in csv.DictReader((out / "metrics_by_step.csv").read_text().splitlines())
    ]
    assert steps == ["0", "1"]
    # --max-steps does the same without a config, before the multiple-of-batch check
    done = analyze_cli(
        "--generations", log, "--batch-size", "16", "--max-steps", "2", "--out", out,
        "--no-plots", "--bootstrap", "0",
    )  # fmt: skip
    assert done.returncode == 0 and "8 training records" in done.stderr


def test_eval_split_cross_checks_eval_lines_not_step_rewards(tmp_path: Path) -> None:
    from tests.fixtures.analysis.build import Rollout

    rounds = [
        [Rollout(q, f"q{q}", q % 2 == 0, "YES", pct=60 + 10 * r, split="eval") for q in range(4)]
        for r in range(3)
    ]
    log = write_project(tmp_path / "e.jsonl", [x for rnd in rounds for x in rnd])
    orchestrator = tmp_path / "orchestrator.stdout"
    orchestrator.write_text(
        "".join(
            f"SUCCESS Evaluated calibrated-qa in 1.00s (Avg@1={0.1 * r:.4f}, No-response: 0.0%)\n"
            f"SUCCESS Step {r} | Time: 1.00s | Reward: 0.9000 | Seq. Length: 1.0 tokens/sample\n"
            for r in range(3)
        )
    )
    out = tmp_path / "o"
    done = analyze_cli(
        "--generations", log, "--split", "eval", "--eval-size", "4", "--eval-interval", "10",
        "--max-steps", "12", "--orchestrator-log", orchestrator, "--out", out, "--no-plots",
        "--bootstrap", "0",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader((out / "metrics_by_step.csv").read_text().splitlines()))
    assert [r["step"] for r in rows] == ["0", "10", "11"]
    assert rows[-1]["round"] == "final (checkpoint 11)"
    assert [float(r["orchestrator_reward"]) for r in rows] == [0.0, 0.1, 0.2]
    assert "Evaluated" in (out / "summary.md").read_text()


def test_eval_split_reports_a_short_round_with_its_n(tmp_path: Path) -> None:
    from tests.fixtures.analysis.build import Rollout

    rows = [
        Rollout(q, f"q{q}", q % 2 == 0, "YES", split="eval")
        for r in range(3)
        for q in range(4)
        if (r, q) != (1, 2)  # a failed eval rollout of the middle round
    ]
    log = write_project(tmp_path / "e.jsonl", rows)
    out = tmp_path / "o"
    args = [
        "--generations", log, "--split", "eval", "--eval-size", "4", "--eval-interval", "10",
        "--eval-rollouts-per-example", "1", "--out", out, "--no-plots", "--bootstrap", "0",
    ]  # fmt: skip
    done = analyze_cli(*args)
    assert done.returncode == 0, done.stderr
    table = list(csv.DictReader((out / "metrics_by_step.csv").read_text().splitlines()))
    assert [(r["step"], r["n"]) for r in table] == [("0", "4"), ("10", "3"), ("20", "4")]
    summary = (out / "summary.md").read_text()
    assert "**Warning**: eval round checkpoint 10 is short: 3 of 4 records" in summary
    assert "checkpoint 10 n=3" in summary
    done = analyze_cli(*args, "--strict-eval")
    assert done.returncode == 2 and "--strict-eval" in done.stderr


def test_eval_split_of_records_with_their_own_step_names_each_round(tmp_path: Path) -> None:
    """Records that carry their step (the original CSV, episode files) are eval rounds as they
    are: each step is a round, and max_steps cuts only training records (the in-flight surplus)."""
    table = write_csv(tmp_path / "eval.csv", run(n_steps=2), batch_size=16)
    out = tmp_path / "out"
    done = analyze_cli(
        "--generations", table, "--split", "eval", "--max-steps", "1", "--batch-size", "16",
        "--no-plots", "--bootstrap", "0", "--out", out,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "left out" not in done.stderr
    with open(out / "metrics_by_step.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["step"], r["n"], r["round"]) for r in rows] == [
        ("0", "16", "step 0"),
        ("1", "16", "step 1"),
    ]
