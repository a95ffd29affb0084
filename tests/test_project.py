"""The project's set-up files agree with each other: pyproject, environment.yml, constraints, CI, params."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_environment_yml_only_wraps_pyproject():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert env["channels"] == ["conda-forge"], "the deprecated pytorch channel (or defaults) must not be used"
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    pip = [d for d in env["dependencies"] if isinstance(d, dict)]
    assert sorted(re.split(r"[=<>]", d)[0] for d in conda) == ["pip", "python"], conda
    python = next(d for d in conda if d.startswith("python"))
    major_minor = python.split("=")[1]
    lower = PYPROJECT["project"]["requires-python"].removeprefix(">=")
    assert tuple(map(int, major_minor.split("."))) >= tuple(map(int, lower.split(".")))
    assert len(pip) == 1 and len(pip[0]["pip"]) == 1
    m = re.fullmatch(r"-e \.\[([a-z,]+)\]", pip[0]["pip"][0])
    assert m, "environment.yml must install the package itself (`-e .[extras]`), not repeat its dependencies"
    extras = set(m.group(1).split(","))
    assert extras <= set(PYPROJECT["project"]["optional-dependencies"])
    assert extras == {"notebooks", "test"}


def test_constraints_pin_the_local_torch_wheel_and_pyproject_keeps_a_range():
    pins = [l for l in (ROOT / "constraints.txt").read_text().splitlines() if l and not l.startswith("#")]
    assert pins == ["torch==2.13.0"]
    deps = PYPROJECT["project"]["dependencies"]
    torch_dep = next(d for d in deps if d.startswith("torch"))
    assert torch_dep.startswith("torch>=") and "==" not in torch_dep


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```(?:bash|sh)?\n(.*?)```", readme, re.S)
    first = blocks[0].strip().splitlines()
    assert first == ["make reproduce", "make test"], first
    assert re.search(r"^make test$", (ROOT / ".ci/run").read_text(), re.M)


@pytest.mark.parametrize("params_file", sorted((ROOT / "notebooks/params").glob("*.yaml")), ids=lambda p: p.name)
def test_parameter_files_match_notebook_parameters(params_file):
    from mbkit.reproduce import check_params, load_params, notebooks

    assert len(notebooks()) == 4
    params = load_params(params_file)
    check_params(params)  # raises on a name a notebook does not declare
    for stem, p in params.items():
        assert p, f"{params_file.name} gives {stem} no parameters"


def test_params_check_catches_unknown_name(tmp_path):
    from mbkit.reproduce import check_params, load_params

    bad = tmp_path / "bad.yaml"
    bad.write_text("common:\n  no_such_parameter: 1\n")
    with pytest.raises(ValueError, match="no_such_parameter"):
        check_params(load_params(bad))


def test_papermill_sees_every_assignment_of_each_parameters_cell():
    """papermill silently drops a parameter whose line it cannot parse (e.g. '=' inside a comment)."""
    import ast

    import nbformat
    import papermill

    from mbkit.reproduce import notebooks

    for nb in notebooks():
        cells = [c for c in nbformat.read(nb, as_version=4).cells if "parameters" in c.metadata.get("tags", [])]
        assert len(cells) == 1, f"{nb.name} needs exactly one cell tagged 'parameters'"
        assigned = [t.id for node in ast.parse(cells[0].source).body for t in getattr(node, "targets", [])]
        assert assigned == list(papermill.inspect_notebook(str(nb))), nb.name


def test_readme_python_example_runs(capsys):
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Using mbkit from Python", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    exec(compile(code, "README.md", "exec"), {})
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("MetaBalance (r=0.7) 0.")
    assert out[1].startswith("[(64, 32), (32,)]")
