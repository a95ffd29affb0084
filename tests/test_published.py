"""The published numbers are carried in as fractions (the thesis prints percent) with their source."""

import pytest

from mbkit import published


def test_tables_are_fractions_of_the_printed_percentages():
    t3 = published.thesis_table3()
    assert t3.loc["Vanilla", "ndcg@10"] == pytest.approx(1.0407 / 100)
    assert (published.thesis_table2().to_numpy() < 0.05).all() and (t3.to_numpy() < 0.05).all()
    assert list(t3.columns) == list(published.METRICS)


def test_change_over_a_baseline_row():
    change = published.change_over(published.thesis_table3(), "Vanilla")
    assert (change.loc["Vanilla"] == 0).all()
    assert change.loc["MetaBalance", "ndcg@10"] == pytest.approx(100 * (1.2844 / 1.0407 - 1))
