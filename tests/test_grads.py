"""GradEngine: per-task gradients equal one autograd.grad per task, in compact and dense modes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mbkit.grads import GradEngine, TaskGrads, _sorted_rows, grad_stats
from mbkit.optim import RowAdam, make_optimizers
from mbkit.model import ModelConfig, SharedBottomNeuMF

N_USERS, N_ITEMS, K, B = 13, 17, 3, 48


def make_model(seed: int = 0, dropout: float = 0.5) -> SharedBottomNeuMF:
    torch.manual_seed(seed)
    cfg = ModelConfig(N_USERS, N_ITEMS, K, emb_dim=8, mlp_layers=(8, 4), tower_layers=(6,), dropout=dropout)
    m = SharedBottomNeuMF(cfg)
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():  # larger weights than the NeuMF init, so that gradients are far from zero
        for p in m.parameters():
            p.copy_(0.5 * torch.randn(p.shape, generator=g))
    return m.train()


def make_batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    users = torch.randint(0, 6, (B,), generator=g)  # only 6 of 13 users: many repeats, untouched rows
    items = torch.randint(0, N_ITEMS, (B,), generator=g)
    items[:5] = 2  # a surely repeated item
    labels = (torch.rand(B, K, generator=g) < 0.4).float()
    return users, items, labels


def scatter(tg: TaskGrads, model: SharedBottomNeuMF) -> list[torch.Tensor]:
    """Compact rows scattered into full tables (K, n_rows, D); dense tensors unchanged."""
    out = []
    for g, r, p in zip(tg.shared, tg.rows, model.shared_parameters().values()):
        out.append(g if r is None else g.new_zeros(g.shape[0], *p.shape).index_add_(1, r, g))
    return out


def reference(model: SharedBottomNeuMF, users, items, labels, seed: int):
    """One autograd.grad per task through the plain forward, with the same dropout masks (same RNG seed)."""
    torch.manual_seed(seed)
    losses = F.binary_cross_entropy_with_logits(model(users, items), labels, reduction="none").mean(0)
    shared = list(model.shared_parameters().values())
    per_task = [torch.autograd.grad(losses[k], shared, retain_graph=True) for k in range(K)]
    towers = [
        torch.autograd.grad(losses[k], list(model.task_parameters(k).values()), retain_graph=True) for k in range(K)
    ]
    return losses.detach(), [torch.stack([per_task[k][j] for k in range(K)]) for j in range(len(shared))], towers


CONFIGS = [("compact", False), ("dense", False), ("dense", True)]  # (mode, full_tables)


@pytest.mark.parametrize("mode, full_tables", CONFIGS)
def test_per_task_gradients_equal_one_autograd_grad_per_task(mode: str, full_tables: bool) -> None:
    model, (users, items, labels) = make_model(), make_batch()
    ref_losses, ref_shared, ref_towers = reference(model, users, items, labels, seed=7)
    torch.manual_seed(7)
    tg = GradEngine(model, mode, full_tables)(users, items, labels)
    torch.testing.assert_close(tg.losses, ref_losses)
    got = scatter(tg, model)
    assert len(got) == len(ref_shared) == len(model.shared_parameters())
    for name, g, ref in zip(model.shared_parameters(), got, ref_shared):
        assert g.shape == ref.shape, name
        assert ref.abs().max() > 1e-4, name  # the comparison is not between zeros
        torch.testing.assert_close(g, ref, rtol=1e-5, atol=1e-7, msg=name)
    for k in range(K):
        for (name, g), ref in zip(model.task_parameters(k).items(), ref_towers[k]):
            torch.testing.assert_close(tg.towers[name], ref, msg=name)
    assert list(tg.towers) == [n for k in range(K) for n in model.task_parameters(k)]


def test_table_rows_per_mode_and_all_modes_agree() -> None:
    model, (users, items, labels) = make_model(), make_batch()
    out = {}
    for mode, full in CONFIGS:
        torch.manual_seed(3)
        out[mode, full] = GradEngine(model, mode, full)(users, items, labels)
    ids = [users, items, users, items]
    for j in range(len(model.shared_parameters())):
        compact, dense, full = out["compact", False].rows[j], out["dense", False].rows[j], out["dense", True].rows[j]
        assert full is None
        if j >= 4:
            assert compact is None and dense is None
            continue
        uniq = torch.unique(ids[j])
        assert len(uniq) < B  # the batch repeats ids
        assert torch.equal(compact, uniq)  # compact: exactly the unique ids
        assert out["compact", False].shared[j].shape == (K, len(uniq), 8)
        assert torch.equal(dense[: len(uniq)], uniq) and (dense[len(uniq) :] == uniq[-1]).all()  # dense: padded to B
        assert out["dense", False].shared[j][:, len(uniq) :].count_nonzero() == 0  # padding rows carry nothing
    reference_grads = scatter(out["dense", True], model)
    for key in [("compact", False), ("dense", False)]:
        for c, d in zip(scatter(out[key], model), reference_grads):
            torch.testing.assert_close(c, d, rtol=0, atol=0)


@pytest.mark.parametrize("ids", [[5, 5, 5], [4, 1, 3, 0], [2], [7, 0, 7, 3, 0, 9, 9, 9]])
def test_static_rows_without_host_sync_match_unique(ids: list[int]) -> None:
    ids = torch.tensor(ids)
    uniq, inv = torch.unique(ids, sorted=True, return_inverse=True)
    rows, slots = _sorted_rows(ids, static=True)
    assert rows.shape == ids.shape
    assert torch.equal(rows[: len(uniq)], uniq) and (rows[len(uniq) :] == uniq[-1]).all()
    assert torch.equal(slots, inv) and torch.equal(rows[slots], ids)


@pytest.mark.parametrize("mode, full_tables", CONFIGS)
def test_backward_sum_equals_vanilla_through_the_engine(mode: str, full_tables: bool) -> None:
    model, (users, items, labels) = make_model(), make_batch()
    engine = GradEngine(model, mode, full_tables)
    torch.manual_seed(5)
    tg = engine(users, items, labels)
    engine.write(tg, [g.sum(0) for g in tg.shared])
    assert all(p.grad.is_sparse or p.grad.is_contiguous() for p in model.parameters())  # fused Adam needs it
    via_engine = {n: p.grad.to_dense().clone() for n, p in model.named_parameters()}
    model.zero_grad()
    torch.manual_seed(5)
    losses = engine.backward_sum(users, items, labels)
    torch.testing.assert_close(losses, tg.losses)
    assert all(p.grad.is_sparse or p.grad.is_contiguous() for p in model.parameters())
    for n, p in model.named_parameters():
        assert p.grad.is_sparse == (mode == "compact" and n in SharedBottomNeuMF.TABLE_NAMES), n
        torch.testing.assert_close(p.grad.to_dense(), via_engine[n], rtol=1e-5, atol=1e-7, msg=n)


@pytest.mark.parametrize("mode, full_tables", CONFIGS)
def test_write_then_step_updates_parameters_as_adam(mode: str, full_tables: bool) -> None:
    """First Adam step moves each entry by lr * g / (|g| + eps), g including weight decay where it applies."""
    model, (users, items, labels) = make_model(), make_batch()
    lr, wd, eps = 1e-2, 1e-3, 1e-8
    engine = GradEngine(model, mode, full_tables)
    opts = make_optimizers(model, mode, lr=lr, weight_decay=wd)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    tg = engine(users, items, labels)
    combined = [g[0] + 0.5 * g[1:].sum(0) for g in tg.shared]  # any combination
    engine.write(tg, combined)
    full = scatter(TaskGrads(tg.losses, [c[None] for c in combined], tg.rows, tg.towers), model)
    for o in opts:
        o.step()
    touched_users = torch.zeros(N_USERS, dtype=torch.bool).index_fill_(0, users, True)
    grads = {**dict(zip(model.shared_parameters(), (g[0] for g in full))), **tg.towers}
    for n, p in model.named_parameters():
        g = grads[n]
        sparse_table = mode == "compact" and n in SharedBottomNeuMF.TABLE_NAMES
        g = g if sparse_table else g + wd * before[n]  # SparseAdam has no weight decay
        # SparseAdam adds eps before the bias correction of the second moment: eps / sqrt(1 - beta2) after it
        expected = before[n] - lr * g / (g.abs() + (eps / 0.001**0.5 if sparse_table else eps))
        if sparse_table:  # rows outside the batch are not touched by SparseAdam
            expected = torch.where((g != 0).any(-1, keepdim=True), expected, before[n])
        torch.testing.assert_close(p.detach(), expected, rtol=1e-5, atol=1e-7)
    moved = (model.user_mf.weight != before["user_mf.weight"]).any(-1)
    if mode == "compact":
        assert torch.equal(moved, touched_users)
    else:  # dense Adam: weight decay alone moves untouched rows by about lr (the original's semantics)
        assert moved.all()


def test_row_adam_equals_sparse_adam() -> None:
    g = torch.Generator().manual_seed(0)
    start = torch.randn(20, 4, generator=g)
    a, b = torch.nn.Parameter(start.clone()), torch.nn.Parameter(start.clone())
    opt_a = RowAdam([a], lr=0.01, betas=(0.8, 0.99), eps=1e-6)
    opt_b = torch.optim.SparseAdam([b], lr=0.01, betas=(0.8, 0.99), eps=1e-6)
    for rows in ([0, 3, 4], [3, 7], [0, 19], [5]):  # rows come and go: untouched rows keep their moments
        rows = torch.tensor(rows)
        vals = torch.randn(len(rows), 4, generator=g)
        for p, opt in ((a, opt_a), (b, opt_b)):
            p.grad = torch.sparse_coo_tensor(rows[None], vals, p.shape, check_invariants=True).coalesce()
            opt.step()
        torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-6, atol=1e-7)
    for key in ("exp_avg", "exp_avg_sq"):
        torch.testing.assert_close(opt_a.state[a][key], opt_b.state[b][key])
    assert opt_a.state[a]["step"] == opt_b.state[b]["step"] == 4
    a.grad = torch.ones_like(a)
    with pytest.raises(RuntimeError, match="sparse"):
        opt_a.step()


def test_grad_stats_norms_and_cosines() -> None:
    model, (users, items, labels) = make_model(), make_batch()
    tg = GradEngine(model, "compact")(users, items, labels)
    tg.shared[5][2].zero_()  # a task that does not reach a tensor
    norms, cos = grad_stats(tg)
    assert norms.shape == cos.shape == (len(tg.shared), K)
    for j, g in enumerate(tg.shared):
        flat = g.flatten(1)
        torch.testing.assert_close(norms[j], flat.norm(dim=1))
        for k in range(K):
            expected = F.cosine_similarity(flat[k], flat[0], dim=0) if flat[k].any() else torch.tensor(0.0)
            torch.testing.assert_close(cos[j, k], expected, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(cos[:, 0], torch.ones(len(tg.shared)))
    assert cos[5, 2] == 0 and torch.isfinite(cos).all()


def test_make_optimizers_cover_every_parameter_once() -> None:
    model = make_model()
    everything = sorted(id(p) for p in model.parameters())
    for mode, kinds in [("compact", [RowAdam, torch.optim.Adam]), ("dense", [torch.optim.Adam])]:
        opts = make_optimizers(model, mode)
        assert [type(o) for o in opts] == kinds
        assert sorted(id(p) for o in opts for grp in o.param_groups for p in grp["params"]) == everything


def test_errors_name_the_problem() -> None:
    model, (users, items, labels) = make_model(), make_batch()
    with pytest.raises(ValueError, match="mode"):
        GradEngine(model, "sparse")
    with pytest.raises(ValueError, match="mode"):
        make_optimizers(model, "sparse")
    with pytest.raises(ValueError, match="full_tables"):
        GradEngine(model, "compact", full_tables=True)
    engine = GradEngine(model)
    with pytest.raises(ValueError, match=r"\(B, K\)"):
        engine(users, items, labels[:, :2])
    tg = engine(users, items, labels)
    with pytest.raises(ValueError, match="one per shared tensor"):
        engine.write(tg, [g.sum(0) for g in tg.shared][:-1])
