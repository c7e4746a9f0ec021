"""The run folder's promises: one writer, metrics never ahead of (or duplicated past) the
checkpoint, finished runs never overwritten, the start history kept, stale temps removed."""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from absa.engine import loop as T
from absa.run import checkpoint as ckpt_io
from absa.run import folder as R
from absa.run.folder import read_metrics

BUILTIN = str(Path(__file__).parent / "data" / "run.yaml")  # no keys: the built-in defaults


def _epochs(run_dir):
    return [r["epoch"] for r in read_metrics(run_dir)]


def _weights(run_dir):
    return ckpt_io.load(run_dir / "last.pt")["model"]


def _same(a, b):
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_killed_before_first_checkpoint_resumes_from_scratch(tiny_cfg, tmp_path):
    """Kill after epoch 0's metrics line but before any last.pt: --resume and a fresh start
    both begin at epoch 0 and end with one line per epoch (not [0, 0, 1])."""
    cfg = tiny_cfg()
    ref = T.run(tiny_cfg("train.run_name=ref"), run_dir=tmp_path / "ref")
    for resume in (True, False):
        d = tmp_path / f"killed-{resume}"
        d.mkdir()
        line = json.dumps({"epoch": 0, "batch_size": 64, "lr": 0.05, "adv_fraction": 0.0})
        (d / "metrics.jsonl").write_text(line + "\n")
        (d / "config.yaml").write_text("leftover\n")
        T.run(cfg, run_dir=d, resume=resume)
        assert _epochs(d) == [0, 1]
        _same(_weights(d), _weights(tmp_path / "ref"))
    assert ref.epochs == 2


def test_kill_between_checkpoint_and_metrics_line_is_restored(tiny_cfg, tmp_path):
    """The checkpoint is written first; a start puts back the line a kill prevented."""
    d = tmp_path / "run"
    T.run(tiny_cfg(), run_dir=d)
    full = read_metrics(d)
    lines = (d / "metrics.jsonl").read_text().splitlines()
    (d / "metrics.jsonl").write_text(lines[0] + "\n")  # epoch 1's line never written
    (d / "summary.json").unlink()
    T.run(tiny_cfg("train.epochs=3"), run_dir=d, resume=True)
    got = read_metrics(d)
    assert [r["epoch"] for r in got] == [0, 1, 2]
    assert got[1]["test_acc"] == full[1]["test_acc"] and got[1]["updates"] == full[1]["updates"]


def test_resume_drops_lines_past_the_checkpoint_and_duplicates(tiny_cfg, tmp_path):
    d = tmp_path / "run"
    T.run(tiny_cfg(), run_dir=d)
    lines = (d / "metrics.jsonl").read_text().splitlines()
    ghost = json.dumps({**json.loads(lines[1]), "epoch": 2})
    (d / "metrics.jsonl").write_text("\n".join([lines[0], lines[0], lines[1], ghost]) + "\n")
    T.run(tiny_cfg(), run_dir=d, resume=True)
    assert _epochs(d) == [0, 1]


def test_finished_run_without_last_pt_is_never_overwritten(tiny_cfg, tmp_path):
    cfg = tiny_cfg()
    d = T.prepare_run_dir(cfg, "x", None)
    T.run(cfg, run_dir=d)
    (d / "last.pt").unlink()
    before = (d / "metrics.jsonl").read_text()
    with pytest.raises(R.RunFolderError, match="finished run"):
        T.prepare_run_dir(cfg, "x", None)
    with pytest.raises(R.RunFolderError, match="last.pt was deleted"):
        T.prepare_run_dir(cfg, "x", d)
    assert (d / "metrics.jsonl").read_text() == before


def test_a_locked_folder_is_refused_naming_the_pid(tiny_cfg, tmp_path):
    cfg = tiny_cfg()
    d = tmp_path / "runs" / "t"
    with R.RunLock(d):
        assert R.holder(d) == os.getpid()
        with pytest.raises(R.RunFolderError, match=f"in use by pid {os.getpid()}"):
            T.prepare_run_dir(cfg, "x", None)
        with pytest.raises(R.RunFolderError, match=f"in use by pid {os.getpid()}"):
            T.run(cfg, run_dir=d)
    assert R.holder(d) is None
    assert not (d / "metrics.jsonl").exists()


def test_lock_dies_with_its_process(tmp_path):
    """A kill -9 never leaves a stale lock: the kernel drops a flock with its process."""
    d = tmp_path / "run"
    code = f"from absa.run.folder import RunLock; RunLock({str(d)!r}).acquire(); print('ok', flush=True); import time; time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ok"
        assert R.holder(d) == proc.pid
    finally:
        proc.kill()
        proc.wait()
    assert R.holder(d) is None
    R.RunLock(d).acquire().release()


def test_two_concurrent_trainings_one_is_refused(tmp_path):
    """Two `absa train` processes on one run name: the second gets one line naming the first's
    pid and writes nothing; the first's metrics stay one line per epoch."""
    args = [
        sys.executable, "-m", "absa", "train", "-c", BUILTIN, "data.name=digits", "model.name=mlp",
        "model.width=8", "train.epochs=10000", "batch.size=64", "train.device=cpu", f"train.out_dir={tmp_path}",
        "train.run_name=same", "train.threads=1",
    ]  # fmt: skip
    first = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while R.holder(tmp_path / "same") is None:
            assert first.poll() is None and time.monotonic() < deadline, first.stderr.read()
            time.sleep(0.05)
        second = subprocess.run(args, capture_output=True, text=True)
        assert first.poll() is None  # still training: the refusal was the lock's
    finally:
        first.kill()
        first.wait()
    assert second.returncode == 2
    msg = [ln for ln in second.stderr.splitlines() if ln.strip()]
    assert len(msg) == 1 and f"in use by pid {first.pid}" in msg[0], second.stderr
    epochs = _epochs(tmp_path / "same")
    assert epochs == list(range(len(epochs)))


def test_env_history_keeps_every_start(tiny_cfg, tmp_path):
    d = tmp_path / "run"
    T.run(tiny_cfg(), run_dir=d)
    first = json.loads((d / "env.json").read_text())
    T.run(tiny_cfg("train.epochs=3"), run_dir=d, resume=True)
    env = json.loads((d / "env.json").read_text())
    assert env["started"] == first["started"] and env["argv"] == first["argv"]
    assert len(env["starts"]) == 2 and env["starts"][0]["started"] == first["started"]


def test_resume_cannot_shrink_a_run(tiny_cfg, tmp_path):
    from absa.run.config import ConfigError

    d = tmp_path / "run"
    T.run(tiny_cfg("train.epochs=3"), run_dir=d)
    before = (d / "config.yaml").read_text()
    with pytest.raises(ConfigError, match="train.epochs=2 is fewer than the 3 epochs"):
        T.run(tiny_cfg("train.epochs=2"), run_dir=d, resume=True)
    assert (d / "config.yaml").read_text() == before


def test_stale_temp_files_are_removed_on_start(tiny_cfg, tmp_path):
    d = tmp_path / "run"
    T.run(tiny_cfg(), run_dir=d)
    (d / ".last.pt.abc123_x.tmp").write_bytes(b"torn")
    (d / ".metrics.jsonl.q1w2e3.tmp").write_text("torn")
    (d / "notes.tmp").write_text("a user's file")  # not one of ours: kept
    T.run(tiny_cfg("train.epochs=3"), run_dir=d, resume=True)
    assert sorted(p.name for p in d.glob("*.tmp")) == ["notes.tmp"]
    assert not list(d.glob(".*.tmp"))


@pytest.mark.parametrize(
    "name", ["/", "../../x", "/tmp/abs", "a/b", ".", "..", "-x", "a" * 129, "sp ace"]
)
def test_run_name_cannot_leave_the_output_folder(name, tmp_path):
    from absa.run.config import ConfigError, load

    with pytest.raises(ConfigError, match="train.run_name: must be one folder name") as e:
        load(
            None,
            [f"train.run_name={json.dumps(name)}", "train.device=cpu", f"train.out_dir={tmp_path}"],
        )
    assert "\n" not in str(e.value)


def test_run_name_escape_writes_nothing_from_the_cli(tmp_path):
    before = set(os.listdir("/"))
    cmd = [sys.executable, "-m", "absa", "train", "-c", BUILTIN, "train.run_name=/"]
    out = subprocess.run(
        [*cmd, "train.device=cpu", f"train.out_dir={tmp_path}"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2 and "train.run_name" in out.stderr and "Traceback" not in out.stderr
    assert set(os.listdir("/")) == before and not any(tmp_path.iterdir())


def test_default_run_name_is_safe_for_any_config_stem(tiny_cfg):
    assert T.default_run_name(tiny_cfg(), "my config (v2)") == "my_config_v2-bl-b64-s0"
    assert T.default_run_name(tiny_cfg(), "../..") == "run-bl-b64-s0"


def test_planted_symlinks_are_not_followed(tmp_path):
    """run.lock or metrics.jsonl planted as a symlink to another file: the lock refuses it
    and the metrics append fails, leaving the target untouched."""
    from absa.run import folder as rundir
    from absa.run.folder import METRICS, RunLog

    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    run = tmp_path / "run"
    run.mkdir()
    (run / rundir.LOCK).symlink_to(victim)
    with pytest.raises(rundir.RunFolderError, match="symlink"):
        rundir.RunLock(run).acquire()
    (run / METRICS).symlink_to(victim)
    with pytest.raises(OSError):
        RunLog(run, enabled=True).append_metrics({"epoch": 0})
    assert victim.read_text() == "precious\n"


def test_real_kill_9_mid_run_then_resume_is_exact(tmp_path):
    """`absa train` killed by SIGKILL three times at arbitrary points (mid-epoch, mid-write)
    and resumed each time ends with the weights of an uninterrupted run and one metrics line
    per epoch."""
    common = [
        sys.executable, "-m", "absa", "train", "-c", BUILTIN, "data.name=digits", "model.name=mlp",
        "model.width=8", "batch.size=16", "train.epochs=8", "train.threads=1",
        "optim.decay_epochs=[6]", "train.device=cpu", f"train.out_dir={tmp_path}",
    ]  # fmt: skip
    ref = subprocess.run([*common, "train.run_name=ref"], capture_output=True, text=True)
    assert ref.returncode == 0, ref.stderr
    run = tmp_path / "killed"
    for kill_after, delay in ((1, 0.13), (3, 0.05), (5, 0.21)):
        args = [*common, "train.run_name=killed"]
        if (run / "last.pt").exists():
            args = [sys.executable, "-m", "absa", "train", "--resume", str(run)]
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        while len(_epochs(run)) < kill_after and proc.poll() is None:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        time.sleep(delay)
        assert proc.poll() is None, "the run ended before the kill: make it longer"
        proc.kill()  # SIGKILL
        proc.wait()
    res = subprocess.run(
        [sys.executable, "-m", "absa", "train", "--resume", str(run)],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr
    assert _epochs(run) == list(range(8))
    a = torch.load(run / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "ref" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in b)


def test_sigterm_stops_like_ctrl_c_and_the_run_resumes(tmp_path):
    """SIGTERM (Slurm, Kubernetes) after the first checkpoint: one line with the resume
    command, the process ends by SIGTERM (exit 143 in a shell), last.pt is kept, and
    `--resume` completes the run with each epoch once."""
    import signal

    run = tmp_path / "t"
    args = [
        sys.executable, "-m", "absa", "train", "-c", BUILTIN, "data.name=digits", "model.name=mlp",
        "model.width=8", "batch.size=256", "train.epochs=300", "train.threads=1",
        f"train.out_dir={tmp_path}", "train.run_name=t",
    ]  # fmt: skip
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (run / "last.pt").is_file() and proc.poll() is None:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert proc.poll() is None, "the run ended before SIGTERM: make it longer"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGTERM, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines[-1] == (
        "interrupted by SIGTERM; the last completed epoch's checkpoint is kept: "
        f"absa train --resume {run} continues"
    ), err
    assert "Traceback" not in err
    done = ckpt_io.load(run / "last.pt")["epoch"]
    assert 1 <= done < 300  # metrics may lack the last line: resume puts it back
    assert _epochs(run) in (list(range(done)), list(range(done - 1)))
    res = subprocess.run(
        [sys.executable, "-m", "absa", "train", "--resume", str(run)],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr
    assert f"resumed {run} at epoch {done}" in res.stdout + res.stderr
    assert _epochs(run) == list(range(300))


def _metrics_file(run, *lines):
    run.mkdir(exist_ok=True)
    (run / R.METRICS).write_text("".join(line + "\n" for line in lines))


def test_read_metrics_lenient_and_strict(tmp_path):
    """Both modes skip a torn (non-JSON) line; lenient drops what is not a JSON object, strict
    refuses it, and a numeric field that is not a number, with the file and line named."""
    assert read_metrics(tmp_path / "none") == read_metrics(tmp_path / "none", strict=True) == []
    run = tmp_path / "run"
    _metrics_file(run, '{"epoch": 0, "lr": null}', '{"epoch": 1, "lr": 0.1}', '{"epoch": 2, "l')
    want = [{"epoch": 0, "lr": None}, {"epoch": 1, "lr": 0.1}]
    assert read_metrics(run) == read_metrics(run, strict=True) == want
    path = run / R.METRICS
    for line, why in [
        ("[1,2]", "line 2 is not a JSON object (got array)"),
        ("5", "line 2 is not a JSON object (got number)"),
        ("null", "line 2 is not a JSON object (got null)"),
        ('{"epoch": "x"}', "line 2: 'epoch' is not a number (got string)"),
        ('{"test_acc": true}', "line 2: 'test_acc' is not a number (got boolean)"),
        ('{"seconds": {"a": 1}}', "line 2: 'seconds' is not a number (got dict)"),
    ]:
        _metrics_file(run, '{"epoch": 0}', line)
        lenient = [{"epoch": 0}] if line[0] != "{" else [{"epoch": 0}, json.loads(line)]
        assert read_metrics(run) == lenient
        with pytest.raises(R.MetricsError) as err:
            read_metrics(run, strict=True)
        assert str(err.value) == f"{path}: {why}" and isinstance(err.value, ValueError)
    _metrics_file(run, '{"epoch": 0, "note": "x", "growth": {"epoch": "any"}}')
    assert read_metrics(run, strict=True) == [{"epoch": 0, "note": "x", "growth": {"epoch": "any"}}]


def test_point_status_and_failure(tmp_path):
    """The sweep's view of a run folder: pending, partial, failed, running, done."""
    d = tmp_path / "p"
    assert R.point_status(d) == "pending" and R.failure(d) is None
    d.mkdir()
    (d / R.LAST).write_bytes(b"")
    assert R.point_status(d) == "partial" == R.state(d)
    (d / R.MARKER).write_text(json.dumps({"error": "error: boom"}))
    assert R.point_status(d) == "failed" and R.failure(d) == "error: boom"
    with R.RunLock(d):
        assert R.point_status(d) == "running"
    (d / R.SUMMARY).write_text("{}")
    assert R.point_status(d) == "done" == {"finished": "done"}[R.state(d)]
    (d / R.MARKER).write_text("{")
    assert R.failure(d) is None


def test_old_flat_names_are_the_run_folder_module():
    import absa.rundir
    import absa.runlog

    assert absa.rundir is absa.runlog is R


def test_read_metrics_strict_names_a_file_it_cannot_read(tmp_path, monkeypatch):
    run = tmp_path / "run"
    _metrics_file(run, '{"epoch": 0}')

    def denied(self, *a, **kw):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_text", denied)
    with pytest.raises(PermissionError):
        read_metrics(run)
    with pytest.raises(
        R.MetricsError, match=f"^{re.escape(str(run / R.METRICS))}: cannot read: Permission denied$"
    ):
        read_metrics(run, strict=True)
