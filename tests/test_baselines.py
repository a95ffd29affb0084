"""Tests of the baselines: equality with torchjd's aggregators where it has the method,
defining properties against small exact solvers (scipy) where not, golden values of the original
GradCraft, hand-computed cases, the engine's compact rows vs the dense tables, and the loss /
epoch interface (uses_losses, end_epoch, state round trip)."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from mbkit.balancers import (
    BASELINES,
    DWA,
    MGDA,
    CAGrad,
    FixedWeights,
    GradCosine,
    GradCraft,
    GradNorm,
    GradVac,
    GradVacAdjusted,
    PCGrad,
    PCGradAdjusted,
    SingleTask,
    UncertaintyWeighting,
    accepted_kwargs,
    make,
)
from mbkit.balancers.cagrad import cagrad_weights
from mbkit.balancers.gram import min_norm_weights

try:
    import torchjd.aggregation as tjd
except ImportError:  # a test-only dependency
    tjd = None
needs_torchjd = pytest.mark.skipif(tjd is None, reason="torchjd (test extra) is not installed: pip install torchjd")
scipy_optimize = pytest.importorskip("scipy.optimize", reason="scipy is needed for the exact reference solvers")


pytestmark = pytest.mark.usefixtures("one_thread")


from helpers import losses_of, random_grads

GOLDEN = json.loads((Path(__file__).parent / "fixtures" / "gradcraft_original.json").read_text())

LOSS_METHODS = {"uncertainty", "dwa", "gradnorm"}


def matrix(grads: list[torch.Tensor]) -> torch.Tensor:
    """(K, N) all shared tensors flattened and concatenated: the Jacobian torchjd aggregates."""
    return torch.cat([g.reshape(g.shape[0], -1) for g in grads], dim=1)


def flat(out: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([o.reshape(-1) for o in out])


def scipy_simplex_min(fun, k: int) -> np.ndarray:
    """Minimise fun over the simplex with SLSQP from several starts (the exact reference)."""
    best = None
    for x0 in [np.full(k, 1.0 / k)] + [0.9 * np.eye(k)[i] + 0.1 / k for i in range(k)]:
        r = scipy_optimize.minimize(fun, x0, method="SLSQP", bounds=[(0, None)] * k,
                                    constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1}],
                                    options={"ftol": 1e-15, "maxiter": 1000})
        best = r if best is None or r.fun < best.fun else best
    return best.x


CASES = [(k, seed, aligned) for k in (2, 3, 4) for seed in (0, 1) for aligned in (False, True)] + [(5, 2, False)]
CASE_IDS = [f"K{k}-seed{s}-{'aligned' if a else 'conflict'}" for k, s, a in CASES]


# --------------------------------------------------------------------------- torchjd: the same aggregators


@needs_torchjd
@pytest.mark.parametrize("k, seed, aligned", CASES, ids=CASE_IDS)
def test_mgda_frank_wolfe_equals_torchjd(k, seed, aligned):
    grads = random_grads(k, seed, torch.float64, aligned=aligned)
    ours = flat(MGDA(solver="frank_wolfe")(grads))
    torch.testing.assert_close(ours, tjd.MGDA()(matrix(grads)), rtol=1e-10, atol=1e-12)


@needs_torchjd
@pytest.mark.parametrize("k, seed, aligned", CASES, ids=CASE_IDS)
def test_mgda_exact_is_at_most_torchjd_norm_and_close_to_it_converged(k, seed, aligned):
    """Frank-Wolfe converges to the exact min-norm point slowly: never below it, close with a tight tolerance."""
    grads = random_grads(k, seed, torch.float64, aligned=aligned)
    ours = flat(MGDA()(grads))
    ref = tjd.MGDA(epsilon=1e-7, max_iters=2000)(matrix(grads))
    assert ours.norm() <= ref.norm() * (1 + 1e-12)
    torch.testing.assert_close(ours, ref, rtol=0, atol=3e-3 * ref.norm().item())


def replayed_randperm(order: torch.Tensor, include_self: bool):
    """A stand-in for torch.randperm that makes torchjd visit the other tasks in our order (K, K-1):
    its i-th call returns task i's order (PCGrad: a permutation of all tasks, i skipped; GradVac:
    indices into the list of tasks other than i)."""
    rows = order.tolist()
    calls = iter(range(len(rows)))

    def randperm(n, *args, **kwargs):
        i = next(calls)
        return torch.tensor(rows[i] + [i] if include_self else [j - int(j > i) for j in rows[i]])

    return randperm


@needs_torchjd
@pytest.mark.parametrize("k, seed, aligned", CASES, ids=CASE_IDS)
def test_pcgrad_equals_torchjd(k, seed, aligned, monkeypatch):
    grads = random_grads(k, seed, torch.float64, aligned=aligned)
    bal = PCGrad(seed=seed)
    ours = flat(bal(grads))
    monkeypatch.setattr(torch, "randperm", replayed_randperm(bal.last_order, include_self=True))
    torch.testing.assert_close(ours, tjd.PCGrad()(matrix(grads)), rtol=1e-10, atol=1e-12)


@needs_torchjd
@pytest.mark.parametrize("k, seed, aligned", CASES, ids=CASE_IDS)
def test_gradvac_flat_equals_torchjd_over_steps(k, seed, aligned, monkeypatch):
    ours = GradVac(beta=0.5, granularity="flat", seed=seed)
    ref = tjd.GradVac(beta=0.5, eps=0.0)
    corrected = False
    for step in range(3):  # aligned first (positive targets), then the case's gradients
        grads = random_grads(k, 10 * seed + step, torch.float64, aligned=aligned or step == 0)
        got = flat(ours(grads))
        with monkeypatch.context() as m:
            m.setattr(torch, "randperm", replayed_randperm(ours.last_order, include_self=False))
            expected = ref(matrix(grads))
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-11)
        torch.testing.assert_close(ours.targets[0], ref.gramian_weighting._phi_t, rtol=1e-9, atol=1e-12)
        corrected |= not torch.allclose(got, flat(PCGrad(seed=seed)(grads)))  # beyond PCGrad's projections
    assert corrected or aligned


@needs_torchjd
@pytest.mark.parametrize("k, seed, aligned", CASES[:6], ids=CASE_IDS[:6])
def test_gradvac_per_tensor_equals_torchjd_per_tensor(k, seed, aligned, monkeypatch):
    grads = random_grads(k, seed, torch.float64, aligned=aligned)
    bal = GradVac(beta=0.5, granularity="tensor", seed=seed)
    out = bal(grads)
    for g, o in zip(grads, out):  # one order per call, shared by the tensors
        with monkeypatch.context() as m:
            m.setattr(torch, "randperm", replayed_randperm(bal.last_order, include_self=False))
            expected = tjd.GradVac(beta=0.5, eps=0.0)(g.reshape(k, -1)).view(o.shape)
        torch.testing.assert_close(o, expected, rtol=1e-9, atol=1e-11)


@needs_torchjd
@pytest.mark.parametrize("k, seed, aligned", CASES[:6], ids=CASE_IDS[:6])
def test_fixed_and_single_task_equal_torchjd_constant(k, seed, aligned):
    grads = random_grads(k, seed, torch.float64, aligned=aligned)
    weights = torch.linspace(1.0, 0.2, k, dtype=torch.float64)
    fixed = flat(FixedWeights(weights=weights.tolist())(grads))
    torch.testing.assert_close(fixed, tjd.Constant(weights)(matrix(grads)), rtol=1e-12, atol=1e-12)
    one_hot = torch.zeros(k, dtype=torch.float64)
    one_hot[0] = 1
    torch.testing.assert_close(flat(SingleTask()(grads)), tjd.Constant(one_hot)(matrix(grads)), rtol=0, atol=0)


def _cvxpy_missing() -> bool:
    try:
        import clarabel  # noqa: F401
        import cvxpy  # noqa: F401
    except ImportError:
        return True
    return False


@needs_torchjd
@pytest.mark.skipif(_cvxpy_missing(), reason="torchjd's CAGrad needs its extra: pip install 'torchjd[cagrad]'")
@pytest.mark.parametrize("k, seed, aligned", CASES, ids=CASE_IDS)
def test_cagrad_equals_torchjd(k, seed, aligned):
    grads = random_grads(k, seed, torch.float64, aligned=aligned)
    ours = flat(CAGrad(c=0.4, rescale=False)(grads))
    ref = tjd.CAGrad(c=0.4, norm_eps=0.0)(matrix(grads))
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6 * ref.norm().item())


# --------------------------------------------------------------------------- defining properties, exact solvers


@pytest.mark.parametrize("k, seed, aligned", CASES, ids=CASE_IDS)
def test_mgda_is_the_min_norm_point_of_the_convex_hull(k, seed, aligned):
    grads = random_grads(k, seed, torch.float64, aligned=aligned)
    j = matrix(grads)
    gram = (j @ j.T).numpy()
    w = scipy_simplex_min(lambda a: a @ gram @ a, k)
    d = flat(MGDA()(grads))
    assert d.norm() ** 2 <= w @ gram @ w + 1e-12
    torch.testing.assert_close(d, torch.tensor(w) @ j, rtol=0, atol=1e-6 * j.norm().item())
    # optimality: d . g_k >= ||d||^2 for every task (a common descent direction, or d = 0)
    assert (j @ d >= d @ d - 1e-9 * j.norm() ** 2).all()


def test_mgda_by_hand():
    orthogonal = [torch.tensor([[1.0, 0.0], [0.0, 1.0]])]
    torch.testing.assert_close(MGDA()(orthogonal)[0], torch.tensor([0.5, 0.5]))
    nested = [torch.tensor([[1.0, 0.0], [3.0, 0.0]])]  # same direction: the shorter one
    torch.testing.assert_close(MGDA()(nested)[0], torch.tensor([1.0, 0.0]))
    opposite = [torch.tensor([[1.0, 0.0], [-2.0, 0.0]])]  # Pareto-stationary: no step
    torch.testing.assert_close(MGDA()(opposite)[0], torch.tensor([0.0, 0.0]))
    # g0 = (1, 0), g1 = (-1, 2): alpha0 = g1.(g1 - g0) / ||g1 - g0||^2 = 6/8, d = (0.5, 0.5)
    bal = MGDA()
    torch.testing.assert_close(bal([torch.tensor([[1.0, 0.0], [-1.0, 2.0]])])[0], torch.tensor([0.5, 0.5]))
    torch.testing.assert_close(bal.last_weights[0], torch.tensor([0.75, 0.25]))


def test_min_norm_solver_batched_and_degenerate():
    """Every group solved at once; duplicated and zero gradients (singular systems) still give the minimum."""
    g = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], [[1.0, 1.0], [0.0, 0.0], [2.0, 0.0]]])  # (G=2, K=3, N=2)
    gram = g @ g.transpose(1, 2)
    alpha = min_norm_weights(gram)
    d = (alpha.unsqueeze(-1) * g.double()).sum(1)
    torch.testing.assert_close(d, torch.tensor([[0.5, 0.5], [0.0, 0.0]], dtype=torch.float64))
    torch.testing.assert_close(alpha.sum(-1), torch.ones(2, dtype=torch.float64))


@pytest.mark.parametrize("c", [0.4, 2.0])
@pytest.mark.parametrize("k, seed, aligned", CASES[4:], ids=CASE_IDS[4:])
def test_cagrad_solves_its_dual_and_primal(k, seed, aligned, c):
    grads = random_grads(k, seed, torch.float64, aligned=aligned)
    j = matrix(grads)
    gram = (j @ j.T).numpy()
    a = gram.mean(1)
    root_phi = c * math.sqrt(a.mean())
    objective = lambda w: a @ w + root_phi * math.sqrt(max(w @ gram @ w, 0.0) + 1e-300)  # noqa: E731
    w_ref = scipy_simplex_min(objective, k)
    v = cagrad_weights(torch.tensor(gram).unsqueeze(0), c)[0].numpy()
    w = v - 1.0 / k
    w = w / w.sum()
    assert objective(w) <= objective(w_ref) + 1e-9 * abs(objective(w_ref)) + 1e-12
    d = flat(CAGrad(c=c, rescale=False)(grads))
    g0 = j.mean(0)
    # primal (eq. 4): d lies on the ball around g0 and no point of the ball does better for the worst task
    assert (d - g0).norm() <= c * g0.norm() * (1 + 1e-9) + 1e-12
    gen = torch.Generator().manual_seed(seed)
    u = torch.randn(2000, j.shape[1], generator=gen, dtype=torch.float64)
    radius = c * g0.norm() * torch.rand(2000, 1, generator=gen, dtype=torch.float64)
    ball = g0 + radius * u / u.norm(dim=1, keepdim=True)
    assert (j @ d).min() >= (ball @ j.T).min(dim=1).values.max() - 1e-9 * j.norm() ** 2
    rescaled = flat(CAGrad(c=c)(grads))
    torch.testing.assert_close(rescaled, d / (1 + c**2))


def test_cagrad_by_hand():
    # two orthogonal unit gradients: by symmetry w = (1/2, 1/2), g_w = g0 = (1/2, 1/2), so d = (1 + c) g0
    g = [torch.tensor([[1.0, 0.0], [0.0, 1.0]])]
    torch.testing.assert_close(CAGrad(c=0.4, rescale=False)(g)[0], torch.tensor([0.7, 0.7]))
    torch.testing.assert_close(CAGrad(c=0.4)(g)[0], torch.tensor([0.7, 0.7]) / 1.16)
    torch.testing.assert_close(CAGrad(c=0.0)(random_grads())[0], random_grads()[0].mean(0) / 1.0)  # c = 0: the mean


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(a.reshape(-1) @ b.reshape(-1) / (a.norm() * b.norm()))


def test_gradvac_reaches_its_target_cosine_and_first_call_is_pcgrad():
    k = 2  # with one partner the corrected cosine is exactly the target
    grads = random_grads(k, seed=3, dtype=torch.float64)
    bal = GradVac(beta=0.5, granularity="tensor")
    first = bal.transform(grads)  # targets start at 0: PCGrad
    ref = PCGrad(granularity="tensor").transform(grads)
    for a, b in zip(first, ref):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    targets = torch.full((len(grads), k, k), 0.3, dtype=torch.float64)
    bal.load_state_dict({"targets": targets.clone(), "generator": bal.generator.get_state()})
    grads = random_grads(k, seed=4, dtype=torch.float64)
    out = bal.transform(grads)
    n_raised = 0
    for j, (g, o) in enumerate(zip(grads, out)):
        for i in range(k):
            before, after = _cos(g[i], g[1 - i]), _cos(o[i], g[1 - i])
            if before < 0.3:
                assert after == pytest.approx(0.3, abs=1e-12)
                n_raised += 1
            else:
                assert torch.equal(o[i], g[i])
            assert bal.targets[j, i, 1 - i] == pytest.approx(0.5 * 0.3 + 0.5 * before, abs=1e-12)
    assert n_raised > 0


def test_gradvac_adjusted_anchors_on_the_target():
    grads = random_grads(4, seed=5, dtype=torch.float64)
    bal = GradVacAdjusted(beta=0.5)
    first = bal.transform(grads)
    for a, b in zip(first, PCGradAdjusted().transform(grads)):  # targets 0: PCGrad (adjusted)
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    bal.load_state_dict({"targets": torch.full((len(grads), 4), 0.2, dtype=torch.float64)})
    out = bal.transform(grads)
    n_raised = 0
    for g, o in zip(grads, out):
        assert torch.equal(o[0], g[0])  # the target is never changed
        for kk in range(1, 4):
            if _cos(g[kk], g[0]) < 0.2:
                assert _cos(o[kk], g[0]) == pytest.approx(0.2, abs=1e-12)
                n_raised += 1
            else:
                assert torch.equal(o[kk], g[kk])
    assert n_raised > 0


def test_gradient_cosine_by_hand():
    g = [torch.tensor([[1.0, 0.0], [-1.0, 1.0], [1.0, 1.0], [0.0, 0.0]])]  # cos: 1, -0.707, 0.707, 0 (zero task)
    torch.testing.assert_close(GradCosine()(g)[0], torch.tensor([2.0, 1.0]))  # task 1 dropped
    bal = GradCosine(weighted=True)
    torch.testing.assert_close(bal(g)[0], torch.tensor([1.0 + 0.5**0.5, 0.5**0.5]))
    torch.testing.assert_close(bal.last_weights[0], torch.tensor([1.0, 0.0, 0.5**0.5, 0.0]))


def test_gradient_cosine_flat_and_per_tensor_differ():
    """The cosine over all shared parameters gates a task everywhere; per tensor, tensor by tensor."""
    g = [torch.tensor([[1.0, 0.0], [-1.0, 0.0]]), torch.tensor([[1.0, 0.0], [3.0, 0.0]])]  # flat cos > 0
    assert torch.equal(GradCosine()(g)[0], torch.tensor([0.0, 0.0]))
    assert torch.equal(GradCosine(granularity="tensor")(g)[0], torch.tensor([1.0, 0.0]))


# --------------------------------------------------------------------------- GradCraft: the original's values


def golden(name: str) -> tuple[dict, torch.Tensor]:
    sc = GOLDEN["scenarios"][name]
    return sc, torch.tensor(sc["inputs"], dtype=torch.float32)


@pytest.mark.parametrize("name", ["A_default", "B_two_task_eps0", "D_no_conflict", "F_shared_and_specific"])
def test_gradcraft_reproduces_original(name):
    sc, x = golden(name)
    bal = GradCraft(tau=sc["params"]["tau"], epsilon=sc["params"]["epsilon"])
    crafted = bal.transform([x])[0]
    expected = torch.tensor(sc["intermediates"]["crafted"])
    torch.testing.assert_close(crafted, expected, rtol=1e-6, atol=1e-6 * expected.abs().max().item())
    out = bal([x])[0]
    shared = torch.tensor(sc["shared_mask"])
    golden_out = torch.tensor(sc["output"])
    # all of a balancer's tensors are shared (mean); F's task-specific coordinates are summed by the original
    torch.testing.assert_close(out[shared], golden_out[shared], rtol=1e-6, atol=1e-6 * golden_out.abs().max().item())
    torch.testing.assert_close(crafted.sum(0)[~shared], golden_out[~shared], rtol=1e-6, atol=1e-5)
    partners = {int(i): js for i, js in sc["intermediates"]["conflicting_partners"].items()}
    assert {i: [j for j in range(x.shape[0]) if x[i] @ x[j] < 0] for i in partners} == partners


def test_gradcraft_two_tasks_is_pcgrad_on_rescaled_gradients():
    sc, x = golden("B_two_task_eps0")
    norms = x.double().norm(dim=1)
    rescaled = x.double() * (norms.max() / norms).unsqueeze(1)
    expected = PCGrad(reduction="mean").transform([rescaled])[0]
    torch.testing.assert_close(GradCraft().transform([x.double()])[0], expected, rtol=1e-12, atol=1e-12)


def test_gradcraft_zero_gradient_is_finite_where_the_original_gives_nan():
    sc, x = golden("E_zero_grad")
    assert torch.isnan(torch.tensor(sc["output"])).all()  # what the original did
    crafted = GradCraft().transform([x])[0]
    expected = torch.tensor(sc["intermediates"]["crafted"])
    torch.testing.assert_close(crafted[:2], expected[:2], rtol=1e-6, atol=1e-5)  # the other tasks as there
    assert torch.equal(crafted[2], torch.zeros_like(crafted[2]))
    torch.testing.assert_close(GradCraft()([x])[0], crafted.mean(0))


def test_gradcraft_epsilon_sets_the_crafted_inner_products():
    x = matrix(random_grads(4, seed=2, dtype=torch.float64))  # 4 conflicting pairs
    eps, tau = 0.1, 0.5
    crafted = GradCraft(tau=tau, epsilon=eps).transform([x])[0]
    norms = x.norm(dim=1)
    rescaled = x * (tau * norms.max() / norms + 1 - tau).unsqueeze(1)
    n_conflicts = 0
    for i, j in itertools.permutations(range(4), 2):
        if rescaled[i] @ rescaled[j] < 0:
            n_conflicts += 1
            target = eps * rescaled[i].norm() * rescaled[j].norm()
            assert float(crafted[i] @ rescaled[j]) == pytest.approx(float(target), rel=1e-9)
    assert n_conflicts == 8


# --------------------------------------------------------------------------- loss-based methods by hand


def test_uncertainty_by_hand_and_fixed_point():
    g = [torch.tensor([[1.0, 0.0], [0.0, 1.0]])]
    bal = UncertaintyWeighting(lr=0.1)
    losses = torch.tensor([0.5, 2.0])
    assert torch.equal(bal(g, losses=losses)[0], torch.tensor([1.0, 1.0]))  # s = 0: Vanilla
    # first Adam step: -lr * sign(dL/ds) with dL/ds = 1 - L -> s = (-0.1, 0.1)
    torch.testing.assert_close(bal.log_vars, torch.tensor([-0.1, 0.1]))
    torch.testing.assert_close(bal(g, losses=losses)[0], torch.tensor([math.exp(0.1), math.exp(-0.1)]))
    for _ in range(3000):
        bal(g, losses=losses)
    torch.testing.assert_close(bal.last_weights[0], 1 / losses, rtol=2e-2, atol=0)  # exp(-s) -> 1 / L
    half = UncertaintyWeighting(lr=0.1, regularizer=0.5)
    for _ in range(3000):
        half(g, losses=losses)
    torch.testing.assert_close(half.last_weights[0], 0.5 / losses, rtol=2e-2, atol=0)  # eq. 10: 1 / (2 L)


def test_dwa_by_hand_per_epoch_and_per_step():
    g = [torch.eye(3)]
    bal = DWA(temperature=2.0)
    epochs = [[1.0, 1.0, 1.0], [0.5, 0.9, 1.0], [0.25, 0.9, 1.1]]  # constant within an epoch
    seen = []
    for e, values in enumerate(epochs):
        for _ in range(3):
            out = bal(g, losses=torch.tensor(values))
            seen.append(out[0])  # g = I: the combined gradient is the weights
        bal.end_epoch()
    assert all(torch.equal(w, torch.ones(3)) for w in seen[:6])  # epochs 1 and 2: weights 1
    rates = torch.tensor([0.5, 0.9, 1.0])  # L(2) / L(1)
    expected = 3 * torch.softmax(rates / 2, 0)
    for w in seen[6:]:
        torch.testing.assert_close(w, expected)
    torch.testing.assert_close(bal.last_weights[0].sum(), torch.tensor(3.0))
    nxt = bal(g, losses=torch.tensor([1.0, 1.0, 1.0]))[0]  # epoch 4 uses L(3) / L(2)
    torch.testing.assert_close(nxt, 3 * torch.softmax(torch.tensor([0.5, 1.0, 1.1]) / 2, 0))
    step = DWA(period="step")
    for values in epochs:
        out = step(g, losses=torch.tensor(values))[0]
    torch.testing.assert_close(out, expected)  # the third call uses the first two calls' ratio


def test_gradnorm_by_hand_and_equalises_weighted_norms():
    g = [torch.tensor([[3.0, 4.0], [0.0, 1.0]])]  # norms 5 and 1
    bal = GradNorm(alpha=1.5, lr=0.1)
    losses = torch.tensor([0.6, 0.6])
    assert torch.equal(bal(g, losses=losses)[0], torch.tensor([3.0, 5.0]))  # weights 1 at the start
    # G = (5, 1), G_bar = 3, r = 1: dL/dw = sign(G - 3) * n = (5, -1); Adam: w - 0.1 * (1, -1) = (0.9, 1.1); sum 2
    torch.testing.assert_close(bal.weights, torch.tensor([0.9, 1.1]))
    for _ in range(400):
        bal(g, losses=losses)
    w = bal.weights
    torch.testing.assert_close(w[0] * 5, w[1] * 1, rtol=0.05, atol=0)  # equal weighted norms at equal rates
    torch.testing.assert_close(w.sum(), torch.tensor(2.0))


def test_gradnorm_favours_the_slower_task():
    g = [torch.tensor([[1.0, 0.0], [0.0, 1.0]])]  # equal norms
    bal = GradNorm(alpha=1.5, lr=0.05)
    bal(g, losses=torch.tensor([1.0, 1.0]))
    assert torch.equal(bal.weights, torch.ones(2))  # equal norms and rates: nothing to change
    for _ in range(50):
        bal(g, losses=torch.tensor([0.5, 1.0]))  # task 0 trained faster (smaller loss ratio)
    assert bal.weights[1] > 1.0 > bal.weights[0]


@pytest.mark.parametrize("name", sorted(LOSS_METHODS | {"famo"}))
def test_loss_methods_need_losses(name):
    bal = make(name)
    assert bal.uses_losses
    with pytest.raises(ValueError, match="losses"):
        bal(random_grads())
    with pytest.raises(ValueError, match="K=4"):
        bal(random_grads(), losses=torch.ones(3))


def test_chain_passes_losses_and_end_epoch():
    chained = make("dwa+pcgrad_adjusted")
    assert chained.uses_losses and not getattr(make("mgda"), "uses_losses", False)
    alone, then = DWA(), make("pcgrad_adjusted")
    for epoch in range(4):
        for step in range(2):
            grads, losses = random_grads(seed=epoch), losses_of(step=epoch)
            out = chained(grads, losses=losses)
            expected = then(alone.transform(grads, losses=losses))
            assert all(torch.equal(a, b) for a, b in zip(out, expected))
        chained.end_epoch()
        alone.end_epoch()
    assert chained.balancers[0].n_history == 4


# --------------------------------------------------------------------------- changes the update where it should


def _differs(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return any(not torch.allclose(x, y, rtol=1e-5, atol=1e-7) for x, y in zip(a, b))


def test_each_method_acts_on_a_conflict_or_imbalance_and_not_otherwise():
    conflict, aligned = random_grads(4, seed=5), random_grads(4, seed=5, aligned=True)
    same = [g[:1].expand(4, *g.shape[1:]).clone() for g in aligned]  # four identical task gradients
    total = lambda gs: [g.sum(0) for g in gs]  # noqa: E731
    mean = lambda gs: [g.mean(0) for g in gs]  # noqa: E731
    # gradient-combination methods: Vanilla (or its mean) without conflicts, something else with them
    for name, plain, quiet in [
        ("cosine", total, aligned), ("gradvac", total, aligned), ("gradvac_adjusted", total, aligned),
        ("mgda", mean, same), ("cagrad", lambda gs: [g * (1.4 / 1.16) for g in mean(gs)], same),
        ("gradcraft", mean, same),
    ]:
        assert not _differs(make(name)(quiet), plain(quiet)), name
        assert _differs(make(name)(conflict), plain(conflict)), name
    assert not _differs(make("fixed", aux_weight=1.0)(conflict), total(conflict))
    assert _differs(make("fixed")(conflict), total(conflict))
    # loss weighting: Vanilla at the start and with equal rates of descent, weights move otherwise
    for name in sorted(LOSS_METHODS):
        bal = make(name, lr=0.1) if "lr" in accepted_kwargs(name) else make(name, period="step")
        assert not _differs(bal(conflict, losses=torch.ones(4)), total(conflict)), name
        out = [bal(conflict, losses=losses_of(step=s)) for s in range(3)][-1]
        assert _differs(out, total(conflict)), name


# --------------------------------------------------------------------------- registry


def test_registry_labels_and_reprs():
    assert set(BASELINES) <= set(make.__globals__["REGISTRY"])
    labels = {name: str(make(name)) for name in BASELINES}
    assert labels == {
        "single_task": "Single task", "fixed": "Fixed weights (aux 0.5)", "uncertainty": "Uncertainty weighting",
        "dwa": "DWA (T=2)", "gradnorm": "GradNorm (alpha=1.5)", "mgda": "MGDA", "cosine": "Gradient cosine",
        "gradvac": "GradVac", "gradvac_adjusted": "GradVac (adjusted)", "cagrad": "CAGrad (c=0.4)",
        "gradcraft": "GradCraft", "rlw": "RLW", "famo": "FAMO",
    }
    for name in BASELINES:
        bal = make(name)
        assert all(arg in repr(bal) for arg in accepted_kwargs(name)), (name, repr(bal))
        assert type(bal).__doc__ and type(bal).name == name
    assert str(make("uncertainty+pcgrad_adjusted")) == "Uncertainty weighting + PCGrad (adjusted)"
    with pytest.raises(ValueError, match="aux_weight or weights"):
        make("fixed", aux_weight=0.2, weights=[1.0, 0.1])
    with pytest.raises(ValueError, match="K=3"):
        make("fixed", weights=[1.0, 0.5])(random_grads(k=3))
    with pytest.raises(ValueError, match="solver"):
        make("mgda", solver="qp")


def test_cagrad_stays_bounded_when_the_min_norm_point_is_almost_zero():
    # g_1 = -s g_0 puts the min-norm point at zero up to rounding: c ||g_0|| / ||g_w|| must not blow up
    # (without the guard this case gave weights of 6.7e5)
    from mbkit.balancers.cagrad import cagrad_weights

    g = torch.tensor([[-0.050731536, 0.039373107], [0.0025376598, -0.001969496],
                      [-1.0309830, -1.1017122], [-0.6222964, -1.0002874]])
    gram = (g.double() @ g.double().T).unsqueeze(0)
    weights = cagrad_weights(gram, 0.4)
    assert torch.isfinite(weights).all() and float(weights.abs().max()) < 10.0, weights
