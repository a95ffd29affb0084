"""The leakage-free 70/15/15 purchase split and the device-resident training samples of every task."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from mbkit.data.csr import CSR, csr_from_keys, sorted_unique
from mbkit.data.filter import behavior_codes, behaviors_present, check_ids, check_target
from mbkit.data.schema import BEHAVIORS
from mbkit.utils import resolve_device

@dataclass(repr=False)
class TaskData:
    """Index tensors of one split, on `device`; users and items are contiguous indices 0..n-1.

    The training positives are the distinct (user, item) pairs of any behavior in the training split,
    each with a 0/1 label per task (column 0 = target). `train_csr` holds every training item of a
    user (masked when ranking); `valid_csr` / `test_csr` the held-out purchases. `user_ids[u]` /
    `item_ids[i]` give the raw log ids back; `meta` says where the data came from (source, filter, split
    seed), which `mbkit.checkpoint.data_fingerprint` records with every run.
    """

    tasks: tuple[str, ...]
    target: str
    n_users: int
    n_items: int
    device: torch.device
    users: Tensor  # (P,) int64, training positives
    items: Tensor  # (P,) int64
    labels: Tensor  # (P, K) float32
    train_csr: CSR
    valid_csr: CSR
    test_csr: CSR
    user_ids: np.ndarray | None = None  # (n_users,) raw ids
    item_ids: np.ndarray | None = None  # (n_items,) raw ids
    meta: dict = field(default_factory=dict)  # source, filter and split settings (see data_fingerprint)
    _train_keys: Tensor = field(init=False)  # (nnz,) sorted user * n_items + item of train_csr

    def __post_init__(self) -> None:
        rows = torch.repeat_interleave(torch.arange(self.n_users, device=self.device),
                                       self.train_csr.row_lengths())
        self._train_keys = rows * self.n_items + self.train_csr.indices  # sorted: CSR rows, sorted cols
        full = (self.train_csr.row_lengths() >= self.n_items).nonzero()
        if len(full):
            raise ValueError(f"user index {int(full[0])} has a training interaction with every item, so no "
                             "negative can be drawn for it; filter such users out of the log")

    def describe(self) -> str:
        """Sizes only: the same text on every machine (`repr` adds the device)."""
        held = f"valid={int(self.valid_csr.indices.numel()):,}, test={int(self.test_csr.indices.numel()):,}"
        return (f"TaskData(tasks={self.tasks}, users={self.n_users:,}, items={self.n_items:,}, "
                f"train positives={int(self.users.numel()):,}, held-out {self.target}: {held})")

    def __repr__(self) -> str:
        return f"{self.describe()[:-1]}, device={self.device})"

    def _is_train(self, users: Tensor, items: Tensor) -> Tensor:
        keys = users * self.n_items + items
        if self._train_keys.numel() == 0:
            return torch.zeros_like(keys, dtype=torch.bool)
        pos = torch.searchsorted(self._train_keys, keys).clamp_(max=self._train_keys.numel() - 1)
        return self._train_keys[pos] == keys

    def sample_negatives(self, users: Tensor, generator: torch.Generator) -> Tensor:
        """One item per entry of `users`, uniform over the items that user has no training interaction with.

        Rejection sampling: draw uniformly, redraw only the draws that hit a training pair.
        """
        items = torch.randint(self.n_items, users.shape, generator=generator, device=self.device)
        redo = self._is_train(users, items).nonzero().squeeze(1)
        for _ in range(10_000):
            if redo.numel() == 0:
                return items
            items[redo] = torch.randint(self.n_items, redo.shape, generator=generator, device=self.device)
            redo = redo[self._is_train(users[redo], items[redo])]
        raise RuntimeError("negative sampling did not converge; some user interacts with nearly every item")

    def epoch_samples(self, generator: torch.Generator, num_neg: int = 4) -> tuple[Tensor, Tensor, Tensor]:
        """Positives plus `num_neg` fresh negatives per positive (labels all 0), shuffled.

        Returns users (N,), items (N,), labels (N, K) with N = P * (1 + num_neg), all on `self.device`.
        `generator` must live on the same device (`mbkit.utils.make_generator(seed, data.device)`).
        """
        if torch.device(generator.device).type != self.device.type:
            raise ValueError(f"generator is on {generator.device} but the data is on {self.device}; "
                             "use mbkit.utils.make_generator(seed, data.device)")
        if num_neg < 0:
            raise ValueError(f"num_neg={num_neg} must be >= 0")
        neg_users = self.users.repeat_interleave(num_neg)  # (P * num_neg,)
        neg_items = self.sample_negatives(neg_users, generator)
        users = torch.cat([self.users, neg_users])
        items = torch.cat([self.items, neg_items])
        labels = torch.cat([self.labels, self.labels.new_zeros(len(neg_users), len(self.tasks))])
        perm = torch.randperm(len(users), generator=generator, device=self.device)
        return users[perm], items[perm], labels[perm]

    def batches(self, batch_size: int, generator: torch.Generator,
                num_neg: int = 4) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        """One epoch of shuffled mini-batches `(users (B,), items (B,), labels (B, K))`, device slices."""
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be >= 1")
        users, items, labels = self.epoch_samples(generator, num_neg)
        for start in range(0, len(users), batch_size):
            batch = slice(start, start + batch_size)
            yield users[batch], items[batch], labels[batch]

    def to(self, device: str | torch.device) -> "TaskData":
        """The same data on another device (`"auto"` resolves as everywhere in mbkit)."""
        device = resolve_device(device)
        if device == self.device:
            return self
        move = lambda csr: CSR(csr.indptr.to(device), csr.indices.to(device))  # noqa: E731
        return TaskData(self.tasks, self.target, self.n_users, self.n_items, device, self.users.to(device),
                        self.items.to(device), self.labels.to(device), move(self.train_csr),
                        move(self.valid_csr), move(self.test_csr), self.user_ids, self.item_ids, dict(self.meta))

    def eval_users(self, split: str) -> Tensor:
        """Users with at least one held-out purchase in `split` ("valid" or "test"), ascending."""
        if split not in ("valid", "test"):
            raise ValueError(f"split={split!r}; use 'valid' or 'test'")
        csr = self.valid_csr if split == "valid" else self.test_csr
        return (csr.row_lengths() > 0).nonzero().squeeze(1)


def build_task_data(log: pd.DataFrame, *, target: str = "buy", seed: int = 0,
                    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
                    device: str | torch.device = "auto", held_out: pd.DataFrame | None = None) -> TaskData:
    """Split the distinct `target` pairs train/valid/test at random and build the training samples.

    The held-out (valid/test) target pairs are removed from every auxiliary behavior, so no held-out pair
    is a training positive. Tasks are the behaviors present, target first then `BEHAVIORS` order. The
    split depends only on `seed` (numpy), not on the device.

    `held_out` gives the split instead (a source's own): rows of `user_id, item_id, split` with split in
    train / valid / test. Its valid and test purchases are held out, and every other purchase trains; a
    validation pair that the source also trains on is held out of training, a pair in both held-out splits
    stays in test only. `meta["split"]` counts what was held out of what, so the cleaning is reported.
    """
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-9:
        raise ValueError(f"fractions={fractions} must be three non-negative numbers summing to 1")
    codes = behavior_codes(log)
    check_ids(log)
    present = behaviors_present(codes)
    check_target(present, target)
    tasks = (target, *[b for b in BEHAVIORS if b != target and b in present])
    device = resolve_device(device)

    user_ids, users = np.unique(log["user_id"].to_numpy(), return_inverse=True)
    item_ids, items = np.unique(log["item_id"].to_numpy(), return_inverse=True)
    n_users, n_items = len(user_ids), len(item_ids)
    keys = users.astype(np.int64) * n_items + items
    task_keys = {b: sorted_unique(keys[codes == BEHAVIORS.index(b)]) for b in tasks}

    bought = task_keys[target]
    if held_out is None:
        perm = np.random.default_rng(seed).permutation(len(bought))
        n_train = int(round(fractions[0] * len(bought)))
        n_valid = int(round(fractions[1] * len(bought)))
        train_buy, valid, test = (np.sort(bought[perm[:n_train]]), np.sort(bought[perm[n_train:n_train + n_valid]]),
                                  np.sort(bought[perm[n_train + n_valid:]]))
        report: dict = {"kind": "project", "seed": int(seed)}
    else:
        train_buy, valid, test, report = _given_split(held_out, user_ids, item_ids, bought, seed)
    held = np.union1d(valid, test)
    report["auxiliary_pairs_held_out"] = {b: int(np.isin(k, held, assume_unique=True).sum())
                                          for b, k in task_keys.items() if b != target}
    task_keys = {b: train_buy if b == target else k[~np.isin(k, held, assume_unique=True)]
                 for b, k in task_keys.items()}
    positives = sorted_unique(np.concatenate(list(task_keys.values())))
    labels = np.stack([np.isin(positives, task_keys[b], assume_unique=True) for b in tasks], axis=1)

    return TaskData(
        tasks=tasks, target=target, n_users=n_users, n_items=n_items, device=device,
        users=torch.from_numpy(positives // n_items).to(device),
        items=torch.from_numpy(positives % n_items).to(device),
        labels=torch.from_numpy(labels.astype(np.float32)).to(device),
        train_csr=csr_from_keys(positives, n_users, n_items, device),
        valid_csr=csr_from_keys(valid, n_users, n_items, device),
        test_csr=csr_from_keys(test, n_users, n_items, device),
        user_ids=user_ids, item_ids=item_ids,
        meta={"source": log.attrs.get("source"), "filter": log.attrs.get("filter"), "split_seed": int(seed),
              "fractions": [float(f) for f in fractions], "rows": log.attrs.get("rows"), "split": report},
    )


def _given_split(held_out: pd.DataFrame, user_ids: np.ndarray, item_ids: np.ndarray, bought: np.ndarray,
                 seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """Training, validation and test purchase keys from a given split of (raw) purchase pairs, and the counts of
    what was cleaned: pairs outside the log, validation pairs the source also trains on, pairs in both. A source
    without a validation split (Beibei's) has one drawn from its training purchases (`seed`), as large as its test."""
    unknown = sorted(set(held_out["split"]) - {"train", "valid", "test"})
    if unknown:
        raise ValueError(f"held_out names splits {unknown}; use train, valid and test")
    u = np.searchsorted(user_ids, held_out["user_id"].to_numpy())
    i = np.searchsorted(item_ids, held_out["item_id"].to_numpy())
    inside = ((u < len(user_ids)) & (i < len(item_ids)))
    inside[inside] &= (user_ids[u[inside]] == held_out["user_id"].to_numpy()[inside]) & \
                      (item_ids[i[inside]] == held_out["item_id"].to_numpy()[inside])
    keys = u.astype(np.int64) * len(item_ids) + i
    role = held_out["split"].to_numpy()
    part = {s: sorted_unique(keys[inside & (role == s)]) for s in ("train", "valid", "test")}
    part = {s: k[np.isin(k, bought, assume_unique=True)] for s, k in part.items()}  # purchases of the log only
    test = part["test"]
    drawn = 0
    if len(part["valid"]) == 0:
        pool = np.setdiff1d(bought, test, assume_unique=True)
        drawn = min(len(test), len(pool))
        part["valid"] = np.sort(np.random.default_rng(seed).choice(pool, drawn, replace=False))
    valid = part["valid"][~np.isin(part["valid"], test, assume_unique=True)]
    train = np.setdiff1d(bought, np.union1d(valid, test), assume_unique=True)
    report = {"kind": "source", "outside_the_log": int((~inside).sum()),
              "valid_also_in_source_train": int(np.isin(part["valid"], part["train"], assume_unique=True).sum()),
              "test_also_in_source_train": int(np.isin(test, part["train"], assume_unique=True).sum()),
              "valid_also_in_test": int(len(part["valid"]) - len(valid)), "valid_drawn_from_train": int(drawn)}
    return train, valid, test, report


def sample_summary(data: TaskData) -> pd.DataFrame:
    """Per task: distinct training pairs (positives labelled 1) and, for the target, held-out pairs."""
    train = data.labels.sum(0).long().tolist()
    held = {"valid": int(data.valid_csr.indices.numel()), "test": int(data.test_csr.indices.numel())}
    rows = {task: {"train": train[k], **{s: held[s] if task == data.target else 0 for s in held}}
            for k, task in enumerate(data.tasks)}
    out = pd.DataFrame.from_dict(rows, orient="index", columns=["train", "valid", "test"])
    out.index.name = "task"
    out.loc["positives (any task)"] = [int(data.users.numel()), 0, 0]
    return out.astype("int64")


class LeakageError(ValueError):
    """A held-out pair is also a training pair (or in both held-out splits)."""


def check_no_leakage(data: TaskData) -> None:
    """Raise `LeakageError` if a valid/test purchase pair is a training pair of any task, or in both splits.

    A real exception, not `assert`: the check survives `python -O`.
    """
    def keys(csr: CSR) -> Tensor:
        rows = torch.repeat_interleave(torch.arange(data.n_users, device=csr.indptr.device), csr.row_lengths())
        return rows * data.n_items + csr.indices

    train = torch.sort(data.users * data.n_items + data.items).values
    for split, csr in (("valid", data.valid_csr), ("test", data.test_csr)):
        held = keys(csr)
        if train.numel() and held.numel():
            hits = int((train[torch.searchsorted(train, held).clamp_(max=train.numel() - 1)] == held).sum())
            if hits:
                raise LeakageError(f"{hits} {split} {data.target} pairs are training positives (leakage); build "
                                   "the data with build_task_data, which removes held-out pairs from training")
        if not torch.equal(keys(data.train_csr), data._train_keys):
            raise LeakageError("train_csr does not match the training positives; rebuild the data with "
                               "build_task_data instead of editing its tensors")
    overlap = int(torch.isin(keys(data.valid_csr), keys(data.test_csr)).sum())
    if overlap:
        raise LeakageError(f"{overlap} pairs are in both valid and test; rebuild the data with build_task_data")
