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

Batch-level augmentation (random crop with zero padding, horizontal flip) runs on tensors;
its random parameters are drawn per epoch for every position of the epoch's permutation, so
they do not depend on batch size, micro-batching or the number of processes.
"""

from __future__ import annotations

import gzip
import math
import os
import pickle
import random
import warnings
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from absa.run.config import DataConfig

if TYPE_CHECKING:
    from PIL import Image


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


def _load_image(path: str, decode: bool = True) -> Image.Image | None:
    """ImageFolder's PIL loader (RGB), with a one-line DataError naming an unreadable file
    or one past PIL's decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``, where PIL
    would otherwise only warn, up to twice that). ``decode=False`` only reads the header."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                return img.convert("RGB") if decode else None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise DataError(
            f"{path}: image too large, a possible decompression bomb "
            f"({_first_line(err).rstrip('.')}; "
            "PIL.Image.MAX_IMAGE_PIXELS sets the limit)"
        ) from None
    except UnidentifiedImageError:
        raise DataError(f"{path}: not an image file PIL can decode") from None
    except Exception as err:  # noqa: BLE001 - truncated or corrupt data: OSError, SyntaxError...
        raise DataError(f"{path}: unreadable image ({_first_line(err)})") from None


_MASK64 = (1 << 64) - 1


def _mix64(*values: int) -> int:
    """A 63-bit hash of integers (splitmix64 steps): the per-sample seed of augmentation."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h ^ (int(v) & _MASK64)) & _MASK64
        h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & _MASK64
        h ^= h >> 31
    return h >> 1


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """Seed of sample ``index``'s random crop and flip in ``epoch`` (imagefolder)."""
    return _mix64(seed, epoch, index)


def crop_box(
    rng: random.Random,
    height: int,
    width: int,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a random-resized crop: torchvision's RandomResizedCrop.get_params
    (10 tries of area fraction ~ U(scale) and log-aspect ~ U(log ratio), else the largest
    central crop within ``ratio``), drawing from ``rng`` instead of torch's global RNG."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            return rng.randint(0, height - h), rng.randint(0, width - w), h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        w, h = round(height * max(ratio)), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


class _FolderItems(torch.utils.data.Dataset):
    """Map-style dataset over an ImageFolder's files for the DataLoader of a FolderSplit.

    An item key is ``(index, seed)``: seed None gives the evaluation transform (resize to
    ``resize`` + center crop to ``size``); an int gives the training transform (random-resized
    crop to ``size`` and a horizontal flip with probability 1/2, both drawn from
    ``random.Random(seed)``). Paths live in a numpy array, not a list of Python strings, so
    forked workers do not copy them page by page through reference counting.
    """

    def __init__(
        self,
        samples: Sequence[tuple[str, int]],
        eval_tf: Any,
        size: int,
        scale: tuple[float, float],
    ) -> None:
        self.paths = np.array([os.fsencode(p) for p, _ in samples])
        self.labels = np.array([c for _, c in samples], dtype=np.int64)
        self.eval_tf = eval_tf
        self.size = size
        self.scale = scale

    def __len__(self) -> int:
        return len(self.labels)

    def path(self, i: int) -> str:
        return os.fsdecode(bytes(self.paths[i]))

    def __getitem__(self, key: tuple[int, int | None]) -> tuple[torch.Tensor, int]:
        i, seed = key
        img = _load_image(self.path(i))
        if seed is None:
            x = self.eval_tf(img)
        else:
            from absa import tv

            tf = tv.load("torchvision.transforms.v2.functional")
            rng = random.Random(seed)
            top, left, h, w = crop_box(rng, img.height, img.width, self.scale)
            x = tf.pil_to_tensor(img)
            x = tf.resized_crop(x, top, left, h, w, [self.size, self.size], antialias=True)
            if rng.random() < 0.5:
                x = tf.horizontal_flip(x)
        return x, int(self.labels[i])


class _Batches:
    """The batch sampler of a FolderSplit's persistent DataLoader: whatever lists of item keys
    were last assigned, read by the main process at the start of each iteration."""

    def __init__(self) -> None:
        self.batches: list[list[tuple[int, int | None]]] = []

    def __iter__(self) -> Iterator[list[tuple[int, int | None]]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class FolderSplit:
    """An ImageFolder split decoded lazily (PIL) into uint8 tensors, handed out as floats in
    [0, 1] of shape [n, 3, size, size].

    Transforms: evaluation = resize the short side to ``resize_size`` (default ``size``) and
    center-crop ``size``; training (``augment=True``, for ``stream(train=True)`` only) = the
    standard ImageNet RandomResizedCrop(size, scale) + horizontal flip with probability 1/2.
    With ``augment=False`` training samples get the evaluation transform (the old behaviour).

    Loading: one DataLoader per split, created at the first call and kept (with
    ``num_workers`` > 0: ``persistent_workers``, ``prefetch_factor`` micro-batches per worker in
    flight, pinned memory when CUDA is available), so worker processes start once per split
    for the whole run, not once per micro-batch, epoch or call. ``stream`` iterates an order
    of sample indices (e.g. this rank's shard of an epoch's permutation) in micro-batches,
    prefetching ahead; ``get`` decodes one index set (spread over the workers) for evaluation
    and probes. A ``get`` while a stream is half-consumed uses a temporary loader, so the
    stream is not disturbed; starting a new ``stream`` ends the previous one (resuming it
    raises RuntimeError).

    Reproducibility (same files, same software):

    - A sample's tensor depends only on its file, the transform settings, and for training
      samples on ``sample_seed(seed, epoch, index)``; nothing depends on the worker that
      decodes it, on the micro-batch it falls in or on what else is loaded. So streamed data
      are bitwise identical for any ``num_workers`` (0 = in-process), any micro-batch sizes
      (``stream`` yields its batches in the given order), between ``stream`` and ``get``
      (evaluation transform), and across a restart or resume at an epoch boundary.
    - Across process counts: each rank streams its own shard, and the shards of a logical
      batch hold the same samples with the same augmentation for any world size (the seed
      has no rank in it), so every logical batch's data are bitwise the same. Training
      results still differ in floating point (gradients summed in another order), and
      BatchNorm in train mode normalizes over each rank's micro-batch, so its statistics
      depend on the micro-batch size and the number of processes (as for tensor datasets).
    - Not covered: another Pillow / libjpeg(-turbo) / torchvision version or CPU may decode
      or resize a few pixel values differently; adding, removing or renaming files changes
      the indices (ImageFolder sorts classes and files); CUDA kernels after loading are
      outside this guarantee (see ``train.deterministic``).
    """

    def __init__(
        self,
        root: Path,
        size: int,
        num_workers: int = 0,
        resize_size: int | None = None,
        augment: bool = False,
        scale: tuple[float, float] = (0.08, 1.0),
        prefetch_factor: int = 2,
    ) -> None:
        from absa import tv

        ImageFolder = tv.load("torchvision.datasets").ImageFolder
        v2 = tv.load("torchvision.transforms.v2")

        tf = v2.Compose(
            [
                v2.PILToTensor(),
                v2.Resize(resize_size or size, antialias=True),
                v2.CenterCrop(size),
                v2.ToDtype(torch.uint8),
            ]
        )
        self.folder = ImageFolder(str(root), transform=tf, loader=_load_image)
        self.num_workers = num_workers
        self.size, self.resize_size = size, resize_size or size
        self.augments = augment  # stream(train=True) augments: skip tensor-level crop/flip
        self.prefetch_factor = prefetch_factor
        self.y = torch.tensor(self.folder.targets, dtype=torch.long)
        self._items = _FolderItems(self.folder.samples, tf, size, scale)
        self._batches = _Batches()
        self._loader: torch.utils.data.DataLoader | None = None
        self._generation = 0  # of the stream that owns the loader
        self._streaming = False

    def __len__(self) -> int:
        return len(self.y)

    @property
    def targets(self) -> torch.Tensor:
        return self.y

    # -- loaders ----------------------------------------------------------------------------

    def _new_loader(self, persistent: bool) -> torch.utils.data.DataLoader:
        batches = self._batches if persistent else _Batches()
        kw: dict[str, Any] = {}
        if self.num_workers > 0:
            kw = {"persistent_workers": persistent, "prefetch_factor": self.prefetch_factor}
        return torch.utils.data.DataLoader(
            self._items,
            batch_sampler=batches,
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
            **kw,
        )

    def close(self) -> None:
        """Stop the worker processes (they restart at the next call)."""
        self._loader = None  # the DataLoader's iterator shuts its workers down when freed
        self._generation += 1
        self._streaming = False

    def _run(
        self,
        loader: torch.utils.data.DataLoader,
        batches: list[list[tuple[int, int | None]]],
        device: torch.device | str | None,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield the converted batches; on a decoding error name the file in one line."""
        loader.batch_sampler.batches = batches
        it = iter(loader)
        for keys in batches:
            try:
                x, y = next(it)
            except Exception:
                if loader is self._loader:
                    self.close()  # a failed persistent loader is not reused
                if self.num_workers > 0:  # a worker's error spans lines: find the file here
                    for i, _ in keys:
                        _load_image(self._items.path(i))
                raise
            if device is not None:
                x = x.to(device, non_blocking=True)
                y = y.to(device, non_blocking=True)
            yield x.float().div_(255.0), y.long()

    def stream(
        self,
        order: torch.Tensor | Sequence[int],
        micro: int | Sequence[int],
        train: bool = False,
        epoch: int = 0,
        seed: int = 0,
        device: torch.device | str | None = None,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Micro-batches (x float [m, 3, size, size] in [0, 1], y int64) of the samples
        ``order`` in that order: chunks of ``micro`` samples (the last may be smaller), or
        of the given sizes when ``micro`` is a sequence (summing to ``len(order)``, e.g. the
        micro-batches of each step). ``train`` with ``augment`` applies the training
        transform seeded per sample by (seed, epoch, index); otherwise the evaluation one.
        ``device``: batches are moved there (non-blocking from pinned memory) before the
        uint8 -> float conversion. Decoding runs ahead in the workers while the caller
        computes; the whole order streams through one set of workers.
        """
        order = torch.as_tensor(order, dtype=torch.long).reshape(-1)
        if isinstance(micro, int):
            if micro < 1:
                raise ValueError(f"micro must be >= 1 (got {micro})")
            sizes: list[int] = [micro] * (len(order) // micro)
            if len(order) % micro:
                sizes.append(len(order) % micro)
        else:
            sizes = [int(m) for m in micro]
            if any(m < 1 for m in sizes) or sum(sizes) != len(order):
                raise ValueError(
                    f"micro-batch sizes must be >= 1 and sum to {len(order)} (got {sum(sizes)})"
                )
        augment = train and self.augments
        idx = order.tolist()
        keys = [(i, sample_seed(seed, epoch, i) if augment else None) for i in idx]
        batches, start = [], 0
        for m in sizes:
            batches.append(keys[start : start + m])
            start += m
        return self._stream(batches, device)

    def _stream(
        self, batches: list[list[tuple[int, int | None]]], device: torch.device | str | None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self._generation += 1
        mine = self._generation
        if self._loader is None:
            self._loader = self._new_loader(persistent=True)
        loader = self._loader
        self._streaming = True
        try:
            for batch in self._run(loader, batches, device):
                yield batch
                if self._generation != mine:
                    raise RuntimeError(
                        "FolderSplit.stream: a newer stream of this split started; an "
                        "unfinished stream cannot be resumed"
                    )
        finally:
            if self._generation == mine:
                self._streaming = False

    def get(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The samples ``idx`` (evaluation transform) as one batch, decoded in parallel by
        the workers (an equal share each)."""
        idx = torch.as_tensor(idx, dtype=torch.long).reshape(-1)
        if len(idx) == 0:
            return torch.zeros(0, 3, self.size, self.size), torch.zeros(0, dtype=torch.long)
        keys = [(i, None) for i in idx.tolist()]
        share = -(-len(keys) // max(1, self.num_workers))
        batches = [keys[s : s + share] for s in range(0, len(keys), share)]
        if self._streaming:  # keep a half-consumed stream intact
            loader = self._new_loader(persistent=False)
        else:
            if self._loader is None:
                self._loader = self._new_loader(persistent=True)
            loader = self._loader
            self._generation += 1
        xs, ys = zip(*self._run(loader, batches, None), strict=True)
        return torch.cat(xs), torch.cat(ys)


def stream_batches(
    split: Any,
    order: torch.Tensor,
    micro: int | Sequence[int],
    train: bool = False,
    epoch: int = 0,
    seed: int = 0,
    device: torch.device | str | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``split.stream(...)`` for a FolderSplit; for a split held in memory, ``split.get`` of
    each chunk (moved to ``device``). Same chunking rule as ``FolderSplit.stream``."""
    if isinstance(split, FolderSplit):
        yield from split.stream(order, micro, train, epoch, seed, device)
        return
    order = torch.as_tensor(order, dtype=torch.long).reshape(-1)
    sizes = micro if not isinstance(micro, int) else None
    chunks = order.split(list(sizes) if sizes is not None else micro) if len(order) else []
    for chunk in chunks:
        x, y = split.get(chunk)
        yield (x.to(device), y.to(device)) if device is not None else (x, y)


Split = TensorSplit | FolderSplit


@dataclass
class Data:
    train: Split
    test: Split
    info: DatasetInfo


# --- readers of the standard formats ------------------------------------------------------


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _missing(name: str, where: Path, what: str) -> DataError:
    return DataError(
        f"{name}: {what} not found under {where}; put the standard files there "
        f"(or set data.download: true where the dataset supports it)"
    )


NUM_CLASSES = {"cifar100": 100}  # the other tensor datasets have 10 (imagefolder: its folders)


def num_classes(name: str) -> int:
    """Classes of a tensor dataset: labels must lie in 0 .. num_classes - 1."""
    return NUM_CLASSES.get(name, 10)


def _require_samples(n: int, where: object) -> None:
    """DataError naming ``where`` (a file, folder or split) when it holds no sample."""
    if n == 0:
        raise DataError(f"{where}: no samples (0 images)")


def _check_labels(y: np.ndarray, where: object, classes: int, low: int = 0) -> None:
    """DataError naming ``where``, the first bad label and its index unless every label of
    the 1-d array ``y`` is a class in ``low .. low + classes - 1``."""
    bad = np.flatnonzero((y < low) | (y >= low + classes))
    if len(bad):
        i = int(bad[0])
        more = f"; {len(bad)} labels out of range" if len(bad) > 1 else ""
        raise DataError(
            f"{where}: label {y[i]} at index {i} is not a class in {low}..{low + classes - 1}{more}"
        )


def _latin1(text: str, encoding: str) -> bytes:
    """``_codecs.encode`` as protocol 0-2 pickles use it to store bytes, and nothing else."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("refuses _codecs.encode other than text to latin-1 bytes")
    return text.encode("latin-1")


def _no_bytes() -> bytes:
    """``bytes()`` as protocol 0-2 pickles store b''."""
    return b""


def _cifar_globals() -> dict[tuple[str, str], Any]:
    """The only globals a CIFAR batch needs: numpy arrays (for pickles of numpy 1.x and 2.x,
    any protocol) and python 2/3 bytes."""
    try:
        from numpy._core import multiarray, numeric
    except ImportError:  # numpy < 2
        from numpy.core import multiarray, numeric  # type: ignore[no-redef]
    found: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1,
        ("builtins", "bytes"): _no_bytes,
        ("__builtin__", "bytes"): _no_bytes,
    }
    for core in ("numpy.core", "numpy._core"):
        found[(f"{core}.multiarray", "_reconstruct")] = multiarray._reconstruct
        found[(f"{core}.multiarray", "scalar")] = multiarray.scalar
        found[(f"{core}.numeric", "_frombuffer")] = numeric._frombuffer
    return found


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles what a CIFAR batch holds (dicts, lists, strings, numbers, numpy arrays) and
    refuses every other global, so a crafted batch file cannot run code while loading."""

    _allowed = _cifar_globals()

    def find_class(self, module: str, name: str) -> Any:
        found = self._allowed.get((module, name))
        if found is None:
            raise pickle.UnpicklingError(f"refuses to load global {module}.{name}")
        return found


def read_cifar(root: Path, fine: bool, train: bool) -> TensorSplit:
    """CIFAR-10/100 python pickle batches: dicts with b'data' (N x 3072 uint8) and labels."""
    if fine:
        folder, files, key = (
            root / "cifar-100-python",
            ["train" if train else "test"],
            b"fine_labels",
        )
    else:
        folder = root / "cifar-10-batches-py"
        files = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
        key = b"labels"
    xs, ys = [], []
    for f in files:
        path = folder / f
        if not path.is_file():
            raise _missing("cifar100" if fine else "cifar10", folder, f"file {f}")
        with path.open("rb") as fh:
            try:
                batch = _CifarUnpickler(fh, encoding="bytes").load()
            except Exception as err:  # noqa: BLE001 - any unpickling failure is bad data
                raise DataError(f"{path}: not a CIFAR pickle batch ({_first_line(err)})") from None
        if not isinstance(batch, dict) or b"data" not in batch or key not in batch:
            raise DataError(f"{path}: not a CIFAR pickle batch (no b'data' and {key!r} entries)")
        try:
            x = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
            y = np.asarray(batch[key], dtype=np.int64).reshape(-1)
        except (TypeError, ValueError, OverflowError) as err:
            raise DataError(f"{path}: malformed CIFAR batch ({_first_line(err)})") from None
        if len(x) != len(y):
            raise DataError(f"{path}: malformed CIFAR batch ({len(x)} images, {len(y)} labels)")
        _require_samples(len(x), path)
        _check_labels(y, path, num_classes("cifar100" if fine else "cifar10"))
        xs.append(x)
        ys.append(y)
    return TensorSplit(torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys)))


def read_svhn(root: Path, train: bool) -> TensorSplit:
    """SVHN cropped digits .mat: X is 32x32x3xN uint8, y in 1..10 where 10 means digit 0.
    Only X and y are read (scipy skips every other variable unparsed)."""
    from scipy.io.matlab import MatReadWarning, loadmat

    path = root / ("train_32x32.mat" if train else "test_32x32.mat")
    if not path.is_file():
        raise _missing("svhn", root, f"file {path.name}")
    try:
        with warnings.catch_warnings():  # loadmat only warns about an unreadable variable
            warnings.simplefilter("error", MatReadWarning)
            warnings.filterwarnings("error", message="Unreadable variable")
            mat = loadmat(str(path), variable_names=["X", "y"])
    except Exception as err:  # noqa: BLE001 - MatReadError, ValueError, ... all mean bad data
        raise DataError(f"{path}: not a readable .mat file ({_first_line(err)})") from None
    X, y = mat.get("X"), mat.get("y")
    if not isinstance(X, np.ndarray) or X.ndim != 4 or X.shape[2] != 3:
        raise DataError(f"{path}: expected an SVHN array X of shape 32x32x3xN")
    if X.dtype != np.uint8:
        raise DataError(f"{path}: expected uint8 pixels in X, found {X.dtype}")
    if not isinstance(y, np.ndarray) or y.size != X.shape[3]:
        raise DataError(f"{path}: expected an SVHN label array y with {X.shape[3]} entries")
    if y.dtype.kind not in "iuf" or (y.dtype.kind == "f" and not np.all(np.mod(y, 1) == 0)):
        raise DataError(f"{path}: expected whole-number labels in y, found {y.dtype}")
    _require_samples(X.shape[3], path)
    labels = y.reshape(-1).astype(np.int64)
    _check_labels(labels, path, num_classes("svhn"), low=1)
    x = torch.from_numpy(np.ascontiguousarray(X.transpose(3, 2, 0, 1)))
    return TensorSplit(x, torch.from_numpy(labels % 10))


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    """An unsigned-byte idx file of ``ndim`` dimensions; DataError if truncated or malformed."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError, zlib.error) as err:  # bad or truncated gzip
        raise DataError(f"{path}: unreadable ({_first_line(err)})") from None
    if len(raw) < 4 or raw[:3] != b"\x00\x00\x08":
        raise DataError(f"{path}: not an unsigned-byte idx file")
    if raw[3] != ndim:
        raise DataError(f"{path}: expected {ndim}-dimensional idx data, found {raw[3]}")
    start = 4 + 4 * ndim
    if len(raw) < start:
        raise DataError(f"{path}: truncated idx file ({len(raw)} bytes, header needs {start})")
    dims = [int(d) for d in np.frombuffer(raw, dtype=">i4", count=ndim, offset=4)]
    need = math.prod(dims)
    if min(dims) < 0 or len(raw) - start != need:
        shape = "x".join(map(str, dims))
        raise DataError(
            f"{path}: truncated or malformed idx file (shape {shape} needs {need} data bytes, "
            f"found {len(raw) - start})"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=start).reshape(dims)


def read_mnist(root: Path, train: bool) -> TensorSplit:
    """MNIST idx files (optionally .gz) under ``root/MNIST/raw``, as torchvision lays them out."""
    raw = root / "MNIST" / "raw"
    prefix = "train" if train else "t10k"
    paths = []
    for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
        path = _idx_file(raw, f"{prefix}-{kind}")
        if path is None:
            raise _missing("mnist", raw, f"file {prefix}-{kind}")
        paths.append(path)
    return _idx_pair(paths[0], paths[1])


def _idx_file(folder: Path, stem: str) -> Path | None:
    """``folder/stem`` or ``folder/stem.gz``, whichever exists."""
    return next((p for p in (folder / stem, folder / f"{stem}.gz") if p.is_file()), None)


# where `apt-get install dataset-fashion-mnist` puts the four idx files
FASHION_DEBIAN = Path("/usr/share/datasets/fashion-mnist")
_DEFAULT_ROOT = Path("data")


def fashion_folders(root: Path) -> list[Path]:
    """Where ``fashion_mnist`` looks, in order: ``root`` itself (flat, as the Debian package
    lays the files out), torchvision's ``root/FashionMNIST/raw``, and, when ``data.root`` is
    left at its default, the Debian package's folder."""
    folders = [root, root / "FashionMNIST" / "raw"]
    if root == _DEFAULT_ROOT:
        folders.append(FASHION_DEBIAN)
    return folders


def read_fashion_mnist(root: Path, train: bool) -> TensorSplit:
    """Fashion-MNIST idx files (28x28 grey, 10 classes) from the first folder that has both."""
    prefix = "train" if train else "t10k"
    stems = (f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte")
    for folder in fashion_folders(root):
        found = [_idx_file(folder, s) for s in stems]
        if all(p is not None for p in found):
            return _idx_pair(found[0], found[1])
    searched = ", ".join(str(f) for f in fashion_folders(root))
    raise DataError(
        f"fashion_mnist: {stems[0]}[.gz] and {stems[1]}[.gz] not found in {searched}; install "
        f"them with `apt-get install dataset-fashion-mnist` (into {FASHION_DEBIAN}) or put "
        "them under data.root (flat, or in torchvision's FashionMNIST/raw/ layout)"
    )


def _idx_pair(images_path: Path, labels_path: Path) -> TensorSplit:
    """An idx3 image file and its idx1 label file -> uint8 [N, 1, H, W] and int64 labels."""
    images, labels = _read_idx(images_path, 3), _read_idx(labels_path, 1)
    if len(images) != len(labels):
        raise DataError(
            f"{images_path}: {len(images)} images but {labels_path.name} has {len(labels)} labels"
        )
    _require_samples(len(images), images_path)
    _check_labels(labels, labels_path, num_classes("mnist"))  # fashion_mnist too
    x = torch.from_numpy(images.copy()).unsqueeze(1)
    return TensorSplit(x, torch.from_numpy(labels.astype(np.int64)))


def _download(cfg: DataConfig) -> None:
    """Opt-in download through torchvision (verifies checksums); needs internet."""
    from absa import tv

    ds = tv.load("torchvision.datasets")
    root = str(cfg.root)
    if cfg.name == "cifar10":
        ds.CIFAR10(root, train=True, download=True), ds.CIFAR10(root, train=False, download=True)
    elif cfg.name == "cifar100":
        ds.CIFAR100(root, train=True, download=True), ds.CIFAR100(root, train=False, download=True)
    elif cfg.name == "svhn":
        ds.SVHN(root, split="train", download=True), ds.SVHN(root, split="test", download=True)
    elif cfg.name == "mnist":
        ds.MNIST(root, train=True, download=True), ds.MNIST(root, train=False, download=True)
    elif cfg.name == "fashion_mnist":
        ds.FashionMNIST(root, train=True, download=True)
        ds.FashionMNIST(root, train=False, download=True)
    else:
        raise DataError(f"data.download: not available for {cfg.name}")


# --- embedded sets ------------------------------------------------------------------------


def digits_splits(test_fraction: float, seed: int) -> tuple[TensorSplit, TensorSplit]:
    """scikit-learn's 8x8 digits (values 0..16 -> [0,1]), stratified seeded split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = torch.from_numpy(bunch.images.astype(np.float32) / 16.0).unsqueeze(1)
    y = torch.from_numpy(bunch.target.astype(np.int64))
    tr, te = train_test_split(
        np.arange(len(y)), test_size=test_fraction, random_state=seed, stratify=bunch.target
    )
    tr, te = torch.from_numpy(np.sort(tr)), torch.from_numpy(np.sort(te))
    return TensorSplit(x[tr], y[tr]), TensorSplit(x[te], y[te])


_SYN_CHUNK = 1024


def _class_patterns(seed: int, classes: int = 10, size: int = 32) -> torch.Tensor:
    """One smooth colored pattern per class: a few oriented sinusoids and blobs."""
    g = torch.Generator().manual_seed(10_000 + seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    out = torch.zeros(classes, 3, size, size)
    for c in range(classes):
        img = torch.zeros(size, size)
        for _ in range(3):
            theta, freq, phase = torch.rand(3, generator=g) * torch.tensor([3.1416, 4.0, 6.28])
            img += torch.sin(
                (xx * torch.cos(theta) + yy * torch.sin(theta)) * (freq + 1) * 3.1416 + phase
            )
        cx, cy = torch.rand(2, generator=g) * 1.2 - 0.6
        img += 2.0 * torch.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 0.1)
        color = torch.rand(3, generator=g) * 0.8 + 0.2
        out[c] = color[:, None, None] * img / img.abs().max()
    return out


def synthetic_split(n: int, seed: int, offset: int) -> TensorSplit:
    """``n`` samples; chunk k uses its own generator so sample i never depends on ``n``."""
    patterns = _class_patterns(seed)
    classes, _, size, _ = patterns.shape
    xs, ys = [], []
    for start in range(0, n, _SYN_CHUNK):
        m = min(_SYN_CHUNK, n - start)
        g = torch.Generator().manual_seed(seed * 1_000_003 + offset + start // _SYN_CHUNK)
        y = torch.randint(classes, (_SYN_CHUNK,), generator=g)[:m]
        shift = torch.randint(-4, 5, (_SYN_CHUNK, 2), generator=g)[:m]
        contrast = (torch.rand(_SYN_CHUNK, generator=g) * 0.8 + 0.6)[:m]
        brightness = (torch.rand(_SYN_CHUNK, 3, generator=g) * 0.3 - 0.15)[:m]
        noise = torch.randn(_SYN_CHUNK, 3, size, size, generator=g)[:m] * 0.25
        blob_pos = torch.randint(0, size - 8, (_SYN_CHUNK, 2), generator=g)[:m]
        blob_col = torch.rand(_SYN_CHUNK, 3, generator=g)[:m]
        x = patterns[y]
        for i in range(m):  # per-sample shift of the pattern
            x[i] = torch.roll(x[i], shifts=(int(shift[i, 0]), int(shift[i, 1])), dims=(1, 2))
            r, c = int(blob_pos[i, 0]), int(blob_pos[i, 1])
            x[i, :, r : r + 8, c : c + 8] += blob_col[i][:, None, None] - 0.5
        x = 0.5 + 0.35 * contrast[:, None, None, None] * x + brightness[:, :, None, None] + noise
        xs.append((x.clamp(0, 1) * 255).round().to(torch.uint8))
        ys.append(y)
    return TensorSplit(torch.cat(xs), torch.cat(ys))


# --- building -----------------------------------------------------------------------------

_CIFAR_MEAN, _CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
_CONSTANTS = {
    "cifar10": (_CIFAR_MEAN, _CIFAR_STD),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "svhn": ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
    "mnist": ((0.1307,), (0.3081,)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "imagefolder": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


def _channel_stats(split: TensorSplit) -> tuple[tuple[float, ...], tuple[float, ...]]:
    x = split.get(torch.arange(min(len(split), 10_000)))[0]
    return tuple(x.mean(dim=(0, 2, 3)).tolist()), tuple(
        x.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist()
    )


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


def _read_pair(cfg: DataConfig) -> tuple[TensorSplit, TensorSplit]:
    root = Path(cfg.root)
    if cfg.name == "digits":
        return digits_splits(cfg.test_fraction, cfg.split_seed)
    if cfg.name == "synthetic":
        n_train, n_test = cfg.train_size or 10_000, cfg.test_size or 2_000
        return (
            synthetic_split(n_train, cfg.split_seed, offset=0),
            synthetic_split(n_test, cfg.split_seed, offset=500_000),
        )
    if cfg.download:
        _download(cfg)
    if cfg.name in ("cifar10", "cifar100"):
        fine = cfg.name == "cifar100"
        return read_cifar(root, fine, True), read_cifar(root, fine, False)
    if cfg.name == "svhn":
        return read_svhn(root, True), read_svhn(root, False)
    if cfg.name == "mnist":
        return read_mnist(root, True), read_mnist(root, False)
    if cfg.name == "fashion_mnist":
        return read_fashion_mnist(root, True), read_fashion_mnist(root, False)
    raise DataError(f"data.name: unknown dataset {cfg.name}")


def check_images(paths: Sequence[str], mode: str, threads: int = 1) -> None:
    """DataError naming the first unreadable file of ``paths``: ``header`` opens each one
    (not an image, unknown format, decompression bomb), ``full`` also decodes it (truncated
    or corrupt data); ``none`` checks nothing. Threads: PIL releases the GIL while decoding."""
    if mode == "none":
        return
    from concurrent.futures import ThreadPoolExecutor

    decode = mode == "full"
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        for _ in pool.map(lambda p: _load_image(p, decode), paths, chunksize=64):
            pass


def _folder_split(
    folder: Path, size: int, num_workers: int, check: str = "header", **kw: Any
) -> FolderSplit:
    """An ImageFolder split, its files checked (``check_images``); DataError naming
    ``folder`` when it has no class folder, a class folder without images, or no image at
    all. ``kw``: FolderSplit's transform options."""
    try:
        split = FolderSplit(folder, size, num_workers, **kw)
    except (FileNotFoundError, RuntimeError) as err:
        raise DataError(f"{folder}: no images to load ({_first_line(err)})") from None
    _require_samples(len(split), folder)
    check_images([p for p, _ in split.folder.samples], check, num_workers)
    return split


def _folder_data(cfg: DataConfig) -> Data:
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
    train = _folder_split(
        train_dir, size, cfg.num_workers, check, resize_size=resize, augment=cfg.folder_augment
    )
    test = _folder_split(test_dir, size, cfg.num_workers, check, resize_size=resize)
    if train.folder.classes != test.folder.classes:
        raise DataError(f"imagefolder: class folders differ between {train_dir} and {test_dir}")
    mean, std = _CONSTANTS["imagefolder"]
    info = DatasetInfo("imagefolder", len(train.folder.classes), 3, size, mean, std, True)
    return Data(train, test, info)


def load_data(cfg: DataConfig) -> Data:
    """Read both splits of ``cfg.name`` and describe them; raise DataError with a fix hint."""
    if cfg.name == "imagefolder":
        return _folder_data(cfg)
    train, test = _read_pair(cfg)
    classes = num_classes(cfg.name)
    # the readers already named a bad file; this covers every tensor set (digits, synthetic)
    for split, kind in ((train, "train"), (test, "test")):
        _require_samples(len(split), f"{cfg.name}: the {kind} split")
        _check_labels(split.y.numpy(), f"{cfg.name}: the {kind} split", classes)
    train = _resize(_subset(train, cfg.train_size, cfg.split_seed), cfg.image_size)
    test = _resize(_subset(test, cfg.test_size, cfg.split_seed + 1), cfg.image_size)
    if cfg.name in _CONSTANTS:
        mean, std = _CONSTANTS[cfg.name]
    else:
        mean, std = _channel_stats(train)
    channels, size = train.x.shape[1], train.x.shape[-1]
    flip = cfg.name not in ("digits", "mnist", "svhn")
    return Data(train, test, DatasetInfo(cfg.name, classes, channels, size, mean, std, flip))


# --- epoch order and augmentation -----------------------------------------------------------


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
    return batch[rank::world]


def micro_batches(positions: torch.Tensor, max_micro: int) -> list[torch.Tensor]:
    return list(positions.split(max_micro)) if len(positions) else []
