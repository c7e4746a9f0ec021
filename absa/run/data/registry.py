"""The dataset registry ``DATASETS``: name -> ``Dataset`` (how to read it, what its images are).

``data.name`` validation (absa.run.config), ``load_data`` and the config doc all ask this
registry; the built-in entries are registered in ``absa.run.data.builtin``. A new data set is
one ``register_dataset(name, Dataset(...))`` call.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from absa.run.data.folder import Data
from absa.run.data.splits import DataError, TensorSplit
from absa.util import did_you_mean


class DataSection(Protocol):
    """What loaders read of the config's ``data`` section (absa.run.config.DataConfig)."""

    name: str
    root: Path
    download: bool
    image_size: int | None
    train_size: int | None
    test_size: int | None
    test_fraction: float
    split_seed: int
    num_workers: int
    resize_size: int | None
    folder_augment: bool
    check_images: str


Reader = Callable[[DataSection], tuple[TensorSplit, TensorSplit]]


@dataclass(frozen=True)
class Dataset:
    """One registry entry.

    ``read(cfg)`` -> (train, test) TensorSplits with labels in 0 .. ``classes`` - 1; load_data
    then checks them, takes the ``data.train_size``/``test_size`` subsets and resizes to
    ``data.image_size``. ``mean``/``std``: per-channel normalization (None: measured on the
    train split). ``flip``: horizontal flips keep the label (``data.augment: auto``).
    ``download(root)``: fetch the files when ``data.download`` is true (None: nothing to
    fetch). ``load(cfg)`` -> Data replaces all of that (imagefolder: classes from folders).
    ``summary``: one line for the config doc.
    """

    read: Reader | None = None
    classes: int = 10
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    flip: bool = True
    download: Callable[[str], None] | None = None
    load: Callable[[DataSection], Data] | None = None
    summary: str = ""

    def __post_init__(self) -> None:
        if (self.read is None) == (self.load is None):
            raise ValueError("Dataset: give exactly one of read and load")
        if (self.mean is None) != (self.std is None):
            raise ValueError("Dataset: give both mean and std, or neither")


DATASETS: dict[str, Dataset] = {}


def register_dataset(name: str, spec: Dataset) -> Dataset:
    """Add ``spec`` to the registry under ``name`` (a new name: ValueError if taken)."""
    if name in DATASETS:
        raise ValueError(f"dataset {name!r} is already registered")
    DATASETS[name] = spec
    return spec


def unregister_dataset(name: str) -> None:
    """Remove ``name`` from the registry (tests that register a toy set)."""
    DATASETS.pop(name, None)


def unknown_dataset(name: str) -> str:
    """``unknown dataset; did you mean ...? (valid: ...)`` for a name not in the registry."""
    return f"unknown dataset{did_you_mean(name, list(DATASETS))} (valid: {', '.join(DATASETS)})"


def get_dataset(name: str) -> Dataset:
    """The registry entry of ``name``; DataError naming ``data.name`` when there is none."""
    if name not in DATASETS:
        raise DataError(f"data.name: {name!r}: {unknown_dataset(name)}")
    return DATASETS[name]


def num_classes(name: str) -> int:
    """Classes of a tensor dataset: labels must lie in 0 .. num_classes - 1."""
    return get_dataset(name).classes
