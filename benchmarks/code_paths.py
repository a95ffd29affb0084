"""Does one training run give the same bits under different CPU code paths, and what does pinning cost?

Runs the same short training (default synthetic log, Vanilla and MetaBalance) in a fresh subprocess per
environment: the host's default kernels, the pinned x86 paths that `make reproduce` / `make test` use
(MKL_CBWR=AVX2, ATEN_CPU_CAPABILITY=avx2, ONEDNN_MAX_CPU_ISA=AVX2, 2 threads), and paths that imitate
other hosts (ATen without vectorisation, MKL's SSE-compatible path). Prints a hash of the trained weights,
validation NDCG@10 to 6 digits and the training time; runs whose hashes agree are bit-identical.

    python benchmarks/code_paths.py --epochs 1 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

PATHS: dict[str, dict[str, str]] = {
    "host default": {},
    "pinned (make)": {"MKL_CBWR": "AVX2", "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2",
                      "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"},
    "pinned, 1 thread": {"MKL_CBWR": "AVX2", "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2",
                         "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"},
    "ATen default (no SIMD)": {"ATEN_CPU_CAPABILITY": "default"},
    "MKL COMPATIBLE": {"MKL_CBWR": "COMPATIBLE"},
    "CI second path": {"MKL_CBWR": "COMPATIBLE", "ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41"},
}

CHILD = """
import hashlib, json, time, torch
from mbkit import data as mbd
from mbkit.train import TrainConfig, fit
_, log = mbd.load_filtered("synthetic")
d = mbd.build_task_data(log, seed=0, device="cpu")
out = {}
for name, kw in (("vanilla", {}), ("metabalance", {"relax_factor": 0.7})):
    res = fit(d, TrainConfig(epochs=EPOCHS, balancer=name, balancer_kwargs=kw, device="cpu", progress=False))
    h = hashlib.sha256()
    for k, v in sorted(res.model.state_dict().items()):
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    out[name] = {"hash": h.hexdigest()[:12], "ndcg10": res.valid["ndcg@10"], "seconds": res.train_seconds}
print("RESULT " + json.dumps(out))
"""


def run(env: dict[str, str], epochs: int) -> dict:
    full = {**os.environ, **env}
    proc = subprocess.run([sys.executable, "-c", CHILD.replace("EPOCHS", str(epochs))], env=full,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"the run under {env} failed:\n{proc.stderr[-2000:]}")
    line = next(l for l in proc.stdout.splitlines() if l.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=2, help="runs per path (same path twice shows run-to-run identity)")
    ap.add_argument("--paths", nargs="*", default=list(PATHS), help=f"subset of {list(PATHS)}")
    args = ap.parse_args()
    print(f"{'path':24s} {'run':>3s}  {'vanilla hash':12s} {'N@10':>8s} {'s':>6s}  {'metabalance hash':16s} {'N@10':>8s} {'s':>6s}")
    base_time = None
    for name in args.paths:
        for rep in range(args.repeats):
            r = run(PATHS[name], args.epochs)
            v, m = r["vanilla"], r["metabalance"]
            print(f"{name:24s} {rep:3d}  {v['hash']:12s} {v['ndcg10']:8.6f} {v['seconds']:6.1f}  "
                  f"{m['hash']:16s} {m['ndcg10']:8.6f} {m['seconds']:6.1f}", flush=True)
            total = v["seconds"] + m["seconds"]
            if name == "host default" and base_time is None:
                base_time = total
            elif base_time:
                print(f"{'':24s}      training time / host default: {total / base_time:.2f}x", flush=True)


if __name__ == "__main__":
    main()
