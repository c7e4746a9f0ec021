"""The ``absa`` command line (typer); the only module that reads argv.

Errors the user can fix (config, data, checkpoint, run folder) print one line on stderr
and exit with status 2; a diverged run exits with status 3 keeping its last good checkpoint.
"""

from __future__ import annotations

import inspect
import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import typer
from rich.console import Console
from rich.table import Table

# the executors of absa.fleet.sweep (EXECUTORS there; tests/test_cli.py checks they agree): not
# imported from it, so that `absa --help` does not import torch
EXECUTORS = ("local", "slurm", "submitit-local")
Executor = Literal["local", "slurm", "submitit-local"]

app = typer.Typer(
    name="absa",
    help=(
        "Train image classifiers with large, growing batches: the batch size grows when the "
        "top Hessian eigenvalue drops (ABS), with adversarial training mixed in (ABSA); "
        "baselines BL, FB and GG run from the same configs."
    ),
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    add_completion=False,
)
err_console = Console(stderr=True)
console = Console()
F = TypeVar("F", bound=Callable[..., Any])


def _reflowed(fn: F) -> F:
    """Join the hard-wrapped lines of a command's docstring into paragraphs (typer keeps
    single newlines after the first paragraph, so ``--help`` showed the source's line
    breaks as ragged lines); rich then wraps each paragraph to the terminal."""
    paragraphs = inspect.cleandoc(fn.__doc__ or "").split("\n\n")
    fn.__doc__ = "\n\n".join(" ".join(p.split()) for p in paragraphs)
    return fn


def _version(value: bool) -> None:
    if value:
        from absa import __version__

        print(f"absa {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print absa's version and exit."
        ),
    ] = False,
) -> None:
    pass


USER_ERROR = 2
DIVERGED = 3


class CliError(Exception):
    """A one-line message for the user; exit status ``code``."""

    def __init__(self, message: str, code: int = USER_ERROR) -> None:
        super().__init__(message)
        self.code = code


def _user_errors() -> tuple[type[BaseException], ...]:
    from absa.engine.loop import RunFolderError
    from absa.run.checkpoint import CheckpointError
    from absa.run.config import ConfigError
    from absa.run.data import DataError
    from absa.run.models import ModelError

    # OSError: unwritable out_dir, a file where a folder should be, a full disk...
    return (
        ConfigError,
        DataError,
        CheckpointError,
        ModelError,
        RunFolderError,
        ValueError,
        OSError,
    )


class Terminated(KeyboardInterrupt):
    """SIGTERM (Slurm, Kubernetes, kill), raised in the main thread as Ctrl-C raises
    KeyboardInterrupt, so that both stop a run the same way."""


@contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """While training, SIGTERM raises Terminated instead of ending the process at once."""
    import signal

    def handler(signum: int, frame: Any) -> None:
        raise Terminated()

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _interrupted(err: KeyboardInterrupt, run_dir: Path | None) -> None:
    """Ctrl-C or SIGTERM: one line (rank 0 only) with the resume command, then exit 130,
    or end by SIGTERM itself (status -15 to a parent, 143 in a shell: Slurm and absa sweep
    read that as the job being stopped)."""
    import signal

    if os.environ.get("RANK", "0") == "0":
        how = " by SIGTERM" if isinstance(err, Terminated) else ""
        again = f": absa train --resume {run_dir} continues" if run_dir is not None else ""
        err_console.print(
            f"interrupted{how}; the last completed epoch's checkpoint is kept{again}",
            highlight=False,
            soft_wrap=True,
        )
    if isinstance(err, Terminated):
        sys.stderr.flush()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
    raise typer.Exit(130) from None


@contextmanager
def _handled() -> Iterator[dict[str, Any]]:
    """Turn known failures into one line on stderr and a non-zero exit. The body may set
    ``["run_dir"]`` of the dict it gets: an interrupted run then names its resume command."""
    from absa.engine.loop import TrainingDiverged

    where: dict[str, Any] = {}
    try:
        yield where
    except CliError as err:
        err_console.print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
        raise typer.Exit(err.code) from None
    except TrainingDiverged as err:
        err_console.print(f"[bold red]diverged:[/] {err}", highlight=False, soft_wrap=True)
        raise typer.Exit(DIVERGED) from None
    except _user_errors() as err:
        err_console.print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
        raise typer.Exit(USER_ERROR) from None
    except (MemoryError, RuntimeError) as err:
        from absa.engine.accel import is_oom

        cpu = "can't allocate memory" in str(err)  # torch's DefaultCPUAllocator
        if not (isinstance(err, MemoryError) or is_oom(err) or cpu):
            raise
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        err_console.print(
            f"[bold red]error:[/] out of memory ({first}); lower batch.max_micro_batch, "
            "data.image_size or train.eval_batch (absa train --resume RUN_DIR continues from the "
            "last epoch)",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(USER_ERROR) from None
    except KeyboardInterrupt as err:
        _interrupted(err, where.get("run_dir"))


ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config", "-c", help="YAML config (see configs/). Defaults apply to unset keys."
    ),
]
OverridesArg = Annotated[
    list[str] | None,
    typer.Argument(
        metavar="KEY=VALUE",
        help="Dotted overrides applied after the YAML, e.g. optim.lr=0.2 batch.size=512 "
        "(every key: docs/config.md).",
        show_default=False,
    ),
]
CheckpointOverridesArg = Annotated[
    list[str] | None,
    typer.Argument(
        metavar="KEY=VALUE",
        help="Dotted overrides of the checkpoint's (or -c config's) settings, e.g. "
        "hessian.probe_size=1024 train.eval_batch=256.",
        show_default=False,
    ),
]
EvalOverridesArg = Annotated[
    list[str] | None,
    typer.Argument(
        metavar="KEY=VALUE",
        help="Dotted overrides of the checkpoint's config, e.g. adversarial.pgd_steps=20.",
        show_default=False,
    ),
]

ThreadsOpt = Annotated[
    int | None,
    typer.Option(help="Threads for torch (train.threads; default: the run's setting)."),
]
TrustOpt = Annotated[
    bool,
    typer.Option(
        "--trust-model-code",
        help="Import the module:function model a checkpoint's config names (runs its code).",
    ),
]
DeviceOpt = Annotated[
    str | None,
    typer.Option(help="auto | cpu | cuda | cuda:N | mps (train.device; default: the run's)."),
]


def _at_least(option: str, value: float | None, low: float) -> None:
    """``option: must be >= low`` unless ``value`` is None or at least ``low`` (NaN fails)."""
    if value is not None and not value >= low:
        raise CliError(f"{option}: must be >= {low:g} (got {value:g})")


def _positive(option: str, value: float | None) -> None:
    if value is not None and not value > 0:
        raise CliError(f"{option}: must be > 0 (got {value:g})")


def _device_check(device: str) -> None:
    """Refuse a --device that train.device would refuse: its name, then its availability."""
    from absa.distributed import resolve_device
    from absa.run import config as C

    try:
        C.validate({"train": {"device": device}}, "--device")
        resolve_device(device)
    except ValueError as err:  # ConfigError is a ValueError too
        raise CliError(f"--device: {str(err).rsplit('train.device: ', 1)[-1]}") from None


def _run_overrides(threads: int | None, device: str | None) -> list[str]:
    """``--threads`` and ``--device`` as the dotted overrides they stand for, checked."""
    _at_least("--threads", threads, 1)
    out = [f"train.threads={threads}"] if threads is not None else []
    if device is not None:
        _device_check(device)
        out.append(f"train.device={device}")
    return out


# --- live progress of `absa train` ----------------------------------------------------------
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
# Values that are None are ignored. See _progress_factory.

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


def _progress_factory(
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


def _progress_columns(columns: int = 160) -> list[Any]:
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn

    return [
        TextColumn("{task.description}"),
        BarColumn(bar_width=_bar_width(columns)),
        MofNCompleteColumn(),
        TextColumn("{task.fields[stats]}"),
    ]


@contextmanager
def _progress_output() -> Iterator[tuple[Callable[[str], None], Any]]:
    """A live progress bar on a terminal; plain log lines otherwise."""
    if not err_console.is_terminal:
        yield (lambda msg: print(msg, flush=True)), None
        return
    from rich.progress import Progress

    columns = _progress_columns(err_console.width)
    with Progress(*columns, console=err_console, transient=True) as progress:
        yield (
            (lambda msg: progress.console.print(msg, highlight=False)),
            _progress_factory(progress),
        )


@contextmanager
def _phase_output() -> Iterator[tuple[Callable[[str], None], Any]]:
    """``(say, progress(phase, done, total))`` for absa hessian: a bar per phase on a
    terminal (with the time the phase has taken), plain lines and no bars otherwise."""
    if not err_console.is_terminal:
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
        BarColumn(bar_width=24 if err_console.width >= 100 else 12),  # 80 columns fit
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=err_console,
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


def _relaunch(nproc: int, config: Path | None = None) -> None:
    """``absa train --nproc N ...`` -> ``torchrun --standalone --nproc-per-node N -m absa train ...``.

    ``config``: the file the parent chose without -c (configs/default.yaml), passed on."""
    from torch.distributed.run import main as torchrun_main

    args, skip = [], False
    for a in sys.argv[1:]:
        if skip:
            skip = False
            continue
        if a == "--nproc":
            skip = True
            continue
        if a.startswith("--nproc="):
            continue
        args.append(a)
    given = {"-c", "--config", "--resume"} & set(args) or any(
        a.startswith(("--config=", "--resume=")) for a in args
    )
    if config is not None and not given:
        args[1:1] = ["-c", str(config)]  # args[0] is the subcommand
    from torch.distributed.elastic.multiprocessing import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    try:
        torchrun_main(["--standalone", f"--nproc-per-node={nproc}", "-m", "absa", *args])
    except ChildFailedError as err:  # the workers printed their errors; add the summary
        print(err.format_msg(), file=sys.stderr, flush=True)
        raise typer.Exit(1) from None
    except SignalException as err:  # Ctrl-C: torchrun passed the signal to the workers
        raise typer.Exit(128 + int(err.sigval)) from None


def default_config() -> Path | None:
    """configs/default.yaml of the source tree absa runs from (a checkout or an editable
    install), or None (an installed wheel ships no configs)."""
    path = Path(__file__).resolve().parent.parent / "configs" / "default.yaml"
    return path if path.is_file() else None


def _config_for(
    config: Path | None, overrides: list[str], resume: Path | None, quiet: bool = False
) -> Path | None:
    """The config file a train command uses: -c, else the resumed run's config.yaml, else the
    repo's configs/default.yaml (overrides, if any, apply on top of it; stderr says so), else
    None: the built-in defaults (an installed wheel ships no configs)."""
    if config is not None:
        return config
    if resume is not None:
        return resume / "config.yaml"
    note = (lambda m: None) if quiet else _note
    path = default_config()
    plus = " + the overrides" if overrides else ""
    if path is not None:
        note(f"no -c given: using {path}{plus}")
        return path
    note(f"no -c given and no configs/default.yaml: training on the built-in defaults{plus}")
    return None


def _note(msg: str) -> None:
    err_console.print(msg, highlight=False, soft_wrap=True, style="dim")


def _check_before_launch(
    config: Path | None, overrides: list[str], resume: Path | None, nproc: int
) -> None:
    from absa.distributed import check_gpu_per_rank, visible_cuda
    from absa.engine.loop import check_divisible, prepare_run_dir
    from absa.run import config as C

    cfg = C.load(config, overrides)
    check_gpu_per_rank(cfg.train.device, nproc, visible_cuda())
    prepare_run_dir(cfg, config.stem if config is not None else "run", resume)
    check_divisible(cfg, nproc)


def _write_json(path: Path, obj: Any) -> None:
    """Atomically write ``obj`` as JSON, creating the parent folder."""
    from absa.run.folder import atomic_write_text

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


@app.command()
@_reflowed
def train(
    config: ConfigOpt = None,
    overrides: OverridesArg = None,
    resume: Annotated[
        Path | None,
        typer.Option(help="Run folder to continue from its last.pt (config taken from it)."),
    ] = None,
    nproc: Annotated[
        int | None,
        typer.Option(help="Launch N local processes through torch.distributed.run (torchrun)."),
    ] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the summary here.")] = None,
    print_config: Annotated[
        bool,
        typer.Option(
            "--print-config",
            help="Print the fully resolved config (YAML) for -c and the overrides; train nothing.",
        ),
    ] = False,
    threads: Annotated[
        int | None, typer.Option(help="Threads for torch (the override train.threads=N).")
    ] = None,
    device: Annotated[
        str | None,
        typer.Option(help="auto | cpu | cuda | cuda:N | mps (the override train.device=...)."),
    ] = None,
) -> None:
    """Train a model; metrics.jsonl, config.yaml and last.pt go into the run folder.

    Without -c it trains configs/default.yaml (30 epochs of ABSA on the digits, the
    overrides applied on top); every config key is listed in docs/config.md. The run folder is
    train.out_dir/train.run_name (default runs/<config-stem>-<method>-b<batch>-s<seed>).
    Kill it any time: --resume RUN_DIR continues from the last completed epoch and ends with
    the same weights as an uninterrupted run.
    """
    with _handled():
        overrides = [*(overrides or []), *_run_overrides(threads, device)]
    if print_config:
        with _handled():
            from absa.run import config as C

            path = _config_for(config, overrides or [], resume, quiet=True)
            print(C.dump_yaml(C.load(path, overrides or [])), end="")
        return
    relaunch = nproc is not None and nproc > 1 and "RANK" not in os.environ
    # a torchrun worker gets the parent's argv: only the parent says which config it uses
    config = _config_for(config, overrides or [], resume, quiet="RANK" in os.environ)
    if relaunch:
        with _handled():  # errors every worker would hit: report them once, before launching
            _check_before_launch(config, overrides or [], resume, nproc)
        _relaunch(nproc, config)
        return
    with _handled() as where, _sigterm_interrupts():
        from absa import distributed as D
        from absa.engine.loop import prepare_run_dir, run
        from absa.run import config as C

        cfg = C.load(config, overrides or [])
        if os.environ.get("RANK", "0") == "0":
            for note in ignored_notes(cfg):
                err_console.print(f"note: {note}", highlight=False, soft_wrap=True)
        stem = config.stem if config is not None else "run"
        run_dir = where["run_dir"] = prepare_run_dir(cfg, stem, resume)
        env = D.setup(cfg.train.device, cfg.distributed.backend, cfg.distributed.timeout_s)
        ok = False
        try:
            with _progress_output() as (log, progress):
                summary = run(
                    cfg, env, run_dir, resume=resume is not None, log=log, progress=progress
                )
            ok = True
        finally:
            D.teardown(env, ok)  # no barrier after an error: the peers may never reach it
        if env.is_main:
            _print_summary(summary)
            if json_out is not None:
                _write_json(json_out, summary.__dict__)


def ignored_notes(cfg: Any) -> list[str]:
    """A line naming the ``schedule.*`` keys the config sets to a non-default value that its
    method does not read (none when there are none)."""
    from absa.math.policies import ignored_note

    fields = type(cfg.schedule).model_fields
    changed = [  # set to a non-default value (a resolved config sets every key to its value)
        k for k in cfg.schedule.model_fields_set if getattr(cfg.schedule, k) != fields[k].default
    ]
    note = ignored_note(cfg.schedule.method, [f"schedule.{k}" for k in changed])
    return [note] if note else []


def trajectory_text(summary: Any) -> str:
    """The batch/lr path of a run, e.g. ``32 @ lr 0.05 -> 64 @ 0.1 from epoch 5 (eigenvalue)``."""
    parts = [f"{summary.start_batch} @ lr {summary.start_lr:.3g}"]
    for g in summary.growths:
        parts.append(
            f"{g['new_batch']} @ {g['new_lr']:.3g} from epoch {g['epoch'] + 1} ({g['trigger']})"
        )
    return " -> ".join(parts)


def _print_summary(summary: Any) -> None:
    title = f"absa train: {summary.run_dir}"
    t = Table(title=title, show_header=False, min_width=len(title))  # the title on one line
    t.add_row("test accuracy", f"{summary.test_acc:.2f}%  (best {summary.best_test_acc:.2f}%)")
    for row in summary.robust:  # adversarial.final_eval (on the first eval_limit samples)
        what = "clean" if row["attack"] == "clean" else f"{row['attack']} eps {row['eps']:g}"
        t.add_row(f"robust eval: {what}", f"{row['acc']:.2f}%  (n {row['n']})")
    t.add_row("test loss", f"{summary.test_loss:.4f}")
    t.add_row("batch trajectory", trajectory_text(summary))
    t.add_row("final batch size", str(summary.final_batch))
    saved = ""
    if summary.bl_updates and summary.updates and summary.bl_updates != summary.updates:
        ratio = summary.bl_updates / summary.updates
        saved = f"  (BL at batch {summary.start_batch}: {summary.bl_updates}, {ratio:.1f}x more)"
    t.add_row("epochs / SGD updates", f"{summary.epochs} / {summary.updates}{saved}")
    t.add_row(
        "time train / hessian / eval",
        f"{summary.train_seconds:.1f}s / {summary.hessian_seconds:.1f}s / {summary.eval_seconds:.1f}s",
    )
    console.print(t)


@app.command("eval")
@_reflowed
def eval_cmd(
    checkpoint: Annotated[Path, typer.Option(help="last.pt or a run folder.")],
    overrides: EvalOverridesArg = None,
    data_dir: Annotated[
        Path | None, typer.Option(help="Override data.root (where the dataset files are).")
    ] = None,
    robust: Annotated[
        bool, typer.Option(help="Also report FGSM and PGD accuracy at adversarial.eval_eps.")
    ] = True,
    eps: Annotated[
        list[float] | None, typer.Option(help="Epsilons in [0,1] pixels (repeatable).")
    ] = None,
    limit: Annotated[
        int | None, typer.Option(help="Evaluate only the first N test samples (N >= 1).")
    ] = None,
    threads: ThreadsOpt = None,
    device: DeviceOpt = None,
    trust_model_code: TrustOpt = False,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write results as JSON.")] = None,
) -> None:
    """Test loss and accuracy of a checkpoint, plus robust accuracy under FGSM and PGD."""
    with _handled():
        from absa.engine.evaluation import evaluate, robustness

        _at_least("--limit", limit, 1)
        for e in eps or []:
            if not 0 <= e <= 1:
                raise CliError(f"--eps: must be in [0, 1] (got {e:g})")
        extra = [f"data.root={data_dir}"] if data_dir is not None else []
        extra += _run_overrides(threads, device)
        cfg, env, data, model, ck = _model_for(
            checkpoint, None, [*(overrides or []), *extra], trust_model_code
        )
        if robust:
            eps_list = list(eps) if eps else list(cfg.adversarial.eval_eps)
            out = robustness(
                model,
                data.test,
                env,
                eps_list,
                cfg.adversarial.pgd_steps,
                cfg.train.eval_batch,
                limit,
            )
        else:
            clean = evaluate(model, data.test, env, cfg.train.eval_batch, limit)
            out = [
                {"attack": "clean", "eps": 0.0, "loss": clean.loss, "acc": clean.acc, "n": clean.n}
            ]
        title = f"absa eval: {checkpoint} (after epoch {ck['epoch'] - 1}, {ck['updates']} updates)"
        table = Table(title=title, min_width=len(title))  # the title on one line
        for col in ("attack", "eps", "loss", "accuracy %", "samples"):
            table.add_column(col, justify="right" if col != "attack" else "left")
        for r in out:
            table.add_row(
                str(r["attack"]),
                f"{r['eps']:g}",
                f"{r['loss']:.4f}",
                f"{r['acc']:.2f}",
                str(r["n"]),
            )
        console.print(table)
        if json_out is not None:
            _write_json(json_out, {"checkpoint": str(checkpoint), "results": out})


def _not_yet(name: str) -> None:
    raise CliError(f"absa {name} is not available yet in this version", code=USER_ERROR)


def _model_for(
    checkpoint: Path | None, config: Path | None, overrides: list[str], trust: bool = False
) -> tuple[Any, Any, Any, Any, dict[str, Any] | None]:
    """(cfg, env, data, model, checkpoint dict) from a checkpoint or a config (fresh init).
    A checkpoint's ``module:function`` model is imported only with ``trust``."""
    from absa.run.models import code_imports

    mode = "allow" if trust or checkpoint is None else f"deny:{checkpoint}"
    with code_imports(mode):
        return _model_for_unguarded(checkpoint, config, overrides)


def _model_for_unguarded(
    checkpoint: Path | None, config: Path | None, overrides: list[str]
) -> tuple[Any, Any, Any, Any, dict[str, Any] | None]:
    from absa.distributed import DistEnv, resolve_device
    from absa.run import checkpoint as ckpt_io
    from absa.run import config as C
    from absa.run.data import load_data
    from absa.run.models import build_from_config

    ck = None
    if checkpoint is not None:
        ck = ckpt_io.load(checkpoint)
        cfg = C.from_dict(ck["config"], str(checkpoint))  # blame the file for its own errors
        if overrides:
            tree = C.apply_overrides(ck["config"], overrides)
            cfg = C.from_dict(tree, f"{checkpoint} + overrides")
        if config is not None:
            other = C.load(config, overrides)
            if other.model != cfg.model:
                raise CliError(
                    f"{checkpoint}: checkpoint is from model {ck['config']['model']} but "
                    f"{config} asks for {C.to_dict(other)['model']}"
                )
    else:
        cfg = C.load(config, overrides)
        torch_seed(cfg.train.seed)
    if cfg.train.threads:
        torch_threads(cfg.train.threads)
    env = DistEnv(device=resolve_device(cfg.train.device))
    data = load_data(cfg.data)
    model = build_from_config(cfg.model, data.info).to(env.device)
    if ck is not None:
        try:
            model.load_state_dict(ck["model"])
        except RuntimeError as err:
            lines = [ln.strip() for ln in str(err).strip().splitlines()]
            detail = next((ln for ln in lines[1:] if ln), lines[0])  # first missing/mismatch
            if len(detail) > 200:
                detail = detail[:200] + "..."
            raise CliError(
                f"{checkpoint}: weights do not fit model {cfg.model.name} "
                f"(width {cfg.model.width}): {detail}"
            ) from None
    return cfg, env, data, model, ck


def torch_seed(seed: int) -> None:
    import torch

    torch.manual_seed(seed)


def torch_threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)


def _source_context(cfg: Any, checkpoint: Path | None, config: Path | None) -> str:
    """``run absa-b512-s0 (epoch 30), digits, small_cnn``: the figures' subtitle."""
    if checkpoint is not None:
        folder = checkpoint.parent if checkpoint.suffix == ".pt" else checkpoint
        where = f"run {folder.name}"
    else:
        where = f"{config.name if config else 'defaults'} (fresh init)"
    return f"{where}, {cfg.data.name}, {cfg.model.name} (width {cfg.model.width})"


def _phase_size(option: str, on: bool | None, size: int | None, default: int, flag: str) -> int:
    """The size of an opt-in phase: 0 (off) unless ``--flag`` or a positive ``size``."""
    if on is False:
        return 0
    if size is not None and size == 0:
        if on:
            raise CliError(f"{option}: 0 contradicts --{flag} (give N >= 1 or drop --{flag})")
        return 0
    if on or size is not None:
        return size if size is not None else default
    return 0


@app.command("hessian")
@_reflowed
def hessian_cmd(
    checkpoint: Annotated[
        Path | None, typer.Option(help="last.pt or a run folder (its config is used).")
    ] = None,
    config: ConfigOpt = None,
    overrides: CheckpointOverridesArg = None,
    split: Annotated[str, typer.Option(help="train or test split.")] = "train",
    samples: Annotated[
        int | None,
        typer.Option(help="Use N random samples of the split (default hessian.probe_size)."),
    ] = None,
    block: Annotated[
        str | None,
        typer.Option(help="last | full | name patterns, e.g. 'layer4.*' (default hessian.block)."),
    ] = None,
    k: Annotated[int, typer.Option("-k", "--top-k", help="Number of top eigenvalues.")] = 5,
    method: Annotated[str, typer.Option(help="lanczos or power.")] = "lanczos",
    max_iter: Annotated[int, typer.Option(help="Lanczos steps / power iterations.")] = 100,
    rtol: Annotated[float, typer.Option(help="Relative tolerance of the eigenvalues.")] = 1e-3,
    trace: Annotated[
        bool | None,
        typer.Option(
            "--trace/--no-trace",
            help="Also estimate the trace (Hutchinson; up to --trace-samples HVPs). Off by default.",
        ),
    ] = None,
    trace_samples: Annotated[
        int | None,
        typer.Option(help="Hutchinson samples of --trace (default 100; N > 0 implies --trace)."),
    ] = None,
    density: Annotated[
        bool | None,
        typer.Option(
            "--density/--no-density",
            help="Also estimate the eigenvalue density (SLQ; --density-runs x --density-iter "
            "HVPs) and plot it with --plot. Off by default.",
        ),
    ] = None,
    density_iter: Annotated[
        int | None,
        typer.Option(help="Lanczos steps per SLQ run (default 60; N > 0 implies --density)."),
    ] = None,
    density_runs: Annotated[int, typer.Option(help="SLQ runs averaged.")] = 3,
    plot: Annotated[
        Path | None,
        typer.Option(help="Folder for PNGs: the density (--density) and landscape (--landscape)."),
    ] = None,
    landscape: Annotated[
        bool,
        typer.Option(
            "--landscape",
            help="Also plot the 1D/2D loss landscape into --plot: 2 x --points + (--points/2)^2 "
            "loss evaluations over --samples, often the slowest part. Off by default.",
        ),
    ] = False,
    radius: Annotated[
        float | None,
        typer.Option(help="Landscape half-width (default sqrt(2/lambda_max): +1 nat quadratic)."),
    ] = None,
    points: Annotated[
        int, typer.Option(help="Points per landscape axis, >= 3 (1D; 2D uses half).")
    ] = 21,
    batch: Annotated[int, typer.Option(help="Micro-batch for HVPs and losses.")] = 256,
    seed: Annotated[
        int | None,
        typer.Option(
            help="Seed of the sample and random starts (default train.seed: on the train split "
            "the sample is then training's own Hessian probe set)."
        ),
    ] = None,
    threads: ThreadsOpt = None,
    device: DeviceOpt = None,
    trust_model_code: TrustOpt = False,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write results as JSON.")] = None,
) -> None:
    """Hessian spectrum of a model: top-k eigenvalues (trace, density, landscape on request).

    The Hessian is of the mean cross-entropy over the chosen samples, with BatchNorm in eval
    mode, on a parameter block: [bold]last[/bold] (the classifier layer, fast: features are
    computed once) or [bold]full[/bold] (exact double-backprop HVPs; expensive on CPU).
    Before each long phase the expected cost is printed (from one timed HVP).
    """
    with _handled():
        from absa.engine import analysis as A

        if checkpoint is None and config is None:
            raise CliError("give --checkpoint RUN_DIR|last.pt or --config CONFIG (fresh init)")
        if split not in ("train", "test"):
            raise CliError(f"--split: expected train or test (got {split!r})")
        if method not in ("lanczos", "power"):
            raise CliError(f"--method: expected lanczos or power (got {method!r})")
        for option, value, low in (
            ("-k", k, 1),
            ("--max-iter", max_iter, 1),
            ("--batch", batch, 1),
            ("--samples", samples, 1),
            ("--trace-samples", trace_samples, 0),
            ("--density-iter", density_iter, 0),
            ("--density-runs", density_runs, 1),
            ("--points", points, 3),
        ):
            _at_least(option, value, low)
        _positive("--rtol", rtol)
        _positive("--radius", radius)
        if landscape and plot is None:
            raise CliError("--landscape: give --plot DIR too (where its PNGs go)")
        n_trace = _phase_size("--trace-samples", trace, trace_samples, 100, "trace")
        n_density = _phase_size("--density-iter", density, density_iter, 60, "density")
        extra = _run_overrides(threads, device)
        cfg, env, data, model, ck = _model_for(
            checkpoint, config, [*(overrides or []), *extra], trust_model_code
        )
        blk = block or cfg.hessian.block
        n = samples if samples is not None else cfg.hessian.probe_size
        chosen = data.train if split == "train" else data.test
        seed = cfg.train.seed if seed is None else seed
        batches = A.batches_of(chosen, n, batch, env.device, seed)
        req = A.SpectrumRequest(
            block=blk,
            k=k,
            method=method,
            max_iter=max(max_iter, k),
            rtol=rtol,
            trace_samples=n_trace,
            density_iter=n_density,
            density_runs=density_runs,
            seed=seed,
            hvp=cfg.hessian.hvp,
            keep_graph=cfg.hessian.keep_graph,
        )
        source = str(checkpoint) if checkpoint is not None else f"{config} (fresh init)"
        context = _source_context(cfg, checkpoint, config)
        result: dict[str, Any] = {}
        with _phase_output() as (say, tick):
            spec = A.spectrum(model, batches, req, say, tick)
            if plot is not None:
                result.update(
                    _landscape_plots(
                        model,
                        data,
                        batches,
                        spec,
                        (blk, n, batch, seed, max_iter, rtol),
                        env,
                        radius,
                        points if landscape else None,
                        plot,
                        context,
                        say,
                        tick,
                    )  # fmt: skip
                )
        table = Table(title=f"absa hessian: {source}", min_width=len(f"absa hessian: {source}"))
        table.add_column("quantity")
        table.add_column("value", justify="right")
        table.add_row("block / parameters", f"{blk} / {spec.block_size}")
        table.add_row(f"samples ({split})", str(spec.samples))
        for i, lam in enumerate(spec.eigenvalues):
            table.add_row(f"lambda_{i + 1}", f"{lam:.6g}")
        table.add_row(
            "eigen: HVPs / seconds / converged",
            f"{spec.eigen_hvps} / {spec.eigen_seconds:.2f}s / {spec.converged}",
        )
        if spec.trace is not None:
            table.add_row(
                "trace (Hutchinson)",
                f"{spec.trace:.6g} +- {spec.trace_std_err:.2g} "
                f"({spec.trace_hvps} HVPs, {spec.trace_seconds:.2f}s)",
            )
        if spec.density is not None:
            table.add_row(
                "mean eigenvalue (SLQ)",
                f"{spec.density['mean']:.4g} ({spec.density_hvps} HVPs, "
                f"{spec.density_seconds:.2f}s)",
            )
        result = {
            "source": source,
            "split": split,
            "block": blk,
            "block_size": spec.block_size,
            "samples": spec.samples,
            "method": method,
            "eigenvalues": spec.eigenvalues,
            "converged": spec.converged,
            "eigen_hvps": spec.eigen_hvps,
            "eigen_seconds": spec.eigen_seconds,
            "hvp_seconds": spec.hvp_seconds,
            "trace": spec.trace,
            "trace_std_err": spec.trace_std_err,
            "trace_hvps": spec.trace_hvps,
            "trace_seconds": spec.trace_seconds,
            "density": spec.density,
            "density_hvps": spec.density_hvps,
            "density_seconds": spec.density_seconds,
            "epoch": ck["epoch"] if ck else None,
            **result,
        }
        if "landscape_seconds" in result:
            table.add_row(
                "landscape / plots",
                f"{result['landscape_seconds']:.2f}s / {result['plots_seconds']:.2f}s",
            )
        if result.get("plots"):
            table.add_row("plots", "\n".join(result["plots"]))
        console.print(table)
        if json_out is not None:
            _write_json(json_out, result)


def _landscape_plots(
    model: Any,
    data: Any,
    batches: Any,
    spec: Any,
    request: tuple[str, int, int, int, int, float],
    env: Any,
    radius: float | None,
    points: int | None,
    folder: Path,
    context: str,
    say: Callable[[str], None],
    tick: Any,
) -> dict[str, Any]:
    """The PNGs of --plot with their times: the loss landscape along the top two
    eigenvectors (``points`` per axis; None: --landscape not given, none) and the density.
    ``request``: (block, samples, micro-batch, seed, max_iter, rtol) of the spectrum."""
    from absa.fleet import plots

    blk, n, batch, seed, max_iter, rtol = request
    out: dict[str, Any] = {}
    files = []
    t0 = time.perf_counter()
    if points is not None:
        land = _landscape(model, data, batches, spec, request, env, radius, points, say, tick)
        out.update(landscape=land, landscape_seconds=time.perf_counter() - t0)
        lam = spec.eigenvalues[0]
        files.append(plots.landscape_1d(land, lam, blk, folder / "landscape_1d.png", context))
        if "surface" in land:
            files.append(plots.landscape_2d(land, blk, folder / "landscape_2d.png", context))
    if spec.density is not None:
        files.append(
            plots.density(spec.density, spec.eigenvalues, blk, folder / "density.png", context)
        )
    out["plots_seconds"] = time.perf_counter() - t0 - out.get("landscape_seconds", 0.0)
    if not files:
        say("--plot: nothing to draw (add --landscape and/or --density)")
    else:
        took = f"landscape {out['landscape_seconds']:.2f}s, " if points is not None else ""
        say(f"{took}plots {out['plots_seconds']:.2f}s: {', '.join(str(f) for f in files)}")
    return {**out, "plots": [str(f) for f in files]}


def _landscape(
    model: Any,
    data: Any,
    batches: Any,
    spec: Any,
    request: tuple[str, int, int, int, int, float],
    env: Any,
    radius: float | None,
    points: int,
    say: Callable[[str], None],
    tick: Any,
) -> dict[str, Any]:
    """Train/test loss along the top eigenvector and on the plane of the top two, its cost
    said first (from one timed loss evaluation)."""
    import math

    from absa.engine import analysis as A

    blk, n, batch, seed, max_iter, rtol = request
    lam = spec.eigenvalues[0]
    r = radius if radius is not None else (math.sqrt(2 / lam) if lam > 0 else 1.0)
    splits = {
        "train": A.batches_of(data.train, n, batch, env.device, seed),
        "test": A.batches_of(data.test, n, batch, env.device, seed),
    }
    vecs = spec.vectors
    if len(vecs) < 2 and spec.block_size >= 2:
        say("second eigenvector for the 2D surface...")
        two = A.SpectrumRequest(
            block=blk, k=2, method="lanczos", max_iter=max(max_iter, 2), rtol=rtol, seed=seed
        )
        vecs = A.spectrum(model, batches, two).vectors
    points_2d = max(points // 2, 3)
    evals = A.landscape_evaluations(len(splits), points, points_2d, len(vecs) >= 2)
    t_loss = math.inf
    for _ in range(2):  # the fastest of two: the first also pays one-off costs
        t0 = time.perf_counter()
        A.mean_loss(model, splits["train"])
        t_loss = min(t_loss, time.perf_counter() - t0)
    say(
        f"loss landscape: {points} points x {len(splits)} splits"
        + (f" + {points_2d}x{points_2d} surface" if len(vecs) >= 2 else "")
        + f" = {evals} loss evaluations, ~{A.seconds_text(evals * t_loss)} "
        f"(one took {A.seconds_text(t_loss)}); radius {r:.3g}"
    )
    return A.landscape(model, blk, vecs, splits, r, points, points_2d, tick)


@app.command()
@_reflowed
def sweep(
    sweep_file: Annotated[
        Path, typer.Argument(metavar="SWEEP_FILE", help="Sweep YAML: base config + grid.")
    ],
    executor: Annotated[
        Executor,
        typer.Option(
            metavar="WHERE",
            help="Where points run: local, slurm or submitit-local (submitit on this machine).",
        ),
    ] = "local",
    max_parallel: Annotated[
        int | None,
        typer.Option(help="Points at once (local) or array parallelism (slurm)."),
    ] = None,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run/--no-dry-run", help="List points, folders and status; run nothing."
        ),
    ] = False,
    wait: Annotated[
        bool,
        typer.Option(
            "--wait/--no-wait",
            help="slurm: wait for the job array (--no-wait: return once submitted).",
        ),
    ] = True,
) -> None:
    """Run a grid of configs (method x batch size x seed x ...) locally or on Slurm.

    Each point trains in <out_dir>/runs/<name>; finished points are skipped, failed or
    interrupted ones are resumed on the next call. Slurm jobs are submitit job arrays that
    requeue on preemption and resume from their checkpoint. Exit status 1 if a point failed.
    """
    with _handled():
        from absa.fleet.sweep import run_sweep

        result = run_sweep(sweep_file, executor, max_parallel, dry_run, say=_say, wait=wait)
        if not dry_run:
            _say(
                f"done {len(result.done)}, skipped (finished before) {len(result.skipped)}, "
                f"failed {len(result.failed)}, pending {len(result.pending)}"
            )
            if result.done or result.skipped:
                _say(f"report: absa report {result.out_dir}")
        if result.exit_code:
            raise typer.Exit(result.exit_code)


@app.command()
@_reflowed
def report(
    sweep_dirs: Annotated[
        list[Path],
        typer.Argument(
            metavar="SWEEP_DIR...",
            help="A sweep's out_dir, a folder of runs or one run folder; several: one report.",
        ),
    ],
    out: Annotated[
        Path | None,
        typer.Option(help="Where report.md/csv and PNGs go (default: the first SWEEP_DIR/report)."),
    ] = None,
) -> None:
    """Tables and plots of a sweep's finished runs (report.md, report.csv, PNGs).

    The paper-style table (rows: batch size; columns: method with final test accuracy and
    SGD updates, mean ± std over seeds), a cost/robustness table (updates to a target
    accuracy, samples processed, HVPs, Hessian time share, clean/FGSM/PGD accuracy), and
    plots: accuracy and updates vs batch size, accuracy vs updates and vs wall time,
    per-method batch/lr/lambda_max trajectories.
    """
    with _handled():
        from absa.fleet.report import make_report

        res = make_report(sweep_dirs, out, console=console, warn=_warn)
        _say(f"wrote {res.md_path}, {res.csv_path}, " + ", ".join(str(p) for p in res.plots))


def _say(msg: str) -> None:
    print(msg, flush=True)


def _warn(msg: str) -> None:
    """One line on stderr: ``warning: <file>: <why>``."""
    err_console.print(f"[bold yellow]warning:[/] {msg}", highlight=False, soft_wrap=True)


def main() -> None:
    try:
        app()
    except BaseException as err:
        dist_mod = sys.modules.get("absa.distributed")
        if dist_mod is None or not dist_mod.joined():
            raise
        # a distributed worker (its group already torn down): end it without the
        # interpreter's shutdown, where gloo's threads can abort a finished process
        if isinstance(err, SystemExit):
            code = err.code if isinstance(err.code, int) else (0 if err.code is None else 1)
            if isinstance(err.code, str):
                print(err.code, file=sys.stderr)
        else:
            import traceback

            from torch.distributed.elastic.multiprocessing.errors import ErrorHandler

            rank = dist_mod.process_env()[0]
            print(f"rank {rank} failed:", file=sys.stderr)
            traceback.print_exc()
            ErrorHandler().record_exception(err)  # torchrun's failure summary shows it
            code = 1
        dist_mod.exit_process(code)


if __name__ == "__main__":
    main()
