"""The regression net: every balancer's first training steps against the committed trajectory.

The notebooks' seed-spread bands are a gross check (they cannot tell MetaBalance from Vanilla); this net
compares what training produces, step by step, within tolerances that hold under the other host's code paths
(`make test` runs this module there too). The last three tests break the code on purpose and show that the
net catches each breakage. Regenerate the fixture with `tests/fixtures/make_trajectories.py` when a change of
the trained numbers is intended.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import mbkit.train
from mbkit import metrics
from mbkit.balancers import REGISTRY, make
from mbkit.balancers.vanilla import Vanilla
from mbkit.grads import GradEngine
from trajectories import BALANCERS, STEPS, TOLERANCE, differences, trajectory

pytestmark = pytest.mark.usefixtures("one_thread")

FIXTURE = Path(__file__).parent / "fixtures" / "trajectories.json"


@pytest.fixture(scope="module")
def committed() -> dict:
    return json.loads(FIXTURE.read_text())


def beyond(diff: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in diff.items() if v > TOLERANCE[k]}


def test_the_net_covers_every_balancer_of_the_registry_and_was_made_on_this_world(committed):
    from helpers import FILTER, WORLD
    assert set(REGISTRY) <= set(BALANCERS) and set(committed["trajectories"]) == set(BALANCERS)
    assert committed["world"] == WORLD and committed["filter"] == FILTER and committed["steps"] == STEPS
    assert make("metabalance").relax_factor == 0.7  # the committed MetaBalance is the paper's default r


@pytest.mark.parametrize("balancer", list(BALANCERS))
def test_training_follows_the_committed_trajectory(balancer, task_data, committed):
    diff = differences(trajectory(task_data, balancer), committed["trajectories"][balancer])
    assert not beyond(diff), (
        f"{balancer}: the first {STEPS} steps moved from the committed trajectory by {diff} (tolerances "
        f"{TOLERANCE}). If the change of the trained numbers is intended, regenerate "
        f"tests/fixtures/trajectories.json with tests/fixtures/make_trajectories.py and say why in the commit")


def test_the_net_catches_the_engine_writing_back_the_plain_sum(task_data, committed, monkeypatch):
    write = GradEngine.write
    monkeypatch.setattr(GradEngine, "write", lambda self, tg, combined: write(self, tg, [g.sum(0) for g in tg.shared]))
    for balancer in ("metabalance", "pcgrad_adjusted", "mgda"):
        assert beyond(differences(trajectory(task_data, balancer), committed["trajectories"][balancer])), balancer


def test_the_net_catches_metabalance_replaced_by_vanilla(task_data, committed, monkeypatch):
    real = mbkit.train._balancers.make
    monkeypatch.setattr(mbkit.train._balancers, "make",
                        lambda name, **kw: Vanilla() if name == "metabalance" else real(name, **kw))
    assert isinstance(mbkit.train.make_balancer(mbkit.train.TrainConfig(balancer="metabalance")), Vanilla)
    diff = differences(trajectory(task_data, "metabalance"), committed["trajectories"]["metabalance"])
    assert set(beyond(diff)) == {"losses", "projection", "metrics"}, diff


def test_the_net_catches_every_metric_lowered_by_a_quarter(task_data, committed, monkeypatch):
    evaluate = metrics.evaluate
    monkeypatch.setattr(metrics, "evaluate", lambda *a, **kw: {k: 0.75 * v for k, v in evaluate(*a, **kw).items()})
    for balancer in ("vanilla", "metabalance"):
        diff = differences(trajectory(task_data, balancer), committed["trajectories"][balancer])
        assert set(beyond(diff)) == {"metrics"}, (balancer, diff)


def test_differences_are_relative_and_zero_for_the_same_trajectory(committed):
    ref = committed["trajectories"]["vanilla"]
    assert differences(ref, ref) == {"losses": 0.0, "projection": 0.0, "metrics": 0.0}
    scaled = {k: [[2 * x for x in row] if isinstance(row, list) else 2 * row for row in v] for k, v in ref.items()}
    assert differences(scaled, ref) == pytest.approx({"losses": 1.0, "projection": 1.0, "metrics": 1.0})
    assert torch.tensor(ref["losses"]).shape == (STEPS, 4)
