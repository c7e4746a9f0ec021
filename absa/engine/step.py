"""One optimizer step's gradient: micro-batches accumulated into ``.grad``.

A logical batch of n samples is split over ranks and then into micro-batches; each
micro-batch adds (sum of its losses) * world / n to ``.grad`` and DDP averages over ranks,
so ``.grad`` ends as the gradient of the mean loss (1/n) sum_i grad l_i, whatever the split.
Samples flagged adversarial are replaced first by examples crafted as ``Attack`` says.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from absa import distributed as D
from absa.core.attacks import make_adversarial
from absa.engine.accel import AUTO_MICRO_CPU, Precision, Runtime, to_input
from absa.engine.probes import NoiseMeter
from absa.run.models import model_mode

if TYPE_CHECKING:
    from absa.run.config import Config

MicroBatch = tuple[torch.Tensor, torch.Tensor, "torch.Tensor | int"]


@dataclass(frozen=True)
class Attack:
    """How a step crafts its adversarial samples (the ``adversarial`` section, resolved)."""

    method: str  # fgsm | pgd | fast_fgsm
    eps: float  # L-inf radius, [0, 1] pixels
    train_mode: bool  # craft with the module in train mode (else eval)
    pgd_steps: int
    pgd_step_size: float | None  # None: the attack's default

    @classmethod
    def from_config(cls, cfg: Config) -> Attack:
        adv = cfg.adversarial
        return cls(adv.method, adv.eps, adv.model_mode == "train", adv.pgd_steps, adv.pgd_step_size)

    def kwargs(self) -> dict[str, Any]:
        """The extra arguments of ``make_adversarial`` (PGD's steps and step size)."""
        if self.method != "pgd":
            return {}
        kw: dict[str, Any] = {"steps": self.pgd_steps}
        if self.pgd_step_size is not None:
            kw["step_size"] = self.pgd_step_size
        return kw


def accumulate_gradients(
    model: nn.Module,
    micro: Iterable[MicroBatch],
    n_global: int,
    env: D.DistEnv,
    attack: Attack,
    noise: NoiseMeter | None = None,
    split: bool = False,
    rt: Runtime | None = None,
) -> torch.Tensor:
    """Accumulate into ``.grad`` the gradient of the mean loss over one logical batch of
    ``n_global`` samples; returns float64 [loss sum, correct, samples] of this rank (on the
    device: nothing is read here).

    ``micro`` yields this rank's micro-batches ``(x, y, adv)``: ``adv`` flags the samples
    replaced by ``attack``'s examples (absa.engine.step._with_adversarial). DDP syncs only
    on the last micro-batch. With ``noise``, each micro-batch's gradient is handed to the
    meter (not the last one under DDP, nor a lone one), and with ``split`` a lone
    micro-batch also gives its first half's gradient by one extra backward; ``.grad`` is the
    same either way. ``rt`` (default fp32) gives the autocast precision (crafting included)
    and fp16's loss scaler, whose factor ``.grad`` then carries.
    """
    rt = rt or Runtime(Precision.create("fp32", torch.device(env.device)), AUTO_MICRO_CPU)
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
        half = noise if noise is not None and split and first and last and len(y) >= 2 else None
        with no_sync:
            out, loss_sum = _forward_backward(model, x, y, m_adv, attack, rt, scale, half, params)
        # the last micro-batch under DDP holds all-reduced gradients, and a step's only one on
        # a single process is the whole batch: neither is a small-batch estimate (b < B)
        if noise is not None and not (last and (env.distributed or first)):
            noise.micro_done(params, len(y), scale * rt.precision.loss_scale)
        first = False
        # the float64 sum 0 + l_1 + l_2 + ... (0 + l_1 is l_1 exactly), on the device:
        # train_epoch reads it at its logging points and at the end of the epoch
        loss = loss_sum.detach().double()
        hits = (out.detach().argmax(1) == y).sum()
        loss_acc = loss if loss_acc is None else loss_acc + loss
        correct = hits if correct is None else correct + hits
        samples += len(y)
    if loss_acc is None or correct is None:  # no micro-batch at all
        return torch.zeros(3, dtype=torch.float64, device=env.device)
    return torch.stack([loss_acc, correct.double(), _count(samples, loss_acc.device)])


@functools.lru_cache(maxsize=64)
def _count(samples: int, device: torch.device) -> torch.Tensor:
    """``samples`` as a float64 scalar on ``device``, made once per value (a step's third
    stat: steps of one size share it, read-only, instead of allocating it each time); filled
    on the device, since a host-to-device copy would synchronise a CUDA stream."""
    return torch.full((), float(samples), dtype=torch.float64, device=device)


def _forward_backward(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    m_adv: torch.Tensor | int,
    attack: Attack,
    rt: Runtime,
    scale: float,
    half: NoiseMeter | None,
    params: list[nn.Parameter],
) -> tuple[torch.Tensor, torch.Tensor]:
    """One micro-batch: craft, forward, backward of ``scale`` * its summed loss; with ``half``
    its first half's gradient goes to that meter first. Returns logits and summed loss."""
    with rt.precision.autocast():
        x = _with_adversarial(model, x, y, m_adv, attack)
        # the half-batch gradient differentiates this graph twice (retain_graph), which
        # a compiled graph refuses once it donated its saved buffers: eager module here
        out = (D.unwrap(model) if half is not None else model)(x)
        loss_sum = F.cross_entropy(out, y, reduction="sum")
    if half is not None:
        _half_gradient(half, out, y, params)
    rt.precision.backward(loss_sum * scale)
    return out, loss_sum


def _with_adversarial(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, m_adv: torch.Tensor | int, attack: Attack
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
    bare = D.unwrap(model)
    with model_mode(bare, train=attack.train_mode):
        x = x.clone()
        x[sel] = make_adversarial(
            bare, x[sel], y[sel], attack.method, attack.eps, **attack.kwargs()
        )
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
