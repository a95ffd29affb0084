"""The project's set-up: the lock satisfies pyproject.toml and is what is installed, conda installs the same,
CI runs the README's test command, the parameter files reach their notebooks, the README's example runs."""

from __future__ import annotations

import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
LOCK_PATH = "requirements/lock.txt"
TORCH_PIN = "2.13.0"  # development and CI: the local CPU wheel of this release


def _lock() -> list[tuple[str, Version, Marker | None, str]]:
    """(name, version, marker, line) for every requirement line of the lock."""
    entries = []
    for line in (ROOT / LOCK_PATH).read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        req = Requirement(line)
        pins = list(req.specifier)
        assert len(pins) == 1 and pins[0].operator == "==" and "*" not in pins[0].version, f"not an exact pin: {line}"
        entries.append((canonicalize_name(req.name), Version(pins[0].version), req.marker, line))
    return entries


def _declared() -> list[Requirement]:
    """Every requirement pyproject.toml declares: dependencies, each extra, the build backend."""
    project = PYPROJECT["project"]
    reqs = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
    return [Requirement(r) for r in reqs + PYPROJECT["build-system"]["requires"]]


def _python_lower_bound() -> str:
    m = re.fullmatch(r">=(\d+\.\d+)", PYPROJECT["project"]["requires-python"])
    assert m, "requires-python should be a plain lower bound"
    return m.group(1)


def test_lock_pins_every_declared_dependency_inside_its_range():
    lock = _lock()
    pinned: dict[str, list[Version]] = {}
    for name, version, _, _ in lock:
        pinned.setdefault(name, []).append(version)
    problems = []
    for req in _declared():
        name = canonicalize_name(req.name)
        if name not in pinned:
            problems.append(f"{req} is not in {LOCK_PATH} (run `make lock`)")
        problems += [f"{LOCK_PATH} pins {name}=={v}, outside {req}" for v in pinned.get(name, [])
                     if not req.specifier.contains(v, prereleases=True)]
    assert not problems, "\n".join(problems)
    assert pinned["torch"] == [Version(TORCH_PIN)], pinned["torch"]
    # torch's CUDA runtime (GBs) stays out: development and CI install torch's CPU build.
    cuda = [line for name, _, _, line in lock if re.match(r"nvidia-|cuda-|triton$", name)]
    assert not cuda, f"{LOCK_PATH} pins torch's CUDA runtime; `make lock` excludes it: {cuda}"


def test_lock_has_one_version_of_each_package_for_any_python_and_platform_here():
    seen: dict[str, str] = {}
    for name, _, marker, line in _lock():
        if marker is None or marker.evaluate():
            assert name not in seen, f"two pins apply here: {seen[name]!r} and {line!r}"
            seen[name] = line


def test_pyproject_keeps_ranges_for_people_who_install_mbkit_themselves():
    for req in _declared():
        assert not any(s.operator in ("==", "===") for s in req.specifier), f"{req}: pin it in the lock, not here"
    torch = next(r for r in _declared() if r.name == "torch")
    assert str(torch.specifier).startswith(">=") and Version(TORCH_PIN) in torch.specifier
    # tomllib (tests) needs 3.11; so does the whole lock.
    assert tuple(map(int, _python_lower_bound().split("."))) >= (3, 11)


def test_environment_yml_installs_the_same_lock_and_extras():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert env["channels"] == ["conda-forge"], "the deprecated pytorch channel (or defaults) must not be used"
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    pip = [d for d in env["dependencies"] if isinstance(d, dict)]
    assert sorted(re.split(r"[=<>]", d)[0] for d in conda) == ["pip", "python"], conda
    python = next(d for d in conda if d.startswith("python"))
    assert python == f"python={_python_lower_bound()}", (python, PYPROJECT["project"]["requires-python"])
    assert len(pip) == 1 and len(pip[0]["pip"]) == 2, pip
    lock_line, package_line = pip[0]["pip"]
    assert lock_line == f"-r {LOCK_PATH}", lock_line  # relative to environment.yml's folder, the root
    m = re.fullmatch(r"-e \.\[([a-z,]+)\]", package_line)
    assert m, "environment.yml must install the package itself (`-e .[extras]`) after the lock"
    assert set(m.group(1).split(",")) == set(PYPROJECT["project"]["optional-dependencies"])


def test_this_environment_is_the_locked_one():
    """The interpreter running the tests (`make setup`'s .venv, or the conda env) has the lock's versions."""
    if sys.version_info[:2] != tuple(map(int, _python_lower_bound().split("."))):
        pytest.skip(f"the lock is made for Python {_python_lower_bound()}")
    wrong = []
    for name, version, marker, _ in _lock():
        if marker is not None and not marker.evaluate():
            continue
        try:
            installed = Version(metadata.version(name))
        except metadata.PackageNotFoundError:
            wrong.append(f"{name}: missing (lock: {version})")
            continue
        if Version(installed.public) != version:  # a local build label (2.13.0+cpu) is the same release
            wrong.append(f"{name}: {installed} installed, lock: {version}")
    assert not wrong, "run `make setup` (or `pip install -r requirements/lock.txt`):\n" + "\n".join(wrong)


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```(?:bash|sh)?\n(.*?)```", readme, re.S)
    first = blocks[0].strip().splitlines()
    assert first == ["make reproduce", "make test"], first
    assert re.search(r"^make test$", (ROOT / ".ci/run").read_text(), re.M)


@pytest.mark.parametrize("params_file", sorted((ROOT / "notebooks/params").glob("*.yaml")), ids=lambda p: p.name)
def test_parameter_files_match_notebook_parameters(params_file):
    from mbkit.study.reproduce import check_params, load_params

    params = load_params(params_file)
    check_params(params)  # raises on a name a notebook does not declare
    for stem, p in params.items():
        assert p, f"{params_file.name} gives {stem} no parameters"


def test_params_check_catches_unknown_name(tmp_path):
    from mbkit.study.reproduce import check_params, load_params

    bad = tmp_path / "bad.yaml"
    bad.write_text("common:\n  no_such_parameter: 1\n")
    with pytest.raises(ValueError, match="no_such_parameter"):
        check_params(load_params(bad))


def test_papermill_sees_every_assignment_of_each_parameters_cell():
    """papermill silently drops a parameter whose line it cannot parse (e.g. '=' inside a comment)."""
    import ast

    import nbformat
    import papermill

    from mbkit.study.reproduce import notebooks

    for nb in notebooks():
        cells = [c for c in nbformat.read(nb, as_version=4).cells if "parameters" in c.metadata.get("tags", [])]
        assert len(cells) == 1, f"{nb.name} needs exactly one cell tagged 'parameters'"
        assigned = [t.id for node in ast.parse(cells[0].source).body for t in getattr(node, "targets", [])]
        assert assigned == list(papermill.inspect_notebook(str(nb))), nb.name


def test_readme_python_example_runs(capsys):
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Using mbkit", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    exec(compile(code, "README.md", "exec"), {})
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("MetaBalance (r=0.7) ['ndcg@10', 'ndcg@20', 'precision@10'")
    assert out[1] == "[(64, 32), (32,)]"


def test_readme_results_are_generated_from_the_records():
    """The README's results block is what `mbkit.study.headline` makes of results/ (`make reproduce` rewrites it):
    a number typed into it, or a record changed without it, fails here."""
    from mbkit.study.headline import END, START, block, headline

    readme = (ROOT / "README.md").read_text()
    assert readme.count(START) == 1 and readme.count(END) == 1
    written = readme[readme.index(START): readme.index(END) + len(END)]
    assert written == block(headline(ROOT / "results")), "run `make reproduce` (or study.headline.update_readme())"
