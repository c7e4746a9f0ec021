"""Epoch order, batch-level augmentation (random crop with zero padding, horizontal flip) and
the split of a logical batch into processes and micro-batches. Random parameters are drawn per
epoch for every position of the epoch's permutation, so they do not depend on batch size,
micro-batching or the number of processes."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from absa.run.data.splits import DatasetInfo


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The order of the training samples in ``epoch`` (same on every process)."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=g)


@dataclass(frozen=True)
class AugmentParams:
    """Per-position crop offsets (dy, dx) in [0, 2*pad] and flip flags for one epoch."""

    offsets: torch.Tensor  # [n, 2] int64
    flips: torch.Tensor  # [n] bool
    pad: int

    def take(self, pos: torch.Tensor) -> AugmentParams:
        return AugmentParams(self.offsets[pos], self.flips[pos], self.pad)


def resolve_augment(mode: str, info: DatasetInfo) -> str:
    if mode == "auto":
        return "crop_flip" if info.flip else "crop"
    return mode


def augment_params(
    n: int, seed: int, epoch: int, mode: str, image_size: int
) -> AugmentParams | None:
    """Random crop/flip parameters for every position of the epoch's permutation."""
    if mode == "none":
        return None
    pad = max(1, image_size // 8)
    g = torch.Generator().manual_seed(seed * 100_003 + epoch + 7_919)
    offsets = torch.randint(0, 2 * pad + 1, (n, 2), generator=g)
    flips = torch.rand(n, generator=g) < 0.5
    if mode != "crop_flip":
        flips = torch.zeros(n, dtype=torch.bool)
    return AugmentParams(offsets, flips, pad)


def apply_augment(x: torch.Tensor, params: AugmentParams | None) -> torch.Tensor:
    """Crop each image at its offset from the zero-padded image, then flip where flagged."""
    if params is None:
        return x
    n, _, h, w = x.shape
    p = params.pad
    padded = F.pad(x, (p, p, p, p))
    rows = params.offsets[:, 0, None] + torch.arange(h)  # [n, h]
    cols = params.offsets[:, 1, None] + torch.arange(w)  # [n, w]
    cols = torch.where(params.flips[:, None], cols.flip(1), cols)
    batch = torch.arange(n)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]
    # clone, not .contiguous(): with one channel the permuted tensor already counts as
    # contiguous but keeps channels-last strides, which DDP's gradient buckets then warn about
    return out.permute(0, 3, 1, 2).clone(memory_format=torch.contiguous_format)


def global_batches(n: int, batch_size: int) -> list[torch.Tensor]:
    """Positions [start, start + B) of each logical batch; the last may be smaller."""
    return [torch.arange(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]


def local_positions(batch: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """This process's share of a global batch: every ``world``-th position from ``rank``."""
    return batch if world == 1 else batch[rank::world]


def micro_batches(positions: torch.Tensor, max_micro: int) -> list[torch.Tensor]:
    return list(positions.split(max_micro)) if len(positions) else []
