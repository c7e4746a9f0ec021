"""``load_data(cfg.data)``: the registry entry's splits, checked, subset, resized and described."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from absa.run.data.folder import Data
from absa.run.data.registry import DataSection, get_dataset
from absa.run.data.splits import (
    DatasetInfo,
    TensorSplit,
    channel_stats,
    check_labels,
    require_samples,
)


def load_data(cfg: DataSection) -> Data:
    """Read both splits of ``cfg.name`` and describe them; raise DataError with a fix hint."""
    spec = get_dataset(cfg.name)
    if spec.load is not None:
        return spec.load(cfg)
    assert spec.read is not None
    if cfg.download and spec.download is not None:
        spec.download(str(cfg.root))
    train, test = spec.read(cfg)
    # the readers already named a bad file; this covers every tensor set (digits, synthetic)
    for split, kind in ((train, "train"), (test, "test")):
        require_samples(len(split), f"{cfg.name}: the {kind} split")
        check_labels(split.y.numpy(), f"{cfg.name}: the {kind} split", spec.classes)
    train = _resize(_subset(train, cfg.train_size, cfg.split_seed), cfg.image_size)
    test = _resize(_subset(test, cfg.test_size, cfg.split_seed + 1), cfg.image_size)
    if spec.mean is not None and spec.std is not None:
        mean, std = spec.mean, spec.std
    else:
        mean, std = channel_stats(train)
    channels, size = train.x.shape[1], train.x.shape[-1]
    info = DatasetInfo(cfg.name, spec.classes, channels, size, mean, std, spec.flip)
    return Data(train, test, info)


def _subset(split: TensorSplit, n: int | None, seed: int) -> TensorSplit:
    if n is None or n >= len(split):
        return split
    idx = (
        torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))[:n].sort().values
    )
    return TensorSplit(split.x[idx], split.y[idx])


def _resize(split: TensorSplit, size: int | None) -> TensorSplit:
    if size is None or size == split.x.shape[-1]:
        return split
    x = split.x.float() / 255.0 if split.x.dtype == torch.uint8 else split.x
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return TensorSplit(x.clamp_(0, 1), split.y)
