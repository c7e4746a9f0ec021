"""Issue 25, "fast on a GPU": the training step reads nothing from the device in the steady
state, a divergence is still caught within FINITE_CHECK_EVERY steps at the step where it
happened, and the host-side adversarial count equals the mask it replaced."""

import pytest
import torch

from absa.distributed import DistEnv
from absa.engine import epoch as E
from absa.engine import loop as T
from absa.run.data import load_data, local_positions
from absa.run.models import build_model

# every way Python code turns a tensor into a host value (each one a device sync on a GPU)
READS = ("item", "cpu", "tolist", "numpy", "__float__", "__int__", "__bool__", "__index__")


def _epoch(cfg, on_step):
    torch.manual_seed(0)
    data = load_data(cfg.data)
    model = build_model(cfg.model.name, data.info, cfg.model.width)
    opt = T.make_optimizer(model, cfg)
    noise = T.noise_meter(cfg, None)
    env = DistEnv()
    return T.train_epoch(model, opt, data, cfg, env, T.policy_for(cfg), 0, on_step, noise)


class _Counter:
    """on_step that counts tensor reads between the end of step ``start`` and the end of
    step ``stop`` and never asks for the running statistics (``wants_stats``)."""

    def __init__(self, monkeypatch, start, stop):
        self.on, self.start, self.stop, self.calls = False, start, stop, []
        for name in READS:
            real = getattr(torch.Tensor, name)

            def counted(t, *a, _real=real, _name=name, **kw):
                if self.on:
                    self.calls.append((self.step, _name))
                return _real(t, *a, **kw)

            monkeypatch.setattr(torch.Tensor, name, counted)
        self.step = 0

    def __call__(self, step, n_steps, info):
        assert info["loss"] is None and info["step_loss"] is None  # nothing was read
        self.step = step
        self.on = self.start <= step < self.stop

    def wants_stats(self, step, n_steps):
        return False


@pytest.mark.parametrize(
    "extra",
    [
        # two micro-batches per step (noise meter differencing) and FGSM on a quarter
        ["batch.max_micro_batch=8", "adversarial.fraction=0.25"],
        # one micro-batch per step: the noise meter's half-batch backward on every step
        ["batch.max_micro_batch=16", "signals.noise_split_steps=1000"],
    ],
)
def test_a_steady_state_step_reads_nothing_from_the_device(tiny_cfg, monkeypatch, extra):
    """Counts every conversion of a tensor to a host value (``.item()``, ``.cpu()``,
    ``.tolist()``, ``.numpy()``, ``float()``, ``int()``, ``bool()``, ``__index__``) during
    steps 2..N-1 of an epoch, with the noise meter on (the default).

    On a CPU every tensor is a "device" tensor, so this counts host-side index tensors too:
    the test holds because the step does no such conversion at all (positions are sliced and
    indexed as tensors; sizes and the adversarial count are Python ints from ``len`` and
    arithmetic). That is stricter than needed, and robust: no judgement of which tensor lives
    where. The digits are a split held in memory (an imagefolder's DataLoader turns host index
    tensors into lists, which is not a device read and is not run here). The finiteness check
    is a bounded read, pushed past the epoch here (see the next test for its cadence)."""
    monkeypatch.setattr(E, "FINITE_CHECK_EVERY", 10**6)
    cfg = tiny_cfg("batch.size=16", *extra)
    n_steps = -(-len(load_data(cfg.data).train) // 16)
    counter = _Counter(monkeypatch, 1, n_steps - 1)
    stats = _epoch(cfg, counter)
    assert stats.steps == n_steps > 10
    assert counter.calls == []


def test_reads_happen_only_at_finite_checks_and_logged_steps(tiny_cfg, monkeypatch):
    """With the default cadence the only reads of steps 2..N-1 are the finiteness checks
    (every FINITE_CHECK_EVERY steps) and the steps on_step asks statistics for."""
    cfg = tiny_cfg("batch.size=16", "batch.max_micro_batch=8")
    n_steps = -(-len(load_data(cfg.data).train) // 16)
    counter = _Counter(monkeypatch, 1, n_steps - 1)
    counter.wants_stats = lambda step, n: step % 10 == 0
    seen = {}

    def on_step(step, n, info):
        if step % 10 == 0:
            seen[step] = info
        else:
            counter(step, n, info)
        counter.step, counter.on = step, 1 <= step < n - 1

    on_step.wants_stats = counter.wants_stats
    _epoch(cfg, on_step)
    every = E.FINITE_CHECK_EVERY
    # a read made after step s's on_step belongs to step s + 1
    steps = {s + 1 for s, _ in counter.calls}
    assert steps == {s for s in range(2, n_steps) if s % every == 0 or s % 10 == 0}
    assert all(isinstance(i["loss"], float) and isinstance(i["acc"], float) for i in seen.values())


def test_divergence_is_named_at_its_step_and_stops_within_the_check_interval(tiny_cfg, monkeypatch):
    """A NaN at step 3 is reported as step 3, found at the first check after it."""
    real = E.accumulate_gradients
    calls = {"n": 0, "after": 0}

    def poisoned(*a, **kw):
        calls["n"] += 1
        out = real(*a, **kw)
        if calls["n"] == 4:
            out[0] = float("nan")
        elif calls["n"] > 4:
            calls["after"] += 1
        return out

    monkeypatch.setattr(E, "accumulate_gradients", poisoned)
    with pytest.raises(T.TrainingDiverged, match=r"epoch 0, step 3 \(0-based\)"):
        _epoch(tiny_cfg("batch.size=16"), None)
    assert calls["after"] == E.FINITE_CHECK_EVERY - 4  # the check at step 15 stopped it


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_adversarial_count_equals_the_mask_it_replaced(world):
    """The count from sizes is the number of this rank's positions among the first
    round(r * B) of the logical batch (the mask the trainer used to build), and those
    positions are a prefix of the rank's share."""
    for n in (1, 2, 7, 16, 33, 64):
        batch = torch.arange(100, 100 + n)
        for r in (0.0, 0.1, 0.2, 0.25, 0.5, 0.99, 1.0):
            n_adv = int(round(r * n))
            for rank in range(world):
                local = local_positions(batch, rank, world)
                mask = (local - batch[0]) < n_adv
                k = E._adversarial_count(n, r, rank, world)
                assert k == int(mask.sum())
                assert mask[:k].all() and not mask[k:].any()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_cuda_epoch_runs_under_sync_debug_error(tiny_cfg):
    """Steps 2..N-1 of a CUDA epoch with data on the device, the noise meter on and FGSM
    make no synchronizing call (torch.cuda.set_sync_debug_mode("error") raises on one)."""
    cfg = tiny_cfg(
        "train.device=cuda",
        "batch.size=16",
        "batch.max_micro_batch=8",
        "adversarial.fraction=0.25",
    )
    torch.manual_seed(0)
    data = load_data(cfg.data)
    dev = torch.device("cuda")
    from absa.engine.accel import to_device_data

    data.train, _ = to_device_data(data.train, dev, True)
    model = build_model(cfg.model.name, data.info, cfg.model.width).to(dev)
    opt = T.make_optimizer(model, cfg)
    env = DistEnv(device=dev)
    n_steps = -(-len(data.train) // 16)
    saved = E.FINITE_CHECK_EVERY
    E.FINITE_CHECK_EVERY = 10**6

    def on_step(step, n, info):
        torch.cuda.set_sync_debug_mode("error" if 1 <= step < n - 1 else "default")

    on_step.wants_stats = lambda step, n: False
    try:
        stats = T.train_epoch(
            model, opt, data, cfg, env, T.policy_for(cfg), 0, on_step, T.noise_meter(cfg, None)
        )
    finally:
        torch.cuda.set_sync_debug_mode("default")
        E.FINITE_CHECK_EVERY = saved
    assert stats.steps == n_steps


def test_bench_epoch_runs_end_to_end_in_tiny_cpu_mode():
    """scripts/bench_epoch.py --device cpu --tiny: every column of the GPU benchmark, in
    seconds; without CUDA the default mode says so and exits 0."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    script = [sys.executable, str(root / "scripts/bench_epoch.py")]
    env = {"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [*script, "--device", "cpu", "--tiny"], capture_output=True, text=True, env=env
    )
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert "absa/bare" in lines[1] and "FGSM" in lines[1]
    assert [ln.split()[2] for ln in lines[2:4]] == ["fp32", "bf16+cl"]
    if not torch.cuda.is_available():
        out = subprocess.run(script, capture_output=True, text=True, env=env)
        assert out.returncode == 0 and "no CUDA device" in out.stdout
