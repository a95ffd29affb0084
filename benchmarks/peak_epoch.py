"""Why does training peak after one or two epochs? Trains Vanilla on the built-in synthetic log for several
epochs under one change at a time (optimiser mode and weight decay, learning rate, dropout, negatives,
capacity, the target alone) and prints, per variant, the validation NDCG@10 of every epoch (mean over
seeds), the best epoch of each seed and the test NDCG@10 at the best epoch, beside the popularity floor.

    .venv/bin/python benchmarks/peak_epoch.py --epochs 8 --seeds 0 1
"""

from __future__ import annotations

import argparse
import time

import pandas as pd

from mbkit import data as mbd
from mbkit.study.tables import floor_row
from mbkit.train import TrainConfig, fit

VARIANTS: dict[str, dict] = {
    "as committed (compact, lr 1e-3, dropout 0.5, 4 negatives)": {},
    "dense Adam, weight decay 1e-7 on every table (the original)": {"mode": "dense"},
    "dense Adam, weight decay 1e-5": {"mode": "dense", "weight_decay": 1e-5},
    "lr 3e-4": {"lr": 3e-4},
    "lr 1e-4": {"lr": 1e-4},
    "dropout 0": {"dropout": 0.0},
    "8 negatives per positive": {"num_neg": 8},
    "embeddings 16 (not 64)": {"emb_dim": 16},
    "target only (single task)": {"balancer": "single_task"},
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--only", default="", help="run only variants whose name contains this")
    p.add_argument("--device", default="auto")
    args = p.parse_args()

    _, log = mbd.load_filtered("synthetic")
    data = mbd.build_task_data(log, seed=0, device=args.device)
    floor = floor_row(data)["ndcg@10_mean"].iloc[0]
    print(f"popularity floor, test NDCG@10: {floor:.4f}", flush=True)
    curves, rows = {}, []
    for name, change in VARIANTS.items():
        if args.only not in name:
            continue
        t0 = time.perf_counter()
        valid, best, test = [], [], []
        for seed in args.seeds:
            r = fit(data, TrainConfig(epochs=args.epochs, seed=seed, device=args.device, progress=False, **change))
            valid.append(r.history.set_index("epoch")["valid_ndcg@10"])
            best.append(r.best_epoch)
            test.append(r.test["ndcg@10"])
        curves[name] = pd.concat(valid, axis=1).mean(axis=1)
        rows.append({"variant": name, "best epochs": best, "test NDCG@10 at best": sum(test) / len(test),
                     "over floor": sum(test) / len(test) / floor, "seconds": time.perf_counter() - t0})
        print(f"{name}: best epochs {best}, test NDCG@10 {rows[-1]['test NDCG@10 at best']:.4f} "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
    pd.set_option("display.width", 200)
    print("\nvalidation NDCG@10 per epoch (mean over seeds):")
    print(pd.DataFrame(curves).T.round(4).to_string())
    print()
    print(pd.DataFrame(rows).set_index("variant").round(4).to_string())


if __name__ == "__main__":
    main()
