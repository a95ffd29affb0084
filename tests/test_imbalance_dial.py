"""The imbalance dial (`TrainConfig.aux_grad_scale`, `GradEngine(grad_scale=...)`): it multiplies what each
auxiliary task sends into the shared bottom and nothing else, and MetaBalance at r = 1 is exactly independent
of it (powers of two keep every float product exact, so equality is bitwise, on every platform)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from helpers import TINY
from mbkit.balancers import make
from mbkit.grads import GradEngine
from mbkit.train import TrainConfig, fit

from test_grads import K, make_batch, make_model

SCALES = [2.0**-8, 2.0**8]  # the map's two decades each side of 1 (and a bit), exactly representable


@pytest.mark.parametrize("mode", ["compact", "dense"])
def test_grad_scale_multiplies_each_task_s_shared_gradients_and_leaves_towers(mode: str) -> None:
    model, (users, items, labels) = make_model(), make_batch()
    w = [1.0, 2.0**8, 2.0**-8, 8.0][:K]
    torch.manual_seed(5)
    plain = GradEngine(model, mode)(users, items, labels)
    torch.manual_seed(5)
    scaled = GradEngine(model, mode, grad_scale=w)(users, items, labels)
    assert torch.equal(plain.losses, scaled.losses)
    for g0, g1 in zip(plain.shared, scaled.shared):
        for k in range(K):
            assert torch.equal(g1[k], w[k] * g0[k])
    assert plain.towers.keys() == scaled.towers.keys()
    assert all(torch.equal(plain.towers[n], scaled.towers[n]) for n in plain.towers)
    # the representation path scales dL_k/dh alike
    torch.manual_seed(5)
    rep0 = GradEngine(model, mode).representation(users, items, labels)
    torch.manual_seed(5)
    rep1 = GradEngine(model, mode, grad_scale=w).representation(users, items, labels)
    assert all(torch.equal(rep1.shared[0][k], w[k] * rep0.shared[0][k]) for k in range(K))


def test_the_plain_sum_path_sends_the_scaled_sum_into_the_bottom() -> None:
    """Vanilla's one-backward path with a scale gives the shared .grad of sum_k w_k g_k (per-task path)."""
    model, (users, items, labels) = make_model(), make_batch()
    w = [1.0, 3.0, 0.01][:K]
    engine = GradEngine(model, "dense", grad_scale=w)
    torch.manual_seed(2)
    tg = GradEngine(model, "dense", full_tables=True, grad_scale=w)(users, items, labels)
    expected = [g.sum(0) for g in tg.shared]
    torch.manual_seed(2)
    engine.backward_sum(users, items, labels)
    for p, e in zip(model.shared_parameters().values(), expected):
        torch.testing.assert_close(p.grad, e, rtol=1e-5, atol=1e-6)
    for n, g in tg.towers.items():
        torch.testing.assert_close(engine.tower_params[n].grad, g, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("w", SCALES)
def test_metabalance_r1_combines_the_same_gradient_at_any_auxiliary_scale(w: float) -> None:
    """Over a stream of steps with moving averages, r = 1 gives bit for bit the same combined gradient;
    r = 0.3 does not (so the comparison can fail)."""
    model = make_model()
    engines = GradEngine(model, "compact"), GradEngine(model, "compact", grad_scale=[1.0] + [w] * (K - 1))
    for r, same in ((1.0, True), (0.3, False)):
        bals = make("metabalance", relax_factor=r), make("metabalance", relax_factor=r)
        equal = []
        for step in range(6):
            out = []
            for engine, bal in zip(engines, bals):
                torch.manual_seed(step)
                out.append(bal(engine(*make_batch(step)).shared))
            equal.append(all(torch.equal(a, b) for a, b in zip(*out)))
        assert all(equal) if same else not any(equal)


def test_metabalance_r1_trains_the_same_run_at_any_auxiliary_scale(task_data) -> None:
    """Whole runs: at r = 1 the history and the test metrics are equal at 2^-8, 1 and 2^8; Vanilla's move."""
    base = dataclasses.replace(TINY, epochs=2)
    runs = {}
    for balancer, kwargs in (("metabalance", {"relax_factor": 1.0}), ("vanilla", {})):
        for w in [1.0, *SCALES]:
            cfg = dataclasses.replace(base, balancer=balancer, balancer_kwargs=kwargs, aux_grad_scale=w)
            runs[balancer, w] = fit(task_data, cfg)
    for w in SCALES:
        a, b = runs["metabalance", 1.0], runs["metabalance", w]
        assert a.test == b.test
        assert a.history.drop(columns=["train_seconds", "eval_seconds"], errors="ignore").equals(
            b.history.drop(columns=["train_seconds", "eval_seconds"], errors="ignore"))
        assert runs["vanilla", 1.0].test != runs["vanilla", w].test


@pytest.mark.parametrize("bad", [0.0, -1.0, float("inf"), float("nan")])
def test_a_bad_scale_is_refused_in_one_sentence(bad: float) -> None:
    with pytest.raises(ValueError, match="aux_grad_scale=.* must be a finite factor > 0"):
        TrainConfig(aux_grad_scale=bad)
    with pytest.raises(ValueError, match="grad_scale must hold"):
        GradEngine(make_model(), grad_scale=[1.0] * (K - 1) + [bad])
    with pytest.raises(ValueError, match="grad_scale must hold"):
        GradEngine(make_model(), grad_scale=[1.0] * (K + 1))
