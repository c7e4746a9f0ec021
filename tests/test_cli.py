import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from absa.cli import app

runner = CliRunner()
BUILTIN = Path(__file__).parent / "data" / "run.yaml"  # no keys: the built-in defaults

TINY = [
    "model.name=mlp",
    "model.width=8",
    "batch.size=128",
    "train.epochs=2",
    "hessian.probe_size=128",
]


def _train(tmp_path, *extra, config=BUILTIN):
    args = ["train", "-c", str(config)]
    args += [*TINY, "train.device=cpu", f"train.out_dir={tmp_path}", *extra]
    return runner.invoke(app, args)


def test_help_lists_commands():
    res = runner.invoke(app, ["--help"])
    assert res.exit_code == 0
    for cmd in ("train", "eval", "sweep", "hessian"):
        assert cmd in res.output
    res = runner.invoke(app, ["train", "--help"])
    assert res.exit_code == 0 and "--resume" in res.output and "optim.lr=0.2" in res.output


def test_train_then_eval(tmp_path):
    res = _train(tmp_path, "train.run_name=r", "--threads", "1", "--device", "cpu")
    assert res.exit_code == 0, res.output
    assert "test accuracy" in res.output
    assert "BL at batch" not in res.output  # a BL run at its start batch: no comparison row
    run = tmp_path / "r"
    assert (run / "metrics.jsonl").is_file() and (run / "last.pt").is_file()
    import yaml

    saved = yaml.safe_load((run / "config.yaml").read_text())["train"]
    assert (saved["threads"], saved["device"]) == (1, "cpu")  # --threads/--device: overrides
    out = tmp_path / "eval.json"
    res = runner.invoke(
        app,
        ["eval", "--checkpoint", str(run), "--limit", "64", "--eps", "0.01", "--json", str(out)],
    )
    assert res.exit_code == 0, res.output
    assert "after epoch 1," in " ".join(res.stdout.split())  # epochs 0 and 1: 0-based
    rows = json.loads(out.read_text())["results"]
    assert [r["attack"] for r in rows] == ["clean", "fgsm", "pgd"]
    assert rows[0]["n"] == 64 and 0 <= rows[2]["acc"] <= rows[0]["acc"] + 1e-9


def test_resume_continues_and_existing_folder_refused(tmp_path):
    assert _train(tmp_path, "train.run_name=r").exit_code == 0
    res = _train(tmp_path, "train.run_name=r")
    assert res.exit_code == 2 and "--resume" in res.output
    res = runner.invoke(app, ["train", "--resume", str(tmp_path / "r"), "train.epochs=3"])
    assert res.exit_code == 0, res.output
    lines = (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [0, 1, 2]


@pytest.mark.parametrize(
    "text, needle",
    [
        ("optim:\n  lrr: 0.1\n", "optim.lrr: unknown key; did you mean optim.lr?"),
        ("optim:\n  lr: [\n", "malformed YAML"),
        ("batch:\n  size: -3\n", "batch.size"),
    ],
)
def test_bad_config_one_line_nonzero(tmp_path, text, needle):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    res = _train(tmp_path, config=cfg)
    assert res.exit_code == 2
    assert needle in res.output and str(cfg) in res.output
    assert len(res.output.strip().splitlines()) == 1


def test_bad_override_and_missing_data(tmp_path):
    res = _train(tmp_path, "optim.momentun=0.5")
    assert res.exit_code == 2 and "did you mean optim.momentum" in res.output
    res = _train(tmp_path, "data.name=cifar10", f"data.root={tmp_path}/none")
    assert res.exit_code == 2 and "cifar-10-batches-py" in res.output


def test_output_path_errors_and_json_folder_created(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("")
    res = _train(tmp_path, f"train.out_dir={afile}")
    assert res.exit_code == 2 and str(afile) in res.output
    assert len(res.output.strip().splitlines()) == 1
    out = tmp_path / "new" / "folder" / "summary.json"
    res = _train(tmp_path, "train.run_name=j", "train.epochs=1", "optim.decay_epochs=[]",
                 "--json", str(out))  # fmt: skip
    assert res.exit_code == 0, res.output
    assert json.loads(out.read_text())["epochs"] == 1


def test_bad_hessian_block_fails_before_training(tmp_path):
    res = _train(tmp_path, "train.run_name=b", "schedule.method=abs", "schedule.max_batch=512",
                 "hessian.block=nosuch.*")  # fmt: skip
    assert res.exit_code == 2 and "hessian.block" in res.output and "nosuch" in res.output
    assert len(res.output.strip().splitlines()) == 1
    assert not (tmp_path / "b" / "metrics.jsonl").exists()


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["batch.size=127"], "batch.size: 127 is not divisible by the world size 2"),
        (["optim.lrr=0.1"], "did you mean optim.lr"),
    ],
)
def test_nproc_checks_config_once_before_launching(tmp_path, extra, needle):
    res = runner.invoke(
        app,
        [
            "train",
            "--nproc",
            "2",
            "-c",
            str(BUILTIN),
            *TINY,
            "train.device=cpu",
            f"train.out_dir={tmp_path}",
            *extra,
        ],  # fmt: skip
    )
    assert res.exit_code == 2 and needle in res.output
    assert len(res.output.strip().splitlines()) == 1  # once, not once per worker


def test_eval_bad_checkpoint(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"garbage")
    res = runner.invoke(app, ["eval", "--checkpoint", str(junk)])
    assert res.exit_code == 2 and "not a readable absa checkpoint" in res.output
    res = runner.invoke(app, ["eval", "--checkpoint", str(tmp_path / "missing.pt")])
    assert res.exit_code == 2 and "not found" in res.output


def test_default_config_loads():
    from absa.run import config as C

    cfg = C.load("configs/default.yaml")
    assert cfg.data.name == "digits"


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hess")
    res = _train(tmp, "train.run_name=h")
    assert res.exit_code == 0, res.output
    return tmp / "h"


def test_hessian_command_json_matches_dense_and_writes_plots(trained_run, tmp_path):
    import torch

    from absa.core.hessian import last_layer_operator
    from absa.engine.analysis import batches_of
    from absa.run import checkpoint as ckpt_io
    from absa.run import config as C
    from absa.run.data import load_data
    from absa.run.models import build_model

    out, plots = tmp_path / "h.json", tmp_path / "plots"
    args = ["hessian", "--checkpoint", str(trained_run), "-k", "3", "--samples", "200"]
    args += ["--trace-samples", "50", "--density-iter", "20", "--points", "7"]
    res = runner.invoke(app, [*args, "--json", str(out), "--plot", str(plots), "--landscape"])
    assert res.exit_code == 0, res.output
    got = json.loads(out.read_text())
    assert got["block"] == "last" and got["samples"] == 200 and got["converged"]
    # the same 200 samples, dense Hessian of the last layer built column by column
    ck = ckpt_io.load(trained_run)
    cfg = C.from_dict(ck["config"])
    data = load_data(cfg.data)
    model = build_model(cfg.model.name, data.info, cfg.model.width)
    model.load_state_dict(ck["model"])
    model.eval()
    op = last_layer_operator(model, batches_of(data.train, 200, 256, torch.device("cpu"), 0))
    dense = torch.stack([op.matvec(e) for e in torch.eye(op.dim)]).double()
    top = torch.linalg.eigvalsh((dense + dense.T) / 2).flip(0)[:3].tolist()
    assert got["eigenvalues"] == pytest.approx(top, rel=1e-3)
    assert got["trace"] == pytest.approx(float(dense.trace()), rel=0.25)
    assert sorted(p.name for p in plots.iterdir()) == [
        "density.png",
        "landscape_1d.png",
        "landscape_2d.png",
    ]
    curves = got["landscape"]["curves"]
    assert set(curves) == {"train", "test"} and len(curves["train"]) == 7
    mid = len(curves["train"]) // 2  # the trained weights sit in a valley along v1
    assert curves["train"][mid] <= min(curves["train"][0], curves["train"][-1])


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--block", "nosuchlayer.*"], "nosuchlayer"),
        (["-k", "100000"], "larger than the block size"),
        (["model.name=small_cnn"], "do not fit model small_cnn (width 8): Missing key"),
        (["--split", "val"], "--split"),
    ],
)
def test_hessian_bad_input_one_line(trained_run, extra, needle):
    res = runner.invoke(
        app, ["hessian", "--checkpoint", str(trained_run), "--samples", "64", *extra]
    )
    assert res.exit_code == 2, res.output
    assert needle in res.output and len(res.output.strip().splitlines()) == 1


def test_hessian_fresh_init_from_config(tmp_path):
    out = tmp_path / "h.json"
    opts = ["--samples", "64", "--block", "full", "-k", "2", "--max-iter", "40",
            "--trace-samples", "0", "--density-iter", "0", "--json", str(out)]  # fmt: skip
    res = runner.invoke(app, ["hessian", *TINY, *opts])
    assert res.exit_code == 2 and "--checkpoint" in res.output  # needs a model source
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model:\n  name: mlp\n  width: 4\n")
    res = runner.invoke(app, ["hessian", "-c", str(cfg), *opts])
    assert res.exit_code == 0, res.output
    got = json.loads(out.read_text())
    assert got["block"] == "full" and len(got["eigenvalues"]) == 2
    assert got["eigenvalues"][0] >= got["eigenvalues"][1]


def _assert_one_line_error(res, *needles):
    """Exit status 2, one line on stderr holding every needle, no traceback."""
    assert res.exit_code == 2, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    assert "Traceback" not in res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def _broken_copy(run, path, change):
    """A copy of ``run``'s last.pt with ``change(dict)`` applied, saved as ``path``."""
    import torch

    ck = torch.load(run / "last.pt", weights_only=True)
    change(ck)
    torch.save(ck, path)
    return path


@pytest.mark.parametrize(
    "cmd, change, reason",
    [
        ("eval", lambda ck: ck.pop("config"), "missing 'config'"),
        ("eval", lambda ck: ck.pop("epoch"), "missing 'epoch'"),
        ("eval", lambda ck: ck.update(model=[1, 2]), "'model' should be a state dict"),
        ("eval", lambda ck: ck.update(format_version="1"), "format_version should be an int"),
        ("hessian", lambda ck: ck.pop("config"), "missing 'config'"),
    ],
)
def test_malformed_checkpoint_is_one_line(trained_run, tmp_path, cmd, change, reason):
    bad = _broken_copy(trained_run, tmp_path / "bad.pt", change)
    out = tmp_path / "out.json"
    res = runner.invoke(app, [cmd, "--checkpoint", str(bad), "--json", str(out)])
    _assert_one_line_error(res, str(bad), reason)
    assert not out.exists()


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--limit", "-5"], "--limit: must be >= 1 (got -5)"),
        (["--limit", "0"], "--limit: must be >= 1 (got 0)"),
        (["--eps", "-0.1"], "--eps: must be in [0, 1] (got -0.1)"),
        (["--threads", "0"], "--threads: must be >= 1 (got 0)"),
        (["--device", "gpu"], "--device: must be auto, cpu, cuda, cuda:N or mps (got 'gpu')"),
        (["optim.lrr=1"], "+ overrides: optim.lrr: unknown key; did you mean optim.lr?"),
    ],
)
def test_eval_bad_option_is_one_line(trained_run, tmp_path, args, needle):
    out = tmp_path / "out.json"
    res = runner.invoke(app, ["eval", "--checkpoint", str(trained_run), *args, "--json", str(out)])
    _assert_one_line_error(res, needle)
    assert not out.exists()


@pytest.mark.parametrize(
    "args, needle",
    [
        (["-k", "0"], "-k: must be >= 1 (got 0)"),
        (["--samples", "-1"], "--samples: must be >= 1 (got -1)"),
        (["--max-iter", "0"], "--max-iter: must be >= 1 (got 0)"),
        (["--batch", "0"], "--batch: must be >= 1 (got 0)"),
        (["--trace-samples", "-1"], "--trace-samples: must be >= 0 (got -1)"),
        (["--density-iter", "-3"], "--density-iter: must be >= 0 (got -3)"),
        (["--density-runs", "0"], "--density-runs: must be >= 1 (got 0)"),
        (["--points", "1"], "--points: must be >= 3 (got 1)"),
        (["--rtol", "0"], "--rtol: must be > 0 (got 0)"),
        (["--radius", "-1"], "--radius: must be > 0 (got -1)"),
        (["--threads", "-2"], "--threads: must be >= 1 (got -2)"),
        (["--device", "cuda:x"], "--device: must be auto, cpu, cuda, cuda:N or mps"),
    ],
)
def test_hessian_bad_numeric_option_is_one_line(trained_run, tmp_path, args, needle):
    out = tmp_path / "out.json"
    res = runner.invoke(
        app, ["hessian", "--checkpoint", str(trained_run), *args, "--json", str(out)]
    )
    _assert_one_line_error(res, needle)
    assert not out.exists()


@pytest.fixture
def thread_calls(monkeypatch):
    """The arguments of every torch.set_num_threads call (which still happens)."""
    import torch

    calls, real = [], torch.set_num_threads
    monkeypatch.setattr(torch, "set_num_threads", lambda n: (calls.append(n), real(n))[1])
    return calls


def test_eval_threads_device_and_overrides_apply(trained_run, tmp_path, thread_calls):
    out = tmp_path / "e.json"
    args = ["eval", "--checkpoint", str(trained_run), "--limit", "32", "--threads", "1"]
    args += ["--device", "cpu", "adversarial.eval_eps=[0.05]", "adversarial.pgd_steps=1"]
    res = runner.invoke(app, [*args, "--json", str(out)])
    assert res.exit_code == 0, res.output
    assert thread_calls == [1]
    rows = json.loads(out.read_text())["results"]
    assert [(r["attack"], r["eps"], r["n"]) for r in rows] == [
        ("clean", 0.0, 32),
        ("fgsm", 0.05, 32),
        ("pgd", 0.05, 32),
    ]


def test_hessian_applies_threads_option_and_train_threads(trained_run, tmp_path, thread_calls):
    base = ["hessian", "--checkpoint", str(trained_run), "--samples", "64", "-k", "1"]
    base += ["--max-iter", "20", "--trace-samples", "0", "--density-iter", "0"]
    res = runner.invoke(app, [*base, "--threads", "1", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, [*base, "train.threads=1"])  # the config key was ignored before
    assert res.exit_code == 0, res.output
    assert thread_calls == [1, 1]


def test_device_option_overrides_the_checkpoint_device(trained_run, tmp_path):
    import torch

    gpu = _broken_copy(
        trained_run, tmp_path / "gpu.pt", lambda ck: ck["config"]["train"].update(device="cuda")
    )
    args = ["eval", "--checkpoint", str(gpu), "--no-robust", "--limit", "16"]
    if not torch.cuda.is_available():
        _assert_one_line_error(runner.invoke(app, args), "cuda requested")
    res = runner.invoke(app, [*args, "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert "clean" in res.stdout


def _report_run(root, name, summary):
    """A run folder for ``absa report``: a default config.yaml and ``summary`` as JSON text."""
    from absa.run import config as C

    folder = root / "runs" / name
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(C.dump_yaml(C.load(None, [])))
    (folder / "summary.json").write_text(summary)
    return folder


def test_report_skips_unreadable_runs_with_a_warning(tmp_path):
    good = _report_run(tmp_path, "good", json.dumps({"test_acc": 90.0, "updates": 10}))
    bad = _report_run(tmp_path, "bad", "[1, 2]")
    res = runner.invoke(app, ["report", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert res.stderr.strip().splitlines() == [
        f"warning: {bad}/summary.json: not a JSON object (got array); run skipped"
    ]
    assert (tmp_path / "report" / "report.md").is_file() and good.name in (
        tmp_path / "report" / "report.csv"
    ).read_text()


def test_report_with_no_readable_run_says_why(tmp_path):
    for name in ("a", "b"):
        _report_run(tmp_path, name, "5")
    res = runner.invoke(app, ["report", str(tmp_path)])
    first = tmp_path / "runs" / "a" / "summary.json"
    _assert_one_line_error(
        res, f"{tmp_path}: no readable runs: 2 skipped (first: {first}: not a JSON object"
    )
    assert not (tmp_path / "report").exists()


# --- issue 15: the first hour of a new user --------------------------------------------------


def test_version():
    from absa import __version__

    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0 and res.stdout.strip() == f"absa {__version__}"


def test_print_config_resolves_and_trains_nothing(tmp_path):
    import yaml

    from absa.run import config as C

    cfg = tmp_path / "c.yaml"
    cfg.write_text("model:\n  name: mlp\n")
    out = tmp_path / "runs"
    res = runner.invoke(
        app,
        [
            "train",
            "-c",
            str(cfg),
            "--print-config",
            "optim.lr=0.2",
            "train.device=cpu",
            f"train.out_dir={out}",
        ],
    )
    assert res.exit_code == 0, res.output
    tree = yaml.safe_load(res.stdout)
    assert tree["model"]["name"] == "mlp" and tree["optim"]["lr"] == 0.2
    assert tree == C.to_dict(
        C.load(cfg, ["optim.lr=0.2", "train.device=cpu", f"train.out_dir={out}"])
    )
    assert not out.exists()
    res = runner.invoke(app, ["train", "--print-config", "optim.lrr=1"])
    assert res.exit_code == 2 and "did you mean optim.lr" in res.output


def test_default_config_is_the_repos():
    from absa import cli

    assert cli.default_config() == Path(__file__).resolve().parent.parent / "configs/default.yaml"


def test_bare_train_uses_the_default_config(tmp_path, monkeypatch):
    from absa import cli

    cfg = tmp_path / "default.yaml"
    cfg.write_text(
        "model: {name: mlp, width: 8}\nbatch: {size: 128}\nhessian: {probe_size: 128}\n"
        f"train: {{epochs: 1, out_dir: {tmp_path / 'runs'}}}\n"
    )
    monkeypatch.setattr(cli, "default_config", lambda: cfg)
    res = runner.invoke(app, ["train"])
    assert res.exit_code == 0, res.output
    assert f"no -c given: using {cfg}" in res.stderr
    assert (tmp_path / "runs" / "default-bl-b128-s0" / "summary.json").is_file()
    res = runner.invoke(app, ["train", "--print-config"])  # the same file, quietly
    assert res.exit_code == 0 and "width: 8" in res.stdout and res.stderr == ""


def test_overrides_without_c_apply_on_top_of_the_default_config(tmp_path, monkeypatch):
    """`absa train KEY=VALUE...` trains what bare `absa train` trains, with the overrides,
    and says so on stderr (not a terminal here)."""
    from absa import cli

    cfg = tmp_path / "default.yaml"
    cfg.write_text("model: {name: mlp, width: 8}\nbatch: {size: 64}\nhessian: {probe_size: 128}\n")
    monkeypatch.setattr(cli, "default_config", lambda: cfg)
    res = runner.invoke(app, ["train", "train.epochs=1", f"train.out_dir={tmp_path / 'runs'}"])
    assert res.exit_code == 0, res.output
    assert f"no -c given: using {cfg} + the overrides" in res.stderr
    run = tmp_path / "runs" / "default-bl-b64-s0"  # the file's stem and batch (built-in: 128)
    assert json.loads((run / "summary.json").read_text())["epochs"] == 1
    import yaml

    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["model"] == {**saved["model"], "name": "mlp", "width": 8}
    repo = cli._config_for(None, ["optim.lr=0.1"], None, quiet=True)
    monkeypatch.undo()
    assert cli._config_for(None, ["optim.lr=0.1"], None, quiet=True) == cli.default_config()
    assert repo == cfg


def test_no_default_config_says_built_in_defaults(monkeypatch):
    from absa import cli

    notes = []
    monkeypatch.setattr(cli, "default_config", lambda: None)
    monkeypatch.setattr(cli, "_note", notes.append)
    assert cli._config_for(None, [], None) is None
    assert notes == ["no -c given and no configs/default.yaml: training on the built-in defaults"]
    notes.clear()
    assert cli._config_for(None, ["optim.lr=0.1"], None) is None
    assert notes == [
        "no -c given and no configs/default.yaml: training on the built-in defaults + the overrides"
    ]
    run = Path("some/run")
    assert cli._config_for(None, [], run) == run / "config.yaml"


def test_nproc_passes_the_implicit_config_to_the_workers(monkeypatch, tmp_path):
    import sys

    import torch.distributed.run

    from absa import cli

    got = []
    monkeypatch.setattr(torch.distributed.run, "main", lambda args: got.append(args))
    monkeypatch.setattr(sys, "argv", ["absa", "train", "--nproc", "2", "train.epochs=1"])
    cli._relaunch(2, tmp_path / "default.yaml")
    assert got[-1][2:] == ["-m", "absa", "train", "-c", str(tmp_path / "default.yaml"),
                           "train.epochs=1"]  # fmt: skip
    monkeypatch.setattr(sys, "argv", ["absa", "train", "-c", "x.yaml", "--nproc=2"])
    cli._relaunch(2, Path("x.yaml"))
    assert got[-1][2:] == ["-m", "absa", "train", "-c", "x.yaml"]


class _FakeProgress:
    """What progress_factory uses of rich's Progress, recording the last update."""

    def __init__(self):
        self.task_ids, self.last, self.made = [], {}, 0

    def add_task(self, description, total=None, **fields):
        self.task_ids.append(self.made)
        self.made += 1
        self.last = {"description": description, **fields}
        return self.task_ids[-1]

    def remove_task(self, task):
        self.task_ids.remove(task)

    def update(self, task, **kw):
        self.last.update(kw)


def test_progress_accepts_the_lr_call_and_the_info_dict():
    from absa import progress as live

    now = [0.0]
    prog = _FakeProgress()
    factory = live.progress_factory(prog, clock=lambda: now[0])
    on_step = factory(0, 10)
    now[0] = 2.0
    on_step(5, 20, 0.05)  # the original call: lr only
    assert prog.last["description"] == "epoch 0/9 train" and prog.last["completed"] == 5
    assert prog.last["stats"].startswith("lr 0.05  eta 0:00:06 epoch, 0:01:18 run")
    info = {"lr": 0.1, "batch_size": 256, "loss": 0.4123, "acc": 88.06, "adv_fraction": 0.2}
    now[0] = 4.0
    on_step(10, 20, {**info, "lambda_max": None})
    stats = prog.last["stats"]
    for part in ("B 256", "lr 0.1", "loss 0.4123", "acc 88.1%", "adv 0.2", "eta 0:00:04 epoch"):
        assert part in stats, stats
    assert "λmax" not in stats
    now[0] = 5.0
    on_step(3, 20, {"phase": "hessian", "lambda_max": 12.5})  # the probe's HVPs
    assert prog.last["description"] == "epoch 0/9 Hessian probe"
    assert "λmax 12.5" in prog.last["stats"] and "B 256" in prog.last["stats"]
    on_step(0, 0, {"phase": "eval"})
    assert prog.last["description"] == "epoch 0/9 eval" and prog.last["total"] is None
    now[0] = 6.0
    on_step = factory(1, 10)  # next epoch: one task, lambda_max kept
    assert prog.task_ids == [1]
    on_step(1, 20, {"lr": 0.1, "batch_size": 512})
    assert "λmax 12.5" in prog.last["stats"] and "B 512" in prog.last["stats"]


def test_progress_on_a_real_rich_progress():
    import io

    from rich.console import Console
    from rich.progress import Progress

    from absa import progress as live

    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=160)
    with Progress(*live.progress_columns(), console=console) as progress:
        on_step = live.progress_factory(progress)(3, 30)
        on_step(5, 22, {"lr": 0.05, "batch_size": 256, "loss": 0.41, "acc": 88.1})
        on_step(6, 22, 0.05)
        progress.refresh()
    assert "epoch 3/29 train" in buf.getvalue() and "B 256" in buf.getvalue()


def _rendered_lines(width, steps):
    """The live bar's last frame on a ``width``-column terminal after ``steps`` updates."""
    import io
    import re

    from rich.console import Console
    from rich.progress import Progress

    from absa import progress as live

    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=width)
    clock = iter(range(0, 10**6, 7)).__next__  # 7 s per call: hours-long ETAs
    with Progress(*live.progress_columns(width), console=console) as progress:
        on_step = live.progress_factory(progress, clock=clock)(12, 30)
        for step, info in steps:
            on_step(step, 1022, info)
        progress.refresh()
    text = re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", buf.getvalue()).replace("\r", "\n")
    return [line for line in text.splitlines() if line.strip()]


@pytest.mark.parametrize("width", [80, 100, 160])
def test_progress_keeps_phase_batch_and_both_etas_at_80_columns(width):
    import re

    full = {"lr": 0.0512, "batch_size": 1024, "loss": 0.4123, "acc": 88.1, "adv_fraction": 0.2}
    train = [(5, {**full, "lambda_max": 12.345}), (6, full)]
    probe = [*train, (7, {"phase": "hessian", "lambda_max": 12.5})]
    for steps, phase in ((train, "train"), (probe, "Hessian probe")):
        line = _rendered_lines(width, steps)[-1]
        assert len(line) <= width and "…" not in line, line
        assert line.startswith(f"epoch 12/29 {phase} ━"), line
        assert "/1022 B 1024  eta " in line or width > 80, line
        epoch_eta = r"\d:\d\d:\d\d" if phase == "train" else "-:--:--"  # none while probing
        assert re.search(rf"  eta {epoch_eta} ep(och,)? \d+:\d\d:\d\d run$", line), line
        if width == 160:
            assert "loss 0.4123  acc 88.1%  adv 0.2  λmax 12." in line, line


@pytest.mark.parametrize("cmd", ["train", "eval", "hessian", "sweep", "report"])
def test_help_has_no_rst(cmd):
    """(How typer shows a flag's type, e.g. ``<bool>``, is typer's own and varies by version:
    absa uses only typer's public API.)"""
    res = runner.invoke(app, [cmd, "--help"], env={"COLUMNS": "140"})
    assert res.exit_code == 0
    assert "``" not in res.output
    assert "KEY=VALUE" in res.output or cmd in ("sweep", "report")


@pytest.mark.parametrize("cmd", [None, "train", "eval", "hessian", "sweep", "report"])
def test_help_fits_80_columns(cmd):
    """At 80 columns: nothing cut (no ``…``, every option name whole) and the description
    greedily filled: no line of it could have taken the next line's first word (a hard
    wrap in a docstring left ragged lines such as `` the`` alone)."""
    import re

    import typer

    res = runner.invoke(app, [*([cmd] if cmd else []), "--help"], env={"COLUMNS": "80"})
    assert res.exit_code == 0, res.output
    out = res.output
    assert "…" not in out and max(len(line) for line in out.splitlines()) <= 80, out
    group = typer.main.get_command(app)
    command = group.commands[cmd] if cmd else group
    names = [n for p in command.params for n in (*p.opts, *p.secondary_opts) if n[:2] == "--"]
    for name in names:
        assert re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", out), (name, out)
    description = [line.rstrip() for line in out.split("╭")[0].splitlines()]
    for line, after in zip(description, description[1:], strict=False):
        if line.strip() and after.strip() and "Usage:" not in line:
            assert len(line) + 1 + len(after.split()[0]) > 80 - 4, (line, after)


def test_help_details():
    help_of = {
        c: runner.invoke(app, [c, "--help"], env={"COLUMNS": "200"}).output
        for c in ("train", "hessian", "eval", "sweep")
    }
    assert "--print-config" in help_of["train"]
    assert "--trace" in help_of["hessian"] and "--no-density" in help_of["hessian"]
    assert "optim.lr=0.2 batch.size=512" not in help_of["hessian"]  # not train's overrides
    assert "optim.lr=0.2 batch.size=512" not in help_of["eval"]
    assert "local, slurm or submitit-local" in help_of["sweep"]
    assert "--dry-run" in help_of["sweep"] and "--no-wait" in help_of["sweep"]


def test_executor_is_a_choice_kept_in_step_with_sweep():
    from absa import cli
    from absa.fleet import sweep

    assert cli.EXECUTORS == sweep.EXECUTORS
    assert cli.Executor.__args__ == sweep.EXECUTORS
    res = runner.invoke(app, ["sweep", "nosuch.yaml", "--executor", "cluster"])
    assert res.exit_code == 2 and "cluster" in res.output


def test_hessian_trace_and_density_are_opt_in(trained_run, tmp_path):
    out, plots = tmp_path / "h.json", tmp_path / "plots"
    base = ["hessian", "--checkpoint", str(trained_run), "--samples", "128", "-k", "2"]
    base += ["--max-iter", "20", "--points", "5", "--threads", "1"]
    res = runner.invoke(app, [*base, "--plot", str(plots), "--json", str(out)])
    assert res.exit_code == 0, res.output
    got = json.loads(out.read_text())
    assert "landscape" not in got and not plots.exists() and "nothing to draw" in res.output
    assert "loss evaluations" not in res.output  # the landscape is opt-in too
    res = runner.invoke(app, [*base, "--landscape"])
    assert res.exit_code == 2 and "--landscape: give --plot DIR" in res.output
    res = runner.invoke(app, [*base, "--plot", str(plots), "--landscape", "--json", str(out)])
    assert res.exit_code == 0, res.output
    got = json.loads(out.read_text())
    assert got["trace"] is None and got["density"] is None and got["trace_hvps"] == 0
    assert sorted(p.name for p in plots.iterdir()) == ["landscape_1d.png", "landscape_2d.png"]
    assert got["landscape_seconds"] > 0 and got["plots_seconds"] > 0
    assert got["hvp_seconds"] > 0
    # the cost is said before each phase
    assert "top-2 eigenvalues (lanczos, " in res.output and "up to 20 HVPs, ~" in res.output
    assert "(one HVP took" in res.output and "loss evaluations, ~" in res.output
    res = runner.invoke(app, [*base, "--trace", "--density", "--density-iter", "5",
                              "--json", str(out)])  # fmt: skip
    assert res.exit_code == 0, res.output
    got = json.loads(out.read_text())
    assert got["trace"] is not None and 10 <= got["trace_hvps"] <= 100
    assert got["density_hvps"] == 15 and "trace (Hutchinson" in res.output
    res = runner.invoke(app, [*base, "--trace-samples", "30", "--no-trace", "--json", str(out)])
    assert res.exit_code == 0 and json.loads(out.read_text())["trace"] is None


def test_hessian_trace_with_zero_samples_is_one_line(trained_run):
    res = runner.invoke(
        app, ["hessian", "--checkpoint", str(trained_run), "--trace", "--trace-samples", "0"]
    )
    _assert_one_line_error(res, "--trace-samples: 0 contradicts --trace")


def test_keys_a_method_ignores_get_one_note(tmp_path):
    """A BL run with schedule.max_batch trains, with one note naming the ignored keys; a
    method that reads them prints none."""
    res = _train(tmp_path, "train.epochs=1", "schedule.max_batch=1024", "schedule.alpha=3")
    assert res.exit_code == 0, res.output
    notes = [line for line in res.output.splitlines() if line.startswith("note: schedule.")]
    assert notes == ["note: schedule.alpha, schedule.max_batch are ignored by schedule.method bl"]
    res = _train(
        tmp_path,
        "train.epochs=1",
        "schedule.method=gg",
        "schedule.max_batch=1024",
        "train.run_name=gg",
    )
    assert res.exit_code == 0, res.output
    assert "ignored by" not in res.output


def test_every_schedule_key_is_read_by_some_method():
    from absa.core.policies import METHODS, READS, ignored_keys
    from absa.run.config import ScheduleConfig

    assert set(READS) == set(METHODS)
    read = set().union(*READS.values())
    assert set(ScheduleConfig.model_fields) - {"method"} == read
    assert ignored_keys("fb", ["schedule.warmup_epochs", "optim.lr", "schedule.alpha"]) == [
        "schedule.alpha"
    ]


def test_a_checkpoint_cannot_make_absa_import_code(tmp_path, monkeypatch):
    """A last.pt whose config names model.name module:function (a module that would run on
    import) is refused by eval/hessian/load_run/resume unless the user trusts it."""
    import torch

    import absa

    res = _train(tmp_path, "train.epochs=1", "train.run_name=r")
    assert res.exit_code == 0, res.output
    ck_path = tmp_path / "r" / "last.pt"
    ck = torch.load(ck_path, weights_only=True)
    ck["config"]["model"]["name"] = "evilmod:make"
    torch.save(ck, ck_path)
    marker = tmp_path / "ran"
    (tmp_path / "evilmod.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    monkeypatch.chdir(tmp_path)  # the module would be found in the current directory
    for cmd in (
        ["eval", "--checkpoint", str(ck_path), "--no-robust"],
        ["hessian", "--checkpoint", str(ck_path), "-k", "1", "--samples", "64"],
    ):
        res = runner.invoke(app, cmd)
        assert res.exit_code == 2, res.output
        assert "--trust-model-code" in res.output and "Traceback" not in res.output
    with pytest.raises(ValueError, match="trust_code=True"):
        absa.load_run(tmp_path / "r")
    res = _train(tmp_path, "train.epochs=2", "--resume", str(tmp_path / "r"))
    assert res.exit_code == 2 and "model.name" in res.output  # compared, not imported
    assert not marker.exists()
    res = runner.invoke(app, ["eval", "--checkpoint", str(ck_path), "--trust-model-code"])
    assert marker.exists()  # trusted: imported (the module has no `make`, so it then fails)
    assert res.exit_code == 2 and "make" in res.output


def test_out_of_memory_is_one_line(tmp_path):
    """An image size within the config's bounds that does not fit in memory: one line,
    exit 2, no traceback (seen: data.image_size=4096 on digits)."""
    res = _train(tmp_path, "data.image_size=4096")
    assert res.exit_code == 2, res.output
    assert "out of memory" in res.output and "Traceback" not in res.output


def test_out_of_the_box_run_shows_the_method(tmp_path):
    """configs/default.yaml grows the batch on the eigenvalue trigger, and the end summary
    shows the trajectory, the updates against BL at the start batch and robust accuracy."""
    root = Path(__file__).resolve().parent.parent
    res = runner.invoke(
        app,
        [
            "train",
            "-c",
            str(root / "configs" / "default.yaml"),
            "train.device=cpu",
            f"train.out_dir={tmp_path}",
        ],
    )
    assert res.exit_code == 0, res.output
    out = " ".join(res.output.split())  # the table may wrap long cells
    s = json.loads((tmp_path / "default-absa-b32-s0" / "summary.json").read_text())
    assert s["final_batch"] > 32 and any(g["trigger"] == "eigenvalue" for g in s["growths"])
    for part in ("batch trajectory", "32 @ lr 0.05", "(eigenvalue)", "BL at batch 32:",
                 f"{s['bl_updates']}", "robust eval: fgsm eps 0.01"):  # fmt: skip
        assert part in out, part
    assert s["bl_updates"] > 2 * s["updates"]


def test_a_resolved_config_gets_no_ignored_keys_note():
    """A sweep's point.yaml sets every key (to its value): only non-default ones count."""
    from absa import api
    from absa.run import config as C

    resolved = C.from_dict(C.to_dict(C.load(None, ["schedule.method=bl"])), "point.yaml")
    assert api.ignored_notes(resolved) == []
    odd = C.from_dict(C.to_dict(C.load(None, ["schedule.max_batch=512"])), "point.yaml")
    assert api.ignored_notes(odd) == ["schedule.max_batch is ignored by schedule.method bl"]


def test_batch_larger_than_the_training_split_is_refused(tmp_path):
    """digits has 1,347 training samples: batch.size=1000000 would train one step an epoch;
    it is one line naming batch.size and the split's size, exit 2, nothing written."""
    res = _train(tmp_path, "batch.size=1000000")
    assert res.exit_code == 2
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert lines == [
        "error: batch.size: 1000000 is larger than the training split of digits (1,347 samples); "
        "pass batch.size=1347 or less"
    ]
    assert not any(tmp_path.iterdir())
    assert _train(tmp_path, "batch.size=1347", "train.epochs=1").exit_code == 0  # the split fits


class _FullDisk:
    """A file that takes ``room`` bytes, then raises ENOSPC as a full disk does."""

    def __init__(self, fh, room):
        self.fh, self.room = fh, room

    def write(self, b):
        import errno

        if len(b) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(b)
        return self.fh.write(b)

    def __getattr__(self, name):
        return getattr(self.fh, name)


@pytest.mark.parametrize("how", ["torch_writer", "oserror", "bare_runtime_error"])
def test_disk_full_while_saving_is_one_line_and_keeps_the_last_checkpoint(
    tmp_path, monkeypatch, how
):
    """The second epoch's checkpoint hits a full disk: one line naming the run folder and the
    full disk, exit 2, and last.pt still the first epoch's; the run resumes from it."""
    import errno

    import torch

    from absa.run import checkpoint as ckpt_io

    real_save, calls = torch.save, []

    def save(obj, fh):
        calls.append(1)
        if len(calls) < 2:
            return real_save(obj, fh)
        if how == "torch_writer":  # torch turns the ENOSPC into RuntimeError(inline_container)
            return real_save(obj, _FullDisk(fh, 1000))
        if how == "oserror":
            raise OSError(errno.ENOSPC, "No space left on device")
        raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 64 vs 0")

    monkeypatch.setattr(ckpt_io.torch, "save", save)
    res = _train(tmp_path, "train.run_name=r")
    run = tmp_path / "r"
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in res.output, res.stderr
    assert lines[0].startswith(f"error: {run}: ")
    full = "the disk is full" if how != "bare_runtime_error" else "is the disk full?"
    assert full in lines[0] and f"absa train --resume {run}" in lines[0]
    monkeypatch.undo()
    assert ckpt_io.load(run / "last.pt")["epoch"] == 1  # the first epoch's, intact
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]
    res = runner.invoke(app, ["train", "--resume", str(run)])
    assert res.exit_code == 0, res.output
    assert ckpt_io.load(run / "last.pt")["epoch"] == 2


def test_read_only_out_dir_names_the_setting(tmp_path, monkeypatch):
    """A run folder that cannot be created (a read-only file system: EROFS, which chmod cannot
    produce for root) is one line naming train.out_dir and the folder, exit 2."""
    import errno
    import pathlib

    ro = tmp_path / "ro"
    real_mkdir = pathlib.Path.mkdir

    def mkdir(self, *args, **kwargs):
        if self == ro or ro in self.parents:
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "mkdir", mkdir)
    res = _train(ro, "train.run_name=r")
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert lines == [
        f"error: train.out_dir: cannot write the run folder {ro / 'r'} (Read-only file system)"
    ]


def test_train_threads_and_device_options_are_checked():
    res = runner.invoke(app, ["train", "-c", str(BUILTIN), "--threads", "0", "--print-config"])
    assert res.exit_code == 2 and "--threads: must be >= 1" in res.output
    res = runner.invoke(app, ["train", "-c", str(BUILTIN), "--device", "tpu", "--print-config"])
    assert res.exit_code == 2 and "--device:" in res.output
    res = runner.invoke(app, ["train", "-c", str(BUILTIN), "--threads", "3", "--print-config"])
    assert res.exit_code == 0 and "threads: 3" in res.stdout
