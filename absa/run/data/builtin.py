"""The built-in entries of the dataset registry (absa.run.data.registry). Adding a data set is
one ``register_dataset`` call like those at the end of this module."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from absa import tv
from absa.run.data.embedded import digits_splits, synthetic_split
from absa.run.data.folder import Data, folder_split
from absa.run.data.readers import read_cifar, read_fashion_mnist, read_mnist, read_svhn
from absa.run.data.registry import DataSection, Dataset, register_dataset
from absa.run.data.splits import DataError, DatasetInfo, TensorSplit

IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
Pair = tuple[TensorSplit, TensorSplit]


def _digits(cfg: DataSection) -> Pair:
    return digits_splits(cfg.test_fraction, cfg.split_seed)


def _synthetic(cfg: DataSection) -> Pair:
    n_train, n_test = cfg.train_size or 10_000, cfg.test_size or 2_000
    return (
        synthetic_split(n_train, cfg.split_seed, offset=0),
        synthetic_split(n_test, cfg.split_seed, offset=500_000),
    )


def _both(read: Callable[[Path, bool], TensorSplit]) -> Callable[[DataSection], Pair]:
    """The (train, test) reader of a ``read(root, train)`` function."""
    return lambda cfg: (read(Path(cfg.root), True), read(Path(cfg.root), False))


def _cifar(fine: bool) -> Callable[[DataSection], Pair]:
    return lambda cfg: (
        read_cifar(Path(cfg.root), fine, True),
        read_cifar(Path(cfg.root), fine, False),
    )


def _fetch(cls: str, *splits: dict[str, Any]) -> Callable[[str], None]:
    """Opt-in download (``data.download``) of each split through torchvision's ``cls``, which
    verifies checksums; needs internet."""

    def fetch(root: str) -> None:
        dataset = getattr(tv.load("torchvision.datasets"), cls)
        for split in splits:
            dataset(root, download=True, **split)

    return fetch


TRAIN_TEST = ({"train": True}, {"train": False})


def folder_data(cfg: DataSection) -> Data:
    """Both ``imagefolder`` splits (``data.root/train`` and ``val`` or ``test``)."""
    root = Path(cfg.root)
    train_dir = root / "train"
    test_dir = next((root / d for d in ("val", "test") if (root / d).is_dir()), None)
    if not train_dir.is_dir() or test_dir is None:
        raise DataError(
            f"imagefolder: expected {train_dir}/<class>/<images> and {root}/val/<class>/<images> "
            "(ImageNet/TinyImageNet layout)"
        )
    size = cfg.image_size or 64
    resize = cfg.resize_size
    check = cfg.check_images
    train = folder_split(
        train_dir, size, cfg.num_workers, check, resize_size=resize, augment=cfg.folder_augment
    )
    test = folder_split(test_dir, size, cfg.num_workers, check, resize_size=resize)
    if train.folder.classes != test.folder.classes:
        raise DataError(f"imagefolder: class folders differ between {train_dir} and {test_dir}")
    mean, std = IMAGENET_STATS
    info = DatasetInfo("imagefolder", len(train.folder.classes), 3, size, mean, std, True)
    return Data(train, test, info)


register_dataset(
    "digits",
    Dataset(_digits, flip=False, summary="embedded: scikit-learn's 1,797 real 8x8 digits"),
)
register_dataset(
    "synthetic",
    Dataset(_synthetic, summary="embedded: seeded CIFAR-shaped 3x32x32, 10 classes, any size"),
)
register_dataset(
    "cifar10",
    Dataset(
        _cifar(False),
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2470, 0.2435, 0.2616),
        download=_fetch("CIFAR10", *TRAIN_TEST),
        summary="cifar-10-batches-py/ under root",
    ),
)
register_dataset(
    "cifar100",
    Dataset(
        _cifar(True),
        classes=100,
        mean=(0.5071, 0.4865, 0.4409),
        std=(0.2673, 0.2564, 0.2762),
        download=_fetch("CIFAR100", *TRAIN_TEST),
        summary="cifar-100-python/ under root",
    ),
)
register_dataset(
    "svhn",
    Dataset(
        _both(read_svhn),
        mean=(0.4377, 0.4438, 0.4728),
        std=(0.1980, 0.2010, 0.1970),
        flip=False,
        download=_fetch("SVHN", {"split": "train"}, {"split": "test"}),
        summary="train_32x32.mat, test_32x32.mat under root",
    ),
)
register_dataset(
    "mnist",
    Dataset(
        _both(read_mnist),
        mean=(0.1307,),
        std=(0.3081,),
        flip=False,
        download=_fetch("MNIST", *TRAIN_TEST),
        summary="idx files under root/MNIST/raw",
    ),
)
register_dataset(
    "fashion_mnist",
    Dataset(
        _both(read_fashion_mnist),
        mean=(0.2860,),
        std=(0.3530,),
        download=_fetch("FashionMNIST", *TRAIN_TEST),
        summary="idx files in root, root/FashionMNIST/raw or the Debian package's folder",
    ),
)
register_dataset(
    "imagefolder",
    Dataset(load=folder_data, summary="root/train/<class>/*, root/val/<class>/* (ImageNet layout)"),
)
