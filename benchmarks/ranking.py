"""Full-ranking evaluation at paper scale: time and pairs per second (a script, not a test).

    .venv/bin/python benchmarks/ranking.py --device cpu
    .venv/bin/python benchmarks/ranking.py --device cuda --repeats 5

Builds a randomly initialised SharedBottomNeuMF at the scale of the MetaBalance Taobao data (16,012 users x
24,608 items, 4 tasks) and random CSR splits of realistic size (61k training purchases + 400k auxiliary
positives as the ranking mask, 13k held-out purchases in each of valid and test), then times
  1. evaluate(model, data, "valid")                         (scoring + masks + top-K + metrics),
  2. model.score_items over the same user batches            (the scoring part alone),
  3. rank_metrics on one batch of precomputed scores/masks   (the metric code alone),
  4. csr_rows_mask for that batch (train + held-out)          (the dense mask construction alone).
A "pair" is one (user, item) score; the paper-scale total is 16,012 x 24,608 = 394 M pairs.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from mbkit.metrics import SCORE_BYTES_PER_BATCH, csr_rows_mask, evaluate, rank_metrics
from mbkit.model import ModelConfig, SharedBottomNeuMF
from mbkit.utils import resolve_device

N_USERS, N_ITEMS, N_TASKS = 16_012, 24_608, 4


@dataclass
class BenchData:
    """The TaskData attributes that `evaluate` uses, filled with random CSR splits."""

    n_users: int
    n_items: int
    device: torch.device
    train_csr: tuple[Tensor, Tensor]
    valid_csr: tuple[Tensor, Tensor]
    test_csr: tuple[Tensor, Tensor]

    def eval_users(self, split: str) -> Tensor:
        indptr = {"valid": self.valid_csr, "test": self.test_csr}[split][0]
        return (indptr.diff() > 0).nonzero().squeeze(1)


def random_csr(n_pairs: int, n_users: int, n_items: int, g: torch.Generator, exclude: Tensor | None = None
               ) -> tuple[tuple[Tensor, Tensor], Tensor]:
    """CSR of ~n_pairs distinct uniform (user, item) pairs avoiding the sorted keys `exclude`; also the keys."""
    keys = torch.randint(0, n_users * n_items, (n_pairs,), generator=g).unique()  # sorted: user-major
    if exclude is not None:
        pos = torch.searchsorted(exclude, keys).clamp(max=len(exclude) - 1)
        keys = keys[exclude[pos] != keys]
    users, items = keys // n_items, keys % n_items
    indptr = torch.cat([torch.zeros(1, dtype=torch.long), torch.bincount(users, minlength=n_users).cumsum(0)])
    return (indptr, items), keys


def make_data(device: torch.device, n_train: int, n_heldout: int, seed: int) -> BenchData:
    g = torch.Generator().manual_seed(seed)
    train, train_keys = random_csr(n_train, N_USERS, N_ITEMS, g)
    valid, valid_keys = random_csr(n_heldout, N_USERS, N_ITEMS, g, exclude=train_keys)
    test, _ = random_csr(n_heldout, N_USERS, N_ITEMS, g, exclude=torch.cat([train_keys, valid_keys]).sort().values)
    move = lambda csr: tuple(t.to(device) for t in csr)  # noqa: E731
    return BenchData(N_USERS, N_ITEMS, device, move(train), move(valid), move(test))


def timed(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int = 1) -> list[float]:
    """Wall-clock seconds of `repeats` calls after `warmup` calls (CUDA synchronised around each)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return times


def report(name: str, times: list[float], pairs: int) -> None:
    t = statistics.median(times)
    spread = f" (min {min(times):.3f}, max {max(times):.3f}, n={len(times)})" if len(times) > 1 else ""
    print(f"{name:<34} {t:9.3f} s{spread}  {pairs / 1e6:8.1f} M pairs  {pairs / t / 1e6:8.1f} M pairs/s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where model and data live")
    ap.add_argument("--batch-users", type=int, default=None,
                    help=f"users per ranking batch (default: {SCORE_BYTES_PER_BATCH >> 20} MiB of float32 scores)")
    ap.add_argument("--train-pairs", type=int, default=461_000, help="masked training (user, item) pairs")
    ap.add_argument("--heldout-pairs", type=int, default=13_000, help="held-out purchases per split")
    ap.add_argument("--users", type=int, default=None, help="rank only the first N valid users (default: all)")
    ap.add_argument("--repeats", type=int, default=1, help="timed repeats of the full evaluate / scoring")
    ap.add_argument("--metric-repeats", type=int, default=5, help="timed repeats of the metric-only parts")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    torch.manual_seed(args.seed)
    model = SharedBottomNeuMF(ModelConfig(N_USERS, N_ITEMS, N_TASKS)).to(device)
    data = make_data(device, args.train_pairs, args.heldout_pairs, args.seed)
    if args.users is not None:  # keep only the first N users with valid items
        keep = data.eval_users("valid")[args.users :]
        indptr, indices = data.valid_csr
        counts = indptr.diff()
        drop = torch.zeros(N_USERS, dtype=torch.bool, device=device)
        drop[keep] = True
        entry_dropped = torch.repeat_interleave(drop, counts)
        counts[drop] = 0
        data.valid_csr = (torch.cat([indptr[:1], counts.cumsum(0)]), indices[~entry_dropped])
    users = data.eval_users("valid")
    batch = args.batch_users or max(1, SCORE_BYTES_PER_BATCH // (4 * N_ITEMS))
    pairs = len(users) * N_ITEMS
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"torch {torch.__version__} on {device} ({name})")
    print(f"{N_USERS:,} users x {N_ITEMS:,} items; train mask {len(data.train_csr[1]):,} pairs; held-out "
          f"valid {len(data.valid_csr[1]):,} / test {len(data.test_csr[1]):,}; {len(users):,} valid users; "
          f"{batch} users per batch")

    result: dict[str, float] = {}

    def run_evaluate() -> None:
        result.update(evaluate(model, data, "valid", batch_users=batch))

    def run_scoring() -> None:
        for s in range(0, len(users), batch):
            model.score_items(users[s : s + batch])

    model.eval()
    model.score_items(users[:batch])  # warm-up: one batch
    eval_times = timed(run_evaluate, device, args.repeats, warmup=0)
    report("evaluate (valid, full ranking)", eval_times, pairs)
    report("  score_items alone", timed(run_scoring, device, args.repeats, warmup=0), pairs)

    b_users = users[:batch]
    scores = model.score_items(b_users)
    train_mask = csr_rows_mask(*data.train_csr, b_users, N_ITEMS)
    heldout = csr_rows_mask(*data.valid_csr, b_users, N_ITEMS)
    b_pairs = len(b_users) * N_ITEMS
    report("  rank_metrics, one batch", timed(lambda: rank_metrics(scores, train_mask, heldout), device,
                                               args.metric_repeats), b_pairs)
    report("  csr_rows_mask x2, one batch", timed(lambda: (csr_rows_mask(*data.train_csr, b_users, N_ITEMS),
                                                           csr_rows_mask(*data.valid_csr, b_users, N_ITEMS)),
                                                   device, args.metric_repeats), b_pairs)
    full = N_USERS * N_ITEMS
    rate = pairs / statistics.median(eval_times)
    print(f"evaluate over all {N_USERS:,} users ({full / 1e6:.0f} M pairs) at that rate: {full / rate:.1f} s")
    if device.type == "cuda":
        print(f"peak CUDA memory allocated: {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB")
    else:
        print(f"peak resident memory of the process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")
    print("valid metrics (random model): " + ", ".join(f"{k}={v:.5f}" for k, v in result.items()))


if __name__ == "__main__":
    main()
