"""A run's `run.log` in its grid folder: one header per attempt (time, host, threads, GPU), the traceback of
a failure and a last line when it finishes; and the folder's lock while the run trains. Both executors of
`mbkit.experiments.run_grid` write it."""

from __future__ import annotations

import contextlib
import os
import platform
import socket
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import torch

LOG = "run.log"


def _header(folder: Path, attempt_note: str) -> str:
    gpu = os.environ.get("CUDA_VISIBLE_DEVICES")
    return (f"== {datetime.now(timezone.utc).isoformat(timespec='seconds')} {attempt_note} on "
            f"{socket.gethostname()} (pid {os.getpid()}, {platform.machine()}, torch threads "
            f"{torch.get_num_threads()}{f', CUDA_VISIBLE_DEVICES={gpu}' if gpu else ''}) in {folder}")


@contextlib.contextmanager
def _exclusive(folder: Path, log: Any) -> Iterator[None]:
    """Hold the run's lock file while it trains: a worker of a killed driver that is still finishing this
    run (Ray needs seconds to notice) makes a re-submitted grid's task wait instead of writing beside it.
    The lock dies with its process. Without fcntl (Windows) runs are not locked."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(folder / ".lock", "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"== waiting: another process holds {folder / '.lock'} (this run is being trained there)", file=log)
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield


@contextlib.contextmanager
def run_log(folder: Path, capture: bool) -> Iterator[None]:
    """Append one attempt of a run to its `run.log`: a header (time, host, threads), the traceback if it
    fails and a last line if it finishes; `capture` also sends the run's stdout and stderr there (Ray)."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / LOG, "a", buffering=1) as log, _exclusive(folder, log):
        print(_header(folder, "resumed from last.pt" if (folder / "last.pt").is_file() else "started"), file=log)
        with contextlib.ExitStack() as stack:
            if capture:
                stack.enter_context(contextlib.redirect_stdout(log))
                stack.enter_context(contextlib.redirect_stderr(log))
            try:
                yield
            except BaseException:
                traceback.print_exc(file=log)
                raise


def finished_line(summary: dict[str, Any]) -> str:
    return f"== finished: best epoch {summary['best_epoch']}, test ndcg@10 {summary['test']['ndcg@10']:.6f}"
