"""Cost of the top Hessian eigenvalue against the cost of training, measured in one run.

For each model (default: small_cnn, then resnet18 in its CIFAR variant) on CIFAR-shaped
synthetic data (3x32x32, 10 classes):

1. Epoch-equivalent: absa's training epoch (SGD, batch 128, micro-batches <= 256) over the
   probe-set samples, timed directly, then extrapolated to a 50k-sample epoch
   (seconds per sample x 50,000). The model is warm (one untimed step on a copy first).
2. Top eigenvalue, BatchNorm in eval mode (restored after), power iteration with
   max_iter 20 and rtol 1e-3:
   - last layer, fast path (``last_layer_operator``: features once, closed-form HVP);
   - full model (``HessianOperator`` on ``select_params(model, "full")``, data in chunks).
   Each as a ratio to the measured epoch and to the extrapolated 50k-sample epoch.
   ResNet-18's full model is expensive on CPU: it uses a small probe (--full-probe), few
   iterations (--full-iters) and small chunks (--full-chunk); one HVP on one chunk is timed
   first and the run is skipped when the estimate exceeds --full-budget seconds, unless
   --full-resnet18 forces it.
3. Power iteration vs Lanczos: HVPs to reach rtol 1e-3 on the top eigenvalue (same start
   vector, up to --cmp-max-iter HVPs) on the last layer of every model and on the full
   model of the small ones; agreement of the eigenvalues (relative difference) and vectors.

4. HVP cost (--sections hvp): on --hvp-samples samples in chunks of --hvp-chunk, full model,
   BatchNorm in eval mode: seconds per gradient (``HessianOperator.loss_and_grad``), per
   reverse HVP (double backprop, ``hvp="reverse"``), per forward HVP (forward-over-reverse
   with torch.func, ``hvp="forward"``), per reverse HVP with ``keep_graph=True`` after the
   first (only the second backward; the first product, which builds every chunk's graph,
   is timed once and the ratio judged on the mean over 20 products) and, for reference,
   forward-over-reverse with autograd dual numbers and a Gauss-Newton product (not the Hessian); medians of --hvp-reps
   interleaved rounds (wall and process CPU time), FLOPs from torch.utils.flop_counter, the
   HVP/gradient ratios (target <= 3x) and what ``hvp="auto"`` picks.

Targets: last-layer eigenvalue on a 4096-sample probe <= 3% of a 50k-sample epoch (OK/MISS);
full-model eigenvalue in as few HVPs as the tolerance allows (HVP counts reported).
Peak RSS is the process high-water mark (getrusage), printed after each phase.

    python scripts/bench_hessian.py [--models small_cnn,resnet18] [--probe 4096]
        [--full-resnet18] [--full-probe 256] [--full-iters 5] [--cmp-max-iter 60]
        [--sections main,hvp] [--hvp-models small_cnn,resnet8] [--hvp-samples 512]
        [--hvp-chunk 128] [--hvp-reps 5]
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import resource
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from absa.core.hessian import (
    EigenResult,
    HessianOperator,
    last_layer_operator,
    select_params,
    top_eigen,
)
from absa.distributed import DistEnv
from absa.engine import loop as T
from absa.engine.probes import probe_indices
from absa.run import config as C
from absa.run.data import Data, load_data
from absa.run.models import build_model, count_params, model_mode

EPOCH_50K = 50_000
TARGET_LAST = 0.03  # last-layer eigenvalue / 50k-sample epoch
TARGET_PROBE = 4096
KEPT = "reverse HVP, graph kept (keep_graph)"
HEAVY_PARAMS = 1_000_000  # above this, the full model gets the reduced CPU settings


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def rss_note() -> str:
    return f"[peak RSS so far {peak_rss_mib():,.0f} MiB]"


class Clock:
    """Wall time and process CPU time (all threads) since creation."""

    def __init__(self) -> None:
        self.w0, self.c0 = time.perf_counter(), time.process_time()

    def wall(self) -> float:
        return time.perf_counter() - self.w0

    def cpu(self) -> float:
        return time.process_time() - self.c0


def _cfg(args: argparse.Namespace, model: str) -> C.Config:
    return C.load(
        None,
        [
            "data.name=synthetic",
            f"data.train_size={args.probe}",
            "data.test_size=64",
            f"data.augment={args.augment}",
            f"model.name={model}",
            f"model.width={args.width}",
            f"batch.size={args.batch}",
            f"batch.max_micro_batch={args.micro}",
            "train.epochs=1",
            f"train.seed={args.seed}",
            "train.deterministic=false",
            f"optim.lr={args.lr}",
        ],
    )


@dataclass
class Eig:
    """One eigenvalue run, timed."""

    method: str
    value: float
    n_hvp: int
    converged: bool
    seconds: float
    vector: torch.Tensor

    @classmethod
    def of(cls, method: str, res: EigenResult, seconds: float) -> Eig:
        return cls(method, res.values[0], res.n_hvp, res.converged, seconds, res.vectors[0])

    def line(self) -> str:
        conv = "converged" if self.converged else "NOT converged"
        return (
            f"{self.method:8s} lambda_max {self.value:12.6g}  {self.n_hvp:3d} HVPs  "
            f"{conv:13s}  {self.seconds:8.2f} s"
        )


@dataclass
class ModelReport:
    name: str
    params: int
    epoch_s: float = 0.0
    epoch_samples: int = 0
    last_s: float = 0.0
    last_feat_s: float = 0.0
    last_hvp: int = 0
    last_probe: int = 0
    full: dict[str, float | int | str] = field(default_factory=dict)
    compare: list[tuple[str, Eig, Eig]] = field(default_factory=list)

    @property
    def per_sample(self) -> float:
        return self.epoch_s / self.epoch_samples

    @property
    def epoch_50k(self) -> float:
        return self.per_sample * EPOCH_50K


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _chunks(data: Data, idx: torch.Tensor, size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [data.train.get(c) for c in idx.split(size)]


def time_epoch(model: nn.Module, data: Data, cfg: C.Config) -> tuple[float, float]:
    """One absa training epoch over the probe samples (train mode), after a warm-up step."""
    warm = copy.deepcopy(model)
    warm.train()
    x, y = data.train.get(torch.arange(min(cfg.batch.size, len(data.train))))
    F.cross_entropy(warm(x), y).backward()
    del warm
    opt = T.make_optimizer(model, cfg)
    policy = T.policy_for(cfg)
    clock = Clock()
    T.train_epoch(model, opt, data, cfg, DistEnv(), policy, 0)
    return clock.wall(), clock.cpu()


def power_lanczos(op, args: argparse.Namespace, seed: int, power: Eig | None = None):
    """Power (the given run is reused when it converged within the cap) and Lanczos, both
    from the same start vector and capped at --cmp-max-iter HVPs."""
    if power is None or not power.converged or power.n_hvp > args.cmp_max_iter:
        t0 = time.perf_counter()
        res = top_eigen(op, 1, "power", args.cmp_max_iter, args.rtol, generator=_gen(seed))
        power = Eig.of("power", res, time.perf_counter() - t0)
    t0 = time.perf_counter()
    res = top_eigen(op, 1, "lanczos", args.cmp_max_iter, args.rtol, generator=_gen(seed))
    lanczos = Eig.of("lanczos", res, time.perf_counter() - t0)
    return power, lanczos


def print_compare(label: str, p: Eig, q: Eig, agree_tol: float) -> None:
    rel = abs(p.value - q.value) / max(abs(q.value), 1e-30)
    cos = float((p.vector.double() @ q.vector.double()).abs())
    ok = rel <= agree_tol
    print(f"    {p.line()}")
    print(f"    {q.line()}")
    print(
        f"    {label}: relative difference {rel:.2e}, |cos(v_power, v_lanczos)| {cos:.4f}  "
        f"-> {'agree' if ok else 'DISAGREE'} (tolerance {agree_tol:g})"
    )


def bench_model(name: str, data: Data, args: argparse.Namespace) -> ModelReport:
    cfg = _cfg(args, name)
    torch.manual_seed(args.seed)
    model = build_model(name, data.info, args.width)
    rep = ModelReport(name, count_params(model))
    heavy = rep.params > HEAVY_PARAMS
    print(f"\n=== {name}: {rep.params:,} parameters ===")

    # 1. epoch-equivalent
    rep.epoch_s, cpu = time_epoch(model, data, cfg)
    rep.epoch_samples = len(data.train)
    steps = -(-rep.epoch_samples // args.batch)
    print(
        f"[1] epoch on {rep.epoch_samples} samples ({steps} SGD steps, batch {args.batch}, "
        f"micro <= {args.micro}, augment {args.augment}): {rep.epoch_s:.2f} s (cpu {cpu:.1f} s) "
        f"({1e3 * rep.per_sample:.2f} ms/sample) {rss_note()}"
    )
    print(f"    extrapolated 50k-sample epoch: {rep.epoch_50k:.1f} s")

    idx = probe_indices(len(data.train), args.probe, args.seed)
    rep.last_probe = len(idx)

    # 2a. last layer, fast path
    with model_mode(model, train=False):
        clock = Clock()
        batches = _chunks(data, idx, args.micro)
        op = last_layer_operator(model, batches)
        rep.last_feat_s = clock.wall()
        res = top_eigen(op, 1, "power", args.max_iter, args.rtol, generator=_gen(args.seed))
        rep.last_s, cpu = clock.wall(), clock.cpu()
        rep.last_hvp = res.n_hvp
        last_power = Eig.of("power", res, rep.last_s - rep.last_feat_s)
        print(
            f"[2] last layer ({op.dim:,} params, fast path, {rep.last_probe} probe samples, "
            f"power max_iter {args.max_iter}, rtol {args.rtol:g}):"
        )
        print(
            f"    {rep.last_s:.2f} s (cpu {cpu:.1f} s) = {rep.last_feat_s:.2f} s features + "
            f"{rep.last_s - rep.last_feat_s:.3f} s for {res.n_hvp} HVPs "
            f"({'converged' if res.converged else 'NOT converged'}), "
            f"lambda_max {res.values[0]:.6g} {rss_note()}"
        )
        print(
            f"    = {rep.last_s / rep.epoch_s:.2%} of the measured {rep.epoch_samples}-sample "
            f"epoch, {rep.last_s / rep.epoch_50k:.2%} of a 50k-sample epoch"
        )
        # 3. power vs Lanczos on the last layer (features already computed)
        p, q = power_lanczos(op, args, args.seed, last_power)
        print(
            f"[3] last layer, power vs Lanczos (rtol {args.rtol:g}, <= {args.cmp_max_iter} HVPs):"
        )
        print_compare("last layer", p, q, args.agree_tol)
        rep.compare.append(("last layer", p, q))
        del op, batches

    # 2b / 3. full model
    with model_mode(model, train=False):
        if heavy:
            bench_full_heavy(model, data, idx, args, rep)
        else:
            bench_full(model, data, idx, args, rep)
    return rep


def bench_full(
    model: nn.Module, data: Data, idx: torch.Tensor, args: argparse.Namespace, rep: ModelReport
) -> None:
    params = select_params(model, "full")
    clock = Clock()
    op = HessianOperator(model, params, _chunks(data, idx, args.micro))
    res = top_eigen(op, 1, "power", args.max_iter, args.rtol, generator=_gen(args.seed + 1))
    sec, cpu = clock.wall(), clock.cpu()
    power = Eig.of("power", res, sec)
    rep.full = {
        "status": "measured",
        "probe": len(idx),
        "seconds": sec,
        "n_hvp": res.n_hvp,
        "per_sample_hvp": sec / (res.n_hvp * len(idx)),
    }
    print(
        f"[2] full model ({op.dim:,} params, HessianOperator, {len(idx)} probe samples in "
        f"chunks of {args.micro}, power max_iter {args.max_iter}, rtol {args.rtol:g}):"
    )
    print(
        f"    {sec:.2f} s (cpu {cpu:.1f} s) for {res.n_hvp} HVPs ({sec / res.n_hvp:.2f} s/HVP, "
        f"{'converged' if res.converged else 'NOT converged'}), lambda_max {res.values[0]:.6g} "
        f"{rss_note()}"
    )
    print(
        f"    = {sec / rep.epoch_s:.2f}x the measured {rep.epoch_samples}-sample epoch, "
        f"{sec / rep.epoch_50k:.2%} of a 50k-sample epoch"
    )
    p, q = power_lanczos(op, args, args.seed + 1, power)
    rep.full["power_hvp"], rep.full["lanczos_hvp"] = p.n_hvp, q.n_hvp
    rep.full["power_conv"], rep.full["lanczos_conv"] = int(p.converged), int(q.converged)
    print(f"[3] full model, power vs Lanczos (rtol {args.rtol:g}, <= {args.cmp_max_iter} HVPs):")
    print_compare("full model", p, q, args.agree_tol)
    print(f"    {rss_note()}")
    rep.compare.append(("full model", p, q))


def bench_full_heavy(
    model: nn.Module, data: Data, idx: torch.Tensor, args: argparse.Namespace, rep: ModelReport
) -> None:
    """Full model of a large network on CPU: small probe, few iterations, timed sizing HVP."""
    params = select_params(model, "full")
    sub = idx[: args.full_probe]
    chunk = min(args.full_chunk, len(sub))
    first = [data.train.get(sub[:chunk])]
    sizing = HessianOperator(model, params, first)
    v = torch.randn(sizing.dim, generator=_gen(args.seed + 2))
    clock = Clock()
    sizing.matvec(v)
    t_chunk = clock.wall()
    per = t_chunk / chunk  # seconds per (sample x HVP)
    est = per * len(sub) * args.full_iters
    est_4096 = per * TARGET_PROBE * args.max_iter
    del sizing, first
    print(
        f"[2] full model ({sum(p.numel() for _, p in params):,} params): sizing HVP on "
        f"{chunk} samples {t_chunk:.2f} s ({1e3 * per:.1f} ms per sample-HVP) {rss_note()}"
    )
    print(
        f"    extrapolated {TARGET_PROBE} samples x {args.max_iter} HVPs: {est_4096:.0f} s "
        f"= {est_4096 / rep.epoch_50k:.1%} of a 50k-sample epoch"
    )
    rep.full = {"status": "skipped", "est_4096": est_4096, "est": est, "probe": len(sub)}
    run = args.full_resnet18 or est <= args.full_budget
    plan = f"{len(sub)} samples in chunks of {chunk}, power max_iter {args.full_iters}"
    if not run:
        print(
            f"    SKIPPED: {plan} would take ~{est:.0f} s > --full-budget {args.full_budget:g} s "
            "(force with --full-resnet18)"
        )
        return
    why = "forced by --full-resnet18" if args.full_resnet18 else f"<= {args.full_budget:g} s"
    print(f"    running {plan} (estimate {est:.0f} s, {why})")
    clock = Clock()
    op = HessianOperator(model, params, _chunks(data, sub, chunk))
    res = top_eigen(op, 1, "power", args.full_iters, args.rtol, generator=_gen(args.seed + 1))
    sec, cpu = clock.wall(), clock.cpu()
    per = sec / (res.n_hvp * len(sub))
    rep.full = {
        "status": "measured",
        "probe": len(sub),
        "seconds": sec,
        "n_hvp": res.n_hvp,
        "per_sample_hvp": per,
        "power_hvp": res.n_hvp,
        "power_conv": int(res.converged),
        "est_4096": per * TARGET_PROBE * args.max_iter,
    }
    print(
        f"    {sec:.2f} s (cpu {cpu:.1f} s) for {res.n_hvp} HVPs ({sec / res.n_hvp:.2f} s/HVP, "
        f"{'converged' if res.converged else 'NOT converged'} at rtol {args.rtol:g}), "
        f"lambda_max {res.values[0]:.6g} {rss_note()}"
    )
    print(
        f"    = {sec / rep.epoch_s:.2f}x the measured {rep.epoch_samples}-sample epoch, "
        f"{sec / rep.epoch_50k:.2%} of a 50k-sample epoch; at {TARGET_PROBE} samples x "
        f"{args.max_iter} HVPs ~{rep.full['est_4096']:.0f} s "
        f"= {rep.full['est_4096'] / rep.epoch_50k:.1%}"
    )


# --- 4. HVP cost: reverse vs forward-over-reverse vs a gradient -----------------------------

HVP_TARGET = 3.0  # exact HVP / gradient on the same samples


def _dual_hvp(model: nn.Module, names: list[str], chunks, v: dict[str, torch.Tensor]):
    """Reference: forward-over-reverse with autograd's dual numbers (torch.autograd.forward_ad)
    instead of torch.func; same product as HessianOperator(hvp="forward")."""
    import torch.autograd.forward_ad as fwad

    out = {n: torch.zeros_like(t) for n, t in v.items()}
    params = dict(model.named_parameters())
    for x, y in chunks:
        with fwad.dual_level():
            duals = {n: fwad.make_dual(params[n].detach().requires_grad_(), v[n]) for n in names}
            frozen = {n: p.detach() for n, p in params.items() if n not in duals}
            loss = F.cross_entropy(
                torch.func.functional_call(model, {**frozen, **duals}, (x,)), y, reduction="sum"
            )
            grads = torch.autograd.grad(loss, list(duals.values()))
            for n, g in zip(names, grads, strict=True):
                out[n] += fwad.unpack_dual(g).tangent
    return out


def _gauss_newton(model: nn.Module, names: list[str], chunks, v: dict[str, torch.Tensor]):
    """Reference only, NOT the Hessian: G v = J^T H_out J v (H_out: softmax cross-entropy's
    Hessian in the logits), by a jvp of the logits and one backward."""
    out = {n: torch.zeros_like(t) for n, t in v.items()}
    params = dict(model.named_parameters())
    primals = {n: params[n].detach() for n in names}
    block = [params[n] for n in names]
    for x, _y in chunks:  # H_out does not depend on the labels
        frozen = {n: p.detach() for n, p in params.items() if n not in primals}

        def logits(pb, x=x, frozen=frozen):
            return torch.func.functional_call(model, {**frozen, **pb}, (x,))

        z, jv = torch.func.jvp(logits, (primals,), (v,))
        p = torch.softmax(z.detach(), dim=1)
        hjv = p * jv - p * (p * jv).sum(dim=1, keepdim=True)
        grads = torch.autograd.grad(model(x), block, hjv)
        for n, g in zip(names, grads, strict=True):
            out[n] += g
    return out


def _flops(fn) -> float | None:
    """FLOPs of one call (torch.utils.flop_counter: matmuls and convolutions only)."""
    try:
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter:
            fn()
        return float(counter.get_total_flops())
    except Exception:  # noqa: BLE001 - the count is informative only
        return None


def bench_hvp_model(name: str, args: argparse.Namespace) -> dict[str, float | str]:
    """Seconds per gradient, per reverse / forward HVP (and references) on the same samples,
    BatchNorm in eval mode, the full model; interleaved rounds, medians."""
    import statistics

    cfg = C.load(
        None,
        ["data.name=synthetic", f"data.train_size={args.hvp_samples}", "data.test_size=64"],
    )
    data = load_data(cfg.data)
    torch.manual_seed(args.seed)
    model = build_model(name, data.info, args.width).eval()
    idx = torch.arange(len(data.train))
    chunks = [data.train.get(c) for c in idx.split(args.hvp_chunk)]
    params = select_params(model, "full")
    names = [n for n, _ in params]
    rev = HessianOperator(model, params, chunks)
    fwd = HessianOperator(model, params, chunks, hvp="forward")
    kept = HessianOperator(model, params, chunks, keep_graph=True)
    g = _gen(args.seed + 5)
    v = torch.randn(rev.dim, generator=g)
    v /= v.norm()
    vd = dict(zip(names, rev._split(v), strict=True))
    n = len(idx)

    def flat(d):
        return torch.cat([d[k].reshape(-1) for k in names]) / n

    methods = {
        "gradient": rev.loss_and_grad,
        "reverse HVP (double backprop)": lambda: rev.matvec(v),
        KEPT: lambda: kept.matvec(v),
        "forward HVP (torch.func jvp of grad)": lambda: fwd.matvec(v),
        "fwd-over-rev, dual numbers (reference)": lambda: _dual_hvp(model, names, chunks, vd),
        "Gauss-Newton product (reference, not exact)": lambda: _gauss_newton(
            model, names, chunks, vd
        ),
    }
    print(
        f"\n=== [4] HVP cost, {name}: {rev.dim:,} parameters (full block), {n} samples in "
        f"chunks of {args.hvp_chunk}, BatchNorm eval, {args.hvp_reps} interleaved rounds ==="
    )
    outs = {k: fn() for k, fn in methods.items()}  # warm-up, untimed
    ref = outs["reverse HVP (double backprop)"]
    same = torch.equal(outs[KEPT], ref)
    print(f"    {KEPT}: bitwise equal to reverse: {same}")
    build = HessianOperator(model, params, chunks, keep_graph=True)
    clock = Clock()
    build.matvec(v)  # the first product builds every chunk's graph
    t_first = clock.wall()
    del build
    for k in ("forward HVP (torch.func jvp of grad)", "fwd-over-rev, dual numbers (reference)"):
        o = outs[k] if isinstance(outs[k], torch.Tensor) else flat(outs[k])
        print(f"    {k}: |Hv - Hv_reverse| / |Hv_reverse| = {(o - ref).norm() / ref.norm():.1e}")
    gn = flat(outs["Gauss-Newton product (reference, not exact)"])
    print(
        f"    Gauss-Newton vs Hessian: v^T G v = {float(v @ gn):.4g}, v^T H v = "
        f"{float(v @ ref):.4g}, |Gv - Hv| / |Hv| = {(gn - ref).norm() / ref.norm():.2f}"
    )
    wall: dict[str, list[float]] = {k: [] for k in methods}
    cpu: dict[str, list[float]] = {k: [] for k in methods}
    keys = list(methods)
    for r in range(args.hvp_reps):
        for k in keys[r % len(keys) :] + keys[: r % len(keys)]:  # rotate the order
            clock = Clock()
            methods[k]()
            wall[k].append(clock.wall())
            cpu[k].append(clock.cpu())
    med_w = {k: statistics.median(t) for k, t in wall.items()}
    med_c = {k: statistics.median(t) for k, t in cpu.items()}
    flops = {k: _flops(fn) for k, fn in methods.items()}
    g_w, g_c, g_f = med_w["gradient"], med_c["gradient"], flops["gradient"]
    print(
        f"    {'':44s} {'s (wall)':>9s} {'/grad':>6s} {'s (cpu)':>8s} {'/grad':>6s} "
        f"{'GFLOP':>7s} {'/grad':>6s}"
    )
    for k in methods:
        fl = flops[k]
        fcol = f"{fl / 1e9:7.2f} {fl / g_f:5.2f}x" if fl and g_f else f"{'-':>7s} {'-':>6s}"
        print(
            f"    {k:44s} {med_w[k]:9.3f} {med_w[k] / g_w:5.2f}x {med_c[k]:8.3f} "
            f"{med_c[k] / g_c:5.2f}x {fcol}"
        )
    clock = Clock()
    auto = HessianOperator(model, params, chunks, hvp="auto")
    t_auto = clock.wall()
    trial = ", ".join(f"{k} {s:.3f} s" for k, s in auto.hvp_timings.items())
    print(
        f"    hvp=auto: picked {auto.hvp_mode} (trial on the first chunk: {trial}; "
        f"agreement {auto.hvp_agreement:.1e}; construction {t_auto:.2f} s)"
    )
    exact = {"reverse": med_w["reverse HVP (double backprop)"]}
    exact["forward"] = med_w["forward HVP (torch.func jvp of grad)"]
    # keep_graph, judged by its mean over the default probe of max_iter 20 products
    # (the first one builds the graphs): (first + 19 x later) / 20
    amortized = (t_first + 19 * med_w[KEPT]) / 20
    exact["keep_graph"] = amortized
    print(
        f"    keep_graph: first product {t_first:.3f} s ({t_first / g_w:.2f}x a gradient, builds "
        f"the graphs), later ones {med_w[KEPT] / g_w:.2f}x, mean over 20 {amortized / g_w:.2f}x"
    )
    best = min(exact, key=exact.get)
    ratio = exact[best] / g_w
    print(
        f"    best exact HVP: {best}, {ratio:.2f}x a gradient (target <= {HVP_TARGET:g}x)  "
        f"{'OK' if ratio <= HVP_TARGET else 'MISS'}  {rss_note()}"
    )
    return {
        "model": name,
        "params": rev.dim,
        "gradient_s": g_w,
        "reverse_x": exact["reverse"] / g_w,
        "forward_x": exact["forward"] / g_w,
        "kept_x": amortized / g_w,
        "dual_x": med_w["fwd-over-rev, dual numbers (reference)"] / g_w,
        "gn_x": med_w["Gauss-Newton product (reference, not exact)"] / g_w,
        "reverse_cpu_x": med_c["reverse HVP (double backprop)"] / g_c,
        "forward_cpu_x": med_c["forward HVP (torch.func jvp of grad)"] / g_c,
        "flop_x": (flops["reverse HVP (double backprop)"] or 0) / g_f if g_f else float("nan"),
        "auto": auto.hvp_mode,
        "best": best,
        "best_x": ratio,
    }


def hvp_summary(rows: list[dict[str, float | str]]) -> None:
    print("\n=== [4] HVP / gradient cost ratios (wall-clock medians; cpu in brackets) ===")
    print(
        f"{'model':10s} {'params':>9s} {'grad s':>7s} {'reverse':>14s} {'forward':>14s} "
        f"{'kept/20':>8s} {'dual(ref)':>9s} {'GN(ref)':>8s} {'FLOPs rev':>9s} {'auto':>8s}  "
        "target <= 3x"
    )
    for r in rows:
        print(
            f"{r['model']:10s} {r['params']:9,d} {r['gradient_s']:7.3f} "
            f"{r['reverse_x']:5.2f}x ({r['reverse_cpu_x']:4.2f}x) "
            f"{r['forward_x']:5.2f}x ({r['forward_cpu_x']:4.2f}x) {r['kept_x']:7.2f}x "
            f"{r['dual_x']:8.2f}x "
            f"{r['gn_x']:7.2f}x {r['flop_x']:8.2f}x {r['auto']:>8s}  "
            f"{r['best']} {r['best_x']:.2f}x {'OK' if r['best_x'] <= HVP_TARGET else 'MISS'}"
        )


def summary(reps: list[ModelReport], args: argparse.Namespace) -> None:
    print("\n=== summary ===")
    head = (
        f"{'model':10s} {'params':>11s} {'epoch(probe)':>12s} {'epoch(50k)':>10s} "
        f"{'last-layer':>10s} {'/50k':>7s} {'full':>10s} {'/50k':>7s}"
    )
    print(head)
    for r in reps:
        if r.full.get("status") == "measured":
            full = f"{r.full['seconds']:.1f}s"
            frac = f"{r.full['seconds'] / r.epoch_50k:.1%}"
            full += f"@{r.full['probe']}"
        else:
            full, frac = "skipped", "-"
        print(
            f"{r.name:10s} {r.params:11,d} {r.epoch_s:11.1f}s {r.epoch_50k:9.0f}s "
            f"{r.last_s:9.2f}s {r.last_s / r.epoch_50k:7.2%} {full:>10s} {frac:>7s}"
        )
    print("\nTargets:")
    for r in reps:
        frac = r.last_s / r.epoch_50k
        note = "" if r.last_probe == TARGET_PROBE else f" (target is for {TARGET_PROBE})"
        print(
            f"  {r.name}: last-layer top eigenvalue on a {r.last_probe}-sample probe{note} = "
            f"{frac:.2%} of a 50k-sample epoch (target <= {TARGET_LAST:.0%})  "
            f"{'OK' if frac <= TARGET_LAST else 'MISS'}"
        )
    for r in reps:
        f = r.full
        if "lanczos_hvp" in f:
            print(
                f"  {r.name}: full-model top eigenvalue at rtol {args.rtol:g}: power "
                f"{f['power_hvp']} HVPs{'' if f['power_conv'] else ' (not converged)'}, "
                f"Lanczos {f['lanczos_hvp']} HVPs{'' if f['lanczos_conv'] else ' (not converged)'}"
                "  (reported)"
            )
        elif f.get("status") == "measured":
            print(
                f"  {r.name}: full-model top eigenvalue: power {f['power_hvp']} HVPs "
                f"(max_iter {args.full_iters}, "
                f"{'converged' if f['power_conv'] else 'not converged'}; no Lanczos run)"
                "  (reported)"
            )
        else:
            print(f"  {r.name}: full-model top eigenvalue not run (skipped; see above)")
    for r in reps:
        for label, p, q in r.compare:
            rel = abs(p.value - q.value) / max(abs(q.value), 1e-30)
            print(
                f"  {r.name} {label}: HVPs to rtol {args.rtol:g}: power {p.n_hvp}, "
                f"Lanczos {q.n_hvp}; eigenvalues "
                f"{'agree' if rel <= args.agree_tol else 'DISAGREE'} (rel. diff {rel:.1e})"
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--models", default="small_cnn,resnet18", help="comma-separated model names")
    ap.add_argument("--width", type=int, default=16, help="width of the small models")
    ap.add_argument(
        "--probe", type=int, default=TARGET_PROBE, help="probe-set size = epoch samples"
    )
    ap.add_argument("--batch", type=int, default=128, help="SGD batch of the epoch")
    ap.add_argument(
        "--micro", type=int, default=256, help="max micro-batch / feature and HVP chunk"
    )
    ap.add_argument("--augment", default="auto", choices=["auto", "none", "crop", "crop_flip"])
    ap.add_argument("--lr", type=float, default=0.1, help="SGD learning rate of the epoch")
    ap.add_argument("--max-iter", type=int, default=20, help="power iterations (timed runs)")
    ap.add_argument("--rtol", type=float, default=1e-3)
    ap.add_argument("--cmp-max-iter", type=int, default=60, help="HVP cap in power vs Lanczos runs")
    ap.add_argument(
        "--agree-tol", type=float, default=1e-2, help="relative difference counted as agreement"
    )
    ap.add_argument(
        "--full-probe", type=int, default=256, help="probe samples, full model of large nets"
    )
    ap.add_argument(
        "--full-iters", type=int, default=5, help="power max_iter, full model of large nets"
    )
    ap.add_argument(
        "--full-chunk", type=int, default=64, help="HVP chunk, full model of large nets"
    )
    ap.add_argument(
        "--full-budget",
        type=float,
        default=180.0,
        help="run the large-net full model only if estimated <= this many seconds",
    )
    ap.add_argument(
        "--full-resnet18",
        action="store_true",
        help="run the full model of large nets (ResNet-18) whatever the estimate",
    )
    ap.add_argument(
        "--sections",
        default="main,hvp",
        help="main: sections 1-3 (epoch, eigenvalues, power vs Lanczos); hvp: section 4",
    )
    ap.add_argument("--hvp-models", default="small_cnn,resnet8", help="models of section 4")
    ap.add_argument("--hvp-samples", type=int, default=512, help="section 4: samples per pass")
    ap.add_argument("--hvp-chunk", type=int, default=128, help="section 4: chunk (micro-batch)")
    ap.add_argument("--hvp-reps", type=int, default=5, help="section 4: interleaved rounds")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    sections = {s.strip() for s in args.sections.split(",") if s.strip()}
    if not sections <= {"main", "hvp"}:
        ap.error(f"--sections: unknown {sorted(sections - {'main', 'hvp'})} (valid: main, hvp)")
    if args.micro > 256:
        print(f"warning: --micro {args.micro} > 256; glibc malloc makes big batches slow here")

    total = Clock()
    load0 = os.getloadavg()[0]
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, load {load0:.1f}, "
        f"{platform.processor() or platform.machine()}; synthetic 3x32x32 data, "
        + (f"{args.probe} train/probe samples, " if "main" in sections else "")
        + f"seed {args.seed}"
    )
    if "main" in sections:
        data = load_data(_cfg(args, "small_cnn").data)
        reps = [bench_model(m.strip(), data, args) for m in args.models.split(",") if m.strip()]
        summary(reps, args)
    if "hvp" in sections:
        rows = [bench_hvp_model(m.strip(), args) for m in args.hvp_models.split(",") if m.strip()]
        hvp_summary(rows)
    load1 = os.getloadavg()[0]
    print(
        f"\npeak RSS {peak_rss_mib():,.0f} MiB; total {total.wall():.0f} s wall, "
        f"{total.cpu():.0f} s cpu; 1-min load average {load0:.1f} at start, {load1:.1f} at end"
    )
    if max(load0, load1) > args.threads + 0.5:
        print(
            f"warning: the load exceeded {args.threads} threads: other processes shared the "
            "cores, so wall times are inflated and noisy (ratios less so)"
        )


if __name__ == "__main__":
    main()
