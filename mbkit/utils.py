"""Small shared helpers: device choice, seeding, atomic writes and progress bars."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Return CUDA when `device="auto"` and a GPU is visible, else CPU; pass anything else through."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} was requested but no CUDA GPU is visible; use device='auto' or 'cpu'")
    return dev


def seed_everything(seed: int) -> None:
    """Seed Python's `random`, NumPy and torch (all devices) in one place."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@contextlib.contextmanager
def cpu_threads(n: int) -> Iterator[None]:
    """Run the block with `n` intra-op CPU threads (`torch.set_num_threads`), then restore the count; 0 leaves
    torch's setting as it is. Ops as small as this model's gain nothing from a second thread, and on a busy
    machine every thread waits at each op for a core another process holds."""
    before = torch.get_num_threads()
    if n and n != before:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def make_generator(seed: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A seeded `torch.Generator` living on `device` (CUDA sampling needs a CUDA generator)."""
    g = torch.Generator(device=resolve_device(device))
    g.manual_seed(seed)
    return g


def atomic_write(path: str | os.PathLike, content: str | bytes | Callable[[Path], Any]) -> Path:
    """Write `content` (text, bytes, or a function that writes the file it is given) to `path` atomically.

    Everything goes to a temporary file in the same folder, which then replaces `path` in one rename: an
    interrupted write leaves the previous file or the new one, never a truncated one.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            tmp.write_text(content)
        elif isinstance(content, bytes):
            tmp.write_bytes(content)
        else:
            content(tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:  # torch.save reports a full disk as a RuntimeError of its own
        tmp.unlink(missing_ok=True)
        reason = e.strerror if isinstance(e, OSError) and e.strerror else (str(e).splitlines() or [type(e).__name__])[0]
        raise OSError(getattr(e, "errno", None) or 0, f"could not be written ({reason}); check the free space and "
                      "the permissions there", str(path)) from None
    return path


# Progress bars go to stderr or to a notebook widget, never to stdout (whose text nbval compares).
# True or "auto": tqdm.auto (a widget bar in JupyterLab when ipywidgets is installed, else a text bar);
# "text": always a plain text bar on stderr (papermill, logs); False: none.
PROGRESS_CHOICES = (True, False, "auto", "text")


def check_progress(progress: Any) -> None:
    if not any(progress is c or (isinstance(c, str) and progress == c) for c in PROGRESS_CHOICES):
        raise ValueError(f"progress={progress!r}; use True or 'auto' (widget in JupyterLab, text elsewhere), "
                         "'text' (text bar on stderr) or False")


def progress_bar(progress: bool | str, **kwargs: Any) -> Any:
    """A tqdm bar for `progress` (see `PROGRESS_CHOICES`), or None when it is off."""
    check_progress(progress)
    if progress is False:
        return None
    if progress == "text":
        from tqdm.std import tqdm
        return tqdm(file=sys.stderr, **kwargs)
    from tqdm.auto import tqdm
    return tqdm(**kwargs)


def setting(default: Any = dataclasses.MISSING, help: str = "", *, factory: Callable[[], Any] | None = None,
            **cli: Any) -> Any:
    """A configuration field with its help text: the one definition that the command line's flags are
    generated from (`mbkit.cli`). `cli` may give `choices`, `flag` (the flag's name) and `parse` (str -> value)."""
    metadata = {"help": help, **cli}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)
