"""mbkit.study.cost: step times in turns. (No timing is asserted: only what the measurement must be.)"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from helpers import TINY
from mbkit.study import cost
from mbkit.study.methods import Method
from mbkit.train import TrainConfig, fit, new_run, step_path, train_step


@pytest.fixture(scope="module")
def data(task_data):
    return task_data


METHODS = [Method("Vanilla", "vanilla"), Method("MB", "metabalance", {"relax_factor": 0.7}),
           Method("Uncertainty", "uncertainty")]


def test_every_method_is_timed_in_turns_from_its_own_steps(data, monkeypatch):
    calls = []
    real = cost.train_step

    def spy(run, engine, users, items, labels, **kw):
        calls.append((run.config["balancer"], kw["path"]))
        return real(run, engine, users, items, labels, **kw)

    monkeypatch.setattr(cost, "train_step", spy)
    out = cost.step_times(data, METHODS, TINY, steps=4, warmup=1)
    assert list(out.index) == ["Vanilla", "MB", "Uncertainty"]
    assert out.loc["Vanilla", "time per step / Vanilla"] == 1.0 and (out["ms_per_step"] > 0).all()
    assert len(calls) == 3 * 5
    # turns: every round has one step of each method, the first method of a round rotates
    rounds = [calls[i:i + 3] for i in range(0, 15, 3)]
    assert all(sorted(b for b, _ in r) == ["metabalance", "uncertainty", "vanilla"] for r in rounds)
    assert [r[0][0] for r in rounds[:3]] == ["vanilla", "metabalance", "uncertainty"]
    # each method takes its path of training: Vanilla one backward, loss weighting the representation's
    assert {b: p for b, p in calls} == {"vanilla": "sum", "metabalance": "parameters", "uncertainty": "representation"}


def test_steps_train_the_model_as_fit_does(data):
    """The timed step is the training step on the run that fit builds (`new_run`): after the same steps from
    the same seed, the model equals fit's (one epoch here)."""
    cfg = dataclasses.replace(TINY, balancer="metabalance", balancer_kwargs={"relax_factor": 0.7}, epochs=1)
    trained = fit(data, cfg).model
    run, engine = new_run(data, cfg, torch.device("cpu"))
    run.model.train()
    for users, items, labels in data.batches(cfg.batch_size, run.sampler, num_neg=cfg.num_neg):
        train_step(run, engine, users, items, labels, path=step_path(cfg, run.balancer))
    for (name, a), b in zip(trained.state_dict().items(), run.model.state_dict().values()):
        assert torch.equal(a, b), name


def test_bad_arguments_say_what_is_wrong(data):
    with pytest.raises(ValueError, match="steps >= 1"):
        cost.step_times(data, METHODS, TrainConfig(), steps=0)
    with pytest.raises(ValueError, match="needs methods"):
        cost.step_times(data, [], TrainConfig())
