"""Time the bounded-memory read + filter (`mbkit.data.load_filtered`) on a generated log of N rows.

    python benchmarks/read_filter.py --rows 10_000_000
    python benchmarks/read_filter.py --rows 100_000_000        # ~3.6 GB on disk, deleted afterwards

The log is written in the published UserBehavior.csv format with the real log's id ranges
(1,018,011 users; items and categories up to ~5.16 M) and behavior shares; user activity, purchase
propensity and item popularity are heavy-tailed so that the 10/10 filter keeps a small subset, as on the
real file. The read + filter runs in a fresh subprocess, so its peak RSS (`ru_maxrss` of children) is its
own. A script, not a test: it prints; it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np
import polars as pl

N_USERS, N_ITEMS, N_CATEGORIES = 1_018_011, 5_163_070, 9_439  # the real log's id ranges
SHARE = {"buy": 0.0201, "fav": 0.0289, "cart": 0.0553}  # rest pv (Table 1 of the thesis)


def _powerlaw_rank(rng: np.random.Generator, n: int, size: int, exponent: float) -> np.ndarray:
    """Ranks 0..size-1 with P(rank r) ~ (r + 1) ** -exponent (continuous inverse CDF)."""
    u = rng.random(n)
    if abs(exponent - 1.0) < 1e-9:
        r = np.exp(u * np.log(size + 1))
    else:
        r = (((size + 1) ** (1 - exponent) - 1) * u + 1) ** (1 / (1 - exponent))
    return np.minimum(r.astype(np.int64), size) - 1


def generate(path: str, rows: int, seed: int = 0, chunk: int = 5_000_000) -> None:
    """Write `rows` rows of the published format to `path` (numpy + polars, chunked)."""
    rng = np.random.default_rng(seed)
    user_id = rng.permutation(N_USERS).astype(np.int32) + 1
    item_id = rng.permutation(N_ITEMS).astype(np.int32) + 1
    category = rng.choice(np.arange(1, N_ITEMS + 1, dtype=np.int32), N_CATEGORIES, replace=False)
    item_category = category[rng.integers(0, N_CATEGORIES, N_ITEMS)]
    propensity = np.exp(0.8 * rng.standard_normal(N_USERS) - 0.32)  # per-user purchase multiplier, mean 1
    behaviors = pl.Enum(["pv", "cart", "fav", "buy"])
    with open(path, "wb") as f:
        for start in range(0, rows, chunk):
            n = min(chunk, rows - start)
            user = _powerlaw_rank(rng, n, N_USERS, 0.45)
            p_buy = np.minimum(SHARE["buy"] * propensity[user], 0.5)
            r = rng.random(n)
            code = np.where(r < p_buy, 3, np.where(r < p_buy + SHARE["fav"], 2,
                                                   np.where(r < p_buy + SHARE["fav"] + SHARE["cart"], 1, 0)))
            item = np.where(code == 3, _powerlaw_rank(rng, n, N_ITEMS, 0.8), _powerlaw_rank(rng, n, N_ITEMS, 0.6))
            pl.DataFrame({
                "user_id": user_id[user], "item_id": item_id[item], "category_id": item_category[item],
                "behavior": pl.Series(code.astype(np.uint8)).replace_strict([0, 1, 2, 3], behaviors.categories,
                                                                            return_dtype=behaviors),
                "timestamp": rng.integers(1_511_539_200, 1_512_316_800, n),
            }).write_csv(f, include_header=False)


def measure(path: str) -> dict:
    """Run in the child process: read + filter with the default settings."""
    from mbkit.data import load_filtered

    start = time.perf_counter()
    stats, filtered = load_filtered(path)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "stats": stats.to_dict(orient="index"), "filtered_rows": len(filtered),
            "filtered_mb": round(filtered.memory_usage(deep=True).sum() / 2**20, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=lambda s: int(s.replace("_", "")), default=10_000_000)
    parser.add_argument("--dir", default=None, help="where to write the log (default: a temporary directory)")
    parser.add_argument("--keep", action="store_true", help="keep the generated file")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--_measure", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._measure:
        print(json.dumps(measure(args._measure)))
        return

    tmp = tempfile.mkdtemp(prefix="mbkit-bench-", dir=args.dir)
    path = os.path.join(tmp, "UserBehavior.csv")
    try:
        start = time.perf_counter()
        generate(path, args.rows, args.seed)
        print(f"generated {args.rows:,} rows, {os.path.getsize(path) / 2**30:.2f} GiB in "
              f"{time.perf_counter() - start:.1f} s: {path}")
        child = subprocess.run([sys.executable, __file__, "--_measure", path], capture_output=True, text=True)
        if child.returncode:
            sys.exit(f"read + filter failed:\n{child.stderr}")
        result = json.loads(child.stdout.strip().splitlines()[-1])
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20  # KiB -> GiB (Linux)
        for name, row in result["stats"].items():
            print(f"{name:>9}: " + ", ".join(f"{k} {v:,}" for k, v in row.items()))
        print(f"read + filter (load_filtered, streaming): {result['seconds']:.1f} s, peak RSS {peak:.2f} GiB, "
              f"filtered log {result['filtered_rows']:,} rows / {result['filtered_mb']} MiB in pandas; "
              f"{os.cpu_count()} CPUs, polars {pl.__version__}")
    finally:
        if not args.keep:
            if os.path.exists(path):
                os.remove(path)
            os.rmdir(tmp)


if __name__ == "__main__":
    main()
