"""The study's filter (>= 10 distinct purchases per user, >= 10 buyers per item) and Table-1 statistics."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from mbkit.data.schema import (BEHAVIORS, COLUMNS, DEFAULT_FILTER_MODE, FILTER_MODES, STATS_COLUMNS, THESIS_STATS,
                               FilterMode)


def check_target(behaviors: set[str], target: str) -> None:
    if target not in BEHAVIORS:
        raise ValueError(f"target={target!r} is not a behavior; choose one of {BEHAVIORS}")
    if target not in behaviors:
        raise ValueError(f"the log has no {target!r} rows (behaviors present: {sorted(behaviors)}); "
                         f"choose target among those present")


def check_not_empty(n_rows: int, target: str, min_user_items: int, min_item_users: int, mode: str) -> None:
    if n_rows == 0:
        raise ValueError(f"the filter left no data (min_user_items={min_user_items}, min_item_users="
                         f"{min_item_users}, target={target!r}, mode={mode!r}); lower min_user_items / "
                         "min_item_users or use a larger log")


def surviving(users: np.ndarray, items: np.ndarray, *, target: str, min_user_items: int, min_item_users: int,
              mode: str) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Kept user ids and item ids from the distinct target pairs `(users[j], items[j])`; None: all of them (a
    threshold of 0, which every user or item meets, bought or not).

    once:  U = {u: >= min_user_items distinct target items in the raw log},
           I = {i: >= min_item_users distinct target users in the raw log}.
    kcore: remove failing users and items, recount, repeat until nothing changes; every kept user then
           has >= min_user_items distinct target items among kept items, and vice versa.
    """
    if mode not in FILTER_MODES:
        raise ValueError(f"mode={mode!r}; use 'once' (thresholds computed once) or 'kcore' (fixed point)")
    check_thresholds(min_user_items, min_item_users)
    while True:
        uu, uc = np.unique(users, return_counts=True)
        ii, ic = np.unique(items, return_counts=True)
        if mode == "once":
            kept_u, kept_i = uu[uc >= min_user_items], ii[ic >= min_item_users]
            break
        bad_u, bad_i = uu[uc < min_user_items], ii[ic < min_item_users]
        if len(bad_u) == 0 and len(bad_i) == 0:
            kept_u, kept_i = uu, ii
            break
        keep = ~np.isin(users, bad_u) & ~np.isin(items, bad_i)
        users, items = users[keep], items[keep]
    if len(kept_u) == 0 or len(kept_i) == 0:
        raise ValueError(f"the filter left no data ({len(kept_u)} users with >= {min_user_items} distinct "
                         f"{target!r} items, {len(kept_i)} items with >= {min_item_users} distinct {target!r} "
                         f"users, mode={mode!r}); lower min_user_items / min_item_users or use a larger log")
    return (None if min_user_items == 0 else kept_u), (None if min_item_users == 0 else kept_i)


def behavior_codes(log: pd.DataFrame) -> np.ndarray:
    """Validated behavior of every row as an int8 index into `BEHAVIORS`."""
    missing = [c for c in ("user_id", "item_id", "behavior") if c not in log.columns]
    if missing:
        raise ValueError(f"the log lacks column(s) {missing}; expected {COLUMNS} (see read_userbehavior)")
    beh = log["behavior"]
    if isinstance(beh.dtype, pd.CategoricalDtype):
        lut = np.array([BEHAVIORS.index(c) if c in BEHAVIORS else -1 for c in map(str, beh.cat.categories)]
                       + [-1], np.int8)  # the last entry serves code -1 (missing)
        codes = lut[beh.cat.codes.to_numpy()]
    else:
        codes = beh.map({b: i for i, b in enumerate(BEHAVIORS)}).fillna(-1).to_numpy().astype(np.int8)
    if (codes < 0).any():
        unknown = sorted(set(map(str, pd.unique(log["behavior"][codes < 0]))))
        raise ValueError(f"unknown behavior(s) {unknown} in the log; expected only {BEHAVIORS}")
    return codes


def check_ids(log: pd.DataFrame) -> None:
    """Raise if a user or item id is missing (NaN / None) or not an integer."""
    for col in ("user_id", "item_id"):
        values = log[col]
        missing = values.isna().to_numpy()
        if missing.any():
            rows = np.flatnonzero(missing)
            raise ValueError(f"{int(missing.sum()):,} row(s) of the log have no {col} (NaN), first at row "
                             f"{log.index[rows[0]]!r}; drop or fix them (e.g. log.dropna(subset=[{col!r}]))")
        if not pd.api.types.is_integer_dtype(values.dtype):
            as_float = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64)
            bad = ~np.isfinite(as_float) | (as_float != np.round(as_float))
            if bad.any():
                first = np.flatnonzero(bad)[0]
                raise ValueError(f"{col} must hold integer ids; row {log.index[first]!r} has "
                                 f"{values.iloc[first]}; fix the log or read it with read_userbehavior")


def check_thresholds(min_user_items: int, min_item_users: int) -> None:
    for name, v in (("min_user_items", min_user_items), ("min_item_users", min_item_users)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
            raise ValueError(f"{name}={v!r} must be a non-negative integer (the study uses 10)")


def behaviors_present(codes: np.ndarray) -> set[str]:
    return {BEHAVIORS[c] for c in np.flatnonzero(np.bincount(codes, minlength=len(BEHAVIORS)))}


def filter_log(log: pd.DataFrame, *, target: str = "buy", min_user_items: int = 10, min_item_users: int = 10,
               mode: FilterMode = DEFAULT_FILTER_MODE) -> pd.DataFrame:
    """Keep every row (all behaviors) of the surviving users x surviving items.

    Survivors are computed from the distinct (user, item) `target` pairs. mode="once" (the default; see
    `DEFAULT_FILTER_MODE`): thresholds are computed once on the input and applied together, so afterwards
    each kept user has >= `min_user_items` distinct target items *in the input* and each kept item
    >= `min_item_users` distinct target users *in the input* (within the result they may have fewer, and a
    kept user may have only auxiliary rows left). mode="kcore": iterated to the fixed point, so the
    thresholds hold exactly within the result. A threshold of 0 keeps every user (or item), bought or not:
    both at 0 keep the log whole, as a preprocessed public set is published.
    """
    codes = behavior_codes(log)
    check_ids(log)
    check_thresholds(min_user_items, min_item_users)
    check_target(behaviors_present(codes), target)
    pairs = log.loc[codes == BEHAVIORS.index(target), ["user_id", "item_id"]].drop_duplicates()
    kept_u, kept_i = surviving(pairs["user_id"].to_numpy(), pairs["item_id"].to_numpy(), target=target,
                                min_user_items=min_user_items, min_item_users=min_item_users, mode=mode)
    keep = np.ones(len(log), dtype=bool)
    if kept_u is not None:
        keep &= np.isin(log["user_id"].to_numpy(), kept_u)
    if kept_i is not None:
        keep &= np.isin(log["item_id"].to_numpy(), kept_i)
    check_not_empty(int(keep.sum()), target, min_user_items, min_item_users, mode)
    out = log.loc[keep].reset_index(drop=True)
    out.attrs = {"source": log.attrs.get("source"), "rows": log.attrs.get("rows"),
                 "filter": filter_settings(target, min_user_items, min_item_users, mode)}
    return out


def filter_settings(target: str, min_user_items: int, min_item_users: int, mode: str) -> dict:
    return {"target": target, "min_user_items": int(min_user_items), "min_item_users": int(min_item_users),
            "mode": mode}


def log_stats(logs: pd.DataFrame | Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Table-1 statistics: distinct users and items and the rows per behavior, one row per log.

    `log_stats({"raw": raw, "filtered": filtered})`; a single DataFrame gives one row named "log".
    Compare with `thesis_stats()`.
    """
    if isinstance(logs, pd.DataFrame):
        logs = {"log": logs}
    rows = {}
    for name, log in logs.items():
        counts = dict(zip(BEHAVIORS, np.bincount(behavior_codes(log), minlength=len(BEHAVIORS)).tolist()))
        rows[name] = {"users": log["user_id"].nunique(), "items": log["item_id"].nunique(),
                      **{b: counts[b] for b in STATS_COLUMNS[2:]}}
    return pd.DataFrame.from_dict(rows, orient="index", columns=list(STATS_COLUMNS)).astype("int64")


def thesis_stats() -> pd.DataFrame:
    """The thesis's published Table 1 (real UserBehavior-2017), in `log_stats`' format."""
    return pd.DataFrame.from_dict(THESIS_STATS, orient="index", columns=list(STATS_COLUMNS)).astype("int64")


def table1_comparison(stats: pd.DataFrame) -> pd.DataFrame:
    """Our Table-1 rows ("raw", "filtered", as `load_filtered` returns) above the thesis's published ones."""
    thesis = thesis_stats().rename(index=lambda r: f"thesis {r}")
    return pd.concat([stats[list(STATS_COLUMNS)], thesis]).astype("int64")


def table1_ratios(stats: pd.DataFrame) -> pd.DataFrame:
    """Table 1 as shape rather than size: purchases per user and per item, and each auxiliary behavior's rows
    per purchase, for every row of `table1_comparison`'s output (or of `load_filtered`'s stats)."""
    buy = stats["buy"].astype("float64")
    out = pd.DataFrame({"buy per user": buy / stats["users"], "buy per item": buy / stats["items"]})
    for b in BEHAVIORS:
        if b != "buy":
            out[f"{b} per buy"] = stats[b] / buy
    return out


def raw_behavior_counts(stats: pd.DataFrame) -> pd.Series:
    """Rows per behavior of the raw log (behavior -> count, in `BEHAVIORS` order) from `load_filtered`'s stats."""
    return stats.loc["raw", list(BEHAVIORS)].astype("int64").rename("raw")
