"""Cost of the batch-size signals against the cost of training, measured in one run.

On the embedded digits (1,347 training images, 16x16) with absa's small_cnn, 1 torch thread:

A. Gradient noise scale (``signals.noise``): one training epoch (``absa.engine.loop.train_epoch``)
   with the meter off vs on, --reps interleaved repetitions (order alternating, each on a
   fresh copy of the same model, the same epoch permutation for the pair), medians of wall
   and process CPU time. Three cases:
   - several micro-batches per step (batch --multi-batch in micro-batches of --micro): the
     meter differences the accumulated ``.grad`` after each micro-batch;
   - one micro-batch per step (batch --single-batch), the half-batch split on
     ``signals.noise_split_steps`` = 8 steps per epoch (the default): one extra backward of
     the first half on those steps;
   - the same with the split on every step (worst case; noise_split_steps = the step count).
   The meter's own time is also attributed directly (its hooks and the half-batch backward
   timed inside the epoch), which the shared machine disturbs much less than the on/off
   difference.
B/C. A real short run of configs/digits_abs.yaml (ABS, batch 32, noise meter on; the policy
   observes the default probe, so the batch grows as in training) for --epochs epochs. After
   each epoch the Hessian probe (``absa.engine.probes.hessian_probe``, k=1, each method warm-started
   from its own vector of the previous epoch, hessian.max_iter / rtol of the config):
   - last block on the training probe set (hessian.probe_size, capped at the train split),
     power and Lanczos, against the exact top eigenvalue (dense eigvalsh of the last-layer
     Hessian);
   - full block on a --full-probe-sample subset (the full block on the whole probe costs
     ~1 s per HVP here), power and Lanczos, against a cold Lanczos run of up to --ref-iters
     steps at rtol 1e-6 (its residual |Hv - lambda v| / lambda is printed);
   - full block on the training probe set, power, at the first and the last epoch only
     (its time as a share of the epoch).
   Probe time as a share of that epoch's training time, and per method: HVPs of the solver
   (the stderr's extra HVP not counted), relative error vs the reference, how often it hit
   max_iter, and how often it stopped as converged with an error above rtol.

Wall times on the shared 2-core machine are noisy (the load average is printed at start and
end); CPU time is this process's own work and is the headline measure.

    python scripts/bench_signals.py [--reps 9] [--epochs 8] [--full-probe 256]
        [--ref-iters 60] [--multi-batch 128] [--micro 32] [--single-batch 32]
"""

from __future__ import annotations

import argparse
import copy
import datetime
import os
import platform
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from absa.core.hessian import HessianOperator, last_layer_operator, select_params, top_eigen
from absa.distributed import DistEnv
from absa.engine import loop as T
from absa.engine import step as S
from absa.engine.probes import (
    NoiseMeter,
    ProbeResult,
    ProbeSettings,
    hessian_probe,
    measure,
    probe_batches,
    probe_indices,
)
from absa.run import config as C
from absa.run.data import Data, load_data
from absa.run.models import build_from_config, count_params, model_mode

TARGET_NOISE = 0.03  # issue 12: noise scale <= 3% of training time
METHODS = ("power", "lanczos")


def load_avg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


class Clock:
    """Wall time and process CPU time since creation."""

    def __init__(self) -> None:
        self.w0, self.c0 = time.perf_counter(), time.process_time()

    def read(self) -> tuple[float, float]:
        return time.perf_counter() - self.w0, time.process_time() - self.c0


def med(xs: list[float]) -> float:
    return statistics.median(xs)


# --- A. noise meter ------------------------------------------------------------------------


class TimedMeter(NoiseMeter):
    """NoiseMeter whose hooks add their CPU time to ``spent`` (per hook name)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.spent: dict[str, float] = {}

    def _timed(self, name: str, fn, *a):
        c0 = time.process_time()
        try:
            return fn(*a)
        finally:
            self.spent[name] = self.spent.get(name, 0.0) + time.process_time() - c0

    def begin_step(self, params):
        return self._timed("begin_step", super().begin_step, params)

    def micro_done(self, params, b, scale):
        return self._timed("micro_done", super().micro_done, params, b, scale)

    def end_step(self, params, big):
        return self._timed("end_step", super().end_step, params, big)

    def epoch_signals(self):
        return self._timed("epoch_signals", super().epoch_signals)


@contextmanager
def timed_half_gradient() -> Iterator[dict[str, float]]:
    """Time absa.engine.step's half-batch backward (looked up there by name)."""
    spent = {"half_backward": 0.0}
    orig = S._half_gradient

    def wrapper(*a, **kw):
        c0 = time.process_time()
        try:
            return orig(*a, **kw)
        finally:
            spent["half_backward"] += time.process_time() - c0

    S._half_gradient = wrapper
    try:
        yield spent
    finally:
        S._half_gradient = orig


@dataclass
class Case:
    key: str
    label: str
    overrides: list[str]
    off_wall: list[float] = field(default_factory=list)
    off_cpu: list[float] = field(default_factory=list)
    on_wall: list[float] = field(default_factory=list)
    on_cpu: list[float] = field(default_factory=list)
    hooks: list[dict[str, float]] = field(default_factory=list)
    steps: int = 0
    measured: float = 0.0  # steps the meter could use (noise_steps)
    config: str | None = None  # base config file of the case (None: built-in defaults)


def noise_epoch(
    case: Case, base, data: Data, on: bool, epoch: int, env: DistEnv, record: bool
) -> None:
    cfg = C.load(case.config, case.overrides + [f"signals.noise={'true' if on else 'false'}"])
    model = copy.deepcopy(base)
    opt = T.make_optimizer(model, cfg)
    policy = T.policy_for(cfg)
    meter = TimedMeter(ema=cfg.signals.noise_ema) if on else None  # as session.noise_meter
    with timed_half_gradient() as half:
        clock = Clock()
        stats = T.train_epoch(model, opt, data, cfg, env, policy, epoch, noise=meter)
        signals = meter.epoch_signals() if meter is not None else {}
        wall, cpu = clock.read()
    if not record:
        return
    case.steps = stats.steps
    if on:
        case.on_wall.append(wall)
        case.on_cpu.append(cpu)
        case.hooks.append({**meter.spent, **half})
        case.measured = signals.get("noise_steps") or 0.0
    else:
        case.off_wall.append(wall)
        case.off_cpu.append(cpu)


def bench_noise(args: argparse.Namespace, data: Data, env: DistEnv) -> list[Case]:
    common = [
        "data.name=digits",
        "data.image_size=16",
        "model.name=small_cnn",
        "model.width=16",
        "schedule.method=bl",
        "train.epochs=1000",
        f"train.seed={args.seed}",
    ]
    single = [f"batch.size={args.single_batch}", f"batch.max_micro_batch={args.single_batch}"]
    n_micro = -(-args.multi_batch // args.micro)
    n_single = -(-len(data.train) // args.single_batch)
    cases = [
        Case(
            "multi",
            f"batch {args.multi_batch} = {n_micro} micro-batches of {args.micro}",
            common + [f"batch.size={args.multi_batch}", f"batch.max_micro_batch={args.micro}"],
        ),
        Case(
            "split8",
            f"batch {args.single_batch}, 1 micro-batch, split on 8 steps/epoch (default)",
            common + single + ["signals.noise_split_steps=8"],
        ),
        Case(
            "splitall",
            f"batch {args.single_batch}, 1 micro-batch, split on every step",
            # = the epoch's step count: epoch._split_steps(n, k) gives fewer than n steps
            # when k > n (k = 44 -> 42 of 43, k = 10^6 -> 1), so ask for exactly n
            common + single + [f"signals.noise_split_steps={n_single}"],
        ),
    ]
    torch.manual_seed(args.seed)
    base = build_from_config(C.load(None, common).model, data.info)
    print(
        f"\n=== A. noise meter off vs on: train_epoch on {len(data.train)} samples, "
        f"{args.reps} interleaved repetitions (+1 untimed warm-up), medians ==="
    )
    measure_cases(cases, base, data, env, args.reps)
    return cases


def measure_cases(cases: list[Case], base, data: Data, env: DistEnv, reps: int) -> None:
    """Interleaved off/on epochs of every case (one untimed warm-up pair), then the table."""
    for case in cases:
        noise_epoch(case, base, data, False, 0, env, record=False)
        noise_epoch(case, base, data, True, 0, env, record=False)
    for rep in range(reps):
        for case in cases:
            order = (False, True) if rep % 2 == 0 else (True, False)
            for on in order:
                noise_epoch(case, base, data, on, rep + 1, env, record=True)
    head = f"    {'':58s} {'off s':>7s} {'on s':>7s} {'overhead':>9s} {'paired':>8s}"
    for case in cases:
        print(
            f"[A] {case.label}: {case.steps} steps/epoch, {case.measured:.0f} measured "
            "by the meter (noise_steps)"
        )
        print(head)
        for kind, off, on in (
            ("CPU", case.off_cpu, case.on_cpu),
            ("wall", case.off_wall, case.on_wall),
        ):
            paired = med([b / a - 1 for a, b in zip(off, on, strict=True)])
            print(
                f"    {'epoch, ' + kind + ' time':58s} {med(off):7.3f} {med(on):7.3f} "
                f"{med(on) / med(off) - 1:+9.1%} {paired:+8.1%}"
            )
        share = hook_share(case)
        parts = ", ".join(
            f"{k} {med([h.get(k, 0.0) / c for h, c in zip(case.hooks, case.on_cpu, strict=True)]):.1%}"
            for k in ("micro_done", "end_step", "half_backward")
        )
        print(f"    meter's own CPU time, timed inside the epoch: {share:.1%} ({parts})")
        hooks = med([sum(v for k, v in x.items() if k != "half_backward") for x in case.hooks])
        print(
            f"    per step: meter hooks {1e3 * hooks / case.steps:.2f} ms (the half backward "
            f"not counted) vs {1e3 * med(case.off_cpu) / case.steps:.2f} ms of training "
            "(meter off)"
        )


def bench_noise_fmnist(args: argparse.Namespace, env: DistEnv) -> list[Case]:
    """The setting of the Fashion-MNIST sweep (configs/fmnist/base.yaml: batch 128 in one
    micro-batch, 469 steps per epoch, the default 8 split steps): an epoch of realistic
    length, where the per-epoch half-batch backwards are a small share."""
    path = "configs/fmnist/base.yaml"
    try:
        cfg = C.load(path, [])
        data = load_data(cfg.data)
    except Exception as err:  # the apt package is optional
        print(f"\n[A'] skipped: {path}: {str(err).splitlines()[0]}")
        return []
    cases = [
        Case(
            "fmnist",
            "fashion_mnist, batch 128, 1 micro-batch, split on 8 steps/epoch (default)",
            ["train.threads=1", f"train.seed={args.seed}"],
            config=path,
        )
    ]
    torch.manual_seed(args.seed)
    base = build_from_config(cfg.model, data.info)
    print(
        f"\n=== A'. the same on {path} ({len(data.train)} samples), {args.fmnist_reps} "
        "interleaved repetitions (+1 untimed warm-up), medians ==="
    )
    measure_cases(cases, base, data, env, args.fmnist_reps)
    return cases


def hook_share(case: Case) -> float:
    """Median over repetitions of (CPU time in the meter's hooks) / (CPU time of the epoch)."""
    return med([sum(h.values()) / c for h, c in zip(case.hooks, case.on_cpu, strict=True)])


# --- B/C. the Hessian probe during a real short run ----------------------------------------


@dataclass
class Probe:
    """One probe of one method at one epoch, against the reference."""

    block: str
    method: str
    epoch: int
    value: float
    n_hvp: int  # solver HVPs (without the stderr's)
    wall: float
    cpu: float
    ref: float
    max_iter: int
    rtol: float

    @property
    def err(self) -> float:
        return abs(self.value - self.ref) / max(abs(self.ref), 1e-30)

    @property
    def capped(self) -> bool:
        return self.n_hvp >= self.max_iter

    @property
    def false_converged(self) -> bool:
        return not self.capped and self.err > self.rtol


def run_probe(
    model, data: Data, cfg: C.Config, env: DistEnv, idx: torch.Tensor, epoch: int, init
) -> tuple[ProbeResult, float, float]:
    clock = Clock()
    settings = ProbeSettings.from_config(cfg)
    micro = cfg.batch.max_micro_batch
    res = hessian_probe(model, data, settings, env, idx, epoch, init, micro=micro)
    wall, cpu = clock.read()
    return res, wall, cpu


def solver_hvps(res: ProbeResult, cfg: C.Config) -> int:
    return res.n_hvp - (1 if cfg.hessian.stderr else 0)


def dense_last(model, data: Data, idx: torch.Tensor, cfg: C.Config, env: DistEnv):
    """Exact spectrum of the last-layer Hessian on the probe set: (lambda_1, lambda_2, s)."""
    clock = Clock()
    with model_mode(model, train=False):
        batches = probe_batches(data.train, idx, cfg.batch.max_micro_batch, env.device)
        op = last_layer_operator(model, batches, device=env.device)
        eye = torch.eye(op.dim, dtype=op.dtype, device=op.device)
        h = torch.stack([op.matvec(e) for e in eye]).double()
    ev = torch.linalg.eigvalsh((h + h.T) / 2)
    return float(ev[-1]), float(ev[-2]), clock.read()[0]


def lanczos_full(model, data: Data, idx: torch.Tensor, cfg: C.Config, env: DistEnv, iters: int):
    """Cold Lanczos reference on the full block: (lambda_1, lambda_2, residual, HVPs, s)."""
    clock = Clock()
    with model_mode(model, train=False):
        batches = probe_batches(data.train, idx, cfg.batch.max_micro_batch, env.device)
        params = select_params(model, "full")
        op = HessianOperator(model, params, batches, device=env.device, hvp=cfg.hessian.hvp)
        gen = torch.Generator().manual_seed(12_345)
        res = top_eigen(op, k=2, method="lanczos", max_iter=iters, rtol=1e-6, generator=gen)
        v = res.vectors[0]
        resid = float((op.matvec(v) - res.values[0] * v).norm()) / abs(res.values[0])
    return res.values[0], res.values[1], resid, res.n_hvp, clock.read()[0]


@dataclass
class RunLog:
    probes: list[Probe] = field(default_factory=list)
    train_wall: list[float] = field(default_factory=list)
    train_cpu: list[float] = field(default_factory=list)
    full_train: list[tuple[int, float, float, int, str]] = field(default_factory=list)
    gaps: dict[str, list[float]] = field(default_factory=lambda: {"last": [], "full": []})


def bench_run(args: argparse.Namespace, data: Data, env: DistEnv) -> tuple[RunLog, C.Config]:
    cfg = C.load(
        args.config,
        [f"train.epochs={args.epochs}", "optim.decay_epochs=[]", f"train.seed={args.seed}"],
    )
    h = cfg.hessian
    variant = {
        (block, m): C.load(
            args.config,
            [
                f"train.epochs={args.epochs}",
                "optim.decay_epochs=[]",
                f"train.seed={args.seed}",
                f"hessian.block={block}",
                f"hessian.method={m}",
            ],
        )
        for block in ("last", "full")
        for m in METHODS
    }
    torch.manual_seed(cfg.train.seed)
    model = build_from_config(cfg.model, data.info)
    opt = T.make_optimizer(model, cfg)
    policy = T.policy_for(cfg)
    meter = T.noise_meter(cfg, None)
    idx = probe_indices(len(data.train), h.probe_size, cfg.train.seed)
    idx_small = probe_indices(len(data.train), args.full_probe, cfg.train.seed)
    n_last = sum(p.numel() for _, p in select_params(model, "last"))
    print(
        f"\n=== B/C. {args.config}: {cfg.schedule.method}, batch {cfg.batch.size} (max "
        f"{cfg.schedule.max_batch}), {args.epochs} epochs, noise meter "
        f"{'on' if meter else 'off'}; probe k=1, warm start per method, max_iter {h.max_iter}, "
        f"rtol {h.rtol:g}, stderr {'on' if h.stderr else 'off'} ==="
    )
    print(
        f"    last block: {n_last:,} params on {len(idx)} probe samples, reference dense "
        f"eigvalsh; full block: {count_params(model):,} params on {len(idx_small)} samples, "
        f"reference cold Lanczos <= {args.ref_iters} steps at rtol 1e-6"
    )
    print(
        f"{'ep':>3s} {'batch':>5s} {'train cpu':>9s} {'block':>5s} {'method':>8s} "
        f"{'lambda_max':>11s} {'reference':>11s} {'rel.err':>8s} {'HVPs':>4s} "
        f"{'probe s':>8s} {'cpu s':>6s} {'/epoch':>7s}"
    )
    log = RunLog()
    chain: dict[tuple[str, str], torch.Tensor | None] = {k: None for k in variant}
    for epoch in range(args.epochs):
        plan = policy.plan(epoch)
        clock = Clock()
        T.train_epoch(model, opt, data, cfg, env, policy, epoch, noise=meter)
        t_wall, t_cpu = clock.read()
        log.train_wall.append(t_wall)
        log.train_cpu.append(t_cpu)
        default_probe = None
        for block, probe_idx in (("last", idx), ("full", idx_small)):
            if block == "last":
                ref, second, _ = dense_last(model, data, idx, cfg, env)
                ref_note = ""
            else:
                ref, second, resid, ref_hvp, ref_s = lanczos_full(
                    model, data, idx_small, cfg, env, args.ref_iters
                )
                ref_note = (
                    f"    full-block reference: {ref_hvp} HVPs, residual {resid:.1e}, "
                    f"lambda_2 {second:.5g}, {ref_s:.1f} s"
                )
            log.gaps[block].append(second / ref)
            order = METHODS if epoch % 2 == 0 else METHODS[::-1]
            for m in order:
                vc = variant[(block, m)]
                res, wall, cpu = run_probe(
                    model, data, vc, env, probe_idx, epoch, chain[(block, m)]
                )
                chain[(block, m)] = res.vector
                p = Probe(
                    block,
                    m,
                    epoch,
                    res.eigenvalue,
                    solver_hvps(res, vc),
                    wall,
                    cpu,
                    ref,
                    vc.hessian.max_iter,
                    vc.hessian.rtol,
                )
                log.probes.append(p)
                if block == h.block and m == h.method:
                    default_probe = res  # what training would observe
            for m in METHODS:
                p = next(q for q in log.probes[-2:] if q.method == m)
                flag = " cap" if p.capped else (" err>rtol" if p.false_converged else "")
                print(
                    f"{epoch:3d} {plan.batch_size:5d} {t_cpu:9.3f} {block:>5s} {m:>8s} "
                    f"{p.value:11.6g} {p.ref:11.6g} {p.err:8.1e} {p.n_hvp:4d} "
                    f"{p.wall:8.3f} {p.cpu:6.3f} {p.cpu / t_cpu:7.1%}{flag}"
                )
            if ref_note:
                print(ref_note)
        if epoch in (0, args.epochs - 1):
            # full block on the training probe set (power): its time as a share of the epoch;
            # warm from this epoch's small-probe power vector (none at epoch 0)
            init = chain[("full", "power")] if epoch else None
            vc = variant[("full", "power")]
            res, wall, cpu = run_probe(model, data, vc, env, idx, epoch, init)
            how = "warm from the small-probe vector" if epoch else "cold"
            log.full_train.append((epoch, wall, cpu, solver_hvps(res, vc), how))
            print(
                f"    full block on all {len(idx)} probe samples (power, {how}): "
                f"{solver_hvps(res, vc)} HVPs, {wall:.1f} s wall, {cpu:.1f} s cpu = "
                f"{cpu / t_cpu:.1f}x the epoch's training CPU time, lambda_max "
                f"{res.eigenvalue:.5g}"
            )
        signals = measure(plan.wants, default_probe, meter)
        growth = policy.observe(epoch, signals)
        if growth is not None:
            print(f"    growth: batch {growth.old_batch} -> {growth.new_batch} ({growth.trigger})")
    return log, cfg


# --- summary -------------------------------------------------------------------------------


@dataclass
class MethodStats:
    hvps: list[int]
    errs: list[float]
    cpu: list[float]
    capped: int
    false_conv: int

    @classmethod
    def of(cls, probes: list[Probe]) -> MethodStats:
        return cls(
            [p.n_hvp for p in probes],
            [p.err for p in probes],
            [p.cpu for p in probes],
            sum(p.capped for p in probes),
            sum(p.false_converged for p in probes),
        )

    def line(self, name: str) -> str:
        warm = self.hvps[1:] or self.hvps
        return (
            f"{name:8s} HVPs {sum(self.hvps):4d} total (epoch 0: {self.hvps[0]}, warm "
            f"{min(warm)}-{max(warm)}), rel.err median {med(self.errs):.1e} max "
            f"{max(self.errs):.1e}, at max_iter {self.capped}/{len(self.hvps)}, stopped "
            f"with err > rtol {self.false_conv}/{len(self.hvps)}, probe cpu {sum(self.cpu):.2f} s"
        )


def verdict(power: MethodStats, lanczos: MethodStats, rtol: float) -> tuple[bool, str]:
    """Issue 12's rule: switch if Lanczos is cheaper (and no less accurate than rtol or than
    power), or as cheap (<= 10% more HVPs) and more accurate."""
    hp, hl = sum(power.hvps), sum(lanczos.hvps)
    ep, el = max(power.errs), max(lanczos.errs)
    cheaper = hl < hp
    as_cheap = hl <= 1.1 * hp
    accurate_enough = el <= max(ep, rtol)
    more_accurate = el < ep and med(lanczos.errs) <= med(power.errs)
    ok = (cheaper and accurate_enough) or (as_cheap and more_accurate)
    why = (
        f"HVPs {hl} vs {hp} ({hl / hp - 1:+.0%}), max rel.err {el:.1e} vs {ep:.1e}, "
        f"median {med(lanczos.errs):.1e} vs {med(power.errs):.1e}"
    )
    return ok, why


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--config", default="configs/digits_abs.yaml")
    ap.add_argument("--reps", type=int, default=9)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--full-probe", type=int, default=256)
    ap.add_argument("--ref-iters", type=int, default=60)
    ap.add_argument("--multi-batch", type=int, default=128)
    ap.add_argument("--micro", type=int, default=32)
    ap.add_argument("--single-batch", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fmnist-reps", type=int, default=2, help="0: skip the Fashion-MNIST case")
    args = ap.parse_args()

    torch.set_num_threads(1)
    start = time.perf_counter()
    load0 = load_avg()
    today = datetime.date.today().isoformat()
    print(
        f"$ python {' '.join(sys.argv)}   # {today}, {os.cpu_count()} CPU cores shared with "
        f"other jobs, torch {torch.__version__}"
    )
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} thread, {os.cpu_count()} CPUs, "
        f"{platform.machine()}, Python {platform.python_version()}; load average at start "
        f"{load0}"
    )
    print(
        "WARNING: the CPU cores are shared with long experiments, so wall times are noisy; "
        "CPU time (this process's own work, 1 thread) is the headline measure."
    )
    env = DistEnv()
    data = load_data(C.load(args.config, []).data)
    cases = bench_noise(args, data, env)
    if args.fmnist_reps > 0:
        cases += bench_noise_fmnist(args, env)
    log, cfg = bench_run(args, data, env)
    h = cfg.hessian

    print("\n=== summary ===")
    print(
        "noise scale overhead (signals.noise true vs false; CPU medians, paired median, "
        "meter's own time):"
    )
    for c in cases:
        cpu = med(c.on_cpu) / med(c.off_cpu) - 1
        paired = med([b / a - 1 for a, b in zip(c.off_cpu, c.on_cpu, strict=True)])
        own = hook_share(c)
        ok = "OK" if max(own, paired) <= TARGET_NOISE else "MISS"
        print(
            f"  {c.label:62s} {cpu:+6.1%} {paired:+6.1%}  own {own:5.1%}  "
            f"(target <= {TARGET_NOISE:.0%})  {ok}"
        )
    train = med(log.train_cpu)
    print(
        f"Hessian probe overhead (CPU time / the same epoch's training CPU time, median over "
        f"{len(log.train_cpu)} epochs; training epoch median {train:.3f} s cpu, "
        f"{med(log.train_wall):.3f} s wall):"
    )
    for block, m in (
        ("last", "power"),
        ("last", "lanczos"),
        ("full", "power"),
        ("full", "lanczos"),
    ):
        ps = [p for p in log.probes if p.block == block and p.method == m]
        shares = [p.cpu / log.train_cpu[p.epoch] for p in ps]
        n = min(h.probe_size, len(data.train)) if block == "last" else args.full_probe
        print(
            f"  {block} block, {m:8s} ({n} samples): {med([p.cpu for p in ps]):.3f} s = "
            f"{med(shares):.1%} of an epoch (range {min(shares):.1%}-{max(shares):.1%})"
        )
    for epoch, _wall, cpu, nh, how in log.full_train:
        print(
            f"  full block, power    ({min(h.probe_size, len(data.train))} samples, epoch "
            f"{epoch}, {how}): {cpu:.1f} s = {cpu / log.train_cpu[epoch]:.1f}x the epoch "
            f"({nh} HVPs)"
        )
    print(
        f"power vs Lanczos, k=1, warm start, max_iter {h.max_iter}, rtol {h.rtol:g}, over "
        f"{args.epochs} epochs of the run:"
    )
    decisions = {}
    for block in ("last", "full"):
        gaps = log.gaps[block]
        print(
            f"  {block} block (lambda_2/lambda_1 of the reference {min(gaps):.3f}-{max(gaps):.3f}):"
        )
        stats = {
            m: MethodStats.of([p for p in log.probes if p.block == block and p.method == m])
            for m in METHODS
        }
        for m in METHODS:
            print(f"    {stats[m].line(m)}")
        ok, why = verdict(stats["power"], stats["lanczos"], h.rtol)
        decisions[block] = ok
        print(f"    -> Lanczos {'qualifies' if ok else 'does not qualify'}: {why}")
    if decisions[h.block] and all(decisions.values()):
        rec = (
            "make Lanczos the default for training's k=1 lambda_max with warm start "
            "(hessian.method: lanczos): it qualifies on both blocks"
        )
    elif decisions[h.block]:
        rec = (
            f"Lanczos qualifies on the default block ({h.block}) but not on every block: "
            "switching the default is supported for the default block only"
        )
    else:
        rec = (
            f"keep power iteration as the default: Lanczos does not qualify on the {h.block} block"
        )
    print(f"RECOMMENDATION: {rec}.")
    print(
        f"load average at end {load_avg()} (start {load0}); total {time.perf_counter() - start:.0f} s"
        " wall. Wall times are noisy on this shared machine; ratios use CPU time."
    )


if __name__ == "__main__":
    main()
