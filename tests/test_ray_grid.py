"""Grids on Ray: the same table as the local executor, one record per run, resume after a kill, clear failures.

A local Ray of 2 CPUs (what CI has); each run uses one thread under both executors, so CPU numbers agree
bit for bit."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pandas as pd
import pytest
import torch

from helpers import TINY as BASE
from mbkit import data as mbd
from mbkit.study.grid import run_grid
from mbkit.study.methods import Method
from mbkit.study.runs import run_name

ray = pytest.importorskip("ray", reason="Ray is an optional extra (pip install 'mbkit[ray]')")

METHODS = [Method("Vanilla", "vanilla"), Method("MetaBalance (r=0.7)", "metabalance", {"relax_factor": 0.7}),
           Method("PCGrad (adjusted)", "pcgrad_adjusted")]
SEEDS = [0, 1]


@pytest.fixture(scope="module")
def local_ray():
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def local_table(task_data, tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run_grid(task_data, METHODS, SEEDS, BASE, runs_dir=tmp_path_factory.mktemp("local"))
    finally:
        torch.set_num_threads(threads)


def _table(runs: pd.DataFrame) -> pd.DataFrame:
    return runs.drop(columns="train_seconds")


def test_an_unreachable_cluster_is_one_sentence():
    # first in the module: the module's local Ray is not started yet
    from mbkit.study.ray_executor import connect
    assert not ray.is_initialized()
    with pytest.raises(ConnectionError, match=r"could not reach the Ray cluster at '127.0.0.1:9' \(.*\); check "
                                              r"the address"):
        connect("127.0.0.1:9")
    with pytest.raises(ValueError, match="is not an address; use the head node's host:port"):
        connect("no-port-here")


def test_ray_grid_gives_the_local_table_and_one_record_per_run(local_ray, task_data, local_table, tmp_path, capsys):
    runs = tmp_path / "runs"
    table = run_grid(task_data, METHODS, SEEDS, BASE, runs_dir=runs, executor="ray", cpus_per_run=1,
                     progress="text")
    pd.testing.assert_frame_equal(_table(table), _table(local_table))  # bit for bit, 6 runs
    err = capsys.readouterr().err
    assert "grid (ray)" in err and "finished 6, running 0, failed 0" in err
    for m in METHODS:
        for s in SEEDS:
            folder = runs / run_name(m, s)
            rec = json.loads((folder / "metrics.json").read_text())
            assert rec["seed"] == s and rec["balancer"] == m.balancer
            log = (folder / "run.log").read_text()
            assert "started on" in log and "torch threads 1" in log and "== finished: best epoch" in log

    # Run again: every run is read from its record, nothing is submitted to Ray.
    import mbkit.study.ray_executor as rg
    real, rg.run_task = rg.run_task, None
    try:
        again = run_grid(task_data, METHODS, SEEDS, BASE, runs_dir=runs, executor="ray")
    finally:
        rg.run_task = real
    pd.testing.assert_frame_equal(again, table)


def test_a_failing_run_is_named_and_the_others_finish(local_ray, task_data, tmp_path):
    runs = tmp_path / "runs"
    bad = METHODS[1]
    (runs / run_name(bad, 0)).mkdir(parents=True)
    (runs / run_name(bad, 0) / "last.pt").write_bytes(b"cut short")  # fails on the worker, on every attempt
    with pytest.raises(RuntimeError) as err:
        run_grid(task_data, [METHODS[0], bad], [0], BASE, runs_dir=runs, executor="ray", max_retries=1)
    msg = str(err.value)
    assert "1 of 2 runs failed on every one of their 2 attempts; the other 1 runs are finished and recorded" in msg
    assert f"{run_name(bad, 0)}: CheckpointError:" in msg and "run.log" in msg
    assert (runs / run_name(METHODS[0], 0) / "metrics.json").is_file()
    assert not (runs / run_name(bad, 0) / "metrics.json").exists()
    log = (runs / run_name(bad, 0) / "run.log").read_text()
    assert log.count("resumed from last.pt") == 2 and log.count("Traceback") == 2  # one per attempt


def test_ray_needs_a_runs_dir_and_a_known_executor(task_data):
    with pytest.raises(ValueError, match="executor='ray' keeps one record per run: pass runs_dir"):
        run_grid(task_data, METHODS, SEEDS, BASE, executor="ray")
    with pytest.raises(ValueError, match="executor='dask'; use 'local'"):
        run_grid(task_data, METHODS, SEEDS, BASE, executor="dask")


def _grid_command(params: str, address: str) -> list[str]:
    return [sys.executable, "-m", "mbkit", "grid", "04_method_comparison", "--params", params, "--progress", "off",
            "--address", address]


def test_a_killed_grid_trains_only_the_missing_runs_when_run_again(local_ray, tmp_path):
    """The command line's grid on a running Ray cluster (this module's, joined by its address): SIGTERM (what
    a scheduler sends) after the first of notebook 04's seven runs (six methods and the single-task floor, one
    seed) finished ends it in one sentence; the same command then trains only the others."""
    address = ray.get_runtime_context().gcs_address
    mbd.synthesize(n_users=4000, n_items=1500, seed=3, path=tmp_path / "log.csv")  # 75 users after the filter
    runs = tmp_path / "runs"
    params = tmp_path / "params.yaml"
    params.write_text(textwrap.dedent(f"""\
        common: {{data: {tmp_path / 'log.csv'}, device: cpu}}
        04_method_comparison: {{epochs: 2, batch_size: 4096, seeds: [0], runs_dir: {runs}, executor: ray}}
        """))
    proc = subprocess.Popen(_grid_command(str(params), address), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 300
    while not list(runs.glob("*/metrics.json")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1].startswith("mbkit: grid interrupted; finished runs are recorded")
    first = {f.parent.name for f in runs.glob("*/metrics.json")}
    assert 1 <= len(first) < 7

    again = subprocess.run(_grid_command(str(params), address), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert f"7 runs in {runs}: {len(first)} finished (read from their records)" in again.stdout
    assert len(list(runs.glob("*/metrics.json"))) == 7
    for name in first:  # trained once: one attempt in its log
        log = (runs / name / "run.log").read_text()
        assert log.count("== finished") == 1 and log.count("started") == 1, log
