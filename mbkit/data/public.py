"""The field's public multi-behavior sets, fetched at pinned commits and converted to the canonical log.

`public_datasets.json` (carried in from the reference, with its source) lists each set's repository, commit,
files, their roles (a behavior, and for purchases the source's own train / valid / test split) and git blob
ids. `fetch(name)` downloads and verifies the files into the cache (`cache_dir()`: `$MBKIT_CACHE`, else the
user's cache folder), or copies them from a folder downloaded by hand (`source_dir`), and `convert` writes:

- `log.csv`: every pair in the UserBehavior schema, so that the whole pipeline reads it as it reads the real
  log (`user_id,item_id,category_id,behavior,timestamp`; the sets carry no category or time, so both are
  constants: category 0, the log window's first second);
- `split.csv`: the source's own split of the purchases (`user_id,item_id,split`), for `split="source"`;
- `converted.json` last, with the counts: a set is ready when it exists.

Both file formats of the sets are read by one reader: a line is `user item [item ...]`, whitespace-separated
(a pair line is an adjacency line with one item), ids kept as given (0- or 1-based alike).

The IJCAI-15 Tmall user log (`user_log_format1.csv`, Tianchi, downloaded by hand like UserBehavior) is a raw
log of another schema: `user_id,item_id,cat_id,seller_id,brand_id,time_stamp,action_type` with action_type 0
click, 1 add-to-cart, 2 purchase, 3 add-to-favourite (the competition's data description), mapped to pv, cart,
buy and fav; `time_stamp` is a month and day (mmdd) of 2015.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import polars as pl

from mbkit.data.download import FetchError, base_url, copy_verified, download
from mbkit.data.schema import BEHAVIORS, WINDOW
from mbkit.utils import atomic_write

REGISTRY_FILE = Path(__file__).with_name("public_datasets.json")
RAW_LOGS: dict[str, dict[str, Any]] = {
    "tmall-ijcai15": {
        "file": "user_log_format1.csv",
        "source": "Tianchi IJCAI-15 repeat buyers (by hand)",
        "actions": {0: "pv", 1: "cart", 2: "buy", 3: "fav"},  # click, add-to-cart, purchase, add-to-favourite
        "year": 2015,
    },
}
SPLITS = ("train", "valid", "test")


def registry() -> dict[str, dict[str, Any]]:
    """The public sets by name (repository, commit, files with roles and blob ids, notes): the project's list, or
    the file named by `$MBKIT_REGISTRY` (the same schema; sets of your own, or a mirror's)."""
    return json.loads(Path(os.environ.get("MBKIT_REGISTRY") or REGISTRY_FILE).read_text())["sets"]


def names() -> list[str]:
    return [*registry(), *RAW_LOGS]


def cache_dir() -> Path:
    """`$MBKIT_CACHE`, else the user's cache folder (XDG on Linux, ~/Library/Caches on macOS, LOCALAPPDATA on
    Windows), in an `mbkit` folder."""
    if os.environ.get("MBKIT_CACHE"):
        return Path(os.environ["MBKIT_CACHE"])
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "mbkit"
    if sys.platform == "win32" and os.environ.get("LOCALAPPDATA"):
        return Path(os.environ["LOCALAPPDATA"]) / "mbkit" / "Cache"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mbkit"


def folder(name: str) -> Path:
    return cache_dir() / name


def is_ready(name: str) -> bool:
    return (folder(name) / "converted.json").is_file()


def log_path(name: str) -> Path:
    """The canonical log of a fetched set; a set that is not in the cache is an error that says how to get it."""
    if name not in names():
        raise ValueError(f"{name!r} is not a public set; the sets are {', '.join(names())}")
    if not is_ready(name):
        how = (f"python -m mbkit data fetch {name} --from DIR (DIR holding {RAW_LOGS[name]['file']})"
               if name in RAW_LOGS else f"python -m mbkit data fetch {name}")
        raise ValueError(f"data {name!r} is not in the cache ({cache_dir()}): run `{how}` first")
    return folder(name) / "log.csv"


def source_split(name: str) -> pd.DataFrame:
    """The source's own split of a fetched set's purchases: user_id, item_id, split (train / valid / test)."""
    path = folder(name) / "split.csv"
    if not path.is_file():
        raise ValueError(f"{name!r} has no split of its own (only the sets whose files split their purchases do); use "
                         "split='project'")
    df = pl.read_csv(path, schema={"user_id": pl.Int64, "item_id": pl.Int64, "split": pl.String})
    return pd.DataFrame({c: df[c].to_numpy() for c in df.columns})


def _pairs(path: Path) -> pl.DataFrame:
    """`user item [item ...]` lines (pair or adjacency lines, whitespace-separated) as (user_id, item_id) rows."""
    lines = pl.read_csv(path, has_header=False, separator="\x1f", quote_char=None, schema={"line": pl.String},
                        encoding="utf8-lossy")
    tokens = lines.select(pl.col("line").str.strip_chars().str.replace_all(r"\s+", " ").str.split(" "))
    tokens = tokens.filter(pl.col("line").list.len() >= 2)
    out = tokens.select(user_id=pl.col("line").list.first(), item_id=pl.col("line").list.slice(1)).explode("item_id")
    bad = out.filter(pl.col("user_id").cast(pl.Int64, strict=False).is_null()
                     | pl.col("item_id").cast(pl.Int64, strict=False).is_null())
    if bad.height:
        first = bad.row(0)
        raise ValueError(f"{path}: {bad.height:,} entries are not integer ids (first: user {first[0]!r}, item "
                         f"{first[1]!r}); expected lines of 'user item [item ...]'")
    return out.select(pl.col("user_id").cast(pl.Int64), pl.col("item_id").cast(pl.Int64))


def _canonical(pairs: pl.DataFrame, behavior: str) -> pl.DataFrame:
    return pairs.with_columns(category_id=pl.lit(0, pl.Int64), behavior=pl.lit(behavior),
                              timestamp=pl.lit(WINDOW[0], pl.Int64))


def _write_csv(df: pl.DataFrame, path: Path) -> None:
    atomic_write(path, lambda tmp: df.write_csv(tmp, include_header=path.name == "split.csv"))


def convert(name: str) -> dict[str, Any]:
    """Write a fetched set's canonical log (and the source's split) into its cache folder; return the counts."""
    spec = registry()[name]
    parts, split = [], []
    for f in spec["files"]:
        behavior, _, role = f["role"].partition(":")
        pairs = _pairs(folder(name) / "files" / f["path"])
        parts.append(_canonical(pairs, behavior))
        if role:
            split.append(pairs.with_columns(split=pl.lit(role)))
    log = pl.concat(parts).select("user_id", "item_id", "category_id", "behavior", "timestamp")
    _write_csv(log, folder(name) / "log.csv")
    if split:
        _write_csv(pl.concat(split), folder(name) / "split.csv")
    return _finish(name, log, f"{spec['repo']}@{spec['commit']}")


def _finish(name: str, log: pl.DataFrame, source: str) -> dict[str, Any]:
    counts = {"users": log["user_id"].n_unique(), "items": log["item_id"].n_unique(),
              **{b: int((log["behavior"] == b).sum()) for b in BEHAVIORS}}
    when = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    atomic_write(folder(name) / "converted.json", json.dumps({"name": name, "source": source, "converted": when,
                                                              **counts}, indent=1) + "\n")
    return counts


def convert_raw(name: str, path: Path) -> dict[str, Any]:
    """Convert a raw log of another schema (`RAW_LOGS`) to the canonical log."""
    spec = RAW_LOGS[name]
    raw = pl.read_csv(path, infer_schema_length=10_000)
    need = {"user_id", "item_id", "cat_id", "time_stamp", "action_type"}
    if not need <= set(raw.columns):
        raise ValueError(f"{path}: expected the columns of {spec['file']} ({', '.join(sorted(need))} among them), "
                         f"found {raw.columns}; pass the user log of {spec['source']}")
    unknown = sorted(set(raw["action_type"].unique().to_list()) - set(spec["actions"]))
    if unknown:
        raise ValueError(f"{path}: action_type {unknown} is none of {sorted(spec['actions'])} (click, add-to-cart, "
                         "purchase, add-to-favourite)")
    mmdd = raw["time_stamp"].cast(pl.Int64)
    dates = pl.date(spec["year"], mmdd // 100, mmdd % 100)
    log = raw.select(pl.col("user_id").cast(pl.Int64), pl.col("item_id").cast(pl.Int64),
                     category_id=pl.col("cat_id").cast(pl.Int64),
                     behavior=pl.col("action_type").replace_strict(spec["actions"], return_dtype=pl.String),
                     timestamp=(dates.cast(pl.Datetime("ms")).dt.epoch("s")))
    _write_csv(log, folder(name) / "log.csv")
    return _finish(name, log, f"{spec['source']}: {path.name}")


def fetch(name: str, source_dir: str | os.PathLike | None = None, progress: bool | str = "auto") -> dict[str, Any]:
    """Download (or, from `source_dir`, copy) and verify a set's files, then convert them; returns the counts.

    Verified files stay in the cache, so a fetch that failed half-way resumes where it stopped."""
    if name in RAW_LOGS:
        spec = RAW_LOGS[name]
        if source_dir is None:
            raise FetchError(f"{name} is downloaded by hand ({spec['source']}): put {spec['file']} in a folder and run "
                             f"`python -m mbkit data fetch {name} --from FOLDER`")
        return convert_raw(name, Path(source_dir) / spec["file"])
    sets = registry()
    if name not in sets:
        raise FetchError(f"{name!r} is not a public set; the sets are {', '.join(names())}")
    spec = sets[name]
    for f in spec["files"]:
        final = folder(name) / "files" / f["path"]
        if source_dir is not None:
            copy_verified(Path(source_dir) / f["path"], final, f["blob"])
        else:
            download(f"{base_url()}/{spec['repo']}/{spec['commit']}/{f['path']}", final, f["blob"], f["bytes"],
                     progress)
    return convert(name)


def listing() -> list[dict[str, Any]]:
    """One row per set: name, source, behaviors, size of its files, whether it is in the cache."""
    rows = []
    for name, spec in registry().items():
        sizes = [f["bytes"] for f in spec["files"]]
        known = sum(s for s in sizes if s is not None) / 1e6
        size = f"{known:.1f} MB" + (" + a larger file" if None in sizes else "")
        behaviors = sorted({f["role"].split(":")[0] for f in spec["files"]}, key=BEHAVIORS.index)
        rows.append({"name": name, "source": f"{spec['repo']}@{spec['commit'][:7]}", "behaviors": " ".join(behaviors),
                     "size": size, "split": "own" if any(":" in f["role"] for f in spec["files"]) else "-",
                     "cached": "yes" if is_ready(name) else "no"})
    for name, spec in RAW_LOGS.items():
        rows.append({"name": name, "source": spec["source"], "behaviors": " ".join(BEHAVIORS), "size": "by hand",
                     "split": "-", "cached": "yes" if is_ready(name) else "no"})
    return rows


LICENCE = ("The repositories state no licence; the data come from Tianchi (Taobao, Tmall), JD and Beibei research "
           "releases: research use, on the terms of the original source.")
