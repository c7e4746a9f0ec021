"""The ``absa`` command line (typer); the only module that reads argv.

A thin layer over absa.api: each command parses its options, calls the api and prints (or
plots through the api) what it returns. absa.api imports torch only when a command calls
it, so ``absa --help`` does not pay for torch.

Errors the user can fix (config, data, checkpoint, run folder) print one line on stderr
and exit with status 2; a diverged run exits with status 3 keeping its last good checkpoint.
"""

from __future__ import annotations

import inspect
import os
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from absa import __version__, api
from absa.progress import phase_output, progress_output

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
    # OSError: unwritable out_dir, a file where a folder should be, a full disk...
    return (
        api.ConfigError,
        api.DataError,
        api.CheckpointError,
        api.ModelError,
        api.RunFolderError,
        ValueError,
        OSError,
    )


class Terminated(KeyboardInterrupt):
    """SIGTERM (Slurm, Kubernetes, kill), raised in the main thread as Ctrl-C raises
    KeyboardInterrupt, so that both stop a run the same way."""


@contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """While training, SIGTERM raises Terminated instead of ending the process at once."""

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
    diverged = api.TrainingDiverged  # loads torch, as every command body does
    where: dict[str, Any] = {}
    try:
        yield where
    except CliError as err:
        err_console.print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
        raise typer.Exit(err.code) from None
    except diverged as err:
        err_console.print(f"[bold red]diverged:[/] {err}", highlight=False, soft_wrap=True)
        raise typer.Exit(DIVERGED) from None
    except _user_errors() as err:
        err_console.print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
        raise typer.Exit(USER_ERROR) from None
    except (MemoryError, RuntimeError) as err:
        cpu = "can't allocate memory" in str(err)  # torch's DefaultCPUAllocator
        if not (isinstance(err, MemoryError) or api.is_oom(err) or cpu):
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


JsonOpt = Annotated[Path | None, typer.Option("--json", help="Write results as JSON.")]


def _at_least(option: str, value: float | None, low: float) -> None:
    """``option: must be >= low`` unless ``value`` is None or at least ``low`` (NaN fails)."""
    if value is not None and not value >= low:
        raise CliError(f"{option}: must be >= {low:g} (got {value:g})")


def _positive(option: str, value: float | None) -> None:
    if value is not None and not value > 0:
        raise CliError(f"{option}: must be > 0 (got {value:g})")


def _device_check(device: str) -> None:
    """Refuse a --device that train.device would refuse: its name, then its availability."""
    try:
        api.check_device(device)
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


def _relaunch(nproc: int, config: Path | None = None) -> None:
    """``absa train --nproc N ...`` -> ``torchrun --standalone --nproc-per-node N -m absa train ...``.

    ``config``: the file the parent chose without -c (configs/default.yaml), passed on."""
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
    try:
        api.launch(nproc, args)
    except api.LaunchFailed as err:
        if err.summary is not None:  # the workers printed their errors; add the summary
            print(err.summary, file=sys.stderr, flush=True)
        raise typer.Exit(err.code) from None


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
        return resume / api.CONFIG
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
            path = _config_for(config, overrides, resume, quiet=True)
            print(api.config_yaml(api.load_config(path, overrides)), end="")
        return
    relaunch = nproc is not None and nproc > 1 and "RANK" not in os.environ
    # a torchrun worker gets the parent's argv: only the parent says which config it uses
    config = _config_for(config, overrides, resume, quiet="RANK" in os.environ)
    if relaunch:
        with _handled():  # errors every worker would hit: report them once, before launching
            api.check_launch(config, overrides, resume, nproc)
        _relaunch(nproc, config)
        return
    _train_here(config, overrides, resume, json_out)


def _train_here(
    config: Path | None, overrides: list[str], resume: Path | None, json_out: Path | None
) -> None:
    """Train in this process (one of several under torchrun or srun): the notes, the live
    progress, then the summary table (rank 0)."""
    with _handled() as where, _sigterm_interrupts():
        cfg = api.load_config(config, overrides)
        if os.environ.get("RANK", "0") == "0":
            for note in api.ignored_notes(cfg):
                err_console.print(f"note: {note}", highlight=False, soft_wrap=True)
        stem = config.stem if config is not None else "run"
        run_dir = where["run_dir"] = api.run_folder(cfg, stem, resume)
        with progress_output(err_console) as (log, progress):
            res = api.train(cfg, run_dir, resume=resume is not None, log=log,
                            progress=progress, distributed=True)  # fmt: skip
        if res.rank == 0:
            _print_summary(res.summary)
            if json_out is not None:
                api.write_json(json_out, res.summary.__dict__)


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
    json_out: JsonOpt = None,
) -> None:
    """Test loss and accuracy of a checkpoint, plus robust accuracy under FGSM and PGD."""
    with _handled():
        _at_least("--limit", limit, 1)
        for e in eps or []:
            if not 0 <= e <= 1:
                raise CliError(f"--eps: must be in [0, 1] (got {e:g})")
        extra = [f"data.root={data_dir}"] if data_dir is not None else []
        extra += _run_overrides(threads, device)
        loaded = api.open_model(checkpoint, None, [*(overrides or []), *extra], trust_model_code)
        out = api.evaluate_run(loaded, robust, eps or (), limit)
        _print_eval(checkpoint, loaded.checkpoint or {}, out)
        if json_out is not None:
            api.write_json(json_out, {"checkpoint": str(checkpoint), "results": out})


def _print_eval(checkpoint: Path, ck: dict[str, Any], out: list[dict[str, Any]]) -> None:
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


HessianCheckpointOpt = Annotated[
    Path | None, typer.Option(help="last.pt or a run folder (its config is used).")
]
SamplesOpt = Annotated[
    int | None,
    typer.Option(help="Use N random samples of the split (default hessian.probe_size)."),
]
BlockOpt = Annotated[
    str | None,
    typer.Option(help="last | full | name patterns, e.g. 'layer4.*' (default hessian.block)."),
]
TraceOpt = Annotated[
    bool | None,
    typer.Option(
        "--trace/--no-trace",
        help="Also estimate the trace (Hutchinson; up to --trace-samples HVPs). Off by default.",
    ),
]
TraceSamplesOpt = Annotated[
    int | None,
    typer.Option(help="Hutchinson samples of --trace (default 100; N > 0 implies --trace)."),
]
DensityOpt = Annotated[
    bool | None,
    typer.Option(
        "--density/--no-density",
        help="Also estimate the eigenvalue density (SLQ; --density-runs x --density-iter "
        "HVPs) and plot it with --plot. Off by default.",
    ),
]
DensityIterOpt = Annotated[
    int | None,
    typer.Option(help="Lanczos steps per SLQ run (default 60; N > 0 implies --density)."),
]
PlotOpt = Annotated[
    Path | None,
    typer.Option(help="Folder for PNGs: the density (--density) and landscape (--landscape)."),
]
LandscapeOpt = Annotated[
    bool,
    typer.Option(
        "--landscape",
        help="Also plot the 1D/2D loss landscape into --plot: 2 x --points + (--points/2)^2 "
        "loss evaluations over --samples, often the slowest part. Off by default.",
    ),
]
RadiusOpt = Annotated[
    float | None,
    typer.Option(help="Landscape half-width (default sqrt(2/lambda_max): +1 nat quadratic)."),
]
PointsOpt = Annotated[int, typer.Option(help="Points per landscape axis, >= 3 (1D; 2D uses half).")]
SeedOpt = Annotated[
    int | None,
    typer.Option(
        help="Seed of the sample and random starts (default train.seed: on the train split "
        "the sample is then training's own Hessian probe set)."
    ),
]


@app.command("hessian")
@_reflowed
def hessian_cmd(
    checkpoint: HessianCheckpointOpt = None,
    config: ConfigOpt = None,
    overrides: CheckpointOverridesArg = None,
    split: Annotated[str, typer.Option(help="train or test split.")] = "train",
    samples: SamplesOpt = None,
    block: BlockOpt = None,
    k: Annotated[int, typer.Option("-k", "--top-k", help="Number of top eigenvalues.")] = 5,
    method: Annotated[str, typer.Option(help="lanczos or power.")] = "lanczos",
    max_iter: Annotated[int, typer.Option(help="Lanczos steps / power iterations.")] = 100,
    rtol: Annotated[float, typer.Option(help="Relative tolerance of the eigenvalues.")] = 1e-3,
    trace: TraceOpt = None,
    trace_samples: TraceSamplesOpt = None,
    density: DensityOpt = None,
    density_iter: DensityIterOpt = None,
    density_runs: Annotated[int, typer.Option(help="SLQ runs averaged.")] = 3,
    plot: PlotOpt = None,
    landscape: LandscapeOpt = False,
    radius: RadiusOpt = None,
    points: PointsOpt = 21,
    batch: Annotated[int, typer.Option(help="Micro-batch for HVPs and losses.")] = 256,
    seed: SeedOpt = None,
    threads: ThreadsOpt = None,
    device: DeviceOpt = None,
    trust_model_code: TrustOpt = False,
    json_out: JsonOpt = None,
) -> None:
    """Hessian spectrum of a model: top-k eigenvalues (trace, density, landscape on request).

    The Hessian is of the mean cross-entropy over the chosen samples, with BatchNorm in eval
    mode, on a parameter block: [bold]last[/bold] (the classifier layer, fast: features are
    computed once) or [bold]full[/bold] (exact double-backprop HVPs; expensive on CPU).
    Before each long phase the expected cost is printed (from one timed HVP).
    """
    with _handled():
        if checkpoint is None and config is None:
            raise CliError("give --checkpoint RUN_DIR|last.pt or --config CONFIG (fresh init)")
        req = _hessian_request(
            split, samples, block, k, method, max_iter, rtol, trace, trace_samples, density,
            density_iter, density_runs, batch, seed, points, radius, landscape, plot,
        )  # fmt: skip
        extra = _run_overrides(threads, device)
        loaded = api.open_model(checkpoint, config, [*(overrides or []), *extra], trust_model_code)
        with phase_output(err_console) as (say, tick):
            res = api.hessian_analysis(loaded, req, say, tick)
            if plot is not None:
                _hessian_figures(res, plot, say)
        console.print(_hessian_table(res))
        if json_out is not None:
            api.write_json(json_out, res.to_dict())


def _hessian_request(
    split: str, samples: int | None, block: str | None, k: int, method: str, max_iter: int,
    rtol: float, trace: bool | None, trace_samples: int | None, density: bool | None,
    density_iter: int | None, density_runs: int, batch: int, seed: int | None, points: int,
    radius: float | None, landscape: bool, plot: Path | None,
) -> api.HessianRequest:  # fmt: skip
    """absa hessian's options, checked (one line naming the option), as an api.HessianRequest."""
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
    return api.HessianRequest(
        split, samples, block, k, method, max_iter, rtol,
        _phase_size("--trace-samples", trace, trace_samples, 100, "trace"),
        _phase_size("--density-iter", density, density_iter, 60, "density"),
        density_runs, batch, seed, points if landscape else None, radius,
    )  # fmt: skip


def _hessian_figures(res: api.HessianResult, folder: Path, say: Callable[[str], None]) -> None:
    """The PNGs of --plot, and a line saying what they took."""
    files = api.hessian_figures(res, folder)
    if not files:
        say("--plot: nothing to draw (add --landscape and/or --density)")
    else:
        took = f"landscape {res.landscape_seconds:.2f}s, " if res.landscape is not None else ""
        say(f"{took}plots {res.plots_seconds:.2f}s: {', '.join(str(f) for f in files)}")


def _hessian_table(res: api.HessianResult) -> Table:
    spec, title = res.spectrum, f"absa hessian: {res.source}"
    table = Table(title=title, min_width=len(title))
    table.add_column("quantity")
    table.add_column("value", justify="right")
    table.add_row("block / parameters", f"{res.block} / {spec.block_size}")
    table.add_row(f"samples ({res.split})", str(spec.samples))
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
            f"{spec.density['mean']:.4g} ({spec.density_hvps} HVPs, {spec.density_seconds:.2f}s)",
        )
    if res.landscape_seconds is not None:
        table.add_row(
            "landscape / plots", f"{res.landscape_seconds:.2f}s / {res.plots_seconds:.2f}s"
        )
    if res.plots:
        table.add_row("plots", "\n".join(res.plots))
    return table


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
        result = api.run_sweep(sweep_file, executor, max_parallel, dry_run, say=_say, wait=wait)
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
        res = api.make_report(sweep_dirs, out, console=console, warn=_warn)
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
        api.end_if_worker(err)  # a distributed worker ends here, without the shutdown
        raise


if __name__ == "__main__":
    main()
