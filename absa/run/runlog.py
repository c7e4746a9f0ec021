"""The run folder: resolved config, environment, metrics.jsonl, progress output.

Only the main process (rank 0) writes; every write is atomic or append-only by line.
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from absa.run.checkpoint import atomic_write_text
from absa.run.config import Config, dump_yaml

METRICS = "metrics.jsonl"
CONFIG = "config.yaml"
ENV = "env.json"
SUMMARY = "summary.json"


def git_revision() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def environment(world_size: int, argv: list[str] | None = None) -> dict[str, Any]:
    from absa import __version__

    return {
        "absa": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "git_revision": git_revision(),
        "argv": argv if argv is not None else sys.argv,
        "world_size": world_size,
        "cuda": torch.cuda.is_available(),
        "threads": torch.get_num_threads(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _clean(value: Any) -> Any:
    """JSON-safe: non-finite floats become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


class RunLog:
    """Writes into ``run_dir``; construct with ``enabled=False`` on non-zero ranks."""

    def __init__(self, run_dir: Path, enabled: bool = True) -> None:
        self.dir = Path(run_dir)
        self.enabled = enabled
        if enabled:
            self.dir.mkdir(parents=True, exist_ok=True)

    def write_config(self, cfg: Config) -> None:
        if self.enabled:
            atomic_write_text(self.dir / CONFIG, dump_yaml(cfg))

    def write_env(self, env: dict[str, Any], append: bool = False) -> None:
        """env.json: the first start's environment at the top level (its command and start
        time are never lost) and ``starts``, one entry per start; ``append`` adds a resume."""
        if not self.enabled:
            return
        first, starts = env, []
        if append:
            try:
                old = json.loads((self.dir / ENV).read_text())
            except (OSError, ValueError):
                old = None
            if isinstance(old, dict):
                first = {k: v for k, v in old.items() if k != "starts"}
                starts = old.get("starts") if isinstance(old.get("starts"), list) else [first]
        doc = {**first, "starts": [*starts, env]}
        atomic_write_text(self.dir / ENV, json.dumps(doc, indent=2) + "\n")

    def write_summary(self, summary: dict[str, Any]) -> None:
        if self.enabled:
            atomic_write_text(self.dir / SUMMARY, json.dumps(_clean(summary), indent=2) + "\n")

    def append_metrics(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW  # never through a symlink
        fd = os.open(self.dir / METRICS, flags, 0o666)
        with os.fdopen(fd, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(_clean(record)) + "\n")
            fh.flush()

    def restore_metrics(self, epochs: int, last: dict[str, Any] | None) -> None:
        """Make metrics.jsonl hold exactly epochs 0..epochs-1, once each, as the checkpoint
        does: drop lines past it (and duplicates), and put back ``last`` (the checkpoint's
        own record of its final epoch) when a kill came between checkpoint and line."""
        if not self.enabled:
            return
        by_epoch: dict[int, dict[str, Any]] = {}
        for r in read_metrics(self.dir):
            e = r.get("epoch")
            if isinstance(e, int) and 0 <= e < epochs:
                by_epoch[e] = r
        if last is not None and epochs > 0 and epochs - 1 not in by_epoch:
            by_epoch[epochs - 1] = last
        kept = [by_epoch[e] for e in sorted(by_epoch)]
        path = self.dir / METRICS
        if kept or path.exists():
            atomic_write_text(path, "".join(json.dumps(_clean(r)) + "\n" for r in kept))


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """Parse metrics.jsonl, ignoring a torn last line from a killed run."""
    path = Path(run_dir) / METRICS
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict):
            records.append(rec)
    return records
