"""The notebooks as a researcher meets them: JupyterLab in a real (headless) browser, Run All Cells.

For each numbered notebook a smoke-scale copy (papermill `prepare_only`, never the committed file) is opened
in JupyterLab, started from this environment on 127.0.0.1 with a random token, and run through the menu
Run > Run All Cells. The test checks that the kernel ends idle, that every code cell ran, that no cell shows
an error (in the page, and in the notebook as JupyterLab saves it), that every figure rendered, and that the
grid cells showed a progress bar. A screenshot of each notebook goes to $MBKIT_ARTIFACTS/lab/
(default build/artifacts/lab/).

Environment:
  MBKIT_LAB_SMOKE          scale: unset/"1" = smoke (lab_helpers.SMOKE_PARAMETERS: 1 epoch, batch 4096, 1 seed,
                           relax factors 0 and 0.7, a fifth-size world in 05 and 06); "0" = the notebooks'
                           defaults; a params YAML (notebooks/params/default.yaml); or "{epochs: 2}" on top
                           of the smoke values
  MBKIT_LAB_TIMEOUT        seconds per notebook (default 300)
  MBKIT_LAB_BREAK          inject a cell that raises into the notebooks whose name contains this (to see the
                           test fail), e.g. MBKIT_LAB_BREAK=03
  MBKIT_LAB_FORCE_PROGRESS "1": in the smoke copies, turn `progress=False` into `progress=True` in the cells
                           that call run_grid (to see the bar before the notebooks turn it on)
  MBKIT_LAB_REQUIRE_PROGRESS  "0" turns the progress-bar check off (default: on)
  MBKIT_LAB_THREADS        torch/BLAS threads of the kernels (default 1; OMP_NUM_THREADS, if set, wins)
  MBKIT_CHROMIUM, MBKIT_CHROMEDRIVER  browser paths (default /usr/bin/chromium, /usr/bin/chromedriver)
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest

import lab_helpers as lab

pytestmark = pytest.mark.slow

ARTIFACTS = Path(os.environ.get("MBKIT_ARTIFACTS") or lab.ROOT / "build" / "artifacts") / "lab"
TIMEOUT = float(os.environ.get("MBKIT_LAB_TIMEOUT", "300"))
NOTEBOOKS = sorted(p.stem for p in (lab.ROOT / "notebooks").glob(lab.NOTEBOOK_GLOB))


def progress_required() -> bool:
    """A notebook whose run_grid cell leaves the bar on (lab_helpers.grid_shows_progress) must show one;
    MBKIT_LAB_REQUIRE_PROGRESS=0 turns the check off (e.g. to debug another failure)."""
    forced = os.environ.get("MBKIT_LAB_REQUIRE_PROGRESS", "1")
    return forced.strip().lower() not in ("0", "false", "no", "")


REQUIRE_PROGRESS = progress_required()


@pytest.fixture(scope="module")
def session():
    """The working copy, the JupyterLab server and the browser, shared by the notebooks and torn down after."""
    why = lab.missing_browser()
    if why:
        pytest.skip(f"JupyterLab browser test skipped: {why}")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="mbkit-lab-"))
    timings: dict[str, float] = {}
    try:
        notebooks = lab.prepare_working_copy(tmp / "repo", lab.chosen_parameters(os.environ.get("MBKIT_LAB_SMOKE")),
                                             os.environ.get("MBKIT_LAB_BREAK", ""),
                                             os.environ.get("MBKIT_LAB_FORCE_PROGRESS", "") == "1")
        with lab.JupyterLab(root_dir=tmp / "repo", state_dir=tmp / "state", output_root=tmp / "outputs",
                            log_path=ARTIFACTS / "jupyterlab.log") as server:
            driver = lab.make_driver(tmp / "chromium-profile", ARTIFACTS / "chromedriver.log")
            try:
                yield {"server": server, "driver": driver, "notebooks": {n.stem: n for n in notebooks},
                       "timings": timings, "outputs": tmp / "outputs"}
            finally:
                driver.quit()
    finally:
        (ARTIFACTS / "timings.json").write_text(json.dumps(timings, indent=2) + "\n")
        shutil.rmtree(tmp, ignore_errors=True)


def wait_for(driver, predicate, timeout: float, what: str, poll: float = 0.5):
    """Poll the notebook state until `predicate(state)` is truthy; return that state."""
    deadline = time.monotonic() + timeout
    state = None
    while time.monotonic() < deadline:
        state = driver.execute_script(lab.STATE_JS)
        if state and predicate(state):
            return state
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; last state: {state}")


def click_menu(driver, menu: str, label: str) -> None:
    """Click a main-menu entry (e.g. 'Run') and then its item with this label (e.g. 'Run All Cells')."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(driver, 20)
    wait.until(ec.element_to_be_clickable(
        (By.XPATH, f"//li[contains(@class,'lm-MenuBar-item')][.//div[normalize-space()='{menu}']]"))).click()
    item = (By.XPATH, "//ul[contains(@class,'lm-Menu-content')]/li[contains(@class,'lm-Menu-item')]"
                      f"[not(contains(@class,'lm-mod-disabled'))][.//div[contains(@class,'lm-Menu-itemLabel')]"
                      f"[normalize-space()='{label}']]")
    try:
        wait.until(ec.element_to_be_clickable(item)).click()
    except TimeoutException:
        shown = driver.execute_script(
            "return [...document.querySelectorAll('.lm-Menu .lm-Menu-itemLabel')].map(e => e.innerText)")
        raise AssertionError(f"no enabled menu item {menu} > {label!r}; the menu shows {shown}") from None


def screenshot(driver, path: Path) -> None:
    """The whole notebook in one image: the window is made as tall as the notebook, scrolled to its top."""
    from selenium.webdriver.common.by import By

    for tab in driver.find_elements(By.CSS_SELECTOR, lab.LEFT_SIDEBAR_CURRENT_TAB):
        tab.click()                          # clicking the current side-bar tab collapses the file browser
    for _ in range(3):                       # heights of cells not yet laid out are estimates: re-measure
        height = int(driver.execute_script(lab.SCROLLER_JS))
        size = min(max(height + 150, 1000), 16000)
        if driver.get_window_size()["height"] == size:
            break
        driver.set_window_size(1200, size)
        time.sleep(1.0)
    driver.execute_script(lab.SCROLL_TOP_JS)
    time.sleep(0.5)
    driver.save_screenshot(str(path))


DIALOG_JS = "const d = document.querySelector('dialog.jp-Dialog'); return d ? d.innerText : null;"
# A dialog that says something went wrong fails the test; any other one (seen once on a loaded CI machine, right
# after the first notebook opened) is named in a warning and closed, as a user would close it.
DIALOG_FAILS = ("error", "fail", "kernel", "not found", "cannot", "could not", "denied")


def dismiss_dialog(driver, screenshot_path: Path) -> None:
    import warnings

    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    text = driver.execute_script(DIALOG_JS)
    driver.save_screenshot(str(screenshot_path))
    if text is None:
        return
    if any(word in text.lower() for word in DIALOG_FAILS):
        raise AssertionError(f"JupyterLab showed a dialog: {text!r} (screenshot {screenshot_path})")
    warnings.warn(f"JupyterLab showed a dialog, closed with Escape: {text!r} (screenshot {screenshot_path})")
    driver.find_element(By.CSS_SELECTOR, "dialog.jp-Dialog").send_keys(Keys.ESCAPE)
    time.sleep(0.5)


def run_all_cells(driver, server, nb, shot: Path, running_shot: Path):
    """Open the smoke copy, Run > Run All Cells, wait until the kernel is idle with no cell pending.

    Returns the last state, the progress bar seen (None, "widget" or the text bar's last line), the outputs'
    images and error-like texts per cell, and the seconds it took. Screenshots: `running_shot` when a
    progress bar last changed (the bar in view), `shot` of the whole notebook at the end.
    """
    start = time.monotonic()
    # A workspace of its own per notebook: no tab of an earlier notebook is restored next to it.
    driver.get(f"{server.url}/lab/workspaces/mbkit-{nb.stem}/tree/{nb.relpath}?token={server.token}")
    wait_for(driver, lambda s: s["status"] == "idle" and len(s["prompts"]) == nb.n_cells, 120,
             f"{nb.stem} to open with an idle kernel")
    from selenium.webdriver.common.by import By

    # Select the first cell (the notebook becomes the current widget), then Run > Run All Cells. A click that
    # lands while JupyterLab is still settling is sometimes lost: retry, since a second Run All only queues.
    from selenium.common.exceptions import ElementClickInterceptedException

    first_prompt = ".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Cell .jp-InputPrompt"
    for attempt in range(3):
        try:
            driver.find_element(By.CSS_SELECTOR, first_prompt).click()
        except ElementClickInterceptedException:  # a modal dialog covers the notebook: say which, then go on
            dismiss_dialog(driver, shot.with_name(f"{nb.stem}_dialog.png"))
            if attempt == 2:
                raise
            continue
        click_menu(driver, "Run", "Run All Cells")
        try:
            wait_for(driver, lambda s: s["status"] == "busy" or any(p and p != "[ ]:" for p in s["prompts"]),
                     15, "Run All Cells to start")
            break
        except AssertionError:
            if attempt == 2:
                raise

    def done(s):
        return s["status"] == "idle" and not any(p == "[*]:" for p in s["prompts"] if p)

    progress, last_bar, last_shot, deadline = None, None, 0.0, time.monotonic() + TIMEOUT
    shots = 0
    while True:
        state = driver.execute_script(lab.STATE_JS)
        seen = "widget" if state["widgetBar"] else (f"text: {state['textBar']}" if state["textBar"] else None)
        # the latest state of the bar, in view: when it changes, and every few seconds while it runs
        if seen and (seen != last_bar or time.monotonic() - last_shot > 3.0) and not done(state):
            progress = progress or seen
            last_bar, last_shot = seen, time.monotonic()
            driver.execute_script(lab.BAR_INTO_VIEW_JS)
            driver.save_screenshot(str(running_shot))
            if os.environ.get("MBKIT_LAB_ALL_SHOTS"):            # keep every one (a film of the run)
                shots += 1
                driver.save_screenshot(str(running_shot.with_name(f"{running_shot.stem}_{shots:02d}.png")))
        if done(state):
            time.sleep(1.0)                                  # settle: the last outputs render
            state = driver.execute_script(lab.STATE_JS)
            if done(state):
                break
        assert time.monotonic() < deadline, f"{nb.stem}: still running after {TIMEOUT:.0f} s; last state: {state}"
        time.sleep(0.5)
    seconds = time.monotonic() - start
    screenshot(driver, shot)
    outputs = driver.execute_script(lab.OUTPUTS_JS)
    driver.set_window_size(1400, 1000)
    return state, progress, outputs, seconds


@pytest.mark.parametrize("stem", NOTEBOOKS)
def test_notebook_runs_in_jupyterlab(session, stem):
    import nbformat

    driver, server, nb = session["driver"], session["server"], session["notebooks"][stem]
    start = time.monotonic()
    driver.set_window_size(1400, 1000)
    shot, running_shot = ARTIFACTS / f"{stem}.png", ARTIFACTS / f"{stem}_running.png"
    for old in (shot, running_shot):
        old.unlink(missing_ok=True)
    try:
        state, progress, outputs, seconds = run_all_cells(driver, server, nb, shot, running_shot)
        # Save through JupyterLab and read what it wrote: the notebook model, error records included.
        click_menu(driver, "File", "Save Notebook")
        wait_for(driver, lambda s: not s["dirty"], 30, f"{stem} to be saved")
        saved = nbformat.read(nb.path, as_version=4)
        shutil.copy(nb.path, ARTIFACTS / f"{stem}.ipynb")
    finally:
        if not shot.exists():                          # what the page showed when it failed
            try:
                screenshot(driver, shot)
            except Exception:
                pass
        session["timings"][stem] = round(time.monotonic() - start, 1)
        try:
            server.shutdown_kernels()                  # also when the notebook failed or timed out
        finally:
            driver.get("about:blank")

    problems = []
    page_errors = [f"cell {i}: {e}" for i, o in enumerate(outputs) for e in o["errors"]]
    if page_errors:
        problems.append("the page shows an error output: " + "; ".join(page_errors))
    saved_errors = [f"cell {i}: {o.get('ename')}: {lab.strip_ansi(str(o.get('evalue')))}"
                    for i, c in enumerate(saved.cells) if c.cell_type == "code"
                    for o in c.get("outputs", []) if o.get("output_type") == "error"]
    if saved_errors:
        problems.append("the saved notebook records an error: " + "; ".join(saved_errors))
    unrun = [i for i in nb.code_cells if saved.cells[i].execution_count is None]
    if unrun:
        problems.append(f"{len(unrun)} of {len(nb.code_cells)} code cells have no execution count: cells {unrun}")
    if state["status"] != "idle":
        problems.append(f"kernel ends {state['status']!r}, not idle")
    no_figure = [i for i in nb.figure_cells if not any(w > 0 and h > 0 for w, h in outputs[i]["images"])]
    if no_figure:
        problems.append(f"no rendered figure in plotting cells {no_figure} (of {nb.figure_cells})")
    if nb.grid_progress and progress is None and REQUIRE_PROGRESS:
        problems.append("no progress bar appeared while the grid ran (widget .widget-hprogress or a tqdm text bar)")
    print(f"\n{stem}: {seconds:.1f} s in JupyterLab; parameters {nb.parameters}; "
          f"progress bar: {progress or 'none seen'} (required: "
          f"{nb.grid_progress and REQUIRE_PROGRESS}: run_grid cell {nb.runs_grid}, bar left on "
          f"{nb.grid_progress}, REQUIRE_PROGRESS {REQUIRE_PROGRESS}); "
          f"screenshot {shot}")
    assert not problems, f"{stem} in JupyterLab ({shot}):\n  " + "\n  ".join(problems)
