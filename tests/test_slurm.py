"""Slurm for real: sweeps as job arrays, srun/sbatch launches, preemption and failing ranks.

Needs a reachable Slurm cluster with an idle node of at least 2 CPUs; every test is skipped
(with the reason) otherwise. A one-node cluster on this machine::

    bash scripts/slurm_local.sh start          # prints: export SLURM_CONF=/tmp/absa-slurm/slurm.conf
    export SLURM_CONF=/tmp/absa-slurm/slurm.conf
    python -m pytest -q -m slurm tests/test_slurm.py
    bash scripts/slurm_local.sh stop

All tests carry the ``slurm`` marker, which the default ``pytest`` run excludes. Children are
started as ``python -m absa`` with this checkout first on PYTHONPATH; sweeps poll squeue every
second (ABSA_SLURM_POLL_S=1). See docs/slurm.md for the commands and what they showed.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from test_distributed import BASE  # tests/ is on sys.path (pytest's rootdir import)

from absa.fleet import sweep as S
from absa.run import checkpoint as ckpt_io

pytestmark = pytest.mark.slurm

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ("sinfo", "squeue", "srun", "sbatch", "scontrol", "scancel")
HINT = "start one with `bash scripts/slurm_local.sh start` and export the SLURM_CONF it prints"

TINY = {
    "data": {"name": "digits"},
    "model": {"name": "mlp", "width": 8},
    "batch": {"size": 64, "max_micro_batch": 64},
    "train": {"epochs": 2, "threads": 1, "device": "cpu"},
    "hessian": {"probe_size": 128},
}
# time_min 60: submitit then takes a USR2 for preemption, not for its time limit
SLURM = {"time_min": 60, "cpus_per_task": 1}

# the tiny config of tests/test_distributed.py: mlp (no BatchNorm), several micro-batches.
# `absa train` without -c starts from configs/default.yaml (decay at epochs 20, 26), so the
# 2-epoch runs here say no decay, as the Python defaults of test_distributed's C.load do
ARGS = [*BASE, "optim.decay_epochs=[]"]


# --- the cluster ------------------------------------------------------------------------------


def _cluster_problem() -> str:
    """Why the tests cannot run here ("" when a controller answers and a node is idle)."""
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        return f"Slurm client tools not on PATH ({', '.join(missing)}); {HINT}"
    conf = os.environ.get("SLURM_CONF")
    where = f"SLURM_CONF={conf}" if conf else "SLURM_CONF not set"
    try:
        res = subprocess.run(
            ["sinfo", "--noheader", "--Node", "--format=%N|%T|%c"],
            capture_output=True,
            text=True,
            timeout=20,
            env=_env(),
        )
    except subprocess.TimeoutExpired:
        return f"sinfo did not answer within 20 s ({where}); {HINT}"
    if res.returncode != 0:
        last = (res.stderr.strip().splitlines() or ["no output"])[-1]
        return f"no Slurm controller answers sinfo ({where}): {last}; {HINT}"
    nodes = [ln.split("|") for ln in res.stdout.split() if ln.count("|") == 2]
    ok = [n for n in nodes if n[1].rstrip("*~#") in ("idle", "mixed") and int(n[2]) >= 2]
    if not ok:
        return f"no idle Slurm node with 2 CPUs ({where}; sinfo: {res.stdout.strip() or 'none'})"
    return ""


@pytest.fixture(scope="module")
def cluster():
    problem = _cluster_problem()
    if problem:
        print(f"skipping Slurm tests: {problem}", file=sys.stderr)
        pytest.skip(problem)


def _env(**extra: str) -> dict[str, str]:
    """This environment without the variables of an enclosing job or launcher."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not (k.startswith(("SLURM_", "SRUN_", "SBATCH_", "ABSA_TEST_")) and k != "SLURM_CONF")
        and k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    }
    old = env.get("PYTHONPATH")
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + old if old else "")
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", ABSA_SLURM_POLL_S="1")
    env.update(extra)
    return env


def _run(cmd: list[str], cwd: Path, timeout: float = 300, **extra: str):
    return subprocess.run(
        cmd,
        cwd=cwd,
        env=_env(**extra),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def _state(job_id: str) -> str:
    states = S.squeue_states([job_id]) or {}
    return states[job_id].state if job_id in states else ""


def _cancel(job_ids: list[str]) -> None:
    mains = sorted({j.split("_")[0] for j in job_ids})
    if mains:
        subprocess.run(["scancel", *mains], env=_env(), capture_output=True, timeout=30)


def _wait_for(what: str, check, timeout: float, proc: subprocess.Popen | None = None, log=None):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            tail = log.read_text()[-3000:] if log is not None and log.is_file() else ""
            pytest.fail(
                f"the sweep ended (exit {proc.returncode}) while waiting for {what}\n{tail}"
            )
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.2)


# --- helpers for runs and sweeps --------------------------------------------------------------


def _sweep_file(tmp_path: Path, grid: dict, points: list | None = None, **base) -> Path:
    spec = {
        "name": "slurm-test",
        "out_dir": str(tmp_path / "out"),
        "base": {**TINY, **base},
        "grid": grid,
        "points": points or [],
        "slurm": SLURM,
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _sweep_cmd(path: Path) -> list[str]:
    return [sys.executable, "-m", "absa", "sweep", str(path), "--executor", "slurm"]


def _metrics(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def _assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = ckpt_io.load(a)["model"], ckpt_io.load(b)["model"]
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-7, msg=k)


def _submitted(out: str) -> dict[str, str]:
    """point name -> job id from the sweep's `submitted <name> as job <id>:` lines."""
    return dict(re.findall(r"^submitted (\S+) as job (\S+):", out, flags=re.M))


def _no_sacct_noise(out: str) -> None:
    low = out.lower()
    assert "bypassing sacct" not in low and "accounting storage is disabled" not in low, out


# --- (a) a job-array sweep ------------------------------------------------------------------


def test_job_array_sweep_finishes_and_a_second_call_skips_it(cluster, tmp_path):
    path = _sweep_file(tmp_path, {"train.epochs": [1, 2, 3]})
    points = S.expand(S.load_sweep(path))
    res = _run(_sweep_cmd(path), tmp_path)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    _no_sacct_noise(out)

    jobs = _submitted(res.stdout)
    assert sorted(jobs) == sorted(p.name for p in points), out
    mains = {j.split("_")[0] for j in jobs.values()}
    assert len(mains) == 1 and sorted(j.split("_")[1] for j in jobs.values()) == ["0", "1", "2"]
    script = (tmp_path / "out" / "submitit" / f"{mains.pop()}_submission.sh").read_text()
    assert "#SBATCH --array=0-2" in script
    assert "job states from squeue" in res.stdout
    for p in points:
        jid = jobs[p.name]
        assert f"job {jid} ({p.name}): COMPLETED" in res.stdout
        assert f"log {p.folder / 'log.txt'}" in res.stdout  # where each point's logs are
        info = json.loads((p.folder / "job.json").read_text())
        assert info["job_id"] == jid and info["executor"] == "slurm"
        assert Path(info["submitit_stderr"]).is_file() and Path(info["submitit_stdout"]).is_file()
        epochs = p.config.train.epochs
        assert json.loads((p.folder / "summary.json").read_text())["epochs"] == epochs
        assert [r["epoch"] for r in _metrics(p.folder)] == list(range(epochs))
        assert (p.folder / "config.yaml").is_file() and (p.folder / "last.pt").is_file()
        assert S.status(p) == "done"
    assert "sweep slurm-test: 3 done, 0 failed, 0 skipped" in res.stdout

    stamps = [(p.folder / "summary.json").stat().st_mtime_ns for p in points]
    again = _run(_sweep_cmd(path), tmp_path, timeout=120)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "0 done, 0 failed, 3 skipped (finished before)" in again.stdout
    assert "submitted" not in again.stdout
    assert [(p.folder / "summary.json").stat().st_mtime_ns for p in points] == stamps


# --- (b) srun and sbatch launches equal one process --------------------------------------------


@pytest.fixture(scope="module")
def one_process(cluster, tmp_path_factory):
    out = tmp_path_factory.mktemp("one")
    cmd = [sys.executable, "-m", "absa", "train", *ARGS]
    res = _run(
        cmd + ["train.device=cpu", f"train.out_dir={out}", "train.run_name=one"], out, timeout=180
    )
    assert res.returncode == 0, res.stderr[-3000:]
    return out / "one"


def _two_rank_run(launcher: str, tmp_path: Path):
    run = tmp_path / "two"
    train = [sys.executable, "-m", "absa", "train", *ARGS]
    train += ["train.device=cpu", f"train.out_dir={tmp_path}", "train.run_name=two"]
    if launcher == "srun":
        cmd = ["srun", "--ntasks=2", "--kill-on-bad-exit=1", "--time=10", "--immediate=120"]
        res = _run(cmd + train, tmp_path, timeout=300)
        return run, res.returncode, res.stdout, res.stderr
    # a batch script: its shell sees SLURM_NTASKS=2 but is one process; srun starts the ranks
    log = tmp_path / "sbatch.out"
    inner = "srun --kill-on-bad-exit=1 " + shlex.join(train)
    cmd = ["sbatch", "--parsable", "--ntasks=2", "--time=10", f"--output={log}", "--wrap", inner]
    res = _run(cmd, tmp_path, timeout=60)
    assert res.returncode == 0, res.stderr
    jid = res.stdout.strip().split(";")[0]
    try:  # squeue every 0.2 s: `sbatch --wait` polls with a growing delay of up to 30 s
        _wait_for(f"batch job {jid}", lambda: _state(jid) in S.SLURM_ENDED, 300)
    finally:
        _cancel([jid])
    show = _run(["scontrol", "show", "job", jid], tmp_path, timeout=30).stdout
    code = re.search(r"\bExitCode=(\d+):(\d+)", show)
    rc = int(code.group(1)) if code else -1
    text = log.read_text() if log.is_file() else ""
    return run, rc, text, text + show


@pytest.mark.parametrize("launcher", ["srun", "sbatch"])
def test_two_slurm_tasks_train_like_one_process(one_process, tmp_path, launcher):
    run, rc, stdout, stderr = _two_rank_run(launcher, tmp_path)
    assert rc == 0, stderr[-3000:]
    assert "terminate called" not in stderr
    assert json.loads((run / "env.json").read_text())["world_size"] == 2
    assert json.loads((one_process / "env.json").read_text())["world_size"] == 1
    _assert_same_weights(run, one_process)
    two, one = _metrics(run), _metrics(one_process)
    assert [r["updates"] for r in two] == [r["updates"] for r in one]
    assert [r["batch_size"] for r in two] == [r["batch_size"] for r in one]
    for r2, r1 in zip(two, one, strict=True):
        assert r2["test_loss"] == pytest.approx(r1["test_loss"], rel=1e-5)
    s2 = json.loads((run / "summary.json").read_text())
    s1 = json.loads((one_process / "summary.json").read_text())
    assert s2["updates"] == s1["updates"]
    assert stdout.count("epoch 0/1 ") == 1  # epoch lines come from rank 0 only


# --- (c) preemption and a failing point ----------------------------------------------------


def _fake_mnist(root: Path, n_train: int = 256, n_test: int = 64) -> None:
    """Random idx files in torchvision's layout: enough for absa to train on."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        pixels = rng.integers(0, 256, size=n * 28 * 28, dtype=np.uint8).tobytes()
        header = b"\x00\x00\x08\x03" + struct.pack(">iii", n, 28, 28)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(header + pixels)
        labels = (np.arange(n) % 10).astype(np.uint8).tobytes()
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(
            b"\x00\x00\x08\x01" + struct.pack(">i", n) + labels
        )


def _release(job_id: str, timeout: float = 60) -> None:
    """A requeued job waits ~2 min (BeginTime); bring its start forward."""
    _wait_for(f"job {job_id} back in the queue", lambda: _state(job_id) == "PENDING", timeout)
    subprocess.run(
        ["scontrol", "update", f"JobId={job_id}", "StartTime=now"],
        env=_env(),
        capture_output=True,
        timeout=30,
    )


def test_preempted_point_resumes_and_failed_point_reruns(cluster, tmp_path):
    epochs = 150
    mnist = tmp_path / "mnist"
    path = _sweep_file(
        tmp_path,
        {"train.seed": [0]},
        points=[{"data.name": "mnist", "data.root": str(mnist), "train.epochs": 2}],
        train={"epochs": epochs, "threads": 1},
    )
    long, bad = S.expand(S.load_sweep(path))
    log = tmp_path / "sweep.log"
    with log.open("w") as fh:
        proc = subprocess.Popen(
            _sweep_cmd(path), cwd=tmp_path, env=_env(), stdout=fh, stderr=subprocess.STDOUT
        )
    jobs: list[str] = []
    ref = None
    try:
        jid = _wait_for(
            "the job id",
            lambda: (
                (long.folder / "job.json").is_file()
                and json.loads((long.folder / "job.json").read_text())["job_id"]
            ),
            120,
            proc,
            log,
        )
        jobs.append(jid)
        # an uninterrupted run of the same config, beside the sweep
        ref = subprocess.Popen(
            [sys.executable, "-m", "absa", "train", "-c", str(long.folder / "point.yaml")]
            + ["train.device=cpu", f"train.out_dir={tmp_path / 'ref'}", "train.run_name=ref"],
            cwd=tmp_path,
            env=_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

        def epochs_done() -> int:
            try:
                return len((long.folder / "metrics.jsonl").read_text().splitlines())
            except OSError:
                return 0

        # 1. the signal Slurm sends before the time limit (--signal=USR2@90): submitit's
        #    handler calls PointJob.checkpoint and requeues the job itself
        _wait_for("2 epochs", lambda: epochs_done() >= 2, 120, proc, log)
        subprocess.run(["scancel", "--signal=USR2", jid], env=_env(), check=True, timeout=30)
        _release(jid)
        # 2. preemption from outside: Slurm sends SIGTERM, kills the job, requeues it
        _wait_for(
            "the resumed run",
            lambda: "resumed" in (long.folder / "log.txt").read_text(),
            120,
            proc,
            log,
        )
        mark = epochs_done()
        _wait_for("2 more epochs", lambda: epochs_done() >= mark + 2, 120, proc, log)
        assert epochs_done() < epochs, "the run finished before it could be preempted"
        subprocess.run(["scontrol", "requeue", jid], env=_env(), check=True, timeout=30)
        _release(jid)
        rc = proc.wait(timeout=300)
        assert ref.wait(timeout=300) == 0, ref.stderr.read().decode()[-3000:]
    finally:
        for p in (proc, ref):
            if p is not None and p.poll() is None:
                p.kill()
        _cancel(jobs)
    out = log.read_text()
    assert rc == 1, out  # the mnist point failed
    _no_sacct_noise(out)
    # each requeue is reported even when it completes between two polls: the restart count
    # is part of the printed state
    assert re.search(rf"^job {jid} \({long.name}\): RUNNING on .*, requeued 2x$", out, re.M), out
    assert f"job {jid} ({long.name}): COMPLETED, requeued 2x" in out, out

    # the preempted point: two resumes, each epoch once, the weights of an uninterrupted run
    text = (long.folder / "log.txt").read_text()
    assert text.count(": resume: ") == 2 and "training stopped by SIGTERM" in text
    assert [r["epoch"] for r in _metrics(long.folder)] == list(range(epochs))
    assert S.status(long) == "done" and S.failure(long) is None
    _assert_same_weights(long.folder, tmp_path / "ref" / "ref")
    s = json.loads((long.folder / "summary.json").read_text())
    assert (
        s["updates"]
        == json.loads((tmp_path / "ref" / "ref" / "summary.json").read_text())["updates"]
    )

    # the failing point: reported, recorded, and run again once its data exists
    assert re.search(rf"^FAILED {re.escape(bad.name)}: .*train-images-idx3-ubyte", out, re.M), out
    assert S.status(bad) == "failed" and "train-images-idx3-ubyte" in S.failure(bad)
    _fake_mnist(mnist)
    again = _run(_sweep_cmd(path), tmp_path, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert list(_submitted(again.stdout)) == [bad.name]  # the finished point is not resubmitted
    assert "1 done, 0 failed, 1 skipped (finished before)" in again.stdout
    assert S.status(bad) == "done" and [r["epoch"] for r in _metrics(bad.folder)] == [0, 1]


# --- (d) a rank that dies ends the step -----------------------------------------------------


def _srun_two(cmd: list[str], tmp_path: Path, **extra: str):
    head = ["srun", "--ntasks=2", "--kill-on-bad-exit=1", "--time=10", "--immediate=120"]
    t0 = time.monotonic()
    try:
        res = _run(head + cmd, tmp_path, timeout=180, **extra)
    except subprocess.TimeoutExpired:
        pytest.fail("srun --kill-on-bad-exit=1 with a dead rank still ran after 180 s")
    return res, time.monotonic() - t0


def test_kill_on_bad_exit_ends_the_step_when_a_rank_exits(cluster, tmp_path):
    # rank 1 exits with status 3 at once; rank 0 would sleep for 10 minutes
    script = (
        "import os, time\n"
        "if os.environ['SLURM_PROCID'] == '1':\n"
        "    time.sleep(1); os._exit(3)\n"
        "time.sleep(600)\n"
    )
    res, seconds = _srun_two([sys.executable, "-c", script], tmp_path)
    assert res.returncode != 0 and seconds < 60, (seconds, res.stderr)
    assert "task 1: Exited with exit code 3" in res.stderr, res.stderr


def test_kill_on_bad_exit_ends_absa_when_a_rank_is_killed(cluster, tmp_path):
    # tests/test_distributed.py run as a script is absa with a fault on rank 1: SIGKILL at
    # step 30, in epoch 1 (22 steps per epoch), after epoch 0's checkpoint
    cmd = [sys.executable, str(ROOT / "tests" / "test_distributed.py"), "train", *ARGS]
    cmd += ["train.device=cpu", f"train.out_dir={tmp_path}", "train.run_name=k", "train.epochs=50"]
    res, seconds = _srun_two(
        cmd, tmp_path, ABSA_TEST_FAIL_RANK="1", ABSA_TEST_FAIL_MODE="kill", ABSA_TEST_FAIL_STEP="30"
    )
    assert res.returncode != 0 and seconds < 60, (seconds, res.stderr[-3000:])
    assert "task 1: Killed" in res.stderr, res.stderr[-3000:]
    assert ckpt_io.load(tmp_path / "k")["epoch"] == 1  # epoch 0's checkpoint is kept
