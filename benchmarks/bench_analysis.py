#!/usr/bin/env python3
"""Benchmark the analysis on a synthetic full-size generation log (51,200 records, ~160 MB).

Writes the log (plain and gzip) into a temporary directory, then runs, each in its own fresh
subprocess so that peak memory (``ru_maxrss`` of that process) is its own:

- ``baseline``: decompress + ``json.loads`` every line, nothing else (the floor any reader pays);
- ``metrics``: ``analyze_calibration.py --no-plots`` (read, attribute, all metrics, 1,000-resample
  question bootstraps, both CSVs and summary.md);
- ``plots``: the same with the four figures.

A second log with completions 4x longer shows that memory does not grow with completion length
(the reader keeps no text). Targets: metrics within 3x of the baseline; peak memory < 500 MB.

    uv run --all-extras python benchmarks/bench_analysis.py --write benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import gzip
import json
import platform
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

STEPS, BATCH, ROLLOUTS = 50, 1024, 8
WORDS = [
    "the",
    "passage",
    "says",
    "that",
    "this",
    "is",
    "a",
    "question",
    "about",
    "whether",
    "answer",
    "likely",
    "because",
    "it",
    "states",
    "river",
    "county",
    "season",
    "film",
    "law",
    "team",
    "water",
    "state",
    "first",
    "series",
    "which",
    "was",
    "not",
]


def completion(rng: random.Random, scale: float) -> str:
    """Reasoning text with a long-tailed length (median ~2,400 characters at scale 1, so that
    51,200 records make the ~160 MB of a full run's log)."""
    n_words = max(5, int(rng.lognormvariate(6.0, 0.45) * scale))
    body = " ".join(rng.choices(WORDS, k=n_words))
    answer = rng.choice(("YES", "NO"))
    if rng.random() < 0.01:
        return body  # unparseable
    return f"{body}.\nANSWER: {answer} with {rng.randint(50, 99)}% probability"


def write_log(path: Path, scale: float, seed: int = 0) -> int:
    """51,200 records scored by the real reward, written as the environment writes them."""
    from calibrated_qa.records import make_record
    from calibrated_qa.reward import score_completion

    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        for step in range(STEPS):
            questions = [(step * 128 + q, rng.random() < 0.5) for q in range(BATCH // ROLLOUTS)]
            order = [q for q in questions for _ in range(ROLLOUTS)]
            rng.shuffle(order)  # workers interleave the rollouts of a step
            for example_id, label in order:
                text = completion(rng, scale)
                score = score_completion(text, label, max_tokens=512)
                record = make_record(
                    score=score,
                    example_id=example_id,
                    split="train",
                    question=f"synthetic question number {example_id}",
                    label=label,
                    completion=text,
                    completion_tokens=None,
                    truncated=False,
                    max_tokens=512,
                )
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path.stat().st_size


# ---------------------------------------------------------------------------------------------
# Children: each reports {"seconds", "max_rss_mb"} as its last stdout line.


def child_baseline(path: str) -> None:
    start = time.perf_counter()
    with open(path, "rb") as raw:
        stream = gzip.GzipFile(fileobj=raw) if raw.read(2) == b"\x1f\x8b" else raw
        raw.seek(0)
        n = sum(1 for line in stream if json.loads(line))
    assert n == STEPS * BATCH, n
    report(start)


def child_analysis(path: str, out: str, plots: bool) -> None:
    start = time.perf_counter()
    import runpy

    cli = runpy.run_path(str(REPO / "analyze_calibration.py"))
    argv = ["--generations", path, "--out", out, "--batch-size", str(BATCH)]
    argv += ["--rollouts-per-example", str(ROLLOUTS), "--max-tokens", "512", "--quiet"]
    code = cli["main"]([*argv, *([] if plots else ["--no-plots"])])
    assert code == 0
    report(start)


def report(start: float) -> None:
    seconds = time.perf_counter() - start
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(json.dumps({"seconds": seconds, "max_rss_mb": rss_kb / 1024}))


def run_child(*args: str) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, __file__, "--child", *args], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"child {args} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def best_of(repeats: int, *args: str) -> dict[str, float]:
    runs = [run_child(*args) for _ in range(repeats)]
    return min(runs, key=lambda r: r["seconds"]) | {
        "max_rss_mb": max(r["max_rss_mb"] for r in runs)
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=2, help="best-of for timings")
    parser.add_argument("--write", type=Path, help="write the Markdown results here")
    args = parser.parse_args()
    if args.child:
        kind, *rest = args.child
        if kind == "baseline":
            child_baseline(rest[0])
        else:
            child_analysis(rest[0], rest[1], kind == "plots")
        return 0

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for scale, label, gz in ((1.0, "full-size", True), (4.0, "4x longer completions", False)):
            plain = Path(tmp) / f"generations_{scale:g}.jsonl"
            size = write_log(plain, scale)
            files = [(plain, "plain")]
            if gz:
                packed = plain.with_suffix(".jsonl.gz")
                with open(plain, "rb") as src, gzip.open(packed, "wb", compresslevel=6) as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
                files.append((packed, "gzip"))
            for path, kind in files:
                base = best_of(args.repeats, "baseline", str(path))
                metrics = best_of(args.repeats, "metrics", str(path), str(Path(tmp) / "m"))
                result = {
                    "log": label,
                    "file": kind,
                    "mb": path.stat().st_size / 1e6,
                    "raw_mb": size / 1e6,
                    "baseline": base,
                    "metrics": metrics,
                }
                if scale == 1.0:
                    result["plots"] = best_of(1, "plots", str(path), str(Path(tmp) / "p"))
                rows.append(result)
                print(json.dumps(result), flush=True)
            for path, _ in files:
                path.unlink()
    text = render(rows, args.repeats)
    print(text)
    if args.write:
        args.write.write_text(text)
    return 0


def render(rows: list[dict], repeats: int) -> str:
    lines = [
        "# Analysis benchmark",
        "",
        "Synthetic generation log: 51,200 records (50 steps x 1,024 rollouts, 8 per question, "
        "interleaved), scored by the real reward, written as the environment writes them.",
        f"Each figure is a fresh subprocess (best of {repeats} for times); memory is its peak RSS.",
        "",
        "| log | file | size MB | baseline s | metrics s | ratio | with plots s | "
        "baseline MB | metrics MB | with plots MB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        b, m, p = r["baseline"], r["metrics"], r.get("plots")
        cells = [
            f"{r['log']} ({r['raw_mb']:.0f} MB of JSON)",
            r["file"],
            f"{r['mb']:.0f}",
            f"{b['seconds']:.2f}",
            f"{m['seconds']:.2f}",
            f"{m['seconds'] / b['seconds']:.2f}x",
            f"{p['seconds']:.2f}" if p else "-",
            f"{b['max_rss_mb']:.0f}",
            f"{m['max_rss_mb']:.0f}",
            f"{p['max_rss_mb']:.0f}" if p else "-",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    ratios = [r["metrics"]["seconds"] / r["baseline"]["seconds"] for r in rows]
    peaks = [r["metrics"]["max_rss_mb"] for r in rows]
    time_met = all(ratio <= 3 for ratio in ratios)
    memory_met = max(peaks) < 500 and max(peaks) - min(peaks) < 0.25 * min(peaks)
    lines += [
        "",
        "- baseline: decompress + `json.loads` of every line, nothing kept.",
        "- metrics: `analyze_calibration.py --no-plots` end to end (imports, read, step "
        "attribution, every metric, 2 x 1,000-resample question bootstraps, CSVs, summary.md).",
        "- with plots: the same plus the four figures.",
        "- Target: metrics within 3x of the baseline, peak memory < 500 MB and flat in completion "
        f"length. Time: {'met' if time_met else 'MISSED'} (worst {max(ratios):.2f}x). Memory: "
        f"{'met' if memory_met else 'MISSED'} (peak {min(peaks):.0f}-{max(peaks):.0f} MB; the "
        "reader keeps no text, so 4x longer completions do not raise it).",
        "- Where the metrics time goes (plain full-size log): the read (json.loads plus "
        "validation) is most of it; the fixed part is small: imports (numpy, no tqdm without a "
        "progress bar, no matplotlib with --no-plots) and the two question bootstraps, each "
        "evaluating all 1,000 resamples at once as a (resamples x rollouts) weight matrix "
        "through the same metric functions.",
        f"- Machine: {platform.processor() or platform.machine()}, Python "
        f"{platform.python_version()}, {platform.system()}.",
        "",
        "Regenerate: `uv run --all-extras python benchmarks/bench_analysis.py "
        "--write benchmarks/RESULTS.md`",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
