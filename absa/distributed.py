"""Everything torch.distributed lives here; one process runs the same code path as N.

The process environment comes from torchrun (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT)
or Slurm's srun (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID, with MASTER_ADDR/PORT taken from
the environment or the first host of SLURM_JOB_NODELIST). Backend: nccl on CUDA, gloo on
CPU, unless ``distributed.backend`` says otherwise.

Functions marked "collective" must be called on all ranks, in the same order.
"""

from __future__ import annotations

import contextlib
import datetime
import os
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


def _first_slurm_host() -> str | None:
    nodes = os.environ.get("SLURM_JOB_NODELIST") or os.environ.get("SLURM_NODELIST")
    if not nodes:
        return None
    head = nodes.split(",")[0]
    if "[" in head:  # node[01-04] -> node01
        prefix, rest = head.split("[", 1)
        head = prefix + rest.split("-")[0].split(",")[0].rstrip("]")
    return head


def process_env() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun or Slurm variables; (0, 1, 0) otherwise."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return (
            int(os.environ["RANK"]),
            int(os.environ["WORLD_SIZE"]),
            _env_int("LOCAL_RANK", default=0),
        )
    if "SLURM_PROCID" in os.environ and _env_int("SLURM_NTASKS", default=1) > 1:
        return (
            int(os.environ["SLURM_PROCID"]),
            _env_int("SLURM_NTASKS", default=1),
            _env_int("SLURM_LOCALID", default=0),
        )
    return 0, 1, 0


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("train.device: cuda requested but no CUDA device is available")
        if device.index is None:
            device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    return device


def setup(device: str = "auto", backend: str = "auto", timeout_s: int = 1800) -> DistEnv:
    """Read the process environment and, for more than one process, join the process group."""
    rank, world, local = process_env()
    dev = resolve_device(device, local)
    if world == 1:
        return DistEnv(0, 1, 0, dev, None)
    if backend == "auto":
        backend = "nccl" if dev.type == "cuda" else "gloo"
    if "MASTER_ADDR" not in os.environ:
        os.environ["MASTER_ADDR"] = _first_slurm_host() or "127.0.0.1"
    os.environ.setdefault("MASTER_PORT", "29500")
    if not dist.is_initialized():
        dist.init_process_group(
            backend=backend,
            rank=rank,
            world_size=world,
            timeout=datetime.timedelta(seconds=timeout_s),
            device_id=dev if dev.type == "cuda" else None,
        )
    return DistEnv(rank, world, local, dev, backend)


def teardown(env: DistEnv) -> None:
    """Destroy the process group (safe to call twice or on a single process)."""
    if env.distributed and dist.is_initialized():
        with contextlib.suppress(Exception):
            dist.barrier()
        dist.destroy_process_group()


def wrap_model(model: nn.Module, env: DistEnv) -> nn.Module:
    """DDP-wrap for several processes; the bare module otherwise."""
    if not env.distributed:
        return model
    ids = [env.device.index] if env.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def unwrap(model: nn.Module) -> nn.Module:
    """The module under DDP (for Hessian, attacks and checkpoints)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


@contextlib.contextmanager
def maybe_no_sync(model: nn.Module, skip_sync: bool) -> Iterator[None]:
    """Skip DDP's gradient all-reduce on all but the last micro-batch of a step."""
    if skip_sync and isinstance(model, nn.parallel.DistributedDataParallel):
        with model.no_sync():
            yield
    else:
        yield
