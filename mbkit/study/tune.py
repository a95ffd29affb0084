"""A tuned plain sum before the comparison: Vanilla's learning rate, dropout and negatives chosen on validation.

The field's standing objection to multi-task optimisers is that a tuned plain sum matches them (Kurin et al.,
"In Defense of the Unitary Scalarization for Deep Multi-Task Learning", NeurIPS 2022; Xin et al., "Do Current
Multi-Task Optimization Methods in Deep Recommender Systems Help?", NeurIPS 2022). `tune_vanilla` trains Vanilla
over a small grid of those settings and seeds, and returns the base configuration at the chosen point, so that
every balancer is then compared at the settings that suit the plain sum best, not at the study's defaults.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from mbkit.data.split import TaskData
from mbkit.study.grid import run_grid
from mbkit.study.methods import Method
from mbkit.train import TrainConfig

TUNED = ("lr", "dropout", "num_neg")  # the settings the grid may hold


@dataclass(frozen=True)
class TuneGrid:
    """The values tried for each setting (the grid is their product)."""

    lr: tuple[float, ...] = (3e-4, 1e-3, 3e-3)
    dropout: tuple[float, ...] = (0.2, 0.5)
    num_neg: tuple[int, ...] = (4, 8)

    def __post_init__(self) -> None:
        for name in TUNED:
            if not len(getattr(self, name)):
                raise ValueError(f"the tuning grid gives no value for {name}; give at least one")

    def points(self) -> list[dict[str, Any]]:
        return [dict(zip(TUNED, values)) for values in itertools.product(*(getattr(self, n) for n in TUNED))]


def point_name(point: dict[str, Any]) -> str:
    return "_".join(f"{k}={v:g}" for k, v in point.items())


def tune_vanilla(data: TaskData, base: TrainConfig, grid: TuneGrid | dict[str, Iterable[Any]], seeds: Iterable[int],
                 metric: str = "ndcg@10", runs_dir: str | Path | None = None, progress: Any = False,
                 **executor: Any) -> tuple[TrainConfig, pd.DataFrame]:
    """Train Vanilla at every point of `grid` over `seeds` and choose on validation `metric`.

    The rule, robust to seed noise as `select_relax_factor` is: among the points whose mean lies within one
    standard error (std / sqrt(n)) of the best mean, take the one that changes the fewest of `base`'s settings,
    then the best mean. Returns (base with the chosen settings, one row per point: the settings, mean, std,
    n_seeds, `chosen`). Every configuration is checked before anything trains.
    """
    grid = grid if isinstance(grid, TuneGrid) else TuneGrid(**{k: tuple(v) for k, v in grid.items()})
    seeds = [int(s) for s in seeds]
    configs = [dataclasses.replace(base, **p) for p in grid.points()]  # a bad value fails here, in one sentence
    rows = []
    for point, cfg in zip(grid.points(), configs):
        folder = None if runs_dir is None else Path(runs_dir) / point_name(point)
        runs = run_grid(data, [Method("Vanilla", "vanilla")], seeds, cfg, runs_dir=folder, progress=progress,
                        **executor)
        values = runs[f"valid_{metric}"].astype(float)
        rows.append({**point, "mean": float(values.mean()), "n_seeds": len(values),
                     "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0})
    table = pd.DataFrame(rows)
    chosen = choose(table, base)
    table["chosen"] = table.index == chosen
    return dataclasses.replace(base, **{k: table.loc[chosen, k].item() for k in TUNED}), table


def notebook_base(data: TaskData, base: TrainConfig, params: dict[str, Any], seeds: Iterable[int],
                  runs_dir: str | Path | None = None, progress: Any = False,
                  **executor: Any) -> tuple[TrainConfig, pd.DataFrame | None]:
    """Notebook 04's option: with `params["tune_vanilla"]` on, `tune_vanilla` over the grid of `tune_lr`,
    `tune_dropout` and `tune_num_neg` (its runs under `runs_dir/tune`), returning (the tuned base, the tuning
    table); off, (`base`, None). The notebook and `python -m mbkit grid` both call it, so that they train the
    same grid and share its records."""
    if not params.get("tune_vanilla"):
        return base, None
    grid = {"lr": params["tune_lr"], "dropout": params["tune_dropout"], "num_neg": params["tune_num_neg"]}
    return tune_vanilla(data, base, grid, seeds, runs_dir=None if runs_dir is None else Path(runs_dir) / "tune",
                        progress=progress, **executor)


def choose(table: pd.DataFrame, base: TrainConfig) -> int:
    """The row `tune_vanilla` takes: within one standard error of the best mean, the fewest settings changed
    from `base`, then the higher mean."""
    best = int(table["mean"].idxmax())
    se = float(table.loc[best, "std"]) / math.sqrt(float(table.loc[best, "n_seeds"]))
    changes = sum((table[k] != getattr(base, k)).astype(int) for k in TUNED)
    near = table.assign(changes=changes)[table["mean"] >= table.loc[best, "mean"] - se]
    return int(near.sort_values(["changes", "mean"], ascending=[True, False], kind="stable").index[0])
