"""The ``absa`` command line (typer); the only module that reads argv.

Errors the user can fix (config, data, checkpoint, run folder) print one line on stderr
and exit with status 2; a diverged run exits with status 3 keeping its last good checkpoint.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

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

USER_ERROR = 2
DIVERGED = 3


class CliError(Exception):
    """A one-line message for the user; exit status ``code``."""

    def __init__(self, message: str, code: int = USER_ERROR) -> None:
        super().__init__(message)
        self.code = code


def _user_errors() -> tuple[type[BaseException], ...]:
    from absa.checkpoint import CheckpointError
    from absa.config import ConfigError
    from absa.data import DataError
    from absa.models import ModelError
    from absa.train import RunFolderError

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


@contextmanager
def _handled() -> Iterator[None]:
    """Turn known failures into one line on stderr and a non-zero exit."""
    from absa.train import TrainingDiverged

    try:
        yield
    except CliError as err:
        err_console.print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
        raise typer.Exit(err.code) from None
    except TrainingDiverged as err:
        err_console.print(f"[bold red]diverged:[/] {err}", highlight=False, soft_wrap=True)
        raise typer.Exit(DIVERGED) from None
    except _user_errors() as err:
        err_console.print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
        raise typer.Exit(USER_ERROR) from None
    except KeyboardInterrupt:
        err_console.print("interrupted; the last completed epoch's checkpoint is kept")
        raise typer.Exit(130) from None


ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config", "-c", help="YAML config (see configs/). Defaults apply to unset keys."
    ),
]
OverridesArg = Annotated[
    list[str] | None,
    typer.Argument(
        help="Dotted overrides applied after the YAML, e.g. optim.lr=0.2 batch.size=512",
        show_default=False,
    ),
]

ThreadsOpt = Annotated[
    int | None,
    typer.Option(help="torch.set_num_threads(N) (train.threads; default: the run's setting)."),
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
    from absa import config as C
    from absa.distributed import resolve_device

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


def _progress_factory(progress: Any) -> Callable[[int, int], Callable[[int, int, float], None]]:
    def factory(epoch: int, epochs: int) -> Callable[[int, int, float], None]:
        for task in list(progress.task_ids):
            progress.remove_task(task)
        task = progress.add_task(f"epoch {epoch + 1}/{epochs}", total=None)

        def update(step: int, steps: int, lr: float) -> None:
            progress.update(task, completed=step, total=steps)

        return update

    return factory


@contextmanager
def _progress_output() -> Iterator[tuple[Callable[[str], None], Any]]:
    """A live progress bar on a terminal; plain log lines otherwise."""
    if not err_console.is_terminal:
        yield (lambda msg: print(msg, flush=True)), None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
    ) as progress:
        yield (
            (lambda msg: progress.console.print(msg, highlight=False)),
            _progress_factory(progress),
        )


def _relaunch(nproc: int) -> None:
    """``absa train --nproc N ...`` -> ``torchrun --standalone --nproc-per-node N -m absa train ...``."""
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
    from torch.distributed.elastic.multiprocessing import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    try:
        torchrun_main(["--standalone", f"--nproc-per-node={nproc}", "-m", "absa", *args])
    except ChildFailedError as err:  # the workers printed their errors; add the summary
        print(err.format_msg(), file=sys.stderr, flush=True)
        raise typer.Exit(1) from None
    except SignalException as err:  # Ctrl-C: torchrun passed the signal to the workers
        raise typer.Exit(128 + int(err.sigval)) from None


def _check_before_launch(
    config: Path | None, overrides: list[str], resume: Path | None, nproc: int
) -> None:
    from absa import config as C
    from absa.train import check_divisible, prepare_run_dir

    if config is None and resume is not None:
        config = resume / "config.yaml"
    cfg = C.load(config, overrides)
    prepare_run_dir(cfg, config.stem if config is not None else "run", resume)
    check_divisible(cfg, nproc)


def _write_json(path: Path, obj: Any) -> None:
    """Atomically write ``obj`` as JSON, creating the parent folder."""
    from absa.checkpoint import atomic_write_text

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


@app.command()
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
) -> None:
    """Train a model; metrics.jsonl, config.yaml and last.pt go into the run folder.

    The run folder is train.out_dir/train.run_name (default
    runs/<config-stem>-<method>-b<batch>-s<seed>). Kill it any time: --resume RUN_DIR continues
    from the last completed epoch and ends with the same weights as an uninterrupted run.
    """
    if nproc is not None and nproc > 1 and "RANK" not in os.environ:
        with _handled():  # errors every worker would hit: report them once, before launching
            _check_before_launch(config, overrides or [], resume, nproc)
        _relaunch(nproc)
        return
    with _handled():
        from absa import config as C
        from absa import distributed as D
        from absa.train import prepare_run_dir, run

        if config is None and resume is not None:
            config = resume / "config.yaml"
        cfg = C.load(config, overrides or [])
        stem = config.stem if config is not None else "run"
        run_dir = prepare_run_dir(cfg, stem, resume)
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


def _print_summary(summary: Any) -> None:
    t = Table(title=f"absa train: {summary.run_dir}", show_header=False)
    t.add_row("test accuracy", f"{summary.test_acc:.2f}%  (best {summary.best_test_acc:.2f}%)")
    t.add_row("test loss", f"{summary.test_loss:.4f}")
    t.add_row("epochs / SGD updates", f"{summary.epochs} / {summary.updates}")
    t.add_row("final batch size", str(summary.final_batch))
    t.add_row(
        "time train / hessian / eval",
        f"{summary.train_seconds:.1f}s / {summary.hessian_seconds:.1f}s / {summary.eval_seconds:.1f}s",
    )
    console.print(t)


@app.command("eval")
def eval_cmd(
    checkpoint: Annotated[Path, typer.Option(help="last.pt or a run folder.")],
    overrides: OverridesArg = None,
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
    json_out: Annotated[Path | None, typer.Option("--json", help="Write results as JSON.")] = None,
) -> None:
    """Test loss and accuracy of a checkpoint, plus robust accuracy under FGSM and PGD.

    Dotted overrides change the checkpoint's config, e.g. adversarial.pgd_steps=20.
    """
    with _handled():
        from absa.evaluate import evaluate, robustness

        _at_least("--limit", limit, 1)
        for e in eps or []:
            if not 0 <= e <= 1:
                raise CliError(f"--eps: must be in [0, 1] (got {e:g})")
        extra = [f"data.root={data_dir}"] if data_dir is not None else []
        extra += _run_overrides(threads, device)
        cfg, env, data, model, ck = _model_for(checkpoint, None, [*(overrides or []), *extra])
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
        table = Table(
            title=f"absa eval: {checkpoint} (epoch {ck['epoch']}, {ck['updates']} updates)"
        )
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
    checkpoint: Path | None, config: Path | None, overrides: list[str]
) -> tuple[Any, Any, Any, Any, dict[str, Any] | None]:
    """(cfg, env, data, model, checkpoint dict) from a checkpoint or a config (fresh init)."""
    from absa import checkpoint as ckpt_io
    from absa import config as C
    from absa.data import load_data
    from absa.distributed import DistEnv, resolve_device
    from absa.models import build_from_config

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


@app.command("hessian")
def hessian_cmd(
    checkpoint: Annotated[
        Path | None, typer.Option(help="last.pt or a run folder (its config is used).")
    ] = None,
    config: ConfigOpt = None,
    overrides: OverridesArg = None,
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
    trace_samples: Annotated[
        int, typer.Option(help="Hutchinson samples for the trace (0: skip).")
    ] = 100,
    density_iter: Annotated[
        int, typer.Option(help="Lanczos steps per SLQ run for the density (0: skip).")
    ] = 60,
    density_runs: Annotated[int, typer.Option(help="SLQ runs averaged.")] = 3,
    plot: Annotated[
        Path | None,
        typer.Option(help="Folder for PNGs: 1D/2D loss landscape and eigenvalue density."),
    ] = None,
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
    json_out: Annotated[Path | None, typer.Option("--json", help="Write results as JSON.")] = None,
) -> None:
    """Hessian spectrum of a model: top-k eigenvalues, trace, density, loss-landscape plots.

    The Hessian is of the mean cross-entropy over the chosen samples, with BatchNorm in eval
    mode, on a parameter block: ``last`` (the classifier layer, fast: features are computed
    once) or ``full`` (exact double-backprop HVPs; expensive on CPU).
    """
    with _handled():
        import math

        from absa import analysis as A

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
        extra = _run_overrides(threads, device)
        cfg, env, data, model, ck = _model_for(checkpoint, config, [*(overrides or []), *extra])
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
            trace_samples=trace_samples,
            density_iter=density_iter,
            density_runs=density_runs,
            seed=seed,
        )
        say = (
            (lambda m: err_console.print(m, highlight=False)) if err_console.is_terminal else print
        )
        spec = A.spectrum(model, batches, req, say)
        source = str(checkpoint) if checkpoint is not None else f"{config} (fresh init)"
        table = Table(title=f"absa hessian: {source}")
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
                f"{spec.trace:.6g} +- {spec.trace_std_err:.2g} ({spec.trace_seconds:.2f}s)",
            )
        if spec.density is not None:
            table.add_row(
                "mean eigenvalue (SLQ)", f"{spec.density['mean']:.4g} ({spec.density_seconds:.2f}s)"
            )
        result: dict[str, Any] = {
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
            "trace": spec.trace,
            "trace_std_err": spec.trace_std_err,
            "trace_seconds": spec.trace_seconds,
            "density": spec.density,
            "density_seconds": spec.density_seconds,
            "epoch": ck["epoch"] if ck else None,
        }
        if plot is not None:
            from absa import plots

            lam = spec.eigenvalues[0]
            r = radius if radius is not None else (math.sqrt(2 / lam) if lam > 0 else 1.0)
            splits = {
                "train": A.batches_of(data.train, n, batch, env.device, seed),
                "test": A.batches_of(data.test, n, batch, env.device, seed),
            }
            say(f"loss landscape: {points} points per split, radius {r:.3g}...")
            vecs = spec.vectors
            if len(vecs) < 2 and spec.block_size >= 2:
                vecs = A.spectrum(
                    model,
                    batches,
                    A.SpectrumRequest(
                        block=blk,
                        k=2,
                        method="lanczos",
                        max_iter=max(max_iter, 2),
                        rtol=rtol,
                        trace_samples=0,
                        density_iter=0,
                        seed=seed,
                    ),
                ).vectors
            land = A.landscape(model, blk, vecs, splits, r, points, max(points // 2, 3))
            files = [plots.landscape_1d(land, lam, blk, plot / "landscape_1d.png")]
            if "surface" in land:
                files.append(plots.landscape_2d(land, blk, plot / "landscape_2d.png"))
            if spec.density is not None:
                files.append(
                    plots.density(spec.density, spec.eigenvalues, blk, plot / "density.png")
                )
            result["landscape"] = land
            result["plots"] = [str(f) for f in files]
            table.add_row("plots", "\n".join(str(f) for f in files))
        console.print(table)
        if json_out is not None:
            _write_json(json_out, result)


@app.command()
def sweep(
    sweep_file: Annotated[Path, typer.Argument(help="Sweep YAML: base config + grid.")],
    executor: Annotated[
        str, typer.Option(help="local | slurm | submitit-local (submitit on this machine).")
    ] = "local",
    max_parallel: Annotated[
        int | None,
        typer.Option(help="Points at once (local) or array parallelism (slurm)."),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="List points, folders and status; run nothing.")
    ] = False,
    no_wait: Annotated[
        bool, typer.Option("--no-wait", help="slurm: return after submitting the job array.")
    ] = False,
) -> None:
    """Run a grid of configs (method x batch size x seed x ...) locally or on Slurm.

    Each point trains in <out_dir>/runs/<name>; finished points are skipped, failed or
    interrupted ones are resumed on the next call. Slurm jobs are submitit job arrays that
    requeue on preemption and resume from their checkpoint. Exit status 1 if a point failed.
    """
    with _handled():
        from absa.sweep import run_sweep

        result = run_sweep(sweep_file, executor, max_parallel, dry_run, say=_say, wait=not no_wait)
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
def report(
    sweep_dir: Annotated[Path, typer.Argument(help="A sweep's out_dir (or a folder of runs).")],
    out: Annotated[
        Path | None,
        typer.Option(help="Where report.md/csv and PNGs go (default SWEEP_DIR/report)."),
    ] = None,
) -> None:
    """Paper-style table (rows: batch size; columns: method with test accuracy and # SGD
    updates, mean +- std over seeds) as Markdown/CSV, plus accuracy/updates-vs-batch and
    batch/lr/lambda_max trajectory plots."""
    with _handled():
        from absa.report import make_report

        res = make_report(sweep_dir, out, console=console, warn=_warn)
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
