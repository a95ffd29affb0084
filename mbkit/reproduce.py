"""Run the numbered notebooks in order with papermill, with parameters from one YAML file.

The YAML has a `common` mapping (applied to every notebook) and one mapping per notebook stem
(e.g. `03_relax_factor`) that overrides it. Every key must be a parameter of the notebook it reaches:
papermill only warns about unknown names, so `check_params` turns that into an error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from mbkit.record import ROOT

NOTEBOOK_DIR = ROOT / "notebooks"


def notebooks() -> list[Path]:
    """The numbered notebooks, in order."""
    return sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))


def load_params(path: str | Path) -> dict[str, dict[str, Any]]:
    """Per-notebook parameters: `common` merged under each notebook's own section."""
    raw = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping with 'common' and per-notebook sections")
    common = raw.get("common") or {}
    stems = {nb.stem for nb in notebooks()}
    unknown = set(raw) - stems - {"common"}
    if unknown:
        raise ValueError(f"{path}: sections {sorted(unknown)} name no notebook; expected 'common' or one of {sorted(stems)}")
    return {stem: {**common, **(raw.get(stem) or {})} for stem in sorted(stems)}


def check_params(params: dict[str, dict[str, Any]]) -> None:
    """Raise if a parameter is not declared in its notebook's `parameters` cell."""
    import papermill

    for nb in notebooks():
        declared = set(papermill.inspect_notebook(str(nb)))
        extra = set(params.get(nb.stem, {})) - declared
        if extra:
            raise ValueError(f"{nb.name} has no parameters {sorted(extra)}; it declares {sorted(declared)}")


def run_notebooks(params_file: str | Path, out_dir: str | Path = "build/executed", only: str | None = None) -> None:
    """Execute every notebook (or those whose name contains `only`) into `out_dir`, stopping at the first failure."""
    import papermill

    params = load_params(params_file)
    check_params(params)
    out = Path(out_dir)
    if not out.is_absolute():
        out = ROOT / out
    out.mkdir(parents=True, exist_ok=True)
    for nb in notebooks():
        if only and only not in nb.name:
            continue
        print(f"== {nb.name}", flush=True)
        papermill.execute_notebook(str(nb), str(out / nb.name), parameters=params[nb.stem],
                                   kernel_name="python3", cwd=str(NOTEBOOK_DIR), progress_bar=False)


def store_executed(out_dir: str | Path = "build/executed") -> list[Path]:
    """Copy executed notebooks over the committed ones, scrubbed for a stable diff.

    Drops papermill's metadata and its injected-parameters cell (the committed notebook keeps its own
    `parameters` cell) and renumbers execution counts 1..n, which nbval needs to compare outputs.
    """
    import nbformat

    out = Path(out_dir)
    if not out.is_absolute():
        out = ROOT / out
    written = []
    for nb_path in notebooks():
        executed = out / nb_path.name
        if not executed.exists():
            continue
        nb = nbformat.read(executed, as_version=4)
        nb.metadata.pop("papermill", None)
        nb.cells = [c for c in nb.cells if "injected-parameters" not in c.metadata.get("tags", [])]
        count = 0
        for cell in nb.cells:
            cell.metadata.pop("papermill", None)
            cell.metadata.pop("execution", None)
            if cell.cell_type == "code":
                count += 1
                cell.execution_count = count
                for o in cell.get("outputs", []):
                    if "execution_count" in o:
                        o["execution_count"] = count
        nbformat.write(nb, nb_path)
        written.append(nb_path)
    return written
