#!/usr/bin/env python3
"""Benchmark the analysis on synthetic full-size generation logs (51,200 records, ~160 MB).

Writes, into a temporary directory, a log in this project's schema and the same rollouts in the
original recipe's log format (read through ``calibrated_qa.analysis.convert``), each plain and
gzip-compressed, plus a project log with 4x longer completions (memory must not grow with them).
Then runs, each in its own fresh subprocess so that peak memory (``ru_maxrss``) is its own:

- ``baseline``: decompress + ``json.loads`` every line, nothing else (the floor of a plain reader);
- ``orjson``: the same loop with ``orjson.loads`` (the analysis parses with orjson);
- ``metrics``: ``analyze_calibration.py --no-plots`` in-process (read, attribute, every metric,
  two 1,000-resample question bootstraps, both CSVs and summary.md);
- ``plots``: the same with the four figures.

Times are the best of ``--repeats`` runs of each (the count is written into the results), peak
memory the largest of them. Children run with bytecode caching on (``PYTHONDONTWRITEBYTECODE``
removed) after one untimed warm-up, as an installed Python runs: compiling matplotlib from
source on every start would add ~0.6 s that no user pays. Targets (issue 13): metrics <= 1.5x
the baseline, full analysis <= 4x, peak memory <= 150 MB and flat in completion length.

    uv run --all-extras python benchmarks/bench_analysis.py --repeats 3 \\
        --write benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
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
# calibrated_qa from this checkout; it is imported lazily, so the baseline child never loads it.
sys.path.insert(0, str(REPO))
STEPS, BATCH, ROLLOUTS, MAX_TOKENS = 50, 1024, 8, 512
WORDS = ["the", "passage", "says", "that", "this", "is", "a", "question", "about", "whether"]
WORDS += ["answer", "likely", "because", "it", "states", "river", "county", "season", "film"]
WORDS += ["law", "team", "water", "state", "first", "series", "which", "was", "not"]


def completion(rng: random.Random, scale: float) -> str:
    """Reasoning text with a long-tailed length (median ~2,400 characters at scale 1)."""
    body = " ".join(rng.choices(WORDS, k=max(5, int(rng.lognormvariate(6.0, 0.45) * scale))))
    if rng.random() < 0.01:
        return body  # unparseable
    return f"{body}.\nANSWER: {rng.choice(('YES', 'NO'))} with {rng.randint(50, 99)}% probability"


def write_logs(project: Path, original: Path | None, scale: float, seed: int = 0) -> None:
    """51,200 rollouts scored by the real reward, as the environment writes them and (if asked)
    as the original recipe's log line (``p_yes`` 0.5 and Brier 0.25 when unparseable)."""
    from calibrated_qa.records import make_record
    from calibrated_qa.reward import brier_score, score_completion

    rng = random.Random(seed)
    with open(project, "w") as ours, open(original or os.devnull, "w") as theirs:
        for step in range(STEPS):
            questions = [(step * 128 + q, rng.random() < 0.5) for q in range(BATCH // ROLLOUTS)]
            order = [q for q in questions for _ in range(ROLLOUTS)]
            rng.shuffle(order)  # workers interleave the rollouts of a step
            for example_id, label in order:
                text = completion(rng, scale)
                score = score_completion(text, label, max_tokens=MAX_TOKENS)
                question = f"synthetic question number {example_id}"
                record = make_record(
                    score=score, example_id=example_id, split="train", question=question,
                    label=label, completion=text, completion_tokens=None, truncated=False,
                    max_tokens=MAX_TOKENS,
                )  # fmt: skip
                ours.write(json.dumps(record, ensure_ascii=False) + "\n")
                if original is None:
                    continue
                p = 0.5 if score.p_yes is None else score.p_yes
                line = {
                    "full_prompt": f"[user] Passage: ...\n\nQuestion: {question}?\n",
                    "ground_truth": "true" if label else "false", "p_yes": p,
                    "p_yes_extracted": score.p_yes, "parseable": score.parseable,
                    "brier_score": brier_score(p, label), "reward": score.reward,
                    "length_penalty": score.length_penalty, "approx_tokens": score.length,
                    "parsed_answer": text[-200:], "full_completion": f"[assistant] {text}\n",
                }  # fmt: skip
                theirs.write(json.dumps(line, ensure_ascii=False) + "\n")


def gzipped(path: Path) -> Path:
    packed = path.with_name(path.name + ".gz")
    with open(path, "rb") as src, gzip.open(packed, "wb", compresslevel=6) as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
    return packed


# Children: each prints {"seconds", "max_rss_mb"} as its last stdout line.


def child_baseline(path: str, parser: str) -> None:
    start = time.perf_counter()
    if parser == "orjson":
        from orjson import loads
    else:
        loads = json.loads
    with open(path, "rb") as raw:
        stream = gzip.GzipFile(fileobj=raw) if raw.read(2) == b"\x1f\x8b" else raw
        raw.seek(0)
        n = sum(1 for line in stream if loads(line))
    assert n == STEPS * BATCH, n
    report(start)


def child_analysis(path: str, out: str, plots: bool) -> None:
    start = time.perf_counter()
    from calibrated_qa.analysis.cli import main

    argv = ["--generations", path, "--out", out, "--batch-size", str(BATCH)]
    argv += ["--rollouts-per-example", str(ROLLOUTS), "--quiet"]
    with open(os.devnull, "w") as quiet:
        sys.stdout = quiet
        code = main([*argv, *([] if plots else ["--no-plots"])])
        sys.stdout = sys.__stdout__
    assert code == 0
    report(start)


def report(start: float) -> None:
    seconds = time.perf_counter() - start
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(json.dumps({"seconds": seconds, "max_rss_mb": rss_kb / 1024}))


def best_of(repeats: int, *args: str) -> dict[str, float]:
    runs = []
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    for _ in range(repeats):
        done = subprocess.run(
            [sys.executable, __file__, "--child", *args], capture_output=True, text=True, env=env
        )
        if done.returncode != 0:
            raise SystemExit(f"child {args} failed:\n{done.stderr}")
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return {
        "seconds": min(r["seconds"] for r in runs),
        "max_rss_mb": max(r["max_rss_mb"] for r in runs),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=3, help="best-of for timings (default 3)")
    parser.add_argument("--write", type=Path, help="write the Markdown results here")
    args = parser.parse_args()
    if args.child:
        kind, *rest = args.child
        if kind in ("baseline", "orjson"):
            child_baseline(rest[0], kind)
        else:
            child_analysis(rest[0], rest[1], kind == "plots")
        return 0
    load_before = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        project, original = Path(tmp) / "generations.jsonl", Path(tmp) / "original.jsonl"
        write_logs(project, original, 1.0)
        longer = Path(tmp) / "generations_4x.jsonl"
        write_logs(longer, None, 4.0)
        logs = [
            ("this project's schema", project),
            ("this project's schema", gzipped(project)),
            ("original recipe's log (converted)", original),
            ("original recipe's log (converted)", gzipped(original)),
            ("this project's schema, 4x longer completions", longer),
        ]
        best_of(1, "plots", str(project), str(Path(tmp) / "warm-up"))  # bytecode cached
        for label, path in logs:
            row = {"log": label, "path": path, "mb": path.stat().st_size / 1e6}
            row["baseline"] = best_of(args.repeats, "baseline", str(path))
            row["orjson"] = best_of(args.repeats, "orjson", str(path))
            row["metrics"] = best_of(args.repeats, "metrics", str(path), str(Path(tmp) / "m"))
            if "4x" not in label:
                row["plots"] = best_of(args.repeats, "plots", str(path), str(Path(tmp) / "p"))
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "path"}, default=str))
    text = render(rows, args.repeats, load_before, os.getloadavg())
    print(text)
    if args.write:
        args.write.write_text(text)
    return 0


def render(rows: list[dict], repeats: int, load_before: tuple, load_after: tuple) -> str:
    from calibrated_qa.analysis.report import table

    lines = [
        "# Analysis benchmark",
        "",
        "Synthetic full-size logs: 51,200 rollouts (50 steps x 1,024, 8 per question, "
        "interleaved), scored by the real reward, written as the environment writes them and as "
        "the original recipe's log (read through the converter). Each figure is a fresh "
        f"subprocess (bytecode cached, after one warm-up run); times are the best of {repeats} "
        "runs, memory the peak RSS over them. Ratios are to the `json.loads` loop (the issue's "
        "baseline) and, in brackets, to the same loop with `orjson.loads` (the analysis's parser).",
        "",
    ]
    head = ["log", "file", "MB", "json loop s", "orjson loop s", "metrics s", "metrics / loop"]
    head += ["all plots s", "all plots / loop", "peak MB metrics", "peak MB all plots"]
    cells = []
    for r in rows:
        b, o, m, p = (
            r[k]["seconds"] if k in r else None for k in ("baseline", "orjson", "metrics", "plots")
        )
        cells.append([
            r["log"], "gzip" if r["path"].suffix == ".gz" else "plain", f"{r['mb']:.0f}",
            f"{b:.2f}", f"{o:.2f}", f"{m:.2f}", f"{m / b:.2f}x ({m / o:.1f}x)",
            f"{p:.2f}" if p else "-", f"{p / b:.2f}x ({p / o:.1f}x)" if p else "-",
            f"{r['metrics']['max_rss_mb']:.0f}",
            f"{r['plots']['max_rss_mb']:.0f}" if p else "-",
        ])  # fmt: skip
    lines += table(head, cells)
    ratio = {
        k: [r[k]["seconds"] / r["baseline"]["seconds"] for r in rows if k in r]
        for k in ("metrics", "plots")
    }
    vs_orjson = {
        k: [r[k]["seconds"] / r["orjson"]["seconds"] for r in rows if k in r]
        for k in ("metrics", "plots")
    }
    peaks = [r[k]["max_rss_mb"] for r in rows for k in ("metrics", "plots") if k in r]
    flat = [r["metrics"]["max_rss_mb"] for r in rows if "schema" in r["log"]]
    verdict = {True: "met", False: "MISSED"}
    lines += [
        "",
        "- json / orjson loop: decompress + `json.loads` / `orjson.loads` of every line, nothing "
        "kept. Every column is timed inside its process, from before the analysis's imports "
        "(numpy, matplotlib) to the last file written; the interpreter's own start-up is in none.",
        "- metrics: `analyze_calibration.py --no-plots` end to end, in-process (imports, read "
        "and validate every record, step attribution, every metric, two 1,000-resample question "
        "bootstraps, both CSVs, summary.md). all plots: the same plus the four figures, split "
        f"over two processes (`plots.draw`) on the {len(os.sched_getaffinity(0))} core(s) this "
        "run could use (one core: `taskset -c 0` before the command; docs/analysis.md).",
        f"- Targets (issue 13, against the json loop): metrics <= 1.5x on every log: "
        f"{verdict[max(ratio['metrics']) <= 1.5]} (worst "
        f"{max(ratio['metrics']):.2f}x, best {min(ratio['metrics']):.2f}x); "
        f"{_per_log(rows, 'metrics', 1.5)}. Everything <= 4x on every log: "
        f"{verdict[max(ratio['plots']) <= 4]} (worst {max(ratio['plots']):.2f}x, best "
        f"{min(ratio['plots']):.2f}x); "
        f"{_per_log(rows, 'plots', 4)}. Against the orjson loop: metrics "
        f"{min(vs_orjson['metrics']):.1f}-{max(vs_orjson['metrics']):.1f}x, all plots "
        f"{min(vs_orjson['plots']):.1f}-{max(vs_orjson['plots']):.1f}x (not met). Peak memory <= "
        f"150 MB: {verdict[max(peaks) <= 150]} (max {max(peaks):.0f} MB); flat in completion "
        f"length: {min(flat):.0f}-{max(flat):.0f} MB.",
        f"- Machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, {platform.system()}; shared with other jobs: load "
        f"average (1/5/15 min) {', '.join(f'{x:.2f}' for x in load_before)} before and "
        f"{', '.join(f'{x:.2f}' for x in load_after)} after the run.",
        "",
        "Regenerate: `uv run --all-extras python benchmarks/bench_analysis.py --repeats "
        f"{repeats} --write benchmarks/RESULTS.md`",
    ]
    return "\n".join(lines) + "\n"


def _per_log(rows: list[dict], kind: str, target: float) -> str:
    """Which logs meet a ratio target, e.g. "met on: this project's schema (plain 1.38x)"."""
    parts = {True: [], False: []}
    for r in rows:
        if kind in r:
            ratio = r[kind]["seconds"] / r["baseline"]["seconds"]
            file = "gzip" if r["path"].suffix == ".gz" else "plain"
            parts[ratio <= target].append(f"{r['log']} ({file} {ratio:.2f}x)")
    return "; ".join(
        f"{'met' if ok else 'missed'} on: {', '.join(names)}"
        for ok, names in parts.items()
        if names
    )


if __name__ == "__main__":
    sys.exit(main())
