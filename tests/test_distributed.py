"""Data-parallel training on CPU: two gloo processes checked against one process.

Two kinds of multi-process tests:

* in-process: ``torch.multiprocessing`` spawns 2 workers that call ``absa.engine.loop`` directly.
  One module-scoped session runs every scenario (start-up is paid once) and saves what
  each rank saw; the tests compare it with single-process runs of the same config.
* real launches: ``absa train --nproc 2`` (torchrun), torchrun on this file, and two plain
  processes with srun's SLURM_* variables, for exit codes, aborts at exit and failing ranks.

Equality tests use the mlp model: a BatchNorm model differs between 1 and 2 ranks, since each
rank normalises with the statistics of its own share of the batch.

Run as a script (``python tests/test_distributed.py train ...``), this file is ``absa`` with
a fault injected on one rank, set by ABSA_TEST_FAIL_RANK / ABSA_TEST_FAIL_MODE (raise, kill,
hang) / ABSA_TEST_FAIL_STEP; only the failing-rank tests launch it this way.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.multiprocessing as mp

from absa import distributed as D
from absa.engine import epoch as E
from absa.engine import loop as T
from absa.engine.probes import ProbeSettings, hessian_probe, probe_indices
from absa.engine.step import Attack
from absa.run import checkpoint as ckpt_io
from absa.run import config as C
from absa.run.data import load_data, local_positions
from absa.run.models import build_model

ROOT = Path(__file__).resolve().parents[1]
WORLD = 2

# The tiny_cfg of conftest.py, with micro-batches of 16 so that every rank accumulates
# several micro-batches per step (DDP's no_sync path), and one thread per process.
BASE = [
    "data.name=digits",
    "model.name=mlp",
    "model.width=8",
    "batch.size=64",
    "batch.max_micro_batch=16",
    "train.epochs=2",
    "optim.lr=0.05",
    "hessian.probe_size=256",
    "train.threads=1",
    "train.device=cpu",  # CPU ranks (gloo), also on a CUDA machine
]
ABS = ("schedule.method=abs", "schedule.max_batch=256", "schedule.duration=1")
SCENARIOS = {
    "bl": (),
    "abs": ABS,  # duration=1: the batch grows after every epoch (64 -> 128)
    "absa": ("schedule.method=absa", "schedule.max_batch=256", "schedule.duration=1"),
}
# BatchNorm model with statistics over the global micro-batch: each rank's one micro-batch of
# 32 is half of the 1-process micro-batch of 64 (the same 64 samples); 1280 = 20 x 64 samples
BN = ("model.name=small_cnn", "distributed.sync_batchnorm=true", "data.train_size=1280")
# 255 probe samples: the two ranks hold shards of 128 and 127
EIG = ("hessian.probe_size=255", "hessian.rtol=1e-12", "hessian.max_iter=30")


def _cfg(out: Path, name: str, *over: str) -> C.Config:
    return C.load(
        None, [*BASE, "train.device=cpu", f"train.out_dir={out}", f"train.run_name={name}", *over]
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _assert_close_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-7, msg=k)


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


# --- the spawned session ------------------------------------------------------------------


def _eigen(env: D.DistEnv, out: Path, block: str) -> tuple[float, int]:
    """Top eigenvalue on the probe set at the 2-rank BL run's final weights."""
    cfg = _cfg(out, "eig", f"hessian.block={block}", *EIG)
    data = load_data(cfg.data)
    model = build_model("mlp", data.info, 8).to(env.device)
    model.load_state_dict(ckpt_io.load(out / "2rank" / "bl")["model"])
    idx = probe_indices(len(data.train), cfg.hessian.probe_size, cfg.train.seed)
    settings = ProbeSettings.from_config(cfg)
    res = hessian_probe(model, data, settings, env, idx, epoch=0, micro=cfg.batch.max_micro_batch)
    return res.eigenvalue, res.n_hvp


def _count_syncs(env: D.DistEnv, out: Path) -> dict:
    """One logical batch of 96 = 3 micro-batches of 16 per rank: how often DDP all-reduces."""
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

    cfg = _cfg(out, "sync")
    data = load_data(cfg.data)
    torch.manual_seed(0)
    ddp = D.wrap_model(build_model("mlp", data.info, 8), env)
    calls = []

    def counting(state, bucket):
        calls.append(bucket.index())
        return default_hooks.allreduce_hook(state, bucket)

    ddp.register_comm_hook(None, counting)
    local = local_positions(torch.arange(96), env.rank, env.world_size)
    micro = [(*data.train.get(c), torch.zeros(len(c), dtype=torch.bool)) for c in local.split(16)]
    T.accumulate_gradients(ddp, iter(micro), 96, env, Attack.from_config(cfg))
    return {"calls": len(calls), "grads": [p.grad.clone() for p in ddp.parameters()]}


def _session_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    D.set_local_env(rank, world, port)
    torch.set_num_threads(1)
    out = Path(out_dir)
    env = D.setup("cpu", "auto", timeout_s=60)
    ok = False
    try:
        res: dict = {"backend": env.backend, "rank": env.rank}
        for name, over in SCENARIOS.items():
            res[name] = asdict(T.run(_cfg(out, name, *over), env, out / "2rank" / name))
        # stopped after epoch 1 (resumed on one process by a test)
        res["stop1"] = asdict(
            T.run(_cfg(out, "stop1", *ABS, "train.epochs=1"), env, out / "2rank" / "stop1")
        )
        # a 1-process checkpoint after epoch 1, resumed here on 2 ranks
        res["resume12"] = asdict(
            T.run(_cfg(out, "stop1", *ABS), env, out / "resume12", resume=True)
        )
        for block in ("last", "full"):
            res[f"eig_{block}"] = _eigen(env, out, block)
        res["sync"] = _count_syncs(env, out)
        # batch.max_micro_batch: auto: rank 1 has "less memory" (its probe failed at 64, 32)
        (out / "micro").mkdir(exist_ok=True)
        said: list[str] = []
        size, failed = (64, []) if rank == 0 else (16, [64, 32])
        res["micro"] = T.agree_micro_batch(env, size, 64, failed, out / "micro", said.append)
        res["micro_said"] = said
        T.run(_cfg(out, "bn", *BN, "batch.max_micro_batch=32"), env, out / "2rank" / "bn")
        torch.save(res, out / f"rank{rank}.pt")
        ok = True
    finally:
        D.teardown(env, ok)
    D.exit_process(0)  # see D.exit_process: no interpreter shutdown after gloo


def _spawn(fn, args: tuple, timeout: float = 240) -> None:
    ctx = mp.start_processes(fn, args=args, nprocs=WORLD, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"spawned workers still running after {timeout}s")


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    ref = {}
    for name, over in SCENARIOS.items():
        ref[name] = T.run(_cfg(out, name, *over), run_dir=out / "1rank" / name)
    T.run(_cfg(out, "stop1", *ABS, "train.epochs=1"), run_dir=out / "1rank" / "stop1")
    shutil.copytree(out / "1rank" / "stop1", out / "resume12")
    T.run(_cfg(out, "bn", *BN, "batch.max_micro_batch=64"), run_dir=out / "1rank" / "bn")
    _spawn(_session_worker, (WORLD, _free_port(), str(out)))
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    return SimpleNamespace(out=out, ref=ref, ranks=ranks)


# --- (a) two ranks train exactly like one process -----------------------------------------


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_two_ranks_equal_one_process(session, name):
    out, ref = session.out, session.ref[name]
    two = ckpt_io.load(out / "2rank" / name)
    one = ckpt_io.load(out / "1rank" / name)
    _assert_close_state(two["model"], one["model"])
    for a, b in zip(
        two["optimizer"]["state"].values(), one["optimizer"]["state"].values(), strict=True
    ):
        torch.testing.assert_close(a["momentum_buffer"], b["momentum_buffer"], rtol=1e-5, atol=1e-7)

    m2, m1 = _metrics(out / "2rank" / name), _metrics(out / "1rank" / name)
    assert len(m2) == 2  # only rank 0 wrote metrics
    for r2, r1 in zip(m2, m1, strict=True):
        for key in ("batch_size", "updates", "adv_samples", "lr"):
            assert r2[key] == r1[key], key
        for key in ("train_loss", "train_acc", "test_loss", "test_acc"):  # all-reduced
            assert r2[key] == pytest.approx(r1[key], rel=1e-5), key
        if r1["lambda_max"] is not None:
            assert r2["lambda_max"] == pytest.approx(r1["lambda_max"], rel=1e-4)

    s0, s1 = (r[name] for r in session.ranks)  # the summaries both ranks returned
    timing = {"train_seconds", "hessian_seconds", "eval_seconds"}
    assert {k for k in s0 if s0[k] != s1[k]} <= timing  # same growths, losses, batch
    assert [g["new_batch"] for g in s0["growths"]] == [g["new_batch"] for g in ref.growths]
    if name != "bl":  # the batch grew, identically on both ranks and in the 1-process run
        assert [r["batch_size"] for r in m2] == [64, 128]
        assert ref.growths and s0["final_batch"] == ref.final_batch == 128
    if name == "absa":
        assert m2[0]["adv_samples"] > 0  # summed over ranks, like in the 1-process run


def test_sync_batchnorm_two_ranks_equal_one_process(session):
    """distributed.sync_batchnorm: a BatchNorm CNN on 2 gloo ranks follows the 1-process
    run (weights, BN running statistics, losses) when the global micro-batch is the same."""
    out = session.out
    two, one = ckpt_io.load(out / "2rank" / "bn"), ckpt_io.load(out / "1rank" / "bn")
    assert any("running_mean" in k for k in one["model"])
    for k in one["model"]:
        torch.testing.assert_close(two["model"][k], one["model"][k], rtol=1e-4, atol=1e-5, msg=k)
    for r2, r1 in zip(_metrics(out / "2rank" / "bn"), _metrics(out / "1rank" / "bn"), strict=True):
        assert r2["updates"] == r1["updates"]
        assert r2["train_loss"] == pytest.approx(r1["train_loss"], rel=1e-4)


def test_process_group_used_gloo_and_no_sync_until_last_micro_batch(session):
    assert [r["backend"] for r in session.ranks] == ["gloo", "gloo"]
    # 3 micro-batches per rank, one all-reduce (the tiny model has one gradient bucket)
    assert [r["sync"]["calls"] for r in session.ranks] == [1, 1]
    data = load_data(_cfg(session.out, "sync").data)
    torch.manual_seed(0)
    model = build_model("mlp", data.info, 8)
    x, y = data.train.get(torch.arange(96))
    torch.nn.functional.cross_entropy(model(x), y).backward()
    for r in session.ranks:
        for g, p in zip(r["sync"]["grads"], model.parameters(), strict=True):
            torch.testing.assert_close(g, p.grad, rtol=1e-5, atol=1e-7)


def test_auto_micro_batch_is_the_smallest_over_ranks(session):
    # every rank steps through the same micro-batches: the rank with the least memory decides
    assert [r["micro"] for r in session.ranks] == [16, 16]
    said0, said1 = (r["micro_said"] for r in session.ranks)
    assert said0 == [
        "batch.max_micro_batch: auto -> 16 per process (out of memory here at none; "
        "64 fits here, a rank with less memory fits 16)"
    ]
    assert said1 == [
        "batch.max_micro_batch: auto -> 16 per process (out of memory here at [64, 32])"
    ]
    # written once, by rank 0, with what rank 0 tried
    record = json.loads((session.out / "micro" / "micro_batch.json").read_text())
    assert record == {"micro_batch": 16, "tried": [64], "device": "cpu"}


# --- (b) the Hessian probe ----------------------------------------------------------------


@pytest.mark.parametrize("block", ["last", "full"])
def test_distributed_eigenvalue_equals_single_process(session, block):
    (lam0, n0), (lam1, n1) = (r[f"eig_{block}"] for r in session.ranks)
    assert lam0 == lam1 and n0 == n1  # every rank got the very same number
    torch.set_num_threads(1)  # as in the workers (and much faster here than 2 threads)
    lam, _ = _eigen(D.DistEnv(), session.out, block)
    assert lam0 == pytest.approx(lam, rel=1e-5)
    assert lam > 0


# --- (c) resume across world sizes --------------------------------------------------------


def test_two_rank_checkpoint_resumes_on_one_process(session, tmp_path):
    run = tmp_path / "stop1"
    shutil.copytree(session.out / "2rank" / "stop1", run)
    assert ckpt_io.load(run)["epoch"] == 1
    summary = T.run(_cfg(session.out, "stop1", *ABS, "train.epochs=2"), run_dir=run, resume=True)
    full = session.out / "1rank" / "abs"
    _assert_close_state(ckpt_io.load(run)["model"], ckpt_io.load(full)["model"])
    assert summary.updates == session.ref["abs"].updates
    # the growth to 256 decided at the last epoch never took effect: not in the summary
    assert [g["new_batch"] for g in summary.growths] == [128]
    assert _metrics(run)[-1]["growth"]["new_batch"] == 256
    assert _metrics(run)[-1]["growth"]["effective"] is False
    assert [r["epoch"] for r in _metrics(run)] == [0, 1]
    assert [r["batch_size"] for r in _metrics(run)] == [64, 128]


def test_one_process_checkpoint_resumes_on_two_ranks(session):
    full = session.out / "1rank" / "abs"
    _assert_close_state(
        ckpt_io.load(session.out / "resume12")["model"], ckpt_io.load(full)["model"]
    )
    assert session.ranks[0]["resume12"]["updates"] == session.ref["abs"].updates


# --- checks that need no second process ---------------------------------------------------


@pytest.mark.parametrize(
    "over, world, needle",
    [
        (("batch.size=63",), 2, "batch.size: 63 is not divisible by the world size 2"),
        ((*ABS[:1], "schedule.max_batch=250"), 4, "schedule.max_batch: 250 is not divisible"),
    ],
)
def test_batch_must_divide_by_world_size(tiny_cfg, tmp_path, over, world, needle):
    with pytest.raises(C.ConfigError, match=needle):
        T.run(tiny_cfg(*over), D.DistEnv(rank=0, world_size=world), tmp_path / "r")
    assert not (tmp_path / "r").exists()


def _clear_launch_vars(monkeypatch):
    for k in list(os.environ):
        if k.startswith(("SLURM_", "TORCHELASTIC_")) or k in (
            "RANK",
            "WORLD_SIZE",
            "LOCAL_RANK",
            "MASTER_ADDR",
            "MASTER_PORT",
        ):
            monkeypatch.delenv(k)


def test_process_env_from_torchrun_srun_or_nothing(monkeypatch):
    _clear_launch_vars(monkeypatch)
    assert D.process_env() == (0, 1, 0)
    # the shell of an sbatch script: SLURM_NTASKS > 1 but a single process
    monkeypatch.setenv("SLURM_NTASKS", "4")
    monkeypatch.setenv("SLURM_PROCID", "0")
    assert D.process_env() == (0, 1, 0)
    # one task of `srun --ntasks 4`
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "4")
    monkeypatch.setenv("SLURM_PROCID", "3")
    monkeypatch.setenv("SLURM_LOCALID", "1")
    assert D.process_env() == (3, 4, 1)
    # torchrun's variables win (torchrun started inside an srun step)
    monkeypatch.setenv("RANK", "5")
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert D.process_env() == (5, 8, 1)


@pytest.mark.parametrize(
    "nodes, host",
    [("n1", "n1"), ("gpu[03-04,07],cpu1", "gpu03"), ("a[7,9]", "a7"), ("r[1-2]-x,y", "r1-x")],
)
def test_first_host_of_slurm_node_list(nodes, host):
    assert D.first_host(nodes) == host


def test_setup_single_process_and_backend_checks(monkeypatch):
    _clear_launch_vars(monkeypatch)
    env = D.setup("cpu")
    assert (env.world_size, env.backend, env.distributed) == (1, None, False)
    D.teardown(env)
    D.teardown(env, ok=False)  # harmless twice and on one process
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="nccl needs CUDA"):
        D.setup("cpu", "nccl")
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(ValueError, match="outside the world"):
        D.setup("cpu")


# --- real launches ------------------------------------------------------------------------

LAUNCH_ARGS = ["-c", str(Path(__file__).parent / "data" / "run.yaml"), *BASE]  # built-in defaults


def _launch_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SLURM_", "TORCHELASTIC_", "ABSA_TEST_"))
        and k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    }
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if "PYTHONPATH" in env else "")
    env.update(extra)
    return env


def _nproc_run(tmp_path: Path, name: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "absa", "train", "--nproc", str(WORLD), *LAUNCH_ARGS]
    cmd += ["train.device=cpu", f"train.out_dir={tmp_path}", f"train.run_name={name}"]
    return subprocess.run(
        cmd, cwd=tmp_path, env=_launch_env(), capture_output=True, text=True, timeout=180
    )


def _repeated_runs(tmp_path: Path, repeats: int) -> None:
    bad = []
    for i in range(repeats):
        res = _nproc_run(tmp_path, f"r{i}")
        run = tmp_path / f"r{i}"
        if res.returncode != 0 or "terminate called" in res.stderr:
            bad.append(f"run {i}: exit {res.returncode}\n{res.stderr[-2000:]}")
            continue
        assert json.loads((run / "env.json").read_text())["world_size"] == WORLD
        assert len(_metrics(run)) == 2 and (run / "summary.json").is_file()
        # epoch lines and the summary come from rank 0 only
        assert res.stdout.count("epoch 0/1 ") == 1 and res.stdout.count("test accuracy") == 1
    assert not bad, f"{len(bad)}/{repeats} runs failed:\n" + "\n".join(bad)


def test_nproc_runs_exit_cleanly(tmp_path):
    _repeated_runs(tmp_path, 3)


@pytest.mark.slow
def test_nproc_runs_exit_cleanly_20_times(tmp_path):
    _repeated_runs(tmp_path, 20)


def _torchrun_faulty(tmp_path: Path, mode: str, *extra: str) -> tuple[subprocess.Popen, float]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    cmd += ["--nproc-per-node", str(WORLD), __file__, "train", *LAUNCH_ARGS, *extra]
    cmd += ["train.device=cpu", f"train.out_dir={tmp_path}", "train.run_name=f", "train.epochs=3"]
    env = _launch_env(ABSA_TEST_FAIL_RANK="1", ABSA_TEST_FAIL_MODE=mode, ABSA_TEST_FAIL_STEP="30")
    t0 = time.monotonic()
    try:
        res = subprocess.run(
            cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"a job with a failing rank ({mode}) still ran after 180 s")
    return res, time.monotonic() - t0


def test_failing_rank_ends_torchrun_job_with_its_error(tmp_path):
    res, seconds = _torchrun_faulty(tmp_path, "raise")
    assert res.returncode != 0
    assert "RuntimeError: injected failure on rank 1" in res.stderr
    assert "rank 1 failed" in res.stderr and "terminate called" not in res.stderr
    assert seconds < 60
    # the failure came in epoch 1 (step 30 of 22 per epoch): epoch 0's checkpoint is kept
    assert ckpt_io.load(tmp_path / "f")["epoch"] == 1


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["kill", "hang"])
def test_killed_or_hanging_rank_ends_torchrun_job(tmp_path, mode):
    # kill: rank 1 dies by SIGKILL; hang: rank 1 sleeps and rank 0 hits the 10 s timeout
    res, seconds = _torchrun_faulty(tmp_path, mode, "distributed.timeout_s=10")
    assert res.returncode != 0
    assert "SIGKILL" in res.stderr if mode == "kill" else "Timed out" in res.stderr
    assert seconds < 90


def _processes_mentioning(text: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and text.encode() in (proc / "cmdline").read_bytes():
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_stops_all_ranks_and_keeps_the_checkpoint(tmp_path, sig):
    """Ctrl-C (SIGINT) or SIGTERM to the launcher: every rank stops, the checkpoint stays and
    the resume command is printed once (rank 0)."""
    run = tmp_path / "ctrlc"
    cmd = [sys.executable, "-m", "absa", "train", "--nproc", str(WORLD), *LAUNCH_ARGS]
    cmd += [
        "train.device=cpu",
        f"train.out_dir={tmp_path}",
        "train.run_name=ctrlc",
        "train.epochs=1000",
    ]
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, env=_launch_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 120
        while not (run / "last.pt").is_file() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
        proc.send_signal(sig)  # SIGINT: what Ctrl-C in a terminal sends to torchrun
        t0 = time.monotonic()
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    err = err.decode()
    assert proc.returncode == 128 + sig, err[-2000:]
    assert time.monotonic() - t0 < 30
    how = " by SIGTERM" if sig == signal.SIGTERM else ""
    line = f"interrupted{how}; the last completed epoch's checkpoint is kept: absa train --resume"
    assert err.count("interrupted") == 1 and err.count(f"{line} {run} continues") == 1, err
    assert "terminate called" not in err and "Traceback" not in err
    assert ckpt_io.load(run)["epoch"] >= 1
    assert not _processes_mentioning(f"train.out_dir={tmp_path}")  # no worker left behind


def _srun_like(tmp_path: Path, name: str, script: list[str], **extra: str) -> list:
    """Two plain processes with the variables `srun --ntasks 2` sets (no torchrun)."""
    port = str(_free_port())
    procs = []
    for rank in range(WORLD):
        env = _launch_env(
            SLURM_PROCID=str(rank),
            SLURM_LOCALID=str(rank),
            SLURM_NTASKS=str(WORLD),
            SLURM_STEP_NUM_TASKS=str(WORLD),
            SLURM_STEP_NODELIST="localhost",
            SLURM_JOB_ID="4242",
            MASTER_PORT=port,
            **extra,
        )
        cmd = [sys.executable, *script, "train", *LAUNCH_ARGS]
        cmd += ["train.device=cpu", f"train.out_dir={tmp_path}", f"train.run_name={name}"]
        procs.append(
            subprocess.Popen(
                cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )
        )
    outs = []
    for p in procs:
        try:
            out, err = p.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail("srun-like job hung")
        outs.append((p.returncode, out.decode(), err.decode()))
    return outs


def test_srun_variables_launch(tmp_path, session):
    outs = _srun_like(tmp_path, "ok", ["-m", "absa"])
    assert [rc for rc, _, _ in outs] == [0, 0], outs[0][2][-2000:] + outs[1][2][-2000:]
    assert not any("terminate called" in err for _, _, err in outs)
    assert json.loads((tmp_path / "ok" / "env.json").read_text())["world_size"] == WORLD
    _assert_close_state(
        ckpt_io.load(tmp_path / "ok")["model"], ckpt_io.load(session.out / "1rank" / "bl")["model"]
    )


def test_srun_variables_failing_rank(tmp_path):
    t0 = time.monotonic()
    outs = _srun_like(tmp_path, "bad", [__file__], ABSA_TEST_FAIL_RANK="1", ABSA_TEST_FAIL_STEP="5")
    assert all(rc != 0 for rc, _, _ in outs) and time.monotonic() - t0 < 60
    assert "RuntimeError: injected failure on rank 1" in outs[1][2]
    assert "rank 0 failed" in outs[0][2]  # its peer vanished: gloo reports it at once


# --- script mode: absa with a fault on one rank -------------------------------------------


def _inject_fault() -> None:
    fail_rank = os.environ.get("ABSA_TEST_FAIL_RANK")
    rank = D.process_env()[0]
    if fail_rank is None or rank != int(fail_rank):
        return
    mode = os.environ.get("ABSA_TEST_FAIL_MODE", "raise")
    at = int(os.environ.get("ABSA_TEST_FAIL_STEP", "5"))
    real = E.accumulate_gradients
    calls = [0]

    def faulty(*args, **kwargs):
        calls[0] += 1
        if calls[0] == at:
            if mode == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            if mode == "hang":
                time.sleep(3600)
            raise RuntimeError(f"injected failure on rank {rank}")
        return real(*args, **kwargs)

    E.accumulate_gradients = faulty


if __name__ == "__main__":
    _inject_fault()
    from absa.cli import main

    sys.argv = ["absa", *sys.argv[1:]]
    main()
