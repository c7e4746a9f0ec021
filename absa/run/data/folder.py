"""``imagefolder`` splits: files decoded lazily by persistent DataLoader workers, with
per-sample seeded augmentation (``FolderSplit``); ``stream_batches`` for either kind of split."""

from __future__ import annotations

import math
import os
import random
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from absa import tv
from absa.run.data.splits import DataError, DatasetInfo, TensorSplit, first_line, require_samples

if TYPE_CHECKING:
    from PIL import Image


def load_image(path: str, decode: bool = True) -> Image.Image | None:
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
            f"({first_line(err).rstrip('.')}; "
            "PIL.Image.MAX_IMAGE_PIXELS sets the limit)"
        ) from None
    except UnidentifiedImageError:
        raise DataError(f"{path}: not an image file PIL can decode") from None
    except Exception as err:  # noqa: BLE001 - truncated or corrupt data: OSError, SyntaxError...
        raise DataError(f"{path}: unreadable image ({first_line(err)})") from None


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
        img = load_image(self.path(i))
        if seed is None:
            x = self.eval_tf(img)
        else:
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
        self.folder = ImageFolder(str(root), transform=tf, loader=load_image)
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
                        load_image(self._items.path(i))
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


def check_images(paths: Sequence[str], mode: str, threads: int = 1) -> None:
    """DataError naming the first unreadable file of ``paths``: ``header`` opens each one
    (not an image, unknown format, decompression bomb), ``full`` also decodes it (truncated
    or corrupt data); ``none`` checks nothing. Threads: PIL releases the GIL while decoding."""
    if mode == "none":
        return
    from concurrent.futures import ThreadPoolExecutor

    decode = mode == "full"
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        for _ in pool.map(lambda p: load_image(p, decode), paths, chunksize=64):
            pass


def folder_split(
    folder: Path, size: int, num_workers: int, check: str = "header", **kw: Any
) -> FolderSplit:
    """An ImageFolder split, its files checked (``check_images``); DataError naming
    ``folder`` when it has no class folder, a class folder without images, or no image at
    all. ``kw``: FolderSplit's transform options."""
    try:
        split = FolderSplit(folder, size, num_workers, **kw)
    except (FileNotFoundError, RuntimeError) as err:
        raise DataError(f"{folder}: no images to load ({first_line(err)})") from None
    require_samples(len(split), folder)
    check_images([p for p, _ in split.folder.samples], check, num_workers)
    return split
