"""Helpers of the JupyterLab browser test (tests/test_lab.py): smoke copies, the server, the browser.

Nothing here edits the committed notebooks: each one is parameterized with papermill (`prepare_only`) into
a temporary folder laid out like the repository, its outputs cleared, and opened there.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK_GLOB = "[0-9][0-9]_*.ipynb"

# Smoke scale: every notebook runs end to end in seconds on 2 CPU cores. Only the names a notebook declares
# in its `parameters` cell reach it (papermill merely warns about the others).
SMOKE_PARAMETERS: dict[str, Any] = {
    "epochs": 1,
    "batch_size": 4096,             # ~40 steps an epoch on the synthetic log instead of ~600
    "diagnostics_every": 4,
    "seed": 0,
    "seeds": [0],
    "relax_factors": [0.0, 0.7],
    "strategies": ["both"],
    "world_users": 6000,            # notebooks 05 and 06: a fifth of the default world (about 120 users filtered)
    "world_items": 2000,
    "cost_rounds": 3,               # notebook 06's step timing
}

BREAK_SOURCE = 'raise RuntimeError("MBKIT_LAB_BREAK: a cell that raises, injected by tests/lab_helpers.py")'


def chosen_parameters(spec: str | None) -> dict[str, dict[str, Any]] | dict[str, Any]:
    """The parameters that `MBKIT_LAB_SMOKE` asks for.

    unset, "", "1", "smoke": SMOKE_PARAMETERS; "0", "off", "defaults": the notebooks' own defaults (nothing
    injected); a path to a params YAML (`notebooks/params/default.yaml` layout: `common` plus one section per
    notebook): its per-notebook parameters; an inline YAML/JSON mapping ("{epochs: 2, seeds: [0, 1]}"):
    SMOKE_PARAMETERS updated with it.
    Returns either one mapping for every notebook or {notebook stem: mapping}.
    """
    import yaml

    spec = (spec or "").strip()
    if spec.lower() in ("", "1", "smoke", "true", "yes"):
        return dict(SMOKE_PARAMETERS)
    if spec.lower() in ("0", "off", "defaults", "false", "no"):
        return {}
    if spec.startswith("{"):
        extra = yaml.safe_load(spec)
        if not isinstance(extra, dict):
            raise ValueError(f"MBKIT_LAB_SMOKE={spec!r}: expected a mapping")
        return {**SMOKE_PARAMETERS, **extra}
    path = Path(spec)
    if not path.is_absolute():
        path = ROOT / path
    from mbkit.study.reproduce import load_params

    return {"__per_notebook__": load_params(path)}


def parameters_for(notebook: Path, chosen: dict[str, Any]) -> dict[str, Any]:
    """The subset of `chosen` that `notebook` declares in its parameters cell."""
    import papermill

    declared = set(papermill.inspect_notebook(str(notebook)))
    if "__per_notebook__" in chosen:
        wanted = chosen["__per_notebook__"].get(notebook.stem, {})
        unknown = set(wanted) - declared
        if unknown:
            raise ValueError(f"{notebook.name} declares no parameters {sorted(unknown)}")
        return dict(wanted)
    return {k: v for k, v in chosen.items() if k in declared}


@dataclass
class SmokeNotebook:
    """One smoke copy: where it lies, what it was given, and what the browser must find in it."""

    stem: str
    path: Path                      # the smoke copy, inside the temporary working copy
    relpath: str                    # its path relative to the server's root dir, for /lab/tree/<relpath>
    parameters: dict[str, Any]
    n_cells: int
    code_cells: list[int]           # indices (in the smoke copy) of the code cells
    figure_cells: list[int]         # indices of the code cells whose committed outputs hold an image
    runs_grid: bool                 # a cell calls mbkit.study.grid.run_grid (or balance_map.run_map, which calls it)
    grid_progress: bool             # ... and does not turn its progress bar off (see grid_shows_progress)
    broken: bool = False            # a raising cell was injected (MBKIT_LAB_BREAK)
    source: Path = field(default=Path())


GRID_CALL = re.compile(r"\brun_(?:grid|map)\(")  # the calls that train a grid with one progress bar


def grid_shows_progress(source: str) -> bool:
    """Whether a cell calls run_grid with its progress bar on: run_grid's `progress=` if given, else the
    TrainConfig's (`progress=False` there turns the bar off; run_grid's default is `base.progress`)."""
    if not GRID_CALL.search(source):
        return False
    # the call's arguments, allowing one level of nested parentheses (e.g. run_map(..., map_methods(r), ...))
    explicit = re.search(r"\brun_(?:grid|map)\((?:[^()]|\([^()]*\))*?\bprogress\s*=\s*([^,)\s]+)", source)
    if explicit:
        return explicit.group(1) != "False"
    return not re.search(r"TrainConfig\([^)]*\bprogress\s*=\s*False", source)


def inject_failing_cell(nb) -> int:
    """Insert a code cell that raises RuntimeError right after the (injected) parameters; return its index."""
    import nbformat

    tags = [c.metadata.get("tags", []) for c in nb.cells]
    after = next((i for i, t in enumerate(tags) if "injected-parameters" in t),
                 next((i for i, t in enumerate(tags) if "parameters" in t), 0))
    cell = nbformat.v4.new_code_cell(BREAK_SOURCE, metadata={"tags": ["mbkit-lab-break"]})
    nb.cells.insert(after + 1, cell)
    return after + 1


def prepare_working_copy(workdir: Path, chosen: dict[str, Any], break_pattern: str = "",
                         force_progress: bool = False) -> list[SmokeNotebook]:
    """Smoke copies of every numbered notebook under `workdir/notebooks/`, outputs and counts cleared.

    `workdir` is laid out like the repository (notebooks/, figures/, results/), so relative paths in the
    notebooks resolve inside it; MBKIT_OUTPUT_ROOT (set on the server) redirects the outputs anyway.
    """
    import nbformat
    import papermill

    (workdir / "notebooks").mkdir(parents=True, exist_ok=True)
    for sub in ("figures", "results", "data"):
        (workdir / sub).mkdir(exist_ok=True)
    out = []
    for src in sorted((ROOT / "notebooks").glob(NOTEBOOK_GLOB)):
        params = parameters_for(src, chosen)
        dst = workdir / "notebooks" / src.name
        papermill.execute_notebook(str(src), str(dst), parameters=params, prepare_only=True,
                                   kernel_name="python3", progress_bar=False, log_output=False)
        committed = nbformat.read(src, as_version=4)
        with_image = {c.get("id") for c in committed.cells if c.cell_type == "code" and any(
            k.startswith("image/") for o in c.get("outputs", []) for k in o.get("data", {}))}
        nb = nbformat.read(dst, as_version=4)
        nb.metadata.pop("papermill", None)
        for c in nb.cells:                                   # the browser must produce every output itself
            c.metadata.pop("papermill", None)
            if c.cell_type == "code":
                c.outputs = []
                c.execution_count = None
        if force_progress:                                   # MBKIT_LAB_FORCE_PROGRESS: the grid cells' bar on
            for c in nb.cells:
                if c.cell_type == "code" and GRID_CALL.search(c.source):
                    c.source = c.source.replace("progress=False", "progress=True")
        broken = bool(break_pattern) and break_pattern in src.stem
        if broken:
            inject_failing_cell(nb)
        nbformat.write(nb, dst)
        code = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]
        out.append(SmokeNotebook(
            stem=src.stem, path=dst, relpath=f"notebooks/{src.name}", parameters=params, n_cells=len(nb.cells),
            code_cells=code, figure_cells=[i for i in code if nb.cells[i].get("id") in with_image],
            runs_grid=any(GRID_CALL.search(nb.cells[i].source) for i in code),
            grid_progress=any(grid_shows_progress(nb.cells[i].source) for i in code), broken=broken, source=src))
    return out


# --- the server -------------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class JupyterLab:
    """JupyterLab from this interpreter's environment on 127.0.0.1:<free port> with a random token.

    Its config, runtime, settings and workspace folders are temporary too, so the user's own Jupyter setup
    (a password-less config, restored tabs) changes nothing. Use as a context manager: it is shut down
    (kernels included) on exit, also when the test fails.
    """

    def __init__(self, root_dir: Path, state_dir: Path, output_root: Path, log_path: Path):
        self.root_dir, self.state_dir, self.output_root, self.log_path = root_dir, state_dir, output_root, log_path
        self.token = secrets.token_hex(24)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        s = self.state_dir
        settings = s / "lab-settings" / "@jupyterlab" / "apputils-extension"
        settings.mkdir(parents=True, exist_ok=True)
        # No news or update checks: nothing reaches the network, no toast covers the notebook.
        (settings / "notification.jupyterlab-settings").write_text(
            json.dumps({"fetchNews": "false", "checkForUpdates": False}))
        env.update({
            "JUPYTER_TOKEN": self.token,              # not on the command line, where `ps` shows it
            "MBKIT_OUTPUT_ROOT": str(self.output_root),
            "JUPYTER_CONFIG_DIR": str(s / "config"),
            "JUPYTER_RUNTIME_DIR": str(s / "runtime"),
            "JUPYTERLAB_SETTINGS_DIR": str(s / "lab-settings"),
            "JUPYTERLAB_WORKSPACES_DIR": str(s / "lab-workspaces"),
            "IPYTHONDIR": str(s / "ipython"),
            "JUPYTER_PREFER_ENV_PATH": "1",           # the environment's python3 kernel before a user's
            "JUPYTER_PLATFORM_DIRS": "1",
            "PATH": str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", ""),
            "PYTHONUNBUFFERED": "1",
        })
        # One torch/BLAS thread per kernel unless the caller chose: on 2 shared cores the browser and the
        # server need the other, and two spinning OpenMP threads under contention ran a grid epoch ~7x slower.
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env.setdefault(var, os.environ.get("MBKIT_LAB_THREADS", "1"))
        return env

    def start(self, timeout: float = 90) -> None:
        cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser",
               "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={self.port}", "--ServerApp.port_retries=0",
               f"--ServerApp.root_dir={self.root_dir}",
               "--ServerApp.open_browser=False", "--ServerApp.terminals_enabled=False"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            cmd.append("--allow-root")                     # CI containers run as root
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, cwd=self.root_dir, env=self._env(), stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"JupyterLab exited with {self.proc.returncode}; see {self.log_path}")
            try:
                self.api("GET", "/api/status")
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.5)
                continue
            self.check_token_required()
            return
        raise RuntimeError(f"JupyterLab did not answer on {self.url} within {timeout:.0f} s; see {self.log_path}")

    def api(self, method: str, path: str, timeout: float = 10) -> Any:
        req = urllib.request.Request(self.url + path, method=method,
                                     headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            body = r.read()
        return json.loads(body) if body else None

    def check_token_required(self) -> None:
        """A Jupyter server without a token is a shell for whoever reaches it: refuse to go on without one."""
        try:
            urllib.request.urlopen(self.url + "/api/kernels", timeout=10)
        except urllib.error.HTTPError as e:
            if e.code == 403:
                return
            raise
        raise RuntimeError(f"JupyterLab on {self.url} answers without the token (a Jupyter config disables it?)")

    def shutdown_kernels(self) -> None:
        for s in self.api("GET", "/api/sessions"):
            self.api("DELETE", f"/api/sessions/{s['id']}")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                self.api("POST", "/api/shutdown")          # stops its kernels too
                self.proc.wait(20)
            except Exception:
                pass
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)       # the server's own process group (start_new_session)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._log.close()

    def __enter__(self) -> "JupyterLab":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


# --- the browser ------------------------------------------------------------------------------------------

CHROMIUM = os.environ.get("MBKIT_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("MBKIT_CHROMEDRIVER", "/usr/bin/chromedriver")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1400,1000"]


def missing_browser() -> str | None:
    """Why the browser test cannot run here, in one line; None when it can."""
    for path, pkg in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            return f"no browser: {path} missing (apt-get install chromium chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "no browser driver: selenium is not installed (pip install selenium)"
    return None


def make_driver(user_data_dir: Path, log_path: Path):
    """Headless Chromium through the system chromedriver; selenium-manager never runs or downloads."""
    os.environ["SE_OFFLINE"] = "true"
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    options.unhandled_prompt_behavior = "accept"      # "leave page?" on an unsaved notebook: leave
    for flag in CHROMIUM_FLAGS + [f"--user-data-dir={user_data_dir}"]:
        options.add_argument(flag)
    service = Service(executable_path=CHROMEDRIVER, log_output=str(log_path), service_args=["--log-level=WARNING"])
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(60)
    return driver


# Reads the state of the (only) open notebook in one round trip.
STATE_JS = r"""
const panel = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden)');
if (!panel) return null;
const cells = [...panel.querySelectorAll('.jp-Notebook .jp-Cell')];
const ind = panel.querySelector('.jp-Notebook-ExecutionIndicator');
const bars = [...panel.querySelectorAll('.jp-OutputArea-output')].map(o => o.textContent).filter(
    t => /\d+%\|/.test(t) || /\|\s*\d+\/\d+\s*\[/.test(t));
return {
  status: ind ? ind.getAttribute('data-status') : null,
  prompts: cells.map(c => {
    const p = c.querySelector('.jp-InputArea-prompt');
    return c.classList.contains('jp-CodeCell') ? (p ? p.textContent.trim() : '') : null;
  }),
  widgetBar: panel.querySelectorAll('.jp-OutputArea-output .widget-hprogress, .jp-OutputArea-output progress').length > 0,
  textBar: bars.length ? bars[bars.length - 1].split('\n').filter(l => l.trim()).pop() : null,
  dirty: !!document.querySelector('#jp-main-dock-panel .lm-TabBar-tab.jp-mod-dirty'),
};
"""

# Scroll the last progress bar (widget or text) into the middle of the view, for the "while it runs" shot.
BAR_INTO_VIEW_JS = r"""
const panel = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden)');
const outs = [...panel.querySelectorAll('.jp-OutputArea-output')].filter(o =>
    o.querySelector('.widget-hprogress, progress') || /\d+%\|/.test(o.textContent));
if (outs.length) outs[outs.length - 1].scrollIntoView({block: 'center'});
"""

# After the run: per cell, the images in its outputs and the error-like outputs it shows.
OUTPUTS_JS = r"""
const panel = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden)');
const cells = [...panel.querySelectorAll('.jp-Notebook .jp-Cell')];
const tb = /Traceback \(most recent call last\)|^\s*[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)(:|\s*$)/m;
return cells.map(c => ({
  images: [...c.querySelectorAll('.jp-OutputArea-output img')].map(i => [i.naturalWidth, i.naturalHeight]),
  errors: [...c.querySelectorAll('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')]
            .map(o => o.textContent).filter(t => tb.test(t))
            .map(t => t.split('\n').filter(l => l.trim()).pop()),
}));
"""

# The window height that shows the whole notebook: its cells' extent (not scrollHeight, which includes the
# scroll-past-end padding that grows with the window) plus what lies above and below the notebook.
SCROLLER_JS = r"""
const panel = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden)');
const nb = panel.querySelector('.jp-WindowedPanel-outer') || panel.querySelector('.jp-Notebook');
const cells = panel.querySelectorAll('.jp-Notebook .jp-Cell');
const box = nb.getBoundingClientRect();
const bottom = cells.length ? cells[cells.length - 1].getBoundingClientRect().bottom : box.bottom;
return (bottom - box.top + nb.scrollTop) + box.top + (window.innerHeight - box.bottom) + 40;
"""

SCROLL_TOP_JS = r"""
const panel = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden)');
const nb = panel.querySelector('.jp-WindowedPanel-outer') || panel.querySelector('.jp-Notebook');
nb.scrollTop = 0;
"""

LEFT_SIDEBAR_CURRENT_TAB = ".jp-SideBar.jp-mod-left .lm-TabBar-tab.lm-mod-current"

TRACEBACK_LINE = re.compile(r"\x1b\[[0-9;]*m")


def strip_ansi(text: str) -> str:
    return TRACEBACK_LINE.sub("", text)
