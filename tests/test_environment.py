"""End to end through verifiers 0.1.12.dev1: real rollout and scoring path, scripted model client.

The client replaces only the model server; datasets (real BoolQ rows from local files), the
environment, the rubric, its cleanup handler and the generation log are the real ones.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import re
from pathlib import Path

import pytest
import verifiers as vf

from calibrated_qa.environment import load_environment
from calibrated_qa.records import LOG_FILE_NAMES, validate_record
from calibrated_qa.reward import score_completion
from tests.conftest import read_boolq
from tests.scripted_client import ScriptedClient, assert_scored_as

QUESTIONS = {r["question"]: r["answer"] for r in read_boolq(460)}

COMPLETIONS = [
    # (template, what it exercises)
    "The passage states it directly, so the answer follows.\nANSWER: {truth} with 90% probability",
    "The passage suggests otherwise, though not conclusively.\nANSWER: {lie} with 70% probability",
    "Hmm.",  # unparseable and far too short
    "x" * 2100 + "\nANSWER: {truth} with 60% probability",  # parseable but rambling
    "<think>still thinking about ANSWER: {truth} with 99% probability",  # truncated reasoning
]


def question_of(user_text: str) -> str:
    line = user_text.rsplit("\n", 1)[-1]
    assert line.startswith("Question: ")
    shown = line[len("Question: ") :].rstrip("?")
    return shown[0].lower() + shown[1:]


def completion_for(question: str, label: bool) -> str:
    """A fixed completion per question, cycling through COMPLETIONS."""
    index = int(hashlib.sha256(question.encode()).hexdigest(), 16) % len(COMPLETIONS)
    truth, lie = ("YES", "NO") if label else ("NO", "YES")
    return COMPLETIONS[index].format(truth=truth, lie=lie)


def script(user_text: str) -> str:
    question = question_of(user_text)
    return completion_for(question, QUESTIONS[question])


def token_count(text: str) -> int:
    return len(text.split()) + 3


def read_log(path: Path) -> list[dict]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return [validate_record(json.loads(line), f"{path}:{i}") for i, line in enumerate(lines, 1)]


def make_env(local_boolq: Path, log_dir: Path, **kwargs) -> vf.Environment:
    return load_environment(dataset_name=str(local_boolq), log_dir=str(log_dir), **kwargs)


@pytest.mark.parametrize("with_usage", [True, False], ids=["usage", "no-usage"])
def test_generate_scores_and_logs_every_rollout(
    local_boolq: Path, tmp_path: Path, with_usage: bool
) -> None:
    log_dir = tmp_path / "logs"
    env = make_env(local_boolq, log_dir, length_unit="tokens")
    inputs = env.get_dataset(n=16).repeat(2)
    client = ScriptedClient(script, usage=token_count if with_usage else None)
    results = env.generate_sync(
        inputs, client=client, model="scripted", sampling_args={"max_tokens": 512}
    )
    outputs = results["outputs"]
    assert len(outputs) == 32
    assert len(client.prompts) == 32
    for prompt in client.prompts:
        assert [m.role for m in prompt] == ["user"]

    records = read_log(log_dir / "generations.jsonl")
    assert len(records) == 32
    assert not (log_dir / "eval_generations.jsonl").exists()
    by_key: dict[tuple[int, str], dict] = {}
    for record in records:
        by_key[(record["example_id"], record["completion"])] = record

    seen_kinds = set()
    for output in outputs:
        completion = output["completion"][-1]["content"]
        info = output["info"]
        label = QUESTIONS[info["question"]]
        assert output["answer"] == ("true" if label else "false")
        expected = score_completion(
            completion,
            label,
            max_tokens=512,
            length_unit="tokens",
            completion_tokens=token_count(completion) if with_usage else None,
        )
        assert_scored_as(output, expected)

        record = by_key[(output["example_id"], completion)]
        assert record["split"] == "train"
        assert record["question"] == info["question"]
        assert record["ground_truth"] == output["answer"]
        assert record["reward"] == pytest.approx(expected.reward)
        assert record["p_yes"] == expected.p_yes
        assert record["pct"] == expected.pct
        assert record["answer"] == expected.answer
        assert record["parseable"] == expected.parseable
        assert record["brier"] == expected.brier
        assert record["truncated"] is False
        assert record["max_tokens"] == 512
        if with_usage:
            assert record["length_unit"] == "tokens"
            assert record["completion_tokens"] == token_count(completion)
        else:
            assert record["length_unit"] == "chars"
            assert record["completion_tokens"] is None
            assert record["length"] == len(completion) / 4
        seen_kinds.add((expected.parseable, expected.correct, expected.length_penalty < 0))
    # the scripted completions cover parseable/unparseable, right/wrong, penalised or not
    assert len(seen_kinds) >= 3


# The reference recipe's answer pattern, as its page describes it (an independent oracle for the
# completions scripted here, which avoid the cases where our parser deliberately differs).
REFERENCE_PATTERN = re.compile(
    r"(?:ANSWER:\s*)?(YES|NO)\s+with\s+(\d+)\s*%\s*(?:probability|confidence)?", re.IGNORECASE
)


def _reference_p_yes(text: str) -> float | None:
    if "<think>" in text and "</think>" not in text:
        return None
    matches = REFERENCE_PATTERN.findall(text)
    if not matches:
        return None
    word, pct = matches[-1]
    pct = min(int(pct), 100)
    return pct / 100 if word.upper() == "YES" else 1 - pct / 100


def test_chars_unit_reproduces_the_reference_recipe(local_boolq: Path, tmp_path: Path) -> None:
    env = make_env(local_boolq, tmp_path)  # defaults: length_unit="chars", max_tokens=512
    inputs = env.get_dataset(n=16)
    results = env.generate_sync(
        inputs, client=ScriptedClient(script, usage=token_count), model="scripted"
    )
    for output in results["outputs"]:
        completion = output["completion"][-1]["content"]
        label = QUESTIONS[output["info"]["question"]]
        p_yes = _reference_p_yes(completion)
        reference_reward = (0.0 if p_yes is None else 1 - (p_yes - label) ** 2) + (
            _reference_length_penalty(len(completion) / 4)
        )
        assert output["reward"] == pytest.approx(reference_reward, abs=1e-12)
    assert {r["length_unit"] for r in read_log(tmp_path / "generations.jsonl")} == {"chars"}


def _reference_length_penalty(approx_tokens: float, max_tokens: int = 512) -> float:
    """The reference run's penalty, written the way its recipe states it (an independent oracle)."""
    low, high = max_tokens * 0.2, max_tokens * 0.8
    if approx_tokens < low:
        return -(1.0 - approx_tokens / low)
    if approx_tokens > high:
        return -min((approx_tokens - high) / (max_tokens - high), 1.0)
    return 0.0


def test_evaluate_logs_eval_split_apart_from_training(local_boolq: Path, tmp_path: Path) -> None:
    env = make_env(local_boolq, tmp_path)
    train_log = tmp_path / LOG_FILE_NAMES["train"]
    train_log.write_text("")  # a training log in progress must stay untouched
    results = env.evaluate_sync(
        client=ScriptedClient(script), model="scripted", num_examples=8, rollouts_per_example=2
    )
    assert len(results["outputs"]) == 16
    assert train_log.read_text() == ""
    records = read_log(tmp_path / LOG_FILE_NAMES["eval"])
    assert len(records) == 16
    assert {r["split"] for r in records} == {"eval"}
    validation_questions = {r["question"] for r in read_boolq(160, start=300)}
    assert {r["question"] for r in records} <= validation_questions


def test_truncated_generation_is_recorded(local_boolq: Path, tmp_path: Path) -> None:
    env = make_env(local_boolq, tmp_path)
    client = ScriptedClient(lambda _: "cut off mid", finish_reason="length")
    env.generate_sync(env.get_dataset(n=2), client=client, model="scripted")
    records = read_log(tmp_path / "generations.jsonl")
    assert [r["truncated"] for r in records] == [True, True]


def test_log_dir_from_environment_variable(
    local_boolq: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CALIBRATED_QA_LOG_DIR", str(tmp_path / "from-env"))
    env = load_environment(dataset_name=str(local_boolq))
    env.generate_sync(env.get_dataset(n=2), client=ScriptedClient(script), model="scripted")
    assert len(read_log(tmp_path / "from-env" / "generations.jsonl")) == 2


def test_no_log_dir_writes_nothing(
    local_boolq: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CALIBRATED_QA_LOG_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    env = load_environment(dataset_name=str(local_boolq))
    results = env.generate_sync(
        env.get_dataset(n=2), client=ScriptedClient(script), model="scripted"
    )
    assert len(results["outputs"]) == 2
    assert not list(tmp_path.rglob("*generations.jsonl"))


def test_an_unwritable_log_never_fails_a_rollout(local_boolq: Path, tmp_path: Path) -> None:
    env = make_env(local_boolq, tmp_path)
    (tmp_path / "generations.jsonl").mkdir()  # appending to a directory fails
    results = env.generate_sync(
        env.get_dataset(n=2), client=ScriptedClient(script), model="scripted"
    )
    assert [o.get("error") for o in results["outputs"]] == [None, None]
    assert all(isinstance(o["reward"], float) for o in results["outputs"])


def test_loads_through_verifiers_by_environment_id(local_boolq: Path) -> None:
    env = vf.load_environment("calibrated-qa", dataset_name=str(local_boolq))
    assert isinstance(env, vf.SingleTurnEnv)
    assert env.get_eval_dataset()[0]["info"]["split"] == "eval"


def test_datasets_are_built_lazily(tmp_path: Path) -> None:
    """prime-rl loads the environment in every worker; nothing is read until a dataset is used."""
    env = load_environment(dataset_name=str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="does not exist"):
        env.get_dataset()


def test_vf_eval_reads_the_package_defaults() -> None:
    from verifiers.scripts.eval import get_env_eval_defaults

    assert get_env_eval_defaults("calibrated-qa") == {"num_examples": 16, "rollouts_per_example": 4}


def test_defaults_reproduce_the_reference_recipe() -> None:
    defaults = {
        name: p.default for name, p in inspect.signature(load_environment).parameters.items()
    }
    assert defaults == {
        "dataset_name": "google/boolq",
        "dataset_split": "train",
        "eval_split": "validation",
        "include_passage": True,
        "max_passage_chars": 1500,
        "max_tokens": 512,
        "length_unit": "chars",
        "seed": 42,
        "log_dir": None,
        "num_train_examples": -1,
        "num_eval_examples": -1,
    }


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"max_tokenz": 512}, TypeError, "max_tokenz"),
        ({"max_tokens": 0}, ValueError, "max_tokens must be a positive integer"),
        ({"max_tokens": -5}, ValueError, "max_tokens must be a positive integer"),
        ({"max_tokens": 512.0}, ValueError, "max_tokens must be a positive integer"),
        ({"length_unit": "words"}, ValueError, "length_unit must be one of"),
        ({"max_passage_chars": 0}, ValueError, "max_passage_chars must be positive"),
        ({"num_train_examples": 0}, ValueError, "num_train_examples must be -1"),
    ],
)
def test_bad_arguments(kwargs: dict, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        load_environment(**kwargs)


def test_unknown_split_is_named(local_boolq: Path) -> None:
    env = load_environment(dataset_name=str(local_boolq), dataset_split="tran")
    with pytest.raises(ValueError, match="split 'tran' not found"):
        env.get_dataset()


class FailingClient(ScriptedClient):
    """A model server that fails every request, as during a weight update or a timeout."""

    async def get_response(self, prompt, model, sampling_args, tools=None, **kwargs):
        raise vf.EmptyModelResponseError("no content")


def test_failed_rollouts_are_not_logged(local_boolq: Path, tmp_path: Path) -> None:
    """prime-rl re-runs a failed rollout; logging the failure too would add a fake record."""
    env = make_env(local_boolq, tmp_path)
    results = env.generate_sync(env.get_dataset(n=2), client=FailingClient(script), model="m")
    assert all(o.get("error") for o in results["outputs"])
    assert not (tmp_path / "generations.jsonl").exists()


def test_unscored_rollouts_are_not_logged(local_boolq: Path, tmp_path: Path) -> None:
    env = make_env(local_boolq, tmp_path)
    env.set_kwargs(score_rollouts=False)  # as prime-rl does when verification is off
    env.generate_sync(env.get_dataset(n=2), client=ScriptedClient(script), model="m")
    assert not (tmp_path / "generations.jsonl").exists()


def test_a_sampler_max_tokens_other_than_m_is_an_error(local_boolq: Path, tmp_path: Path) -> None:
    env = make_env(local_boolq, tmp_path)  # max_tokens = 512
    with pytest.raises(ValueError, match=r"sampler's max_tokens \(1024\) differs"):
        env.generate_sync(
            env.get_dataset(n=1),
            client=ScriptedClient(script),
            model="m",
            sampling_args={"max_tokens": 1024},
        )
    assert not (tmp_path / "generations.jsonl").exists()


class TokenIdsClient(ScriptedClient):
    """Returns token ids as prime-rl's token client does, optionally cut shorter than usage."""

    def __init__(self, n_ids: int, n_usage: int | None) -> None:
        super().__init__(script, usage=None if n_usage is None else (lambda _: n_usage))
        self.n_ids = n_ids

    async def get_response(self, prompt, model, sampling_args, tools=None, **kwargs):
        from verifiers.types import ResponseTokens

        response = await super().get_response(prompt, model, sampling_args, tools, **kwargs)
        response.message.tokens = ResponseTokens(
            prompt_ids=[1, 2],
            prompt_mask=[0, 0],
            completion_ids=list(range(self.n_ids)),
            completion_mask=[1] * self.n_ids,
            completion_logprobs=[0.0] * self.n_ids,
        )
        return response


@pytest.mark.parametrize(
    ("n_ids", "n_usage", "expected"),
    [(300, None, 300), (100, 512, 512)],  # usage wins over ids cut to max_seq_len
    ids=["ids-only", "ids-truncated"],
)
def test_token_counts_from_token_ids_and_usage(
    local_boolq: Path, tmp_path: Path, n_ids: int, n_usage: int | None, expected: int
) -> None:
    env = make_env(local_boolq, tmp_path, length_unit="tokens")
    client = TokenIdsClient(n_ids, n_usage)
    env.generate_sync(env.get_dataset(n=1), client=client, model="m")
    (record,) = read_log(tmp_path / "generations.jsonl")
    assert record["completion_tokens"] == expected
    assert record["length"] == expected and record["length_unit"] == "tokens"


def test_prime_rl_env_group_keeps_identity_and_split(local_boolq: Path, tmp_path: Path) -> None:
    """prime-rl wraps each training env in a vf.EnvGroup, which renames the task and renumbers
    example_id; the records must still carry the question and the split."""
    group = vf.EnvGroup(envs=[make_env(local_boolq, tmp_path)], env_names=["calibrated-qa"])
    inputs = group.get_dataset(n=4)
    results = group.generate_sync(inputs, client=ScriptedClient(script), model="m")
    records = read_log(tmp_path / "generations.jsonl")
    assert len(records) == len(results["outputs"]) == 4
    by_id = {row["example_id"]: row for row in inputs}
    for record in records:
        assert record["question"] == by_id[record["example_id"]]["info"]["question"]
        assert record["split"] == "train"
    eval_results = group.evaluate_sync(
        client=ScriptedClient(script), model="m", num_examples=3, rollouts_per_example=1
    )
    assert len(eval_results["outputs"]) == 3
    assert {r["split"] for r in read_log(tmp_path / "eval_generations.jsonl")} == {"eval"}
