"""A data set added through the registry: config accepts it, load_data returns it, it trains."""

import pytest
import torch

from absa.engine import loop as T
from absa.run import config as C
from absa.run import data as D

TOY = "toy_blobs"


def _toy_read(cfg):
    """Three classes of 1x8x8 images: a bright square in a class-specific corner plus noise."""
    g = torch.Generator().manual_seed(cfg.split_seed)

    def split(n):
        y = torch.arange(n) % 3
        x = torch.rand(n, 1, 8, 8, generator=g) * 0.3
        for c, (r, col) in enumerate([(0, 0), (0, 4), (4, 2)]):
            x[y == c, :, r : r + 4, col : col + 4] += 0.7
        return D.TensorSplit(x.clamp(0, 1), y)

    return split(96), split(48)


@pytest.fixture
def toy():
    spec = D.register_dataset(TOY, D.Dataset(_toy_read, classes=3, flip=False, summary="toy"))
    yield spec
    D.unregister_dataset(TOY)
    assert TOY not in D.DATASETS


def test_config_accepts_a_registered_name_only(toy):
    assert C.load(None, [f"data.name={TOY}"]).data.name == TOY
    with pytest.raises(
        C.ConfigError, match=rf"^overrides: data.name: unknown dataset; did you mean {TOY}\?"
    ):
        C.load(None, ["data.name=toy_blob"])
    D.unregister_dataset(TOY)
    with pytest.raises(C.ConfigError, match="data.name: unknown dataset"):
        C.load(None, [f"data.name={TOY}"])
    D.register_dataset(TOY, toy)


def test_load_data_returns_the_registered_set(toy):
    cfg = C.load(None, [f"data.name={TOY}", "data.train_size=60"])
    data = D.load_data(cfg.data)
    assert isinstance(data.train, D.TensorSplit) and len(data.train) == 60 and len(data.test) == 48
    info = data.info
    assert (info.name, info.num_classes, info.channels, info.image_size, info.flip) == (
        TOY,
        3,
        1,
        8,
        False,
    )
    assert len(info.mean) == len(info.std) == 1  # measured on the train split (none given)
    same = D.load_data(cfg.data)
    assert torch.equal(same.train.x, data.train.x) and torch.equal(same.train.y, data.train.y)


def test_registry_entries_are_checked(toy):
    with pytest.raises(ValueError, match="already registered"):
        D.register_dataset(TOY, toy)
    with pytest.raises(ValueError, match="exactly one of read and load"):
        D.Dataset()
    with pytest.raises(ValueError, match="both mean and std"):
        D.Dataset(_toy_read, mean=(0.5,))
    with pytest.raises(D.DataError, match=r"^data.name: 'nope': unknown dataset"):
        D.get_dataset("nope")


def test_labels_outside_the_registered_classes_are_refused(toy):
    D.unregister_dataset(TOY)
    D.register_dataset(TOY, D.Dataset(_toy_read, classes=2))
    with pytest.raises(D.DataError, match=rf"{TOY}: the train split: label 2 at index 2"):
        D.load_data(C.load(None, [f"data.name={TOY}"]).data)
    D.unregister_dataset(TOY)
    D.register_dataset(TOY, toy)


def test_a_short_training_run_on_the_registered_set(toy, tiny_cfg, tmp_path):
    cfg = tiny_cfg(f"data.name={TOY}", "batch.size=32", "train.epochs=2", "optim.decay_epochs=[]")
    summary = T.run(cfg, run_dir=tmp_path / "toy")
    assert summary.updates == 2 * 3  # 96 samples, batches of 32
    assert (tmp_path / "toy" / "last.pt").is_file()
