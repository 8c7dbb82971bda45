"""What a run leaves in its output directory, and what a fresh run or a resume does with it.

Layout of ``rl --output-dir DIR`` at prime-rl 6cae5cca (the orchestrator's output dir is
``DIR/run_default``: ``configs/rl.py``, ``RLConfig``; step paths: ``utils/pathing.py``):

    DIR/checkpoints/step_N/{trainer/, STABLE}   trainer state (trainer/ckpt.py CheckpointManager)
    DIR/weights/step_N/{*.safetensors, STABLE}  HF weights (trainer/ckpt.py WeightCheckpointManager)
    DIR/run_default/checkpoints/step_N/orchestrator/   orchestrator state (orchestrator/ckpt.py)
    DIR/run_default/broadcasts/step_N/{..., STABLE}    weights for vLLM (trainer/rl/broadcast/)
    DIR/run_default/rollouts/step_N/rank_R.bin         batches the trainer reads (transport/)
    DIR/logs/*.stdout, DIR/configs/                    reopened with mode "w" by entrypoints/rl.py
    DIR/generations*.jsonl, DIR/eval_generations*.jsonl   this project's generation logs

Why a fresh run must see none of it: prime-rl's own guard (``pathing.validate_output_dir``) looks
only at ``DIR/checkpoints``; the trainer reads ``rollouts/step_0`` of whatever run wrote it
(``transport/filesystem.py``); the orchestrator loads the newest finished broadcast
(``scheduler._compute_next_ckpt_step``); the generation logs are appended to. So a fresh run
refuses any of it, or moves it aside (``DIR/aside/<UTC time>-<why>/``, never deleted).

Why a resume names one step: ``--ckpt.resume-step -1`` lets the trainer and the orchestrator each
take their own latest checkpoint, and the orchestrator writes step N at the top of its step N,
before the trainer has finished writing its own step N. ``resume_step`` is the newest step that
both sides and the weights the orchestrator reloads (``orchestrator/utils.get_weight_dir``: a
finished broadcast, or a checkpoint's ``weight/``) hold; everything of later steps is moved aside
before prime-rl starts.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

ASIDE = "aside"
STEP_DIRS = {
    "trainer checkpoints": "checkpoints",
    "weights": "weights",
    "orchestrator checkpoints": "run_default/checkpoints",
    "broadcasts": "run_default/broadcasts",
    "rollouts": "run_default/rollouts",
}
LOGS = ("generations", "eval_generations")
_STEP = re.compile(r"step_(\d+)$")


class RunStateError(Exception):
    """The output directory cannot be used as asked; the message says why and what to do."""


def steps(out: Path, what: str, *, stable: bool = False) -> list[int]:
    """Step numbers under ``out``'s ``what`` folder (``STEP_DIRS`` key), ascending."""
    found = []
    folder = out / STEP_DIRS[what]
    for path in folder.glob("step_*") if folder.is_dir() else []:
        match = _STEP.search(path.name)
        if match and (not stable or (path / "STABLE").exists()):
            found.append(int(match.group(1)))
    return sorted(found)


def _log_files(out: Path) -> list[Path]:
    return sorted(p for stem in LOGS for p in out.glob(f"{stem}*.jsonl") if p.is_file())


def found_state(out: Path) -> list[str]:
    """Every piece of an earlier run in ``out``, one line each (empty: a fresh directory)."""
    lines = []
    for what, rel in STEP_DIRS.items():
        if found := steps(out, what):
            lines.append(f"{rel}/: {what} of steps {_ranges(found)}")
    for path in _log_files(out):
        size = path.stat().st_size
        if size:
            lines.append(f"{path.name}: {_count_lines(path)} records ({size / 1e6:.1f} MB)")
    for path in sorted(out.glob("logs*")):
        # prime-rl's --dry-run writes only logs/rl.log (and configs/): a launch, not a run.
        if path.is_dir() and (path.name != "logs" or any(path.glob("*.stdout"))):
            lines.append(f"{path.name}/: prime-rl logs of an earlier run")
    return lines


def _ranges(values: list[int]) -> str:
    return ", ".join(map(str, values)) if len(values) <= 6 else f"{values[0]}..{values[-1]}"


def _count_lines(path: Path) -> int:
    with path.open("rb") as f:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))


def aside_dir(out: Path, why: str) -> Path:
    """A new ``out/aside/<UTC time>-<why>/`` folder (suffixed when that second is taken)."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    base = out / ASIDE / f"{stamp}-{why}"
    folder, n = base, 1
    while folder.exists():
        n += 1
        folder = base.with_name(f"{base.name}-{n}")
    return folder


def _move(path: Path, out: Path, folder: Path) -> None:
    target = folder / path.relative_to(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    path.rename(target)  # same file system: a rename, never a copy and delete


def move_aside_all(out: Path) -> Path | None:
    """Move every piece of an earlier run in ``out`` into a new aside folder; return it."""
    top = ["checkpoints", "weights", "run_default", "configs"]
    paths = [out / name for name in top if (out / name).exists()]
    paths += _log_files(out)
    paths += [p for p in sorted(out.glob("logs*")) if p.is_dir()]
    paths += [p for p in (out / "orchestrator.combined.stdout", out / "pruner.log") if p.exists()]
    if not paths:
        return None
    folder = aside_dir(out, "earlier-run")
    for path in paths:
        _move(path, out, folder)
    return folder


@dataclass(frozen=True)
class ResumePoint:
    step: int
    note: str  # what each side held, for the launch log


def resume_step(out: Path) -> ResumePoint:
    """The newest step held by the trainer (finished), the orchestrator and the reload weights."""
    trainer = steps(out, "trainer checkpoints", stable=True)
    orchestrator = set(steps(out, "orchestrator checkpoints"))
    reloadable = set(steps(out, "broadcasts", stable=True))
    reloadable |= {s for s in steps(out, "orchestrator checkpoints") if _has_ckpt_weights(out, s)}
    note = (
        f"finished trainer checkpoints: {trainer or 'none'}; orchestrator checkpoints: "
        f"{sorted(orchestrator) or 'none'}; finished broadcasts: {sorted(reloadable) or 'none'}"
    )
    common = [s for s in trainer if s in orchestrator and s in reloadable]
    if not common:
        raise RunStateError(
            f"--resume: no step that the trainer, the orchestrator and the weights of {out} "
            f"all hold ({note}); start a fresh run (--move-aside keeps this one)"
        )
    return ResumePoint(common[-1], note)


def _has_ckpt_weights(out: Path, step: int) -> bool:
    path = out / STEP_DIRS["orchestrator checkpoints"] / f"step_{step}"
    return (path / "STABLE").exists() and (path / "weight").exists()


def prepare_resume(
    out: Path, step: int, train_batch: int, eval_records_before: int | None
) -> list[str]:
    """Before resuming at ``step``: move aside what is newer, keep the logs of earlier steps.

    Moved into ``aside/<time>-resume-at-<step>/``: checkpoints, weights and broadcasts of later
    steps, rollouts of ``step`` and later (the resumed orchestrator writes them again), and the
    generation-log records of the redone steps. ``logs/`` becomes ``logs.partK/`` (prime-rl reopens
    it with mode "w"). The training log keeps ``step x train_batch`` records, counting earlier
    parts, as ``generations.partK.jsonl``; the eval log keeps ``eval_records_before`` records
    (the rounds of checkpoints before ``step``; None: keep it whole, there is no online eval).
    """
    folder = aside_dir(out, f"resume-at-{step}")
    messages = []
    for what, rel in STEP_DIRS.items():
        first_redone = step if what == "rollouts" else step + 1
        later = [s for s in steps(out, what) if s >= first_redone]
        for s in later:
            _move(out / rel / f"step_{s}", out, folder)
        if later:
            messages.append(f"{rel}/ steps {_ranges(later)} moved to {folder.relative_to(out)}/")
    part = 1
    while any((out / f"{name}.part{part}{ext}").exists() for name, ext in _PART_NAMES):
        part += 1
    if (out / "logs").is_dir():
        (out / "logs").rename(out / f"logs.part{part}")
        messages.append(f"logs/ -> logs.part{part}/ (prime-rl reopens logs/ with mode 'w')")
    for stem, keep in (
        ("generations", step * train_batch),
        ("eval_generations", eval_records_before),
    ):
        message = _split_log(out, stem, part, keep, folder)
        if message:
            messages.append(message)
    return messages


_PART_NAMES = (("logs", ""), ("generations", ".jsonl"), ("eval_generations", ".jsonl"))


def kept_parts(out: Path, stem: str) -> list[Path]:
    """``stem.partK.jsonl`` files of earlier resumes, in order."""
    parts = []
    for path in out.glob(f"{stem}.part*.jsonl"):
        match = re.fullmatch(rf"{stem}\.part(\d+)\.jsonl", path.name)
        if match:
            parts.append((int(match.group(1)), path))
    return [p for _, p in sorted(parts)]


def _split_log(out: Path, stem: str, part: int, keep_total: int | None, folder: Path) -> str | None:
    current = out / f"{stem}.jsonl"
    if not current.exists() or not current.stat().st_size:
        return None
    lines = current.read_bytes().splitlines(keepends=True)
    previous = sum(_count_lines(p) for p in kept_parts(out, stem))
    keep = len(lines) if keep_total is None else max(keep_total - previous, 0)
    kept, redone = lines[:keep], lines[keep:]
    (out / f"{stem}.part{part}.jsonl").write_bytes(b"".join(kept))
    if redone:
        target = folder / f"{stem}.redone.jsonl"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(b"".join(redone))
    current.unlink()
    message = f"{stem}.jsonl: {len(kept)} records kept as {stem}.part{part}.jsonl"
    if redone:
        message += f", {len(redone)} of redone steps moved to {folder.relative_to(out)}/"
    if len(kept) < keep:
        message += f" (WARNING: expected {keep}: the run logged fewer records than its steps)"
    return message


def eval_round_ids(out: Path) -> int:
    """Distinct example ids in the eval logs: the size of a whole-split eval round."""
    ids = set()
    for path in [*kept_parts(out, "eval_generations"), out / "eval_generations.jsonl"]:
        if not path.exists():
            continue
        for line in path.read_bytes().splitlines():
            try:
                ids.add(json.loads(line)["example_id"])
            except (ValueError, KeyError, TypeError):
                continue  # a torn last line
    return len(ids)


def prune_broadcasts(out: Path) -> list[int]:
    """Delete broadcasts no resume can need: those before the newest common checkpoint step.

    prime-rl keeps the broadcast of every checkpoint step for resuming (trainer/rl/train.py,
    ``maybe_clean`` with ``interval_to_keep``); with ``keep_last`` checkpoints only the newest
    common step can be resumed, so older checkpoint-step broadcasts (~2 bytes a parameter each)
    are dead weight. The running orchestrator only loads broadcasts newer than that step.
    """
    try:
        keep = resume_step(out).step
    except RunStateError:
        return []
    pruned = []
    for s in steps(out, "broadcasts"):
        if s < keep:
            shutil.rmtree(out / STEP_DIRS["broadcasts"] / f"step_{s}", ignore_errors=True)
            pruned.append(s)
    return pruned


def watch_and_prune(out: Path, parent: int, every: float = 30.0) -> None:
    """``prune_broadcasts`` every ``every`` seconds until process ``parent`` is gone."""
    while _alive(parent):
        for s in prune_broadcasts(out):
            print(f"pruned {STEP_DIRS['broadcasts']}/step_{s} (older than the resume point)")
        time.sleep(every)


def _alive(pid: int) -> bool:
    if os.getppid() != pid:
        return False  # re-parented: the launcher is gone
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
