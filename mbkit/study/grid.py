"""Grids of runs over methods and seeds, one record per run, on this process or on Ray."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from mbkit.checkpoint import data_fingerprint
from mbkit.data.split import TaskData
from mbkit.study.methods import Method
from mbkit.study.runs import finished_line, finished_record, run_log, run_name, train_one
from mbkit.train import TrainConfig
from mbkit.utils import progress_bar, setting

EXECUTORS = ("local", "ray")


@dataclass(frozen=True)
class Executor:
    """Where a grid's runs train: the settings of `run_grid` beyond the grid itself (the `grid` command's
    flags are generated from these fields)."""

    executor: str = setting("local", "local: one run after another in this process; ray: one Ray task per run",
                            choices=EXECUTORS)
    ray_address: str | None = setting(None, "the Ray cluster (head node host:port, or 'auto'); none: a local Ray "
                                      "on this machine", flag="--address")
    runs_per_gpu: int = setting(1, "Ray: runs that share one GPU")
    cpus_per_run: int = setting(1, "Ray: CPUs (and torch threads) per run")
    max_retries: int = setting(2, "Ray: retries of a failed run, each resuming from its checkpoint")

    def __post_init__(self) -> None:
        if self.executor not in EXECUTORS:
            raise ValueError(f"executor={self.executor!r}; use 'local' (this process) or 'ray' (Ray tasks, `pip "
                             "install 'mbkit[ray]'`)")
        for name in ("runs_per_gpu", "cpus_per_run"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        if int(self.max_retries) < 0:
            raise ValueError(f"max_retries={self.max_retries} must be >= 0")


def run_grid(data: TaskData, methods: Iterable[Method], seeds: Iterable[int], base: TrainConfig,
             on_run=None, *, runs_dir: str | Path | None = None, progress: bool | str | None = None,
             **executor: Any) -> pd.DataFrame:
    """Train every method with every seed (same data split) and return one row per run.

    Columns: method, balancer, seed, best_epoch, epochs_trained (fewer than `base.epochs` when the patience
    rule stopped the run), train_seconds, steps (epochs_trained and steps are None in records written
    before mbkit recorded them), the method's keyword arguments,
    valid_<metric>, test_<metric>. `on_run(method, result)` is called after each run that trains here
    (local executor).

    `runs_dir`: each run gets its own folder `runs_dir/run_name(method, seed)` with a checkpoint after
    every epoch and its record (metrics.json, history.csv) as soon as it finishes. Calling again with the
    same grid reads finished runs from their records, resumes unfinished ones from their checkpoints and
    returns the same table as an uninterrupted grid (train_seconds aside); a folder holding a run of
    other settings or data is an error. `progress` (default: `base.progress`): one bar over the grid
    (a widget in JupyterLab, text on stderr elsewhere; see `mbkit.utils.progress_bar`).

    `executor` takes the fields of `Executor`: executor="local" trains the runs one after another in this
    process (the bar counts epochs); "ray" makes each run a Ray task (`mbkit.study.ray_executor`; needs
    `runs_dir`) on the cluster at `ray_address` (None: a local Ray on this machine, or the one this process
    is already connected to), asking for `cpus_per_run` CPUs and 1/`runs_per_gpu` of a GPU, retried
    `max_retries` times; the bar counts runs. Both give the same table for the same grid when a run uses
    the same number of threads.
    """
    unknown = sorted(set(executor) - {f.name for f in dataclasses.fields(Executor)})
    if unknown:
        raise ValueError(f"run_grid does not take {unknown}; an executor's settings are the fields of Executor: "
                         f"{[f.name for f in dataclasses.fields(Executor)]}")
    where = Executor(**executor)
    if where.executor == "ray" and runs_dir is None:
        raise ValueError("executor='ray' keeps one record per run: pass runs_dir (a folder for the runs' "
                         "records and checkpoints)")
    methods, seeds = list(methods), [int(s) for s in seeds]
    check_distinct(methods, seeds)
    plan = [(m, s, dataclasses.replace(base, balancer=m.balancer, balancer_kwargs=dict(m.kwargs), seed=s,
                                       progress=False))
            for m in methods for s in seeds]
    folders: list[Path | None] = [None] * len(plan)
    records: list[dict[str, Any] | None] = [None] * len(plan)
    if runs_dir is not None:
        fingerprint = data_fingerprint(data)
        for i, (m, s, cfg) in enumerate(plan):
            folders[i] = Path(runs_dir) / run_name(m, s)
            records[i] = finished_record(folders[i], cfg, fingerprint)
    progress = base.progress if progress is None else progress
    todo = [i for i, r in enumerate(records) if r is None]
    if where.executor == "ray" and todo:
        from mbkit.study.ray_executor import run_on_ray
        jobs = [(i, plan[i][0], plan[i][1], plan[i][2], folders[i]) for i in todo]
        got = run_on_ray(data, fingerprint, jobs, address=where.ray_address, runs_per_gpu=where.runs_per_gpu,
                         cpus_per_run=where.cpus_per_run, max_retries=where.max_retries, progress=progress,
                         n_total=len(plan), runs_dir=Path(runs_dir))
        for i, rec in got.items():
            records[i] = rec
    elif todo:
        epochs = base.epochs
        bar = progress_bar(progress, total=len(plan) * epochs, initial=epochs * (len(plan) - len(todo)),
                           unit="epoch", desc="grid")
        try:
            for i in todo:
                m, s, cfg = plan[i]
                if folders[i] is None:
                    records[i] = train_one(data, m, s, cfg, None, on_run, bar, f"run {i + 1}/{len(plan)}")
                    continue
                with run_log(folders[i], capture=False):
                    records[i] = train_one(data, m, s, cfg, folders[i], on_run, bar, f"run {i + 1}/{len(plan)}")
                    with open(folders[i] / "run.log", "a") as log:
                        print(finished_line(records[i]), file=log)
        finally:
            if bar is not None:
                bar.close()
    rows = []
    for (m, s, cfg), rec, folder in zip(plan, records, folders):
        try:
            row: dict[str, Any] = {"method": m.label, "balancer": m.balancer, "seed": s,
                                   "best_epoch": rec["best_epoch"], "epochs_trained": rec.get("epochs_trained"),
                                   "train_seconds": rec["train_seconds"], "steps": rec.get("steps")}
            row.update({k: v for k, v in m.kwargs.items()})
            row.update({f"valid_{k}": v for k, v in rec["valid"].items()})
            row.update({f"test_{k}": v for k, v in rec["test"].items()})
        except (KeyError, TypeError, AttributeError) as e:
            where = folder / "metrics.json" if folder is not None else f"run {run_name(m, s)}"
            raise ValueError(f"{where} is not a complete run record (no {e}); delete "
                             f"{folder if folder is not None else 'it'} to train that run again") from None
        rows.append(row)
    return pd.DataFrame(rows)


def check_distinct(methods: list[Method], seeds: list[int]) -> None:
    """Refuse a grid whose entries are not distinct runs: a repeated seed, or two methods with the same balancer
    and arguments (one folder, one run), would count one run as two in every mean, interval and test."""
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise ValueError(f"seeds {seeds} repeat {repeated}: a seed gives one run, which would count as several in "
                         "every mean and paired test; list each seed once")
    names: dict[str, str] = {}
    for m in methods:
        name = run_name(m, 0).removesuffix("_seed0")
        if name in names:
            raise ValueError(f"methods {names[name]!r} and {m.label!r} are the same run ({m.balancer} with "
                             f"{m.kwargs or 'no arguments'}); list each configuration once")
        names[name] = m.label
    labels = [m.label for m in methods]
    if len(set(labels)) != len(labels):
        twice = sorted({label for label in labels if labels.count(label) > 1})
        raise ValueError(f"methods share the label(s) {twice}, which name their rows in every table; give each its own")
