"""The training loop: ``run(cfg)`` composes data, model, policy, Hessian probe and attacks.

Per epoch: the policy's plan (batch B, lr eta, adversarial fraction r) -> one pass over the
seeded permutation in logical batches of B, each split into this rank's share and then into
micro-batches of at most ``batch.max_micro_batch`` whose summed-loss gradients accumulate to
exactly the mean-loss gradient of the whole logical batch -> the top Hessian eigenvalue
lambda_max on the fixed probe set when the policy asks -> the policy observes lambda_max and
may grow B -> test evaluation -> one metrics line and an atomic checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from absa import distributed as D
from absa.engine.accel import (
    Precision,
    is_oom,
    oom_guard,
    prepare_model,
    probe_micro_batch,
    to_device_data,
    to_input,
)
from absa.engine.evaluation import EvalResult, evaluate, robustness
from absa.engine.loggers import MultiLogger, make_loggers
from absa.engine.optim import build_optimizer
from absa.engine.probes import (
    NoiseMeter,
    ProbeResult,
    hessian_probe,
    measure,
    overhead_allows,
    probe_indices,
)
from absa.math.attacks import make_adversarial
from absa.math.hessian import select_params
from absa.math.policies import GROWING, Growth, Policy
from absa.run import checkpoint as ckpt_io
from absa.run.config import Config, ConfigError, from_dict, to_dict
from absa.run.data import (
    Data,
    FolderSplit,
    apply_augment,
    augment_params,
    epoch_permutation,
    global_batches,
    load_data,
    local_positions,
    resolve_augment,
    stream_batches,
)
from absa.run.folder import (
    RunFolderError,
    RunLock,
    RunLog,
    atomic_write_text,
    clean_temps,
    environment,
    holder,
    read_metrics,
    state,
)
from absa.run.models import build_from_config, code_imports, model_mode
from absa.run.policy import make_policy


class TrainingDiverged(RuntimeError):
    """Loss became NaN/inf; the message names epoch and step."""


@dataclass
class Summary:
    run_dir: str
    epochs: int
    updates: int
    final_batch: int
    test_loss: float
    test_acc: float
    best_test_acc: float
    train_seconds: float
    hessian_seconds: float
    eval_seconds: float
    growths: list[dict[str, Any]] = field(default_factory=list)
    robust: list[dict[str, Any]] = field(default_factory=list)  # adversarial.final_eval rows
    start_batch: int = 0  # batch.size, the first epoch's batch
    start_lr: float = 0.0  # optim.lr
    bl_updates: int = 0  # updates BL at start_batch would take for these epochs (one process)


# --- construction -------------------------------------------------------------------------


def policy_for(cfg: Config) -> Policy:
    """The schedule policy of ``cfg`` (schedules' registry), with a replay's trajectory read
    from the run folder it names."""
    traj = None
    if cfg.schedule.method == "replay":
        traj = replay_trajectory(cfg.schedule.replay_from, cfg.train.epochs)
    return make_policy(cfg, traj)


def replay_trajectory(run_dir: Path | None, epochs: int) -> dict[str, list[Any]]:
    """Batch size, lr and adversarial fraction per epoch from a finished run's metrics."""
    key = "schedule.replay_from"
    if run_dir is None or not (Path(run_dir) / "summary.json").is_file():
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


def default_run_name(cfg: Config, stem: str = "run") -> str:
    """``<stem>-<method>-b<batch>-s<seed>``, the stem reduced to safe characters."""
    safe = re.sub(r"[^A-Za-z0-9._+=-]+", "_", stem).strip("._-+=")[:64] or "run"
    return f"{safe}-{cfg.schedule.method}-b{cfg.batch.size}-s{cfg.train.seed}"


def _seed_everything(cfg: Config) -> None:
    torch.manual_seed(cfg.train.seed)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    if cfg.train.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)


# --- one epoch ----------------------------------------------------------------------------


@dataclass
class EpochStats:
    loss: float
    acc: float
    steps: int
    samples: int
    adv_samples: int


@dataclass
class Runtime:
    """How this run executes (absa.engine.accel), as opposed to what it computes: precision and its
    scaler, the micro-batch size in force (after ``auto`` sizing and OOM backoffs) and the
    memory format of inputs."""

    precision: Precision
    micro: int
    channels_last: bool = False
    backoffs: list[dict[str, int]] = field(default_factory=list)

    @classmethod
    def plain(cls, cfg: Config, device: torch.device) -> Runtime:
        """The runtime of ``cfg`` without any probing (``auto`` micro-batch: 256)."""
        micro = cfg.batch.max_micro_batch
        return cls(
            Precision.create(cfg.train.precision, torch.device(device)),
            micro if isinstance(micro, int) else AUTO_MICRO_CPU,
            cfg.train.channels_last,
        )

    def back_off(self, err: Exception, distributed: bool, epoch: int, step: int) -> None:
        """After ``err`` in a step (``step`` >= 0) or the Hessian probe (-1): halve the
        micro-batch for the rest of the run and record it, or re-raise when ``err`` is no
        out-of-memory error, under DDP (the other ranks are inside the collectives) or at 1."""
        if not is_oom(err) or distributed or self.micro <= 1:
            raise err
        self.micro = max(1, self.micro // 2)
        self.backoffs.append({"epoch": epoch, "step": step, "micro_batch": self.micro})


AUTO_MICRO_CPU = 256  # batch.max_micro_batch: auto without an accelerator to probe


def _adversarial_count(n_batch: int, r: float, rank: int, world: int) -> int:
    """How many of this rank's samples of a logical batch of ``n_batch`` are adversarial: the
    first round(r * n_batch) positions of each logical batch are, and since a batch is
    consecutive positions and a rank's share every ``world``-th one from ``rank``, they are a
    prefix of that share, counted here from sizes alone (no tensor, nothing to read)."""
    return len(range(rank, int(round(r * n_batch)), world))


def accumulate_gradients(
    model: nn.Module,
    micro: Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    n_global: int,
    env: D.DistEnv,
    cfg: Config,
    noise: NoiseMeter | None = None,
    split: bool = False,
    rt: Runtime | None = None,
) -> torch.Tensor:
    """Accumulate into ``.grad`` the gradient of the mean loss over one logical batch.

    ``micro`` yields this rank's micro-batches ``(x, y, adv_mask)``; samples flagged in
    ``adv_mask`` are replaced by adversarial examples crafted on the bare module. Each
    micro-batch contributes (sum of its losses) * world / n_global, and DDP averages over
    ranks, so the result equals (1/n_global) sum_i grad l_i exactly. DDP syncs only on the
    last micro-batch. With ``noise``, each micro-batch's gradient is handed to the meter
    (absa.engine.probes: the last one only on a single process), and with ``split`` a lone
    micro-batch also gives its first half's gradient by one extra backward; ``.grad`` is
    the same either way. ``rt`` gives the autocast precision (adversarial crafting included;
    clamping stays fp32) and the loss scaler of fp16, whose factor ``.grad`` then carries.
    Returns float64 [loss sum, correct, samples] of this rank.
    """
    rt = rt or Runtime.plain(cfg, env.device)
    params = []  # unwrapping costs a failed attribute lookup: only for the noise meter
    if noise is not None:
        params = [p for p in D.unwrap(model).parameters() if p.requires_grad]
    scale = env.world_size / n_global
    loss_acc: torch.Tensor | None = None  # float64 sums on the device: nothing read here
    correct: torch.Tensor | None = None
    samples = 0
    it = iter(micro)
    upcoming = next(it, None)
    first = True
    while upcoming is not None:  # one micro-batch of look-ahead to know which is last
        (x, y, m_adv), upcoming = upcoming, next(it, None)
        x, y = x.to(env.device, non_blocking=True), y.to(env.device, non_blocking=True)
        x = to_input(x, rt.channels_last)
        last = upcoming is None
        no_sync = D.maybe_no_sync(model, not last) if env.distributed else contextlib.nullcontext()
        with no_sync:
            half = noise is not None and split and first and last and len(y) >= 2
            with rt.precision.autocast():
                x = _with_adversarial(model, x, y, m_adv, cfg)
                # the half-batch gradient differentiates this graph twice (retain_graph), which
                # a compiled graph refuses once it donated its saved buffers: eager module here
                out = (D.unwrap(model) if half else model)(x)
                loss_sum = F.cross_entropy(out, y, reduction="sum")
            if half:
                _half_gradient(noise, out, y, params)
            rt.precision.backward(loss_sum * scale)
        # the last micro-batch under DDP holds all-reduced gradients, and a step's only one on
        # a single process is the whole batch: neither is a small-batch estimate (b < B)
        if noise is not None and not (last and (env.distributed or first)):
            noise.micro_done(params, len(y), scale * rt.precision.loss_scale)
        first = False
        # the float64 sum 0 + l_1 + l_2 + ... as before (0 + l_1 is l_1 exactly), on the
        # device: train_epoch reads it at its logging points and at the end of the epoch
        loss = loss_sum.detach().double()
        hits = (out.detach().argmax(1) == y).sum()
        loss_acc = loss if loss_acc is None else loss_acc + loss
        correct = hits if correct is None else correct + hits
        samples += len(y)
    if loss_acc is None or correct is None:  # no micro-batch at all
        return torch.zeros(3, dtype=torch.float64, device=env.device)
    n = torch.full((), float(samples), dtype=torch.float64, device=loss_acc.device)
    return torch.stack([loss_acc, correct.double(), n])


def _with_adversarial(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, m_adv: torch.Tensor | int, cfg: Config
) -> torch.Tensor:
    """``x`` with the flagged samples replaced by adversarial examples (crafted on the bare
    module under ``model``'s torch.compile / DDP wrappers).

    ``m_adv``: a boolean mask, or an int k for the first k samples (the trainer's case,
    decided on the host: a device mask would need a read, and indexing by it a sync)."""
    if isinstance(m_adv, int):
        if m_adv <= 0:
            return x
        sel: slice | torch.Tensor = slice(0, m_adv)
    else:
        if not bool(m_adv.any()):  # a host mask (or a caller's device mask: one read)
            return x
        sel = m_adv.to(x.device)
    adv = cfg.adversarial
    bare = D.unwrap(model)
    with model_mode(bare, train=adv.model_mode == "train"):
        x = x.clone()
        x[sel] = make_adversarial(bare, x[sel], y[sel], adv.method, adv.eps, **_attack_kw(cfg))
    return x


def _half_gradient(
    noise: NoiseMeter, out: torch.Tensor, y: torch.Tensor, params: list[nn.Parameter]
) -> None:
    """Mean gradient of the first half of a micro-batch, from the retained graph."""
    half = len(y) // 2
    loss = F.cross_entropy(out[:half], y[:half], reduction="sum")
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    noise.add_small(
        [
            (g if g is not None else torch.zeros_like(p)).float() / half
            for g, p in zip(grads, params, strict=True)
        ],
        half,
    )


def _starts(sizes: list[int]) -> list[int]:
    """Where each of consecutive chunks of ``sizes`` begins."""
    return [sum(sizes[:i]) for i in range(len(sizes))]


def _split_steps(n_steps: int, k: int) -> set[int]:
    """``k`` evenly spaced step indices of an epoch of ``n_steps`` (all when k >= n_steps)."""
    if k <= 0:
        return set()
    k = min(k, n_steps)
    return {round(i * n_steps / k) for i in range(k)}


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    data: Data,
    cfg: Config,
    env: D.DistEnv,
    policy: Policy,
    epoch: int,
    on_step: Callable[[int, int, dict[str, Any]], None] | None = None,
    noise: NoiseMeter | None = None,
    rt: Runtime | None = None,
) -> EpochStats:
    """One pass over the training split at the policy's batch size; returns train metrics.

    On a single process an out-of-memory step is retried with half the micro-batch (kept
    for the rest of the run, recorded in ``rt.backoffs``); under DDP it is raised, since the
    other ranks are already inside the step's collectives."""
    rt = rt or Runtime.plain(cfg, env.device)
    plan = policy.plan(epoch)
    n = len(data.train)
    seed = cfg.train.seed
    perm = epoch_permutation(n, seed, epoch)
    mode = resolve_augment(cfg.data.augment, data.info)
    if isinstance(data.train, FolderSplit) and data.train.augments:  # its own crop + flip
        mode = "none"
    aug = augment_params(n, seed, epoch, mode, data.info.image_size)
    batches = global_batches(n, plan.batch_size)
    if env.distributed and len(batches[-1]) < env.world_size:
        batches = batches[:-1]  # every rank needs at least one sample per step
    if env.distributed and cfg.distributed.sync_batchnorm:  # equal shares: same collectives
        batches = [b[: len(b) - len(b) % env.world_size] for b in batches]
    split_at = _split_steps(len(batches), cfg.signals.noise_split_steps) if noise else set()
    params = [p for p in D.unwrap(model).parameters() if p.requires_grad]
    model.train()
    # Nothing below reads the device in the steady state: the running sums stay there
    # (float64), the adversarial count comes from sizes, finiteness is a device flag read
    # every FINITE_CHECK_EVERY steps, and on_step gets the sums only where it asks for them.
    stats = torch.zeros(3, dtype=torch.float64, device=env.device)  # loss sum, correct, samples
    adv_samples = 0  # this rank's adversarial samples (a host count)
    losses = torch.zeros(len(batches), dtype=torch.float64, device=env.device)  # step sums
    checked = 0  # steps whose losses were checked finite
    wants = _stats_wanted(on_step)
    for step, batch_pos in enumerate(batches):
        lr = policy.lr_at(epoch, step / len(batches))
        for group in optimizer.param_groups:
            group["lr"] = lr
        local = local_positions(batch_pos, env.rank, env.world_size)
        n_adv = _adversarial_count(len(batch_pos), plan.adv_fraction, env.rank, env.world_size)

        def micro_iter(local=local, n_adv=n_adv):
            # micro_batches' consecutive chunks, as sizes (folder data: decoded ahead by its
            # workers) and slices of this rank's positions
            sizes = [min(rt.micro, len(local) - s) for s in range(0, len(local), rt.micro)]
            order = perm[local]
            if isinstance(data.train, FolderSplit):
                xys = stream_batches(data.train, order, sizes, True, epoch, seed)
            else:  # stream_batches' chunks of a split in memory, without its generator
                bounds = zip(_starts(sizes), sizes, strict=True)
                xys = (data.train.get(order[s : s + n]) for s, n in bounds)
            start = 0
            for size, (x, y) in zip(sizes, xys, strict=True):
                if aug is not None:
                    x = apply_augment(x, aug.take(local[start : start + size]))
                yield x, y, min(max(n_adv - start, 0), size)  # adversarial: a prefix
                start += size

        split = step in split_at and not env.distributed
        while True:
            optimizer.zero_grad(set_to_none=True)
            if noise is not None:
                noise.begin_step(params)
            try:
                with oom_guard(env.device):
                    out = accumulate_gradients(
                        model, micro_iter(), len(batch_pos), env, cfg, noise, split, rt
                    )
                break
            except Exception as err:
                rt.back_off(err, env.distributed, epoch, step)
        rt.precision.unscale(optimizer)
        if noise is not None:
            noise.end_step(params, len(batch_pos))
        losses[step] = out[0]
        if (step + 1) % FINITE_CHECK_EVERY == 0 or step + 1 == len(batches):
            _check_finite(losses[checked : step + 1], checked, env, epoch)  # and before last.pt
            checked = step + 1
        rt.precision.step(optimizer)
        stats += out
        adv_samples += n_adv
        if on_step is not None:
            read = wants is None or wants(step + 1, len(batches))
            on_step(step + 1, len(batches), _step_info(plan, lr, stats, out, read))
    total = env.all_reduce_sum(
        torch.cat([stats, torch.tensor([float(adv_samples)], dtype=torch.float64).to(env.device)])
    ).cpu()
    count = max(total[2].item(), 1.0)
    return EpochStats(
        loss=total[0].item() / count,
        acc=100.0 * total[1].item() / count,
        steps=len(batches),
        samples=int(total[2].item()),
        adv_samples=int(total[3].item()),
    )


# A diverged loss stops the run within this many steps (and always before the epoch's
# checkpoint); the message names the step where it first went non-finite.
FINITE_CHECK_EVERY = 16
STATS_EVERY = 16  # the live bar's loss/accuracy: read from the device every this many steps


def _stats_wanted(
    on_step: Callable[[int, int, dict[str, Any]], None] | None,
) -> Callable[[int, int], bool] | None:
    """``on_step.wants_stats(step, n_steps)``: whether that call needs the running loss /
    accuracy (a read from the device); a callback without it gets them at every step."""
    return getattr(on_step, "wants_stats", None)


def _step_info(
    plan: Any, lr: float, stats: torch.Tensor, out: torch.Tensor, read: bool = True
) -> dict[str, Any]:
    """What ``on_step`` gets after a step: its settings, this step's mean loss and the
    epoch's running mean loss / accuracy so far (this rank's samples). Without ``read`` the
    three numbers are None (nothing is read from the device)."""
    info = {
        "phase": "train",
        "lr": lr,
        "batch_size": plan.batch_size,
        "adv_fraction": plan.adv_fraction,
        "step_loss": None,
        "loss": None,
        "acc": None,
    }
    if read:
        (s_loss, s_correct, s_seen), (o_loss, _, o_seen) = torch.stack([stats, out]).tolist()
        seen = max(s_seen, 1.0)
        info["step_loss"] = o_loss / max(o_seen, 1.0)
        info["loss"] = s_loss / seen
        info["acc"] = 100.0 * s_correct / seen
    return info


def _attack_kw(cfg: Config) -> dict[str, Any]:
    adv = cfg.adversarial
    if adv.method == "pgd":
        kw: dict[str, Any] = {"steps": adv.pgd_steps}
        if adv.pgd_step_size is not None:
            kw["step_size"] = adv.pgd_step_size
        return kw
    return {}


def _check_finite(losses: torch.Tensor, first: int, env: D.DistEnv, epoch: int) -> None:
    """Collective, one read: stop every rank if any rank's loss sum was NaN/inf at one of the
    steps ``first``, ``first + 1``, ... whose sums ``losses`` holds; the message names the
    earliest such step over the ranks."""
    bad = ~torch.isfinite(losses)
    at = torch.where(bad.any(), bad.int().argmax(), len(losses))
    step = first + int(env.all_reduce_min(at.reshape(1)).item())
    if step < first + len(losses):
        kept = (
            f"last.pt keeps epoch {epoch - 1} (the last completed one)"
            if epoch > 0
            else "no epoch was completed, so there is no checkpoint"
        )
        raise TrainingDiverged(  # 0-based, as everywhere (console and files)
            f"non-finite loss at epoch {epoch}, step {step} (0-based); {kept}"
        )


# --- the run ------------------------------------------------------------------------------


@dataclass
class TrainState:
    epoch: int = 0  # epochs completed
    updates: int = 0
    best_test_acc: float = 0.0
    hessian_vector: Any = None
    growths: list[dict[str, Any]] = field(default_factory=list)
    noise: NoiseMeter | None = None  # gradient-noise averages (signals.noise)


def _checkpoint_payload(
    model: nn.Module, optimizer: torch.optim.Optimizer, policy: Policy, cfg: Config, st: TrainState
) -> dict[str, Any]:
    return {
        "model": D.unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict(),
        "policy": policy.state_dict(),
        "epoch": st.epoch,
        "updates": st.updates,
        "best_test_acc": st.best_test_acc,
        "growths": st.growths,
        "hessian_vector": st.hessian_vector,
        "config": to_dict(cfg),
        "arch": getattr(D.unwrap(model), "arch", type(D.unwrap(model)).__name__),
        "rng": ckpt_io.rng_state(),
        "signals": st.noise.state_dict() if st.noise is not None else None,
    }


RESUME_MAY_CHANGE = {("train", "epochs"), ("batch", "max_micro_batch")}


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


def check_divisible(cfg: Config, world: int) -> None:
    """The global batch (and its cap, for growing methods) must split evenly over ranks."""
    sizes = [("batch.size", cfg.batch.size)]
    if cfg.schedule.method in GROWING and cfg.schedule.max_batch is not None:
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


# gradient-noise fields of a metrics line (absa.engine.probes.NoiseMeter.epoch_signals)
NOISE_FIELDS = ("noise_scale", "noise_snr", "noise_trace", "noise_g2", "ip_variance", "noise_steps")

ProgressFactory = Callable[[int, int], Callable[[int, int, float], None] | None]


@dataclass
class _Run:
    """What one run holds while it trains (built by ``_open``)."""

    cfg: Config
    env: D.DistEnv
    run_dir: Path
    data: Data
    model: nn.Module
    optimizer: torch.optim.Optimizer
    policy: Policy
    st: TrainState
    runlog: RunLog
    totals: dict[str, float]
    rt: Runtime
    logger: MultiLogger = field(default_factory=lambda: MultiLogger([]))


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


@dataclass
class Trained:
    """What ``execute`` returns: the summary, the trained (bare) model, its data, the folder."""

    summary: Summary
    model: nn.Module
    data: Data
    run_dir: Path


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
    _seed_everything(cfg)
    check_divisible(cfg, env.world_size)
    data = data if data is not None else load_data(cfg.data)  # fails before any write
    check_batch_fits(cfg, len(data.train))
    for split in ("train", "test"):
        moved, note = to_device_data(getattr(data, split), env.device, cfg.data.on_device)
        setattr(data, split, moved)
        if note and split == "train":
            say(note)
    model = (model if model is not None else build_from_config(cfg.model, data.info)).to(env.device)
    if cfg.schedule.method in ("abs", "absa", "hybrid"):  # a bad block fails before epoch 1
        try:
            select_params(model, cfg.hessian.block)
        except ValueError as err:
            raise ConfigError(f"hessian.block: {err}") from None
    lock = _lock_run_dir(run_dir, resume) if env.is_main else None
    r = None
    try:
        r = _open(cfg, env, run_dir, data, model, resume, say)
        test = _train_epochs(r, progress, say)
        return Trained(_finish(r, test), model, data, run_dir)
    finally:
        if r is not None:
            r.logger.close()
        if lock is not None:
            lock.release()


def _lock_run_dir(run_dir: Path, resume: bool) -> RunLock:
    """Create and lock the run folder; a folder that cannot be written (read-only file
    system, no permission) is one line naming the setting that chose it."""
    try:
        return RunLock(run_dir).acquire()
    except OSError as err:
        what = "--resume" if resume else "train.out_dir"
        why = err.strerror or str(err)
        raise RunFolderError(f"{what}: cannot write the run folder {run_dir} ({why})") from None


def _open(
    cfg: Config,
    env: D.DistEnv,
    run_dir: Path,
    data: Data,
    model: nn.Module,
    resume: bool,
    say: Callable[[str], None],
) -> _Run:
    """Bring the run folder (lock held) to a consistent start: restore or clean, then write
    the resolved config and append this start to env.json."""
    optimizer = make_optimizer(model, cfg)
    policy = policy_for(cfg)
    runlog = RunLog(run_dir, enabled=env.is_main)
    rt = Runtime.plain(cfg, env.device)
    st = TrainState(noise=_noise_meter(cfg, None))
    probe = False
    if env.is_main:
        clean_temps(run_dir)
    last = run_dir / ckpt_io.LAST
    if resume and not last.is_file():
        say(f"{run_dir}: no checkpoint yet (no epoch was completed); starting at epoch 0")
        resume = False
    if resume:
        ck = ckpt_io.load_for_resume(run_dir, "cpu", say, repair=env.is_main)  # CPU: RNG states
        check_resume_config(cfg, ck["config"], str(last), ck["epoch"])
        model.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        policy.load_state_dict(ck["policy"])
        st = TrainState(
            ck["epoch"], ck["updates"], ck["best_test_acc"], ck["hessian_vector"], ck["growths"]
        )
        st.noise = _noise_meter(cfg, ck.get("signals"))
        rt.precision.load_state_dict(ck.get("scaler"))
        probe = _resume_micro(cfg, ck, rt, say)
        ckpt_io.set_rng_state(ck["rng"])
        runlog.restore_metrics(st.epoch, ck.get("record"))
        say(f"resumed {run_dir} at epoch {st.epoch} ({st.updates} updates)")
    else:
        if env.is_main and state(run_dir) != "empty":  # a run appeared since the CLI checked
            raise RunFolderError(f"{run_dir}: already holds a run; pass --resume {run_dir}")
        runlog.restore_metrics(0, None)  # leftovers of a start that completed no epoch
    runlog.write_config(cfg)
    runlog.write_env(environment(env.world_size), append=resume)
    totals = {"train": 0.0, "hessian": 0.0, "eval": 0.0}
    for rec in read_metrics(run_dir) if resume and env.is_main else []:
        for k in totals:
            totals[k] += rec.get(f"{k}_seconds", 0.0) or 0.0
    if cfg.batch.max_micro_batch == "auto" and (not resume or probe):
        rt.micro = _auto_micro(cfg, env, data, model, rt, run_dir, say)
    logger = MultiLogger([])
    if env.is_main:
        # a start that completed no epoch leaves step lines behind too: always trim
        logger = make_loggers(cfg.log, run_dir, to_dict(cfg), st.updates)
    return _Run(cfg, env, run_dir, data, model, optimizer, policy, st, runlog, totals, rt, logger)


def _resume_micro(cfg: Config, ck: dict[str, Any], rt: Runtime, say: Callable[[str], None]) -> bool:
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


def _auto_micro(
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
        atomic_write_text(run_dir / "micro_batch.json", json.dumps(record) + "\n")
    why = f"out of memory here at {failed or 'none'}"
    if agreed < size:
        why += f"; {size} fits here, a rank with less memory fits {agreed}"
    say(f"batch.max_micro_batch: auto -> {agreed} per process ({why})")
    return agreed


def _noise_meter(cfg: Config, state: dict[str, Any] | None) -> NoiseMeter | None:
    """The gradient-noise meter (``signals.noise``), restored from a checkpoint's state."""
    if not cfg.signals.noise:
        return None
    meter = NoiseMeter(ema=cfg.signals.noise_ema)
    if state is not None:
        meter.load_state_dict(state)
    return meter


def _train_epochs(
    r: _Run, progress: ProgressFactory | None, say: Callable[[str], None]
) -> EvalResult | None:
    """The epoch loop: train, probe, let the policy decide, evaluate, checkpoint, log."""
    cfg, env, st, totals = r.cfg, r.env, r.st, r.totals
    bare = prepare_model(r.model, cfg.train.channels_last, False, say)
    ddp_model = D.wrap_model(bare, env, cfg.distributed.sync_batchnorm)
    ddp_model = prepare_model(ddp_model, False, cfg.train.compile, say)
    probe_idx = probe_indices(len(r.data.train), cfg.hessian.probe_size, cfg.train.seed)
    test = None
    for epoch in range(st.epoch, cfg.train.epochs):
        plan = r.policy.plan(epoch)
        bar = progress(epoch, cfg.train.epochs) if progress and env.is_main else None
        on_step = _step_hook(bar, r.logger, st.updates, cfg.log.every_steps)
        t0 = time.perf_counter()
        tr = train_epoch(
            ddp_model, r.optimizer, r.data, cfg, env, r.policy, epoch, on_step, st.noise, r.rt
        )
        t_train = time.perf_counter() - t0
        st.updates += tr.steps

        probe = None
        if plan.probe and overhead_allows(cfg, totals, env):
            if bar is not None:
                bar(0, 0, {"phase": "hessian"})
            probe = _probe(r, probe_idx, epoch)
            st.hessian_vector = probe.vector
            if bar is not None:
                bar(1, 1, {"phase": "hessian", "lambda_max": probe.eigenvalue})
        signals = measure(plan.wants, probe, st.noise)
        growth: Growth | None = r.policy.observe(epoch, signals)
        if growth is not None:
            st.growths.append(asdict(growth))

        if bar is not None:
            bar(0, 0, {"phase": "eval"})
        t1 = time.perf_counter()
        with r.rt.precision.autocast():
            test = evaluate(r.model, r.data.test, env, cfg.train.eval_batch)
        t_eval = time.perf_counter() - t1
        st.best_test_acc = max(st.best_test_acc, test.acc)
        st.epoch = epoch + 1
        t_hess = probe.seconds if probe else 0.0
        totals["train"] += t_train
        totals["hessian"] += t_hess
        totals["eval"] += t_eval
        times = {"train": t_train, "hessian": t_hess, "eval": t_eval}
        record = _epoch_record(r, epoch, plan, tr, test, probe, growth, times, signals)
        if env.is_main:  # checkpoint first: metrics never hold an epoch last.pt lacks
            payload = _checkpoint_payload(r.model, r.optimizer, r.policy, cfg, st)
            extra = {"scaler": r.rt.precision.state_dict(), "micro_batch": r.rt.micro}
            ckpt_io.save(r.run_dir / ckpt_io.LAST, {**payload, **extra, "record": record})
        r.runlog.append_metrics(record)
        r.logger.log_epoch(record)
        env.barrier()
        say(_epoch_line(record, cfg.train.epochs))
    return test


def _probe(r: _Run, probe_idx: torch.Tensor, epoch: int) -> ProbeResult:
    """The epoch's Hessian probe in chunks of the run's micro-batch in force; on one process
    an out-of-memory probe halves it (kept for the rest of the run, like a training step's
    backoff), under DDP the error is raised (the ranks are inside the HVP all-reduces)."""
    while True:
        try:
            with oom_guard(r.env.device):
                return hessian_probe(
                    r.model, r.data, r.cfg, r.env, probe_idx, epoch, r.st.hessian_vector, r.rt.micro
                )
        except Exception as err:
            r.rt.back_off(err, r.env.distributed, epoch, -1)


def _step_hook(
    bar: Callable[..., None] | None, logger: MultiLogger, done: int, every: int
) -> Callable[[int, int, dict[str, Any]], None] | None:
    """``on_step`` for train_epoch: the live bar, and the loggers' step scalars every
    ``every`` SGD updates (``done`` = updates before this epoch; None when neither wants it).
    Its ``wants_stats`` tells train_epoch at which steps the running loss is read from the
    device: the logged ones, and every STATS_EVERY steps for the bar."""
    if bar is None and not len(logger):
        return None

    def logs(step: int) -> bool:
        return bool(len(logger)) and (done + step) % every == 0

    def hook(step: int, n_steps: int, info: dict[str, Any]) -> None:
        if bar is not None:  # loss/acc None between reads: the bar keeps the last ones
            bar(step, n_steps, {**info, "updates": done + step})
        if logs(step):
            keys = ("lr", "batch_size", "adv_fraction", "step_loss", "loss", "acc")
            logger.log_step(done + step, {k: info[k] for k in keys})

    def wants_stats(step: int, n_steps: int) -> bool:
        """Read the device only for a logged step, and for the bar every STATS_EVERY steps
        and at the epoch's last step."""
        return logs(step) or (bar is not None and (step % STATS_EVERY == 0 or step == n_steps))

    hook.wants_stats = wants_stats  # type: ignore[attr-defined]
    return hook


def _epoch_record(
    r: _Run,
    epoch: int,
    plan: Any,
    tr: EpochStats,
    test: EvalResult,
    probe: ProbeResult | None,
    growth: Growth | None,
    times: dict[str, float],
    signals: dict[str, float | None],
) -> dict[str, Any]:
    """One metrics.jsonl line (0-based epoch)."""
    noise = {k: signals.get(k) for k in NOISE_FIELDS} if r.st.noise is not None else {}
    return {
        "epoch": epoch,
        "method": r.cfg.schedule.method,
        "updates": r.st.updates,
        "batch_size": plan.batch_size,
        "lr": plan.lr,
        "lr_end": r.optimizer.param_groups[0]["lr"],
        "adv_fraction": plan.adv_fraction,
        "samples": tr.samples,  # forward+backward passes of training (all ranks)
        "adv_samples": tr.adv_samples,
        "train_loss": tr.loss,
        "train_acc": tr.acc,
        "test_loss": test.loss,
        "test_acc": test.acc,
        "lambda_max": probe.eigenvalue if probe else None,
        "lambda_max_stderr": probe.stderr if probe else None,
        "hessian_hvps": probe.n_hvp if probe else 0,
        "probe_skipped": plan.probe and probe is None,
        # effective false: decided at the last epoch, so no epoch of this run trained at it
        # (it applies if the run is extended with --resume train.epochs=...)
        "growth": {**asdict(growth), "effective": epoch + 1 < r.cfg.train.epochs}
        if growth
        else None,
        # a growth a trigger asked for and a rule refused (hybrid's noise veto, stop_rule)
        "vetoed": epoch in getattr(r.policy, "vetoes", ()),
        "veto": _veto_record(r.policy, epoch),
        **noise,
        "train_seconds": times["train"],
        "hessian_seconds": times["hessian"],
        "eval_seconds": times["eval"],
        "seconds": sum(times.values()),
    }


def _veto_record(policy: Any, epoch: int) -> dict[str, Any] | None:
    """The policy's veto at the end of ``epoch`` (absa.math.policies.Veto as a dict), or None."""
    veto = getattr(policy, "last_veto", None)
    return asdict(veto) if veto is not None and veto.epoch == epoch else None


def _finish(r: _Run, test: EvalResult | None) -> Summary:
    """Final (robust) evaluation and summary.json: from now on the folder holds a finished run."""
    cfg, env, st = r.cfg, r.env, r.st
    if test is None:  # nothing left to train (resumed a finished run)
        with r.rt.precision.autocast():
            test = evaluate(r.model, r.data.test, env, cfg.train.eval_batch)
    adv = cfg.adversarial
    robust = []
    if adv.final_eval:
        robust = robustness(
            r.model,
            r.data.test,
            env,
            list(adv.eval_eps),
            adv.pgd_steps,
            cfg.train.eval_batch,
            adv.eval_limit,
        )
    summary = Summary(
        run_dir=str(r.run_dir),
        epochs=st.epoch,
        updates=st.updates,
        final_batch=r.policy.plan(max(st.epoch - 1, 0)).batch_size,
        test_loss=test.loss,
        test_acc=test.acc,
        best_test_acc=st.best_test_acc,
        train_seconds=r.totals["train"],
        hessian_seconds=r.totals["hessian"],
        eval_seconds=r.totals["eval"],
        growths=[g for g in st.growths if g["epoch"] + 1 < st.epoch],  # effective ones
        robust=robust,
        start_batch=cfg.batch.size,
        start_lr=cfg.optim.lr,
        bl_updates=st.epoch * math.ceil(len(r.data.train) / cfg.batch.size),
    )
    r.runlog.write_summary(asdict(summary))
    return summary


def _epoch_line(r: dict[str, Any], epochs: int) -> str:
    lam = f" lambda_max {r['lambda_max']:.4g}" if r["lambda_max"] is not None else ""
    grow = ""
    if r["growth"]:
        g = r["growth"]
        late = "" if g.get("effective", True) else "; last epoch: not applied"
        grow = f" -> batch {g['new_batch']} ({g['trigger']}{late})"
    if r.get("veto"):
        v = r["veto"]
        grow = f" (growth to {v['new_batch']} on {v['trigger']} vetoed: {v['rule']})"
    adv = f" adv {r['adv_fraction']:.3g}" if r["adv_fraction"] or r["method"] == "absa" else ""
    return (
        f"epoch {r['epoch']}/{epochs - 1} {r['method']} batch {r['batch_size']} "
        f"lr {r['lr']:.4g}{adv} "
        f"updates {r['updates']} train {r['train_loss']:.4f}/{r['train_acc']:.2f}% "
        f"test {r['test_loss']:.4f}/{r['test_acc']:.2f}%{lam}{grow} "
        f"[{r['train_seconds']:.1f}s train, {r['hessian_seconds']:.1f}s hessian, "
        f"{r['eval_seconds']:.1f}s eval]"
    )
