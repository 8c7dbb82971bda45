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

from calibrated_qa.analysis.readers import AnalysisInputError, read_rollouts
from calibrated_qa.analysis.samples import choose, render
from calibrated_qa.analysis.steps import attribute_eval_rounds, attribute_steps, read_run_shape
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
    parser.add_argument("--n", type=int, default=10, help="samples per step (default 10)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--config", help="prime-rl TOML config (batch size, eval cadence)")
    parser.add_argument("--batch-size", type=int, help="rollouts per training step")
    parser.add_argument("--split", choices=("train", "eval"), default="train")
    parser.add_argument("--eval-size", type=int, help="records per eval round (split eval)")
    parser.add_argument("--eval-interval", type=int, help="steps between eval rounds")
    parser.add_argument(
        "--confident", type=float, default=0.8, help="confidence threshold (default 0.8)"
    )
    parser.add_argument("--skip-bad-lines", action="store_true")
    parser.add_argument("--allow-partial-step", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        shape = read_run_shape(args.config) if args.config else None
        rollouts, read = read_rollouts(
            args.generations, split=args.split, skip_bad_lines=args.skip_bad_lines
        )
        if args.split == "eval":
            attribute_eval_rounds(
                rollouts,
                args.eval_size or (shape and shape.eval_size),
                args.eval_interval or (shape and shape.eval_interval),
                base_model=shape.eval_base_model if shape else True,
                rollouts_per_example=shape and shape.eval_rollouts_per_example,
            )
        else:
            attribute_steps(
                rollouts,
                args.batch_size or (shape and shape.batch_size),
                allow_partial=args.allow_partial_step,
            )
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
