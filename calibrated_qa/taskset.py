"""The v1 adapter: calibrated-qa as a verifiers v1 taskset, for today's prime-rl.

prime-rl's main branch (validated at 559b447) no longer calls ``load_environment``: it loads a
verifiers v1 *taskset* by id (``verifiers/v1/utils/loaders.py``, ``taskset_class``: the id
``calibrated-qa`` imports ``calibrated_qa`` and takes the one ``Taskset`` subclass its ``__all__``
names, and the one ``Env`` subclass if it names one). This module is that taskset, a second thin
adapter beside the classic ``environment.py``: the same rows (``data.build_split``), prompt,
parser and score (``reward.score_completion``) and the same generation log (``records``).

What differs from the classic adapter, and why:

- The config is two pydantic tables instead of keyword arguments: ``[...env.taskset]`` holds the
  dataset settings (the names of ``load_environment``'s arguments), ``[...env.taskset.task]``
  the scoring settings (``max_tokens``, ``length_unit``, ``log_dir``). prime-rl's env server
  rebuilds each task from its data and this task config, so scoring reads only those two.
- A held-out evaluation is its own taskset (prime-rl's ``[[orchestrator.eval.source]]``) with
  ``dataset_split = "validation"``; its records go to the eval log (``log_split``).
- ``brier`` and ``p_yes`` are left out of an unparseable rollout's metrics instead of being 0,
  so prime-rl's per-step metric means are over parseable rollouts (v1 fails a trace whose metric
  is ``None``, so the key is omitted, not set to ``None``).
- The log is written by ``GenerationLogEnv.finalize``, the v1 hook that runs after scoring.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Iterator
from typing import Literal

import verifiers.v1 as vf
from pydantic import Field, field_validator

from calibrated_qa.data import DEFAULT_DATASET, DEFAULT_SEED, build_split
from calibrated_qa.prompt import DEFAULT_MAX_PASSAGE_CHARS
from calibrated_qa.records import LOG_DIR_ENV_VAR, GenerationLog, Split, make_record
from calibrated_qa.reward import (
    DEFAULT_MAX_TOKENS,
    LengthUnit,
    RolloutScore,
    check_sampler_max_tokens,
    score_completion,
)

__all__ = [
    "CalibratedQAData",
    "CalibratedQATask",
    "CalibratedQATaskConfig",
    "CalibratedQATaskset",
    "CalibratedQATasksetConfig",
    "GenerationLogEnv",
    "score_trace",
]


class CalibratedQATaskConfig(vf.TaskConfig):
    """``[...env.taskset.task]``: what scoring needs besides the task's own data."""

    max_tokens: int = Field(DEFAULT_MAX_TOKENS, gt=0)
    """M of the length penalty; must equal the sampler's ``max_completion_tokens``."""
    length_unit: LengthUnit = "chars"
    """``"chars"`` (characters / 4, as the reference run) or ``"tokens"`` (exact)."""
    log_dir: str | None = None
    """Where ``generations.jsonl`` goes; default ``$CALIBRATED_QA_LOG_DIR``, else no log."""


class CalibratedQATasksetConfig(vf.TasksetConfig):
    """``[...env.taskset]``: which BoolQ rows, named as ``load_environment``'s arguments."""

    dataset_name: str = DEFAULT_DATASET
    """Hub id, or a local folder laid out like the hub's (``calibrated_qa.data``)."""
    dataset_split: str = "train"
    """Split to draw from, balanced 50/50 (``validation`` for the held-out eval source)."""
    include_passage: bool = True
    """False gives the recipe's "no passage" variant."""
    max_passage_chars: int = Field(DEFAULT_MAX_PASSAGE_CHARS, gt=0)
    seed: int = DEFAULT_SEED
    """Seed of the shuffles in balancing."""
    num_examples: int = Field(-1, ge=-1)
    """First N balanced rows, -1 for all."""
    log_split: Split | None = None
    """Log file of this taskset's rollouts; default ``train`` for the ``train`` split, else
    ``eval``, so held-out rollouts never mix into the training log."""
    task: CalibratedQATaskConfig = CalibratedQATaskConfig()

    @field_validator("num_examples")
    @classmethod
    def _all_or_some(cls, value: int) -> int:
        if value == 0:
            raise ValueError("num_examples must be -1 (all) or a positive count, got 0")
        return value


class CalibratedQAData(vf.TaskData):
    """One BoolQ question as a task: what the env server ships to score and log it."""

    question: str
    """The raw BoolQ question, as in the dataset (the log's ``question``)."""
    answer: Literal["true", "false"]
    """The ground truth."""
    split: Split
    """Which log the rollout's record goes to."""


def completion_text(trace: vf.Trace) -> str:
    """Every sampled assistant message's content, concatenated, unstripped.

    Not ``trace.last_reply``: it strips whitespace, which would change the ``chars`` length.
    """
    return "".join(message.content or "" for message in trace.assistant_messages)


def completion_tokens(trace: vf.Trace) -> int | None:
    """Completion tokens the server reported, summed over the rollout's model calls."""
    usage = trace.usage
    return None if usage is None else usage.completion_tokens


def stopped_at_max_tokens(trace: vf.Trace) -> bool:
    """Generation hit ``max_tokens`` (finish reason "length") in some model call."""
    return any(call.finish_reason == "length" for call in trace.calls)


def score_trace(
    data: CalibratedQAData, config: CalibratedQATaskConfig, trace: vf.Trace
) -> RolloutScore:
    """The rollout's score: ``score_completion`` of its text, label and token count.

    Refuses a trace sampled with a ``max_tokens`` other than ``config.max_tokens`` (prime-rl
    sends ``max_completion_tokens``; verifiers' ``SamplingConfig`` reads it as ``max_tokens``).
    """
    for call in trace.calls:
        check_sampler_max_tokens(
            None if call.sampling is None else call.sampling.max_tokens,
            config.max_tokens,
            settings="[orchestrator.*.sampling].max_completion_tokens and "
            "[orchestrator.*.source.env.taskset.task].max_tokens",
        )
    return score_completion(
        completion_text(trace),
        data.answer == "true",
        max_tokens=config.max_tokens,
        length_unit=config.length_unit,
        completion_tokens=completion_tokens(trace),
    )


class CalibratedQATask(vf.Task[CalibratedQAData, vf.State, CalibratedQATaskConfig]):
    """Reward = calibration term + length penalty (weight 1 each); metrics for the rest."""

    @vf.reward(weight=1.0)
    async def calibrated_qa(self, trace: vf.Trace) -> dict[str, float]:
        score = score_trace(self.data, self.config, trace)
        return {
            "calibration_reward": score.calibration_reward,
            "length_penalty": score.length_penalty,
        }

    @vf.metric
    async def calibration(self, trace: vf.Trace) -> dict[str, float]:
        """Ingredients of the reward; ``brier`` and ``p_yes`` only where they exist."""
        score = score_trace(self.data, self.config, trace)
        metrics = {
            "parseable": float(score.parseable),
            "correct": float(score.correct),
            "length": score.length,
        }
        if score.p_yes is not None and score.brier is not None:
            metrics |= {"p_yes": score.p_yes, "brier": score.brier}
        return metrics


class CalibratedQATaskset(vf.Taskset[CalibratedQATask, CalibratedQATasksetConfig]):
    """Balanced BoolQ questions, one task each, in the classic adapter's order."""

    @property
    def log_split(self) -> Split:
        config = self.config
        if config.log_split is not None:
            return config.log_split
        return "train" if config.dataset_split == "train" else "eval"

    def load(self) -> Iterator[CalibratedQATask]:
        config = self.config
        rows = build_split(
            dataset_name=config.dataset_name,
            split=config.dataset_split,
            log_split=self.log_split,
            num_examples=config.num_examples,
            seed=config.seed,
            include_passage=config.include_passage,
            max_passage_chars=config.max_passage_chars,
        )
        for idx, row in enumerate(rows):
            # idx is set here too: verifiers 0.3.1.dev62 does not set it, 0.4.0 sets the same.
            data = CalibratedQAData(
                idx=idx,
                prompt=row["prompt"],
                question=row["info"]["question"],
                answer=row["answer"],
                split=row["info"]["split"],
            )
            yield CalibratedQATask(data, config.task)


class GenerationLogEnv(vf.SingleAgentEnv):
    """The single-agent env, plus the generation log written after each episode is scored.

    ``finalize`` runs in the env-server worker that ran the episode, after every trace was
    scored (``verifiers/v1/env.py``, ``Env.run_episode``). Only traces that were scored without
    error are logged (prime-rl drops the others), and logging never fails the episode.
    """

    def __init__(self, config: vf.SingleAgentEnvConfig) -> None:
        super().__init__(config)
        self._logs: dict[str, GenerationLog] = {}

    def _log(self, config: CalibratedQATaskConfig) -> GenerationLog | None:
        log_dir = config.log_dir or os.environ.get(LOG_DIR_ENV_VAR) or None
        if log_dir is None:
            return None
        if log_dir not in self._logs:
            self._logs[log_dir] = GenerationLog(log_dir)
        return self._logs[log_dir]

    async def finalize(self, task: vf.Task, episode: vf.Episode) -> None:
        if not isinstance(task, CalibratedQATask):
            return
        try:
            log = self._log(task.config)
            if log is None:
                return
            records = [
                make_record(
                    score=score_trace(task.data, task.config, trace),
                    example_id=int(task.data.idx),  # type: ignore[arg-type]
                    split=task.data.split,
                    question=task.data.question,
                    label=task.data.answer == "true",
                    completion=completion_text(trace),
                    completion_tokens=completion_tokens(trace),
                    truncated=stopped_at_max_tokens(trace),
                    max_tokens=task.config.max_tokens,
                )
                for trace in episode.traces
                if trace.ok
            ]
        except Exception as exc:  # a log problem must not fail the episode
            print(f"[calibrated_qa] could not build a log record: {exc!r}", file=sys.stderr)
            return
        for record in records:
            # flock + write off the event loop: the worker's other episodes go on meanwhile.
            await asyncio.to_thread(log.append, record)
