#!/usr/bin/env python
"""The whole pipeline on a CPU, driven as prime-rl 6cae5cca drives it (docs/dry_run.md): a tiny
Gemma 2 served as vLLM serves (``dryrun.server``), prime-rl's steps and eval rounds through
verifiers' env servers (``dryrun.orchestrator``), the logs checked against what the server received,
then analysed in this process. Each run writes a new folder under ``--out``; exit code 0 only if
every check held.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from collections import Counter
from pathlib import Path

from calibrated_qa.analysis.cli import main as analysis
from calibrated_qa.records import LOG_DIR_ENV_VAR, LOG_FILE_NAMES, validate_record
from calibrated_qa.run_config import RunConfig, RunConfigError, read_run_config
from dryrun.build import build_model
from dryrun.orchestrator import RunResult, eval_sampling_args, orchestrate, sent_fields
from dryrun.orchestrator import train_sampling_args as train_args
from dryrun.server import CHAT, running

REPO = Path(__file__).resolve().parent


def read_jsonl(path: Path) -> list[dict]:
    """Every whole line of ``path``: an unterminated last line is what a worker stopped mid-write
    leaves (prime-rl stops them with rollouts in flight); it is left out, as the analysis does."""
    lines = path.read_text(encoding="utf-8").split("\n")[:-1] if path.exists() else []
    return [json.loads(line) for line in lines if line]


def check(config: RunConfig, result: RunResult, out: Path) -> tuple[list[str], dict]:
    """Every invariant of the run; returns (problems, figures)."""
    problems: list[str] = []
    logs = {s: [validate_record(r, f"{out / n}:{i}") for i, r in enumerate(read_jsonl(out / n), 1)]
            for s, n in LOG_FILE_NAMES.items()}  # fmt: skip
    requests = read_jsonl(out / "server_requests.jsonl")
    train_fields = sent_fields(train_args(config, config.temperature))
    eval_fields = sent_fields(eval_sampling_args(config))
    shapes = Counter(
        "train" if r.get("sampling") == train_fields else
        "eval" if r.get("sampling") == eval_fields else "other"
        for r in requests
    )  # fmt: skip
    trained = config.batch_size * config.max_steps
    writers = {split: len({r["pid"] for r in records}) for split, records in logs.items()}
    evaluated = sum(map(len, result.eval_rounds))
    figures = {
        "train_records": len(logs["train"]),
        "trained_rollouts": trained,
        "surplus_records": len(logs["train"]) - trained,
        "rollouts_started": result.started,
        "rollouts_cancelled_at_stop": result.cancelled,
        "eval_records": len(logs["eval"]),
        "train_writer_pids": writers["train"],
        "eval_writer_pids": writers["eval"],
        "env_workers": {"train": config.env_workers, "eval": config.eval_env_workers},
        "requests": dict(shapes),
        "request_statuses": dict(Counter(r["status"] for r in requests)),
        "orchestrator_seconds": round(result.seconds, 1),
    }
    unit = config.train_env().args.get("length_unit", "chars")
    if any(r["path"] != CHAT or r["status"] != 200 for r in requests):
        problems.append(f"requests other than 200 chat completions: {figures['request_statuses']}")
    if shapes["other"]:
        problems.append(f"{shapes['other']} requests without prime-rl's sampling fields")
    # A rollout cancelled at stop writes no record unless its answer beat the cancel to the
    # worker (tests/test_env_server.py): so at most every rollout started.
    if not trained <= len(logs["train"]) <= result.started:
        problems.append(f"{len(logs['train'])} train records: want {trained}..{result.started}")
    if shapes["train"] < len(logs["train"]) or not shapes["eval"] == evaluated == len(logs["eval"]):
        problems.append(f"requests {dict(shapes)} vs records {len(logs['train'])}/{evaluated}")
    for split, records in logs.items():
        if writers[split] < 2:
            problems.append(f"{split} records written by fewer than 2 env-server workers")
        if any(r["length_unit"] != unit for r in records):
            problems.append(f"{split} records not in the config's length unit {unit!r}")
    answered = Counter((r["content"], r["usage"]["completion_tokens"])
                       for r in requests if "usage" in r)  # fmt: skip
    records = logs["train"] + logs["eval"]
    if unmatched := Counter((r["completion"], r["completion_tokens"]) for r in records) - answered:
        problems.append(f"{unmatched.total()} records disagree with the server's usage")
    return problems, figures


def analyse(config_path: Path, out: Path) -> None:
    """The analysis' command line in this process: each log, then base vs trained."""
    train, evals = str(out / LOG_FILE_NAMES["train"]), str(out / LOG_FILE_NAMES["eval"])
    for argv in (
        ["--generations", train, "--out", str(out / "analysis" / "train")],
        ["--generations", evals, "--split", "eval", "--out", str(out / "analysis" / "eval")],
        ["--split", "eval", "--compare", f"base={evals}@0", f"trained={evals}@final",
         "--out", str(out / "analysis" / "compare")],
    ):  # fmt: skip
        argv += ["--config", str(config_path)]
        print("$ python analyze_calibration.py " + " ".join(argv), flush=True)
        if (code := analysis(argv)) != 0:
            raise RuntimeError(f"the analysis exited with {code}")


def read_config(path: Path) -> RunConfig:
    """The run config, refused with its name unless it holds what the dry run needs."""
    config = read_run_config(path)
    needed = ("max_steps", "seq_len", "batch_size", "rollouts_per_example", "max_tokens")
    if missing := [key for key in needed if getattr(config, key) is None]:
        raise RunConfigError(f"{path}: the dry run needs {missing} set")
    config.train_env()  # exactly one calibrated-qa training env
    if not (config.eval and config.eval.round_size and len(config.eval.envs) == 1):
        raise RunConfigError(f"{path}: the dry run needs [orchestrator.eval] with "
                             "num_examples > 0 and one [[orchestrator.eval.env]]")  # fmt: skip
    return config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "dry_run.toml")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "dry-run")
    parser.add_argument("--cache-dir", type=Path, default=REPO / ".cache" / "dryrun")
    args = parser.parse_args(argv)
    config_path, cache = args.config.absolute(), args.cache_dir.absolute()
    config = read_config(config_path)
    out = args.out.absolute() / time.strftime("run-%Y%m%d-%H%M%S", time.gmtime())
    out.mkdir(parents=True)  # a new folder each run: a previous run's logs are never touched
    os.chdir(REPO)  # the config's dataset path is relative to the repository, as in training
    # SIGTERM -> SystemExit, so that every finally block (servers, env servers) runs.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    os.environ[LOG_DIR_ENV_VAR] = str(out)  # run_training.sh: export CALIBRATED_QA_LOG_DIR
    started = time.perf_counter()
    built = build_model(cache)
    print(f"run folder {out}\nmodel {built.path} ({built.num_parameters:,} parameters)", flush=True)
    with running(built.path, out / "server_requests.jsonl", out / "server.log") as url:
        print(f"model server {url}; env servers: train {config.env_workers} workers, eval "
              f"{config.eval_env_workers}", flush=True)  # fmt: skip
        result = asyncio.run(orchestrate(config, url, str(built.path), str(out / "logs")))
    problems, figures = check(config, result, out)
    analysis_start = time.perf_counter()
    analyse(config_path, out)
    figures["build_seconds"] = round(built.seconds, 1)
    figures["analysis_seconds"] = round(time.perf_counter() - analysis_start, 1)
    figures["wall_seconds"] = round(time.perf_counter() - started, 1)
    (out / "dry_run_report.json").write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures, indent=2))
    if problems:
        print("CHECKS FAILED:\n" + "\n".join(f"  - {p}" for p in problems))
        return 1
    print(f"all checks passed; outputs in {out}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (RunConfigError, RuntimeError) as exc:
        print(f"dry run failed: {exc}", file=sys.stderr)
        sys.exit(1)
