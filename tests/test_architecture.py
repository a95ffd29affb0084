"""The package's architecture: imports point one way (utilities <- data <- method <- training <- study <-
command line), no module imports in a cycle, modules stay small, and `mbkit` names its public API."""

from __future__ import annotations

import ast
import importlib
import pydoc
from pathlib import Path

import pytest

import mbkit

PACKAGE = Path(mbkit.__file__).parent
MAX_LINES = 450

# Layers from the bottom up; a module belongs to the layer of its longest matching prefix.
LAYERS = [
    ("utilities", ("mbkit._version", "mbkit.utils", "mbkit.provenance")),
    ("data", ("mbkit.data",)),
    ("method", ("mbkit.model", "mbkit.grads", "mbkit.optim", "mbkit.metrics", "mbkit.popularity",
                "mbkit.balancers")),
    ("training", ("mbkit.train", "mbkit.checkpoint", "mbkit.rundir", "mbkit.diagnostics")),
    ("study", ("mbkit.study",)),
    ("command line", ("mbkit.cli", "mbkit.__main__")),
    ("public API", ("mbkit",)),
]


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = ["mbkit", *path.relative_to(PACKAGE).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def layer(module: str) -> int:
    best = None
    for rank, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and (best is None or len(p) > len(best[1])):
                best = (rank, p)
    assert best is not None, f"{module} belongs to no layer: add it to LAYERS"
    return best[0]


def imports(module: str) -> set[str]:
    """The mbkit modules that `module` imports, at its top or inside a function (lazy imports count too)."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in MODULES:  # `import mbkit.data.split` of a name inside a module
                name = name.rpartition(".")[0]
            if name.startswith("mbkit") and name != module:
                found.add(name)
    return found


GRAPH = {m: imports(m) for m in MODULES}


def test_every_module_has_a_layer_and_imports_only_its_own_or_lower_layers():
    upward = [f"{m} ({LAYERS[layer(m)][0]}) imports {t} ({LAYERS[layer(t)][0]})"
              for m, targets in GRAPH.items() for t in sorted(targets) if layer(t) > layer(m)]
    assert not upward, "imports must point down the layers:\n" + "\n".join(upward)


def test_no_import_cycles():
    cycles, state = [], {}

    def visit(m: str, stack: list[str]) -> None:
        state[m] = "open"
        for t in sorted(GRAPH[m]):
            if state.get(t) == "open":
                cycles.append(" -> ".join(stack[stack.index(t):] + [t]))
            elif t not in state:
                visit(t, stack + [t])
        state[m] = "done"

    for m in MODULES:
        if m not in state:
            visit(m, [m])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_checks_above_can_fail():
    """The graph is read right: a known downward import is found, and an upward one would be flagged."""
    assert "mbkit.data.split" in GRAPH["mbkit.train"] and "mbkit.balancers" in GRAPH["mbkit.train"]
    assert "mbkit.balancers.gram" in GRAPH["mbkit.balancers.pcgrad"]  # a relative import
    assert layer("mbkit.study.grid") > layer("mbkit.train") > layer("mbkit.grads") > layer("mbkit.data.split")


@pytest.mark.parametrize("module", sorted(MODULES))
def test_modules_are_small(module):
    n = len(MODULES[module].read_text().splitlines())
    assert n <= MAX_LINES, f"{module} has {n} lines; split it by concern (at most about {MAX_LINES})"


def test_the_public_api_is_named_and_documented():
    text = pydoc.render_doc(mbkit, renderer=pydoc.plaintext)
    assert f"VERSION\n    {mbkit.__version__}" in text
    for name in mbkit.__all__:
        assert hasattr(mbkit, name), name
        assert name == "__version__" or name in text, f"help(mbkit) does not show {name}"
        obj = getattr(mbkit, name)
        if callable(obj):
            assert obj.__doc__, f"mbkit.{name} has no docstring"
    for package in ("mbkit.data", "mbkit.balancers", "mbkit.study"):
        assert importlib.import_module(package).__doc__, package


def test_the_package_docstring_example_runs():
    import doctest

    result = doctest.testmod(mbkit, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 4 and result.failed == 0
