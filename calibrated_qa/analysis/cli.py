"""The two command lines, ``analyze_calibration.py`` and ``sample_generations.py``: one parser
of the run's shape, so they cannot drift apart; ``main`` and ``samples_main`` run in-process."""

from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from calibrated_qa.analysis.bootstrap import DEFAULT_RESAMPLES
from calibrated_qa.analysis.compare import compare, parse_spec, write_comparison
from calibrated_qa.analysis.readers import AnalysisInputError
from calibrated_qa.analysis.report import Options, analyze, load, readme_section, write_outputs
from calibrated_qa.analysis.samples import choose, render
from calibrated_qa.analysis.steps import RunShape, read_run_shape
from calibrated_qa.records import RecordError

ANALYZE_DOC = """Calibration analysis of a generation log: per-step metrics, reliability, summary.

Reads this project's generation log (.jsonl or .jsonl.gz) or the original recipe's log or
per-rollout CSV (converted on the fly: calibrated_qa/analysis/convert.py). Writes to --out:
metrics_by_step.csv, calibration_metrics.csv, summary.md and four figures; with --compare, one
table of several eval logs, each with its paired difference from the first.

Examples:
  python analyze_calibration.py --generations OUT/generations.jsonl \\
      --config configs/calibrated_qa_gemma2_2b.toml \\
      --orchestrator-log OUT/logs/orchestrator.stdout --out results/run
  python analyze_calibration.py --config configs/calibrated_qa_gemma2_2b.toml \\
      --compare base=OUT/eval_generations.jsonl@0 trained=OUT/eval_generations.jsonl@final \\
      --out results/run-eval
"""

SAMPLES_DOC = """Stratified samples of completions from chosen training steps, as a Markdown file.

Example:
  python sample_generations.py --generations OUT/generations.jsonl \\
      --config configs/calibrated_qa_gemma2_2b.toml --steps 0 49 --n 10 --out cot_samples.md
"""

SHAPE_OPTIONS = {
    "--batch-size": "rollouts per training step",
    "--rollouts-per-example": "rollouts per question",
    "--max-steps": "training steps (default: the config's): training records past max_steps x "
    "batch_size are counted and left out; the final eval round is checkpoint max_steps-1",
    "--eval-size": "records per eval round",
    "--eval-interval": "steps between eval rounds",
    "--eval-rollouts-per-example": "rollouts per question in an eval round",
}


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (``0``, ``-3`` and ``abc`` are refused with a message)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def _parser(doc: str) -> argparse.ArgumentParser:
    first, rest = doc.split("\n\n", 1)
    parser = argparse.ArgumentParser(
        description=first, epilog=rest, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    shape = parser.add_argument_group("run shape (from --config, or explicit; explicit wins)")
    shape.add_argument("--config", help="prime-rl TOML config (max_steps, batch_size, eval, ...)")
    for option, text in SHAPE_OPTIONS.items():
        shape.add_argument(option, type=positive_int, help=text)
    flag = {"action": "store_true"}
    shape.add_argument("--no-eval-base-model", **flag, help="the log has no base-model round")
    parser.add_argument("--skip-bad-lines", **flag, help="skip and count malformed lines")
    parser.add_argument(
        "--allow-partial-step", **flag, help="analyse a last step short of the batch size"
    )
    parser.add_argument(
        "--episodes",
        metavar="RUN_DIR",
        help="a prime-rl 559b447 output dir: exact steps from its episode files",
    )
    parser.add_argument(
        "--strict-eval",
        **flag,
        help="fail on a short eval round or a question missing from a compared log (default: warn)",
    )
    return parser


def run_shape(args: argparse.Namespace) -> RunShape:
    """The run shape from ``--config``, overridden by explicit options."""
    base = read_run_shape(args.config) if args.config else RunShape()
    names = [option[2:].replace("-", "_") for option in SHAPE_OPTIONS]
    explicit: dict[str, Any] = {n: getattr(args, n) for n in names if getattr(args, n)}
    if args.max_steps:
        explicit["max_steps_source"] = "--max-steps"
    if args.no_eval_base_model:
        explicit["eval_base_model"] = False
    return replace(base, **explicit)


def _options(args: argparse.Namespace, **given: Any) -> Options:
    """The ``Options`` named like the parsed arguments, then ``given``."""
    names = {f.name for f in fields(Options)} & vars(args).keys()
    return Options(**{name: getattr(args, name) for name in names} | given)


def analyze_parser() -> argparse.ArgumentParser:
    """The options of ``analyze_calibration.py``."""
    parser = _parser(ANALYZE_DOC)
    inputs = parser.add_mutually_exclusive_group(required=True)
    inputs.add_argument(
        "--generations", nargs="+", metavar="PATH", help="log file(s) of one run, in order"
    )
    inputs.add_argument(
        "--compare",
        nargs="+",
        metavar="LABEL=PATH[@STEP|@final|@all]",
        help="eval logs to compare: @STEP the round of checkpoint STEP, @final the final round, "
        "@all every record; a log with several rounds needs one",
    )
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--split", choices=("train", "eval"), help="default: train (compare: eval)")
    parser.add_argument("--group-size", type=positive_int, help="steps per reliability diagram")
    parser.add_argument(
        "--orchestrator-log",
        help="prime-rl orchestrator stdout or a step/reward TSV, to cross-check the rewards",
    )
    parser.add_argument("--no-plots", action="store_true", help="metrics and CSVs only")
    parser.add_argument("--bootstrap", type=int, default=DEFAULT_RESAMPLES, help="resamples")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    parser.add_argument(
        "--readme-section", type=Path, metavar="PATH", help="also write the README's Results"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    """``analyze_calibration.py``: 0 on success, 2 on unusable input (the message on stderr)."""
    args = analyze_parser().parse_args(argv)
    split = args.split or ("eval" if args.compare else "train")
    options = _options(args, split=split, plots=not args.no_plots, progress=not args.quiet)
    try:
        shape = run_shape(args)
        if args.compare:
            entries = compare([parse_spec(text) for text in args.compare], shape, options)
            for entry in entries:
                for warning in entry.warnings:
                    print(f"warning: --compare {entry.spec.label}: {warning}", file=sys.stderr)
            write_comparison(entries, args.out, plots_too=options.plots)
            print(f"wrote comparison of {len(entries)} logs to {args.out}")
            return 0
        result = analyze(args.generations, shape, options)
        written = write_outputs(result, args.out)
        if args.readme_section:
            command = "python analyze_calibration.py " + shlex.join(argv or sys.argv[1:])
            args.readme_section.write_text(readme_section(result, command))
    except (AnalysisInputError, RecordError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"analysed {len(result.rollouts)} rollouts over {len(result.rows)} steps; wrote:")
    print("\n".join(f"  {path}" for path in written))
    return 0


def samples_main(argv: list[str] | None = None) -> int:
    """``sample_generations.py``: 0 on success, 2 on unusable input."""
    parser = _parser(SAMPLES_DOC)
    parser.add_argument("--generations", nargs="+", required=True, metavar="PATH")
    parser.add_argument("--out", type=Path, required=True, help="Markdown file to write")
    parser.add_argument("--steps", type=int, nargs="+", help="steps (default: first, last)")
    parser.add_argument("--n", type=positive_int, default=10, help="samples per step (10)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split", choices=("train", "eval"), default="train")
    parser.add_argument("--confident", type=float, default=0.8, help="confidence threshold")
    args = parser.parse_args(argv)
    try:
        rollouts, read, attribution = load(args.generations, run_shape(args), _options(args))
        for warning in filter(None, [attribution.surplus_note, *attribution.warnings]):
            print(f"warning: {warning}", file=sys.stderr)
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
