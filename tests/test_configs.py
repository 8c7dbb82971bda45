"""The shipped prime-rl configs: parse, hold the reference recipe, agree with load_environment."""

from __future__ import annotations

import os
import subprocess
import tomllib
from pathlib import Path

import pytest

from calibrated_qa.environment import load_environment
from calibrated_qa.run_config import parse_run_config, read_run_config
from scripts.launch_checks import config_problems
from tests.conftest import git_dir_from_env

REPO = Path(__file__).resolve().parent.parent
MAIN = REPO / "configs" / "calibrated_qa_gemma2_2b.toml"
NO_PASSAGE = REPO / "configs" / "calibrated_qa_gemma2_2b_no_passage.toml"
FOUR_GPU = REPO / "configs" / "calibrated_qa_gemma2_2b_4gpu.toml"
SMOKE = REPO / "configs" / "smoke.toml"
CONFIGS = [MAIN, NO_PASSAGE, FOUR_GPU]


def load(path: Path) -> dict:
    with path.open("rb") as f:
        return tomllib.load(f)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_reference_recipe_values(path: Path) -> None:
    c = load(path)
    orch = c["orchestrator"]
    assert c["model"]["name"] == "google/gemma-2-2b-it"
    assert (c["max_steps"], c["seq_len"], c["max_async_level"]) == (50, 2048, 0)
    assert (orch["batch_size"], orch["rollouts_per_example"]) == (1024, 8)
    assert orch["sampling"]["max_tokens"] == 512
    assert orch["sampling"].get("temperature", 1.0) == 1.0
    assert c["trainer"]["optim"]["lr"] == 1e-6
    assert c["inference"]["gpu_memory_utilization"] == 0.9


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_consistent_with_load_environment(path: Path) -> None:
    c = load(path)
    assert config_problems(read_run_config(path), load_environment) == []
    for env in [*c["orchestrator"]["env"], *c["orchestrator"]["eval"]["env"]]:
        assert env["args"]["max_tokens"] == c["orchestrator"]["sampling"]["max_tokens"]
        assert env["args"]["length_unit"] == "chars"  # reproduces the reference reward
        assert "log_dir" not in env["args"]
    assert c["orchestrator"]["eval"]["sampling"]["max_tokens"] == 512
    assert "/root" not in path.read_text()


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_online_eval_on_validation(path: Path) -> None:
    ev = load(path)["orchestrator"]["eval"]
    assert (ev["interval"], ev["eval_base_model"], ev["num_examples"]) == (10, True, -1)
    assert [e["id"] for e in ev["env"]] == ["calibrated-qa"]
    assert ev["env"][0]["args"] == load(path)["orchestrator"]["env"][0]["args"]


def test_passage_variants() -> None:
    assert "include_passage" not in read_run_config(MAIN).train_env().args
    assert read_run_config(NO_PASSAGE).train_env().args["include_passage"] is False


def test_checkpoints_keep_a_common_resume_step() -> None:
    """The trainer keeps its latest checkpoint only; the orchestrator keeps all of its own (a
    shared [ckpt] keep_last would apply to both: then a crash in the save window, orchestrator
    at N and trainer at N - interval, would leave no step that both hold)."""
    for path in [*CONFIGS, SMOKE]:
        config = read_run_config(path)
        assert (config.trainer_keep_last, config.orchestrator_keep_last) == (1, None), path


def test_smoke_config_is_the_reference_recipe_made_small() -> None:
    """Same model, prompt, reward, sampler and optimiser; small sizes; every path exercised."""
    main, smoke = load(MAIN), load(SMOKE)
    assert config_problems(read_run_config(SMOKE), load_environment) == []
    for key in ("model", "seq_len", "max_async_level", "inference"):
        assert smoke[key] == main[key], key
    assert smoke["trainer"]["optim"] == main["trainer"]["optim"]
    orch, ref = smoke["orchestrator"], main["orchestrator"]
    assert orch["sampling"] == ref["sampling"] and orch["env"] == ref["env"]
    assert orch["rollouts_per_example"] == ref["rollouts_per_example"]
    config = read_run_config(SMOKE)
    assert config.max_steps == 4 and config.batch_size == 64
    # A checkpoint (and its broadcast reload) inside the run, online rounds before the end.
    assert config.ckpt_interval is not None and config.ckpt_interval < config.max_steps
    assert config.eval is not None and config.eval.interval < config.max_steps
    assert config.eval.round_size == 32 and config.eval.envs[0].args == orch["env"][0]["args"]


def test_four_gpu_variant_only_changes_the_deployment() -> None:
    main, four = load(MAIN), load(FOUR_GPU)
    deployment = four.pop("deployment")
    assert deployment == {"type": "single_node", "num_infer_gpus": 1, "num_train_gpus": 3}
    assert four["wandb"].pop("name") != main["wandb"].pop("name")
    assert four == main
    assert (read_run_config(MAIN).required_gpus, read_run_config(FOUR_GPU).required_gpus) == (2, 4)


def test_checker_rejects_inconsistent_configs() -> None:
    def problems(c):
        return " | ".join(config_problems(parse_run_config(c, MAIN), load_environment))

    c = tomllib.loads(MAIN.read_text())
    c["orchestrator"]["env"][0]["args"]["max_tokenz"] = 512
    assert "unknown: max_tokenz" in problems(c)

    c = tomllib.loads(MAIN.read_text())
    c["orchestrator"]["sampling"]["max_tokens"] = 1024
    assert "differs from [orchestrator.sampling] max_tokens = 1024" in problems(c)

    c = tomllib.loads(MAIN.read_text())
    c["orchestrator"]["eval"]["sampling"].pop("max_tokens")
    assert "[orchestrator.eval.sampling] max_tokens is not set" in problems(c)

    c = tomllib.loads(MAIN.read_text())
    del c["orchestrator"]["env"][0]["args"]["max_tokens"]  # the env default (512) still agrees
    assert problems(c) == ""
    c["orchestrator"]["sampling"]["max_tokens"] = 256
    assert "max_tokens = 512 (the length penalty's M)" in problems(c)

    c = tomllib.loads(MAIN.read_text())
    c["orchestrator"]["batch_size"] = 1020
    assert "must be a multiple of rollouts_per_example (8)" in problems(c)

    c = tomllib.loads(MAIN.read_text())
    c["orchestrator"]["env"][0]["args"]["log_dir"] = "/root/outputs"
    assert "sets log_dir" in problems(c)

    c = tomllib.loads(MAIN.read_text())
    del c["orchestrator"]["eval"]["env"]
    assert "has no [[orchestrator.eval.env]]" in problems(c)


CHECKER = REPO / "scripts" / "check_prime_rl_config.sh"


def check_with_prime_rl(*configs: Path) -> str:
    """``scripts/check_prime_rl_config.sh`` on ``configs``: prime-rl's own RLConfig at the pin.

    Needs git dirs of prime-rl and samsja/pydantic_config (``PRIME_RL_GIT``,
    ``PYDANTIC_CONFIG_GIT``) and PyPI; skipped where they are not given.
    """
    gits = {
        "PRIME_RL_GIT": git_dir_from_env("PRIME_RL_GIT", "PrimeIntellect-ai/prime-rl"),
        "PYDANTIC_CONFIG_GIT": git_dir_from_env("PYDANTIC_CONFIG_GIT", "samsja/pydantic_config"),
    }
    env = {**os.environ, **{name: str(path) for name, path in gits.items()}}
    result = subprocess.run(
        ["bash", str(CHECKER), *map(str, configs)], env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("OK ") == len(configs), result.stdout
    return result.stdout


def test_valid_for_pinned_prime_rl() -> None:
    check_with_prime_rl(*CONFIGS, SMOKE)
