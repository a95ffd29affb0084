"""One run of a grid in its own folder: its name, its record (reused when the code, settings and data are
the same), its `run.log` (one header per attempt: time, host, threads, GPU; the traceback of a failure; a
last line when it finishes) and the folder's lock while it trains (`mbkit.rundir.lock_run_dir`). Both executors of
`mbkit.study.grid.run_grid` train a run through `train_one`."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import platform
import re
import socket
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import torch

from mbkit.checkpoint import CheckpointError, config_differences, fingerprint_differences
from mbkit.data.split import TaskData
from mbkit.provenance import code_version, read_json
from mbkit.rundir import RunDirError, lock_run_dir
from mbkit.study.methods import Method
from mbkit.train import TrainConfig, fit

LOG = "run.log"


def _header(folder: Path, attempt_note: str) -> str:
    gpu = os.environ.get("CUDA_VISIBLE_DEVICES")
    return (f"== {datetime.now(timezone.utc).isoformat(timespec='seconds')} {attempt_note} on "
            f"{socket.gethostname()} (pid {os.getpid()}, {platform.machine()}, torch threads "
            f"{torch.get_num_threads()}{f', CUDA_VISIBLE_DEVICES={gpu}' if gpu else ''}) in {folder}")


@contextlib.contextmanager
def run_log(folder: Path, capture: bool) -> Iterator[None]:
    """Append one attempt of a run to its `run.log`: a header (time, host, threads), the traceback if it
    fails and a last line if it finishes; `capture` also sends the run's stdout and stderr there (Ray)."""
    folder.mkdir(parents=True, exist_ok=True)
    # a worker of a killed driver that is still finishing this run (Ray needs seconds to notice) holds the
    # folder's lock: this attempt waits for it instead of writing beside it
    with open(folder / LOG, "a", buffering=1) as log, \
            lock_run_dir(folder, wait=True, flag="grid run", on_wait=lambda m: print(f"== {m}", file=log)):
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


def run_name(method: Method, seed: int) -> str:
    """The folder name of one run of a grid: balancer, sorted keyword arguments and seed, file-system safe.

    `run_name(Method("MB", "metabalance", {"relax_factor": 0.7}), 2) == "metabalance_relax_factor=0.7_seed2"`.
    """
    parts = [method.balancer, *(f"{k}={v}" for k, v in sorted(method.kwargs.items())), f"seed{int(seed)}"]
    name = re.sub(r"[^A-Za-z0-9_.=+-]+", "-", "_".join(parts))
    if len(name) > 120:
        name = f"{name[:100]}-{hashlib.sha1(name.encode()).hexdigest()[:12]}"
    return name


# Settings that do not change a finished run's metrics: a record that differs only in these is reused.
DISPLAY_ONLY = frozenset({"progress", "device", "eval_batch_users", "nan_check_every", "threads"})


def finished_record(folder: Path, cfg: TrainConfig, fingerprint: dict[str, Any]) -> dict[str, Any] | None:
    """The record of a finished run in `folder` with this configuration and data, None if there is none
    (or if it trained fewer epochs / other patience, then it is resumed); another run there is an error."""
    path = folder / "metrics.json"
    if not path.is_file():
        return None
    try:
        rec = read_json(path)
        saved_cfg, saved_data = rec["config"], rec["data"]
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path} is not a readable run record ({e}); delete {folder} to train that run "
                         "again") from None
    changed = set(config_differences(saved_cfg, dataclasses.asdict(cfg)))
    wrong = sorted(changed - DISPLAY_ONLY - {"epochs", "patience"})
    if wrong:
        k = wrong[0]
        raise ValueError(f"{folder} holds a run with {k}={saved_cfg.get(k)!r}, this grid asks for "
                         f"{k}={getattr(cfg, k)!r}; pass another runs_dir, or delete that folder to retrain it")
    if fingerprint_differences(saved_data or {}, fingerprint):
        raise ValueError(f"{folder} holds a run trained on other data (source, filter, split or pairs differ); "
                         "pass another runs_dir for this data")
    here, there = code_version()["git_commit"], (rec.get("code") or {}).get("git_commit")
    if here and there and here != there:
        raise ValueError(f"{folder} holds a run trained by the code of commit {there}, this is {here}; delete "
                         f"{folder} to train it with this code, or pass another runs_dir")
    return None if changed - DISPLAY_ONLY else rec


def train_one(data: TaskData, m: Method, seed: int, cfg: TrainConfig, folder: Path | None, on_run: Any,
               bar: Any, desc: str) -> dict[str, Any]:
    """Train (or resume) one run of a grid, save its record in `folder`; returns its summary."""
    seen = 0

    def on_epoch(epoch: int, total: int) -> None:
        nonlocal seen
        seen += 1
        if bar is not None:
            bar.set_postfix_str(f"{m.label}, seed {seed}: epoch {epoch}/{total}", refresh=False)
            bar.update(1)

    if bar is not None:
        bar.set_description(desc, refresh=False)
        bar.set_postfix_str(f"{m.label}, seed {seed}: starting", refresh=True)
    resume = folder / "last.pt" if folder is not None and (folder / "last.pt").is_file() else None
    try:
        res = fit(data, cfg, checkpoint_dir=folder, resume=resume, on_epoch=on_epoch)
    except (CheckpointError, RunDirError) as e:
        raise type(e)(f"{e} (grid run folder {folder}: pass another runs_dir, or delete the folder to "
                      "retrain that run)") from None
    if folder is not None:
        res.save(folder)
    if on_run is not None:
        on_run(m, res)
    if bar is not None:
        bar.update(cfg.epochs - seen)  # epochs trained before a resume, or skipped by early stopping
    return res.summary()
