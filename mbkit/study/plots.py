"""Deterministic figures for the notebooks: same inputs, byte-identical PNG and SVG files.

The statistical figures are drawn with seaborn from the runs (one row per run), with the intervals of
`mbkit.study.stats` (t-intervals over seeds, paired where there is a baseline), never seaborn's bootstrap.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Iterable

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from mbkit.study.stats import per_seed_change, t_interval

matplotlib.rcParams["svg.hashsalt"] = "mbkit"  # stable SVG ids
PALETTE = plt.get_cmap("tab10").colors


def save(fig: plt.Figure, name: str, directory: str | Path = "../figures") -> list[Path]:
    """Save `fig` as `directory/name.png` and `.svg` without timestamps; returns the paths."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    png, svg = d / f"{name}.png", d / f"{name}.svg"
    fig.savefig(png, dpi=120, bbox_inches="tight", metadata={"Software": None})
    fig.savefig(svg, bbox_inches="tight", metadata={"Date": None})
    return [png, svg]


def distributions(log: pd.DataFrame, raw_counts: pd.Series | None = None) -> plt.Figure:
    """Interactions per user and per item (complementary CDF, log-log) and the behavior funnel.

    `raw_counts` (behavior -> count in the raw log) adds the raw funnel beside the filtered one.
    """
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, col, what in ((axes[0], "user_id", "user"), (axes[1], "item_id", "item")):
        for i, (beh, g) in enumerate(log.groupby("behavior", observed=True)):
            counts = np.sort(g.groupby(col).size().to_numpy())[::-1]
            ccdf = np.arange(1, len(counts) + 1) / len(counts)
            ax.loglog(counts, ccdf, label=str(beh), color=PALETTE[i])
        ax.set_xlabel(f"interactions per {what}")
        ax.set_ylabel(f"fraction of {what}s with ≥ x")
        ax.legend(frameon=False, fontsize=8)
    filtered = log["behavior"].value_counts()
    order = [b for b in ("pv", "cart", "fav", "buy") if b in filtered.index]
    x = np.arange(len(order))
    if raw_counts is not None:
        axes[2].bar(x - 0.2, [raw_counts.get(b, 0) for b in order], 0.4, label="raw", color=PALETTE[7])
        axes[2].bar(x + 0.2, [filtered.get(b, 0) for b in order], 0.4, label="filtered", color=PALETTE[0])
        axes[2].legend(frameon=False, fontsize=8)
    else:
        axes[2].bar(x, [filtered.get(b, 0) for b in order], color=PALETTE[0])
    axes[2].set_xticks(x, order)
    axes[2].set_yscale("log")
    axes[2].set_ylabel("interactions")
    axes[2].set_title("behavior funnel")
    fig.tight_layout()
    return fig


def imbalance(diags: dict[str, pd.DataFrame], value: str = "ratio_to_target",
              tensors: Iterable[str] | None = None, logy: bool = True) -> plt.Figure:
    """One panel per shared tensor and method: `value` of each auxiliary task over training steps.

    `diags` maps a method label to the tidy diagnostics frame of `fit(..., diagnostics_every=N)`.
    """
    first = next(iter(diags.values()))
    tensors = list(tensors or dict.fromkeys(first["tensor"]))
    target = first["task"].iloc[0]
    tasks = [t for t in dict.fromkeys(first["task"]) if t != target]
    fig, axes = plt.subplots(len(diags), len(tensors), figsize=(2.6 * len(tensors), 2.4 * len(diags)),
                             sharex=True, sharey=True, squeeze=False)
    for r, (label, d) in enumerate(diags.items()):
        for c, name in enumerate(tensors):
            ax = axes[r, c]
            sub = d[d["tensor"] == name]
            for i, task in enumerate(tasks):
                s = sub[sub["task"] == task]
                ax.plot(s["step"], s[value], color=PALETTE[i + 1], label=task, lw=1)
            if value == "ratio_to_target":
                ax.axhline(1.0, color="black", lw=0.6, ls="--")
            if logy and value != "cosine_to_target":
                ax.set_yscale("log")
            if r == 0:
                ax.set_title(name, fontsize=8)
            if c == 0:
                ax.set_ylabel(f"{label}\n{value.replace('_', ' ')}", fontsize=8)
            if r == len(diags) - 1:
                ax.set_xlabel("step", fontsize=8)
    axes[0, -1].legend(frameon=False, fontsize=7, title=f"vs {target}", title_fontsize=7)
    fig.tight_layout()
    return fig


def smoothed(values: pd.Series, window: int) -> pd.Series:
    """Rolling median over `window` consecutive samples (centred), so that a trend is readable."""
    return values.rolling(window, center=True, min_periods=1).median() if window > 1 else values


def applied(d: pd.DataFrame, tensors: Iterable[str] | None = None, window: int = 25,
            label: str = "MetaBalance") -> plt.Figure:
    """The method acting: per shared tensor, each auxiliary task's raw ‖g_aux‖ / ‖g_target‖ (thin) and the
    ratio that reaches the optimizer after balancing, `ratio × weight` (thick), rolling medians over
    `window` diagnostic samples. `d` is a diagnostics frame with an `applied_ratio` column
    (`mbkit.study.tables.with_applied_ratio`)."""
    tensors = list(tensors or dict.fromkeys(d["tensor"]))
    target = d["task"].iloc[0]
    tasks = [t for t in dict.fromkeys(d["task"]) if t != target]
    fig, axes = plt.subplots(1, len(tensors), figsize=(2.6 * len(tensors), 2.6), sharex=True, sharey=True,
                             squeeze=False)
    for c, name in enumerate(tensors):
        ax = axes[0, c]
        sub = d[d["tensor"] == name]
        for i, task in enumerate(tasks):
            s = sub[sub["task"] == task]
            ax.plot(s["step"], smoothed(s["ratio_to_target"], window), color=PALETTE[i + 1], lw=0.7, alpha=0.6)
            ax.plot(s["step"], smoothed(s["applied_ratio"], window), color=PALETTE[i + 1], lw=1.8, label=task)
        ax.axhline(1.0, color="black", lw=0.6, ls="--")
        ax.set_yscale("log")
        ax.set_title(name, fontsize=8)
        ax.set_xlabel("step", fontsize=8)
    axes[0, 0].set_ylabel(f"{label}: ‖g_aux‖ / ‖g_{target}‖\nthin: raw, thick: after balancing", fontsize=8)
    axes[0, -1].legend(frameon=False, fontsize=7, title=f"vs {target}", title_fontsize=7)
    fig.tight_layout()
    return fig


def _interval(level: float):
    """seaborn's `errorbar` for a t-interval of the mean at `level`."""
    return lambda values: t_interval(values, level)


def relax_sweep(runs: pd.DataFrame, metric: str = "ndcg@10", chosen: float | None = None,
                floor: float | None = None, level: float = 0.95, split: str = "valid") -> plt.Figure:
    """`split` `metric` against the relax factor, one line per strategy: each seed's run (dots) and the mean
    with its t-interval at `level`; `floor` (the popularity ranker's value of the same metric on the same
    split) as a dotted line and `chosen` as a dashed one. `runs` holds one row per run with `strategy`,
    `relax_factor` and `<split>_<metric>` columns (`run_grid`)."""
    y = f"{split}_{metric}"
    fig, ax = plt.subplots(figsize=(5.4, 3.6))
    hue = {"hue": "strategy", "palette": "tab10"} if runs["strategy"].nunique() > 1 else {"color": PALETTE[0]}
    sns.lineplot(data=runs, x="relax_factor", y=y, errorbar=_interval(level), err_style="bars", marker="o",
                 err_kws={"capsize": 3}, ax=ax, **hue)
    sns.scatterplot(data=runs, x="relax_factor", y=y, color="0.55", s=12, alpha=0.7, ax=ax, legend=False,
                    zorder=0)
    if chosen is not None:
        ax.axvline(chosen, color="black", lw=0.6, ls="--", label=f"chosen r = {chosen:g}")
    if floor is not None:
        ax.axhline(floor, color="grey", lw=1.0, ls=":", label="most popular (floor)")
    ax.set_xlabel("relax factor r")
    ax.set_ylabel(f"{'validation' if split == 'valid' else split} {metric.upper()}\n"
                  f"(seeds; mean, {level:.0%} interval)")
    ax.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    return fig


def comparison(runs: pd.DataFrame, baseline: str = "Vanilla", metric: str = "test_ndcg@10",
               seconds: pd.Series | None = None, floor: float | None = None, level: float = 0.95,
               margin_pct: float = 5.0) -> plt.Figure:
    """Each method against `baseline`, paired by seed (`stats.per_seed_change`): every seed's change in
    percent of the baseline's mean (dots) and the mean with its paired t-interval at `level` (the interval
    of `stats.paired_change`), the band of +-`margin_pct` in which an interval reads as a tie, and `floor` (the
    popularity ranker's `metric`) as a change of the same kind. Beside it, training seconds per run (`seconds`,
    mean per method) when given."""
    changes = per_seed_change(runs, baseline, metric)
    order = list(dict.fromkeys(changes["method"]))
    ncols = 2 if seconds is not None else 1
    fig, axes = plt.subplots(1, ncols, figsize=(6.2 * ncols, 0.45 * len(order) + 1.8), squeeze=False)
    ax = axes[0, 0]
    ax.axvspan(-margin_pct, margin_pct, color="0.92", zorder=0, label=f"\u00b1{margin_pct:g} % (a tie)")
    ax.axvline(0, color="0.4", lw=0.8)
    # a swarm, not a strip: seaborn's jitter draws from numpy's global random state, so the files would differ
    sns.swarmplot(data=changes, y="method", x="change_pct", order=order, color="0.55", size=4, ax=ax)
    sns.pointplot(data=changes, y="method", x="change_pct", order=order, hue="method", hue_order=order,
                  palette="tab10", errorbar=_interval(level), linestyle="none", capsize=0.3, markers="D",
                  legend=False, ax=ax)
    if floor is not None:
        base = float(runs.loc[runs["method"] == baseline, metric].mean())
        ax.axvline(100 * (floor / base - 1), color="0.3", ls=":", lw=1, label="popularity floor")
    name = metric.replace("test_", "test ").replace("valid_", "validation ").upper().replace("TEST", "test")
    ax.set_xlabel(f"{name} vs {baseline}, % (seeds; mean, paired {level:.0%} interval)")
    ax.set_ylabel("")
    ax.legend(frameon=False, fontsize=7, loc="lower right")
    if seconds is not None:
        per_method = pd.DataFrame({"method": seconds.index, "seconds": seconds.to_numpy(float)})
        sns.barplot(data=per_method, y="method", x="seconds", hue="method", palette="tab10", legend=False,
                    ax=axes[0, 1])
        axes[0, 1].set_xlabel("training seconds per run (mean)")
        axes[0, 1].set_ylabel("")
    fig.tight_layout()
    return fig


def balance_map(balanced: pd.DataFrame, within: pd.DataFrame, cells: pd.DataFrame,
                metric: str = "NDCG@10") -> plt.Figure:
    """Notebook 05's map, one column per alignment. Top: each method's test `metric` against Vanilla at
    the natural scale (`balance_map.against_balanced`) over the measured auxiliary/target gradient-norm ratio
    (log axis; the horizontal bar of each cell spans the ratios of its tensors and tasks), with the paired
    interval, and the popularity floor. Bottom: each method against Vanilla at the same scale
    (`balance_map.paired_change`), annotated with the change and its interval, bold where it excludes 0."""
    alignments = sorted(cells["alignment"].unique())
    methods = list(dict.fromkeys(balanced["method"]))
    colors = {m: PALETTE[i % len(PALETTE)] for i, m in enumerate(["Vanilla"] + [m for m in methods if m != "Vanilla"])}
    spread = np.abs(within[["change_pct", "ci_low_pct", "ci_high_pct"]].to_numpy(float))
    lim = max(float(spread[np.isfinite(spread)].max(initial=0.0)), 1.0)
    fig, axes = plt.subplots(2, len(alignments), figsize=(5.6 * len(alignments), 7.6), squeeze=False,
                             gridspec_kw={"height_ratios": [3, 2]})
    for col, a in enumerate(alignments):
        ax = axes[0, col]
        cell = cells[cells["alignment"] == a].set_index("scale").sort_index()
        b = balanced[balanced["alignment"] == a]
        for i, m in enumerate(methods):
            c = b[b["method"] == m].set_index("scale").reindex(cell.index)
            if m == "Vanilla":  # Vanilla at scale 1 is the reference itself
                c.loc[1.0, ["change_pct", "ci_low_pct", "ci_high_pct"]] = 0.0
            shift = 10 ** (0.06 * (i - (len(methods) - 1) / 2))  # side by side
            x = cell["ratio"].to_numpy() * shift
            y = c["change_pct"].to_numpy(float)
            err = np.vstack([y - c["ci_low_pct"].to_numpy(float), c["ci_high_pct"].to_numpy(float) - y])
            # Vanilla's horizontal bars: the measured ratio's range over shared tensors and auxiliary tasks
            xerr = (np.vstack([x - cell["ratio_low"].to_numpy() * shift, cell["ratio_high"].to_numpy() * shift - x])
                    if m == "Vanilla" else None)
            ax.errorbar(x, y, yerr=np.nan_to_num(err), xerr=xerr, marker="o", ms=4, capsize=2, lw=1.2,
                        color=colors[m], label=m)
        base = float(b["baseline_mean"].iloc[0])
        floor = 100 * (float(cell["most popular ndcg@10"].iloc[0]) / base - 1)
        ax.axhline(floor, color="0.3", ls="--", lw=1, label="popularity floor")
        ax.axhline(0, color="0.5", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("auxiliary / target gradient-norm ratio, measured")
        ax.set_ylabel(f"test {metric} vs Vanilla at scale 1, %")
        ax.set_title(f"alignment {a:g} (Vanilla at scale 1: {base:.4f})", fontsize=9)
        ax.grid(alpha=0.3)
        if col == 0:
            ax.legend(fontsize=7, loc="lower center")
        ax = axes[1, col]
        w = within[within["alignment"] == a]
        grid, lo, hi = (w.pivot(index="method", columns="scale", values=v).reindex(
            index=[m for m in methods if m != "Vanilla"], columns=cell.index) for v in ("change_pct", "ci_low_pct",
                                                                                        "ci_high_pct"))
        label = grid.copy().astype(object)
        for (i, j), v in np.ndenumerate(grid.to_numpy(float)):
            ci = f"\n[{lo.iat[i, j]:+.1f}, {hi.iat[i, j]:+.1f}]" if np.isfinite(lo.iat[i, j]) else ""
            label.iat[i, j] = f"{v:+.1f}%{ci}"
        with warnings.catch_warnings():  # seaborn 0.13.2 calls a Colormap method that matplotlib 3.11 deprecates
            warnings.filterwarnings("ignore", "The set_bad function", PendingDeprecationWarning)
            sns.heatmap(grid.astype(float), annot=label.to_numpy(), fmt="", cmap="RdBu", center=0, vmin=-lim, vmax=lim,
                        annot_kws={"fontsize": 7}, cbar_kws={"shrink": 0.8}, ax=ax,
                        xticklabels=[f"{r:.2g}\n(w = {_power(s)})" for s, r in cell["ratio"].items()],
                        yticklabels=list(grid.index))
        clear = ((lo > 0) | (hi < 0)).to_numpy().ravel()  # False for one seed (no interval)
        for text, bold in zip(ax.texts, clear):  # seaborn writes the annotations row by row
            text.set_fontweight("bold" if bold else "normal")
        ax.tick_params(labelsize=7)
        ax.set_xlabel("measured ratio (auxiliary gradient scale)")
        ax.set_ylabel("")
        ax.set_title(f"against Vanilla at the same scale, test {metric}, %", fontsize=9)
    fig.tight_layout()
    return fig


def _power(x: float) -> str:
    """2^k for a power of two, else the number."""
    mantissa, exponent = math.frexp(x)
    return f"2^{exponent - 1}" if mantissa == 0.5 and exponent != 1 else f"{x:g}"


def _label_heights(x: np.ndarray, y: np.ndarray, gap: float, width: float) -> np.ndarray:
    """Heights for labels placed right of points (x, y): from the lowest point up, each label rises until it
    is at least `gap` from every label already placed within `width` of it horizontally."""
    out = np.asarray(y, float).copy()
    placed: list[int] = []
    for i in np.argsort(y, kind="stable"):
        moved = True
        while moved:
            moved = False
            for j in placed:
                if abs(x[i] - x[j]) < width and abs(out[i] - out[j]) < gap * (1 - 1e-9):
                    out[i] = out[j] + gap
                    moved = True
        placed.append(i)
    return out


def quality_vs_cost(runs: pd.DataFrame, cost: pd.Series, metric: str = "test_ndcg@10", level: float = 0.95,
                    floors: dict[str, float] | None = None, highlight: Iterable[str] = ()) -> plt.Figure:
    """Each method's `metric` (mean over its runs' seeds, with the t-interval at `level`) against its time per
    training step relative to Vanilla (`cost.step_times`, or `stats.step_cost` from the runs); `floors`
    (label -> value) are drawn as horizontal lines, e.g. the popularity ranker (no training cost)."""
    methods = [m for m in dict.fromkeys(runs["method"]) if m in cost.index]
    drawn = runs[runs["method"].isin(methods)].assign(cost=lambda r: r["method"].map(cost).astype(float))
    highlight = set(highlight)
    colors = {m: PALETTE[3] if m in highlight else PALETTE[0] for m in methods}
    fig, ax = plt.subplots(figsize=(8.5, 5.2))
    if methods:
        sns.pointplot(data=drawn, x="cost", y=metric, hue="method", hue_order=methods, palette=colors,
                      native_scale=True, errorbar=_interval(level), linestyle="none", capsize=0.02, markersize=5,
                      err_kws={"linewidth": 1}, legend=False, ax=ax)
    by = drawn.groupby("method", sort=False)[metric]
    mean = by.mean().reindex(methods).to_numpy(float)
    bounds = np.array([t_interval(by.get_group(m), level) for m in methods]).reshape(-1, 2)
    x = cost.loc[methods].to_numpy(float)
    lo = float(bounds[:, 0].min()) if len(methods) else 0.0
    hi = float(bounds[:, 1].max()) if len(methods) else 1.0
    for j, (label, value) in enumerate((floors or {}).items()):
        ax.axhline(value, color="grey", lw=1, ls=[":", "--", "-."][j % 3], label=label)
        lo, hi = min(lo, value), max(hi, value)
    pad = 0.06 * (hi - lo or 1.0)
    ax.set_ylim(lo - pad, hi + pad)
    right = x.max() if len(x) else 1.0
    ax.set_xlim(min(0.9, x.min() - 0.05) if len(x) else 0.9, right + 0.25 * (right - min(1.0, x.min())) + 0.3)
    label_y = _label_heights(x, mean, gap=(hi - lo + 2 * pad) / 32, width=0.2 * (ax.get_xlim()[1] - ax.get_xlim()[0]))
    for i, m in enumerate(methods):
        ax.annotate(m, (x[i], mean[i]), xytext=(x[i] + 0.04, label_y[i]), textcoords="data", fontsize=7,
                    va="center", color=PALETTE[3] if m in highlight else "black",
                    arrowprops={"arrowstyle": "-", "color": "0.7", "lw": 0.5})
    ax.axvline(1.0, color="0.85", lw=0.8, zorder=0)
    ax.set_xlabel("time per training step / Vanilla (same run)")
    ax.set_ylabel(f"{metric.replace('test_', 'test ').upper().replace('TEST', 'test')} "
                  f"(mean, {level:.0%} interval over seeds)")
    if floors:
        ax.legend(frameon=False, fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig
