"""The published numbers are read from the thesis's tables as carried into the project, in fractions."""

import pandas as pd
import pytest

from mbkit.data.schema import THESIS_TABLES
from mbkit.study import published


@pytest.mark.parametrize("table, key", [(published.thesis_table2, "table2_relax_factor_validation"),
                                        (published.thesis_table3, "table3_methods_test")])
def test_tables_are_the_printed_percentages_as_fractions(table, key):
    printed = THESIS_TABLES[key]
    t = table()
    assert list(t.columns) == printed["columns"] == list(published.METRICS)
    assert [str(i) for i in t.index] == list(printed["rows"])
    for (name, row), values in zip(t.iterrows(), printed["rows"].values()):
        assert [v * 100 for v in row] == pytest.approx(values, rel=1e-12), name
    assert (t.to_numpy() < 0.05).all()  # NDCG, Recall and Precision of about 1 %: fractions, not percent


def test_change_over_a_baseline_row():
    table = pd.DataFrame({"ndcg@10": [0.02, 0.025, 0.02]}, index=["Vanilla", "Better", "Same"])
    change = published.change_over(table, "Vanilla")
    assert change["ndcg@10"].tolist() == pytest.approx([0.0, 25.0, 0.0])
    assert str(change.loc["Same", "ndcg@10"]) == "0.0"  # never -0.0
