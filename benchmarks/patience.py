"""How does early stopping change the result and its seed spread? Trains each method up to `--epochs`
epochs on the built-in synthetic log, one epoch at a time (each continuation resumes the checkpoint, which
reproduces the uninterrupted run), so the test NDCG@10 that a run stopped after any epoch would report
(its best validation epoch so far) is known. Then, for every patience rule, prints the epoch each seed
stops at, the best epoch it reports and the test NDCG@10 mean ± std over seeds; with Vanilla among the
methods, also each method's change over Vanilla paired by seed under every rule (`stats.paired_change`: the
95 % interval, the paired sd and the smallest detectable change, in percent of Vanilla's mean) and the seeds
a half-width of `--target` percent needs (`stats.seeds_needed`).

    .venv/bin/python benchmarks/patience.py --epochs 12 --seeds 0 1 2 3 4
    .venv/bin/python benchmarks/patience.py --epochs 20 --methods vanilla metabalance pcgrad_adjusted
    .venv/bin/python benchmarks/patience.py --world 15000 5000 --methods vanilla metabalance dwa mgda cagrad

`--world N_USERS N_ITEMS` trains on the synthetic world at that size (notebooks 05 and 06 use 15000 5000);
`--methods` picks balancers by registry name (MetaBalance at `--relax-factor`, default 0.3, notebook 03's
choice), with their default arguments.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from mbkit import data as mbd
from mbkit.balancers import make
from mbkit.study.stats import paired_change, seeds_needed
from mbkit.train import TrainConfig, fit


def methods(names: list[str], relax_factor: float) -> dict[str, tuple[str, dict]]:
    """Label -> (registry name, arguments): MetaBalance at `relax_factor`, the others as made."""
    kwargs = {n: ({"relax_factor": relax_factor} if n == "metabalance" else {}) for n in names}
    return {str(make(n, **kwargs[n])): (n, kwargs[n]) for n in names}


def stop_epoch(valid: list[float], patience: int | None) -> int:
    """The epoch after which `fit` stops with this patience (its rule: a strict improvement resets)."""
    best, stale = -np.inf, 0
    for epoch, score in enumerate(valid, start=1):
        best, stale = (score, 0) if score > best else (best, stale + 1)
        if patience is not None and stale >= patience:
            return epoch
    return len(valid)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--patience", type=int, nargs="+", default=[1, 2, 3, 5])
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="auto")
    p.add_argument("--world", type=int, nargs=2, default=None, metavar=("N_USERS", "N_ITEMS"))
    p.add_argument("--methods", nargs="+", default=["vanilla", "metabalance"])
    p.add_argument("--relax-factor", type=float, default=0.3)
    p.add_argument("--target", type=float, default=5.0, help="half-width of the paired 95 %% interval, percent")
    args = p.parse_args()

    _, log = mbd.load_filtered("synthetic", synthetic_size=tuple(args.world) if args.world else None)
    data = mbd.build_task_data(log, seed=0, device=args.device)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, (balancer, kwargs) in methods(args.methods, args.relax_factor).items():
            for seed in args.seeds:
                t0 = time.perf_counter()
                folder = Path(tmp) / f"{balancer}_{seed}"
                after = []  # (best epoch, test NDCG@10) a run stopped after epoch k reports
                for k in range(1, args.epochs + 1):
                    cfg = TrainConfig(balancer=balancer, balancer_kwargs=kwargs, epochs=k, seed=seed,
                                      batch_size=args.batch_size, device=args.device, progress=False)
                    r = fit(data, cfg, checkpoint_dir=folder, resume=folder / "last.pt" if k > 1 else None)
                    after.append((r.best_epoch, r.test["ndcg@10"]))
                valid = r.history["valid_ndcg@10"].tolist()
                for rule in [*args.patience, None]:
                    stop = stop_epoch(valid, rule)
                    rows.append({"method": label, "seed": seed, "patience": "none" if rule is None else rule,
                                 "stopped after": stop, "best epoch": after[stop - 1][0],
                                 "test ndcg@10": after[stop - 1][1]})
                print(f"{label} seed {seed}: validation NDCG@10 by epoch {np.round(valid, 4).tolist()} "
                      f"({time.perf_counter() - t0:.0f} s)", flush=True)
    runs = pd.DataFrame(rows)
    pd.set_option("display.width", 200)
    g = runs.groupby(["method", "patience"], sort=False)
    table = pd.DataFrame({
        "stopped after (per seed)": g["stopped after"].agg(list),
        "best epoch (per seed)": g["best epoch"].agg(list),
        "test NDCG@10 mean": g["test ndcg@10"].mean(),
        "std over seeds": g["test ndcg@10"].std(ddof=1),
    })
    print(f"\nrules applied to the same runs (cap {args.epochs} epochs; 'none' = every epoch, best kept):")
    print(table.round(4).to_string())
    if "Vanilla" in set(runs["method"]) and runs["method"].nunique() > 1 and len(args.seeds) > 1:
        changes = paired_change(runs.rename(columns={"test ndcg@10": "test_ndcg@10"}), "Vanilla", "test_ndcg@10",
                                by=["patience"])
        changes[f"seeds for +-{args.target:g} %"] = [seeds_needed(sd, args.target) for sd in changes["sd_pct"]]
        cols = ["patience", "method", "n_seeds", "change_pct", "ci_low_pct", "ci_high_pct", "sd_pct",
                "detectable_pct", f"seeds for +-{args.target:g} %"]
        print("\nchange of test NDCG@10 over Vanilla, paired by seed, percent of Vanilla's mean, per rule:")
        print(changes[cols].round(2).to_string(index=False))


if __name__ == "__main__":
    main()
