"""Each real loader on tiny files written here in the real on-disk format."""

import gzip
import pickle
import random
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from absa.engine.probes import probe_indices
from absa.run import data as D
from absa.run.config import DataConfig
from absa.run.data import readers as R


def _cifar_batch(path, n, seed, label_key):
    rng = np.random.default_rng(seed)
    d = {
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        label_key: rng.integers(0, 10, n).tolist(),
    }
    with open(path, "wb") as fh:
        pickle.dump(d, fh)
    return d


def test_cifar10_pickle_batches(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    batches = [_cifar_batch(folder / f"data_batch_{i}", 4, i, b"labels") for i in range(1, 6)]
    test = _cifar_batch(folder / "test_batch", 3, 9, b"labels")
    d = D.load_data(DataConfig(name="cifar10", root=tmp_path))
    assert len(d.train) == 20 and len(d.test) == 3
    assert d.info.num_classes == 10 and d.info.channels == 3 and d.info.image_size == 32
    x, y = d.train.get(torch.arange(20))
    expect = np.concatenate([b[b"data"] for b in batches]).reshape(-1, 3, 32, 32) / 255.0
    assert torch.allclose(x, torch.from_numpy(expect).float())
    assert y.tolist() == sum((b[b"labels"] for b in batches), [])
    assert d.test.get(torch.arange(3))[1].tolist() == test[b"labels"]


def test_cifar100_fine_labels(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    tr = _cifar_batch(folder / "train", 6, 1, b"fine_labels")
    _cifar_batch(folder / "test", 2, 2, b"fine_labels")
    d = D.load_data(DataConfig(name="cifar100", root=tmp_path))
    assert d.info.num_classes == 100 and len(d.train) == 6
    assert d.train.get(torch.arange(6))[1].tolist() == tr[b"fine_labels"]


def test_svhn_mat(tmp_path):
    from scipy.io import savemat

    rng = np.random.default_rng(0)
    for split, n in (("train", 5), ("test", 2)):
        X = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
        y = np.array([[10], [1], [2], [3], [4]][:n], dtype=np.uint8)
        savemat(tmp_path / f"{split}_32x32.mat", {"X": X, "y": y})
        if split == "train":
            X_train = X
    d = D.load_data(DataConfig(name="svhn", root=tmp_path))
    x, y = d.train.get(torch.arange(5))
    assert y.tolist() == [0, 1, 2, 3, 4]  # label 10 is digit 0
    assert torch.allclose(x[2, 1], torch.from_numpy(X_train[:, :, 1, 2] / 255.0).float())


def _write_idx(path, arr, gz):
    header = struct.pack(">BBBB", 0, 0, 8, arr.ndim) + struct.pack(f">{arr.ndim}i", *arr.shape)
    raw = header + arr.astype(np.uint8).tobytes()
    # one call that closes the file: an unclosed GzipFile may never be flushed (Python 3.12)
    path.write_bytes(gzip.compress(raw) if gz else raw)


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx(tmp_path, gz):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    ext = ".gz" if gz else ""
    imgs = rng.integers(0, 256, (7, 28, 28))
    labels = rng.integers(0, 10, 7)
    _write_idx(raw / f"train-images-idx3-ubyte{ext}", imgs, gz)
    _write_idx(raw / f"train-labels-idx1-ubyte{ext}", labels, gz)
    _write_idx(raw / f"t10k-images-idx3-ubyte{ext}", imgs[:3], gz)
    _write_idx(raw / f"t10k-labels-idx1-ubyte{ext}", labels[:3], gz)
    d = D.load_data(DataConfig(name="mnist", root=tmp_path))
    x, y = d.train.get(torch.arange(7))
    assert x.shape == (7, 1, 28, 28) and y.tolist() == labels.tolist()
    assert torch.allclose(x[3, 0], torch.from_numpy(imgs[3] / 255.0).float())
    assert d.info.channels == 1 and not d.info.flip


def test_imagefolder(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 3), ("val", 1)):
        for cls in ("n01", "n02"):
            folder = tmp_path / split / cls
            folder.mkdir(parents=True)
            for i in range(n):
                arr = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
                Image.fromarray(arr).save(folder / f"{i}.png")
    d = D.load_data(DataConfig(name="imagefolder", root=tmp_path, image_size=16))
    assert len(d.train) == 6 and len(d.test) == 2 and d.info.num_classes == 2
    x, y = d.train.get(torch.tensor([0, 5]))
    assert x.shape == (2, 3, 16, 16) and x.min() >= 0 and x.max() <= 1
    assert y.tolist() == [0, 1]


@pytest.mark.parametrize(
    "name, expect",
    [
        ("cifar10", "cifar-10-batches-py"),
        ("cifar100", "cifar-100-python"),
        ("svhn", "train_32x32.mat"),
        ("mnist", "train-images-idx3-ubyte"),
        ("imagefolder", "train/<class>"),
    ],
)
def test_missing_files_say_what_to_put_where(tmp_path, name, expect):
    with pytest.raises(D.DataError) as e:
        D.load_data(DataConfig(name=name, root=tmp_path / "nothing"))
    assert expect in str(e.value) and "\n" not in str(e.value)


def test_corrupt_cifar_file(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for f in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / f).write_bytes(b"not a pickle")
    with pytest.raises(D.DataError, match="not a CIFAR pickle batch"):
        D.load_data(DataConfig(name="cifar10", root=tmp_path))


def _one_line_naming(err, path):
    msg = str(err.value)
    assert str(path) in msg and "\n" not in msg
    return msg


@pytest.mark.parametrize(
    "content, expect",
    [
        ([1, 2, 3], "not a CIFAR pickle batch"),
        ({b"data": np.zeros((2, 3072), np.uint8)}, "not a CIFAR pickle batch"),
        ({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, "malformed CIFAR batch"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, "2 images, 1 labels"),
    ],
)
def test_cifar_pickle_with_wrong_content(tmp_path, content, expect):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for f in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / f).write_bytes(pickle.dumps(content))
    with pytest.raises(D.DataError) as e:
        D.load_data(DataConfig(name="cifar10", root=tmp_path))
    assert expect in _one_line_naming(e, folder / "data_batch_1")


def test_truncated_cifar_pickle(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for f in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        _cifar_batch(folder / f, 2, 0, b"labels")
    whole = (folder / "data_batch_3").read_bytes()
    (folder / "data_batch_3").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(D.DataError) as e:
        D.load_data(DataConfig(name="cifar10", root=tmp_path))
    assert "not a CIFAR pickle batch" in _one_line_naming(e, folder / "data_batch_3")


def test_garbage_svhn_mat(tmp_path):
    (tmp_path / "train_32x32.mat").write_bytes(b"this is not a MATLAB file at all" * 8)
    with pytest.raises(D.DataError) as e:
        D.load_data(DataConfig(name="svhn", root=tmp_path))
    assert "not a readable .mat file" in _one_line_naming(e, tmp_path / "train_32x32.mat")


def test_svhn_mat_without_images(tmp_path):
    from scipy.io import savemat

    savemat(tmp_path / "train_32x32.mat", {"y": np.ones((3, 1), np.uint8)})
    with pytest.raises(D.DataError) as e:
        D.load_data(DataConfig(name="svhn", root=tmp_path))
    assert "32x32x3xN" in _one_line_naming(e, tmp_path / "train_32x32.mat")


def _mnist_files(tmp_path, gz=False):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    ext = ".gz" if gz else ""
    for prefix, n in (("train", 5), ("t10k", 2)):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte{ext}", np.zeros((n, 28, 28)), gz)
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte{ext}", np.arange(n), gz)
    return raw


@pytest.mark.parametrize(
    "damage, expect",
    [
        (lambda b: b[: len(b) - 100], "shape 5x28x28 needs 3920 data bytes, found 3820"),
        (lambda b: b + b"extra", "shape 5x28x28 needs 3920 data bytes, found 3925"),
        (lambda b: b[:10], "truncated idx file (10 bytes, header needs 16)"),
        (lambda b: b[:3] + b"\x01" + b[4:], "expected 3-dimensional idx data, found 1"),
        (lambda b: b"\x00\x00\x0d" + b[3:], "not an unsigned-byte idx file"),
    ],
)
def test_malformed_mnist_idx(tmp_path, damage, expect):
    path = _mnist_files(tmp_path) / "train-images-idx3-ubyte"
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(D.DataError) as e:
        D.load_data(DataConfig(name="mnist", root=tmp_path))
    assert expect in _one_line_naming(e, path)


def test_truncated_mnist_gzip(tmp_path):
    path = _mnist_files(tmp_path, gz=True) / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(D.DataError) as e:
        D.load_data(DataConfig(name="mnist", root=tmp_path))
    assert "unreadable" in _one_line_naming(e, path)


def test_mnist_image_and_label_counts_differ(tmp_path):
    raw = _mnist_files(tmp_path)
    _write_idx(raw / "train-labels-idx1-ubyte", np.arange(4), False)
    with pytest.raises(D.DataError) as e:
        D.load_data(DataConfig(name="mnist", root=tmp_path))
    msg = _one_line_naming(e, raw / "train-images-idx3-ubyte")
    assert "5 images but train-labels-idx1-ubyte has 4 labels" in msg


def _damaged_png_tree(root, damage):
    """train/val with classes n01, n02 of one 20x24 PNG each; ``damage`` rewrites the bytes
    of train/n02/0.png, which is returned."""
    from PIL import Image

    for split in ("train", "val"):
        for cls in ("n01", "n02"):
            (root / split / cls).mkdir(parents=True)
            arr = np.random.default_rng(0).integers(0, 256, (20, 24, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / split / cls / "0.png")
    bad = root / "train" / "n02" / "0.png"
    bad.write_bytes(damage(bad.read_bytes()))
    return bad


@pytest.mark.parametrize(
    "damage, expect, workers",
    [
        (lambda b: b"not a png at all", "not an image file PIL can decode", 0),
        (lambda b: b[: len(b) // 2], "unreadable image (image file is truncated", 0),
        (lambda b: b"not a png at all", "not an image file PIL can decode", 1),  # in a worker
    ],
)
def test_unreadable_image_in_folder(tmp_path, damage, expect, workers):
    bad = _damaged_png_tree(tmp_path, damage)
    d = D.load_data(
        DataConfig(
            name="imagefolder",
            root=tmp_path,
            image_size=8,
            num_workers=workers,
            check_images="none",
        )
    )
    assert d.train.get(torch.tensor([0]))[0].shape == (1, 3, 8, 8)  # lazy: good files still load
    with pytest.raises(D.DataError) as e:
        d.train.get(torch.tensor([0, 1]))
    assert _one_line_naming(e, bad).startswith(f"{bad}: {expect}")


def test_digits_embedded_fixed_split():
    a = D.load_data(DataConfig(name="digits"))
    b = D.load_data(DataConfig(name="digits"))
    assert len(a.train) + len(a.test) == 1797
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.test.y, b.test.y)
    assert a.train.x.shape[1:] == (1, 8, 8) and a.train.x.min() >= 0 and a.train.x.max() <= 1
    # stratified: every class present in the test split
    assert set(a.test.y.tolist()) == set(range(10))
    up = D.load_data(DataConfig(name="digits", image_size=16))
    assert up.train.x.shape[1:] == (1, 16, 16) and up.info.image_size == 16


def test_synthetic_seeded_any_size_and_learnable():
    small = D.load_data(DataConfig(name="synthetic", train_size=1500, test_size=300))
    big = D.load_data(DataConfig(name="synthetic", train_size=2500, test_size=300))
    assert small.train.x.shape == (1500, 3, 32, 32)
    assert torch.equal(small.train.x, big.train.x[:1500])  # sample i independent of the size
    other = D.load_data(DataConfig(name="synthetic", train_size=1500, test_size=300, split_seed=1))
    assert not torch.equal(small.train.x, other.train.x)
    # learnable structure: a nearest-class-mean classifier beats chance by far
    x, y = small.train.get(torch.arange(1500))
    means = torch.stack([x[y == c].mean(0) for c in range(10)])
    xt, yt = small.test.get(torch.arange(300))
    pred = torch.cdist(xt.flatten(1), means.flatten(1)).argmin(1)
    assert (pred == yt).float().mean() > 0.5


def test_augment_crop_flip_exact():
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).view(2, 1, 4, 4)
    # offset == pad means the centered (identity) crop
    same = D.AugmentParams(torch.tensor([[1, 1], [1, 1]]), torch.tensor([False, True]), 1)
    out = D.apply_augment(x, same)
    assert torch.equal(out[0], x[0]) and torch.equal(out[1], x[1].flip(-1))
    shifted = D.AugmentParams(torch.tensor([[0, 2], [2, 0]]), torch.tensor([False, False]), 1)
    out = D.apply_augment(x, shifted)
    # offset (0, 2): one zero row on top, image shifted left by one column
    assert torch.equal(out[0, 0, 0], torch.zeros(4))
    assert torch.equal(out[0, 0, 1:, :3], x[0, 0, :3, 1:])
    assert torch.equal(out[1, 0, :3, 1:], x[1, 0, 1:, :3])


@pytest.mark.parametrize("channels", [1, 3])
def test_augmented_batch_has_standard_strides(channels):
    """Channels-last strides on 1-channel images would give conv weight gradients whose
    layout differs from the parameters' (DDP's bucket views warn and copy)."""
    x = torch.rand(4, channels, 8, 8)
    params = D.augment_params(4, 0, 0, "crop_flip", 8)
    out = D.apply_augment(x, params)
    assert out.stride() == torch.empty(out.shape).stride()


def test_augment_params_depend_only_on_seed_and_epoch():
    a = D.augment_params(100, 3, 2, "crop_flip", 32)
    b = D.augment_params(100, 3, 2, "crop_flip", 32)
    c = D.augment_params(100, 3, 3, "crop_flip", 32)
    assert torch.equal(a.offsets, b.offsets) and not torch.equal(a.offsets, c.offsets)
    assert a.offsets.max() <= 8 and a.offsets.min() >= 0
    assert not D.augment_params(100, 3, 2, "crop", 32).flips.any()
    assert D.augment_params(100, 3, 2, "none", 32) is None


def test_batches_cover_permutation_once_and_shard_exactly():
    batches = D.global_batches(10, 4)
    assert [b.tolist() for b in batches] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    shards = [D.local_positions(batches[0], r, 2) for r in range(2)]
    assert sorted(torch.cat(shards).tolist()) == [0, 1, 2, 3]
    assert [m.tolist() for m in D.micro_batches(torch.arange(5), 2)] == [[0, 1], [2, 3], [4]]
    p = D.epoch_permutation(10, 0, 1)
    assert sorted(p.tolist()) == list(range(10))
    assert torch.equal(p, D.epoch_permutation(10, 0, 1))


def _fashion_files(folder, gz, n_train=6, n_test=3, seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    ext = ".gz" if gz else ""
    imgs = rng.integers(0, 256, (n_train + n_test, 28, 28))
    labels = rng.integers(0, 10, n_train + n_test)
    _write_idx(folder / f"train-images-idx3-ubyte{ext}", imgs[:n_train], gz)
    _write_idx(folder / f"train-labels-idx1-ubyte{ext}", labels[:n_train], gz)
    _write_idx(folder / f"t10k-images-idx3-ubyte{ext}", imgs[n_train:], gz)
    _write_idx(folder / f"t10k-labels-idx1-ubyte{ext}", labels[n_train:], gz)
    return imgs, labels


@pytest.mark.parametrize("layout", ["flat", "torchvision"])
@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_layouts(tmp_path, layout, gz):
    folder = tmp_path if layout == "flat" else tmp_path / "FashionMNIST" / "raw"
    imgs, labels = _fashion_files(folder, gz)
    d = D.load_data(DataConfig(name="fashion_mnist", root=tmp_path))
    assert len(d.train) == 6 and len(d.test) == 3
    x, y = d.train.get(torch.arange(6))
    assert x.shape == (6, 1, 28, 28) and y.tolist() == labels[:6].tolist()
    assert torch.equal(x[4, 0], torch.from_numpy(imgs[4] / 255.0).float())
    xt, yt = d.test.get(torch.arange(3))
    assert yt.tolist() == labels[6:].tolist()
    assert torch.equal(xt[1, 0], torch.from_numpy(imgs[7] / 255.0).float())
    # garments are left-right symmetric: flips allowed; grey with its own normalization
    assert d.info.flip and d.info.channels == 1 and d.info.num_classes == 10
    assert d.info.mean == (0.2860,) and d.info.std == (0.3530,)


def test_fashion_mnist_flat_layout_wins_over_torchvision(tmp_path):
    _fashion_files(tmp_path, gz=True, n_train=4)
    _fashion_files(tmp_path / "FashionMNIST" / "raw", gz=True, n_train=5)
    assert len(D.load_data(DataConfig(name="fashion_mnist", root=tmp_path)).train) == 4


def test_fashion_mnist_missing_names_folders_and_fixes(tmp_path):
    with pytest.raises(D.DataError) as e:
        D.load_data(DataConfig(name="fashion_mnist", root=tmp_path / "nowhere"))
    msg = str(e.value)
    assert "\n" not in msg and "train-images-idx3-ubyte" in msg
    assert str(tmp_path / "nowhere") in msg and "FashionMNIST/raw" in msg
    assert "apt-get install dataset-fashion-mnist" in msg
    # an explicit root is searched alone (not the system folder)
    assert str(R.FASHION_DEBIAN) not in msg.split(";")[0]


def test_fashion_mnist_default_root_falls_back_to_debian_folder(tmp_path, monkeypatch):
    system = tmp_path / "usr-share-datasets-fashion-mnist"
    _fashion_files(system, gz=True, n_train=5)
    monkeypatch.setattr(R, "FASHION_DEBIAN", system)
    monkeypatch.chdir(tmp_path)  # no ./data here
    cfg = DataConfig(name="fashion_mnist")
    assert cfg.root == R._DEFAULT_ROOT
    assert len(D.load_data(cfg).train) == 5
    assert D.fashion_folders(R._DEFAULT_ROOT)[-1] == system


# --- safe loading: no code runs from a data file -------------------------------------------


class _Evil:
    """Unpickling this calls ``func(*args)``: what a crafted batch file would do."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _cifar10_folder(tmp_path, write):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for f in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        write(folder / f)
    return folder


@pytest.mark.parametrize("how", ["open", "system"])
def test_crafted_cifar_pickle_runs_no_code(tmp_path, how):
    import builtins
    import os
    import shlex

    marker = tmp_path / "pwned"
    evil = (
        _Evil(builtins.open, str(marker), "w")
        if how == "open"
        else _Evil(os.system, f"touch {shlex.quote(str(marker))}")
    )
    payload = {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1], b"x": evil}
    folder = _cifar10_folder(tmp_path, lambda p: p.write_bytes(pickle.dumps(payload)))
    with pytest.raises(D.DataError) as e:
        D.load_data(DataConfig(name="cifar10", root=tmp_path))
    msg = _one_line_naming(e, folder / "data_batch_1")
    glob = f"{evil.func.__module__}.{evil.func.__name__}"  # io.open, posix.system
    assert f"not a CIFAR pickle batch (refuses to load global {glob})" in msg
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [0, 2, 4, pickle.HIGHEST_PROTOCOL])
@pytest.mark.parametrize("labels", ["list", "numpy", "numpy_scalars"])
def test_cifar_batches_of_every_protocol_load(tmp_path, protocol, labels):
    rng = np.random.default_rng(protocol)
    data = rng.integers(0, 256, (3, 3072), dtype=np.uint8)
    y = {
        "list": [1, 9, 0],
        "numpy": np.array([1, 9, 0]),
        "numpy_scalars": [np.int64(1), np.int64(9), np.int64(0)],
    }[labels]
    batch = {b"batch_label": b"x", b"data": data, b"labels": y, b"filenames": [b"a.png"] * 3}
    _cifar10_folder(tmp_path, lambda p: p.write_bytes(pickle.dumps(batch, protocol=protocol)))
    d = D.load_data(DataConfig(name="cifar10", root=tmp_path))
    x, got = d.train.get(torch.arange(3))
    assert got.tolist() == [1, 9, 0] and len(d.train) == 15
    assert torch.equal((x * 255).round().to(torch.uint8), torch.from_numpy(data).view(3, 3, 32, 32))


def test_cifar_pickle_of_numpy_1_loads(tmp_path):
    """numpy 1.x and python 2 era batches name numpy.core.multiarray."""
    batch = {b"data": np.full((2, 3072), 7, np.uint8), b"labels": [3, 4]}
    raw = pickle.dumps(batch, protocol=2).replace(b"numpy._core.", b"numpy.core.")
    assert b"numpy.core.multiarray\n_reconstruct" in raw
    _cifar10_folder(tmp_path, lambda p: p.write_bytes(raw))
    d = D.load_data(DataConfig(name="cifar10", root=tmp_path))
    assert d.train.get(torch.arange(2))[1].tolist() == [3, 4]


def test_cifar_pickle_codecs_only_latin1(tmp_path):
    import codecs

    payload = {b"data": _Evil(codecs.encode, "x", "rot13"), b"labels": [0]}
    folder = _cifar10_folder(tmp_path, lambda p: p.write_bytes(pickle.dumps(payload, 2)))
    with pytest.raises(D.DataError) as e:
        D.load_data(DataConfig(name="cifar10", root=tmp_path))
    assert "refuses _codecs.encode" in _one_line_naming(e, folder / "data_batch_1")


# --- labels in range, no empty split -----------------------------------------------------------


@pytest.mark.parametrize(
    "name, label, classes",
    [("cifar10", 99, "0..9"), ("cifar10", -1, "0..9"), ("cifar100", 100, "0..99")],
)
def test_cifar_label_out_of_range(tmp_path, name, label, classes):
    folder = tmp_path / ("cifar-10-batches-py" if name == "cifar10" else "cifar-100-python")
    folder.mkdir()
    key = b"labels" if name == "cifar10" else b"fine_labels"
    files = ["train", "test"] if name == "cifar100" else [f"data_batch_{i}" for i in range(1, 6)]
    for f in files + ["test_batch"]:
        labels = [0, 1, 2, 3]
        if f in ("data_batch_2", "train"):
            labels[2] = label
        batch = {b"data": np.zeros((4, 3072), np.uint8), key: labels}
        (folder / f).write_bytes(pickle.dumps(batch))
    with pytest.raises(D.DataError) as e:
        D.load_data(DataConfig(name=name, root=tmp_path))
    bad = folder / ("train" if name == "cifar100" else "data_batch_2")
    assert f"label {label} at index 2 is not a class in {classes}" in _one_line_naming(e, bad)


def test_cifar100_accepts_its_top_label(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    for f in ("train", "test"):
        batch = {b"data": np.zeros((2, 3072), np.uint8), b"fine_labels": [0, 99]}
        (folder / f).write_bytes(pickle.dumps(batch))
    assert D.load_data(DataConfig(name="cifar100", root=tmp_path)).train.y.tolist() == [0, 99]


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_idx_label_out_of_range(tmp_path, name):
    folder = tmp_path / "MNIST" / "raw" if name == "mnist" else tmp_path
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", 5), ("t10k", 2)):
        _write_idx(folder / f"{prefix}-images-idx3-ubyte", np.zeros((n, 28, 28)), False)
        labels = np.arange(n)
        if prefix == "t10k":
            labels[1] = 200
        _write_idx(folder / f"{prefix}-labels-idx1-ubyte", labels, False)
    with pytest.raises(D.DataError) as e:
        D.load_data(DataConfig(name=name, root=tmp_path))
    msg = _one_line_naming(e, folder / "t10k-labels-idx1-ubyte")
    assert "label 200 at index 1 is not a class in 0..9" in msg


def _svhn(tmp_path, y_train, X_dtype=np.uint8):
    from scipy.io import savemat

    for split, y in (("train", y_train), ("test", np.array([[1], [10]]))):
        X = np.zeros((32, 32, 3, len(y)), dtype=X_dtype)
        savemat(tmp_path / f"{split}_32x32.mat", {"X": X, "y": y})


@pytest.mark.parametrize("label", [0, 11, 255])
def test_svhn_label_out_of_range(tmp_path, label):
    _svhn(tmp_path, np.array([[1], [10], [label]], dtype=np.uint8))
    with pytest.raises(D.DataError) as e:
        D.load_data(DataConfig(name="svhn", root=tmp_path))
    msg = _one_line_naming(e, tmp_path / "train_32x32.mat")
    assert f"label {label} at index 2 is not a class in 1..10" in msg


@pytest.mark.parametrize(
    "y, X_dtype, expect",
    [
        (np.array([[1.5], [2.0]]), np.uint8, "whole-number labels"),
        (np.array([[1.0], [np.nan]]), np.uint8, "whole-number labels"),
        (np.array([[1], [2]]), np.float64, "uint8 pixels in X, found float64"),
    ],
)
def test_svhn_malformed_arrays(tmp_path, y, X_dtype, expect):
    _svhn(tmp_path, y, X_dtype)
    with pytest.raises(D.DataError) as e:
        D.load_data(DataConfig(name="svhn", root=tmp_path))
    assert expect in _one_line_naming(e, tmp_path / "train_32x32.mat")


def test_svhn_reads_only_X_and_y(tmp_path):
    from scipy.io import savemat

    for split in ("train", "test"):
        X = np.zeros((32, 32, 3, 2), dtype=np.uint8)
        extra = {"a": {"b": np.arange(3)}, "s": "text"}
        savemat(tmp_path / f"{split}_32x32.mat", {"X": X, "y": np.array([[3], [10]]), **extra})
    assert D.load_data(DataConfig(name="svhn", root=tmp_path)).train.y.tolist() == [3, 0]


def test_empty_cifar_batch(tmp_path):
    def write(p):
        n = 0 if p.name == "test_batch" else 2
        p.write_bytes(pickle.dumps({b"data": np.zeros((n, 3072), np.uint8), b"labels": [0] * n}))

    folder = _cifar10_folder(tmp_path, write)
    with pytest.raises(D.DataError) as e:
        D.load_data(DataConfig(name="cifar10", root=tmp_path))
    assert "no samples (0 images)" in _one_line_naming(e, folder / "test_batch")


def test_empty_mnist_split(tmp_path):
    raw = _mnist_files(tmp_path)
    _write_idx(raw / "train-images-idx3-ubyte", np.zeros((0, 28, 28)), False)
    _write_idx(raw / "train-labels-idx1-ubyte", np.zeros(0), False)
    with pytest.raises(D.DataError) as e:
        D.load_data(DataConfig(name="mnist", root=tmp_path))
    assert "no samples (0 images)" in _one_line_naming(e, raw / "train-images-idx3-ubyte")


def test_empty_svhn_split(tmp_path):
    from scipy.io import savemat

    for split, n in (("train", 2), ("test", 0)):
        X = np.zeros((32, 32, 3, n), dtype=np.uint8)
        savemat(tmp_path / f"{split}_32x32.mat", {"X": X, "y": np.ones((n, 1), np.uint8)})
    with pytest.raises(D.DataError) as e:
        D.load_data(DataConfig(name="svhn", root=tmp_path))
    assert "no samples" in _one_line_naming(e, tmp_path / "test_32x32.mat")


def _image_tree(root, splits):
    """``splits``: {split: {class: number of images}}."""
    from PIL import Image

    for split, classes in splits.items():
        (root / split).mkdir(parents=True)
        for cls, n in classes.items():
            (root / split / cls).mkdir()
            for i in range(n):
                Image.fromarray(np.zeros((20, 24, 3), np.uint8)).save(
                    root / split / cls / f"{i}.png"
                )


@pytest.mark.parametrize(
    "splits, bad",
    [
        ({"train": {"n01": 1}, "val": {"n01": 0}}, "val"),
        ({"train": {}, "val": {"n01": 1}}, "train"),
        ({"train": {"n01": 1, "n02": 0}, "val": {"n01": 1, "n02": 1}}, "train"),
    ],
)
def test_empty_image_folder_named(tmp_path, splits, bad):
    _image_tree(tmp_path, splits)
    with pytest.raises(D.DataError) as e:
        D.load_data(DataConfig(name="imagefolder", root=tmp_path, image_size=8))
    assert _one_line_naming(e, tmp_path / bad).startswith(f"{tmp_path / bad}: no images")


@pytest.mark.parametrize("limit", [300, 100])  # 480 pixels: PIL warns past 300, fails past 200
def test_decompression_bomb_is_one_line(tmp_path, monkeypatch, limit):
    from PIL import Image

    _image_tree(tmp_path, {"train": {"n01": 1}, "val": {"n01": 1}})
    d = D.load_data(DataConfig(name="imagefolder", root=tmp_path, image_size=8))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
    with pytest.raises(D.DataError) as e:
        d.train.get(torch.tensor([0]))
    msg = _one_line_naming(e, tmp_path / "train" / "n01" / "0.png")
    assert "image too large, a possible decompression bomb" in msg


# --- seeds derived from the largest valid seed fit torch -----------------------------------------


def test_derived_seeds_of_the_largest_seed_fit_a_generator():
    from absa.run.config import MAX_EPOCHS, MAX_SEED

    last = MAX_EPOCHS - 1
    assert len(D.epoch_permutation(3, MAX_SEED, last)) == 3
    assert D.augment_params(3, MAX_SEED, last, "crop_flip", 32).offsets.shape == (3, 2)
    assert len(probe_indices(3, 2, MAX_SEED)) == 2
    assert len(D.synthetic_split(1, MAX_SEED, offset=500_000)) == 1
    torch.Generator().manual_seed(MAX_SEED * 1_009 + last)  # the trainer's Hessian probe seed
    assert MAX_SEED * 1_000_003 + 500_000 + 10**9 < 2**63  # synthetic_split's chunk seeds


# --- imagefolder: streaming loader, persistent workers, seeded augmentation -----------------


def _photo_tree(root, n_train=(4, 3, 4), n_val=(2, 1, 2)):
    """Small JPEG and PNG files of varied sizes in 3 classes (train) and a val split."""
    from PIL import Image

    rng = np.random.default_rng(7)
    for split, counts in (("train", n_train), ("val", n_val)):
        for c, n in enumerate(counts):
            folder = root / split / f"n0{c}"
            folder.mkdir(parents=True)
            for i in range(n):
                h, w = int(rng.integers(18, 40)), int(rng.integers(18, 40))
                base = rng.integers(0, 256, (1, 1, 3))
                arr = (base + rng.integers(-60, 60, (h, w, 3))).clip(0, 255).astype(np.uint8)
                ext = "png" if i % 3 == 2 else "jpg"
                Image.fromarray(arr).save(folder / f"{i}.{ext}")


def _folder(root, **kw):
    return D.load_data(DataConfig(name="imagefolder", root=root, image_size=12, **kw))


def _cat(batches):
    xs, ys = zip(*batches, strict=True)
    return torch.cat(xs), torch.cat(ys)


@pytest.fixture
def photos(tmp_path):
    _photo_tree(tmp_path)
    return tmp_path


@pytest.mark.parametrize("workers", [0, 2])
def test_folder_stream_yields_get_samples_in_order(photos, workers):
    d = _folder(photos, num_workers=workers)
    assert len(d.train) == 11 and not d.train.augments
    order = torch.randperm(11, generator=torch.Generator().manual_seed(0))
    batches = list(d.train.stream(order, 3))
    assert [len(y) for _, y in batches] == [3, 3, 3, 2]
    x, y = _cat(batches)
    gx, gy = d.train.get(order)
    assert x.dtype == torch.float32 and x.shape == (11, 3, 12, 12)
    assert torch.equal(x, gx) and torch.equal(y, gy) and torch.equal(y, d.train.targets[order])
    for i in (0, 5, 10):  # and each sample is what get() gives alone
        assert torch.equal(x[i : i + 1], d.train.get(order[i : i + 1])[0])
    sized = list(d.train.stream(order, [2, 4, 1, 4]))  # explicit micro-batch sizes
    assert [len(y) for _, y in sized] == [2, 4, 1, 4] and torch.equal(_cat(sized)[0], x)
    # a split held in memory streams through the same helper
    t = D.TensorSplit(torch.arange(24, dtype=torch.uint8).view(6, 1, 2, 2), torch.arange(6))
    got = list(D.stream_batches(t, torch.tensor([5, 0, 3]), 2))
    assert [b[1].tolist() for b in got] == [[5, 0], [3]]
    assert torch.equal(_cat(D.stream_batches(d.train, order, 4))[0], x)
    with pytest.raises(ValueError, match="sum to 11"):
        d.train.stream(order, [5, 5])


def test_folder_stream_same_tensors_for_any_workers_and_micro_batches(photos):
    order = torch.randperm(11, generator=torch.Generator().manual_seed(1))
    out = {}
    for workers in (0, 2):
        d = _folder(photos, num_workers=workers, folder_augment=True)
        for micro in (1, 4, 11):
            out[workers, micro] = _cat(d.train.stream(order, micro, True, epoch=3, seed=5))
    ref = out[0, 4]
    for x, y in out.values():
        assert torch.equal(x, ref[0]) and torch.equal(y, ref[1])
    # a sample's tensor does not depend on its position either
    rev = _cat(_folder(photos, folder_augment=True).train.stream(order.flip(0), 2, True, 3, 5))
    assert torch.equal(rev[0].flip(0), ref[0])


def test_folder_workers_start_once_for_the_whole_run(photos, monkeypatch):
    """One set of workers per split: not per micro-batch, epoch or get()."""
    from torch.utils.data import dataloader

    starts = []
    init = dataloader._MultiProcessingDataLoaderIter.__init__

    def counting(self, loader):
        starts.append(loader.num_workers)
        init(self, loader)

    monkeypatch.setattr(dataloader._MultiProcessingDataLoaderIter, "__init__", counting)
    d = _folder(photos, num_workers=2, folder_augment=True)
    for epoch in range(2):
        order = D.epoch_permutation(11, 0, epoch)
        n = sum(1 for _ in d.train.stream(order, 2, True, epoch, seed=0))  # 6 micro-batches
        assert n == 6
        for step in order.split(4):  # or one stream per step
            list(d.train.stream(step, 2, True, epoch, seed=0))
        d.train.get(torch.tensor([0, 1, 2]))
    assert starts == [2]
    assert d.train._loader.persistent_workers and d.train._loader.prefetch_factor == 2
    # a get() in the middle of a stream leaves the stream intact (temporary loader)
    order = torch.arange(11)
    it = d.train.stream(order, 4)
    first = next(it)
    probe = d.train.get(torch.tensor([10, 9]))
    rest = list(it)
    assert torch.equal(_cat([first, *rest])[0], d.train.get(order)[0])
    assert torch.equal(probe[0], d.train.get(torch.tensor([10, 9]))[0])
    assert starts == [2, 2]  # the temporary loader of that get()
    # a new stream ends an unfinished one
    old = d.train.stream(order, 4)
    next(old)
    assert len(list(d.train.stream(order, 4))) == 3
    with pytest.raises(RuntimeError, match="newer stream"):
        next(old)
    assert starts == [2, 2]


def test_folder_augmentation_is_seeded_per_sample(photos):
    from PIL import Image

    from absa import tv

    tf = tv.load("torchvision.transforms.v2.functional")
    d = _folder(photos, folder_augment=True)
    assert d.train.augments and not d.test.augments
    order = torch.arange(11)
    a = _cat(d.train.stream(order, 4, True, epoch=2, seed=9))[0]
    assert torch.equal(a, _cat(d.train.stream(order, 4, True, epoch=2, seed=9))[0])
    assert not torch.equal(a, _cat(d.train.stream(order, 4, True, epoch=3, seed=9))[0])
    assert not torch.equal(a, _cat(d.train.stream(order, 4, True, epoch=2, seed=8))[0])
    assert not torch.equal(a, d.train.get(order)[0])  # random crops, not the center crop
    assert torch.equal(_cat(d.train.stream(order, 4, False, 2, 9))[0], d.train.get(order)[0])
    assert torch.equal(
        _cat(d.test.stream(torch.arange(5), 2, True, 2, 9))[0], d.test.get(torch.arange(5))[0]
    )
    # exactly the documented recipe: crop_box and a flip drawn from Random(sample_seed(...))
    flips = 0
    for i in range(11):
        img = Image.open(d.train.folder.samples[i][0]).convert("RGB")
        rng = random.Random(D.sample_seed(9, 2, i))
        top, left, h, w = D.crop_box(rng, img.height, img.width)
        assert top >= 0 and left >= 0 and top + h <= img.height and left + w <= img.width
        want = tf.resized_crop(tf.pil_to_tensor(img), top, left, h, w, [12, 12], antialias=True)
        if rng.random() < 0.5:
            want, flips = tf.horizontal_flip(want), flips + 1
        assert torch.equal(a[i], want.float() / 255)
    assert 0 < flips < 11
    # without folder_augment training samples get the evaluation transform (old behaviour)
    plain = _folder(photos)
    assert torch.equal(_cat(plain.train.stream(order, 4, True, 2, 9))[0], plain.train.get(order)[0])


def test_crop_box_matches_torchvision_distribution():
    """Same algorithm as torchvision's RandomResizedCrop.get_params, another RNG."""
    from absa import tv

    get_params = tv.load("torchvision.transforms").RandomResizedCrop.get_params
    torch.manual_seed(0)
    img = torch.zeros(3, 300, 400)
    theirs = [get_params(img, [0.08, 1.0], [3 / 4, 4 / 3]) for _ in range(4000)]
    rng = random.Random(0)
    ours = [D.crop_box(rng, 300, 400) for _ in range(4000)]
    for boxes in (ours, theirs):
        assert all(t >= 0 and lf >= 0 and t + h <= 300 and lf + w <= 400 for t, lf, h, w in boxes)
    stats = []
    for boxes in (ours, theirs):
        frac = torch.tensor([h * w / 120_000 for _, _, h, w in boxes])
        aspect = torch.tensor([w / h for _, _, h, w in boxes]).log()
        stats.append(torch.stack([frac.mean(), frac.std(), aspect.mean(), aspect.std()]))
    torch.testing.assert_close(stats[0], stats[1], rtol=0, atol=0.02)
    assert D.crop_box(random.Random(0), 10, 200) == (0, 93, 10, 13)  # fallback: central


def test_folder_resize_size_then_center_crop(photos):
    from PIL import Image

    from absa import tv

    tf = tv.load("torchvision.transforms.v2.functional")
    path = None
    for resize in (None, 20):
        d = _folder(photos, resize_size=resize)
        path = d.test.folder.samples[1][0]
        img = tf.pil_to_tensor(Image.open(path).convert("RGB"))
        want = tf.center_crop(tf.resize(img, [resize or 12], antialias=True), [12, 12])
        assert torch.equal(d.test.get(torch.tensor([1]))[0][0], want.float() / 255)
        assert d.info.image_size == 12
    assert path is not None


def test_unreadable_image_in_a_stream_is_one_line(photos):
    bad = photos / "train" / "n01" / "1.jpg"
    bad.write_bytes(b"not an image")
    d = _folder(photos, num_workers=2, check_images="none")  # found late, when read
    order = torch.arange(11)
    with pytest.raises(D.DataError) as e:
        list(d.train.stream(order, 2))
    assert _one_line_naming(e, bad).startswith(f"{bad}: not an image file PIL can decode")
    assert len(list(d.train.stream(torch.tensor([0, 1, 2]), 2))) == 2  # the split still works


def test_training_streams_folder_data_the_same_for_any_workers_and_micro_batch(
    photos, tiny_cfg, monkeypatch
):
    """The trainer reads imagefolder batches through FolderSplit.stream: with the seeded
    RandomResizedCrop + flip, 0 or 2 workers and micro-batches of 2 or 4 give the same
    weights (an MLP has no batch statistics)."""
    from absa.engine import loop as T

    streamed = []
    real = D.FolderSplit.stream
    monkeypatch.setattr(
        D.FolderSplit, "stream", lambda self, *a, **k: streamed.append(1) or real(self, *a, **k)
    )

    def weights(name, *extra):
        cfg = tiny_cfg(
            "data.name=imagefolder",
            f"data.root={photos}",
            "data.image_size=12",
            "data.folder_augment=true",
            "batch.size=4",
            "signals.noise=false",
            *extra,
        )
        T.run(cfg, run_dir=photos / name)
        return torch.load(photos / name / "last.pt", weights_only=True)["model"]

    a = weights("a", "batch.max_micro_batch=4")
    assert len(streamed) == 2 * 3  # 2 epochs of 3 steps (11 images, batch 4)
    b = weights("b", "batch.max_micro_batch=2", "data.num_workers=2")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "damage, expect, found_by",
    [
        (lambda b: b"not a png at all", "not an image file PIL can decode", "header"),
        (lambda b: b[: len(b) // 2], "unreadable image (image file is truncated", "full"),
    ],
)
def test_bad_images_are_found_before_training(tmp_path, damage, expect, found_by):
    """data.check_images: header (default) finds a file that is not an image when the data
    load; full also a truncated one; `absa train` then writes no run folder at all."""
    from typer.testing import CliRunner

    from absa.cli import app

    bad = _damaged_png_tree(tmp_path, damage)
    base = dict(name="imagefolder", root=tmp_path, image_size=8)
    if found_by == "full":
        D.load_data(DataConfig(**base))  # the header is intact: the default check passes
    with pytest.raises(D.DataError) as e:
        D.load_data(DataConfig(**base, check_images=found_by))
    assert _one_line_naming(e, bad).startswith(f"{bad}: {expect}")
    res = CliRunner().invoke(
        app,
        ["train", "-c", str(Path(__file__).parent / "data" / "run.yaml"), "data.name=imagefolder", f"data.root={tmp_path}", "data.image_size=8",
         f"data.check_images={found_by}", "model.name=mlp", "train.device=cpu", f"train.out_dir={tmp_path / 'runs'}"],
    )  # fmt: skip
    assert res.exit_code == 2 and str(bad) in res.output and "Traceback" not in res.output
    assert not (tmp_path / "runs").exists()
