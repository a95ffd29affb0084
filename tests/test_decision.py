"""The decision (`make decision`, results/decision/): the default study at the seeds its headline comparisons
need. These tests hold the committed record to the default study's parameters and to its own run tables, and
check how `mbkit.study.decision` reads it; tests/test_results.py ties its first seeds to this session's runs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mbkit.study import decision
from mbkit.study.checks import NOT_COMPARED, params_differ
from mbkit.study.reproduce import load_params
from mbkit.study.stats import paired_change
from mbkit.study.tables import summarize

NOTEBOOKS = ("03_relax_factor", "04_method_comparison")


@pytest.mark.parametrize("notebook", NOTEBOOKS)
def test_the_decision_is_the_default_study_at_more_seeds(notebook):
    default = load_params(decision.ROOT / "notebooks" / "params" / "default.yaml")[notebook]
    decided = load_params(decision.PARAMS)[notebook]
    differ = params_differ(decided, {"params": default}, notebook)
    assert set(differ) == {"seeds"}, f"decision.yaml differs from default.yaml in more than the seeds: {differ}"
    assert decided["seeds"][:len(default["seeds"])] == default["seeds"], "the decision starts with the default seeds"
    record = decision.record(notebook)
    assert record is not None, f"results/decision/{notebook}.json is not committed: run `make decision`"
    assert not params_differ(record["params"], {"params": decided}, notebook), "the record is of other parameters"
    assert {k for k in decided if k not in NOT_COMPARED} <= set(record["params"])


def test_the_records_tables_are_its_runs():
    record, runs = decision.record("04_method_comparison"), decision.runs("04_method_comparison")
    table = pd.DataFrame(record["table"]).set_index("method").drop(index="Most popular (training purchases)")
    ours = summarize(runs)
    assert list(ours.index) == list(table.index) and (ours["n_seeds"] == len(record["seeds"])).all()
    np.testing.assert_allclose(ours["ndcg@10_mean"], table["ndcg@10_mean"], rtol=1e-12)
    stored = pd.DataFrame(record["paired_tests"]).set_index("method")
    again = paired_change(runs, "Vanilla", "test_ndcg@10").set_index("method")
    np.testing.assert_allclose(again["ci_low_pct"], stored.loc[again.index, "ci_low_pct"], rtol=1e-9)
    sweep = decision.runs("03_relax_factor")
    assert sweep.groupby("method")["seed"].nunique().eq(len(decision.record("03_relax_factor")["seeds"])).all()


@pytest.mark.parametrize("notebook", NOTEBOOKS)
def test_the_decision_resolves_what_it_was_sized_for(notebook):
    """Every headline row's 95 % interval within +-5 % of the baseline's mean, every other row's within +-10 %."""
    decided = decision.table(notebook)
    headline = decided["target_pct"] == decision.HEADLINE_PCT
    assert headline.sum() == (2 if notebook == "04_method_comparison" else 1), decided["method"].tolist()
    wide = decided.loc[~decided["meets_target"], ["method", "ci_low_pct", "ci_high_pct", "target_pct"]]
    assert wide.empty, f"intervals wider than their targets:\n{wide}"


def fake_runs(diff: dict[str, float], n: int = 8) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    base = 0.05 + 0.004 * rng.standard_normal(n)
    rows = [{"method": "Vanilla", "seed": s, "test_ndcg@10": b} for s, b in enumerate(base)]
    for method, d in diff.items():
        noise = 0.0005 * (-1.0) ** np.arange(n)  # mean 0: a change of exactly `d` with a spread
        rows += [{"method": method, "seed": s, "test_ndcg@10": b * (1 + d) + e}
                 for s, (b, e) in enumerate(zip(base, noise))]
    return pd.DataFrame(rows)


def test_table_reads_better_worse_and_equivalence(tmp_path):
    fake_runs({"MetaBalance (r=0.3)": 0.0, "PCGrad (adjusted)": 0.3, "Single task (target only)": -0.4}).to_csv(
        tmp_path / "04_method_comparison_runs.csv", index=False)
    (tmp_path / "04_method_comparison.json").write_text('{"params": {"relax_factor": 0.3}}')
    t = decision.table("04_method_comparison", tmp_path).set_index("method")
    assert t.loc["MetaBalance (r=0.3)", "reading"] == "equivalent within +-5%"
    assert t.loc["PCGrad (adjusted)", "reading"] == "better"
    assert t.loc["Single task (target only)", "reading"] == "worse"
    assert list(t["target_pct"]) == [5.0, 5.0, 10.0] and t["meets_target"].all()


def test_report_without_a_record_and_in_the_decisions_own_run(tmp_path):
    assert decision.report("04_method_comparison", 0.3, results_dir=tmp_path).startswith("no decision record")
    own = decision.report("04_method_comparison", 0.3, here=tmp_path, results_dir=tmp_path)
    assert own.startswith("this run writes the decision")
