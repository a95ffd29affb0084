"""Does compact (sparse-row, SparseAdam-rule) optimisation change the metrics compared with the original's
dense Adam? Trains both modes on the built-in synthetic log over several seeds and prints the test
metrics (mean ± std), the paired differences and a paired t-test per metric.

    .venv/bin/python benchmarks/compact_vs_dense.py --seeds 0 1 2 --epochs 3 --balancer metabalance
"""

from __future__ import annotations

import argparse
import time

import pandas as pd
from scipy import stats

from mbkit import data as mbd
from mbkit.study.grid import run_grid
from mbkit.study.methods import Method
from mbkit.study.tables import METRICS, summarize
from mbkit.train import TrainConfig


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--balancer", default="metabalance")
    p.add_argument("--relax-factor", type=float, default=0.7)
    p.add_argument("--device", default="auto")
    args = p.parse_args()

    _, log = mbd.load_filtered("synthetic")
    data = mbd.build_task_data(log, seed=0, device=args.device)
    kw = {"relax_factor": args.relax_factor} if "metabalance" in args.balancer else {}
    frames = []
    for mode in ("compact", "dense"):
        t0 = time.perf_counter()
        base = TrainConfig(epochs=args.epochs, mode=mode, device=args.device, progress=False)
        runs = run_grid(data, [Method(mode, args.balancer, kw)], args.seeds, base)
        print(f"{mode}: {len(args.seeds)} runs in {time.perf_counter() - t0:.0f} s", flush=True)
        frames.append(runs)
    runs = pd.concat(frames)
    summary = summarize(runs)
    pd.set_option("display.width", 160)
    print(summary[[f"{m}_{s}" for m in METRICS for s in ("mean", "std")]].round(4).to_string())
    rows = []
    for m in METRICS:
        a = runs[runs.method == "compact"].set_index("seed")[f"test_{m}"]
        b = runs[runs.method == "dense"].set_index("seed")[f"test_{m}"]
        t = stats.ttest_rel(a, b)
        rows.append({"metric": m, "mean(compact - dense)": (a - b).mean(), "std of seeds (compact)": a.std(),
                     "p (paired t)": t.pvalue})
    print(pd.DataFrame(rows).set_index("metric").round(4).to_string())


if __name__ == "__main__":
    main()
