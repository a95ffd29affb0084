"""Small public sets in each format of the registry, and a file server on 127.0.0.1 that can fail on purpose.

The sets are made from the tests' small synthetic world (tests/helpers.py): its purchases split into the
source's train / valid / test, its other behaviors as their own files, written as pair lines (1-based ids,
MuLe's layout, with valid.txt inside train.txt as MuLe's is), adjacency lines (0-based ids, GHCF's, with held-out
purchases among the carts as Beibei's are) or VCGAE's trn_/vld_/tst_ files; and the IJCAI-15 raw log.
"""

from __future__ import annotations

import contextlib
import http.server
import threading
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd

from helpers import FILTER, WORLD
from mbkit.data import filter_log, synthesize
from mbkit.data.download import git_blob_id

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _world() -> pd.DataFrame:
    log = filter_log(synthesize(**WORLD), **FILTER)
    return log.drop_duplicates(["user_id", "item_id", "behavior"]).reset_index(drop=True)


def _source_split(buy: pd.DataFrame, seed: int = 0) -> dict[str, pd.DataFrame]:
    """One held-out test purchase per user with at least three (as the sources do), one validation purchase."""
    rng = np.random.default_rng(seed)
    buy = buy.sample(frac=1.0, random_state=int(rng.integers(1 << 30)))
    rank = buy.groupby("user_id").cumcount()
    many = buy.groupby("user_id")["item_id"].transform("size") >= 3
    return {"test": buy[many & (rank == 0)], "valid": buy[many & (rank == 1)], "train": buy[~(many & (rank < 2))]}


def _pair_lines(df: pd.DataFrame, shift: int = 0) -> str:
    return "".join(f"{u + shift} {i + shift}\n" for u, i in zip(df["user_id"], df["item_id"]))


def _adjacency_lines(df: pd.DataFrame) -> str:
    return "".join(f"{u} {' '.join(map(str, g['item_id']))}\n" for u, g in df.groupby("user_id", sort=True))


def _index(log: pd.DataFrame, base: int) -> pd.DataFrame:
    """Contiguous ids from `base` (0 or 1), as the preprocessed sets store them."""
    users = {u: k + base for k, u in enumerate(sorted(log["user_id"].unique()))}
    items = {i: k + base for k, i in enumerate(sorted(log["item_id"].unique()))}
    return log.assign(user_id=log["user_id"].map(users), item_id=log["item_id"].map(items))


def make_sets(root: Path) -> dict[str, dict]:
    """Write one set of each format under `root/<repo>/<commit>/` and return their registry entries."""
    sets = {}
    for name, kind in (("mini-mule", "mule"), ("mini-ghcf", "ghcf"), ("mini-vcgae", "vcgae")):
        log = _index(_world(), base=0 if kind == "ghcf" else 1)
        of = {b: log[log["behavior"] == b] for b in ("pv", "cart", "fav", "buy")}
        split = _source_split(of["buy"])
        if kind == "mule":
            files = {"data/mini/view.txt": ("pv", _pair_lines(of["pv"])),
                     "data/mini/cart.txt": ("cart", _pair_lines(of["cart"])),
                     "data/mini/train.txt": ("buy:train", _pair_lines(pd.concat([split["train"], split["valid"]]))),
                     "data/mini/valid.txt": ("buy:valid", _pair_lines(split["valid"])),  # inside train.txt
                     "data/mini/test.txt": ("buy:test", _pair_lines(split["test"]))}
        elif kind == "ghcf":  # no validation split, as Beibei's
            carts = pd.concat([of["cart"], split["test"]]).drop_duplicates(["user_id", "item_id"])
            bought = pd.concat([split["train"], split["valid"]])
            files = {"Data/Mini/pv.txt": ("pv", _adjacency_lines(of["pv"])),
                     "Data/Mini/cart.txt": ("cart", _adjacency_lines(carts)),  # the held-out purchases among them
                     "Data/Mini/train.txt": ("buy:train", _adjacency_lines(bought)),
                     "Data/Mini/test.txt": ("buy:test", _pair_lines(split["test"]))}
        else:
            files = {"Datasets/Mini/trn_pv": ("pv", _pair_lines(of["pv"])),
                     "Datasets/Mini/trn_fav": ("fav", _pair_lines(of["fav"])),
                     "Datasets/Mini/trn_buy": ("buy:train", _pair_lines(split["train"])),
                     "Datasets/Mini/vld_buy": ("buy:valid", _pair_lines(split["valid"])),
                     "Datasets/Mini/tst_buy": ("buy:test", _pair_lines(split["test"]))}
        repo = f"tests/{name}"
        entries = []
        for path, (role, text) in files.items():
            target = root / repo / COMMIT / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
            entries.append({"path": path, "role": role, "blob": git_blob_id(target), "bytes": target.stat().st_size,
                            "head": text.splitlines()[:3]})
        sets[name] = {"repo": repo, "commit": COMMIT, "format": kind, "files": entries, "notes": "a test fixture"}
    return sets


def write_ijcai15(folder: Path) -> Path:
    """The IJCAI-15 user log's layout (header, action codes 0-3, mmdd time stamps) from the small world."""
    log = _world()
    action = log["behavior"].map({"pv": 0, "cart": 1, "buy": 2, "fav": 3})
    days = 511 + (log.index.to_numpy() % 20)  # May 11 .. May 30
    df = pd.DataFrame({"user_id": log["user_id"], "item_id": log["item_id"], "cat_id": log["category_id"] % 1000,
                       "seller_id": 7, "brand_id": 3, "time_stamp": days, "action_type": action})
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "user_log_format1.csv"
    df.to_csv(path, index=False)
    return path


class _Handler(http.server.BaseHTTPRequestHandler):
    root: Path
    faults: dict[str, str]
    seen: list[dict]

    def log_message(self, *args) -> None:  # quiet
        pass

    def do_GET(self) -> None:  # noqa: N802
        path = self.path.lstrip("/")
        self.seen.append({"path": path, "range": self.headers.get("Range")})
        file = self.root / path
        fault = self.faults.get(path)
        if fault == "404" or not file.is_file():
            self.send_error(404, "Not Found")
            return
        body = file.read_bytes()
        if fault == "wrong":
            body = body.replace(b"1", b"2", 1)
        start = 0
        ranged = self.headers.get("Range")
        if ranged and fault != "no-range":
            start = int(ranged.removeprefix("bytes=").split("-")[0])
            if start >= len(body):
                self.send_response(416)
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        if fault == "cut":
            self.faults.pop(path)  # cut once: the next request gets the rest
            self.wfile.write(body[start:start + (len(body) - start) // 2])
            self.wfile.flush()
            self.connection.shutdown(2)
            return
        self.wfile.write(body[start:])


@contextlib.contextmanager
def serve(root: Path, faults: dict[str, str] | None = None) -> Iterator[tuple[str, list[dict]]]:
    """A file server on 127.0.0.1 for `root`; `faults` maps a path to "404", "wrong" (other bytes), "cut" (half of
    the body, once) or "no-range" (ignores Range). Yields its base URL and the requests it saw."""
    seen: list[dict] = []
    handler = type("Handler", (_Handler,), {"root": root, "faults": dict(faults or {}), "seen": seen})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()
