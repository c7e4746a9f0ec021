"""One epoch: a pass over the seeded permutation of the training split in logical batches
of the policy's B, one optimizer step each (its gradient: absa.engine.step).

Nothing here reads the device in the steady state: the running sums stay there (float64),
the adversarial count comes from sizes, finiteness is a device flag read every
FINITE_CHECK_EVERY steps, and ``on_step`` gets the sums only where it asks for them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from absa import distributed as D
from absa.core.policies import Policy
from absa.engine.accel import Runtime, oom_guard
from absa.engine.probes import NoiseMeter
from absa.engine.step import Attack, MicroBatch, accumulate_gradients
from absa.run.data import (
    Data,
    FolderSplit,
    apply_augment,
    augment_params,
    epoch_permutation,
    global_batches,
    local_positions,
    resolve_augment,
    stream_batches,
)

if TYPE_CHECKING:
    from absa.run.config import Config

# A diverged loss stops the run within this many steps (and always before the epoch's
# checkpoint); the message names the step where it first went non-finite.
FINITE_CHECK_EVERY = 16

StepHook = Callable[[int, int, dict[str, Any]], None]


class TrainingDiverged(RuntimeError):
    """Loss became NaN/inf; the message names epoch and step."""


@dataclass
class EpochStats:
    loss: float
    acc: float
    steps: int
    samples: int
    adv_samples: int


@dataclass
class EpochFeed:
    """One epoch's samples: the seeded permutation of the training split and its
    augmentation draws (absa.run.data), served as a step's micro-batches."""

    split: Any
    perm: torch.Tensor
    aug: Any
    epoch: int
    seed: int

    @classmethod
    def of(cls, data: Data, cfg: Config, epoch: int) -> EpochFeed:
        n, seed = len(data.train), cfg.train.seed
        perm = epoch_permutation(n, seed, epoch)
        mode = resolve_augment(cfg.data.augment, data.info)
        if isinstance(data.train, FolderSplit) and data.train.augments:  # its own crop + flip
            mode = "none"
        aug = augment_params(n, seed, epoch, mode, data.info.image_size)
        return cls(data.train, perm, aug, epoch, seed)

    def micro_batches(self, local: torch.Tensor, n_adv: int, micro: int) -> Iterator[MicroBatch]:
        """This rank's positions ``local`` of a step in consecutive chunks of at most
        ``micro``, each ``(x, y, k)`` with its first k samples adversarial (folder data:
        decoded ahead by its workers)."""
        starts = list(range(0, len(local), micro))
        sizes = [min(micro, len(local) - s) for s in starts]
        order = self.perm[local]
        if isinstance(self.split, FolderSplit):
            xys = stream_batches(self.split, order, sizes, True, self.epoch, self.seed)
        else:  # stream_batches' chunks of a split in memory, without its generator
            xys = (self.split.get(chunk) for chunk in _chunks(order, starts, sizes))
        chunks = zip(sizes, xys, starts, _chunks(local, starts, sizes), strict=True)
        for size, (x, y), start, at in chunks:
            if self.aug is not None:
                x = apply_augment(x, self.aug.take(at))
            yield x, y, min(max(n_adv - start, 0), size)  # adversarial: a prefix


@dataclass
class _Stepper:
    """What every step of an epoch shares: the module to step, its optimizer, the ranks, the
    attack, the noise meter, the runtime and the parameters the meter reads."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    env: D.DistEnv
    attack: Attack
    noise: NoiseMeter | None
    rt: Runtime
    params: list[nn.Parameter]

    def gradient(
        self,
        micro: Callable[[int], Iterator[MicroBatch]],
        n_global: int,
        split: bool,
        where: tuple[int, int],
    ) -> torch.Tensor:
        """A step's gradient in fresh ``.grad`` from ``micro(rt.micro)``'s micro-batches
        (absa.engine.step.accumulate_gradients). On a single process an out-of-memory step is
        retried with half the micro-batch (kept for the rest of the run, recorded in
        ``rt.backoffs`` at ``where`` = (epoch, step)); under DDP it is raised, since the
        other ranks are already inside the step's collectives."""
        env, rt, noise = self.env, self.rt, self.noise
        while True:
            self.optimizer.zero_grad(set_to_none=not rt.cuda_graphs)
            if rt.cuda_graphs:
                _keep_grad_buffers(self.params)
            if noise is not None:
                noise.begin_step(self.params)
            try:
                with oom_guard(env.device):
                    return accumulate_gradients(
                        self.model, micro(rt.micro), n_global, env, self.attack, noise, split, rt
                    )
            except Exception as err:
                rt.back_off(err, env.distributed, *where)


def _keep_grad_buffers(params: list[nn.Parameter]) -> None:
    """Before a step under CUDA graphs: every parameter has its own zeroed ``.grad`` (a
    backward adds into a defined ``.grad`` in place instead of taking its graph output,
    which the next replay overwrites), and the step is marked as a new graph iteration."""
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    torch.compiler.cudagraph_mark_step_begin()


def step_batches(n: int, batch_size: int, env: D.DistEnv, sync_bn: bool) -> list[torch.Tensor]:
    """The epoch's logical batches (positions into the permutation) of ``batch_size``."""
    batches = global_batches(n, batch_size)
    if env.distributed and len(batches[-1]) < env.world_size:
        batches = batches[:-1]  # every rank needs at least one sample per step
    if env.distributed and sync_bn:  # equal shares: same collectives
        batches = [b[: len(b) - len(b) % env.world_size] for b in batches]
    return batches


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    data: Data,
    cfg: Config,
    env: D.DistEnv,
    policy: Policy,
    epoch: int,
    on_step: StepHook | None = None,
    noise: NoiseMeter | None = None,
    rt: Runtime | None = None,
) -> EpochStats:
    """One pass over the training split at the policy's batch size; returns train metrics.
    An out-of-memory step backs off (``Runtime.back_off``) and is retried."""
    rt = rt or Runtime.plain(cfg, env.device)
    plan = policy.plan(epoch)
    feed = EpochFeed.of(data, cfg, epoch)
    batches = step_batches(len(data.train), plan.batch_size, env, cfg.distributed.sync_batchnorm)
    n_steps = len(batches)
    split_at = _split_steps(n_steps, cfg.signals.noise_split_steps) if noise else set()
    params = [p for p in D.unwrap(model).parameters() if p.requires_grad]
    stepper = _Stepper(model, optimizer, env, Attack.from_config(cfg), noise, rt, params)
    model.train()
    stats = torch.zeros(3, dtype=torch.float64, device=env.device)  # loss sum, correct, samples
    adv_samples = 0  # this rank's adversarial samples (a host count)
    unchecked: list[torch.Tensor] = []  # the step sums since the last finiteness check
    checked = 0  # steps whose losses were checked finite
    wants = getattr(on_step, "wants_stats", None)  # (step, n_steps) -> read the sums?
    for step, batch_pos in enumerate(batches):
        lr = policy.lr_at(epoch, step / n_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        local = local_positions(batch_pos, env.rank, env.world_size)
        n_adv = _adversarial_count(len(batch_pos), plan.adv_fraction, env.rank, env.world_size)
        micro = functools.partial(feed.micro_batches, local, n_adv)
        split = step in split_at and not env.distributed
        out = stepper.gradient(micro, len(batch_pos), split, (epoch, step))
        rt.precision.unscale(optimizer)
        if noise is not None:
            noise.end_step(params, len(batch_pos))
        unchecked.append(out)
        if (step + 1) % FINITE_CHECK_EVERY == 0 or step + 1 == n_steps:
            losses = torch.stack(unchecked)[:, 0]
            _check_finite(losses, checked, env, epoch)  # and before last.pt
            checked, unchecked = step + 1, []
        rt.precision.step(optimizer)
        stats += out
        adv_samples += n_adv
        if on_step is not None:
            read = wants is None or wants(step + 1, n_steps)
            on_step(step + 1, n_steps, _step_info(plan, lr, stats, out, read))
    return _epoch_stats(stats, adv_samples, n_steps, env)


def _adversarial_count(n_batch: int, r: float, rank: int, world: int) -> int:
    """How many of this rank's samples of a logical batch of ``n_batch`` are adversarial: the
    first round(r * n_batch) positions of each logical batch are, and since a batch is
    consecutive positions and a rank's share every ``world``-th one from ``rank``, they are a
    prefix of that share, counted here from sizes alone (no tensor, nothing to read)."""
    return len(range(rank, int(round(r * n_batch)), world))


def _chunks(t: torch.Tensor, starts: list[int], sizes: list[int]) -> Iterator[torch.Tensor]:
    """``t`` in chunks at ``starts`` of ``sizes`` (``t`` itself when it is one chunk)."""
    if len(sizes) == 1:
        yield t
        return
    for start, size in zip(starts, sizes, strict=True):
        yield t[start : start + size]


def _split_steps(n_steps: int, k: int) -> set[int]:
    """``k`` evenly spaced step indices of an epoch of ``n_steps`` (all when k >= n_steps)."""
    if k <= 0:
        return set()
    k = min(k, n_steps)
    return {round(i * n_steps / k) for i in range(k)}


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


def _epoch_stats(stats: torch.Tensor, adv_samples: int, steps: int, env: D.DistEnv) -> EpochStats:
    """Collective: the epoch's train metrics over all ranks (one read)."""
    total = env.all_reduce_sum(
        torch.cat([stats, torch.tensor([float(adv_samples)], dtype=torch.float64).to(env.device)])
    ).cpu()
    count = max(total[2].item(), 1.0)
    return EpochStats(
        loss=total[0].item() / count,
        acc=100.0 * total[1].item() / count,
        steps=steps,
        samples=int(total[2].item()),
        adv_samples=int(total[3].item()),
    )
