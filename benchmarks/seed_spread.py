"""Does a larger world narrow the paired spread over seeds, and what does a decision cost? Trains Vanilla,
MetaBalance (r = 0.3, notebook 03's choice) and PCGrad (adjusted), the study's headline comparison, with the
notebooks' protocol (patience 1, cap 20) on the synthetic world at each `--world` size, and prints per size
and comparison against Vanilla: the paired standard deviation of test NDCG@10 over seeds (percent of
Vanilla's mean), the interval's half-width, the seeds that a half-width of `--target` percent needs
(`stats.seeds_needed`, from the measured spread), the mean seconds per run and what those seeds cost in
core-minutes for the three methods.

    .venv/bin/python benchmarks/seed_spread.py --world 30000 10000 --world 60000 20000 --seeds 0 1 2 3 4 5

`--runs-dir` keeps each run's record (one folder per size), so a second call with more seeds trains only
the new ones. Whether a later stop narrows the spread: `benchmarks/patience.py` applies every patience rule to
the same runs and prints the same paired figures per rule.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import pandas as pd

from mbkit import data as mbd
from mbkit.study.grid import run_grid
from mbkit.study.methods import study_methods
from mbkit.study.stats import paired_change, seeds_needed, verdict
from mbkit.train import TrainConfig


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--world", type=int, nargs=2, action="append", metavar=("N_USERS", "N_ITEMS"),
                   help="a synthetic world's size before the filter (repeat for several; default 30000 10000)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4, 5])
    p.add_argument("--relax-factor", type=float, default=0.3)
    p.add_argument("--target", type=float, default=5.0, help="half-width of the paired 95 %% interval, percent")
    p.add_argument("--runs-dir", default=None, help="a folder for the runs' records (default: a temporary one)")
    p.add_argument("--device", default="auto")
    args = p.parse_args()

    methods = study_methods(args.relax_factor)[:3]  # Vanilla, MetaBalance, PCGrad (adjusted)
    base = TrainConfig(epochs=20, patience=1, device=args.device, progress=False)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for users, items in args.world or [(30000, 10000)]:
            config = mbd.DataConfig(data="synthetic", synthetic_size=(users, items))
            _, log = config.read()
            data = config.task_data(log, args.device)
            runs = run_grid(data, methods, args.seeds, base,
                            runs_dir=Path(args.runs_dir or tmp) / f"world_{users}x{items}")
            seconds = runs.groupby("method", sort=False)["train_seconds"].mean()
            changes = paired_change(runs, "Vanilla", "test_ndcg@10")
            words = verdict(changes, args.target)
            for (_, c), word in zip(changes.iterrows(), words):
                n = seeds_needed(c["sd_pct"], args.target)
                rows.append({"world": f"{users}x{items}", "users x items": f"{data.n_users}x{data.n_items}",
                             "method": c["method"], "seeds": int(c["n_seeds"]),
                             "Vanilla ndcg@10": c["baseline_mean"], "change %": c["change_pct"],
                             "95 % interval": f"[{c['ci_low_pct']:+.1f}, {c['ci_high_pct']:+.1f}]",
                             "reads": word,
                             "sd %": c["sd_pct"], "half-width %": (c["ci_high_pct"] - c["ci_low_pct"]) / 2,
                             f"seeds for +-{args.target:g} %": n, "s per run": float(seconds.mean()),
                             "core-min for 3 methods": n * float(seconds.sum()) / 60,
                             "best epochs": sorted(set(runs["best_epoch"]))})
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        table = pd.DataFrame(rows)
        print(table.round({c: 4 if c == "Vanilla ndcg@10" else 2 for c in table}).to_string(index=False))


if __name__ == "__main__":
    main()
