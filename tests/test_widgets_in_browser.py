"""The widgets in a real browser: JupyterLab 4 served on localhost, one notebook holding every widget of the
course (notebooks 01, 03a, 04, 05, 06 and 07, each on small untrained models and generated data) opened in
headless Chromium (driven by Selenium) and run; for each widget its first slider is moved with the keyboard
and the figure checked to have changed (screenshots of the widget's output compared pixel by pixel), with no
error shown.

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

NOTEBOOK_SETTINGS = "@jupyterlab/notebook-extension/tracker.jupyterlab-settings"  # render every cell
SETUP = (
    "import torch\n"
    "from fusion_edu.crossvit import CrossViT\n"
    "from fusion_edu.datasets import (CLASSES, PointCloudConfig, RGBDConfig, generate_audiovisual_clips,\n"
    "                                 generate_multiscale_images, generate_pointcloud_scenes,\n"
    "                                 generate_referring_scenes, generate_rgbd_scenes)\n"
    "from fusion_edu.lavt import LAVT\n"
    "from fusion_edu.mbt import MBT\n"
    "from fusion_edu.recipes import CROSSVIT, MBT_MODES, RGBD_CHANNELS, RGBD_VIT\n"
    "from fusion_edu.tokenfusion import TokenFusion\n"
    "from fusion_edu.tokenfusion_heterogeneous import PointImageTokenFusion, detection_targets\n"
    "from fusion_edu.train import seeded\n"
    "from fusion_edu.vit import VisionTransformer\n"
    "from fusion_edu.widgets import (attention_explorer, bottleneck_explorer, cross_attention_explorer,\n"
    "                                point_substitution_explorer, referring_explorer, token_score_explorer)\n"
    "torch.set_num_threads(1)\n"
    "rgbd = generate_rgbd_scenes(4, seed=7, config=RGBDConfig())"
)
# name: (the cell that shows the widget, its controls' first labels)
WIDGETS = {
    "01 attention": (
        "with seeded(0):\n"
        "    vit = VisionTransformer(**RGBD_VIT, in_chans=3, modality='rgb')\n"
        "attention_explorer(vit, rgbd, 'rgb')",
        ["sample", "layer", "head"]),
    "03 token scores": (
        "with seeded(0):\n"
        "    tokenfusion = TokenFusion(RGBD_CHANNELS, img_size=32, patch_size=4, num_classes=len(CLASSES),\n"
        "                              embed_dim=32, depth=2, num_heads=2)\n"
        "token_score_explorer(tokenfusion, rgbd, {'rgb': 'rgb_corrupt', 'depth': 'depth_corrupt'})",
        ["sample", "layer", "theta"]),
    "04 point substitution": (
        "cloud_config = PointCloudConfig(num_points=128, num_rays=1500)\n"
        "clouds = detection_targets(generate_pointcloud_scenes(4, 0, cloud_config), 16, patch_size=8,\n"
        "                           group_size=4)\n"
        "with seeded(0):\n"
        "    points_model = PointImageTokenFusion(num_seeds=16, group_size=4, point_dim=16, image_dim=8,\n"
        "                                         depth=2, num_heads=2, image_size=64, patch_size=8,\n"
        "                                         threshold=0.5)\n"
        "point_substitution_explorer(points_model, clouds)",
        ["scene", "layer"]),
    "05 cross-attention": (
        "with seeded(0):\n"
        "    crossvit = CrossViT(**CROSSVIT)\n"
        "cross_attention_explorer(crossvit, generate_multiscale_images(4, 0))",
        ["sample", "block", "branch"]),
    "06 bottlenecks": (
        "with seeded(0):\n"
        "    mbt = MBT(**MBT_MODES['bottleneck'])\n"
        "bottleneck_explorer(mbt, generate_audiovisual_clips(4, 0))",
        ["clip", "layer", "bottleneck"]),
    "07 pixel-word attention": (
        "with seeded(0):\n"
        "    lavt = LAVT().eval()\n"
        "referring_explorer(lavt, generate_referring_scenes(4, seed=[0, 9]))",
        ["scene", "expression", "stage"]),
}


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


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A folder for the server, made once for the module."""
    return tmp_path_factory.mktemp("lab")


@pytest.fixture(scope="module")
def jupyter_lab(served):
    """A JupyterLab server on a free localhost port, serving ``served``; yields (base URL, token)."""
    tmp_path = served
    port, token = _free_port(), secrets.token_hex(16)
    settings = tmp_path / "settings"
    quiet = settings / NOTIFICATION_SETTINGS
    quiet.parent.mkdir(parents=True)
    quiet.write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    every_cell = settings / NOTEBOOK_SETTINGS
    every_cell.parent.mkdir(parents=True)
    every_cell.write_text(json.dumps({"windowingMode": "none"}))  # widgets below the fold stay rendered
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


@pytest.fixture(scope="module")
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


# A widget's output area may be redrawn while the test reads it (the kernel answers while the page renders),
# so nothing below holds an element across two browser calls: each read finds its element anew (the k-th
# widget on the page), and a read that meets a replaced element is retried.
WIDGET_SELECTOR = ".widget-interact"
SETTLE_SECONDS = 1.0  # the figure's source must stay the same this long before it is read
IN_WIDGET = "const box = document.querySelectorAll(arguments[0])[arguments[1]];"


def _retrying(driver, read):
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    ignored = (StaleElementReferenceException, NoSuchElementException, IndexError)
    return WebDriverWait(driver, CHANGE_SECONDS, ignored_exceptions=ignored).until(read)


def _figure_source(driver, index: int) -> str | None:
    """The ``src`` of widget ``index``'s figure (a PNG data URL), or None while it has none."""
    return driver.execute_script(IN_WIDGET + " const image = box && box.querySelector('.widget-output img');"
                                 " return image ? image.src : null;", WIDGET_SELECTOR, index)


def _settled_figure_source(driver, index: int) -> str:
    """Widget ``index``'s figure source once it has stopped changing for ``SETTLE_SECONDS``."""
    deadline = time.monotonic() + CHANGE_SECONDS
    source = _figure_source(driver, index)
    while time.monotonic() < deadline:
        time.sleep(SETTLE_SECONDS)
        again = _figure_source(driver, index)
        if again is not None and again == source:
            return source
        source = again
    raise TimeoutError(f"widget {index}'s figure kept changing for {CHANGE_SECONDS} s")


def _output_screenshot(driver, index: int) -> bytes:
    from selenium.webdriver.common.by import By

    return _retrying(driver, lambda d: d.find_elements(By.CSS_SELECTOR, WIDGET_SELECTOR)[index].find_element(
        By.CSS_SELECTOR, ".widget-output").screenshot_as_png)


def _texts(driver, index: int, selector: str) -> list[str]:
    script = (IN_WIDGET + " return box ? Array.from(box.querySelectorAll(arguments[2]),"
              " element => element.textContent.trim()) : [];")
    return driver.execute_script(script, WIDGET_SELECTOR, index, selector)


def _press_right_on_first_slider(driver, index: int, key: str) -> bool:
    from selenium.webdriver.common.by import By

    box = driver.find_elements(By.CSS_SELECTOR, WIDGET_SELECTOR)[index]
    handle = box.find_element(By.CSS_SELECTOR, ".noUi-handle")  # the first slider: sample, scene or clip
    handle.click()
    handle.send_keys(key)
    return True


@pytest.fixture(scope="module")
def course_widgets(served, jupyter_lab, chromium):
    """The notebook of every widget, opened and run; yields the driver once each widget shows a figure."""
    from selenium.webdriver.support.ui import WebDriverWait

    sources = [SETUP] + [cell for cell, _ in WIDGETS.values()]
    (served / "widgets.ipynb").write_text(json.dumps(_notebook(sources)))
    base, token = jupyter_lab
    chromium.get(f"{base}/lab/tree/widgets.ipynb?token={token}")
    WebDriverWait(chromium, WIDGET_SECONDS).until(lambda d: d.execute_script(
        "const app = window.jupyterapp; return app && app.shell.currentWidget"
        " && app.shell.currentWidget.sessionContext && app.shell.currentWidget.sessionContext.isReady;"))
    chromium.execute_script("window.jupyterapp.commands.execute('notebook:run-all-cells');")
    WebDriverWait(chromium, WIDGET_SECONDS).until(
        lambda d: all(_figure_source(d, index) is not None for index in range(len(WIDGETS))))
    return chromium


@pytest.mark.parametrize("index", range(len(WIDGETS)), ids=list(WIDGETS))
def test_moving_a_slider_redraws_the_widget_figure(course_widgets, served, index):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    driver, (name, (_, labels)) = course_widgets, list(WIDGETS.items())[index]
    before_source = _settled_figure_source(driver, index)
    before, before_values = _output_screenshot(driver, index), _texts(driver, index, ".widget-readout")
    assert _texts(driver, index, ".widget-label")[:len(labels)] == labels, name

    _retrying(driver, lambda d: _press_right_on_first_slider(d, index, Keys.ARROW_RIGHT))
    WebDriverWait(driver, CHANGE_SECONDS).until(
        lambda d: _figure_source(d, index) not in (None, before_source))
    _settled_figure_source(driver, index)
    after, after_values = _output_screenshot(driver, index), _texts(driver, index, ".widget-readout")
    stem = name.replace(" ", "_")
    (served / f"{stem}_before.png").write_bytes(before)
    (served / f"{stem}_after.png").write_bytes(after)

    assert (before_values[0], after_values[0]) == ("0", "1"), name  # the first slider's readout
    first, second = _pixels(before), _pixels(after)
    assert first.size > 0 and second.size > 0, name
    height, width = min(first.shape[0], second.shape[0]), min(first.shape[1], second.shape[1])
    # figures may change height with their content (a longer expression, another title): compare the overlap
    changed = np.abs(first[:height, :width] - second[:height, :width]).sum(axis=-1) > 0
    assert changed.mean() > MIN_CHANGED_PIXELS, f"{name}: only {changed.mean():.4f} of the pixels changed"
    assert not driver.find_elements(By.CSS_SELECTOR, ".jp-OutputArea-output[data-mime-type*='error']"), name
