"""The notebooks' preamble and record helper (`mbkit.study.notebook`): parameters from the tagged cell, values
from the kernel, outputs where they belong, a record that names its parameters."""

from __future__ import annotations

import json

import nbformat
import pandas as pd
import pytest

from mbkit.study import notebook
from mbkit.study.checks import NOT_COMPARED
from mbkit.study.reproduce import NOTEBOOK_DIR, declared

NOTEBOOKS = sorted(p.stem for p in NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))


def _defaults(name: str) -> dict:
    return {n: v for n, (v, _) in declared(NOTEBOOK_DIR / f"{name}.ipynb").items()}


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_every_notebook_starts_with_its_own_name_right_after_its_parameters(name):
    cells = [c for c in nbformat.read(NOTEBOOK_DIR / f"{name}.ipynb", as_version=4).cells if c.cell_type == "code"]
    assert "parameters" in cells[0].metadata.get("tags", [])
    assert f'nb = start("{name}", globals())' in cells[1].source
    code = "\n".join(c.source for c in cells[1:])
    assert "write_json(" not in code and "output_dirs(" not in code and "params = {" not in code
    assert code.count("nb.record(") == 1


def test_start_takes_every_parameter_of_the_cell_and_records_the_ones_that_decide_the_numbers(tmp_path, monkeypatch):
    monkeypatch.setenv("MBKIT_OUTPUT_ROOT", str(tmp_path))
    values = {**_defaults("04_method_comparison"), "seeds": [0], "runs_dir": "somewhere", "unrelated": 1}
    nb = notebook.start("04_method_comparison", values)
    assert list(nb.values) == list(_defaults("04_method_comparison"))  # the cell's names, in its order
    assert nb.values["seeds"] == [0]  # the kernel's value (papermill's injected one), not the default
    assert not set(nb.params) & NOT_COMPARED and set(nb.params) | NOT_COMPARED >= set(nb.values)
    assert nb.grid_settings["runs_dir"] == "somewhere" and "seeds" not in nb.grid_settings
    assert (nb.figures_dir, nb.results_dir) == (tmp_path / "figures", tmp_path / "results")
    assert nb.data_config().synthetic_size is None and nb.device.type in ("cpu", "cuda")

    provenance = nb.record({"answer": 42}, tables={"runs": pd.DataFrame({"seed": [0], "x": [1.5]})})
    record = json.loads((tmp_path / "results" / "04_method_comparison.json").read_text())
    assert list(record) == ["params", "answer", "provenance"] and record["params"]["seeds"] == [0]
    assert record["provenance"]["mbkit"] == provenance["mbkit"]
    table = pd.read_csv(tmp_path / "results" / "04_method_comparison_runs.csv")
    assert table.to_dict("list") == {"seed": [0], "x": [1.5]}


def test_the_world_size_parameters_size_the_built_in_world(tmp_path, monkeypatch):
    monkeypatch.setenv("MBKIT_OUTPUT_ROOT", str(tmp_path))
    nb = notebook.start("06_all_methods", {**_defaults("06_all_methods"), "world_users": 3000, "world_items": 1000})
    assert nb.data_config().synthetic_size == (3000, 1000)


def test_other_parameters_write_to_a_scratch_folder_and_say_so(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("MBKIT_OUTPUT_ROOT", raising=False)
    monkeypatch.setattr(notebook, "ROOT", tmp_path)
    nb = notebook.start("03_relax_factor", {**_defaults("03_relax_factor"), "seeds": [7]})
    assert nb.results_dir.parent.parent == tmp_path / "build" / "explore"
    assert "parameters differ from the committed results (seeds)" in capsys.readouterr().out


def test_a_parameter_not_yet_run_is_named():
    values = _defaults("01_data_filtering")
    del values["split_seed"]
    with pytest.raises(NameError, match=r"parameters \['split_seed'\] of 01_data_filtering.ipynb are not defined"):
        notebook.start("01_data_filtering", values)
    with pytest.raises(FileNotFoundError, match="no notebook 99_nothing.ipynb"):
        notebook.start("99_nothing", values)
