"""Where a training step's time goes: torch.profiler over steps of `mbkit.train.train_step` at paper scale.

    .venv/bin/python benchmarks/profile_step.py [--methods vanilla,metabalance] [--steps 20] [--mode compact]

For each method, a run is built as `fit` builds it (16,012 users x 24,608 items, K = 4, batch 256, one
thread unless `--threads`), warmed up, then `--steps` steps are profiled along the path `fit` takes. Prints
the wall time per step, the number of operator calls per step, each kind of work's share of the operators'
own time (matrix products, row gathers and updates, dropout masks, element-wise arithmetic, reductions,
copies, sparse bookkeeping, the optimizers' arithmetic) and the `--top` operators by own time.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mbkit.train import TrainConfig, new_run, step_path, train_step  # noqa: E402
from mbkit.utils import resolve_device  # noqa: E402

N_USERS, N_ITEMS, N_TASKS, BATCH = 16_012, 24_608, 4, 256

# kinds of work, by operator name (first match wins)
KINDS = [
    ("matrix products", ("mm", "bmm", "addmm", "baddbmm", "matmul", "linear", "_fused_sdp")),
    ("row gathers and updates", ("index", "embedding", "gather", "scatter", "searchsorted", "unique", "sort")),
    ("dropout masks", ("uniform_", "rand", "bernoulli", "lt", "dropout")),
    ("optimizer arithmetic", ("_fused_adam", "_foreach", "lerp", "addcmul", "addcdiv", "sqrt")),
    ("copies and layout", ("copy_", "clone", "contiguous", "to", "_to_copy", "cat", "stack", "expand", "view",
                           "reshape", "transpose", "t", "permute", "empty", "zeros", "new_zeros", "fill_",
                           "zero_", "ones_like", "zeros_like", "empty_like", "as_strided", "unsqueeze", "squeeze",
                           "select", "slice", "split", "unbind", "detach", "alias")),
    ("sparse bookkeeping", ("sparse", "coalesce", "_indices", "_values", "_coalesced")),
    ("reductions and norms", ("sum", "mean", "norm", "linalg", "max", "min", "amax", "any", "all", "isfinite")),
    ("loss", ("binary_cross_entropy", "log_sigmoid", "sigmoid")),
    ("element-wise arithmetic", ("mul", "div", "add", "sub", "relu", "threshold", "where", "neg", "clamp",
                                 "exp", "log", "pow", "abs", "masked")),
]


def kind(op: str) -> str:
    name = op.removeprefix("aten::").rstrip("_")
    for label, names in KINDS:
        if any(name == n.rstrip("_") or name.startswith(n + "_") for n in names):
            return label
    return "other"


def profile_method(name: str, mode: str, steps: int, warmup: int, device: torch.device, top: int) -> None:
    shape = SimpleNamespace(n_users=N_USERS, n_items=N_ITEMS, tasks=tuple(f"task{k}" for k in range(N_TASKS)))
    cfg = TrainConfig(balancer=name, mode=mode, device=str(device), progress=False)
    run, engine = new_run(shape, cfg, device)
    run.model.train()
    path = step_path(cfg, run.balancer)
    g = torch.Generator(device=device).manual_seed(0)
    batches = [(torch.randint(0, N_USERS, (BATCH,), device=device, generator=g),
                torch.randint(0, N_ITEMS, (BATCH,), device=device, generator=g),
                (torch.rand(BATCH, N_TASKS, device=device, generator=g) < 0.3).float()) for _ in range(8)]
    for s in range(warmup):
        train_step(run, engine, *batches[s % 8], path=path)
    t0 = time.perf_counter()
    for s in range(steps):
        train_step(run, engine, *batches[s % 8], path=path)
    wall = (time.perf_counter() - t0) / steps * 1e3
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for s in range(steps):
            train_step(run, engine, *batches[s % 8], path=path)
    events = prof.key_averages()
    self_us = {e.key: e.self_cpu_time_total for e in events}
    calls = {e.key: e.count for e in events}
    total = sum(self_us.values())
    by_kind: dict[str, float] = defaultdict(float)
    for op, us in self_us.items():
        by_kind[kind(op)] += us
    print(f"\n## {run.balancer} ({path} path, {mode} mode): {wall:.2f} ms per step unprofiled, "
          f"{sum(calls.values()) / steps:.0f} operator calls per step, {total / steps / 1e3:.2f} ms of operators' "
          "own time per step under the profiler")
    print("| kind of work | share of own time | ms per step |\n|---|---:|---:|")
    for label, us in sorted(by_kind.items(), key=lambda kv: -kv[1]):
        print(f"| {label} | {100 * us / total:.1f} % | {us / steps / 1e3:.2f} |")
    print(f"\n| top {top} operators | calls per step | share of own time |\n|---|---:|---:|")
    for op, us in sorted(self_us.items(), key=lambda kv: -kv[1])[:top]:
        print(f"| {op} | {calls[op] / steps:.0f} | {100 * us / total:.1f} % |")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", default="vanilla,metabalance,metabalance_rep")
    ap.add_argument("--mode", default="compact", choices=("compact", "dense"))
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--top", type=int, default=12)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    print(f"torch {torch.__version__}, {device}, {torch.get_num_threads()} thread(s), batch {BATCH}, K={N_TASKS}")
    for name in args.methods.split(","):
        profile_method(name, args.mode, args.steps, args.warmup, device, args.top)


if __name__ == "__main__":
    main()
