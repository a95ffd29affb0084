"""Grids of runs: one folder and record per run, a killed grid finishes with the uninterrupted table,
records of other settings, data or code are refused."""

from __future__ import annotations

import dataclasses
import json

import pandas as pd
import pytest

from helpers import FILTER, TINY, WORLD
from mbkit import data as mbd
from mbkit.study.grid import run_grid
from mbkit.study.methods import Method
from mbkit.study.runs import run_name
from mbkit.train import TrainConfig, fit

METHODS = [Method("Vanilla", "vanilla"), Method("MetaBalance (r=0.7)", "metabalance", {"relax_factor": 0.7})]
GRID_CFG = TINY


def _table(runs: pd.DataFrame) -> pd.DataFrame:
    return runs.drop(columns="train_seconds")


def test_run_name_is_deterministic():
    assert run_name(METHODS[1], 2) == "metabalance_relax_factor=0.7_seed2"
    assert run_name(Method("x", "chain", {"balancers": ["metabalance", "pcgrad"]}), 0) == \
        "chain_balancers=-metabalance-pcgrad-_seed0"


def test_interrupted_grid_finishes_with_the_uninterrupted_table(tmp_path, task_data, capsys):
    full = run_grid(task_data, METHODS, [0], GRID_CFG)  # the call the notebooks make, unchanged
    assert list(full.columns[:6]) == ["method", "balancer", "seed", "best_epoch", "epochs_trained", "train_seconds"]
    assert (full["epochs_trained"] == GRID_CFG.epochs).all()  # no patience: every epoch is trained

    runs = tmp_path / "runs"
    # "Killed" twice: once between runs (Vanilla finished and recorded), once inside MetaBalance's
    # first epoch... simulated by a run of it that stopped after epoch 1 (its folder holds last.pt only).
    run_grid(task_data, METHODS[:1], [0], GRID_CFG, runs_dir=runs)
    fit(task_data, dataclasses.replace(GRID_CFG, epochs=1, balancer="metabalance",
                                       balancer_kwargs={"relax_factor": 0.7}),
        checkpoint_dir=runs / run_name(METHODS[1], 0))
    capsys.readouterr()
    again = run_grid(task_data, METHODS, [0], GRID_CFG, runs_dir=runs, progress="text")
    pd.testing.assert_frame_equal(_table(again), _table(full))
    out, err = capsys.readouterr()
    assert out == "" and "run 2/2" in err and "MetaBalance (r=0.7), seed 0: epoch 2/2" in err
    mb = json.loads((runs / run_name(METHODS[1], 0) / "metrics.json").read_text())
    assert [r["from_epoch"] for r in mb["resumes"]] == [1]

    # A third call trains nothing: every run is read from its record.
    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    import mbkit.study.runs as runs_module
    real_fit, runs_module.fit = runs_module.fit, no_training
    try:
        pd.testing.assert_frame_equal(run_grid(task_data, METHODS, [0], GRID_CFG, runs_dir=runs), again)
    finally:
        runs_module.fit = real_fit


def test_grid_refuses_a_runs_dir_of_other_settings(tmp_path, task_data):
    runs = tmp_path / "runs"
    run_grid(task_data, METHODS[:1], [0], dataclasses.replace(GRID_CFG, epochs=1), runs_dir=runs)
    with pytest.raises(ValueError, match=r"holds a run with lr=0.001, this grid asks for lr=0.01; pass another "
                                         "runs_dir"):
        run_grid(task_data, METHODS[:1], [0], dataclasses.replace(GRID_CFG, epochs=1, lr=0.01), runs_dir=runs)
    other = mbd.build_task_data(mbd.filter_log(mbd.synthesize(**WORLD), **FILTER), seed=1, device="cpu")
    with pytest.raises(ValueError, match="trained on other data"):
        run_grid(other, METHODS[:1], [0], dataclasses.replace(GRID_CFG, epochs=1), runs_dir=runs)


def test_a_grid_refuses_to_reuse_a_record_of_other_code(tmp_path, monkeypatch, task_data):
    import mbkit.study.runs as runs_module

    base = TrainConfig(epochs=1, batch_size=4096, device="cpu", progress=False)
    methods = [Method("Vanilla", "vanilla")]
    first = run_grid(task_data, methods, [0], base, runs_dir=tmp_path)
    again = run_grid(task_data, methods, [0], base, runs_dir=tmp_path)  # same code: read back
    assert again["test_ndcg@10"].tolist() == first["test_ndcg@10"].tolist()
    monkeypatch.setattr(runs_module, "code_version", lambda: {"mbkit": "x", "git_commit": "0" * 40})
    with pytest.raises(ValueError, match="trained by the code of commit"):
        run_grid(task_data, methods, [0], base, runs_dir=tmp_path)
