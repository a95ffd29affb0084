"""The raw log -> Table-1 statistics and the filtered log, in bounded memory (or the built-in world)."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import polars as pl
import torch

from mbkit.data.filter import (check_not_empty, check_target, check_thresholds, filter_log, filter_settings,
                               log_stats, surviving)
from mbkit.data.read import (PolarsError, bad_rows, check_last_line, classify, compact_ids, good_rows,
                             out_of_window, plain_csv, raise_empty, scan_lines, schema, to_pandas)
from mbkit.data.schema import BEHAVIORS, COLUMNS, DEFAULT_FILTER_MODE, FILTER_MODES, STATS_COLUMNS, FilterMode
from mbkit.data import public
from mbkit.data.split import TaskData, build_task_data
from mbkit.data.synthetic import synthesize
from mbkit.utils import setting

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
    """Rows, null cells per column, rows per behavior and rows outside the window, in one streaming pass."""
    out = ipc.select(rows=pl.len(), out_of_window=out_of_window(pl.col("timestamp")),
                     **{f"null_{c}": pl.col(c).is_null().sum() for c in COLUMNS},
                     **{b: (pl.col("behavior") == b).sum() for b in BEHAVIORS}).collect(engine="streaming")
    return {k: int(v or 0) for k, v in out.row(0, named=True).items()}


def _stage_validated(csv: str, name: str, tmp: str, skip_bad_rows: bool) -> tuple[pl.LazyFrame, dict, int]:
    """Stage the typed rows of `csv` (validated as in `read_userbehavior`): (scan, counts, skipped)."""
    error: Exception | None = None
    for attempt, id_dtype in enumerate((pl.Int32, pl.Int64)):  # Int64 only if some id overflows int32
        lf = pl.scan_csv(csv, has_header=False, schema=schema(id_dtype), quote_char=None)
        try:
            ipc = _stage(lf, os.path.join(tmp, f"typed{attempt}"))
            counts = _counts(ipc)
        except PolarsError as e:  # a value that does not parse
            error = e
        else:
            if counts["rows"] and not any(counts[f"null_{c}"] for c in COLUMNS):
                return ipc, counts, 0
            error = None  # short rows, empty fields or blank lines: the diagnosis tells which
        if n_bad := bad_rows(csv, name, skip_bad_rows):
            ipc = _stage(good_rows(classify(scan_lines(csv)), pl.Int64), os.path.join(tmp, "good"))
            return ipc, _counts(ipc), n_bad
        if error is None:  # only blank lines, which carry no data
            ipc = _stage(ipc.filter(~pl.all_horizontal(pl.all().is_null())), os.path.join(tmp, "noblank"))
            return ipc, _counts(ipc), 0
    # every row is well-formed as the diagnosis reads it (it accepts spaces around a number): read it that way
    ipc = _stage(good_rows(classify(scan_lines(csv)), pl.Int64), os.path.join(tmp, "lenient"))
    return ipc, _counts(ipc), 0


def load_filtered(source: str | os.PathLike = "synthetic", *, target: str = "buy",
                  mode: FilterMode = DEFAULT_FILTER_MODE, min_user_items: int = 10, min_item_users: int = 10,
                  skip_bad_rows: bool = False,
                  synthetic_size: tuple[int, int] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Raw + filtered Table-1 statistics and the filtered log, in bounded memory.

    `source` is a path to the raw log (`.csv`, `.zip`, `.csv.gz`) or "synthetic" for `synthesize()`'s
    default (`synthetic_size=(n_users, n_items)` for another size, e.g. notebook 06's half-size world). A
    file is never materialised: the polars streaming engine parses it once into temporary
    IPC files (about 21 bytes a row, in the system temp directory; `.zip`/`.gz` are first decompressed
    there), then streaming queries over them give the statistics, the distinct `target` pairs and the
    rows of the surviving users x items (`benchmarks/read_filter.py` measures time and peak memory). Rows
    are validated as in `read_userbehavior`, with the same errors and `skip_bad_rows` (raw statistics then
    count the kept rows). Returns `(stats, filtered_log)`: stats with rows "raw" and "filtered" as
    `log_stats` gives them, the filtered log as `read_userbehavior` would return it, in file order. Rows
    dated outside the log's nine days (the published file has some) are kept and counted in
    `stats.attrs["out_of_window_rows"]` and the filtered log's `attrs["rows"]`; a file cut mid-line is an
    error.
    """
    check_thresholds(min_user_items, min_item_users)
    kw = dict(target=target, mode=mode, min_user_items=min_user_items, min_item_users=min_item_users)
    synthetic = isinstance(source, str) and source == "synthetic"
    if synthetic_size is not None and not synthetic:
        raise ValueError(f"synthetic_size={synthetic_size!r} sizes the built-in world only; {source!r} is a file, "
                         "whose size is its own: leave synthetic_size out")
    if synthetic:
        raw = synthesize(*synthetic_size) if synthetic_size is not None else synthesize()
        filtered = filter_log(raw, **kw)
        filtered.attrs["source"] = "synthetic"
        stats = log_stats({"raw": raw, "filtered": filtered})
        stats.attrs["out_of_window_rows"] = 0
        return stats, filtered
    with plain_csv(source) as (csv, name), tempfile.TemporaryDirectory(prefix="mbkit-") as tmp:
        if os.path.getsize(csv) == 0:
            raise_empty(name)
        check_last_line(csv, name)
        ipc, counts, skipped = _stage_validated(csv, name, tmp, skip_bad_rows)
        check_target({b for b in BEHAVIORS if counts[b]}, target)
        raw = {"users": ipc.select("user_id").unique().select(pl.len()).collect(engine="streaming").item(),
               "items": ipc.select("item_id").unique().select(pl.len()).collect(engine="streaming").item(),
               **{b: counts[b] for b in BEHAVIORS}}
        pairs = (ipc.filter(pl.col("behavior") == target).select("user_id", "item_id").unique()
                 .collect(engine="streaming"))
        kept_u, kept_i = surviving(pairs["user_id"].to_numpy(), pairs["item_id"].to_numpy(), target=target,
                                   min_user_items=min_user_items, min_item_users=min_item_users, mode=mode)
        kept = ipc
        if kept_u is not None:
            kept = kept.filter(pl.col("user_id").is_in(pl.Series(kept_u).implode()))
        if kept_i is not None:
            kept = kept.filter(pl.col("item_id").is_in(pl.Series(kept_i).implode()))
        filtered = to_pandas(compact_ids(kept.collect(engine="streaming")))
        check_not_empty(len(filtered), target, min_user_items, min_item_users, mode)
    stats = pd.concat([pd.DataFrame([raw], index=["raw"]), log_stats({"filtered": filtered})])
    stats = stats[list(STATS_COLUMNS)].astype("int64")
    stats.attrs["skipped_rows"] = skipped
    stats.attrs["out_of_window_rows"] = counts["out_of_window"]
    filtered.attrs.update(skipped_rows=skipped, source=str(Path(source)),
                          rows={"skipped": skipped, "outside_window": counts["out_of_window"]},
                          filter=filter_settings(target, min_user_items, min_item_users, mode))
    return stats, filtered


SPLITS = ("project", "source")


@dataclass
class DataConfig:
    """Where a run's data come from and how they are filtered and split: the arguments of `load_filtered`
    and `build_task_data`, defined once (the command line's data flags are generated from these fields)."""

    data: str = setting("synthetic", "'synthetic' (the built-in world), a public set fetched with `mbkit data fetch` "
                        "(`mbkit data list`), or the path of UserBehavior.csv (or its .zip / .csv.gz)")
    target: str = setting("buy", "the target behavior; the other behaviors present become auxiliary tasks",
                          choices=BEHAVIORS)
    filter_mode: str = setting(DEFAULT_FILTER_MODE, "once: the 10/10 thresholds computed once on the raw log; "
                               "kcore: iterated to a fixed point", choices=FILTER_MODES)
    min_user_items: int = setting(10, "users keep >= this many distinct purchased items (0: every user)")
    min_item_users: int = setting(10, "items keep >= this many distinct buyers (0: every item)")
    skip_bad_rows: bool = setting(False, "skip malformed rows of the log (their count is reported) instead of "
                                  "refusing the file")
    split: str = setting("project", "project: the study's random 70/15/15 split of the purchases; source: a public "
                         "set's own split (with the thresholds at 0: the set as published)", choices=SPLITS)
    split_seed: int = setting(0, "seed of the 70/15/15 purchase split")
    synthetic_size: tuple[int, int] | None = setting(None, "USERS ITEMS: the built-in world's size before the "
                                                     "filter (none: 30000 10000)", metavar=("USERS", "ITEMS"))

    def __post_init__(self) -> None:
        """Everything that can be checked before the log is read (reading the real log takes a minute)."""
        self.data = str(self.data)
        if self.data != "synthetic" and self.data not in public.names():
            path = Path(self.data)
            if not path.exists():
                raise ValueError(f"data {self.data!r}: no such file, nor a public set ({', '.join(public.names())}); "
                                 "pass the path of UserBehavior.csv (or its .zip / .csv.gz), a set's name, or "
                                 "'synthetic'")
            if path.is_dir():
                raise ValueError(f"data {self.data!r} is a folder; pass the UserBehavior.csv file inside it")
            if not path.is_file():
                raise ValueError(f"data {self.data!r} is not a regular file (a device or a pipe); pass the path of "
                                 "UserBehavior.csv (or its .zip / .csv.gz)")
        if self.target not in BEHAVIORS:
            raise ValueError(f"target {self.target!r} is not a behavior; use one of {', '.join(BEHAVIORS)}")
        if self.filter_mode not in FILTER_MODES:
            raise ValueError(f"filter_mode {self.filter_mode!r}; use 'once' (thresholds computed once) or 'kcore'")
        check_thresholds(self.min_user_items, self.min_item_users)
        if self.split not in SPLITS:
            raise ValueError(f"split {self.split!r}; use 'project' (the study's 70/15/15) or 'source' (a public set's)")
        if self.split == "source":
            if self.data not in public.registry():
                raise ValueError(f"split='source' needs a public set that splits its own purchases "
                                 f"({', '.join(public.registry())}); {self.data!r} is none: use split='project'")
            if self.min_user_items or self.min_item_users:
                raise ValueError("split='source' evaluates on the source's own held-out purchases, so its data are "
                                 "used as published: set min_user_items and min_item_users to 0")
        if isinstance(self.split_seed, bool) or not isinstance(self.split_seed, int) or self.split_seed < 0:
            raise ValueError(f"split_seed={self.split_seed!r} must be a non-negative integer")
        if self.synthetic_size is not None:
            self.synthetic_size = tuple(int(n) for n in self.synthetic_size)  # type: ignore[assignment]
            if len(self.synthetic_size) != 2:
                raise ValueError(f"synthetic_size={self.synthetic_size!r}: give two numbers, users and items")
            if self.data != "synthetic":
                raise ValueError(f"synthetic_size={self.synthetic_size!r} sizes the built-in world only; {self.data!r} "
                                 "is a file, whose size is its own: leave synthetic_size out")
        if self.data in public.names():
            public.log_path(self.data)  # fetched?

    def read(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        """The Table-1 statistics (raw and filtered) and the filtered log (`load_filtered`)."""
        named = self.data in public.names()
        stats, log = load_filtered(public.log_path(self.data) if named else self.data, target=self.target,
                                   mode=self.filter_mode, min_user_items=self.min_user_items,
                                   min_item_users=self.min_item_users, skip_bad_rows=self.skip_bad_rows,
                                   synthetic_size=self.synthetic_size)
        if named:  # a set is identified by its name; its converted log has no dates of UserBehavior's window
            log.attrs.update(source=self.data, rows={**(log.attrs.get("rows") or {}), "outside_window": None})
            stats.attrs["out_of_window_rows"] = None
        return stats, log

    def task_data(self, log: pd.DataFrame, device: str | torch.device = "auto") -> TaskData:
        """The leakage-free split of a filtered log into device-resident task samples (`build_task_data`)."""
        held_out = public.source_split(self.data) if self.split == "source" else None
        return build_task_data(log, target=self.target, seed=self.split_seed, device=device, held_out=held_out)

    def load(self, device: str | torch.device = "auto") -> tuple[pd.DataFrame, TaskData]:
        """`read` then `task_data`: the statistics and the task data."""
        stats, log = self.read()
        return stats, self.task_data(log, device)
