"""Full-ranking NDCG / Recall / Precision @ K (binary relevance), as reported in MetaBalance (He et al., 2022).

For every evaluated user all items are ranked by the target tower's score, the user's training items are masked
out (score -inf) and the top-K list is compared with the user's held-out items:

    DCG@K       = sum_{r < K} rel_r / log2(r + 2)            (r = 0-based rank)
    IDCG@K      = sum_{r < min(K, n_heldout)} 1 / log2(r + 2)
    NDCG@K      = DCG@K / IDCG@K
    Recall@K    = hits@K / n_heldout
    Precision@K = hits@K / K

Decisions:
- Users with no held-out item get NaN per-user values and are skipped in the averages (their NDCG and Recall
  are undefined); averages are plain means over the remaining users, accumulated in float64.
- Only training items are masked. A held-out item that is also a training item of the same user (impossible
  when the data splits are disjoint) stays in the denominator of Recall/IDCG but can never be hit; `evaluate`
  warns with a count when that happens. A masked item never counts as a hit, even when fewer than K items are
  left unmasked and topk has to return masked (-inf) items.
- When evaluating "valid", the user's test items are not masked (standard); they are simply not relevant.
- `evaluate` raises ValueError when the model's scores contain NaN or ±inf (checked once, after the last batch).
- Ties in the scores are broken by `torch.topk` (implementation-defined). Real-valued logits of a float32
  model are practically tie-free; low-precision (bf16) scores are upcast to float32 before ranking but ties
  already created by rounding remain.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from mbkit.data.csr import csr_rows_mask

SPLITS: tuple[str, ...] = ("valid", "test")
SCORE_BYTES_PER_BATCH: int = 256 * 2**20  # evaluate's default budget for one batch's (U, n_items) float32 scores
METRICS: tuple[str, ...] = ("ndcg", "recall", "precision")


MASKS = ("train", "train+valid")  # what test ranking masks; "train" is the study's protocol


def metric_keys(ks: Sequence[int] = (10, 20)) -> list[str]:
    """Result keys in report order: "ndcg@10", "recall@10", "precision@10", "ndcg@20", ..."""
    return [f"{m}@{k}" for k in _check_ks(ks) for m in METRICS]


def per_user_metrics(
    scores: Tensor, train_mask: Tensor, heldout: Tensor, ks: Sequence[int] = (10, 20)
) -> dict[str, Tensor]:
    """Per-user metrics for a score matrix.

    scores (U, I) float, train_mask (U, I) bool (True = masked), heldout (U, I) bool (True = relevant).
    Returns {"ndcg@K", "recall@K", "precision@K": (U,) float64, NaN where the user has no held-out item;
    "n_heldout": (U,) int64}, all on `scores.device`. Rows are independent, so any split of the users into
    batches gives the same values.
    """
    ks = _check_ks(ks)
    _check_inputs(scores, train_mask, heldout, max(ks))
    kmax = max(ks)
    if scores.dtype not in (torch.float32, torch.float64):
        scores = scores.float()  # rank bf16/fp16 scores in float32
    masked = scores.masked_fill(train_mask, float("-inf"))  # (U, I), a copy: the input is untouched
    top = torch.topk(masked, kmax, dim=1, largest=True, sorted=True).indices  # (U, kmax)
    hit = heldout.gather(1, top) & ~train_mask.gather(1, top)  # (U, kmax); masked items never count
    hitf = hit.to(torch.float64)
    n_heldout = heldout.sum(dim=1)  # (U,)
    has = n_heldout > 0
    n = n_heldout.to(torch.float64)
    nan = torch.tensor(float("nan"), dtype=torch.float64, device=scores.device)

    discount = 1.0 / torch.log2(torch.arange(kmax, dtype=torch.float64, device=scores.device) + 2.0)  # (kmax,)
    ideal = torch.cat([discount.new_zeros(1), discount.cumsum(0)])  # ideal[m] = IDCG with m relevant items
    out: dict[str, Tensor] = {}
    for k in ks:
        hits = hitf[:, :k].sum(dim=1)  # (U,)
        dcg = (hitf[:, :k] * discount[:k]).sum(dim=1)
        idcg = ideal[n_heldout.clamp(max=k)]
        out[f"ndcg@{k}"] = torch.where(has, dcg / idcg.clamp(min=1.0), nan)  # idcg >= 1 whenever has
        out[f"recall@{k}"] = torch.where(has, hits / n.clamp(min=1.0), nan)
        out[f"precision@{k}"] = torch.where(has, hits / k, nan)
    out["n_heldout"] = n_heldout
    return out


def mean_metrics(per_user: dict[str, Tensor], ks: Sequence[int] | None = None) -> dict[str, float]:
    """Average `per_user_metrics` output over users with >= 1 held-out item (one host sync at the end)."""
    keys = metric_keys(ks) if ks is not None else [k for k in per_user if k not in ("n_heldout", "user")]
    has = per_user["n_heldout"] > 0
    n_users = int(has.sum())
    if n_users == 0:
        raise ValueError("no user has a held-out item, so the metrics are undefined; pass users with held-out items")
    sums = torch.stack([per_user[key].to(torch.float64)[has].sum() for key in keys])
    return dict(zip(keys, (sums / n_users).tolist()))


def rank_metrics(
    scores: Tensor, train_mask: Tensor, heldout: Tensor, ks: Sequence[int] = (10, 20)
) -> dict[str, float]:
    """NDCG@K, Recall@K and Precision@K averaged over users with >= 1 held-out item.

    scores (U, I); train_mask (U, I) bool, masked to -inf before ranking; heldout (U, I) bool.
    Keys "ndcg@10", "recall@10", "precision@10", "ndcg@20", ... (see the module docstring for the formulas).
    """
    return mean_metrics(per_user_metrics(scores, train_mask, heldout, ks), ks)


def evaluate_per_user(
    model: Any,
    data: Any,
    split: str = "valid",
    ks: Sequence[int] = (10, 20),
    batch_users: int | None = None,
    mask: str = "train",
) -> dict[str, Tensor]:
    """Per-user metrics of `model` on `data.eval_users(split)`, in batches of users on the model's device.

    Returns {"user": (n,) int64, "ndcg@K", ..., "n_heldout"} on the model's device, rows in eval_users order.
    `batch_users=None` picks the largest batch whose float32 scores fit in SCORE_BYTES_PER_BATCH (256 MiB).
    `mask`: "train" masks each user's training items (the study's protocol); "train+valid" also masks the
    user's validation items when ranking the test split.
    Uses only the contract attributes: model.score_items(users) -> (U, n_items), data.n_items,
    data.train_csr, data.{split}_csr, data.eval_users(split) (and data.device for a parameter-free model).
    """
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is not one of {SPLITS}; use 'valid' for model selection, 'test' to report")
    if mask not in MASKS:
        raise ValueError(f"mask={mask!r}; use 'train' (training items, the study's protocol) or 'train+valid'")
    ks = _check_ks(ks)
    n_items = int(data.n_items)
    if max(ks) > n_items:
        raise ValueError(f"K={max(ks)} exceeds the number of items ({n_items}); pass smaller ks")
    if batch_users is None:
        batch_users = max(1, SCORE_BYTES_PER_BATCH // (4 * n_items))
    if batch_users < 1:
        raise ValueError(f"batch_users={batch_users} must be >= 1 (or None for the memory-based default)")

    device = _model_device(model, data)
    train_ptr, train_idx = (t.to(device) for t in data.train_csr)
    held_ptr, held_idx = (t.to(device) for t in getattr(data, f"{split}_csr"))
    also = [t.to(device) for t in data.valid_csr] if mask == "train+valid" and split == "test" else None
    users = data.eval_users(split).to(device=device, dtype=torch.long)

    parts: list[dict[str, Tensor]] = []
    overlap = torch.zeros((), dtype=torch.long, device=device)
    bad_scores = torch.zeros((), dtype=torch.bool, device=device)
    was_training = getattr(model, "training", None)
    if was_training is not None:
        model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(users), batch_users):
                batch = users[start : start + batch_users]  # (U,)
                scores = model.score_items(batch)  # (U, n_items)
                if scores.shape != (len(batch), n_items):
                    raise ValueError(
                        f"model.score_items returned shape {tuple(scores.shape)}, expected ({len(batch)}, {n_items})"
                    )
                train_mask = csr_rows_mask(train_ptr, train_idx, batch, n_items)  # (U, n_items)
                if also is not None:
                    train_mask |= csr_rows_mask(also[0], also[1], batch, n_items)
                heldout = csr_rows_mask(held_ptr, held_idx, batch, n_items)
                overlap += (train_mask & heldout).sum()
                bad_scores |= ~torch.isfinite(scores).all()
                part = per_user_metrics(scores, train_mask, heldout, ks)
                part["user"] = batch
                parts.append(part)
    finally:
        if was_training is not None:
            model.train(was_training)

    if not parts:
        raise ValueError(f"data.eval_users({split!r}) is empty: no user has a held-out item in that split")
    if bool(bad_scores):
        raise ValueError(f"model.score_items produced NaN or infinite scores on split {split!r}; the model has "
                         "diverged: lower the learning rate or check the input data")
    if (n_overlap := int(overlap)) > 0:
        warnings.warn(
            f"{n_overlap} held-out {split} items are also training items of the same user; they are masked and "
            "can never be hit (check the data split)",
            stacklevel=2,
        )
    return {key: torch.cat([p[key] for p in parts]) for key in parts[0]}


def evaluate(
    model: Any,
    data: Any,
    split: str = "valid",
    ks: Sequence[int] = (10, 20),
    batch_users: int | None = None,
    mask: str = "train",
) -> dict[str, float]:
    """Full-ranking NDCG/Recall/Precision@K of `model` on the "valid" or "test" split of `data` (a TaskData).

    Ranks all items by the target tower (`model.score_items`), masks each user's training items (train_csr)
    and compares with the held-out items of the split; the model is put in eval mode and its mode restored.
    Results do not depend on `batch_users` (per-user values are concatenated, then averaged once).
    `mask="train+valid"` also masks the validation items when ranking the test split.
    """
    return mean_metrics(evaluate_per_user(model, data, split, ks, batch_users, mask), ks)


def _check_ks(ks: Sequence[int]) -> list[int]:
    if isinstance(ks, int):
        ks = (ks,)
    out = list(dict.fromkeys(int(k) for k in ks))
    if not out or any(k < 1 for k in out) or any(int(k) != k for k in ks):
        raise ValueError(f"ks={ks!r} must be a non-empty sequence of positive integers, e.g. (10, 20)")
    return out


def _check_inputs(scores: Tensor, train_mask: Tensor, heldout: Tensor, kmax: int) -> None:
    if scores.dim() != 2:
        raise ValueError(f"scores must be (users, items), got shape {tuple(scores.shape)}")
    for name, t in (("train_mask", train_mask), ("heldout", heldout)):
        if t.shape != scores.shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)} but scores has {tuple(scores.shape)}; they must match")
        if t.dtype != torch.bool:
            raise ValueError(f"{name} must be a bool tensor, got {t.dtype}; pass e.g. {name}.bool()")
    if kmax > scores.shape[1]:
        raise ValueError(f"K={kmax} exceeds the number of items ({scores.shape[1]}); pass smaller ks")
    if not torch.is_floating_point(scores):
        raise ValueError(f"scores must be floating point, got {scores.dtype}")


def _model_device(model: Any, data: Any) -> torch.device:
    params = getattr(model, "parameters", None)
    if callable(params):
        for p in params():
            return p.device
    return torch.device(getattr(data, "device", "cpu"))

