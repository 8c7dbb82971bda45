"""Several eval logs side by side (e.g. base vs trained model): one table, one figure.

``LABEL=PATH[@STEP|@final|@all]`` picks one eval round (never pooled silently); each label after
the first gets a *paired* bootstrap interval of its difference from the first.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from calibrated_qa.analysis import plots
from calibrated_qa.analysis.bootstrap import Interval, bootstrap, with_intervals
from calibrated_qa.analysis.metrics import DEFINITIONS, tally
from calibrated_qa.analysis.readers import AnalysisInputError, ReadReport, Rollouts, read_rollouts
from calibrated_qa.analysis.report import Options, cell, table
from calibrated_qa.analysis.steps import Attribution, RunShape, attribute

COMPARE_METRICS = (
    "parse_rate", "accuracy", "brier", "ece_pyes", "ece_conf", "auroc", "mean_p_yes", "reward",
)  # fmt: skip
FINAL = "final"
ALL = "all"
SHAPE = "--config (the training config, or --eval-size/--eval-interval)"
SELECT_HINT = (
    "select one with LABEL=PATH@STEP (the checkpoint, e.g. @0 for the base model) or "
    "LABEL=PATH@final (the final eval round; needs --config with max_steps, or --max-steps), "
    "or pool every record with LABEL=PATH@all"
)


@dataclass(frozen=True)
class Spec:
    """One ``LABEL=PATH[@STEP|@final|@all]`` argument."""

    label: str
    path: str
    select: str = ""  # what follows the @: a step number, "final", "all", or nothing

    @property
    def step(self) -> int | None:
        return int(self.select) if self.select.isdigit() else None

    @property
    def source(self) -> str:
        return f"{self.path}@{self.select}" if self.select else self.path


def parse_spec(text: str) -> Spec:
    """``LABEL=PATH``, ``LABEL=PATH@STEP``, ``LABEL=PATH@final`` or ``LABEL=PATH@all``."""
    label, _, rest = text.partition("=")
    if not label or not rest:
        raise AnalysisInputError(f"--compare takes LABEL=PATH[@STEP|@final|@all], got {text!r}")
    path, at, select = rest.rpartition("@")
    if not at:
        return Spec(label, rest)
    if select not in (FINAL, ALL) and not select.isdigit():
        raise AnalysisInputError(
            f"--compare {text!r}: the part after @ must be a step number, 'final' or 'all'"
        )
    return Spec(label, path, select)


@dataclass
class Entry:
    spec: Spec
    rollouts: Rollouts
    read: ReadReport
    intervals: dict[str, Interval]
    unit: str
    selected: str = ""  # which round, in words
    warnings: list[str] = field(default_factory=list)  # a short round
    delta: dict[str, Interval] | None = None  # vs the first label (None for the first)
    delta_note: str = ""  # how the delta was paired, or why not


def _rounds_in_order(rollouts: Rollouts) -> int:
    """c when every question appears c times, each once before any twice (c rounds); else 1."""
    if not rollouts.has_identity:
        return 1
    _, counts = np.unique(rollouts.question, return_counts=True)
    firsts = np.unique(rollouts.question[: counts.size]).size  # distinct among the first k
    return int(counts[0]) if counts.min() == counts.max() > 1 and firsts == counts.size else 1


def _select(
    spec: Spec, rollouts: Rollouts, attribution: Attribution
) -> tuple[Rollouts, str, list[str]]:
    """The records of the round ``spec`` selects, looked up in the attribution's round names."""
    name, names, warnings = f"--compare {spec.label}", attribution.round_names, attribution.warnings
    step = attribution.final_step if spec.select == FINAL else spec.step
    if not names:  # pooled (no round structure): only an unselected log of one round
        if spec.select:  # @STEP or @final (@all never gets here)
            raise AnalysisInputError(
                f"{name}: selecting an eval round needs the round structure: pass {SHAPE}"
                + (" and --max-steps" if spec.select == FINAL else "")
            )
        if (rounds := _rounds_in_order(rollouts)) > 1:
            raise AnalysisInputError(
                f"{name}: {spec.path} looks like {rounds} eval rounds (every question appears "
                f"once per round, {rounds} times in order); pass {SHAPE} and {SELECT_HINT}"
            )
        return rollouts, "the whole log (one round)", warnings
    found = ", ".join(f"@{s} ({n})" for s, n in sorted(names.items()))
    if spec.select == FINAL and step is None:
        raise AnalysisInputError(
            f"{name}: no final eval round identified in {spec.path} (rounds found: {found}); "
            "the final round needs max_steps (--config with top-level max_steps, or "
            "--max-steps) and a run that reached it"
        )
    if step is None:
        if len(names) > 1:
            raise AnalysisInputError(
                f"{name}: {spec.path} holds {len(names)} eval rounds ({found}); {SELECT_HINT}"
            )
        return rollouts, next(iter(names.values())), warnings
    if step not in names:
        raise AnalysisInputError(
            f"{name}: no records at step {step} (rounds present: {found}; eval rounds need {SHAPE})"
        )
    mine = [w for w in warnings if w.startswith(f"eval round {names[step]} ")]
    return rollouts.subset(rollouts.step == step), names[step], mine


def _paired_delta(
    first: Entry, other: Entry, options: Options
) -> tuple[dict[str, Interval] | None, str]:
    """``other - first`` for every metric with a paired bootstrap interval over common questions."""
    a, b = first.rollouts, other.rollouts
    if not (a.has_identity and b.has_identity):
        return None, "no paired interval: a log without question identity (the original CSV)"
    common = np.intersect1d(a.question, b.question)
    if not common.size:
        return None, "no paired interval: the logs share no question"
    sub_a, sub_b = a.subset(np.isin(a.question, common)), b.subset(np.isin(b.question, common))
    tally_a = tally(sub_a, np.searchsorted(common, sub_a.question), common.size)
    tally_b = tally(sub_b, np.searchsorted(common, sub_b.question), common.size)
    n_a, n_b = np.unique(a.question).size, np.unique(b.question).size
    note = f"paired over {common.size} common questions"
    if common.size < max(n_a, n_b):
        note += (
            f"; dropped {n_a - common.size} only in {first.spec.label}, {n_b - common.size} "
            f"only in {other.spec.label}"
        )
        if options.strict_eval:
            raise AnalysisInputError(f"--compare {other.spec.label}: {note} (--strict-eval)")
    return bootstrap(tally_b, minus=tally_a, resamples=options.bootstrap, seed=options.seed), note


def compare(specs: Sequence[Spec], shape: RunShape, options: Options) -> list[Entry]:
    """Read and compute every compared log; labels must be unique."""
    labels = [s.label for s in specs]
    if len(set(labels)) != len(labels):
        raise AnalysisInputError(f"--compare labels must be unique, got {labels}")
    o = options
    entries: list[Entry] = []
    for spec in specs:
        rollouts, read = read_rollouts(
            [spec.path], split=o.split, skip_bad_lines=o.skip_bad_lines, progress=o.progress
        )
        selected, warnings = "all records pooled (@all)", []
        if spec.select != ALL:
            try:
                rollouts, attribution = attribute(  # an eval split: no partial training step
                    rollouts, split="eval", shape=shape, strict_eval=o.strict_eval,
                    episodes=o.episodes, files=read.files,
                )  # fmt: skip
            except AnalysisInputError as exc:
                raise AnalysisInputError(
                    f"--compare {spec.label}: {exc}; for a log of another shape (e.g. an offline "
                    "eval with several rollouts per question) use LABEL=PATH@all"
                ) from exc
            rollouts, selected, warnings = _select(spec, rollouts, attribution)
        rollouts.step[:] = 0  # one round: the self-ensemble groups by question
        intervals, unit = with_intervals(rollouts, resamples=o.bootstrap, seed=o.seed)
        entries.append(Entry(spec, rollouts, read, intervals, unit, selected, warnings))
    for entry in entries[1:]:
        entry.delta, entry.delta_note = _paired_delta(entries[0], entry, o)
    return entries


def write_comparison(entries: Sequence[Entry], out: Path, *, plots_too: bool = True) -> None:
    """``comparison.csv``, ``comparison.md`` and ``comparison_reliability.png`` in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    reference = entries[0].spec.label if entries else ""
    ends = (("", "value"), ("_low", "low"), ("_high", "high"))
    rows = []
    for i, e in enumerate(entries):
        delta = e.delta or dict.fromkeys(COMPARE_METRICS, Interval(math.nan))
        row: dict[str, object] = {"label": e.spec.label, "n": len(e.rollouts)}
        row |= {m: e.intervals[m].value for m in COMPARE_METRICS}
        row |= {m + k: getattr(e.intervals[m], at) for m in COMPARE_METRICS for k, at in ends[1:]}
        row |= {f"delta_{m}{k}": getattr(delta[m], at) for m in COMPARE_METRICS for k, at in ends}
        rows.append(row | {
            "delta_vs": reference if i else "", "delta_pairing": e.delta_note,
            "n_questions": np.unique(e.rollouts.question).size if e.rollouts.has_identity else "",
            "format": e.read.fmt, "bootstrap_unit": e.unit, "path": e.spec.source,
        })  # fmt: skip
    with open(out / "comparison.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({key: cell(value) for key, value in row.items()} for row in rows)
    lines = ["# Comparison", "", "Each metric with its 95% percentile bootstrap interval.", ""]
    lines += table(
        ["label", "n", *COMPARE_METRICS, "resampled"],
        [
            [e.spec.label, str(len(e.rollouts))]
            + [e.intervals[m].format() for m in COMPARE_METRICS]
            + [e.unit]
            for e in entries
        ],
    )
    if len(entries) > 1:
        lines += [
            "",
            f"## Difference from `{reference}`",
            "",
            f"Each label minus `{reference}`, with a 95% paired bootstrap interval: the questions "
            "are resampled once per draw and both logs' rollouts of a question get the same "
            "weight (matched by question identity), so the difference is not blurred by which "
            "questions happen to be drawn. An interval that excludes 0 is a difference beyond "
            "question-sampling noise.",
            "",
        ]
        rows = [
            [e.spec.label]
            + [e.delta[m].format(sign="+") if e.delta else "n/a" for m in COMPARE_METRICS]
            + [e.delta_note]
            for e in entries[1:]
        ]
        lines += table(["label", *(f"Δ {m}" for m in COMPARE_METRICS), "pairing"], rows)
    lines += ["", "## Inputs", ""]
    for e in entries:
        lines.append(f"- `{e.spec.label}`: `{e.spec.source}` ({e.read.fmt}; {e.selected})")
        lines += [f"  - note: {note}" for note in e.read.notes]
        lines += [f"  - **warning**: {w}" for w in e.warnings]
        if e.read.other_split:
            lines.append(f"  - {e.read.other_split} records of the other split left out")
        if e.read.torn_lines or e.read.skipped_lines:
            lines.append(
                f"  - skipped: {len(e.read.torn_lines)} torn, {len(e.read.skipped_lines)} malformed"
            )
    lines += ["", "## Definitions", ""]
    lines += [f"- `{m}`: {DEFINITIONS[m]}." for m in ("prediction", "confidence")]
    lines += [f"- `{m}`: {DEFINITIONS[m]}." for m in COMPARE_METRICS]
    (out / "comparison.md").write_text("\n".join(lines) + "\n")
    if plots_too:
        parts = [
            (e.spec.label, e.rollouts.subset(e.rollouts.parseable), len(e.rollouts))
            for e in entries
        ]
        top = [plots.Panel(label, r.p_yes, r.y, n) for label, r, n in parts]
        bottom = [plots.Panel(label, r.confidence, r.correct, n) for label, r, n in parts]
        plots.reliability_grid(
            [top, bottom],
            out / "comparison_reliability.png",
            "Reliability side by side: stated P(YES) (top), confidence in the answer (bottom)",
            [
                ("stated P(YES)", "fraction of true answers"),
                ("confidence in the predicted answer", "fraction correct"),
            ],
        )
