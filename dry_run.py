#!/usr/bin/env python
"""The whole pipeline on a CPU, against a real model server: see docs/dry_run.md.

    uv run --all-extras python dry_run.py          # build, serve, 16 x 4 rollouts, analyse, report
    uv run --all-extras python dry_run.py --serve  # build and serve only, e.g. for vf-eval

Steps: (1) build (once; cached) a tiny random Gemma 2 with a tokenizer trained on the shipped BoolQ
rows; (2) serve it with ``transformers serve`` on 127.0.0.1 behind a request-recording proxy;
(3) run the calibrated-qa environment through verifiers' OpenAI chat-completions client, with
``max_tokens`` and the environment's arguments from a prime-rl config; (4) check the wire and the
log; (5) run ``analyze_calibration.py`` on the log; (6) print a report. The server is stopped
whatever happens (success, error, Ctrl-C, SIGTERM). Exit code 0 only if every check held.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dryrun.build import DEFAULT_CACHE_DIR, DEFAULT_DATA_FILE, BuiltModel, build_model
from dryrun.proxy import read_requests, recording_proxy
from dryrun.run import (
    API_KEY_VAR,
    DEFAULT_CONFIG,
    DEFAULT_DATASET,
    DEFAULT_OUT,
    REPO,
    DryRunError,
    Paths,
    TrainingConfig,
    check,
    dry_run_env_args,
    make_report,
    prepare,
    read_config,
    read_log,
    run_analysis,
    run_rollouts,
)
from dryrun.server import Server, ServerError, serve, terminate_on_sigterm


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Dry run of the calibrated-qa pipeline on a CPU: tiny random Gemma 2 served by "
        "`transformers serve`, rollouts through verifiers, generation log, analysis, report.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=DEFAULT_CONFIG,
        help="prime-rl config: [orchestrator.sampling] max_tokens/temperature and "
        "the args of the calibrated-qa [[orchestrator.env]]",
    )
    parser.add_argument("-n", "--num-examples", type=int, default=16, help="questions")
    parser.add_argument(
        "-r",
        "--rollouts-per-example",
        type=int,
        default=4,
        help="rollouts per question (one group each)",
    )
    parser.add_argument(
        "-t",
        "--max-tokens",
        type=int,
        default=None,
        help="override the config's max_tokens, for the sampler and the environment together",
    )
    parser.add_argument(
        "-c", "--max-concurrent", type=int, default=8, help="groups in flight at once (-1: all)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help="analysis output folder; the run's own files go in OUT/logs/",
    )
    parser.add_argument(
        "--dataset",
        type=Path,
        default=DEFAULT_DATASET,
        help="local BoolQ folder (see calibrated_qa/data.py)",
    )
    parser.add_argument("--split", default="validation", help="split of --dataset to use")
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=DEFAULT_CACHE_DIR,
        help="where the built model is cached (keyed on its recipe)",
    )
    parser.add_argument(
        "--skip-analysis", action="store_true", help="do not run analyze_calibration.py"
    )
    parser.add_argument("--no-plots", action="store_true", help="pass --no-plots to the analysis")
    parser.add_argument(
        "--serve",
        action="store_true",
        help="only build and serve (until Ctrl-C), printing a vf-eval command",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=0,
        help="port clients connect to (the recording proxy); 0: a free one",
    )
    args = parser.parse_args(argv)
    if args.num_examples < 1 or args.rollouts_per_example < 1:
        parser.error("--num-examples and --rollouts-per-example must be positive")
    if args.max_tokens is not None and args.max_tokens < 1:
        parser.error("--max-tokens must be positive")
    return args


def show(path: Path) -> str:
    """A path as the user would type it from the repository root."""
    path = Path(path).absolute()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def vf_eval_command(base_url: str, model: str, env_args: dict, max_tokens: int) -> str:
    """The ``vf-eval`` command that runs the same evaluation against the running server.

    vf-eval evaluates the environment's eval split, so its records go to ``eval_generations.jsonl``
    beside the dry run's ``generations.jsonl``.
    """
    args = {
        **env_args,
        "dataset_name": show(env_args["dataset_name"]),
        "log_dir": show(env_args["log_dir"]),
    }
    return shlex.join([
        "uv", "run", "--all-extras", "vf-eval", "calibrated-qa",
        "-m", model, "-b", f"{base_url}/v1", "-k", API_KEY_VAR,
        "-n", "4", "-r", "2", "-t", str(max_tokens), "-T", "1.0",
        "-a", json.dumps(args),
    ])  # fmt: skip


def build(args: argparse.Namespace) -> BuiltModel:
    built = build_model(args.cache_dir, DEFAULT_DATA_FILE)
    print(
        f"model {show(built.path)}: {built.num_parameters:,} parameters, "
        f"{'built' if built.built else 'reused'} in {built.seconds:.1f} s",
        flush=True,
    )
    return built


@contextmanager
def served(built: BuiltModel, paths: Paths, port: int) -> Iterator[tuple[Server, str, float]]:
    """The model server behind the recording proxy: (server, URL clients use, startup seconds)."""
    print("starting transformers serve ...", flush=True)
    start = time.perf_counter()
    try:
        with serve(built.link, paths.server_log) as server, \
                recording_proxy(server.port, paths.requests, port=port) as proxy:  # fmt: skip
            startup = time.perf_counter() - start
            print(
                f"server ready in {startup:.1f} s: {proxy.url}/v1, model {server.model}, "
                f"requests recorded in {show(paths.requests)}",
                flush=True,
            )
            yield server, proxy.url, startup
    finally:
        print("server stopped", flush=True)


def serve_only(args: argparse.Namespace, paths: Paths, env_args: dict, max_tokens: int) -> int:
    """Build and serve until Ctrl-C (or SIGTERM), printing the vf-eval command to run meanwhile.

    Nothing is deleted: vf-eval appends to ``eval_generations.jsonl``, the dry run's
    ``generations.jsonl`` is left alone, and ``server_requests.jsonl`` keeps growing.
    """
    paths.logs.mkdir(parents=True, exist_ok=True)
    built = build(args)
    with served(built, paths, args.port) as (server, url, _):
        print(
            "run the same evaluation with vf-eval, from the repository root:\n  "
            + vf_eval_command(url, server.model, env_args, max_tokens)
            + "\nCtrl-C to stop.",
            flush=True,
        )
        while True:
            time.sleep(3600)


def dry_run(
    args: argparse.Namespace, config: TrainingConfig, paths: Paths, env_args: dict, max_tokens: int
) -> int:
    """Steps 1-6 of the module docstring; returns the exit code."""
    started = time.time()
    paths.fresh()
    env, inputs = prepare(env_args, args.num_examples, args.rollouts_per_example)
    built = build(args)
    with served(built, paths, args.port) as (server, url, startup):
        seconds = run_rollouts(
            env,
            inputs,
            base_url=url,
            model=server.model,
            max_tokens=max_tokens,
            temperature=config.temperature,
            max_concurrent=args.max_concurrent,
        )

    expected = args.num_examples * args.rollouts_per_example
    records = read_log(paths.generations)
    checks = check(records, read_requests(paths.requests), expected)
    if not args.skip_analysis:
        checks.analysis_rollouts = run_analysis(
            paths,
            batch_size=expected,
            rollouts_per_example=args.rollouts_per_example,
            max_tokens=max_tokens,
            plots=not args.no_plots,
        )
        if checks.analysis_rollouts != expected:
            checks.problems.append(f"the analysis counted {checks.analysis_rollouts} rollouts")
    written = [p for p in paths.out.rglob("*") if p.is_file() and p.stat().st_mtime >= started]
    files = {show(p) for p in written} | {show(paths.report)}  # not a previous run's leftovers
    report = make_report(
        records,
        checks,
        seconds=seconds,
        files=sorted(files),
        num_examples=args.num_examples,
        rollouts_per_example=args.rollouts_per_example,
        max_tokens=max_tokens,
        build_seconds=built.seconds,
        server_startup_seconds=startup,
    )
    report.save(paths.report)
    print("\n=== dry run report ===\n" + report.text())
    if checks.problems:
        print("\nCHECKS FAILED:\n" + "\n".join(f"  - {p}" for p in checks.problems))
        return 1
    print("\nall checks passed")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    terminate_on_sigterm()
    config = read_config(args.config)
    max_tokens = args.max_tokens or config.max_tokens
    paths = Paths(args.out.absolute())
    env_args = dry_run_env_args(
        config,
        max_tokens=max_tokens,
        dataset=args.dataset.absolute(),
        split=args.split,
        log_dir=paths.logs,
    )
    print(
        f"config {show(config.path)}: max_tokens {max_tokens}"
        f"{' (overridden)' if args.max_tokens else ''}, temperature {config.temperature}"
    )
    print(f"environment args: {json.dumps(env_args)}", flush=True)
    if args.serve:
        return serve_only(args, paths, env_args, max_tokens)
    return dry_run(args, config, paths, env_args, max_tokens)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (DryRunError, ServerError) as exc:
        print(f"dry run failed: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted; server stopped", file=sys.stderr)
        sys.exit(130)
