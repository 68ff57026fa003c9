"""Widgets tested in a real browser: headless Chromium drives JupyterLab like a reader would.

nbval (the notebook tests) runs every cell in a kernel, but no browser ever draws a widget: a
slider that renders as "Error displaying widget", or that the reader moves without the plot
changing, passes nbval. This test closes that gap. For every notebook in notebooks/ that uses
ipywidgets (a code cell that imports ipywidgets or calls a ``cmedu.viz`` slider/interact helper,
found automatically), it

1. starts JupyterLab on 127.0.0.1 on a free port, on a *copy* of the notebook with its outputs
   cleared (the committed notebook is never opened, so never saved over), with
   ``CMEDU_PROFILE=smoke`` unless the caller set a profile;
2. opens the copy in headless Chromium (through Playwright), waits for the kernel to be idle and
   runs Run > Run All Cells;
3. waits until every code cell has an execution count and checks that no output is a traceback;
4. moves every slider one step, picks another option in every dropdown and clicks every
   toggle button or checkbox, and after each one waits until the outputs (the plot's image)
   change;
5. saves a screenshot per notebook in tests/browser/artifacts/ (not committed), also on failure.

Run it alone (about a minute per notebook under the smoke profile on 2 cores)::

    CMEDU_PROFILE=smoke pytest tests/browser -q

It needs Debian's Chromium (``apt-get install chromium``) and the Playwright package
(``pip install playwright``, part of the ``dev`` extra). Never run ``playwright install``: it
downloads a browser of its own, which this project neither needs nor can fetch offline. Without
either, the test is skipped with a message naming the fix; under CI (``CI`` set, as .ci/run
does) it fails instead, so a broken install step cannot hide behind a skip.
"""
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
NOTEBOOKS = REPO / "notebooks"
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"  # git-ignored
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]

# Timeouts in seconds. Running all cells is the long one: 10-60 s of CPU per notebook under the
# smoke profile, more on a loaded machine; CMEDU_BROWSER_TIMEOUT raises it.
SERVER_START_S = 90
KERNEL_IDLE_S = 120
RUN_ALL_S = float(os.environ.get("CMEDU_BROWSER_TIMEOUT", "300"))
WIDGET_REDRAW_S = 60

# A code cell that mentions one of these uses widgets: ipywidgets itself, interact/interactive,
# or a cmedu.viz helper whose name says slider or interact (viz.slider_explorer today).
WIDGET_CODE = re.compile(r"\bipywidgets\b|\binteract(ive)?\s*\(|\bviz\.\w*(slider|interact)\w*\s*\(")


def uses_widgets(notebook: Path) -> bool:
    cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    return any(c["cell_type"] == "code" and WIDGET_CODE.search("".join(c["source"])) for c in cells)


WIDGET_NOTEBOOKS = sorted(nb for nb in NOTEBOOKS.glob("*.ipynb") if uses_widgets(nb))


def unavailable(reason: str):
    """Skip on a developer's machine; fail under CI, where the browser must be installed."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so this fails instead of skipping)", pytrace=False)
    pytest.skip(reason)


# ---------------------------------------------------------------- the browser


@pytest.fixture(scope="module")
def browser():
    """Headless Debian Chromium driven by Playwright, shared by all notebooks of this module."""
    executable = CHROMIUM if os.path.exists(CHROMIUM) else shutil.which("chromium")
    if executable is None:
        unavailable(f"no Chromium at {CHROMIUM}: install it with `apt-get install chromium`")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    if sync_playwright is None:
        unavailable("the playwright package is missing: `pip install playwright` "
                    "(or `pip install -e .[dev]`; no `playwright install` needed)")
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


# ---------------------------------------------------------------- JupyterLab


def cleared_copy(notebook: Path, folder: Path) -> Path:
    """Copy ``notebook`` into ``folder`` without outputs, execution counts or saved widget state.

    Every count and widget on screen then comes from this run, not from the committed file.
    """
    nb = json.loads(notebook.read_text(encoding="utf-8"))
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            cell["outputs"], cell["execution_count"] = [], None
    nb["metadata"].pop("widgets", None)
    folder.mkdir(parents=True, exist_ok=True)
    copy = folder / notebook.name
    copy.write_text(json.dumps(nb, indent=1), encoding="utf-8")
    return copy


def write_lab_settings(settings_dir: Path):
    """No news or update pop-ups (and no requests to the internet); render every cell at once."""
    settings = {
        "@jupyterlab/apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
        # The default windowing mode only puts cells near the viewport into the page.
        "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},
    }
    for plugin, values in settings.items():
        path = settings_dir / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values), encoding="utf-8")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, start time) of every process, from Linux's /proc (empty elsewhere)."""
    table = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "pid (command)"
            table[int(stat.parent.name)] = (int(fields[1]), fields[19])
    return table


def descendants(pid: int) -> dict[int, str]:
    """pid -> start time of every process below ``pid`` (the start time tells a reused pid apart)."""
    table, found, todo = process_table(), {}, [pid]
    while todo:
        parent = todo.pop()
        for child, (ppid, started) in table.items():
            if ppid == parent:
                found[child] = started
                todo.append(child)
    return found


@contextlib.contextmanager
def jupyter_lab(workdir: Path, notebook_dir: Path):
    """Run JupyterLab on ``notebook_dir``; yield its base URL and token; stop it and its kernels."""
    port, token = free_port(), secrets.token_hex(16)
    write_lab_settings(workdir / "settings")
    env = dict(os.environ, CMEDU_NO_PROGRESS="1", JUPYTER_RUNTIME_DIR=str(workdir / "runtime"))
    env.setdefault("CMEDU_PROFILE", "smoke")
    cmd = [sys.executable, "-m", "jupyter", "lab", "--allow-root", "--no-browser",
           "--ip=127.0.0.1", f"--port={port}", "--ServerApp.port_retries=0",
           f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={notebook_dir}",
           f"--LabApp.user_settings_dir={workdir / 'settings'}",
           f"--LabApp.workspaces_dir={workdir / 'workspaces'}"]
    log_path = workdir / "jupyterlab.log"
    with open(log_path, "wb") as log:
        server = subprocess.Popen(cmd, cwd=notebook_dir, env=env, stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True)  # its own process group, ended as a whole
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"JupyterLab exited ({server.returncode}):\n{log_path.read_text()[-3000:]}")
            try:
                urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"JupyterLab did not answer in {SERVER_START_S} s:\n"
                                       f"{log_path.read_text()[-3000:]}")
                time.sleep(0.5)
        yield base, token
    finally:
        kernels = descendants(server.pid)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)  # the server shuts its kernels down on SIGTERM
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        # Kernels run in a session of their own, outside the server's process group: end any
        # that the server left behind, by id, if it is still the same process.
        still_running = process_table()
        for pid, started in kernels.items():
            if pid in still_running and still_running[pid][1] == started:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


# ---------------------------------------------------------------- reading the page

# All outputs the reader sees: images (matplotlib figures as data: URIs) and rendered text/HTML,
# including those inside widgets' Output areas; a widget's own readout label is not an output.
OUTPUTS_JS = """nb => [
    ...[...nb.querySelectorAll('.jp-OutputArea-output img')].map(img => img.src),
    ...[...nb.querySelectorAll('.jp-OutputArea-output .jp-RenderedText, '
                             + '.jp-OutputArea-output .jp-RenderedHTMLCommon')].map(el => el.innerText),
]"""

# Tracebacks: error outputs and stderr text that looks like one.
ERRORS_JS = r"""nb => [...nb.querySelectorAll('[data-mime-type="application/vnd.jupyter.stderr"]')]
    .map(el => el.innerText).filter(text => /Traceback|^\w*Error\b/m.test(text))"""

PROMPTS_JS = "nb => [...nb.querySelectorAll('.jp-CodeCell .jp-InputPrompt')].map(p => p.innerText.trim())"


def wait_until(page, condition, timeout_s: float, what, poll_s: float = 0.5):
    """Poll ``condition()`` until it is true; ``what`` (text, or a function giving it) names it on timeout."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what() if callable(what) else what}")
        page.wait_for_timeout(poll_s * 1000)


def assert_no_tracebacks(notebook_el, when: str):
    errors = notebook_el.evaluate(ERRORS_JS)
    if errors:
        raise AssertionError(f"traceback {when}:\n" + "\n\n".join(errors)[-4000:])


def kernel_is_idle(page) -> bool:
    """The status bar reads e.g. "Python 3 (ipykernel) | Idle" once the kernel exists and is idle.

    (The toolbar's execution indicator says idle before a kernel is even started.)
    """
    status = page.locator("#jp-main-statusbar .jp-StatusBar-TextItem", has_text=re.compile(r"\| \w+$"))
    return status.count() > 0 and status.first.inner_text().strip().endswith("| Idle")


def run_all_cells(page, notebook_el, n_code_cells: int):
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
    # Exact text: "Restart Kernel and Run All Cells…" also contains "Run All Cells".
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()

    def finished():
        assert_no_tracebacks(notebook_el, "while running all cells")  # fail at once, not at the timeout
        prompts = notebook_el.evaluate(PROMPTS_JS)
        return sum(bool(re.fullmatch(r"\[\d+\]:", p)) for p in prompts) == n_code_cells

    wait_until(page, finished, RUN_ALL_S, lambda: f"all {n_code_cells} code cells to run (prompts now "
               f"{notebook_el.evaluate(PROMPTS_JS)}); CMEDU_BROWSER_TIMEOUT raises the limit")


# ---------------------------------------------------------------- moving the widgets


def move_slider(slider):
    """One keyboard step on the (noUiSlider) handle: right, or left if it sits at the maximum."""
    handle = slider.locator(".noUi-handle").first
    at_max = handle.get_attribute("aria-valuenow") == handle.get_attribute("aria-valuemax")
    handle.focus()
    handle.press("ArrowLeft" if at_max else "ArrowRight")


def pick_other_option(dropdown):
    select = dropdown.locator("select")
    current = select.evaluate("s => s.selectedIndex")
    select.select_option(index=1 if current == 0 else 0)


def click_first_unselected(group):
    group.locator("button:not(.mod-active), input:not(:checked)").first.click()


# (what the reader sees, CSS selector of one control, how to move it one step)
CONTROLS = [
    ("slider", ".widget-slider", move_slider),
    ("dropdown", ".widget-dropdown", pick_other_option),
    # (the buttons inside a ToggleButtons group also have the class widget-toggle-button)
    ("toggle button", ".jupyter-widgets.widget-toggle-button", lambda w: w.click()),
    ("checkbox", ".widget-checkbox input[type=checkbox]", lambda w: w.click()),
    ("toggle buttons", ".widget-toggle-buttons", click_first_unselected),
    ("radio buttons", ".widget-radio-box", click_first_unselected),
]


def move_and_check(page, notebook_el, kind: str, control, move) -> None:
    control.scroll_into_view_if_needed()
    label = " ".join(control.inner_text().split())  # e.g. "tau 0.02": description and readout
    before = notebook_el.evaluate(OUTPUTS_JS)
    move(control)
    # An output cleared but not yet redrawn (empty) is no change yet.
    wait_until(page, lambda: (notebook_el.evaluate(OUTPUTS_JS) or before) != before,
               WIDGET_REDRAW_S, f"the outputs to change after moving the {kind} {label!r}")
    wait_until(page, lambda: kernel_is_idle(page), KERNEL_IDLE_S, "the kernel to be idle after the redraw")
    assert_no_tracebacks(notebook_el, f"after moving the {kind}")
    assert notebook_el.evaluate(OUTPUTS_JS) != before, f"the outputs went back after moving the {kind}"


# ---------------------------------------------------------------- the test


@pytest.mark.parametrize("notebook", WIDGET_NOTEBOOKS, ids=[nb.stem for nb in WIDGET_NOTEBOOKS])
def test_widgets_redraw_in_jupyterlab(notebook: Path, browser, tmp_path):
    copy = cleared_copy(notebook, tmp_path / "notebooks")
    cells = json.loads(copy.read_text(encoding="utf-8"))["cells"]
    n_code_cells = sum(c["cell_type"] == "code" and "".join(c["source"]).strip() != "" for c in cells)
    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / f"{notebook.stem}.png"

    with jupyter_lab(tmp_path, copy.parent) as (base, token):
        context = browser.new_context(viewport={"width": 1280, "height": 1000})
        page = context.new_page()
        page.set_default_timeout(30_000)
        try:
            page.goto(f"{base}/lab/tree/{copy.name}?token={token}")
            notebook_el = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook")
            notebook_el.wait_for(timeout=KERNEL_IDLE_S * 1000)
            wait_until(page, lambda: kernel_is_idle(page), KERNEL_IDLE_S, 'the status bar to read "| Idle"')

            started = time.monotonic()
            run_all_cells(page, notebook_el, n_code_cells)
            print(f"{notebook.name}: all {n_code_cells} code cells ran in {time.monotonic() - started:.0f} s")

            moved = 0
            for kind, selector, move in CONTROLS:
                for control in notebook_el.locator(selector).all():
                    move_and_check(page, notebook_el, kind, control, move)
                    moved += 1
            assert moved > 0, "the notebook uses widgets, but no slider, dropdown or toggle appeared on the page"
            print(f"{notebook.name}: {moved} widget(s) moved, each redrew its output")
        finally:  # also on failure: the screenshot shows where it stopped
            try:
                page.screenshot(path=str(screenshot))
                print(f"screenshot: {screenshot}")
            except Exception as error:  # an artifact, not a check: never hide the test's own error
                print(f"no screenshot: {error}")
            context.close()
