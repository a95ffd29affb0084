"""Where does magnitude balancing act? Notebook 05's map over two dials: how much each auxiliary behavior of
the synthetic world is driven by the target's preference (alignment, `mbkit.data.synthetic`), and how large
the auxiliary gradients are against the target's (`TrainConfig.aux_grad_scale`, which multiplies what every
auxiliary task sends into the shared bottom and nothing else). Each cell's auxiliary/target gradient-norm
ratio is measured with the gradient diagnostics; in every cell the same methods train over the same seeds,
and `paired_change` gives each method's change over Vanilla with its confidence interval across seeds."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from mbkit.data.filter import filter_log
from mbkit.data.split import TaskData, build_task_data, sample_summary
from mbkit.data.synthetic import AUXILIARY, synthesize
from mbkit.study import stats
from mbkit.study.stats import equivalent
from mbkit.study.grid import run_grid
from mbkit.study.methods import Method
from mbkit.study.tables import floor_row, median_diagnostics
from mbkit.train import TrainConfig, fit


@dataclass(frozen=True)
class World:
    """The synthetic world of one cell: `synthesize` sizes and seed, the dials on `behaviors`, the filter."""

    n_users: int = 30_000
    n_items: int = 10_000
    seed: int = 0
    behaviors: tuple[str, ...] = AUXILIARY
    target: str = "buy"
    mode: str = "once"           # the filter's reading (see mbkit.data.filter_log)
    min_user_items: int = 10
    min_item_users: int = 10

    def task_data(self, alignment: float, volume: float = 1.0, *, split_seed: int = 0,
                  device: str = "auto") -> TaskData:
        """Generate, filter (the study's 10/10) and split the world at (alignment, volume)."""
        dials = {"alignment": {b: alignment for b in self.behaviors}, "volume": {b: volume for b in self.behaviors}}
        raw = synthesize(self.n_users, self.n_items, self.seed, **dials)
        log = filter_log(raw, target=self.target, mode=self.mode, min_user_items=self.min_user_items,
                         min_item_users=self.min_item_users)
        data = build_task_data(log, target=self.target, seed=split_seed, device=device)
        data.meta = {**data.meta, "world": {**dataclasses.asdict(self), "alignment": alignment, "volume": volume}}
        return data


def cell_name(alignment: float, scale: float) -> str:
    return f"alignment={float(alignment):g}_scale={float(scale):g}"


def world_summary(data: TaskData) -> dict[str, float]:
    """What a world looks like after the filter: users, items, training purchases, each auxiliary task's
    training pairs per training purchase (the volume the model actually sees), and the popularity floor's
    test NDCG@10 (items by training purchases, no training)."""
    train = sample_summary(data)["train"]
    target = data.tasks[0]
    floor = float(floor_row(data)["ndcg@10_mean"].iloc[0])
    return {"users": data.n_users, "items": data.n_items, "train purchases": int(train[target]),
            **{f"{t} per purchase": float(train[t] / train[target]) for t in data.tasks[1:]},
            "most popular ndcg@10": floor}


def measured_ratio(data: TaskData, base: TrainConfig, every: int = 20) -> dict[str, float]:
    """The auxiliary/target gradient-norm ratio that `base` (its `aux_grad_scale` included) trains under:
    Vanilla, seed 0, one epoch with the gradient diagnostics every `every` steps; per shared weight tensor
    and auxiliary task the median over the epoch, then their median, smallest and largest."""
    cfg = dataclasses.replace(base, balancer="vanilla", balancer_kwargs={}, seed=0, epochs=1, patience=None,
                              diagnostics_every=every, progress=False)
    medians = median_diagnostics(fit(data, cfg).diagnostics, "ratio_to_target", data.tasks[0]).to_numpy()
    return {"ratio": float(np.median(medians)), "ratio_low": float(medians.min()),
            "ratio_high": float(medians.max())}


def run_map(world: World, alignments: Sequence[float], scales: Sequence[float], methods: Iterable[Method],
            seeds: Iterable[int], base: TrainConfig, *, volume: float = 1.0, split_seed: int = 0,
            device: str = "auto", runs_dir: str | Path | None = None, progress: Any = False,
            diagnostics_every: int = 20, **grid_kwargs: Any) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Train `methods` x `seeds` in every (alignment, scale) cell, `scale` the auxiliary gradients' factor
    (`TrainConfig.aux_grad_scale`) on the world at (alignment, `volume`). Returns (runs, cells): one row per
    run with `alignment` and `scale` columns added, and one row per cell with its world (`world_summary`,
    one world per alignment) and its measured gradient-norm ratio (`measured_ratio`). With `runs_dir` each
    cell keeps its records in `runs_dir/<cell_name>/`, so a re-run trains only what is missing.
    `grid_kwargs` go to `run_grid` (the fields of `mbkit.study.grid.Executor`)."""
    methods, seeds = list(methods), list(seeds)
    bad = [w for w in scales if not 0 < float(w) < math.inf]
    if bad or not len(scales):
        raise ValueError(f"scales={list(scales)}: give one or more finite factors > 0 (1: the study's gradients)")
    runs, cells = [], []
    for a in alignments:
        data = world.task_data(float(a), float(volume), split_seed=split_seed, device=device)
        summary = world_summary(data)
        for w in scales:
            cfg = dataclasses.replace(base, aux_grad_scale=float(w))
            cell_dir = None if runs_dir is None else Path(runs_dir) / cell_name(a, w)
            r = run_grid(data, methods, seeds, cfg, runs_dir=cell_dir, progress=progress, **grid_kwargs)
            runs.append(r.assign(alignment=float(a), scale=float(w)))
            cells.append({"alignment": float(a), "scale": float(w), **measured_ratio(data, cfg, diagnostics_every),
                          **summary})
    return pd.concat(runs, ignore_index=True), pd.DataFrame(cells)


def paired_change(runs: pd.DataFrame, baseline: str = "Vanilla", metric: str = "test_ndcg@10",
                  by: Sequence[str] = ("alignment", "scale"), level: float = 0.95) -> pd.DataFrame:
    """`mbkit.study.stats.paired_change` per (alignment, scale) cell: each method against `baseline` at the
    same auxiliary scale."""
    return stats.paired_change(runs, baseline, metric, by=by, level=level)


def against_balanced(runs: pd.DataFrame, baseline: str = "Vanilla", metric: str = "test_ndcg@10",
                     level: float = 0.95) -> pd.DataFrame:
    """Every (method, scale) against `baseline` at scale 1 of the same alignment, paired by seed: how much
    each method loses or keeps when the auxiliary gradients are scaled away from their natural size (the
    baseline at scale 1 itself is left out)."""
    rows = []
    for a, cell in runs.groupby("alignment", sort=False):
        ref = cell[(cell["method"] == baseline) & (cell["scale"] == 1.0)]
        if ref.empty:
            raise ValueError(f"no {baseline} runs at scale 1 for alignment {a:g}: the map's scales must include 1")
        ref = ref.assign(method="__balanced__")
        for w, at in cell.groupby("scale", sort=False):
            at = at[~((at["method"] == baseline) & (w == 1.0))]
            if not at.empty:
                c = stats.paired_change(pd.concat([ref, at]), "__balanced__", metric, level=level)
                rows.append(c.assign(alignment=float(a), scale=float(w)))
    out = pd.concat(rows, ignore_index=True)
    return out[["alignment", "scale", *[c for c in out.columns if c not in ("alignment", "scale")]]]


def reading(changes: pd.DataFrame, cells: pd.DataFrame, level: float = 0.95, margin_pct: float = 5.0) -> str:
    """The map in words: per method and alignment, the measured ratios where its interval against Vanilla in
    the same cell lies above 0 (wins), below 0 (loses), inside +-`margin_pct` (ties) or none of these
    (unresolved), by `mbkit.study.stats.verdict` and `equivalent`."""
    says = stats.verdict(changes).map({"better": "wins", "worse": "loses", stats.UNRESOLVED: "unresolved"})
    says[equivalent(changes, margin_pct) & (says == "unresolved")] = f"ties within +-{margin_pct:g}%"
    ratio = cells.set_index(["alignment", "scale"])["ratio"]
    lines = []
    for (method, a), c in changes.groupby(["method", "alignment"], sort=False):
        parts = []
        for word in dict.fromkeys(says.loc[c.index]):
            mask = says.loc[c.index] == word
            where = ", ".join(f"{ratio.loc[(a, w)]:.3g} ({p:+.1f}% [{lo:+.1f}, {hi:+.1f}])" for w, p, lo, hi in
                              c.loc[mask, ["scale", "change_pct", "ci_low_pct", "ci_high_pct"]].itertuples(index=False))
            parts.append(f"{word} at ratio {where}")
        lines.append(f"{method}, alignment {a:g}: " + "; ".join(parts))
    return (f"against Vanilla at the same auxiliary scale, test NDCG@10, by the measured auxiliary/target "
            f"gradient-norm ratio (change [{level:.0%} interval]):\n" + "\n".join(lines))


def against_floor(summary: pd.DataFrame, cells: pd.DataFrame, metric: str = "ndcg@10") -> pd.DataFrame:
    """Each method's test `metric` mean in percent above (+) or below (-) its cell's popularity floor (items
    ranked by training purchases): rows (alignment, scale), one column per method. `summary` is
    `summarize(runs, by=["alignment", "scale", "method"])`."""
    means = summary[f"{metric}_mean"].unstack("method")
    floor = cells.set_index(["alignment", "scale"])["most popular ndcg@10"].reindex(means.index)
    return means.div(floor, axis=0).sub(1.0).mul(100.0)[list(dict.fromkeys(summary.index.get_level_values("method")))]
