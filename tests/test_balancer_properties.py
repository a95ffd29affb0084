"""Properties every balancer of the registry must have, run over every registered method (with its defaults),
the study's chains and the non-default settings that take other code paths."""

from __future__ import annotations

import inspect
import io

import pytest
import torch

from helpers import DEVICES, call, losses_of, random_grads
from mbkit.balancers import METHODS, REGISTRY, Balancer, accepted_kwargs, make
from mbkit.grads import GradEngine
from mbkit.model import ModelConfig, SharedBottomNeuMF

CONFIGS = [(name, {}) for name in REGISTRY] + [(m, {}) for m in METHODS if "+" in m] + [
    ("metabalance", {"strategy": "reduce"}),
    ("metabalance", {"strategy": "enlarge", "relax_factor": 1.0}),
    ("pcgrad_adjusted", {"granularity": "flat"}),
    ("pcgrad", {"granularity": "tensor", "reduction": "mean"}),
    ("metabalance+pcgrad", {"relax_factor": 0.5, "reduction": "mean", "granularity": "tensor"}),
    ("fixed", {"weights": (1.0, 0.2, 0.3, 0.4)}),
    ("uncertainty", {"regularizer": 0.5, "lr": 0.1}),
    ("dwa", {"period": "step"}),
    ("gradnorm", {"layer": 1, "lr": 0.1}),
    ("mgda", {"granularity": "tensor"}),
    ("mgda", {"solver": "frank_wolfe"}),
    ("cosine", {"weighted": True, "granularity": "tensor"}),
    ("gradvac", {"granularity": "flat", "beta": 0.5}),
    ("gradvac_adjusted", {"granularity": "flat", "beta": 0.5}),
    ("cagrad", {"rescale": False, "granularity": "tensor"}),
    ("gradcraft", {"tau": 0.5, "epsilon": 0.1, "granularity": "tensor"}),
    ("uncertainty+pcgrad_adjusted", {}),
    ("metabalance+gradvac_adjusted", {}),
    ("metabalance+dwa", {}),
]
IDS = [m + "".join(f"-{k}={v}" for k, v in kw.items()) for m, kw in CONFIGS]
with_configs = pytest.mark.parametrize("name, kwargs", CONFIGS, ids=IDS)


pytestmark = pytest.mark.usefixtures("one_thread")


def _differs(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return any(not torch.allclose(x, y, rtol=1e-5, atol=1e-7) for x, y in zip(a, b))


def _end_epoch(bal) -> None:
    if callable(getattr(bal, "end_epoch", None)):
        bal.end_epoch()


def test_every_registered_method_is_in_the_suite():
    assert {name for name, _ in CONFIGS} >= set(REGISTRY) | set(METHODS)


@with_configs
def test_state_round_trip(name, kwargs):
    """A balancer restored from a `torch.save`d state continues exactly as the original; a fresh one does not
    (where there is state), and a state of another kind is refused."""
    a = make(name, **kwargs)
    for step in range(3):
        call(a, random_grads(seed=60 + step), step)
        _end_epoch(a)
    buffer = io.BytesIO()
    torch.save(a.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    other = {"seed": 12345} if "seed" in accepted_kwargs(name) else {}  # the state, not the seed, must decide
    b, fresh = make(name, **{**kwargs, **other}), make(name, **{**kwargs, **other})
    b.load_state_dict(state)
    for step in range(3, 5):
        grads = random_grads(seed=60 + step)
        out_a, out_b, out_fresh = call(a, grads, step), call(b, grads, step), call(fresh, grads, step)
        assert all(torch.equal(x, y) for x, y in zip(out_a, out_b)), step
        if step == 3 and a.state_dict():
            assert _differs(out_a, out_fresh)
    with pytest.raises(ValueError):
        make(name, **kwargs).load_state_dict({"unrelated": 1})


@pytest.mark.parametrize("k", [1, 2, 4])
@pytest.mark.parametrize("scale", [0.0, 1e-30, 1e-40])
@with_configs
def test_finite_for_zero_and_tiny_gradients(name, kwargs, scale, k):
    if "weights" in kwargs and k != 4:
        pytest.skip("four fixed weights need four tasks")
    for rows in ["all", "target", "auxiliaries"]:  # which tasks get the zero/tiny scale
        scales = torch.ones(k)
        scales[{"all": slice(None), "target": slice(0, 1), "auxiliaries": slice(1, None)}[rows]] = scale
        bal = make(name, **kwargs)
        for step in range(3):
            grads = [g * scales.view((k,) + (1,) * (g.dim() - 1)) for g in random_grads(k=k, seed=40 + step)]
            if step == 1:
                grads[0][0] = 0.0  # the target misses a tensor
            if step == 2 and k > 1:
                grads[1][k - 1] = 0.0  # an auxiliary misses a tensor
            for out in (call(bal, grads, step), call(bal, grads, step, combine=False)):
                assert all(torch.isfinite(o).all() for o in out), (rows, step)
                if bal.last_weights is not None:
                    assert all(torch.isfinite(w).all() for w in bal.last_weights if w is not None)
        # a normal-scale step right after zero/tiny ones is finite too
        assert all(torch.isfinite(o).all() for o in call(bal, random_grads(k=k, seed=49), 3))


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
@pytest.mark.parametrize("device", DEVICES)
@with_configs
def test_shapes_dtypes_devices(name, kwargs, device, dtype):
    bal = make(name, **kwargs)
    for step in range(2):
        grads = random_grads(seed=80 + step, dtype=dtype, device=device)
        out = call(bal, grads, step)
        assert len(out) == len(grads)
        for o, g in zip(out, grads):
            assert o.shape == g.shape[1:] and o.dtype == g.dtype and o.device == g.device
            assert torch.isfinite(o).all()
        if bal.last_weights is not None:
            assert all(w.shape == (4,) and w.device == grads[0].device for w in bal.last_weights)


@with_configs
def test_no_host_sync_on_tensor_values(name, kwargs):
    """On "meta" tensors (no values) a Python branch on a tensor value (a host sync on CUDA) would raise.
    MGDA's optional Frank-Wolfe solver syncs by design."""
    if kwargs.get("solver") == "frank_wolfe":
        pytest.skip("Frank-Wolfe iterates on the CPU by design")
    bal = make(name, **kwargs)
    grads = [torch.empty(4, 5, 3, device="meta"), torch.empty(4, 7, device="meta")]
    kw = {"losses": torch.empty(4, device="meta")} if getattr(bal, "uses_losses", False) else {}
    for out in (bal(grads, **kw), bal.reduce(bal.transform(grads, **kw))):
        assert [o.shape for o in out] == [(5, 3), (7,)] and all(o.device.type == "meta" for o in out)


@with_configs
def test_compact_rows_equal_dense_table(name, kwargs):
    """An embedding table's gradient restricted to the touched rows gives the touched rows of the dense
    result, and zeros elsewhere."""
    k, n_rows, n_touched, dim = 4, 50, 7, 3
    gen = torch.Generator().manual_seed(70)
    rows = torch.randperm(n_rows, generator=gen)[:n_touched]
    compact_bal, dense_bal = make(name, **kwargs), make(name, **kwargs)
    for step in range(3):
        dense_part = random_grads(seed=70 + step)[0]
        table_rows = torch.randn(k, n_touched, dim, generator=gen) * torch.tensor([1.0, 10.0, 0.1, 3.0]).view(k, 1, 1)
        table_rows[2, :3] = 0.0  # a task with no gradient on some touched rows
        table = torch.zeros(k, n_rows, dim)
        table[:, rows] = table_rows
        out_c, out_d = call(compact_bal, [dense_part, table_rows], step), call(dense_bal, [dense_part, table], step)
        # float32 sums in another order (another host's kernels); gradients reach about 30
        torch.testing.assert_close(out_c[0], out_d[0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(out_c[1], out_d[1][rows], rtol=1e-5, atol=1e-5)
        untouched = torch.ones(n_rows, dtype=torch.bool)
        untouched[rows] = False
        assert torch.equal(out_d[1][untouched], torch.zeros(n_rows - n_touched, dim))
        _end_epoch(compact_bal)
        _end_epoch(dense_bal)


N_USERS, N_ITEMS, K, B = 13, 17, 4, 48


@pytest.fixture(scope="module")
def engine_grads():
    """Per-task gradients of two batches through GradEngine: compact rows and full dense tables (same dropout)."""
    torch.manual_seed(0)
    model = SharedBottomNeuMF(ModelConfig(N_USERS, N_ITEMS, K, emb_dim=8, mlp_layers=(8, 4), tower_layers=(6,)))
    gen = torch.Generator().manual_seed(100)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.5 * torch.randn(p.shape, generator=gen))
    model.train()
    out = []
    for step in range(2):
        gen = torch.Generator().manual_seed(step)
        batch = (torch.randint(0, 6, (B,), generator=gen),  # many repeats, untouched rows
                 torch.randint(0, N_ITEMS, (B,), generator=gen), (torch.rand(B, K, generator=gen) < 0.4).float())
        pair = []
        for engine in (GradEngine(model, "compact"), GradEngine(model, "dense", full_tables=True)):
            torch.manual_seed(step)
            pair.append(engine(*batch))
        out.append(tuple(pair))
    return out


@with_configs
def test_engine_compact_rows_equal_dense_tables(name, kwargs, engine_grads):
    bal_c, bal_d = make(name, **kwargs), make(name, **kwargs)
    for tg_c, tg_d in engine_grads:
        assert any(r is not None and len(r) < tg_d.shared[j].shape[1] for j, r in enumerate(tg_c.rows))
        kw_c = {"losses": tg_c.losses} if getattr(bal_c, "uses_losses", False) else {}
        kw_d = {"losses": tg_d.losses} if getattr(bal_d, "uses_losses", False) else {}
        out_c, out_d = bal_c(tg_c.shared, **kw_c), bal_d(tg_d.shared, **kw_d)
        for o_c, o_d, rows in zip(out_c, out_d, tg_c.rows):
            scale = 1e-5 * max(1.0, o_d.abs().max().item())
            if rows is None:
                torch.testing.assert_close(o_c, o_d, rtol=1e-5, atol=scale)
            else:
                torch.testing.assert_close(o_c, o_d[rows], rtol=1e-5, atol=scale)
                untouched = torch.ones(o_d.shape[0], dtype=torch.bool)
                untouched[rows] = False
                assert o_d[untouched].abs().max() == 0
        _end_epoch(bal_c)
        _end_epoch(bal_d)


@with_configs
def test_one_task_steps_along_its_gradient(name, kwargs):
    """With K = 1 every method is the target's gradient, up to CAGrad's step (1 + c) g, which its official
    rescaling divides by 1 + c^2."""
    if "weights" in kwargs:
        pytest.skip("four fixed weights need four tasks")
    factor = 1.0
    if name == "cagrad":
        factor = 1.4 / (1.16 if kwargs.get("rescale", True) else 1.0)
    for seed in (90, 91):
        grads = random_grads(k=1, seed=seed)
        for o, g in zip(call(make(name, **kwargs), grads), grads):
            torch.testing.assert_close(o, g[0] * factor)


@with_configs
def test_state_loaded_on_the_cpu_follows_the_gradients_to_another_device(name, kwargs):
    """A checkpoint loads on the CPU; on a GPU the next step's gradients live elsewhere ("meta" stands in)."""
    if kwargs.get("solver") == "frank_wolfe":
        pytest.skip("Frank-Wolfe iterates on the CPU by design")
    grads = random_grads(seed=3)
    first = make(name, **kwargs)
    call(first, grads)
    _end_epoch(first)
    resumed = make(name, **kwargs)
    resumed.load_state_dict(first.state_dict())
    kw = {"losses": losses_of().to("meta")} if getattr(resumed, "uses_losses", False) else {}
    out = resumed([g.to("meta") for g in grads], **kw)
    assert all(o.device.type == "meta" for o in out)


@with_configs
def test_repr_names_every_argument_and_str_is_a_label(name, kwargs):
    bal = make(name, **kwargs)
    assert isinstance(bal, Balancer)
    assert all(arg in repr(bal) for arg in accepted_kwargs(name)), repr(bal)
    assert str(bal) and "\n" not in str(bal) and str(bal) != repr(bal)
    for part in name.split("+"):
        cls = REGISTRY[part]
        assert cls.name == part and inspect.getdoc(cls)
