"""A prime-rl run config as this project reads it: the one place its TOML keys are interpreted.

The launch checks, the analysis and the dry run all read a config through ``read_run_config``;
nothing else parses a config's TOML. Stdlib only (``tomllib``), so it runs in prime-rl's venv
before anything is installed and in the analysis venv alike.

Where a key is left out, prime-rl's own default at the pinned commit 6cae5cca applies, and the
default is written here once, with the file it comes from:

- ``configs/orchestrator.py``: ``EvalConfig`` (interval 100, eval_base_model true, num_examples
  -1 = the whole eval set, rollouts_per_example 1), ``max_inflight_rollouts`` = batch_size,
  sampling temperature 1.0; ``configs/inference.py``: server port 8000;
- ``configs/rl.py``: ``SingleNodeDeploymentConfig`` (1 inference + 1 trainer GPU), the shared
  ``[ckpt]`` table copied into ``[trainer.ckpt]`` and ``[orchestrator.ckpt]`` (``keep_last``
  there overrides both sides).

A value of the wrong type raises ``RunConfigError`` naming the file and the key.
"""

from __future__ import annotations

import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENV_ID = "calibrated-qa"

# prime-rl 6cae5cca defaults (files named in the module docstring).
EVAL_INTERVAL = 100
EVAL_BASE_MODEL = True
EVAL_NUM_EXAMPLES = -1
EVAL_ROLLOUTS_PER_EXAMPLE = 1
TEMPERATURE = 1.0
INFERENCE_PORT = 8000
ROLLOUTS_PER_ENV_WORKER = 256  # orchestrator.py: num_workers = ceil(max_inflight / 256)


class RunConfigError(ValueError):
    """A config that cannot be read, or a key of the wrong type; the message names both."""


@dataclass(frozen=True)
class EnvEntry:
    """One ``[[orchestrator.env]]`` (or eval env) table: the id and its ``args``."""

    id: str
    args: dict[str, Any]
    num_examples: int | None = None  # eval env overrides of the round size
    rollouts_per_example: int | None = None
    num_workers: int | str = "auto"  # env-server workers: a count, or "auto" (resolve_num_workers)


@dataclass(frozen=True)
class EvalSchedule:
    """``[orchestrator.eval]``: when online eval rounds run and how large each is."""

    interval: int
    base_model: bool
    num_examples: int  # -1: the whole eval set (the round size is then not in the config)
    rollouts_per_example: int
    max_tokens: int | None
    temperature: float
    envs: tuple[EnvEntry, ...]
    sampling: Mapping[str, Any] = field(default_factory=dict)  # [orchestrator.eval.sampling]

    @property
    def round_size(self) -> int | None:
        """Records per round, or None for the whole eval set (size known only from the log)."""
        return self.num_examples * self.rollouts_per_example if self.num_examples > 0 else None

    def rounds_before(self, step: int) -> int:
        """Online rounds of the checkpoints before ``step`` (``eval_checkpoints`` < ``step``).

        They finished before checkpoint ``step`` was written: the eval-log rounds a resume at
        ``step`` keeps (without ``max_steps``: the resumed run may change it).
        """
        enough = max(-(-step // self.interval), 0)  # labels are interval apart from 0 or interval
        online, _ = eval_checkpoints(self.interval, base_model=self.base_model, rounds=enough)
        return sum(1 for checkpoint in online if checkpoint < step)


@dataclass(frozen=True)
class RunConfig:
    """What this project needs of a prime-rl ``rl`` config (None where the config is silent
    and prime-rl has no default that the project may assume)."""

    path: Path
    model: str | None
    max_steps: int | None
    seq_len: int | None
    max_async_level: int | None
    batch_size: int | None  # rollouts per training step
    rollouts_per_example: int | None
    max_inflight_rollouts: int | None
    max_tokens: int | None
    temperature: float
    envs: tuple[EnvEntry, ...]
    eval: EvalSchedule | None
    ckpt_interval: int | None
    trainer_keep_last: int | None  # None: prime-rl keeps every checkpoint
    orchestrator_keep_last: int | None
    num_infer_gpus: int
    num_train_gpus: int
    inference_port: int
    sampling: Mapping[str, Any] = field(default_factory=dict)  # [orchestrator.sampling] as written
    raw: Mapping[str, Any] = field(repr=False, default_factory=dict)

    @property
    def required_gpus(self) -> int:
        """GPUs a single-node run takes: prime-rl gives each role its own (entrypoints/rl.py)."""
        return self.num_infer_gpus + self.num_train_gpus

    @property
    def env_workers(self) -> int | None:
        """Training env-server workers prime-rl spawns (orchestrator.py, 6cae5cca)."""
        if self.max_inflight_rollouts is None:
            return None
        return resolve_num_workers(self.train_env().num_workers, self.max_inflight_rollouts)

    @property
    def eval_env_workers(self) -> int | None:
        """Eval env-server workers: orchestrator.py sizes "auto" by the round, 1024 for -1."""
        if self.eval is None or len(self.eval.envs) != 1:
            return None
        round_size = self.eval.round_size or 1024
        return resolve_num_workers(self.eval.envs[0].num_workers, round_size)

    def train_env(self) -> EnvEntry:
        """The one calibrated-qa training environment; anything else is a config error."""
        ours = [e for e in self.envs if e.id == ENV_ID]
        if len(ours) != 1 or len(self.envs) != 1:
            raise RunConfigError(
                f"{self.path}: expected exactly one [[orchestrator.env]], with id = {ENV_ID!r} "
                f"(found ids {[e.id for e in self.envs]})"
            )
        return ours[0]


def resolve_num_workers(num_workers: int | str, max_concurrent: int) -> int:
    """prime-rl's ``vf_utils.resolve_num_workers``: "auto" is one worker per 256 rollouts."""
    if num_workers == "auto":
        return max(1, math.ceil(max_concurrent / ROLLOUTS_PER_ENV_WORKER))
    return int(num_workers)


def _get(table: Mapping[str, Any], key: str, kind: type, where: str, source: Path) -> Any:
    value = table.get(key)
    if value is None:
        return None
    ok = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if not ok:
        raise RunConfigError(
            f"{source}: {where}{key} must be {kind.__name__}, got {value!r} "
            f"({type(value).__name__})"
        )
    return value


def _positive(table: Mapping[str, Any], key: str, where: str, source: Path) -> int | None:
    value = _get(table, key, int, where, source)
    if value is not None and value <= 0:
        raise RunConfigError(f"{source}: {where}{key} must be a positive integer, got {value}")
    return value


def _table(parent: Mapping[str, Any], key: str, where: str, source: Path) -> dict[str, Any]:
    value = parent.get(key, {})
    if not isinstance(value, dict):
        raise RunConfigError(f"{source}: [{where}{key}] must be a table")
    return value


def _envs(entries: Any, where: str, source: Path) -> tuple[EnvEntry, ...]:
    if entries is None:
        return ()
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise RunConfigError(f"{source}: [[{where}]] must be an array of tables")
    out = []
    for i, entry in enumerate(entries):
        at = f"[[{where}]] #{i + 1} "
        env_id = str(entry.get("id", "")).split("@")[0]
        args = entry.get("args", {})
        if not isinstance(args, dict):
            raise RunConfigError(f"{source}: {at}args must be a table")
        workers = entry.get("num_workers", "auto")
        if workers != "auto" and (type(workers) is not int or workers < 1):
            raise RunConfigError(
                f'{source}: {at}num_workers must be "auto" or >= 1, got {workers!r}'
            )
        out.append(
            EnvEntry(
                id=env_id,
                args=dict(args),
                num_examples=_get(entry, "num_examples", int, at, source),
                rollouts_per_example=_positive(entry, "rollouts_per_example", at, source),
                num_workers=workers,
            )
        )
    return tuple(out)


def parse_run_config(config: Mapping[str, Any], source: str | os.PathLike[str]) -> RunConfig:
    """``read_run_config`` of an already parsed TOML document; ``source`` names it in errors.

    Accepts the combined ``rl`` config and a bare orchestrator config (the orchestrator keys at
    the top level), as the analysis of the original recipe's files needs.
    """
    src = Path(source)
    orch = _table(config, "orchestrator", "", src) if "orchestrator" in config else config
    o = "orchestrator." if orch is not config else ""
    sampling = _table(orch, "sampling", o, src)
    batch = _positive(orch, "batch_size", f"[{o[:-1]}] " if o else "", src)
    eval_cfg = orch.get("eval")
    schedule = None
    if eval_cfg is not None:
        if not isinstance(eval_cfg, dict):
            raise RunConfigError(f"{src}: [{o}eval] must be a table")
        w = f"[{o}eval] "
        envs = _envs(eval_cfg.get("env"), f"{o}eval.env", src)
        num = _get(eval_cfg, "num_examples", int, w, src)
        per = _positive(eval_cfg, "rollouts_per_example", w, src)
        if len(envs) == 1:  # prime-rl applies a single eval env's overrides to the round
            num = envs[0].num_examples or num
            per = envs[0].rollouts_per_example or per
        eval_sampling = _table(eval_cfg, "sampling", f"{o}eval.", src)
        eval_temperature = _get(eval_sampling, "temperature", float, f"[{o}eval.sampling] ", src)
        interval = _positive(eval_cfg, "interval", w, src)
        base = _get(eval_cfg, "eval_base_model", bool, w, src)
        schedule = EvalSchedule(
            interval=EVAL_INTERVAL if interval is None else interval,
            base_model=EVAL_BASE_MODEL if base is None else base,
            num_examples=EVAL_NUM_EXAMPLES if num is None else num,
            rollouts_per_example=EVAL_ROLLOUTS_PER_EXAMPLE if per is None else per,
            max_tokens=_positive(eval_sampling, "max_tokens", f"[{o}eval.sampling] ", src),
            temperature=TEMPERATURE if eval_temperature is None else eval_temperature,
            envs=envs,
            sampling=eval_sampling,
        )
    ckpt = _table(config, "ckpt", "", src)
    trainer_ckpt = _table(_table(config, "trainer", "", src), "ckpt", "trainer.", src)
    orch_ckpt = _table(orch, "ckpt", o, src)
    shared_keep = _positive(ckpt, "keep_last", "[ckpt] ", src)
    deployment = _table(config, "deployment", "", src)
    has_inference = "orchestrator" not in config or config.get("inference") is not None
    inference = _table(config, "inference", "", src)
    server = _table(inference, "server", "inference.", src)
    temperature = _get(sampling, "temperature", float, f"[{o}sampling] ", src)
    max_inflight = _positive(orch, "max_inflight_rollouts", "", src) or batch
    return RunConfig(
        path=src,
        model=_get(_table(config, "model", "", src), "name", str, "[model] ", src),
        max_steps=_positive(config, "max_steps", "", src) or _positive(orch, "max_steps", "", src),
        seq_len=_positive(config, "seq_len", "", src),
        max_async_level=_get(config, "max_async_level", int, "", src),
        batch_size=batch,
        rollouts_per_example=_positive(orch, "rollouts_per_example", "", src),
        max_inflight_rollouts=max_inflight,
        max_tokens=_positive(sampling, "max_tokens", f"[{o}sampling] ", src),
        temperature=TEMPERATURE if temperature is None else temperature,
        envs=_envs(orch.get("env"), f"{o}env", src),
        eval=schedule,
        ckpt_interval=_positive(ckpt, "interval", "[ckpt] ", src)
        or _positive(trainer_ckpt, "interval", "[trainer.ckpt] ", src),
        trainer_keep_last=shared_keep
        or _positive(trainer_ckpt, "keep_last", "[trainer.ckpt] ", src),
        orchestrator_keep_last=shared_keep or _positive(orch_ckpt, "keep_last", "", src),
        num_infer_gpus=(_positive(deployment, "num_infer_gpus", "[deployment] ", src) or 1)
        if has_inference
        else 0,
        num_train_gpus=_positive(deployment, "num_train_gpus", "[deployment] ", src) or 1,
        inference_port=_positive(server, "port", "[inference.server] ", src) or INFERENCE_PORT,
        sampling=sampling,
        raw=config,
    )


def read_run_config(path: str | os.PathLike[str]) -> RunConfig:
    """Read a prime-rl TOML config; a missing file or bad TOML raises ``RunConfigError``."""
    try:
        with open(path, "rb") as f:
            config = tomllib.load(f)
    except FileNotFoundError:
        raise RunConfigError(f"{path}: no such config file") from None
    except tomllib.TOMLDecodeError as exc:
        raise RunConfigError(f"{path}: not valid TOML ({exc})") from None
    return parse_run_config(config, path)


def eval_checkpoints(
    interval: int, *, base_model: bool = True, max_steps: int | None = None, rounds: int
) -> tuple[list[int], int | None]:
    """Checkpoint labels of the online eval rounds in log order, and the final round's label.

    prime-rl 6cae5cca, ``orchestrator.py`` + ``eval_utils.compute_eval_ckpt_step`` with
    ``max_async_level = 0``: checkpoint 0 when ``base_model``, then every ``interval`` while the
    next step is ``< max_steps``, and a final eval of checkpoint ``max_steps - 1`` after the loop.

    Without ``max_steps`` the first ``rounds`` online labels (0, interval, ...) and no final.
    With it, the online rounds prime-rl runs (checkpoints ``<= max_steps - 2``) and the final
    one (``max_steps - 1``).
    """
    first = 0 if base_model else 1
    if max_steps is None:
        return [(first + k) * interval for k in range(rounds)], None
    online = [c for c in range(0, max_steps - 1, interval) if c > 0 or base_model]
    return online, max_steps - 1
