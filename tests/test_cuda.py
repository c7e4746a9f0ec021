"""GPU behaviours, run where CUDA exists and skipped with a reason elsewhere.

Each mirrors a CPU test with train.device=cuda: the default ABSA run, Lanczos and power on a
CUDA operator against a dense Hessian, resume exactness (also across devices), compile with
the noise split and the probe, compile with CUDA graphs (micro-batches into kept .grad
buffers), bf16/fp16, data on the device, and the auto micro-batch with
an out-of-memory backoff. scripts/gpu_check.sh runs this file on a GPU machine.
"""

import pytest
import torch

from absa.core import hessian as H
from absa.engine import loop as T
from absa.run import config as C
from absa.run import models as M
from absa.run.data import load_data
from absa.run.folder import read_metrics

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture
def cuda_cfg(tmp_path):
    """conftest's tiny digits config on the GPU."""

    def make(*overrides: str) -> C.Config:
        base = ["data.name=digits", "model.name=mlp", "model.width=8", "batch.size=64",
                "batch.max_micro_batch=32", "train.epochs=2", "optim.lr=0.05",
                "hessian.probe_size=256", "train.device=cuda",
                f"train.out_dir={tmp_path / 'runs'}", "train.run_name=t"]  # fmt: skip
        return C.load(None, base + list(overrides))

    return make


def _weights(run_dir, device="cpu"):
    return torch.load(run_dir / "last.pt", weights_only=True, map_location=device)["model"]


def test_default_absa_config_runs_on_cuda(tmp_path):
    cfg = C.load("configs/default.yaml", ["train.device=cuda", "train.epochs=3",
                 "optim.decay_epochs=[2]", f"train.out_dir={tmp_path}"])  # fmt: skip
    s = T.run(cfg, run_dir=tmp_path / "d")
    rows = read_metrics(tmp_path / "d")
    assert s.test_acc > 50 and all(r["lambda_max"] is not None for r in rows)


@pytest.mark.parametrize("method", ["lanczos", "power"])
def test_eigen_solvers_on_a_cuda_operator_match_the_dense_hessian(method):
    torch.manual_seed(0)
    head = torch.nn.Linear(6, 3).cuda().double()
    x = torch.randn(40, 6, device="cuda", dtype=torch.float64)
    y = torch.randint(0, 3, (40,), device="cuda")
    model = torch.nn.Sequential(head)
    op = H.HessianOperator(model, list(head.parameters()), [(x, y)], device=torch.device("cuda"))
    dense = torch.stack([op.matvec(e) for e in torch.eye(op.dim, device="cuda", dtype=op.dtype)])
    top = torch.linalg.eigvalsh(dense.cpu()).flip(0)
    res = H.top_eigen(op, k=2, method=method, max_iter=60, rtol=1e-10,
                      generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert res.values == pytest.approx(top[:2].tolist(), rel=1e-6)
    assert all(v.device.type == "cuda" for v in res.vectors)


def test_resume_on_cuda_is_exact(cuda_cfg, tmp_path):
    T.run(cuda_cfg("train.epochs=3", "schedule.method=absa", "schedule.max_batch=128"),
          run_dir=tmp_path / "full")  # fmt: skip
    T.run(cuda_cfg("train.epochs=1", "schedule.method=absa", "schedule.max_batch=128"),
          run_dir=tmp_path / "cut")  # fmt: skip
    T.run(cuda_cfg("train.epochs=3", "schedule.method=absa", "schedule.max_batch=128"),
          run_dir=tmp_path / "cut", resume=True)  # fmt: skip
    wa, wb = _weights(tmp_path / "full"), _weights(tmp_path / "cut")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    ck = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)
    assert ck["rng"]["torch"].dtype == torch.uint8 and "cuda" in ck["rng"]


@pytest.mark.parametrize("first, then", [("cuda", "cpu"), ("cpu", "cuda")])
def test_checkpoint_moves_between_cuda_and_cpu(cuda_cfg, tmp_path, first, then):
    T.run(cuda_cfg("train.epochs=1", f"train.device={first}", "schedule.method=abs",
                   "schedule.max_batch=128"), run_dir=tmp_path / "r")  # fmt: skip
    s = T.run(cuda_cfg("train.epochs=2", f"train.device={then}", "schedule.method=abs",
                       "schedule.max_batch=128"), run_dir=tmp_path / "r", resume=True)  # fmt: skip
    assert s.epochs == 2 and len(read_metrics(tmp_path / "r")) == 2


def test_compile_with_noise_split_and_probe_matches_eager(cuda_cfg, tmp_path):
    over = ("model.name=small_cnn", "batch.max_micro_batch=64", "signals.noise_split_steps=100",
            "schedule.method=abs", "schedule.max_batch=128", "data.augment=none")  # fmt: skip
    rows = {}
    for flag in ("false", "true"):
        T.run(cuda_cfg(*over, f"train.compile={flag}"), run_dir=tmp_path / flag)
        rows[flag] = read_metrics(tmp_path / flag)
    for a, b in zip(rows["false"], rows["true"], strict=True):
        assert a["lambda_max"] == pytest.approx(b["lambda_max"], rel=1e-2)
        assert a["noise_scale"] == pytest.approx(b["noise_scale"], rel=5e-2)
    wa, wb = _weights(tmp_path / "false"), _weights(tmp_path / "true")
    assert all(torch.allclose(wa[k], wb[k], atol=1e-3) for k in wa)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_low_precision_trains_and_resumes_exactly(cuda_cfg, tmp_path, precision):
    over = (f"train.precision={precision}", "model.name=small_cnn", "train.channels_last=true")
    s = T.run(cuda_cfg(*over, "train.epochs=3"), run_dir=tmp_path / "full")
    T.run(cuda_cfg(*over, "train.epochs=1"), run_dir=tmp_path / "cut")
    T.run(cuda_cfg(*over, "train.epochs=3"), run_dir=tmp_path / "cut", resume=True)
    assert s.test_acc > 30
    wa, wb = _weights(tmp_path / "full"), _weights(tmp_path / "cut")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_data_on_the_device(cuda_cfg, tmp_path):
    lines = []
    T.run(cuda_cfg("data.on_device=true", "train.epochs=1"), run_dir=tmp_path / "d",
          log=lines.append)  # fmt: skip
    assert any("data on cuda" in ln for ln in lines)


def test_auto_micro_batch_probes_and_a_step_backs_off(cuda_cfg, tmp_path, oom_mlp):
    lines = []
    T.run(cuda_cfg("batch.max_micro_batch=auto", "train.epochs=1", "schedule.method=abs",
                   "schedule.max_batch=128"), run_dir=tmp_path / "a", log=lines.append)  # fmt: skip
    assert any("auto ->" in ln for ln in lines) and (tmp_path / "a" / "micro_batch.json").is_file()

    oom_mlp(16)
    T.run(cuda_cfg("batch.max_micro_batch=64", "train.epochs=1"), run_dir=tmp_path / "b")
    assert torch.load(tmp_path / "b" / "last.pt", weights_only=True)["micro_batch"] == 16


def test_load_data_then_cuda_model_forward():
    data = load_data(C.load(None, []).data)
    model = M.build_from_config(C.load(None, []).model, data.info).cuda()
    x, _ = data.train.get(torch.arange(4))
    assert model(x.cuda()).shape == (4, data.info.num_classes)


def test_cuda_graph_compile_with_micro_batches_matches_eager(cuda_cfg, tmp_path):
    """train.compile_mode=reduce-overhead replays CUDA graphs; two micro-batches a step add
    into kept .grad buffers (a stolen graph output would be overwritten by the next replay)."""
    over = ("model.name=small_cnn", "batch.max_micro_batch=32", "data.augment=none")
    T.run(cuda_cfg(*over), run_dir=tmp_path / "eager")
    T.run(cuda_cfg(*over, "train.compile=true", "train.compile_mode=reduce-overhead"),
          run_dir=tmp_path / "graphs")  # fmt: skip
    wa, wb = _weights(tmp_path / "eager"), _weights(tmp_path / "graphs")
    assert all(torch.allclose(wa[k], wb[k], atol=1e-3) for k in wa)
