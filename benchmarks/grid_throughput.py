"""Runs per hour against runs packed per device, at paper scale, through Ray (the `ray` executor's engine).

    .venv/bin/python benchmarks/grid_throughput.py [--device auto|cpu|cuda] [--packs 1,2,4,8] [--seconds 20]

A paper-scale run (16,012 users x 24,608 items, batch 256, four tasks, MetaBalance r=0.7, compact mode)
costs, per epoch, `--steps-per-epoch` training steps plus a full ranking of `--users` users (every item
scored, top 20 taken). Each Ray task measures both on its own model for about `--seconds`: training steps
(after warm-up), then ranking batches of users. k tasks run at once on one device:
  * GPU: each task asks for 1/k of the GPU (what `runs_per_gpu=k` does) and one CPU thread;
  * CPU: a local Ray of k CPUs on this machine, each task with `--threads` torch threads (default 1, as
    `cpus_per_run=1` and the pinned `make` targets run it), so k=1 leaves cores idle that k>1 use.
From each task's rates, one run of `--epochs` epochs takes T = epochs * (steps_per_epoch * t_step +
users * t_user); the device finishes k runs per T at packing k. Prints a table of ms per step, ms per
ranked user, hours per run and runs per hour, and each packing's ratio to packing 1, measured in one run.

Defaults: 20 epochs (the study's cap), 8,000 steps per epoch (the paper-scale epoch on the real log:
about 2 M training samples with 4 shared negatives each, batch 256) and 16,012 users. This counts the
cost of runs that train to the cap; early stopping makes them shorter.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mbkit.balancers import make  # noqa: E402
from mbkit.grads import GradEngine  # noqa: E402
from mbkit.model import ModelConfig, SharedBottomNeuMF  # noqa: E402
from mbkit.optim import make_optimizers  # noqa: E402
from mbkit.utils import resolve_device  # noqa: E402

N_USERS, N_ITEMS, N_TASKS, BATCH = 16_012, 24_608, 4, 256


def measure(device_name: str, threads: int, seconds: float, rank_batch: int) -> dict[str, float]:
    """One packed run's rates: ms per training step and ms per ranked user, each over ~seconds/2."""
    torch.set_num_threads(threads)
    device = resolve_device(device_name)
    torch.manual_seed(0)
    model = SharedBottomNeuMF(ModelConfig(N_USERS, N_ITEMS, N_TASKS)).to(device).train()
    engine = GradEngine(model, "compact")
    opts = make_optimizers(model, "compact")
    balancer = make("metabalance", relax_factor=0.7)
    g = torch.Generator(device=device).manual_seed(0)
    batches = [(torch.randint(0, N_USERS, (BATCH,), device=device, generator=g),
                torch.randint(0, N_ITEMS, (BATCH,), device=device, generator=g),
                (torch.rand(BATCH, N_TASKS, device=device, generator=g) < 0.3).float()) for _ in range(16)]

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def train(n: int) -> None:
        for s in range(n):
            u, i, y = batches[s % len(batches)]
            tg = engine(u, i, y)
            engine.write(tg, balancer(tg.shared))
            for o in opts:
                o.step()

    def rank(n_batches: int) -> None:
        model.eval()
        with torch.no_grad():
            for b in range(n_batches):
                users = torch.arange(b * rank_batch, (b + 1) * rank_batch, device=device) % N_USERS
                model.score_items(users).topk(20, dim=1)
        model.train()

    train(10)
    rank(1)
    sync()
    out = {}
    for name, fn, per in (("step", train, 1), ("user", rank, rank_batch)):
        n, spent = 0, 0.0
        chunk = 20 if name == "step" else 1
        while spent < seconds / 2:
            t0 = time.perf_counter()
            fn(chunk)
            sync()
            spent += time.perf_counter() - t0
            n += chunk * per
        out[f"ms_per_{name}"] = 1e3 * spent / n
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ap.add_argument("--packs", default="1,2,4,8", help="runs packed per device, comma-separated")
    ap.add_argument("--seconds", type=float, default=20.0, help="measuring time of each run (half steps, half ranking)")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--steps-per-epoch", type=int, default=8_000)
    ap.add_argument("--users", type=int, default=N_USERS, help="users ranked per epoch (validation)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run on CPU")
    ap.add_argument("--rank-batch", type=int, default=256, help="users scored per ranking batch")
    args = ap.parse_args(argv)

    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    device = resolve_device(args.device)
    cores = os.cpu_count() or 1
    packs = [int(k) for k in args.packs.split(",")]
    gpu = device.type == "cuda"
    name = torch.cuda.get_device_name(device) if gpu else f"CPU, {cores} cores ({platform.processor() or platform.machine()})"
    print(f"device: {name}; torch {torch.__version__}; paper scale {N_USERS:,} x {N_ITEMS:,}, batch {BATCH}, "
          f"MetaBalance r=0.7, compact mode; one run = {args.epochs} epochs x ({args.steps_per_epoch:,} steps + "
          f"ranking {args.users:,} users)")
    rows = []
    for k in packs:
        threads = 1 if gpu else args.threads
        ray.init(num_cpus=max(k, 1) if not gpu else max(k, cores), num_gpus=1 if gpu else 0,
                 include_dashboard=False, log_to_driver=False, logging_level="ERROR")
        try:
            task = ray.remote(measure).options(num_cpus=1, num_gpus=(1.0 / k) if gpu else 0)
            t0 = time.perf_counter()
            got = ray.get([task.remote(args.device, threads, args.seconds, args.rank_batch) for _ in range(k)])
            wall = time.perf_counter() - t0
        finally:
            ray.shutdown()
        step = sum(r["ms_per_step"] for r in got) / k
        user = sum(r["ms_per_user"] for r in got) / k
        hours = args.epochs * (args.steps_per_epoch * step + args.users * user) / 1e3 / 3600
        rows.append((k, threads, step, user, hours, k / hours, wall))
    base = rows[0][5]
    print(f"{'runs/device':>11} {'threads/run':>11} {'ms/step':>8} {'ms/user':>8} {'h/run':>7} {'runs/h':>7} "
          f"{'vs ' + str(rows[0][0]):>6} {'wall s':>7}")
    for k, threads, step, user, hours, rate, wall in rows:
        print(f"{k:>11} {threads:>11} {step:>8.2f} {user:>8.3f} {hours:>7.2f} {rate:>7.2f} {rate / base:>5.2f}x "
              f"{wall:>7.1f}")


if __name__ == "__main__":
    main()
