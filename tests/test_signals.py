"""Signals for batch-size policies: the redesign changes no numbers, the gradient-noise
estimators match closed forms, the eigenvalue's stderr matches a dense per-sample Hessian,
and the noise/curvature/hybrid/ramp policies follow hand-computed sequences."""

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from absa.core.hessian import LinearSoftmaxHessian, rayleigh_stderr, top_eigen
from absa.core.policies import (
    GNS,
    IP_VARIANCE,
    LAMBDA,
    LAMBDA_STDERR,
    NOISE,
    NOISE_G2,
    NOISE_TRACE,
    Hybrid,
    InnerProduct,
    Seesaw,
    build_policy,
)
from absa.engine import loop as T
from absa.engine.probes import NoiseMeter
from absa.run import config as C
from absa.run.folder import read_metrics

ROOT = Path(__file__).resolve().parent.parent


# --- the redesign is bit for bit ------------------------------------------------------------


def _recorded_trajectories():
    import record_reference as R

    return R, json.loads((ROOT / "tests/data/digits_reference.json").read_text())


def test_digits_configs_match_the_trajectories_recorded_before_the_redesign():
    """tests/data/digits_reference.json was written by tests/record_reference.py with the
    code before the signals seam (policy registry, probes module, noise meter on by
    default); the same five configs must give the same trajectories. Bit for bit on the CPU
    that recorded them (same fingerprint: one thread, deterministic kernels pinned to AVX2 by
    PINNED_ENV); on any other CPU the kernels still round differently, so batches, lrs,
    updates, adversarial counts and probed epochs must match exactly and the losses and
    weights within record_reference.TOLERANCE. For ABS/ABSA, lambda_max near the growth
    threshold can flip a growth on another CPU: the test then fails, rightly, since the
    trajectory changed (re-record there, with the code before a change, to compare)."""
    import os
    import platform
    import subprocess
    import sys

    R, ref = _recorded_trajectories()
    x86 = platform.machine().lower() in ("x86_64", "amd64")
    env = {**os.environ, **(R.PINNED_ENV if x86 else {})}
    script = ROOT / "tests/record_reference.py"
    out = subprocess.run(
        [sys.executable, str(script), "--print"], env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    exact = ref.get("cpu") == got["cpu"]
    assert R.differences(got, ref, exact=exact) == [], f"bit-exact: {exact}"


def test_the_tolerant_trajectory_check_catches_real_changes():
    """Off the recording's CPU: a moved growth, a one-in-a-million lr change or a 1% loss
    change in a large-batch run fail; the recording itself passes (and bit-exactly fails
    on a one-ulp loss change)."""
    import copy

    R, ref = _recorded_trajectories()
    assert R.differences(ref, ref, exact=False) == [] == R.differences(ref, ref, exact=True)

    def changed(case, epoch, key, f):
        d = copy.deepcopy(ref)
        d[case]["epochs"][epoch][key] = f(d[case]["epochs"][epoch][key])
        return R.differences(d, ref, exact=False), R.differences(d, ref, exact=True)

    assert [r["batch_size"] for r in ref["abs"]["epochs"]] == [32, 32, 64, 64]
    moved = changed("abs", 2, "batch_size", lambda b: 32)  # the growth one epoch later
    assert moved[0] == moved[1] == ["abs epoch 2 batch_size: 32, recorded 64"]
    for case in R.CASES:
        assert changed(case, 1, "lr", lambda lr: lr * (1 + 1e-6))[0], case
    assert changed("bl", 3, "train_loss", lambda v: v * 1.01)[0]
    assert changed("fb", 3, "test_loss", lambda v: v * 0.99)[0]
    assert changed("absa", 3, "train_loss", lambda v: v * 1.1)[0]
    ulp = changed("gg", 0, "train_loss", lambda v: math.nextafter(v, 0))
    assert ulp[0] == [] and [x.split(":")[0] for x in ulp[1]] == ["gg epoch 0 train_loss"]


def test_noise_meter_does_not_change_training(tiny_cfg, tmp_path):
    """Micro-batch differencing and the half-batch backward leave .grad untouched."""
    for micro, split in ((16, 0), (64, 64)):  # accumulation path; single-micro split path
        common = [f"batch.max_micro_batch={micro}", f"signals.noise_split_steps={split}"]
        a = T.run(tiny_cfg(*common, "signals.noise=true"), run_dir=tmp_path / f"on{micro}")
        b = T.run(tiny_cfg(*common, "signals.noise=false"), run_dir=tmp_path / f"off{micro}")
        wa = torch.load(tmp_path / f"on{micro}" / "last.pt", weights_only=True)["model"]
        wb = torch.load(tmp_path / f"off{micro}" / "last.pt", weights_only=True)["model"]
        assert all(torch.equal(wa[k], wb[k]) for k in wa) and a.test_acc == b.test_acc
        on = read_metrics(tmp_path / f"on{micro}")
        assert all(r["noise_steps"] > 0 and "noise_scale" in r for r in on)
        assert "noise_scale" not in read_metrics(tmp_path / f"off{micro}")[0]


# --- gradient noise: closed forms -----------------------------------------------------------


def _feed(meter, G, sigma, b, m, steps, gen, split_last=False):
    """Per-sample gradients g_i = G + sigma * xi_i (isotropic): m micro-batches of b."""
    params = [torch.nn.Parameter(torch.zeros_like(G))]
    for _ in range(steps):
        meter.begin_step(params)
        total = torch.zeros_like(G)
        for _j in range(m):
            g = G + sigma * torch.randn(b, G.numel(), generator=gen, dtype=G.dtype).mean(0)
            total += g * b
            params[0].grad = total / (m * b)  # .grad as accumulation leaves it (scale 1/B)
            meter.micro_done(params, b, 1 / (m * b))
        meter.end_step(params, m * b)


def test_noise_scale_on_an_isotropic_model_equals_the_closed_form():
    """tr(Sigma) = d sigma^2, |G|^2 known, B_simple = d sigma^2 / |G|^2; along u = G/|G| the
    per-sample variance is sigma^2."""
    gen = torch.Generator().manual_seed(0)
    d, sigma = 50, 2.0
    G = torch.full((d,), 0.5, dtype=torch.float64)  # |G|^2 = 12.5
    meter = NoiseMeter(ema=0.999)
    _feed(meter, G, sigma, b=16, m=8, steps=3000, gen=gen)
    sig = meter.epoch_signals()
    assert sig[NOISE_G2] == pytest.approx(12.5, rel=0.05)
    assert sig[NOISE_TRACE] == pytest.approx(d * sigma**2, rel=0.05)
    assert sig[NOISE] == pytest.approx(d * sigma**2 / 12.5, rel=0.08)
    assert sig[IP_VARIANCE] == pytest.approx(sigma**2, rel=0.1)
    assert sig["noise_snr"] > 10 and sig["noise_steps"] == 3000


def test_noise_meter_state_round_trip_resumes_exactly():
    gen = torch.Generator().manual_seed(1)
    G = torch.ones(5, dtype=torch.float64)
    a = NoiseMeter(ema=0.9)
    _feed(a, G, 1.0, 4, 3, 20, gen)
    b = NoiseMeter(ema=0.9)
    b.load_state_dict(json.loads(json.dumps({**a.state_dict(), "direction": None})))
    b.direction = a.direction
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    _feed(a, G, 1.0, 4, 3, 5, g1)
    _feed(b, G, 1.0, 4, 3, 5, g2)
    assert a.epoch_signals()[NOISE] == b.epoch_signals()[NOISE]


# --- lambda_max's standard error --------------------------------------------------------------


def test_rayleigh_stderr_matches_dense_per_sample_hessians():
    """Last layer: lambda = mean_i v^T H_i v; stderr = std_i(v^T H_i v) / sqrt(N), with each
    H_i the dense Hessian of sample i's loss (torch.autograd.functional.hessian)."""
    torch.manual_seed(0)
    head = torch.nn.Linear(4, 3).double()
    feats = torch.randn(40, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (40,))
    op = LinearSoftmaxHessian(head, [feats], [y])
    res = top_eigen(op, k=1, method="lanczos", max_iter=15)
    v = res.vectors[0] / res.vectors[0].norm()
    err, hvps = rayleigh_stderr(op, v)

    def loss_i(i):
        def f(flat):
            W, b = flat[:12].view(3, 4), flat[12:]
            return F.cross_entropy((feats[i] @ W.T + b)[None], y[i : i + 1])

        return f

    theta = torch.cat([head.weight.reshape(-1), head.bias]).detach()
    q = torch.stack(
        [v @ torch.autograd.functional.hessian(loss_i(i), theta) @ v for i in range(40)]
    )
    assert q.mean().item() == pytest.approx(res.values[0], rel=1e-6)
    assert err == pytest.approx(q.std().item() / math.sqrt(40), rel=1e-6) and hvps == 1


# --- policies on hand-computed sequences ------------------------------------------------------

COMMON = dict(base_batch=64, max_batch=512, lr=0.1, total_epochs=20)


def test_gns_grows_while_the_batch_is_below_the_noise_scale():
    p = GNS(**COMMON, gns_ratio=1.0)
    seq = [100.0, 100.0, 300.0, None, 1000.0, 1000.0]  # B_simple per epoch
    batches, triggers = [], []
    for e, b_simple in enumerate(seq):
        plan = p.plan(e)
        assert plan.wants == ({NOISE} if plan.batch_size < 512 else set())
        batches.append(plan.batch_size)
        g = p.observe(e, {NOISE: b_simple})
        triggers.append(g and (g.trigger, g.noise_scale))
    # 64 < 100: grow; 128 >= 100: stay; 128 < 300: grow; no estimate: stay; 256 < 1000;
    # 512 is the cap
    assert batches == [64, 128, 128, 256, 256, 512]
    assert triggers == [("noise", 100.0), None, ("noise", 300.0), None, ("noise", 1000.0), None]
    assert p.plan(6).lr == pytest.approx(0.8)  # linear rule: x2 per growth


def test_norm_test_is_gns_with_ratio_one_over_theta_squared():
    theta = 0.5
    p = build_policy("gns", **COMMON, gns_ratio=1 / theta**2)
    assert p.observe(0, {NOISE: 20.0}) is not None  # 64 < 80 = B_simple / theta^2
    q = build_policy("gns", **COMMON, gns_ratio=1 / theta**2)
    assert q.observe(0, {NOISE: 15.0}) is None  # 64 >= 60


def test_inner_product_test_conditions():
    p = InnerProduct(**COMMON, theta=0.5, nu=2.0)
    # B = 64, |G|^2 = 1: inner product fails when ip / 64 > 0.25, i.e. ip > 16
    assert p.observe(0, {NOISE_G2: 1.0, NOISE_TRACE: 20.0, IP_VARIANCE: 10.0}) is None
    g = p.observe(1, {NOISE_G2: 1.0, NOISE_TRACE: 20.0, IP_VARIANCE: 17.0})
    assert g.trigger == "noise" and g.new_batch == 128
    # B = 128: orthogonality fails when (trace - ip) / 128 > 4, i.e. trace - ip > 512
    assert p.observe(2, {NOISE_G2: 1.0, NOISE_TRACE: 600.0, IP_VARIANCE: 10.0}).new_batch == 256


def test_hybrid_vetoes_curvature_growth_above_the_noise_scale():
    p = Hybrid(**COMMON, duration=100)
    assert p.plan(0).wants == {LAMBDA, NOISE}
    p.observe(0, {LAMBDA: 4.0, NOISE: 1000.0})  # reference 4
    assert p.observe(1, {LAMBDA: 1.0, NOISE: 32.0}) is None  # lambda halved, but 64 >= 32
    assert p.state_dict()["vetoes"] == [1]
    g = p.observe(2, {LAMBDA: 1.0, NOISE: 100.0})  # 64 < 100: allowed
    assert g.trigger == "eigenvalue" and g.new_batch == 128 and g.noise_scale == 100.0


def test_confidence_gates_the_eigenvalue_trigger():
    p = build_policy("abs", **COMMON, confidence=True, duration=100)
    assert p.plan(0).wants == {LAMBDA, LAMBDA_STDERR}
    p.observe(0, {LAMBDA: 4.0, LAMBDA_STDERR: 0.1})
    assert p.observe(1, {LAMBDA: 1.9, LAMBDA_STDERR: 0.1}) is None  # 1.9 + 0.2 > 2
    assert p.observe(2, {LAMBDA: 1.9, LAMBDA_STDERR: None}) is None  # unknown error: no
    g = p.observe(3, {LAMBDA: 1.5, LAMBDA_STDERR: 0.2})  # 1.9 <= 2
    assert g.trigger == "eigenvalue_confident"


def test_lr_guard_caps_the_lr_at_the_stability_limit():
    # lambda 10, momentum 0.9: eta * lambda < 2 (1 + 0.9) -> eta <= 0.38
    p = build_policy("abs", **{**COMMON, "lr": 0.3}, duration=1, lr_guard=True, momentum=0.9)
    g = p.observe(0, {LAMBDA: 10.0})  # duration growth: 0.3 -> 0.6, capped at 0.38
    assert g.new_lr == pytest.approx(0.38) and g.lr_cap == pytest.approx(0.38)
    assert p.plan(1).lr == pytest.approx(0.38)
    g = p.observe(1, {LAMBDA: 1.0})  # limit 3.8: 0.38 x 2 = 0.76 is below, no cap
    assert g.new_lr == pytest.approx(0.76) and g.lr_cap is None


def test_seesaw_schedule():
    """rho = 0.25: each decay epoch B x4 and lr x0.5 until B_max = 512; then lr x0.25 and a
    partial step keeps eta / sqrt(B) on the step-decay path."""
    p = Seesaw(base_batch=32, max_batch=512, lr=0.4, decay_epochs=[2, 4, 6], decay_factor=0.25)
    plans = [(p.plan(e).batch_size, p.plan(e).lr) for e in range(8)]
    assert [b for b, _ in plans] == [32, 32, 128, 128, 512, 512, 512, 512]
    lrs = [lr for _, lr in plans]
    assert lrs == pytest.approx([0.4, 0.4, 0.2, 0.2, 0.1, 0.1, 0.025, 0.025])


# --- end to end: every method from the same config --------------------------------------------


@pytest.mark.parametrize("method", ["gns", "inner_product", "hybrid", "seesaw"])
def test_new_methods_train_from_the_digits_absa_config(method, tmp_path):
    cfg = C.load(
        ROOT / "configs/digits_absa.yaml",
        [f"schedule.method={method}", "train.epochs=3", "optim.decay_epochs=[1]",
         "train.device=cpu", f"train.out_dir={tmp_path}", "hessian.probe_size=256", "train.threads=1"],
    )  # fmt: skip
    s = T.run(cfg, run_dir=tmp_path / method)
    rows = read_metrics(tmp_path / method)
    assert len(rows) == 3 and all(r["noise_steps"] > 0 and "noise_scale" in r for r in rows)
    assert all((r["lambda_max_stderr"] is not None) == (r["lambda_max"] is not None) for r in rows)
    if method == "hybrid":
        assert rows[0]["lambda_max"] is not None
    if method == "seesaw":
        assert [r["batch_size"] for r in rows] == [32, 160, 160]  # B / rho at the decay
        assert rows[1]["lr"] == pytest.approx(0.05 * math.sqrt(0.2))
    assert s.epochs == 3


def test_split_steps_are_evenly_spaced_and_all_when_asked_for_more():
    from absa.engine.epoch import _split_steps

    assert _split_steps(43, 0) == set()
    assert _split_steps(10, 4) == {0, 2, 5, 8}  # round(i * 10 / 4), i < 4 (half to even)
    for k in (43, 44, 10**6):
        assert _split_steps(43, k) == set(range(43))


def test_keep_graph_leaves_training_unchanged(tiny_cfg, tmp_path):
    """hessian.keep_graph on a full-model probe: same eigenvalues, HVP counts and weights."""
    common = ["schedule.method=abs", "schedule.max_batch=256", "hessian.block=full"]
    common += ["hessian.probe_size=128", "hessian.max_iter=5", "train.threads=1"]
    runs = {}
    for keep in ("false", "true"):
        T.run(tiny_cfg(*common, f"hessian.keep_graph={keep}"), run_dir=tmp_path / keep)
        runs[keep] = read_metrics(tmp_path / keep)
    pick = ("lambda_max", "lambda_max_stderr", "batch_size", "train_loss")
    assert [[r.get(k) for k in pick] for r in runs["true"]] == [
        [r.get(k) for k in pick] for r in runs["false"]
    ]
    assert all(r["lambda_max"] is not None for r in runs["true"])
    wa, wb = (torch.load(tmp_path / k / "last.pt", weights_only=True)["model"] for k in runs)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_keep_graph_config_needs_reverse():
    with pytest.raises(ValueError, match="hessian.keep_graph: needs hessian.hvp reverse"):
        C.load(None, ["hessian.keep_graph=true", "hessian.hvp=forward"])
