"""One epoch end to end (training, then ranking the validation users) per method, at paper scale.

    .venv/bin/python benchmarks/epoch_time.py [--methods vanilla,metabalance,metabalance_rep] [--rounds 2]

Builds a random log of the MetaBalance Taobao data's size after filtering (16,012 users x 24,608 items;
87,000 distinct purchases split 70/15/15, 400,000 auxiliary pairs of pv, cart and fav, items drawn with a
Zipf-like popularity), then trains one epoch of each method with `mbkit.train.fit` (its default settings:
compact mode, batch 256, 4 negatives, one thread) and times its training and its validation ranking, as
`fit` records them. Methods take turns for `--rounds` rounds; the fastest round of each is reported (noise
only adds time), with its ratio to the first method's.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mbkit.data import build_task_data  # noqa: E402
from mbkit.train import TrainConfig, fit  # noqa: E402

N_USERS, N_ITEMS, PURCHASES, AUXILIARY = 16_012, 24_608, 87_000, 400_000


def paper_scale_log(seed: int = 0, scale: float = 1.0) -> pd.DataFrame:
    """A random log with the paper-scale sizes (every user and item present); `scale` shrinks the pair counts."""
    rng = np.random.default_rng(seed)
    popularity = 1.0 / np.arange(1, N_ITEMS + 1) ** 0.8
    popularity /= popularity.sum()
    n_buy, n_aux = int(PURCHASES * scale), int(AUXILIARY * scale)
    users = np.concatenate([np.arange(N_USERS), rng.integers(0, N_USERS, n_buy + n_aux - N_USERS)])
    items = np.concatenate([rng.permutation(N_ITEMS), rng.choice(N_ITEMS, n_buy + n_aux - N_ITEMS, p=popularity)])
    behavior = np.array(["buy"] * n_buy + list(rng.choice(["pv", "cart", "fav"], n_aux, p=[0.9, 0.06, 0.04])))
    perm = rng.permutation(len(behavior))  # every user and item gets a purchase or an auxiliary pair
    return pd.DataFrame({"user_id": users, "item_id": items, "behavior": behavior[perm],
                         "timestamp": 1_511_600_000})


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", default="vanilla,metabalance,metabalance_rep")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of the paper's pair counts (a quick look)")
    ap.add_argument("--threads", type=int, default=1, help="the runs' `threads` setting")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    data = build_task_data(paper_scale_log(scale=args.scale), device=args.device)
    n_train = int(data.labels.shape[0]) if hasattr(data, "labels") else 0
    load = f", load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    print(f"torch {torch.__version__}, {args.device}, threads {args.threads}{load}; {data.n_users:,} users x "
          f"{data.n_items:,} items, {n_train:,} training pairs, tasks {data.tasks} (built in "
          f"{time.perf_counter() - t0:.0f} s)")
    methods = args.methods.split(",")
    best: dict[str, tuple[float, float, int]] = {}
    for r in range(args.rounds):
        for name in methods:
            cfg = TrainConfig(balancer=name, epochs=1, progress=False, device=args.device, threads=args.threads)
            h = fit(data, cfg).history.iloc[0]
            train, ranking = float(h["train_seconds"]), float(h["eval_seconds"])
            print(f"round {r}: {name}: training {train:.1f} s ({1e3 * train / h['steps']:.2f} ms per step), "
                  f"validation ranking {ranking:.1f} s", flush=True)
            if name not in best or train + ranking < sum(best[name][:2]):
                best[name] = (train, ranking, int(h["steps"]))
    base = best[methods[0]]
    print(f"\n| method | training (s) | ms per step | ranking (s) | epoch (s) | training / {methods[0]} | "
          f"epoch / {methods[0]} |\n|---|---:|---:|---:|---:|---:|---:|")
    for name, (train, ranking, steps) in best.items():
        print(f"| {name} | {train:.1f} | {1e3 * train / steps:.2f} | {ranking:.1f} | {train + ranking:.1f} | "
              f"{train / base[0]:.2f}x | {(train + ranking) / sum(base[:2]):.2f}x |")


if __name__ == "__main__":
    main()
