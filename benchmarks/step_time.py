"""Time one training step (forward, per-task gradients, balancer, write-back, optimizer step) per method.

    .venv/bin/python benchmarks/step_time.py [--device auto|cpu|cuda] [--steps 30] [--scales paper,default]

Every method's step is `mbkit.train.train_step` along the path `fit` takes for it (`mbkit.train.step_path`):
Vanilla's one backward of the summed loss; loss-weighting methods (fixed, uncertainty, DWA, RLW, FAMO) and
MetaBalance on the shared representation through the towers' per-task gradients of h and one backward of
the bottom; every other method through the per-task gradients of every shared tensor (one batched
backward). The run is built as `fit` builds it (`mbkit.train.new_run`), at paper scale (16,012 users x
24,608 items) and at the default scale (1,000 x 1,500), batch 256, K = 4 tasks, in compact mode (sparse rows
+ RowAdam, i.e. SparseAdam's update), dense mode (dense .grad + fused Adam) and dense mode with full
(K, n_rows, D) tables handed to the balancer. Two reference rows: "vanilla per-task" (Vanilla through the
per-task gradients of every tensor, the path diagnostics take) and, in dense mode, the official-style
MetaBalance step (facebookresearch/MetaBalance's example: one backward of the summed loss for the towers,
then one `backward(retain_graph=True)` per task over dense tables, the per-task gradients cloned per
parameter and combined by MetaBalance, then default for-loop Adam steps as in the original; same model).

Prints the median (or `--stat min`) step time over `--steps` steps after warm-up (configurations take turns
step by step, so a drift of the machine's speed falls on all alike) and each method's ratio to Vanilla
(same mode). `--methods` and `--modes` pick subsets; `--threads` defaults to 1, the training loop's.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mbkit.balancers import BASELINES, accepted_kwargs, make  # noqa: E402
from mbkit.grads import GradEngine  # noqa: E402
from mbkit.model import ModelConfig, SharedBottomNeuMF  # noqa: E402
from mbkit.train import TrainConfig, new_run, step_path, train_step  # noqa: E402
from mbkit.utils import make_generator, resolve_device  # noqa: E402

SCALES = {"paper": (16_012, 24_608), "default": (1_000, 1_500)}


def official_style_step(model, opt_shared, opt_tower, shared, towers, norms, users, items, labels, r=0.7, beta=0.9):
    """One step as in facebookresearch/MetaBalance's example (towers are stepped after, not before)."""
    model.zero_grad()
    logits = model(users, items)
    losses = [F.binary_cross_entropy_with_logits(logits[:, k], labels[:, k]) for k in range(logits.shape[1])]
    sum(losses).backward(retain_graph=True)
    tower_grads = [p.grad.clone() for p in towers]
    model.zero_grad()
    sums = [None] * len(shared)
    for k, loss in enumerate(losses):
        loss.backward(retain_graph=True)
        with torch.no_grad():
            for j, p in enumerate(shared):
                norms[j][k] = norms[j][k] * beta + (1 - beta) * torch.norm(p.grad)
                g = (norms[j][0] * p.grad / norms[j][k]) * r + p.grad * (1 - r)
                sums[j] = g.clone() if k == 0 else sums[j] + g
                p.grad.zero_()
    for p, g in zip(shared, sums):
        p.grad = g
    for p, g in zip(towers, tower_grads):
        p.grad = g
    opt_shared.step()
    opt_tower.step()


def time_interleaved(runners: dict, batches, steps: int, warmup: int, device: torch.device, stat=statistics.median):
    """`stat` of the wall times (ms) per runner; runners take turns step by step, so load drifts hit all alike."""
    times: dict = {key: [] for key in runners}
    for s in range(warmup + steps):
        b = batches[s % len(batches)]
        for key, step in runners.items():
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            step(*b)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if s >= warmup:
                times[key].append(time.perf_counter() - t0)
    return {key: 1e3 * stat(ts) for key, ts in times.items()}


MODES = {"compact": ("compact", False), "dense": ("dense", False), "dense full": ("dense", True)}


def method_runner(shape, device, column: str, name: str, per_task: bool = False):
    """`train_step` of a run of balancer `name` built as `fit` builds it, along the path `fit` takes for it
    (`per_task`: the per-task gradients of every tensor, whatever the method)."""
    mode, full_tables = MODES[column]
    kwargs = {"generator": make_generator(0, device)} if "generator" in accepted_kwargs(name) else {}
    cfg = TrainConfig(balancer=name, mode=mode, device=str(device), progress=False)
    run, engine = new_run(shape, cfg, device)
    if full_tables:
        engine = GradEngine(run.model, mode, full_tables=True)
    if kwargs:
        run.balancer = make(name, **kwargs)
    run.model.train()
    path = "parameters" if per_task or full_tables else step_path(cfg, run.balancer)
    return lambda u, i, y: train_step(run, engine, u, i, y, path=path), path


def official_runner(cfg, device):
    torch.manual_seed(0)
    model = SharedBottomNeuMF(cfg).to(device).train()
    shared = list(model.shared_parameters().values())
    towers = [p for k in range(cfg.n_tasks) for p in model.task_parameters(k).values()]
    opt_s = torch.optim.Adam(shared, lr=1e-3, weight_decay=1e-7)  # the original's optimizers, default Adam
    opt_t = torch.optim.Adam(towers, lr=1e-3, weight_decay=1e-7)
    norms = [[torch.zeros((), device=device) for _ in range(cfg.n_tasks)] for _ in shared]
    return lambda u, i, y: official_style_step(model, opt_s, opt_t, shared, towers, norms, u, i, y)


METHODS = ("vanilla", "metabalance", "metabalance_rep", "pcgrad_adjusted", "pcgrad") + BASELINES
STATS = {"median": statistics.median, "min": min}


def bench_scale(n_users, n_items, *, batch, n_tasks, steps, warmup, device, stat, methods, modes):
    """{(row, mode): ms per step} and {row: path} of every method in every mode, timed in turns."""
    g = torch.Generator(device=device).manual_seed(0)
    batches = [
        (
            torch.randint(0, n_users, (batch,), device=device, generator=g),
            torch.randint(0, n_items, (batch,), device=device, generator=g),
            (torch.rand(batch, n_tasks, device=device, generator=g) < 0.3).float(),
        )
        for _ in range(16)
    ]
    shape = SimpleNamespace(n_users=n_users, n_items=n_items, tasks=tuple(f"task{k}" for k in range(n_tasks)))
    runners, paths = {}, {}
    for mode in modes:
        for name in methods:
            runners[(name, mode)], paths[name if mode != "dense full" else (name, mode)] = method_runner(
                shape, device, mode, name)
        runners[("vanilla per-task", mode)], paths["vanilla per-task"] = method_runner(
            shape, device, mode, "vanilla", per_task=True)
    if "dense" in modes:
        cfg = ModelConfig(n_users, n_items, n_tasks)
        runners[("official-style metabalance", "dense")] = official_runner(cfg, device)
        paths["official-style metabalance"] = "one backward per task"
    return time_interleaved(runners, batches, steps, warmup, device, stat), paths


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ap.add_argument("--steps", type=int, default=30, help="timed steps per configuration (median reported)")
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps before timing")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--tasks", type=int, default=4)
    ap.add_argument("--scales", default="paper,default", help="comma-separated subset of: " + ",".join(SCALES))
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1, the training loop's)")
    ap.add_argument("--stat", choices=tuple(STATS), default="median",
                    help="statistic over the timed steps (min is robust to other processes on the machine)")
    ap.add_argument("--methods", default=",".join(METHODS),
                    help="comma-separated balancer names (vanilla is always included)")
    ap.add_argument("--modes", default=",".join(MODES), help="comma-separated subset of: " + ",".join(MODES))
    args = ap.parse_args(argv)
    methods = ("vanilla",) + tuple(m for m in args.methods.split(",") if m and m != "vanilla")
    modes = tuple(m for m in MODES if m in args.modes.split(","))
    if not modes:
        ap.error(f"--modes must name at least one of {', '.join(MODES)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    cpu = platform.processor() or platform.machine()
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu
    load = ", load average %.1f" % os.getloadavg()[0] if hasattr(os, "getloadavg") else ""
    print(f"device: {device} ({dev_name}), torch {torch.__version__}, threads {torch.get_num_threads()}{load}, "
          f"batch {args.batch}, K={args.tasks}, {args.stat} of {args.steps} steps after {args.warmup} warm-up")
    for scale in args.scales.split(","):
        n_users, n_items = SCALES[scale]
        res, paths = bench_scale(n_users, n_items, batch=args.batch, n_tasks=args.tasks, steps=args.steps,
                                 warmup=args.warmup, device=device, stat=STATS[args.stat], methods=methods,
                                 modes=modes)
        print(f"\n## {scale} scale: {n_users:,} users x {n_items:,} items")
        print("| step (ms) | path | " + " | ".join(modes) + " | " + " | ".join(f"/ Vanilla ({m})" for m in modes)
              + " |")
        print("|---|---|" + "---:|" * (2 * len(modes)))
        for name in (*methods, "vanilla per-task", "official-style metabalance"):
            cells = [f"{res[(name, m)]:.2f}" if (name, m) in res else "-" for m in modes]
            ratios = [f"{res[(name, m)] / res[('vanilla', m)]:.2f}x" if (name, m) in res else "-" for m in modes]
            if any(c != "-" for c in cells):
                print(f"| {name} | {paths.get(name, '-')} | " + " | ".join(cells + ratios) + " |")
        for mode in modes:
            ratio = {name: res[(name, mode)] / res[("vanilla", mode)] for name in methods if (name, mode) in res}
            if "metabalance" in ratio:
                line = f"{mode:>10}: MetaBalance / Vanilla = {ratio['metabalance']:5.2f}x"
                if "metabalance_rep" in ratio and mode != "dense full":
                    line += f", MetaBalance on h / Vanilla = {ratio['metabalance_rep']:5.2f}x"
                if mode == "dense" and ("official-style metabalance", "dense") in res:
                    line += (f", official-style / MetaBalance = "
                             f"{res[('official-style metabalance', 'dense')] / res[('metabalance', mode)]:5.1f}x")
                print(line)


if __name__ == "__main__":
    main()
