"""The peak disk a run needs in its output directory, from the config and the model's size.

What prime-rl 6cae5cca writes (paths: ``scripts/run_state.py``), per model parameter P:

- a trainer checkpoint, ``checkpoints/step_N``: FSDP model and AdamW state in the optimisation
  dtype (``[trainer.model] optimization_dtype``, float32 by default): weights, exp_avg,
  exp_avg_sq = 3 x 4 = 12 bytes (``trainer/ckpt.py``). A new one is complete before
  ``maybe_clean`` deletes the oldest, so ``keep_last + 1`` exist at the peak (every one without
  ``keep_last``).
- a weights folder, ``weights/step_N``, and a broadcast, ``run_default/broadcasts/step_N``: the
  model in its file dtype (bf16 for Gemma 2: 2 bytes). Weights follow ``keep_last`` like the
  checkpoints. The trainer deletes the broadcast of step s - (max_async_level + 1) after writing
  step s, but keeps those of checkpoint steps (``trainer/rl/train.py``); ``run_training.sh``
  prunes those older than the newest resumable step, leaving at most 3 at once (the resumable
  one, the previous step's, the current one). Unpruned: every checkpoint step's, plus 2.
- rollouts, ``run_default/rollouts/step_N``: at most seq_len tokens x batch_size samples x
  ROLLOUT_BYTES_PER_TOKEN per step, never deleted (an upper bound: samples are shorter).

need = P x (12 x ckpts + 2 x (weights + broadcasts)) + max_steps x batch x seq_len x 24 B, plus
MARGIN for logs, configs and the file system. ``run_training.sh --smoke`` prints the measured
sizes of each folder so the per-parameter figures can be checked on the real box.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from calibrated_qa.run_config import RunConfig

CKPT_BYTES_PER_PARAM = 12  # fp32 weights + AdamW exp_avg + exp_avg_sq
ROLLOUT_BYTES_PER_TOKEN = 24  # token id, position id, logprob, advantage, mask, temperature
MARGIN = 1.10
PRUNED_BROADCASTS = 3
_DTYPE_BYTES = {"F64": 8, "F32": 4, "BF16": 2, "F16": 2, "I64": 8, "I32": 4, "I8": 1, "U8": 1}


class DiskNeedError(Exception):
    """The model's size cannot be read; the message names the file."""


@dataclass(frozen=True)
class ModelSize:
    parameters: int
    file_bytes: int  # bytes of the weights as stored (the dtype of the safetensors files)


def model_size(model_dir: Path) -> ModelSize:
    """Parameters and stored bytes of a Hugging Face model folder, from safetensors headers.

    Reads only each file's JSON header (the first 8 bytes give its length), so it is exact and
    fast on a 5 GB model, and needs no torch.
    """
    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise DiskNeedError(f"{model_dir}: no *.safetensors files (is the model downloaded?)")
    params = stored = 0
    for path in files:
        try:
            with path.open("rb") as f:
                (length,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(length))
        except (OSError, struct.error, ValueError) as exc:
            raise DiskNeedError(f"{path}: not a safetensors file ({exc})") from None
        for name, tensor in header.items():
            if name == "__metadata__":
                continue
            try:
                count = math.prod(tensor["shape"])
                stored += count * _DTYPE_BYTES[tensor["dtype"]]
            except (KeyError, TypeError) as exc:
                raise DiskNeedError(f"{path}: tensor {name!r} has no usable shape/dtype") from exc
            params += count
    return ModelSize(params, stored)


@dataclass(frozen=True)
class DiskNeed:
    checkpoints: int  # how many trainer checkpoints exist at the peak
    weights: int
    broadcasts: int
    need_bytes: int
    lines: tuple[str, ...]  # the formula with its numbers, for the launch log

    @property
    def need_gb(self) -> int:
        return math.ceil(self.need_bytes / 1e9)


def disk_need(config: RunConfig, size: ModelSize, *, pruned: bool = True) -> DiskNeed:
    """The peak bytes ``config`` writes for a model of ``size`` (formula: module docstring)."""
    steps = config.max_steps
    if steps is None or config.batch_size is None or config.seq_len is None:
        raise DiskNeedError(f"{config.path}: max_steps, batch_size and seq_len must be set")
    interval = config.ckpt_interval
    # Checkpoints at interval, 2 x interval, ... below max_steps, and the final one at max_steps.
    ckpt_steps = (len(range(interval, steps, interval)) if interval else 0) + 1
    keep = config.trainer_keep_last
    ckpts = min(keep + 1, ckpt_steps) if keep else ckpt_steps
    broadcasts = PRUNED_BROADCASTS if pruned else ckpt_steps - 1 + 2
    per_param = size.file_bytes / size.parameters
    model_bytes = size.file_bytes
    rollouts = steps * config.batch_size * config.seq_len * ROLLOUT_BYTES_PER_TOKEN
    raw = (
        size.parameters * CKPT_BYTES_PER_PARAM * ckpts
        + model_bytes * (ckpts + broadcasts)
        + rollouts
    )
    need = int(raw * MARGIN)
    lines = (
        f"model: {size.parameters / 1e9:.3f} B parameters, {model_bytes / 1e9:.1f} GB as stored "
        f"({per_param:g} B/param)",
        f"{ckpts} trainer checkpoints x {size.parameters * CKPT_BYTES_PER_PARAM / 1e9:.1f} GB "
        f"+ {ckpts} weights + {broadcasts} broadcasts x {model_bytes / 1e9:.1f} GB "
        f"+ rollouts <= {rollouts / 1e9:.1f} GB, x {MARGIN} margin = {math.ceil(need / 1e9)} GB",
    )
    return DiskNeed(ckpts, ckpts, broadcasts, need, lines)
