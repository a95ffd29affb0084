"""Grids of runs over methods and seeds, and the tables the study reports (mean ± std, relative
improvement over Vanilla, paired tests across seeds). The notebooks call these; nothing here trains
anything that `mbkit.train.fit` does not."""

from __future__ import annotations

import dataclasses
import hashlib
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd
from scipy import stats

from mbkit.data import TaskData
from mbkit.progress import progress_bar
from mbkit.record import read_json
from mbkit.runlog import finished_line, run_log
from mbkit.runstate import CheckpointError, RunDirError, code_version, config_differences, data_fingerprint
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


# The floor every auxiliary method must beat: the target task alone, same model and protocol.
SINGLE_TASK = Method("Single task (target only)", "single_task")


def relax_sweep_methods(relax_factors: Iterable[float], strategies: Iterable[str]) -> list[Method]:
    """Notebook 03's grid (thesis Table 2): MetaBalance at every r and strategy; r = 0 (the plain sum,
    the same for every strategy) once, labelled "r=0"."""
    strategies = list(strategies)
    return [Method("r=0", "metabalance", {"relax_factor": 0.0})] + [
        Method(f"{s} r={float(r):g}", "metabalance", {"relax_factor": float(r), "strategy": s})
        for s in strategies for r in relax_factors if float(r) != 0]


def all_methods(relax_factor: float = 0.7) -> list[Method]:
    """Notebook 06's comparison: Vanilla, MetaBalance at `relax_factor`, PCGrad (adjusted), then every
    baseline of `mbkit.balancers.BASELINES` (single task first), each with its default arguments."""
    from mbkit.balancers import BASELINES, make
    return study_methods(relax_factor)[:3] + [SINGLE_TASK] + [Method(str(make(b)), b) for b in BASELINES
                                                               if b != SINGLE_TASK.balancer]


GRIDS = {"03_relax_factor": lambda p: relax_sweep_methods(p["relax_factors"], p["strategies"]),
         "04_method_comparison": lambda p: study_methods(p["relax_factor"]) + [SINGLE_TASK],
         "06_all_methods": lambda p: all_methods(p["relax_factor"])}


def notebook_grid(notebook: str, params: dict[str, Any]) -> tuple[list[Method], list[int], TrainConfig]:
    """The grid a notebook trains with its parameters: (methods, seeds, base config). The notebooks and
    `python -m mbkit grid` both build it here, so their runs share records in a `runs_dir`."""
    if notebook not in GRIDS:
        raise ValueError(f"notebook {notebook!r} trains no grid; grids: {', '.join(GRIDS)}")
    patience = params.get("patience")
    base = TrainConfig(epochs=int(params["epochs"]), batch_size=int(params["batch_size"]), mode=params["mode"],
                       patience=None if patience is None else int(patience), device=params.get("device", "auto"),
                       progress=False)
    return GRIDS[notebook](params), [int(s) for s in params["seeds"]], base


def run_name(method: Method, seed: int) -> str:
    """The folder name of one run of a grid: balancer, sorted keyword arguments and seed, file-system safe.

    `run_name(Method("MB", "metabalance", {"relax_factor": 0.7}), 2) == "metabalance_relax_factor=0.7_seed2"`.
    """
    parts = [method.balancer, *(f"{k}={v}" for k, v in sorted(method.kwargs.items())), f"seed{int(seed)}"]
    name = re.sub(r"[^A-Za-z0-9_.=+-]+", "-", "_".join(parts))
    if len(name) > 120:
        name = f"{name[:100]}-{hashlib.sha1(name.encode()).hexdigest()[:12]}"
    return name


# Settings that do not change a finished run's metrics: a record that differs only in these is reused.
_DISPLAY_ONLY = frozenset({"progress", "device", "eval_batch_users", "nan_check_every"})


def _finished(folder: Path, cfg: TrainConfig, fingerprint: dict[str, Any]) -> dict[str, Any] | None:
    """The record of a finished run in `folder` with this configuration and data, None if there is none
    (or if it trained fewer epochs / other patience, then it is resumed); another run there is an error."""
    path = folder / "metrics.json"
    if not path.is_file():
        return None
    try:
        rec = read_json(path)
        saved_cfg, saved_data = rec["config"], rec["data"]
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path} is not a readable run record ({e}); delete {folder} to train that run "
                         "again") from None
    changed = set(config_differences(saved_cfg, dataclasses.asdict(cfg)))
    wrong = sorted(changed - _DISPLAY_ONLY - {"epochs", "patience"})
    if wrong:
        k = wrong[0]
        raise ValueError(f"{folder} holds a run with {k}={saved_cfg.get(k)!r}, this grid asks for "
                         f"{k}={getattr(cfg, k)!r}; pass another runs_dir, or delete that folder to retrain it")
    if config_differences(saved_data or {}, fingerprint):
        raise ValueError(f"{folder} holds a run trained on other data (source, filter, split or pairs differ); "
                         "pass another runs_dir for this data")
    here, there = code_version()["git_commit"], (rec.get("code") or {}).get("git_commit")
    if here and there and here != there:
        raise ValueError(f"{folder} holds a run trained by the code of commit {there}, this is {here}; delete "
                         f"{folder} to train it with this code, or pass another runs_dir")
    return None if changed - _DISPLAY_ONLY else rec


EXECUTORS = ("local", "ray")


def run_grid(data: TaskData, methods: Iterable[Method], seeds: Iterable[int], base: TrainConfig,
             on_run=None, *, runs_dir: str | Path | None = None, progress: bool | str | None = None,
             executor: str = "local", ray_address: str | None = None, runs_per_gpu: int = 1,
             cpus_per_run: int = 1, max_retries: int = 2) -> pd.DataFrame:
    """Train every method with every seed (same data split) and return one row per run.

    Columns: method, balancer, seed, best_epoch, epochs_trained (fewer than `base.epochs` when the patience
    rule stopped the run), train_seconds, steps (epochs_trained and steps are None in records written
    before mbkit recorded them), the method's keyword arguments,
    valid_<metric>, test_<metric>. `on_run(method, result)` is called after each run that trains here
    (local executor).

    `runs_dir`: each run gets its own folder `runs_dir/run_name(method, seed)` with a checkpoint after
    every epoch and its record (metrics.json, history.csv) as soon as it finishes. Calling again with the
    same grid reads finished runs from their records, resumes unfinished ones from their checkpoints and
    returns the same table as an uninterrupted grid (train_seconds aside); a folder holding a run of
    other settings or data is an error. `progress` (default: `base.progress`): one bar over the grid
    (a widget in JupyterLab, text on stderr elsewhere; see `mbkit.progress`).

    `executor`: "local" trains the runs one after another in this process (the bar counts epochs);
    "ray" makes each run a Ray task (`mbkit.ray_grid`; needs `runs_dir`) on the cluster at `ray_address`
    (None: a local Ray on this machine, or the one this process is already connected to), asking for
    `cpus_per_run` CPUs and 1/`runs_per_gpu` of a GPU, retried `max_retries` times; the bar counts runs.
    Both give the same table for the same grid when a run uses the same number of threads.
    """
    if executor not in EXECUTORS:
        raise ValueError(f"executor={executor!r}; use 'local' (this process) or 'ray' (Ray tasks, `pip install "
                         "'mbkit[ray]'`)")
    if executor == "ray" and runs_dir is None:
        raise ValueError("executor='ray' keeps one record per run: pass runs_dir (a folder for the runs' "
                         "records and checkpoints)")
    seeds = [int(s) for s in seeds]
    plan = [(m, s, dataclasses.replace(base, balancer=m.balancer, balancer_kwargs=dict(m.kwargs), seed=s,
                                       progress=False))
            for m in methods for s in seeds]
    folders: list[Path | None] = [None] * len(plan)
    records: list[dict[str, Any] | None] = [None] * len(plan)
    if runs_dir is not None:
        fingerprint = data_fingerprint(data)
        for i, (m, s, cfg) in enumerate(plan):
            folders[i] = Path(runs_dir) / run_name(m, s)
            records[i] = _finished(folders[i], cfg, fingerprint)
    progress = base.progress if progress is None else progress
    todo = [i for i, r in enumerate(records) if r is None]
    if executor == "ray" and todo:
        from mbkit.ray_grid import run_on_ray
        jobs = [(i, plan[i][0], plan[i][1], plan[i][2], folders[i]) for i in todo]
        got = run_on_ray(data, fingerprint, jobs, address=ray_address, runs_per_gpu=runs_per_gpu,
                         cpus_per_run=cpus_per_run, max_retries=max_retries, progress=progress,
                         n_total=len(plan), runs_dir=Path(runs_dir))
        for i, rec in got.items():
            records[i] = rec
    elif todo:
        epochs = base.epochs
        bar = progress_bar(progress, total=len(plan) * epochs, initial=epochs * (len(plan) - len(todo)),
                           unit="epoch", desc="grid")
        try:
            for i in todo:
                m, s, cfg = plan[i]
                if folders[i] is None:
                    records[i] = _train_one(data, m, s, cfg, None, on_run, bar, f"run {i + 1}/{len(plan)}")
                    continue
                with run_log(folders[i], capture=False):
                    records[i] = _train_one(data, m, s, cfg, folders[i], on_run, bar, f"run {i + 1}/{len(plan)}")
                    with open(folders[i] / "run.log", "a") as log:
                        print(finished_line(records[i]), file=log)
        finally:
            if bar is not None:
                bar.close()
    rows = []
    for (m, s, cfg), rec in zip(plan, records):
        row: dict[str, Any] = {"method": m.label, "balancer": m.balancer, "seed": s,
                               "best_epoch": rec["best_epoch"], "epochs_trained": rec.get("epochs_trained"),
                               "train_seconds": rec["train_seconds"], "steps": rec.get("steps")}
        row.update({k: v for k, v in m.kwargs.items()})
        row.update({f"valid_{k}": v for k, v in rec["valid"].items()})
        row.update({f"test_{k}": v for k, v in rec["test"].items()})
        rows.append(row)
    return pd.DataFrame(rows)


def _train_one(data: TaskData, m: Method, seed: int, cfg: TrainConfig, folder: Path | None, on_run: Any,
               bar: Any, desc: str) -> dict[str, Any]:
    """Train (or resume) one run of a grid, save its record in `folder`; returns its summary."""
    seen = 0

    def on_epoch(epoch: int, total: int) -> None:
        nonlocal seen
        seen += 1
        if bar is not None:
            bar.set_postfix_str(f"{m.label}, seed {seed}: epoch {epoch}/{total}", refresh=False)
            bar.update(1)

    if bar is not None:
        bar.set_description(desc, refresh=False)
        bar.set_postfix_str(f"{m.label}, seed {seed}: starting", refresh=True)
    resume = folder / "last.pt" if folder is not None and (folder / "last.pt").is_file() else None
    try:
        res = fit(data, cfg, checkpoint_dir=folder, resume=resume, on_epoch=on_epoch)
    except (CheckpointError, RunDirError) as e:
        raise type(e)(f"{e} (grid run folder {folder}: pass another runs_dir, or delete the folder to "
                      "retrain that run)") from None
    if folder is not None:
        res.save(folder)
    if on_run is not None:
        on_run(m, res)
    if bar is not None:
        bar.update(cfg.epochs - seen)  # epochs trained before a resume, or skipped by early stopping
    return res.summary()


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


def paired_change(runs: pd.DataFrame, baseline: str = "Vanilla", metric: str = "test_ndcg@10",
                  by: Iterable[str] = (), level: float = 0.95) -> pd.DataFrame:
    """Each method's change over `baseline` (within each group of `by`, if any), paired by seed: the mean
    difference, its t-interval at `level` (mean ± t_{n-1} · sd / sqrt(n)) and the paired t-test's p-value,
    also in percent of the baseline's mean. One row per (group, method other than the baseline)."""
    by = list(by)
    rows = []
    for key, cell in (runs.groupby(by, sort=False) if by else [((), runs)]):
        wide = cell.pivot_table(index="seed", columns="method", values=metric, sort=False)
        if baseline not in wide.columns:
            raise ValueError(f"baseline {baseline!r} is not among the methods {list(wide.columns)}")
        base = wide[baseline]
        for method in wide.columns.drop(baseline):
            both = base.notna() & wide[method].notna()
            d = (wide.loc[both, method] - base[both]).to_numpy(float)
            n = len(d)
            half = float(stats.t.ppf(0.5 + level / 2, n - 1) * d.std(ddof=1) / np.sqrt(n)) if n > 1 else np.nan
            p = float(stats.ttest_1samp(d, 0.0).pvalue) if n > 1 and d.std(ddof=1) > 1e-12 else np.nan
            scale = 100.0 / float(base[both].mean())
            mean = float(d.mean())
            rows.append({**dict(zip(by, key if isinstance(key, tuple) else (key,))), "method": method,
                         "n_seeds": n, "baseline_mean": float(base[both].mean()), "mean_diff": mean,
                         "ci_low": mean - half, "ci_high": mean + half, "change_pct": mean * scale,
                         "ci_low_pct": (mean - half) * scale, "ci_high_pct": (mean + half) * scale, "p_value": p})
    return pd.DataFrame(rows)


def verdicts(changes: pd.DataFrame, baseline: str, level: float = 0.95, metric: str = "test NDCG@10") -> str:
    """`paired_change`'s table in words: the methods whose interval lies above 0 (better than `baseline`),
    below 0 (worse), and the rest (no difference the seeds resolve)."""
    groups = {"better": changes["ci_low"] > 0, "worse": changes["ci_high"] < 0}
    groups["no resolvable difference"] = ~(groups["better"] | groups["worse"])
    parts = []
    for word, mask in groups.items():
        rows = changes.loc[mask, ["method", "change_pct"]].itertuples(index=False)
        named = ", ".join(f"{m} {c:+.1f}%" for m, c in rows)
        parts.append(f"  {word} ({int(mask.sum())}): {named or '-'}")
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
