import pytest
import torch

from absa.run import config as C


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


@pytest.fixture
def oom_mlp(monkeypatch):
    """``oom_mlp(limit, training=True)``: registry's mlp replaced by one whose graph-building
    forward of more than ``limit`` samples raises a (simulated) CUDA out-of-memory error, in
    train mode (a training step) or, with ``training=False``, in eval mode (the Hessian probe).
    ``oom_mlp(None)`` puts the real mlp back."""
    from absa.run import models as M

    def install(limit: int | None, training: bool = True) -> None:
        if limit is None:
            monkeypatch.setitem(M.MODELS, "mlp", M.mlp)
            return

        def factory(info, width):
            model = M.mlp(info, width)
            forward = model.forward

            def guarded(x):
                if model.training == training and torch.is_grad_enabled() and len(x) > limit:
                    raise torch.OutOfMemoryError(
                        f"CUDA out of memory: {len(x)} samples (simulated)"
                    )
                return forward(x)

            model.forward = guarded
            return model

        monkeypatch.setitem(M.MODELS, "mlp", factory)

    return install
