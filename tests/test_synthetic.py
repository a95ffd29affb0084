"""The synthetic world's dials: alignment and volume of each auxiliary behavior (mbkit.synthetic)."""

import numpy as np
import pandas as pd
import pytest

from mbkit.data.synthetic import AUXILIARY, synthesize

SMALL = dict(n_users=6000, n_items=2000, seed=0)


def _pairs(log: pd.DataFrame, behavior: str) -> set[tuple[int, int]]:
    sel = log[log["behavior"] == behavior]
    return set(zip(sel["user_id"].tolist(), sel["item_id"].tolist()))


def _bought_share(log: pd.DataFrame, behavior: str) -> float:
    """Share of the behavior's distinct pairs that are also purchases: how much it says about the target."""
    pairs = _pairs(log, behavior)
    return len(pairs & _pairs(log, "buy")) / len(pairs)


@pytest.fixture(scope="module")
def default():
    return synthesize(**SMALL)


def test_neutral_dials_are_the_undialled_world(default):
    pd.testing.assert_frame_equal(synthesize(**SMALL, alignment=1.0, volume=1.0), default)
    pd.testing.assert_frame_equal(synthesize(**SMALL, alignment={"cart": 1.0}, volume={"pv": 1.0}), default)


@pytest.mark.parametrize("behavior", AUXILIARY)
def test_alignment_sets_how_much_a_behavior_says_about_purchases(default, behavior):
    shares = [_bought_share(synthesize(**SMALL, alignment={behavior: a}), behavior) for a in (0.0, 0.5)]
    shares.append(_bought_share(default, behavior))
    assert shares[0] < shares[1] < shares[2]
    # alignment 0: the behavior follows the users' own interests and meets a purchase by chance only
    # (measured: 0.2-0.4 % of its pairs, against 2 % (pv) and 11 % (cart, fav) at alignment 1)
    assert shares[0] < shares[2] / 5


@pytest.mark.parametrize("behavior, volumes", [("pv", (0.25, 0.5)), ("cart", (0.5, 2.0)), ("fav", (0.5, 3.0))])
@pytest.mark.parametrize("alignment", [1.0, 0.5, 0.0])
def test_volume_scales_the_behaviors_pairs(default, behavior, volumes, alignment):
    base = len(_pairs(default, behavior))
    for v in volumes:
        log = synthesize(**SMALL, alignment={behavior: alignment}, volume={behavior: v})
        assert len(_pairs(log, behavior)) == pytest.approx(v * base, rel=0.1), (behavior, v)
        # the other auxiliary behaviors keep their size
        for other in set(AUXILIARY) - {behavior}:
            assert len(_pairs(log, other)) == pytest.approx(len(_pairs(default, other)), rel=0.1)


def test_the_target_keeps_its_size_under_every_dial(default):
    n_buy = (default["behavior"] == "buy").sum()
    for a, v in [(0.0, 1.0), (0.5, 0.5), (1.0, 0.25)]:
        log = synthesize(**SMALL, alignment=a, volume=v)
        assert (log["behavior"] == "buy").sum() == pytest.approx(n_buy, rel=0.05)


@pytest.mark.parametrize("kwargs, message", [
    (dict(alignment=1.5), r"alignment\['pv'\] = 1.5; it must be in \[0.0, 1.0\]"),
    (dict(alignment={"cart": -0.1}), r"alignment\['cart'\]"),
    (dict(volume=0.0), r"volume\['pv'\] = 0.0; it must be > 0.0"),
    (dict(volume={"fav": float("nan")}), r"volume\['fav'\]"),
    (dict(alignment={"buy": 0.5}), r"names \['buy'\]; the dials act on the auxiliary behaviors"),
    (dict(volume={"pv": 2.0}), r"at most all of them"),
    (dict(volume={"cart": 50.0}), r"lower volume\['cart'\]"),
])
def test_dials_out_of_range_are_refused_with_what_to_change(kwargs, message):
    with pytest.raises(ValueError, match=message):
        synthesize(**SMALL, **kwargs)


def test_dialled_world_is_seeded():
    a = synthesize(**SMALL, alignment=0.3, volume=0.5)
    pd.testing.assert_frame_equal(a, synthesize(**SMALL, alignment=0.3, volume=0.5))
    assert (a.groupby("user_id")["timestamp"].diff().dropna() >= 0).all()
    assert np.isin(a["behavior"].unique(), ["pv", "cart", "fav", "buy"]).all()
