"""Datasets, read offline from their standard on-disk formats, plus two embedded sets.

Images come out as float tensors in [0, 1] pixel units, shape [N, C, H, W]; normalization
(mean/std per channel, in ``DatasetInfo``) is a layer inside the model, so attack epsilons are
in [0, 1] pixel units too.

- ``digits``: scikit-learn's 1,797 real 8x8 handwritten digits (shipped in its wheel), a fixed
  stratified split seeded by ``data.split_seed``; optional upsampling with ``image_size``.
- ``synthetic``: seeded CIFAR-shaped 3x32x32, 10 classes, any size; each class is a smooth
  colored pattern, each sample a randomly shifted, contrast-jittered, noisy copy plus a
  distractor blob: learnable, not noise. Sample i is the same whatever the total size.
- ``cifar10`` / ``cifar100``: the python pickle batches (``cifar-10-batches-py/``,
  ``cifar-100-python/``) under ``data.root``.
- ``svhn``: ``train_32x32.mat`` / ``test_32x32.mat`` under ``data.root``.
- ``mnist``: idx files under ``data.root/MNIST/raw`` (torchvision's layout).
- ``fashion_mnist``: the four idx files directly in ``data.root`` (the Debian package's
  layout) or in ``data.root/FashionMNIST/raw``; with the default root, the Debian package's
  folder ``/usr/share/datasets/fashion-mnist`` when it is installed.
- ``imagefolder``: ``data.root/train/<class>/*`` and ``data.root/val/<class>/*`` (or ``test``),
  the ImageNet / TinyImageNet layout; decoded lazily by persistent DataLoader workers,
  resized (``resize_size``) and center-cropped to ``image_size`` (default 64), or for
  training with ``folder_augment`` random-resized-cropped and flipped, seeded per sample
  (``FolderSplit``: ``stream`` for epochs, ``get`` for index sets).

Every data set is an entry of the registry ``DATASETS`` (``registry``; the built-ins in
``builtin``): ``data.name`` validation, ``load_data`` and the config doc ask it, and a new data
set is one ``register_dataset(name, Dataset(read=..., classes=..., mean=..., std=...))``.
Modules: ``splits`` (DatasetInfo, TensorSplit), ``folder`` (FolderSplit), ``readers``,
``embedded``, ``registry``, ``builtin``, ``loading`` (load_data), ``augment``.

Batch-level augmentation (random crop with zero padding, horizontal flip) runs on tensors;
its random parameters are drawn per epoch for every position of the epoch's permutation, so
they do not depend on batch size, micro-batching or the number of processes.
"""

from __future__ import annotations

from absa.run.data import builtin  # noqa: F401 - registers the built-in data sets
from absa.run.data.augment import (
    AugmentParams,
    apply_augment,
    augment_params,
    epoch_permutation,
    global_batches,
    local_positions,
    micro_batches,
    resolve_augment,
)
from absa.run.data.embedded import digits_splits, synthetic_split
from absa.run.data.folder import (
    Data,
    FolderSplit,
    Split,
    check_images,
    crop_box,
    folder_split,
    load_image,
    sample_seed,
    stream_batches,
)
from absa.run.data.loading import load_data
from absa.run.data.readers import (
    FASHION_DEBIAN,
    fashion_folders,
    read_cifar,
    read_fashion_mnist,
    read_mnist,
    read_svhn,
)
from absa.run.data.readers import _read_idx as _read_idx  # read by tests/test_gpu_fixes.py
from absa.run.data.registry import (
    DATASETS,
    DataSection,
    Dataset,
    get_dataset,
    num_classes,
    register_dataset,
    unknown_dataset,
    unregister_dataset,
)
from absa.run.data.splits import DataError, DatasetInfo, TensorSplit, channel_stats

__all__ = [
    "DATASETS",
    "FASHION_DEBIAN",
    "AugmentParams",
    "Data",
    "DataError",
    "DataSection",
    "Dataset",
    "DatasetInfo",
    "FolderSplit",
    "Split",
    "TensorSplit",
    "apply_augment",
    "augment_params",
    "channel_stats",
    "check_images",
    "crop_box",
    "digits_splits",
    "epoch_permutation",
    "fashion_folders",
    "folder_split",
    "get_dataset",
    "global_batches",
    "load_data",
    "load_image",
    "local_positions",
    "micro_batches",
    "num_classes",
    "read_cifar",
    "read_fashion_mnist",
    "read_mnist",
    "read_svhn",
    "register_dataset",
    "resolve_augment",
    "sample_seed",
    "stream_batches",
    "synthetic_split",
    "unknown_dataset",
    "unregister_dataset",
]
