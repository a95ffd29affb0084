"""Paired statistics over seeds, the verdict rule, the cost per step, and the choice of the relax factor.

Runs pair by seed: the same seed gives the same initialisation and the same stream of negatives, so the
quantity of interest is each seed's difference to the baseline. `paired_change` gives its mean, the
t-interval at `level` and the paired t-test; `verdict` reads an interval as better, worse or unresolved;
`design` says how many seeds each comparison would need for an interval of a given width.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import numpy as np
import pandas as pd
from scipy import stats

UNRESOLVED = "no resolvable difference"


def paired_change(runs: pd.DataFrame, baseline: str = "Vanilla", metric: str = "test_ndcg@10",
                  by: Iterable[str] = (), level: float = 0.95, power: float = 0.8) -> pd.DataFrame:
    """Each method's change over `baseline` (within each group of `by`, if any), paired by seed.

    One row per (group, method other than the baseline): `n_seeds`, the baseline's mean, the mean
    difference d, its t-interval d ± t_{n-1} · sd / sqrt(n) at `level` (`ci_low`, `ci_high`), the same in
    percent of the baseline's mean, the paired t-test's `t` and `p_value` (scipy's `ttest_rel`; NaN with
    fewer than two seeds or when the differences have no spread), and `detectable`: the smallest true
    change that this design (these seeds, this paired spread) detects with probability `power` at `level`,
    (t_{1-a/2, n-1} + t_{power, n-1}) · sd / sqrt(n) with a = 1 - level (also in percent of the baseline);
    `sd_pct`, the paired standard deviation over seeds in percent of the baseline's mean.
    """
    by = list(by)
    rows = []
    for key, cell in (runs.groupby(by, sort=False) if by else [((), runs)]):
        wide = cell.pivot_table(index="seed", columns="method", values=metric, sort=False)
        if baseline not in wide.columns:
            raise ValueError(f"baseline {baseline!r} is not among the methods {list(wide.columns)}")
        base = wide[baseline]
        for method in wide.columns.drop(baseline):
            both = base.notna() & wide[method].notna()
            a, b = wide.loc[both, method], base[both]
            d = (a - b).to_numpy(float)
            n = len(d)
            half = float(stats.t.ppf(0.5 + level / 2, n - 1) * d.std(ddof=1) / np.sqrt(n)) if n > 1 else np.nan
            detectable = float(stats.t.ppf(power, n - 1) * d.std(ddof=1) / np.sqrt(n)) + half if n > 1 else np.nan
            t, p = stats.ttest_rel(a, b) if n > 1 and d.std(ddof=1) > 1e-12 else (np.nan, np.nan)
            scale = 100.0 / float(b.mean())
            mean = float(d.mean())
            sd = float(d.std(ddof=1)) if n > 1 else np.nan
            rows.append({**dict(zip(by, key if isinstance(key, tuple) else (key,))), "method": method,
                         "n_seeds": n, "baseline_mean": float(b.mean()), "mean_diff": mean, "sd_pct": sd * scale,
                         "ci_low": mean - half, "ci_high": mean + half, "change_pct": mean * scale,
                         "ci_low_pct": (mean - half) * scale, "ci_high_pct": (mean + half) * scale,
                         "t": float(t), "p_value": float(p), "detectable": detectable,
                         "detectable_pct": detectable * scale})
    return pd.DataFrame(rows)


def per_seed_change(runs: pd.DataFrame, baseline: str = "Vanilla", metric: str = "test_ndcg@10") -> pd.DataFrame:
    """Each seed's difference to `baseline` in percent of the baseline's mean over the paired seeds,
    100 · (x_m,s - x_b,s) / mean_s(x_b,s): one row per (method, seed) with `change_pct`. Its mean and
    t-interval are `paired_change`'s `change_pct`, `ci_low_pct` and `ci_high_pct` (the same numbers, drawn
    per seed in the figures)."""
    wide = runs.pivot_table(index="seed", columns="method", values=metric, sort=False)
    if baseline not in wide.columns:
        raise ValueError(f"baseline {baseline!r} is not among the methods {list(wide.columns)}")
    rows = []
    for method in wide.columns.drop(baseline):
        both = wide[baseline].notna() & wide[method].notna()
        scale = 100.0 / float(wide.loc[both, baseline].mean())
        d = (wide.loc[both, method] - wide.loc[both, baseline]) * scale
        rows += [{"method": method, "seed": int(seed), "change_pct": float(v)} for seed, v in d.items()]
    return pd.DataFrame(rows, columns=["method", "seed", "change_pct"])


def t_interval(values: Iterable[float], level: float = 0.95) -> tuple[float, float]:
    """The t-interval of the mean of `values` at `level` (the mean twice for one value): `paired_change`'s
    interval when `values` are `per_seed_change`'s, and seaborn's `errorbar` in the figures."""
    v = np.asarray(list(values), float)
    mean = float(v.mean())
    if len(v) < 2:
        return mean, mean
    half = float(stats.t.ppf(0.5 + level / 2, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v)))
    return mean - half, mean + half


def seeds_needed(sd_pct: float, half_width_pct: float, level: float = 0.95) -> int:
    """The fewest seeds n >= 2 whose paired interval t_{(1+level)/2, n-1} · sd / sqrt(n) is at most
    `half_width_pct` for a paired spread of `sd_pct` (both in percent of the baseline's mean). t exceeds the
    normal quantile z for every n, so the search starts at (z · sd / half-width)^2 and ends a few steps on."""
    if not (math.isfinite(sd_pct) and sd_pct >= 0) or not half_width_pct > 0:
        raise ValueError(f"sd_pct={sd_pct} must be finite and >= 0, and half_width_pct={half_width_pct} > 0")
    z = float(stats.norm.ppf(0.5 + level / 2))
    n = max(2, math.floor((z * sd_pct / half_width_pct) ** 2))
    while stats.t.ppf(0.5 + level / 2, n - 1) * sd_pct / math.sqrt(n) > half_width_pct:
        n += 1
    return n


def design(changes: pd.DataFrame, targets: dict[str, float], level: float = 0.95,
           by: Iterable[str] = ("method",)) -> pd.DataFrame:
    """What each comparison of `paired_change` resolves and what it would need: the seeds it has, its
    measured paired spread, its interval's half-width now, the smallest change it detects, and the seeds
    that would bring the half-width to its target (`targets`: method -> half-width in percent; methods not
    named take the value of the key "*"). A spread measured on few seeds is itself uncertain: `sd_upper_pct`
    is its one-sided 95 % upper limit, sd · sqrt((n - 1) / chi2_{0.05, n-1}) (4.4 times the estimate with
    three seeds), and `seeds_needed_upper` the seeds that limit would need."""
    rows = []
    for _, c in changes.iterrows():
        target = targets.get(c["method"], targets.get("*"))
        if target is None:
            raise ValueError(f"no target half-width for {c['method']!r}: name it in targets or give a '*' default")
        n = int(c["n_seeds"])
        upper = c["sd_pct"] * math.sqrt((n - 1) / stats.chi2.ppf(0.05, n - 1)) if n > 1 else np.nan
        rows.append({**{k: c[k] for k in by}, "n_seeds": n, "sd_pct": c["sd_pct"], "sd_upper_pct": upper,
                     "half_width_pct": (c["ci_high_pct"] - c["ci_low_pct"]) / 2, "detectable_pct": c["detectable_pct"],
                     "target_pct": float(target),  # one seed: no spread, so nothing to size from
                     "seeds_needed": seeds_needed(c["sd_pct"], float(target), level) if n > 1 else np.nan,
                     "seeds_needed_upper": seeds_needed(upper, float(target), level) if n > 1 else np.nan})
    return pd.DataFrame(rows)


def equivalent(changes: pd.DataFrame, margin_pct: float = 5.0) -> pd.Series:
    """True where the whole interval lies within +-`margin_pct` of the baseline's mean: a tie the design
    resolves (an equivalence finding), not just an interval that includes 0."""
    return (changes["ci_low_pct"] > -margin_pct) & (changes["ci_high_pct"] < margin_pct)


def tie_word(margin_pct: float) -> str:
    return f"equivalent within +-{margin_pct:g}%"


def verdict(changes: pd.DataFrame, margin_pct: float | None = None) -> pd.Series:
    """The verdict rule, per row of `paired_change`: "better" when the whole interval lies above 0, "worse"
    when it lies below, else `UNRESOLVED` (no difference the seeds resolve; an interval of one seed is NaN).
    With `margin_pct`, an unresolved interval that lies wholly inside +-`margin_pct` reads `tie_word(margin_pct)`
    (`equivalent`); an interval that excludes 0 keeps its direction even when it is that narrow."""
    words = np.select([changes["ci_low"] > 0, changes["ci_high"] < 0], ["better", "worse"], UNRESOLVED)
    says = pd.Series(words, index=changes.index, name="verdict")
    if margin_pct is not None:
        says[(says == UNRESOLVED) & equivalent(changes, margin_pct)] = tie_word(margin_pct)
    return says


def verdicts(changes: pd.DataFrame, baseline: str, level: float = 0.95, metric: str = "test NDCG@10",
             margin_pct: float = 5.0) -> str:
    """`paired_change`'s table in words: the methods of each verdict with their change in percent; an
    unresolved interval that lies inside +-`margin_pct` of the baseline's mean is an equivalence finding."""
    says, tie = verdict(changes, margin_pct), tie_word(margin_pct)
    parts = []
    for word in ("better", "worse", tie, UNRESOLVED):
        rows = changes.loc[says == word, ["method", "change_pct"]].itertuples(index=False)
        named = ", ".join(f"{m} {c:+.1f}%" for m, c in rows)
        parts.append(f"  {word} ({int((says == word).sum())}): {named or '-'}")
    return f"against {baseline} ({metric}, paired {level:.0%} interval):\n" + "\n".join(parts)


def step_cost(runs: pd.DataFrame, baseline: str = "Vanilla") -> pd.Series:
    """Training seconds per step of each method, relative to `baseline`, from the runs' own `train_seconds`
    and `steps` (runs that stopped early trained fewer steps). The median over a method's runs: the first
    run of a process also pays one-off warm-up costs, which would bias the method trained first."""
    steps = pd.to_numeric(runs["steps"], errors="coerce")
    if steps.isna().any() or (steps <= 0).any():
        raise ValueError("step_cost needs every run's `steps`; records written before mbkit kept it lack them: "
                         "train those runs again (delete their folders in runs_dir)")
    per_step = (runs["train_seconds"] / steps).groupby(runs["method"], sort=False).median()
    if baseline not in per_step.index:
        raise ValueError(f"baseline {baseline!r} is not among the methods {list(per_step.index)}")
    return (per_step / per_step[baseline]).rename(f"time per step / {baseline}")


PAPER_RELAX_FACTOR = 0.7  # MetaBalance's default (He et al. 2022, Sec. 5); wins ties in `select_relax_factor`


@dataclass(frozen=True)
class Selection:
    """The relax factor chosen on validation, and how clear the choice was."""

    strategy: str
    relax_factor: float
    best: tuple[str, float]                  # the candidate with the highest mean
    near_best: list[tuple[str, float]]       # candidates within one standard error of the best mean
    margin: float                            # best mean minus the runner-up's (how clear the raw maximum is)
    standard_error: float                    # std / sqrt(n_seeds) of the best candidate

    def describe(self, metric: str) -> str:
        tied = ", ".join(f"{s} r={r:g}" for s, r in self.near_best)
        return (f"chosen: strategy={self.strategy}, r={self.relax_factor:g}\n"
                f"best mean: {self.best[0]} r={self.best[1]:g}, ahead of the runner-up by {self.margin:.4f} "
                f"(one standard error: {self.standard_error:.4f})\n"
                f"within one standard error of the best validation {metric}: {tied}")


def select_relax_factor(summary: pd.DataFrame, metric: str = "ndcg@10",
                        prefer: float = PAPER_RELAX_FACTOR, reference: float = 0.0) -> Selection:
    """Choose (strategy, r) on validation, robust to float noise and to seed noise.

    `summary` is indexed by (strategy, relax_factor) as `summarize(..., by=["strategy", "relax_factor"])`
    gives it. r = `reference` (0: the plain sum, i.e. Vanilla) is a reference row, never a candidate.
    Among the candidates whose mean lies within one standard error (std / sqrt(n)) of the best mean,
    take the one closest to `prefer` (the paper's 0.7), then the smaller r, then strategy "both". A sweep
    that is flat within its seed spread therefore gives the paper's default on every machine, and a
    different host changes the choice only if it moves a candidate across the one-standard-error line.
    """
    cand = summary[summary.index.get_level_values(1).to_numpy(dtype=float) != reference]
    if cand.empty:
        raise ValueError(f"no relax factor other than the reference r={reference:g} was swept; add candidates")
    mean, std, n = cand[f"{metric}_mean"], cand[f"{metric}_std"], cand["n_seeds"]
    best = mean.idxmax()
    se = float(std.loc[best]) / math.sqrt(float(n.loc[best]))
    near = [idx for idx in cand.index if mean.loc[idx] >= mean.loc[best] - se]
    chosen = min(near, key=lambda i: (abs(float(i[1]) - prefer), float(i[1]), i[0] != "both"))
    others = mean.drop(index=[best])
    margin = float(mean.loc[best] - others.max()) if len(others) else math.inf
    return Selection(strategy=str(chosen[0]), relax_factor=float(chosen[1]), best=(str(best[0]), float(best[1])),
                     near_best=[(str(s), float(r)) for s, r in near], margin=margin, standard_error=se)
