"""Notebook 05's map (mbkit.study.balance_map): worlds, the measured gradient ratio per cell, the paired change
and its interval, the change against the natural scale, the reading and the figure."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from mbkit.study.balance_map import (World, against_balanced, cell_name, equivalent, paired_change, reading, run_map,
                                     world_summary)
from mbkit.study.methods import map_methods
from mbkit.train import TrainConfig

TINY = dict(n_users=3000, n_items=1500, min_user_items=5, min_item_users=5)


def _runs(values: dict[str, list[float]], cell=(0.0, 1.0)) -> pd.DataFrame:
    rows = [{"alignment": cell[0], "scale": cell[1], "method": m, "seed": s, "test_ndcg@10": v}
            for m, vs in values.items() for s, v in enumerate(vs)]
    return pd.DataFrame(rows)


def test_paired_change_by_hand():
    runs = _runs({"Vanilla": [0.10, 0.12, 0.11], "MB": [0.12, 0.13, 0.12]})
    c = paired_change(runs).iloc[0]
    d = np.array([0.02, 0.01, 0.01])  # per-seed differences
    half = 4.302652729911275 * d.std(ddof=1) / np.sqrt(3)  # t_{0.975, 2}
    assert c["method"] == "MB" and c["n_seeds"] == 3
    assert c["mean_diff"] == pytest.approx(d.mean())
    assert (c["ci_low"], c["ci_high"]) == pytest.approx((d.mean() - half, d.mean() + half))
    assert c["change_pct"] == pytest.approx(100 * d.mean() / 0.11)
    assert c["ci_low_pct"] == pytest.approx(100 * (d.mean() - half) / 0.11)
    assert c["p_value"] == pytest.approx(stats.ttest_rel([0.12, 0.13, 0.12], [0.10, 0.12, 0.11]).pvalue)


def test_paired_change_pairs_by_seed_not_by_order():
    a = _runs({"Vanilla": [0.1, 0.2, 0.3], "MB": [0.11, 0.21, 0.31]})
    shuffled = a.sample(frac=1.0, random_state=0)
    c = paired_change(shuffled).iloc[0]
    assert c["mean_diff"] == pytest.approx(0.01) and c["ci_high"] - c["ci_low"] == pytest.approx(0.0, abs=1e-12)


def _cells(runs: pd.DataFrame) -> pd.DataFrame:
    cells = runs[["alignment", "scale"]].drop_duplicates()
    return cells.assign(ratio=cells["scale"] * 1.5, ratio_low=cells["scale"], ratio_high=cells["scale"] * 2,
                        **{"most popular ndcg@10": 0.05})


def test_paired_change_per_cell_and_reading():
    runs = pd.concat([_runs({"Vanilla": [0.10, 0.11, 0.12], "MB": [0.12, 0.13, 0.14]}, (1.0, 1.0)),
                      _runs({"Vanilla": [0.10, 0.11, 0.12], "MB": [0.08, 0.09, 0.101]}, (0.0, 1.0)),
                      _runs({"Vanilla": [0.10, 0.11, 0.12], "MB": [0.12, 0.10, 0.121]}, (0.0, 0.25)),
                      _runs({"Vanilla": [0.10, 0.11, 0.12], "MB": [0.1001, 0.1102, 0.1199]}, (0.0, 4.0))])
    c = paired_change(runs).set_index(["alignment", "scale"])
    assert c.loc[(1.0, 1.0), "ci_low"] > 0 and c.loc[(0.0, 1.0), "ci_high"] < 0
    assert c.loc[(0.0, 0.25), "ci_low"] < 0 < c.loc[(0.0, 0.25), "ci_high"]
    assert list(equivalent(c.reset_index())) == [False, False, False, True]
    text = reading(paired_change(runs), _cells(runs))
    assert "MB, alignment 1: wins at ratio 1.5 (+18.2% [+18.2, +18.2])" in text
    assert "MB, alignment 0: loses at ratio 1.5 (" in text
    assert "unresolved at ratio 0.375 (" in text and "ties within +-5% at ratio 6 (" in text


def test_against_balanced_pairs_every_scale_with_vanilla_at_scale_1():
    runs = pd.concat([_runs({"Vanilla": [0.10, 0.11, 0.12], "MB": [0.11, 0.12, 0.13]}, (1.0, 1.0)),
                      _runs({"Vanilla": [0.05, 0.06, 0.07], "MB": [0.10, 0.11, 0.12]}, (1.0, 0.01))])
    b = against_balanced(runs).set_index(["scale", "method"])
    assert len(b) == 3 and (1.0, "Vanilla") not in b.index
    assert b.loc[(0.01, "Vanilla"), "mean_diff"] == pytest.approx(-0.05)
    assert b.loc[(0.01, "MB"), "mean_diff"] == pytest.approx(0.0)
    assert b.loc[(1.0, "MB"), "change_pct"] == pytest.approx(100 * 0.01 / 0.11)
    assert np.allclose(b["baseline_mean"], 0.11)
    with pytest.raises(ValueError, match="no Vanilla runs at scale 1 for alignment 1"):
        against_balanced(runs[runs["scale"] != 1.0])


def test_paired_change_needs_the_baseline():
    with pytest.raises(ValueError, match="baseline 'Vanilla' is not among the methods"):
        paired_change(_runs({"MB": [0.1, 0.2]}))


def test_world_cells_follow_the_dials():
    w = World(**TINY)
    aligned, unrelated = (w.task_data(a, 1.0, device="cpu") for a in (1.0, 0.0))
    assert aligned.meta["world"]["alignment"] == 1.0 and unrelated.meta["world"]["alignment"] == 0.0
    s_aligned, s_unrelated = world_summary(aligned), world_summary(unrelated)
    assert s_unrelated["cart per purchase"] < s_aligned["cart per purchase"]
    small = world_summary(w.task_data(1.0, 0.25, device="cpu"))
    assert small["pv per purchase"] < 0.5 * s_aligned["pv per purchase"]
    assert cell_name(0.5, 0.25) == "alignment=0.5_scale=0.25"
    assert 0 < s_aligned["most popular ndcg@10"] < 1


def test_run_map_trains_every_cell_measures_its_ratio_and_reuses_records(tmp_path):
    w = World(**TINY)
    cfg = TrainConfig(epochs=1, batch_size=1024, progress=False, device="cpu")
    methods = map_methods(0.7)
    assert [m.label for m in methods] == ["Vanilla", "MetaBalance (r=0.7)", "MetaBalance (r=1)", "PCGrad (adjusted)"]
    runs, cells = run_map(w, [1.0], [1 / 16, 1.0], methods, [0, 1], cfg, device="cpu", runs_dir=tmp_path,
                          diagnostics_every=5)
    assert len(runs) == 2 * 4 * 2 and list(cells["scale"]) == [1 / 16, 1.0]
    assert {m.label for m in methods} == set(runs["method"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["alignment=1_scale=0.0625", "alignment=1_scale=1"]
    # the dial reaches the measured ratio: a sixteenth of the gradient, about a sixteenth of the ratio
    ratio = cells.set_index("scale")["ratio"]
    assert 1 / 32 < ratio[1 / 16] / ratio[1.0] < 1 / 8
    assert (cells["ratio_low"] <= cells["ratio"]).all() and (cells["ratio"] <= cells["ratio_high"]).all()
    # r = 1 is blind to the scale: the same runs to the last digit; Vanilla's are not
    by = runs.set_index(["method", "scale", "seed"])["test_ndcg@10"].sort_index()
    assert (by["MetaBalance (r=1)", 1 / 16] == by["MetaBalance (r=1)", 1.0]).all()
    assert not (by["Vanilla", 1 / 16] == by["Vanilla", 1.0]).all()
    again, _ = run_map(w, [1.0], [1 / 16, 1.0], methods, [0, 1], cfg, device="cpu", runs_dir=tmp_path,
                       diagnostics_every=5)
    cols = ["alignment", "scale", "method", "seed", "test_ndcg@10"]
    pd.testing.assert_frame_equal(again[cols], runs[cols])
    with pytest.raises(ValueError, match="give one or more finite factors > 0"):
        run_map(w, [1.0], [0.0, 1.0], methods, [0], cfg, device="cpu")


def test_the_map_draws_with_one_seed_and_with_several():
    from mbkit.study import plots

    for seeds in (1, 3):
        runs = pd.concat([_runs({"Vanilla": [0.1, 0.11, 0.12][:seeds], "MB": [0.12, 0.12, 0.125][:seeds]}, (a, w))
                          for a in (0.0, 1.0) for w in (0.01, 1.0, 100.0)])
        within, balanced = paired_change(runs), against_balanced(runs)
        assert within["ci_low"].isna().all() == (seeds == 1)  # no interval from one seed
        fig = plots.balance_map(balanced, within, _cells(runs))
        texts = [t.get_text() for t in [ax for ax in fig.axes if ax.texts][0].texts]  # first heatmap
        assert len(texts) == 3 and all(t.endswith("%") == (seeds == 1) for t in texts)
        plots.plt.close(fig)


def test_seeds_needed_inverts_the_interval_width():
    from mbkit.study.stats import design, seeds_needed
    # sd 10 % of the baseline: t_{0.975, n-1} * 10 / sqrt(n) <= 5 first holds at n = 18 (2.110 * 10 / 4.243 = 4.97)
    assert seeds_needed(10.0, 5.0) == 18
    assert stats.t.ppf(0.975, 16) * 10 / np.sqrt(17) > 5.0
    assert seeds_needed(0.0, 5.0) == 2
    n = seeds_needed(318.6, 10.0)  # no cap: the number itself, however large
    assert stats.t.ppf(0.975, n - 1) * 318.6 / np.sqrt(n) <= 10.0 < stats.t.ppf(0.975, n - 2) * 318.6 / np.sqrt(n - 1)
    with pytest.raises(ValueError, match=r"half_width_pct=0 > 0"):
        seeds_needed(1.0, 0)
    runs = _runs({"Vanilla": [0.10, 0.12, 0.11], "MB": [0.12, 0.13, 0.12], "PC": [0.10, 0.125, 0.11]})
    changes = paired_change(runs)
    table = design(changes, {"MB": 5.0, "*": 10.0}).set_index("method")
    d = np.array([0.02, 0.01, 0.01])
    assert table.loc["MB", "sd_pct"] == pytest.approx(100 * d.std(ddof=1) / 0.11)
    half = 100 * 4.302652729911275 * d.std(ddof=1) / np.sqrt(3) / 0.11  # t_{0.975, 2}
    assert table.loc["MB", "half_width_pct"] == pytest.approx(half)
    assert table.loc["MB", "seeds_needed"] == seeds_needed(table.loc["MB", "sd_pct"], 5.0)
    assert table.loc["MB", "sd_upper_pct"] == pytest.approx(table.loc["MB", "sd_pct"] * 4.415, rel=1e-3)  # chi2(2)
    assert table.loc["MB", "seeds_needed_upper"] > table.loc["MB", "seeds_needed"]
    assert table.loc["PC", "target_pct"] == 10.0
    one = design(paired_change(runs[runs["seed"] == 0]), {"*": 10.0})
    assert one["seeds_needed"].isna().all() and one["sd_upper_pct"].isna().all()  # one seed: nothing to size from
    with pytest.raises(ValueError, match="no target half-width for 'MB'"):
        design(changes, {"PC": 5.0})


def test_against_floor_per_cell():
    from mbkit.study.balance_map import against_floor
    from mbkit.study.tables import summarize
    runs = pd.concat([_runs({"Vanilla": [0.10, 0.12], "MB": [0.04, 0.06]}, (a, w)) for a in (0.0, 1.0)
                      for w in (0.01, 1.0)])
    table = against_floor(summarize(runs, by=["alignment", "scale", "method"], metrics=["ndcg@10"]), _cells(runs))
    assert list(table.columns) == ["Vanilla", "MB"] and len(table) == 4
    assert np.allclose(table["Vanilla"], 120.0) and np.allclose(table["MB"], 0.0)
