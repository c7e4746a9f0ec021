"""Each real loader on tiny files written here in the real on-disk format."""

import gzip
import pickle
import struct

import numpy as np
import pytest
import torch

from absa import data as D
from absa.config import DataConfig


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
    (gzip.open if gz else open)(path, "wb").write(raw)


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


@pytest.mark.parametrize(
    "damage, expect, workers",
    [
        (lambda b: b"not a png at all", "not an image file PIL can decode", 0),
        (lambda b: b[: len(b) // 2], "unreadable image (image file is truncated", 0),
        (lambda b: b"not a png at all", "not an image file PIL can decode", 1),  # in a worker
    ],
)
def test_unreadable_image_in_folder(tmp_path, damage, expect, workers):
    from PIL import Image

    for split in ("train", "val"):
        for cls in ("n01", "n02"):
            (tmp_path / split / cls).mkdir(parents=True)
            arr = np.random.default_rng(0).integers(0, 256, (20, 24, 3), dtype=np.uint8)
            Image.fromarray(arr).save(tmp_path / split / cls / "0.png")
    bad = tmp_path / "train" / "n02" / "0.png"
    bad.write_bytes(damage(bad.read_bytes()))
    d = D.load_data(
        DataConfig(name="imagefolder", root=tmp_path, image_size=8, num_workers=workers)
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
    assert str(D.FASHION_DEBIAN) not in msg.split(";")[0]


def test_fashion_mnist_default_root_falls_back_to_debian_folder(tmp_path, monkeypatch):
    system = tmp_path / "usr-share-datasets-fashion-mnist"
    _fashion_files(system, gz=True, n_train=5)
    monkeypatch.setattr(D, "FASHION_DEBIAN", system)
    monkeypatch.chdir(tmp_path)  # no ./data here
    cfg = DataConfig(name="fashion_mnist")
    assert cfg.root == D._DEFAULT_ROOT
    assert len(D.load_data(cfg).train) == 5
    assert D.fashion_folders(D._DEFAULT_ROOT)[-1] == system
