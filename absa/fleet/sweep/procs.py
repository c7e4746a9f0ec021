"""Processes the sweep starts: stopping them, and tying them to the sweep's own life."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any


def ignore_usr2() -> None:
    """preexec_fn: the child ignores SIGUSR2 (inherited through exec), leaving it to submitit."""
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)


def _exited(pid: int) -> bool:
    """Whether ``pid`` has ended (gone, or a zombie not yet reaped), without reaping it."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True
    except (OSError, IndexError):  # no /proc: ask the kernel whether the pid exists
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False


def terminate(proc: subprocess.Popen[bytes] | None, grace_s: float = 10.0) -> None:
    """SIGTERM (then SIGKILL) our child and wait until it has ended, without reaping it:
    safe inside a signal handler that interrupted ``proc.wait()``."""
    if proc is None or proc.returncode is not None:
        return
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        try:
            os.kill(proc.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if _exited(proc.pid):
                return
            time.sleep(0.05)


def stop(proc: subprocess.Popen[bytes] | None, group: bool = False, grace_s: float = 10.0) -> None:
    """Terminate (then kill) a process we started, or its whole session when ``group``."""
    if proc is None or proc.poll() is not None:
        return

    def send(sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if group:
                os.killpg(proc.pid, sig)
            else:
                proc.send_signal(sig)

    send(signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        send(signal.SIGKILL)
        proc.wait()


@contextlib.contextmanager
def terminate_as_interrupt() -> Any:
    """SIGTERM raises KeyboardInterrupt while points run, so their processes are stopped."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    try:
        old = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def die_with_parent(parent: int) -> Callable[[], None] | None:
    """A preexec_fn making the child get SIGTERM when the sweep dies, even by kill -9
    (Linux PR_SET_PDEATHSIG; torchrun passes SIGTERM on to its workers). Elsewhere None:
    the run lock still keeps a rerun from starting a second process on a live point."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None

    def arm() -> None:
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the sweep died before prctl took effect
            os._exit(1)

    return arm
