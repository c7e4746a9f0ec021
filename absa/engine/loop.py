"""The training loop: ``run(cfg)`` composes data, model, policy, Hessian probe and attacks.

The recipe (``execute``, then ``train_epochs``): check and load, open the run folder (fresh
or resumed from last.pt: absa.engine.session), then per epoch

1. plan: the policy's batch B, lr eta and adversarial fraction r;
2. train: one pass over the seeded permutation in logical batches of B, each split into this
   rank's share and micro-batches whose summed-loss gradients accumulate to exactly the
   mean-loss gradient of the whole logical batch (absa.engine.epoch, absa.engine.step);
3. probe: the top Hessian eigenvalue lambda_max on the fixed probe set, when the policy asks;
4. observe: the policy sees lambda_max (and the gradient noise) and may grow B;
5. evaluate on the test split;
6. checkpoint (atomic last.pt), then log: one metrics line (absa.engine.records).

Finally the robust evaluation and summary.json. The names other code imports from here
(``__all__``) live in the modules that hold them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from absa import distributed as D
from absa.core.policies import Growth
from absa.engine.accel import AUTO_MICRO_CPU, Runtime, oom_guard, prepare_model, to_device_data
from absa.engine.checks import (
    check_batch_fits,
    check_divisible,
    check_hessian_block,
    check_run_dir,
    default_run_name,
    lock_run_dir,
    prepare_run_dir,
)
from absa.engine.epoch import TrainingDiverged, train_epoch
from absa.engine.evaluation import EvalResult, evaluate, robustness
from absa.engine.microbatch import agree_micro_batch
from absa.engine.probes import ProbeResult, hessian_probe, measure, overhead_allows, probe_indices
from absa.engine.records import Summary, epoch_line, epoch_record, step_hook, summarize
from absa.engine.session import (
    Session,
    make_optimizer,
    noise_meter,
    open_session,
    policy_for,
    save_checkpoint,
    seed_everything,
)
from absa.engine.step import accumulate_gradients
from absa.run.config import Config, ConfigError
from absa.run.data import Data, load_data
from absa.run.folder import RunFolderError
from absa.run.models import build_from_config

__all__ = [
    "AUTO_MICRO_CPU",
    "ConfigError",
    "RunFolderError",
    "Runtime",
    "Summary",
    "Trained",
    "TrainingDiverged",
    "accumulate_gradients",
    "agree_micro_batch",
    "check_divisible",
    "check_run_dir",
    "default_run_name",
    "execute",
    "make_optimizer",
    "noise_meter",
    "policy_for",
    "prepare_run_dir",
    "run",
    "train_epoch",
    "train_epochs",
]

ProgressFactory = Callable[[int, int], Callable[[int, int, float], None] | None]


@dataclass
class Trained:
    """What ``execute`` returns: the summary, the trained (bare) model, its data, the folder."""

    summary: Summary
    model: nn.Module
    data: Data
    run_dir: Path


def run(
    cfg: Config,
    env: D.DistEnv | None = None,
    run_dir: Path | None = None,
    resume: bool = False,
    log: Callable[[str], None] | None = None,
    progress: ProgressFactory | None = None,
) -> Summary:
    """Train per ``cfg``; write metrics and checkpoints into ``run_dir`` (rank 0 only)."""
    return execute(cfg, env, run_dir, resume, log, progress).summary


def execute(
    cfg: Config,
    env: D.DistEnv | None = None,
    run_dir: Path | None = None,
    resume: bool = False,
    log: Callable[[str], None] | None = None,
    progress: ProgressFactory | None = None,
    model: nn.Module | None = None,
    data: Data | None = None,
) -> Trained:
    """``run``, optionally with the caller's own ``model`` (an nn.Module following
    absa.run.models' shape: ``classifier`` head and ``features``; inputs in [0, 1] pixels) and
    ``data`` (absa.run.data.Data) instead of the ones ``cfg`` names.

    Rank 0 holds the run folder's lock (absa.run.rundir) from before the first write to the end.
    """
    env = env or D.setup(cfg.train.device, cfg.distributed.backend, cfg.distributed.timeout_s)
    run_dir = Path(run_dir) if run_dir is not None else prepare_run_dir(cfg, "run", None)
    say = log if (log is not None and env.is_main) else (lambda _msg: None)
    seed_everything(cfg)
    check_divisible(cfg, env.world_size)
    data = data if data is not None else load_data(cfg.data)  # fails before any write
    check_batch_fits(cfg, len(data.train))
    _place_data(data, env, cfg.data.on_device, say)
    model = (model if model is not None else build_from_config(cfg.model, data.info)).to(env.device)
    check_hessian_block(cfg, model)
    lock = lock_run_dir(run_dir, resume) if env.is_main else None
    s = None
    try:
        s = open_session(cfg, env, run_dir, data, model, resume, say)
        test = train_epochs(s, progress, say)
        return Trained(_finish(s, test), model, data, run_dir)
    finally:
        if s is not None:
            s.logger.close()
        if lock is not None:
            lock.release()


def train_epochs(
    s: Session, progress: ProgressFactory | None, say: Callable[[str], None]
) -> EvalResult | None:
    """The epoch loop: plan, train, probe, observe, evaluate, checkpoint, log. Returns the
    last epoch's test result (None when no epoch was left to train)."""
    cfg, env, st = s.cfg, s.env, s.st
    model = _training_module(s.model, cfg, env, say)
    probe_idx = probe_indices(len(s.data.train), cfg.hessian.probe_size, cfg.train.seed)
    test = None
    for epoch in range(st.epoch, cfg.train.epochs):
        plan = s.policy.plan(epoch)
        bar = progress(epoch, cfg.train.epochs) if progress and env.is_main else None
        on_step = step_hook(bar, s.logger, st.updates, cfg.log.every_steps)
        t0 = time.perf_counter()
        tr = train_epoch(
            model, s.optimizer, s.data, cfg, env, s.policy, epoch, on_step, st.noise, s.rt
        )
        t_train = time.perf_counter() - t0
        st.updates += tr.steps

        probe = _probe(s, plan.probe, probe_idx, epoch, bar)
        signals = measure(plan.wants, probe, st.noise)
        growth: Growth | None = s.policy.observe(epoch, signals)
        if growth is not None:
            st.growths.append(asdict(growth))

        test, t_eval = _evaluate(s, bar)
        st.best_test_acc = max(st.best_test_acc, test.acc)
        st.epoch = epoch + 1
        times = {"train": t_train, "hessian": probe.seconds if probe else 0.0, "eval": t_eval}
        for k, seconds in times.items():
            s.totals[k] += seconds
        record = epoch_record(s, epoch, plan, tr, test, probe, growth, times, signals)
        if env.is_main:  # checkpoint first: metrics never hold an epoch last.pt lacks
            save_checkpoint(s, record)
        s.runlog.append_metrics(record)
        s.logger.log_epoch(record)
        env.barrier()
        say(epoch_line(record, cfg.train.epochs))
    return test


def _place_data(
    data: Data, env: D.DistEnv, on_device: bool | str, say: Callable[[str], None]
) -> None:
    """Move tensor splits to the accelerator as ``data.on_device`` says (absa.engine.accel)."""
    for split in ("train", "test"):
        moved, note = to_device_data(getattr(data, split), env.device, on_device)
        setattr(data, split, moved)
        if note and split == "train":
            say(note)


def _training_module(
    model: nn.Module, cfg: Config, env: D.DistEnv, say: Callable[[str], None]
) -> nn.Module:
    """The module train_epoch steps: ``model`` (in place: channels_last) under DDP and
    torch.compile as configured; checkpoints, probes and evaluation use ``model`` itself."""
    bare = prepare_model(model, cfg.train.channels_last, False, say)
    wrapped = D.wrap_model(bare, env, cfg.distributed.sync_batchnorm)
    return prepare_model(wrapped, False, cfg.train.compile, say, cfg.train.compile_mode)


def _probe(
    s: Session, wanted: bool, probe_idx: torch.Tensor, epoch: int, bar: Callable[..., None] | None
) -> ProbeResult | None:
    """The epoch's Hessian probe when the policy asks for it and ``hessian.max_overhead``
    allows, in chunks of the micro-batch in force; on one process an out-of-memory probe
    halves it (kept for the rest of the run, like a training step's backoff), under DDP the
    error is raised (the ranks are inside the HVP all-reduces)."""
    if not (wanted and overhead_allows(s.probe.max_overhead, s.totals, s.env)):
        return None
    if bar is not None:
        bar(0, 0, {"phase": "hessian"})
    while True:
        try:
            with oom_guard(s.env.device):
                vector = s.st.hessian_vector
                probe = hessian_probe(
                    s.model, s.data, s.probe, s.env, probe_idx, epoch, vector, micro=s.rt.micro
                )
            break
        except Exception as err:
            s.rt.back_off(err, s.env.distributed, epoch, -1)
    s.st.hessian_vector = probe.vector
    if bar is not None:
        bar(1, 1, {"phase": "hessian", "lambda_max": probe.eigenvalue})
    return probe


def _evaluate(s: Session, bar: Callable[..., None] | None) -> tuple[EvalResult, float]:
    """The epoch's test evaluation (in the run's precision) and its seconds."""
    if bar is not None:
        bar(0, 0, {"phase": "eval"})
    t1 = time.perf_counter()
    with s.rt.precision.autocast():
        test = evaluate(s.model, s.data.test, s.env, s.cfg.train.eval_batch)
    return test, time.perf_counter() - t1


def _finish(s: Session, test: EvalResult | None) -> Summary:
    """Final (robust) evaluation and summary.json: from now on the folder holds a finished run."""
    cfg, env = s.cfg, s.env
    if test is None:  # nothing left to train (resumed a finished run)
        with s.rt.precision.autocast():
            test = evaluate(s.model, s.data.test, env, cfg.train.eval_batch)
    adv = cfg.adversarial
    robust = []
    if adv.final_eval:
        eps = list(adv.eval_eps)
        robust = robustness(
            s.model, s.data.test, env, eps, adv.pgd_steps, cfg.train.eval_batch, adv.eval_limit
        )
    summary = summarize(s, test, robust)
    s.runlog.write_summary(asdict(summary))
    return summary
