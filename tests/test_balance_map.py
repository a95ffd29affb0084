"""Notebook 05's map (mbkit.balance_map): worlds per cell, the paired change and its interval, the reading."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from mbkit.study.balance_map import World, cell_name, paired_change, reading, run_map, world_summary
from mbkit.study.methods import map_methods
from mbkit.train import TrainConfig

TINY = dict(n_users=3000, n_items=1500, min_user_items=5, min_item_users=5)


def _runs(values: dict[str, list[float]], cell=(0.0, 1.0)) -> pd.DataFrame:
    rows = [{"alignment": cell[0], "volume": cell[1], "method": m, "seed": s, "test_ndcg@10": v}
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


def test_paired_change_per_cell_and_reading():
    runs = pd.concat([_runs({"Vanilla": [0.10, 0.11, 0.12], "MB": [0.12, 0.13, 0.14]}, (1.0, 1.0)),
                      _runs({"Vanilla": [0.10, 0.11, 0.12], "MB": [0.08, 0.09, 0.101]}, (0.0, 1.0)),
                      _runs({"Vanilla": [0.10, 0.11, 0.12], "MB": [0.12, 0.10, 0.121]}, (0.0, 0.25))])
    c = paired_change(runs).set_index(["alignment", "volume"])
    assert c.loc[(1.0, 1.0), "ci_low"] > 0 and c.loc[(0.0, 1.0), "ci_high"] < 0
    assert c.loc[(0.0, 0.25), "ci_low"] < 0 < c.loc[(0.0, 0.25), "ci_high"]
    text = reading(paired_change(runs))
    assert "MB: helps in (1, 1) +18.2%; hurts in (0, 1)" in text
    assert "no resolvable difference in (0, 0.25)" in text


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
    assert cell_name(0.5, 0.25) == "alignment=0.5_volume=0.25"
    assert 0 < s_aligned["most popular ndcg@10"] < 1


def test_run_map_trains_every_cell_and_reuses_records(tmp_path):
    w = World(**TINY)
    cfg = TrainConfig(epochs=1, batch_size=1024, progress=False, device="cpu")
    methods = map_methods(0.7)
    runs, worlds = run_map(w, [1.0], [0.25, 1.0], methods, [0, 1], cfg, device="cpu", runs_dir=tmp_path)
    assert len(runs) == 2 * 3 * 2 and list(worlds["volume"]) == [0.25, 1.0]
    assert {m.label for m in methods} == set(runs["method"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["alignment=1_volume=0.25", "alignment=1_volume=1"]
    again, _ = run_map(w, [1.0], [0.25, 1.0], methods, [0, 1], cfg, device="cpu", runs_dir=tmp_path)
    cols = ["alignment", "volume", "method", "seed", "test_ndcg@10"]
    pd.testing.assert_frame_equal(again[cols], runs[cols])


def test_the_map_draws_with_one_seed_and_with_several():
    from mbkit.study import plots

    one = paired_change(pd.concat([_runs({"Vanilla": [0.1], "MB": [0.12]}, (a, v)) for a in (0.0, 1.0)
                                   for v in (0.25, 1.0)]))
    assert one["ci_low"].isna().all()  # no interval from one seed
    for changes in (one, paired_change(pd.concat([_runs({"Vanilla": [0.1, 0.11], "MB": [0.12, 0.12]}, (a, 1.0))
                                                  for a in (0.0, 1.0)]))):
        fig = plots.balance_map(changes)
        texts = [t.get_text() for t in fig.axes[0].texts]
        assert len(texts) == changes["method"].eq("MB").sum()
        plots.plt.close(fig)
