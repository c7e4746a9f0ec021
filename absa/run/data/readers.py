"""Readers of the standard on-disk formats: CIFAR pickles, SVHN .mat, MNIST-style idx files."""

from __future__ import annotations

import gzip
import math
import pickle
import warnings
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from absa.run.data.splits import DataError, TensorSplit, check_labels, first_line, require_samples


def _missing(name: str, where: Path, what: str) -> DataError:
    return DataError(
        f"{name}: {what} not found under {where}; put the standard files there "
        f"(or set data.download: true where the dataset supports it)"
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
                raise DataError(f"{path}: not a CIFAR pickle batch ({first_line(err)})") from None
        if not isinstance(batch, dict) or b"data" not in batch or key not in batch:
            raise DataError(f"{path}: not a CIFAR pickle batch (no b'data' and {key!r} entries)")
        try:
            x = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
            y = np.asarray(batch[key], dtype=np.int64).reshape(-1)
        except (TypeError, ValueError, OverflowError) as err:
            raise DataError(f"{path}: malformed CIFAR batch ({first_line(err)})") from None
        if len(x) != len(y):
            raise DataError(f"{path}: malformed CIFAR batch ({len(x)} images, {len(y)} labels)")
        require_samples(len(x), path)
        check_labels(y, path, 100 if fine else 10)
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
        raise DataError(f"{path}: not a readable .mat file ({first_line(err)})") from None
    X, y = mat.get("X"), mat.get("y")
    if not isinstance(X, np.ndarray) or X.ndim != 4 or X.shape[2] != 3:
        raise DataError(f"{path}: expected an SVHN array X of shape 32x32x3xN")
    if X.dtype != np.uint8:
        raise DataError(f"{path}: expected uint8 pixels in X, found {X.dtype}")
    if not isinstance(y, np.ndarray) or y.size != X.shape[3]:
        raise DataError(f"{path}: expected an SVHN label array y with {X.shape[3]} entries")
    if y.dtype.kind not in "iuf" or (y.dtype.kind == "f" and not np.all(np.mod(y, 1) == 0)):
        raise DataError(f"{path}: expected whole-number labels in y, found {y.dtype}")
    require_samples(X.shape[3], path)
    labels = y.reshape(-1).astype(np.int64)
    check_labels(labels, path, 10, low=1)
    x = torch.from_numpy(np.ascontiguousarray(X.transpose(3, 2, 0, 1)))
    return TensorSplit(x, torch.from_numpy(labels % 10))


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    """An unsigned-byte idx file of ``ndim`` dimensions; DataError if truncated or malformed."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError, zlib.error) as err:  # bad or truncated gzip
        raise DataError(f"{path}: unreadable ({first_line(err)})") from None
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
    require_samples(len(images), images_path)
    check_labels(labels, labels_path, 10)  # fashion_mnist too
    x = torch.from_numpy(images.copy()).unsqueeze(1)
    return TensorSplit(x, torch.from_numpy(labels.astype(np.int64)))
