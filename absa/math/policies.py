"""Batch-size / learning-rate / adversarial-fraction policies and their registry.

Pure and counter-driven: a policy is asked for the plan of an epoch (batch size B, lr eta,
adversarial fraction r, and the signals it ``wants`` measured at the end of the epoch), for
the lr at a point inside an epoch, and observes a mapping of the measured signals (names in
``SIGNALS``; absa.engine.probes measures them). It holds no tensors and does no I/O;
``state_dict`` / ``load_state_dict`` use plain Python types.

Step decay is shared by every method: eta(e) = eta_0 * rho ** #{d in decay_epochs : d <= e}.

Adding a method: one policy class here (``plan``, ``lr_at``, ``observe``, state dict), one
``register`` call saying whether it grows the batch and how to build it from the config, and,
if it needs a signal nobody measures yet, one function in absa.engine.probes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from absa.run.config import Config

LR_SCALINGS = ("linear", "sqrt", "none")
REFERENCES = ("peak", "first")
# schedule.stop_rule: when a growing policy stops growing although a trigger fired
STOP_RULES = ("none", "noise", "stability")

# Signal names a policy may want (absa.engine.probes measures them at the end of an epoch).
LAMBDA = "lambda_max"  # top Hessian eigenvalue on the probe set (hessian.block)
LAMBDA_STDERR = "lambda_max_stderr"  # its standard error over probe chunks
NOISE = "noise_scale"  # B_simple = tr(Sigma) / |G|^2 (McCandlish et al. 2018), EMA-smoothed
NOISE_TRACE = "noise_trace"  # tr(Sigma): per-sample gradient variance
NOISE_G2 = "noise_g2"  # |G|^2: squared norm of the true gradient
IP_VARIANCE = "ip_variance"  # variance of per-sample gradients along the mean gradient
SIGNALS = (LAMBDA, LAMBDA_STDERR, NOISE, NOISE_TRACE, NOISE_G2, IP_VARIANCE)
Signals = Mapping[str, float | None]


@dataclass(frozen=True)
class EpochPlan:
    batch_size: int  # B: global (logical) batch
    lr: float  # eta at the start of the epoch
    adv_fraction: float  # r: share of each batch replaced by adversarial examples
    wants: frozenset[str] = frozenset()  # signals to measure at the end of this epoch

    @property
    def probe(self) -> bool:
        """Whether the Hessian probe runs at the end of this epoch."""
        return LAMBDA in self.wants


@dataclass(frozen=True)
class Growth:
    """A batch-size change decided at the end of ``epoch`` (effective from epoch + 1)."""

    epoch: int
    old_batch: int
    new_batch: int
    old_lr: float
    new_lr: float
    # "eigenvalue" (lambda dropped) | "eigenvalue_confident" (by more than 2 stderr) |
    # "noise" (B below gns_ratio * B_simple, or the inner-product test failed) | "duration"
    trigger: str
    eigenvalue: float | None
    reference: float | None
    noise_scale: float | None = None  # B_simple when the policy used it
    # the lr ceiling that bound: 2 (1 + beta) / lambda (lr_guard) or max_lr, else None
    lr_cap: float | None = None


@dataclass(frozen=True)
class Veto:
    """A growth that ``trigger`` asked for at the end of ``epoch`` and ``rule`` refused:
    the batch stays at ``batch`` instead of ``new_batch`` (lr ``new_lr``).

    ``rule``: "noise" (hybrid: B >= gns_ratio * B_simple already), "stop_noise"
    (stop_rule noise: new_batch > stop_noise_ratio * B_simple) or "stop_stability"
    (stop_rule stability: new_lr * lambda >= 2 (1 + beta)). ``limit``: the bound it hit
    (a batch size for the noise rules, an lr for stability)."""

    epoch: int
    batch: int
    new_batch: int
    new_lr: float
    trigger: str
    rule: str
    limit: float
    eigenvalue: float | None = None
    noise_scale: float | None = None


class Policy(Protocol):
    name: str

    def plan(self, epoch: int) -> EpochPlan: ...

    def lr_at(self, epoch: int, progress: float) -> float: ...

    def observe(self, epoch: int, signals: Signals) -> Growth | None: ...

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

    def observe(self, epoch: int, signals: Signals) -> Growth | None:
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
        return EpochPlan(self.batch_size, self.lr_at(epoch, 0.0), self.adv_fraction)


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
        return EpochPlan(self.batch_size, self.lr_at(epoch, 0.0), self.adv_fraction)


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
        return EpochPlan(b, lr, self.adv_fraction)


@dataclass
class Seesaw(GG):
    """Meterez et al. 2025: where step decay would cut eta by rho, cut it by sqrt(rho) and
    grow B by 1/rho instead. Both keep eta / sqrt(B) on the step-decay path; once B would
    pass B_max it is capped and the rest goes into the lr:
    after k decays B = min(B_0 / rho**k, B_max), eta = eta_0 * rho**k * sqrt(B / B_0).
    """

    name = "seesaw"

    def _at(self, epoch: int) -> tuple[int, float]:
        k = sum(1 for d in self.decay_epochs if d <= epoch)
        ideal = self.base_batch / self.decay_factor**k
        b = round(ideal) if ideal <= self.max_batch * (1 + 1e-9) else self.max_batch
        return b, self.lr * self.decay_factor**k * math.sqrt(b / self.base_batch)


@dataclass
class _Segment:
    start: int  # first epoch at this batch size
    batch: int
    lr_mult: float  # product of lr scalings since B_0
    adv_fraction: float
    # growth_warmup: the lr multiplier the segment starts from (the previous one's at
    # ``start``), ramped linearly to lr_mult over growth_warmup epochs; None: a step change
    warm_from: float | None = None

    def as_list(self) -> list[Any]:
        out = [self.start, self.batch, self.lr_mult, self.adv_fraction]
        return out if self.warm_from is None else [*out, self.warm_from]


@dataclass
class ABS:
    """Adaptive batch size from the top Hessian eigenvalue (Yao et al.); ABSA when r_0 > 0.

    At the end of each epoch lambda (top eigenvalue on the probe set) is compared with a
    reference lambda_ref: grow when lambda <= lambda_ref / alpha. ``reference="first"`` is the
    authors' rule (lambda_ref = first lambda, reset to lambda at each eigenvalue growth);
    ``"peak"`` uses the running maximum of lambda since the last growth. With ``confidence``
    the test is lambda + 2 stderr <= lambda_ref / alpha (trigger "eigenvalue_confident"), so
    probe noise alone cannot fire it. If ``duration`` epochs pass at one batch size, grow
    anyway (trigger "duration"). A growth multiplies B by ``growth_factor`` (capped at B_max),
    scales eta by the lr rule and halves r; at B_max r is 0 and probing stops. r is also 0
    from half the epochs on. Step decay still applies. The eigenvalue trigger needs
    lambda_ref > 0 (a non-positive top eigenvalue, possible far from a minimum, never counts
    as "dropped"). ``lr_guard`` caps eta after a growth at 2 (1 + momentum) / lambda, the
    stability limit of SGD with momentum on a quadratic of curvature lambda (Cohen et al.
    2021), using the latest lambda; ``max_lr`` caps it at a fixed value (both bind from the
    growth on; step decay still applies below them).

    ``growth_warmup`` (epochs, may be fractional): after a growth at the end of epoch e the
    lr ramps linearly, per step, from the old lr to the new one over epochs
    [e + 1, e + 1 + growth_warmup) instead of jumping at e + 1 (the ramp is on the growth
    multiplier; step decay multiplies it). 0: the step change.

    ``stop_rule`` vetoes a growth that a trigger asked for (kept in ``vetoes``, described by
    ``last_veto``): "noise" when the new batch would exceed stop_noise_ratio * B_simple
    (past McCandlish et al.'s critical batch, S = S_min (1 + B_noise / B), a larger batch
    no longer cuts the steps; no veto without an estimate); "stability" when the new lr,
    as the lr rule and max_lr give it (before lr_guard), times this epoch's lambda reaches
    2 (1 + momentum) (no veto without a lambda). "none": never.
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
    duration: int | None = 10
    adv_fraction: float = 0.0
    eigenvalue_trigger: bool = True  # False: duration-only growth, no probing (ablation)
    confidence: bool = False
    lr_guard: bool = False
    momentum: float = 0.9  # beta of the stability limit (lr_guard, stop_rule stability)
    growth_warmup: float = 0.0  # epochs of the lr ramp after each growth; 0: step change
    max_lr: float | None = None  # fixed lr ceiling after a growth; None: none
    stop_rule: str = "none"  # none | noise | stability (see the class docstring)
    stop_noise_ratio: float = 1.0  # stop_rule noise: veto new B > ratio * B_simple
    name: str = "abs"
    segments: list[_Segment] = field(default_factory=list)
    ref_value: float | None = None
    last_lambda: float | None = None  # lr_guard: most recent eigenvalue seen
    vetoes: list[int] = field(default_factory=list)  # epochs whose growth was vetoed
    last_veto: Veto | None = None  # the latest veto (not in the state: a log record)

    def __post_init__(self) -> None:
        if self.reference not in REFERENCES:
            raise ValueError(f"reference: unknown rule {self.reference!r}")
        if self.stop_rule not in STOP_RULES:
            raise ValueError(f"stop_rule: unknown rule {self.stop_rule!r}")
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

    def _mult(self, epoch: int, progress: float) -> float:
        """The growth lr multiplier at ``epoch + progress`` (mid-ramp under growth_warmup)."""
        seg = self._segment(epoch)
        if seg.warm_from is None or self.growth_warmup <= 0:
            return seg.lr_mult
        done = (epoch + progress - seg.start) / self.growth_warmup
        if done >= 1:
            return seg.lr_mult
        return seg.warm_from + (seg.lr_mult - seg.warm_from) * done

    def lr_at(self, epoch: int, progress: float) -> float:
        mult = self._mult(epoch, progress)
        return self.lr * mult * step_decay(epoch, self.decay_epochs, self.decay_factor)

    def wants(self) -> frozenset[str]:
        """Signals this policy reads while it can still grow: its trigger's and its stop
        rule's."""
        return self._trigger_wants() | _STOP_WANTS[self.stop_rule]

    def _trigger_wants(self) -> frozenset[str]:
        if not self.eigenvalue_trigger:
            return frozenset()
        return frozenset({LAMBDA, LAMBDA_STDERR} if self.confidence else {LAMBDA})

    def plan(self, epoch: int) -> EpochPlan:
        seg = self._segment(epoch)
        adv = 0.0 if epoch >= self.total_epochs / 2 else seg.adv_fraction
        wants = self.wants() if seg.batch < self.max_batch else frozenset()
        return EpochPlan(seg.batch, self.lr_at(epoch, 0.0), adv, wants)

    def observe(self, epoch: int, signals: Signals) -> Growth | None:
        """End of ``epoch``: update lambda_ref and decide whether epoch + 1 uses a larger batch."""
        seg = self.segments[-1]
        if seg.batch >= self.max_batch or epoch < seg.start:
            return None
        eigenvalue = signals.get(LAMBDA) if self.eigenvalue_trigger else None
        if eigenvalue is not None:
            self.last_lambda = eigenvalue
        trigger = self._trigger(epoch, seg, eigenvalue, signals)
        if trigger is None:
            return None
        veto = self._veto(epoch, seg, trigger, signals)
        if veto is not None:
            self.vetoes.append(epoch)
            self.last_veto = veto
            return None
        ref_before = self.ref_value
        growth = self._grow(epoch, seg, trigger, eigenvalue, ref_before, signals)
        if growth is None:
            return None
        if trigger.startswith("eigenvalue") or self.reference == "peak":
            self.ref_value = eigenvalue  # "first" keeps lambda_ref on a fallback growth
        return growth

    def _eigen_trigger(self, eigenvalue: float | None, signals: Signals) -> str | None:
        """Update lambda_ref with lambda; the eigenvalue trigger's name if it fires."""
        if eigenvalue is None:
            return None
        if self.ref_value is None:
            self.ref_value = eigenvalue
        elif self.reference == "peak":
            self.ref_value = max(self.ref_value, eigenvalue)
        if self.ref_value <= 0:
            return None
        if not self.confidence:
            return "eigenvalue" if eigenvalue <= self.ref_value / self.alpha else None
        err = signals.get(LAMBDA_STDERR)
        upper = eigenvalue + 2 * (err if err is not None else math.inf)
        return "eigenvalue_confident" if upper <= self.ref_value / self.alpha else None

    def _trigger(
        self, epoch: int, seg: _Segment, eigenvalue: float | None, signals: Signals
    ) -> str | None:
        trigger = self._eigen_trigger(eigenvalue, signals)
        if trigger is None and self._overdue(epoch, seg):
            trigger = "duration"
        return trigger

    def _overdue(self, epoch: int, seg: _Segment) -> bool:
        return self.duration is not None and epoch + 1 - seg.start >= self.duration

    def _scaled(self, epoch: int, seg: _Segment) -> tuple[int, float, float | None]:
        """The next segment's batch and lr multiplier by the lr rule and max_lr (not yet
        lr_guard), and max_lr when it bound."""
        new_batch = min(seg.batch * self.growth_factor, self.max_batch)
        mult = seg.lr_mult * lr_scale(new_batch, seg.batch, self.lr_scaling)
        cap = None
        if self.max_lr is not None:
            decay = step_decay(epoch + 1, self.decay_epochs, self.decay_factor)
            if self.lr * mult * decay > self.max_lr:
                mult, cap = self.max_lr / (self.lr * decay), self.max_lr
        return new_batch, mult, cap

    def _veto(self, epoch: int, seg: _Segment, trigger: str, signals: Signals) -> Veto | None:
        """The stop rule's veto of the growth ``trigger`` asked for, or None."""
        if self.stop_rule == "none":
            return None
        new_batch, mult, _cap = self._scaled(epoch, seg)
        new_lr = self.lr * mult * step_decay(epoch + 1, self.decay_epochs, self.decay_factor)
        b_simple, lam = signals.get(NOISE), signals.get(LAMBDA)
        limit = None
        if self.stop_rule == "noise" and b_simple is not None:
            bound = self.stop_noise_ratio * b_simple  # a batch size
            limit = bound if new_batch > bound else None
        elif self.stop_rule == "stability" and lam is not None and lam > 0:
            bound = 2 * (1 + self.momentum) / lam  # an lr: new_lr * lam >= 2 (1 + beta)
            limit = bound if new_lr * lam >= 2 * (1 + self.momentum) else None
        if limit is None:
            return None
        rule = f"stop_{self.stop_rule}"
        return Veto(epoch, seg.batch, new_batch, new_lr, trigger, rule, limit, lam, b_simple)

    def _grow(
        self,
        epoch: int,
        seg: _Segment,
        trigger: str,
        eigenvalue: float | None,
        reference: float | None,
        signals: Signals,
    ) -> Growth | None:
        """Append the next segment (B x growth_factor, capped; lr by the rule, max_lr and
        lr_guard; r / 2; under growth_warmup the lr ramps from the current one)."""
        new_batch, mult, cap = self._scaled(epoch, seg)
        if self.lr_guard and self.last_lambda is not None and self.last_lambda > 0:
            limit = 2 * (1 + self.momentum) / self.last_lambda
            decay = step_decay(epoch + 1, self.decay_epochs, self.decay_factor)
            if self.lr * mult * decay > limit:
                mult, cap = limit / (self.lr * decay), limit
        adv = 0.0 if new_batch >= self.max_batch else seg.adv_fraction / 2
        old_lr = self.lr_at(epoch + 1, 0.0)
        warm_from = self._mult(epoch + 1, 0.0) if self.growth_warmup > 0 else None
        self.segments.append(_Segment(epoch + 1, new_batch, mult, adv, warm_from))
        # new_lr: where the lr lands (after the ramp under growth_warmup), before later decays
        new_lr = self.lr * mult * step_decay(epoch + 1, self.decay_epochs, self.decay_factor)
        return Growth(
            epoch=epoch,
            old_batch=seg.batch,
            new_batch=new_batch,
            old_lr=old_lr,
            new_lr=new_lr,
            trigger=trigger,
            eigenvalue=eigenvalue,
            reference=reference,
            noise_scale=signals.get(NOISE)
            if self.uses_noise or self.stop_rule == "noise"
            else None,
            lr_cap=cap,
        )

    uses_noise = False

    def state_dict(self) -> dict[str, Any]:
        state = {
            "kind": self.name,
            "segments": [s.as_list() for s in self.segments],
            "reference": self.ref_value,
        }
        if self.lr_guard:
            state["last_lambda"] = self.last_lambda
        if self.vetoes or self.stop_rule != "none":
            state["vetoes"] = list(self.vetoes)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("kind") != self.name:
            raise ValueError(f"schedule state is for {state.get('kind')!r}, not {self.name!r}")
        self.segments = [_load_segment(s) for s in state["segments"]]
        self.ref_value = state["reference"]
        self.last_lambda = state.get("last_lambda")
        self.vetoes = [int(e) for e in state.get("vetoes", [])]
        self.last_veto = None


def _load_segment(row: list[Any]) -> _Segment:
    """A segment from its state row: [start, batch, lr_mult, adv_fraction(, warm_from)]."""
    start, batch, mult, adv, *warm = row
    return _Segment(
        int(start), int(batch), float(mult), float(adv), float(warm[0]) if warm else None
    )


_STOP_WANTS = {  # the signals each stop rule reads
    "none": frozenset(),
    "noise": frozenset({NOISE}),
    "stability": frozenset({LAMBDA}),
}


@dataclass
class GNS(ABS):
    """Grow from the gradient noise scale (McCandlish et al. 2018): at the end of an epoch,
    grow when B < gns_ratio * B_simple, B_simple = tr(Sigma) / |G|^2 (trigger "noise").

    This is also the norm test of adaptive sampling (Byrd et al. 2012): growing while
    B < tr(Sigma) / (theta^2 |G|^2) is ``gns`` with gns_ratio = 1 / theta^2. No Hessian; no
    fallback unless ``duration`` is given. Growth, lr rule, cap and r as in ABS.
    """

    gns_ratio: float = 1.0
    duration: int | None = None
    name: str = "gns"
    uses_noise = True

    def _trigger_wants(self) -> frozenset[str]:
        return frozenset({NOISE})

    def _trigger(
        self, epoch: int, seg: _Segment, eigenvalue: float | None, signals: Signals
    ) -> str | None:
        b_simple = signals.get(NOISE)
        if b_simple is not None and seg.batch < self.gns_ratio * b_simple:
            return "noise"
        return "duration" if self._overdue(epoch, seg) else None


@dataclass
class InnerProduct(GNS):
    """The augmented inner-product test (Bollapragada et al. 2018; AdAdaGrad, Lau et al. 2024):
    grow (trigger "noise") when the batch fails either condition

        Var_i(<grad l_i, u>) / B > theta^2 |G|^2         (inner product, u = G / |G|)
        (tr(Sigma) - Var_i(<grad l_i, u>)) / B > nu^2 |G|^2   (orthogonality)

    i.e. when the per-sample spread along the mean gradient (or across it) is too large for
    the batch to give a descent direction with the wanted probability.
    """

    theta: float = 0.9
    nu: float = 5.84
    name: str = "inner_product"

    def _trigger_wants(self) -> frozenset[str]:
        return frozenset({NOISE_G2, NOISE_TRACE, IP_VARIANCE})

    def _trigger(
        self, epoch: int, seg: _Segment, eigenvalue: float | None, signals: Signals
    ) -> str | None:
        g2, trace, ip = (signals.get(k) for k in (NOISE_G2, NOISE_TRACE, IP_VARIANCE))
        if g2 is not None and trace is not None and ip is not None and g2 > 0:
            b = seg.batch
            if ip / b > self.theta**2 * g2 or (trace - ip) / b > self.nu**2 * g2:
                return "noise"
        return "duration" if self._overdue(epoch, seg) else None


@dataclass
class Hybrid(ABS):
    """ABS's curvature trigger, with a growth vetoed (rule "noise") while
    B >= gns_ratio * B_simple (curvature says flatter, but the noise scale says a larger
    batch would be wasted); then the stop rule, if any. Vetoes are counted in the state
    (``vetoes``: epochs)."""

    gns_ratio: float = 1.0
    name: str = "hybrid"
    uses_noise = True

    def _trigger_wants(self) -> frozenset[str]:
        return super()._trigger_wants() | {NOISE}

    def _veto(self, epoch: int, seg: _Segment, trigger: str, signals: Signals) -> Veto | None:
        b_simple = signals.get(NOISE)
        if b_simple is not None and seg.batch >= self.gns_ratio * b_simple:
            new_batch, mult, _cap = self._scaled(epoch, seg)
            decay = step_decay(epoch + 1, self.decay_epochs, self.decay_factor)
            limit = self.gns_ratio * b_simple
            new_lr, lam = self.lr * mult * decay, signals.get(LAMBDA)
            return Veto(epoch, seg.batch, new_batch, new_lr, trigger, "noise", limit, lam, b_simple)
        return super()._veto(epoch, seg, trigger, signals)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "vetoes": list(self.vetoes)}


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
        return EpochPlan(self.batches[e], self.lrs[e], self.adv_fractions[e])


def build_policy(method: str, **kw: Any) -> Policy:
    """Policy by method name with the classes' keyword arguments (see ``METHODS``)."""
    spec = METHODS.get(method)
    if spec is None:
        raise ValueError(f"unknown schedule method {method!r} (valid: {', '.join(METHODS)})")
    if method in ("abs", "absa"):
        if method == "abs":
            kw["adv_fraction"] = 0.0 if kw.get("adv_fraction") is None else kw["adv_fraction"]
        return ABS(name=method, **kw)
    return spec.cls(**kw)


# --- the registry: config -> policy -------------------------------------------------------


@dataclass(frozen=True)
class MethodSpec:
    """What the rest of absa needs to know of a method."""

    cls: type
    grows: bool  # the batch changes during training (needs schedule.max_batch)
    build: Callable[[Config, dict[str, Any] | None], Policy]
    summary: str


def _common(cfg: Config) -> dict[str, Any]:
    o = cfg.optim
    return {
        "lr": o.lr,
        "decay_epochs": list(o.decay_epochs),
        "decay_factor": o.decay_factor,
        "adv_fraction": cfg.adv_fraction,  # constant for BL/FB/GG; ABSA halves it per growth
    }


def _fixed(cfg: Config, _traj: Any) -> Policy:
    return BL(batch_size=cfg.batch.size, **_common(cfg))


def _fb(cfg: Config, _traj: Any) -> Policy:
    s = cfg.schedule
    ref = s.ref_batch or cfg.batch.size
    return FB(
        base_batch=ref,
        batch_size=cfg.batch.size,
        warmup_epochs=s.warmup_epochs,
        **_common(cfg),
    )


def _ramp(cls: type) -> Callable[[Config, Any], Policy]:
    def build(cfg: Config, _traj: Any) -> Policy:
        return cls(base_batch=cfg.batch.size, max_batch=cfg.schedule.max_batch, **_common(cfg))

    return build


def _replay(cfg: Config, traj: dict[str, Any] | None) -> Policy:
    if traj is None:
        raise ValueError("replay: needs the recorded trajectory (schedule.replay_from)")
    return Replay(**traj)


def _adaptive(cfg: Config, _traj: Any) -> Policy:
    """ABS, ABSA, gns, inner_product and hybrid from the ``schedule`` section."""
    s = cfg.schedule
    kw: dict[str, Any] = dict(
        base_batch=cfg.batch.size,
        max_batch=s.max_batch,
        total_epochs=cfg.train.epochs,
        growth_factor=s.growth_factor,
        lr_scaling=s.lr_scaling,
        lr_guard=s.lr_guard,
        momentum=cfg.optim.momentum,
        growth_warmup=s.growth_warmup,
        max_lr=s.max_lr,
        stop_rule=s.stop_rule,
        stop_noise_ratio=s.stop_noise_ratio,
        **_common(cfg),
    )
    curvature = dict(
        alpha=s.alpha,
        reference=s.reference,
        duration=s.duration,
        eigenvalue_trigger=s.eigenvalue_trigger,
        confidence=s.confidence,
    )
    if s.method in ("abs", "absa"):
        return build_policy(s.method, **kw, **curvature)
    if s.method == "hybrid":
        return Hybrid(gns_ratio=s.gns_ratio, **kw, **curvature)
    if s.method == "gns":
        return GNS(gns_ratio=s.gns_ratio, **kw)
    return InnerProduct(theta=s.ip_theta, nu=s.ip_nu, **kw)


METHODS: dict[str, MethodSpec] = {
    "bl": MethodSpec(BL, False, _fixed, "fixed batch, step decay"),
    "fb": MethodSpec(FB, False, _fb, "fixed large batch, linear lr scaling + warm-up (Goyal)"),
    "gg": MethodSpec(GG, True, _ramp(GG), "grow B instead of decaying lr (Smith)"),
    "seesaw": MethodSpec(Seesaw, True, _ramp(Seesaw), "lr x sqrt(rho), B / rho (Meterez)"),
    "abs": MethodSpec(ABS, True, _adaptive, "grow when lambda_max drops (Yao)"),
    "absa": MethodSpec(ABS, True, _adaptive, "ABS + adversarial examples (Yao)"),
    "gns": MethodSpec(GNS, True, _adaptive, "grow below the gradient noise scale"),
    "inner_product": MethodSpec(InnerProduct, True, _adaptive, "augmented inner-product test"),
    "hybrid": MethodSpec(Hybrid, True, _adaptive, "curvature trigger, noise-scale veto"),
    "replay": MethodSpec(Replay, False, _replay, "play back a finished run's trajectory"),
}
GROWING = tuple(m for m, spec in METHODS.items() if spec.grows)

# the keys of every adaptive policy (abs, absa, gns, inner_product, hybrid): growth, the lr
# rules at a growth (scaling, ceilings, warm-up) and the stop rule; gg/seesaw grow on a fixed
# schedule without raising the lr, so they read max_batch only
_GROW = (
    "max_batch",
    "growth_factor",
    "lr_scaling",
    "lr_guard",
    "max_lr",
    "growth_warmup",
    "stop_rule",
    "stop_noise_ratio",
)
_CURVATURE = ("alpha", "reference", "duration", "eigenvalue_trigger", "confidence")
READS: dict[str, frozenset[str]] = {  # the schedule.* keys each method's policy reads
    "bl": frozenset(),
    "fb": frozenset({"ref_batch", "warmup_epochs"}),
    "gg": frozenset({"max_batch"}),
    "seesaw": frozenset({"max_batch"}),
    "abs": frozenset(_GROW + _CURVATURE),
    "absa": frozenset(_GROW + _CURVATURE),
    "gns": frozenset((*_GROW, "gns_ratio")),
    "inner_product": frozenset((*_GROW, "ip_theta", "ip_nu")),
    "hybrid": frozenset((*_GROW, *_CURVATURE, "gns_ratio")),
    "replay": frozenset({"replay_from"}),
}


def ignored_keys(method: str, keys: Iterable[str]) -> list[str]:
    """The dotted ``schedule.*`` keys among ``keys`` that ``method`` does not read (a BL run
    with ``schedule.max_batch`` set, say): worth a warning, not an error."""
    reads = READS[method] | {"method"}
    out = []
    for key in keys:
        section, _, name = key.partition(".")
        if section == "schedule" and name and name not in reads:
            out.append(key)
    return sorted(set(out))


def ignored_note(method: str, keys: Iterable[str]) -> str:
    """``"schedule.a, schedule.b are ignored by schedule.method bl"`` for the keys of
    ``keys`` that ``method`` does not read; "" when there are none."""
    extra = ignored_keys(method, keys)
    if not extra:
        return ""
    verb = "is" if len(extra) == 1 else "are"
    return f"{', '.join(extra)} {verb} ignored by schedule.method {method}"


def make_policy(cfg: Config, trajectory: dict[str, Any] | None = None) -> Policy:
    """The policy the config's ``schedule.method`` names (``trajectory``: replay only)."""
    return METHODS[cfg.schedule.method].build(cfg, trajectory)
