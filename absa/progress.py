"""Live progress of the CLI on a terminal (rich): the bar of ``absa train`` and the phase bars
of ``absa hessian``; plain lines when stderr is not a terminal. Presentation only: imported
by absa.cli, imports no other absa module.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from rich.console import Console

# --- `absa train` ----------------------------------------------------------------------------
#
# The trainer gets ``progress(epoch, epochs) -> on_step`` once per epoch (rank 0, terminal
# only) and calls ``on_step(step, n_steps, info)`` with either
#   * a float: the learning rate (the original 3-argument call), or
#   * a mapping, every key optional:
#       phase         "train" (default) | "hessian" | "eval" | "final_eval"; step/n_steps
#                     count that phase's units (train steps, HVPs, eval batches; n_steps 0:
#                     unknown, shown as a pulsing bar)
#       lr, batch_size, adv_fraction     the step's settings
#       loss, acc     running mean train loss and accuracy (%) of the epoch so far
#       lambda_max    the last top Hessian eigenvalue (kept on screen until a new one comes)
#       updates       SGD updates of the run so far
# Values that are None are ignored. See progress_factory.

PHASES = {
    "train": "train",
    "hessian": "Hessian probe",
    "eval": "eval",
    "final_eval": "final eval",
}
_KEPT = ("lambda_max",)  # shown across epochs until replaced


def _clock(seconds: float | None) -> str:
    if seconds is None or not seconds >= 0 or seconds == float("inf"):
        return "-:--:--"
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def _step_parts(info: Mapping[str, Any]) -> list[str]:
    parts = []
    if info.get("batch_size") is not None:
        parts.append(f"B {int(info['batch_size'])}")
    if info.get("lr") is not None:
        parts.append(f"lr {info['lr']:.3g}")
    if info.get("loss") is not None:
        parts.append(f"loss {info['loss']:.4g}")
    if info.get("acc") is not None:
        parts.append(f"acc {info['acc']:.1f}%")
    if info.get("adv_fraction"):
        parts.append(f"adv {info['adv_fraction']:.2g}")
    if info.get("lambda_max") is not None:
        parts.append(f"λmax {info['lambda_max']:.4g}")
    return parts


def step_text(info: Mapping[str, Any]) -> str:
    """The numbers of a progress line, e.g. ``B 256  lr 0.05  loss 0.412  acc 88.1%``."""
    return "  ".join(_step_parts(info))


# Which numbers a narrow line keeps first (B always; then these, in this order).
_STATS_PRIORITY = ("lr", "λmax", "loss", "acc", "adv")


def fit_stats(info: Mapping[str, Any], eta: str, run_eta: str, room: int | None) -> str:
    """The stats column in ``room`` characters (None: no limit): the batch and both ETAs
    always (shortened to ``eta 0:00:06 ep 0:01:18 run`` when needed), then lr, lambda_max,
    loss, accuracy, adversarial fraction until one does not fit, in step_text's order."""
    parts = _step_parts(info)
    etas = f"eta {eta} epoch, {run_eta} run"
    if room is None:
        return "  ".join([*parts, etas])
    keep = [p for p in parts if p.startswith("B ")]
    if sum(len(p) + 2 for p in keep) + len(etas) > room:
        etas = f"eta {eta} ep {run_eta} run"
    for name in _STATS_PRIORITY:
        more = keep + [p for p in parts if p.split(" ")[0] == name]
        if sum(len(p) + 2 for p in more) + len(etas) > room:
            break
        keep = more
    return "  ".join([*(p for p in parts if p in keep), etas])


def _bar_width(columns: int) -> int:
    """The live bar's width: 18 on a wide terminal, 8 below 120 columns."""
    return 18 if columns >= 120 else 8


def progress_factory(
    progress: Any, clock: Callable[[], float] = time.monotonic
) -> Callable[[int, int], Callable[..., None]]:
    """``progress(epoch, epochs) -> on_step(step, n_steps, lr_or_info)`` on a rich Progress.

    One task per epoch: the phase, a bar of its steps, the step's numbers and two ETAs:
    the epoch's (from this epoch's training steps so far) and the run's (from the run's
    wall time per epoch so far, Hessian probes and evaluation included; from the first
    epoch this process trained, so a resumed run estimates from its own epochs). On a
    narrow console the stats keep the batch and the ETAs first (fit_stats)."""
    run: dict[str, Any] = {"t0": None, "e0": 0, "kept": {}}
    console = getattr(progress, "console", None)
    columns = getattr(console, "width", None)

    def factory(epoch: int, epochs: int) -> Callable[..., None]:
        now = clock()
        if run["t0"] is None:
            run["t0"], run["e0"] = now, epoch
        for task in list(progress.task_ids):
            progress.remove_task(task)
        label = f"epoch {epoch}/{epochs - 1}"  # 0-based, as in metrics.jsonl
        task = progress.add_task(f"{label} {PHASES['train']}", total=None, stats="")
        state: dict[str, Any] = {"phase": "train", "t": now, "frac": 0.0, "eta": None}

        def update(step: int, steps: int, info: Mapping[str, Any] | float | None = None) -> None:
            if not isinstance(info, Mapping):
                info = {} if info is None else {"lr": float(info)}
            phase = str(info.get("phase") or "train")
            t = clock()
            if phase != state["phase"]:
                state.update(phase=phase, t=t)
            values = {k: v for k, v in info.items() if v is not None and k != "phase"}
            run["kept"].update({k: values[k] for k in _KEPT if k in values})
            if phase == "train":
                state.setdefault("shown", {}).update(values)
                if steps > 0:
                    state["frac"] = min(step / steps, 1.0)
                    if step > 0:
                        state["eta"] = (t - state["t"]) / step * (steps - step)
            shown = {**state.get("shown", {}), **run["kept"]}
            done = epoch - run["e0"] + state["frac"]
            left = epochs - epoch - state["frac"]
            run_eta = (t - run["t0"]) / done * left if done > 0 else None
            eta = state["eta"] if phase == "train" else None
            description = f"{label} {PHASES.get(phase, phase)}"
            room = None
            if columns is not None:  # description, bar, "step/steps", and the gaps
                mofn = 2 * len(str(steps)) + 1 if steps > 0 else len(str(step)) + 2
                room = columns - len(description) - _bar_width(columns) - mofn - 4
            progress.update(
                task,
                completed=step,
                total=steps if steps > 0 else None,
                description=description,
                stats=fit_stats(shown, _clock(eta), _clock(run_eta), room),
            )

        return update

    return factory


def progress_columns(columns: int = 160) -> list[Any]:
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn

    return [
        TextColumn("{task.description}"),
        BarColumn(bar_width=_bar_width(columns)),
        MofNCompleteColumn(),
        TextColumn("{task.fields[stats]}"),
    ]


@contextmanager
def progress_output(console: Console) -> Iterator[tuple[Callable[[str], None], Any]]:
    """``(log, progress)`` for training: a live progress bar on ``console`` when it is a
    terminal; plain log lines on stdout and no bar otherwise."""
    if not console.is_terminal:
        yield (lambda msg: print(msg, flush=True)), None
        return
    from rich.progress import Progress

    columns = progress_columns(console.width)
    with Progress(*columns, console=console, transient=True) as progress:
        yield (
            (lambda msg: progress.console.print(msg, highlight=False)),
            progress_factory(progress),
        )


# --- `absa hessian` --------------------------------------------------------------------------


@contextmanager
def phase_output(console: Console) -> Iterator[tuple[Callable[[str], None], Any]]:
    """``(say, progress(phase, done, total))`` for absa hessian: a bar per phase on
    ``console`` when it is a terminal (with the time the phase has taken), plain lines and
    no bars otherwise."""
    if not console.is_terminal:
        yield print, None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    names = {
        "eigen": "top-k eigenvalues (HVPs)",
        "trace": "trace (HVPs)",
        "density": "density (HVPs)",
        "landscape": "loss landscape (loss evaluations)",
    }
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(bar_width=24 if console.width >= 100 else 12),  # 80 columns fit
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    ) as bars:
        tasks: dict[str, Any] = {}

        def tick(phase: str, done: int, total: int) -> None:
            if phase not in tasks:
                for t in bars.tasks:  # the previous phases ended (maybe converged early)
                    bars.update(t.id, total=t.completed)
                tasks[phase] = bars.add_task(names.get(phase, phase), total=total)
            bars.update(tasks[phase], completed=done, total=max(total, done))

        yield (lambda m: bars.console.print(m, highlight=False)), tick
