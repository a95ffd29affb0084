"""How hard is the built-in world? Vanilla's test NDCG@10 against the popularity floor, for the default
generator constants and for others given on the command line (the measurement behind the difficulty
constants of `mbkit.data.synthetic`). Each run trains up to `--epochs` epochs and keeps the best
validation epoch.

    .venv/bin/python benchmarks/calibrate_world.py --seeds 0 1 2
    .venv/bin/python benchmarks/calibrate_world.py --set _POP_EXP=0.6 _N_PREF=1.5 _BUY_S=1.5   # the old world

Prints the filtered log's shape beside Table 1's ratios (purchases per user, buyers per item, auxiliary
rows per purchase), the popularity floor, and per seed the best epoch and Vanilla's test NDCG@10.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd

import mbkit.data.synthetic as synthetic
from mbkit import data as mbd
from mbkit.study.tables import floor_row
from mbkit.train import TrainConfig, fit


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--set", nargs="*", default=[], metavar="NAME=VALUE", help="generator constants, e.g. _POP_EXP=0.6")
    p.add_argument("--world", type=int, nargs=2, default=(30_000, 10_000), metavar=("N_USERS", "N_ITEMS"))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--patience", type=int, default=2)
    args = p.parse_args()
    for item in args.set:
        name, value = item.split("=", 1)
        if not hasattr(synthetic, name):
            raise SystemExit(f"mbkit.data.synthetic has no constant {name!r}")
        setattr(synthetic, name, float(value))

    t = time.perf_counter()
    log = mbd.filter_log(synthetic.synthesize(*args.world))
    print(f"generated and filtered in {time.perf_counter() - t:.1f} s")
    stats = pd.concat([mbd.log_stats({"this world, filtered": log}),
                       mbd.thesis_stats().loc[["filtered"]].rename(index={"filtered": "thesis Table 1, filtered"})])
    print(mbd.table1_ratios(stats).round(2).to_string())
    data = mbd.build_task_data(log, seed=0, device="cpu")
    print(data.describe())
    floor = floor_row(data)["ndcg@10_mean"].iloc[0]
    print(f"popularity floor, test NDCG@10: {floor:.4f}")
    scores = []
    for seed in args.seeds:
        r = fit(data, TrainConfig(epochs=args.epochs, patience=args.patience, seed=seed, progress=False))
        scores.append(r.test["ndcg@10"])
        valid = np.round(r.history["valid_ndcg@10"].to_numpy(), 4).tolist()
        print(f"seed {seed}: best epoch {r.best_epoch}, test NDCG@10 {scores[-1]:.4f}, validation by epoch {valid}",
              flush=True)
    print(f"Vanilla test NDCG@10 {np.mean(scores):.4f} ± {np.std(scores, ddof=1) if len(scores) > 1 else 0:.4f} "
          f"= {np.mean(scores) / floor:.2f} x the popularity floor")


if __name__ == "__main__":
    main()
