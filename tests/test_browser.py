"""The notebooks' widgets in a real browser: JupyterLab from the venv, driven in headless Chromium by Playwright.

nbmake runs every notebook's code, but no widget is ever drawn there. Here JupyterLab serves temporary copies of
02 and 06 (the committed notebooks stay clean), the cells run in a kernel started with DS2_QUICK=1, and the page
is checked as a person would see it:

- 02: the utterance browser shows its dropdown, transcript, spectrogram and an <audio> player whose sound has the
  utterance's duration; picking another utterance changes the transcript, the image and the audio.
- 06: the upload widget renders, its file chooser takes audio files, and uploading a test utterance prints the
  same transcript the notebook's own "transcribe a file" cell printed for it.

Nothing is fetched from outside: JupyterLab's news, update check and PyPI extension manager are switched off, and
the page's requests to any host but this machine are blocked and reported. Skips when Playwright (pip) or Chromium
(Debian's `chromium`; DS2_CHROMIUM overrides the path) is missing; `.ci/run` installs both.
"""

from __future__ import annotations

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
from urllib.parse import urlparse

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = ("02_spectrograms.ipynb", "06_export.ipynb")
CHROMIUM = os.environ.get("DS2_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]
SERVER_START_S = 120
CELL_TIMEOUT_S = 240
WAIT_MS = 90_000  # explicit waits for the page (widgets render after the kernel answers)

# Opens (or finds) a notebook, waits for its kernel, runs the chosen code cells one by one as "Run Selected Cell"
# does, and returns the panel's DOM id and, per cell run, its index, whether it succeeded and its outputs.
RUN_CELLS_JS = """
async ({path, needles, through, timeoutMs}) => {
  const app = window.jupyterapp;
  await app.restored;
  const panel = await app.commands.execute('docmanager:open', {path, factory: 'Notebook'});
  await panel.context.ready;
  await panel.sessionContext.ready;
  const nb = panel.content;
  const code = nb.widgets.map((c, i) => [c, i]).filter(([c]) => c.model.type === 'code');
  const find = needle => {
    const hit = code.find(([c]) => c.model.sharedModel.getSource().includes(needle));
    if (!hit) throw new Error(`${path}: no code cell contains ${JSON.stringify(needle)}`);
    return hit[1];
  };
  let indices = needles.map(find);
  if (through) {
    const last = find(through);
    indices = code.map(([, i]) => i).filter(i => i <= last);
  }
  const ran = [];
  for (const index of indices) {
    app.shell.activateById(panel.id);
    nb.activeCellIndex = index;
    nb.deselectAll();
    const run = app.commands.execute('notebook:run-cell');
    const timeout = new Promise((_, reject) => setTimeout(
      () => reject(new Error(`${path}: cell ${index} still running after ${timeoutMs} ms`)), timeoutMs));
    const ok = await Promise.race([run, timeout]);
    const cell = nb.widgets[index];
    ran.push({index, ok, source: cell.model.sharedModel.getSource().slice(0, 80),
              outputs: cell.model.outputs.toJSON()});
    if (!ok) break;
  }
  return {panelId: panel.id, ran};
}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _corpus_dir() -> Path:
    return Path(os.environ.get("DS2_CORPORA", REPO / "corpora")) / "mini"


@pytest.fixture(scope="module")
def sync_playwright():
    """Playwright's sync API, or a skip naming what to install."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("Playwright for Python is not installed in this venv (.ci/run installs it: "
                    ".venv/bin/python -m pip install playwright)")
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium, or set DS2_CHROMIUM)")
    return sync_playwright


@pytest.fixture(scope="module")
def lab(sync_playwright, tmp_path_factory):
    """A JupyterLab server on a free localhost port, serving copies of the notebooks; killed at teardown."""
    corpus = _corpus_dir()
    missing = [s for s in ("dev.csv", "test.csv") if not (corpus / s).exists()]
    if missing:
        pytest.skip(f"mini corpus missing ({', '.join(missing)} in {corpus}): run `make corpus` first")
    root = tmp_path_factory.mktemp("lab")
    nb_dir = root / "notebooks"
    nb_dir.mkdir()
    for name in NOTEBOOKS:
        shutil.copy(REPO / "notebooks" / name, nb_dir / name)
    env = dict(os.environ, DS2_QUICK="1", GLOG_v="3", PYTHONWARNINGS="ignore::DeprecationWarning",
               DS2_RUNS=str(root / "runs"),
               # no personal Jupyter settings, workspaces or kernels: only the venv's
               JUPYTER_CONFIG_DIR=str(root / "config"), JUPYTER_DATA_DIR=str(root / "data"),
               JUPYTER_RUNTIME_DIR=str(root / "runtime"), IPYTHONDIR=str(root / "ipython"))
    env.pop("JUPYTER_PATH", None)
    # the lab's news and update toasts off in the browser too (the server has nothing to fetch them with)
    settings = root / "config/lab/user-settings/@jupyterlab/apputils-extension/notification.jupyterlab-settings"
    settings.parent.mkdir(parents=True)
    settings.write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    port, token = _free_port(), secrets.token_hex(16)
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", "--ServerApp.ip=127.0.0.1",
           f"--ServerApp.port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
           f"--ServerApp.root_dir={nb_dir}",
           # JupyterLab's own outside fetches: the news feed, the update check, the PyPI extension manager
           "--LabApp.news_url=None",
           "--LabApp.check_for_updates_class=jupyterlab.handlers.announcements.NeverCheckForUpdate",
           "--LabApp.extension_manager=readonly",
           "--LabApp.expose_app_in_browser=True"]  # window.jupyterapp, as JupyterLab's own Galata tests use
    log_path = root / "server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=nb_dir, env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"jupyter lab exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"jupyter lab not up after {SERVER_START_S} s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        yield {"base": base, "token": token, "log": log_path, "root": root}
    finally:
        proc.terminate()  # the server shuts its kernels down on SIGTERM
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # whatever is left of the group this fixture started
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def browser(sync_playwright):
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser, lab):
    """A fresh browser context logged in to the lab; requests to other hosts are blocked and listed."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    outside: list[str] = []

    def gate(route):
        url = route.request.url
        if urlparse(url).hostname in ("127.0.0.1", "localhost"):
            route.continue_()
        else:
            outside.append(url)
            route.abort()

    context.route("**/*", gate)
    pg = context.new_page()
    pg.set_default_timeout(WAIT_MS)
    try:
        yield pg
    finally:
        context.close()
    assert not outside, f"the page tried to fetch from outside this machine: {outside}"


@contextlib.contextmanager
def diagnostics(page, lab, name):
    """On failure: a screenshot and the server log's tail next to the error."""
    try:
        yield
    except BaseException as exc:
        if isinstance(exc, pytest.skip.Exception):
            raise
        shot = lab["root"] / f"{name}-failure.png"
        with contextlib.suppress(Exception):
            page.screenshot(path=str(shot), full_page=True)
        tail = lab["log"].read_text(errors="replace")[-2500:]
        raise AssertionError(f"{exc}\n-- screenshot: {shot}\n-- jupyter lab log (tail):\n{tail}") from exc


def open_lab(page, lab, workspace):
    """JupyterLab in an empty workspace of its own (no tab of another test restored)."""
    url = f"{lab['base']}/lab/workspaces/{workspace}?reset&token={lab['token']}"
    page.goto(url, wait_until="domcontentloaded")
    page.wait_for_function("() => window.jupyterapp !== undefined")
    page.evaluate("() => window.jupyterapp.restored")


def run_cells(page, path, *, needles=(), through=None):
    """Run the code cells that contain each needle (or all code cells up to the one containing `through`)."""
    result = page.evaluate(RUN_CELLS_JS, {"path": path, "needles": list(needles), "through": through,
                                          "timeoutMs": CELL_TIMEOUT_S * 1000})
    for cell in result["ran"]:
        errors = [o for o in cell["outputs"] if o.get("output_type") == "error"]
        assert cell["ok"] and not errors, (
            f"{path}: cell {cell['index']} ({cell['source']!r}) failed: "
            + "; ".join(f"{e['ename']}: {e['evalue']}" for e in errors))
    cell_locator = page.locator(f'[id="{result["panelId"]}"] .jp-Notebook .jp-Cell')
    return result["ran"], cell_locator


def stream_text(cell) -> str:
    return "".join("".join(o["text"]) if isinstance(o["text"], list) else o["text"]
                   for o in cell["outputs"] if o.get("output_type") == "stream")


def audio_duration(page, audio) -> float:
    """Waits until the <audio> element has decoded its metadata, and returns its duration in seconds."""
    handle = audio.element_handle()
    page.wait_for_function("el => el.readyState >= 1 && isFinite(el.duration) && el.duration > 0", arg=handle)
    return handle.evaluate("el => el.duration")


def shown_duration(html: str) -> float:
    m = re.search(r"\(([\d.]+) s,", html)
    assert m, f"no duration in the browser's text: {html!r}"
    return float(m.group(1))


def test_utterance_browser_renders_and_follows_the_picker(page, lab):
    from playwright.sync_api import expect

    with diagnostics(page, lab, "02"):
        open_lab(page, lab, "browser-02")
        ran, cells = run_cells(page, "02_spectrograms.ipynb", through="utterance_browser(")
        assert any("QUICK mode (DS2_QUICK=1" in stream_text(c) for c in ran), "DS2_QUICK=1 did not reach the kernel"
        out = cells.nth(ran[-1]["index"]).locator(".jp-OutputArea")
        picker = out.locator(".widget-dropdown select")
        text = out.locator(".widget-html .widget-html-content")
        audio = out.locator("audio")
        image = out.locator(".widget-image, img").first
        expect(picker).to_be_visible()
        expect(audio).to_have_count(1)
        expect(audio).to_have_attribute("src", re.compile(r"^blob:"))
        expect(audio).to_have_attribute("controls", "")
        expect(image).to_have_attribute("src", re.compile(r"^blob:|^data:image/png"))

        labels = picker.locator("option").evaluate_all(
            "options => options.map(o => o.textContent.replace(/\\u00a0/g, ' '))")  # the view shows nbsp
        assert len(labels) >= 2, f"the picker offers {labels}"
        assert picker.evaluate("el => el.selectedIndex") == 0
        first = labels[0].split(") ", 1)[1].strip()  # "<id> (1.4s) <transcript[:40]>"
        expect(text).to_contain_text(first)
        html0, src0, img0 = text.inner_html(), audio.get_attribute("src"), image.get_attribute("src")
        assert abs(audio_duration(page, audio) - shown_duration(html0)) < 0.05, "the player's sound is not this one"

        picker.select_option(index=1)  # a person picks the second utterance
        second = labels[1].split(") ", 1)[1].strip()
        expect(text).to_contain_text(second)
        expect(audio).not_to_have_attribute("src", src0)
        expect(image).not_to_have_attribute("src", img0)
        html1 = text.inner_html()
        assert html1 != html0
        assert abs(audio_duration(page, audio) - shown_duration(html1)) < 0.05, "the player did not follow"


def test_upload_widget_renders_and_transcribes(page, lab):
    from playwright.sync_api import expect

    with diagnostics(page, lab, "06"):
        open_lab(page, lab, "browser-06")
        # The notebook's own cells: parameters, set-up (loads the mini checkpoint), one transcription, the upload
        # widget; the export and RTF cells in between are not needed for it and take minutes.
        ran, cells = run_cells(page, "06_export.ipynb", needles=[
            "# parameters", "load_model(", "from ds2_helpers.evaluate import transcribe", "widgets.FileUpload("])
        assert any("QUICK mode (DS2_QUICK=1" in stream_text(c) for c in ran), "DS2_QUICK=1 did not reach the kernel"
        printed = re.search(r"^transcript:(.*)$", stream_text(ran[2]), re.M)
        assert printed, f"the transcribe cell printed {stream_text(ran[2])!r}"

        out = cells.nth(ran[-1]["index"]).locator(".jp-OutputArea")
        button = out.locator("button.widget-upload")
        expect(button).to_be_visible()
        expect(button).to_contain_text("audio file")
        expect(button).to_be_enabled()

        import pandas as pd

        test_csv = pd.read_csv(_corpus_dir() / "test.csv")
        audio_file = Path(test_csv.audio_path.iloc[0])  # the utterance the transcribe cell used
        with page.expect_file_chooser() as chooser:
            button.click()
        assert chooser.value.element.get_attribute("accept") == ".wav,.flac,.ogg"
        assert not chooser.value.is_multiple()
        chooser.value.set_files(str(audio_file))

        expect(button).to_contain_text("(1)")  # the widget counts the file it holds
        result = out.locator(".widget-html .widget-html-content")
        expect(result).to_contain_text(f"{audio_file.name} ->")
        html = result.inner_html()
        assert "cannot transcribe" not in html, html
        got = re.search(r"<b>(.*)</b>", html)
        assert got and got.group(1).strip() == printed.group(1).strip(), (html, printed.group(0))
