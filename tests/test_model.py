"""Shared-bottom NeuMF: parameter groups, initialisation, shared dropout mask, fast full-item scoring."""

from __future__ import annotations

import pytest
import torch

from mbkit.model import ModelConfig, SharedBottomNeuMF


def small_model(seed: int = 0, **kw) -> SharedBottomNeuMF:
    torch.manual_seed(seed)
    cfg = dict(n_users=11, n_items=23, n_tasks=3, emb_dim=8, mlp_layers=(8, 6, 4), tower_layers=(7, 5))
    cfg.update(kw)
    return SharedBottomNeuMF(ModelConfig(**cfg))


def perturb(model: SharedBottomNeuMF, seed: int = 1) -> None:
    """Weights far from the tiny init, so that comparisons are not trivially close to zero."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.5 * torch.randn(p.shape, generator=g))


def test_default_sizes_match_the_study() -> None:
    m = SharedBottomNeuMF(ModelConfig(n_users=5, n_items=6, n_tasks=4))
    assert m.rep_dim == 72
    shapes = {n: tuple(p.shape) for n, p in m.named_parameters()}
    assert shapes["user_mf.weight"] == (5, 64) and shapes["item_mlp.weight"] == (6, 64)
    weights = {n: s for n, s in shapes.items() if n.endswith("weight")}
    assert [s for n, s in weights.items() if n.startswith("mlp.")] == [(32, 128), (16, 32), (8, 16)]
    assert [s for n, s in weights.items() if n.startswith("towers.0.")] == [(64, 72), (32, 64), (1, 32)]
    assert m(torch.tensor([0, 4]), torch.tensor([5, 0])).shape == (2, 4)


def test_parameter_groups_partition_the_model() -> None:
    m = small_model()
    shared = m.shared_parameters()
    assert list(shared)[:4] == list(SharedBottomNeuMF.TABLE_NAMES)
    towers = [m.task_parameters(k) for k in range(3)]
    names = [*shared, *(n for t in towers for n in t)]
    assert sorted(names) == sorted(n for n, _ in m.named_parameters())  # each parameter exactly once
    assert all(m.get_parameter(n) is p for t in towers for n, p in t.items())
    with pytest.raises(ValueError, match="out of range"):
        m.task_parameters(3)


def test_neumf_initialisation() -> None:
    m = SharedBottomNeuMF(ModelConfig(n_users=2000, n_items=2000, n_tasks=2))
    std = m.user_mf.weight.std().item()
    assert 0.009 < std < 0.011
    for name, p in m.named_parameters():
        if name.endswith("bias"):
            assert torch.count_nonzero(p) == 0, name
    w = m.mlp[0].weight  # Xavier-uniform bound sqrt(6 / (fan_in + fan_out))
    assert w.abs().max() <= (6 / (128 + 32)) ** 0.5 and w.abs().max() > 0.9 * (6 / (128 + 32)) ** 0.5


def test_one_dropout_mask_shared_by_all_tasks() -> None:
    m = small_model(tower_layers=(), dropout=0.5).train()  # towers = one Linear each, no tower dropout
    perturb(m)
    with torch.no_grad():
        for t in m.towers[1:]:
            t.load_state_dict(m.towers[0].state_dict())
    u, i = torch.randint(0, 11, (64,)), torch.randint(0, 23, (64,))
    logits = m(u, i)
    assert torch.equal(logits[:, 0], logits[:, 1]) and torch.equal(logits[:, 0], logits[:, 2])
    assert not torch.allclose(logits, m.eval()(u, i))  # dropout was active in train mode


@pytest.mark.parametrize(
    "blocks, layers",
    [
        ({}, {}),  # one block
        ({"block_rows": 7, "user_block": 2}, {}),  # many uneven blocks of users and items
        ({"block_rows": 1, "user_block": 1}, {}),  # one pair per block
        ({"block_rows": 40}, {"mlp_layers": (5,), "tower_layers": ()}),  # one MLP layer; towers = one Linear
    ],
)
def test_score_items_equals_forward_in_eval_mode(blocks: dict, layers: dict) -> None:
    m = small_model(**layers)
    perturb(m)
    users = torch.tensor([0, 3, 3, 10, 7])
    m.train()  # score_items must ignore the train flag (eval semantics)
    scores = m.score_items(users, **blocks)
    m.eval()
    n_items = m.cfg.n_items
    ref = m(users.repeat_interleave(n_items), torch.arange(n_items).repeat(len(users)))[:, 0].view(len(users), n_items)
    assert scores.shape == (5, n_items)
    assert ref.std() > 0.1
    torch.testing.assert_close(scores, ref.detach(), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="block_rows and user_block must be >= 1"):
        m.score_items(users, block_rows=0)


def test_config_errors_say_what_to_do() -> None:
    with pytest.raises(ValueError, match="dropout"):
        ModelConfig(n_users=2, n_items=2, n_tasks=1, dropout=1.0)
    with pytest.raises(ValueError, match=">= 1"):
        ModelConfig(n_users=0, n_items=2, n_tasks=1)
