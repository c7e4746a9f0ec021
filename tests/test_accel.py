"""GPU-speed switches on the CPU: bf16/fp16 autocast (fp16 scaler state checkpointed, resume
exact), Hessian probes in fp32 under autocast, channels_last, torch.compile, micro-batch
sizing and out-of-memory backoff with a simulated OOM, on-device data degrading on CPU."""

import pytest
import torch

from absa.distributed import DistEnv
from absa.engine import accel as A
from absa.engine import loop as T
from absa.engine.probes import ProbeSettings, hessian_probe, probe_indices
from absa.run import config as C
from absa.run import models as M
from absa.run.data import load_data


def _weights(run_dir):
    return torch.load(run_dir / "last.pt", weights_only=True)["model"]


def test_bf16_trains_on_cpu_and_differs_from_fp32(tiny_cfg, tmp_path):
    a = T.run(tiny_cfg("train.precision=bf16"), run_dir=tmp_path / "bf16")
    b = T.run(tiny_cfg(), run_dir=tmp_path / "fp32")
    wa, wb = _weights(tmp_path / "bf16"), _weights(tmp_path / "fp32")
    assert all(v.dtype == torch.float32 for v in wa.values())  # master weights stay fp32
    assert any(not torch.equal(wa[k], wb[k]) for k in wa)  # autocast really ran in bf16
    assert a.test_acc > 30 and abs(a.test_acc - b.test_acc) < 15


def test_hessian_probe_is_fp32_even_inside_autocast(tiny_cfg):
    cfg = tiny_cfg("model.name=small_cnn", "hessian.block=full", "hessian.max_iter=5")
    data = load_data(cfg.data)
    torch.manual_seed(0)
    model = M.build_from_config(cfg.model, data.info)
    idx = probe_indices(len(data.train), 64, 0)
    args = (model, data, ProbeSettings.from_config(cfg), DistEnv(), idx)
    plain = hessian_probe(*args, epoch=0, micro=cfg.batch.max_micro_batch)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = hessian_probe(*args, epoch=0, micro=cfg.batch.max_micro_batch)
    assert inside.eigenvalue == plain.eigenvalue and inside.vector.dtype == torch.float32


def test_probe_uses_the_configured_hvp(tiny_cfg, monkeypatch):
    """hessian.hvp reaches the training probe: forward-over-reverse runs and gives the
    reverse (double-backprop) eigenvalue up to rounding."""
    from absa.core import hessian as H

    calls = []
    real = H.HessianOperator._hvp_forward
    monkeypatch.setattr(
        H.HessianOperator, "_hvp_forward", lambda self, *a: calls.append(1) or real(self, *a)
    )
    base = ("model.name=small_cnn", "hessian.block=full", "hessian.max_iter=5")
    data = load_data(tiny_cfg().data)
    idx = probe_indices(len(data.train), 64, 0)
    values = {}
    for mode in ("reverse", "forward"):
        cfg = tiny_cfg(*base, f"hessian.hvp={mode}")
        torch.manual_seed(0)
        model = M.build_from_config(cfg.model, data.info)
        values[mode] = hessian_probe(
            model,
            data,
            ProbeSettings.from_config(cfg),
            DistEnv(),
            idx,
            epoch=0,
            micro=cfg.batch.max_micro_batch,
        ).eigenvalue
        assert bool(calls) == (mode == "forward")
    assert values["forward"] == pytest.approx(values["reverse"], rel=1e-4)


def test_fp16_scaler_state_is_checkpointed_and_resume_is_exact(tiny_cfg, tmp_path):
    T.run(tiny_cfg("train.precision=fp16", "train.epochs=3"), run_dir=tmp_path / "full")
    T.run(tiny_cfg("train.precision=fp16", "train.epochs=1"), run_dir=tmp_path / "cut")
    ck = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)
    assert ck["scaler"]["scale"] > 0 and "_growth_tracker" in ck["scaler"]
    T.run(tiny_cfg("train.precision=fp16", "train.epochs=3"), run_dir=tmp_path / "cut", resume=True)
    wa, wb = _weights(tmp_path / "full"), _weights(tmp_path / "cut")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    sa = torch.load(tmp_path / "full" / "last.pt", weights_only=True)["scaler"]
    sb = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)["scaler"]
    assert sa == sb


def test_channels_last_model_and_inputs(tiny_cfg, tmp_path):
    s = T.run(
        tiny_cfg("model.name=small_cnn", "train.channels_last=true", "train.epochs=1"),
        run_dir=tmp_path / "cl",
    )
    ref = T.run(tiny_cfg("model.name=small_cnn", "train.epochs=1"), run_dir=tmp_path / "ref")
    assert s.test_acc == pytest.approx(ref.test_acc, abs=3.0)  # same math, other kernels
    x = A.to_input(torch.rand(2, 3, 8, 8), True)
    assert x.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.slow
def test_compile_with_cuda_graph_mode_trains_as_eager_on_cpu(tiny_cfg, tmp_path):
    """On a CPU reduce-overhead compiles as default does (graphs are a CUDA feature)."""
    over = ("train.epochs=1", "batch.max_micro_batch=32")
    a = T.run(tiny_cfg(*over), run_dir=tmp_path / "eager")
    b = T.run(tiny_cfg(*over, "train.compile=true", "train.compile_mode=reduce-overhead"),
              run_dir=tmp_path / "graphs")  # fmt: skip
    wa, wb = _weights(tmp_path / "eager"), _weights(tmp_path / "graphs")
    assert all(torch.allclose(wa[k], wb[k], atol=1e-4) for k in wa)
    assert b.test_acc == pytest.approx(a.test_acc, abs=1.0)


@pytest.mark.slow
def test_compiled_training_checkpoints_the_bare_module(tiny_cfg, tmp_path):
    T.run(tiny_cfg("train.compile=true", "train.epochs=1"), run_dir=tmp_path / "c")
    keys = list(_weights(tmp_path / "c"))
    assert keys and not any("_orig_mod" in k for k in keys)


def test_compile_mode_needs_compile_and_reaches_torch_compile(tiny_cfg, monkeypatch):
    with pytest.raises(
        C.ConfigError, match="train.compile_mode: reduce-overhead needs train.compile"
    ):
        tiny_cfg("train.compile_mode=reduce-overhead")
    seen = []
    monkeypatch.setattr(torch, "compile", lambda m, **kw: seen.append(kw) or m)
    net = torch.nn.Linear(2, 2)
    for mode in ("default", "reduce-overhead"):
        assert A.prepare_model(net, False, True, print, mode) is net
    assert seen == [{"mode": None}, {"mode": "reduce-overhead"}]


@pytest.mark.parametrize(
    ("mode", "device", "graphs"),
    [
        ("reduce-overhead", "cuda", True),
        ("max-autotune", "cuda", True),
        ("max-autotune-no-cudagraphs", "cuda", False),
        ("default", "cuda", False),
        ("reduce-overhead", "cpu", False),
    ],  # fmt: skip
)
def test_runtime_knows_when_the_module_replays_cuda_graphs(tiny_cfg, mode, device, graphs):
    cfg = tiny_cfg("train.compile=true", f"train.compile_mode={mode}")
    assert A.Runtime.plain(cfg, torch.device(device)).cuda_graphs is graphs


def test_steps_under_cuda_graphs_keep_grad_buffers_and_equal_plain_steps(tiny_cfg):
    """Under CUDA graphs a step adds each micro-batch's gradient into kept, zeroed .grad
    buffers (a graph's gradient output is overwritten by its next replay); on the CPU the
    same bookkeeping runs, and two micro-batches a step give bit-identical weights."""
    from absa.engine.epoch import _keep_grad_buffers

    net = torch.nn.Linear(3, 2)
    net.bias.grad = mine = torch.ones(2)
    _keep_grad_buffers(list(net.parameters()))  # before any backward: its own zeroed buffer
    assert torch.equal(net.weight.grad, torch.zeros(2, 3)) and net.bias.grad is mine
    cfg = tiny_cfg("batch.max_micro_batch=32", "signals.noise=true")  # two micro-batches a step
    data = load_data(cfg.data)
    weights, kept = {}, []
    for graphs in (False, True):
        torch.manual_seed(0)
        model = M.build_from_config(cfg.model, data.info)
        opt, policy = T.make_optimizer(model, cfg), T.policy_for(cfg)
        rt = A.Runtime.plain(cfg, torch.device("cpu"))
        rt.cuda_graphs = graphs
        for epoch in range(2):
            noise = T.noise_meter(cfg, None)  # reads .grad after each micro-batch
            T.train_epoch(model, opt, data, cfg, DistEnv(), policy, epoch, noise=noise, rt=rt)
            kept.append([p.grad for p in model.parameters()])
        weights[graphs] = [p.detach().clone() for p in model.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(weights[False], weights[True], strict=True))
    assert all(a is b for a, b in zip(kept[2], kept[3], strict=True))  # the same buffers
    assert not any(a is b for a, b in zip(kept[0], kept[1], strict=True))  # freed and new


def test_compiled_module_unwraps_to_the_bare_one():
    from absa.distributed import unwrap

    net = torch.nn.Linear(2, 2)
    wrapper = torch.nn.Module()
    wrapper._orig_mod = net  # what torch.compile's OptimizedModule holds
    assert unwrap(wrapper) is net


# --- micro-batch sizing and out-of-memory backoff --------------------------------------------


def test_find_micro_batch_halves_until_it_fits():
    tried = []

    def attempt(size):
        tried.append(size)
        if size > 100:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    assert A.find_micro_batch(attempt, 512) == (64, [512, 256, 128])
    assert tried == [512, 256, 128, 64]
    with pytest.raises(ValueError):  # other errors are not swallowed
        A.find_micro_batch(lambda s: (_ for _ in ()).throw(ValueError("x")), 8)
    with pytest.raises(torch.OutOfMemoryError):
        A.find_micro_batch(lambda s: (_ for _ in ()).throw(torch.OutOfMemoryError("oom")), 4)


def test_out_of_memory_step_backs_off_and_gives_the_same_weights(tiny_cfg, tmp_path, oom_mlp):
    oom_mlp(16)
    cfg = tiny_cfg("batch.max_micro_batch=64", "data.augment=none")
    T.run(cfg, run_dir=tmp_path / "backoff")
    ck = torch.load(tmp_path / "backoff" / "last.pt", weights_only=True)
    assert ck["micro_batch"] == 16  # 64 -> 32 -> 16, kept for the rest of the run
    oom_mlp(None)
    T.run(tiny_cfg("batch.max_micro_batch=16", "data.augment=none"), run_dir=tmp_path / "ref")
    wa, wb = _weights(tmp_path / "backoff"), _weights(tmp_path / "ref")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    # resumed with the same config, the run keeps the micro-batch it backed off to
    again = tiny_cfg("batch.max_micro_batch=64", "data.augment=none", "train.epochs=3")
    T.run(again, run_dir=tmp_path / "backoff", resume=True)
    assert torch.load(tmp_path / "backoff" / "last.pt", weights_only=True)["micro_batch"] == 16


def test_auto_micro_batch_on_cpu_says_what_it_uses(tiny_cfg, tmp_path):
    lines = []
    T.run(
        tiny_cfg("batch.max_micro_batch=auto", "train.epochs=1"),
        run_dir=tmp_path / "a",
        log=lines.append,
    )
    assert any("auto needs an accelerator; using 256" in ln for ln in lines)
    assert torch.load(tmp_path / "a" / "last.pt", weights_only=True)["micro_batch"] == 256


def test_resume_may_lower_the_micro_batch_or_probe_it_anew(tiny_cfg, tmp_path):
    """After an out-of-memory exit (e.g. under DDP) a run resumes with a smaller micro-batch:
    the same gradient sums up to rounding (this mlp has no BatchNorm or dropout)."""
    cfg = lambda *o: tiny_cfg("data.augment=none", *o)  # noqa: E731
    T.run(cfg("batch.max_micro_batch=64", "train.epochs=3"), run_dir=tmp_path / "full")
    T.run(cfg("batch.max_micro_batch=64", "train.epochs=1"), run_dir=tmp_path / "cut")
    lines: list[str] = []
    over = ("batch.max_micro_batch=16", "train.epochs=3")
    T.run(cfg(*over), run_dir=tmp_path / "cut", resume=True, log=lines.append)
    assert any("batch.max_micro_batch: 64 -> 16 on resume" in ln for ln in lines)
    assert torch.load(tmp_path / "cut" / "last.pt", weights_only=True)["micro_batch"] == 16
    wa, wb = _weights(tmp_path / "full"), _weights(tmp_path / "cut")
    assert not all(torch.equal(wa[k], wb[k]) for k in wa)  # summed in another order
    assert all(torch.allclose(wa[k], wb[k], rtol=1e-4, atol=1e-6) for k in wa)
    # back to auto: it probes again
    lines.clear()
    back = cfg("batch.max_micro_batch=auto", "train.epochs=4")
    T.run(back, run_dir=tmp_path / "cut", resume=True, log=lines.append)
    assert any("16 -> auto on resume" in ln for ln in lines)
    assert any("auto needs an accelerator; using 256" in ln for ln in lines)
    assert torch.load(tmp_path / "cut" / "last.pt", weights_only=True)["micro_batch"] == 256


def test_on_device_data_degrades_on_cpu(tiny_cfg):
    data = load_data(tiny_cfg().data)
    split, note = A.to_device_data(data.train, torch.device("cpu"), True)
    assert split is data.train and "no CUDA device" in note
    assert A.to_device_data(data.train, torch.device("cpu"), "auto") == (data.train, "")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present: the bench runs")
def test_bench_gpu_says_no_gpu_and_exits_0_on_cpu():
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "scripts" / "bench_gpu.py"
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True)
    assert out.returncode == 0 and "no CUDA device" in out.stdout
