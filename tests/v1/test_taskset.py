"""The v1 adapter under the installed verifiers (0.4.0 or 0.3.1.dev62): loading by id, scoring
through verifiers' own ``Task.score``, the generation log from ``GenerationLogEnv.finalize``."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import verifiers.v1 as vf
from verifiers.v1.utils.loaders import (
    environment_class,
    load_taskset,
    resolve_env_config,
    taskset_config_type,
)

from calibrated_qa.data import build_split
from calibrated_qa.records import LOG_DIR_ENV_VAR, LOG_FILE_NAMES, validate_record
from calibrated_qa.reward import score_completion
from calibrated_qa.taskset import CalibratedQATask, GenerationLogEnv

REPO = Path(__file__).resolve().parents[2]
BOOLQ = str(REPO / "data" / "boolq")


def taskset_config(**fields: object) -> vf.TasksetConfig:
    """The taskset table as prime-rl's TOML gives it, narrowed by id like verifiers does."""
    config = {"id": "calibrated-qa", "dataset_name": BOOLQ, "dataset_split": "validation"}
    return taskset_config_type("calibrated-qa").model_validate(config | fields)


def tasks(**fields: object) -> list[CalibratedQATask]:
    return list(load_taskset(taskset_config(**fields)))


def test_the_id_resolves_to_this_taskset_and_its_log_env() -> None:
    assert environment_class("calibrated-qa") is GenerationLogEnv
    import calibrated_qa

    assert {"CalibratedQATaskset", "GenerationLogEnv"} <= set(calibrated_qa.__all__)


def test_tasks_are_the_classic_rows_in_the_classic_order() -> None:
    loaded = tasks(num_examples=8, include_passage=False, seed=7)
    rows = build_split(
        dataset_name=BOOLQ,
        split="validation",
        log_split="eval",
        num_examples=8,
        seed=7,
        include_passage=False,
        max_passage_chars=1500,
    )
    assert [t.data.idx for t in loaded] == list(range(8))
    assert [t.data.prompt[0].content for t in loaded] == [r["prompt"][0]["content"] for r in rows]
    assert [t.data.answer for t in loaded] == rows["answer"]
    assert [t.data.question for t in loaded] == [r["info"]["question"] for r in rows]
    assert {t.data.split for t in loaded} == {"eval"}  # validation -> the eval log
    assert tasks(num_examples=2, log_split="train")[0].data.split == "train"


def test_unknown_or_bad_keys_are_refused() -> None:
    with pytest.raises(ValueError, match="dataset_splt"):
        taskset_config(dataset_splt="train")
    with pytest.raises(ValueError, match="num_examples must be -1 .all. or a positive count"):
        taskset_config(num_examples=0)
    with pytest.raises(ValueError, match="max_tokens"):
        taskset_config(task={"max_tokens": 0})
    with pytest.raises(ValueError, match="length_unit"):
        taskset_config(task={"length_unit": "words"})


def trace_of(
    task: CalibratedQATask,
    text: str,
    *,
    completion_tokens: int | None = 40,
    max_tokens: int | None = 512,
    finish_reason: str = "stop",
) -> vf.Trace:
    """A trace as the null harness leaves it: the prompt, one sampled reply, one model call."""
    usage = (
        None
        if completion_tokens is None
        else vf.Usage(prompt_tokens=300, completion_tokens=completion_tokens)
    )
    return vf.Trace(
        task=vf.TraceTask(type=type(task).__name__, data=task.data),
        agent=vf.AgentInfo(config=vf.AgentConfig()),
        nodes=[
            vf.MessageNode(message=task.data.prompt[0]),
            vf.MessageNode(parent=0, message=vf.AssistantMessage(content=text), sampled=True),
        ],
        calls=[
            vf.ModelCall(
                node=1,
                sampling=vf.SamplingConfig(max_tokens=max_tokens),
                finish_reason=finish_reason,
                usage=usage,
            )
        ],
    )


COMPLETIONS = [
    "  The passage says it was filmed in Canada.\nANSWER: YES with 85% probability\n",
    "It is not mentioned anywhere.\nANSWER: NO with 70% probability",
    "I am not sure about this one.",  # unparseable
    "<think>YES with 90% probability",  # unclosed reasoning: unparseable
]


@pytest.mark.parametrize("text", COMPLETIONS)
@pytest.mark.parametrize("length_unit", ["chars", "tokens"])
def test_scoring_is_score_completion(text: str, length_unit: str) -> None:
    for task in tasks(num_examples=2, task={"length_unit": length_unit}):
        trace = trace_of(task, text, completion_tokens=37)
        asyncio.run(task.score(trace))
        expected = score_completion(
            text,
            task.data.answer == "true",
            max_tokens=512,
            length_unit=length_unit,
            completion_tokens=37,
        )
        assert trace.rewards["calibration_reward"].score == expected.calibration_reward
        assert trace.rewards["length_penalty"].score == expected.length_penalty
        assert trace.reward == expected.reward
        metrics = {
            "parseable": float(expected.parseable),
            "correct": float(expected.correct),
            "length": expected.length,
        }
        if expected.parseable:  # brier and p_yes exist only for a parsed answer
            metrics |= {"p_yes": expected.p_yes, "brier": expected.brier}
        assert trace.metrics == metrics


def test_a_sampler_max_tokens_other_than_m_fails_the_trace() -> None:
    task = tasks(num_examples=1)[0]
    with pytest.raises(vf.TaskError, match=r"max_tokens \(1024\) differs .* \(512\)"):
        asyncio.run(task.score(trace_of(task, COMPLETIONS[0], max_tokens=1024)))
    # A sampler with no limit set cannot skew the penalty: scored as usual.
    trace = trace_of(task, COMPLETIONS[0], max_tokens=None)
    asyncio.run(task.score(trace))
    assert trace.rewards["calibration_reward"] is not None


def log_env(**taskset: object) -> GenerationLogEnv:
    config = {"taskset": {"id": "calibrated-qa", **taskset}, "agent": {"harness": {"id": "null"}}}
    env = GenerationLogEnv(resolve_env_config(config))
    assert type(env) is GenerationLogEnv
    return env


def test_finalize_logs_each_scored_trace_as_a_valid_record(tmp_path: Path) -> None:
    env = log_env(dataset_name=BOOLQ, dataset_split="validation", task={"log_dir": str(tmp_path)})
    task = next(iter(env.taskset))
    ok = trace_of(task, COMPLETIONS[0], completion_tokens=512, finish_reason="length")
    unparseable = trace_of(task, COMPLETIONS[2], completion_tokens=None)
    failed = trace_of(task, COMPLETIONS[1])
    for trace in (ok, unparseable):
        asyncio.run(task.score(trace))
        trace.ok = True
    episode = vf.Episode(task=ok.task, traces=[ok, unparseable, failed])
    asyncio.run(env.finalize(task, episode))

    log = tmp_path / LOG_FILE_NAMES["eval"]
    lines = log.read_text().splitlines()
    assert len(lines) == 2  # the failed trace (ok False) is not logged
    records = [validate_record(json.loads(line), f"{log}:{i}") for i, line in enumerate(lines, 1)]
    first, second = records
    assert first["completion"] == COMPLETIONS[0]  # unstripped, as the chars length counts it
    assert (first["example_id"], first["question"], first["split"]) == (
        0,
        task.data.question,
        "eval",
    )
    assert first["reward"] == ok.reward and first["truncated"] is True
    assert first["completion_tokens"] == 512
    assert second["parseable"] is False and second["brier"] is None
    assert second["completion_tokens"] is None
    assert not (tmp_path / LOG_FILE_NAMES["train"]).exists()


def test_no_log_dir_means_no_log_and_the_env_variable_names_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(LOG_DIR_ENV_VAR, raising=False)
    env = log_env(dataset_name=BOOLQ, dataset_split="validation", log_split="train")
    task = next(iter(env.taskset))
    trace = trace_of(task, COMPLETIONS[0])
    asyncio.run(task.score(trace))
    trace.ok = True
    episode = vf.Episode(task=trace.task, traces=[trace])
    asyncio.run(env.finalize(task, episode))
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setenv(LOG_DIR_ENV_VAR, str(tmp_path))
    asyncio.run(env.finalize(task, episode))
    assert len((tmp_path / LOG_FILE_NAMES["train"]).read_text().splitlines()) == 1
