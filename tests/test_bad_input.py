"""Bad input gets one true sentence and loses nothing: logs that are messy, parameters that are wrong, runs
that are interrupted, records and checkpoints that are damaged. (Run folders: test_rundir.py.)"""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
import shutil
import zipfile
from pathlib import Path

import pytest
import torch

from helpers import TINY, WORLD
from mbkit import data as mbd
from mbkit.checkpoint import CheckpointError, load_checkpoint
from mbkit.cli import main
from mbkit.study.grid import run_grid
from mbkit.study.methods import Method
from mbkit.train import NonFiniteLossError, TrainConfig, fit

ROWS = "1,2268318,2520377,pv,1511544070\n1,2333346,2520771,buy,1511561733\n"
SMALL = ["--synthetic-size", "3000", "1000", "--min-user-items", "5", "--min-item-users", "5", "--batch-size", "512",
         "--device", "cpu", "--progress", "off"]


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err.strip()


def _one_sentence(err: str) -> None:
    assert len(err.splitlines()) == 1 and "Traceback" not in err and err.startswith("mbkit: "), err


# --------------------------------------------------------------------------------------------- messy logs


def test_a_byte_that_is_not_utf8_is_a_malformed_row_with_its_line(tmp_path):
    path = tmp_path / "log.csv"
    path.write_bytes(ROWS.encode() + b"1,2576651,149192,p\xffv,1511572885\n" + ROWS.encode())
    rows = {"in memory": lambda **kw: len(mbd.read_userbehavior(path, **kw)),
            "streamed": lambda **kw: int(mbd.load_filtered(path, min_user_items=1, min_item_users=1, **kw)[0]
                                         .loc["raw", list(mbd.BEHAVIORS)].sum())}
    for read in rows.values():
        with pytest.raises(ValueError, match=r"(?s)1 malformed row\(s\) out of 5 \(first at line\(s\) 3\).*line 3: "
                                             r"holds bytes that are not UTF-8 text.*--skip-bad-rows"):
            read()
        with pytest.warns(UserWarning, match="skipped 1 malformed row"):
            assert read(skip_bad_rows=True) == 4


def test_spaces_around_ids_are_read(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text(" 1 , 2268318,2520377,pv, 1511544070 \n1,2333346 ,2520771,buy,1511561733\n")
    log = mbd.read_userbehavior(path)
    assert log["user_id"].tolist() == [1, 1] and log["item_id"].tolist() == [2268318, 2333346]
    stats, _ = mbd.load_filtered(path, min_user_items=1, min_item_users=1)
    assert stats.loc["raw", "pv"] == 1


@pytest.mark.parametrize("kind", ["zip", "gzip"])
def test_an_archive_named_csv_is_read_as_the_archive_it_is(tmp_path, kind):
    path = tmp_path / "UserBehavior.csv"
    if kind == "zip":
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("UserBehavior.csv", ROWS)
    else:
        path.write_bytes(gzip.compress(ROWS.encode()))
    assert len(mbd.read_userbehavior(path)) == 2
    assert mbd.load_filtered(path, min_user_items=1, min_item_users=1)[0].loc["raw", "buy"] == 1


def test_a_binary_file_and_a_device_are_named_for_what_they_are(tmp_path, capsys):
    binary = tmp_path / "model.csv"
    binary.write_bytes(b"\x00\x01\x02garbage" * 100)
    with pytest.raises(ValueError, match="is a binary file .*NUL bytes.*neither a text log nor a zip or gzip"):
        mbd.read_userbehavior(binary)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for path in (fifo, Path("/dev/null")):
        code, _, err = _run(["data", "--data", str(path)], capsys)
        assert code == 2 and "is not a regular file (a device or a pipe)" in err
        _one_sentence(err)
    code, _, err = _run(["data", "--data", str(tmp_path)], capsys)
    assert code == 2 and "is a folder" in err


def test_train_and_grid_report_and_record_what_the_reader_counted(tmp_path, capsys):
    log = mbd.synthesize(**WORLD)
    path = tmp_path / "log.csv"
    mbd.write_userbehavior(log, path)
    with open(path, "a") as f:
        f.write("1,2,3,pv,1600000000\n1,2,3,pv,1600000001\nnot,a,row\n")
    out = tmp_path / "run"
    with pytest.warns(UserWarning, match="skipped 1 malformed row"):
        code, stdout, err = _run(["train", "--data", str(path), *SMALL[3:], "--epochs", "1", "--skip-bad-rows",
                                  "--out", str(out)], capsys)
    assert code == 0, err
    assert "2 rows dated outside the log's 9 days (kept), 1 malformed rows skipped" in err
    assert json.loads(stdout.splitlines()[-1])["rows"] == {"skipped": 1, "outside_window": 2}
    assert json.loads((out / "metrics.json").read_text())["data"]["rows"] == {"skipped": 1, "outside_window": 2}


def test_the_same_data_from_another_path_resume(tmp_path, capsys):
    """A run is identified by its data's content: a byte-identical copy elsewhere resumes it."""
    path = tmp_path / "a" / "log.csv"
    path.parent.mkdir()
    mbd.write_userbehavior(mbd.synthesize(**WORLD), path)
    out = tmp_path / "run"
    assert main(["train", "--data", str(path), *SMALL[3:], "--epochs", "1", "--out", str(out)]) == 0
    copy = tmp_path / "b" / "copy.csv"
    copy.parent.mkdir()
    shutil.copy(path, copy)
    capsys.readouterr()
    code, _, err = _run(["train", "--data", str(copy), *SMALL[3:], "--epochs", "2", "--resume", str(out / "last.pt")],
                        capsys)
    assert code == 0, err
    record = json.loads((out / "metrics.json").read_text())
    assert record["epochs_trained"] == 2 and record["data"]["source"] == str(copy)


# --------------------------------------------------------------------------------------------- the data a run needs


def test_a_balancer_without_an_auxiliary_task_is_refused(filtered):
    only_buy = mbd.build_task_data(filtered[filtered["behavior"] == "buy"], device="cpu")
    assert only_buy.tasks == ("buy",)
    with pytest.raises(ValueError, match=r"one task \('buy'\) and no auxiliary behavior, so 'metabalance' has "
                                         "nothing to balance"):
        fit(only_buy, dataclasses.replace(TINY, balancer="metabalance"))
    assert fit(only_buy, dataclasses.replace(TINY, epochs=1)).label == "Vanilla"


def test_an_auxiliary_task_without_training_positives_is_warned_about(task_data):
    empty_fav = dataclasses.replace(task_data, labels=task_data.labels.clone())
    empty_fav.labels[:, 3] = 0.0
    with pytest.warns(UserWarning, match="auxiliary task 'fav' has no training positive"):
        fit(empty_fav, dataclasses.replace(TINY, epochs=1))


def test_too_few_items_for_the_metrics_fail_before_training(monkeypatch):
    import numpy as np
    import pandas as pd

    import mbkit.train

    rows = [(u, (u + j) % 15, "buy" if j < 5 else "pv") for u in range(30) for j in range(7)]  # 15 items
    users, items, behaviors = zip(*rows)
    log = pd.DataFrame({"user_id": np.array(users) + 1, "item_id": np.array(items) + 1, "category_id": 1,
                        "behavior": pd.Categorical(behaviors, categories=list(mbd.BEHAVIORS)),
                        "timestamp": mbd.WINDOW[0]})
    data = mbd.build_task_data(log, device="cpu")
    monkeypatch.setattr(mbkit.train, "_train_epoch", lambda *a, **k: pytest.fail("an epoch was trained"))
    with pytest.raises(ValueError, match="the data have 15 items, fewer than the K=20"):
        fit(data, TINY)


@pytest.mark.parametrize("kw, needle", [
    (dict(num_neg=100_000), "num_neg=100000: at most 1000 negatives per positive"),
    (dict(lr=float("inf")), "lr=inf must lie in (0, 1]"),
    (dict(lr=2.0), "lr=2.0 must lie in (0, 1]"),
    (dict(weight_decay=float("nan")), "weight_decay=nan be finite"),
])
def test_settings_out_of_bounds_are_refused_before_any_data(kw, needle):
    with pytest.raises(ValueError) as err:
        TrainConfig(**kw)
    assert needle in str(err.value)


# --------------------------------------------------------------------------------------------- interruptions


def test_an_interruption_before_the_first_epoch_says_nothing_was_saved(tmp_path, capsys, monkeypatch):
    import mbkit.train

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(mbkit.train, "_train_epoch", interrupted)
    code, _, err = _run(["train", *SMALL, "--epochs", "1", "--out", str(tmp_path / "run")], capsys)
    assert code == 130 and "interrupted before the first epoch finished; nothing of this run was saved" in err
    assert "last.pt" not in err


def test_a_loss_that_turns_nan_in_the_first_epoch_leaves_no_last_pt_to_point_to(tmp_path, task_data):
    bad = dataclasses.replace(task_data, labels=task_data.labels.clone())
    bad.labels[:, 1] = float("nan")
    with pytest.raises(NonFiniteLossError):
        fit(bad, TINY, checkpoint_dir=tmp_path)
    with pytest.raises(CheckpointError, match="no epoch had finished, so there is no checkpoint to resume") as err:
        load_checkpoint(tmp_path / "nonfinite.pt")
    assert "last.pt" not in str(err.value)


# --------------------------------------------------------------------------------------------- damaged files


@pytest.mark.parametrize("key, value, needle", [
    ("epoch", "three", "its epoch is a str, not a int"),
    ("history", {"epoch": 1}, "its history is a dict, not a list"),
    ("best", {"epoch": 1}, "its best epoch or history is not mbkit's"),
    ("resumable", 1, "its resumable is a int, not a bool"),
])
def test_a_checkpoint_of_the_wrong_types_is_refused_in_one_sentence(tmp_path, task_data, key, value, needle):
    fit(task_data, dataclasses.replace(TINY, epochs=1), checkpoint_dir=tmp_path)
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    state[key] = value
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(tmp_path / "bad.pt")
    assert needle in str(err.value) and len(str(err.value).splitlines()) == 1


def test_a_grid_record_without_a_key_is_named_with_its_path(tmp_path, task_data):
    runs = tmp_path / "runs"
    methods = [Method("Vanilla", "vanilla")]
    run_grid(task_data, methods, [0], dataclasses.replace(TINY, epochs=1), runs_dir=runs)
    record_path = next(runs.glob("*/metrics.json"))
    record = json.loads(record_path.read_text())
    del record["test"]
    record_path.write_text(json.dumps(record))
    with pytest.raises(ValueError, match=rf"{record_path} is not a complete run record \(no 'test'\); delete"):
        run_grid(task_data, methods, [0], dataclasses.replace(TINY, epochs=1), runs_dir=runs)


# --------------------------------------------------------------------------------------------- grids


@pytest.mark.parametrize("methods, seeds, needle", [
    ([Method("Vanilla", "vanilla")], [0, 0], r"seeds \[0, 0\] repeat \[0\]"),
    ([Method("MB", "metabalance", {"relax_factor": 0.7}), Method("MB again", "metabalance", {"relax_factor": 0.7})],
     [0], "methods 'MB' and 'MB again' are the same run"),
    ([Method("A", "vanilla"), Method("A", "single_task")], [0], r"share the label\(s\) \['A'\]"),
])
def test_a_grid_of_repeated_entries_is_refused(task_data, methods, seeds, needle):
    with pytest.raises(ValueError, match=needle):
        run_grid(task_data, methods, seeds, TINY)


# --------------------------------------------------------------------------------------------- notebooks' parameters


@pytest.mark.parametrize("text, needle", [
    ("common: {data: synthetic\n", "is not valid YAML at line 2"),
    ("common: [1, 2]\n", "section 'common' must be a mapping of parameter: value, got a list"),
    ("03_relax_factor: 3\n", "section '03_relax_factor' must be a mapping"),
    ("03_relax_factor: {seeds: 3}\n", "03_relax_factor's seeds is 3 (a int), but the notebook's seeds takes a list"),
    ("03_relax_factor: {seeds: [0, 0, 1]}\n", "03_relax_factor's seeds repeats 0; list each entry once"),
    ("04_method_comparison: {epochs: '20'}\n", "04_method_comparison's epochs is '20' (a str)"),
    ("04_method_comparison: {relax_factors: [0.5]}\n", "04_method_comparison.ipynb has no parameters ['relax_fact"),
    ("04_method_comparison: {mode: 3}\n", "04_method_comparison's mode is 3 (a int), but the notebook's mode takes"),
])
def test_a_bad_params_file_is_refused_before_anything_runs(tmp_path, capsys, text, needle):
    params = tmp_path / "params.yaml"
    params.write_text(text)
    for command in (["reproduce", "--out", str(tmp_path / "out")], ["grid", "03_relax_factor"]):
        code, _, err = _run([*command, "--params", str(params)], capsys)
        assert code == 2 and needle in err, err
        _one_sentence(err)
    assert not (tmp_path / "out").exists()


def test_documented_values_of_other_types_are_accepted():
    from mbkit.provenance import ROOT
    from mbkit.study.reproduce import check_params, load_params

    check_params(load_params(ROOT / "notebooks/params/paper.yaml"))  # patience: null, progress: text


def test_executed_notebooks_never_land_on_committed_files(capsys):
    from mbkit.provenance import ROOT

    for folder in ("notebooks", "results/x", "figures"):
        code, _, err = _run(["reproduce", "--out", str(ROOT / folder), "--only", "01"], capsys)
        assert code == 2 and f"lies inside {folder.split('/')[0]}/, whose files are committed" in err
        _one_sentence(err)


def test_update_notebooks_refuses_parameters_other_than_the_committed_ones(tmp_path, capsys):
    code, _, err = _run(["reproduce", "--params", "notebooks/params/paper.yaml", "--out", str(tmp_path / "out"),
                         "--update-notebooks"], capsys)
    assert code == 2 and "--update-notebooks stores the executed notebooks under their committed parameters" in err
    assert "01_data_filtering: data='../data/UserBehavior.csv' (cell: 'synthetic')" in err
    _one_sentence(err)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_a_failing_notebook_ends_in_one_line_naming_it_its_cell_and_its_copy(tmp_path, capsys, monkeypatch):
    bad = tmp_path / "bad.csv"
    bad.write_text("this is not a log\n")
    params = tmp_path / "params.yaml"
    params.write_text(f"01_data_filtering: {{data: {bad}}}\n")
    monkeypatch.setenv("MBKIT_OUTPUT_ROOT", str(tmp_path / "outputs"))
    code, _, err = _run(["reproduce", "--params", str(params), "--only", "01", "--out", str(tmp_path / "out"),
                         "--keep-readme"], capsys)
    last = err.splitlines()[-1]
    assert code == 1 and last.startswith("mbkit: error: 01_data_filtering.ipynb failed in cell [")
    assert "(ValueError: " in last and f"the executed copy with the cell's traceback is {tmp_path / 'out'}" in last


def test_a_non_ray_address_is_one_sentence_at_once():
    """Ray itself retries such an address for many seconds, with a page of warnings."""
    import socket
    import threading

    from mbkit.study.ray_executor import _check_reachable

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()

    def answer() -> None:
        conn, _ = server.accept()
        conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        conn.close()

    threading.Thread(target=answer, daemon=True).start()
    with pytest.raises(ConnectionError, match="answers, but not as a Ray head node"):
        _check_reachable(f"127.0.0.1:{server.getsockname()[1]}")
    server.close()


# --------------------------------------------------------------------------------------------- full disks


def test_a_full_temporary_folder_is_not_called_a_corrupt_download(tmp_path, monkeypatch):
    import errno

    import mbkit.data.read

    path = tmp_path / "UserBehavior.csv.gz"
    path.write_bytes(gzip.compress(ROWS.encode()))

    def full(dst, chunk):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(mbkit.data.read, "_write", full)
    for read in (mbd.read_userbehavior, lambda p: mbd.load_filtered(p, min_user_items=1, min_item_users=1)):
        with pytest.raises(ValueError, match=r"could not decompress it into the temporary folder .* \(No space left on "
                                             r"device\); free space there, or set TMPDIR") as err:
            read(path)
        assert "corrupt" not in str(err.value) and "download" not in str(err.value)


def test_a_full_out_folder_names_the_file_and_the_reason(tmp_path, capsys, monkeypatch):
    def full(obj, f, *args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:664] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed")

    monkeypatch.setattr(torch, "save", full)
    out = tmp_path / "run"
    code, _, err = _run(["train", *SMALL, "--epochs", "1", "--out", str(out)], capsys)
    assert code == 2 and f"{out / 'last.pt'}: could not be written (" in err and "PytorchStreamWriter" in err
    _one_sentence(err)
    assert not (out / "last.pt.tmp").exists()
