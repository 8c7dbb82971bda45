"""Stratified samples of completions from chosen steps, as readable Markdown.

A uniform sample of a late step is almost all "correct and confident", hence the strata; only the
chosen rollouts' texts are read, in a second pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from calibrated_qa.analysis.readers import AnalysisInputError, ReadReport, Rollouts, read_lines

STRATA = (
    "correct, confident",
    "correct, uncertain",
    "wrong, confident",
    "wrong, uncertain",
    "unparseable",
)


@dataclass(frozen=True)
class Sample:
    step: int
    stratum: str
    row: int  # row in the Rollouts


def stratum_of(rollouts: Rollouts, threshold: float) -> np.ndarray:
    """The stratum index (into ``STRATA``) of every rollout."""
    confident = np.nan_to_num(rollouts.confidence, nan=0.0) >= threshold
    out = np.where(rollouts.correct, np.where(confident, 0, 1), np.where(confident, 2, 3))
    return np.where(rollouts.parseable, out, 4)


def choose(
    rollouts: Rollouts, steps: Sequence[int], n: int, *, seed: int = 0, threshold: float = 0.8
) -> list[Sample]:
    """``n`` rollouts per step, spread as evenly as possible over the non-empty strata."""
    rng = np.random.default_rng(seed)
    strata = stratum_of(rollouts, threshold)
    present = sorted({int(s) for s in rollouts.step})
    chosen: list[Sample] = []
    for step in steps:
        if step not in present:
            raise AnalysisInputError(
                f"step {step} is not in the log (steps {present[0]}..{present[-1]})"
            )
        pools = [
            list(rng.permutation(np.flatnonzero((rollouts.step == step) & (strata == k))))
            for k in range(len(STRATA))
        ]
        picked: list[list[int]] = [[] for _ in STRATA]
        while sum(map(len, picked)) < n and any(pools):
            for k, pool in enumerate(pools):  # round-robin: one per non-empty stratum per turn
                if pool and sum(map(len, picked)) < n:
                    picked[k].append(int(pool.pop()))
        for k, rows in enumerate(picked):
            chosen += [Sample(step, STRATA[k], row) for row in sorted(rows)]
    return chosen


def render(
    rollouts: Rollouts, read: ReadReport, samples: Sequence[Sample], *, threshold: float
) -> str:
    """The Markdown document: one section per step, one block per sample."""
    if rollouts.fmt == "original-csv":
        raise AnalysisInputError("the per-rollout CSV holds no completion text: pass a log")
    wanted: dict[int, set[int]] = {}
    for s in samples:
        wanted.setdefault(int(rollouts.file[s.row]), set()).add(int(rollouts.line[s.row]))
    records = {f: read_lines(read.files[f], lines) for f, lines in wanted.items()}
    lines = [
        "# Sampled generations",
        "",
        f"From {', '.join(f'`{f}`' for f in read.files)} ({read.fmt}). Stratified by correct/"
        f"wrong x confident (confidence in the answer >= {threshold:.0%})/uncertain, plus "
        "unparseable.",
    ]
    current = None
    for s in samples:
        if s.step != current:
            current = s.step
            n_step = int(np.sum(rollouts.step == s.step))
            lines += ["", f"## Step {s.step} ({n_step} rollouts)", ""]
        record = records[int(rollouts.file[s.row])][int(rollouts.line[s.row])]
        question, completion = record["question"], record["completion"]
        ok = bool(rollouts.parseable[s.row])
        truth = "yes" if rollouts.y[s.row] else "no"
        stated = (
            f"P(YES) {rollouts.p_yes[s.row]:.2f}, confidence {rollouts.confidence[s.row]:.2f}"
            if ok
            else "unparseable"
        )
        lines += [
            f"### {s.stratum}: {question}?",
            "",
            f"- truth: {truth}; stated: {stated}; reward {rollouts.reward[s.row]:.3f} "
            f"(length penalty {rollouts.length_penalty[s.row]:.3f}, length "
            f"{rollouts.length[s.row]:.0f})",
            f"- source: `{read.files[int(rollouts.file[s.row])]}` line {int(rollouts.line[s.row])}",
            "",
            "```text",
            completion.strip().replace("```", "'''"),
            "```",
            "",
        ]
    return "\n".join(lines) + "\n"
