"""The schedule policy a config names: its resolved values (``Settings``) and the policy
``schedule.method``'s registered class builds from them (absa.core.policies)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from absa.core.policies import Policy, Settings, spec_of
from absa.run.config import Config


def settings_of(cfg: Config, trajectory: Mapping[str, Any] | None = None) -> Settings:
    """B_0, eta_0, the step decay, r_0, E, beta, and the ``schedule.*`` values of the keys
    the method reads (``trajectory``: a replayed run's batches, lrs and adv_fractions)."""
    o, s = cfg.optim, cfg.schedule
    reads = spec_of(s.method).reads
    return Settings(
        batch_size=cfg.batch.size,
        lr=o.lr,
        decay_epochs=tuple(o.decay_epochs),
        decay_factor=o.decay_factor,
        adv_fraction=cfg.adv_fraction,
        epochs=cfg.train.epochs,
        momentum=o.momentum,
        schedule={k: getattr(s, k) for k in sorted(reads)},
        trajectory=trajectory,
    )


def make_policy(cfg: Config, trajectory: Mapping[str, Any] | None = None) -> Policy:
    """The policy the config's ``schedule.method`` names (``trajectory``: replay only)."""
    cls = spec_of(cfg.schedule.method)
    return cls.from_settings(settings_of(cfg, trajectory))  # type: ignore[return-value]
