"""The command line: every error is one line that says what is wrong and what to do, and whatever can be
checked without the data is checked before the log is read."""

from __future__ import annotations

import json
import os
import sys
import zipfile

import pytest
import torch

import mbkit.data.load
from mbkit.cli import _message, main

# The tests' small world (tests/helpers.py), one epoch.
SMALL = ["--synthetic-size", "3000", "1000", "--min-user-items", "5", "--min-item-users", "5", "--batch-size", "512",
         "--device", "cpu", "--progress", "off"]
TRAIN = ["train", *SMALL, "--epochs", "1", "--balancer", "metabalance", "--relax-factor", "0.7"]


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own errors
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err.strip()


def _one_line(err: str) -> None:
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err


@pytest.fixture()
def no_data_read(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the log was read before the arguments were checked")

    monkeypatch.setattr(mbkit.data.load, "load_filtered", refuse)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "mb"
    assert main([*TRAIN, "--out", str(out)]) == 0
    return out


def _bad_resume_files(tmp_path):
    files = {"empty.pt": b"", "random.pt": os.urandom(2048), "record.json": json.dumps({"model": 1}).encode()}
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    torch.save([1, 2], tmp_path / "list.pt")
    (tmp_path / "folder").mkdir()


@pytest.mark.parametrize("extra,needle", [
    (["--balancer", "nosuch"], "unknown balancer 'nosuch'"),
    (["--num-neg", "-1"], "num_neg=-1 must be >= 0"),
    (["--relax-factor", "1.5"], "relax_factor"),
    (["--patience", "0"], "patience=0 must be >= 1"),
    (["--device", "tpu9"], "device='tpu9' is not a device"),
    (["--min-user-items", "-2"], "min_user_items=-2 must be a non-negative integer"),
    (["--split-seed", "-1"], "split_seed=-1 must be a non-negative integer"),
    (["--target", "click"], "argument --target: invalid choice: 'click'"),
    (["--epochs", "many"], "argument --epochs: invalid int value: 'many'"),
    (["--synthetic-size", "3000"], "argument --synthetic-size: expected 2 arguments"),
    (["--data", "{tmp}/log.csv", "--synthetic-size", "30", "10"], "synthetic_size=(30, 10) sizes the built-in world"),
    (["--data", "/nonexistent/UserBehavior.csv"], "no such file"),
    (["--data", "{tmp}"], "is a folder; pass the UserBehavior.csv file inside it"),
    (["--out", "{tmp}/file.txt"], "file.txt is a file, not a folder"),
    (["--out", "{tmp}/run"], "already holds a run (metrics.json); resume it"),
    (["--resume", "{tmp}/empty.pt"], "is an empty file"),
    (["--resume", "{tmp}/random.pt"], "is not a readable mbkit checkpoint"),
    (["--resume", "{tmp}/record.json"], "is not a readable mbkit checkpoint"),
    (["--resume", "{tmp}/list.pt"], "holds a list, not an mbkit checkpoint"),
    (["--resume", "{tmp}/folder"], "is a folder; pass the checkpoint file inside it"),
    (["--resume", "{tmp}/nope.pt"], "no such file"),
])
def test_train_errors_are_one_line_and_precede_reading_the_log(tmp_path, capsys, no_data_read, extra, needle):
    _bad_resume_files(tmp_path)
    (tmp_path / "file.txt").write_text("x")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.json").write_text("{}")
    (tmp_path / "log.csv").write_text("1,2268318,2520377,pv,1511544070\n")
    code, out, err = _run([*TRAIN, "--out", str(tmp_path / "out"), *[a.format(tmp=tmp_path) for a in extra]],
                          capsys)
    assert code == 2 and out == ""
    _one_line(err)
    assert err.startswith("mbkit: error: ") and needle in err


def test_resume_from_the_command_line(trained, capsys, no_data_read):
    last = str(trained / "last.pt")
    code, _, err = _run([*TRAIN[:-1], "0.5", "--resume", last], capsys)  # another relax factor
    assert code == 2 and "it was trained with balancer_kwargs={'relax_factor': 0.7}" in err
    _one_line(err)
    code, _, err = _run([*TRAIN, "--out", str(trained)], capsys)  # a new run onto the finished one
    assert code == 2 and "already holds a run (last.pt, metrics.json, history.csv)" in err and "--overwrite" in err


def test_overwrite_keeps_the_old_run_until_the_new_one_can_start(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text("{}")
    code, _, err = _run([*TRAIN, "--out", str(run), "--overwrite", "--data", str(tmp_path / "missing.csv")], capsys)
    assert code == 2 and "no such file" in err and (run / "metrics.json").exists()


def test_resume_on_another_split_is_refused_after_reading_the_data(trained, capsys):
    code, _, err = _run([*TRAIN, "--split-seed", "5", "--resume", str(trained / "last.pt")], capsys)
    assert code == 2 and "trained on other data (split_seed=0 there, 5 here)" in err
    _one_line(err)


def test_resume_with_more_epochs_continues_in_the_checkpoint_folder(trained, tmp_path, capsys):
    import shutil

    run = shutil.copytree(trained, tmp_path / "mb")  # the module's run stays as other tests expect it
    code, out, _ = _run([*TRAIN, "--epochs", "2", "--resume", str(run / "last.pt")], capsys)
    assert code == 0 and json.loads(out.splitlines()[-1])["out"] == str(run)
    record = json.loads((run / "metrics.json").read_text())
    assert record["config"]["epochs"] == 2 and [r["from_epoch"] for r in record["resumes"]] == [1]
    assert record["resumes"][0]["changed"] == {"epochs": [1, 2]} and record["data"]["source"] == "synthetic"


def test_data_command_errors(tmp_path, capsys):
    cut = tmp_path / "cut.csv"
    cut.write_text("1,2268318,2520377,pv,1511544070\n1,2333346,2520771,pv,15")
    code, _, err = _run(["data", "--data", str(cut)], capsys)
    assert code == 2 and "the file is cut mid-line" in err
    _one_line(err)
    bad_zip = tmp_path / "UserBehavior.zip"
    with zipfile.ZipFile(bad_zip, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("UserBehavior.csv", "1,2268318,2520377,pv,1511544070\n" * 5000)
    bad_zip.write_bytes(bad_zip.read_bytes()[:300])
    code, _, err = _run(["data", "--data", str(bad_zip)], capsys)
    assert code == 2 and "not a readable zip archive" in err
    _one_line(err)
    code, _, err = _run(["data", "--min-item-users", "-1"], capsys)
    assert code == 2 and "min_item_users=-1 must be a non-negative integer" in err


def test_messages_name_the_problem_not_a_key_or_an_errno():
    assert _message(FileNotFoundError(2, "No such file or directory", "runs/x")) == \
        "runs/x: No such file or directory; check the path and its permissions"
    assert "'model'" in _message(KeyError("model")) and _message(KeyError("model")) != "model"
    assert _message(ValueError("plain")) == "plain"


def test_balancer_args_reach_the_balancer_and_bad_ones_fail_first(tmp_path, capsys, no_data_read):
    from mbkit.cli import _parser, settings
    from mbkit.train import TrainConfig

    args = _parser().parse_args(["train", "--balancer", "cagrad", "--balancer-arg", "c=0.5", "--balancer-arg",
                                 "granularity=flat", "--balancer-arg", "rescale=False"])
    assert settings(args, TrainConfig).balancer_kwargs == {"c": 0.5, "granularity": "flat", "rescale": False}
    code, _, err = _run(["train", "--balancer", "cagrad", "--balancer-arg", "c", "--out", str(tmp_path / "r")], capsys)
    assert code == 2 and "expected NAME=VALUE" in err
    _one_line(err)
    code, _, err = _run(["train", "--balancer", "cagrad", "--balancer-arg", "relax_factor=0.7",
                         "--out", str(tmp_path / "r")], capsys)
    assert code == 2 and "relax_factor" in err
    _one_line(err)


@pytest.mark.parametrize("extra, needle", [
    ([], "the grid command keeps one record per run: pass --runs-dir, or set runs_dir in the 03_relax_factor section"),
    (["--params", "notebooks/params/paper.yaml"], "data '../data/UserBehavior.csv': no such file, nor a public set"),
    (["--runs-dir", "RUNS", "--executor", "ray"], "executor='ray' needs Ray, which is not installed here: pip install "
                                                  "'mbkit[ray]'"),
])
def test_grid_errors_are_one_line_and_precede_reading_the_log(tmp_path, capsys, monkeypatch, no_data_read, extra,
                                                              needle):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    if any("paper.yaml" in a for a in extra) and os.path.exists("data/UserBehavior.csv"):
        pytest.skip("the real log is here")
    extra = [str(tmp_path / "runs") if a == "RUNS" else a for a in extra]
    code, out, err = _run(["grid", "03_relax_factor", *extra], capsys)
    assert code == 2 and needle in err, err
    _one_line(err)


def test_grid_of_notebook_06_reads_the_world_at_the_notebooks_size(tmp_path, capsys, monkeypatch):
    """`grid 06_all_methods` must train on the data the notebook reads (its half-size world), or the
    notebook would not find the records."""
    seen = {}

    def load_filtered(source, **kw):
        seen.update(kw, source=source)
        raise ValueError("stop after the data call")

    monkeypatch.setattr(mbkit.data.load, "load_filtered", load_filtered)
    code, _, err = _run(["grid", "06_all_methods", "--runs-dir", str(tmp_path / "runs")], capsys)
    assert code == 2 and "stop after the data call" in err
    assert seen["source"] == "synthetic" and seen["synthetic_size"] == (15_000, 5_000)


def test_train_writes_its_outputs(trained, capsys):
    assert (trained / "history.csv").exists() and (trained / "last.pt").exists()
    record = json.loads((trained / "metrics.json").read_text())
    assert record["config"]["balancer_kwargs"] == {"relax_factor": 0.7} and record["config"]["epochs"] == 1
    assert record["data"]["filter"]["min_user_items"] == 5 and record["data"]["source"] == "synthetic"
    assert {"torch", "git_commit", "device"} <= set(record["provenance"])


def test_every_setting_of_the_configurations_is_a_flag_with_its_default(capsys):
    """The flags are generated from DataConfig, TrainConfig and Executor: a new setting is a new flag, and the
    flags' defaults are the dataclasses' own."""
    import dataclasses

    from mbkit.cli import _parser, settings
    from mbkit.data import DataConfig
    from mbkit.study.grid import Executor
    from mbkit.train import TrainConfig

    for command, configs in (("train", (DataConfig, TrainConfig)), ("data", (DataConfig,)), ("grid", (Executor,))):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        for cls in configs:
            for f in dataclasses.fields(cls):
                assert f.metadata.get("flag", "--" + f.name.replace("_", "-")) in text, (command, f.name)
    args = _parser().parse_args(["train"])
    assert settings(args, TrainConfig) == TrainConfig() and settings(args, DataConfig) == DataConfig()
    args = _parser().parse_args(["train", "--patience", "none", "--mlp-layers", "16", "8", "--no-amp",
                                 "--progress", "text", "--synthetic-size", "300", "100"])
    assert settings(args, TrainConfig) == TrainConfig(patience=None, mlp_layers=(16, 8), progress="text")
    assert settings(args, DataConfig) == DataConfig(synthetic_size=(300, 100))


def test_grid_of_notebook_04_tunes_vanilla_first_when_the_params_say_so(tmp_path, capsys, monkeypatch, task_data):
    """With tune_vanilla on, `grid 04_method_comparison` tunes as the notebook does and trains every method at
    the tuned settings, so the notebook then finds every record (its tuning's under runs_dir/tune)."""
    monkeypatch.setattr(mbkit.data.DataConfig, "load", lambda self, device="auto": (None, task_data))
    params = tmp_path / "tune.yaml"
    params.write_text("04_method_comparison:\n  tune_vanilla: true\n  tune_lr: [0.001, 0.01]\n  tune_dropout: [0.2]\n"
                      "  tune_num_neg: [4]\n  seeds: [0]\n  epochs: 1\n  device: cpu\n")
    code, out, err = _run(["grid", "04_method_comparison", "--params", str(params), "--runs-dir",
                           str(tmp_path / "runs"), "--progress", "off"], capsys)
    assert code == 0, err
    assert "after tuning Vanilla" in out and "(Vanilla's best on validation)" in out
    assert sorted(p.name for p in (tmp_path / "runs" / "tune").iterdir()) == [
        "lr=0.001_dropout=0.2_num_neg=4", "lr=0.01_dropout=0.2_num_neg=4"]
    chosen = [line for line in out.splitlines() if line.startswith("every method trains at")][0]
    configs = [json.loads(p.read_text())["config"] for p in (tmp_path / "runs").glob("*_seed0/metrics.json")]
    assert len(configs) == 7 and all(c["dropout"] == 0.2 for c in configs)  # the seven methods of 04
    assert len({c["lr"] for c in configs}) == 1 and f"lr={configs[0]['lr']:g}," in chosen
