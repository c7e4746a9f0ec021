"""What one run holds while it trains (``Session``), how it is built from the config, fresh
or restored from its last checkpoint, and what each epoch's checkpoint holds."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from absa import distributed as D
from absa.core.policies import Policy, spec_of
from absa.engine.accel import Runtime
from absa.engine.checks import check_resume_config
from absa.engine.loggers import MultiLogger, make_loggers
from absa.engine.microbatch import auto_micro, resume_micro
from absa.engine.optim import build_optimizer
from absa.engine.probes import NoiseMeter, ProbeSettings
from absa.run import checkpoint as ckpt_io
from absa.run.config import Config, ConfigError, to_dict
from absa.run.data import Data
from absa.run.folder import (
    SUMMARY,
    RunFolderError,
    RunLog,
    clean_temps,
    environment,
    read_metrics,
    state,
)
from absa.run.policy import make_policy


@dataclass
class TrainState:
    epoch: int = 0  # epochs completed
    updates: int = 0
    best_test_acc: float = 0.0
    hessian_vector: Any = None
    growths: list[dict[str, Any]] = field(default_factory=list)
    noise: NoiseMeter | None = None  # gradient-noise averages (signals.noise)


@dataclass
class Session:
    """What one run holds while it trains (built by ``open_session``)."""

    cfg: Config
    env: D.DistEnv
    run_dir: Path
    data: Data
    model: nn.Module
    optimizer: torch.optim.Optimizer
    policy: Policy
    st: TrainState
    runlog: RunLog
    totals: dict[str, float]  # seconds of train / hessian / eval, over all starts
    rt: Runtime
    probe: ProbeSettings
    logger: MultiLogger = field(default_factory=lambda: MultiLogger([]))


# --- construction -------------------------------------------------------------------------


def policy_for(cfg: Config) -> Policy:
    """The schedule policy of ``cfg`` (absa.core.policies' registry), with a replay's
    trajectory read from the run folder it names."""
    traj = None
    if spec_of(cfg.schedule.method).replays:
        traj = replay_trajectory(cfg.schedule.replay_from, cfg.train.epochs)
    return make_policy(cfg, traj)


def replay_trajectory(run_dir: Path | None, epochs: int) -> dict[str, list[Any]]:
    """Batch size, lr and adversarial fraction per epoch from a finished run's metrics."""
    key = "schedule.replay_from"
    if run_dir is None or not (Path(run_dir) / SUMMARY).is_file():
        raise ConfigError(f"{key}: {run_dir} is not a finished run folder (no summary.json)")
    records = sorted(read_metrics(Path(run_dir)), key=lambda r: r.get("epoch", -1))
    if [r.get("epoch") for r in records[:epochs]] != list(range(epochs)):
        raise ConfigError(
            f"{key}: {run_dir}/metrics.jsonl records {len(records)} epochs, train.epochs "
            f"asks for {epochs}"
        )
    try:
        return {
            "batches": [int(r["batch_size"]) for r in records[:epochs]],
            "lrs": [float(r["lr"]) for r in records[:epochs]],
            "adv_fractions": [float(r["adv_fraction"]) for r in records[:epochs]],
        }
    except (KeyError, TypeError, ValueError):
        msg = f"{key}: {run_dir}/metrics.jsonl lacks batch_size/lr/adv_fraction"
        raise ConfigError(msg) from None


def make_optimizer(model: nn.Module, cfg: Config) -> torch.optim.Optimizer:
    """``cfg.optim``'s optimizer (absa.engine.optim; the default is the plain SGD of the paper)."""
    return build_optimizer(model, cfg)


def noise_meter(cfg: Config, state: dict[str, Any] | None) -> NoiseMeter | None:
    """The gradient-noise meter (``signals.noise``), restored from a checkpoint's state."""
    if not cfg.signals.noise:
        return None
    meter = NoiseMeter(ema=cfg.signals.noise_ema)
    if state is not None:
        meter.load_state_dict(state)
    return meter


def seed_everything(cfg: Config) -> None:
    """Global torch seed, threads and determinism of ``cfg.train``."""
    torch.manual_seed(cfg.train.seed)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    if cfg.train.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)


# --- start or resume ------------------------------------------------------------------------


def open_session(
    cfg: Config,
    env: D.DistEnv,
    run_dir: Path,
    data: Data,
    model: nn.Module,
    resume: bool,
    say: Callable[[str], None],
) -> Session:
    """Bring the run folder (lock held) to a consistent start: restore or clean, then write
    the resolved config and append this start to env.json."""
    optimizer = make_optimizer(model, cfg)
    policy = policy_for(cfg)
    runlog = RunLog(run_dir, enabled=env.is_main)
    rt = Runtime.plain(cfg, env.device)
    st = TrainState(noise=noise_meter(cfg, None))
    totals = {"train": 0.0, "hessian": 0.0, "eval": 0.0}
    probe = ProbeSettings.from_config(cfg)
    s = Session(cfg, env, run_dir, data, model, optimizer, policy, st, runlog, totals, rt, probe)
    reprobe = False  # a resumed run whose max_micro_batch became auto
    if env.is_main:
        clean_temps(run_dir)
    if resume and not (run_dir / ckpt_io.LAST).is_file():
        say(f"{run_dir}: no checkpoint yet (no epoch was completed); starting at epoch 0")
        resume = False
    if resume:
        reprobe = _restore(s, say)
    else:
        if env.is_main and state(run_dir) != "empty":  # a run appeared since the CLI checked
            raise RunFolderError(f"{run_dir}: already holds a run; pass --resume {run_dir}")
        s.runlog.restore_metrics(0, None)  # leftovers of a start that completed no epoch
    s.runlog.write_config(cfg)
    s.runlog.write_env(environment(env.world_size), append=resume)
    for rec in read_metrics(run_dir) if resume and env.is_main else []:
        for k in s.totals:
            s.totals[k] += rec.get(f"{k}_seconds", 0.0) or 0.0
    if cfg.batch.max_micro_batch == "auto" and (not resume or reprobe):
        s.rt.micro = auto_micro(cfg, env, data, model, s.rt, run_dir, say)
    if env.is_main:
        # a start that completed no epoch leaves step lines behind too: always trim
        s.logger = make_loggers(cfg.log, run_dir, to_dict(cfg), s.st.updates)
    return s


def _restore(s: Session, say: Callable[[str], None]) -> bool:
    """Load the last checkpoint into ``s`` (weights, optimizer, policy, counters, noise
    averages, loss scaler, micro-batch, RNG states); True when ``auto`` must probe anew."""
    last = s.run_dir / ckpt_io.LAST
    # on the CPU: the RNG states must be CPU tensors
    ck = ckpt_io.load_for_resume(s.run_dir, "cpu", say, repair=s.env.is_main)
    check_resume_config(s.cfg, ck["config"], str(last), ck["epoch"])
    s.model.load_state_dict(ck["model"])
    s.optimizer.load_state_dict(ck["optimizer"])
    s.policy.load_state_dict(ck["policy"])
    s.st = TrainState(
        ck["epoch"], ck["updates"], ck["best_test_acc"], ck["hessian_vector"], ck["growths"]
    )
    s.st.noise = noise_meter(s.cfg, ck.get("signals"))
    s.rt.precision.load_state_dict(ck.get("scaler"))
    reprobe = resume_micro(s.cfg, ck, s.rt, say)
    ckpt_io.set_rng_state(ck["rng"])
    s.runlog.restore_metrics(s.st.epoch, ck.get("record"))
    say(f"resumed {s.run_dir} at epoch {s.st.epoch} ({s.st.updates} updates)")
    return reprobe


# --- the checkpoint -------------------------------------------------------------------------


def checkpoint_payload(s: Session) -> dict[str, Any]:
    """What last.pt holds besides the runtime and the epoch's record."""
    bare = D.unwrap(s.model)
    return {
        "model": bare.state_dict(),
        "optimizer": s.optimizer.state_dict(),
        "policy": s.policy.state_dict(),
        "epoch": s.st.epoch,
        "updates": s.st.updates,
        "best_test_acc": s.st.best_test_acc,
        "growths": s.st.growths,
        "hessian_vector": s.st.hessian_vector,
        "config": to_dict(s.cfg),
        "arch": getattr(bare, "arch", type(bare).__name__),
        "rng": ckpt_io.rng_state(),
        "signals": s.st.noise.state_dict() if s.st.noise is not None else None,
    }


def save_checkpoint(s: Session, record: dict[str, Any]) -> None:
    """Write last.pt atomically (rank 0): the state, the runtime (loss scaler, micro-batch
    in force) and the epoch's metrics record."""
    payload = checkpoint_payload(s)
    extra = {"scaler": s.rt.precision.state_dict(), "micro_batch": s.rt.micro}
    ckpt_io.save(s.run_dir / ckpt_io.LAST, {**payload, **extra, "record": record})
