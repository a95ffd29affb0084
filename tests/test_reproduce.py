"""Running the notebooks: two at a time, the longest first, each with its own log, and no further one after a
failure."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest


def _marker_command(tmp_path, name: str, wait_for: str | None = None, code: int = 0) -> list[str]:
    """A child that prints, marks that it started, optionally waits (up to 60 s) for another's mark, exits."""
    script = (f"import pathlib, sys, time; d = pathlib.Path({str(tmp_path)!r}); print('hello from {name}'); "
              f"(d / '{name}.started').touch(); end = time.monotonic() + 60\n"
              f"while {wait_for is not None} and not (d / '{wait_for}.started').exists() and time.monotonic() < end:"
              f" time.sleep(0.05)\n"
              f"sys.exit({code} if {wait_for is None} or (d / '{wait_for}.started').exists() else 9)")
    return [sys.executable, "-c", script]


def test_parallel_notebook_runs_overlap_and_log_each_output(tmp_path):
    from mbkit.study.reproduce import run_parallel
    # each child finishes only once the other has started: with 2 jobs both run at once
    waits = {"a": "b", "b": "a", "c": None}
    run_parallel(["a", "b", "c"], 2, lambda n: _marker_command(tmp_path, n, waits[n]), tmp_path)
    for name in waits:
        assert (tmp_path / f"{name}.log").read_text().strip() == f"hello from {name}"


def test_parallel_runs_start_the_longest_notebooks_first(tmp_path):
    from mbkit.study.reproduce import longest_first
    for stem, seconds in {"03_short": [1.5, 2.0], "04_long": [10.0, 0.5], "05_mid": [4.0]}.items():
        rows = "".join(f"m,{s}\n" for s in seconds)
        (tmp_path / f"{stem}_runs.csv").write_text("method,train_seconds\n" + rows)
    stems = ["01_none", "02_none", "03_short", "04_long", "05_mid"]
    assert longest_first(stems, tmp_path) == ["04_long", "05_mid", "03_short", "01_none", "02_none"]


def test_a_command_that_cannot_start_stops_the_others_and_closes_every_log(tmp_path, monkeypatch):
    from mbkit.study import reproduce
    opened = []

    def tracked_open(*args, **kwargs):
        opened.append(open(*args, **kwargs))
        return opened[-1]

    monkeypatch.setattr(reproduce, "open", tracked_open, raising=False)
    commands = {"waits": _marker_command(tmp_path, "waits", wait_for="never"), "missing": [str(tmp_path / "nope")]}
    with pytest.raises(FileNotFoundError):
        reproduce.run_parallel(["waits", "missing"], 2, commands.__getitem__, tmp_path)
    assert [Path(f.name).name for f in opened] == ["waits.log", "missing.log"]
    assert all(f.closed for f in opened)


def test_a_failed_notebook_run_stops_the_rest_and_names_its_log(tmp_path):
    from mbkit.study.reproduce import run_parallel
    codes = {"ok": 0, "bad": 3, "later": 0}
    with pytest.raises(RuntimeError, match=r"bad failed \(bad: hello from bad; see .*bad\.log\); not started: later"):
        run_parallel(["ok", "bad", "later"], 1, lambda n: _marker_command(tmp_path, n, code=codes[n]), tmp_path)
    assert (tmp_path / "ok.started").exists() and (tmp_path / "bad.started").exists()
    assert not (tmp_path / "later.log").exists()


def test_update_notebooks_stores_only_the_notebooks_this_run_executed(tmp_path, monkeypatch):
    """`reproduce --only 06 --update-notebooks` must not store the executed copies an earlier run left behind."""
    import nbformat

    from mbkit.study import reproduce
    committed, out = tmp_path / "notebooks", tmp_path / "executed"
    committed.mkdir(), out.mkdir()
    names = ["01_data_filtering.ipynb", "06_all_methods.ipynb"]
    for name in names:
        nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("committed")]), committed / name)
        nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1")]), out / name)
    monkeypatch.setattr(reproduce, "notebooks", lambda: [committed / n for n in names])
    assert reproduce.store_executed(out, only="06_all") == [committed / "06_all_methods.ipynb"]
    assert nbformat.read(committed / "01_data_filtering.ipynb", as_version=4).cells[0].source == "committed"
    assert nbformat.read(committed / "06_all_methods.ipynb", as_version=4).cells[0].cell_type == "code"
    assert len(reproduce.store_executed(out)) == 2


def test_progress_bars_are_recognised_and_nothing_else():
    from mbkit.study.reproduce import is_progress_output

    def stderr(text):
        return {"output_type": "stream", "name": "stderr", "text": text}
    assert is_progress_output(stderr("\rrun 1/51:   0%|          | 0/1020 [00:00<?, ?epoch/s, Vanilla, seed 0: start]"))
    assert is_progress_output(stderr("\rgrid: 100%|██████████| 1020/1020 [07:32<00:00,  2.25epoch/s]\n"))
    assert is_progress_output(stderr("\n"))
    assert not is_progress_output(stderr("UserWarning: auxiliary task 'fav' has no training positive\n"))
    assert not is_progress_output(stderr("\rgrid:  10%|#         | 1/10 [00:01<00:09]\nTraceback (most recent call)\n"))
    assert not is_progress_output({"output_type": "stream", "name": "stdout", "text": "50%| 1/2 [00:01<00:01]"})


def test_committed_notebooks_hold_no_progress_output():
    import nbformat

    from mbkit.study.reproduce import is_progress_output, notebooks
    for path in notebooks():
        cells = nbformat.read(path, as_version=4).cells
        bars = sum(is_progress_output(o) for c in cells if c.cell_type == "code" for o in c.outputs)
        assert bars == 0, f"{path.name} holds {bars} progress-bar outputs: store it with `make notebooks`"
