"""Batch-size / learning-rate / adversarial-fraction policies: BL, FB, GG, ABS, ABSA, replay.

Pure and counter-driven: a policy is asked for the plan of an epoch (batch size B, lr eta,
adversarial fraction r, whether to probe the Hessian), for the lr at a point inside an epoch,
and is told the top eigenvalue lambda measured at the end of an epoch. It holds no tensors and
does no I/O; ``state_dict`` / ``load_state_dict`` use plain Python types.

Step decay is shared by every method: eta(e) = eta_0 * rho ** #{d in decay_epochs : d <= e}.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Protocol

LR_SCALINGS = ("linear", "sqrt", "none")
REFERENCES = ("peak", "first")


@dataclass(frozen=True)
class EpochPlan:
    batch_size: int  # B: global (logical) batch
    lr: float  # eta at the start of the epoch
    adv_fraction: float  # r: share of each batch replaced by adversarial examples
    probe: bool  # whether the policy wants lambda_max at the end of this epoch


@dataclass(frozen=True)
class Growth:
    """A batch-size change decided at the end of ``epoch`` (effective from epoch + 1)."""

    epoch: int
    old_batch: int
    new_batch: int
    old_lr: float
    new_lr: float
    trigger: str  # "eigenvalue" (lambda dropped) | "duration" (fallback)
    eigenvalue: float | None
    reference: float | None


class Policy(Protocol):
    name: str

    def plan(self, epoch: int) -> EpochPlan: ...

    def lr_at(self, epoch: int, progress: float) -> float: ...

    def observe(self, epoch: int, eigenvalue: float | None) -> Growth | None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def step_decay(epoch: int, decay_epochs: list[int] | tuple[int, ...], rho: float) -> float:
    """rho ** (number of decay epochs d <= epoch)."""
    return rho ** sum(1 for d in decay_epochs if d <= epoch)


def lr_scale(new_batch: int, old_batch: int, rule: str) -> float:
    """Learning-rate multiplier when the batch goes from old to new: linear, sqrt or none."""
    if rule == "linear":
        return new_batch / old_batch
    if rule == "sqrt":
        return math.sqrt(new_batch / old_batch)
    if rule == "none":
        return 1.0
    raise ValueError(f"lr_scaling: unknown rule {rule!r} (valid: {', '.join(LR_SCALINGS)})")


class _Stateless:
    """BL/FB/GG are functions of the epoch alone; their state only names the policy."""

    name = "?"

    def observe(self, epoch: int, eigenvalue: float | None) -> Growth | None:
        return None

    def state_dict(self) -> dict[str, Any]:
        return {"kind": self.name}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("kind") != self.name:
            raise ValueError(f"schedule state is for {state.get('kind')!r}, not {self.name!r}")


@dataclass
class BL(_Stateless):
    """Fixed batch B, lr decayed by rho at the decay epochs."""

    batch_size: int
    lr: float
    decay_epochs: list[int] = field(default_factory=list)
    decay_factor: float = 0.2
    adv_fraction: float = 0.0  # constant r (adversarial training at a fixed batch)
    name = "bl"

    def lr_at(self, epoch: int, progress: float) -> float:
        return self.lr * step_decay(epoch, self.decay_epochs, self.decay_factor)

    def plan(self, epoch: int) -> EpochPlan:
        return EpochPlan(self.batch_size, self.lr_at(epoch, 0.0), self.adv_fraction, False)


@dataclass
class FB(_Stateless):
    """Goyal et al. 2017: fixed large batch B_L, eta = eta_0 * B_L / B_0 after a linear warm-up.

    During warm-up (epoch + progress < warmup_epochs) the lr ramps linearly per step from
    eta_0 to the peak; afterwards the usual step decay applies to the peak.
    """

    batch_size: int
    base_batch: int
    lr: float
    warmup_epochs: float = 5.0
    decay_epochs: list[int] = field(default_factory=list)
    decay_factor: float = 0.2
    adv_fraction: float = 0.0  # constant r
    name = "fb"

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
        return EpochPlan(self.batch_size, self.lr_at(epoch, 0.0), self.adv_fraction, False)


@dataclass
class GG(_Stateless):
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
    name = "gg"

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
        return EpochPlan(b, lr, self.adv_fraction, False)


@dataclass
class _Segment:
    start: int  # first epoch at this batch size
    batch: int
    lr_mult: float  # product of lr scalings since B_0
    adv_fraction: float


@dataclass
class ABS:
    """Adaptive batch size from the top Hessian eigenvalue (Yao et al.); ABSA when r_0 > 0.

    At the end of each epoch lambda (top eigenvalue on the probe set) is compared with a
    reference lambda_ref: grow when lambda <= lambda_ref / alpha. ``reference="first"`` is the
    authors' rule (lambda_ref = first lambda, reset to lambda at each eigenvalue growth);
    ``"peak"`` uses the running maximum of lambda since the last growth. If ``duration``
    epochs pass at one batch size, grow anyway (trigger "duration"). A growth multiplies B by
    ``growth_factor`` (capped at B_max), scales eta by the lr rule and halves r; at B_max r is
    0 and probing stops. r is also 0 from half the epochs on. Step decay still applies.
    The eigenvalue trigger needs lambda_ref > 0 (a non-positive top eigenvalue, possible far
    from a minimum, never counts as "dropped").
    """

    base_batch: int
    max_batch: int
    lr: float
    total_epochs: int
    decay_epochs: list[int] = field(default_factory=list)
    decay_factor: float = 0.2
    alpha: float = 2.0
    growth_factor: int = 2
    lr_scaling: str = "linear"
    reference: str = "peak"
    duration: int = 10
    adv_fraction: float = 0.0
    eigenvalue_trigger: bool = True  # False: duration-only growth, no probing (ablation)
    name: str = "abs"
    segments: list[_Segment] = field(default_factory=list)
    ref_value: float | None = None

    def __post_init__(self) -> None:
        if self.reference not in REFERENCES:
            raise ValueError(f"reference: unknown rule {self.reference!r}")
        lr_scale(2, 1, self.lr_scaling)  # validate the rule name
        if not self.segments:
            start_b = min(self.base_batch, self.max_batch)
            adv = 0.0 if start_b >= self.max_batch else self.adv_fraction
            self.segments = [_Segment(0, start_b, 1.0, adv)]

    def _segment(self, epoch: int) -> _Segment:
        current = self.segments[0]
        for seg in self.segments:
            if seg.start <= epoch:
                current = seg
        return current

    def lr_at(self, epoch: int, progress: float) -> float:
        seg = self._segment(epoch)
        return self.lr * seg.lr_mult * step_decay(epoch, self.decay_epochs, self.decay_factor)

    def plan(self, epoch: int) -> EpochPlan:
        seg = self._segment(epoch)
        adv = 0.0 if epoch >= self.total_epochs / 2 else seg.adv_fraction
        probe = self.eigenvalue_trigger and seg.batch < self.max_batch
        return EpochPlan(seg.batch, self.lr_at(epoch, 0.0), adv, probe)

    def observe(self, epoch: int, eigenvalue: float | None) -> Growth | None:
        """End of ``epoch``: update lambda_ref and decide whether epoch + 1 uses a larger batch."""
        seg = self.segments[-1]
        if seg.batch >= self.max_batch or epoch < seg.start:
            return None
        trigger = None
        if eigenvalue is not None and self.eigenvalue_trigger:
            if self.ref_value is None:
                self.ref_value = eigenvalue
            elif self.reference == "peak":
                self.ref_value = max(self.ref_value, eigenvalue)
            if self.ref_value > 0 and eigenvalue <= self.ref_value / self.alpha:
                trigger = "eigenvalue"
        if trigger is None and epoch + 1 - seg.start >= self.duration:
            trigger = "duration"
        if trigger is None:
            return None
        ref_before = self.ref_value
        new_batch = min(seg.batch * self.growth_factor, self.max_batch)
        mult = seg.lr_mult * lr_scale(new_batch, seg.batch, self.lr_scaling)
        adv = 0.0 if new_batch >= self.max_batch else seg.adv_fraction / 2
        old_lr = self.lr_at(epoch + 1, 0.0)
        self.segments.append(_Segment(epoch + 1, new_batch, mult, adv))
        if trigger == "eigenvalue" or self.reference == "peak":
            self.ref_value = eigenvalue  # "first" keeps lambda_ref on a fallback growth
        return Growth(
            epoch=epoch,
            old_batch=seg.batch,
            new_batch=new_batch,
            old_lr=old_lr,
            new_lr=self.lr_at(epoch + 1, 0.0),
            trigger=trigger,
            eigenvalue=eigenvalue,
            reference=ref_before,
        )

    def state_dict(self) -> dict[str, Any]:
        return {
            "kind": self.name,
            "segments": [[s.start, s.batch, s.lr_mult, s.adv_fraction] for s in self.segments],
            "reference": self.ref_value,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("kind") != self.name:
            raise ValueError(f"schedule state is for {state.get('kind')!r}, not {self.name!r}")
        self.segments = [
            _Segment(int(a), int(b), float(c), float(d)) for a, b, c, d in state["segments"]
        ]
        self.ref_value = state["reference"]


@dataclass
class Replay(_Stateless):
    """Plays back a recorded trajectory: epoch e runs at ``batches[e]`` with lr ``lrs[e]``
    and adversarial fraction ``adv_fractions[e]``, as logged by a finished run, with no
    Hessian. Isolates the schedule's shape from the signal that chose it (ablation)."""

    batches: list[int]
    lrs: list[float]
    adv_fractions: list[float]
    name = "replay"

    def __post_init__(self) -> None:
        if not (len(self.batches) == len(self.lrs) == len(self.adv_fractions) > 0):
            raise ValueError("replay: batches, lrs and adv_fractions need one entry per epoch")

    def _epoch(self, epoch: int) -> int:
        if not 0 <= epoch < len(self.batches):
            raise ValueError(f"replay: epoch {epoch} is past the {len(self.batches)} recorded")
        return epoch

    def lr_at(self, epoch: int, progress: float) -> float:
        return self.lrs[self._epoch(epoch)]

    def plan(self, epoch: int) -> EpochPlan:
        e = self._epoch(epoch)
        return EpochPlan(self.batches[e], self.lrs[e], self.adv_fractions[e], False)


def build_policy(method: str, **kw: Any) -> Policy:
    """Policy by config name: bl | fb | gg | abs | absa (keyword arguments as the classes)."""
    if method == "bl":
        return BL(**kw)
    if method == "fb":
        return FB(**kw)
    if method == "gg":
        return GG(**kw)
    if method == "replay":
        return Replay(**kw)
    if method in ("abs", "absa"):
        if method == "abs":
            kw["adv_fraction"] = 0.0 if kw.get("adv_fraction") is None else kw["adv_fraction"]
        return ABS(name=method, **kw)
    raise ValueError(f"unknown schedule method {method!r} (valid: bl, fb, gg, abs, absa, replay)")
