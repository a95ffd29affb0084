"""Does a re-run still reproduce the committed results? Checks that hold on any machine.

The same training run gives different low bits on another CPU, GPU or torch version, and after a few
hundred steps different digits. So trained numbers are never compared digit by digit: a re-run's
mean over seeds is compared with the committed mean within a band derived from the seed spread,

    |mean_new - mean_committed| <= K_SE * s_pooled * sqrt(1/n_new + 1/n_committed) + FLOOR,

where s_pooled is the root-mean-square seed standard deviation of that metric over every row of the
committed table (one row's std from three seeds is too noisy to set its own band, and a regression that
adds noise must not widen its own band). K_SE = 4 keeps the chance that
an honest re-run fails any of a notebook's ~40 comparisons near a few percent (t with ~20 degrees of
freedom); a regression that moves a metric by several seed standard deviations (a leaking split, a
balancer that no longer trains) still fails, with the metric, both values and the band in the message.

Only records made with the same parameters are compared: a run with other parameters (another data
set, fewer seeds) says so and is not checked.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd

from mbkit.provenance import ROOT

K_SE = 4.0
FLOOR = 0.002
# Parameters that change where or on what a notebook runs, not what it computes.
NOT_COMPARED = frozenset({"device", "figures_dir", "results_dir", "progress", "runs_dir", "executor", "ray_address",
                          "runs_per_gpu", "cpus_per_run"})


class ReproductionError(AssertionError):
    """A re-run's result lies outside the band of the committed result; the message lists every failure."""


def committed_record(name: str, results_dir: str | Path | None = None) -> dict[str, Any] | None:
    """The committed `results/<name>.json`, or None when there is none."""
    path = Path(results_dir or ROOT / "results") / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def params_differ(params: Mapping[str, Any], committed: Mapping[str, Any] | None,
                  notebook: str | None = None) -> dict[str, tuple[Any, Any]]:
    """{name: (this run's value, committed value)} for every compared parameter that differs. A parameter that
    the committed record lacks (it was made before the parameter existed) had the value that is now its default
    in the notebook's parameters cell (`notebook`), which reproduces what the notebook did before."""
    if committed is None or "params" not in committed:
        return {}  # nothing to compare with (no record, or one from before records named their parameters)
    theirs = dict(committed["params"])
    from mbkit.study.reproduce import NOTEBOOK_DIR, declared

    cell = NOTEBOOK_DIR / f"{notebook}.ipynb"
    if notebook is not None and cell.is_file():
        theirs.update({n: v for n, (v, _) in declared(cell).items() if n not in theirs and n in params})
    names = (set(params) | set(theirs)) - NOT_COMPARED
    return {n: (params.get(n), theirs.get(n)) for n in sorted(names) if _norm(params.get(n)) != _norm(theirs.get(n))}


def _norm(v: Any) -> Any:
    if isinstance(v, (list, tuple)):
        return [_norm(x) for x in v]
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return float(v)
    return v


def bands(new: pd.DataFrame, committed: pd.DataFrame, keys: list[str], metrics: Iterable[str],
          k_se: float = K_SE, floor: float = FLOOR) -> pd.DataFrame:
    """One row per (group, metric): committed and new mean, |difference|, allowed band, ok.

    Both frames hold one row per group with `<metric>_mean`, `<metric>_std` and `n_seeds` columns, as
    `experiments.summarize(...).reset_index()` returns them.
    """
    merged = committed.merge(new, on=keys, how="outer", suffixes=("_committed", "_new"), indicator=True)
    missing = merged[merged["_merge"] != "both"]
    if len(missing):
        raise ReproductionError(
            f"the re-run's rows differ from the committed ones: {missing[keys].to_dict('records')} appear on "
            f"one side only; re-run the notebook with the committed parameters, or commit the new results")
    rows = []
    for m in metrics:
        # the committed spread only: a regression that also adds seed noise must not widen its own band
        pooled = math.sqrt(float(np.nanmean(merged[f"{m}_std_committed"].to_numpy(float) ** 2)))
        for _, r in merged.iterrows():
            se = math.sqrt(1.0 / r["n_seeds_new"] + 1.0 / r["n_seeds_committed"])
            band = k_se * pooled * se + floor
            diff = abs(float(r[f"{m}_mean_new"]) - float(r[f"{m}_mean_committed"]))
            rows.append({**{k: r[k] for k in keys}, "metric": m, "committed": float(r[f"{m}_mean_committed"]),
                         "new": float(r[f"{m}_mean_new"]), "diff": diff, "band": band, "ok": bool(diff <= band)})
    return pd.DataFrame(rows)


def relative_bands(new: pd.DataFrame, committed: pd.DataFrame, rel: float) -> pd.DataFrame:
    """Element-wise comparison of two tables of positive values within a relative band (|log ratio| <= rel)."""
    rows_new, rows_old = set(new.index), set(committed.index)
    cols_new, cols_old = set(new.columns), set(committed.columns)
    if rows_new != rows_old or cols_new != cols_old:
        raise ReproductionError(
            f"the re-run's table has rows {sorted(map(str, rows_new))} and columns {sorted(map(str, cols_new))}, the "
            f"committed one {sorted(map(str, rows_old))} and {sorted(map(str, cols_old))}; re-run with the committed "
            "parameters, or commit the new results")
    new, committed = new.astype(float), committed.astype(float).reindex_like(new)
    rows = []
    for idx in new.index:
        for col in new.columns:
            a, b = float(committed.loc[idx, col]), float(new.loc[idx, col])
            diff = abs(math.log(b / a)) if a > 0 and b > 0 else math.inf
            rows.append({"row": idx, "column": col, "committed": a, "new": b, "diff": diff, "band": rel,
                         "ok": bool(diff <= rel)})
    return pd.DataFrame(rows)


def raise_failures(table: pd.DataFrame, what: str) -> str:
    """Raise `ReproductionError` naming every failed comparison; else return a one-line summary."""
    bad = table[~table["ok"]]
    if len(bad):
        lines = [f"{len(bad)} of {len(table)} {what} lie outside their band (committed -> new, |diff| > band):"]
        label_cols = [c for c in table.columns if c not in ("committed", "new", "diff", "band", "ok")]
        for _, r in bad.iterrows():
            label = ", ".join(f"{c}={r[c]}" for c in label_cols)
            lines.append(f"  {label}: {r['committed']:.4f} -> {r['new']:.4f}, |diff| {r['diff']:.4f} > {r['band']:.4f}")
        lines.append("A code change moved the results beyond the seed spread: find it, or if the change is "
                     "intended, re-run `make notebooks` and commit the new results.")
        raise ReproductionError("\n".join(lines))
    worst = float((table["diff"] / table["band"]).max())
    return f"all {len(table)} {what} within their bands (largest |diff|/band: {worst:.2f})"


def against_committed(name: str, params: Mapping[str, Any], compare) -> str:
    """Run `compare(committed_record) -> summary line` when the committed record has the same parameters.

    Returns the line to print; raises `ReproductionError` (from `compare`) when a result left its band.
    """
    committed = committed_record(name)
    if committed is None:
        return f"not compared: no committed results/{name}.json"
    if "params" not in committed:
        return f"not compared: the committed results/{name}.json does not record its parameters"
    differ = params_differ(params, committed, notebook=name)
    if differ:
        what = ", ".join(f"{n}={a!r} (committed {b!r})" for n, (a, b) in differ.items())
        return f"not compared: parameters differ from the committed results/{name}.json: {what}"
    return compare(committed)


def relax_factor_choice(relax_factor: float) -> str:
    """Whether `relax_factor` is the one notebook 03's committed sweep chose on validation, in words."""
    lines = [f"MetaBalance relax factor: {relax_factor:g} (parameter)"]
    sweep = committed_record("03_relax_factor")
    if sweep is not None:
        chosen = sweep["chosen"]["relax_factor"]
        agree = "the same" if chosen == relax_factor else "DIFFERENT: pass the sweep's choice as relax_factor"
        lines.append(f"notebook 03's committed sweep (results/03_relax_factor.json) chose r={chosen:g}: {agree}")
    return "\n".join(lines)
