"""The outer shape of every model: ``model(x) == model.classifier(model.features(x))``."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from absa.run.data.splits import DatasetInfo


class Normalize(nn.Module):
    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class ImageClassifier(nn.Module):
    """normalize -> [repeat a single channel] -> backbone -> flatten -> classifier.

    ``head``: an existing final layer (wrapped third-party modules); default a fresh
    ``nn.Linear(feature_dim, classes)``. ``repeat_channels``: expand one-channel input to that
    many channels after normalizing (a 3-channel backbone on grayscale data); None: as is.
    """

    def __init__(
        self,
        backbone: nn.Module,
        feature_dim: int,
        info: DatasetInfo,
        name: str = "",
        head: nn.Module | None = None,
        repeat_channels: int | None = None,
    ) -> None:
        super().__init__()
        self.arch = name
        self.normalize = Normalize(info.mean, info.std)
        self.backbone = backbone
        self.classifier = head if head is not None else nn.Linear(feature_dim, info.num_classes)
        self.repeat_channels = repeat_channels

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.normalize(x)
        if self.repeat_channels is not None:
            x = x.expand(-1, self.repeat_channels, -1, -1)
        return torch.flatten(self.backbone(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@contextmanager
def model_mode(model: nn.Module, train: bool) -> Iterator[nn.Module]:
    """Run the block with ``model.train(train)``, then restore every submodule's own mode.

    The ``.training`` flag of each module in ``model.modules()`` is recorded on entry and put
    back on exit (also when the block raises), so mixed modes, e.g. a frozen BatchNorm in eval
    mode inside a model in train mode, survive exactly.
    """
    saved = [(m, m.training) for m in model.modules()]
    model.train(train)
    try:
        yield model
    finally:
        for m, flag in saved:
            m.training = flag


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
