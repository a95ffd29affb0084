"""The tuned plain sum (mbkit.study.tune): the grid, the choice rule, and a whole tuning on the small world."""

from __future__ import annotations

import dataclasses

import pandas as pd
import pytest

from helpers import TINY
from mbkit.study.tune import TuneGrid, choose, tune_vanilla


def test_the_rule_prefers_the_study_s_settings_within_one_standard_error():
    base = dataclasses.replace(TINY, lr=1e-3, dropout=0.5, num_neg=4)
    table = pd.DataFrame({"lr": [1e-3, 3e-3, 3e-3], "dropout": [0.5, 0.5, 0.2], "num_neg": [4, 4, 8],
                          "mean": [0.100, 0.104, 0.110], "std": [0.01, 0.01, 0.006], "n_seeds": [4, 4, 4]})
    assert choose(table, base) == 2  # se 0.003: only the best itself lies within 0.107
    assert choose(table.assign(std=[0.01, 0.01, 0.02]), base) == 0  # se 0.01: all near; row 0 changes nothing
    assert choose(table.assign(std=[0.01, 0.01, 0.014]), base) == 1  # se 0.007: rows 1 (one change) and 2 (three)


def test_tuning_trains_vanilla_over_the_grid_and_returns_the_chosen_settings(task_data, tmp_path):
    base = dataclasses.replace(TINY, epochs=1)
    grid = {"lr": [1e-3, 1e-2], "dropout": [0.5], "num_neg": [4]}
    tuned, table = tune_vanilla(task_data, base, grid, seeds=[0, 1], runs_dir=tmp_path)
    assert list(table[["lr", "dropout", "num_neg"]].itertuples(index=False, name=None)) == [(1e-3, 0.5, 4),
                                                                                            (1e-2, 0.5, 4)]
    assert (table["n_seeds"] == 2).all() and table["chosen"].sum() == 1
    row = table[table["chosen"]].iloc[0]
    assert (tuned.lr, tuned.dropout, tuned.num_neg) == (row["lr"], row["dropout"], row["num_neg"])
    assert isinstance(tuned.num_neg, int) and tuned.balancer == base.balancer
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lr=0.001_dropout=0.5_num_neg=4",
                                                          "lr=0.01_dropout=0.5_num_neg=4"]
    again, table2 = tune_vanilla(task_data, base, grid, seeds=[0, 1], runs_dir=tmp_path)  # from the records
    pd.testing.assert_frame_equal(table, table2)
    assert again == tuned


def test_a_bad_grid_fails_before_training(task_data):
    with pytest.raises(ValueError, match="dropout=1.5 must be in"):
        tune_vanilla(task_data, TINY, {"lr": [1e-3], "dropout": [1.5], "num_neg": [4]}, seeds=[0])
    with pytest.raises(ValueError, match="gives no value for num_neg"):
        TuneGrid(num_neg=())


def test_notebook_04s_option_tunes_only_when_it_is_on(task_data, tmp_path):
    from mbkit.study.tune import notebook_base

    base = dataclasses.replace(TINY, epochs=1)
    params = {"tune_vanilla": False, "tune_lr": [1e-3, 1e-2], "tune_dropout": [0.5], "tune_num_neg": [4]}
    assert notebook_base(task_data, base, params, [0], runs_dir=tmp_path) == (base, None)
    assert not any(tmp_path.iterdir())
    tuned, table = notebook_base(task_data, base, {**params, "tune_vanilla": True}, [0], runs_dir=tmp_path)
    assert len(table) == 2 and sorted(p.name for p in (tmp_path / "tune").iterdir()) == [
        "lr=0.001_dropout=0.5_num_neg=4", "lr=0.01_dropout=0.5_num_neg=4"]
    assert (tuned, table.to_dict()) == (lambda t: (t[0], t[1].to_dict()))(
        tune_vanilla(task_data, base, {"lr": [1e-3, 1e-2], "dropout": [0.5], "num_neg": [4]}, [0],
                     runs_dir=tmp_path / "tune"))
