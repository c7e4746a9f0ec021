"""Images/s of absa's imagefolder loader against plain torchvision, measured in one run.

A folder of generated JPEGs (ImageNet layout: train/<class>/*.jpg, --images files of about
--side x 3/4 --side pixels) is read for whole epochs (a seeded permutation, in micro-batches
of --micro) by:

1. absa: ``FolderSplit.stream`` (one persistent DataLoader per split, workers started once
   for the run, per-sample seeded augmentation);
2. plain: ``torchvision.datasets.ImageFolder`` with the same transform + a ``DataLoader``
   (batch_size --micro, the same permutation as its sampler, the same workers, prefetch and
   defaults otherwise: workers restart every epoch);
3. old absa (reference): a new DataLoader per micro-batch, as ``FolderSplit.get`` was used
   before (worker processes started for every micro-batch).

Both transforms: evaluation (resize --resize, center-crop --size) and training
(RandomResizedCrop(--size) + horizontal flip). Every variant ends with the same float
[0, 1] batch (``x.float() / 255``, in the loop for plain). Epochs of the variants are
interleaved (--epochs rounds), the median epoch counts; absa's first epoch, which starts
its workers, is reported apart. Target: absa >= 0.9x plain (OK/MISS).

    python scripts/bench_data.py [--images 1024] [--side 256] [--workers 0,2] [--micro 64]
        [--size 64] [--resize 72] [--epochs 3] [--root DIR (reuse/keep the folder)]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from absa import tv
from absa.run.config import DataConfig
from absa.run.data import FolderSplit, epoch_permutation, load_data
from absa.run.data import load_image as _load_image

TARGET = 0.9


def make_folder(root: Path, n: int, side: int, classes: int = 10) -> None:
    """n JPEGs (quality 90) of side x 3/4 side, smooth color fields plus noise."""
    from PIL import Image

    rng = np.random.default_rng(0)
    h, w = side * 3 // 4, side
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    for split, count in (("train", n), ("val", classes)):
        for i in range(count):
            c = i % classes
            folder = root / split / f"n{c:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            a, b, ph = rng.uniform(0.01, 0.05, 3)
            base = np.stack(
                [np.sin(a * xx + ph), np.cos(b * yy + 2 * ph), np.sin(a * xx + b * yy)], -1
            )
            img = 127 + 90 * base + rng.normal(0, 12, (h, w, 3))
            Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(
                folder / f"{i:06d}.jpg", quality=90
            )


def transforms(train: bool, size: int, resize: int):
    v2 = tv.load("torchvision.transforms.v2")
    if train:
        ops = [v2.PILToTensor(), v2.RandomResizedCrop(size, antialias=True)]
        ops.append(v2.RandomHorizontalFlip())
    else:
        ops = [v2.PILToTensor(), v2.Resize(resize, antialias=True), v2.CenterCrop(size)]
    return v2.Compose([*ops, v2.ToDtype(torch.uint8)])


class Plain:
    """torchvision ImageFolder + DataLoader over a fixed order, workers restart per epoch."""

    def __init__(self, root: Path, train: bool, args, workers: int) -> None:
        ds = tv.load("torchvision.datasets").ImageFolder(
            str(root), transform=transforms(train, args.size, args.resize), loader=_load_image
        )
        self.order: list[int] = []
        kw = {"prefetch_factor": 2} if workers > 0 else {}
        self.loader = torch.utils.data.DataLoader(
            ds, batch_size=args.micro, sampler=self, num_workers=workers, **kw
        )

    def __iter__(self):
        return iter(self.order)

    def __len__(self) -> int:
        return len(self.order)

    def epoch(self, order: torch.Tensor, epoch: int) -> int:
        self.order = order.tolist()
        n = 0
        for x, y in self.loader:
            x = x.float().div_(255.0)
            n += len(y)
        return n


class Absa:
    def __init__(self, split: FolderSplit, train: bool, micro: int) -> None:
        self.split, self.train, self.micro = split, train, micro

    def epoch(self, order: torch.Tensor, epoch: int) -> int:
        n = 0
        for _x, y in self.split.stream(order, self.micro, self.train, epoch, seed=0):
            n += len(y)
        return n


class OldGet:
    """The old FolderSplit.get per micro-batch: a new DataLoader (and workers) each time."""

    def __init__(self, split: FolderSplit, workers: int, micro: int) -> None:
        self.folder, self.workers, self.micro = split.folder, workers, micro

    def epoch(self, order: torch.Tensor, epoch: int) -> int:
        n = 0
        for idx in order.split(self.micro):
            loader = torch.utils.data.DataLoader(
                torch.utils.data.Subset(self.folder, idx.tolist()),
                batch_size=len(idx),
                num_workers=self.workers,
            )
            x, y = next(iter(loader))
            x = x.float().div_(255.0)
            n += len(y)
        return n


def bench(root: Path, train: bool, workers: int, args) -> float:
    cfg = DataConfig(
        name="imagefolder",
        root=root,
        image_size=args.size,
        resize_size=args.resize,
        num_workers=workers,
        folder_augment=train,
    )
    split = load_data(cfg).train
    n = len(split)
    variants = {
        "absa stream": Absa(split, train, args.micro),
        "plain": Plain(root / "train", train, args, workers),
    }
    if not train:
        variants["old get per micro-batch (ref.)"] = OldGet(split, workers, args.micro)
    times: dict[str, list[float]] = {k: [] for k in variants}
    first = 0.0
    for e in range(args.epochs + 1):  # epoch 0: warm-up (absa starts its workers)
        order = epoch_permutation(n, 0, e)
        keys = list(variants)
        for k in keys[e % len(keys) :] + keys[: e % len(keys)]:
            t0 = time.perf_counter()
            got = variants[k].epoch(order, e)
            dt = time.perf_counter() - t0
            assert got == n, (k, got, n)
            if e == 0:
                first = dt if k == "absa stream" else first
            else:
                times[k].append(dt)
    rate = {k: n / statistics.median(t) for k, t in times.items()}
    kind = "train (RandomResizedCrop + flip)" if train else f"eval (resize {args.resize}, crop)"
    print(f"\n{kind}, {workers} workers, {n} images, micro-batches of {args.micro}:")
    for k, r in rate.items():
        print(
            f"    {k:32s} {r:8.0f} images/s  (epochs {', '.join(f'{t:.2f}' for t in times[k])} s)"
        )
    print(f"    absa first epoch (starts the workers): {n / first:8.0f} images/s")
    ratio = rate["absa stream"] / rate["plain"]
    print(
        f"    absa / plain = {ratio:.2f}x (target >= {TARGET}x)  {'OK' if ratio >= TARGET else 'MISS'}"
    )
    if "old get per micro-batch (ref.)" in rate:
        print(
            f"    absa / old get = {rate['absa stream'] / rate['old get per micro-batch (ref.)']:.2f}x"
        )
    split.close()
    return ratio


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--images", type=int, default=1024, help="training JPEGs to generate")
    ap.add_argument("--side", type=int, default=256, help="JPEG width (height 3/4 of it)")
    ap.add_argument("--workers", default="0,2", help="comma-separated DataLoader worker counts")
    ap.add_argument("--micro", type=int, default=64, help="micro-batch (DataLoader batch)")
    ap.add_argument("--size", type=int, default=64, help="crop side (data.image_size)")
    ap.add_argument("--resize", type=int, default=72, help="eval resize (data.resize_size)")
    ap.add_argument("--epochs", type=int, default=3, help="timed epochs per variant")
    ap.add_argument(
        "--root", type=Path, default=None, help="folder to (re)use instead of a temp one"
    )
    args = ap.parse_args()
    torch.set_num_threads(1)
    load0 = os.getloadavg()[0]
    print(
        f"torch {torch.__version__}, torchvision {tv.torchvision.__version__}, 1 thread, "
        f"{os.cpu_count()} CPUs, load {load0:.1f}, {platform.machine()}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        root = args.root or Path(tmp)
        if not (root / "train").is_dir():
            t0 = time.perf_counter()
            make_folder(root, args.images, args.side)
            print(
                f"generated {args.images} JPEGs of {args.side}x{args.side * 3 // 4} in {time.perf_counter() - t0:.1f} s"
            )
        ratios = []
        for w in (int(s) for s in args.workers.split(",") if s.strip()):
            for train in (False, True):
                ratios.append(((w, train), bench(root, train, w, args)))
    print("\n=== summary: absa stream / plain ImageFolder + DataLoader (images/s) ===")
    for (w, train), r in ratios:
        kind = "train" if train else "eval"
        print(
            f"  {kind:5s} {w} workers: {r:.2f}x  {'OK' if r >= TARGET else 'MISS'} (target >= {TARGET}x)"
        )
    load1 = os.getloadavg()[0]
    print(f"1-min load average {load0:.1f} at start, {load1:.1f} at end")


if __name__ == "__main__":
    main()
