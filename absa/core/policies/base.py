"""What every policy shares: the signal names, the records a policy returns, the lr rules,
and the class attributes the registry reads.

Step decay is shared by every method: eta(e) = eta_0 * rho ** #{d in decay_epochs : d <= e}.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, Self

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


@dataclass(frozen=True)
class Settings:
    """The resolved values a policy is built from (absa.run.policy reads them from a config):
    B_0, eta_0, the step decay, r_0, the run's length E, SGD's beta, and the ``schedule.*``
    values of exactly the keys the method ``reads``."""

    batch_size: int  # B_0: batch.size
    lr: float  # eta_0: optim.lr
    decay_epochs: tuple[int, ...]  # optim.decay_epochs
    decay_factor: float  # rho: optim.decay_factor
    adv_fraction: float  # r_0: adversarial.fraction, else the method's default_adv_fraction
    epochs: int  # E: train.epochs
    momentum: float  # beta: optim.momentum
    schedule: Mapping[str, Any] = field(default_factory=dict)  # key (no "schedule.") -> value
    trajectory: Mapping[str, Any] | None = None  # a replayed run's batches, lrs, adv_fractions

    def decayed(self) -> dict[str, Any]:
        """lr, decay_epochs, decay_factor and adv_fraction: the keyword arguments every
        built-in policy takes."""
        return {
            "lr": self.lr,
            "decay_epochs": list(self.decay_epochs),
            "decay_factor": self.decay_factor,
            "adv_fraction": self.adv_fraction,
        }


class Registrable:
    """What the registry (absa.core.policies.registry) and the rest of absa ask about a
    method: class attributes a registered policy declares, and how to build it."""

    name: ClassVar[str] = "?"  # the schedule.method value; set by ``register``
    summary: ClassVar[str] = ""  # one line for the docs; every registered class has its own
    reads: ClassVar[frozenset[str]] = frozenset()  # schedule.* keys it reads (no prefix)
    grows: ClassVar[bool] = False  # the batch grows during training (needs schedule.max_batch)
    curvature: ClassVar[bool] = False  # grows on lambda_max of hessian.block (eigenvalue trigger)
    replays: ClassVar[bool] = False  # plays back a recorded run (schedule.replay_from)
    default_adv_fraction: ClassVar[float] = 0.0  # r_0 when adversarial.fraction is null

    @classmethod
    def from_settings(cls, s: Settings) -> Self:
        """The policy for resolved config values (reads only ``s.schedule[k]`` for k in
        ``reads``)."""
        raise NotImplementedError(f"{cls.__name__}.from_settings")


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
