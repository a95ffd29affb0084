"""The figures draw the study's own intervals (paired where there is a baseline), and draw them reproducibly."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mbkit.study import plots
from mbkit.study.stats import paired_change, per_seed_change, t_interval


def _runs() -> pd.DataFrame:
    values = {"Vanilla": [0.100, 0.120, 0.110, 0.130], "MB": [0.110, 0.125, 0.100, 0.140],
              "Single": [0.060, 0.070, 0.065, 0.064]}
    return pd.DataFrame([{"method": m, "seed": s, "test_ndcg@10": v, "train_seconds": 1.0 + len(m), "steps": 10}
                         for m, vs in values.items() for s, v in enumerate(vs)])


def _horizontal_spans(ax) -> list[tuple[float, float]]:
    """(left, right) of every horizontal two-point piece of a line with distinct ends: the error bars (seaborn
    draws a bar and its caps as one line, its pieces separated by NaN), not the caps or the rules."""
    out = []
    for line in ax.lines:
        x, y = np.asarray(line.get_xdata(), float), np.asarray(line.get_ydata(), float)
        for i in range(len(x) - 1):
            piece_x, piece_y = x[i:i + 2], y[i:i + 2]
            if np.isfinite(piece_x).all() and np.isfinite(piece_y).all() and piece_y[0] == piece_y[1] \
                    and piece_x[0] != piece_x[1]:
                out.append((float(min(piece_x)), float(max(piece_x))))
    return out


def test_per_seed_changes_have_the_paired_interval_as_their_t_interval():
    runs = _runs()
    changes, per_seed = paired_change(runs, "Vanilla"), per_seed_change(runs, "Vanilla")
    for _, row in changes.iterrows():
        v = per_seed[per_seed["method"] == row["method"]]["change_pct"]
        assert v.mean() == pytest.approx(row["change_pct"])
        assert t_interval(v) == pytest.approx((row["ci_low_pct"], row["ci_high_pct"]))
    assert t_interval([3.0]) == (3.0, 3.0)  # one seed: no interval
    with pytest.raises(ValueError, match="baseline 'X' is not among"):
        per_seed_change(runs, "X")


def test_the_comparison_draws_each_methods_paired_interval():
    runs = _runs()
    fig = plots.comparison(runs, "Vanilla", seconds=runs.groupby("method", sort=False)["train_seconds"].mean(),
                           floor=0.05)
    spans = np.sort(np.array(_horizontal_spans(fig.axes[0])), axis=0)
    want = np.sort(paired_change(runs, "Vanilla")[["ci_low_pct", "ci_high_pct"]].to_numpy(), axis=0)
    # the paired interval, not seaborn's bootstrap nor an unpaired one
    assert spans.shape == want.shape and spans == pytest.approx(want)
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["MB", "Single"]
    assert len(fig.axes) == 2  # and the cost panel
    plots.plt.close(fig)


def test_the_relax_sweep_draws_the_t_interval_of_each_value():
    runs = pd.DataFrame([{"strategy": "both", "relax_factor": r, "seed": s,
                          "valid_ndcg@10": 0.05 + 0.01 * r + 0.002 * s} for r in (0.0, 0.5, 1.0) for s in range(3)])
    fig = plots.relax_sweep(runs, "ndcg@10", chosen=0.5, floor=0.03)
    vertical = []  # the error bars: segments of the line collections
    for collection in fig.axes[0].collections:
        for seg in getattr(collection, "get_segments", lambda: [])():
            (x0, y0), (x1, y1) = seg
            if x0 == x1 and y0 != y1:
                vertical.append((float(x0), float(min(y0, y1)), float(max(y0, y1))))
    for r in (0.0, 0.5, 1.0):
        lo, hi = t_interval(runs.loc[runs["relax_factor"] == r, "valid_ndcg@10"])
        assert any(x == r and (a, b) == pytest.approx((lo, hi)) for x, a, b in vertical), (r, vertical)
    plots.plt.close(fig)


def test_figures_are_byte_identical_when_drawn_twice(tmp_path):
    runs = _runs()
    for name in ("a", "b"):
        plots.save(plots.comparison(runs, "Vanilla"), name, tmp_path)
        plots.plt.close("all")
    for ext in ("png", "svg"):
        assert (tmp_path / f"a.{ext}").read_bytes() == (tmp_path / f"b.{ext}").read_bytes()
