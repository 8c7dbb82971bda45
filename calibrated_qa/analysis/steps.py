"""Which training step (or eval round) each rollout belongs to, and how sure we can be.

The environment cannot see the step: ``index // batch_size`` in log order is approximate (workers
interleave appends), hence the cross-checks; docs/analysis.md has the rules.
"""

from __future__ import annotations

import csv
import os
import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from calibrated_qa.analysis.episodes import (
    EpisodeFileError,
    read_episode_rollouts,
    steps_of_records,
)
from calibrated_qa.analysis.metrics import question_groups
from calibrated_qa.analysis.readers import AnalysisInputError, Rollouts, records
from calibrated_qa.run_config import RunConfigError, eval_checkpoints, read_run_config

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# prime-rl 6cae5cc, orchestrator.py: "Step {n} | Time: {t:.2f}s | Reward: {r:.4f} |..."; 559b447,
# log_train_batch: "Step {n} | {time} | Reward {r:.4f} |...". Eval, 6cae5cc eval_utils.py:
# "Evaluated {env} in {t:.2f}s (Avg@{k}={r:.4f}, ..."; 559b447 finalize_eval_batch:
# "Evaluated {env} (Step {n}) | Policy v{k} | {time} | Reward {r:.4f} |...".
_NUMBER = r"(-?[0-9.]+(?:e-?\d+)?)"
_EVAL_LINE = re.compile(
    rf"\bEvaluated (\S+) (?:in [0-9.]+s \(Avg@\d+=|\(Step \d+\) \|[^|]*\|[^|]*\| Reward ){_NUMBER}"
)
_STEP_LINE = re.compile(rf"\bSUCCESS\s+Step (\d+) \|[^|]*\| Reward:? {_NUMBER} \|")
EXACT = "exact: each record's step from prime-rl's episode files (--episodes)"
OWN_STEPS = "the CSV's own step column (index // batch size in the original run)"


@dataclass(frozen=True)
class RunShape:
    """The numbers of a prime-rl config the analysis needs (None where not given)."""

    batch_size: int | None = None  # rollouts per training step
    rollouts_per_example: int | None = None
    eval_size: int | None = None  # records per eval round = num_examples x rollouts_per_example
    eval_rollouts_per_example: int | None = None
    eval_interval: int | None = None  # None iff no [orchestrator.eval] (else default 100)
    eval_base_model: bool = True
    max_steps: int | None = None  # training steps of the run (top-level max_steps)
    max_steps_source: str = "--max-steps"  # where max_steps came from, for the report


def read_run_shape(path: str | os.PathLike[str]) -> RunShape:
    """The run's shape from a prime-rl TOML config (through ``run_config``, the one reader)."""
    try:
        config = read_run_config(path)
    except RunConfigError as exc:
        raise AnalysisInputError(str(exc)) from None
    schedule = config.eval
    return RunShape(
        max_steps=config.max_steps,
        max_steps_source=f"the config's top-level max_steps ({config.path})",
        batch_size=config.batch_size,
        rollouts_per_example=config.rollouts_per_example,
        eval_size=schedule.round_size if schedule else None,
        eval_rollouts_per_example=schedule.rollouts_per_example if schedule else None,
        eval_interval=schedule.interval if schedule else None,
        eval_base_model=schedule.base_model if schedule else True,
    )


@dataclass(frozen=True)
class Attribution:
    """How the steps (or eval rounds) were found, and what was left out or is doubtful."""

    method: str  # one sentence, printed in summary.md
    partial_step: int | None = None  # the last step, when it holds fewer than a full batch
    partial_count: int = 0
    surplus: int = 0  # records of steps >= max_steps, left out
    surplus_note: str | None = None  # the loud sentence about them
    round_names: dict[int, str] = field(default_factory=dict)  # eval: step -> round (or pooled: {})
    final_step: int | None = None  # eval: the step label of the final round, when identified
    warnings: list[str] = field(default_factory=list)


def episode_steps(
    rollouts: Rollouts, files: Sequence[str], run_dir: str | os.PathLike[str]
) -> tuple[Rollouts, list[str]]:
    """The rollouts with their exact step from prime-rl 559b447's episode files in ``run_dir``.
    Matching needs the completions, which the first read drops (memory stays flat in completion
    length): the logs are read a second time, with ``--episodes`` only."""
    try:
        episodes = read_episode_rollouts(Path(run_dir))
    except EpisodeFileError as exc:
        raise AnalysisInputError(str(exc)) from None
    if not episodes:
        raise AnalysisInputError(
            f"{run_dir}: no episode files (rollouts/step_N/train|eval/all/traces.jsonl)"
        )
    if rollouts.fmt != "project":
        raise AnalysisInputError("--episodes needs this project's log (it matches completions)")
    wanted = set(zip(rollouts.file.tolist(), rollouts.line.tolist(), strict=True))
    logged = (
        record
        for file_no, path in enumerate(files)
        for number, record in records(path, skip_bad_lines=True)
        if (file_no, number) in wanted
    )
    match = steps_of_records(logged, episodes)
    rollouts.step[:] = [-1 if s is None else s for s in match.steps]
    kept = rollouts.subset(rollouts.step >= 0)
    if not len(kept):
        raise AnalysisInputError(f"no record of the log matches an episode in {run_dir}")
    warnings = []
    if match.unmatched:
        warnings.append(
            f"{match.unmatched} records match no episode in {run_dir} (left out: rollouts "
            "that finished after the run's last step, or another run's records)"
        )
    if match.ambiguous:
        warnings.append(f"{match.ambiguous} records had identical twins at other steps")
    return kept, warnings


def has_own_steps(rollouts: Rollouts) -> bool:
    """The records carry their own step (the original CSV, or from episode files): used as is."""
    return bool(len(rollouts)) and bool(np.all(rollouts.step >= 0))


def truncate_to_max_steps(rollouts: Rollouts, shape: RunShape) -> tuple[Rollouts, int, str | None]:
    """The records of the first ``max_steps`` steps, the surplus count, and a sentence about it."""
    own, batch_size, max_steps = has_own_steps(rollouts), shape.batch_size, shape.max_steps
    if max_steps is None or not (own or batch_size):
        return rollouts, 0, None  # attribute_steps reports the missing batch size
    keep = (rollouts.step if own else rollouts.index // batch_size) < max_steps
    surplus = int(np.sum(~keep))
    if not surplus:
        return rollouts, 0, None
    what = (
        f"rows of steps >= {max_steps}"
        if own
        else f"records after the first {max_steps} x {batch_size} = {max_steps * batch_size}"
    )
    note = (
        f"{surplus} training {what} left out (max_steps={max_steps} from "
        f"{shape.max_steps_source}). In a complete run these are rollouts still in flight when "
        "the last step completed (prime-rl keeps up to max_inflight_rollouts, = batch_size by "
        "default, in flight; those finishing during the final eval are logged too): they "
        "belong to no trained step"
    )
    if not own and surplus > batch_size:
        note += f"; more than one batch ({batch_size}): check max_steps and the batch size"
    return rollouts.subset(keep), surplus, note


def attribute_steps(
    rollouts: Rollouts, batch_size: int | None, *, allow_partial: bool = False
) -> Attribution:
    """Set ``rollouts.step`` to ``index // batch_size`` (in place), unless the records carry one."""
    if has_own_steps(rollouts):
        steps, counts = np.unique(rollouts.step, return_counts=True)
        wrong = [int(s) for s, c in zip(steps, counts, strict=True) if c != batch_size]
        if batch_size is not None and wrong and not allow_partial:
            raise AnalysisInputError(
                f"steps {wrong} of the CSV do not hold batch_size={batch_size} rows; "
                "check --batch-size, or pass --allow-partial-step"
            )
        return Attribution(OWN_STEPS)
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
            "--allow-partial-step to analyse the remainder as a flagged partial last step (a "
            "complete run logs extra in-flight rollouts after its last step: pass --config "
            "with max_steps, or --max-steps, to leave them out)"
        )
    rollouts.step[:] = rollouts.index // batch_size
    method = f"index // {batch_size} (records in log order; approximate, workers interleave)"
    return Attribution(method, full if rest else None, rest)


def _round_starts(rollouts: Rollouts, per_question: int) -> list[int]:
    """Where each eval round starts: a question seen ``per_question`` times opens the next round;
    with record times, a boundary moves back to the largest time gap (a short round's fix)."""
    question, time = rollouts.question, rollouts.time
    starts, seen = [0], defaultdict(int)
    for i, q in enumerate(question.tolist()):
        if seen[q] == per_question:
            starts.append(i)
            seen.clear()
        seen[q] += 1
    if len(starts) == 1 or not np.all(time > 0):
        return starts
    ends = [*starts[1:], len(question)]
    for k in range(1, len(starts)):
        b = starts[k]
        following = Counter(question[b : ends[k]].tolist())
        j = b  # earliest start keeping the next round within per_question per question
        while j - 1 > starts[k - 1] and following[int(question[j - 1])] < per_question:
            j -= 1
            following[int(question[j])] += 1
        gaps = time[j : b + 1] - time[j - 1 : b]
        starts[k] = b - int(np.argmax(gaps[::-1]))  # on a tie, identity's boundary stays
    return starts


def attribute_eval_rounds(
    rollouts: Rollouts, shape: RunShape, *, strict: bool = False
) -> Attribution:
    """Set ``rollouts.step`` to the checkpoint each record's eval round evaluates (in place).

    Rounds by question identity when the eval's rollouts per example are known, else by
    position; a short round is a warning (an error when ``strict``), a larger one an error.
    """
    interval, max_steps = shape.eval_interval, shape.max_steps
    per_question = shape.eval_rollouts_per_example
    n = len(rollouts)
    by_identity = bool(per_question) and rollouts.has_identity
    expected = shape.eval_size
    if by_identity and not expected:
        expected = int(np.unique(rollouts.question).size) * per_question  # type: ignore[operator]
    if expected is None or interval is None:
        rollouts.step[:] = 0
        return Attribution("all eval records pooled as one round (no --eval-size/--eval-interval)")
    if by_identity:
        starts = _round_starts(rollouts, per_question)  # type: ignore[arg-type]
        how = f"by question identity (each question at most {per_question}x per round)"
    else:
        rounds, rest = divmod(n, expected)
        if rest:
            raise AnalysisInputError(
                f"{n} eval records is not a multiple of the eval round size {expected} "
                f"({rounds} rounds + {rest} records): check --eval-size (num_examples x "
                "rollouts), or give --eval-rollouts-per-example to find rounds by question"
            )
        starts, how = list(range(0, n, expected)), f"by position ({expected} records each)"
    sizes = np.diff([*starts, n]).tolist()
    online, final = eval_checkpoints(
        interval, base_model=shape.eval_base_model, max_steps=max_steps, rounds=len(starts)
    )
    labels = online + ([final] if final is not None else [])
    if len(starts) > len(labels):
        raise AnalysisInputError(
            f"{len(starts)} eval rounds, but a run of max_steps={max_steps} with interval "
            f"{interval} evaluates only {len(labels)} (checkpoints {online} and final {final}): "
            "a resumed run that repeated rounds, or a wrong max_steps/interval"
        )
    labels = labels[: len(starts)]
    final_step = final if len(starts) > len(online) else None
    names = {c: ("base model (checkpoint 0)" if c == 0 else f"checkpoint {c}") for c in labels}
    if final_step is not None:
        names[final_step] = f"final (checkpoint {final_step})"
    warnings = []
    for label, size in zip(labels, sizes, strict=True):
        if size > expected:
            raise AnalysisInputError(
                f"eval round {names[label]} holds {size} records, more than the {expected} "
                "expected (num_examples x rollouts_per_example): check the eval settings"
            )
        if size < expected:
            warnings.append(
                f"eval round {names[label]} is short: {size} of {expected} records (failed eval "
                "rollouts are not retried: prime-rl runs eval with max_retries=0)"
            )
    if warnings and strict:
        raise AnalysisInputError("; ".join(warnings) + " (--strict-eval)")
    rollouts.step[:] = np.repeat(labels, sizes)
    method = f"eval rounds {how}, labelled by the checkpoint they evaluate: " + ", ".join(
        f"{names[c]} n={size}" for c, size in zip(labels, sizes, strict=True)
    )
    if max_steps is None:
        method += " (without max_steps the final eval round cannot be told apart)"
    elif final_step is None:
        method += f" (no final round: the run stopped before max_steps={max_steps})"
    return Attribution(method, round_names=names, final_step=final_step, warnings=warnings)


def _log_text(source: Path) -> str:
    try:
        return _ANSI.sub("", source.read_text(encoding="utf-8", errors="replace"))
    except FileNotFoundError as exc:
        raise AnalysisInputError(f"{source}: no such orchestrator log") from exc


def read_orchestrator_rewards(path: str | os.PathLike[str]) -> dict[int, float]:
    """Per-step mean reward from prime-rl's orchestrator stdout or the reference run's TSV."""
    text = _log_text(Path(path))
    if {"step", "reward"} <= set(text.split("\n", 1)[0].strip().split("\t")):
        rows = csv.DictReader(text.splitlines(), delimiter="\t")
        rewards = {int(row["step"]): float(row["reward"]) for row in rows}
    else:  # a resumed run repeats a step: the last line wins
        rewards = {int(m.group(1)): float(m.group(2)) for m in _STEP_LINE.finditer(text)}
    if not rewards:
        raise AnalysisInputError(
            f"{path}: no per-step rewards found (expected prime-rl's 'SUCCESS Step N | ... | "
            "Reward: x |' lines, or a TSV with 'step' and 'reward' columns)"
        )
    return rewards


def read_orchestrator_eval_rewards(path: str | os.PathLike[str]) -> list[float]:
    """Mean reward of each eval round, in order, from prime-rl's ``Evaluated ...`` lines."""
    found = [(m.group(1), float(m.group(2))) for m in _EVAL_LINE.finditer(_log_text(Path(path)))]
    names = sorted({name for name, _ in found})
    if len(names) > 1:
        raise AnalysisInputError(
            f"{path}: eval lines of several environments {names}: cannot match them to one log"
        )
    if not found:
        raise AnalysisInputError(
            f"{path}: no eval results found (expected prime-rl's 'Evaluated NAME in Xs "
            "(Avg@k=x, ...' lines); the eval split is cross-checked against those, not against "
            "training-step rewards"
        )
    return [reward for _, reward in found]


def attribute(
    rollouts: Rollouts,
    *,
    split: str,
    shape: RunShape,
    allow_partial: bool = False,
    strict_eval: bool = False,
    episodes: str | None = None,
    files: Sequence[str] = (),
) -> tuple[Rollouts, Attribution]:
    """Steps (train) or eval rounds (eval) for every rollout: the one path of both CLIs and
    ``--compare``. Eval rounds are the records' own steps when they carry them, else prime-rl's
    eval cadence; ``round_names`` names every round ({} when pooled: no round structure)."""
    warnings: list[str] = []
    if episodes is not None:
        rollouts, warnings = episode_steps(rollouts, files, episodes)
    elif split == "eval" and not has_own_steps(rollouts):
        return rollouts, attribute_eval_rounds(rollouts, shape, strict=strict_eval)
    if split == "eval":  # a round is the step it ran at
        method, name = (OWN_STEPS, "step {}") if episodes is None else (EXACT, "eval at step {}")
        names = {int(s): name.format(s) for s in np.unique(rollouts.step)}
        return rollouts, Attribution(method, round_names=names, warnings=warnings)
    rollouts, surplus, note = truncate_to_max_steps(rollouts, shape)
    if episodes is None:
        attribution = attribute_steps(rollouts, shape.batch_size, allow_partial=allow_partial)
    else:  # exact steps: no batch to check
        attribution = Attribution(EXACT, warnings=warnings)
    return rollouts, replace(attribution, surplus=surplus, surplus_note=note)


def group_purity(rollouts: Rollouts, rollouts_per_example: int | None) -> tuple[int, int] | None:
    """(groups of the wrong size, all groups) over (step, question); None without identity."""
    if rollouts_per_example is None or not rollouts.has_identity:
        return None
    counts = np.bincount(question_groups(rollouts)[0])
    return int(np.sum(counts != rollouts_per_example)), int(counts.size)


def step_groups(steps: NDArray[np.int64], group_size: int) -> list[list[int]]:
    """Consecutive present steps, ``group_size`` per group (one reliability diagram each)."""
    present = sorted({int(s) for s in steps})
    return [present[i : i + group_size] for i in range(0, len(present), group_size)]
