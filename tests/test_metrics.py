"""Full-ranking metrics against a slow, obviously-correct pure-Python implementation."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pytest
import torch
from torch import Tensor, nn

from mbkit import metrics
from mbkit.metrics import (
    csr_rows_mask,
    evaluate,
    evaluate_per_user,
    metric_keys,
    per_user_metrics,
    rank_metrics,
)

KS = (10, 20)
# random_problem() puts a few held-out items into the train mask on purpose; evaluate() warns about them.
pytestmark = pytest.mark.filterwarnings("ignore:.*also training items:UserWarning")


# ----------------------------------------------------------------------------- slow reference
def slow_per_user(scores: list[list[float]], train: list[list[bool]], held: list[list[bool]], ks) -> list[dict | None]:
    """One dict per user (None when the user has no held-out item), by sorting Python lists."""
    out: list[dict | None] = []
    for s, t, h in zip(scores, train, held):
        relevant = {i for i, x in enumerate(h) if x}
        if not relevant:
            out.append(None)
            continue
        ranked = sorted((i for i, masked in enumerate(t) if not masked), key=lambda i: -s[i])
        row = {}
        for k in ks:
            top = ranked[:k]
            hits = sum(1 for i in top if i in relevant)
            dcg = sum(1.0 / math.log2(r + 2) for r, i in enumerate(top) if i in relevant)
            idcg = sum(1.0 / math.log2(r + 2) for r in range(min(k, len(relevant))))
            row[f"ndcg@{k}"] = dcg / idcg
            row[f"recall@{k}"] = hits / len(relevant)
            row[f"precision@{k}"] = hits / k
        out.append(row)
    return out


def slow_metrics(scores: Tensor, train: Tensor, held: Tensor, ks=KS) -> dict[str, float]:
    rows = [r for r in slow_per_user(scores.tolist(), train.tolist(), held.tolist(), ks) if r is not None]
    return {key: sum(r[key] for r in rows) / len(rows) for key in rows[0]}


# ----------------------------------------------------------------------------- random problems
def random_problem(seed: int, n_users: int = 48, n_items: int = 70) -> tuple[Tensor, Tensor, Tensor]:
    """Tie-free scores (a random permutation per user), a random train mask and held-out items.

    Held-out counts cover 0 (skipped), fewer than 10, between 10 and 20 and more than 20; held-out items are
    disjoint from training items except for a few users whose top-scored item is both (must never count);
    one user has fewer than 20 unmasked items.
    """
    g = torch.Generator().manual_seed(seed)
    scores = torch.stack([torch.randperm(n_items, generator=g) for _ in range(n_users)]).double() / n_items - 0.5
    train = torch.rand(n_users, n_items, generator=g) < 0.25
    held = torch.zeros(n_users, n_items, dtype=torch.bool)
    counts = [0, 0, 1, 2, 3, 5, 9, 10, 11, 15, 20, 21, 30] * n_users
    for u in range(n_users):
        free = (~train[u]).nonzero().squeeze(1)
        n = min(counts[(u + seed) % 13], len(free))
        held[u, free[torch.randperm(len(free), generator=g)[:n]]] = True
    for u in (3, 7):  # a masked held-out item with the top score
        top = scores[u].argmax()
        train[u, top] = held[u, top] = True
    train[5] = True  # only 12 unmasked items, 4 of them held out
    train[5, :12] = False
    held[5] = False
    held[5, [0, 4, 8, 11]] = True
    return scores, train, held


def dense_to_csr(mask: Tensor) -> tuple[Tensor, Tensor]:
    indptr = torch.cat([torch.zeros(1, dtype=torch.long), mask.sum(1).cumsum(0)])
    rows = [r.nonzero().squeeze(1)[torch.randperm(int(r.sum()))] for r in mask]  # unsorted within a row
    indices = torch.cat(rows) if rows else torch.zeros(0, dtype=torch.long)
    return indptr, indices


@dataclass
class StubData:
    """The TaskData attributes that `evaluate` relies on."""

    train: Tensor
    valid: Tensor
    test: Tensor
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def __post_init__(self) -> None:
        self.n_users, self.n_items = self.train.shape
        self.train_csr = dense_to_csr(self.train)
        self.valid_csr = dense_to_csr(self.valid)
        self.test_csr = dense_to_csr(self.test)

    def eval_users(self, split: str) -> Tensor:
        indptr = {"valid": self.valid_csr, "test": self.test_csr}[split][0]
        return ((indptr[1:] - indptr[:-1]) > 0).nonzero().squeeze(1)


class StubModel(nn.Module):
    """score_items returns rows of a fixed matrix and records the mode it was called in."""

    def __init__(self, scores: Tensor) -> None:
        super().__init__()
        self.table = nn.Parameter(scores.clone(), requires_grad=False)
        self.modes: list[bool] = []

    def score_items(self, users: Tensor) -> Tensor:
        self.modes.append(self.training)
        return self.table[users]  # a view into the table: evaluate must not write into it


def stub(seed: int = 0) -> tuple[StubModel, StubData, Tensor]:
    scores, train, held = random_problem(seed)
    g = torch.Generator().manual_seed(seed + 100)
    test = (torch.rand(held.shape, generator=g) < 0.1) & ~train & ~held
    test[::4] = False  # users without test items
    return StubModel(scores), StubData(train, held, test), scores


def assert_close_dict(a: dict[str, float], b: dict[str, float]) -> None:
    assert list(a) == list(b)
    for key in a:
        assert a[key] == pytest.approx(b[key], rel=1e-12, abs=1e-12), key


# ----------------------------------------------------------------------------- rank_metrics
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("ks", [(10, 20), (1, 5, 70)])
def test_rank_metrics_matches_slow_reference(seed: int, ks: tuple[int, ...]) -> None:
    scores, train, held = random_problem(seed)
    assert_close_dict(rank_metrics(scores, train, held, ks), slow_metrics(scores, train, held, ks))


def test_per_user_matches_slow_reference_and_skips_users_without_heldout() -> None:
    scores, train, held = random_problem(4)
    per = per_user_metrics(scores, train, held, KS)
    slow = slow_per_user(scores.tolist(), train.tolist(), held.tolist(), KS)
    assert torch.equal(per["n_heldout"], held.sum(1))
    assert any(r is None for r in slow) and any(r is not None for r in slow)
    for u, row in enumerate(slow):
        for key in metric_keys(KS):
            if row is None:
                assert math.isnan(per[key][u].item())
            else:
                assert per[key][u].item() == pytest.approx(row[key], rel=1e-12, abs=1e-12)


def test_keys_are_in_report_order() -> None:
    scores, train, held = random_problem(0)
    assert list(rank_metrics(scores, train, held)) == [
        "ndcg@10", "recall@10", "precision@10", "ndcg@20", "recall@20", "precision@20",
    ]


def test_hand_computed_example() -> None:
    # 1 user, 6 items ranked 0..5 by score; item 0 (top) is masked; held-out = {0, 2, 5}.
    scores = torch.tensor([[6.0, 5.0, 4.0, 3.0, 2.0, 1.0]])
    train = torch.tensor([[True, False, False, False, False, False]])
    held = torch.tensor([[True, False, True, False, False, True]])
    m = rank_metrics(scores, train, held, ks=(2, 5))
    # Unmasked ranking: 1, 2, 3, 4, 5 -> hits at ranks 1 (item 2) and 4 (item 5); item 0 never counts.
    assert m["precision@2"] == pytest.approx(1 / 2)
    assert m["recall@2"] == pytest.approx(1 / 3)
    assert m["ndcg@2"] == pytest.approx((1 / math.log2(3)) / (1 + 1 / math.log2(3)))
    assert m["precision@5"] == pytest.approx(2 / 5)
    assert m["recall@5"] == pytest.approx(2 / 3)
    assert m["ndcg@5"] == pytest.approx((1 / math.log2(3) + 1 / math.log2(6)) / (1 + 1 / math.log2(3) + 0.5))


def test_masked_item_never_counts_even_with_top_score() -> None:
    scores = torch.tensor([[9.0, 1.0, 2.0, 3.0], [9.0, 1.0, 2.0, 3.0]])
    held = torch.tensor([[True, False, False, False], [True, False, False, True]])
    train = torch.tensor([[True, False, False, False], [True, True, True, True]])  # user 1: everything masked
    m = rank_metrics(scores, train, held, ks=(1, 4))
    assert m == {key: 0.0 for key in metric_keys((1, 4))}
    unmasked = rank_metrics(scores, torch.zeros_like(train), held, ks=(1,))
    assert unmasked["precision@1"] == 1.0  # sanity: the same item counts once it is not masked


def test_perfect_ranking_gives_one_where_heldout_fits_in_k() -> None:
    scores, train, held = random_problem(5)
    perfect = scores + 10.0 * held  # every held-out item above every other item
    train = train & ~held
    per = per_user_metrics(perfect, train, held, KS)
    n = held.sum(1)
    for k in KS:
        fits = (n > 0) & (n <= k)
        assert fits.any() and (n > k).any()
        assert torch.allclose(per[f"ndcg@{k}"][fits], torch.ones(int(fits.sum()), dtype=torch.float64))
        assert torch.allclose(per[f"recall@{k}"][fits], torch.ones(int(fits.sum()), dtype=torch.float64))
        assert torch.allclose(per[f"precision@{k}"][fits], n[fits].double() / k)
        over = n > k  # more held-out than K: every slot is a hit
        assert torch.allclose(per[f"ndcg@{k}"][over], torch.ones(int(over.sum()), dtype=torch.float64))
        assert torch.allclose(per[f"precision@{k}"][over], torch.ones(int(over.sum()), dtype=torch.float64))
        assert torch.allclose(per[f"recall@{k}"][over], k / n[over].double())


def test_users_without_heldout_do_not_change_the_average() -> None:
    scores, train, held = random_problem(6)
    keep = held.any(1)
    assert (~keep).any()
    assert_close_dict(rank_metrics(scores, train, held), rank_metrics(scores[keep], train[keep], held[keep]))


def test_inputs_are_not_modified_and_low_precision_scores_are_accepted() -> None:
    scores, train, held = random_problem(7)
    before = scores.clone()
    rank_metrics(scores, train, held)
    assert torch.equal(scores, before)
    s32 = scores.float()  # 1/70 steps are exactly representable in bf16 too: no new ties
    assert_close_dict(rank_metrics(s32.bfloat16(), train, held), rank_metrics(s32, train, held))


def test_rank_metrics_rejects_bad_inputs() -> None:
    scores, train, held = random_problem(0)
    with pytest.raises(ValueError, match="shape"):
        rank_metrics(scores, train[:, :-1], held)
    with pytest.raises(ValueError, match="bool"):
        rank_metrics(scores, train.float(), held)
    with pytest.raises(ValueError, match="exceeds the number of items"):
        rank_metrics(scores, train, held, ks=(10, 71))
    with pytest.raises(ValueError, match="positive integers"):
        rank_metrics(scores, train, held, ks=(0,))
    with pytest.raises(ValueError, match="no user has a held-out item"):
        rank_metrics(scores, train, torch.zeros_like(held))


def test_csr_rows_mask_matches_dense() -> None:
    _, train, _ = random_problem(8)
    indptr, indices = dense_to_csr(train)
    rows = torch.tensor([5, 0, 5, 47, 12])
    assert torch.equal(csr_rows_mask(indptr, indices, rows, train.shape[1]), train[rows])
    empty = dense_to_csr(torch.zeros_like(train))
    assert not csr_rows_mask(*empty, rows, train.shape[1]).any()


# ----------------------------------------------------------------------------- evaluate
@pytest.mark.parametrize("split", ["valid", "test"])
def test_evaluate_equals_rank_metrics_and_slow_reference(split: str) -> None:
    model, data, scores = stub(0)
    held = data.valid if split == "valid" else data.test
    users = data.eval_users(split)
    got = evaluate(model, data, split, ks=KS, batch_users=7)
    assert_close_dict(got, rank_metrics(scores[users], data.train[users], held[users], KS))
    assert_close_dict(got, slow_metrics(scores, data.train, held, KS))


def test_evaluate_is_batch_invariant(monkeypatch: pytest.MonkeyPatch) -> None:
    model, data, _ = stub(1)
    n_eval = len(data.eval_users("valid"))
    ref = evaluate_per_user(model, data, "valid", KS, batch_users=None)
    results = []
    for b in (1, 3, 7, 1000):
        model.modes.clear()
        results.append(evaluate(model, data, "valid", KS, batch_users=b))
        assert len(model.modes) == math.ceil(n_eval / b)  # one score_items call per batch
    monkeypatch.setattr(metrics, "SCORE_BYTES_PER_BATCH", 4 * data.n_items * 5)  # default: 5 users a batch
    model.modes.clear()
    results.append(evaluate(model, data, "valid", KS))
    assert len(model.modes) == math.ceil(n_eval / 5)
    assert all(r == results[0] for r in results)  # exactly equal, not approximately
    for b in (1, 5):
        per = evaluate_per_user(model, data, "valid", KS, batch_users=b)
        assert all(torch.equal(per[key], ref[key]) for key in ref)
    assert torch.equal(ref["user"], data.eval_users("valid"))


def test_evaluate_uses_eval_mode_restores_it_and_leaves_scores_alone() -> None:
    model, data, scores = stub(2)
    model.train()
    evaluate(model, data, "test", batch_users=10)
    assert model.modes and not any(model.modes) and model.training
    model.eval()
    evaluate(model, data, "test")
    assert not model.training
    assert torch.equal(model.table, scores)


def test_evaluate_rejects_bad_split_nan_scores_and_warns_on_overlap() -> None:
    model, data, _ = stub(3)
    with pytest.raises(ValueError, match="split"):
        evaluate(model, data, "train")
    with pytest.raises(ValueError, match="NaN"):
        with torch.no_grad():
            model.table[2, 5] = float("nan")
        evaluate(model, data, "valid")
    for bad in (float("inf"), float("-inf")):
        model, data, _ = stub(3)
        with torch.no_grad():
            model.table[2, 5] = bad
        with pytest.raises(ValueError, match="NaN or infinite scores on split 'valid'"):
            evaluate(model, data, "valid")
    model, data, _ = stub(3)
    with pytest.warns(UserWarning, match="also training items"):  # users 3 and 7 (see random_problem)
        evaluate(model, data, "valid")


class ParameterFreeModel:
    """Not an nn.Module: evaluate falls back to data.device and needs no train()/eval()."""

    def __init__(self, scores: Tensor) -> None:
        self.scores = scores

    def score_items(self, users: Tensor) -> Tensor:
        return self.scores[users]


def test_evaluate_accepts_a_plain_object_with_score_items() -> None:
    model, data, scores = stub(4)
    assert_close_dict(evaluate(ParameterFreeModel(scores), data, "test"), evaluate(model, data, "test"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_evaluate_on_cuda_matches_cpu() -> None:
    model, data, _ = stub(5)
    cpu = evaluate(model, data, "valid")
    assert_close_dict(evaluate(model.cuda(), data, "valid", batch_users=9), cpu)  # CSR moved to the model's device


def test_evaluate_with_the_real_model_and_task_data() -> None:
    """Contract check with mbkit.data.TaskData and SharedBottomNeuMF on a tiny random log."""
    import numpy as np
    import pandas as pd

    from mbkit.data import BEHAVIORS, build_task_data
    from mbkit.model import ModelConfig, SharedBottomNeuMF

    rng = np.random.default_rng(0)
    n = 6000
    log = pd.DataFrame({
        "user_id": rng.integers(0, 120, n), "item_id": rng.integers(0, 90, n), "category_id": 0,
        "behavior": pd.Categorical(rng.choice(BEHAVIORS, n, p=[0.6, 0.1, 0.1, 0.2]), categories=BEHAVIORS),
        "timestamp": np.arange(n, dtype=np.int64),
    })
    data = build_task_data(log, seed=0, device="cpu")
    torch.manual_seed(0)
    model = SharedBottomNeuMF(ModelConfig(data.n_users, data.n_items, len(data.tasks)))
    model.train()
    all_users = torch.arange(data.n_users)
    with torch.no_grad():
        scores = model.score_items(all_users)
    train = csr_rows_mask(*data.train_csr, all_users, data.n_items)
    for split, csr in (("valid", data.valid_csr), ("test", data.test_csr)):
        held = csr_rows_mask(*csr, all_users, data.n_items)
        got = evaluate(model, data, split, batch_users=16)
        assert_close_dict(got, slow_metrics(scores, train, held, KS))
        assert 0.0 < got["recall@20"] < 1.0
    assert model.training


def test_the_popularity_floor_ranks_by_training_purchases_with_ties_by_index():
    from types import SimpleNamespace

    from mbkit.popularity import most_popular

    # item 2 bought twice, items 0 and 3 once (3 also viewed, not counted), item 1 only viewed
    data = SimpleNamespace(n_items=5, device=torch.device("cpu"),
                           items=torch.tensor([2, 2, 0, 3, 1, 3]),
                           labels=torch.tensor([[1, 0], [1, 1], [1, 0], [1, 0], [0, 1], [0, 1]], dtype=torch.float32))
    scores = most_popular(data).score_items(torch.tensor([0, 7]))
    assert scores.shape == (2, 5) and torch.equal(scores[0], scores[1])
    assert scores[0].argsort(descending=True).tolist() == [2, 0, 3, 1, 4]


def test_test_ranking_can_also_mask_validation_items():
    from types import SimpleNamespace

    from mbkit.metrics import evaluate
    from mbkit.popularity import MostPopular

    def csr(item):
        return (torch.tensor([0, 1]), torch.tensor([item]))

    # one user: trained on item 0, validation purchase 1, test purchase 2; the scores rank 1 > 2 > 3 > 0
    data = SimpleNamespace(n_items=4, device=torch.device("cpu"), train_csr=csr(0), valid_csr=csr(1), test_csr=csr(2),
                           eval_users=lambda split: torch.tensor([0]))
    model = MostPopular(torch.tensor([0.0, 4.0, 3.0, 2.0]))
    only_train = evaluate(model, data, "test", ks=(2,))
    assert only_train["ndcg@2"] == pytest.approx(1 / math.log2(3))  # the validation item takes rank 1
    assert evaluate(model, data, "test", ks=(2,), mask="train+valid")["ndcg@2"] == pytest.approx(1.0)
    assert evaluate(model, data, "valid", ks=(2,), mask="train+valid") == evaluate(model, data, "valid", ks=(2,))
    with pytest.raises(ValueError, match="mask='valid'; use 'train'"):
        evaluate(model, data, "test", mask="valid")
