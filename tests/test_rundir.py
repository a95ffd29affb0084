"""A run's folder: one run at a time (a lock, also across processes), a replaced run kept until its successor
has a checkpoint, an unusable folder found before the data are read."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from helpers import TINY
from mbkit.checkpoint import load_checkpoint
from mbkit.rundir import ASIDE, RunDirError, claim_run_dir, lock_run_dir, probe_run_dir
from mbkit.train import fit

ROOT = Path(__file__).resolve().parent.parent
SMALL = ["--synthetic-size", "3000", "1000", "--min-user-items", "5", "--min-item-users", "5", "--batch-size", "512",
         "--device", "cpu", "--progress", "off"]


def _visible(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


def _old_run(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.json").write_text('{"old": true}')
    (folder / "last.pt").write_bytes(b"old checkpoint")


def test_claim_rules(tmp_path):
    file = tmp_path / "file.txt"
    file.write_text("x")
    with pytest.raises(RunDirError, match=r"--out .*file.txt is a file, not a folder"):
        claim_run_dir(file, flag="--out")
    run = tmp_path / "run"
    _old_run(run)
    with pytest.raises(RunDirError, match=r"already holds a run \(last.pt, metrics.json\).*pass --overwrite"):
        claim_run_dir(run, flag="--out")
    assert claim_run_dir(run, resume=run / "last.pt") is None and (run / "metrics.json").exists()
    assert claim_run_dir(run, overwrite=True, clear=False) is None and (run / "metrics.json").exists()  # a check
    replaced = claim_run_dir(run, overwrite=True)
    assert _visible(run) == [] and sorted(p.name for p in (run / ASIDE).iterdir()) == ["last.pt", "metrics.json"]
    replaced.undo()
    assert _visible(run) == ["last.pt", "metrics.json"] and not (run / ASIDE).exists()
    claim_run_dir(run, overwrite=True).done()
    assert _visible(run) == [] and not (run / ASIDE).exists()
    assert claim_run_dir(tmp_path / "new") is None


def test_a_failed_overwrite_loses_nothing(tmp_path, task_data):
    """The new run fails before its first checkpoint (here: no validation purchases): the old run is back."""
    _old_run(tmp_path)
    empty_valid = dataclasses.replace(task_data, valid_csr=task_data.valid_csr._replace(
        indptr=task_data.valid_csr.indptr * 0, indices=task_data.valid_csr.indices[:0]))
    with pytest.raises(ValueError, match="the valid split holds no 'buy' pair"):
        fit(empty_valid, TINY, checkpoint_dir=tmp_path, overwrite=True)
    assert json.loads((tmp_path / "metrics.json").read_text()) == {"old": True}
    assert (tmp_path / "last.pt").read_bytes() == b"old checkpoint" and not (tmp_path / ASIDE).exists()


def test_an_interrupted_overwrite_leaves_no_mixed_folder(tmp_path, task_data):
    first = fit(task_data, dataclasses.replace(TINY, epochs=1), checkpoint_dir=tmp_path)
    first.save(tmp_path)
    with pytest.raises(RunDirError, match="already holds a run"):
        fit(task_data, TINY, checkpoint_dir=tmp_path)

    def interrupt(epoch: int, total: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # after the new run's first checkpoint
        fit(task_data, dataclasses.replace(TINY, balancer="pcgrad"), checkpoint_dir=tmp_path, overwrite=True,
            on_epoch=interrupt)
    assert _visible(tmp_path) == ["last.pt"] and not (tmp_path / ASIDE).exists()  # the old record went
    assert load_checkpoint(tmp_path / "last.pt")["config"]["balancer"] == "pcgrad"


def test_a_replacement_killed_half_way_is_settled_by_the_next_claim(tmp_path):
    _old_run(tmp_path)
    claim_run_dir(tmp_path, overwrite=True)  # ... and the process died before any checkpoint
    assert claim_run_dir(tmp_path, resume=tmp_path / "last.pt") is None  # the old run is back, resumable
    assert _visible(tmp_path) == ["last.pt", "metrics.json"]


def _holder_script(folder: Path, ready: Path) -> str:
    return textwrap.dedent(f"""\
        import pathlib, time
        from mbkit.rundir import lock_run_dir
        with lock_run_dir({str(folder)!r}):
            pathlib.Path({str(ready)!r}).touch()
            time.sleep(60)
        """)


@pytest.fixture()
def held(tmp_path):
    """A folder whose lock another process holds."""
    folder, ready = tmp_path / "run", tmp_path / "ready"
    proc = subprocess.Popen([sys.executable, "-c", _holder_script(folder, ready)])
    try:
        for _ in range(600):
            if ready.exists():
                break
            proc.poll()
            assert proc.returncode is None, "the lock holder died"
            import time
            time.sleep(0.05)
        yield folder, proc.pid
    finally:
        proc.kill()
        proc.wait()


def test_a_folder_in_use_fails_at_once_naming_the_other_process(held):
    folder, pid = held
    with pytest.raises(RunDirError, match=rf"in use by another run \(process {pid} on .*\); wait for it to finish"):
        with lock_run_dir(folder):
            pass
    with lock_run_dir(folder.parent / "other"):  # another folder is free, and the lock is re-entrant
        with lock_run_dir(folder.parent / "other"):
            pass


def test_the_command_line_refuses_a_folder_in_use_before_reading_the_log(held, capsys, monkeypatch):
    import mbkit.data.load
    from mbkit.cli import main

    folder, pid = held
    monkeypatch.setattr(mbkit.data.load, "load_filtered", lambda *a, **k: pytest.fail("the log was read"))
    assert main(["train", *SMALL, "--epochs", "1", "--out", str(folder)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"--out {folder} is in use by another run (process {pid}" in err


def test_two_runs_on_one_folder_one_wins_and_nothing_is_lost(tmp_path):
    """Two `train` processes started together on one --out: exactly one trains; the other ends in one sentence
    (the folder is in use, or already holds the finished run); the folder holds one complete, resumable run."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "mbkit", "train", *SMALL, "--epochs", "2", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
             for _ in range(2)]
    results = [(p.wait(timeout=300), p.stdout.read(), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 2], results
    _, _, err = next(r for r in results if r[0] == 2)
    assert len(err.strip().splitlines()) == 1
    assert "is in use by another run" in err or "already holds a run" in err, err
    record = json.loads((out / "metrics.json").read_text())
    assert record["epochs_trained"] == 2 and load_checkpoint(out / "last.pt")["epoch"] == 2


def test_an_unusable_folder_is_found_before_the_data(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(RunDirError, match=r"--out .*file/run cannot be written \(Not a directory\)"):
        probe_run_dir(blocker / "run", flag="--out")
    assert probe_run_dir(tmp_path / "a" / "b") == tmp_path / "a" / "b" and _visible(tmp_path / "a" / "b") == []


def test_the_default_out_names_the_balancers_arguments(tmp_path, monkeypatch, capsys):
    from mbkit.cli import main

    monkeypatch.chdir(tmp_path)
    for r in ("0.3", "0.7"):
        assert main(["train", *SMALL, "--epochs", "1", "--balancer", "metabalance", "--relax-factor", r]) == 0
        assert json.loads(capsys.readouterr().out.splitlines()[-1])["out"] == f"runs/metabalance_relax_factor={r}_seed0"
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["metabalance_relax_factor=0.3_seed0",
                                                                     "metabalance_relax_factor=0.7_seed0"]
