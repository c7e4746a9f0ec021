"""What every data set is made of: ``DatasetInfo``, ``TensorSplit`` and the checks readers share."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


class DataError(RuntimeError):
    """Data missing or malformed; the message says what to put where."""


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    num_classes: int
    channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    flip: bool  # whether horizontal flips preserve the label semantics


class TensorSplit:
    """A split held in memory: ``x`` uint8 or float [N, C, H, W], ``y`` int64 [N]."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        if len(x) != len(y):
            raise ValueError(f"{len(x)} images but {len(y)} labels")
        self.x, self.y = x, y.long()

    def __len__(self) -> int:
        return len(self.y)

    def get(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.x[idx]
        x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
        return x, self.y[idx]

    @property
    def targets(self) -> torch.Tensor:
        return self.y


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (its type name when empty)."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def require_samples(n: int, where: object) -> None:
    """DataError naming ``where`` (a file, folder or split) when it holds no sample."""
    if n == 0:
        raise DataError(f"{where}: no samples (0 images)")


def check_labels(y: np.ndarray, where: object, classes: int, low: int = 0) -> None:
    """DataError naming ``where``, the first bad label and its index unless every label of
    the 1-d array ``y`` is a class in ``low .. low + classes - 1``."""
    bad = np.flatnonzero((y < low) | (y >= low + classes))
    if len(bad):
        i = int(bad[0])
        more = f"; {len(bad)} labels out of range" if len(bad) > 1 else ""
        raise DataError(
            f"{where}: label {y[i]} at index {i} is not a class in {low}..{low + classes - 1}{more}"
        )


def channel_stats(split: TensorSplit) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel (mean, std) of a split's first 10,000 images (std at least 1e-3)."""
    x = split.get(torch.arange(min(len(split), 10_000)))[0]
    return tuple(x.mean(dim=(0, 2, 3)).tolist()), tuple(
        x.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist()
    )
