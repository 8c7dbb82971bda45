#!/usr/bin/env python3
"""Stratified samples of completions from chosen training steps, as a Markdown file.

Reads this project's log or the original recipe's log (.jsonl or .jsonl.gz). Rollouts of each
step are sampled evenly across correct/wrong x confident/uncertain (and unparseable), so a late
step does not show only easy, confident answers.

Example:
  python sample_generations.py --generations outputs/run/generations.jsonl \\
      --config configs/calibrated_qa_gemma2_2b.toml --steps 0 49 --n 10 --out cot_samples.md
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from calibrated_qa.analysis.cli import (
    add_run_shape_arguments,
    max_steps_source,
    positive_int,
    run_shape,
)
from calibrated_qa.analysis.readers import AnalysisInputError, read_rollouts
from calibrated_qa.analysis.samples import choose, render
from calibrated_qa.analysis.steps import attribute
from calibrated_qa.records import RecordError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--generations", nargs="+", required=True, metavar="PATH")
    parser.add_argument("--out", type=Path, required=True, help="Markdown file to write")
    parser.add_argument(
        "--steps", type=int, nargs="+", help="steps to sample (default: first, last)"
    )
    parser.add_argument("--n", type=positive_int, default=10, help="samples per step (default 10)")
    parser.add_argument("--seed", type=int, default=0)
    add_run_shape_arguments(parser)
    parser.add_argument("--split", choices=("train", "eval"), default="train")
    parser.add_argument(
        "--confident", type=float, default=0.8, help="confidence threshold (default 0.8)"
    )
    parser.add_argument("--skip-bad-lines", action="store_true")
    parser.add_argument("--allow-partial-step", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        shape = run_shape(args)
        rollouts, read = read_rollouts(
            args.generations, split=args.split, skip_bad_lines=args.skip_bad_lines
        )
        rollouts, attribution = attribute(
            rollouts,
            split=args.split,
            shape=shape,
            allow_partial=args.allow_partial_step,
            max_steps_source=max_steps_source(args),
        )
        if attribution.surplus_note:
            print(f"warning: {attribution.surplus_note}", file=sys.stderr)
        present = sorted({int(s) for s in rollouts.step})
        steps = args.steps or sorted({present[0], present[-1]})
        samples = choose(rollouts, steps, args.n, seed=args.seed, threshold=args.confident)
        text = render(rollouts, read, samples, threshold=args.confident)
    except (AnalysisInputError, RecordError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"wrote {len(samples)} samples from steps {steps} to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
