"""Grids of runs over methods and seeds, and the tables the study reports (mean ± std, relative
improvement over Vanilla, paired tests across seeds). The notebooks call these; nothing here trains
anything that `mbkit.train.fit` does not."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np
import pandas as pd
from scipy import stats

from mbkit.data import TaskData
from mbkit.train import TrainConfig, fit

METRICS: tuple[str, ...] = ("ndcg@10", "recall@10", "precision@10", "ndcg@20", "recall@20", "precision@20")


@dataclass(frozen=True)
class Method:
    """One row of a comparison table: a balancer with its arguments and the label shown for it."""

    label: str
    balancer: str
    kwargs: dict[str, Any] = field(default_factory=dict)


def study_methods(relax_factor: float = 0.7) -> list[Method]:
    """The six methods of the study's comparison (thesis Table 3), MetaBalance at `relax_factor`."""
    r = {"relax_factor": relax_factor}
    return [
        Method("Vanilla", "vanilla"),
        Method(f"MetaBalance (r={relax_factor:g})", "metabalance", r),
        Method("PCGrad (adjusted)", "pcgrad_adjusted"),
        Method("PCGrad (original)", "pcgrad"),
        Method("MetaBalance + PCGrad (adjusted)", "metabalance+pcgrad_adjusted", r),
        Method("MetaBalance + PCGrad (original)", "metabalance+pcgrad", r),
    ]


def run_grid(data: TaskData, methods: Iterable[Method], seeds: Iterable[int], base: TrainConfig,
             on_run=None) -> pd.DataFrame:
    """Train every method with every seed (same data split) and return one row per run.

    Columns: method, balancer, seed, best_epoch, train_seconds, valid_<metric>, test_<metric>.
    `on_run(result)` is called after each run (e.g. to save it).
    """
    rows = []
    for m in methods:
        for seed in seeds:
            cfg = dataclasses.replace(base, balancer=m.balancer, balancer_kwargs=dict(m.kwargs), seed=int(seed))
            res = fit(data, cfg)
            if on_run is not None:
                on_run(m, res)
            row: dict[str, Any] = {"method": m.label, "balancer": m.balancer, "seed": int(seed),
                                   "best_epoch": res.best_epoch, "train_seconds": res.train_seconds}
            row.update({k: v for k, v in m.kwargs.items()})
            row.update({f"valid_{k}": v for k, v in res.valid.items()})
            row.update({f"test_{k}": v for k, v in res.test.items()})
            rows.append(row)
    return pd.DataFrame(rows)


def summarize(runs: pd.DataFrame, by: str | list[str] = "method", split: str = "test",
              metrics: Iterable[str] = METRICS) -> pd.DataFrame:
    """Mean and std over seeds of each metric, one row per group, in the order groups first appear."""
    by = [by] if isinstance(by, str) else list(by)
    cols = [f"{split}_{m}" for m in metrics]
    g = runs.groupby(by, sort=False)[cols]
    mean, std = g.mean(), g.std(ddof=1).fillna(0.0)
    out = pd.concat({"mean": mean, "std": std}, axis=1)
    out.columns = [f"{m.removeprefix(split + '_')}_{stat}" for stat, m in out.columns]
    out["n_seeds"] = g.size()
    return out


def short_name(metric: str) -> str:
    """'ndcg@10' -> 'N@10', as in the thesis's tables."""
    name, k = metric.split("@")
    return {"ndcg": "N", "recall": "R", "precision": "P"}[name] + "@" + k


def format_table(summary: pd.DataFrame, metrics: Iterable[str] = METRICS, digits: int = 4) -> pd.DataFrame:
    """The thesis's layout: one column per metric, cells 'mean ± std' rounded to `digits`."""
    return pd.DataFrame({short_name(m): [f"{a:.{digits}f} ± {s:.{digits}f}"
                                         for a, s in zip(summary[f"{m}_mean"], summary[f"{m}_std"])]
                         for m in metrics}, index=summary.index)


def relative_improvement(summary: pd.DataFrame, baseline: str, metrics: Iterable[str] = METRICS) -> pd.DataFrame:
    """Percentage change of each mean metric over the baseline row."""
    base = summary.loc[baseline]
    return pd.DataFrame({m: 100.0 * (summary[f"{m}_mean"] / base[f"{m}_mean"] - 1.0) for m in metrics}) + 0.0


def paired_tests(runs: pd.DataFrame, baseline: str, metric: str = "test_ndcg@10") -> pd.DataFrame:
    """Paired two-sided t-test across seeds of every method against `baseline` on `metric`.

    Seeds are the pairing unit (same seed = same negatives order and initialisation stream).
    With fewer than 2 common seeds the p-value is NaN.
    """
    wide = runs.pivot_table(index="seed", columns="method", values=metric, sort=False)
    rows = []
    if baseline not in wide.columns:
        raise ValueError(f"baseline {baseline!r} is not among the methods {list(wide.columns)}")
    for method in wide.columns:
        both = wide[baseline].notna() & wide[method].notna()
        a, b = wide.loc[both, method], wide.loc[both, baseline]
        diff = a - b
        if method == baseline or len(diff) < 2 or float(diff.std(ddof=1)) == 0.0:
            t, p = np.nan, np.nan
        else:
            t, p = stats.ttest_rel(a, b)
        rows.append({"method": method, "metric": metric, "n_seeds": len(diff), "mean_diff": float(diff.mean()),
                     "t": float(t), "p_value": float(p)})
    return pd.DataFrame(rows).set_index("method")
