"""Reading the raw log as published, validating every row, and writing it back.

`read_userbehavior` reads the Tianchi UserBehavior-2017 file (`.csv`, the `.zip` it ships in, or `.csv.gz`)
into memory; `mbkit.data.load` streams the same validation over a 3.5 GB file in bounded memory.
Rows are `user_id,item_id,category_id,behavior,timestamp` (no header); a malformed row is an error that
names the file, the line and the expected format, unless `skip_bad_rows=True` skips and counts it.
"""

from __future__ import annotations

import gzip
import os
import tempfile
import warnings
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import polars as pl

from mbkit.data.schema import BEHAVIORS, COLUMNS, FORMAT, ID_COLUMNS, WINDOW

BEHAVIOR_DTYPE = pl.Enum(list(BEHAVIORS))
PolarsError = pl.exceptions.PolarsError
_N_SHOWN = 5  # offending lines quoted in an error message


def schema(id_dtype: pl.DataType) -> dict[str, pl.DataType]:
    return {"user_id": id_dtype, "item_id": id_dtype, "category_id": id_dtype,
            "behavior": BEHAVIOR_DTYPE, "timestamp": pl.Int64}


def _compression(path: Path) -> str | None:
    """".zip" or ".gz" by the file's first bytes (a .zip or .gz renamed .csv is still one), else by its name,
    else None (a plain text file)."""
    with open(path, "rb") as f:
        head = f.read(4096)
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return ".zip"
    if head.startswith(b"\x1f\x8b"):
        return ".gz"
    if path.suffix.lower() in (".zip", ".gz"):
        return path.suffix.lower()  # named as an archive but not one: its reader says what is wrong
    if b"\x00" in head:
        raise ValueError(f"{path} is a binary file (it holds NUL bytes), neither a text log nor a zip or gzip archive "
                         "of one; pass the UserBehavior.csv file (or its .zip / .csv.gz)")
    return None


@contextmanager
def plain_csv(path: str | os.PathLike) -> Iterator[tuple[str, str]]:
    """Yield `(csv_path, name)`: a zip archive or a gzip file (known by its first bytes, whatever its name) is
    streamed to a temporary plain file first; a binary file that is neither is refused.

    Decompressing to disk (not memory) keeps the bounded-memory path bounded for the 3.5 GB file.
    """
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{path}: no such file; pass the path of UserBehavior.csv (or its .zip / .csv.gz)")
    if not path.is_file():
        raise ValueError(f"{path} is {'a folder' if path.is_dir() else 'not a regular file (a device or a pipe)'}; "
                         "pass the path of UserBehavior.csv (or its .zip / .csv.gz)")
    suffix = _compression(path)
    if suffix is None:
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
                    with zf.open(members[0]) as src:
                        _extract(src, plain, path)
            except (zipfile.BadZipFile, EOFError, zlib.error, OSError) as e:
                if isinstance(e, OSError) and e.filename is not None:  # e.g. the archive may not be read
                    raise
                raise ValueError(f"{path}: not a readable zip archive ({e}); the download is probably "
                                 "truncated or corrupted: download it again, or pass the extracted .csv") from None
        else:
            name = str(path)
            try:
                with gzip.open(path, "rb") as src:
                    _extract(src, plain, path)
            except (OSError, EOFError) as e:
                raise ValueError(f"{path}: not a readable gzip file ({e})") from None
        yield plain, name


class ExtractError(ValueError):
    """The temporary copy of a decompressed log could not be written (a full or unwritable temporary folder)."""


def _write(dst: Any, chunk: bytes) -> None:
    dst.write(chunk)


def _extract(src: Any, plain: str, path: Path) -> None:
    """Copy the decompressed stream `src` to `plain`: errors reading it are the archive's, errors writing are the
    temporary folder's, and are said so."""
    try:
        dst = open(plain, "wb")
    except OSError as e:
        raise ExtractError(_no_room(path, plain, e)) from None
    with dst:
        while chunk := src.read(1 << 24):
            try:
                _write(dst, chunk)
            except OSError as e:
                raise ExtractError(_no_room(path, plain, e)) from None


def _no_room(path: Path, plain: str, e: OSError) -> str:
    return (f"{path}: could not decompress it into the temporary folder {Path(plain).parent.parent} "
            f"({e.strerror or e}); free space there, or set TMPDIR to a folder with room")


def scan_lines(csv: str) -> pl.LazyFrame:
    """The file as one string column `line` with its 1-based `line_no` (blank lines included)."""
    return (pl.scan_csv(csv, has_header=False, separator="\x1f", quote_char=None, encoding="utf8-lossy",
                        schema={"line": pl.String}, truncate_ragged_lines=True)
            .with_row_index("line_no", offset=1))


def _field(j: int) -> pl.Expr:
    """Field j of the split line; ids and timestamps may carry spaces (the typed reader accepts them)."""
    raw = pl.col("_parts").list.get(j, null_on_oob=True)
    return raw if COLUMNS[j] == "behavior" else raw.str.strip_chars()


def classify(lines: pl.LazyFrame) -> pl.LazyFrame:
    """Add `blank` (ignored) and `reason` (null for a well-formed row) to `_scan_lines`' frame."""
    line = pl.col("line").fill_null("").str.strip_chars()
    n = pl.col("_parts").list.len()

    def not_int(j: int) -> pl.Expr:
        return _field(j).cast(pl.Int64, strict=False).is_null()

    def got(j: int) -> pl.Expr:
        return pl.format("'{}'", _field(j))

    reason = pl.when(pl.col("blank")).then(None)
    reason = reason.when(line.str.contains("\ufffd", literal=True)).then(pl.lit("holds bytes that are not UTF-8 text"))
    reason = reason.when(n != 5).then(pl.format(f"expected 5 comma-separated fields ({FORMAT}), found {{}}", n))
    for j, col in enumerate(COLUMNS):
        if col == "behavior":
            reason = reason.when(~_field(j).is_in(list(BEHAVIORS))).then(
                pl.format("behavior must be one of {}, got {}", pl.lit("|".join(BEHAVIORS)), got(j)))
        else:
            what = "an integer (Unix seconds)" if col == "timestamp" else "an integer id"
            reason = reason.when(not_int(j)).then(pl.format(f"{col} must be {what}, got {{}}", got(j)))
    return (lines.with_columns(blank=line == "", _parts=line.str.split(","))
            .with_columns(reason=reason.otherwise(None)))


def good_rows(classified: pl.LazyFrame, id_dtype: pl.DataType) -> pl.LazyFrame:
    """The well-formed rows of a classified line frame, parsed to the typed schema."""
    parsed = [(_field(j).cast(pl.Int64).cast(id_dtype) if c in ID_COLUMNS
               else _field(j).cast(BEHAVIOR_DTYPE) if c == "behavior"
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
                "Fix the file, or skip such rows (--skip-bad-rows, skip_bad_rows=True; the count skipped is "
                "reported).")
        return (f"{name}: {self.n_bad:,} malformed row(s) out of {self.n_good + self.n_bad:,} (first at "
                f"line(s) {lines}); expected {FORMAT} with integer ids, behavior in "
                f"{'|'.join(BEHAVIORS)} and integer Unix seconds:\n{shown}\n{hint}{todo}")


def _diagnose(csv: str) -> _Diagnosis:
    """The slow path: classify every line (streaming) to locate the offending rows."""
    classified = classify(scan_lines(csv))
    counts, first = pl.collect_all([
        classified.select(n_good=(pl.col("reason").is_null() & ~pl.col("blank")).sum(),
                          n_bad=pl.col("reason").is_not_null().sum()),
        classified.filter(pl.col("reason").is_not_null()).select("line_no", "reason", "line")
        .sort("line_no").head(_N_SHOWN),
    ], engine="streaming")
    return _Diagnosis(int(counts["n_good"][0]), int(counts["n_bad"][0]), first)


def check_last_line(csv: str, name: str) -> None:
    """Raise if the file ends mid-line: no final line end and a last row that is incomplete (a download or
    copy cut short). A complete last row without a final newline passes, whenever it is dated: a timestamp
    counts as cut only when it has fewer digits than any timestamp of the log's window."""
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
    elif len(parts[4].lstrip("-")) < len(str(WINDOW[0])) and not WINDOW[0] <= int(parts[4]) < WINDOW[1]:
        problem = f"ends in timestamp {parts[4]}, shorter than the log's ({len(str(WINDOW[0]))} digits)"
    if problem:
        raise ValueError(f"{name}: the file is cut mid-line: its last line {last[:80]!r} has no line end and "
                         f"{problem}; the file was truncated (an interrupted download, copy or extraction): "
                         "get it again")


def out_of_window(ts: pl.Expr, window: tuple[int, int] = WINDOW) -> pl.Expr:
    return ((ts < window[0]) | (ts >= window[1])).sum()


def raise_empty(name: str) -> None:
    raise ValueError(f"{name}: the file is empty (no rows); expected lines of {FORMAT}, "
                     "e.g. 1,2268318,2520377,pv,1511544070")


def _report_skipped(name: str, n_bad: int) -> None:
    warnings.warn(f"{name}: skipped {n_bad:,} malformed row(s) (skip_bad_rows=True)", stacklevel=3)


def compact_ids(df: pl.DataFrame) -> pl.DataFrame:
    """Store ids as int32 when every id fits (the real log's largest id is about 5.16 M)."""
    info = np.iinfo(np.int32)
    casts = [pl.col(c).cast(pl.Int32) for c in ID_COLUMNS if df[c].dtype != pl.Int32 and
             (df.height == 0 or (df[c].min() >= info.min and df[c].max() <= info.max))]
    return df.with_columns(casts) if casts else df


def to_pandas(df: pl.DataFrame) -> pd.DataFrame:
    """polars -> pandas without pyarrow; behavior becomes a Categorical over `BEHAVIORS`."""
    codes = df["behavior"].to_physical().to_numpy().astype(np.int8)
    return pd.DataFrame({
        **{c: df[c].to_numpy() for c in ID_COLUMNS},
        "behavior": pd.Categorical.from_codes(codes, categories=list(BEHAVIORS)),
        "timestamp": df["timestamp"].to_numpy().astype(np.int64),
    })


def bad_rows(csv: str, name: str, skip_bad_rows: bool) -> int:
    """After a typed read failed or found nulls: raise on bad rows (or an empty file) unless they are to be
    skipped, and return how many bad rows there are (0: only blank lines, which carry no data)."""
    diag = _diagnose(csv)
    if diag.n_bad == 0 and diag.n_good == 0:
        raise_empty(name)
    if diag.n_bad and (not skip_bad_rows or diag.n_good == 0):
        raise ValueError(diag.message(name))
    if diag.n_bad:
        _report_skipped(name, diag.n_bad)
    return diag.n_bad


def _read_polars(csv: str, name: str, skip_bad_rows: bool) -> tuple[pl.DataFrame, int]:
    """Typed read with validation: fast path first, diagnostic pass only when it fails."""
    if os.path.getsize(csv) == 0:
        raise_empty(name)
    error: Exception | None = None
    for id_dtype in (pl.Int32, pl.Int64):  # Int64 only if some id overflows int32
        try:
            df = pl.read_csv(csv, has_header=False, schema=schema(id_dtype), quote_char=None)
        except PolarsError as e:
            error = e
        else:
            if df.height and not any(df.null_count().row(0)):
                return compact_ids(df), 0
            error = None  # nulls: short rows, empty fields or blank lines; the diagnosis tells which
        if n_bad := bad_rows(csv, name, skip_bad_rows):
            good = good_rows(classify(scan_lines(csv)), pl.Int64).collect(engine="streaming")
            return compact_ids(good), n_bad
        if error is None:  # only blank lines, which carry no data
            return compact_ids(df.filter(~pl.all_horizontal(pl.all().is_null()))), 0
    # every row is well-formed as the diagnosis reads it (it accepts spaces around a number), though the typed
    # reader refused one: read the rows the diagnosis's way
    return compact_ids(good_rows(classify(scan_lines(csv)), pl.Int64).collect(engine="streaming")), 0


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
    with plain_csv(path) as (csv, name):
        check_last_line(csv, name)
        df, skipped = _read_polars(csv, name, skip_bad_rows)
    out = to_pandas(df)
    out.attrs["skipped_rows"] = skipped
    out.attrs["out_of_window_rows"] = int(df.select(out_of_window(pl.col("timestamp"))).item() or 0)
    out.attrs["rows"] = {"skipped": skipped, "outside_window": out.attrs["out_of_window_rows"]}
    out.attrs["source"] = str(Path(path))
    return out


def write_userbehavior(log: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write a log in the published format (no header; `.csv`, `.csv.gz`, or `.zip` holding UserBehavior.csv)."""
    path = Path(path)
    codes = pd.Categorical(log["behavior"], categories=list(BEHAVIORS)).codes
    if (codes < 0).any():
        raise ValueError(f"cannot write {path}: behavior values outside {BEHAVIORS}")
    df = pl.DataFrame({c: log[c].to_numpy() for c in ID_COLUMNS}).with_columns(
        behavior=pl.Series(codes.astype(np.uint8)).replace_strict(list(range(len(BEHAVIORS))), list(BEHAVIORS),
                                                                  return_dtype=BEHAVIOR_DTYPE),
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
