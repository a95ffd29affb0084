"""The training loop: determinism, resume, non-finite losses, diagnostics, the patience rule, progress."""

from __future__ import annotations

import dataclasses

import pandas as pd
import pytest
import torch

from helpers import TINY as CFG
from mbkit.train import NonFiniteLossError, TrainConfig, fit


def test_same_seed_same_metrics_and_different_seed_differs(task_data):
    a = fit(task_data, CFG)
    b = fit(task_data, CFG)
    c = fit(task_data, dataclasses.replace(CFG, seed=1))
    assert a.test == b.test
    pd.testing.assert_frame_equal(a.history.drop(columns=["train_seconds", "eval_seconds"]),
                                  b.history.drop(columns=["train_seconds", "eval_seconds"]))
    assert a.test != c.test
    assert set(a.test) == {f"{m}@{k}" for m in ("ndcg", "recall", "precision") for k in (10, 20)}
    assert list(a.history["epoch"]) == [1, 2]
    assert 1 <= a.best_epoch <= 2


@pytest.mark.parametrize("balancer,kwargs", [("metabalance", {"relax_factor": 0.7}),
                                             ("metabalance+pcgrad", {"relax_factor": 0.5}),
                                             ("metabalance_rep", {"relax_factor": 0.5}), ("famo", {}), ("rlw", {})])
def test_resumed_run_equals_uninterrupted(tmp_path, task_data, balancer, kwargs):
    cfg = dataclasses.replace(CFG, epochs=3, balancer=balancer, balancer_kwargs=kwargs)
    full = fit(task_data, cfg)
    fit(task_data, dataclasses.replace(cfg, epochs=2), checkpoint_dir=tmp_path)  # "interrupted" after epoch 2
    resumed = fit(task_data, cfg, resume=tmp_path / "last.pt")
    assert resumed.test == full.test
    assert resumed.best_epoch == full.best_epoch
    cols = [c for c in full.history.columns if not c.endswith("seconds")]
    pd.testing.assert_frame_equal(resumed.history[cols], full.history[cols])


def test_nonfinite_loss_names_step_and_task_and_saves_checkpoint(tmp_path, task_data):
    bad = dataclasses.replace(task_data, labels=task_data.labels.clone())
    bad.labels[:, 2] = float("nan")  # the third task's labels are corrupt
    with pytest.raises(NonFiniteLossError, match=rf"task '{task_data.tasks[2]}'.*step 0 \(epoch 1"):
        fit(bad, dataclasses.replace(CFG, balancer="metabalance"), checkpoint_dir=tmp_path)
    state = torch.load(tmp_path / "nonfinite.pt", weights_only=True)
    assert state["epoch"] == 0 and "model" in state and "balancer" in state
    assert all(torch.isfinite(p).all() for p in state["model"].values())  # the bad step was not applied


def test_diagnostics_tidy_frame(task_data):
    res = fit(task_data, dataclasses.replace(CFG, epochs=1, balancer="metabalance", diagnostics_every=5))
    d = res.diagnostics
    assert set(d.columns) >= {"step", "tensor", "task", "norm", "ratio_to_target", "cosine_to_target", "weight"}
    target = d[d["task"] == task_data.tasks[0]]
    assert (target["ratio_to_target"].round(6) == 1.0).all()
    assert (target["cosine_to_target"].round(5) == 1.0).all()
    assert d["step"].min() == 0 and (d["step"] % 5 == 0).all()
    assert d["weight"].notna().all()  # MetaBalance has per-task weights


def test_vanilla_fast_path_equals_engine_path(task_data):
    """Vanilla trains through one summed backward; diagnostics force the per-task engine every step."""
    fast = fit(task_data, dataclasses.replace(CFG, epochs=1))
    engine = fit(task_data, dataclasses.replace(CFG, epochs=1, diagnostics_every=1))
    for k in fast.test:
        assert fast.test[k] == pytest.approx(engine.test[k], abs=1e-6)


def test_patience_stops_at_the_first_non_improving_epoch(task_data):
    cfg = dataclasses.replace(CFG, epochs=5, lr=0.02)
    full = fit(task_data, cfg)
    scores = list(full.history["valid_ndcg@10"])
    expected = next((e + 1 for e in range(1, len(scores)) if scores[e] <= max(scores[:e])), len(scores))
    early = fit(task_data, dataclasses.replace(cfg, patience=1))
    assert len(early.history) == expected
    assert list(early.history["valid_ndcg@10"]) == scores[:expected]
    assert early.best_epoch == full.history["valid_ndcg@10"][:expected].idxmax() + 1
    assert early.summary()["epochs_trained"] == expected and full.summary()["epochs_trained"] == 5


def test_pcgrad_order_follows_the_run_seed(task_data, monkeypatch):
    import mbkit.train as train_module

    configs = [dataclasses.replace(CFG, epochs=1, balancer="metabalance+pcgrad", seed=7,
                                   balancer_kwargs={"relax_factor": 0.5}),
               dataclasses.replace(CFG, epochs=1, balancer="metabalance", seed=7)]
    seen = []
    real_make = train_module._balancers.make
    monkeypatch.setattr(train_module._balancers, "make", lambda name, **kw: seen.append(kw) or real_make(name, **kw))
    for cfg in configs:
        fit(task_data, cfg)
    assert seen == [{"relax_factor": 0.5, "seed": 7}, {}]


def test_nonfinite_checkpoint_is_not_resumable(tmp_path, task_data):
    bad = dataclasses.replace(task_data, labels=task_data.labels.clone())
    bad.labels[:, 1] = float("nan")
    with pytest.raises(NonFiniteLossError):
        fit(bad, CFG, checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match="no epoch had finished, so there is no checkpoint to resume"):
        fit(task_data, CFG, resume=tmp_path / "nonfinite.pt")
    assert not (tmp_path / "last.pt").exists()


@pytest.mark.parametrize("kw,needle", [
    (dict(select_metric="auc"), "select_metric"), (dict(patience=0), "patience=0"),
    (dict(num_neg=-1), "num_neg=-1 must be >= 0"), (dict(seed=-1), "seed=-1"), (dict(lr=0.0), "lr=0.0 must lie in (0, 1]"),
    (dict(balancer="nosuch"), "unknown balancer 'nosuch'"), (dict(progress="bar"), "progress='bar'"),
    (dict(balancer="pcgrad", balancer_kwargs={"relax_factor": 0.7}), "does not take ['relax_factor']"),
    (dict(eval_batch_users=0), "eval_batch_users=0"), (dict(dropout=1.0), "dropout=1.0"),
])
def test_config_rejects_bad_settings_before_any_data(kw, needle):
    with pytest.raises(ValueError) as err:
        TrainConfig(**kw)
    assert needle in str(err.value)


def test_resuming_an_early_stopped_run_trains_no_further(tmp_path, task_data):
    cfg = dataclasses.replace(CFG, epochs=5, lr=0.02, patience=1)
    stopped = fit(task_data, cfg, checkpoint_dir=tmp_path)
    resumed = fit(task_data, cfg, resume=tmp_path / "last.pt")
    assert len(stopped.history) < 5 and len(resumed.history) == len(stopped.history)
    assert resumed.test == stopped.test


class _LossAware:
    """A balancer of the loss-based kind: `uses_losses`, `end_epoch()` and state that counts both."""

    uses_losses = True

    def __init__(self) -> None:
        from mbkit.balancers import Vanilla

        self.inner, self.calls, self.epochs, self.seen = Vanilla(), 0, 0, []
        self.last_weights = None

    def __call__(self, grads, losses=None):
        assert losses is not None and losses.dim() == 1 and not losses.requires_grad
        self.calls += 1
        self.seen.append(losses.clone())
        return self.inner(grads)

    def end_epoch(self) -> None:
        self.epochs += 1

    def state_dict(self):
        return {"calls": self.calls, "epochs": self.epochs}

    def load_state_dict(self, state) -> None:
        self.calls, self.epochs = state["calls"], state["epochs"]

    def __str__(self) -> str:
        return "LossAware"


def test_loss_based_balancers_get_losses_and_end_epoch(task_data, tmp_path, monkeypatch):
    from mbkit import balancers

    made = []
    monkeypatch.setitem(balancers.REGISTRY, "lossaware", lambda: made.append(_LossAware()) or made[-1])
    cfg = dataclasses.replace(CFG, balancer="lossaware")
    res = fit(task_data, cfg, checkpoint_dir=tmp_path)
    bal = made[-1]
    steps = int(res.history["steps"].sum())
    assert bal.calls == steps and bal.epochs == 2
    assert all(t.shape == (len(task_data.tasks),) for t in bal.seen)
    mean_losses = torch.stack(bal.seen[: int(res.history["steps"][0])]).mean(0)  # epoch 1's per-task means
    first = [res.history.loc[0, f"loss_{t}"] for t in task_data.tasks]
    assert torch.allclose(mean_losses, torch.tensor(first, dtype=mean_losses.dtype), atol=1e-5)
    assert torch.load(tmp_path / "last.pt", weights_only=True)["balancer"] == {"calls": steps, "epochs": 2}
    # resumed: the balancer state comes back, end_epoch runs once more, the run equals an uninterrupted one
    three = dataclasses.replace(cfg, epochs=3)
    resumed = fit(task_data, three, resume=tmp_path / "last.pt")
    resumed_bal = made[-1]
    full = fit(task_data, three)
    assert resumed_bal.epochs == made[-1].epochs == 3 and resumed_bal.calls == made[-1].calls
    assert resumed.test == full.test


def test_progress_goes_to_stderr_never_stdout(task_data, capsys):
    fit(task_data, dataclasses.replace(CFG, epochs=1, progress="text"))
    out, err = capsys.readouterr()
    assert out == "" and "1/1" in err and "epoch" in err
