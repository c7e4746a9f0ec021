"""What a fast accelerator run needs, kept out of the training loop: mixed precision,
channels_last, torch.compile, tensor data held on the device, and micro-batch sizing with
out-of-memory backoff. Every switch is off by default where it changes numerics, and every
GPU-only path degrades to a plain CPU run with a one-line note.

- ``Precision``: autocast context (bf16 works on CPU too; fp16 uses a ``GradScaler`` whose
  state is checkpointed, so a resumed fp16 run continues exactly). Hessian probes run in fp32
  outside autocast (absa.engine.probes), since power/Lanczos on the double-backward of low-precision
  activations is too noisy.
- ``prepare_model``: channels_last and the compiled training module; the bare module is what
  checkpoints, the Hessian and the attacks use (``absa.distributed.unwrap`` removes
  ``_orig_mod``).
- ``Runtime``: the precision, micro-batch and memory format a run executes with, resolved
  once; ``back_off`` halves the micro-batch after an out-of-memory error.
- ``find_micro_batch``: the largest micro-batch whose forward+backward fits, by halving on
  out-of-memory; ``is_oom`` recognises the error for the trainer's per-step backoff.
- ``to_device_data``: a tensor split moved (as uint8) to the accelerator when it fits.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from absa.run.config import Config

_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Precision:
    """Autocast dtype and, for fp16, the loss scaler (``train.precision``)."""

    name: str
    device: torch.device
    scaler: torch.amp.GradScaler | None = None

    @classmethod
    def create(cls, name: str, device: torch.device) -> Precision:
        scaler = torch.amp.GradScaler(device.type) if name == "fp16" else None
        return cls(name, device, scaler)

    @property
    def dtype(self) -> torch.dtype | None:
        return _DTYPES[self.name]

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """Autocast for forward (and, through it, backward) in the run's precision."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    @property
    def loss_scale(self) -> float:
        """The factor the backward pass's gradients carry (1 without a scaler)."""
        return float(self.scaler.get_scale()) if self.scaler is not None else 1.0

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        """Bring .grad to true units before anyone reads it (noise meter, clipping)."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler is None:
            optimizer.step()
            return
        self.scaler.step(optimizer)  # skips the step when a gradient is inf/nan
        self.scaler.update()

    def state_dict(self) -> dict[str, Any] | None:
        return self.scaler.state_dict() if self.scaler is not None else None

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)


def to_input(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """A 4-D input batch in the run's memory format."""
    if channels_last and x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x


CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")  # torch.compile modes replaying graphs


def prepare_model(
    model: nn.Module,
    channels_last: bool,
    compile: bool,
    say: Callable[[str], None],
    mode: str = "default",
) -> nn.Module:
    """``model`` (in place: channels_last) and the module to train with (compiled or not;
    ``mode`` is torch.compile's, ``train.compile_mode``)."""
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if not compile:
        return model
    if not hasattr(torch, "compile"):
        say("train.compile: this torch has no torch.compile; training uncompiled")
        return model
    return torch.compile(model, mode=None if mode == "default" else mode)


# --- out of memory ---------------------------------------------------------------------------


def is_oom(err: BaseException) -> bool:
    """Whether ``err`` is an accelerator out-of-memory error (CUDA, MPS, or torch's own)."""
    if isinstance(err, torch.OutOfMemoryError):
        return True
    return isinstance(err, RuntimeError) and "out of memory" in str(err).lower()


def release_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def find_micro_batch(
    try_size: Callable[[int], None], start: int, floor: int = 1
) -> tuple[int, list[int]]:
    """Largest size <= ``start`` for which ``try_size(size)`` does not run out of memory,
    halving from ``start``; returns it and the sizes that failed. Raises the last OOM if even
    ``floor`` fails."""
    size, failed = start, []
    while True:
        try:
            try_size(size)
            return size, failed
        except Exception as err:  # noqa: BLE001 - only OOM is handled
            if not is_oom(err) or size <= floor:
                raise
            failed.append(size)
            size = max(floor, size // 2)


def probe_micro_batch(
    model: nn.Module,
    sample: torch.Tensor,
    classes: int,
    start: int,
    device: torch.device,
    precision: Precision,
) -> tuple[int, list[int]]:
    """``batch.max_micro_batch: auto`` on an accelerator: one forward+backward of a synthetic
    batch of each size (model in train mode; gradients cleared afterwards)."""

    def attempt(size: int) -> None:
        x = sample.expand(size, *sample.shape[1:]).contiguous().to(device)
        y = torch.zeros(size, dtype=torch.long, device=device) % classes
        try:
            with precision.autocast():
                loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
        finally:
            model.zero_grad(set_to_none=True)
            release_memory(device)

    return find_micro_batch(attempt, start)


@contextlib.contextmanager
def oom_guard(device: torch.device) -> Iterator[None]:
    """Free cached accelerator memory after an out-of-memory error before it propagates."""
    try:
        yield
    except Exception as err:
        if is_oom(err):
            release_memory(device)
        raise


# --- the runtime ---------------------------------------------------------------------------

AUTO_MICRO_CPU = 256  # batch.max_micro_batch: auto without an accelerator to probe


@dataclass
class Runtime:
    """How a run executes, as opposed to what it computes: precision and its scaler, the
    micro-batch size in force (after ``auto`` sizing and OOM backoffs) and the memory format
    of inputs. ``cuda_graphs``: the training module replays CUDA graphs, whose outputs the
    next replay overwrites, so ``.grad`` must not be a graph's gradient output: a step then
    zeroes kept ``.grad`` buffers, into which each backward adds (``0 + g`` is ``g``)."""

    precision: Precision
    micro: int
    channels_last: bool = False
    backoffs: list[dict[str, int]] = field(default_factory=list)
    cuda_graphs: bool = False

    @classmethod
    def plain(cls, cfg: Config, device: torch.device) -> Runtime:
        """The runtime of ``cfg`` without any probing (``auto`` micro-batch: 256)."""
        micro, t, dev = cfg.batch.max_micro_batch, cfg.train, torch.device(device)
        return cls(
            Precision.create(t.precision, dev),
            micro if isinstance(micro, int) else AUTO_MICRO_CPU,
            t.channels_last,
            cuda_graphs=t.compile and t.compile_mode in CUDA_GRAPH_MODES and dev.type == "cuda",
        )

    def back_off(self, err: Exception, distributed: bool, epoch: int, step: int) -> None:
        """After ``err`` in a step (``step`` >= 0) or the Hessian probe (-1): halve the
        micro-batch for the rest of the run and record it, or re-raise when ``err`` is no
        out-of-memory error, under DDP (the other ranks are inside the collectives) or at 1."""
        if not is_oom(err) or distributed or self.micro <= 1:
            raise err
        self.micro = max(1, self.micro // 2)
        self.backoffs.append({"epoch": epoch, "step": step, "micro_batch": self.micro})


# --- data on the device ------------------------------------------------------------------------


def to_device_data(split: Any, device: torch.device, mode: bool | str) -> tuple[Any, str]:
    """Move a tensor split's ``x``/``y`` (uint8 stays uint8) to a CUDA device when
    ``data.on_device`` says so (auto: when it takes under a quarter of the free memory).
    Returns the split and a note of what was done."""
    if mode is False or not hasattr(split, "x"):
        return split, ""
    if device.type != "cuda":
        return (
            split,
            "" if mode == "auto" else "data.on_device: no CUDA device; data stay on the CPU",
        )
    need = split.x.numel() * split.x.element_size() + split.y.numel() * 8
    free, _total = torch.cuda.mem_get_info(device)
    if mode == "auto" and need > free / 4:
        return split, ""
    split.x, split.y = split.x.to(device), split.y.to(device)
    return split, f"data on {device} ({need / 2**20:.0f} MiB)"
