"""Which training step (or eval round) each rollout belongs to, and how sure we can be.

The environment cannot see the training step. Records are appended in completion order and the
orchestrator consumes ``batch_size`` rollouts per step, so ``index // batch_size`` is the usual
attribution. It is approximate: 4 env-server workers interleave their appends, so rollouts near a
step boundary can land in the neighbouring step. Two cross-checks make the error visible:

- the orchestrator's own per-step mean reward (``SUCCESS Step N | ... | Reward: x`` lines of its
  stdout, or the reference run's ``orchestrator_steps.tsv``) against the attributed mean;
- with question identity, how many (step, question) groups do not hold exactly
  ``rollouts_per_example`` rollouts (a clean attribution leaves none).

Eval logs: prime-rl evaluates the base model at step 0 (``eval_base_model``) and then every
``interval`` steps, each round ``num_examples x rollouts_per_example`` records appended in order,
so round ``k`` is step ``k * interval`` (``(k + 1) * interval`` without the base-model round).
"""

from __future__ import annotations

import csv
import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from calibrated_qa.analysis.readers import AnalysisInputError, Rollouts

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# prime-rl 6cae5cc, orchestrator.py: "Step {n} | Time: {t:.2f}s | Reward: {r:.4f} |..."
_STEP_LINE = re.compile(r"\bSUCCESS\s+Step (\d+) \|.*?\| Reward: (-?[0-9.]+(?:e-?\d+)?) \|")


@dataclass(frozen=True)
class RunShape:
    """The numbers of a prime-rl config the analysis needs (None where not given)."""

    batch_size: int | None = None  # rollouts per training step
    rollouts_per_example: int | None = None
    max_tokens: int | None = None
    eval_size: int | None = None  # records per eval round = num_examples x rollouts_per_example
    eval_rollouts_per_example: int | None = None
    eval_interval: int | None = None
    eval_base_model: bool = True


def _positive(value: Any, name: str, source: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise AnalysisInputError(f"{source}: {name} must be a positive integer, got {value!r}")
    return value


def read_run_shape(path: str | os.PathLike[str]) -> RunShape:
    """Batch size, rollouts per example, max_tokens and eval cadence from a prime-rl TOML config.

    Accepts the combined ``rl`` config (``[orchestrator]``, ``[orchestrator.sampling]``,
    ``[orchestrator.eval]``) and a bare orchestrator config (the same keys at top level).
    """
    source = str(path)
    try:
        with open(path, "rb") as f:
            config = tomllib.load(f)
    except FileNotFoundError as exc:
        raise AnalysisInputError(f"{source}: no such config file") from exc
    except tomllib.TOMLDecodeError as exc:
        raise AnalysisInputError(f"{source}: not valid TOML ({exc})") from exc
    orch = config.get("orchestrator", config)
    sampling = orch.get("sampling", {})
    rollouts = _positive(orch.get("rollouts_per_example"), "rollouts_per_example", source)
    batch = _positive(orch.get("batch_size"), "batch_size", source)
    eval_cfg = orch.get("eval")
    eval_size = eval_interval = eval_rollouts = None
    base = True
    if isinstance(eval_cfg, dict):
        eval_interval = _positive(eval_cfg.get("interval", 100), "eval.interval", source)
        base = bool(eval_cfg.get("eval_base_model", True))
        num = eval_cfg.get("num_examples", -1)
        per = eval_cfg.get("rollouts_per_example", 1)
        envs = eval_cfg.get("env") or [{}]
        if isinstance(envs, list) and len(envs) == 1 and isinstance(envs[0], dict):
            num = envs[0].get("num_examples") or num
            per = envs[0].get("rollouts_per_example") or per
        eval_rollouts = _positive(per, "eval.rollouts_per_example", source)
        if isinstance(num, int) and num > 0:
            eval_size = num * eval_rollouts
    return RunShape(
        batch_size=batch,
        rollouts_per_example=rollouts,
        max_tokens=_positive(sampling.get("max_tokens"), "sampling.max_tokens", source),
        eval_size=eval_size,
        eval_rollouts_per_example=eval_rollouts,
        eval_interval=eval_interval,
        eval_base_model=base,
    )


@dataclass(frozen=True)
class Attribution:
    """How steps were assigned, for the report."""

    method: str  # one sentence, printed in summary.md
    partial_step: int | None = None  # the last step, when it holds fewer than a full batch
    partial_count: int = 0


def attribute_steps(
    rollouts: Rollouts, batch_size: int | None, *, allow_partial: bool = False
) -> Attribution:
    """Set ``rollouts.step`` to ``index // batch_size`` (in place), unless the format has steps.

    A record count that is not a multiple of ``batch_size`` means either a wrong batch size or a
    run that stopped mid-step; it is an error unless ``allow_partial`` (then the last step is
    flagged partial).
    """
    if rollouts.fmt == "original-csv":
        steps, counts = np.unique(rollouts.step, return_counts=True)
        if batch_size is not None:
            wrong = [int(s) for s, c in zip(steps, counts, strict=True) if c != batch_size]
            if wrong and not allow_partial:
                raise AnalysisInputError(
                    f"steps {wrong} of the CSV do not hold batch_size={batch_size} rows; "
                    "check --batch-size, or pass --allow-partial-step"
                )
        return Attribution("the CSV's own step column (index // batch size in the original run)")
    if batch_size is None:
        raise AnalysisInputError(
            "the batch size (rollouts per step) is unknown: pass --config or --batch-size"
        )
    n = len(rollouts)
    full, rest = divmod(n, batch_size)
    if rest and not allow_partial:
        raise AnalysisInputError(
            f"{n} records is not a multiple of batch_size={batch_size} ({full} full steps + "
            f"{rest} records): a wrong batch size, or a run that stopped mid-step; pass "
            "--allow-partial-step to analyse the remainder as a flagged partial last step"
        )
    rollouts.step[:] = rollouts.index // batch_size
    method = f"index // {batch_size} (records in log order; approximate, workers interleave)"
    return Attribution(method, full if rest else None, rest)


def attribute_eval_rounds(
    rollouts: Rollouts,
    eval_size: int | None,
    interval: int | None,
    *,
    base_model: bool = True,
    rollouts_per_example: int | None = None,
) -> Attribution:
    """Set ``rollouts.step`` to the checkpoint step of each record's eval round (in place).

    With ``num_examples = -1`` (the whole eval set) the round size is not in the config; it is
    then the number of distinct questions x ``rollouts_per_example``, when identity is known.
    """
    if eval_size is None and rollouts_per_example and rollouts.has_identity:
        eval_size = int(np.unique(rollouts.question).size) * rollouts_per_example
    if eval_size is None or interval is None:
        rollouts.step[:] = 0
        return Attribution("all eval records pooled as one round (no --eval-size/--eval-interval)")
    n = len(rollouts)
    rounds, rest = divmod(n, eval_size)
    if rest:
        raise AnalysisInputError(
            f"{n} eval records is not a multiple of the eval round size {eval_size} "
            f"({rounds} rounds + {rest} records): check --eval-size (num_examples x rollouts)"
        )
    offset = 0 if base_model else 1
    rollouts.step[:] = (rollouts.index // eval_size + offset) * interval
    return Attribution(f"eval round = index // {eval_size}, step = round x {interval}")


def read_orchestrator_rewards(path: str | os.PathLike[str]) -> dict[int, float]:
    """Per-step mean reward from prime-rl's orchestrator stdout or the reference run's TSV."""
    source = Path(path)
    try:
        text = source.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError as exc:
        raise AnalysisInputError(f"{source}: no such orchestrator log") from exc
    first = text.split("\n", 1)[0]
    rewards: dict[int, float] = {}
    if "\t" in first and {"step", "reward"} <= set(first.strip().split("\t")):
        for row in csv.DictReader(text.splitlines(), delimiter="\t"):
            rewards[int(row["step"])] = float(row["reward"])
    else:
        for match in _STEP_LINE.finditer(_ANSI.sub("", text)):
            rewards[int(match.group(1))] = float(match.group(2))  # a resumed run repeats: last wins
    if not rewards:
        raise AnalysisInputError(
            f"{source}: no per-step rewards found (expected prime-rl's 'SUCCESS Step N | ... | "
            "Reward: x |' lines, or a TSV with 'step' and 'reward' columns)"
        )
    return rewards


def group_purity(rollouts: Rollouts, rollouts_per_example: int | None) -> tuple[int, int] | None:
    """(groups of the wrong size, all groups) over (step, question); None without identity."""
    if rollouts_per_example is None or not rollouts.has_identity or not len(rollouts):
        return None
    keys = rollouts.step * (int(rollouts.question.max()) + 1) + rollouts.question
    _, counts = np.unique(keys, return_counts=True)
    return int(np.sum(counts != rollouts_per_example)), int(counts.size)


def step_groups(steps: NDArray[np.int64], group_size: int) -> list[list[int]]:
    """Consecutive present steps, ``group_size`` per group (one reliability diagram each)."""
    present = sorted({int(s) for s in steps})
    return [present[i : i + group_size] for i in range(0, len(present), group_size)]
