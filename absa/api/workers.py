"""Several local training processes: the torchrun launch of ``absa train --nproc N`` and the
end of a worker process.

Imports no torch at module level: ``end_if_worker`` runs at the end of every ``absa``
command (``absa --help`` included), and torch's launcher is imported by ``launch`` only.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Sequence


class LaunchFailed(Exception):
    """The workers of ``launch`` failed (exit status ``code`` 1; ``summary``: torchrun's
    summary of the failures) or were stopped by a signal (``code`` 128 + the signal)."""

    def __init__(self, code: int, summary: str | None = None) -> None:
        super().__init__(summary or f"workers stopped (exit status {code})")
        self.code = code
        self.summary = summary


def launch(nproc: int, args: Sequence[str]) -> None:
    """Run ``python -m absa <args>`` in ``nproc`` local processes (torchrun --standalone)
    and wait for them; raises ``LaunchFailed``."""
    from torch.distributed.elastic.multiprocessing import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun_main

    try:
        torchrun_main(["--standalone", f"--nproc-per-node={nproc}", "-m", "absa", *args])
    except ChildFailedError as err:  # the workers printed their errors; add the summary
        raise LaunchFailed(1, err.format_msg()) from None
    except SignalException as err:  # Ctrl-C: torchrun passed the signal to the workers
        raise LaunchFailed(128 + int(err.sigval)) from None


def end_if_worker(err: BaseException) -> None:
    """In a process that joined a process group (its group already torn down): end it now
    with ``err``'s exit status, skipping the interpreter's shutdown, where gloo's threads
    can abort a finished process. Elsewhere: return (the caller re-raises)."""
    dist_mod = sys.modules.get("absa.distributed")  # not imported: it would load torch
    if dist_mod is None or not dist_mod.joined():
        return
    if isinstance(err, SystemExit):
        code = err.code if isinstance(err.code, int) else (0 if err.code is None else 1)
        if isinstance(err.code, str):
            print(err.code, file=sys.stderr)
    else:
        from torch.distributed.elastic.multiprocessing.errors import ErrorHandler

        rank = dist_mod.process_env()[0]
        print(f"rank {rank} failed:", file=sys.stderr)
        traceback.print_exc()
        ErrorHandler().record_exception(err)  # torchrun's failure summary shows it
        code = 1
    dist_mod.exit_process(code)
