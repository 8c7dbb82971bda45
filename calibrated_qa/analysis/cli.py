"""The run-shape options both CLIs take (``analyze_calibration.py``, ``sample_generations.py``).

One parser for ``--config`` and the explicit numbers that override it, with validated argument
types, so the two scripts cannot drift apart.
"""

from __future__ import annotations

import argparse

from calibrated_qa.analysis.steps import RunShape, read_run_shape


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (``0``, ``-3`` and ``abc`` are refused with a message)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def add_run_shape_arguments(parser: argparse.ArgumentParser) -> None:
    """``--config`` and the explicit run-shape options (explicit values win over the config)."""
    shape = parser.add_argument_group("run shape (from --config, or explicit; explicit wins)")
    shape.add_argument(
        "--config", help="prime-rl TOML config (max_steps, [orchestrator] batch_size, eval, ...)"
    )
    shape.add_argument("--batch-size", type=positive_int, help="rollouts per training step")
    shape.add_argument("--rollouts-per-example", type=positive_int, help="rollouts per question")
    shape.add_argument("--max-tokens", type=positive_int, help="sampler max_tokens (length check)")
    shape.add_argument(
        "--max-steps",
        type=positive_int,
        help="training steps (default: the config's max_steps): only the first max_steps x "
        "batch_size training records are analysed, the surplus (rollouts still in flight after "
        "the last step) is counted and reported; the final eval round is checkpoint max_steps-1",
    )
    shape.add_argument("--eval-size", type=positive_int, help="records per eval round")
    shape.add_argument("--eval-interval", type=positive_int, help="steps between eval rounds")
    shape.add_argument(
        "--eval-rollouts-per-example",
        type=positive_int,
        help="rollouts per question in an eval round (round size = questions x this)",
    )
    shape.add_argument(
        "--no-eval-base-model",
        action="store_true",
        help="the log has no base-model eval round (the first round is --eval-interval)",
    )


def run_shape(args: argparse.Namespace) -> RunShape:
    """The run shape from ``--config``, overridden by explicit options."""
    base = read_run_shape(args.config) if args.config else RunShape()
    return RunShape(
        batch_size=args.batch_size or base.batch_size,
        rollouts_per_example=args.rollouts_per_example or base.rollouts_per_example,
        max_tokens=args.max_tokens or base.max_tokens,
        eval_size=args.eval_size or base.eval_size,
        eval_rollouts_per_example=args.eval_rollouts_per_example or base.eval_rollouts_per_example,
        eval_interval=args.eval_interval or base.eval_interval,
        eval_base_model=base.eval_base_model and not args.no_eval_base_model,
        max_steps=args.max_steps or base.max_steps,
    )


def max_steps_source(args: argparse.Namespace) -> str:
    """Where ``max_steps`` came from, for the report."""
    return "--max-steps" if args.max_steps else f"the config's top-level max_steps ({args.config})"
