"""The public sets: fetched from a file server on 127.0.0.1 (never the internet), verified against their git blob
ids, resumed after a cut transfer, converted to the canonical log and trained on, with the source's split and
its traps cleaned and counted."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from helpers import TINY
from mbkit.data import DataConfig, public
from mbkit.data.download import FetchError, git_blob_id
from public_fixtures import make_sets, serve, write_ijcai15


@pytest.fixture()
def sets(tmp_path, monkeypatch):
    """Three sets of the registry's formats on disk (`tmp/served`), a registry of them (`$MBKIT_REGISTRY`, which a
    notebook's kernel inherits too) and an empty cache (`$MBKIT_CACHE`)."""
    served = tmp_path / "served"
    registry = make_sets(served)
    (tmp_path / "registry.json").write_text(json.dumps({"sets": registry}))
    monkeypatch.setenv("MBKIT_REGISTRY", str(tmp_path / "registry.json"))
    monkeypatch.setenv("MBKIT_CACHE", str(tmp_path / "cache"))
    return served, registry


def _route(spec: dict, file: dict) -> str:
    """A file's path on the server: <repo>/<commit>/<path>, as raw.githubusercontent.com lays them out."""
    return f"{spec['repo']}/{spec['commit']}/{file['path']}"


def _fetch(name: str, url: str, monkeypatch) -> dict:
    monkeypatch.setenv("MBKIT_FETCH_URL", url)
    return public.fetch(name, progress=False)


def test_git_blob_ids_are_gits(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"hello\n")  # `printf 'hello\n' | git hash-object --stdin`
    assert git_blob_id(path) == "ce013625030ba8dba906f756967f9e9ca394464a"


def test_a_good_download_is_verified_converted_and_trains(sets, monkeypatch):
    served, registry = sets
    with serve(served) as (url, seen):
        counts = _fetch("mini-mule", url, monkeypatch)
    assert len(seen) == len(registry["mini-mule"]["files"]) and counts["buy"] > 0
    folder = public.folder("mini-mule")
    for f in registry["mini-mule"]["files"]:
        assert git_blob_id(folder / "files" / f["path"]) == f["blob"]
    assert not list(folder.rglob("*.part")) and public.is_ready("mini-mule")
    stats, data = DataConfig(data="mini-mule", min_user_items=0, min_item_users=0).load(device="cpu")
    assert data.tasks == ("buy", "pv", "cart") and data.meta["source"] == "mini-mule"
    assert stats.loc["raw", "users"] == stats.loc["filtered", "users"]  # thresholds 0: the set as published
    from mbkit.train import fit
    assert fit(data, dataclasses.replace(TINY, epochs=1)).best_epoch == 1
    with serve(served) as (url, seen):  # fetched again: every verified file is kept, nothing is requested
        _fetch("mini-mule", url, monkeypatch)
    assert seen == []


def test_a_wrong_hash_keeps_nothing(sets, monkeypatch):
    served, registry = sets
    bad = registry["mini-vcgae"]["files"][0]
    route = _route(registry["mini-vcgae"], bad)
    with serve(served, faults={route: "wrong"}) as (url, _):
        with pytest.raises(FetchError, match=rf"{bad['path']} does not match its pinned git blob id \(expected "
                                             rf"{bad['blob']}, got [0-9a-f]{{40}}\).*not kept"):
            _fetch("mini-vcgae", url, monkeypatch)
    folder = public.folder("mini-vcgae")
    assert not (folder / "files" / bad["path"]).exists() and not list(folder.rglob("*.part"))
    assert not public.is_ready("mini-vcgae")


def test_a_transfer_cut_short_is_kept_as_a_part_and_resumed(sets, monkeypatch):
    served, registry = sets
    cut = registry["mini-ghcf"]["files"][1]
    route = _route(registry["mini-ghcf"], cut)
    with serve(served, faults={route: "cut"}) as (url, seen):
        with pytest.raises(FetchError, match=rf"stopped after [0-9,]+ of {cut['bytes']:,} bytes; the part is kept .*"
                                             "run the same command again to resume it"):
            _fetch("mini-ghcf", url, monkeypatch)
        part = public.folder("mini-ghcf") / "files" / (cut["path"] + ".part")
        kept = part.stat().st_size
        assert 0 < kept < cut["bytes"] and not public.is_ready("mini-ghcf")
        _fetch("mini-ghcf", url, monkeypatch)
    assert [r["range"] for r in seen if r["path"] == route] == [None, f"bytes={kept}-"]  # the rest, not all again
    assert git_blob_id(public.folder("mini-ghcf") / "files" / cut["path"]) == cut["blob"]
    assert public.is_ready("mini-ghcf") and not part.exists()


def test_a_server_that_is_down_is_one_sentence(sets, monkeypatch):
    import socket

    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(FetchError, match=rf"could not reach 127.0.0.1:{port} \(.*\); check the network, or download "
                                         r"the set's files by hand and run `python -m mbkit data fetch NAME --from "
                                         r"DIR`"):
        _fetch("mini-mule", f"http://127.0.0.1:{port}", monkeypatch)


def test_files_downloaded_by_hand_are_verified_the_same_way(sets, tmp_path):
    served, registry = sets
    spec = registry["mini-vcgae"]
    by_hand = served / spec["repo"] / spec["commit"]
    assert public.fetch("mini-vcgae", by_hand)["buy"] > 0 and public.is_ready("mini-vcgae")
    (by_hand / spec["files"][0]["path"]).write_text("1 2\n")
    (public.folder("mini-vcgae") / "files" / spec["files"][0]["path"]).unlink()
    with pytest.raises(FetchError, match="does not match its pinned git blob id"):
        public.fetch("mini-vcgae", by_hand)
    with pytest.raises(FetchError, match="no such file; the folder given with --from must hold the set's files"):
        public.fetch("mini-mule", tmp_path / "empty")


def test_the_sources_split_is_used_and_its_traps_are_cleaned_and_counted(sets, monkeypatch):
    served, _ = sets
    with serve(served) as (url, _):
        for name in ("mini-mule", "mini-ghcf"):
            _fetch(name, url, monkeypatch)
    source = DataConfig(data="mini-mule", split="source", min_user_items=0, min_item_users=0)
    _, data = source.load(device="cpu")
    split = public.source_split("mini-mule")
    report = data.meta["split"]
    # MuLe's trap: every validation pair is also in train.txt; here they are held out of training, and counted
    assert report["kind"] == "source" and report["valid_also_in_source_train"] == int((split["split"] == "valid").sum())
    assert data.valid_csr.indices.numel() == report["valid_also_in_source_train"]
    assert data.test_csr.indices.numel() == int((split["split"] == "test").sum())
    from mbkit.data import check_no_leakage
    check_no_leakage(data)
    # Beibei's trap: the held-out purchases are among the carts; here they leave the carts, and are counted
    _, beibei = DataConfig(data="mini-ghcf", split="source", min_user_items=0, min_item_users=0).load(device="cpu")
    assert beibei.meta["split"]["auxiliary_pairs_held_out"]["cart"] >= beibei.test_csr.indices.numel() > 0
    assert beibei.meta["split"]["valid_drawn_from_train"] == beibei.test_csr.indices.numel()  # it has no valid split
    check_no_leakage(beibei)
    project = DataConfig(data="mini-mule", min_user_items=0, min_item_users=0).load(device="cpu")[1]
    assert project.meta["split"]["kind"] == "project"


@pytest.mark.parametrize("kw, needle", [
    (dict(data="synthetic", split="source"), "split='source' needs a public set that splits its own purchases"),
    (dict(data="mini-mule", split="source"), "set min_user_items and min_item_users to 0"),
    (dict(data="mini-vcgae"), "data 'mini-vcgae' is not in the cache"),
])
def test_data_settings_that_cannot_work_are_refused_before_reading(sets, kw, needle):
    with pytest.raises(ValueError, match=needle):
        DataConfig(**kw)


def test_the_ijcai15_log_is_read_with_its_action_codes(tmp_path, monkeypatch):
    monkeypatch.setenv("MBKIT_CACHE", str(tmp_path / "cache"))
    path = write_ijcai15(tmp_path / "download")
    with pytest.raises(FetchError, match="is downloaded by hand .* --from FOLDER"):
        public.fetch("tmall-ijcai15")
    counts = public.fetch("tmall-ijcai15", path.parent)
    import pandas as pd
    raw = pd.read_csv(path)
    for code, behavior in {0: "pv", 1: "cart", 2: "buy", 3: "fav"}.items():
        assert counts[behavior] == int((raw["action_type"] == code).sum())
    stats, log = DataConfig(data="tmall-ijcai15", min_user_items=5, min_item_users=5).read()
    assert stats.attrs["out_of_window_rows"] is None  # not UserBehavior's nine days
    assert log["timestamp"].min() == int(pd.Timestamp("2015-05-11").timestamp())


def test_the_command_line_fetches_lists_and_trains_on_a_set(sets, monkeypatch, capsys, tmp_path):
    from mbkit.cli import main

    served, _ = sets
    with serve(served) as (url, _):
        monkeypatch.setenv("MBKIT_FETCH_URL", url)
        assert main(["data", "fetch", "mini-vcgae", "--progress", "off"]) == 0
    assert "mini-vcgae: ready in" in capsys.readouterr().out
    assert main(["data", "list"]) == 0
    listed = capsys.readouterr().out
    assert any(line.startswith("mini-vcgae") and line.rstrip().endswith("yes") for line in listed.splitlines())
    out = tmp_path / "run"
    assert main(["train", "--data", "mini-vcgae", "--split", "source", "--min-user-items", "0", "--min-item-users", "0",
                 "--epochs", "1", "--batch-size", "512", "--device", "cpu", "--progress", "off",
                 "--out", str(out)]) == 0
    record = json.loads((out / "metrics.json").read_text())
    assert record["data"]["source"] == "mini-vcgae" and record["data"]["split"]["kind"] == "source"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mini-mule", "mini-ghcf", "mini-vcgae", "tmall-ijcai15"])
def test_notebook_01_runs_on_a_set_of_each_format(sets, monkeypatch, tmp_path, name):
    import papermill

    from mbkit.study.reproduce import NOTEBOOK_DIR

    served, _ = sets
    if name == "tmall-ijcai15":
        public.fetch(name, write_ijcai15(tmp_path / "download").parent)
    else:
        with serve(served) as (url, _):
            _fetch(name, url, monkeypatch)
    monkeypatch.setenv("MBKIT_OUTPUT_ROOT", str(tmp_path / "outputs"))  # the kernel inherits the environment
    papermill.execute_notebook(str(NOTEBOOK_DIR / "01_data_filtering.ipynb"), str(tmp_path / "01.ipynb"),
                               parameters={"data": name, "min_user_items": 0, "min_item_users": 0},
                               kernel_name="python3", cwd=str(NOTEBOOK_DIR), progress_bar=False)
    record = json.loads(Path(tmp_path / "outputs" / "results" / "01_data_filtering.json").read_text())
    assert record["params"]["data"] == name
    table = {row["index"]: row for row in record["table1"]}
    assert table["raw"]["users"] == table["filtered"]["users"] > 0
