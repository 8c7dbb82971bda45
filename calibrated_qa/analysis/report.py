"""One analysis run: read, attribute steps, compute, cross-check, write the files of ``--out``."""

from __future__ import annotations

import csv
import math
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from calibrated_qa.analysis import plots
from calibrated_qa.analysis.bootstrap import DEFAULT_RESAMPLES, Interval, with_intervals
from calibrated_qa.analysis.metrics import DEFINITIONS, METRIC_NAMES, ensemble, step_rows
from calibrated_qa.analysis.readers import AnalysisInputError, ReadReport, Rollouts, read_rollouts
from calibrated_qa.analysis.steps import (
    Attribution,
    RunShape,
    attribute,
    group_purity,
    read_orchestrator_eval_rewards,
    read_orchestrator_rewards,
    step_groups,
)

MAX_PANELS = 12
NOT_CHECKED = "attribution not cross-checked."
LABELS = {
    "parse_rate": "parse rate",
    "accuracy": "accuracy (unparseable = wrong)",
    "brier": "Brier (parseable)",
    "ece_pyes": "ECE on P(YES)",
    "ece_conf": "ECE on confidence",
    "auroc": "AUROC (confidence, correct vs wrong)",
    "reward": "reward",
    "calibration_reward": "  calibration term (1 - Brier, 0 if unparseable)",
    "length_penalty": "  length penalty",
    "penalized_frac": "length-penalized fraction",
    "mean_length": "mean length L",
    "mean_p_yes": "mean P(YES) (parseable)",
    "ensemble_brier": "self-ensemble Brier",
    "ensemble_ece_pyes": "self-ensemble ECE on P(YES)",
}


@dataclass(frozen=True)
class Options:
    """How to analyse, for both paths of the CLI (see ``analyze_calibration.py --help``)."""

    split: str = "train"
    group_size: int | None = None  # steps per reliability diagram
    orchestrator_log: str | None = None
    plots: bool = True
    skip_bad_lines: bool = False
    allow_partial_step: bool = False
    strict_eval: bool = False
    episodes: str | None = None  # prime-rl 559b447 run dir: exact steps
    bootstrap: int = DEFAULT_RESAMPLES
    seed: int = 0
    progress: bool = True


@dataclass
class Analysis:
    options: Options
    shape: RunShape
    rollouts: Rollouts
    read: ReadReport
    attribution: Attribution
    rows: list[dict[str, float]]
    first_last: dict[int, dict[str, Interval]]
    bootstrap_unit: str
    orchestrator: dict[int, float] | None = None
    purity: tuple[int, int] | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def ends(self) -> tuple[int, int]:
        return int(self.rows[0]["step"]), int(self.rows[-1]["step"])


def _orchestrator_rewards(options: Options, rows: list[dict[str, float]]) -> dict[int, float]:
    """Per-step rewards of the orchestrator log; for the eval split, its per-round eval rewards."""
    assert options.orchestrator_log is not None
    if options.split != "eval":
        return read_orchestrator_rewards(options.orchestrator_log)
    rewards = read_orchestrator_eval_rewards(options.orchestrator_log)
    steps = [int(row["step"]) for row in rows]
    if len(rewards) != len(steps):
        raise AnalysisInputError(
            f"{options.orchestrator_log}: {len(rewards)} eval results ('Evaluated ...' lines) "
            f"but the eval log holds {len(steps)} rounds ({steps}): not the same run, or a "
            "resumed run that repeated rounds"
        )
    return dict(zip(steps, rewards, strict=True))


def load(
    generations: Sequence[str], shape: RunShape, options: Options
) -> tuple[Rollouts, ReadReport, Attribution]:
    """Read the logs and attribute steps: the path both CLIs share."""
    o = options
    rollouts, read = read_rollouts(
        generations, split=o.split, skip_bad_lines=o.skip_bad_lines, progress=o.progress
    )
    rollouts, attribution = attribute(
        rollouts, split=o.split, shape=shape, allow_partial=o.allow_partial_step,
        strict_eval=o.strict_eval, episodes=o.episodes, files=read.files,
    )  # fmt: skip
    return rollouts, read, attribution


def analyze(generations: Sequence[str], shape: RunShape, options: Options) -> Analysis:
    """Read the logs and compute everything; raises ``AnalysisInputError`` on unusable input."""
    rollouts, read, attribution = load(generations, shape, options)
    if not len(rollouts):
        raise AnalysisInputError(f"no rollouts in the first {shape.max_steps} steps")
    rows = step_rows(rollouts)
    orchestrator = None
    if options.orchestrator_log:
        orchestrator = _orchestrator_rewards(options, rows)
        for row in rows:
            logged = orchestrator.get(int(row["step"]), math.nan)
            row["orchestrator_reward"] = logged
            row["reward_gap"] = row["reward"] - logged
    if attribution.partial_step is not None:
        for row in rows:
            row["partial"] = int(row["step"] == attribution.partial_step)
    first_last = {}
    unit = ""
    for step in sorted({int(rows[0]["step"]), int(rows[-1]["step"])}):
        first_last[step], unit = with_intervals(
            rollouts.subset(rollouts.step == step), resamples=options.bootstrap, seed=options.seed
        )
    purity = group_purity(rollouts, shape.rollouts_per_example)
    result = Analysis(
        options, shape, rollouts, read, attribution, rows, first_last, unit, orchestrator, purity
    )
    warn = result.warnings
    warn += attribution.warnings + [attribution.surplus_note] * bool(attribution.surplus_note)
    if attribution.partial_step is not None:
        warn.append(
            f"step {attribution.partial_step} is partial: {attribution.partial_count} of "
            f"{shape.batch_size} rollouts (the run stopped mid-step); flagged in the CSV"
        )
    if read.torn_lines:
        warn.append(f"torn last line(s) skipped: {', '.join(read.torn_lines)}")
    if skipped := read.skipped_lines:
        warn.append(
            f"{len(skipped)} malformed line(s) skipped on request (--skip-bad-lines): "
            + ", ".join(skipped[:10])
            + (" ..." if len(skipped) > 10 else "")
        )
    return result


def cell(value: object) -> str:
    """A CSV cell: floats to 6 significant digits, NaN (does not exist) empty."""
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return str(value)


def write_metrics_by_step(result: Analysis, path: Path) -> None:
    columns = ["step", "n", "n_questions", *METRIC_NAMES]
    extra = [c for c in ("orchestrator_reward", "reward_gap", "partial") if c in result.rows[0]]
    names = result.attribution.round_names
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns + extra + (["round"] if names else []))
        for row in result.rows:
            cells = [cell(row[c]) for c in columns + extra]
            if names:
                cells.append(names.get(int(row["step"]), ""))
            writer.writerow(cells)


def _texts(values: np.ndarray, keep: np.ndarray | None = None) -> list[str]:
    """``repr`` of each value as ``csv`` writes it, "" where not ``keep``; each distinct value
    formatted once (floats keyed by their bits: -0.0 keeps its sign)."""
    key = values.view(np.int64) if values.dtype == np.float64 else values
    _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    distinct = [repr(v) for v in values[first].tolist()]
    texts = [distinct[i] for i in inverse.tolist()]
    if keep is None:
        return texts
    return [t if k else "" for t, k in zip(texts, keep.tolist(), strict=True)]


def write_rollouts_csv(rollouts: Rollouts, path: Path) -> None:
    header = "index,step,reward,brier_score,p_yes,ground_truth,parseable,length,length_penalty,"
    header += "question_id,correct,confidence"
    ok = rollouts.parseable
    columns = [
        _texts(rollouts.index),
        _texts(rollouts.step),
        _texts(rollouts.reward),
        _texts(rollouts.brier, ok),
        _texts(rollouts.p_yes, ok),
        ["True" if v else "False" for v in rollouts.y.tolist()],
        _texts(ok.astype(np.int64)),
        _texts(rollouts.length, ~np.isnan(rollouts.length)),
        _texts(rollouts.length_penalty),
        _texts(rollouts.question, rollouts.question >= 0),
        _texts(rollouts.correct.astype(np.int64)),
        _texts(rollouts.confidence, ok),
    ]
    # What csv.writer writes (\r\n; no field needs quoting), joined by hand: 3x faster.
    lines = map(",".join, zip(*columns, strict=True))
    with open(path, "w", newline="") as f:
        f.write(header + "\r\n")
        if len(rollouts):
            f.write("\r\n".join(lines) + "\r\n")


def table(head: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """A Markdown table (summary.md, comparison.md)."""
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _first_last_table(result: Analysis) -> list[str]:
    a, b = result.ends
    rows = []
    for name in METRIC_NAMES:
        first, last = result.first_last[a][name], result.first_last[b][name]
        if not (math.isnan(first.value) and math.isnan(last.value)):
            change = Interval(last.value - first.value).format(sign="+")
            rows.append([LABELS[name], first.format(), last.format(), change])
    return table(["metric", f"step {a}", f"step {b}", "change"], rows)


def _cross_check(result: Analysis) -> list[str]:
    lines = [f"- Attribution: {result.attribution.method}."]
    if result.purity is not None:
        wrong, total = result.purity
        lines.append(
            f"- Question groups: {wrong} of {total} (step, question) groups do not hold exactly "
            f"{result.shape.rollouts_per_example} rollouts"
            + (" (clean attribution)." if wrong == 0 else ": rollouts crossed a step boundary.")
        )
    if not result.orchestrator:
        return [*lines, "- No orchestrator log given (--orchestrator-log): " + NOT_CHECKED]
    gaps = [
        (int(r["step"]), r["reward_gap"], r["reward"], r["orchestrator_reward"])
        for r in result.rows
        if not math.isnan(r.get("reward_gap", math.nan))
    ]
    if not gaps:
        return [*lines, "- Orchestrator log: no step in common with the analysed rollouts."]
    abs_gaps = np.abs([g[1] for g in gaps])
    worst = gaps[int(np.argmax(abs_gaps))]
    what = (
        "per-round mean reward of the eval rounds vs the orchestrator's 'Evaluated ... "
        "(Avg@k=x' lines (in order)"
        if result.options.split == "eval"
        else "per-step mean reward of the attributed rollouts vs the orchestrator's"
    )
    lines.append(
        f"- Orchestrator log: {what} over {len(gaps)} common steps: mean |gap| "
        f"{abs_gaps.mean():.4f}, max |gap| {abs_gaps.max():.4f} at step {worst[0]} "
        f"({worst[2]:.4f} vs {worst[3]:.4f})."
    )
    rows = [[str(s), f"{r:.4f}", f"{o:.4f}", f"{g:+.4f}"] for s, g, r, o in gaps]
    return [*lines, "", *table(["step", "analysis reward", "orchestrator reward", "gap"], rows)]


def _step_table(rows: Sequence[dict[str, float]]) -> list[str]:
    # Short: the CSV has the length and ensemble columns too.
    short = {"mean_length", "mean_p_yes", "ensemble_brier", "ensemble_ece_pyes"}
    names = [name for name in METRIC_NAMES if name not in short]
    orch = ["orchestrator_reward"] * ("orchestrator_reward" in rows[0])
    cells = [
        [str(int(row["step"])), str(int(row["n"]))]
        + [Interval(row[n]).format() for n in names]
        + [Interval(row[n]).format(4) for n in orch]
        for row in rows
    ]
    return table(["step", "n", *names, *orch], cells)


def _shown_path(path: Path | str) -> str:
    """Relative to the working directory when below it, so reports do not embed a home path."""
    path = Path(path)
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _inputs(result: Analysis) -> list[str]:
    read = result.read
    files = ", ".join(f"`{_shown_path(f)}`" for f in read.files)
    lines = [f"- Files ({read.fmt} format, in order): {files}"]
    lines.append(
        f"- Rollouts analysed: {len(result.rollouts)} ({read.n_records} read, split "
        f"`{result.options.split}`), {len(result.rows)} steps "
        f"({result.ends[0]}..{result.ends[1]})."
    )
    if read.other_split:
        lines.append(f"- Left out: {read.other_split} records of the other split.")
    lines += [f"- Note: {note}." for note in read.notes]
    lines += [f"- **Warning**: {w}." for w in result.warnings]
    return lines


def summary_markdown(result: Analysis) -> str:
    """The text of ``summary.md``."""
    a, b = result.ends
    unit = result.bootstrap_unit
    lines = ["# Calibration analysis", "", "## Inputs", "", *_inputs(result), ""]
    lines += [
        f"## First vs last step (step {a} vs step {b})",
        "",
        f"95% percentile bootstrap intervals, {result.options.bootstrap} resamples of whole "
        f"{unit} within the step.",
        "",
        *_first_last_table(result),
        "",
        *_reward_sentence(result),
        "",
        "## Step attribution cross-check",
        "",
        *_cross_check(result),
        "",
        "## Per step",
        "",
        *_step_table(result.rows),
        "",
        "## Definitions",
        "",
    ]
    lines += [f"- `{name}`: {text}." for name, text in DEFINITIONS.items()]
    lines.append(
        "- confidence intervals: whole questions are resampled (a step holds ~128 questions x 8 "
        "correlated rollouts); without question identity, single rollouts (too narrow)."
    )
    return "\n".join(lines) + "\n"


def _reward_sentence(result: Analysis) -> list[str]:
    a, b = result.ends
    if a == b:
        return []
    first, last = result.first_last[a], result.first_last[b]
    d_reward = last["reward"].value - first["reward"].value
    d_cal = last["calibration_reward"].value - first["calibration_reward"].value
    d_len = last["length_penalty"].value - first["length_penalty"].value
    return [
        f"Reward {first['reward'].value:.3f} -> {last['reward'].value:.3f} ({d_reward:+.3f}) = "
        f"calibration term {d_cal:+.3f} + length penalty {d_len:+.3f}; length-penalized rollouts "
        f"{first['penalized_frac'].value:.1%} -> {last['penalized_frac'].value:.1%}."
    ]


def readme_section(result: Analysis, command: str) -> str:
    """The README's Results section, generated from the same numbers as ``summary.md``."""
    a, b = result.ends
    unit = result.bootstrap_unit
    lines = [
        "## Results",
        "",
        f"Step {a} vs step {b} of the analysed run ({result.read.fmt} input, "
        f"{len(result.rollouts)} rollouts over {len(result.rows)} steps). 95% bootstrap "
        f"intervals resample {unit}.",
        "",
        *_first_last_table(result),
        "",
        *_reward_sentence(result),
        "",
    ]
    lines += [f"- {note}." for note in result.read.notes]
    if result.orchestrator:
        lines += [line for line in _cross_check(result) if line.startswith("- Orchestrator")]
    lines += [
        "",
        "Definitions, the per-step table and the step-attribution cross-check: `summary.md`. "
        f"Generated by `{command}`.",
    ]
    return "\n".join(lines) + "\n"


def write_plots(result: Analysis, out: Path) -> None:
    """The four figures (matplotlib imported here only), drawn two at a time (``plots.draw``)."""
    rollouts = result.rollouts
    size = result.options.group_size or max(1, math.ceil(len(result.rows) / MAX_PANELS))
    groups = [
        (
            f"step {group[0]}" if len(group) == 1 else f"steps {group[0]}-{group[-1]}",
            rollouts.subset(np.isin(rollouts.step, group)),
        )
        for group in step_groups(rollouts.step, size)
    ]
    rollout_panels = [
        plots.Panel(name, part.p_yes[part.parseable], part.y[part.parseable], len(part))
        for name, part in groups
    ]
    figures = [
        lambda: plots.reliability_grid(
            [rollout_panels],
            out / "calibration_curves.png",
            "Reliability of stated P(YES), per rollout",
            [("stated P(YES) (10 integer-percent bins)", "observed fraction of true answers")],
        ),
        lambda: plots.pyes_histograms(rollout_panels, out / "pyes_histograms.png"),
        lambda: plots.metric_curves(
            result.rows,
            out / "brier_over_time.png",
            orchestrator=result.orchestrator,
            max_tokens=max(result.read.max_tokens) if len(result.read.max_tokens) == 1 else None,
            x_label="eval step" if result.options.split == "eval" else "training step",
        ),
    ]
    if result.rollouts.has_identity:
        ens_panels = []
        for name, part in groups:
            p, y, _, empty = ensemble(part)
            why = "no question has a parseable rollout"
            ens_panels.append(plots.Panel(name + " (questions)", p, y, p.size + empty, why))
        figures.append(
            lambda: plots.reliability_grid(
                [ens_panels],
                out / "calibration_curves_ensemble.png",
                "Self-ensemble: mean P(YES) over a question's rollouts within a step",
                [("mean P(YES) of the question's parseable rollouts", "fraction of true answers")],
            )
        )
    else:
        figures.append(
            lambda: plots.message_figure(
                out / "calibration_curves_ensemble.png",
                "Self-ensemble not available",
                "this input carries no question identity (the original per-rollout CSV):\n"
                "rollouts of one question cannot be grouped, and adjacent lines are not a question",
            )
        )
    plots.draw(figures)


PLOT_FILES = (
    "calibration_curves.png",
    "calibration_curves_ensemble.png",
    "pyes_histograms.png",
    "brier_over_time.png",
)


def write_outputs(result: Analysis, out: Path) -> list[Path]:
    """Write every file of ``--out``; returns the paths written (and only those)."""
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "metrics_by_step.csv", out / "calibration_metrics.csv", out / "summary.md"]
    write_metrics_by_step(result, written[0])
    write_rollouts_csv(result.rollouts, written[1])
    written[2].write_text(summary_markdown(result))
    if result.options.plots:
        write_plots(result, out)
        written += [out / name for name in PLOT_FILES]
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return written
