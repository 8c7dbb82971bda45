"""Validate configs/prime-rl-main/*.toml against prime-rl's own config classes at 559b447, offline.

prime-rl's ``packages/prime-rl-configs`` is its slim config schema (no GPU or ML dependencies):
``RLConfig`` parsed by ``pydantic_config.cli`` exactly as ``uv run rl @ CONFIG`` parses it. Its
taskset tables are narrowed to calibrated-qa's own ``TasksetConfig`` through verifiers' loaders,
so a typo in a taskset key fails here as it would on the GPU box. One check is ours: each
calibrated-qa source samples ``max_completion_tokens`` = its task's ``max_tokens``.

Run it with a Python that holds verifiers 0.3.1.dev62 (what 559b447 locks; it brings
prime-pydantic-config 0.4.3 and renderers) and calibrated-qa, e.g. the v1 test venv of .ci/run:

    PRIME_RL_GIT=<prime-rl clone or git dir> python scripts/check_prime_rl_main_config.py CONFIG...

Prints ``OK <file>: <key values>`` per valid file, ``INVALID <file>: <error>`` otherwise; exits 1
if any is invalid.
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

PRIME_RL_COMMIT = "559b44772e471d1538537b8805cc77f3824a5e64"
CONFIGS_SOURCE = "packages/prime-rl-configs/src"


def extract_prime_rl_configs(git_dir: str, into: Path) -> Path:
    """``packages/prime-rl-configs/src`` at the commit, from a clone or a bare git dir."""
    archive = subprocess.run(
        ["git", "-C", git_dir, "archive", "--format=tar", PRIME_RL_COMMIT, CONFIGS_SOURCE],
        check=True,
        capture_output=True,
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into / CONFIGS_SOURCE


def sources(config: Any) -> list[Any]:
    """Every train and eval source, each with its sampling resolved by prime-rl's validators."""
    orchestrator = config.orchestrator
    evals = orchestrator.eval.source if orchestrator.eval is not None else []
    return [*orchestrator.train.source, *evals]


def consistency_problems(config: Any) -> list[str]:
    """What prime-rl's classes accept but calibrated-qa refuses at the first rollout: a sampler
    ``max_completion_tokens`` other than the task's ``max_tokens`` (the length penalty's M)."""
    problems = []
    for source in sources(config):
        taskset = source.env.taskset
        if taskset.id != "calibrated-qa":
            continue
        sampled, m = source.sampling.max_completion_tokens, taskset.task.max_tokens
        if sampled != m:
            problems.append(
                f"source {source.name!r}: sampling max_completion_tokens = {sampled}, "
                f"but taskset.task.max_tokens = {m} (the length penalty's M): set both alike"
            )
    return problems


def summary(config: Any) -> str:
    tasksets = [
        (
            source.name,
            source.env.taskset.id,
            source.env.taskset.dataset_split,
            f"include_passage={getattr(source.env.taskset, 'include_passage', None)}",
        )
        for source in sources(config)
    ]
    return (
        f"model={config.model.name} max_steps={config.max_steps} "
        f"batch_size={config.orchestrator.batch_size} group_size={config.orchestrator.group_size} "
        f"max_completion_tokens={config.orchestrator.train.sampling.max_completion_tokens} "
        f"seq_len={config.orchestrator.seq_len} sources={tasksets}"
    )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        description=f"Validate prime-rl configs against prime-rl {PRIME_RL_COMMIT[:7]}'s config "
        "classes, offline. PRIME_RL_GIT names a clone or git dir of prime-rl."
    )
    parser.add_argument("configs", nargs="+", metavar="CONFIG.toml")
    paths = parser.parse_args(argv).configs
    git_dir = os.environ.get("PRIME_RL_GIT")
    if not git_dir:
        print(
            "set PRIME_RL_GIT to a clone (or git dir) of PrimeIntellect-ai/prime-rl",
            file=sys.stderr,
        )
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        sys.path.insert(0, str(extract_prime_rl_configs(git_dir, Path(tmp))))
        from prime_rl.configs.rl import RLConfig
        from prime_rl.utils.config import cli

        status = 0
        for path in paths:
            try:
                config = cli(RLConfig, args=["@", path])
            except BaseException as exc:  # pydantic_config exits on a bad config
                print(f"INVALID {path}: {type(exc).__name__}: {' '.join(str(exc).split())}")
                status = 1
                continue
            problems = consistency_problems(config)
            if problems:
                print(f"INVALID {path}: {'; '.join(problems)}")
                status = 1
                continue
            print(f"OK {path}: {summary(config)}")
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
