"""Everything torch.distributed lives here; one process runs the same code path as N.

The process environment comes from torchrun (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT)
or a Slurm ``srun`` step (SLURM_PROCID, SLURM_STEP_NUM_TASKS, SLURM_LOCALID; MASTER_ADDR is
taken from the environment or the first host of the step's node list, MASTER_PORT from the
environment or derived from SLURM_JOB_ID). Backend: nccl on CUDA, gloo on CPU, unless
``distributed.backend`` says otherwise.

Lifecycle of a worker: ``setup`` joins the group; ``teardown(env, ok)`` leaves it (a barrier
first only when every rank finished, so a failing rank never waits for peers that are stuck
in a collective); ``exit_process`` then ends the process without the interpreter's shutdown,
where gloo's threads can abort ("terminate called without an active exception").

Functions marked "collective" must be called on all ranks, in the same order.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        """Collective: elementwise sum over ranks (returns a new tensor; identity on 1 rank)."""
        if not self.distributed:
            return t
        out = t.detach().clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    def all_reduce_min(self, t: torch.Tensor) -> torch.Tensor:
        """Collective: elementwise minimum over ranks (identity on 1 rank)."""
        if not self.distributed:
            return t
        out = t.detach().clone()
        dist.all_reduce(out, op=dist.ReduceOp.MIN)
        return out

    def barrier(self) -> None:
        """Collective."""
        if self.distributed:
            dist.barrier()

    def broadcast_object(self, obj: object, src: int = 0) -> object:
        """Collective: every rank gets rank ``src``'s ``obj``."""
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=src)
        return box[0]


def _env_int(*names: str, default: int) -> int:
    for name in names:
        if name in os.environ:
            return int(os.environ[name])
    return default


def first_host(nodelist: str) -> str:
    """First host of a Slurm host list: ``gpu[03-04,07],cpu1`` -> ``gpu03``."""
    head = nodelist.strip()
    depth = 0
    for i, ch in enumerate(head):  # cut at the first comma outside brackets
        depth += {"[": 1, "]": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            head = head[:i]
            break
    if "[" not in head:
        return head
    prefix, rest = head.split("[", 1)
    inside, suffix = rest.split("]", 1) if "]" in rest else (rest, "")
    return prefix + inside.split(",")[0].split("-")[0] + suffix


def _slurm_master_host() -> str | None:
    for name in ("SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST"):
        if os.environ.get(name):
            return first_host(os.environ[name])
    return None


def process_env() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun or an srun step; (0, 1, 0) otherwise.

    Slurm's world size is SLURM_STEP_NUM_TASKS (set by srun for its step), not
    SLURM_NTASKS: the shell of an sbatch script sees SLURM_NTASKS > 1 but is one process.
    """
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return (
            int(os.environ["RANK"]),
            int(os.environ["WORLD_SIZE"]),
            _env_int("LOCAL_RANK", default=0),
        )
    if "SLURM_PROCID" in os.environ and _env_int("SLURM_STEP_NUM_TASKS", default=1) > 1:
        return (
            int(os.environ["SLURM_PROCID"]),
            _env_int("SLURM_STEP_NUM_TASKS", default=1),
            _env_int("SLURM_LOCALID", default=0),
        )
    return 0, 1, 0


def check_gpu_per_rank(name: str, local_world: int, n_cuda: int) -> None:
    """Refuse, in one line, more processes on a node than visible CUDA devices.

    nccl puts each process of a node on its own GPU and fails on a shared one ("Duplicate
    GPU detected"); ``name`` is train.device, ``local_world`` the processes on this node and
    ``n_cuda`` the visible CUDA devices. CPU ranks (train.device=cpu, gloo) are never refused.
    """
    if local_world <= 1:
        return
    cuda = name.startswith("cuda") or (name == "auto" and n_cuda > 0)
    if cuda and (name.startswith("cuda:") or local_world > n_cuda):
        where = f"train.device={name}" if name.startswith("cuda:") else f"{n_cuda} visible"
        raise ValueError(
            f"train.device: {local_world} processes on this node need {local_world} CUDA "
            f"devices, one each ({where}); use --nproc {max(n_cuda, 1)} (one process per "
            "GPU), or train.device=cpu for CPU processes (gloo)"
        )


def visible_cuda() -> int:
    """The number of CUDA devices this process sees (0 without CUDA)."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``train.device`` -> a torch device (``auto``: CUDA when available, else CPU)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ValueError(
            f"train.device: {name!r} is not a device (use auto, cpu, cuda, cuda:N or mps)"
        ) from err
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError("train.device: mps requested but not available on this machine")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("train.device: cuda requested but no CUDA device is available")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(
                f"train.device: {name} requested but only {torch.cuda.device_count()} "
                "CUDA device(s) are visible"
            )
        if device.index is None:
            device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    return device


def set_local_env(rank: int, world: int, port: int, addr: str = "127.0.0.1") -> None:
    """The variables torchrun would set, for a worker started with torch.multiprocessing
    (one node): ``setup`` then joins the group like under torchrun."""
    os.environ.update(
        MASTER_ADDR=addr,
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
    )


_joined = False  # this process joined a process group (see ``exit_process``)


def setup(device: str = "auto", backend: str = "auto", timeout_s: int = 1800) -> DistEnv:
    """Read the process environment and, for more than one process, join the process group.

    ``timeout_s`` bounds how long a collective waits for a rank that is alive but silent;
    a rank that dies closes its connections, which gloo reports to its peers at once.
    """
    global _joined
    rank, world, local = process_env()
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is outside the world of {world} processes")
    if world > 1:  # torchrun sets LOCAL_WORLD_SIZE; elsewhere one process per node is assumed
        check_gpu_per_rank(device, _env_int("LOCAL_WORLD_SIZE", default=1), visible_cuda())
    dev = resolve_device(device, local)
    if world == 1:
        return DistEnv(0, 1, 0, dev, None)
    if backend == "auto":
        backend = "nccl" if dev.type == "cuda" else "gloo"
    if backend == "nccl" and dev.type != "cuda":
        raise ValueError(
            f"distributed.backend: nccl needs CUDA devices but train.device is {dev}; "
            "use gloo (or auto)"
        )
    if "MASTER_ADDR" not in os.environ:
        os.environ["MASTER_ADDR"] = _slurm_master_host() or "127.0.0.1"
    if "MASTER_PORT" not in os.environ:
        job = os.environ.get("SLURM_JOB_ID", "")
        # a port per Slurm job, so that jobs sharing a node do not collide
        os.environ["MASTER_PORT"] = str(15000 + int(job) % 20000) if job.isdigit() else "29500"
    if not dist.is_initialized():
        dist.init_process_group(
            backend=backend,
            rank=rank,
            world_size=world,
            timeout=datetime.timedelta(seconds=timeout_s),
            device_id=dev if dev.type == "cuda" else None,
        )
        _joined = True
    return DistEnv(rank, world, local, dev, backend)


def teardown(env: DistEnv, ok: bool = True) -> None:
    """Leave the process group (safe to call twice or on a single process).

    ``ok``: this rank finished normally, so all ranks meet at a barrier before the group is
    destroyed. After an error or an interrupt the barrier is skipped: the peers may be
    blocked in a collective this rank will never join, and waiting for them would hang
    until the timeout. Destroying the group closes this rank's connections, so gloo peers
    fail at once, and torchrun stops the remaining workers when this one exits non-zero.
    """
    if not (env.distributed and dist.is_initialized()):
        return
    try:
        if ok:
            dist.barrier()
    finally:
        try:
            dist.destroy_process_group()
        except Exception:
            if ok:
                raise  # otherwise never mask the error that got us here


def joined() -> bool:
    """Whether this process joined a process group during its life."""
    return _joined


def exit_process(code: int) -> None:
    """Flush stdout/stderr and end the process now with ``code`` (after ``teardown``).

    Skips the interpreter's shutdown: with gloo, finished workers that exit normally abort
    now and then while C++ threads are destroyed ("terminate called without an active
    exception", status 134), which would turn a successful run into a failed job.
    """
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def wrap_model(model: nn.Module, env: DistEnv, sync_batchnorm: bool = False) -> nn.Module:
    """DDP-wrap for several processes; the bare module otherwise. With ``sync_batchnorm``
    the BatchNorm layers of ``model`` switch, in place, to statistics over the whole global
    micro-batch (``GlobalBatchNorm``; call on all ranks)."""
    if not env.distributed:
        return model
    if sync_batchnorm:
        global_batchnorm(model)
    ids = [env.device.index] if env.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics are summed over all ranks (any backend: torch's
    SyncBatchNorm runs on GPUs only). Per channel, with S = sum x, Q = sum x^2 and N samples
    over every rank (an autograd-aware all-reduce, so gradients flow through the global
    mean and variance): mean = S / N, var = Q / N - mean^2; running statistics use the
    unbiased var * N / (N - 1), as BatchNorm does. Outside training, or in one process, it is
    the plain BatchNorm of its class. Collective in training: call on all ranks."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized()):
            return super().forward(x)
        if dist.get_world_size() == 1:
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        dims = [0, *range(2, x.dim())]
        c = x.shape[1]
        count = x.new_tensor([x.numel() / c])
        stats = all_reduce(torch.cat([x.sum(dims), (x * x).sum(dims), count]))
        n = stats[-1]
        mean = stats[:c] / n
        var = (stats[c : 2 * c] / n - mean * mean).clamp_min(0)
        self._update_running(mean.detach(), var.detach(), n.item())
        shape = [1, c] + [1] * (x.dim() - 2)
        y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y

    @torch.no_grad()
    def _update_running(self, mean: torch.Tensor, var: torch.Tensor, n: float) -> None:
        if not self.track_running_stats or self.running_mean is None:
            return
        self.num_batches_tracked += 1
        m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
        self.running_mean.mul_(1 - m).add_(mean, alpha=m)
        self.running_var.mul_(1 - m).add_(var * (n / max(n - 1, 1.0)), alpha=m)


_GLOBAL_BN: dict[type, type] = {}


def global_batchnorm(model: nn.Module) -> nn.Module:
    """Switch every BatchNorm of ``model`` to ``GlobalBatchNorm`` in place, by class (the
    parameters, buffers, state-dict keys and the optimizer's references stay the same)."""
    for m in model.modules():
        cls = type(m)
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and not isinstance(m, GlobalBatchNorm):
            if cls not in _GLOBAL_BN:
                _GLOBAL_BN[cls] = type(f"Global{cls.__name__}", (GlobalBatchNorm, cls), {})
            m.__class__ = _GLOBAL_BN[cls]
    return model


def unwrap(model: nn.Module) -> nn.Module:
    """The module under torch.compile and DDP (for Hessian, attacks and checkpoints)."""
    model = getattr(model, "_orig_mod", model)
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


@contextlib.contextmanager
def maybe_no_sync(model: nn.Module, skip_sync: bool) -> Iterator[None]:
    """Skip DDP's gradient all-reduce on all but the last micro-batch of a step."""
    model = getattr(model, "_orig_mod", model)  # a compiled DDP module
    if skip_sync and isinstance(model, nn.parallel.DistributedDataParallel):
        with model.no_sync():
            yield
    else:
        yield
