"""Raw UserBehavior log -> filtered log -> leakage-free split -> device-resident task samples.

The pipeline of the thesis (the original MetaBalance data code was never released):

1. `read_userbehavior` reads the Tianchi UserBehavior-2017 file as published (or `load_filtered` streams
   it in bounded memory), validating every row.
2. `filter_log` keeps users with >= 10 distinct purchased items and items with >= 10 distinct buyers.
3. `build_task_data` splits the distinct purchase pairs 70/15/15, removes held-out purchase pairs from
   every auxiliary behavior, and builds the training positives with one 0/1 label per task.
4. `TaskData.batches` yields shuffled mini-batches with freshly drawn negatives, as device tensor slices.

The built-in default log (`mbkit.synthetic.synthesize`, a documented generative model) is used wherever
no real file is given; `mbkit.data.synthesize` names it too.
"""

from __future__ import annotations

import gzip
import os
import shutil
import tempfile
import warnings
import zipfile
import zlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import polars as pl
import torch
from torch import Tensor

from mbkit.csr import CSR, csr_from_keys, sorted_unique
from mbkit.utils import resolve_device

BEHAVIORS: tuple[str, ...] = ("pv", "cart", "fav", "buy")
COLUMNS: tuple[str, ...] = ("user_id", "item_id", "category_id", "behavior", "timestamp")
ID_COLUMNS: tuple[str, ...] = ("user_id", "item_id", "category_id")

# Table 1 of the thesis, in its column order.
STATS_COLUMNS: tuple[str, ...] = ("users", "items", "buy", "cart", "pv", "fav")
THESIS_STATS: dict[str, dict[str, int]] = {
    "raw": {"users": 987_994, "items": 4_162_024, "buy": 2_015_839, "cart": 5_530_446,
            "pv": 89_716_264, "fav": 2_888_258},
    "filtered": {"users": 16_012, "items": 24_608, "buy": 87_179, "cart": 51_985,
                 "pv": 383_648, "fav": 19_039},
}

FilterMode = Literal["once", "kcore"]
# "once" is the default because it is the only one of the two readings the published counts allow: a
# 10-core keeps >= 10 distinct purchases per user, i.e. >= 160,120 buy rows for 16,012 users, but the thesis
# reports 87,179 (and 87,179 < 10 x 24,608 on the item side too). Whether the thesis counted exactly as
# `filter_log(mode="once")` does cannot be confirmed without its code; the real file would tell.
DEFAULT_FILTER_MODE: FilterMode = "once"

# [2017-11-25 00:00, 2017-12-04 00:00) Asia/Shanghai (UTC+8), in Unix seconds: the log's nine days.
WINDOW: tuple[int, int] = (1_511_539_200, 1_512_316_800)

_BEHAVIOR_DTYPE = pl.Enum(list(BEHAVIORS))
_FORMAT = "user_id,item_id,category_id,behavior,timestamp"
_PolarsError = pl.exceptions.PolarsError
_N_SHOWN = 5  # offending lines quoted in an error message


# --------------------------------------------------------------------------------------------------
# Reading the raw log


def _schema(id_dtype: pl.DataType) -> dict[str, pl.DataType]:
    return {"user_id": id_dtype, "item_id": id_dtype, "category_id": id_dtype,
            "behavior": _BEHAVIOR_DTYPE, "timestamp": pl.Int64}


@contextmanager
def _plain_csv(path: str | os.PathLike) -> Iterator[tuple[str, str]]:
    """Yield `(csv_path, name)`: `.zip` / `.gz` inputs are streamed to a temporary plain file first.

    Decompressing to disk (not memory) keeps the bounded-memory path bounded for the 3.5 GB file.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file; pass the path of UserBehavior.csv (or its .zip / .csv.gz)")
    suffix = path.suffix.lower()
    if suffix not in (".zip", ".gz"):
        yield str(path), str(path)
        return
    with tempfile.TemporaryDirectory(prefix="mbkit-") as tmp:
        plain = os.path.join(tmp, "UserBehavior.csv")
        if suffix == ".zip":
            try:
                with zipfile.ZipFile(path) as zf:
                    members = [m for m in zf.namelist()
                               if m.lower().endswith(".csv") and not m.startswith("__MACOSX")]
                    if len(members) != 1:
                        raise ValueError(f"{path}: expected exactly one .csv member in the archive, found "
                                         f"{members or 'none'}; extract the log and pass the .csv path")
                    name = f"{path}:{members[0]}"
                    with zf.open(members[0]) as src, open(plain, "wb") as dst:
                        shutil.copyfileobj(src, dst, 1 << 24)
            except (zipfile.BadZipFile, EOFError, zlib.error, OSError) as e:
                if isinstance(e, OSError) and e.filename is not None:  # e.g. a full temporary disk
                    raise
                raise ValueError(f"{path}: not a readable zip archive ({e}); the download is probably "
                                 "truncated or corrupted: download it again, or pass the extracted .csv") from None
        else:
            name = str(path)
            try:
                with gzip.open(path, "rb") as src, open(plain, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 24)
            except (OSError, EOFError) as e:
                raise ValueError(f"{path}: not a readable gzip file ({e})") from None
        yield plain, name


def _scan_lines(csv: str) -> pl.LazyFrame:
    """The file as one string column `line` with its 1-based `line_no` (blank lines included)."""
    return (pl.scan_csv(csv, has_header=False, separator="\x1f", quote_char=None,
                        schema={"line": pl.String}, truncate_ragged_lines=True)
            .with_row_index("line_no", offset=1))


def _field(j: int) -> pl.Expr:
    """Field j of the split line; ids and timestamps may carry spaces (the typed reader accepts them)."""
    raw = pl.col("_parts").list.get(j, null_on_oob=True)
    return raw if COLUMNS[j] == "behavior" else raw.str.strip_chars()


def _classify(lines: pl.LazyFrame) -> pl.LazyFrame:
    """Add `blank` (ignored) and `reason` (null for a well-formed row) to `_scan_lines`' frame."""
    line = pl.col("line").fill_null("").str.strip_chars()
    n = pl.col("_parts").list.len()

    def not_int(j: int) -> pl.Expr:
        return _field(j).cast(pl.Int64, strict=False).is_null()

    def got(j: int) -> pl.Expr:
        return pl.format("'{}'", _field(j))

    reason = pl.when(pl.col("blank")).then(None)
    reason = reason.when(n != 5).then(pl.format(f"expected 5 comma-separated fields ({_FORMAT}), found {{}}", n))
    for j, col in enumerate(COLUMNS):
        if col == "behavior":
            reason = reason.when(~_field(j).is_in(list(BEHAVIORS))).then(
                pl.format("behavior must be one of {}, got {}", pl.lit("|".join(BEHAVIORS)), got(j)))
        else:
            what = "an integer (Unix seconds)" if col == "timestamp" else "an integer id"
            reason = reason.when(not_int(j)).then(pl.format(f"{col} must be {what}, got {{}}", got(j)))
    return (lines.with_columns(blank=line == "", _parts=line.str.split(","))
            .with_columns(reason=reason.otherwise(None)))


def _good_rows(classified: pl.LazyFrame, id_dtype: pl.DataType) -> pl.LazyFrame:
    """The well-formed rows of a classified line frame, parsed to the typed schema."""
    parsed = [(_field(j).cast(pl.Int64).cast(id_dtype) if c in ID_COLUMNS
               else _field(j).cast(_BEHAVIOR_DTYPE) if c == "behavior"
               else _field(j).cast(pl.Int64)).alias(c) for j, c in enumerate(COLUMNS)]
    return classified.filter(pl.col("reason").is_null() & ~pl.col("blank")).select(parsed)


@dataclass
class _Diagnosis:
    n_good: int
    n_bad: int
    first_bad: pl.DataFrame  # line_no, reason, line of the first offending rows

    def message(self, name: str) -> str:
        shown = "\n".join(f"  line {r['line_no']}: {r['reason']}: {r['line'][:80]!r}"
                          for r in self.first_bad.iter_rows(named=True))
        lines = ", ".join(str(n) for n in self.first_bad["line_no"])
        hint = ("Line 1 looks like a header; the published file has none. "
                if self.first_bad["line_no"][0] == 1 and "user" in self.first_bad["line"][0].lower() else "")
        todo = ("No row is well-formed: is this the UserBehavior log?" if self.n_good == 0 else
                "Fix the file, or pass skip_bad_rows=True to skip such rows (the count skipped is reported).")
        return (f"{name}: {self.n_bad:,} malformed row(s) out of {self.n_good + self.n_bad:,} (first at "
                f"line(s) {lines}); expected {_FORMAT} with integer ids, behavior in "
                f"{'|'.join(BEHAVIORS)} and integer Unix seconds:\n{shown}\n{hint}{todo}")


def _diagnose(csv: str) -> _Diagnosis:
    """The slow path: classify every line (streaming) to locate the offending rows."""
    classified = _classify(_scan_lines(csv))
    counts, first = pl.collect_all([
        classified.select(n_good=(pl.col("reason").is_null() & ~pl.col("blank")).sum(),
                          n_bad=pl.col("reason").is_not_null().sum()),
        classified.filter(pl.col("reason").is_not_null()).select("line_no", "reason", "line")
        .sort("line_no").head(_N_SHOWN),
    ], engine="streaming")
    return _Diagnosis(int(counts["n_good"][0]), int(counts["n_bad"][0]), first)


def _check_last_line(csv: str, name: str) -> None:
    """Raise if the file ends mid-line: no final line end and a last row that is malformed or dated outside
    the log's window (a download or copy cut short; a clean file without a final newline passes)."""
    with open(csv, "rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - 4096))
        tail = f.read()
    if not tail or tail.endswith((b"\n", b"\r")):
        return
    last = tail.splitlines()[-1].decode("utf-8", "replace").strip()
    if not last:
        return
    parts = [p.strip() for p in last.split(",")]
    problem = None
    if len(parts) != len(COLUMNS):
        problem = f"has {len(parts)} of the {len(COLUMNS)} fields"
    elif parts[3] not in BEHAVIORS or not all(p.lstrip("-").isdigit() for i, p in enumerate(parts) if i != 3):
        problem = "is malformed"
    elif not WINDOW[0] <= int(parts[4]) < WINDOW[1]:
        problem = f"has timestamp {parts[4]}, outside the log's window [{WINDOW[0]}, {WINDOW[1]})"
    if problem:
        raise ValueError(f"{name}: the file is cut mid-line: its last line {last[:80]!r} has no line end and "
                         f"{problem}; the file was truncated (an interrupted download, copy or extraction): "
                         "get it again")


def _out_of_window(ts: pl.Expr) -> pl.Expr:
    return ((ts < WINDOW[0]) | (ts >= WINDOW[1])).sum()


def _raise_empty(name: str) -> None:
    raise ValueError(f"{name}: the file is empty (no rows); expected lines of {_FORMAT}, "
                     "e.g. 1,2268318,2520377,pv,1511544070")


def _report_skipped(name: str, n_bad: int) -> None:
    warnings.warn(f"{name}: skipped {n_bad:,} malformed row(s) (skip_bad_rows=True)", stacklevel=3)


def _compact_ids(df: pl.DataFrame) -> pl.DataFrame:
    """Store ids as int32 when every id fits (the real log's largest id is about 5.16 M)."""
    info = np.iinfo(np.int32)
    casts = [pl.col(c).cast(pl.Int32) for c in ID_COLUMNS if df[c].dtype != pl.Int32 and
             (df.height == 0 or (df[c].min() >= info.min and df[c].max() <= info.max))]
    return df.with_columns(casts) if casts else df


def _to_pandas(df: pl.DataFrame) -> pd.DataFrame:
    """polars -> pandas without pyarrow; behavior becomes a Categorical over `BEHAVIORS`."""
    codes = df["behavior"].to_physical().to_numpy().astype(np.int8)
    return pd.DataFrame({
        **{c: df[c].to_numpy() for c in ID_COLUMNS},
        "behavior": pd.Categorical.from_codes(codes, categories=list(BEHAVIORS)),
        "timestamp": df["timestamp"].to_numpy().astype(np.int64),
    })


def _bad_rows(csv: str, name: str, skip_bad_rows: bool) -> int:
    """After a typed read failed or found nulls: raise on bad rows (or an empty file) unless they are to be
    skipped, and return how many bad rows there are (0: only blank lines, which carry no data)."""
    diag = _diagnose(csv)
    if diag.n_bad == 0 and diag.n_good == 0:
        _raise_empty(name)
    if diag.n_bad and (not skip_bad_rows or diag.n_good == 0):
        raise ValueError(diag.message(name))
    if diag.n_bad:
        _report_skipped(name, diag.n_bad)
    return diag.n_bad


def _read_polars(csv: str, name: str, skip_bad_rows: bool) -> tuple[pl.DataFrame, int]:
    """Typed read with validation: fast path first, diagnostic pass only when it fails."""
    if os.path.getsize(csv) == 0:
        _raise_empty(name)
    error: Exception | None = None
    for id_dtype in (pl.Int32, pl.Int64):  # Int64 only if some id overflows int32
        try:
            df = pl.read_csv(csv, has_header=False, schema=_schema(id_dtype), quote_char=None)
        except _PolarsError as e:
            error = e
        else:
            if df.height and not any(df.null_count().row(0)):
                return _compact_ids(df), 0
            error = None  # nulls: short rows, empty fields or blank lines; the diagnosis tells which
        if n_bad := _bad_rows(csv, name, skip_bad_rows):
            good = _good_rows(_classify(_scan_lines(csv)), pl.Int64).collect(engine="streaming")
            return _compact_ids(good), n_bad
        if error is None:  # only blank lines, which carry no data
            return _compact_ids(df.filter(~pl.all_horizontal(pl.all().is_null()))), 0
    raise ValueError(f"{name}: could not be parsed as {_FORMAT}: {str(error).splitlines()[0]}")


def read_userbehavior(path: str | os.PathLike, *, skip_bad_rows: bool = False) -> pd.DataFrame:
    """Read the Tianchi UserBehavior log as published (`.csv`, the `.zip` it ships in, or `.csv.gz`).

    No header; five columns user_id,item_id,category_id,behavior,timestamp; behaviors pv|buy|cart|fav;
    timestamps in Unix seconds. Returns columns `COLUMNS` in file order: ids int32 (int64 if an id does
    not fit), behavior a `pd.Categorical` over `BEHAVIORS`, timestamp int64. Blank lines are ignored.

    Any malformed row (wrong column count, non-integer id or timestamp, unknown behavior) raises a
    `ValueError` naming the file, the first offending line numbers and the expected format, as does an
    empty file. With `skip_bad_rows=True` such rows are skipped instead; the count is reported by a
    warning and in `df.attrs["skipped_rows"]`.
    """
    with _plain_csv(path) as (csv, name):
        _check_last_line(csv, name)
        df, skipped = _read_polars(csv, name, skip_bad_rows)
    out = _to_pandas(df)
    out.attrs["skipped_rows"] = skipped
    out.attrs["out_of_window_rows"] = int(df.select(_out_of_window(pl.col("timestamp"))).item() or 0)
    out.attrs["source"] = str(Path(path))
    return out


# --------------------------------------------------------------------------------------------------
# Filtering and statistics


def _check_target(behaviors: set[str], target: str) -> None:
    if target not in BEHAVIORS:
        raise ValueError(f"target={target!r} is not a behavior; choose one of {BEHAVIORS}")
    if target not in behaviors:
        raise ValueError(f"the log has no {target!r} rows (behaviors present: {sorted(behaviors)}); "
                         f"choose target among those present")


def _check_not_empty(n_rows: int, target: str, min_user_items: int, min_item_users: int, mode: str) -> None:
    if n_rows == 0:
        raise ValueError(f"the filter left no data (min_user_items={min_user_items}, min_item_users="
                         f"{min_item_users}, target={target!r}, mode={mode!r}); lower min_user_items / "
                         "min_item_users or use a larger log")


def _surviving(users: np.ndarray, items: np.ndarray, *, target: str, min_user_items: int, min_item_users: int,
               mode: str) -> tuple[np.ndarray, np.ndarray]:
    """Kept user ids and item ids from the distinct target pairs `(users[j], items[j])`.

    once:  U = {u: >= min_user_items distinct target items in the raw log},
           I = {i: >= min_item_users distinct target users in the raw log}.
    kcore: remove failing users and items, recount, repeat until nothing changes; every kept user then
           has >= min_user_items distinct target items among kept items, and vice versa.
    """
    if mode not in ("once", "kcore"):
        raise ValueError(f"mode={mode!r}; use 'once' (thresholds computed once) or 'kcore' (fixed point)")
    _check_thresholds(min_user_items, min_item_users)
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
    return kept_u, kept_i


def _behavior_codes(log: pd.DataFrame) -> np.ndarray:
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


def _check_ids(log: pd.DataFrame) -> None:
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


def _check_thresholds(min_user_items: int, min_item_users: int) -> None:
    for name, v in (("min_user_items", min_user_items), ("min_item_users", min_item_users)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
            raise ValueError(f"{name}={v!r} must be a non-negative integer (the study uses 10)")


def _present(codes: np.ndarray) -> set[str]:
    return {BEHAVIORS[c] for c in np.flatnonzero(np.bincount(codes, minlength=len(BEHAVIORS)))}


def filter_log(log: pd.DataFrame, *, target: str = "buy", min_user_items: int = 10, min_item_users: int = 10,
               mode: FilterMode = DEFAULT_FILTER_MODE) -> pd.DataFrame:
    """Keep every row (all behaviors) of the surviving users x surviving items.

    Survivors are computed from the distinct (user, item) `target` pairs. mode="once" (the default; see
    `DEFAULT_FILTER_MODE`): thresholds are computed once on the input and applied together, so afterwards
    each kept user has >= `min_user_items` distinct target items *in the input* and each kept item
    >= `min_item_users` distinct target users *in the input* (within the result they may have fewer, and a
    kept user may have only auxiliary rows left). mode="kcore": iterated to the fixed point, so the
    thresholds hold exactly within the result.
    """
    codes = _behavior_codes(log)
    _check_ids(log)
    _check_thresholds(min_user_items, min_item_users)
    _check_target(_present(codes), target)
    pairs = log.loc[codes == BEHAVIORS.index(target), ["user_id", "item_id"]].drop_duplicates()
    kept_u, kept_i = _surviving(pairs["user_id"].to_numpy(), pairs["item_id"].to_numpy(), target=target,
                                min_user_items=min_user_items, min_item_users=min_item_users, mode=mode)
    keep = np.isin(log["user_id"].to_numpy(), kept_u) & np.isin(log["item_id"].to_numpy(), kept_i)
    _check_not_empty(int(keep.sum()), target, min_user_items, min_item_users, mode)
    out = log.loc[keep].reset_index(drop=True)
    out.attrs = {"source": log.attrs.get("source"), "filter": _filter_settings(target, min_user_items,
                                                                               min_item_users, mode)}
    return out


def _filter_settings(target: str, min_user_items: int, min_item_users: int, mode: str) -> dict:
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
        counts = dict(zip(BEHAVIORS, np.bincount(_behavior_codes(log), minlength=len(BEHAVIORS)).tolist()))
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


# --------------------------------------------------------------------------------------------------
# Bounded-memory path for the real 3.5 GB file


_PART_ROWS = 5_000_000  # rows per staged IPC file; each is memory-mapped only while it is scanned


def _stage(lf: pl.LazyFrame, directory: str) -> pl.LazyFrame:
    """Stream `lf` once into IPC files under `directory` and return a scan of them, in row order.

    The CSV is parsed once; the statistics and the filter then scan the compact binary copy (about 21
    bytes a row). Several files rather than one keep the memory-mapped part, which counts towards RSS,
    to one file at a time.
    """
    if hasattr(pl, "PartitionBy"):
        lf.sink_ipc(pl.PartitionBy(directory, max_rows_per_file=_PART_ROWS, approximate_bytes_per_file=None),
                    mkdir=True)
    else:  # polars without partitioned sinks: one file (peak RSS then includes its mapped pages)
        os.makedirs(directory)
        lf.sink_ipc(os.path.join(directory, "00000000.ipc"))
    if not any(f.endswith(".ipc") for f in os.listdir(directory)):
        return pl.LazyFrame(schema=lf.collect_schema())
    return pl.scan_ipc(os.path.join(directory, "*.ipc"))


def _counts(ipc: pl.LazyFrame) -> dict[str, int]:
    """Rows, null cells per column and rows per behavior, in one streaming pass."""
    out = ipc.select(rows=pl.len(), out_of_window=_out_of_window(pl.col("timestamp")),
                     **{f"null_{c}": pl.col(c).is_null().sum() for c in COLUMNS},
                     **{b: (pl.col("behavior") == b).sum() for b in BEHAVIORS}).collect(engine="streaming")
    return {k: int(v or 0) for k, v in out.row(0, named=True).items()}


def _stage_validated(csv: str, name: str, tmp: str, skip_bad_rows: bool) -> tuple[pl.LazyFrame, dict, int]:
    """Stage the typed rows of `csv` (validated as in `read_userbehavior`): (scan, counts, skipped)."""
    error: Exception | None = None
    for attempt, id_dtype in enumerate((pl.Int32, pl.Int64)):  # Int64 only if some id overflows int32
        lf = pl.scan_csv(csv, has_header=False, schema=_schema(id_dtype), quote_char=None)
        try:
            ipc = _stage(lf, os.path.join(tmp, f"typed{attempt}"))
            counts = _counts(ipc)
        except _PolarsError as e:  # a value that does not parse
            error = e
        else:
            if counts["rows"] and not any(counts[f"null_{c}"] for c in COLUMNS):
                return ipc, counts, 0
            error = None  # short rows, empty fields or blank lines: the diagnosis tells which
        if n_bad := _bad_rows(csv, name, skip_bad_rows):
            ipc = _stage(_good_rows(_classify(_scan_lines(csv)), pl.Int64), os.path.join(tmp, "good"))
            return ipc, _counts(ipc), n_bad
        if error is None:  # only blank lines, which carry no data
            ipc = _stage(ipc.filter(~pl.all_horizontal(pl.all().is_null())), os.path.join(tmp, "noblank"))
            return ipc, _counts(ipc), 0
    raise ValueError(f"{name}: could not be parsed as {_FORMAT}: {str(error).splitlines()[0]}")


def load_filtered(source: str | os.PathLike = "synthetic", *, target: str = "buy",
                  mode: FilterMode = DEFAULT_FILTER_MODE, min_user_items: int = 10, min_item_users: int = 10,
                  skip_bad_rows: bool = False,
                  synthetic_size: tuple[int, int] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Raw + filtered Table-1 statistics and the filtered log, in bounded memory.

    `source` is a path to the raw log (`.csv`, `.zip`, `.csv.gz`) or "synthetic" for `synthesize()`'s
    default (`synthetic_size=(n_users, n_items)` for another size, e.g. notebook 06's half-size world). A file is never materialised: the polars streaming engine parses it once into temporary
    IPC files (about 21 bytes a row, in the system temp directory; `.zip`/`.gz` are first decompressed
    there), then streaming queries over them give the statistics, the distinct `target` pairs and the
    rows of the surviving users x items (100 M rows: ~40 s, 1.2 GiB peak RSS on 2 busy cores; see
    benchmarks/read_filter.py). Rows are validated as in `read_userbehavior`, with the same errors and
    `skip_bad_rows` (raw statistics then count the kept rows). Returns `(stats, filtered_log)`: stats with rows "raw" and "filtered" as
    `log_stats` gives them, the filtered log as `read_userbehavior` would return it, in file order.
    Rows dated outside the log's nine days (the published file has some) are kept and counted in
    `stats.attrs["out_of_window_rows"]`; a file cut mid-line is an error.
    """
    _check_thresholds(min_user_items, min_item_users)
    kw = dict(target=target, mode=mode, min_user_items=min_user_items, min_item_users=min_item_users)
    synthetic = isinstance(source, str) and source == "synthetic"
    if synthetic_size is not None and not synthetic:
        raise ValueError(f"synthetic_size={synthetic_size!r} sizes the built-in world only; {source!r} is a file, "
                         "whose size is its own: leave synthetic_size out")
    if synthetic:
        from mbkit.synthetic import synthesize
        raw = synthesize(*synthetic_size) if synthetic_size is not None else synthesize()
        filtered = filter_log(raw, **kw)
        filtered.attrs["source"] = "synthetic"
        stats = log_stats({"raw": raw, "filtered": filtered})
        stats.attrs["out_of_window_rows"] = 0
        return stats, filtered
    with _plain_csv(source) as (csv, name), tempfile.TemporaryDirectory(prefix="mbkit-") as tmp:
        if os.path.getsize(csv) == 0:
            _raise_empty(name)
        _check_last_line(csv, name)
        ipc, counts, skipped = _stage_validated(csv, name, tmp, skip_bad_rows)
        _check_target({b for b in BEHAVIORS if counts[b]}, target)
        raw = {"users": ipc.select("user_id").unique().select(pl.len()).collect(engine="streaming").item(),
               "items": ipc.select("item_id").unique().select(pl.len()).collect(engine="streaming").item(),
               **{b: counts[b] for b in BEHAVIORS}}
        pairs = (ipc.filter(pl.col("behavior") == target).select("user_id", "item_id").unique()
                 .collect(engine="streaming"))
        kept_u, kept_i = _surviving(pairs["user_id"].to_numpy(), pairs["item_id"].to_numpy(), target=target,
                                    min_user_items=min_user_items, min_item_users=min_item_users, mode=mode)
        kept = ipc.filter(pl.col("user_id").is_in(pl.Series(kept_u).implode())
                          & pl.col("item_id").is_in(pl.Series(kept_i).implode()))
        filtered = _to_pandas(_compact_ids(kept.collect(engine="streaming")))
        _check_not_empty(len(filtered), target, min_user_items, min_item_users, mode)
    stats = pd.concat([pd.DataFrame([raw], index=["raw"]), log_stats({"filtered": filtered})])
    stats = stats[list(STATS_COLUMNS)].astype("int64")
    stats.attrs["skipped_rows"] = skipped
    stats.attrs["out_of_window_rows"] = counts["out_of_window"]
    filtered.attrs.update(skipped_rows=skipped, source=str(Path(source)),
                          filter=_filter_settings(target, min_user_items, min_item_users, mode))
    return stats, filtered


def write_userbehavior(log: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write a log in the published format (no header; `.csv`, `.csv.gz`, or `.zip` holding UserBehavior.csv)."""
    path = Path(path)
    codes = pd.Categorical(log["behavior"], categories=list(BEHAVIORS)).codes
    if (codes < 0).any():
        raise ValueError(f"cannot write {path}: behavior values outside {BEHAVIORS}")
    df = pl.DataFrame({c: log[c].to_numpy() for c in ID_COLUMNS}).with_columns(
        behavior=pl.Series(codes.astype(np.uint8)).replace_strict(list(range(len(BEHAVIORS))), list(BEHAVIORS),
                                                                  return_dtype=_BEHAVIOR_DTYPE),
        timestamp=pl.Series(log["timestamp"].to_numpy()))
    suffix = path.suffix.lower()
    if suffix == ".gz":
        with gzip.open(path, "wb", compresslevel=5) as f:
            df.write_csv(f, include_header=False)
    elif suffix == ".zip":
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf, zf.open("UserBehavior.csv", "w") as f:
            df.write_csv(f, include_header=False)
    else:
        df.write_csv(path, include_header=False)
    return path


# --------------------------------------------------------------------------------------------------
# Split and device-resident task samples


@dataclass(repr=False)
class TaskData:
    """Index tensors of one split, on `device`; users and items are contiguous indices 0..n-1.

    The training positives are the distinct (user, item) pairs of any behavior in the training split,
    each with a 0/1 label per task (column 0 = target). `train_csr` holds every training item of a
    user (masked when ranking); `valid_csr` / `test_csr` the held-out purchases. `user_ids[u]` /
    `item_ids[i]` give the raw log ids back; `meta` says where the data came from (source, filter, split
    seed), which `mbkit.runstate.data_fingerprint` records with every run.
    """

    tasks: tuple[str, ...]
    target: str
    n_users: int
    n_items: int
    device: torch.device
    users: Tensor  # (P,) int64, training positives
    items: Tensor  # (P,) int64
    labels: Tensor  # (P, K) float32
    train_csr: CSR
    valid_csr: CSR
    test_csr: CSR
    user_ids: np.ndarray | None = None  # (n_users,) raw ids
    item_ids: np.ndarray | None = None  # (n_items,) raw ids
    meta: dict = field(default_factory=dict)  # source, filter and split settings (see data_fingerprint)
    _train_keys: Tensor = field(init=False)  # (nnz,) sorted user * n_items + item of train_csr

    def __post_init__(self) -> None:
        rows = torch.repeat_interleave(torch.arange(self.n_users, device=self.device),
                                       self.train_csr.row_lengths())
        self._train_keys = rows * self.n_items + self.train_csr.indices  # sorted: CSR rows, sorted cols
        full = (self.train_csr.row_lengths() >= self.n_items).nonzero()
        if len(full):
            raise ValueError(f"user index {int(full[0])} has a training interaction with every item, so no "
                             "negative can be drawn for it; filter such users out of the log")

    def describe(self) -> str:
        """Sizes only: the same text on every machine (`repr` adds the device)."""
        held = f"valid={int(self.valid_csr.indices.numel()):,}, test={int(self.test_csr.indices.numel()):,}"
        return (f"TaskData(tasks={self.tasks}, users={self.n_users:,}, items={self.n_items:,}, "
                f"train positives={int(self.users.numel()):,}, held-out {self.target}: {held})")

    def __repr__(self) -> str:
        return f"{self.describe()[:-1]}, device={self.device})"

    def _is_train(self, users: Tensor, items: Tensor) -> Tensor:
        keys = users * self.n_items + items
        if self._train_keys.numel() == 0:
            return torch.zeros_like(keys, dtype=torch.bool)
        pos = torch.searchsorted(self._train_keys, keys).clamp_(max=self._train_keys.numel() - 1)
        return self._train_keys[pos] == keys

    def sample_negatives(self, users: Tensor, generator: torch.Generator) -> Tensor:
        """One item per entry of `users`, uniform over the items that user has no training interaction with.

        Rejection sampling: draw uniformly, redraw only the draws that hit a training pair.
        """
        items = torch.randint(self.n_items, users.shape, generator=generator, device=self.device)
        redo = self._is_train(users, items).nonzero().squeeze(1)
        for _ in range(10_000):
            if redo.numel() == 0:
                return items
            items[redo] = torch.randint(self.n_items, redo.shape, generator=generator, device=self.device)
            redo = redo[self._is_train(users[redo], items[redo])]
        raise RuntimeError("negative sampling did not converge; some user interacts with nearly every item")

    def epoch_samples(self, generator: torch.Generator, num_neg: int = 4) -> tuple[Tensor, Tensor, Tensor]:
        """Positives plus `num_neg` fresh negatives per positive (labels all 0), shuffled.

        Returns users (N,), items (N,), labels (N, K) with N = P * (1 + num_neg), all on `self.device`.
        `generator` must live on the same device (`mbkit.utils.make_generator(seed, data.device)`).
        """
        if torch.device(generator.device).type != self.device.type:
            raise ValueError(f"generator is on {generator.device} but the data is on {self.device}; "
                             "use mbkit.utils.make_generator(seed, data.device)")
        if num_neg < 0:
            raise ValueError(f"num_neg={num_neg} must be >= 0")
        neg_users = self.users.repeat_interleave(num_neg)  # (P * num_neg,)
        neg_items = self.sample_negatives(neg_users, generator)
        users = torch.cat([self.users, neg_users])
        items = torch.cat([self.items, neg_items])
        labels = torch.cat([self.labels, self.labels.new_zeros(len(neg_users), len(self.tasks))])
        perm = torch.randperm(len(users), generator=generator, device=self.device)
        return users[perm], items[perm], labels[perm]

    def batches(self, batch_size: int, generator: torch.Generator,
                num_neg: int = 4) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        """One epoch of shuffled mini-batches `(users (B,), items (B,), labels (B, K))`, device slices."""
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be >= 1")
        users, items, labels = self.epoch_samples(generator, num_neg)
        for start in range(0, len(users), batch_size):
            batch = slice(start, start + batch_size)
            yield users[batch], items[batch], labels[batch]

    def to(self, device: str | torch.device) -> "TaskData":
        """The same data on another device (`"auto"` resolves as everywhere in mbkit)."""
        device = resolve_device(device)
        if device == self.device:
            return self
        move = lambda csr: CSR(csr.indptr.to(device), csr.indices.to(device))  # noqa: E731
        return TaskData(self.tasks, self.target, self.n_users, self.n_items, device, self.users.to(device),
                        self.items.to(device), self.labels.to(device), move(self.train_csr),
                        move(self.valid_csr), move(self.test_csr), self.user_ids, self.item_ids, dict(self.meta))

    def eval_users(self, split: str) -> Tensor:
        """Users with at least one held-out purchase in `split` ("valid" or "test"), ascending."""
        if split not in ("valid", "test"):
            raise ValueError(f"split={split!r}; use 'valid' or 'test'")
        csr = self.valid_csr if split == "valid" else self.test_csr
        return (csr.row_lengths() > 0).nonzero().squeeze(1)


def build_task_data(log: pd.DataFrame, *, target: str = "buy", seed: int = 0,
                    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
                    device: str | torch.device = "auto") -> TaskData:
    """Split the distinct `target` pairs train/valid/test at random and build the training samples.

    The held-out (valid/test) target pairs are removed from every auxiliary behavior, so no held-out pair
    is a training positive. Tasks are the behaviors present, target first then `BEHAVIORS` order. The
    split depends only on `seed` (numpy), not on the device.
    """
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-9:
        raise ValueError(f"fractions={fractions} must be three non-negative numbers summing to 1")
    codes = _behavior_codes(log)
    _check_ids(log)
    present = _present(codes)
    _check_target(present, target)
    tasks = (target, *[b for b in BEHAVIORS if b != target and b in present])
    device = resolve_device(device)

    user_ids, users = np.unique(log["user_id"].to_numpy(), return_inverse=True)
    item_ids, items = np.unique(log["item_id"].to_numpy(), return_inverse=True)
    n_users, n_items = len(user_ids), len(item_ids)
    keys = users.astype(np.int64) * n_items + items
    task_keys = {b: sorted_unique(keys[codes == BEHAVIORS.index(b)]) for b in tasks}

    bought = task_keys[target]
    perm = np.random.default_rng(seed).permutation(len(bought))
    n_train = int(round(fractions[0] * len(bought)))
    n_valid = int(round(fractions[1] * len(bought)))
    train_buy, valid, test = (np.sort(bought[perm[:n_train]]), np.sort(bought[perm[n_train:n_train + n_valid]]),
                              np.sort(bought[perm[n_train + n_valid:]]))
    held = np.union1d(valid, test)
    task_keys = {b: train_buy if b == target else k[~np.isin(k, held, assume_unique=True)]
                 for b, k in task_keys.items()}
    positives = sorted_unique(np.concatenate(list(task_keys.values())))
    labels = np.stack([np.isin(positives, task_keys[b], assume_unique=True) for b in tasks], axis=1)

    return TaskData(
        tasks=tasks, target=target, n_users=n_users, n_items=n_items, device=device,
        users=torch.from_numpy(positives // n_items).to(device),
        items=torch.from_numpy(positives % n_items).to(device),
        labels=torch.from_numpy(labels.astype(np.float32)).to(device),
        train_csr=csr_from_keys(positives, n_users, n_items, device),
        valid_csr=csr_from_keys(valid, n_users, n_items, device),
        test_csr=csr_from_keys(test, n_users, n_items, device),
        user_ids=user_ids, item_ids=item_ids,
        meta={"source": log.attrs.get("source"), "filter": log.attrs.get("filter"), "split_seed": int(seed),
              "fractions": [float(f) for f in fractions]},
    )


def sample_summary(data: TaskData) -> pd.DataFrame:
    """Per task: distinct training pairs (positives labelled 1) and, for the target, held-out pairs."""
    train = data.labels.sum(0).long().tolist()
    held = {"valid": int(data.valid_csr.indices.numel()), "test": int(data.test_csr.indices.numel())}
    rows = {task: {"train": train[k], **{s: held[s] if task == data.target else 0 for s in held}}
            for k, task in enumerate(data.tasks)}
    out = pd.DataFrame.from_dict(rows, orient="index", columns=["train", "valid", "test"])
    out.index.name = "task"
    out.loc["positives (any task)"] = [int(data.users.numel()), 0, 0]
    return out.astype("int64")


class LeakageError(ValueError):
    """A held-out pair is also a training pair (or in both held-out splits)."""


def check_no_leakage(data: TaskData) -> None:
    """Raise `LeakageError` if a valid/test purchase pair is a training pair of any task, or in both splits.

    A real exception, not `assert`: the check survives `python -O`.
    """
    def keys(csr: CSR) -> Tensor:
        rows = torch.repeat_interleave(torch.arange(data.n_users, device=csr.indptr.device), csr.row_lengths())
        return rows * data.n_items + csr.indices

    train = torch.sort(data.users * data.n_items + data.items).values
    for split, csr in (("valid", data.valid_csr), ("test", data.test_csr)):
        held = keys(csr)
        if train.numel() and held.numel():
            hits = int((train[torch.searchsorted(train, held).clamp_(max=train.numel() - 1)] == held).sum())
            if hits:
                raise LeakageError(f"{hits} {split} {data.target} pairs are training positives (leakage); build "
                                   "the data with build_task_data, which removes held-out pairs from training")
        if not torch.equal(keys(data.train_csr), data._train_keys):
            raise LeakageError("train_csr does not match the training positives; rebuild the data with "
                               "build_task_data instead of editing its tensors")
    overlap = int(torch.isin(keys(data.valid_csr), keys(data.test_csr)).sum())
    if overlap:
        raise LeakageError(f"{overlap} pairs are in both valid and test; rebuild the data with build_task_data")


def __getattr__(name: str) -> Any:
    # `mbkit.data.synthesize` stays where users found it; the world model itself lives in mbkit.synthetic
    if name == "synthesize":
        from mbkit.synthetic import synthesize
        return synthesize
    raise AttributeError(f"module 'mbkit.data' has no attribute {name!r}")
