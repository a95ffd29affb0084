"""Tables of the study: mean ± std over seeds, relative change, paired tests (hand-checked values)."""

import math

import pandas as pd
import pytest
from scipy import stats

from mbkit.experiments import format_table, paired_tests, relative_improvement, study_methods, summarize


@pytest.fixture()
def runs() -> pd.DataFrame:
    rows = []
    for method, values in {"Vanilla": [0.10, 0.12, 0.11], "MB": [0.13, 0.14, 0.12], "Same": [0.10, 0.12, 0.11]}.items():
        for seed, v in enumerate(values):
            rows.append({"method": method, "seed": seed, "test_ndcg@10": v, "valid_ndcg@10": v / 2})
    return pd.DataFrame(rows)


def test_summarize_mean_std_in_first_appearance_order(runs):
    s = summarize(runs, metrics=["ndcg@10"])
    assert list(s.index) == ["Vanilla", "MB", "Same"]
    assert s.loc["MB", "ndcg@10_mean"] == pytest.approx(0.13)
    assert s.loc["MB", "ndcg@10_std"] == pytest.approx(0.01)  # sample std (ddof=1) of 0.13, 0.14, 0.12
    assert s.loc["Vanilla", "n_seeds"] == 3
    assert format_table(s, ["ndcg@10"]).loc["MB", "N@10"] == "0.1300 ± 0.0100"


def test_relative_improvement_and_paired_test(runs):
    s = summarize(runs, metrics=["ndcg@10"])
    rel = relative_improvement(s, "Vanilla", ["ndcg@10"])
    assert rel.loc["MB", "ndcg@10"] == pytest.approx(100 * (0.13 / 0.11 - 1))
    assert str(rel.loc["Same", "ndcg@10"]) == "0.0"
    t = paired_tests(runs, "Vanilla")
    ref = stats.ttest_rel([0.13, 0.14, 0.12], [0.10, 0.12, 0.11])
    assert t.loc["MB", "t"] == pytest.approx(ref.statistic) and t.loc["MB", "p_value"] == pytest.approx(ref.pvalue)
    assert t.loc["MB", "mean_diff"] == pytest.approx(0.02)
    assert math.isnan(t.loc["Vanilla", "p_value"]) and math.isnan(t.loc["Same", "p_value"])  # no variance
    with pytest.raises(ValueError, match="baseline"):
        paired_tests(runs, "Nope")


def test_study_methods_are_the_six_of_the_thesis():
    from mbkit.balancers import METHODS

    methods = study_methods(0.3)
    assert [m.balancer for m in methods] == list(METHODS)
    assert all(m.kwargs == {"relax_factor": 0.3} for m in methods if "metabalance" in m.balancer)


def test_applied_ratio_is_the_raw_ratio_times_the_applied_weight():
    from mbkit.experiments import with_applied_ratio

    d = pd.DataFrame({"step": [0, 0, 0], "tensor": ["w"] * 3, "task": ["buy", "pv", "fav"],
                      "ratio_to_target": [1.0, 4.0, 0.5], "weight": [1.0, 0.325, 1.3]})
    assert with_applied_ratio(d)["applied_ratio"].tolist() == pytest.approx([1.0, 1.3, 0.65])
    with pytest.raises(ValueError, match="carry no applied weights"):
        with_applied_ratio(d.assign(weight=float("nan")))
