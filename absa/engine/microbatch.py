"""The micro-batch a run starts with: ``batch.max_micro_batch`` as given, ``auto`` sized on
the accelerator (and agreed over ranks), or a resumed run's own (after its backoffs)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from absa import distributed as D
from absa.engine.accel import AUTO_MICRO_CPU, Runtime, probe_micro_batch
from absa.run.config import Config
from absa.run.data import Data
from absa.run.folder import MICRO_BATCH, atomic_write_text


def resume_micro(cfg: Config, ck: dict[str, Any], rt: Runtime, say: Callable[[str], None]) -> bool:
    """The micro-batch of a resumed run: the checkpoint's (after its ``auto`` sizing and OOM
    backoffs) unless batch.max_micro_batch was changed; True when ``auto`` must probe anew."""
    old = ck["config"].get("batch", {}).get("max_micro_batch")
    new = cfg.batch.max_micro_batch
    if old == new:
        rt.micro = int(ck.get("micro_batch") or rt.micro)
        return False
    say(
        f"batch.max_micro_batch: {old} -> {new} on resume (a step's gradient is the same sum "
        "up to rounding, except that BatchNorm normalizes and dropout draws per micro-batch)"
    )
    return new == "auto"


def auto_micro(
    cfg: Config,
    env: D.DistEnv,
    data: Data,
    model: nn.Module,
    rt: Runtime,
    run_dir: Path,
    say: Callable[[str], None],
) -> int:
    """``batch.max_micro_batch: auto``: the largest micro-batch (<= the largest batch the
    run will use, a power of two) whose forward+backward fits on the accelerator, found by
    halving; recorded in micro_batch.json. On a CPU nothing is probed (AUTO_MICRO_CPU).
    Collective under DDP: every rank probes and the smallest size is used."""
    if env.device.type not in ("cuda", "mps"):
        say(f"batch.max_micro_batch: auto needs an accelerator; using {AUTO_MICRO_CPU} on the CPU")
        return AUTO_MICRO_CPU
    top = max(cfg.batch.size, cfg.schedule.max_batch or 0) // env.world_size
    start = 1 << max(0, top - 1).bit_length()
    sample = data.train.get(torch.arange(1))[0]
    size, failed = probe_micro_batch(
        model, sample, data.info.num_classes, start, env.device, rt.precision
    )
    return agree_micro_batch(env, size, start, failed, run_dir, say)


def agree_micro_batch(
    env: D.DistEnv,
    size: int,
    start: int,
    failed: list[int],
    run_dir: Path,
    say: Callable[[str], None],
) -> int:
    """Collective: the smallest of the ranks' probed micro-batches ``size`` (a rank with less
    free memory decides for all, so every rank steps through the same micro-batches); rank 0
    records it in micro_batch.json with the sizes it tried (``start`` and its ``failed``)."""
    agreed = int(env.all_reduce_min(torch.tensor([float(size)], device=env.device)).item())
    if env.is_main:
        record = {"micro_batch": agreed, "tried": [start, *failed], "device": str(env.device)}
        atomic_write_text(run_dir / MICRO_BATCH, json.dumps(record) + "\n")
    why = f"out of memory here at {failed or 'none'}"
    if agreed < size:
        why += f"; {size} fits here, a rank with less memory fits {agreed}"
    say(f"batch.max_micro_batch: auto -> {agreed} per process ({why})")
    return agreed
