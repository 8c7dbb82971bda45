#!/usr/bin/env python3
"""Calibration analysis of a generation log: per-step metrics, reliability diagrams, summary.

Reads this project's generation log (.jsonl or .jsonl.gz), the original recipe's log, or the
original per-rollout CSV (format detected). Writes to --out: metrics_by_step.csv,
calibration_metrics.csv, summary.md and four figures (see calibrated_qa/analysis/report.py).
With --compare LABEL=PATH[@STEP|@final|@all] ... it instead compares several eval logs in one
table, with each log's difference from the first and its paired bootstrap interval.

Examples:
  python analyze_calibration.py --generations outputs/run/generations.jsonl \\
      --config configs/calibrated_qa_gemma2_2b.toml \\
      --orchestrator-log outputs/run/logs/orchestrator.stdout --out results/run
  python analyze_calibration.py --split eval --config configs/calibrated_qa_gemma2_2b.toml \\
      --compare base=outputs/run/eval_generations.jsonl@0 \\
      trained=outputs/run/eval_generations.jsonl@final --out results/run-eval
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from calibrated_qa.analysis.bootstrap import DEFAULT_RESAMPLES
from calibrated_qa.analysis.cli import (
    add_run_shape_arguments,
    max_steps_source,
    positive_int,
    run_shape,
)
from calibrated_qa.analysis.compare import compare, parse_spec, write_comparison
from calibrated_qa.analysis.readers import AnalysisInputError
from calibrated_qa.analysis.report import Options, analyze, readme_section, write_outputs
from calibrated_qa.records import RecordError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    inputs = parser.add_mutually_exclusive_group(required=True)
    inputs.add_argument(
        "--generations",
        nargs="+",
        metavar="PATH",
        help="log file(s); several files are one run in order (a resumed run)",
    )
    inputs.add_argument(
        "--compare",
        nargs="+",
        metavar="LABEL=PATH[@STEP|@final|@all]",
        help="compare several eval logs (any format); @STEP picks the eval round of checkpoint "
        "STEP, @final the final eval round (needs max_steps: --config or --max-steps), @all "
        "pools every record; a log with several rounds needs one of them",
    )
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    add_run_shape_arguments(parser)
    parser.add_argument(
        "--split",
        choices=("train", "eval"),
        help="records of this split only (default: train; eval with --compare)",
    )
    parser.add_argument("--group-size", type=positive_int, help="steps per reliability diagram")
    parser.add_argument(
        "--orchestrator-log",
        help="prime-rl orchestrator stdout or a step/reward TSV: reward curve and cross-check "
        "(split eval: its 'Evaluated ... (Avg@k=x' lines, one per eval round)",
    )
    parser.add_argument("--no-plots", action="store_true", help="metrics and CSVs only")
    parser.add_argument(
        "--skip-bad-lines", action="store_true", help="skip malformed lines, counting them"
    )
    parser.add_argument(
        "--allow-partial-step",
        action="store_true",
        help="analyse a record count that is not a multiple of the batch size (last step flagged)",
    )
    parser.add_argument("--bootstrap", type=int, default=DEFAULT_RESAMPLES, help="resamples")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    parser.add_argument(
        "--readme-section",
        type=Path,
        metavar="PATH",
        help="also write the README's Results section (generated from the summary) to PATH",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        shape = run_shape(args)
        if args.compare:
            entries = compare(
                [parse_spec(text) for text in args.compare],
                split=args.split or "eval",
                eval_size=shape.eval_size,
                eval_interval=shape.eval_interval,
                eval_base_model=shape.eval_base_model,
                eval_rollouts_per_example=shape.eval_rollouts_per_example,
                max_steps=shape.max_steps,
                skip_bad_lines=args.skip_bad_lines,
                resamples=args.bootstrap,
                seed=args.seed,
                progress=not args.quiet,
            )
            write_comparison(entries, args.out, plots_too=not args.no_plots)
            print(f"wrote comparison of {len(entries)} logs to {args.out}")
            return 0
        options = Options(
            generations=args.generations,
            out=args.out,
            split=args.split or "train",
            batch_size=shape.batch_size,
            rollouts_per_example=shape.rollouts_per_example,
            max_tokens=shape.max_tokens,
            group_size=args.group_size,
            max_steps=shape.max_steps,
            max_steps_source=max_steps_source(args),
            orchestrator_log=args.orchestrator_log,
            eval_size=shape.eval_size,
            eval_interval=shape.eval_interval,
            eval_base_model=shape.eval_base_model,
            eval_rollouts_per_example=shape.eval_rollouts_per_example,
            plots=not args.no_plots,
            skip_bad_lines=args.skip_bad_lines,
            allow_partial_step=args.allow_partial_step,
            bootstrap=args.bootstrap,
            seed=args.seed,
            progress=not args.quiet,
        )
        result = analyze(options)
        written = write_outputs(result, args.out)
        if args.readme_section:
            command = "python analyze_calibration.py " + shlex.join(argv or sys.argv[1:])
            args.readme_section.write_text(readme_section(result, command))
    except (AnalysisInputError, RecordError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"analysed {len(result.rollouts)} rollouts over {len(result.rows)} steps; wrote:")
    for path in written:
        print(f"  {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
