"""The widgets in a real browser: JupyterLab 4 served on localhost, a notebook with TokenFusion's score
explorer opened in headless Chromium (driven by Selenium), run, its sample slider moved with the keyboard,
and the figure checked to have changed (screenshots of the widget's output compared pixel by pixel).

Needs Debian's ``chromium`` and ``chromium-driver`` (``apt-get install chromium chromium-driver``). Where
they are missing the test is skipped, unless ``FUSION_EDU_BROWSER_TEST=required`` (CI sets it), when it
fails instead.
"""

import io
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
from PIL import Image

BROWSER, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
REQUIRED = os.environ.get("FUSION_EDU_BROWSER_TEST") == "required"
SERVER_START_SECONDS = 60
WIDGET_SECONDS = 180  # kernel start, torch import, a forward pass, the first figure
CHANGE_SECONDS = 60
NOTIFICATION_SETTINGS = "@jupyterlab/apputils-extension/notification.jupyterlab-settings"  # no news pop-up
MIN_CHANGED_PIXELS = 0.01  # share of the output's pixels that must differ after the slider moves

WIDGET_NOTEBOOK = [
    "import torch\n"
    "from fusion_edu.datasets import CLASSES, RGBDConfig, generate_rgbd_scenes\n"
    "from fusion_edu.recipes import RGBD_CHANNELS\n"
    "from fusion_edu.tokenfusion import TokenFusion\n"
    "from fusion_edu.train import seeded\n"
    "from fusion_edu.widgets import token_score_explorer\n"
    "torch.set_num_threads(1)",
    "scenes = generate_rgbd_scenes(4, seed=7, config=RGBDConfig())\n"
    "with seeded(0):\n"
    "    model = TokenFusion(RGBD_CHANNELS, img_size=32, patch_size=4, num_classes=len(CLASSES),\n"
    "                        embed_dim=32, depth=2, num_heads=2)\n"
    "token_score_explorer(model, scenes, {'rgb': 'rgb_corrupt', 'depth': 'depth_corrupt'})",
]


def _notebook(sources: list[str]) -> dict:
    cells = [{"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [], "source": s}
             for s in sources]
    return {"cells": cells, "nbformat": 4, "nbformat_minor": 5,
            "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_for_server(url: str, server: subprocess.Popen) -> None:
    deadline = time.monotonic() + SERVER_START_SECONDS
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"jupyter lab exited with {server.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"jupyter lab did not answer {url} within {SERVER_START_SECONDS} s")


@pytest.fixture
def jupyter_lab(tmp_path):
    """A JupyterLab server on a free localhost port, serving ``tmp_path``; yields (base URL, token)."""
    port, token = _free_port(), secrets.token_hex(16)
    settings = tmp_path / "settings"
    quiet = settings / NOTIFICATION_SETTINGS
    quiet.parent.mkdir(parents=True)
    quiet.write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    environment = {**os.environ, "JUPYTERLAB_SETTINGS_DIR": str(settings),
                   "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "workspaces")}
    command = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--allow-root", f"--port={port}",
               "--ServerApp.ip=127.0.0.1", f"--IdentityProvider.token={token}",
               f"--ServerApp.root_dir={tmp_path}", "--LabApp.expose_app_in_browser=True"]
    log = (tmp_path / "server.log").open("w")
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=environment)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_for_server(f"{base}/api/status?token={token}", server)
        yield base, token
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


@pytest.fixture
def chromium():
    if not (BROWSER and DRIVER):
        message = "needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)"
        if REQUIRED:
            pytest.fail(message)
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = BROWSER
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1400,1100"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    yield driver
    driver.quit()


def _pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)


# The widget's output area may be redrawn while the test reads it (the kernel answers while the page
# renders), so nothing below holds an element across two browser calls: each read finds its element anew,
# and a read that meets a replaced element is retried.
OUTPUT_SELECTOR = ".widget-interact .widget-output"
IMAGE_SELECTOR = f"{OUTPUT_SELECTOR} img"
READOUT_SELECTOR = ".widget-interact .widget-readout"
SETTLE_SECONDS = 1.0  # the figure's source must stay the same this long before it is read


def _retrying(driver, read):
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    ignored = (StaleElementReferenceException, NoSuchElementException)
    return WebDriverWait(driver, CHANGE_SECONDS, ignored_exceptions=ignored).until(read)


def _figure_source(driver) -> str | None:
    return driver.execute_script("const image = document.querySelector(arguments[0]);"
                                 " return image ? image.src : null;", IMAGE_SELECTOR)


def _settled_figure_source(driver) -> str:
    """The figure's source once it has stopped changing for ``SETTLE_SECONDS``."""
    deadline = time.monotonic() + CHANGE_SECONDS
    source = _figure_source(driver)
    while time.monotonic() < deadline:
        time.sleep(SETTLE_SECONDS)
        again = _figure_source(driver)
        if again is not None and again == source:
            return source
        source = again
    raise TimeoutError(f"the widget's figure kept changing for {CHANGE_SECONDS} s")


def _output_screenshot(driver) -> bytes:
    from selenium.webdriver.common.by import By

    return _retrying(driver, lambda d: d.find_element(By.CSS_SELECTOR, OUTPUT_SELECTOR).screenshot_as_png)


def _texts(driver, selector: str) -> list[str]:
    return driver.execute_script("return Array.from(document.querySelectorAll(arguments[0]),"
                                 " element => element.textContent.trim());", selector)


def _press_right_on_sample_slider(driver, key: str) -> bool:
    from selenium.webdriver.common.by import By

    handle = driver.find_element(By.CSS_SELECTOR, ".widget-interact .noUi-handle")  # the sample slider
    handle.click()
    handle.send_keys(key)
    return True


def test_moving_a_slider_redraws_the_widget_figure(tmp_path, jupyter_lab, chromium):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    (tmp_path / "widget.ipynb").write_text(json.dumps(_notebook(WIDGET_NOTEBOOK)))
    base, token = jupyter_lab
    chromium.get(f"{base}/lab/tree/widget.ipynb?token={token}")
    WebDriverWait(chromium, WIDGET_SECONDS).until(lambda d: d.execute_script(
        "const app = window.jupyterapp; return app && app.shell.currentWidget"
        " && app.shell.currentWidget.sessionContext && app.shell.currentWidget.sessionContext.isReady;"))
    chromium.execute_script("window.jupyterapp.commands.execute('notebook:run-all-cells');")

    WebDriverWait(chromium, WIDGET_SECONDS).until(lambda d: _figure_source(d) is not None)
    before_source = _settled_figure_source(chromium)
    before, before_values = _output_screenshot(chromium), _texts(chromium, READOUT_SELECTOR)
    assert _texts(chromium, ".widget-interact .widget-label")[:3] == ["sample", "layer", "theta"]

    _retrying(chromium, lambda d: _press_right_on_sample_slider(d, Keys.ARROW_RIGHT))
    WebDriverWait(chromium, CHANGE_SECONDS).until(lambda d: _figure_source(d) not in (None, before_source))
    _settled_figure_source(chromium)
    after, after_values = _output_screenshot(chromium), _texts(chromium, READOUT_SELECTOR)
    (tmp_path / "before.png").write_bytes(before)
    (tmp_path / "after.png").write_bytes(after)

    assert (before_values[0], after_values[0]) == ("0", "1")  # the sample slider's readout
    first, second = _pixels(before), _pixels(after)
    assert first.shape == second.shape and first.size > 0
    changed = np.abs(first - second).sum(axis=-1) > 0
    assert changed.mean() > MIN_CHANGED_PIXELS, f"only {changed.mean():.4f} of the pixels changed"
    assert not chromium.find_elements(By.CSS_SELECTOR, ".jp-OutputArea-output[data-mime-type*='error']")
