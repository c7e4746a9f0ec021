"""The two embedded sets: scikit-learn's 8x8 digits and a seeded synthetic CIFAR-shaped set."""

from __future__ import annotations

import numpy as np
import torch

from absa.run.data.splits import TensorSplit


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
