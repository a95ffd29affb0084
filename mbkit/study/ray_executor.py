"""The `ray` executor of `mbkit.study.grid.run_grid`: every run of a grid is one Ray task.

Each task asks for `cpus_per_run` CPUs and, when the cluster has GPUs and the grid's device allows CUDA,
`1 / runs_per_gpu` of a GPU, so that several runs share one device. The split is prepared once by the
caller and put into Ray's object store: workers on this machine read the same copy, workers on other
machines receive it from there, and every worker checks its data fingerprint against the grid's before it
trains (a mismatch refuses the run). A task writes its run's checkpoint after every epoch and its record
(`metrics.json`, `history.csv`) when it finishes, into the run's own folder of `runs_dir`, together with
`run.log` (the run's output, one header per attempt). Ray retries a task whose worker died or which
raised (`max_retries`); a retry resumes from the run's last checkpoint. A run that fails on every attempt
does not stop the others: the grid ends with a `GridError` naming it, with every finished record kept.

Ray is an optional extra: `pip install 'mbkit[ray]'` (the lock file pins it).
"""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

import torch

from mbkit.checkpoint import data_fingerprint, fingerprint_differences
from mbkit.provenance import read_json
from mbkit.study.runs import LOG, finished_line, run_log, run_name, train_one
from mbkit.utils import progress_bar


class GridError(RuntimeError):
    """Some runs of a grid failed on every attempt; the others finished and are recorded."""


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ImportError("executor='ray' needs Ray, which is not installed here: pip install 'mbkit[ray]' (or "
                          "`pip install -r requirements/lock.txt`, which pins it); or use executor='local'") from None
    return ray


_term_handler: Any = signal.SIG_DFL  # what SIGTERM did before Ray connected


def connect(address: str | None) -> bool:
    """Join the Ray cluster at `address` (None: start a local Ray on this machine), unless this process is
    already connected. Returns whether this call connected (the caller then disconnects)."""
    ray = import_ray()
    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if address not in (None, "auto", "local"):
        _check_reachable(address)
    import logging
    global _term_handler
    if threading.current_thread() is threading.main_thread():
        _term_handler = signal.getsignal(signal.SIGTERM)
    try:
        ray.init(address=address, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False,
                 configure_logging=True)
    except Exception as e:  # Ray raises ConnectionError, RuntimeError or ValueError for a bad address
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ConnectionError(f"could not reach the Ray cluster at {address!r} ({first}); check the address "
                              "(the head node's host:port, or 'auto' on a node of the cluster), start one with "
                              "`ray start --head`, or use executor='local'") from None
    return True


def _check_reachable(address: str, timeout: float = 10.0) -> None:
    """Fail in seconds on a head node that does not answer: Ray itself retries for many minutes."""
    hostport = address.split("://", 1)[-1]
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"ray_address={address!r} is not an address; use the head node's host:port (e.g. "
                         "10.0.0.5:6379, or ray://host:10001 for Ray Client), 'auto', or None for a local Ray")
    todo = ("check the address (the head node's host:port, or 'auto' on a node of the cluster), start one with "
            "`ray start --head`, or use executor='local'")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout) as conn:
            speaks_grpc = _answers_http2(conn, timeout)
    except OSError as e:
        raise ConnectionError(f"could not reach the Ray cluster at {address!r} ({e.strerror or e}); {todo}") from None
    if not speaks_grpc:
        raise ConnectionError(f"{address!r} answers, but not as a Ray head node (no gRPC server there); {todo}")


def _answers_http2(conn: socket.socket, timeout: float) -> bool:
    """Whether the server on `conn` speaks HTTP/2, as Ray's gRPC servers do: it answers the client preface with
    a SETTINGS frame (type 4) within `timeout`."""
    conn.settimeout(timeout)
    conn.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0]))
    head = b""
    try:
        while len(head) < 9:
            chunk = conn.recv(9 - len(head))
            if not chunk:
                return False
            head += chunk
    except (socket.timeout, OSError):
        return False
    return head[3] == 4


def resources(device: str, runs_per_gpu: int, cpus_per_run: int) -> dict[str, float]:
    """The Ray resource request of one run: CPUs, and a GPU share when the cluster has GPUs for it."""
    ray = import_ray()
    gpus = ray.cluster_resources().get("GPU", 0)
    wants_gpu = device == "auto" or device.startswith("cuda")
    if device.startswith("cuda") and not gpus:
        raise ValueError(f"device={device!r}, but the Ray cluster has no GPU; use device='auto' or 'cpu'")
    return {"num_cpus": cpus_per_run, "num_gpus": (1.0 / runs_per_gpu) if wants_gpu and gpus else 0}


def run_task(data: Any, fingerprint: dict[str, Any], method: Any, seed: int, cfg: Any, folder: str,
             threads: int) -> dict[str, Any]:
    """One run on a Ray worker: check the data, train or resume it, record it; its output goes to run.log."""
    torch.set_num_threads(threads)
    cfg = dataclasses.replace(cfg, threads=threads)  # the run's ops use the CPUs Ray gave it
    path = Path(folder)
    with run_log(path, capture=True):
        if (path / "metrics.json").is_file():  # finished by a process that held the lock before us
            print("== finished by another process; its record is read")
            return read_json(path / "metrics.json")
        mine = data_fingerprint(data)
        if fingerprint_differences(mine, fingerprint):
            raise ValueError(f"this worker's data (sha256 {mine['sha256'][:12]}) differ from the grid's "
                             f"(sha256 {fingerprint['sha256'][:12]}); the run was refused")
        summary = train_one(data, method, seed, cfg, path, None, None, "")
        print(finished_line(summary))
    return summary


def run_on_ray(data: Any, fingerprint: dict[str, Any], jobs: list[tuple[int, Any, int, Any, Path]], *,
               address: str | None, runs_per_gpu: int, cpus_per_run: int, max_retries: int,
               progress: bool | str, n_total: int, runs_dir: Path) -> dict[int, dict[str, Any]]:
    """Submit `jobs` ((index, method, seed, config, folder) each) as Ray tasks; return {index: summary}.

    One bar over runs shows finished / running / failed counts (running: a task has written its log since
    the grid started). An interrupted driver shuts down the local Ray it started, with the tasks still
    running; on a cluster those tasks end with the driver's process (Ray fails a dead driver's tasks). They
    are not cancelled one by one: a task finishing during `ray.cancel` can crash Ray's driver (Ray 2.60).
    """
    ray = import_ray()
    ours = connect(address)
    main = threading.current_thread() is threading.main_thread()
    # ray.init replaced the SIGTERM handler with one that aborts; the caller's (e.g. the command line's,
    # which ends the grid as Ctrl-C does) is put back, for the grid and after it
    if main and ours:
        signal.signal(signal.SIGTERM, _term_handler)
    try:
        request = resources(jobs[0][3].device, runs_per_gpu, cpus_per_run)
        ref = ray.put(data.to("cpu") if str(data.device) != "cpu" else data)
        task = ray.remote(run_task).options(max_retries=max_retries, retry_exceptions=True, **request)
        started = time.time()
        pending = {task.remote(ref, fingerprint, m, s, cfg, str(folder), cpus_per_run): (i, m, s, folder)
                   for i, m, s, cfg, folder in jobs}
        done: dict[int, dict[str, Any]] = {}
        failed: dict[int, tuple[str, Path]] = {}
        n_before = n_total - len(jobs)
        bar = progress_bar(progress, total=n_total, initial=n_before, unit="run", desc="grid (ray)")

        def running() -> int:
            return sum(1 for (_, _, _, f) in pending.values()
                       if (f / LOG).is_file() and (f / LOG).stat().st_mtime >= started)

        shown = ""
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
                for r in ready:
                    i, m, s, folder = pending.pop(r)
                    try:
                        done[i] = ray.get(r)
                    except Exception as e:  # the run's own error (wrapped by Ray), or its worker's death
                        cause = e.cause if isinstance(e, ray.exceptions.RayTaskError) and e.cause else e
                        first = (str(cause).strip().splitlines() or [""])[0]
                        failed[i] = (f"{type(cause).__name__}: {first}", folder)
                counts = f"finished {n_before + len(done)}, running {running()}, failed {len(failed)}"
                if bar is not None and (ready or counts != shown):
                    bar.set_postfix_str(counts, refresh=not ready)
                    bar.update(len(ready))
                    shown = counts
        finally:
            if bar is not None:
                bar.close()
        if failed:
            by_index = {i: (m, s) for i, m, s, _, _ in jobs}
            names = "\n".join(f"  {run_name(*by_index[i])}: {err} (log: {folder / LOG})"
                              for i, (err, folder) in sorted(failed.items()))
            raise GridError(f"{len(failed)} of {len(jobs)} runs failed on every one of their {max_retries + 1} "
                            f"attempts; the other {n_before + len(done)} runs are finished and recorded in "
                            f"{runs_dir}:\n{names}\nFix the cause and run the same grid again: finished runs are "
                            "read from their records, not trained again.")
        return done
    finally:
        if ours:
            ray.shutdown()
            if main:
                signal.signal(signal.SIGTERM, _term_handler)
