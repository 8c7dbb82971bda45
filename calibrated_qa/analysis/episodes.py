"""Exact steps of generation-log records from prime-rl 559b447's per-step episode files.

Written by ``monitors/file.py``, ``FileMonitor.log_episodes``; a record's step is looked up by
``(split, example_id, completion)``. Stdlib only (the v1 tests import it without numpy).
"""

from __future__ import annotations

import json
import re
from collections import defaultdict, deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

Split = Literal["train", "eval"]
_STEP_DIR = re.compile(r"^step_(\d+)$")


class EpisodeFileError(ValueError):
    """An episode file line that cannot be read; the message names the file, line and field."""


@dataclass(frozen=True)
class EpisodeRollout:
    """One trace of one episode, as the file monitor wrote it at ``step``."""

    step: int
    split: Split
    example_id: int
    completion: str  # every sampled assistant message's content, concatenated
    reward: float | None  # the weighted sum of its rewards; None when the trace was not scored
    ok: bool  # scored without error: the ones calibrated-qa logs


def episode_files(run_dir: Path) -> list[tuple[int, Split, Path]]:
    """``(step, split, path)`` of every episode file (all traces, not just effective ones)."""
    found = []
    rollouts = Path(run_dir) / "rollouts"
    for step_dir in rollouts.iterdir() if rollouts.is_dir() else []:
        match = _STEP_DIR.match(step_dir.name)
        if match is None:
            continue
        for split in ("train", "eval"):
            path = step_dir / split / "all" / "traces.jsonl"
            if path.is_file():
                found.append((int(match.group(1)), split, path))
    return sorted(found)


def _rollouts_of(record: Any, step: int, split: Split, where: str) -> list[EpisodeRollout]:
    def field(obj: Any, name: str, kind: type, path: str) -> Any:
        value = obj.get(name) if isinstance(obj, dict) else None
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise EpisodeFileError(
                f"{where}: field {path!r} is missing or not of type {kind.__name__}"
            )
        return value

    data = field(field(record, "task", dict, "task"), "data", dict, "task.data")
    example_id = field(data, "idx", int, "task.data.idx")
    rollouts = []
    for i, trace in enumerate(field(record, "traces", list, "traces")):
        nodes = field(trace, "nodes", list, f"traces[{i}].nodes")
        messages = [node.get("message") or {} for node in nodes if node.get("sampled")]
        completion = "".join(
            m.get("content") or "" for m in messages if m.get("role") == "assistant"
        )
        rewards = trace.get("rewards") or {}
        scored = rewards and all(isinstance(r, dict) for r in rewards.values())
        reward = (
            sum(r["score"] * r.get("weight", 1.0) for r in rewards.values()) if scored else None
        )
        rollouts.append(
            EpisodeRollout(step, split, example_id, completion, reward, trace.get("ok") is True)
        )
    return rollouts


def read_episode_rollouts(run_dir: Path) -> list[EpisodeRollout]:
    """Every trace in the run's episode files, in step order, then file order."""
    rollouts: list[EpisodeRollout] = []
    for step, split, path in episode_files(run_dir):
        text = path.read_text(encoding="utf-8")
        lines = text.split("\n")
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                if number == len(lines):  # the torn last line
                    continue
                raise EpisodeFileError(f"{path}:{number}: not JSON ({exc.msg})") from None
            rollouts.extend(_rollouts_of(record, step, split, f"{path}:{number}"))
    return rollouts


@dataclass(frozen=True)
class StepMatch:
    """Steps of a sequence of generation-log records, and what could not be matched."""

    steps: list[int | None]  # per record; None where no episode holds it
    unmatched: int
    ambiguous: int  # records whose key appears at more than one step (assigned in order)


def steps_of_records(
    records: Iterable[Mapping[str, Any]], rollouts: Sequence[EpisodeRollout]
) -> StepMatch:
    """The exact step of each generation-log record (schema 1), looked up in ``rollouts``;
    identical keys are assigned in order (records and episodes are written as rollouts finish)."""
    by_key: dict[tuple[str, int, str], deque[int]] = defaultdict(deque)
    for rollout in rollouts:
        if rollout.ok:
            by_key[(rollout.split, rollout.example_id, rollout.completion)].append(rollout.step)
    ambiguous_keys = {key for key, steps in by_key.items() if len(set(steps)) > 1}
    steps: list[int | None] = []
    unmatched = ambiguous = 0
    for record in records:
        key = (record["split"], record["example_id"], record["completion"])
        queue = by_key.get(key)
        if not queue:
            steps.append(None)
            unmatched += 1
            continue
        ambiguous += key in ambiguous_keys
        steps.append(queue.popleft())
    return StepMatch(steps, unmatched, ambiguous)
