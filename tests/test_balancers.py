"""Tests of MetaBalance, PCGrad and their chains: golden numbers of the original MetaBalance, hand-computed
values, independent reference implementations, the registry. (Properties that every method shares are in
test_balancer_properties.py.)"""

from __future__ import annotations

import doctest
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import mbkit.balancers
from mbkit.balancers import (
    METHODS,
    Balancer,
    MetaBalance,
    PCGrad,
    PCGradAdjusted,
    Vanilla,
    accepted_kwargs,
    chain,
    make,
)

from helpers import random_grads

GOLDEN = json.loads((Path(__file__).parent / "fixtures" / "metabalance_original.json").read_text())
NAMES = list(GOLDEN["shapes"])  # W, b, E: the order of the shared tensors
SHAPES = {p: tuple(s) for p, s in GOLDEN["shapes"].items()}

def golden_step(scenario: str, t: int) -> tuple[list[torch.Tensor], dict]:
    step = GOLDEN["scenarios"][scenario]["steps"][t]
    grads = [
        torch.stack([torch.tensor(step["inputs"][f"{k}/{p}"], dtype=torch.float32).view(SHAPES[p]) for k in range(3)])
        for p in NAMES
    ]
    return grads, step["outputs"]


def golden_tensor(values, name: str) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32).view(SHAPES[name])


def close_f32(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Equal to float32 precision: a few ulp of the largest magnitude involved."""
    torch.testing.assert_close(actual, expected, rtol=1e-6, atol=1e-6 * max(1.0, expected.abs().max().item()))


# --------------------------------------------------------------------------- golden: original MetaBalance


@pytest.mark.parametrize("scenario", ["A_default", "B_r0"])
def test_golden_metabalance_reproduces_original(scenario):
    cfg = GOLDEN["scenarios"][scenario]
    r = cfg["relax_factor"]
    bal = MetaBalance(relax_factor=r, beta=cfg["beta"])  # per-task terms, then the sum
    fused = MetaBalance(relax_factor=r, beta=cfg["beta"])  # sum_k w_k g_k in one pass
    for t in range(cfg["T"]):
        grads, outputs = golden_step(scenario, t)
        transformed = bal.transform(grads)
        combined = bal.reduce(transformed)
        combined_fused = fused(grads)
        for j, p in enumerate(NAMES):
            expected = golden_tensor(outputs[p]["combined"], p)
            # moving averages: bit for bit
            for b in (bal, fused):
                assert torch.equal(b.moving_averages[j], torch.tensor(outputs[p]["norms"])), (scenario, t, p)
            close_f32(combined_fused[j], expected)
            # the original also pushes the target through its formula; doing the same to our
            # untouched target row reproduces the original's combined gradient bit for bit
            g0, m0 = grads[j][0], bal.moving_averages[j][0]
            target_as_original = (m0 * g0 / m0) * r + g0 * (1 - r)
            assert torch.equal(target_as_original + transformed[j][1] + transformed[j][2], expected), (t, p)
            assert torch.equal(transformed[j][0], g0)  # target unchanged
            if r == 0:
                assert torch.equal(combined[j], expected)
            else:
                close_f32(combined[j], expected)


def test_golden_zero_aux_gradient_at_first_step_is_finite():
    """Scenario D: aux task 2 has an all-zero gradient of b at iteration 0; the original gives NaN there."""
    cfg = GOLDEN["scenarios"]["D_zero_grad_first_step"]
    r = cfg["relax_factor"]
    bal = MetaBalance(relax_factor=r, beta=cfg["beta"])
    for t in range(cfg["T"]):
        grads, outputs = golden_step("D_zero_grad_first_step", t)
        combined = bal(grads)
        for j, p in enumerate(NAMES):
            expected = golden_tensor(outputs[p]["combined"], p)
            assert torch.isfinite(combined[j]).all()
            assert torch.equal(bal.moving_averages[j], torch.tensor(outputs[p]["norms"]))
            if t == 0 and p == "b":
                assert torch.isnan(expected).all()  # what the original did
                assert bal.moving_averages[j][2] == 0
                g = grads[j]
                m0, m1 = (float(v) for v in outputs[p]["norms"][:2])
                by_hand = g[0].double() + (r * m0 / m1 + 1 - r) * g[1].double() + 0.0  # task 2 adds nothing
                torch.testing.assert_close(combined[j].double(), by_hand, rtol=1e-6, atol=1e-6)
                assert bal.last_weights[j][2] == 1.0
            else:
                close_f32(combined[j], expected)


def test_golden_target_missing_from_a_tensor_gives_plain_sum_there():
    """Scenario E: the target does not reach W (the original crashes). W gets the plain sum; b and E
    are balanced exactly as in scenario A, since MetaBalance works per tensor."""
    cfg = GOLDEN["scenarios"]["A_default"]
    bal = MetaBalance(relax_factor=cfg["relax_factor"], beta=cfg["beta"])
    for t in range(cfg["T"]):
        grads, outputs = golden_step("A_default", t)
        grads[0][0] = 0.0  # target's gradient of W: absent
        combined = bal(grads)
        assert torch.equal(combined[0], grads[0][1] + grads[0][2])
        assert torch.equal(bal.last_weights[0], torch.ones(3))
        assert bal.moving_averages[0][0] == 0
        assert torch.equal(bal.moving_averages[0][1:], torch.tensor(outputs["W"]["norms"][1:]))
        for j, p in list(enumerate(NAMES))[1:]:
            close_f32(combined[j], golden_tensor(outputs[p]["combined"], p))


# --------------------------------------------------------------------------- hand-computed values


def test_metabalance_by_hand_two_steps():
    g_step1 = [[3.0, 4.0], [0.0, 10.0], [0.3, 0.4]]  # norms 5, 10, 0.5
    g_step2 = [[0.0, 1.0], [0.0, 10.0], [0.3, 0.4]]  # norms 1, 10, 0.5
    r, beta = 0.7, 0.9
    bal = MetaBalance(relax_factor=r, beta=beta)

    m = [0.0, 0.0, 0.0]
    for g in (g_step1, g_step2):
        m = [beta * m[k] + (1 - beta) * math.hypot(*g[k]) for k in range(3)]
        w = [1.0] + [r * m[0] / m[k] + (1 - r) for k in (1, 2)]
        expected = [sum(w[k] * g[k][i] for k in range(3)) for i in range(2)]
        out = bal([torch.tensor(g)])[0]
        torch.testing.assert_close(out, torch.tensor(expected), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(bal.moving_averages[0], torch.tensor(m), rtol=1e-6, atol=0.0)
        torch.testing.assert_close(bal.last_weights[0], torch.tensor(w), rtol=1e-6, atol=0.0)
    # step 1 written out: m = (0.5, 1.0, 0.05); w1 = 0.7*0.5/1 + 0.3 = 0.65, w2 = 0.7*0.5/0.05 + 0.3 = 7.3
    first = MetaBalance(relax_factor=0.7)([torch.tensor(g_step1)])[0]
    torch.testing.assert_close(first, torch.tensor([3 + 0.3 * 7.3, 4 + 6.5 + 0.4 * 7.3]))


@pytest.mark.parametrize(
    "strategy, expected",
    [
        ("both", [3 + 0.3 * 7.3, 4 + 6.5 + 0.4 * 7.3]),
        ("reduce", [3 + 0.3, 4 + 6.5 + 0.4]),  # only task 1 (m1 = 1.0 > m0 = 0.5) is rescaled
        ("enlarge", [3 + 0.3 * 7.3, 4 + 10 + 0.4 * 7.3]),  # only task 2 (m2 = 0.05 < m0)
    ],
)
def test_metabalance_strategies_by_hand(strategy, expected):
    g = torch.tensor([[3.0, 4.0], [0.0, 10.0], [0.3, 0.4]])
    out = MetaBalance(relax_factor=0.7, strategy=strategy)([g])[0]
    torch.testing.assert_close(out, torch.tensor(expected))


def test_metabalance_decayed_moving_average_gives_finite_weights():
    """An auxiliary that stops reaching a tensor: its average decays into subnormal numbers, where
    m_0 / m_k overflows float32. Weights stay finite and the task still contributes nothing."""
    bal = MetaBalance(relax_factor=0.7, beta=0.9)
    bal.load_state_dict({"step": 500, "moving_averages": [torch.tensor([10.0, 1e-39, 1.0])]})
    g = torch.tensor([[6.0, 8.0], [0.0, 0.0], [1.0, 0.0]])
    for out in (bal([g])[0], MetaBalance().reduce(bal.transform([g]))[0]):
        assert torch.isfinite(bal.last_weights[0]).all() and torch.isfinite(out).all()
        assert out[0] > 6.0 and out[1] == 8.0  # target + rescaled task 2, nothing from task 1


def test_metabalance_relax_one_equalises_magnitudes():
    grads = random_grads(k=4)
    bal = MetaBalance(relax_factor=1.0, beta=0.0)  # beta = 0: m_k = ||g_k|| of this step
    transformed = bal.transform(grads)
    for g in transformed:
        norms = torch.linalg.vector_norm(g.reshape(4, -1), dim=1)
        torch.testing.assert_close(norms, norms[0].expand(4), rtol=1e-5, atol=0.0)


def test_pcgrad_adjusted_by_hand():
    g = torch.tensor([[1.0, 0.0], [-1.0, 1.0], [1.0, 1.0]])
    bal = PCGradAdjusted()
    transformed = bal.transform([g])[0]
    # g1 . g0 = -1 < 0 -> g1 - (-1 / 1) g0 = (0, 1); g2 . g0 = 1 >= 0 -> unchanged
    assert torch.equal(transformed, torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
    assert torch.equal(PCGradAdjusted()([g])[0], torch.tensor([2.0, 2.0]))


def test_pcgrad_k2_by_hand():
    g = torch.tensor([[1.0, 0.0], [-1.0, 1.0]])
    # g0 . g1 = -1: g0 - (-1 / 2) g1 = (0.5, 0.5); g1 - (-1 / 1) g0 = (0, 1)
    assert torch.equal(PCGrad(reduction="sum")([g])[0], torch.tensor([0.5, 1.5]))
    assert torch.equal(PCGrad(reduction="mean")([g])[0], torch.tensor([0.25, 0.75]))


def reference_adjusted(rows: list[list[float]]) -> list[list[float]]:
    """Study's variant, written out with Python floats."""
    target = rows[0]
    sq = sum(x * x for x in target)
    out = [list(target)]
    for row in rows[1:]:
        dot = sum(a * b for a, b in zip(row, target))
        out.append([a - dot / sq * b for a, b in zip(row, target)] if dot < 0 else list(row))
    return out


def reference_pcgrad(rows: np.ndarray, order: list[list[int]]) -> np.ndarray:
    """Yu et al. (2020), Algorithm 1, for a given order of the other tasks, with NumPy."""
    out = []
    for i, row in enumerate(rows):
        g = row.copy()
        for j in order[i]:
            dot = g @ rows[j]
            if dot < 0:
                g = g - dot / (rows[j] @ rows[j]) * rows[j]
        out.append(g)
    return np.stack(out)


@pytest.mark.parametrize("granularity", ["tensor", "flat"])
def test_pcgrad_adjusted_matches_reference(granularity):
    grads = random_grads(k=4, seed=2, dtype=torch.float64)
    transformed = PCGradAdjusted(granularity=granularity).transform(grads)
    blocks = [[j] for j in range(len(grads))] if granularity == "tensor" else [list(range(len(grads)))]
    n_projected = 0
    for block in blocks:
        flat = torch.cat([grads[j].reshape(4, -1) for j in block], dim=1)
        ours = torch.cat([transformed[j].reshape(4, -1) for j in block], dim=1)
        expected = reference_adjusted(flat.tolist())
        torch.testing.assert_close(ours, torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=1e-12)
        n_projected += int((flat[1:] @ flat[0] < 0).sum())
    assert n_projected > 0  # the example does exercise projections


@pytest.mark.parametrize("granularity", ["tensor", "flat"])
@pytest.mark.parametrize("k", [2, 4])
def test_pcgrad_matches_reference(granularity, k):
    grads = random_grads(k=k, seed=2, dtype=torch.float64)
    bal = PCGrad(granularity=granularity, seed=3)
    transformed = bal.transform(grads)
    order = bal.last_order.tolist()
    assert all(sorted(order[i]) == [j for j in range(k) if j != i] for i in range(k))
    blocks = [[j] for j in range(len(grads))] if granularity == "tensor" else [list(range(len(grads)))]
    for block in blocks:
        flat = torch.cat([grads[j].reshape(k, -1) for j in block], dim=1).numpy()
        ours = torch.cat([transformed[j].reshape(k, -1) for j in block], dim=1).numpy()
        np.testing.assert_allclose(ours, reference_pcgrad(flat, order), rtol=1e-10, atol=1e-12)
    combined = bal.reduce(transformed)
    for g, t in zip(combined, transformed):
        torch.testing.assert_close(g, t.sum(0))


# --------------------------------------------------------------------------- properties of every method


def without(name: str, part: str) -> str:
    rest = [p for p in name.split("+") if p != part]
    return "+".join(rest) if rest else "vanilla"


def kwargs_for(name: str, kwargs: dict) -> dict:
    allowed = accepted_kwargs(name)
    return {k: v for k, v in kwargs.items() if k in allowed}


@pytest.mark.parametrize("name", [m for m in METHODS if "metabalance" in m])
def test_relax_factor_zero_is_the_method_without_metabalance(name):
    mb = make(name, relax_factor=0.0)
    ref = make(without(name, "metabalance"))
    for step in range(3):
        grads = random_grads(k=4, seed=10 + step)
        assert all(torch.equal(a, b) for a, b in zip(mb(grads), ref(grads)))
    assert isinstance(make(name, relax_factor=0.7)(grads), list)


@pytest.mark.parametrize("granularity", ["tensor", "flat"])
@pytest.mark.parametrize("name", [m for m in METHODS if "pcgrad" in m])
def test_pcgrad_without_conflict_is_the_method_without_pcgrad(name, granularity):
    part = name.split("+")[-1]
    bal = make(name, granularity=granularity)
    ref = make(without(name, part))
    for step in range(3):
        grads = [g.abs() for g in random_grads(k=4, seed=20 + step)]  # all pairwise dots >= 0
        for a, b in zip(bal(grads), ref.reduce(ref.transform(grads))):
            assert torch.equal(a, b)
    conflicting = random_grads(k=4, seed=5)  # conflicts in every tensor and in the flat vector
    projected, plain = make(name, granularity=granularity)(conflicting), make(without(name, part))(conflicting)
    assert any(not torch.equal(a, b) for a, b in zip(projected, plain))


@pytest.mark.parametrize("name", [m for m in METHODS if m.endswith("pcgrad_adjusted")])
def test_adjusted_keeps_target_and_removes_conflicts(name):
    n_conflicts = 0
    for granularity in ["tensor", "flat"]:
        bal = make(name, granularity=granularity)
        for step in range(3):
            grads = random_grads(k=4, seed=30 + step)
            transformed = bal.transform(grads)
            blocks = [[j] for j in range(len(grads))] if granularity == "tensor" else [list(range(len(grads)))]
            for block in blocks:
                before = torch.cat([grads[j].reshape(4, -1) for j in block], dim=1)
                after = torch.cat([transformed[j].reshape(4, -1) for j in block], dim=1)
                assert torch.equal(after[0], before[0])  # the target's gradient is never changed
                dots = after[1:] @ after[0]
                scale = torch.linalg.vector_norm(after[1:], dim=1) * torch.linalg.vector_norm(after[0])
                assert (dots >= -1e-5 * scale).all()
                n_conflicts += int(((before[1:] @ before[0]) < 0).sum())
    assert n_conflicts > 0  # there were conflicts to remove


@pytest.mark.parametrize("granularity", ["tensor", "flat"])
@pytest.mark.parametrize("name", ["pcgrad_adjusted", "pcgrad"])
def test_pcgrad_projections_are_scale_invariant_down_to_tiny_scales(name, granularity):
    """Projections still happen at a ~1e-30 scale, where squared norms underflow in float32."""
    tiny = 2.0**-100  # exact in float32
    grads = random_grads(k=4, seed=5)
    normal = make(name, granularity=granularity)(grads)  # same default seed -> same task orders
    small = make(name, granularity=granularity)([g * tiny for g in grads])
    for a, b in zip(small, normal):
        assert torch.equal(a, b * tiny)
    assert not all(torch.equal(a, b) for a, b in zip(normal, Vanilla()(grads)))  # it did project


# --------------------------------------------------------------------------- PCGrad randomness


def test_pcgrad_seeded_is_reproducible_and_seeds_differ():
    grads = random_grads(k=4, seed=100)
    first = PCGrad(seed=7)(grads)
    assert all(torch.equal(a, b) for a, b in zip(first, PCGrad(seed=7)(grads)))
    results = [PCGrad(seed=s)(grads) for s in range(8)]
    assert any(not torch.equal(results[0][0], r[0]) for r in results[1:])


def test_pcgrad_order_is_fresh_per_call_and_from_the_given_generator():
    gen = torch.Generator().manual_seed(5)
    bal = PCGrad(generator=gen)
    orders = []
    for _ in range(6):
        bal(random_grads(k=4))
        orders.append(bal.last_order.clone())
    assert any(not torch.equal(orders[0], o) for o in orders[1:])
    same = PCGrad(generator=torch.Generator().manual_seed(5))
    same(random_grads(k=4))
    assert torch.equal(same.last_order, orders[0])
    assert PCGrad(seed=5).state_dict()["generator"].dtype == torch.uint8


# --------------------------------------------------------------------------- chain, registry, labels


def test_chain_is_second_applied_to_first_transform():
    grads_seq = [random_grads(k=4, seed=110 + s) for s in range(3)]
    chained = chain(MetaBalance(relax_factor=0.6), PCGrad(reduction="mean", seed=2))
    a, b = MetaBalance(relax_factor=0.6), PCGrad(reduction="mean", seed=2)
    for grads in grads_seq:
        expected = b(a.transform(grads))
        assert all(torch.equal(x, y) for x, y in zip(chained(grads), expected))
    via_make = make("chain", balancers=["metabalance", "pcgrad"])
    via_name = make("metabalance+pcgrad")
    for grads in grads_seq:
        assert all(torch.equal(x, y) for x, y in zip(via_make(grads), via_name(grads)))


def test_chain_weights_multiply():
    grads = random_grads(k=4)
    bal = chain(Vanilla(), MetaBalance())
    bal(grads)
    ref = MetaBalance()
    ref(grads)
    assert all(torch.equal(w, r) for w, r in zip(bal.last_weights, ref.last_weights))
    with_pcgrad = make("metabalance+pcgrad")
    with_pcgrad(grads)
    assert with_pcgrad.balancers[0].last_weights is not None  # MetaBalance did weigh the tasks...
    assert with_pcgrad.last_weights is None  # ...but PCGrad's projections are not scalar weights


def test_labels_and_reprs():
    labels = [str(make(m)) for m in METHODS]
    assert labels == [
        "Vanilla",
        "MetaBalance (r=0.7)",
        "PCGrad (adjusted)",
        "PCGrad",
        "MetaBalance + PCGrad (adjusted)",
        "MetaBalance + PCGrad",
    ]
    assert str(make("metabalance", relax_factor=0.5, strategy="reduce")) == "MetaBalance (r=0.5, reduce)"
    assert str(make("pcgrad", reduction="mean")) == "PCGrad (mean)"
    assert str(make("metabalance+pcgrad_adjusted", relax_factor=0.3)) == "MetaBalance (r=0.3) + PCGrad (adjusted)"
    for name in METHODS:
        bal = make(name)
        assert isinstance(bal, Balancer)
        assert all(arg in repr(bal) for arg in accepted_kwargs(name)), (name, repr(bal))


def test_doc_examples():
    result = doctest.testmod(mbkit.balancers)
    assert result.attempted >= 5 and result.failed == 0


def test_make_rejects_unknown_names_and_arguments():
    with pytest.raises(ValueError, match="metabalance\\+pcgrad_adjusted"):
        make("nosuchmethod")
    with pytest.raises(ValueError, match="relax_factor"):
        make("pcgrad", relax_factor=0.7)  # silently ignoring a setting is a bug, not a feature
    with pytest.raises(ValueError, match="relax_factor"):
        make("metabalance", relax_factor=1.5)
    with pytest.raises(ValueError, match="reduction"):
        make("pcgrad", reduction="max")
    with pytest.raises(ValueError, match="granularity"):
        make("pcgrad_adjusted", granularity="row")
    with pytest.raises(ValueError, match="strategy"):
        make("metabalance", strategy="shrink")
    with pytest.raises(ValueError, match="same number of tasks"):
        Vanilla()([torch.zeros(3, 2), torch.zeros(2, 2)])
    bal = MetaBalance()
    bal(random_grads(k=4))
    with pytest.raises(ValueError, match="K=3"):
        bal(random_grads(k=3))
