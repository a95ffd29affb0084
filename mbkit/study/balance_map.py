"""When does balancing help? Notebook 05's map over the synthetic world's two dials (`mbkit.data.synthetic`):
how much each auxiliary behavior is driven by the target's preference (alignment) and how much of it there
is (volume). In every cell of the grid the same methods train over the same seeds on that cell's world;
`paired_change` gives each method's change over Vanilla with a confidence interval across seeds."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import pandas as pd

from mbkit.data.filter import filter_log
from mbkit.data.split import TaskData, build_task_data, sample_summary
from mbkit.data.synthetic import AUXILIARY, synthesize
from mbkit.study import stats
from mbkit.study.grid import run_grid
from mbkit.study.methods import Method
from mbkit.study.tables import floor_row
from mbkit.train import TrainConfig


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

    def task_data(self, alignment: float, volume: float, *, split_seed: int = 0, device: str = "auto") -> TaskData:
        """Generate, filter (the study's 10/10) and split the world at (alignment, volume)."""
        dials = {"alignment": {b: alignment for b in self.behaviors}, "volume": {b: volume for b in self.behaviors}}
        raw = synthesize(self.n_users, self.n_items, self.seed, **dials)
        log = filter_log(raw, target=self.target, mode=self.mode, min_user_items=self.min_user_items,
                         min_item_users=self.min_item_users)
        data = build_task_data(log, target=self.target, seed=split_seed, device=device)
        data.meta = {**data.meta, "world": {**dataclasses.asdict(self), "alignment": alignment, "volume": volume}}
        return data


def cell_name(alignment: float, volume: float) -> str:
    return f"alignment={float(alignment):g}_volume={float(volume):g}"


def world_summary(data: TaskData) -> dict[str, float]:
    """What a cell's world looks like after the filter: users, items, training purchases, each auxiliary
    task's training pairs per training purchase (the volume the model actually sees), and the popularity
    floor's test NDCG@10 (items by training purchases, no training)."""
    train = sample_summary(data)["train"]
    target = data.tasks[0]
    floor = float(floor_row(data)["ndcg@10_mean"].iloc[0])
    return {"users": data.n_users, "items": data.n_items, "train purchases": int(train[target]),
            **{f"{t} per purchase": float(train[t] / train[target]) for t in data.tasks[1:]},
            "most popular ndcg@10": floor}


def run_map(world: World, alignments: Sequence[float], volumes: Sequence[float], methods: Iterable[Method],
            seeds: Iterable[int], base: TrainConfig, *, split_seed: int = 0, device: str = "auto",
            runs_dir: str | Path | None = None, progress: Any = False,
            **grid_kwargs: Any) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Train `methods` x `seeds` in every (alignment, volume) cell. Returns (runs, worlds): one row per run
    with `alignment` and `volume` columns added, and one row per cell from `world_summary`. With `runs_dir`
    each cell keeps its records in `runs_dir/<cell_name>/`, so a re-run trains only what is missing.
    `grid_kwargs` go to `run_grid` (the fields of `mbkit.study.grid.Executor`)."""
    methods, seeds = list(methods), list(seeds)
    runs, worlds = [], []
    for a in alignments:
        for v in volumes:
            data = world.task_data(float(a), float(v), split_seed=split_seed, device=device)
            cell_dir = None if runs_dir is None else Path(runs_dir) / cell_name(a, v)
            r = run_grid(data, methods, seeds, base, runs_dir=cell_dir, progress=progress, **grid_kwargs)
            runs.append(r.assign(alignment=float(a), volume=float(v)))
            worlds.append({"alignment": float(a), "volume": float(v), **world_summary(data)})
    return pd.concat(runs, ignore_index=True), pd.DataFrame(worlds)


def paired_change(runs: pd.DataFrame, baseline: str = "Vanilla", metric: str = "test_ndcg@10",
                  by: Sequence[str] = ("alignment", "volume"), level: float = 0.95) -> pd.DataFrame:
    """`mbkit.study.stats.paired_change` per (alignment, volume) cell of the map."""
    return stats.paired_change(runs, baseline, metric, by=by, level=level)


def reading(changes: pd.DataFrame, level: float = 0.95) -> str:
    """The map in words: per method, the cells where its interval lies above 0 (helps), below 0 (hurts), or
    includes 0 (no difference the seeds can resolve), by `mbkit.study.stats.verdict`."""
    words = {"better": "helps", "worse": "hurts", stats.UNRESOLVED: stats.UNRESOLVED}
    says = stats.verdict(changes).map(words)
    lines = []
    for method, c in changes.groupby("method", sort=False):
        parts = []
        for word in words.values():
            mask = says.loc[c.index] == word
            if mask.any():
                cells = ", ".join(f"({a:g}, {v:g}) {p:+.1f}%" for a, v, p in
                                  c.loc[mask, ["alignment", "volume", "change_pct"]].itertuples(index=False))
                parts.append(f"{word} in {cells}")
        lines.append(f"{method}: " + "; ".join(parts))
    return (f"(alignment, volume) cells, test NDCG@10 change over Vanilla; 'helps'/'hurts' = the {level:.0%} "
            "interval excludes 0\n" + "\n".join(lines))
