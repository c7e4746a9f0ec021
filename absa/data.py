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
  the ImageNet / TinyImageNet layout; decoded lazily and resized to ``image_size`` (default 64).

Batch-level augmentation (random crop with zero padding, horizontal flip) runs on tensors;
its random parameters are drawn per epoch for every position of the epoch's permutation, so
they do not depend on batch size, micro-batching or the number of processes.
"""

from __future__ import annotations

import gzip
import math
import pickle
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from absa.config import DataConfig

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


def _load_image(path: str) -> Image.Image:
    """ImageFolder's PIL loader (RGB), with a one-line DataError naming an unreadable file
    or one past PIL's decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``, where PIL
    would otherwise only warn, up to twice that)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                return img.convert("RGB")
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


class FolderSplit:
    """An ImageFolder split decoded lazily (PIL), resized and center-cropped to ``size``."""

    def __init__(self, root: Path, size: int, num_workers: int = 0) -> None:
        from absa import tv

        ImageFolder = tv.load("torchvision.datasets").ImageFolder
        v2 = tv.load("torchvision.transforms.v2")

        tf = v2.Compose(
            [
                v2.PILToTensor(),
                v2.Resize(size, antialias=True),
                v2.CenterCrop(size),
                v2.ToDtype(torch.uint8),
            ]
        )
        self.folder = ImageFolder(str(root), transform=tf, loader=_load_image)
        self.num_workers = num_workers
        self.y = torch.tensor(self.folder.targets, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.y)

    def get(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loader = torch.utils.data.DataLoader(
            torch.utils.data.Subset(self.folder, idx.tolist()),
            batch_size=len(idx),
            num_workers=self.num_workers,
        )
        try:
            x, y = next(iter(loader))
        except Exception:
            if self.num_workers == 0:
                raise
            for i in idx.tolist():  # a worker's error spans lines: find the file again here
                _load_image(self.folder.samples[i][0])
            raise
        return x.float().div_(255.0), y.long()

    @property
    def targets(self) -> torch.Tensor:
        return self.y


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


def _folder_split(folder: Path, size: int, num_workers: int) -> FolderSplit:
    """An ImageFolder split; DataError naming ``folder`` when it has no class folder, a class
    folder without images, or no image at all."""
    try:
        split = FolderSplit(folder, size, num_workers)
    except (FileNotFoundError, RuntimeError) as err:
        raise DataError(f"{folder}: no images to load ({_first_line(err)})") from None
    _require_samples(len(split), folder)
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
    train = _folder_split(train_dir, size, cfg.num_workers)
    test = _folder_split(test_dir, size, cfg.num_workers)
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
