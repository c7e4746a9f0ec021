"""What broke on the first CUDA run (issue: absa on a real GPU), pinned where a CPU reaches it.

The CUDA-only halves (a CUDA Lanczos basis, CUDA RNG states, nccl ranks, real compile with
donated buffers) are in tests/test_cuda.py, which runs where CUDA exists.
"""

import gzip
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from absa import distributed as dist_mod
from absa.distributed import DistEnv
from absa.engine import loop as T
from absa.engine.probes import NoiseMeter, ProbeSettings, hessian_probe, probe_indices
from absa.engine.step import Attack
from absa.run import checkpoint as ckpt_io
from absa.run import data as D
from absa.run import models as M
from absa.run.data import load_data
from absa.run.folder import read_metrics

ROOT = Path(__file__).resolve().parent.parent


def _weights(run_dir):
    return torch.load(run_dir / "last.pt", weights_only=True)["model"]


# --- 1. the CLI uses typer's public API only --------------------------------------------------


def test_cli_module_reads_no_private_typer_attribute():
    """cli.py once patched typer.core.TyperOption.display_type_rich, which typer 0.12.5 and
    0.27.2 do not have (AttributeError at import). CI's floors stage imports it under the
    lowest typer allowed; here: the module names no typer internals and imports cleanly."""
    src = (ROOT / "absa" / "cli.py").read_text()
    assert "typer.core" not in src and "typer._" not in src
    out = subprocess.run(
        [sys.executable, "-m", "absa", "--help"], capture_output=True, text=True, cwd=ROOT
    )
    assert out.returncode == 0 and "train" in out.stdout, out.stderr


def test_declared_floors_are_the_ones_ci_installs():
    """pyproject's lower bounds equal constraints-floors.txt's pins, which .ci/run's floors
    stage installs and tests: a floor nobody ran cannot creep back in."""
    import tomllib

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    floors = {d.split(">=")[0].lower(): d.split(">=")[1] for d in deps}
    pins = {}
    for line in (ROOT / "constraints-floors.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            pins[name.lower()] = version
    for name, floor in floors.items():
        if name in ("torch", "torchvision"):  # CPU wheels of the floor are not served here
            continue
        assert pins.get(name) == floor, (name, floor, pins.get(name))
    assert "floors" in (ROOT / ".ci" / "run").read_text()


# --- 3. resume: RNG states stay CPU ByteTensors -------------------------------------------------


def test_checkpoint_with_cuda_rng_resumes_exactly_on_cpu(tiny_cfg, tmp_path):
    """A checkpoint written on a CUDA machine carries CUDA generator states; resumed on a
    machine without CUDA they are skipped and the run continues exactly (weights equal an
    uninterrupted run's). The trainer loads checkpoints onto the CPU, so the CPU generator
    state stays a ByteTensor whatever the run's device."""
    T.run(tiny_cfg("train.epochs=3"), run_dir=tmp_path / "full")
    T.run(tiny_cfg("train.epochs=1"), run_dir=tmp_path / "cut")
    path = tmp_path / "cut" / "last.pt"
    ck = torch.load(path, weights_only=True)
    ck["rng"]["cuda"] = [torch.zeros(16, dtype=torch.uint8)]  # as get_rng_state_all() gives
    torch.save(ck, path)
    T.run(tiny_cfg("train.epochs=3"), run_dir=tmp_path / "cut", resume=True)
    wa, wb = _weights(tmp_path / "full"), _weights(tmp_path / "cut")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_set_rng_state_takes_states_in_any_dtype_or_layout():
    torch.manual_seed(3)
    state = ckpt_io.rng_state()
    expect = torch.rand(4)
    moved = {"torch": state["torch"].to(torch.int64)}  # e.g. a state mapped and cast elsewhere
    ckpt_io.set_rng_state(moved)
    assert torch.equal(torch.rand(4), expect)


def test_resumed_noise_direction_follows_the_gradient_device():
    """The noise meter's direction is restored on the CPU; it moves to the gradients' device
    at the first projection (a CUDA run would otherwise mix devices; 'meta' stands in here)."""
    meter = NoiseMeter()
    meter.load_state_dict({**meter.state_dict(), "direction": torch.ones(3, dtype=torch.float64)})
    g = torch.ones(3, dtype=torch.float64, device="meta")
    assert meter._project(g).device.type == "meta" and meter.direction.device.type == "meta"


# --- 4. the noise split under torch.compile -------------------------------------------------------


class _DonatingGraph(torch.autograd.Function):
    """Identity whose backward refuses retain_graph, as a compiled graph with donated
    buffers does ("requires create_graph=False and retain_graph=False")."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        if torch._C._autograd._get_current_graph_task_keep_graph():
            raise RuntimeError("compiled with non-empty donated buffers: retain_graph=False")
        return grad


class _FakeCompiled(nn.Module):
    """What torch.compile returns: the eager module under ``_orig_mod``."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self._orig_mod = net

    def forward(self, x):
        return _DonatingGraph.apply(self._orig_mod(x))


def test_noise_split_differentiates_the_eager_graph_not_the_compiled_one(tiny_cfg):
    cfg = tiny_cfg()
    data = load_data(cfg.data)
    x, y = data.train.get(torch.arange(32))
    torch.manual_seed(0)
    net = M.build_from_config(cfg.model, data.info)
    mask = torch.zeros(32, dtype=torch.bool)
    grads = {}
    for name, model in (("eager", net), ("compiled", _FakeCompiled(net))):
        net.zero_grad(set_to_none=True)
        meter = NoiseMeter()
        params = [p for p in net.parameters()]
        meter.begin_step(params)
        T.accumulate_gradients(
            model, [(x, y, mask)], 32, DistEnv(), Attack.from_config(cfg), meter, split=True
        )
        assert len(meter._small) == 1  # the half-batch gradient was measured
        grads[name] = [p.grad.clone() for p in params]
    # a step that is not split runs on the compiled module (its backward keeps no graph)
    net.zero_grad(set_to_none=True)
    T.accumulate_gradients(
        _FakeCompiled(net), [(x, y, mask)], 32, DistEnv(), Attack.from_config(cfg), None
    )
    assert all(torch.equal(a, b) for a, b in zip(grads["eager"], grads["compiled"], strict=True))


@pytest.mark.slow
def test_compiled_run_with_noise_split_and_probe_matches_eager(tiny_cfg, tmp_path):
    """train.compile with the noise split on every step and the Hessian probe: noise scale,
    lambda_max and weights agree with eager to tolerance (the kernels differ)."""
    over = ("batch.max_micro_batch=64", "signals.noise_split_steps=100", "schedule.method=abs",
            "schedule.max_batch=128", "data.augment=none")  # fmt: skip
    runs = {}
    for name, flag in (("eager", "false"), ("compiled", "true")):
        T.run(tiny_cfg(*over, f"train.compile={flag}"), run_dir=tmp_path / name)
        runs[name] = read_metrics(tmp_path / name)
    for a, b in zip(runs["eager"], runs["compiled"], strict=True):
        assert a["lambda_max"] == pytest.approx(b["lambda_max"], rel=1e-3)
        assert a["noise_scale"] == pytest.approx(b["noise_scale"], rel=1e-2)
    wa, wb = _weights(tmp_path / "eager"), _weights(tmp_path / "compiled")
    assert all(torch.allclose(wa[k], wb[k], atol=1e-4) for k in wa)


# --- 5. more ranks than GPUs ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "device, local_world, n_cuda, refused",
    [
        ("cuda", 2, 1, True),
        ("auto", 2, 1, True),
        ("cuda:0", 2, 2, True),  # every rank pinned to one GPU
        ("cuda", 2, 2, False),
        ("auto", 4, 0, False),  # no CUDA: auto means CPU ranks
        ("cpu", 8, 1, False),
        ("cuda", 1, 1, False),
    ],
)
def test_more_ranks_than_gpus_is_one_line(device, local_world, n_cuda, refused):
    if not refused:
        dist_mod.check_gpu_per_rank(device, local_world, n_cuda)
        return
    with pytest.raises(ValueError) as err:
        dist_mod.check_gpu_per_rank(device, local_world, n_cuda)
    msg = str(err.value)
    assert msg.startswith("train.device:") and "\n" not in msg
    assert f"--nproc {max(n_cuda, 1)}" in msg and "train.device=cpu" in msg


def test_setup_refuses_before_joining_the_group(monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setattr(dist_mod, "visible_cuda", lambda: 1)
    with pytest.raises(ValueError, match="2 processes on this node need 2 CUDA devices"):
        dist_mod.setup("auto")


def test_nproc_with_cuda_ranks_on_a_machine_without_enough_gpus_is_one_line(tmp_path):
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    cmd = [sys.executable, "-m", "absa", "train", "--nproc", str(max(n + 1, 2)),
           "-c", "configs/digits_bl.yaml",
           "train.device=cuda", f"train.out_dir={tmp_path}"]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().count("\n") == 0 and "train.device" in out.stderr
    assert not any(tmp_path.iterdir())  # nothing written


# --- 6. auto micro-batch with a Hessian-probing method -------------------------------------------


def test_auto_micro_batch_with_the_hessian_probe(tiny_cfg, tmp_path):
    """``batch.max_micro_batch: auto`` reached the probe raw ("auto" to Tensor.split): the probe
    now chunks by the resolved size (256 on a CPU), so lambda_max equals a run set to 256."""
    over = ("schedule.method=absa", "schedule.max_batch=128", "train.epochs=2")
    T.run(tiny_cfg(*over, "batch.max_micro_batch=auto"), run_dir=tmp_path / "auto")
    T.run(tiny_cfg(*over, f"batch.max_micro_batch={T.AUTO_MICRO_CPU}"), run_dir=tmp_path / "n")
    a, b = read_metrics(tmp_path / "auto"), read_metrics(tmp_path / "n")
    assert [r["lambda_max"] for r in a] == [r["lambda_max"] for r in b]
    assert all(r["lambda_max"] is not None for r in a)


def test_out_of_memory_probe_backs_off_like_a_step(tiny_cfg, tmp_path, oom_mlp):
    """The probe chunks by the micro-batch in force and halves it on an out-of-memory error
    (one process); lambda_max is then the eigenvalue of the same probe set."""
    oom_mlp(32, training=False)  # the probe's eval-mode forward
    over = ("batch.max_micro_batch=128", "batch.size=128", "hessian.block=full",
            "schedule.method=abs", "schedule.max_batch=256", "train.epochs=1")  # fmt: skip
    cfg = tiny_cfg(*over)
    T.run(cfg, run_dir=tmp_path / "r")
    ck = torch.load(tmp_path / "r" / "last.pt", weights_only=True)
    assert ck["micro_batch"] == 32  # 128 -> 64 -> 32
    (rec,) = read_metrics(tmp_path / "r")
    oom_mlp(None)
    data = load_data(cfg.data)
    model = M.build_from_config(cfg.model, data.info)
    model.load_state_dict(ck["model"])
    idx = probe_indices(len(data.train), cfg.hessian.probe_size, cfg.train.seed)
    again = hessian_probe(
        model, data, ProbeSettings.from_config(cfg), DistEnv(), idx, 0, None, micro=32
    )
    assert rec["lambda_max"] == again.eigenvalue


# --- 7. idx files written by the tests ------------------------------------------------------------


def test_gzip_idx_written_whole_reads_back_and_an_empty_one_is_named(tmp_path):
    """The tests once wrote .gz idx files through an unclosed GzipFile, which Python 3.12 does
    not flush; the reader was right to refuse them. A complete file reads, an empty one is
    refused in one line naming it."""
    raw = bytes([0, 0, 8, 1]) + (3).to_bytes(4, "big") + bytes([1, 2, 3])
    good = tmp_path / "good-labels-idx1-ubyte.gz"
    good.write_bytes(gzip.compress(raw))
    assert D._read_idx(good, 1).tolist() == [1, 2, 3]
    empty = tmp_path / "empty-labels-idx1-ubyte.gz"
    empty.write_bytes(gzip.compress(b""))
    with pytest.raises(D.DataError, match=str(empty)):
        D._read_idx(empty, 1)


# --- 8. the CPU-meaning tests say so -------------------------------------------------------------


def test_tiny_config_pins_the_cpu(tiny_cfg):
    assert tiny_cfg().train.device == "cpu"


# --- the GPU check ------------------------------------------------------------------------------


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present: the check runs")
def test_gpu_check_without_cuda_says_so_and_exits_0():
    out = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_check.sh")],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHON": sys.executable},
    )
    assert out.returncode == 0 and "no CUDA device" in out.stdout, out.stderr


@pytest.mark.slow
def test_gpu_check_steps_pass_on_the_cpu(tmp_path):
    """GPU_CHECK_DEVICE=cpu: every training step of the check (default config, kill -9 +
    resume with equal weights, the paper ABSA config, absa hessian, --nproc) on tiny settings."""
    env = {**os.environ, "PYTHON": sys.executable, "GPU_CHECK_DEVICE": "cpu",
           "GPU_CHECK_OUT": str(tmp_path), "OMP_NUM_THREADS": "1"}  # fmt: skip
    out = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_check.sh")], capture_output=True, text=True, env=env
    )
    assert out.returncode == 0, out.stdout[-3000:]
    for step in ("default", "kill-resume", "paper-absa", "hessian", "nproc"):
        assert any(ln.startswith(step) and " ok " in ln for ln in out.stdout.splitlines()), step
    assert "equal the uninterrupted run's: True" in (tmp_path / "kill-resume.log").read_text()
