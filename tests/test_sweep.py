import json
import pickle
from pathlib import Path

import pytest
import yaml

from absa.fleet import sweep as S
from absa.fleet.sweep.slurm import make_executor
from absa.run.config import ConfigError

TINY = {
    "data": {"name": "digits"},
    "model": {"name": "mlp", "width": 8},
    "batch": {"size": 64, "max_micro_batch": 64},
    "train": {"epochs": 1, "threads": 1, "device": "cpu"},
    "hessian": {"probe_size": 128},
}


def _write(tmp_path, spec, name="sweep.yaml"):
    spec = {"out_dir": str(tmp_path / "out"), **spec}
    path = tmp_path / name
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _tiny(tmp_path, grid, **extra):
    return _write(tmp_path, {"name": "tiny", "base": TINY, "grid": grid, **extra})


# --- expansion ------------------------------------------------------------------------------


def test_expand_order_overrides_and_folders(tmp_path):
    path = _write(
        tmp_path,
        {
            "name": "methods",
            "base": {"schedule": {"max_batch": 1024}},
            "grid": {
                "schedule.method": ["bl", "absa"],
                "batch.size": [32, 512],
                "train.seed": [0, 1],
                "adversarial.eps": [0.005],
            },
        },
    )
    sweep = S.load_sweep(path)
    points = S.expand(sweep)
    assert len(points) == 8
    assert [p.name for p in points] == [
        f"{m}-b{b}-s{s}-eps0.005" for m in ("bl", "absa") for b in (32, 512) for s in (0, 1)
    ]
    p = points[5]  # absa, 32, seed 1
    assert p.overrides == [
        "schedule.method=absa",
        "batch.size=32",
        "train.seed=1",
        "adversarial.eps=0.005",
    ]
    assert p.folder == tmp_path / "out" / "runs" / p.name
    cfg = p.config
    assert (cfg.schedule.method, cfg.batch.size, cfg.train.seed) == ("absa", 32, 1)
    assert cfg.schedule.max_batch == 1024  # from base
    assert cfg.train.out_dir == tmp_path / "out" / "runs" and cfg.train.run_name == p.name
    again = S.expand(S.load_sweep(path))
    assert [(q.name, q.overrides) for q in again] == [(q.name, q.overrides) for q in points]
    assert len({q.folder for q in points}) == 8


def test_base_config_file_and_extra_points(tmp_path):
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "base.yaml").write_text("model: {name: mlp, width: 4}\noptim: {lr: 0.2}\n")
    path = _write(
        tmp_path,
        {
            "base": {"config": "cfg/base.yaml", "model": {"width": 8}},
            "grid": {"train.seed": [0, 1]},
            "points": [{"schedule.method": "fb", "batch.size": 512, "schedule.ref_batch": 32}],
        },
    )
    sweep = S.load_sweep(path)
    assert sweep.name == "sweep"  # the file's stem
    points = S.expand(sweep)
    assert [p.name for p in points] == ["s0", "s1", "fb-b512-bref32"]
    assert all(p.config.model.width == 8 and p.config.optim.lr == 0.2 for p in points)
    assert points[2].config.schedule.ref_batch == 32 and points[2].config.train.seed == 0


def test_default_out_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.yaml").write_text("name: abc\ngrid: {train.seed: [0]}\n")
    assert S.load_sweep(tmp_path / "s.yaml").out_dir == tmp_path / "sweeps" / "abc"


def test_colliding_names_get_a_stable_hash(tmp_path):
    path = _write(tmp_path, {"grid": {"data.root": ["a/b", "a b", "x"]}})
    names = [p.name for p in S.expand(S.load_sweep(path))]
    assert names[2] == "rootx"
    assert names[0] != names[1] and all(n.startswith("roota_b-") for n in names[:2])
    assert names == [p.name for p in S.expand(S.load_sweep(path))]


def test_long_names_are_shortened(tmp_path):
    grid = {"optim.decay_epochs": [list(range(40)), list(range(41))]}
    path = _write(tmp_path, {"base": {"train": {"epochs": 50}}, "grid": grid})
    names = [p.name for p in S.expand(S.load_sweep(path))]
    assert all(len(n) <= 64 for n in names) and len(set(names)) == 2


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("gird: {batch.size: [1]}", "gird: unknown key; did you mean grid?"),
        ("grid: {batch.size: [1]}\nslurm: {partitio: x}", "slurm.partitio: unknown key"),
        ("base: {model: {widht: 3}}\ngrid: {batch.size: [1]}", "base: model.widht: unknown key"),
        ("grid: {model.widht: [1]}", "grid.model.widht: unknown key"),
        ("grid: {modle.width: [1]}", "grid.modle.width: unknown key modle; did you mean model?"),
        ("grid: {}", "grid: no points"),
        ("name: x", "grid: no points"),
        ("grid: {batch.size: []}", "grid.batch.size: empty list"),
        ("grid: {batch.size: 32}", "grid.batch.size: expected a list of values"),
        (
            "grid: {train.seed: [0, 1, 0]}",
            ": grid point #1 (train.seed=0) and grid point #3 (train.seed=0) resolve to the same config",
        ),
        (
            "grid: {train.seed: [0, 1]}\npoints: [{train.seed: 0}]",
            ": grid point #1 (train.seed=0) and points[0] (train.seed=0) resolve to the same config",
        ),
        (
            "grid: {batch.size: [64]}\npoints: [{batch.size: 32}, {train.seed: 1}, {batch.size: 32}]",
            ": points[0] (batch.size=32) and points[2] (batch.size=32) resolve to the same config",
        ),
        (
            "points: [{train.seed: 0}, {}]",
            ": points[0] (train.seed=0) and points[1] (base) resolve to the same config",
        ),
        (
            "base: {confg: ../default.yaml}\ngrid: {train.seed: [0]}",
            ": base.confg: unknown key; did you mean base.config? (valid: config, data, model, ",
        ),
        (
            "base: {modle: {width: 3}}\npoints: [{}]",
            "base.modle: unknown key; did you mean base.model?",
        ),
        ("base: {xyz: 1}\npoints: [{}]", "base.xyz: unknown key (valid: config, data, "),
        ("grid: {batch.size: [32, 0]}", "point b0 (batch.size=0): batch.size:"),
        ("grid: {train.run_name: [a]}", "grid.train.run_name: set by the sweep"),
        ("grid: {batch.size: [1]}\nlocal: {timeout_min: 0}", "local.timeout_min:"),
        ("grid: {batch.size: [1]}\nbase: {config: nope.yaml}", "base.config: no such config"),
    ],
)
def test_bad_sweep_files_give_one_line_errors(tmp_path, text, expected):
    path = tmp_path / "bad.yaml"
    path.write_text(text + "\n")
    with pytest.raises(ConfigError) as info:
        S.load_sweep(path)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(str(path)), msg
    assert expected in msg, msg


def test_base_may_leave_cross_field_rules_to_the_grid(tmp_path):
    # absa needs schedule.max_batch: the grid supplies it per point
    path = _write(
        tmp_path,
        {"base": {"schedule": {"method": "absa"}}, "grid": {"schedule.max_batch": [256, 1024]}},
    )
    assert [p.config.schedule.max_batch for p in S.expand(S.load_sweep(path))] == [256, 1024]
    path.write_text(path.read_text().replace("256", "64"))
    with pytest.raises(ConfigError, match=r"point bmax64 .*schedule.max_batch: 64 is smaller"):
        S.load_sweep(path)


# --- status, dry run, skipping ----------------------------------------------------------------


def test_status_from_files(tmp_path):
    folder = tmp_path / "p"
    folder.mkdir()
    assert S.status(folder) == "pending"
    (folder / "last.pt").write_bytes(b"x")
    assert S.status(folder) == "partial"
    (folder / "status.json").write_text(json.dumps({"state": "failed", "error": "boom"}))
    assert S.status(folder) == "failed" and S.failure(folder) == "boom"
    (folder / "summary.json").write_text("{}")
    assert S.status(folder) == "done"


def test_dry_run_lists_points_and_creates_nothing(tmp_path):
    path = _tiny(tmp_path, {"train.seed": [0, 1], "batch.size": [32, 64]})
    lines = []
    res = S.run_sweep(path, dry_run=True, say=lines.append)
    assert not (tmp_path / "out").exists()
    text = "\n".join(lines)
    for name in ("s0-b32", "s0-b64", "s1-b32", "s1-b64"):
        assert f"pending  {name}" in text
    assert str(tmp_path / "out" / "runs") in text
    assert res.pending == ["s0-b32", "s0-b64", "s1-b32", "s1-b64"] and res.exit_code == 0


def test_finished_points_are_skipped(tmp_path):
    path = _tiny(tmp_path, {"train.seed": [0, 1]})
    for p in S.expand(S.load_sweep(path)):
        p.folder.mkdir(parents=True)
        (p.folder / "summary.json").write_text('{"test_acc": 1.0}')
    res = S.run_sweep(path, say=lambda _m: None)
    assert res.skipped == ["s0", "s1"] and res.done == [] and res.failed == []
    for p in S.expand(S.load_sweep(path)):
        assert sorted(f.name for f in p.folder.iterdir()) == ["summary.json"]  # untouched
    assert (tmp_path / "out" / "points.json").is_file()


def test_bad_executor(tmp_path):
    with pytest.raises(ConfigError, match="executor: expected one of"):
        S.run_sweep(_tiny(tmp_path, {"train.seed": [0]}), executor="kubernetes")


def test_slurm_executor_parameters(tmp_path, monkeypatch):
    spec = {
        "grid": {"train.seed": [0, 1]},
        "nproc": 2,
        "slurm": {
            "partition": "gpu",
            "time_min": 90,
            "gpus_per_node": 2,
            "cpus_per_task": 4,
            "mem_gb": 32,
            "setup": ["module load cuda"],
            "extra": {"slurm_account": "abc"},
        },
    }
    path = _write(tmp_path, spec)
    import sys
    from pathlib import Path

    # as on a machine without Slurm, even where slurm-wlm is installed: only python on PATH
    monkeypatch.setenv("PATH", str(Path(sys.executable).parent))
    with pytest.raises(ConfigError, match=r"slurm: Could not detect .srun"):
        S.run_sweep(path, executor="slurm", say=lambda _m: None)
    assert not (tmp_path / "out").exists()  # nothing written before the executor exists

    import submitit.slurm.slurm as slurm

    monkeypatch.setattr(slurm.SlurmExecutor, "affinity", classmethod(lambda cls: 1))
    ex = make_executor(S.load_sweep(path), "slurm", 8)
    par = ex._executor.parameters
    assert (par["partition"], par["time"], par["ntasks_per_node"]) == ("gpu", 90, 2)
    assert (par["gpus_per_node"], par["cpus_per_task"], par["mem"]) == (2, 4, "32GB")
    assert par["array_parallelism"] == 8 and par["account"] == "abc"
    assert par["setup"][-1] == "module load cuda"


def test_commands():
    task = S.PointTask("a", "/r/a", "/r", nproc=2)
    cmd = S.command(task, resume=True, torchrun=True)
    assert cmd[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node"]
    assert cmd[cmd.index("--resume") + 1] == "/r/a"
    assert cmd[-2:] == ["train.out_dir=/r", "train.run_name=a"]
    assert cmd[cmd.index("-c") + 1] == "/r/a/point.yaml"
    plain = S.command(task, resume=False, torchrun=False)
    assert plain[1:4] == ["-m", "absa", "train"] and "--resume" not in plain


def test_point_job_is_picklable_and_checkpoints():
    task = S.PointTask("a", "/r/a", "/r")
    job = pickle.loads(pickle.dumps(S.PointJob()))
    delayed = job.checkpoint(task)
    assert isinstance(delayed.function, S.PointJob) and delayed.args == (task,)


# --- end to end (each `absa train` subprocess takes a few seconds) ---------------------------


def _summary(point):
    return json.loads((point.folder / "summary.json").read_text())


def test_local_runs_points_skips_and_resumes(tmp_path):
    path = _tiny(tmp_path, {"train.seed": [0, 1]}, local={"max_parallel": 2})
    lines = []
    res = S.run_sweep(path, say=lines.append)
    assert res.done == ["s0", "s1"] and res.failed == [] and res.exit_code == 0, lines
    points = S.expand(S.load_sweep(path))
    for p in points:
        assert S.status(p) == "done" and _summary(p)["epochs"] == 1
        assert (p.folder / "log.txt").is_file() and (p.folder / "point.yaml").is_file()
    resolved = S.load_sweep(tmp_path / "out" / "sweep.yaml")  # re-runnable as it stands
    assert [(q.name, q.config) for q in S.expand(resolved)] == [(q.name, q.config) for q in points]
    manifest = json.loads((tmp_path / "out" / "points.json").read_text())
    assert [m["name"] for m in manifest] == ["s0", "s1"]
    assert manifest[1]["overrides"] == ["train.seed=1"]

    stamp = (points[0].folder / "summary.json").stat().st_mtime_ns
    again = S.run_sweep(path, say=lambda _m: None)
    assert again.skipped == ["s0", "s1"] and again.done == []
    assert (points[0].folder / "summary.json").stat().st_mtime_ns == stamp

    # s1 loses its summary (as if killed after its last checkpoint); train.epochs grows to 2
    (points[1].folder / "summary.json").unlink()
    assert S.status(points[1]) == "partial"
    path = _tiny(
        tmp_path,
        {"train.seed": [0, 1]},
        base={**TINY, "train": {"epochs": 2, "threads": 1, "device": "cpu"}},
    )
    res = S.run_sweep(path, say=lambda _m: None)
    assert res.skipped == ["s0"] and res.done == ["s1"]
    assert _summary(points[1])["epochs"] == 2 and _summary(points[0])["epochs"] == 1
    assert "resumed" in (points[1].folder / "log.txt").read_text()
    metrics = (points[1].folder / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(m)["epoch"] for m in metrics] == [0, 1]


def test_failing_point_does_not_stop_the_others(tmp_path):
    path = _tiny(
        tmp_path,
        {"data.name": ["cifar10", "digits"]},
        base={**TINY, "data": {**TINY.get("data", {}), "root": str(tmp_path / "none")}},
        local={"max_parallel": 2},
    )
    lines = []
    res = S.run_sweep(path, say=lines.append)
    assert res.failed == ["cifar10"] and res.done == ["digits"] and res.exit_code == 1
    bad, good = S.expand(S.load_sweep(path))
    assert S.status(bad) == "failed" and S.status(good) == "done"
    assert "cifar-10-batches-py" in S.failure(bad)
    assert "cifar-10-batches-py" in res.errors["cifar10"]
    assert any(line.startswith("FAILED cifar10") for line in lines)
    dry = []
    S.run_sweep(path, dry_run=True, say=dry.append)
    assert any("failed   cifar10" in line for line in dry)
    assert any("last error:" in line for line in dry)


def test_local_timeout_marks_the_point_failed(tmp_path):
    path = _tiny(tmp_path, {"train.seed": [0]}, local={"timeout_min": 0.005})
    res = S.run_sweep(path, say=lambda _m: None)
    assert res.failed == ["s0"] and res.errors["s0"] == "timeout after 0.005 min"
    (point,) = S.expand(S.load_sweep(path))
    assert S.failure(point) == "timeout after 0.005 min"


def test_submitit_local_runs_two_points(tmp_path):
    path = _tiny(tmp_path, {"train.seed": [0, 1]}, local={"max_parallel": 2, "timeout_min": 10})
    lines = []
    res = S.run_sweep(path, executor="submitit-local", say=lines.append)
    assert res.done == ["s0", "s1"] and res.exit_code == 0, lines
    for p in S.expand(S.load_sweep(path)):
        assert S.status(p) == "done" and _summary(p)["epochs"] == 1
        assert json.loads((p.folder / "job.json").read_text())["executor"] == "submitit-local"
    assert (tmp_path / "out" / "submitit").is_dir()
    again = S.run_sweep(path, executor="submitit-local", say=lambda _m: None)
    assert again.skipped == ["s0", "s1"] and again.done == []


# --- grid blocks, outer keys, replay names ---------------------------------------------------


def test_grid_blocks_with_outer_keys(tmp_path):
    path = _write(
        tmp_path,
        {
            "base": TINY,
            "outer": {"train.seed": [0, 1]},
            "grid": [
                {"schedule.method": ["bl"], "batch.size": [32, 64]},
                {"schedule.method": ["gg"], "schedule.max_batch": [128]},
            ],
        },
    )
    names = [p.name for p in S.expand(S.load_sweep(path))]
    assert names == [
        "bl-b32-s0", "bl-b64-s0", "gg-bmax128-s0", "bl-b32-s1", "bl-b64-s1", "gg-bmax128-s1",
    ]  # fmt: skip
    cfgs = {p.name: p.config for p in S.expand(S.load_sweep(path))}
    assert cfgs["gg-bmax128-s1"].train.seed == 1 and cfgs["gg-bmax128-s1"].schedule.max_batch == 128


@pytest.mark.parametrize(
    "spec, expected",
    [
        ({"grid": [{"batch.size": [1]}, 3]}, "grid[1]: expected a mapping"),
        ({"grid": [{"batch.size": []}]}, "grid[0].batch.size: empty list"),
        ({"grid": [{"batch.siz": [1]}]}, "did you mean batch.size"),
        ({"outer": {"train.seed": [0]}, "points": [{"batch.size": 8}]}, "outer: needs a grid"),
        (
            {"outer": {"train.seed": 0}, "grid": {"batch.size": [8]}},
            "outer.train.seed: expected a list",
        ),
    ],
)
def test_bad_grid_blocks_and_outer(tmp_path, spec, expected):
    path = _write(tmp_path, {"base": TINY, **spec})
    with pytest.raises(ConfigError) as e:
        S.load_sweep(path)
    assert expected in str(e.value) and "\n" not in str(e.value)


def test_replay_point_is_named_by_its_source_run():
    name = S.point_name({"schedule.method": "replay", "schedule.replay_from": "a/b/absa-b8-s0"})
    assert name == "replay-of-absa-b8-s0"


# --- a point never runs twice at once ----------------------------------------------------------


def test_running_point_is_skipped_not_restarted(tmp_path):
    from absa.run.folder import RunLock

    path = _tiny(tmp_path, {"train.seed": [0, 1]})
    points = S.expand(S.load_sweep(path))
    with RunLock(points[0].folder):  # as if another sweep's child were training it
        assert S.status(points[0]) == "running"
        lines = []
        result = S.run_sweep(path, say=lines.append)
        assert result.done == ["s1"] and "s0" not in result.failed
        assert any(ln.startswith("skip s0: running (pid") for ln in lines)
    assert not (points[0].folder / "metrics.jsonl").exists()


def _gone(pid):
    """No such process, or a zombie nobody reaped (PID 1 of a container may not reap)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def test_killed_sweep_takes_its_training_child_with_it(tmp_path):
    """kill -9 of `absa sweep` ends its `absa train` child (PR_SET_PDEATHSIG), leaving a
    resumable point whose metrics hold each completed epoch once."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from absa.run.folder import holder

    path = _tiny(tmp_path, {"train.epochs": [400]})
    folder = S.expand(S.load_sweep(path))[0].folder
    sweep = subprocess.Popen(
        [sys.executable, "-m", "absa", "sweep", str(path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while not (folder / "last.pt").is_file():  # the child has trained an epoch
        assert sweep.poll() is None and time.monotonic() < deadline
        time.sleep(0.1)
    child = holder(folder)
    assert child is not None and child > 0
    os.kill(sweep.pid, signal.SIGKILL)
    sweep.wait()
    deadline = time.monotonic() + 30
    while holder(folder) is not None:
        assert time.monotonic() < deadline, "the training child outlived the killed sweep"
        time.sleep(0.1)
    # the child handles the death signal (SIGTERM) like Ctrl-C: it releases the lock, prints
    # the resume line, then ends by SIGTERM, a moment after the lock is free
    while not _gone(child):
        assert time.monotonic() < deadline, "the training child outlived the killed sweep"
        time.sleep(0.1)
    epochs = [json.loads(ln)["epoch"] for ln in (folder / "metrics.jsonl").read_text().splitlines()]
    assert epochs == list(range(len(epochs))) and len(epochs) < 400


def test_a_point_taken_by_another_process_after_the_start_is_left_alone(tmp_path):
    """Status is read again just before a point starts: a point another sweep took while
    this one ran its first point is skipped (no false 'failed', its files untouched)."""
    from absa.run.folder import RunLock

    path = _tiny(tmp_path, {"train.seed": [0, 1]}, local={"max_parallel": 1})
    s1 = S.expand(S.load_sweep(path))[1]
    lock = RunLock(s1.folder)
    (s1.folder / "metrics.jsonl").parent.mkdir(parents=True, exist_ok=True)
    lines = []

    def say(msg):
        lines.append(msg)
        if msg.startswith("start s0"):  # the other sweep takes s1 now
            lock.acquire()
            (s1.folder / "metrics.jsonl").write_text('{"epoch": 0}\n')

    try:
        res = S.run_sweep(path, say=say)
    finally:
        lock.release()
    assert res.done == ["s0"] and res.failed == [], lines
    assert any(ln.startswith("skip s1: running") for ln in lines), lines
    assert (s1.folder / "metrics.jsonl").read_text() == '{"epoch": 0}\n'
    assert not (s1.folder / S.MARKER).exists()


def test_shipped_cpu_reproduction_is_the_grid_it_was_run_with():
    """configs/sweeps/reproduce_cpu.yaml (a grid over digits_bl.yaml): 33 points, only ABSA
    with adversarial examples, power iteration as when docs/reproduce_cpu was made."""
    root = Path(__file__).resolve().parent.parent
    points = S.expand(S.load_sweep(root / "configs" / "sweeps" / "reproduce_cpu.yaml"))
    assert len(points) == 33 and len({p.name for p in points}) == 33
    for p in points:
        absa = p.config.schedule.method == "absa"
        assert (p.config.adv_fraction > 0) == absa, p.name
        assert p.config.hessian.method == "power" and p.config.batch.size in (32, 256, 1024)


def test_large_batch_sweep_is_the_fixed_grid_of_issue_27():
    """configs/sweeps/large_batch_fmnist.yaml: 15 configurations x seeds 0, 1 = 30 points,
    each 30 epochs on one thread, every growing one up to 16384, nothing trained."""
    root = Path(__file__).resolve().parent.parent
    sweep = S.load_sweep(root / "configs" / "sweeps" / "large_batch_fmnist.yaml")
    points = S.expand(sweep)
    assert sweep.name == "large_batch_fmnist" and sweep.out_dir.parts[-2:] == (
        "sweeps",
        "large_batch_fmnist",
    )
    assert sweep.local.max_parallel == 2 and len(points) == 30
    labels = {}
    for p in points:
        c, s = p.config, p.config.schedule
        assert c.train.epochs == 30 and c.train.threads == 1 and c.data.name == "fashion_mnist"
        assert c.batch.size == 128 and c.optim.lr == 0.1 and c.train.seed in (0, 1)
        assert s.max_batch == (None if s.method == "bl" else 16384), p.name
        assert (s.max_lr, s.stop_rule) == (None, "none")  # not part of this sweep
        label = p.name.rsplit("-s", 1)[0]
        assert p.name == f"{label}-s{c.train.seed}"
        labels.setdefault(label, []).append(c.train.seed)
        labels[label + "/settings"] = (s.method, s.lr_scaling, s.growth_warmup, s.lr_guard)
    assert [p.config.train.seed for p in points] == [0] * 15 + [1] * 15  # seed 0 first
    expected = {
        "abs-bmax16384-linear": ("abs", "linear", 0.0, False),
        "abs-bmax16384-sqrt": ("abs", "sqrt", 0.0, False),
        "absa-bmax16384-linear": ("absa", "linear", 0.0, False),
        "absa-bmax16384-sqrt": ("absa", "sqrt", 0.0, False),
        "abs-bmax16384-warmup1": ("abs", "linear", 1.0, False),
        "absa-bmax16384-warmup1": ("absa", "linear", 1.0, False),
        "abs-bmax16384-lrguard-true": ("abs", "linear", 0.0, True),
        "absa-bmax16384-lrguard-true": ("absa", "linear", 0.0, True),
        "gns-bmax16384-linear": ("gns", "linear", 0.0, False),
        "gns-bmax16384-sqrt": ("gns", "sqrt", 0.0, False),
        "hybrid-bmax16384-linear": ("hybrid", "linear", 0.0, False),
        "hybrid-bmax16384-sqrt": ("hybrid", "sqrt", 0.0, False),
        "gg-bmax16384": ("gg", "linear", 0.0, False),
        "seesaw-bmax16384": ("seesaw", "linear", 0.0, False),
        "bl-b128-lr0.1": ("bl", "linear", 0.0, False),
    }
    assert {k: v for k, v in labels.items() if "/" not in k} == {k: [0, 1] for k in expected}
    assert {k: labels[k + "/settings"] for k in expected} == expected
    for p in points:  # the shared protocol of reproduce_fmnist, untouched
        c = p.config
        assert (c.schedule.duration, c.schedule.gns_ratio, c.optim.decay_epochs) == (
            3,
            1.0,
            (10, 20, 27),
        )
        assert c.adv_fraction == (0.2 if c.schedule.method == "absa" else 0.0)
