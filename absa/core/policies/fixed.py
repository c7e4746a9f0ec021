"""Policies that are functions of the epoch alone: BL, FB (Goyal), GG (Smith), Seesaw
(Meterez). Their state only names the policy."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Self

from absa.core.policies.base import (
    EpochPlan,
    Growth,
    Registrable,
    Settings,
    Signals,
    step_decay,
)
from absa.core.policies.registry import register


class Stateless(Registrable):
    """A policy that observes nothing; its state only names it."""

    def observe(self, epoch: int, signals: Signals) -> Growth | None:
        return None

    def state_dict(self) -> dict[str, Any]:
        return {"kind": self.name}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("kind") != self.name:
            raise ValueError(f"schedule state is for {state.get('kind')!r}, not {self.name!r}")


@register("bl")
@dataclass
class BL(Stateless):
    """Fixed batch B, lr decayed by rho at the decay epochs."""

    batch_size: int
    lr: float
    decay_epochs: list[int] = field(default_factory=list)
    decay_factor: float = 0.2
    adv_fraction: float = 0.0  # constant r (adversarial training at a fixed batch)
    summary = "fixed batch, step decay"

    @classmethod
    def from_settings(cls, s: Settings) -> Self:
        return cls(batch_size=s.batch_size, **s.decayed())

    def lr_at(self, epoch: int, progress: float) -> float:
        return self.lr * step_decay(epoch, self.decay_epochs, self.decay_factor)

    def plan(self, epoch: int) -> EpochPlan:
        return EpochPlan(self.batch_size, self.lr_at(epoch, 0.0), self.adv_fraction)


@register("fb")
@dataclass
class FB(Stateless):
    """Goyal et al. 2017: fixed large batch B_L, eta = eta_0 * B_L / B_0 after a linear warm-up.

    During warm-up (epoch + progress < warmup_epochs) the lr ramps linearly per step from
    eta_0 to the peak; afterwards the usual step decay applies to the peak. From a config:
    B_L = batch.size, B_0 = schedule.ref_batch (default B_L).
    """

    batch_size: int
    base_batch: int
    lr: float
    warmup_epochs: float = 5.0
    decay_epochs: list[int] = field(default_factory=list)
    decay_factor: float = 0.2
    adv_fraction: float = 0.0  # constant r
    summary = "fixed large batch, linear lr scaling + warm-up (Goyal)"
    reads = frozenset({"ref_batch", "warmup_epochs"})

    @classmethod
    def from_settings(cls, s: Settings) -> Self:
        return cls(
            base_batch=s.schedule["ref_batch"] or s.batch_size,
            batch_size=s.batch_size,
            warmup_epochs=s.schedule["warmup_epochs"],
            **s.decayed(),
        )

    @property
    def peak_lr(self) -> float:
        return self.lr * self.batch_size / self.base_batch

    def lr_at(self, epoch: int, progress: float) -> float:
        t = epoch + progress
        decay = step_decay(epoch, self.decay_epochs, self.decay_factor)
        if self.warmup_epochs > 0 and t < self.warmup_epochs:
            return (self.lr + (self.peak_lr - self.lr) * t / self.warmup_epochs) * decay
        return self.peak_lr * decay

    def plan(self, epoch: int) -> EpochPlan:
        return EpochPlan(self.batch_size, self.lr_at(epoch, 0.0), self.adv_fraction)


@register("gg")
@dataclass
class GG(Stateless):
    """Smith et al. 2018: at each decay epoch grow the batch by 1/rho instead of decaying lr.

    The noise scale eta/B falls by rho at every decay epoch, as under step decay; once B would
    pass B_max it is capped and the part the batch cannot absorb goes into the lr:
    after k decays B = min(B_0 / rho**k, B_max) and eta = eta_0 * rho**k * B / B_0.
    """

    base_batch: int
    max_batch: int
    lr: float
    decay_epochs: list[int] = field(default_factory=list)
    decay_factor: float = 0.2
    adv_fraction: float = 0.0  # constant r
    summary = "grow B instead of decaying lr (Smith)"
    reads = frozenset({"max_batch"})
    grows = True

    @classmethod
    def from_settings(cls, s: Settings) -> Self:
        return cls(base_batch=s.batch_size, max_batch=s.schedule["max_batch"], **s.decayed())

    def _at(self, epoch: int) -> tuple[int, float]:
        k = sum(1 for d in self.decay_epochs if d <= epoch)
        ideal = self.base_batch / self.decay_factor**k
        if ideal <= self.max_batch * (1 + 1e-9):
            return round(ideal), self.lr
        return self.max_batch, self.lr * self.max_batch / ideal

    def lr_at(self, epoch: int, progress: float) -> float:
        return self._at(epoch)[1]

    def plan(self, epoch: int) -> EpochPlan:
        b, lr = self._at(epoch)
        return EpochPlan(b, lr, self.adv_fraction)


@register("seesaw")
@dataclass
class Seesaw(GG):
    """Meterez et al. 2025: where step decay would cut eta by rho, cut it by sqrt(rho) and
    grow B by 1/rho instead. Both keep eta / sqrt(B) on the step-decay path; once B would
    pass B_max it is capped and the rest goes into the lr:
    after k decays B = min(B_0 / rho**k, B_max), eta = eta_0 * rho**k * sqrt(B / B_0).
    """

    summary = "lr x sqrt(rho), B / rho (Meterez)"

    def _at(self, epoch: int) -> tuple[int, float]:
        k = sum(1 for d in self.decay_epochs if d <= epoch)
        ideal = self.base_batch / self.decay_factor**k
        b = round(ideal) if ideal <= self.max_batch * (1 + 1e-9) else self.max_batch
        return b, self.lr * self.decay_factor**k * math.sqrt(b / self.base_batch)
