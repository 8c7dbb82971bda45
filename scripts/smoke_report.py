"""What ``run_training.sh --smoke`` prints after its run: per-step times, sizes, one line per check.

The sizes are the inputs of ``disk_need.py``'s formula, measured on the real box (bytes per
parameter of a trainer checkpoint, of a weights folder, of a broadcast; rollouts per step), so
the full run's disk need can be checked against them before it is paid for.
"""

from __future__ import annotations

import re
from pathlib import Path

import run_state

from calibrated_qa.run_config import read_run_config

# prime-rl 6cae5cca, orchestrator/orchestrator.py: "Step {n} | Time: {t:.2f}s | Reward: ..."
_STEP = re.compile(r"\bStep (\d+) \| Time: ([0-9.]+)s")
# orchestrator/scheduler.py _apply_policy_update: "Orchestrator resumed: checkpoint {n} ready"
_RELOAD = re.compile(r"Orchestrator resumed: checkpoint (\d+) ready")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


def _records(path: Path) -> int:
    return sum(1 for line in path.read_bytes().splitlines() if line.strip()) if path.exists() else 0


def smoke_report(config_path: str, output_dir: str, results_dir: str) -> str:
    """The report; raises SystemExit(1) after printing it when a check failed."""
    config = read_run_config(config_path)
    out, results = Path(output_dir), Path(results_dir)
    log = out / "logs" / "orchestrator.stdout"
    text = _ANSI.sub("", log.read_text(errors="replace")) if log.exists() else ""
    times = {int(s): float(t) for s, t in _STEP.findall(text)}
    reloads = sorted({int(s) for s in _RELOAD.findall(text)})
    lines = ["Per-step time (orchestrator log):"]
    lines += [f"  step {s}: {t:.1f} s" for s, t in sorted(times.items())] or ["  none found"]

    lines.append("Measured sizes (the disk formula's inputs, scripts/disk_need.py):")
    for what in ("trainer checkpoints", "weights", "broadcasts", "orchestrator checkpoints"):
        for s in run_state.steps(out, what):
            path = out / run_state.STEP_DIRS[what] / f"step_{s}"
            lines.append(f"  {run_state.STEP_DIRS[what]}/step_{s}: {_size(path) / 1e9:.2f} GB")
    rollouts = out / run_state.STEP_DIRS["rollouts"]
    n_rollout_steps = len(run_state.steps(out, "rollouts")) or 1
    lines.append(
        f"  {run_state.STEP_DIRS['rollouts']}/: {_size(rollouts) / 1e6:.1f} MB in all, "
        f"{_size(rollouts) / 1e6 / n_rollout_steps:.1f} MB a step (batch {config.batch_size})"
    )

    steps, interval = config.max_steps or 0, config.ckpt_interval
    train_records = _records(out / "generations.jsonl")
    checks = [
        (len(times) >= steps, f"{len(times)} of {steps} training steps logged"),
        (
            train_records >= steps * (config.batch_size or 0),
            f"{train_records} training records (>= {steps} x {config.batch_size})",
        ),
        (
            bool(interval) and interval in run_state.steps(out, "orchestrator checkpoints"),
            f"a checkpoint inside the run (orchestrator step {interval})",
        ),
        (
            steps in run_state.steps(out, "trainer checkpoints", stable=True),
            f"final trainer checkpoint checkpoints/step_{steps} finished (STABLE)",
        ),
        (
            (out / "weights" / f"step_{steps}" / "STABLE").exists(),
            f"final weights weights/step_{steps} finished (the input of eval_model.sh)",
        ),
        (
            any(s >= 1 for s in reloads),
            f"vLLM reloaded broadcast weights (checkpoints {reloads or 'none'})",
        ),
    ]
    if config.eval is not None:
        size = config.eval.round_size or 0
        rounds = config.eval.rounds_before(steps - 1) + 1  # online rounds, then the final one
        eval_records = _records(out / "eval_generations.jsonl")
        checks.append(
            (
                eval_records >= rounds * size,
                f"{eval_records} eval records: {rounds} rounds (base model, online, final) "
                f"x {size}",
            )
        )
        checks.append(((results / "eval" / "comparison.md").exists(), "eval comparison written"))
    checks.append(((results / "summary.md").exists(), f"analysis written to {results}"))
    lines.append("Checks:")
    lines += [f"  {'PASS' if ok else 'FAIL'} {what}" for ok, what in checks]
    failed = sum(not ok for ok, _ in checks)
    lines.append(f"Smoke run: {len(checks) - failed} of {len(checks)} checks passed")
    report = "\n".join(lines)
    if failed:
        print(report)
        raise SystemExit(1)
    return report
