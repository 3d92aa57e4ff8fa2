"""A real browser: JupyterLab on 127.0.0.1 (no token, a temporary root directory) and headless
Chromium driven by selenium run the asset-covariance notebook; the monitor's bokeh plot must hold
a log-likelihood curve with more than one point, drawn in the page. A screenshot of the
monitor is saved (path printed; ``MLR_DASK_SCREENSHOT`` names a copy).

Needs Debian's ``chromium`` and ``chromium-driver`` and the ``selenium`` package; skipped
without them.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
NOTEBOOK = "asset_covariance.ipynb"

CURVES_JS = """
const out = [];
if (!window.Bokeh) return JSON.stringify({bokeh: false, curves: out, views: 0});
for (const doc of Bokeh.documents) {
  const models = doc.all_models ? Array.from(doc.all_models) : Array.from(doc._all_models.values());
  for (const m of models) {
    if (m.name && m.name.startsWith('curve|')) out.push({name: m.name, n: m.get_length()});
  }
}
return JSON.stringify({bokeh: true, curves: out, views: Object.keys(Bokeh.index).length});
"""


def _browser() -> tuple[str, str]:
    chromium = next((shutil.which(b) for b in ("chromium", "chromium-browser")
                     if shutil.which(b)), None)
    driver = shutil.which("chromedriver")
    if chromium is None or driver is None:
        pytest.skip("headless Chromium is not installed (apt-get install -y chromium "
                    "chromium-driver)")
    return chromium, driver


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def lab(tmp_path):
    pytest.importorskip("jupyterlab")
    pytest.importorskip("jupyter_bokeh")
    root = tmp_path / "root"
    root.mkdir()
    shutil.copy(EXAMPLES / NOTEBOOK, root / NOTEBOOK)
    port = _free_port()
    env = dict(os.environ, JUPYTERLAB_WORKSPACES_DIR=str(tmp_path / "workspaces"),
               MPLBACKEND="module://matplotlib_inline.backend_inline")
    args = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={port}", "--IdentityProvider.token=", "--ServerApp.password=",
            f"--ServerApp.root_dir={root}", "--LabApp.news_url=None"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        args.append("--allow-root")
    log = open(tmp_path / "lab.log", "w")
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            if proc.poll() is not None:
                pytest.fail(f"JupyterLab exited: {(tmp_path / 'lab.log').read_text()[-2000:]}")
            try:
                urllib.request.urlopen(f"{url}/api/status", timeout=1)
                break
            except OSError:
                time.sleep(0.25)
        else:
            pytest.fail("JupyterLab did not start in 60 s")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _prompts(d) -> list[str]:
    return d.execute_script(
        "return Array.from(document.querySelectorAll('.jp-CodeCell .jp-InputArea-prompt'))"
        ".map(e => e.textContent.trim())")


def test_monitor_draws_curve_in_jupyterlab(lab, tmp_path):
    chromium, driver_path = _browser()
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    opts = webdriver.ChromeOptions()
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--window-size=1400,1000"):
        opts.add_argument(a)
    opts.binary_location = chromium
    d = webdriver.Chrome(options=opts, service=Service(driver_path))
    try:
        d.get(f"{lab}/lab/tree/{NOTEBOOK}")
        t0 = time.time()
        while not d.find_elements(By.CSS_SELECTOR, ".jp-Notebook .jp-CodeCell"):
            assert time.time() - t0 < 90, "the notebook did not open"
            time.sleep(0.5)
        # wait for the kernel, then Run > Run All Cells
        while "Idle" not in d.find_element(By.CSS_SELECTOR, ".jp-StatusBar-Widget, body").text:
            if time.time() - t0 > 120:
                break
            time.sleep(0.5)
        d.find_element(By.XPATH, "//li[contains(@class,'lm-MenuBar-item')]"
                                 "//div[text()='Run']").click()
        d.find_element(By.XPATH, "//li[contains(@class,'lm-Menu-item')]"
                                 "//div[text()='Run All Cells']").click()
        t0 = time.time()
        while True:
            prompts = _prompts(d)
            done = prompts and all(p not in ("[*]:", "[ ]:", "[ ]") and p != ""
                                   for p in prompts)
            if done:
                break
            assert time.time() - t0 < 400, f"the notebook did not finish: {prompts}"
            time.sleep(2)
        errors = d.find_elements(By.CSS_SELECTOR,
                                 ".jp-OutputArea-output[data-mime-type="
                                 "'application/vnd.jupyter.stderr'] .ansi-red-fg")
        report = json.loads(d.execute_script(CURVES_JS))
        monitor = d.find_elements(By.XPATH, "//*[contains(text(), 'mlr-dask jobs')]")
        if monitor:
            d.execute_script("arguments[0].scrollIntoView()", monitor[0])
            time.sleep(1)
        shot = tmp_path / "monitor.png"
        d.save_screenshot(str(shot))
        print(f"screenshot: {shot}")
        if os.environ.get("MLR_DASK_SCREENSHOT"):
            shutil.copy(shot, os.environ["MLR_DASK_SCREENSHOT"])
    finally:
        d.quit()
    assert not errors, [e.text for e in errors]
    assert report["bokeh"], "BokehJS was not loaded in the page"
    assert report["views"] >= 1, "no bokeh view was rendered"
    loglike = [c for c in report["curves"] if c["name"].startswith("curve|loglike|")]
    assert loglike, f"no log-likelihood curve in the page: {report}"
    assert max(c["n"] for c in loglike) > 1, report
    assert monitor, "the monitor widget is not in the page"
