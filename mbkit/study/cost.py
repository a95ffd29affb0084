"""What a training step of each method costs, measured so that methods compare fairly on a busy machine.

Timing whole runs one after another confounds a method with the machine's speed while it ran (on a shared
two-core machine that drifts by 30 % within minutes). `step_times` instead builds every method's run on
the same data and times single steps in turns, method after method, round after round, so a drift falls
on every method alike. Of each method's step times it takes the lower quartile, since noise only adds
time: in an execution of notebook 06 on a busy machine the medians of 40 rounds put ratios up to 0.2 below
those of quiet executions, while its lower quartiles matched the quiet medians within 0.03.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Iterable, Iterator

import pandas as pd
import torch

from mbkit.data.split import TaskData
from mbkit.study.methods import Method
from mbkit.train import TrainConfig, new_run, step_path, train_step


def _batches(data: TaskData, cfg: TrainConfig, sampler: torch.Generator) -> Iterator[tuple[torch.Tensor, ...]]:
    while True:  # epoch after epoch, as training draws them
        yield from data.batches(cfg.batch_size, sampler, num_neg=cfg.num_neg)


def step_times(data: TaskData, methods: Iterable[Method], base: TrainConfig, *, steps: int = 40,
               warmup: int = 5, seed: int = 0) -> pd.DataFrame:
    """Milliseconds per training step (`mbkit.train.train_step`, as `fit` takes it: Vanilla's one summed
    backward, every other method's per-task gradients and combination, the optimizers' steps) of each method
    on `data` with `base`'s settings. After `warmup` rounds, `steps` rounds each time one step of every
    method in turn (the order rotates every round). Returns one row per method: `ms_per_step`, the lower
    quartile of its step times (noise only ever adds time, so the fast end is what the step costs), the
    median and the upper quartile, and `ms_per_step` relative to the first method's (e.g. Vanilla)."""
    methods = list(methods)
    if not methods or steps < 1 or warmup < 0:
        raise ValueError(f"step_times needs methods, steps >= 1 and warmup >= 0; got {len(methods)} methods, "
                         f"steps={steps}, warmup={warmup}")
    device = data.device
    runs = []
    for m in methods:
        cfg = dataclasses.replace(base, balancer=m.balancer, balancer_kwargs=dict(m.kwargs), seed=seed)
        run, engine = new_run(data, cfg, device)
        run.model.train()
        runs.append((run, engine, step_path(cfg, run.balancer), _batches(data, cfg, run.sampler)))
    times: list[list[float]] = [[] for _ in methods]
    for r in range(warmup + steps):
        for k in range(len(methods)):
            i = (r + k) % len(methods)
            run, engine, path, batches = runs[i]
            users, items, labels = next(batches)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            train_step(run, engine, users, items, labels, path=path)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if r >= warmup:
                times[i].append(1000.0 * (time.perf_counter() - t0))
    t = pd.DataFrame({m.label: pd.Series(ts) for m, ts in zip(methods, times)})
    out = pd.DataFrame({"ms_per_step": t.quantile(0.25), "median": t.median(), "q75": t.quantile(0.75)})
    out[f"time per step / {methods[0].label}"] = out["ms_per_step"] / out["ms_per_step"].iloc[0]
    out.index.name = "method"
    return out
