"""demo/app.py: the page's functions on the shipped toy-clip, then the whole app in a real headless
Chromium (the OS's chromium and chromedriver, driven by selenium): upload an image, type classes,
segment; pick an example, switch to the slide protocol, segment again. The overlay and the area
table shown are checked against the Predictor run in this process.

The browser test is skipped only where Chromium is missing outside CI; in CI (``CI`` set) a
missing browser or package fails. It saves a screenshot (``PIXELCLIP_SCREENSHOT_DIR``, if set,
gets a small copy: that is how docs/images/web_demo.png is made).
"""

import contextlib
import importlib.util
import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, load_script
from PIL import Image

from pixelclip.config import build_config
from pixelclip.inference.predictor import Predictor
from pixelclip.toyworld import TOYWORLD_CLASSES, generate_toyworld

APP = REPO / "demo" / "app.py"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CHROME_FLAGS = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--window-size=1100,1250",
)  # fmt: skip
STARTUP_SECONDS = 240  # imports of torch, detectron2 and gradio plus the model, on 2 cores
RESULT_SECONDS = 120
UPLOAD_VOCABULARY = "sky, grass, sand, water, road, box, ring, tree"
# toy-clip never saw "sphere": the synonym only dilutes "ball", but the syntax is exercised.
EXAMPLE_VOCABULARY = "grass, ball | sphere, car, sky, road"


@pytest.fixture(scope="module")
def app_module():
    return load_script(APP, "pixelclip_web_demo_under_test")


@pytest.fixture(scope="module")
def toy_predictor():
    config = REPO / "configs" / "toyworld" / "pixelclip_toyclip.yaml"
    return Predictor(build_config(config), weights="")


def upload_image() -> np.ndarray:
    """A ToyWorld dev image with five classes (sky, grass, sand, box, ring)."""
    return generate_toyworld(1, image_size=96, seed=0, split="dev", start=16).images[0]


# ------------------------------------------------------------------------ the page's functions
def test_segmenter_table_overlay_and_errors(app_module, toy_predictor):
    segment = app_module.Segmenter(toy_predictor)
    rgb = upload_image()
    vocabulary = "sky, grass | lawn, sand, water, box, ring, tree"
    overlay, rows, status = segment(rgb, vocabulary, "whole")
    toy_predictor.model.test_protocol = "whole"
    labels = toy_predictor(rgb, vocabulary)["labels"].numpy()
    counts = np.bincount(labels.ravel(), minlength=7)
    typed = [name.strip() for name in vocabulary.split(",")]
    order = sorted(range(7), key=lambda i: -counts[i])  # largest first, ties in class order
    assert [r[0] for r in rows] == [typed[i] for i in order]
    assert [r[2] for r in rows] == [int(counts[i]) for i in order]
    assert sum(r[1] for r in rows) == pytest.approx(100.0, abs=0.05)
    assert status.startswith("7 classes, whole protocol, image 96 x 96 px")
    assert overlay.shape == (384, 384, 3) and overlay.dtype == np.uint8  # enlarged 4x
    enlarged = rgb.repeat(4, axis=0).repeat(4, axis=1).astype(int)
    assert np.abs(overlay.astype(int) - enlarged).mean() > 5  # colours drawn over the image
    _, slide_rows, slide_status = segment(rgb, vocabulary, "slide")
    assert "slide protocol" in slide_status and slide_rows != rows
    for bad, message in [
        ("", "empty"),
        ("sky,, grass", "empty class"),
        ("classes.json", "not files"),
        (str(APP), "not files"),
    ]:
        with pytest.raises(ValueError, match=message):
            segment(rgb, bad, "whole")
    with pytest.raises(ValueError, match="upload an image"):
        segment(None, "sky", "whole")
    with pytest.raises(ValueError, match="unknown protocol"):
        segment(rgb, "sky", "windows")


def test_default_vocabulary_and_examples(app_module, toy_predictor, tmp_path):
    assert app_module.default_vocabulary(toy_predictor) == ", ".join(TOYWORLD_CLASSES)
    paths = app_module.write_examples(tmp_path)
    assert len(paths) == app_module.NUM_EXAMPLES
    first = np.asarray(Image.open(paths[0]))
    assert np.array_equal(first, generate_toyworld(1, image_size=96, split="test").images[0])


def test_model_sources(app_module, tmp_path):
    """No arguments: toy-clip without weights; a checkpoint path: its run's config and weights;
    --config-file with --weights; contradictory or missing sources are errors."""
    import torch
    from detectron2.modeling import build_model
    from test_meta_arch import tiny_cfg

    from pixelclip.checkpoint import PixelCLIPCheckpointer

    parse = app_module.build_parser().parse_args
    predictor, title = app_module.load_predictor(parse([]))
    assert predictor.cfg.MODEL.CLIP.MODEL_NAME == "toy-clip" and "plain CLIP" in title
    cfg = tiny_cfg()
    torch.manual_seed(4)
    trained = build_model(cfg).eval()
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(cfg.dump())
    PixelCLIPCheckpointer(trained, str(run)).save("model_final")
    weights = str(run / "model_final.pth")
    for argv in ([weights], ["--config-file", str(run / "config.yaml"), "--weights", weights]):
        predictor, title = app_module.load_predictor(parse(argv))
        assert title == "Model: `model_final.pth`"
        for key, value in predictor.model.state_dict().items():
            assert torch.equal(value, trained.state_dict()[key]), key
    with pytest.raises(ValueError, match="not both"):
        app_module.load_predictor(parse([weights, "--weights", weights]))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        app_module.load_predictor(parse([str(tmp_path / "elsewhere" / "model.pth")]))


# ------------------------------------------------------------------------------ the browser
def _require_browser() -> None:
    """Skip only where the browser is missing outside CI; CI must run this test."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    missing += [m for m in ("selenium", "gradio") if importlib.util.find_spec(m) is None]
    if missing:
        why = f"missing {missing} (apt-get install chromium chromium-driver; make install)"
        if os.environ.get("CI"):
            pytest.fail(f"the browser test must run in CI: {why}")
        pytest.skip(why)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_app(tmp_path: Path):
    port = _free_port()
    log = open(tmp_path / "app.log", "w")  # noqa: SIM115 -- closed in finally
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1",
           "GRADIO_TEMP_DIR": str(tmp_path / "gradio"), "PYTHONUNBUFFERED": "1"}  # fmt: skip
    process = subprocess.Popen(
        [sys.executable, str(APP), "--host", "127.0.0.1", "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            if process.poll() is not None:
                pytest.fail(f"the app exited ({process.returncode}):\n{_read(tmp_path)}")
            try:
                with urllib.request.urlopen(url, timeout=5) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the app did not answer in {STARTUP_SECONDS} s:\n{_read(tmp_path)}")
            time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)
        log.close()


def _read(tmp_path: Path) -> str:
    return (tmp_path / "app.log").read_text(errors="replace")[-4000:]


@contextlib.contextmanager
def chromium(tmp_path: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROME_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    service = Service(CHROMEDRIVER, log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=options)
    try:
        driver.set_page_load_timeout(60)
        yield driver
    finally:
        driver.quit()


def _type(driver, css: str, text: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    box = driver.find_element(By.CSS_SELECTOR, css)
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(Keys.DELETE)
    box.send_keys(text)


def _wait_for_result(driver, wait, expected_status: str) -> tuple[np.ndarray, list[list[str]]]:
    from selenium.webdriver.common.by import By

    wait.until(lambda d: expected_status in d.find_element(By.CSS_SELECTOR, "#status").text)
    source = driver.find_element(By.CSS_SELECTOR, "#overlay img").get_attribute("src")
    assert source.startswith("http://127.0.0.1:"), source
    with urllib.request.urlopen(source, timeout=30) as answer:
        overlay = np.asarray(Image.open(io.BytesIO(answer.read())).convert("RGB"))
    rows = [  # the body rows of gradio's (virtual) table; the header row has no gridcells
        [cell.text.strip() for cell in row.find_elements(By.CSS_SELECTOR, "[role=gridcell]")]
        for row in driver.find_elements(By.CSS_SELECTOR, "#areas [role=row]")
    ]
    return overlay, [r for r in rows if any(r)]


def _check_result(shown, expected) -> None:
    overlay, rows = shown
    want_overlay, want_rows, _ = expected
    assert overlay.shape == want_overlay.shape
    # The same labels drawn by the same Visualizer: equal up to PNG-exact pixels.
    assert np.abs(overlay.astype(int) - want_overlay.astype(int)).mean() < 0.5
    assert [r[0] for r in rows] == [r[0] for r in want_rows]
    assert [float(r[1]) for r in rows] == pytest.approx([r[1] for r in want_rows], abs=0.01)
    assert [int(r[2]) for r in rows] == [r[2] for r in want_rows]


def _requested_hosts(driver) -> set[str]:
    hosts = set()
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            url = message["params"]["request"]["url"]
            if url.startswith(("http://", "https://", "ws://", "wss://")):
                hosts.add(url.split("/")[2])
    return hosts


def _save_screenshot(driver, tmp_path: Path) -> Path:
    path = tmp_path / "web_demo.png"
    driver.save_screenshot(str(path))
    target = os.environ.get("PIXELCLIP_SCREENSHOT_DIR")
    if target:  # a small palette PNG for the README
        small = Image.open(path).convert("RGB")
        small = small.resize((small.width * 3 // 4, small.height * 3 // 4), Image.LANCZOS)
        small = small.quantize(colors=128, method=Image.Quantize.MEDIANCUT)
        Path(target).mkdir(parents=True, exist_ok=True)
        small.save(Path(target) / "web_demo.png", optimize=True)
    return path


@pytest.mark.slow
def test_web_demo_in_a_real_browser(app_module, toy_predictor, tmp_path):
    _require_browser()
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    rgb = upload_image()
    image_file = tmp_path / "upload.png"
    Image.fromarray(rgb).save(image_file)
    segment = app_module.Segmenter(toy_predictor)
    expected_upload = segment(rgb, UPLOAD_VOCABULARY, "whole")
    example = generate_toyworld(1, image_size=96, seed=0, split="test").images[0]
    expected_example = segment(example, EXAMPLE_VOCABULARY, "slide")

    with running_app(tmp_path) as url, chromium(tmp_path) as driver:
        wait = WebDriverWait(driver, RESULT_SECONDS)
        driver.get(url)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#segment"))
        # 1. Upload an image, type classes, segment (whole protocol, the toy config's default).
        driver.find_element(By.CSS_SELECTOR, "#image input[type=file]").send_keys(str(image_file))
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#image img"))
        _type(driver, "#vocabulary textarea", UPLOAD_VOCABULARY)
        driver.find_element(By.CSS_SELECTOR, "#segment").click()
        shown = _wait_for_result(driver, wait, "8 classes, whole protocol, image 96 x 96 px")
        _check_result(shown, expected_upload)
        screenshot = _save_screenshot(driver, tmp_path)
        # 2. Pick the first example (it brings the default vocabulary), other classes, slide.
        driver.find_element(By.CSS_SELECTOR, "[data-testid='dataset-cell-0-0']").click()
        wait.until(
            lambda d: (
                d.find_element(By.CSS_SELECTOR, "#vocabulary textarea").get_attribute("value")
                == app_module.default_vocabulary(toy_predictor)
            )
        )
        _type(driver, "#vocabulary textarea", EXAMPLE_VOCABULARY)
        driver.find_element(By.XPATH, "//*[@id='protocol']//label[contains(., 'slide')]").click()
        driver.find_element(By.CSS_SELECTOR, "#segment").click()
        shown = _wait_for_result(driver, wait, "5 classes, slide protocol")
        assert "ball | sphere" in [row[0] for row in shown[1]]
        _check_result(shown, expected_example)
        # Nothing but the app itself was contacted (the machine has no other network anyway).
        assert _requested_hosts(driver) <= {url.split("/")[2]}
    assert Image.open(screenshot).size == (1100, 1250) or screenshot.stat().st_size > 10_000
