"""Published numbers, carried into the project as data with their source, shown beside ours.

Source: Lee (Texas A&M University, 2023), the follow-up study of MetaBalance and gradient surgery on
UserBehavior-2017 (purchase target; pv, cart, fav auxiliary), Tables 2 and 3. The thesis prints them in
percent (1.0407 means NDCG@10 = 0.010407); here they are fractions, like mbkit's metrics. One run per
method, no seeds and no spread reported. MetaBalance's relax factor was chosen on validation: r = 0.5.
The MetaBalance paper (He et al., WWW 2022, abstract) reports +8.34 % NDCG@10 over the strongest baseline.
"""

from __future__ import annotations

import pandas as pd

METRICS: tuple[str, ...] = ("ndcg@10", "recall@10", "precision@10", "ndcg@20", "recall@20", "precision@20")

# Table 2: MetaBalance's relax factor on the validation split (percent, as printed).
_TABLE2 = {
    0.0: (1.0486, 1.8175, 0.2785, 1.4142, 3.1027, 0.2445),
    0.3: (0.9479, 1.8091, 0.2801, 1.3641, 3.3174, 0.2564),
    0.5: (1.0431, 1.8783, 0.3007, 1.3950, 3.1397, 0.2485),
    0.7: (1.0049, 1.7701, 0.2722, 1.3278, 2.9320, 0.2271),
    1.0: (0.9955, 1.8427, 0.2817, 1.3458, 3.0729, 0.2445),
}
# Table 3: the methods on the test split (percent, as printed). PCGrad (original) alone is not reported.
_TABLE3 = {
    "Vanilla": (1.0407, 1.7377, 0.3732, 1.4109, 2.9271, 0.3258),
    "MetaBalance": (1.2844, 2.1099, 0.4408, 1.6899, 3.4426, 0.3657),
    "PCGrad (adjusted)": (1.0662, 1.7585, 0.3884, 1.4355, 2.9739, 0.3243),
    "MetaBalance + PCGrad (adjusted)": (1.0331, 1.6737, 0.3642, 1.3568, 2.7219, 0.3001),
    "MetaBalance + PCGrad (original)": (1.0825, 1.8438, 0.3843, 1.3862, 2.8362, 0.3031),
}
THESIS_RELAX_FACTOR = 0.5
METABALANCE_PAPER_CLAIM = "+8.34 % NDCG@10 over the strongest baseline (He et al., WWW 2022, abstract)"


def _frame(rows: dict, index_name: str) -> pd.DataFrame:
    df = pd.DataFrame.from_dict(rows, orient="index", columns=list(METRICS)) / 100.0
    df.index.name = index_name
    return df


def thesis_table2() -> pd.DataFrame:
    """Validation metrics per relax factor (fractions), thesis Table 2."""
    return _frame(_TABLE2, "relax_factor")


def thesis_table3() -> pd.DataFrame:
    """Test metrics per method (fractions), thesis Table 3."""
    return _frame(_TABLE3, "method")


def change_over(table: pd.DataFrame, baseline) -> pd.DataFrame:
    """Percentage change of every row over the `baseline` row."""
    return (100.0 * (table / table.loc[baseline] - 1.0)) + 0.0
