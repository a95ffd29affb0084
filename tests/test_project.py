"""The project's set-up files agree with each other: pyproject, the lock, environment.yml, Makefile, CI, params."""

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


def _makefile_rule(target: str) -> tuple[str, str]:
    """(prerequisites, recipe) of `target` in the Makefile."""
    text = (ROOT / "Makefile").read_text()
    m = re.search(rf"^{re.escape(target)}:(.*)\n((?:\t.*\n?)+)", text, re.M)
    assert m, f"the Makefile has no rule for {target}"
    return m.group(1), m.group(2)


def _makefile_vars() -> dict[str, str]:
    return dict(re.findall(r"^([A-Z_]+)\s*:?=\s*(.*?)\s*$", (ROOT / "Makefile").read_text(), re.M))


def _lock_extras() -> set[str]:
    """The extras `make lock` resolves."""
    _, recipe = _makefile_rule("lock")
    return set(re.findall(r"--extra[= ](\S+)", recipe))


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


def test_lock_covers_every_extra_and_leaves_out_the_cuda_runtime():
    assert _lock_extras() == set(PYPROJECT["project"]["optional-dependencies"]), _lock_extras()
    # torch's CUDA runtime (GBs) stays out: development and CI install torch's CPU build.
    cuda = [line for name, _, _, line in _lock() if re.match(r"nvidia-|cuda-|triton$", name)]
    assert not cuda, f"{LOCK_PATH} pins torch's CUDA runtime; `make lock` excludes it: {cuda}"


def test_lock_has_one_version_of_each_package_for_any_python_and_platform_here():
    seen: dict[str, str] = {}
    for name, _, marker, line in _lock():
        if marker is None or marker.evaluate():
            assert name not in seen, f"two pins apply here: {seen[name]!r} and {line!r}"
            seen[name] = line


def test_lock_is_made_by_make_lock_for_the_declared_python():
    head = (ROOT / LOCK_PATH).read_text().splitlines()[:3]
    assert any(line.strip() == "#    make lock" for line in head), f"{LOCK_PATH} does not say how it is made: {head}"
    _, recipe = _makefile_rule("lock")
    assert "uv pip compile pyproject.toml" in recipe.replace("$(UV)", "uv") and "--universal" in recipe
    assert re.search(r"-o \$\(LOCK\)", recipe) and _makefile_vars()["LOCK"] == LOCK_PATH
    assert re.search(rf"--python-version {re.escape(_python_lower_bound())}\b", recipe), recipe
    pins = [l for l in (ROOT / "requirements/pins.in").read_text().splitlines() if l and not l.startswith("#")]
    assert f"torch=={TORCH_PIN}" in pins, pins


def test_pyproject_keeps_ranges_for_people_who_install_mbkit_themselves():
    for req in _declared():
        assert not any(s.operator in ("==", "===") for s in req.specifier), f"{req}: pin it in the lock, not here"
    torch = next(r for r in _declared() if r.name == "torch")
    assert str(torch.specifier).startswith(">=") and Version(TORCH_PIN) in torch.specifier
    # tomllib (tests) needs 3.11; so does the whole lock.
    assert tuple(map(int, _python_lower_bound().split("."))) >= (3, 11)


def test_makefile_setup_installs_the_lock_then_mbkit_without_dependencies():
    prereqs, recipe = _makefile_rule("$(VENV)/.installed")
    assert {"pyproject.toml", "$(LOCK)"} <= set(prereqs.split()), "setup must re-run when pyproject.toml or the lock changes"
    steps = [l.strip() for l in recipe.splitlines() if "pip install" in l]
    assert len(steps) == 2, steps
    assert re.search(r"pip install( --\S+)* -r \$\(LOCK\)$", steps[0]), steps[0]
    assert "--no-deps" in steps[1].split() and steps[1].endswith(" -e ."), steps[1]
    assert "constraints" not in (ROOT / "Makefile").read_text()


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
    assert set(m.group(1).split(",")) == _lock_extras()


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
    from mbkit.reproduce import check_params, load_params, notebooks

    assert len(notebooks()) == 6
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


def _marker_command(tmp_path, name: str, wait_for: str | None = None, code: int = 0) -> list[str]:
    """A child that prints, marks that it started, optionally waits (up to 60 s) for another's mark, exits."""
    import sys
    script = (f"import pathlib, sys, time; d = pathlib.Path({str(tmp_path)!r}); print('hello from {name}'); "
              f"(d / '{name}.started').touch(); end = time.monotonic() + 60\n"
              f"while {wait_for is not None} and not (d / '{wait_for}.started').exists() and time.monotonic() < end:"
              f" time.sleep(0.05)\n"
              f"sys.exit({code} if {wait_for is None} or (d / '{wait_for}.started').exists() else 9)")
    return [sys.executable, "-c", script]


def test_parallel_notebook_runs_overlap_and_log_each_output(tmp_path):
    from mbkit.reproduce import run_parallel
    # each child finishes only once the other has started: with 2 jobs both run at once
    waits = {"a": "b", "b": "a", "c": None}
    run_parallel(["a", "b", "c"], 2, lambda n: _marker_command(tmp_path, n, waits[n]), tmp_path)
    for name in waits:
        assert (tmp_path / f"{name}.log").read_text().strip() == f"hello from {name}"


def test_parallel_runs_start_the_longest_notebooks_first(tmp_path):
    from mbkit.reproduce import longest_first
    for stem, seconds in {"03_short": [1.5, 2.0], "04_long": [10.0, 0.5], "05_mid": [4.0]}.items():
        rows = "".join(f"m,{s}\n" for s in seconds)
        (tmp_path / f"{stem}_runs.csv").write_text("method,train_seconds\n" + rows)
    stems = ["01_none", "02_none", "03_short", "04_long", "05_mid"]
    assert longest_first(stems, tmp_path) == ["04_long", "05_mid", "03_short", "01_none", "02_none"]


def test_a_command_that_cannot_start_stops_the_others_and_closes_every_log(tmp_path, monkeypatch):
    from mbkit import reproduce
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
    from mbkit.reproduce import run_parallel
    codes = {"ok": 0, "bad": 3, "later": 0}
    with pytest.raises(RuntimeError, match=r"bad failed \(see .*bad\.log\); not started: later"):
        run_parallel(["ok", "bad", "later"], 1, lambda n: _marker_command(tmp_path, n, code=codes[n]), tmp_path)
    assert (tmp_path / "ok.started").exists() and (tmp_path / "bad.started").exists()
    assert not (tmp_path / "later.log").exists()
