"""Run the numbered notebooks in order with papermill, with parameters from one YAML file.

The YAML has a `common` mapping (applied to every notebook) and one mapping per notebook stem
(e.g. `03_relax_factor`) that overrides it. Every key must be a parameter of the notebook it reaches:
papermill only warns about unknown names, so `check_params` turns that into an error.
"""

from __future__ import annotations

import ast
import csv
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import yaml

from mbkit.provenance import ROOT

NOTEBOOK_DIR = ROOT / "notebooks"


def notebooks() -> list[Path]:
    """The numbered notebooks, in order."""
    return sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))


def load_params(path: str | Path) -> dict[str, dict[str, Any]]:
    """Per-notebook parameters: `common` merged under each notebook's own section. A file that is not YAML,
    or whose sections are not mappings of parameter: value, is refused with its line or section."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ValueError(f"{path} is not valid YAML{where} ({problem}); fix the file") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping with 'common' and per-notebook sections, got a "
                         f"{type(raw).__name__}")
    stems = {nb.stem for nb in notebooks()}
    unknown = set(raw) - stems - {"common"}
    if unknown:
        raise ValueError(f"{path}: sections {sorted(map(str, unknown))} name no notebook; "
                         f"expected 'common' or one of {sorted(stems)}")
    for name, section in raw.items():
        if section is not None and not isinstance(section, dict):
            raise ValueError(f"{path}: section {name!r} must be a mapping of parameter: value, got a "
                             f"{type(section).__name__} ({section!r})")
    common = raw.get("common") or {}
    return {stem: {**common, **(raw.get(stem) or {})} for stem in sorted(stems)}


def declared(nb: Path) -> dict[str, tuple[Any, str]]:
    """The parameters cell of `nb`: name -> (default value, the comment that documents it)."""
    import papermill

    return {name: (ast.literal_eval(spec["default"]), spec["help"] or "")
            for name, spec in papermill.inspect_notebook(str(nb)).items()}


def _documented(value: Any, comment: str) -> bool:
    """A value other than the default's type is accepted where the parameter's comment names it."""
    return json.dumps(value) in comment or repr(value) in comment


def _accepts(default: Any, value: Any, comment: str) -> bool:
    if default is None or (value is None and "None" in comment):
        return True
    if isinstance(default, bool):
        return isinstance(value, bool) or _documented(value, comment)
    if isinstance(default, int):
        return (isinstance(value, int) and not isinstance(value, bool)) or _documented(value, comment)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, str):
        return isinstance(value, str)
    if isinstance(default, list):
        return isinstance(value, list) and (not default or all(_accepts(default[0], v, "") for v in value))
    return True


def check_params(params: dict[str, dict[str, Any]], source: str | Path = "the parameters") -> None:
    """Raise, before anything runs, if a parameter is not declared in its notebook's `parameters` cell, if its
    value is not of the type of the notebook's default (or a value the cell's comment names, e.g. None), or if
    a list repeats an entry (a seed listed twice would count one run as two)."""
    for nb in notebooks():
        cell = declared(nb)
        given = params.get(nb.stem, {})
        extra = set(given) - set(cell)
        if extra:
            raise ValueError(f"{nb.name} has no parameters {sorted(extra)}; it declares {sorted(cell)}")
        for name, value in given.items():
            default, comment = cell[name]
            if not _accepts(default, value, comment):
                raise ValueError(f"{source}: {nb.stem}'s {name} is {value!r} (a {type(value).__name__}), but the "
                                 f"notebook's {name} takes a {type(default).__name__} like its default {default!r}")
            if isinstance(value, list) and len({json.dumps(v) for v in value}) < len(value):
                twice = sorted({json.dumps(v) for v in value if value.count(v) > 1})
                raise ValueError(f"{source}: {nb.stem}'s {name} repeats {', '.join(twice)}; list each entry once")


# Parameters that decide where or how a notebook runs, not what it computes: `--update-notebooks` may store
# notebooks executed with other values of these under the committed parameters cells.
HOW_IT_RUNS = frozenset({"progress", "device", "runs_dir", "executor", "ray_address", "runs_per_gpu",
                         "cpus_per_run"})


def differ_from_the_cells(params: dict[str, dict[str, Any]]) -> list[str]:
    """`notebook: name=value (cell: default)` for every parameter that differs from its notebook's committed
    parameters cell in what it computes (`HOW_IT_RUNS` aside)."""
    out = []
    for nb in notebooks():
        cell = declared(nb)
        for name, value in params.get(nb.stem, {}).items():
            if name not in HOW_IT_RUNS and json.dumps(value) != json.dumps(cell[name][0]):
                out.append(f"{nb.stem}: {name}={value!r} (cell: {cell[name][0]!r})")
    return out


def check_out(out: Path) -> None:
    """Refuse an output folder for executed notebooks inside the folders that hold committed files."""
    for committed in ("notebooks", "results", "figures"):
        if out.resolve().is_relative_to((ROOT / committed).resolve()):
            raise ValueError(f"--out {out} lies inside {committed}/, whose files are committed and would be replaced "
                             "by executed copies; pick a folder outside notebooks/, results/ and figures/ (the "
                             "default is build/executed)")


def run_notebooks(params_file: str | Path, out_dir: str | Path = "build/executed", only: str | None = None,
                  jobs: int = 1) -> None:
    """Execute every notebook (or those whose name contains `only`) into `out_dir`, stopping at the first failure.

    `jobs` > 1 executes that many notebooks at once, each in a process of its own (`python -m mbkit
    reproduce --only <notebook>`, its output in `out_dir/<notebook>.log`), the longest first (`longest_first`). The
    notebooks share nothing while they run (each reads only the committed records of the others, which
    are written atomically), so the numbers do not depend on `jobs`; with one thread per process, 2 jobs
    use 2 cores. After a failure no further notebook starts.
    """
    import papermill

    if jobs < 1:
        raise ValueError(f"jobs={jobs} must be >= 1")
    params = load_params(params_file)
    check_params(params, params_file)
    out = Path(out_dir)
    if not out.is_absolute():
        out = ROOT / out
    check_out(out)
    out.mkdir(parents=True, exist_ok=True)
    chosen = [nb for nb in notebooks() if not only or only in nb.name]
    if jobs > 1 and len(chosen) > 1:
        def command(stem: str) -> list[str]:
            return [sys.executable, "-m", "mbkit", "reproduce", "--params", str(Path(params_file).resolve()),
                    "--out", str(out), "--only", stem, "--keep-readme"]
        run_parallel(longest_first([nb.stem for nb in chosen]), jobs, command, out)
        return
    for nb in chosen:
        print(f"== {nb.name}", flush=True)
        try:
            papermill.execute_notebook(str(nb), str(out / nb.name), parameters=params[nb.stem],
                                       kernel_name="python3", cwd=str(NOTEBOOK_DIR), progress_bar=False)
        except papermill.PapermillExecutionError as e:
            what = (str(e.evalue).strip().splitlines() or [""])[0]
            raise RuntimeError(f"{nb.name} failed in cell [{e.exec_count}] ({e.ename}: {what}); the executed copy "
                               f"with the cell's traceback is {out / nb.name}") from None


def longest_first(stems: list[str], results_dir: Path = ROOT / "results") -> list[str]:
    """`stems` ordered by the training seconds of their committed run tables (`<stem>_runs.csv`), longest
    first; notebooks without one keep their order at the end. Started in this order, parallel jobs finish
    close together instead of leaving the longest notebook running alone at the end."""
    def seconds(stem: str) -> float:
        path = results_dir / f"{stem}_runs.csv"
        if not path.is_file():
            return 0.0
        with path.open(newline="") as f:
            return sum(float(row.get("train_seconds") or 0) for row in csv.DictReader(f))

    return sorted(stems, key=seconds, reverse=True)  # stable: ties keep notebook order


def run_parallel(names: list[str], jobs: int, command: Callable[[str], list[str]], log_dir: Path) -> None:
    """Run `command(name)` for every name, at most `jobs` at once, in order; each writes `log_dir/<name>.log`.

    Raises RuntimeError naming the failed commands, their logs and the names never started (none starts
    after a failure); an interruption stops the running ones.
    """
    pending, running, failed = list(names), {}, []
    try:
        while pending or running:
            while pending and len(running) < jobs and not failed:
                name = pending.pop(0)
                log = open(log_dir / f"{name}.log", "w")
                try:
                    proc = subprocess.Popen(command(name), stdout=log, stderr=subprocess.STDOUT)
                except BaseException:
                    log.close()
                    raise
                running[name] = (proc, log, time.monotonic())
                print(f"== {name}: started (output: {log.name})", flush=True)
            if not running:
                break
            time.sleep(0.5)
            for name, (proc, log, start) in list(running.items()):
                if proc.poll() is None:
                    continue
                log.close()
                del running[name]
                if proc.returncode:
                    failed.append(name)
                    print(f"== {name}: FAILED (exit {proc.returncode}; output: {log.name})", flush=True)
                else:
                    print(f"== {name}: done in {time.monotonic() - start:.0f} s", flush=True)
    finally:
        for proc, log, _ in running.values():
            proc.terminate()
            proc.wait()
            log.close()
    if failed:
        said = "; ".join(f"{n}: {_last_line(log_dir / f'{n}.log')}" for n in failed)
        logs = ", ".join(str(log_dir / f"{n}.log") for n in failed)
        skipped = f"; not started: {', '.join(pending)}" if pending else ""
        raise RuntimeError(f"{', '.join(failed)} failed ({said}; see {logs}){skipped}")


def _last_line(path: Path) -> str:
    lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()] \
        if path.is_file() else []
    return lines[-1].removeprefix("mbkit: error: ") if lines else "no output"


# one state of a tqdm bar as a text stream shows it: "desc: 40%|####      | 2/5 [00:01<00:02, 1.5it/s, ...]"
_BAR = re.compile(r"^[^|\n]*\d+%\|[^|]*\|\s*\d+/\d+ \[.*\]$")


def is_progress_output(output: dict[str, Any]) -> bool:
    """Whether a cell output is only progress-bar text (tqdm's states on stderr, or its blank closing line)."""
    if output.get("output_type") != "stream" or output.get("name") != "stderr":
        return False
    text = output.get("text", "")
    text = "".join(text) if isinstance(text, list) else text
    return all(_BAR.match(line.strip()) or not line.strip() for line in re.split(r"[\r\n]", text))


def store_executed(out_dir: str | Path = "build/executed", only: str | None = None) -> list[Path]:
    """Copy executed notebooks (those whose name contains `only`, as `run_notebooks` chose them) over the
    committed ones, scrubbed for a stable diff: an executed copy left in `out_dir` by an earlier run of other
    notebooks is not stored.

    Drops papermill's metadata, its injected-parameters cell (the committed notebook keeps its own
    `parameters` cell) and progress-bar outputs (`is_progress_output`; a reader sees the bars live, a committed
    copy would hold hundreds of their states), and renumbers execution counts 1..n, which nbval needs to compare
    outputs.
    """
    import nbformat

    out = Path(out_dir)
    if not out.is_absolute():
        out = ROOT / out
    written = []
    for nb_path in notebooks():
        executed = out / nb_path.name
        if only and only not in nb_path.name or not executed.exists():
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
                cell.outputs = [o for o in cell.outputs if not is_progress_output(o)]
                for o in cell.get("outputs", []):
                    if "execution_count" in o:
                        o["execution_count"] = count
        nbformat.write(nb, nb_path)
        written.append(nb_path)
    return written
