"""Refusals before a run writes anything: batch sizes that do not fit, a Hessian block that
names nothing, a resumed config that differs, a run folder in use or already holding a run.
Each is one line naming the setting to change."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from torch import nn

from absa.core.hessian import select_params
from absa.core.policies import spec_of
from absa.run import checkpoint as ckpt_io
from absa.run.config import Config, ConfigError, from_dict, to_dict
from absa.run.folder import RunFolderError, RunLock, holder, state
from absa.run.models import code_imports

RESUME_MAY_CHANGE = {("train", "epochs"), ("batch", "max_micro_batch")}


def check_divisible(cfg: Config, world: int) -> None:
    """The global batch (and its cap, for growing methods) must split evenly over ranks."""
    sizes = [("batch.size", cfg.batch.size)]
    if spec_of(cfg.schedule.method).grows and cfg.schedule.max_batch is not None:
        sizes.append(("schedule.max_batch", cfg.schedule.max_batch))
    for key, b in sizes:
        if world > 1 and b % world:
            raise ConfigError(
                f"{key}: {b} is not divisible by the world size {world}; the batch is "
                f"global (each of the {world} processes takes 1/{world} of it), so choose a "
                f"multiple of {world}"
            )


def check_batch_fits(cfg: Config, n_train: int) -> None:
    """Refuse a batch.size above the training split: every epoch would be one step over
    fewer samples than asked (the lr rule assumes batch.size); the split's size is the
    largest batch that means what it says."""
    if cfg.batch.size > n_train:
        raise ConfigError(
            f"batch.size: {cfg.batch.size} is larger than the training split of "
            f"{cfg.data.name} ({n_train:,} samples); pass batch.size={n_train} or less"
        )


def check_hessian_block(cfg: Config, model: nn.Module) -> None:
    """A method that probes the Hessian needs a ``hessian.block`` naming parameters of
    ``model``: a bad one fails before epoch 1."""
    if spec_of(cfg.schedule.method).curvature:
        try:
            select_params(model, cfg.hessian.block)
        except ValueError as err:
            raise ConfigError(f"hessian.block: {err}") from None


def check_resume_config(
    cfg: Config, stored: dict[str, Any], source: str, done_epochs: int | None = None
) -> None:
    """A resumed run must use the stored config; only train.epochs (never to fewer epochs
    than the checkpoint has completed: config and summary would disagree),
    batch.max_micro_batch (how a step is split, e.g. lower after an out-of-memory error) and
    the ``log`` section (where metrics are mirrored, not what is trained) may change."""
    if done_epochs is not None and cfg.train.epochs < done_epochs:
        raise ConfigError(
            f"{source}: train.epochs={cfg.train.epochs} is fewer than the {done_epochs} epochs "
            "this run has completed; a run can be extended, not shortened"
        )
    with code_imports("skip"):  # compared, not built: a module:function is not imported
        old = to_dict(from_dict(stored, source))
    new = to_dict(cfg)
    diffs = []
    for section, values in new.items():
        if section == "log":
            continue
        for key, value in values.items():
            if (section, key) in RESUME_MAY_CHANGE:
                continue
            if old.get(section, {}).get(key) != value:
                diffs.append(f"{section}.{key}")
    if diffs:
        raise ConfigError(
            f"{source}: config differs from the checkpoint's in {', '.join(diffs)}; "
            "resume with the run's own config.yaml"
        )


def default_run_name(cfg: Config, stem: str = "run") -> str:
    """``<stem>-<method>-b<batch>-s<seed>``, the stem reduced to safe characters."""
    safe = re.sub(r"[^A-Za-z0-9._+=-]+", "_", stem).strip("._-+=")[:64] or "run"
    return f"{safe}-{cfg.schedule.method}-b{cfg.batch.size}-s{cfg.train.seed}"


def prepare_run_dir(cfg: Config, stem: str, resume: Path | None) -> Path:
    """The run folder to use (``resume``, else train.out_dir/train.run_name), checked by
    ``check_run_dir``."""
    run_dir = (
        Path(resume)
        if resume is not None
        else Path(cfg.train.out_dir) / (cfg.train.run_name or default_run_name(cfg, stem))
    )
    return check_run_dir(run_dir, resume is not None)


def check_run_dir(run_dir: Path, resume: bool) -> Path:
    """A fresh start needs an empty folder, a resume one that holds a run; neither may be in
    use by a live process (see absa.run.rundir). Returns ``run_dir``."""
    run_dir = Path(run_dir)
    pid = holder(run_dir)
    if pid is not None:
        who = f"pid {pid}" if pid > 0 else "another process"
        raise RunFolderError(f"{run_dir}: in use by {who} (a run writing this folder)")
    now = state(run_dir)
    if not resume and now != "empty":
        what = "a finished run (summary.json)" if now == "finished" else "a run (last.pt)"
        raise RunFolderError(
            f"{run_dir}: already holds {what}; pass --resume {run_dir} to continue or extend "
            "it, or choose another train.run_name"
        )
    if resume and now == "finished" and not (run_dir / ckpt_io.LAST).is_file():
        raise RunFolderError(
            f"{run_dir}: holds a finished run whose last.pt was deleted; it cannot be resumed"
        )
    return run_dir


def lock_run_dir(run_dir: Path, resume: bool) -> RunLock:
    """Create and lock the run folder; a folder that cannot be written (read-only file
    system, no permission) is one line naming the setting that chose it."""
    try:
        return RunLock(run_dir).acquire()
    except OSError as err:
        what = "--resume" if resume else "train.out_dir"
        why = err.strerror or str(err)
        raise RunFolderError(f"{what}: cannot write the run folder {run_dir} ({why})") from None
