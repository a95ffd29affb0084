"""Time one training step (forward, per-task gradients, balancer, write-back, optimizer step).

    .venv/bin/python benchmarks/step_time.py [--device auto|cpu|cuda] [--steps 30] [--scales paper,default]

Compares, at paper scale (16,012 users x 24,608 items) and at the default scale (1,000 x 1,500), batch 256,
K = 4 tasks:
  * vanilla fast path (`GradEngine.backward_sum`: one backward of the summed loss),
  * vanilla / MetaBalance / PCGrad (adjusted and original) and every baseline of `mbkit.balancers.BASELINES`
    (single task, fixed weights, uncertainty weighting, DWA, GradNorm, MGDA, gradient cosine, GradVac and
    its adjusted variant, CAGrad, GradCraft) through `GradEngine` (one batched backward for all per-task
    gradients; loss-based methods also get the batch's per-task losses),
  each in compact mode (sparse rows + RowAdam, i.e. SparseAdam's update), dense mode (rows to the
  balancer, dense .grad + fused Adam) and dense mode with full (K, n_rows, D) tables handed to the
  balancer, and
  * the official-style reference (facebookresearch/MetaBalance's example): one backward of the summed
    loss for the towers, then one `backward(retain_graph=True)` per task over dense tables with the
    per-task gradients cloned per parameter and combined by MetaBalance, then default (for-loop) Adam
    steps as in the original. It uses the same model, so the comparison is about the gradient procedure.
Prints the median (or `--stat min`) step time over `--steps` steps after warm-up (configurations take
turns step by step), each method's ratio to vanilla through the engine (same mode), and MetaBalance's
ratios. `--methods` and `--modes` pick subsets. On a machine shared with other processes, two OpenMP threads that
spin-wait can be slowed several-fold: compare with `--threads 1` or OMP_WAIT_POLICY=passive.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mbkit.grads import GradEngine  # noqa: E402
from mbkit.optim import make_optimizers  # noqa: E402
from mbkit.model import ModelConfig, SharedBottomNeuMF  # noqa: E402
from mbkit.utils import make_generator, resolve_device  # noqa: E402

SCALES = {"paper": (16_012, 24_608), "default": (1_000, 1_500)}


def make_balancer(name: str, device: torch.device):
    """The project's balancer from `mbkit.balancers.make`, or a plain-sum stand-in if it is missing."""
    try:
        from mbkit.balancers import accepted_kwargs, make
    except ImportError:
        if name != "vanilla":
            return None, "missing"
        return (lambda grads: [g.sum(0) for g in grads]), "local sum"
    try:
        kw = {"generator": make_generator(0, device)} if "generator" in accepted_kwargs(name) else {}
        return make(name, **kw), "mbkit.balancers"
    except ValueError:  # a name this version of mbkit does not have
        return None, "missing"


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


def engine_runner(cfg, device, column: str, balancer):
    """A step through GradEngine (balancer given) or the vanilla fast path (balancer None)."""
    mode, full_tables = MODES[column]
    torch.manual_seed(0)
    model = SharedBottomNeuMF(cfg).to(device).train()
    engine = GradEngine(model, mode, full_tables)
    opts = make_optimizers(model, mode)

    def step(u, i, y):
        if balancer is None:
            engine.backward_sum(u, i, y)
        else:
            tg = engine(u, i, y)
            kw = {"losses": tg.losses.detach()} if getattr(balancer, "uses_losses", False) else {}
            engine.write(tg, balancer(tg.shared, **kw))
        for o in opts:
            o.step()

    return step


def official_runner(cfg, device):
    torch.manual_seed(0)
    model = SharedBottomNeuMF(cfg).to(device).train()
    shared = list(model.shared_parameters().values())
    towers = [p for k in range(cfg.n_tasks) for p in model.task_parameters(k).values()]
    opt_s = torch.optim.Adam(shared, lr=1e-3, weight_decay=1e-7)  # the original's optimizers, default Adam
    opt_t = torch.optim.Adam(towers, lr=1e-3, weight_decay=1e-7)
    norms = [[torch.zeros((), device=device) for _ in range(cfg.n_tasks)] for _ in shared]
    return lambda u, i, y: official_style_step(model, opt_s, opt_t, shared, towers, norms, u, i, y)


METHODS = ("vanilla", "metabalance", "pcgrad_adjusted", "pcgrad")
try:
    from mbkit.balancers import BASELINES
except ImportError:
    BASELINES = ()
STATS = {"median": statistics.median, "min": min}


def bench_scale(n_users, n_items, *, batch, n_tasks, steps, warmup, device, sources, stat, methods, modes):
    g = torch.Generator(device=device).manual_seed(0)
    batches = [
        (
            torch.randint(0, n_users, (batch,), device=device, generator=g),
            torch.randint(0, n_items, (batch,), device=device, generator=g),
            (torch.rand(batch, n_tasks, device=device, generator=g) < 0.3).float(),
        )
        for _ in range(16)
    ]
    cfg = ModelConfig(n_users, n_items, n_tasks)
    runners = {}
    for mode in modes:
        if mode != "dense full" or "dense" not in modes:  # the fast path of dense full is the dense one
            runners[("vanilla fast path", "dense" if mode == "dense full" else mode)] = engine_runner(
                cfg, device, "dense" if mode == "dense full" else mode, None)
        for name in methods:
            bal, sources[name] = make_balancer(name, device)
            if bal is not None:
                runners[(f"{name} engine", mode)] = engine_runner(cfg, device, mode, bal)
    if "dense" in modes:
        runners[("official-style metabalance", "dense")] = official_runner(cfg, device)
    return time_interleaved(runners, batches, steps, warmup, device, stat)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ap.add_argument("--steps", type=int, default=30, help="timed steps per configuration (median reported)")
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps before timing")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--tasks", type=int, default=4)
    ap.add_argument("--scales", default="paper,default", help="comma-separated subset of: " + ",".join(SCALES))
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's default)")
    ap.add_argument("--stat", choices=tuple(STATS), default="median",
                    help="statistic over the timed steps (min is robust to other processes on the machine)")
    ap.add_argument("--methods", default=",".join(METHODS + BASELINES),
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
          f"batch {args.batch}, K={args.tasks}, {args.stat} of {args.steps} steps after {args.warmup} warm-up, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}")
    sources: dict[str, str] = {}
    for scale in args.scales.split(","):
        n_users, n_items = SCALES[scale]
        res = bench_scale(n_users, n_items, batch=args.batch, n_tasks=args.tasks, steps=args.steps,
                          warmup=args.warmup, device=device, sources=sources, stat=STATS[args.stat],
                          methods=methods, modes=modes)
        print(f"\n## {scale} scale: {n_users:,} users x {n_items:,} items")
        print("| step (ms) | " + " | ".join(modes) + " | " + " | ".join(f"/ vanilla engine ({m})" for m in modes) + " |")
        print("|---|" + "---:|" * (2 * len(modes)))
        for name in ("vanilla fast path", *(f"{m} engine" for m in methods), "official-style metabalance"):
            cells = [f"{res[(name, m)]:.2f}" if (name, m) in res else "-" for m in modes]
            ratios = [f"{res[(name, m)] / res[('vanilla engine', m)]:.2f}x" if (name, m) in res else "-" for m in modes]
            if any(c != "-" for c in cells):
                print(f"| {name} | " + " | ".join(cells + ratios) + " |")
        for mode in modes:
            if ("metabalance engine", mode) not in res:
                continue
            fast = res[("vanilla fast path", "dense" if mode == "dense full" else mode)]
            mb, ve = res[("metabalance engine", mode)], res[("vanilla engine", mode)]
            line = (f"{mode:>10}: MetaBalance / vanilla fast path = {mb / fast:5.2f}x, "
                    f"MetaBalance / vanilla engine = {mb / ve:5.2f}x")
            if ("official-style metabalance", "dense") in res:
                line += f", official-style / MetaBalance = {res[('official-style metabalance', 'dense')] / mb:5.1f}x"
            print(line)
    print("\nbalancers from: " + ", ".join(f"{k}={v}" for k, v in sources.items()))


if __name__ == "__main__":
    main()
