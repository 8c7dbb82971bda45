"""Several eval logs side by side (e.g. base vs trained model): one table, one figure.

Each ``LABEL=PATH`` (optionally ``LABEL=PATH@STEP`` to pick one eval round of an online eval log)
is read in any of the three formats and pooled; intervals resample whole questions where the
format has question identity, single rollouts otherwise (stated in the table).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from calibrated_qa.analysis import plots
from calibrated_qa.analysis.aggregate import with_intervals
from calibrated_qa.analysis.bootstrap import DEFAULT_RESAMPLES, Interval
from calibrated_qa.analysis.metrics import DEFINITIONS
from calibrated_qa.analysis.readers import AnalysisInputError, ReadReport, Rollouts, read_rollouts
from calibrated_qa.analysis.steps import attribute_eval_rounds

COMPARE_METRICS = (
    "parse_rate",
    "accuracy",
    "brier",
    "ece_pyes",
    "ece_conf",
    "auroc",
    "mean_p_yes",
    "reward",
)


@dataclass(frozen=True)
class Spec:
    """One ``LABEL=PATH[@STEP]`` argument."""

    label: str
    path: str
    step: int | None = None


def parse_spec(text: str) -> Spec:
    """``LABEL=PATH`` or ``LABEL=PATH@STEP``; a clear error otherwise."""
    label, sep, rest = text.partition("=")
    if not sep or not label or not rest:
        raise AnalysisInputError(f"--compare takes LABEL=PATH[@STEP], got {text!r}")
    path, at, step = rest.rpartition("@") if "@" in rest else (rest, "", "")
    if at and not step.isdigit():
        raise AnalysisInputError(f"--compare {text!r}: the part after @ must be a step number")
    return Spec(label, path, int(step) if at else None)


@dataclass
class Entry:
    """One compared log, computed."""

    spec: Spec
    rollouts: Rollouts
    read: ReadReport
    intervals: dict[str, Interval]
    unit: str


def compare(
    specs: Sequence[Spec],
    *,
    split: str | None = "eval",
    eval_size: int | None = None,
    eval_interval: int | None = None,
    eval_base_model: bool = True,
    eval_rollouts_per_example: int | None = None,
    skip_bad_lines: bool = False,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    progress: bool = True,
) -> list[Entry]:
    """Read and compute every compared log; labels must be unique."""
    labels = [s.label for s in specs]
    if len(set(labels)) != len(labels):
        raise AnalysisInputError(f"--compare labels must be unique, got {labels}")
    entries = []
    for spec in specs:
        rollouts, read = read_rollouts(
            [spec.path], split=split, skip_bad_lines=skip_bad_lines, progress=progress
        )
        if spec.step is not None:
            if rollouts.fmt != "original-csv":  # the CSV has its own step column
                attribute_eval_rounds(
                    rollouts,
                    eval_size,
                    eval_interval,
                    base_model=eval_base_model,
                    rollouts_per_example=eval_rollouts_per_example,
                )
            steps = sorted({int(s) for s in rollouts.step})
            rollouts = rollouts.subset(rollouts.step == spec.step)
            if not len(rollouts):
                raise AnalysisInputError(
                    f"--compare {spec.label}: no records at step {spec.step} (steps present: "
                    f"{steps}; eval rounds need --eval-size/--eval-interval or --config)"
                )
        else:
            rollouts.step[:] = 0  # pooled: the self-ensemble groups by question over the file
        intervals, unit = with_intervals(rollouts, resamples=resamples, seed=seed)
        entries.append(Entry(spec, rollouts, read, intervals, unit))
    return entries


def _cell(value: float) -> str:
    return "" if math.isnan(value) else f"{value:.6g}"


def write_comparison(entries: Sequence[Entry], out: Path, *, plots_too: bool = True) -> None:
    """``comparison.csv``, ``comparison.md`` and ``comparison_reliability.png`` in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "comparison.csv", "w", newline="") as f:
        writer = csv.writer(f)
        head = ["label", "n", *COMPARE_METRICS]
        head += [f"{m}_{end}" for m in COMPARE_METRICS for end in ("low", "high")]
        writer.writerow([*head, "n_questions", "format", "bootstrap_unit", "path"])
        for e in entries:
            iv = e.intervals
            row = [e.spec.label, len(e.rollouts)]
            row += [_cell(iv[m].value) for m in COMPARE_METRICS]
            row += [_cell(getattr(iv[m], end)) for m in COMPARE_METRICS for end in ("low", "high")]
            n_q = len(set(e.rollouts.question.tolist())) if e.rollouts.has_identity else ""
            where = e.spec.path + (f"@{e.spec.step}" if e.spec.step is not None else "")
            writer.writerow([*row, n_q, e.read.fmt, e.unit, where])
    lines = [
        "# Comparison",
        "",
        "Each metric with its 95% percentile bootstrap interval.",
        "",
        "| label | n | " + " | ".join(COMPARE_METRICS) + " | resampled |",
        "|" + " --- |" * (len(COMPARE_METRICS) + 3),
    ]
    for e in entries:
        cells = [e.intervals[m].format() for m in COMPARE_METRICS]
        lines.append(
            f"| {e.spec.label} | {len(e.rollouts)} | " + " | ".join(cells) + f" | {e.unit} |"
        )
    lines += ["", "## Inputs", ""]
    for e in entries:
        lines.append(
            f"- `{e.spec.label}`: `{e.spec.path}` ({e.read.fmt}"
            + (f", eval step {e.spec.step}" if e.spec.step is not None else "")
            + ")"
        )
        lines += [f"  - note: {note}" for note in e.read.notes]
        if e.read.other_split:
            lines.append(f"  - {e.read.other_split} records of the other split left out")
        if e.read.torn_lines or e.read.skipped_lines:
            lines.append(
                f"  - skipped: {len(e.read.torn_lines)} torn, {len(e.read.skipped_lines)} malformed"
            )
    lines += ["", "## Definitions", ""]
    lines += [f"- `{m}`: {DEFINITIONS[m]}." for m in COMPARE_METRICS]
    (out / "comparison.md").write_text("\n".join(lines) + "\n")
    if plots_too:
        top = [
            plots.Panel(
                e.spec.label,
                e.rollouts.p_yes[e.rollouts.parseable],
                e.rollouts.y[e.rollouts.parseable],
                len(e.rollouts),
            )
            for e in entries
        ]
        bottom = [
            plots.Panel(
                e.spec.label,
                e.rollouts.confidence[e.rollouts.parseable],
                e.rollouts.correct[e.rollouts.parseable],
                len(e.rollouts),
            )
            for e in entries
        ]
        plots.reliability_grid(
            top,
            out / "comparison_reliability.png",
            "Reliability side by side: stated P(YES) (top), confidence in the answer (bottom)",
            rows_of=[top, bottom],
            row_labels=[
                ("stated P(YES)", "fraction of true answers"),
                ("confidence in the chosen answer", "fraction correct"),
            ],
        )
