"""What the notebooks share beyond the science: their parameters, output folders, data and record.

A notebook's first code cell after its tagged `parameters` cell is

    nb = notebook.start("03_relax_factor", globals())

and its last is `nb.record({...}, tables={"runs": runs})`; every cell between is the study.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import pandas as pd
import torch

from mbkit.data import DataConfig
from mbkit.provenance import ROOT, jsonable, provenance, write_json
from mbkit.study import plots
from mbkit.study.checks import NOT_COMPARED, committed_record, params_differ
from mbkit.study.reproduce import NOTEBOOK_DIR, declared
from mbkit.utils import resolve_device

DEFAULT_RESULTS = "../results"  # the notebooks' results_dir: the committed results/, seen from notebooks/
# The parameters that say how a grid runs (where its records go, on what executor), not what it computes.
GRID_SETTINGS = ("runs_dir", "progress", "executor", "ray_address", "runs_per_gpu", "cpus_per_run")


def output_dirs(*directories: str | Path, notebook: str | None = None,
                params: dict[str, Any] | None = None, record_dir: str | Path | None = None) -> list[Path]:
    """The notebook's output folders: in place, under `$MBKIT_OUTPUT_ROOT`, or in a scratch folder.

    - `$MBKIT_OUTPUT_ROOT` set (`make test`, the browser test): everything goes under it.
    - `notebook` and `params` given, and the record `<record_dir>/<notebook>.json` (default: the committed
      `results/`) was made with other parameters: the outputs go to
      `build/explore/<notebook>-<hash of params>/`, and a line says so. Exploring in JupyterLab never
      rewrites the committed figures and results.
    - otherwise in place (`make reproduce` with the parameters that produced the committed results, or
      `make decision` into `results/decision/`, which holds the records of its own parameters).
    """
    root = os.environ.get("MBKIT_OUTPUT_ROOT")
    if root:
        out = [Path(root) / Path(d).name for d in directories]
    else:
        out = [Path(d) for d in directories]
        if notebook is not None and params is not None:
            differ = params_differ(params, committed_record(notebook, record_dir), notebook)
            if differ:
                key = json.dumps(jsonable(params), sort_keys=True).encode()
                scratch = ROOT / "build" / "explore" / f"{notebook}-{hashlib.sha256(key).hexdigest()[:8]}"
                out = [scratch / Path(d).name for d in directories]
                names = ", ".join(sorted(differ))
                print(f"parameters differ from the committed results ({names}): outputs go to {scratch}")
    for d in out:
        d.mkdir(parents=True, exist_ok=True)
    return out


def parameter_names(name: str) -> list[str]:
    """The names of notebook `name`'s tagged parameters cell, in order (papermill's inspection of the saved
    notebook: `notebooks/<name>.ipynb`, or `<name>.ipynb` in the working folder for a copy elsewhere)."""
    for path in (NOTEBOOK_DIR / f"{name}.ipynb", Path.cwd() / f"{name}.ipynb"):
        if path.is_file():
            return list(declared(path))
    raise FileNotFoundError(f"no notebook {name}.ipynb in {NOTEBOOK_DIR} or {Path.cwd()}: start() reads the "
                            "parameters cell of the saved notebook; pass the notebook's file name without .ipynb")


@dataclass(frozen=True)
class Notebook:
    """One notebook's run: every parameter's value in this kernel, and where its outputs go."""

    name: str
    values: dict[str, Any]
    figures_dir: Path
    results_dir: Path

    @property
    def params(self) -> dict[str, Any]:
        """The parameters that decide the numbers (every one but where and how it runs): the record keeps
        them, and a committed result is compared only with a run of the same ones."""
        return {k: v for k, v in self.values.items() if k not in NOT_COMPARED}

    @property
    def device(self) -> torch.device:
        return resolve_device(self.values.get("device", "auto"))

    @property
    def grid_settings(self) -> dict[str, Any]:
        """The keyword arguments of `run_grid` / `run_map` beyond the grid: records, progress, executor."""
        return {k: self.values[k] for k in GRID_SETTINGS if k in self.values}

    def data_config(self) -> DataConfig:
        """The `DataConfig` of the data parameters; `world_users` / `world_items` size the built-in world."""
        fields = {f.name for f in dataclasses.fields(DataConfig)}
        kwargs = {k: v for k, v in self.values.items() if k in fields}
        if self.values.get("data") == "synthetic" and "world_users" in self.values:
            kwargs["synthetic_size"] = (self.values["world_users"], self.values["world_items"])
        return DataConfig(**kwargs)

    def data(self):
        """(Table-1 statistics, filtered log, task data on the device): `DataConfig.read` then `task_data`."""
        config = self.data_config()
        stats, log = config.read()
        return stats, log, config.task_data(log, self.device)

    def save(self, fig, name: str) -> list[Path]:
        """`plots.save` into this run's figures folder."""
        return plots.save(fig, name, self.figures_dir)

    def record(self, payload: Mapping[str, Any], tables: Mapping[str, pd.DataFrame] | None = None) -> dict[str, Any]:
        """Write `results/<name>.json` (the parameters, then `payload`, then provenance) and each table as
        `results/<name>_<key>.csv`; returns the provenance, which the notebook shows last."""
        for key, table in (tables or {}).items():
            table.to_csv(self.results_dir / f"{self.name}_{key}.csv", index=False)
        write_json(self.results_dir / f"{self.name}.json", {"params": self.params, **payload}, device=self.device)
        return provenance(self.device)


def start(name: str, namespace: Mapping[str, Any]) -> Notebook:
    """Begin notebook `name` in a kernel whose globals are `namespace`: read its parameters (the names of its
    parameters cell, the values this kernel holds, papermill's injected ones included), choose its output
    folders (`output_dirs`) and set pandas' display width."""
    names = parameter_names(name)
    missing = [n for n in names if n not in namespace]
    if missing:
        raise NameError(f"parameters {missing} of {name}.ipynb are not defined in this kernel: run the parameters "
                        "cell first (in JupyterLab: Run > Run All Cells)")
    values = {n: namespace[n] for n in names}
    nb = Notebook(name, values, Path(values.get("figures_dir", "../figures")),
                  Path(values.get("results_dir", DEFAULT_RESULTS)))
    # the default folder is the committed results/; another one (`make decision`'s) holds records of its own
    own = None if nb.results_dir == Path(DEFAULT_RESULTS) else nb.results_dir
    figures_dir, results_dir = output_dirs(nb.figures_dir, nb.results_dir, notebook=name, params=nb.params,
                                           record_dir=own)
    pd.set_option("display.width", 160)
    return dataclasses.replace(nb, figures_dir=figures_dir, results_dir=results_dir)
