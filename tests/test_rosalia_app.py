"""The Gradio app: its handler (fast), and for real under `make test-slow`: a server on a tiny model driven by
gradio_client, and the page in headless Debian Chromium through selenium (never a browser download).

``ROSALIA_SCREENSHOT=path.png`` keeps the browser test's screenshot there. docs/app_screenshot.png is made so, with
the demo's trained model and one of its test images: ``ROSALIA_APP_MODEL=demo_out/rosalia_tiny/merged
ROSALIA_APP_IMAGE=demo_out/mimic_ils/test/images/<id>.png ROSALIA_APP_INSTRUCTIONS="A.|B."`` (``|`` between
instructions)."""

from __future__ import annotations

import os
import shutil
import socket
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rosalia_hf.app import EXAMPLES, Segmenter
from rosalia_hf.predictor import RosaliaPredictor
from rosalia_hf.testing import tiny_rosalia

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")


@pytest.fixture(scope="module")
def predictor() -> RosaliaPredictor:
    model, processor = tiny_rosalia(seed=0)
    return RosaliaPredictor(model.eval(), processor)


@pytest.fixture(scope="module")
def xray(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("upload") / "chest.png"
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:160, 0:128]
    lungs = ((xx - 40) ** 2 / 500 + (yy - 80) ** 2 / 2500 < 1) | ((xx - 88) ** 2 / 500 + (yy - 80) ** 2 / 2500 < 1)
    image = np.where(lungs, 60, 170) + rng.normal(0, 8, lungs.shape)
    Image.fromarray((image * 16).clip(0, 65535).astype(np.uint16)).save(path)  # a 16-bit PNG, as exports are
    return path


def test_handler_runs_every_instruction_on_the_image(predictor, xray):
    segmenter = Segmenter(predictor, model_name="tiny", max_new_tokens=2)
    gallery, rows, status = segmenter(str(xray), f"{EXAMPLES[0]}\n\n  {EXAMPLES[1]}  \n", True)
    assert len(gallery) == 2 and len(rows) == 2
    assert [row[0] for row in rows] == EXAMPLES[:2]
    for (picture, caption), row in zip(gallery, rows, strict=True):
        assert picture.dtype == np.uint8 and picture.ndim == 3 and picture.shape[2] == 3
        assert row[1] == "[SEG]" and row[2] in ("empty target", "lesion segmented") and caption.endswith(row[2])
        assert (row[2] == "empty target") == (row[3] == 0)
    assert status.startswith("2 instruction(s) on a 128x160 image")


def test_instructions_on_one_image_share_its_sam_encoding(predictor, xray):
    calls = []
    hook = predictor.model.sam.vision_encoder.register_forward_hook(
        lambda module, inputs, output: calls.append(inputs[0].shape[0]))
    try:
        gallery, rows, _ = Segmenter(predictor, max_new_tokens=2)(str(xray), "\n".join(EXAMPLES[:4]), True)
    finally:
        hook.remove()
    assert len(rows) == 4 and calls == [1]  # one SAM image encoding for four instructions


def test_handler_reports_bad_inputs_in_one_line_each(predictor, xray, tmp_path):
    segmenter = Segmenter(predictor, max_new_tokens=2)
    assert segmenter(None, EXAMPLES[0]) == ([], [], "Upload a DICOM or an image first.")
    assert segmenter(str(xray), " \n ")[2].startswith("Type an instruction")
    broken = tmp_path / "scan.dcm"
    broken.write_bytes(b"\0" * 300)
    gallery, rows, status = segmenter(str(broken), EXAMPLES[0])
    assert gallery == [] and status.startswith("Cannot read the upload: scan.dcm") and str(tmp_path) not in status
    too_long = "Segment the opacity " + "in the right lung " * 400 + "."
    gallery, rows, status = segmenter(str(xray), f"{too_long}\n{EXAMPLES[1]}", True)
    assert len(rows) == 1 and rows[0][0] == EXAMPLES[1]  # the good instruction still ran
    assert status.startswith("- instruction 1:") and "at most 512" in status


def test_display_name_keeps_the_run_of_a_merged_folder(tmp_path):
    from rosalia_hf.app import display_name

    assert display_name(tmp_path / "rosalia_tiny" / "merged") == "rosalia_tiny/merged"
    assert display_name(tmp_path / "rosalia-7b") == "rosalia-7b"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture()
def server(predictor, monkeypatch):
    """The app on 127.0.0.1 in this process; yields its URL."""
    from rosalia_hf.app import build_app, launch, serve

    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(name, "127.0.0.1,localhost")
    model_dir = os.environ.get("ROSALIA_APP_MODEL")
    port = _free_port()
    if model_dir:  # the screenshot for docs/: the demo's trained model through `rosalia serve`'s own function
        app = serve(model_dir, port=port, device="cpu", max_new_tokens=32, block=False)
    else:
        app = launch(build_app(predictor, model_name="tiny", max_new_tokens=2), port=port, block=False)
    url = f"http://127.0.0.1:{port}/"
    yield url
    app.close()


@pytest.mark.slow
def test_client_uploads_and_predicts(server, xray):
    import httpx
    from gradio_client import Client, handle_file

    page = httpx.get(server, trust_env=False, timeout=30)
    assert page.status_code == 200 and "<html" in page.text  # GET / answers with the app's page
    client = Client(server, verbose=False)
    gallery, table, status = client.predict(handle_file(str(xray)), f"{EXAMPLES[0]}\n{EXAMPLES[3]}", True,
                                            api_name="/segment")
    assert len(gallery) == 2
    for item in gallery:
        picture = np.asarray(Image.open(item["image"]["path"] if isinstance(item["image"], dict) else item["image"]))
        assert picture.ndim == 3 and picture.shape[0] > 160  # the overlay: the image with its text around it
    rows = table["data"]
    assert [row[0] for row in rows] == [EXAMPLES[0], EXAMPLES[3]]
    assert all(row[2] in ("empty target", "lesion segmented") for row in rows)
    assert status.startswith("2 instruction(s) on a 128x160 image")


@pytest.mark.slow
@pytest.mark.skipif(not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
                    reason="needs Debian's chromium and chromium-driver (apt install chromium chromium-driver)")
def test_browser_submits_an_instruction_and_sees_the_overlay(server, xray, tmp_path, monkeypatch):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as seen
    from selenium.webdriver.support.ui import WebDriverWait

    monkeypatch.setenv("SE_OFFLINE", "true")  # selenium manager must not look for a browser online
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", "--window-size=1400,1150", f"--user-data-dir={tmp_path / 'profile'}",
                 "--no-proxy-server"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        driver.get(server)
        wait = WebDriverWait(driver, 120)
        upload = wait.until(seen.presence_of_element_located((By.CSS_SELECTOR, "#upload input[type=file]")))
        image = Path(os.environ.get("ROSALIA_APP_IMAGE", xray))
        instructions = os.environ.get("ROSALIA_APP_INSTRUCTIONS", EXAMPLES[0]).split("|")
        upload.send_keys(str(image.resolve()))
        wait.until(seen.text_to_be_present_in_element((By.ID, "upload"), image.stem[:8]))  # name, suffix: two spans
        box = driver.find_element(By.CSS_SELECTOR, "#instructions textarea")
        for number, line in enumerate(instructions):
            box.send_keys(("\n" if number else "") + line)
        driver.find_element(By.ID, "segment").click()
        overlay = wait.until(seen.visibility_of_element_located((By.CSS_SELECTOR, "#overlays img")))
        wait.until(lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", overlay))
        assert overlay.get_attribute("naturalWidth") and int(overlay.get_attribute("naturalWidth")) > 100
        wait.until(seen.text_to_be_present_in_element((By.ID, "answers"), instructions[-1]))
        assert "instruction(s) on a" in driver.find_element(By.ID, "status").text
        time.sleep(1.0)  # let the gallery settle before the picture
        shot = tmp_path / "app.png"
        driver.save_screenshot(str(shot))
        assert Image.open(shot).size[0] >= 1000
        keep = os.environ.get("ROSALIA_SCREENSHOT")
        if keep:
            shutil.copy(shot, keep)
    finally:
        driver.quit()
