"""``load_environment``: wires data, prompt, parser, reward and log into a ``vf.SingleTurnEnv``.

This is the only module that touches verifiers types. Everything it computes comes from the pure
modules beside it (``data``, ``prompt``, ``parsing``, ``reward``, ``records``).

prime-rl calls ``load_environment(**args)`` once in the orchestrator and once in each env-server
worker (4 in the reference run); the datasets are therefore built lazily, only by the process
that samples from them, and BoolQ comes from the local Hugging Face cache after the first download.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from typing import Any

import verifiers as vf

from calibrated_qa.data import DEFAULT_DATASET, DEFAULT_SEED, build_split
from calibrated_qa.parsing import parse_answer
from calibrated_qa.prompt import DEFAULT_MAX_PASSAGE_CHARS
from calibrated_qa.records import LOG_DIR_ENV_VAR, GenerationLog, make_record
from calibrated_qa.reward import (
    DEFAULT_MAX_TOKENS,
    LENGTH_UNITS,
    LengthUnit,
    RolloutScore,
    check_sampler_max_tokens,
    score_completion,
)

_SCORE_KEY = "calibrated_qa_score"


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts
        return "".join(
            part.get("text", "") if isinstance(part, dict) else getattr(part, "text", "") or ""
            for part in content
        )
    return ""


def completion_text(completion: Any) -> str:
    """The assistant's full text: every assistant message's content, concatenated."""
    if isinstance(completion, str):
        return completion
    return "".join(
        _text(message.get("content"))
        for message in completion or []
        if message.get("role") == "assistant"
    )


def completion_token_count(state: Any) -> int | None:
    """Exact completion tokens of a rollout: the server's usage count, else the token ids.

    Usage comes first: prime-rl's token client cuts ``completion_ids`` to what fits in
    ``max_seq_len`` (and empties them for an overlong prompt), while usage counts what the model
    actually generated, which is what the length penalty is about.
    """
    steps = state.get("trajectory") or []
    if not steps:
        return None
    total = 0
    for step in steps:
        usage = getattr(step.get("response"), "usage", None)
        tokens = step.get("tokens")
        if usage is not None and usage.completion_tokens is not None:
            total += usage.completion_tokens
        elif tokens and tokens.get("completion_ids") is not None:
            total += len(tokens["completion_ids"])
        else:
            return None
    return total


def check_sampling_max_tokens(sampling_args: Any, max_tokens: int) -> None:
    """Refuse to sample with a ``max_tokens`` other than the length penalty's ``M``."""
    check_sampler_max_tokens(
        (sampling_args or {}).get("max_tokens"),
        max_tokens,
        settings="[orchestrator.sampling].max_tokens and the env's args.max_tokens",
    )


def stopped_at_max_tokens(state: Any) -> bool:
    """Generation hit ``max_tokens`` (finish reason "length").

    Not verifiers' ``state["is_truncated"]``, which is also set when the token ids are cut to fit
    ``max_seq_len`` or the prompt is too long: the log's ``truncated`` is about the sampler.
    """
    return any(
        getattr(getattr(step.get("response"), "message", None), "finish_reason", None) == "length"
        for step in state.get("trajectory") or []
    )


class CalibrationParser(vf.Parser):
    """Exposes the project's parser to verifiers (``parse_answer`` returns the normalised line)."""

    def parse_answer(self, completion: vf.Messages) -> str | None:  # type: ignore[override]
        parsed = parse_answer(completion_text(completion))
        return None if parsed is None else f"{parsed.answer} with {parsed.pct}% probability"


class CalibrationRubric(vf.Rubric):
    """Reward = calibration term + length penalty; zero-weight metrics for every ingredient.

    The rollout is scored once (cached in the state) and every function reads that score, so the
    reward and its logged ingredients cannot disagree. prime-rl logs each metric's mean over all
    rollouts of a step. ``brier`` and ``p_yes`` exist only for parseable rollouts, so their metrics
    are 0 for an unparseable one: divide their step mean by the mean of ``parseable`` to get the
    mean over parseable rollouts, the definition the analysis uses (nothing is imputed).
    """

    def __init__(
        self,
        *,
        max_tokens: int,
        length_unit: LengthUnit,
        log: GenerationLog | None,
        parser: vf.Parser,
    ) -> None:
        self.max_tokens = max_tokens
        self.length_unit = length_unit
        self.log = log
        super().__init__(
            funcs=[
                self.calibration_reward,
                self.length_penalty,
                self.brier,
                self.p_yes,
                self.parseable,
                self.correct,
                self.length,
            ],
            weights=[1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0],
            parser=parser,
        )

    def score(self, state: vf.State) -> RolloutScore:
        """The rollout's score, computed on first use and cached in the state."""
        cached = state.get(_SCORE_KEY)
        if cached is None:
            cached = score_completion(
                completion_text(state.get("completion")),
                state["answer"] == "true",
                max_tokens=self.max_tokens,
                length_unit=self.length_unit,
                completion_tokens=completion_token_count(state),
            )
            state[_SCORE_KEY] = cached
        return cached

    def calibration_reward(self, state: vf.State) -> float:
        return self.score(state).calibration_reward

    def length_penalty(self, state: vf.State) -> float:
        return self.score(state).length_penalty

    def brier(self, state: vf.State) -> float:
        brier = self.score(state).brier
        return 0.0 if brier is None else brier

    def p_yes(self, state: vf.State) -> float:
        p_yes = self.score(state).p_yes
        return 0.0 if p_yes is None else p_yes

    def parseable(self, state: vf.State) -> float:
        return float(self.score(state).parseable)

    def correct(self, state: vf.State) -> float:
        return float(self.score(state).correct)

    def length(self, state: vf.State) -> float:
        return self.score(state).length

    @vf.cleanup
    async def write_generation_record(self, state: vf.State) -> None:
        """Append a scored rollout to the generation log; never raises.

        Only rollouts prime-rl trains on are logged: not a failed attempt (``state["error"]``,
        which prime-rl re-runs), not an overlong prompt, not an unscored rollout.
        """
        logged = _SCORE_KEY in state and state.get("error") is None
        if self.log is None or not logged or state.get("prompt_too_long"):
            return
        try:
            info = state.get("info") or {}
            record = make_record(
                score=self.score(state),
                example_id=int(state["example_id"]),
                split=info["split"],
                question=info["question"],
                label=state["answer"] == "true",
                completion=completion_text(state.get("completion")),
                completion_tokens=completion_token_count(state),
                truncated=stopped_at_max_tokens(state),
                max_tokens=self.max_tokens,
            )
        except Exception as exc:  # a log problem must not fail the rollout
            print(f"[calibrated_qa] could not build a log record: {exc!r}", file=sys.stderr)
            return
        # flock + write off the event loop: a worker's other rollouts go on meanwhile.
        await asyncio.to_thread(self.log.append, record)


class CalibratedQAEnv(vf.SingleTurnEnv):
    """A single-turn environment that refuses a sampler ``max_tokens`` other than its own M."""

    def __init__(self, *, max_tokens: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.max_tokens = max_tokens

    async def rollout(
        self,
        input: vf.RolloutInput,  # verifiers' parameter name
        client: vf.Client,
        model: str,
        sampling_args: vf.SamplingArgs | None = None,
    ) -> vf.State:
        check_sampling_max_tokens(sampling_args, self.max_tokens)
        return await super().rollout(input, client, model, sampling_args)


def _check_args(
    max_tokens: int, length_unit: str, max_passage_chars: int, num_train: int, num_eval: int
) -> None:
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens <= 0:
        raise ValueError(
            f"max_tokens must be a positive integer (the sampler's max_tokens), got {max_tokens!r}"
        )
    if length_unit not in LENGTH_UNITS:
        raise ValueError(f"length_unit must be one of {LENGTH_UNITS}, got {length_unit!r}")
    if max_passage_chars <= 0:
        raise ValueError(f"max_passage_chars must be positive, got {max_passage_chars!r}")
    for name, value in (("num_train_examples", num_train), ("num_eval_examples", num_eval)):
        if value < -1 or value == 0:
            raise ValueError(f"{name} must be -1 (all) or a positive count, got {value!r}")


def load_environment(
    dataset_name: str = DEFAULT_DATASET,
    dataset_split: str = "train",
    eval_split: str = "validation",
    include_passage: bool = True,
    max_passage_chars: int = DEFAULT_MAX_PASSAGE_CHARS,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    length_unit: LengthUnit = "chars",
    seed: int = DEFAULT_SEED,
    log_dir: str | None = None,
    num_train_examples: int = -1,
    num_eval_examples: int = -1,
) -> vf.Environment:
    """The calibrated-qa environment. Defaults reproduce the reference recipe.

    Args:
        dataset_name: hub id, or a local folder laid out like the hub's (``calibrated_qa.data``).
        dataset_split: split to train on, balanced 50/50.
        eval_split: held-out split for ``eval_dataset``, balanced the same way.
        include_passage: False gives the recipe's "no passage" variant.
        max_passage_chars: passages are cut to this many characters plus ``...``.
        max_tokens: ``M`` of the length penalty; must equal the sampler's ``max_tokens``.
        length_unit: ``"chars"`` (characters / 4, as the reference run) or ``"tokens"`` (exact).
        seed: seed of the shuffles in balancing.
        log_dir: where ``generations.jsonl`` goes; default ``$CALIBRATED_QA_LOG_DIR``, else no log.
        num_train_examples / num_eval_examples: first N balanced rows, -1 for all.
    Unknown arguments raise ``TypeError`` (Python's own check on this signature).
    """
    _check_args(max_tokens, length_unit, max_passage_chars, num_train_examples, num_eval_examples)
    if dataset_split == eval_split:
        logging.getLogger(__name__).warning(
            "dataset_split and eval_split are both %r: evaluation is not on held-out questions",
            eval_split,
        )
    log_dir = log_dir or os.environ.get(LOG_DIR_ENV_VAR) or None
    common = dict(
        dataset_name=dataset_name,
        seed=seed,
        include_passage=include_passage,
        max_passage_chars=max_passage_chars,
    )

    def train_dataset():
        return build_split(
            split=dataset_split, log_split="train", num_examples=num_train_examples, **common
        )

    def eval_dataset():
        return build_split(
            split=eval_split, log_split="eval", num_examples=num_eval_examples, **common
        )

    parser = CalibrationParser()
    rubric = CalibrationRubric(
        max_tokens=max_tokens,
        length_unit=length_unit,
        log=GenerationLog(log_dir) if log_dir else None,
        parser=parser,
    )
    return CalibratedQAEnv(
        max_tokens=max_tokens,
        dataset=train_dataset,
        eval_dataset=eval_dataset,
        parser=parser,
        rubric=rubric,
    )
