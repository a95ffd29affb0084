"""Deterministic figures for the notebooks: same inputs, byte-identical PNG and SVG files."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

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


def relax_sweep(summary: pd.DataFrame, metric: str = "ndcg@10", chosen: float | None = None,
                floor: float | None = None) -> plt.Figure:
    """Mean ± std of `metric` against the relax factor, one line per strategy; `floor` (e.g. the popularity
    ranker's value of the same metric on the same split) as a dotted line.

    `summary` is indexed by (strategy, relax_factor) as returned by `experiments.summarize`.
    """
    fig, ax = plt.subplots(figsize=(5, 3.4))
    for i, (strategy, g) in enumerate(summary.groupby(level=0, sort=False)):
        r = g.index.get_level_values(1).to_numpy(dtype=float)
        ax.errorbar(r, g[f"{metric}_mean"], yerr=g[f"{metric}_std"], marker="o", capsize=3,
                    color=PALETTE[i], label=str(strategy))
    if chosen is not None:
        ax.axvline(chosen, color="black", lw=0.6, ls="--")
    if floor is not None:
        ax.axhline(floor, color="grey", lw=1.0, ls=":", label="most popular (floor)")
    ax.set_xlabel("relax factor r")
    ax.set_ylabel(f"validation {metric.upper()}")
    ax.legend(frameon=False, title="strategy", fontsize=8)
    fig.tight_layout()
    return fig


def comparison(summary: pd.DataFrame, metrics: Iterable[str] = ("ndcg@10", "recall@10", "ndcg@20", "recall@20"),
               seconds: pd.Series | None = None) -> plt.Figure:
    """Grouped bars (mean ± std over seeds) per method, and training seconds per run when given."""
    metrics = list(metrics)
    n = len(summary)
    ncols = 2 if seconds is not None else 1
    fig, axes = plt.subplots(1, ncols, figsize=(6.5 * ncols, 3.8), squeeze=False)
    ax = axes[0, 0]
    width = 0.8 / n
    x = np.arange(len(metrics))
    for i, (label, row) in enumerate(summary.iterrows()):
        ax.bar(x + (i - (n - 1) / 2) * width, [row[f"{m}_mean"] for m in metrics], width,
               yerr=[row[f"{m}_std"] for m in metrics], capsize=2, color=PALETTE[i], label=label)
    ax.set_xticks(x, [m.upper() for m in metrics])
    ax.set_ylabel("test metric")
    ax.legend(frameon=False, fontsize=7, loc="upper left", bbox_to_anchor=(0.0, -0.12), ncol=2)
    if seconds is not None:
        ax2 = axes[0, 1]
        ax2.barh(np.arange(len(seconds)), seconds.to_numpy(), color=[PALETTE[i] for i in range(len(seconds))])
        ax2.set_yticks(np.arange(len(seconds)), list(seconds.index), fontsize=8)
        ax2.invert_yaxis()
        ax2.set_xlabel("training seconds per run (mean)")
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
        im = ax.imshow(grid.to_numpy(float), cmap="RdBu", vmin=-lim, vmax=lim, aspect="auto")
        for (i, j), v in np.ndenumerate(grid.to_numpy(float)):
            clear = lo.iat[i, j] > 0 or hi.iat[i, j] < 0  # False for one seed (no interval)
            ci = f"\n[{lo.iat[i, j]:+.1f}, {hi.iat[i, j]:+.1f}]" if np.isfinite(lo.iat[i, j]) else ""
            ax.text(j, i, f"{v:+.1f}%{ci}", ha="center", va="center", fontsize=7,
                    fontweight="bold" if clear else "normal")
        ax.set_xticks(range(len(cell)), [f"{r:.2g}\n(w = {_power(s)})" for s, r in cell["ratio"].items()], fontsize=7)
        ax.set_yticks(range(len(grid)), grid.index, fontsize=7)
        ax.set_xlabel("measured ratio (auxiliary gradient scale)")
        ax.set_title(f"against Vanilla at the same scale, test {metric}, %", fontsize=9)
        fig.colorbar(im, ax=ax, shrink=0.8)
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


def quality_vs_cost(summary: pd.DataFrame, cost: pd.Series, metric: str = "ndcg@10", level: float = 0.95,
                    floors: dict[str, float] | None = None, highlight: Iterable[str] = ()) -> plt.Figure:
    """Each method's test `metric` (mean over seeds, with its t-interval at `level`) against its time per
    training step relative to Vanilla (`cost.step_times`, or `experiments.step_cost` from the runs);
    `floors` (label -> value) are drawn as horizontal lines, e.g. the popularity ranker (no training cost)."""
    from scipy import stats

    methods = [m for m in summary.index if m in cost.index]
    mean = summary.loc[methods, f"{metric}_mean"].to_numpy(float)
    n = summary.loc[methods, "n_seeds"].to_numpy(float)
    half = np.where(n > 1, stats.t.ppf(0.5 + level / 2, np.maximum(n - 1, 1)), np.nan) \
        * summary.loc[methods, f"{metric}_std"].to_numpy(float) / np.sqrt(n)
    x = cost.loc[methods].to_numpy(float)
    highlight = set(highlight)
    fig, ax = plt.subplots(figsize=(8.5, 5.2))
    for i, m in enumerate(methods):
        color = PALETTE[3] if m in highlight else PALETTE[0]
        ax.errorbar(x[i], mean[i], yerr=None if np.isnan(half[i]) else half[i], fmt="o", ms=5, capsize=3,
                    color=color, lw=1)
    lo = np.nanmin(mean - np.nan_to_num(half)) if len(methods) else 0.0
    hi = np.nanmax(mean + np.nan_to_num(half)) if len(methods) else 1.0
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
    ax.set_ylabel(f"test {metric.upper()} (mean, {level:.0%} interval over seeds)")
    if floors:
        ax.legend(frameon=False, fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig
