"""Policies that grow the batch on a measured signal: ABS / ABSA (top Hessian eigenvalue,
Yao et al.), GNS (gradient noise scale, McCandlish et al.), InnerProduct (augmented
inner-product test, Bollapragada et al.) and Hybrid (curvature trigger, noise-scale veto).

They share ABS's growth: B x growth_factor (capped at B_max), the lr rule at a growth
(scaling, ceilings, warm-up), r halved, and the stop rule.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Self

from absa.core.policies.base import (
    IP_VARIANCE,
    LAMBDA,
    LAMBDA_STDERR,
    NOISE,
    NOISE_G2,
    NOISE_TRACE,
    REFERENCES,
    STOP_RULES,
    EpochPlan,
    Growth,
    Registrable,
    Settings,
    Signals,
    Veto,
    lr_scale,
    step_decay,
)
from absa.core.policies.registry import register

# the keys of every policy here: growth, the lr rules at a growth (scaling, ceilings,
# warm-up) and the stop rule (gg/seesaw grow on a fixed schedule and read max_batch only)
GROWTH_KEYS = frozenset(
    {
        "max_batch",
        "growth_factor",
        "lr_scaling",
        "lr_guard",
        "max_lr",
        "growth_warmup",
        "stop_rule",
        "stop_noise_ratio",
    }
)
# the eigenvalue trigger's keys (abs, absa, hybrid)
CURVATURE_KEYS = frozenset({"alpha", "reference", "duration", "eigenvalue_trigger", "confidence"})


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


@register("abs")
@dataclass
class ABS(Registrable):
    """Adaptive batch size from the top Hessian eigenvalue (Yao et al.); adversarial (as
    ABSA) when r_0 > 0.

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
    adv_fraction: float = 0.0  # r_0 (None, from build_policy: 0)
    eigenvalue_trigger: bool = True  # False: duration-only growth, no probing (ablation)
    confidence: bool = False
    lr_guard: bool = False
    momentum: float = 0.9  # beta of the stability limit (lr_guard, stop_rule stability)
    growth_warmup: float = 0.0  # epochs of the lr ramp after each growth; 0: step change
    max_lr: float | None = None  # fixed lr ceiling after a growth; None: none
    stop_rule: str = "none"  # none | noise | stability (see the class docstring)
    stop_noise_ratio: float = 1.0  # stop_rule noise: veto new B > ratio * B_simple
    segments: list[_Segment] = field(default_factory=list)
    ref_value: float | None = None
    last_lambda: float | None = None  # lr_guard: most recent eigenvalue seen
    vetoes: list[int] = field(default_factory=list)  # epochs whose growth was vetoed
    last_veto: Veto | None = None  # the latest veto (not in the state: a log record)
    summary = "grow when lambda_max drops (Yao)"
    reads = GROWTH_KEYS | CURVATURE_KEYS
    grows = True
    curvature = True
    uses_noise = False  # Growth.noise_scale is B_simple (else only under stop_rule noise)

    @classmethod
    def from_settings(cls, s: Settings) -> Self:
        return cls(
            base_batch=s.batch_size,
            total_epochs=s.epochs,
            momentum=s.momentum,
            **s.decayed(),
            **cls._keywords(s.schedule),
        )

    @classmethod
    def _keywords(cls, schedule: Mapping[str, Any]) -> dict[str, Any]:
        """The keyword arguments for the schedule keys the class reads (the same names)."""
        return {k: schedule[k] for k in sorted(cls.reads)}

    def __post_init__(self) -> None:
        if self.adv_fraction is None:
            self.adv_fraction = 0.0
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


@register("absa")
@dataclass
class ABSA(ABS):
    """ABS with adversarial training (Yao et al.): r_0 of each batch (0.2 unless
    adversarial.fraction says otherwise) are adversarial examples, halved at each growth."""

    summary = "ABS + adversarial examples (Yao)"
    default_adv_fraction = 0.2


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


@register("gns")
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
    summary = "grow below the gradient noise scale"
    reads = GROWTH_KEYS | {"gns_ratio"}
    curvature = False
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


@register("inner_product")
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
    summary = "augmented inner-product test"
    reads = GROWTH_KEYS | {"ip_theta", "ip_nu"}

    @classmethod
    def _keywords(cls, schedule: Mapping[str, Any]) -> dict[str, Any]:
        """schedule.ip_theta and ip_nu are the tests' theta and nu."""
        kw = {k: schedule[k] for k in sorted(GROWTH_KEYS)}
        return {**kw, "theta": schedule["ip_theta"], "nu": schedule["ip_nu"]}

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


@register("hybrid")
@dataclass
class Hybrid(ABS):
    """ABS's curvature trigger, with a growth vetoed (rule "noise") while
    B >= gns_ratio * B_simple (curvature says flatter, but the noise scale says a larger
    batch would be wasted); then the stop rule, if any. Vetoes are counted in the state
    (``vetoes``: epochs)."""

    gns_ratio: float = 1.0
    summary = "curvature trigger, noise-scale veto"
    reads = GROWTH_KEYS | CURVATURE_KEYS | {"gns_ratio"}
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
