"""Signals for batch-size policies: everything absa measures for a policy to observe.

- ``probe_indices`` / ``probe_batches``: THE probe-set sampler (the fixed subset of the train
  split that the training probe and ``absa hessian``'s default sample both look at);
- ``hessian_probe``: lambda_max of the Hessian block on the probe set and its standard error
  over probe chunks (``lambda_max`` / ``lambda_max_stderr``), as ``ProbeSettings`` (the
  resolved ``hessian`` section) say;
- ``overhead_allows``: the cap on Hessian time as a share of training time;
- ``NoiseMeter``: the gradient noise scale from the gradients that accumulation already
  computes (``noise_scale``, ``noise_trace``, ``noise_g2``, ``ip_variance``);
- ``measure``: what the trainer calls with the policy's ``plan.wants``.

Gradient noise (McCandlish et al. 2018, appendix A). With unbiased gradient estimates at two
batch sizes b < B (a micro-batch, or one rank's micro-batch, and the whole logical batch):

    |G|^2     ~ (B |G_B|^2 - b |G_b|^2) / (B - b)
    tr(Sigma) ~ (|G_b|^2 - |G_B|^2) / (1/b - 1/B)
    B_simple  = tr(Sigma) / |G|^2

Each step's estimates are noisy (|G|^2 can come out negative), so numerator and denominator
are averaged separately (bias-corrected EMA over steps, ``signals.noise_ema``) and divided
only at the end of the epoch. The same two-size estimator applied to the projections on a
unit direction u gives Var_i(<grad l_i, u>) (``ip_variance``, for the inner-product test);
u is the previous step's mean gradient, since the current one is known only once every
micro-batch is done.

Where the small size comes from: the micro-batches of a step (on this rank, before DDP's
all-reduce; the last one is skipped under DDP since its backward already holds the other
ranks' sums). A step with a single micro-batch on a single process is measured on
``signals.noise_split_steps`` steps per epoch by one extra backward of its first half
(``torch.autograd.grad`` on the retained graph: the training gradient is untouched).
Under BatchNorm in train mode the half's gradient still sees the whole micro-batch's
statistics, a small bias of the estimate. Multi-rank steps with one micro-batch per rank
have no small size and are not measured.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from absa.core.hessian import (
    HessianOperator,
    LinearSoftmaxHessian,
    last_layer_operator,
    rayleigh_stderr,
    select_params,
    top_eigen,
)
from absa.core.policies import IP_VARIANCE, LAMBDA, LAMBDA_STDERR, NOISE, NOISE_G2, NOISE_TRACE
from absa.distributed import DistEnv
from absa.run.data import Data, local_positions
from absa.run.models import model_mode

if TYPE_CHECKING:
    from absa.run.config import Config

Batch = tuple[Tensor, Tensor]


# --- the probe set -------------------------------------------------------------------------


def probe_indices(n: int, size: int, seed: int) -> Tensor:
    """The fixed probe subset of a split of ``n`` samples (seeded, sorted)."""
    g = torch.Generator().manual_seed(seed * 7_777 + 1)
    return torch.randperm(n, generator=g)[: min(size, n)].sort().values


def probe_batches(
    split: Any, idx: Tensor, batch: int, device: torch.device, rank: int = 0, world: int = 1
) -> list[Batch]:
    """This rank's shard of the probe samples ``idx`` of ``split``, in chunks of ``batch``."""
    out = []
    for chunk in local_positions(idx, rank, world).split(batch):
        x, y = split.get(chunk)
        out.append((x.to(device), y.to(device)))
    return out


# --- the Hessian probe ---------------------------------------------------------------------


@dataclass
class ProbeResult:
    eigenvalue: float
    stderr: float | None  # over probe chunks (None with a single chunk)
    seconds: float
    n_hvp: int
    vector: Any


@dataclass(frozen=True)
class ProbeSettings:
    """What the Hessian probe reads of a config (``hessian.*`` and ``train.seed``), resolved
    once by the trainer; the chunk size (the run's micro-batch in force) is passed apart."""

    block: str  # last | full | name patterns
    method: str  # power | lanczos
    hvp: str  # auto | reverse | forward
    max_iter: int
    rtol: float
    warm_start: bool  # start from the previous epoch's eigenvector
    stderr: bool  # lambda_max_stderr over probe chunks
    keep_graph: bool
    max_overhead: float | None  # cap on Hessian / training time
    seed: int  # train.seed: the start vector's generator

    @classmethod
    def from_config(cls, cfg: Config) -> ProbeSettings:
        h = cfg.hessian
        return cls(
            block=h.block,
            method=h.method,
            hvp=h.hvp,
            max_iter=h.max_iter,
            rtol=h.rtol,
            warm_start=h.warm_start,
            stderr=h.stderr,
            keep_graph=h.keep_graph,
            max_overhead=h.max_overhead,
            seed=cfg.train.seed,
        )


def hessian_probe(
    model: nn.Module,
    data: Data,
    settings: ProbeSettings,
    env: DistEnv,
    probe_idx: Tensor,
    epoch: int,
    init: Any = None,
    *,
    micro: int,
) -> ProbeResult:
    """Collective: top eigenvalue (and its stderr) of the Hessian of the mean loss on the probe
    set. BatchNorm is in eval mode during the probe; the mode is restored. Each rank holds a
    shard of the probe; HVPs are all-reduced so every rank gets the same value. Always in
    fp32, outside any autocast: power/Lanczos on low-precision double-backward is too noisy.
    ``micro``: the probe chunk size, the run's resolved micro-batch (after ``auto`` sizing and
    out-of-memory backoffs); ``init``: the previous eigenvector (used with ``warm_start``).
    """
    s = settings
    t0 = time.perf_counter()
    batches = probe_batches(data.train, probe_idx, micro, env.device, env.rank, env.world_size)
    gen = torch.Generator(device="cpu").manual_seed(s.seed * 1_009 + epoch)
    autocast_off = torch.autocast(device_type=torch.device(env.device).type, enabled=False)
    with model_mode(model, train=False), autocast_off:
        op = _operator(model, s, batches, env)
        res = top_eigen(
            op,
            k=1,
            method=s.method,
            max_iter=s.max_iter,
            rtol=s.rtol,
            generator=gen,
            init=init if s.warm_start else None,
        )
        n_hvp = res.n_hvp
        stderr = None
        if s.stderr:
            stderr, extra = rayleigh_stderr(op, res.vectors[0], reduce=env.all_reduce_sum)
            n_hvp += extra
    return ProbeResult(res.values[0], stderr, time.perf_counter() - t0, n_hvp, res.vectors[0])


def _operator(
    model: nn.Module, s: ProbeSettings, batches: list[Batch], env: DistEnv
) -> LinearSoftmaxHessian | HessianOperator:
    """The Hessian operator of ``s.block`` on ``batches`` (HVPs all-reduced over ranks)."""
    if s.block == "last":
        return last_layer_operator(
            model, batches, reduce=env.all_reduce_sum, device=env.device, hvp=s.hvp
        )
    return HessianOperator(
        model,
        select_params(model, s.block),
        batches,
        reduce=env.all_reduce_sum,
        device=env.device,
        hvp=s.hvp,
        keep_graph=s.keep_graph,
    )


def overhead_allows(cap: float | None, totals: Mapping[str, float], env: DistEnv) -> bool:
    """Collective. With a cap c (``hessian.max_overhead``), skip this epoch's probe while the
    Hessian time so far exceeds c times the training time so far (rank 0 decides, all
    follow)."""
    if cap is None or totals["train"] <= 0:
        return True
    allowed = totals["hessian"] <= cap * totals["train"]
    return bool(env.broadcast_object(allowed))


# --- gradient noise ------------------------------------------------------------------------


@dataclass
class _Ema:
    """Bias-corrected exponential moving average of a scalar."""

    decay: float
    value: float = 0.0
    weight: float = 0.0

    def add(self, x: float) -> None:
        self.value = self.decay * self.value + (1 - self.decay) * x
        self.weight = self.decay * self.weight + (1 - self.decay)

    def get(self) -> float | None:
        return self.value / self.weight if self.weight > 0 else None


@dataclass
class NoiseMeter:
    """Per-step two-batch-size estimates of |G|^2, tr(Sigma) and Var_i(<grad l_i, u>).

    Protocol per optimizer step: ``begin_step(params)``; after each micro-batch of this rank
    ``micro_done(params, b)`` (b = its sample count; the meter differences the accumulated
    ``.grad``), or ``add_small(grads, b)`` for a gradient computed aside; then
    ``end_step(params, B)`` once ``.grad`` holds the mean gradient of the logical batch.
    ``.grad`` is read, never written.

    Nothing is read from the device during a step: each step's squared norms and projections
    stay there (float64) and are folded into the averages, in order and with the same float
    arithmetic, by ``flush()`` (one read), which ``epoch_signals`` and ``state_dict`` call.
    """

    ema: float = 0.95
    g2: _Ema = field(init=False)
    trace: _Ema = field(init=False)
    ip: _Ema = field(init=False)
    direction: Tensor | None = None  # unit previous mean gradient (flat, float64)
    _prev: Tensor | None = None
    _small: list[tuple[int, Tensor, Tensor | None]] = field(default_factory=list)
    _epoch_g2: list[float] = field(default_factory=list)
    # steps not folded in yet: (B, its usable small sizes, whether u was set at its start)
    _pending: list[tuple[int, list[int], bool]] = field(default_factory=list)
    _values: list[Tensor] = field(default_factory=list)  # their dot products, in order

    def __post_init__(self) -> None:
        self.g2, self.trace, self.ip = _Ema(self.ema), _Ema(self.ema), _Ema(self.ema)

    @staticmethod
    def _grads(params: Iterable[nn.Parameter]) -> Tensor:
        """The accumulated ``.grad`` of ``params`` as one new flat fp32 vector (one
        concatenation, then whole-vector arithmetic: no Python loop over tensors per step)."""
        return torch.cat(
            [
                (p.grad.detach() if p.grad is not None else torch.zeros_like(p)).reshape(-1).float()
                for p in params
            ]
        )

    @staticmethod
    def _flat(grads: Tensor | Sequence[Tensor]) -> Tensor:
        if isinstance(grads, Tensor):
            return grads
        return torch.cat([g.reshape(-1).float() for g in grads])

    def begin_step(self, params: list[nn.Parameter]) -> None:
        self._small = []
        self._prev = None

    def micro_done(self, params: list[nn.Parameter], b: int, scale: float) -> None:
        """The micro-batch just accumulated ``scale * sum of its b per-sample gradients``."""
        now = self._grads(params)
        delta = now if self._prev is None else now - self._prev
        self._prev = now
        self.add_small(delta / (scale * b), b)

    def add_small(self, grads: Tensor | Sequence[Tensor], b: int) -> None:
        """A mean gradient over b samples (flat, or per tensor), unbiased for the step's G."""
        g = self._flat(grads).double()
        self._small.append((b, torch.dot(g, g), self._project(g)))

    def _project(self, g: Tensor) -> Tensor | None:
        if self.direction is None:
            return None
        if self.direction.device != g.device:  # restored from a checkpoint read on the CPU
            self.direction = self.direction.to(g.device)
        return torch.dot(g, self.direction)

    def end_step(self, params: list[nn.Parameter], big: int) -> None:
        """Queue this step's estimates (folded in by ``flush``); remember the direction u."""
        g = self._grads(params).double()
        sq_big = torch.dot(g, g)
        has_dir = self.direction is not None
        usable = [s for s in self._small if 0 < s[0] < big]
        self._pending.append((big, [s[0] for s in usable], has_dir))
        self._values.append(sq_big)
        for _, sq, proj in usable:
            self._values.append(sq)
            if has_dir:
                self._values.append(proj)
        if has_dir:
            self._values.append(self._project(g))
        # u = g / |g|, on the device; a zero gradient leaves no direction, which only
        # ``flush`` can see (it then ignores the next step's projections and clears u)
        self.direction = g / sq_big.sqrt()
        self._small, self._prev = [], None
        if len(self._values) >= 4096:  # long epochs: one tensor instead of thousands
            self._values = [torch.cat([v.reshape(-1) for v in self._values])]

    def flush(self) -> None:
        """Fold the queued steps into the averages (one read from the device)."""
        if not self._pending:
            return
        vals = iter(torch.cat([v.reshape(-1) for v in self._values]).tolist())
        dir_ok = True  # u at the first queued step: as the host saw it (has_dir)
        for big, smalls, has_dir in self._pending:
            sq_big = next(vals)
            pairs = [(b, next(vals), next(vals) if has_dir else None) for b in smalls]
            proj_big = next(vals) if has_dir else None
            use_ip = has_dir and dir_ok
            if pairs:
                g2s, trs, ips = [], [], []
                for b, sq, proj in pairs:
                    g2s.append((big * sq_big - b * sq) / (big - b))
                    trs.append((sq - sq_big) / (1 / b - 1 / big))
                    if use_ip and proj is not None and proj_big is not None:
                        ips.append((proj**2 - proj_big**2) / (1 / b - 1 / big))
                self.g2.add(sum(g2s) / len(g2s))
                self.trace.add(sum(trs) / len(trs))
                if ips:
                    self.ip.add(sum(ips) / len(ips))
                self._epoch_g2.append(sum(g2s) / len(g2s))
            dir_ok = math.sqrt(sq_big) > 0
        if not dir_ok:
            self.direction = None
        self._pending, self._values = [], []

    def epoch_signals(self) -> dict[str, float | None]:
        """End of epoch: the smoothed estimates, B_simple and the signal-to-noise ratio of
        |G|^2 (its mean over this epoch's steps / the standard error of that mean)."""
        self.flush()
        g2, trace, ip = self.g2.get(), self.trace.get(), self.ip.get()
        steps = self._epoch_g2
        snr = None
        if len(steps) >= 2:
            mean = sum(steps) / len(steps)
            var = sum((x - mean) ** 2 for x in steps) / (len(steps) - 1)
            snr = mean / math.sqrt(var / len(steps)) if var > 0 else None
        self._epoch_g2 = []
        scale = trace / g2 if (g2 is not None and trace is not None and g2 > 0) else None
        return {
            NOISE: scale,
            NOISE_TRACE: trace,
            NOISE_G2: g2,
            IP_VARIANCE: ip,
            "noise_snr": snr,
            "noise_steps": float(len(steps)),
        }

    def state_dict(self) -> dict[str, Any]:
        self.flush()
        return {
            "ema": self.ema,
            "g2": [self.g2.value, self.g2.weight],
            "trace": [self.trace.value, self.trace.weight],
            "ip": [self.ip.value, self.ip.weight],
            "direction": self.direction,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.ema = float(state["ema"])
        for key in ("g2", "trace", "ip"):
            value, weight = state[key]
            setattr(self, key, _Ema(self.ema, float(value), float(weight)))
        self._pending, self._values = [], []
        d = state["direction"]  # one flat vector (a list of tensors in older checkpoints)
        if isinstance(d, (list, tuple)):
            d = torch.cat([t.reshape(-1).double() for t in d])
        self.direction = None if d is None else d.double()


def measure(
    wants: frozenset[str] | set[str],
    probe: ProbeResult | None,
    noise: NoiseMeter | None,
) -> dict[str, float | None]:
    """The signals of one epoch's end as the policy observes them (names from schedules)."""
    out: dict[str, float | None] = {}
    if noise is not None:
        out.update(noise.epoch_signals())
    if probe is not None:
        out[LAMBDA] = probe.eigenvalue
        out[LAMBDA_STDERR] = probe.stderr
    return {k: v for k, v in out.items() if k in wants or k not in (LAMBDA, LAMBDA_STDERR)}
