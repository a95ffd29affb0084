"""MetaBalance on the shared representation, the cheap controls RLW and FAMO, the representation path that
loss-weighting methods take, and the training loop's thread count."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from helpers import TINY, losses_of, random_grads
from mbkit.balancers import FAMO, RandomLossWeighting, RepresentationMetaBalance, make
from mbkit.grads import GradEngine
from mbkit.model import ModelConfig, SharedBottomNeuMF
from mbkit.train import fit, new_run, step_path, train_step

try:
    import torchjd.aggregation as tjd
except ImportError:  # a test-only dependency
    tjd = None
needs_torchjd = pytest.mark.skipif(tjd is None, reason="torchjd (test extra) is not installed: pip install torchjd")

pytestmark = pytest.mark.usefixtures("one_thread")


def flat(out: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([o.reshape(-1) for o in out])


# --------------------------------------------------------------------------- RLW


@needs_torchjd
@pytest.mark.parametrize("k, seed", [(2, 0), (4, 1), (5, 7)])
def test_rlw_mean_equals_torchjd_random_on_the_same_draws(k, seed):
    """torchjd's Random draws its N(0, I) from the global generator; seeded alike, ours draws the same numbers,
    step after step (torchjd combines the rows of the Jacobian, the flattened and concatenated tensors; it
    draws in the Jacobian's dtype, ours in float32, so the Jacobian is float32)."""
    ours = RandomLossWeighting(reduction="mean", seed=seed)
    theirs = tjd.Random()
    torch.manual_seed(seed)
    for step in range(3):
        grads = random_grads(k, seed=step)
        matrix = torch.cat([g.reshape(k, -1) for g in grads], dim=1)
        torch.testing.assert_close(flat(ours(grads)), theirs(matrix), rtol=1e-6, atol=1e-6)


def test_rlw_weights_are_a_scaled_softmax_with_mean_one_and_follow_the_seed():
    bal = RandomLossWeighting(seed=3)
    draws = []
    for _ in range(4000):
        bal(random_grads(seed=0))
        draws.append(bal.last_weights[0])
    w = torch.stack(draws)  # (4000, 4)
    assert (w > 0).all() and torch.allclose(w.sum(1), torch.full((4000,), 4.0))
    assert (w.mean(0) - 1).abs().max() < 0.05  # E[K softmax(z)_k] = 1 by symmetry
    assert len({tuple(x.tolist()) for x in w[:10]}) == 10  # new weights every step
    again = RandomLossWeighting(seed=3)
    again(random_grads(seed=0))
    other = RandomLossWeighting(seed=4)
    other(random_grads(seed=0))
    assert torch.equal(again.last_weights[0], w[0]) and not torch.equal(other.last_weights[0], w[0])
    mean = RandomLossWeighting(seed=3, reduction="mean")
    mean(random_grads(seed=0))
    torch.testing.assert_close(mean.last_weights[0] * 4, w[0])


# --------------------------------------------------------------------------- FAMO


def famo_reference(loss_pairs: list[tuple[torch.Tensor, torch.Tensor]], w_lr=0.025, gamma=0.01, eps=1e-8):
    """FAMO as in Liu et al.'s code, through autograd and torch.optim.Adam: per step the weights that the
    weighted loss sum_k z_k log(D_k) / c puts on each task's loss, then the logits' update from the losses
    after the step."""
    k = loss_pairs[0][0].shape[0]
    w = torch.zeros(k, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([w], lr=w_lr, weight_decay=gamma)
    out = []
    for before, after in loss_pairs:
        losses = before.clone().requires_grad_()
        z = torch.softmax(w, -1)
        d = losses + eps
        c = (z / d).sum().detach()
        (weights,) = torch.autograd.grad((d.log() * z / c).sum(), losses)
        out.append(weights)
        delta = ((before + eps).log() - (after + eps).log()).detach()
        (g,) = torch.autograd.grad(torch.softmax(w, -1), w, grad_outputs=delta)
        opt.zero_grad()
        w.grad = g
        opt.step()
    return out, w.detach()


def test_famo_equals_the_papers_algorithm_through_autograd():
    k = 4
    pairs = [(losses_of(k, s).double(), losses_of(k, s + 1).double() * (1 + 0.05 * (-1) ** s)) for s in range(12)]
    expected, logits = famo_reference(pairs)
    bal = FAMO(reduction="mean")
    for (before, after), want in zip(pairs, expected):
        grads = random_grads(k, seed=0, dtype=torch.float64)
        combined = bal(grads, losses=before)
        torch.testing.assert_close(bal.last_weights[0], want, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(flat(combined), flat([(w.view(-1, *([1] * (g.dim() - 1))) * g).sum(0)
                                                         for w, g in zip([want] * len(grads), grads)]))
        bal.after_step(after)
    torch.testing.assert_close(bal.logits, logits, rtol=1e-10, atol=1e-12)
    summed = FAMO()
    summed(random_grads(k, seed=0, dtype=torch.float64), losses=pairs[0][0])
    torch.testing.assert_close(summed.last_weights[0], expected[0] * k)


def test_famo_moves_weight_to_the_task_whose_loss_falls_slower():
    bal = FAMO(w_lr=0.1)
    loss = torch.tensor([1.0, 1.0])
    for _ in range(30):
        bal(random_grads(2, seed=0), losses=loss)
        after = loss * torch.tensor([0.9, 0.999])  # task 0 learns fast, task 1 hardly
        bal.after_step(after)
    z = torch.softmax(bal.logits, 0)
    assert z[1] > 0.6 > z[0]
    with pytest.raises(ValueError, match="needs a step first"):
        bal.after_step(loss)


# --------------------------------------------------------------------------- MetaBalance on the representation


def _model(k: int = 4) -> SharedBottomNeuMF:
    torch.manual_seed(0)
    model = SharedBottomNeuMF(ModelConfig(13, 17, k, emb_dim=8, mlp_layers=(8, 4), tower_layers=(6,)))
    gen = torch.Generator().manual_seed(100)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.5 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return model.train()


def _batch(step: int, k: int = 4, b: int = 48):
    gen = torch.Generator().manual_seed(step)
    return (torch.randint(0, 6, (b,), generator=gen), torch.randint(0, 17, (b,), generator=gen),
            (torch.rand(b, k, generator=gen) < 0.4).float())


@pytest.mark.parametrize("mode", ["compact", "dense"])
def test_representation_metabalance_is_the_paper_formula_on_dh_and_reaches_every_parameter(mode):
    """The weights follow MetaBalance's moving averages of ||dL_k/dh||_F, computed here by hand; the bottom's
    .grad equals sum_k w_k dL_k/dtheta from the per-task parameter gradients of the same batch."""
    model, r, beta = _model(), 0.6, 0.9
    engine, bal = GradEngine(model, mode), RepresentationMetaBalance(relax_factor=r, beta=beta)
    m = torch.zeros(4)
    for step in range(3):
        batch = _batch(step)
        torch.manual_seed(step)
        tg = engine.representation(*batch)
        torch.manual_seed(step)
        per_param = engine(*batch)  # same dropout masks
        (dh,) = tg.shared
        assert dh.shape == (4, 48, model.rep_dim) and tg.rows == [None]
        m = beta * m + (1 - beta) * dh.flatten(1).norm(dim=1)
        w = torch.cat([torch.ones(1), r * m[0] / m[1:] + 1 - r])
        (combined,) = bal(tg.shared)
        torch.testing.assert_close(bal.last_weights[0], w)
        torch.testing.assert_close(combined, (w.view(4, 1, 1) * dh).sum(0))
        tg.bottom(combined)
        for (name, p), g, rows in zip(engine.shared.items(), per_param.shared, per_param.rows):
            want = (w.view(4, *([1] * (g.dim() - 1))) * g).sum(0)
            got = p.grad.to_dense() if p.grad.is_sparse else p.grad
            if rows is not None:  # the touched rows (dense mode pads them with zero rows of the largest id)
                want = torch.zeros_like(got).index_add_(0, rows, want)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6, msg=name)
        assert all(torch.equal(tg.towers[n], per_param.towers[n]) for n in tg.towers)


def test_representation_sum_equals_the_summed_backward():
    model = _model()
    engine = GradEngine(model, "compact")
    batch = _batch(0)
    torch.manual_seed(0)
    tg = engine.representation(*batch)
    tg.bottom(tg.shared[0].sum(0))
    via_h = {n: p.grad.to_dense().clone() if p.grad.is_sparse else p.grad.clone() for n, p in engine.shared.items()}
    torch.manual_seed(0)
    engine.backward_sum(*batch)
    for n, p in engine.shared.items():
        torch.testing.assert_close(via_h[n], p.grad.to_dense() if p.grad.is_sparse else p.grad, msg=n)
    with pytest.raises(ValueError, match="must have shape"):
        tg.bottom(torch.zeros(3, 2))


def test_representation_level_in_chains_and_labels():
    assert str(make("metabalance_rep", relax_factor=0.3)) == "MetaBalance on h (r=0.3)"
    assert make("metabalance_rep+famo").level == "representation"
    with pytest.raises(ValueError, match="mixes the shared parameters' gradients with the representation's"):
        make("metabalance_rep+pcgrad")


# --------------------------------------------------------------------------- the path a step takes


def test_step_paths():
    cfg = TINY
    for name, path in [("vanilla", "sum"), ("metabalance", "parameters"), ("metabalance_rep", "representation"),
                       ("fixed", "representation"), ("famo", "representation"), ("gradnorm", "parameters"),
                       ("metabalance+famo", "parameters"), ("fixed+rlw", "representation")]:
        assert step_path(dataclasses.replace(cfg, balancer=name), make(name)) == path, name
        diagnosed = "representation" if name == "metabalance_rep" else "parameters"
        assert step_path(dataclasses.replace(cfg, balancer=name), make(name), diagnose=True) == diagnosed


@pytest.mark.parametrize("name", ["fixed", "single_task", "uncertainty", "dwa", "rlw", "famo", "fixed+famo"])
def test_loss_weighting_on_the_representation_path_equals_the_parameter_path(task_data, name):
    """Two copies of one run take three steps each, one along each path: parameters, balancer states and
    losses agree up to float rounding."""
    cfg = dataclasses.replace(TINY, balancer=name, balancer_kwargs={"lr": 0.1} if name == "uncertainty" else {})
    runs = [new_run(task_data, cfg, task_data.device) for _ in range(2)]
    batches = list(zip(range(3), task_data.batches(cfg.batch_size, torch.Generator().manual_seed(0))))
    for (run, engine), path in zip(runs, ["representation", "parameters"]):
        run.model.train()
        torch.manual_seed(0)
        for _, (users, items, labels) in batches:
            train_step(run, engine, users, items, labels, path=path)
    (a, _), (b, _) = runs
    for (n, p), q in zip(a.model.named_parameters(), b.model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7, msg=n)
    # the balancers' own state (uncertainty's log-variances, FAMO's logits, DWA's losses, RLW's generator)
    torch.testing.assert_close(a.balancer.state_dict(), b.balancer.state_dict(), rtol=1e-5, atol=1e-7)


def test_famo_gets_the_batch_losses_after_the_step(task_data, monkeypatch):
    """Per step the loop hands FAMO the batch's losses, then the same batch's losses after the step: lower,
    on average, since the step descended on that batch."""
    before, after = [], []
    call, update = FAMO.__call__, FAMO.after_step
    monkeypatch.setattr(FAMO, "__call__", lambda self, g, losses: (before.append(losses), call(self, g, losses))[1])
    monkeypatch.setattr(FAMO, "after_step", lambda self, losses: (after.append(losses), update(self, losses)))
    res = fit(task_data, dataclasses.replace(TINY, epochs=1, balancer="famo"))
    assert len(before) == len(after) == int(res.history["steps"].sum())
    assert (torch.stack(after) < torch.stack(before)).float().mean() > 0.6


def test_representation_diagnostics_name_the_representation(task_data):
    res = fit(task_data, dataclasses.replace(TINY, epochs=1, balancer="metabalance_rep", diagnostics_every=3))
    assert set(res.diagnostics["tensor"]) == {"representation"} and res.diagnostics["weight"].notna().all()


# --------------------------------------------------------------------------- threads


@pytest.mark.parametrize("threads", [1, 2])
def test_fit_trains_and_ranks_with_its_thread_count_and_restores_the_process_setting(task_data, threads):
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        seen = []
        fit(task_data, dataclasses.replace(TINY, epochs=1, threads=threads),
            on_epoch=lambda *_: seen.append(torch.get_num_threads()))
        assert seen == [threads] and torch.get_num_threads() == 3
        fit(task_data, dataclasses.replace(TINY, epochs=1, threads=0),
            on_epoch=lambda *_: seen.append(torch.get_num_threads()))
        assert seen[-1] == 3  # 0: the process's setting
    finally:
        torch.set_num_threads(before)
    with pytest.raises(ValueError, match="threads=-1 must be >= 0"):
        dataclasses.replace(TINY, threads=-1)
