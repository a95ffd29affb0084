"""Runs that cannot lie: the identity of a run, refused resumes, checkpoint files, the patience rule."""

from __future__ import annotations

import dataclasses
import json
import os

import pytest
import torch

from helpers import TINY
from mbkit import data as mbd
from mbkit.checkpoint import RESUMABLE_CHANGES, SCHEMA, CheckpointError, load_checkpoint
from mbkit.provenance import write_json
from mbkit.train import TrainConfig, fit

CFG = dataclasses.replace(TINY, balancer="metabalance", balancer_kwargs={"relax_factor": 0.7})


@pytest.fixture(scope="module")
def one_epoch(tmp_path_factory, task_data):
    """A run interrupted after its first epoch (of CFG's two): its folder holds last.pt only."""
    folder = tmp_path_factory.mktemp("run")
    fit(task_data, dataclasses.replace(CFG, epochs=1), checkpoint_dir=folder)
    return folder


# ---------------------------------------------------------------------------------------------------
# What a run records


def test_checkpoint_and_record_carry_config_data_and_code(tmp_path, task_data):
    res = fit(task_data, dataclasses.replace(CFG, epochs=1), checkpoint_dir=tmp_path)
    res.save(tmp_path)
    ckpt = torch.load(tmp_path / "last.pt", weights_only=True)  # no pickled code needed to read it
    assert ckpt["schema"] == SCHEMA and ckpt["epoch"] == 1 and ckpt["resumes"] == []
    assert ckpt["config"]["balancer_kwargs"] == {"relax_factor": 0.7} and ckpt["config"]["lr"] == CFG.lr
    fp = ckpt["fingerprint"]
    assert fp["split_seed"] == 0 and fp["filter"] == {"target": "buy", "min_user_items": 5, "min_item_users": 5,
                                                      "mode": "once"}
    assert fp["valid_pairs"] == task_data.valid_csr.indices.numel() and len(fp["sha256"]) == 64
    assert set(ckpt["code"]) == {"mbkit", "git_commit"}
    record = json.loads((tmp_path / "metrics.json").read_text())
    assert record["config"]["balancer"] == "metabalance" and record["data"] == fp and record["resumes"] == []
    assert not list(tmp_path.glob("*.tmp"))


def test_fingerprint_tells_splits_and_filters_apart(filtered, task_data):
    from mbkit.checkpoint import data_fingerprint

    base = data_fingerprint(task_data)
    assert data_fingerprint(mbd.build_task_data(filtered, seed=0, device="cpu")) == base
    other_split = data_fingerprint(mbd.build_task_data(filtered, seed=5, device="cpu"))
    assert other_split["split_seed"] == 5 and other_split["sha256"] != base["sha256"]
    refiltered = mbd.filter_log(filtered, min_user_items=6, min_item_users=5)
    assert data_fingerprint(mbd.build_task_data(refiltered, seed=0, device="cpu"))["filter"]["min_user_items"] == 6


# ---------------------------------------------------------------------------------------------------
# Resume: allowed changes and refused mismatches


@pytest.mark.parametrize("change,needle", [
    (dict(balancer_kwargs={"relax_factor": 0.5}), "balancer_kwargs={'relax_factor': 0.7}"),
    (dict(lr=0.01), "lr=0.001"),
    (dict(seed=1), "seed=0"),
    (dict(balancer="pcgrad", balancer_kwargs={}), "balancer='metabalance'"),
    (dict(mode="dense"), "mode='compact'"),
    (dict(num_neg=2), "num_neg=4"),
    (dict(batch_size=256), "batch_size=512"),
])
def test_resume_refuses_another_configuration(one_epoch, task_data, change, needle):
    with pytest.raises(CheckpointError, match=rf"cannot resume .*last.pt: it was trained with {needle}.*"
                                              "start a new run in another folder"):
        fit(task_data, dataclasses.replace(CFG, **change), resume=one_epoch / "last.pt")


def test_resume_refuses_other_data(one_epoch, filtered):
    other_split = mbd.build_task_data(filtered, seed=5, device="cpu")
    with pytest.raises(CheckpointError, match=r"trained on other data \(split_seed=0 there, 5 here\)"):
        fit(other_split, CFG, resume=one_epoch / "last.pt")
    other_filter = mbd.build_task_data(mbd.filter_log(filtered, min_user_items=6, min_item_users=5), device="cpu")
    with pytest.raises(CheckpointError, match=r"other data \(filter="):
        fit(other_filter, CFG, resume=one_epoch / "last.pt")
    same_sizes = dataclasses.replace(mbd.build_task_data(filtered, seed=0, device="cpu"))
    same_sizes.labels = same_sizes.labels.flip(0)  # same meta and sizes, other training labels
    with pytest.raises(CheckpointError, match="its held-out and training pairs differ"):
        fit(same_sizes, CFG, resume=one_epoch / "last.pt")


def test_resume_with_allowed_changes_is_recorded(one_epoch, task_data, tmp_path):
    assert {"epochs", "patience", "progress"} <= RESUMABLE_CHANGES
    res = fit(task_data, dataclasses.replace(CFG, epochs=3, patience=5), resume=one_epoch / "last.pt",
              checkpoint_dir=tmp_path)
    assert list(res.history["epoch"]) == [1, 2, 3]
    (entry,) = res.resumes
    assert entry["from_epoch"] == 1 and entry["changed"] == {"epochs": [1, 3], "patience": [None, 5]}
    assert load_checkpoint(tmp_path / "last.pt")["resumes"] == res.resumes
    with pytest.raises(CheckpointError, match="it has trained 3 epochs, more than the epochs=2 asked for"):
        fit(task_data, CFG, resume=tmp_path / "last.pt")


# ---------------------------------------------------------------------------------------------------
# Checkpoint files that are not checkpoints


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.mark.parametrize("kind,needle", [
    ("empty", "is an empty file"),
    ("random", "is not a readable mbkit checkpoint"),
    ("json", "is not a readable mbkit checkpoint"),
    ("list", "holds a list, not an mbkit checkpoint"),
    ("folder", "is a folder; pass the checkpoint file inside it"),
    ("missing", "no such file"),
    ("old", "has checkpoint schema 'none: saved by an mbkit older than run fingerprints"),
    ("pickle", "is not a readable mbkit checkpoint"),
    ("damaged", "lacks ['balancer', 'best'"),
])
def test_load_checkpoint_refuses_other_files(tmp_path, kind, needle):
    path = tmp_path / "last.pt"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "random":
        path.write_bytes(os.urandom(4096))
    elif kind == "json":
        path.write_text(json.dumps({"model": {}}))
    elif kind == "list":
        torch.save([1, 2, 3], path)
    elif kind == "folder":
        path.mkdir()
    elif kind == "old":
        torch.save({"epoch": 1, "model": {}}, path)
    elif kind == "pickle":
        torch.save({"schema": SCHEMA, "x": _Evil()}, path)  # weights_only=True refuses to run it
    elif kind == "damaged":
        torch.save({"schema": SCHEMA, "config": {}}, path)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert needle in str(err.value) and len(str(err.value).splitlines()) == 1


def test_nonfinite_checkpoint_names_last_pt(tmp_path, task_data):
    bad = dataclasses.replace(task_data, labels=task_data.labels.clone())
    bad.labels[:, 1] = float("nan")
    with pytest.raises(RuntimeError, match="loss of task"):
        fit(bad, CFG, checkpoint_dir=tmp_path)
    assert torch.load(tmp_path / "nonfinite.pt", weights_only=True)["resumable"] is False
    fit(task_data, dataclasses.replace(CFG, epochs=1), checkpoint_dir=tmp_path / "good")  # as if an epoch had
    (tmp_path / "good" / "last.pt").replace(tmp_path / "last.pt")                          # finished before
    with pytest.raises(CheckpointError, match=rf"middle of an epoch; resume from the last end-of-epoch checkpoint "
                                              rf"\({tmp_path / 'last.pt'}\) instead"):
        load_checkpoint(tmp_path / "nonfinite.pt")


def test_write_json_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "r.json"
    write_json(path, {"a": 1})
    before = path.read_text()

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("pathlib.Path.replace", fail)
    monkeypatch.setattr("os.replace", fail)
    with pytest.raises(OSError):
        write_json(path, {"a": 2})
    assert path.read_text() == before  # the old record is intact, never half-written


def test_empty_validation_split_fails_before_training(filtered):
    data = mbd.build_task_data(filtered, fractions=(0.85, 0.0, 0.15), device="cpu")
    with pytest.raises(ValueError, match="the valid split holds no 'buy' pair, so no epoch can be evaluated"):
        fit(data, CFG)


def test_stopping_epoch_replays_the_early_stopping_rule():
    from mbkit.checkpoint import stopping_epoch

    scores = [0.178, 0.236, 0.233, 0.288, 0.304]
    assert stopping_epoch(scores, 1) == 3
    assert stopping_epoch(scores, 2) is None
    assert stopping_epoch([0.1, 0.1, 0.1], 2) == 3  # equal is not better


def test_resume_refuses_a_patience_that_would_have_stopped_the_run_earlier():
    import dataclasses

    from mbkit.checkpoint import CheckpointError, check_resume

    saved = dataclasses.asdict(TrainConfig(epochs=5, patience=None, progress=False))
    history = [{"valid_ndcg@10": v} for v in (0.178, 0.236, 0.233, 0.288, 0.304)]
    ckpt = {"config": saved, "epoch": 5, "history": history}
    strict = dataclasses.asdict(TrainConfig(epochs=8, patience=1, progress=False))
    with pytest.raises(CheckpointError, match="with patience=1 it would have stopped at epoch 3"):
        check_resume(ckpt, strict, None, "last.pt")
    loose = dataclasses.asdict(TrainConfig(epochs=8, patience=2, progress=False))
    assert "patience" in check_resume(ckpt, loose, None, "last.pt")


def test_a_record_from_before_a_later_setting_reads_as_its_old_behaviour():
    from mbkit.checkpoint import LATER_SETTINGS, config_differences

    now = dataclasses.asdict(CFG)
    before = {k: v for k, v in now.items() if k not in LATER_SETTINGS}
    assert config_differences(before, now) == {}
    assert config_differences(before, {**now, "test_mask": "train+valid"}) == {"test_mask": ("train", "train+valid")}
    with pytest.raises(ValueError, match="test_mask='valid'; use 'train'"):
        dataclasses.replace(CFG, test_mask="valid")
