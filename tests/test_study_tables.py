"""The study's tables and statistics: mean ± std over seeds, relative change, paired changes with their
intervals and tests, the verdict rule, the cost per step, the methods of each grid (hand-checked values)."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from mbkit.study.methods import study_methods
from mbkit.study.stats import paired_change, step_cost, verdict, verdicts
from mbkit.study.tables import format_table, relative_improvement, stopping, summarize, with_applied_ratio


@pytest.fixture()
def runs() -> pd.DataFrame:
    rows = []
    for method, values in {"Vanilla": [0.10, 0.12, 0.11], "MB": [0.13, 0.14, 0.12], "Same": [0.10, 0.12, 0.11]}.items():
        for seed, v in enumerate(values):
            rows.append({"method": method, "seed": seed, "test_ndcg@10": v, "valid_ndcg@10": v / 2})
    return pd.DataFrame(rows)


def test_summarize_mean_std_in_first_appearance_order(runs):
    s = summarize(runs, metrics=["ndcg@10"])
    assert list(s.index) == ["Vanilla", "MB", "Same"]
    assert s.loc["MB", "ndcg@10_mean"] == pytest.approx(0.13)
    assert s.loc["MB", "ndcg@10_std"] == pytest.approx(0.01)  # sample std (ddof=1) of 0.13, 0.14, 0.12
    assert s.loc["Vanilla", "n_seeds"] == 3
    assert format_table(s, ["ndcg@10"]).loc["MB", "N@10"] == "0.1300 ± 0.0100"


def test_relative_improvement(runs):
    s = summarize(runs, metrics=["ndcg@10"])
    rel = relative_improvement(s, "Vanilla", ["ndcg@10"])
    assert rel.loc["MB", "ndcg@10"] == pytest.approx(100 * (0.13 / 0.11 - 1))
    assert str(rel.loc["Same", "ndcg@10"]) == "0.0"


def test_study_methods_are_the_six_of_the_thesis():
    from mbkit.balancers import METHODS

    methods = study_methods(0.3)
    assert [m.balancer for m in methods] == list(METHODS)
    assert all(m.kwargs == {"relax_factor": 0.3} for m in methods if "metabalance" in m.balancer)


def test_applied_ratio_is_the_raw_ratio_times_the_applied_weight():
    d = pd.DataFrame({"step": [0, 0, 0], "tensor": ["w"] * 3, "task": ["buy", "pv", "fav"],
                      "ratio_to_target": [1.0, 4.0, 0.5], "weight": [1.0, 0.325, 1.3]})
    assert with_applied_ratio(d)["applied_ratio"].tolist() == pytest.approx([1.0, 1.3, 0.65])
    with pytest.raises(ValueError, match="carry no applied weights"):
        with_applied_ratio(d.assign(weight=float("nan")))


def test_all_methods_lists_the_study_three_and_metabalance_on_h_then_every_baseline():
    from mbkit.balancers import BASELINES
    from mbkit.study.methods import all_methods, notebook_grid
    methods = all_methods(0.5)
    assert [m.balancer for m in methods] == ["vanilla", "metabalance", "metabalance_rep", "pcgrad_adjusted",
                                             *BASELINES]
    assert methods[1].kwargs == {"relax_factor": 0.5} and methods[1].label == "MetaBalance (r=0.5)"
    assert methods[2].kwargs == {"relax_factor": 0.5} and methods[2].label == "MetaBalance on h (r=0.5)"
    assert len({m.label for m in methods}) == len(methods)
    grid, seeds, base = notebook_grid("06_all_methods", {"relax_factor": 0.7, "seeds": [0, 1], "epochs": 2,
                                                         "batch_size": 256, "mode": "compact"})
    assert [m.balancer for m in grid] == [m.balancer for m in all_methods(0.7)] and seeds == [0, 1]


def test_notebook_grids_pass_the_patience_rule_on():
    from mbkit.study.methods import notebook_grid
    params = {"relax_factor": 0.7, "seeds": [0], "epochs": 20, "batch_size": 256, "mode": "compact"}
    assert notebook_grid("04_method_comparison", {**params, "patience": 1})[2].patience == 1
    assert notebook_grid("04_method_comparison", {**params, "patience": None})[2].patience is None
    assert notebook_grid("06_all_methods", params)[2].patience is None  # no patience parameter: every epoch
    assert notebook_grid("04_method_comparison", {**params, "patience": 2})[2].epochs == 20


def test_stopping_lists_best_and_trained_epochs_in_seed_order():
    runs = pd.DataFrame({"strategy": ["both"] * 4, "relax_factor": [0.7, 0.7, 0.0, 0.7],
                         "method": ["MB", "MB", "V", "MB"], "seed": [2, 0, 0, 1],
                         "best_epoch": [3, 2, 2, 19], "epochs_trained": [4, 3, 3, 20]})
    t = stopping(runs, cap=20)
    assert list(t.index) == ["MB", "V"]  # in the order methods first appear
    assert t.loc["MB", "best epoch"] == [2, 19, 3] and t.loc["MB", "epochs trained"] == [3, 20, 4]
    assert t.loc["MB", "stopped on its own"] == "2 of 3" and t.loc["V", "stopped on its own"] == "1 of 1"
    by_cell = stopping(runs, cap=20, by=["strategy", "relax_factor"])
    assert list(by_cell.index) == [("both", 0.7), ("both", 0.0)]
    with pytest.raises(ValueError, match="epochs_trained"):
        stopping(runs.assign(epochs_trained=None), cap=20)


def test_paired_change_without_groups_is_one_row_per_method(runs):
    c = paired_change(runs, "Vanilla").set_index("method")
    assert list(c.index) == ["MB", "Same"]
    d = [0.03, 0.02, 0.01]
    half = 4.302652729911275 * pd.Series(d).std() / math.sqrt(3)  # t_{0.975, 2}
    assert c.loc["MB", "mean_diff"] == pytest.approx(0.02)
    assert (c.loc["MB", "ci_low"], c.loc["MB", "ci_high"]) == pytest.approx((0.02 - half, 0.02 + half))
    ref = stats.ttest_rel([0.13, 0.14, 0.12], [0.10, 0.12, 0.11])
    assert c.loc["MB", "p_value"] == pytest.approx(ref.pvalue) and c.loc["MB", "t"] == pytest.approx(ref.statistic)
    assert c.loc["MB", "change_pct"] == pytest.approx(100 * 0.02 / 0.11)
    assert c.loc["Same", "mean_diff"] == 0 and math.isnan(c.loc["Same", "p_value"])  # no spread: no test
    with pytest.raises(ValueError, match="baseline 'Nope' is not among the methods"):
        paired_change(runs, "Nope")


def test_verdicts_sorts_methods_by_their_interval():
    changes = pd.DataFrame({"method": ["A", "B", "C", "D"], "change_pct": [5.0, -4.0, 1.0, 0.5],
                            "ci_low": [0.01, -0.03, -0.01, -0.001], "ci_high": [0.03, -0.01, 0.02, 0.002]})
    changes = changes.assign(ci_low_pct=changes["ci_low"] * 1000, ci_high_pct=changes["ci_high"] * 1000)  # mean 0.1
    text = verdicts(changes, "Vanilla")
    assert "better (1): A +5.0%" in text and "worse (1): B -4.0%" in text
    assert "equivalent within +-5% (1): D +0.5%" in text  # [-1 %, +2 %] lies inside +-5 %
    assert "no resolvable difference (1): C +1.0%" in text  # [-10 %, +20 %] does not



def test_a_margin_turns_only_unresolved_intervals_inside_it_into_ties():
    changes = pd.DataFrame({"ci_low": [-0.004, -0.002, -0.01], "ci_high": [-0.001, 0.003, 0.02]})
    changes = changes.assign(ci_low_pct=changes["ci_low"] * 1000, ci_high_pct=changes["ci_high"] * 1000)
    assert list(verdict(changes)) == ["worse", "no resolvable difference", "no resolvable difference"]
    # [-4 %, -1 %] excludes 0: it stays worse though it lies inside +-5 %; [-2 %, +3 %] is a tie; [-10, +20] not
    assert list(verdict(changes, 5.0)) == ["worse", "equivalent within +-5%", "no resolvable difference"]

def test_step_cost_is_the_median_time_per_step_over_runs():
    runs = pd.DataFrame({"method": ["Vanilla"] * 3 + ["X"] * 3,
                         "train_seconds": [9.0, 2.0, 2.2, 3.0, 3.3, 1.5],  # Vanilla's first run: warm-up
                         "steps": [100, 100, 100, 100, 110, 50]})
    cost = step_cost(runs)
    assert cost["Vanilla"] == 1.0
    assert cost["X"] == pytest.approx(0.03 / 0.022)  # medians of 0.03, 0.03, 0.03 and 0.09, 0.02, 0.022
    with pytest.raises(ValueError, match="needs every run's `steps`"):
        step_cost(runs.assign(steps=[100, None, 100, 100, 100, 100]))
    with pytest.raises(ValueError, match="baseline 'Y' is not among"):
        step_cost(runs, "Y")


def test_quality_vs_cost_draws_every_method_with_its_interval():
    from mbkit.study import plots
    runs = pd.DataFrame({"method": ["Vanilla", "Vanilla", "MB", "MB", "One"],
                         "seed": [0, 1, 0, 1, 0], "test_ndcg@10": [0.10, 0.12, 0.12, 0.13, 0.09],
                         "train_seconds": [1.0, 1.0, 1.5, 1.5, 2.0], "steps": [10] * 5})
    fig = plots.quality_vs_cost(runs, step_cost(runs), floors={"most popular": 0.05}, highlight=["MB"])
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.texts] == ["Vanilla", "MB", "One"]
    assert ax.get_ylim()[0] < 0.05 < 0.13 < ax.get_ylim()[1]  # the floor and every interval are in view
    plots.plt.close(fig)


def test_labels_near_each_other_are_moved_apart_and_others_stay():
    from mbkit.study.plots import _label_heights
    x = np.array([1.0, 1.05, 2.0, 1.02])
    y = np.array([0.100, 0.101, 0.100, 0.1005])
    out = _label_heights(x, y, gap=0.01, width=0.2)
    near = np.sort(out[[0, 1, 3]])
    assert np.diff(near).min() >= 0.01 - 1e-12 and out[0] == 0.100  # the lowest stays, the others rise
    assert out[2] == 0.100  # far to the right: not moved


def test_against_floor_names_who_clears_the_popularity_floor_and_by_how_much():
    from mbkit.popularity import LABEL
    from mbkit.study.tables import against_floor
    table = pd.DataFrame({"ndcg@10_mean": [0.06, 0.045, 0.03, 0.04]},
                         index=pd.Index(["Vanilla", "MB", "Single", LABEL], name="method"))
    text = against_floor(table)
    assert text.splitlines()[0] == f"popularity floor ({LABEL}): ndcg@10 0.0400"
    assert "above it (2 of 3): from MB +12% to Vanilla +50%" in text
    assert "at or below it (1 of 3): Single -25%" in text
    assert "above it (1 of 1): Vanilla +50%" in against_floor(table.drop(index=["MB", "Single"]))
    assert "at or below" not in against_floor(table.drop(index="Single"))
    with pytest.raises(ValueError, match="floor_row"):
        against_floor(table.drop(index=LABEL))
