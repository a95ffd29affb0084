"""The decision: notebooks 03 and 04 at the seeds their headline comparisons need.

The default notebooks keep three seeds (the 25-minute budget of `make reproduce` and `make test`) and say
what three resolve. `make decision` runs the same study with `notebooks/params/decision.yaml`, whose seeds are
sized from the measured paired spread (`stats.seeds_needed`), into `results/decision/`; the notebooks and the
README read that record here. `tests/test_decision.py` holds it to the default study (same parameters but the
seeds, its first seeds within the seed spread of this session's runs) and to its own tables.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from mbkit.provenance import ROOT
from mbkit.study.stats import design, paired_change, verdict

DIR = ROOT / "results" / "decision"
PARAMS = ROOT / "notebooks" / "params" / "decision.yaml"
# The half-widths the decision is sized for, percent of the baseline's mean: the study's headline rows, the rest.
HEADLINE_PCT, OTHER_PCT = 5.0, 10.0
# Each notebook's comparison: baseline, metric, and the rows held to HEADLINE_PCT for a relax factor r and
# strategy s: 04's MetaBalance at the r it trains and PCGrad (adjusted); 03's relax factor that its rule chose.
COMPARISONS = {
    "04_method_comparison": ("Vanilla", "test_ndcg@10", lambda r, s: [f"MetaBalance (r={r:g})", "PCGrad (adjusted)"]),
    "03_relax_factor": ("r=0", "valid_ndcg@10", lambda r, s: [f"{s} r={r:g}"]),
}


def targets(name: str, relax_factor: float, strategy: str = "both") -> dict[str, float]:
    """The target half-width per row of notebook `name`'s comparison, as `stats.design` takes it: HEADLINE_PCT
    for the headline rows at `relax_factor` (and 03's `strategy`), OTHER_PCT for every other row ("*")."""
    return {row: HEADLINE_PCT for row in COMPARISONS[name][2](relax_factor, strategy)} | {"*": OTHER_PCT}


def record(name: str, results_dir: str | Path | None = None) -> dict | None:
    """The decision's `<name>.json` (default folder: results/decision/), None when it has not been run."""
    path = Path(results_dir or DIR) / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def runs(name: str, results_dir: str | Path | None = None) -> pd.DataFrame | None:
    """The decision's run table `<name>_runs.csv`, one row per (method, seed); None when it has not been run.
    Notebook 03's table repeats r = 0 once per strategy: it is kept once."""
    path = Path(results_dir or DIR) / f"{name}_runs.csv"
    if not path.is_file():
        return None
    return pd.read_csv(path).drop_duplicates(["method", "seed"], ignore_index=True)


def table(name: str, results_dir: str | Path | None = None) -> pd.DataFrame | None:
    """Each row's paired change over the notebook's baseline in the decision's runs, with what the design
    resolves: n_seeds, change_pct and its 95 % interval, detectable_pct (80 % power), the target half-width
    (HEADLINE_PCT for the headline rows of `COMPARISONS`, else OTHER_PCT), whether the interval meets it,
    and the reading: better, worse, "equivalent within +-5 %" (the whole interval inside +-5 %), or
    unresolved. None when the decision has not been run."""
    rec, table_runs = record(name, results_dir), runs(name, results_dir)
    if rec is None or table_runs is None:
        return None
    baseline, metric, _ = COMPARISONS[name]
    changes = paired_change(table_runs, baseline, metric)
    chosen = rec.get("chosen") or {"relax_factor": rec["params"]["relax_factor"], "strategy": "both"}
    sized = design(changes, targets(name, chosen["relax_factor"], chosen["strategy"]))
    out = changes[["method", "n_seeds", "change_pct", "ci_low_pct", "ci_high_pct", "detectable_pct"]].copy()
    out["target_pct"] = sized["target_pct"].to_numpy()
    out["meets_target"] = (sized["half_width_pct"] <= sized["target_pct"]).to_numpy()
    out["reading"] = verdict(changes, HEADLINE_PCT).to_numpy()
    return out


def report(name: str, relax_factor: float, here: str | Path | None = None,
           results_dir: str | Path | None = None) -> str:
    """`table` in words, for the notebook `name` (whose outputs go to `here`, with relax factor `relax_factor`:
    03's choice, 04's parameter): the seeds and code of the record, which relax factor it chose or trained
    against this notebook's, the table, and per reading the rows it names. A run of `make decision` itself
    says that its own tables above are the decision."""
    folder = Path(results_dir or DIR)
    if here is not None and Path(here).resolve() == folder.resolve():
        return f"this run writes the decision ({folder}): the tables above are the decision's"
    rec, decided = record(name, folder), table(name, folder)
    if rec is None or decided is None:
        return f"no decision record in {folder}: `make decision` writes it (docs/decision.md)"
    lines = [f"the decision ({folder.name}/{name}.json): {len(rec['seeds'])} seeds, trained by commit "
             f"{rec['provenance']['git_commit'][:7]}"]
    sweep, comparison = record("03_relax_factor", folder), record("04_method_comparison", folder)
    if sweep is not None and comparison is not None:
        near = ", ".join(f"r={r:g}" for _, r in sweep["chosen"]["near_best"])
        lines.append(f"its sweep (03) chose r={sweep['chosen']['relax_factor']:g} by the rule of select_relax_factor "
                     f"(within one standard error of the best mean: {near}); its comparison (04) trains MetaBalance "
                     f"at r={comparison['params']['relax_factor']:g}, the default study's; this notebook: "
                     f"r={relax_factor:g}")
    lines.append(decided.round(2).to_string(index=False))
    for word in decided["reading"].drop_duplicates():
        rows = decided[decided["reading"] == word]
        lines.append(f"  {word}: " + ", ".join(f"{m} {c:+.1f}%" for m, c in zip(rows["method"], rows["change_pct"])))
    missed = decided.loc[~decided["meets_target"], "method"].tolist()
    lines.append("every interval within its target half-width" if not missed else
                 f"wider than its target: {', '.join(missed)} (the spread measured now needs more seeds)")
    return "\n".join(lines)
