"""Replay: a finished run's batch / lr / adversarial-fraction trajectory, played back."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Self

from absa.core.policies.base import EpochPlan, Settings
from absa.core.policies.fixed import Stateless
from absa.core.policies.registry import register


@register("replay")
@dataclass
class Replay(Stateless):
    """Plays back a recorded trajectory: epoch e runs at ``batches[e]`` with lr ``lrs[e]``
    and adversarial fraction ``adv_fractions[e]``, as logged by a finished run, with no
    Hessian. Isolates the schedule's shape from the signal that chose it (ablation)."""

    batches: list[int]
    lrs: list[float]
    adv_fractions: list[float]
    summary = "play back a finished run's trajectory"
    reads = frozenset({"replay_from"})
    replays = True

    @classmethod
    def from_settings(cls, s: Settings) -> Self:
        if s.trajectory is None:
            raise ValueError("replay: needs the recorded trajectory (schedule.replay_from)")
        return cls(**s.trajectory)

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
