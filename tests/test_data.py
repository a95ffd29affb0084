"""Tests of mbkit.data: reading and validating the raw log, filtering, split, negative sampling."""

from __future__ import annotations

import gzip
import zipfile

import numpy as np
import pandas as pd
import pytest
import torch

from mbkit.data import (BEHAVIORS, COLUMNS, DEFAULT_FILTER_MODE, STATS_COLUMNS, WINDOW, build_task_data,
                        check_no_leakage, filter_log, load_filtered, log_stats, raw_behavior_counts,
                        read_userbehavior, sample_summary, synthesize, table1_comparison, table1_ratios, thesis_stats,
                        write_userbehavior, LeakageError)
from helpers import DEVICES, FILTER, WORLD
from mbkit.data.schema import THESIS_TABLES
from mbkit.utils import make_generator

# Rows exactly as in the published UserBehavior.csv (first lines of the Tianchi file).
PUBLISHED_ROWS = """\
1,2268318,2520377,pv,1511544070
1,2333346,2520771,pv,1511561733
1,2576651,149192,pv,1511572885
1,3830808,4181361,pv,1511593493
1,4365585,2520377,pv,1511596146
100,1603476,2951233,buy,1511579908
100,2971043,4869428,cart,1511617549
101,4554802,2993370,fav,1511650102
"""


def _log(rows: list[tuple[int, int, str]]) -> pd.DataFrame:
    """A tiny log from (user, item, behavior) triples."""
    u, i, b = zip(*rows)
    return pd.DataFrame({"user_id": np.array(u, np.int32), "item_id": np.array(i, np.int32),
                         "category_id": np.ones(len(u), np.int32),
                         "behavior": pd.Categorical(b, categories=list(BEHAVIORS)),
                         "timestamp": np.full(len(u), WINDOW[0], np.int64)})


def _keys(log: pd.DataFrame, behavior: str | None = None) -> set[tuple[int, int]]:
    sel = log if behavior is None else log[log["behavior"] == behavior]
    return set(zip(sel["user_id"].tolist(), sel["item_id"].tolist()))


def _csr_pairs(csr) -> set[tuple[int, int]]:
    rows = torch.repeat_interleave(torch.arange(len(csr.indptr) - 1), (csr.indptr[1:] - csr.indptr[:-1]).cpu())
    return set(zip(rows.tolist(), csr.indices.cpu().tolist()))


@pytest.fixture(scope="module")
def small_filtered(filtered) -> pd.DataFrame:
    return filtered


@pytest.fixture(scope="module", params=DEVICES)
def data(request, small_filtered):
    return build_task_data(small_filtered, seed=0, device=request.param)


# ---------------------------------------------------------------------------------------------------
# Synthetic default


def test_synthesize_schema_and_window(small_log):
    assert tuple(small_log.columns) == COLUMNS
    assert [str(t) for t in small_log.dtypes[:3]] == ["int32"] * 3 and small_log["timestamp"].dtype == np.int64
    assert list(small_log["behavior"].cat.categories) == list(BEHAVIORS)
    assert small_log["timestamp"].between(WINDOW[0], WINDOW[1] - 1).all()
    assert (small_log[["user_id", "item_id", "category_id"]] > 0).all().all()
    # one category per item, as in the real log
    assert small_log.groupby("item_id")["category_id"].nunique().max() == 1


def test_synthesize_is_seeded(small_log):
    pd.testing.assert_frame_equal(synthesize(**WORLD), small_log)
    assert not synthesize(**{**WORLD, "seed": WORLD["seed"] + 1}).equals(small_log)


def test_synthesize_proportions_resemble_real_log(small_log):
    share = small_log["behavior"].value_counts(normalize=True)
    real = thesis_stats().loc["raw", list(BEHAVIORS)]
    real = real / real.sum()
    assert share["pv"] > share["cart"] > share["fav"] > share["buy"]
    for b in BEHAVIORS:
        assert share[b] == pytest.approx(real[b], rel=0.25), b


def test_synthesize_funnel_purchase_likelier_after_cart_or_fav(small_log):
    bought, carted, faved = (_keys(small_log, b) for b in ("buy", "cart", "fav"))
    viewed = _keys(small_log)
    plain = viewed - carted - faved
    p_plain = len(plain & bought) / len(plain)
    assert len(carted & bought) / len(carted) > 2 * p_plain
    assert len(faved & bought) / len(faved) > 2 * p_plain


def test_default_synthetic_sizes_after_default_filter():
    stats, filtered = load_filtered("synthetic")
    f = stats.loc["filtered"]
    assert 600 <= f["users"] <= 1200 and 800 <= f["items"] <= 2000 and 8_000 <= f["buy"] <= 20_000
    assert f["pv"] > f["buy"] > f["cart"] > f["fav"] > 0  # the real filtered log's order
    assert stats.loc["raw", "pv"] > 10 * stats.loc["raw", "buy"]
    assert len(filtered) == f[list(BEHAVIORS)].sum()


# ---------------------------------------------------------------------------------------------------
# Reading the raw format


def test_published_row_format_parses(tmp_path):
    path = tmp_path / "UserBehavior.csv"
    path.write_text(PUBLISHED_ROWS)
    log = read_userbehavior(path)
    assert tuple(log.columns) == COLUMNS and len(log) == 8
    assert log.iloc[0].tolist() == [1, 2268318, 2520377, "pv", 1511544070]
    assert log["behavior"].tolist()[-3:] == ["buy", "cart", "fav"]
    assert [str(t) for t in log.dtypes] == ["int32", "int32", "int32", "category", "int64"]
    assert log.attrs["skipped_rows"] == 0


@pytest.mark.parametrize("suffix", [".csv", ".csv.gz", ".zip"])
def test_roundtrip_synthesize_write_read(tmp_path, small_log, suffix):
    path = tmp_path / f"UserBehavior{suffix}"
    synthesize(**WORLD, path=path)
    pd.testing.assert_frame_equal(read_userbehavior(path), small_log)


def test_zip_and_gzip_as_shipped(tmp_path):
    gz, zp = tmp_path / "UserBehavior.csv.gz", tmp_path / "UserBehavior.csv.zip"
    with gzip.open(gz, "wt") as f:
        f.write(PUBLISHED_ROWS)
    with zipfile.ZipFile(zp, "w") as zf:
        zf.writestr("UserBehavior.csv", PUBLISHED_ROWS)
    plain = tmp_path / "UserBehavior.csv"
    plain.write_text(PUBLISHED_ROWS)
    expected = read_userbehavior(plain)
    pd.testing.assert_frame_equal(read_userbehavior(gz), expected)
    pd.testing.assert_frame_equal(read_userbehavior(zp), expected)


def test_large_ids_fall_back_to_int64(tmp_path):
    path = tmp_path / "big.csv"
    path.write_text("1,2,3,pv,1511544070\n1,3000000000,3,buy,1511544071\n")
    log = read_userbehavior(path)
    assert log["item_id"].dtype == np.int64 and log["item_id"].tolist() == [2, 3_000_000_000]


def test_blank_lines_are_ignored(tmp_path):
    path = tmp_path / "blank.csv"
    path.write_text("1,2,3,pv,1511544070\n\n1,2,3,buy,1511544071\n\n")
    assert read_userbehavior(path)["behavior"].tolist() == ["pv", "buy"]


GOOD = "1,2268318,2520377,pv,1511544070\n"
BAD_INPUTS = {  # name: (file content, substrings the message must contain)
    "too_few_columns": (GOOD + GOOD + "1,2,3,pv\n", ["line(s) 3", "expected 5 comma-separated fields", "found 4"]),
    "too_many_columns": (GOOD + "1,2,3,pv,5,6\n", ["line(s) 2", "found 6", "user_id,item_id,category_id"]),
    "non_integer_id": (GOOD + "1,abc,3,pv,5\n" + GOOD + "1.5,2,3,pv,5\n",
                       ["line(s) 2, 4", "item_id must be an integer id, got 'abc'", "user_id must be an integer"]),
    "unknown_behavior": (GOOD + "1,2,3,click,5\n", ["line(s) 2", "behavior must be one of pv|cart|fav|buy",
                                                    "'click'"]),
    "non_integer_timestamp": (GOOD + "1,2,3,pv,2017-11-25 10:00\n", ["line(s) 2", "timestamp must be an integer"]),
    "header_line": ("user_id,item_id,category_id,behavior,timestamp\n" + GOOD, ["line(s) 1", "header"]),
    "empty_file": ("", ["empty", "expected lines of"]),
    "only_blank_lines": ("\n\n", ["empty"]),
}


@pytest.mark.parametrize("reader", ["read_userbehavior", "load_filtered"])
@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_raises_with_file_line_and_expectation(tmp_path, case, reader):
    content, expected = BAD_INPUTS[case]
    path = tmp_path / f"{case}.csv"
    path.write_text(content)
    with pytest.raises(ValueError) as err:
        if reader == "read_userbehavior":
            read_userbehavior(path)
        else:
            load_filtered(path, min_user_items=1, min_item_users=1)
    message = str(err.value)
    assert f"{case}.csv" in message
    for part in expected:
        assert part in message


def test_error_lists_only_the_first_offending_lines(tmp_path):
    path = tmp_path / "many.csv"
    path.write_text(GOOD + "1,2,3,click,5\n" * 20)
    with pytest.raises(ValueError, match=r"20 malformed row\(s\) out of 21 \(first at line\(s\) 2, 3, 4, 5, 6\)"):
        read_userbehavior(path)


def test_skip_bad_rows_reports_the_count(tmp_path):
    path = tmp_path / "mixed.csv"
    path.write_text(PUBLISHED_ROWS + "1,2,3,click,5\n1,2,3\n" + GOOD)
    with pytest.warns(UserWarning, match="skipped 2 malformed row"):
        log = read_userbehavior(path, skip_bad_rows=True)
    assert log.attrs["skipped_rows"] == 2 and len(log) == 9
    assert log.iloc[-1].tolist() == [1, 2268318, 2520377, "pv", 1511544070]
    assert log["item_id"].dtype == np.int32
    with pytest.warns(UserWarning, match="skipped 2 malformed row"):
        stats, filtered = load_filtered(path, skip_bad_rows=True, min_user_items=1, min_item_users=1)
    assert stats.attrs["skipped_rows"] == 2 and stats.loc["raw"].sum() > 0
    assert stats.loc["raw", "pv"] == (log["behavior"] == "pv").sum()


def test_skip_bad_rows_on_a_clean_file_skips_nothing(tmp_path):
    path = tmp_path / "clean.csv"
    path.write_text(PUBLISHED_ROWS)
    assert read_userbehavior(path, skip_bad_rows=True).attrs["skipped_rows"] == 0


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        read_userbehavior(tmp_path / "nope.csv")


# ---------------------------------------------------------------------------------------------------
# Filtering and statistics


def _distinct_counts(log: pd.DataFrame, target: str = "buy") -> tuple[pd.Series, pd.Series]:
    pairs = log[log["behavior"] == target][["user_id", "item_id"]].drop_duplicates()
    return pairs.groupby("user_id").size(), pairs.groupby("item_id").size()


def test_default_filter_is_the_single_pass_not_the_kcore():
    # u1 has 2 purchases in the input but only 1 among surviving items: "once" keeps it, "kcore" drops it.
    log = _log([(1, 10, "buy"), (1, 11, "buy"), (2, 10, "buy"), (2, 12, "buy"), (3, 12, "buy"), (3, 10, "buy")])
    assert DEFAULT_FILTER_MODE == "once"
    pd.testing.assert_frame_equal(filter_log(log, min_user_items=2, min_item_users=2),
                                  filter_log(log, min_user_items=2, min_item_users=2, mode="once"))
    assert 1 in filter_log(log, min_user_items=2, min_item_users=2)["user_id"].tolist()
    assert 1 not in filter_log(log, min_user_items=2, min_item_users=2, mode="kcore")["user_id"].tolist()


def test_filter_once_thresholds_hold_on_the_input(small_log, small_filtered):
    per_user, per_item = _distinct_counts(small_log)
    users = set(per_user[per_user >= FILTER["min_user_items"]].index)
    items = set(per_item[per_item >= FILTER["min_item_users"]].index)
    assert set(small_filtered["user_id"]) <= users and set(small_filtered["item_id"]) <= items
    # exactly the rows of surviving users x items, every behavior kept
    expected = small_log[small_log["user_id"].isin(users) & small_log["item_id"].isin(items)]
    pd.testing.assert_frame_equal(small_filtered, expected.reset_index(drop=True))
    assert set(small_filtered["behavior"].unique()) == set(BEHAVIORS)


def test_filter_kcore_thresholds_hold_exactly(small_log):
    core = filter_log(small_log, mode="kcore", **FILTER)
    per_user, per_item = _distinct_counts(core)
    assert per_user.min() >= FILTER["min_user_items"] and per_item.min() >= FILTER["min_item_users"]
    assert set(core["user_id"]) == set(per_user.index) and set(core["item_id"]) == set(per_item.index)
    pd.testing.assert_frame_equal(filter_log(core, mode="kcore", **FILTER), core)  # a fixed point
    once = filter_log(small_log, mode="once", **FILTER)
    assert len(core) < len(once) and _distinct_counts(once)[0].min() < 3  # "once" is weaker


def test_filter_that_leaves_nothing_raises(small_log):
    with pytest.raises(ValueError, match="left no data.*lower min_user_items"):
        filter_log(small_log, min_user_items=10_000)


def test_filter_once_with_disjoint_survivors_raises():
    # user 1 passes (3 distinct items) and item 20 passes (3 buyers), but user 1 never touched item 20
    log = _log([(1, 10, "buy"), (1, 11, "buy"), (1, 12, "buy"), (2, 20, "buy"), (3, 20, "buy"), (4, 20, "pv"),
                (4, 20, "buy")])
    with pytest.raises(ValueError, match="left no data"):
        filter_log(log, min_user_items=3, min_item_users=3)


def test_plain_string_behaviors_and_unknown_values(small_filtered):
    as_str = small_filtered.assign(behavior=small_filtered["behavior"].astype(str))
    pd.testing.assert_frame_equal(log_stats(as_str), log_stats(small_filtered))
    assert build_task_data(as_str, device="cpu").tasks == ("buy", "pv", "cart", "fav")
    bad = as_str.copy()
    bad.loc[0, "behavior"] = "click"
    with pytest.raises(ValueError, match=r"unknown behavior\(s\) \['click'\]"):
        filter_log(bad)


def test_missing_target_raises(small_log):
    no_buy = small_log[small_log["behavior"] != "buy"]
    with pytest.raises(ValueError, match="no 'buy' rows"):
        filter_log(no_buy)
    with pytest.raises(ValueError, match="no 'buy' rows"):
        build_task_data(no_buy, device="cpu")
    with pytest.raises(ValueError, match="not a behavior"):
        filter_log(small_log, target="click")


def test_log_stats_counts(small_log):
    stats = log_stats({"raw": small_log})
    assert list(stats.columns) == list(STATS_COLUMNS) and list(stats.index) == ["raw"]
    row = stats.loc["raw"]
    assert row["users"] == small_log["user_id"].nunique() and row["items"] == small_log["item_id"].nunique()
    assert row[list(BEHAVIORS)].sum() == len(small_log)
    assert log_stats(small_log).index.tolist() == ["log"]


def test_thesis_stats_table_and_comparison_layout(small_log, small_filtered):
    t = thesis_stats()
    assert list(t.columns) == list(STATS_COLUMNS) and list(t.index) == ["raw", "filtered"]
    # The published numbers, in Table 1's column order (users, items, buy, cart, pv, fav).
    printed = THESIS_TABLES["table1_statistics"]
    assert printed["columns"] == list(STATS_COLUMNS)
    assert t.loc["raw"].tolist() == printed["raw"] and t.loc["filtered"].tolist() == printed["filtered"]
    # The reason the default filter is a single pass: a 10-core would need >= 10 purchases per user.
    assert t.loc["filtered", "buy"] < 10 * t.loc["filtered", "users"]
    both = table1_comparison(log_stats({"raw": small_log, "filtered": small_filtered}))
    assert list(both.index) == ["raw", "filtered", "thesis raw", "thesis filtered"]
    assert both.loc["thesis raw"].tolist() == t.loc["raw"].tolist()


@pytest.mark.parametrize("mode", ["once", "kcore"])
def test_load_filtered_equals_in_memory_path(tmp_path, small_log, mode):
    path = tmp_path / "UserBehavior.csv"
    write_userbehavior(small_log, path)
    stats, filtered = load_filtered(path, mode=mode, **FILTER)
    expected = filter_log(small_log, mode=mode, **FILTER)
    pd.testing.assert_frame_equal(stats, log_stats({"raw": small_log, "filtered": expected}))
    pd.testing.assert_frame_equal(filtered, expected)


# ---------------------------------------------------------------------------------------------------
# Split and samples


def test_tasks_target_first_then_present_behaviors(data):
    assert data.tasks == ("buy", "pv", "cart", "fav") and data.target == "buy"
    assert data.labels.shape == (len(data.users), 4) and data.labels.dtype == torch.float32
    assert data.users.device.type == data.device.type and data.train_csr.indices.device.type == data.device.type


@pytest.mark.parametrize("present, target, tasks", [
    (("cart", "buy"), "buy", ("buy", "cart")),
    (("pv", "fav", "buy"), "buy", ("buy", "pv", "fav")),
    (BEHAVIORS, "cart", ("cart", "pv", "fav", "buy")),
])
def test_fewer_behaviors_give_fewer_tasks(small_filtered, present, target, tasks):
    log = small_filtered[small_filtered["behavior"].isin(present)]
    assert build_task_data(log, target=target, device="cpu").tasks == tasks


def test_split_is_a_partition_of_distinct_purchases(data, small_filtered):
    ids = lambda pairs: {(int(data.user_ids[u]), int(data.item_ids[i])) for u, i in pairs}  # noqa: E731
    bought = _keys(small_filtered, "buy")
    train = ids(zip(data.users[data.labels[:, 0] == 1].tolist(), data.items[data.labels[:, 0] == 1].tolist()))
    valid, test = ids(_csr_pairs(data.valid_csr)), ids(_csr_pairs(data.test_csr))
    assert train | valid | test == bought and not (train & valid or train & test or valid & test)
    assert len(train) == round(0.7 * len(bought)) and len(valid) == round(0.15 * len(bought))


def test_no_heldout_purchase_in_any_training_behavior(data):
    held = _csr_pairs(data.valid_csr) | _csr_pairs(data.test_csr)
    positives = set(zip(data.users.tolist(), data.items.tolist()))
    assert not held & positives
    assert not held & _csr_pairs(data.train_csr)
    assert _csr_pairs(data.train_csr) == positives and len(positives) == len(data.users)  # distinct


def test_labels_match_training_behaviors(data, small_filtered):
    held = _csr_pairs(data.valid_csr) | _csr_pairs(data.test_csr)
    uidx = {int(u): k for k, u in enumerate(data.user_ids)}
    iidx = {int(i): k for k, i in enumerate(data.item_ids)}
    pos = list(zip(data.users.tolist(), data.items.tolist()))
    for k, task in enumerate(data.tasks):
        pairs = {(uidx[u], iidx[i]) for u, i in _keys(small_filtered, task)} - held
        assert {p for p, lab in zip(pos, data.labels[:, k].tolist()) if lab == 1} == pairs, task
    assert (data.labels.sum(1) >= 1).all()


def test_raw_id_mapping(data, small_filtered):
    assert data.n_users == small_filtered["user_id"].nunique()
    assert data.n_items == small_filtered["item_id"].nunique()
    raw = _keys(small_filtered)
    assert all((int(data.user_ids[u]), int(data.item_ids[i])) in raw
               for u, i in zip(data.users[:200].tolist(), data.items[:200].tolist()))


def test_split_determinism(small_filtered):
    a, b = (build_task_data(small_filtered, seed=0, device="cpu") for _ in range(2))
    c = build_task_data(small_filtered, seed=1, device="cpu")
    assert torch.equal(a.valid_csr.indices, b.valid_csr.indices) and torch.equal(a.labels, b.labels)
    assert _csr_pairs(a.valid_csr) != _csr_pairs(c.valid_csr)


def test_negatives_never_hit_a_training_pair(data):
    users, items, labels = data.epoch_samples(make_generator(0, data.device), num_neg=4)
    n_pos = len(data.users)
    assert len(users) == 5 * n_pos and labels.shape == (5 * n_pos, len(data.tasks))
    neg = labels.sum(1) == 0
    assert int(neg.sum()) == 4 * n_pos
    train = _csr_pairs(data.train_csr)
    assert not set(zip(users[neg].tolist(), items[neg].tolist())) & train
    # every positive exactly once, with its labels
    pos_rows = sorted(zip(users[~neg].tolist(), items[~neg].tolist(), map(tuple, labels[~neg].tolist())))
    assert pos_rows == sorted(zip(data.users.tolist(), data.items.tolist(), map(tuple, data.labels.tolist())))
    assert 0.1 < float(neg[:n_pos].float().mean()) < 0.9  # shuffled, not positives first
    # four negatives per positive: per-user negative counts are 4x the positive counts
    assert torch.equal(torch.bincount(users[neg], minlength=data.n_users),
                       4 * torch.bincount(data.users, minlength=data.n_users))


def test_sampling_determinism_and_fresh_negatives(data):
    a = data.epoch_samples(make_generator(7, data.device))
    b = data.epoch_samples(make_generator(7, data.device))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    g = make_generator(7, data.device)
    first, second = data.epoch_samples(g), data.epoch_samples(g)
    assert not torch.equal(first[1], second[1])  # redrawn every epoch
    other = data.epoch_samples(make_generator(8, data.device))
    assert not torch.equal(a[1], other[1])


def test_negatives_uniform_over_non_interacted_items():
    log = _log([(1, 10, "buy"), (1, 11, "pv"), (2, 12, "buy"), (2, 13, "buy"), (3, 14, "pv"), (3, 10, "buy")] +
               [(4, i, "buy") for i in range(10, 15)])  # user 4 bought all 5 items ...
    log = log[~((log["user_id"] == 4) & (log["item_id"] == 14))]  # ... but one
    data = build_task_data(log, seed=0, fractions=(1.0, 0.0, 0.0), device="cpu")
    users = torch.zeros(30_000, dtype=torch.long)  # user index 0 (raw id 1): items 10, 11 are training items
    negs = data.sample_negatives(users, make_generator(0, "cpu"))
    freq = torch.bincount(negs, minlength=5).double() / len(negs)
    assert freq[:2].sum() == 0 and torch.allclose(freq[2:], torch.full((3,), 1 / 3, dtype=torch.double), atol=0.02)
    assert (data.sample_negatives(torch.full((100,), 3), make_generator(0, "cpu")) == 4).all()


def test_user_with_every_item_is_an_error():
    log = _log([(1, 10, "buy"), (1, 11, "pv"), (2, 10, "pv")])
    with pytest.raises(ValueError, match="every item"):
        build_task_data(log, fractions=(1.0, 0.0, 0.0), device="cpu")


def test_batches_are_slices_of_one_epoch(data):
    whole = data.epoch_samples(make_generator(3, data.device))
    parts = list(data.batches(1000, make_generator(3, data.device)))
    assert all(len(p[0]) == 1000 for p in parts[:-1]) and 0 < len(parts[-1][0]) <= 1000
    for x, k in zip(whole, range(3)):
        assert torch.equal(x, torch.cat([p[k] for p in parts]))


def test_eval_users_and_csr_mask(data):
    for split, csr in (("valid", data.valid_csr), ("test", data.test_csr)):
        users = data.eval_users(split)
        assert torch.equal(users, torch.unique(torch.tensor(sorted(u for u, _ in _csr_pairs(csr)),
                                                            dtype=torch.long)).to(users.device))
    users = data.eval_users("test")[:50]
    mask = data.test_csr.mask(users, data.n_items)
    expected = {(int(users[r]), int(c)) for r, c in mask.nonzero().tolist()}
    assert expected == {p for p in _csr_pairs(data.test_csr) if p[0] in set(users.tolist())}
    with pytest.raises(ValueError, match="valid"):
        data.eval_users("train")


def test_bad_fractions_and_repr(small_filtered, data):
    with pytest.raises(ValueError, match="fractions"):
        build_task_data(small_filtered, fractions=(0.8, 0.15, 0.15), device="cpu")
    text = repr(data)
    assert text.startswith("TaskData(tasks=('buy', 'pv', 'cart', 'fav')") and len(text) < 250


def test_notebook_helpers(data, small_log, small_filtered):
    stats = log_stats({"raw": small_log, "filtered": small_filtered})
    table = table1_comparison(stats)
    assert table.index.tolist() == ["raw", "filtered", "thesis raw", "thesis filtered"]
    assert table.loc["thesis filtered", "buy"] == 87_179 and table.loc["raw", "pv"] == stats.loc["raw", "pv"]
    assert raw_behavior_counts(stats).to_dict() == {b: int((small_log["behavior"] == b).sum()) for b in BEHAVIORS}
    summary = sample_summary(data)
    assert summary.index.tolist() == [*data.tasks, "positives (any task)"]
    assert summary.loc["buy", "valid"] == data.valid_csr.indices.numel() and summary.loc["pv", "test"] == 0
    assert summary.loc["cart", "train"] == int(data.labels[:, data.tasks.index("cart")].sum())
    check_no_leakage(data)


def test_check_no_leakage_detects_a_leak(small_filtered):
    data = build_task_data(small_filtered, seed=0, device="cpu")
    u = int(data.eval_users("test")[0])
    leaked = data.test_csr.indices[data.test_csr.indptr[u]]
    data.users, data.items = torch.cat([data.users, torch.tensor([u])]), torch.cat([data.items, leaked[None]])
    with pytest.raises(LeakageError, match="test buy pairs are training positives"):
        check_no_leakage(data)



# ---------------------------------------------------------------------------------------------------
# Inputs that must be refused (or counted) with a clear message


def test_file_cut_mid_line_is_reported_as_such(tmp_path):
    cut = tmp_path / "cut.csv"
    cut.write_text(PUBLISHED_ROWS + "101,4554802,2993370,fav,15")  # the download stopped mid-timestamp
    for read in (read_userbehavior, lambda p: load_filtered(p, min_user_items=1, min_item_users=1)):
        with pytest.raises(ValueError, match=r"cut\.csv: the file is cut mid-line: its last line "
                                             r"'101,4554802,2993370,fav,15' has no line end and ends in timestamp "
                                             r"15, shorter than the log's \(10 digits\)"):
            read(cut)
    short = tmp_path / "short.csv"
    short.write_text(PUBLISHED_ROWS + "101,45548")
    with pytest.raises(ValueError, match="cut mid-line.*has 2 of the 5 fields.*get it again"):
        read_userbehavior(short)
    complete = tmp_path / "no_final_newline.csv"
    complete.write_text(PUBLISHED_ROWS.rstrip("\n"))  # a well-formed last row without a newline is fine
    assert len(read_userbehavior(complete)) == 8
    late = tmp_path / "late_last_row.csv"
    late.write_text(PUBLISHED_ROWS + "101,4554802,2993370,fav,1600000000")  # complete, only dated outside the window
    for read in (read_userbehavior, lambda p: load_filtered(p, min_user_items=1, min_item_users=1)[0]):
        assert read(late).attrs["out_of_window_rows"] == 1


def test_rows_outside_the_window_are_counted_not_refused(tmp_path):
    path = tmp_path / "window.csv"
    path.write_text(PUBLISHED_ROWS + "1,2,3,pv,15\n1,2,3,buy,1600000000\n")
    log = read_userbehavior(path)
    assert len(log) == 10 and log.attrs["out_of_window_rows"] == 2
    stats, _ = load_filtered(path, min_user_items=1, min_item_users=1)
    assert stats.attrs["out_of_window_rows"] == 2 and stats.loc["raw", "pv"] == 6


def test_corrupted_zip_is_a_clear_error(tmp_path):
    good = tmp_path / "UserBehavior.zip"
    with zipfile.ZipFile(good, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("UserBehavior.csv", PUBLISHED_ROWS * 200)
    raw = good.read_bytes()
    truncated, garbage = tmp_path / "truncated.zip", tmp_path / "garbage.zip"
    truncated.write_bytes(raw[: len(raw) // 2])
    garbage.write_bytes(b"not a zip at all" * 10)
    for path in (truncated, garbage):
        with pytest.raises(ValueError, match=rf"{path.name}: not a readable zip archive .*download it again"):
            read_userbehavior(path)


@pytest.mark.parametrize("kw", [dict(min_user_items=-1), dict(min_item_users=-3), dict(min_user_items=2.5)])
def test_negative_or_fractional_thresholds_are_refused(small_log, tmp_path, kw):
    with pytest.raises(ValueError, match=rf"{next(iter(kw))}=.* must be a non-negative integer"):
        filter_log(small_log, **kw)
    with pytest.raises(ValueError, match="must be a non-negative integer"):
        load_filtered(tmp_path / "never_read.csv", **kw)  # refused before the file is looked at


def test_nan_ids_are_refused(small_filtered):
    log = small_filtered.astype({"user_id": "float64"})
    log.loc[5, "user_id"] = np.nan
    with pytest.raises(ValueError, match=r"1 row\(s\) of the log have no user_id \(NaN\), first at row 5"):
        build_task_data(log, device="cpu")
    log = small_filtered.astype({"item_id": "float64"})
    log.loc[7, "item_id"] = 1.5
    with pytest.raises(ValueError, match="item_id must hold integer ids; row 7 has 1.5"):
        build_task_data(log, device="cpu")


def test_task_data_records_where_it_came_from(small_filtered, tmp_path):
    data = build_task_data(small_filtered, seed=4, device="cpu")
    split = data.meta.pop("split")
    assert data.meta == {"source": None, "filter": {"target": "buy", **FILTER, "mode": "once"}, "split_seed": 4,
                         "fractions": [0.7, 0.15, 0.15], "rows": None}  # an in-memory log: nothing was read
    assert split["kind"] == "project" and split["seed"] == 4 and set(split["auxiliary_pairs_held_out"]) == {
        "pv", "cart", "fav"}
    path = tmp_path / "UserBehavior.csv"
    synthesize(**WORLD, path=path)
    _, filtered = load_filtered(path, **FILTER)
    meta = build_task_data(filtered, device="cpu").meta
    assert meta["source"] == str(path) and meta["rows"] == {"skipped": 0, "outside_window": 0}
    assert data.to("cpu").meta == data.meta


def test_leakage_check_survives_python_O(tmp_path):
    import subprocess
    import sys

    script = (
        "import torch; from mbkit.data import synthesize, filter_log, build_task_data, check_no_leakage, LeakageError\n"
        f"d = build_task_data(filter_log(synthesize(**{WORLD}), **{FILTER}), device='cpu')\n"
        "u = int(d.eval_users('test')[0]); i = d.test_csr.indices[d.test_csr.indptr[u]]\n"
        "d.users, d.items = torch.cat([d.users, torch.tensor([u])]), torch.cat([d.items, i[None]])\n"
        "try:\n    check_no_leakage(d)\nexcept LeakageError as e:\n    print('raised:', e)\n"
    )
    out = subprocess.run([sys.executable, "-O", "-c", script], capture_output=True, text=True, timeout=300)
    assert "raised: 1 test buy pairs are training positives" in out.stdout, out.stderr[-2000:]


def test_table1_ratios_are_shape_not_size(small_log, small_filtered):
    stats = log_stats({"raw": small_log, "filtered": small_filtered})
    ratios = table1_ratios(table1_comparison(stats))
    assert list(ratios.index) == ["raw", "filtered", "thesis raw", "thesis filtered"]
    assert list(ratios.columns) == ["buy per user", "buy per item", "pv per buy", "cart per buy", "fav per buy"]
    ours = ratios.loc["filtered"]
    assert ours["buy per user"] == stats.loc["filtered", "buy"] / stats.loc["filtered", "users"]
    assert ours["pv per buy"] == stats.loc["filtered", "pv"] / stats.loc["filtered", "buy"]
    # shape: doubling every count leaves the ratios of purchases to behaviors, halves none of them
    doubled = table1_ratios(stats * 2)
    pd.testing.assert_series_equal(doubled.loc["filtered"].drop(["buy per user", "buy per item"]),
                                   ours.drop(["buy per user", "buy per item"]), check_names=False)


def test_load_filtered_sizes_the_synthetic_world():
    stats, log = load_filtered("synthetic", synthetic_size=(3000, 1500), min_user_items=5, min_item_users=5)
    expected = filter_log(synthesize(3000, 1500), target="buy", mode="once", min_user_items=5, min_item_users=5)
    pd.testing.assert_frame_equal(log.reset_index(drop=True), expected.reset_index(drop=True))
    assert stats.loc["raw", "users"] <= 3000


def test_load_filtered_refuses_a_size_for_a_file(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("1,2,3,buy,1511700000\n")
    with pytest.raises(ValueError, match="sizes the built-in world only"):
        load_filtered(path, synthetic_size=(10, 10))
