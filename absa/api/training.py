"""Configs, run folders and training: what ``absa train`` and ``absa.train`` run."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from absa import distributed as D
from absa.core.policies import ignored_note
from absa.engine.loop import (
    ProgressFactory,
    Summary,
    check_divisible,
    check_run_dir,
    execute,
    prepare_run_dir,
)
from absa.run import config as C
from absa.run.data import Data
from absa.run.folder import read_metrics
from absa.run.models import width_note


@dataclass
class Result:
    """A finished training run."""

    summary: Summary  # final/best test accuracy (%), updates, final batch, times, growths
    model: nn.Module  # the trained model (bare: no DDP/compile wrapper), in eval-ready state
    data: Data  # the train/test splits it was trained on
    run_dir: Path  # config.yaml, metrics.jsonl, last.pt, summary.json
    rank: int = 0  # this process's rank (0: the one that writes the run folder)

    @property
    def metrics(self) -> list[dict[str, Any]]:
        """One dict per epoch, as in metrics.jsonl (0-based ``epoch``)."""
        return read_metrics(self.run_dir)


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> C.Config:
    """Defaults < YAML ``path`` < dotted ``overrides`` (``"optim.lr=0.2"``), validated;
    raises ``ConfigError`` (one line naming the file and field) on bad input."""
    return C.load(path, list(overrides))


def config_yaml(cfg: C.Config) -> str:
    """The fully resolved config as YAML (every key)."""
    return C.dump_yaml(cfg)


def check_device(device: str) -> None:
    """Raise ``ValueError`` (``train.device: ...``) for a ``train.device`` value that is not
    a device name or not available here."""
    C.validate({"train": {"device": device}}, "--device")
    D.resolve_device(device)


def ignored_notes(cfg: C.Config) -> list[str]:
    """Lines naming what the config sets but nothing reads: ``schedule.*`` keys set to a
    non-default value that the method does not read, and ``model.width`` for a model of
    fixed widths (none when there are none)."""
    fields = type(cfg.schedule).model_fields
    changed = [  # set to a non-default value (a resolved config sets every key to its value)
        k for k in cfg.schedule.model_fields_set if getattr(cfg.schedule, k) != fields[k].default
    ]
    note = ignored_note(cfg.schedule.method, [f"schedule.{k}" for k in changed])
    width = width_note(cfg.model.name) if "width" in cfg.model.model_fields_set else ""
    return [n for n in (note, width) if n]


def run_folder(cfg: C.Config, stem: str = "run", resume: str | Path | None = None) -> Path:
    """The run folder a training writes: ``resume``, else train.out_dir/train.run_name
    (default ``<stem>-<method>-b<batch>-s<seed>``); raises ``RunFolderError`` when a fresh
    start finds a run there, a resume finds none, or a live process holds it."""
    return prepare_run_dir(cfg, stem, Path(resume) if resume is not None else None)


def check_launch(
    config: Path | None, overrides: Sequence[str], resume: Path | None, nproc: int
) -> None:
    """The errors every one of ``nproc`` local workers would hit (config, GPUs per rank, run
    folder, batch divisibility), raised once before launching them."""
    cfg = load_config(config, overrides)
    D.check_gpu_per_rank(cfg.train.device, nproc, D.visible_cuda())
    run_folder(cfg, config.stem if config is not None else "run", resume)
    check_divisible(cfg, nproc)


def train(
    cfg: C.Config,
    run_dir: str | Path | None = None,
    *,
    model: nn.Module | None = None,
    data: Data | None = None,
    resume: bool = False,
    log: Callable[[str], None] | None = print,
    progress: ProgressFactory | None = None,
    distributed: bool = False,
) -> Result:
    """Train per ``cfg`` (``run_dir`` default: train.out_dir/train.run_name).

    ``model``: your own ``nn.Module`` instead of ``cfg.model`` (shape: see absa.api's
    docstring; a ``torchvision:``/``timm:``/``module:function`` model name is adapted to it
    by ``absa.run.models.build_external``). ``data``: your own splits instead of
    ``cfg.data`` (see ``tensor_data``). ``progress(epoch, epochs) -> on_step`` gets live
    steps (the CLI's bar). ``distributed``: join the process group of a torchrun or srun
    launch (cfg.distributed) and leave it at the end; otherwise one process trains on
    ``train.device``.
    """
    if run_dir is None:
        folder = prepare_run_dir(cfg, "run", None)
    else:
        folder = check_run_dir(Path(run_dir), resume)
    if distributed:
        env = D.setup(cfg.train.device, cfg.distributed.backend, cfg.distributed.timeout_s)
    else:
        env = D.DistEnv(device=D.resolve_device(cfg.train.device))
    ok = False
    try:
        out = execute(cfg, env, folder, resume, log, progress, model=model, data=data)
        ok = True
    finally:
        D.teardown(env, ok)  # no barrier after an error: the peers may never reach it
    return Result(out.summary, out.model, out.data, out.run_dir, env.rank)
