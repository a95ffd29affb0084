"""A run's folder: who may write into it, and what happens to a run that is replaced.

- `lock_run_dir` holds the folder's lock for the whole run (fcntl, so it dies with its process): a second
  run on the same folder fails at once, naming the process that holds it (or, in a grid, waits for it).
- `claim_run_dir` is the rule for a folder that already holds a run: refused unless the run resumes from it
  or `overwrite=True`, which sets the old run aside instead of deleting it; `Replaced.done()` deletes it
  once the new run's first checkpoint exists, `Replaced.undo()` puts it back if the new run never got there.
- `probe_run_dir` creates the folder and writes into it, so that an unwritable folder is found before any
  data is read.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

RUN_FILES: tuple[str, ...] = ("last.pt", "nonfinite.pt", "metrics.json", "history.csv", "diagnostics.csv")
LOCK = ".lock"
ASIDE = ".replaced"  # the old run of an --overwrite, until the new run's first checkpoint exists

_held: dict[str, int] = {}  # folders whose lock this process holds, with the depth of re-entry


class RunDirError(ValueError):
    """An output folder is not usable for a run (a file, another run's folder, a folder in use)."""


def holds_run(folder: Path) -> list[str]:
    return [f for f in RUN_FILES if (folder / f).exists()]


def _holder(lock: Path) -> str:
    text = lock.read_text().strip() if lock.is_file() else ""
    pid, _, rest = text.partition(" ")
    host, _, since = rest.partition(" ")
    return f"process {pid} on {host}, since {since}" if pid.isdigit() else "another process"


@contextlib.contextmanager
def lock_run_dir(folder: str | Path, *, wait: bool = False, flag: str = "checkpoint_dir",
                 on_wait: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold `folder`'s lock while the body runs (re-entrant within a process). A lock that another process
    holds raises `RunDirError` naming it, or with `wait=True` is waited for (after `on_wait(message)`).
    Without fcntl (Windows) runs are not locked."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    key = str(folder.resolve())
    if key in _held:
        _held[key] += 1
        try:
            yield
        finally:
            _held[key] -= 1
        return
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(folder / LOCK, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            message = f"{flag} {folder} is in use by another run ({_holder(folder / LOCK)})"
            if not wait:
                raise RunDirError(f"{message}; wait for it to finish, or pick another folder") from None
            if on_wait is not None:
                on_wait(f"waiting: {message}")
            fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        f.truncate()
        now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        f.write(f"{os.getpid()} {socket.gethostname()} {now}\n")
        f.flush()
        _held[key] = 1
        try:
            yield
        finally:
            del _held[key]


def probe_run_dir(folder: str | Path, flag: str = "checkpoint_dir") -> Path:
    """Create `folder` and write a file into it: an unusable folder fails here, before the data are read."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise RunDirError(f"{flag} {folder} is a file, not a folder; name a folder (it is created if missing)")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".probe"
        probe.write_bytes(b"mbkit")
        probe.unlink()
    except OSError as e:
        raise RunDirError(f"{flag} {folder} cannot be written ({e.strerror or e}); pick a folder you can write to"
                          ) from None
    return folder


@dataclass
class Replaced:
    """An old run set aside by `claim_run_dir(overwrite=True)`."""

    folder: Path  # the run folder
    aside: Path   # where the old run's files wait

    def done(self) -> None:
        """The new run has its first checkpoint: the old run goes."""
        shutil.rmtree(self.aside, ignore_errors=True)

    def undo(self) -> None:
        """The new run failed before its first checkpoint: the old run comes back (the new one's files go)."""
        if not self.aside.is_dir():
            return
        for name in holds_run(self.folder):
            p = self.folder / name
            shutil.rmtree(p) if p.is_dir() else p.unlink()
        for p in self.aside.iterdir():
            p.replace(self.folder / p.name)
        self.aside.rmdir()


def claim_run_dir(out: str | Path, *, resume: str | Path | None = None, overwrite: bool = False,
                  clear: bool = True, flag: str = "checkpoint_dir") -> Replaced | None:
    """Check an output folder before a run writes into it; with `overwrite` (and `clear`) set the old run aside.

    A folder that holds another run's files is refused unless `resume` lies in it or `overwrite=True`. The old
    run is moved into `out/.replaced/` and returned as `Replaced`, whose `done()` deletes it once the new run's
    first checkpoint exists and whose `undo()` restores it if the new run fails before that; so a failed
    overwrite loses nothing, and an interrupted one never leaves the old record beside the new checkpoint.
    `clear=False` checks only (e.g. before the data are read).
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise RunDirError(f"{flag} {out} is a file, not a folder; name a folder (it is created if missing)")
    if (out / ASIDE).is_dir() and clear:  # a replacement that a killed process left half-done
        left = Replaced(out, out / ASIDE)
        if (out / "last.pt").exists():
            left.done()
        else:
            left.undo()
    found = holds_run(out) if out.is_dir() else []
    if not found:
        return None
    if resume is not None and Path(resume).resolve().parent == out.resolve():
        return None
    if not overwrite:
        what = "--overwrite" if flag == "--out" else "overwrite=True"
        raise RunDirError(f"{flag} {out} already holds a run ({', '.join(found)}); resume it (its last.pt), "
                          f"pick another folder, or pass {what} to replace it")
    if not clear:
        return None
    aside = out / ASIDE
    aside.mkdir()
    for name in found:
        (out / name).replace(aside / name)
    return Replaced(out, aside)
