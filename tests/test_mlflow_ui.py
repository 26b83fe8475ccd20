"""The MLflow UI as a user sees it, in a real browser: `mlflow server` over a store with two runs
made through our tracker, opened in headless Chromium (driven over the Chrome DevTools Protocol).

Screenshots are kept in outputs/test-artifacts/ (and the test's temp folder).
"""
from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from conftest import REPO
from tests.fixtures.ports import free_port
from tests.fixtures.mlflow_store import fresh_store

pytestmark = pytest.mark.slow

CHROMIUM = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome")
                 if shutil.which(b)), None)
ARTIFACTS = REPO / "outputs" / "test-artifacts"


EXPAND_PARENT = """(() => {
  for (const b of document.querySelectorAll('button[aria-label="Close"]')) b.click();
  const name = Array.from(document.querySelectorAll('a, span, div'))
      .find(e => e.children.length === 0 && e.innerText.startsWith('sweep ui-check'));
  let row = name;
  while (row && !(row.getAttribute('role') === 'row' || row.classList.contains('ag-row'))) row = row.parentElement;
  const button = (row || document).querySelector('button');
  if (button) button.click();
  return !!button;
})()"""



def _wait_http(url: str, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(url)


class Page:
    """One browser tab over CDP: navigate, evaluate, screenshot."""

    def __init__(self, ws_url: str) -> None:
        import websocket

        self.ws = websocket.create_connection(ws_url, timeout=60, suppress_origin=True)
        self.n = 0

    def call(self, method: str, **params):
        self.n += 1
        self.ws.send(json.dumps({"id": self.n, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.n:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def eval(self, js: str):
        return self.call("Runtime.evaluate", expression=js, returnByValue=True)["result"].get("value")

    def wait_for(self, js: str, timeout: float = 90):
        deadline = time.time() + timeout
        while time.time() < deadline:
            value = self.eval(js)
            if value:
                return value
            time.sleep(0.5)
        raise AssertionError(f"page never satisfied: {js}\n--- page text ---\n{self.text()[:3000]}")

    def text(self) -> str:
        return self.eval("document.body ? document.body.innerText : ''") or ""

    def screenshot(self, path: Path) -> Path:
        data = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=False)["data"]
        path.write_bytes(base64.b64decode(data))
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, ARTIFACTS / path.name)
        return path


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Two runs of a rank sweep, made by our tracker (names, params, step series, finals)."""
    from components.tracking import MLflowTracker

    d = tmp_path_factory.mktemp("mlflow")
    ids = []
    tracker = MLflowTracker(uri=fresh_store(d / "mlflow.db"), experiment="telecom-finetune", root=d,
                            system_metrics=False)
    parent = tracker.sweep_parent(d / "sweep", "sweep ui-check lora.rank", {"sweep.id": "ui-check"})
    for rank, end in ((4, 1.9), (8, 1.6)):
        params = {"lora": {"rank": rank, "learning_rate": 1e-4}, "model": {"name": "smollm2-135m"},
                  "extraction": {"max_tokens": 256}}
        with tracker.start(params=params, tags={"scope": "full", "sweep.id": "ui-check"},
                           run_name=f"#{len(ids)} lora.rank={rank}", parent_run_id=parent):
            for step in range(5, 35, 5):
                tracker.log_metrics({"finetune/train_loss": 3.0 - (3.0 - end) * step / 30}, step=step)
            tracker.log_metrics({"eval/val_loss_after": end + 0.1})
            tracker.set_description(f"**FINISHED**\n- validation loss after: {end + 0.1}")
            ids.append(tracker.run_id)
    tracker.end_sweep_parent(d / "sweep", "eval/val_loss_after")
    return tracker, ids


@pytest.fixture(scope="module")
def server(store):
    tracker, _ = store
    port = free_port()
    log = open(Path(tracker.uri[len("sqlite:///"):]).parent / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", tracker.uri,
                             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_http(f"http://127.0.0.1:{port}/health", 120)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if CHROMIUM is None:
        pytest.skip("no chromium binary on PATH (Debian: apt-get install chromium; .ci/run installs it)")
    profile = tmp_path_factory.mktemp("chromium-profile")
    proc = subprocess.Popen([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                             "--disable-dev-shm-usage", "--no-first-run", "--window-size=1600,1000",
                             "--remote-debugging-port=0", "--remote-allow-origins=*",
                             f"--user-data-dir={profile}", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.time() + 60
        while not (port_file.is_file() and port_file.read_text().strip()) and time.time() < deadline:
            time.sleep(0.2)
        port = int(port_file.read_text().split()[0])
        req = urllib.request.Request(f"http://127.0.0.1:{port}/json/new?about:blank", method="PUT")
        with urllib.request.urlopen(req, timeout=10) as r:
            tab = json.loads(r.read())
        page = Page(tab["webSocketDebuggerUrl"])
        page.call("Page.enable")
        page.call("Emulation.setDeviceMetricsOverride", width=1600, height=1000, deviceScaleFactor=1,
                  mobile=False)
        yield page
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_experiment_page_lists_the_runs_on_the_runs_table(server, store, browser, tmp_path):
    tracker, ids = store
    browser.call("Page.navigate", url=f"{server}/#/experiments/{tracker.experiment_id}/runs")
    # The experiment kind opens the runs table (not the GenAI traces screen), the sweep's jobs
    # folded under their parent run.
    browser.wait_for("document.body && document.body.innerText.includes('sweep ui-check lora.rank')")
    browser.screenshot(tmp_path / "mlflow-experiment-folded.png")
    # Unfold the parent (the expander in its row) and close the assistant panel.
    browser.eval(EXPAND_PARENT)
    browser.wait_for("document.body && document.body.innerText.includes('lora.rank=8')")
    text = browser.text()
    shot = browser.screenshot(tmp_path / "mlflow-experiment-runs.png")
    assert "#0 lora.rank=4" in text and "#1 lora.rank=8" in text, text[:2000]
    assert "sweep ui-check" in text
    assert shot.stat().st_size > 10_000


def test_compare_view_shows_parameters_and_a_metric_chart(server, store, browser, tmp_path):
    tracker, ids = store
    q = urllib.parse.urlencode({"runs": json.dumps(ids), "experiments": json.dumps([tracker.experiment_id])})
    browser.call("Page.navigate", url=f"{server}/#/compare-runs?{q}")
    browser.wait_for("document.body && document.body.innerText.includes('lora.rank')")
    # A chart: Plotly draws its plots as SVG inside .js-plotly-plot.
    browser.wait_for("document.querySelectorAll('.js-plotly-plot, svg.main-svg').length > 0")
    browser.eval("window.scrollTo(0, 0)")
    time.sleep(1)
    text = browser.text()
    shot = browser.screenshot(tmp_path / "mlflow-compare-runs.png")
    assert "lora.rank" in text and "lora.learning_rate" in text
    assert "eval/val_loss_after" in text
    assert "extraction.max_tokens" in text and "***redacted***" not in text
    assert shot.stat().st_size > 10_000
