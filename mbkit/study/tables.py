"""The tables the study reports: mean ± std over seeds, the thesis's layout, relative change, where runs
stopped, the popularity floor as a row, and summaries of the gradient diagnostics."""

from __future__ import annotations

from typing import Any, Iterable

import pandas as pd

from mbkit.metrics import evaluate
from mbkit.popularity import LABEL as POPULARITY_LABEL
from mbkit.popularity import most_popular

METRICS: tuple[str, ...] = ("ndcg@10", "recall@10", "precision@10", "ndcg@20", "recall@20", "precision@20")


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


def stopping(runs: pd.DataFrame, cap: int, by: str | list[str] = "method") -> pd.DataFrame:
    """Where each group's runs peaked and stopped, in seed order: "best epoch" and "epochs trained" per
    seed, and "stopped on its own" (runs that the patience rule ended before the `cap` of epochs)."""
    by = [by] if isinstance(by, str) else list(by)
    if runs["epochs_trained"].isna().any():
        raise ValueError("these run records predate mbkit's epochs_trained column: train the grid again")
    g = runs.sort_values("seed", kind="stable").groupby(by, sort=False)
    out = pd.DataFrame({"best epoch": g["best_epoch"].agg(lambda x: [int(v) for v in x]),
                        "epochs trained": g["epochs_trained"].agg(lambda x: [int(v) for v in x])})
    out["stopped on its own"] = g["epochs_trained"].agg(lambda x: f"{int((x < cap).sum())} of {len(x)}")
    return out.reindex(runs[by].drop_duplicates().set_index(by).index)


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


def one_run_resolution(summary: pd.DataFrame, baseline: Any, metric: str = "ndcg@10", drop: Iterable[Any] = (),
                       name: str | None = None) -> str:
    """What a table of one run per method resolves, in words: s, the seed std of `metric` averaged over the rows
    of `summary` (those in `drop` left out, e.g. a floor without seeds), in percent of the `baseline` row's mean.
    Two single runs differ with a standard deviation of about sqrt(2)·s, so such a table tells apart differences
    above about 2·sqrt(2)·s (two standard deviations)."""
    rows = summary.drop(index=[d for d in drop if d in summary.index])
    s = float(rows[f"{metric}_std"].mean())
    pct = 100.0 * s / float(summary.loc[baseline, f"{metric}_mean"])
    kind, k = metric.split("@")
    shown = {"ndcg": "NDCG", "recall": "Recall", "precision": "Precision"}.get(kind, kind) + "@" + k
    return (f"seed std of {shown} (mean over the trained rows): {s:.4f} = {pct:.1f} % of {name or baseline}'s mean; "
            f"one run resolves differences above about {2 * 2 ** 0.5 * pct:.0f} %")


def floor_row(data: Any, split: str = "test", label: str = POPULARITY_LABEL) -> pd.DataFrame:
    """The popularity floor (`mbkit.popularity`) as one row of a `summarize` table (std 0: it has no seed)."""
    metrics = evaluate(most_popular(data), data, split)
    row = {f"{k}_{stat}": (v if stat == "mean" else 0.0) for k, v in metrics.items() for stat in ("mean", "std")}
    row["n_seeds"] = 1
    return pd.DataFrame([row], index=pd.Index([label], name="method"))


def against_floor(summary: pd.DataFrame, metric: str = "ndcg@10", floor: str = POPULARITY_LABEL) -> str:
    """In words, whether each trained row of `summary` clears the popularity floor (its row `floor`) on
    `metric`'s mean, and by how much; a model below it learned less than counting purchases, so a change
    between such models says little about balancing."""
    if floor not in summary.index:
        raise ValueError(f"the table has no {floor!r} row; add floor_row(data) to it")
    level = float(summary.loc[floor, f"{metric}_mean"])
    means = summary.drop(index=floor)[f"{metric}_mean"].astype(float)
    if level <= 0:
        return f"the popularity floor's {metric} is {level:g}: every trained model clears it"
    pct = 100.0 * (means / level - 1.0)
    above, below = pct[pct > 0], pct[pct <= 0]
    lines = [f"popularity floor ({floor}): {metric} {level:.4f}"]
    if len(above):
        lowest = above.idxmin()
        lines.append(f"  above it ({len(above)} of {len(pct)}): {above.index[0] if len(above) == 1 else 'from'} "
                     + (f"{above.iloc[0]:+.0f}%" if len(above) == 1 else
                        f"{lowest} {above[lowest]:+.0f}% to {above.idxmax()} {above.max():+.0f}%"))
    if len(below):
        named = ", ".join(f"{m} {c:+.0f}%" for m, c in below.items())
        lines.append(f"  at or below it ({len(below)} of {len(pct)}): {named} (a model there learned less than "
                     "ranking items by their training purchases)")
    return "\n".join(lines)


def median_diagnostics(diagnostics: pd.DataFrame, value: str, target: str) -> pd.DataFrame:
    """Median over training of a gradient diagnostic (e.g. "ratio_to_target", "weight"), one row per shared
    weight tensor (biases left out) and one column per auxiliary task."""
    weights = diagnostics[~diagnostics["tensor"].str.endswith("bias")]
    aux = weights[weights["task"] != target]
    return aux.pivot_table(index="tensor", columns="task", values=value, aggfunc="median", sort=False)


def with_applied_ratio(diagnostics: pd.DataFrame) -> pd.DataFrame:
    """Add `applied_ratio` = ratio_to_target × weight: the auxiliary/target magnitude ratio of what reaches
    the optimizer after a balancer that scales each auxiliary gradient by a weight (MetaBalance's
    r · m_target / m_aux + (1 − r), Eq. 5), where `ratio_to_target` is the raw one."""
    aux = diagnostics["task"] != diagnostics["task"].iloc[0]  # the target comes first
    if diagnostics.loc[aux, "weight"].isna().any():
        raise ValueError("these diagnostics carry no applied weights (the balancer reports none, e.g. Vanilla or "
                         "PCGrad); the applied ratio is defined for weighting balancers such as MetaBalance")
    return diagnostics.assign(applied_ratio=diagnostics["ratio_to_target"] * diagnostics["weight"].where(aux, 1.0))
