import pytest
import torch

from absa import config as C


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(2)


@pytest.fixture
def tiny_cfg(tmp_path):
    """A seconds-long digits config writing into tmp_path; pass dotted overrides."""

    def make(*overrides: str) -> C.Config:
        base = [
            "data.name=digits",
            "model.name=mlp",
            "model.width=8",
            "batch.size=64",
            "batch.max_micro_batch=32",
            "train.epochs=2",
            "train.device=cpu",
            f"train.out_dir={tmp_path / 'runs'}",
            "train.run_name=t",
            "optim.lr=0.05",
            "hessian.probe_size=256",
        ]
        return C.load(None, base + list(overrides))

    return make
