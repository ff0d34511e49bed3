"""`flowctrl app` in a real browser: headless Chromium (Debian's package) driven by playwright.

The app runs in this process on a free loopback port; the browser does what a person does: upload an
image, click on it, pick a preset, press Generate, and the page must show a playable video of the right
duration. Skipped only where /usr/bin/chromium or the playwright package is missing (.ci/run installs
both). Frames are tiny (64x48, 5 frames) so a render takes well under a second.
"""
import importlib.util
import os
import socket
import time

import numpy as np
import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
FRAMES, FPS = 5, 5.0
# Generous: the machines that run the suite are often shared and busy (a step takes ~0.1 s when idle)
TIMEOUT_MS = 90_000

pytestmark = [
    # gradio's queue calls pandas APIs that pandas 3 deprecates; not ours to fix
    pytest.mark.filterwarnings("ignore:.*future.no_silent_downcasting"),
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated"),
    pytest.mark.skipif(not os.path.exists(CHROMIUM),
                       reason=f"{CHROMIUM} is absent (apt-get install chromium; .ci/run does it)"),
    pytest.mark.skipif(importlib.util.find_spec("playwright") is None,
                       reason="playwright is not installed (pip install -e '.[test]')"),
    pytest.mark.skipif(importlib.util.find_spec("gradio") is None, reason="gradio (the [app] extra) is not installed"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    from flowctrl.app.ui import build_demo, launch

    root = tmp_path_factory.mktemp("app")
    old_cache = os.environ.get("GRADIO_TEMP_DIR")
    os.environ["GRADIO_TEMP_DIR"] = str(root / "gradio")  # gradio's cache, inside this test's folder
    out_dir = root / "renders"
    out_dir.mkdir()
    demo = build_demo(default_frames=FRAMES, default_fps=FPS, out_dir=str(out_dir))
    port = _free_port()
    launch(demo, server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{port}", out_dir
    demo.close()
    if old_cache is None:
        os.environ.pop("GRADIO_TEMP_DIR", None)
    else:
        os.environ["GRADIO_TEMP_DIR"] = old_cache


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def image_file(tmp_path_factory):
    from PIL import Image

    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("img") / "photo.png"
    Image.fromarray((rng.random((48, 64, 3)) * 255).astype(np.uint8)).save(path)
    return path


def _open(browser, url):
    page = browser.new_page(viewport={"width": 1280, "height": 1600})
    page.goto(url)
    page.wait_for_selector("#upload-image", timeout=TIMEOUT_MS)
    return page


def _upload(page, path):
    page.set_input_files("input[data-testid=\"upload image-upload-button\"]", str(path))


def _click_image(page, fx, fy):
    """Click the canvas at fractions (fx, fy) of the shown image."""
    img = page.locator("#canvas img")
    img.wait_for(state="visible", timeout=TIMEOUT_MS)
    box = img.bounding_box()
    page.mouse.click(box["x"] + fx * box["width"], box["y"] + fy * box["height"])


def _wait_listing(page, text):
    page.wait_for_function("t => document.querySelector('#sketch-list').innerText.includes(t)", arg=text,
                           timeout=TIMEOUT_MS)


def _wait_idle(page):
    """Wait until no event of the page is queued or running (gradio's status trackers all hidden)."""
    time.sleep(0.3)  # let follow-up events (e.g. a widget's change after the upload) start
    page.wait_for_function("""() => Array.from(document.querySelectorAll('[data-testid=status-tracker]'))
                                     .every(e => e.classList.contains('hide'))""", timeout=TIMEOUT_MS)


def _canvas_src(page):
    return page.locator("#canvas img").get_attribute("src")


def _video_duration(page, timeout_ms=3 * TIMEOUT_MS):
    """Seconds of the result <video> once the browser has read its metadata."""
    page.wait_for_selector("#result video", timeout=timeout_ms)
    return page.wait_for_function(
        """() => { const v = document.querySelector('#result video');
                   return v && v.readyState >= 1 && isFinite(v.duration) ? v.duration : null; }""",
        timeout=timeout_ms).json_value()


def _draw_arrow(page, start, end):
    _wait_idle(page)  # a click while the shown image is being replaced would land on no image
    before = _canvas_src(page)
    _click_image(page, *start)
    _wait_listing(page, "click the end")
    _click_image(page, *end)
    _wait_listing(page, "arrow 1:")
    page.wait_for_function("s => document.querySelector('#canvas img').src !== s", arg=before, timeout=TIMEOUT_MS)


def _pick_preset(page, name):
    page.locator("#preset input").click()
    page.locator("[role=option]", has_text=name).first.click()


def test_browser_upload_click_arrow_preset_generate_plays_a_video_of_the_right_length(app_url, browser, image_file):
    url, _ = app_url
    page = _open(browser, url)
    _upload(page, image_file)
    page.locator("#canvas img").wait_for(state="visible", timeout=TIMEOUT_MS)
    _draw_arrow(page, (0.25, 0.5), (0.75, 0.5))
    listing = page.locator("#sketch-list").inner_text()
    # the clicked pixels of the 64x48 image (within the rounding of a scaled display)
    start = listing.split("arrow 1: (")[1].split(")")[0]
    x0, y0 = (float(v) for v in start.split(","))
    assert abs(x0 - 16) <= 2 and abs(y0 - 24) <= 2, listing
    _pick_preset(page, "pan-left")
    page.locator("#generate").click()
    duration = _video_duration(page)
    assert duration == pytest.approx(FRAMES / FPS, abs=0.05)
    assert page.locator(".toast-body.error").count() == 0
    page.close()


def test_browser_drag_path_is_listed_and_finished_by_double_click(app_url, browser, image_file):
    url, _ = app_url
    page = _open(browser, url)
    _upload(page, image_file)
    page.locator("#mode label", has_text="drag").click()
    for fx in (0.2, 0.4, 0.6):
        _click_image(page, fx, 0.5)
        time.sleep(0.3)
    _wait_listing(page, "drag in progress")
    img = page.locator("#canvas img")
    box = img.bounding_box()
    page.mouse.dblclick(box["x"] + 0.6 * box["width"], box["y"] + 0.5 * box["height"])
    _wait_listing(page, "drag 1:")
    _wait_idle(page)  # both clicks of the double click have been handled
    text = page.locator("#sketch-list").inner_text()
    assert text.count("→") == 2 and "in progress" not in text, text
    page.close()


def test_browser_bad_upload_shows_one_clear_message(app_url, browser, tmp_path):
    url, _ = app_url
    bad = tmp_path / "holiday.png"
    bad.write_text("this is not an image")
    page = _open(browser, url)
    _upload(page, bad)
    toast = page.locator(".toast-body.error")
    toast.first.wait_for(timeout=TIMEOUT_MS)
    time.sleep(0.5)  # a second message would have arrived by now
    assert toast.count() == 1
    text = toast.first.inner_text()
    message = text.strip().splitlines()[-1]  # the toast: "Error", a close button, the message
    assert message.startswith("holiday.png:") and "cannot be read" in message, text  # the user's name, no server path
    page.close()


def test_browser_four_simultaneous_generations_each_get_their_own_video(app_url, browser, image_file):
    url, out_dir = app_url
    pages = [_open(browser, url) for _ in range(4)]
    for i, page in enumerate(pages):
        _upload(page, image_file)
        page.locator("#canvas img").wait_for(state="visible", timeout=TIMEOUT_MS)
        _draw_arrow(page, (0.2, 0.2 + 0.15 * i), (0.8, 0.2 + 0.15 * i))
    t0 = time.perf_counter()
    for page in pages:
        page.locator("#generate").click()
    sources = []
    for page in pages:
        assert _video_duration(page) == pytest.approx(FRAMES / FPS, abs=0.05)
        sources.append(page.locator("#result video").get_attribute("src"))
    elapsed = time.perf_counter() - t0
    assert len(set(sources)) == 4, sources  # four different result files, one per session
    # each session's own arrow: its video, downloaded from the server, differs from every other's
    import urllib.request

    blobs = {urllib.request.urlopen(src if src.startswith("http") else url + src).read() for src in sources}
    assert len(blobs) == 4
    print(f"4 simultaneous generations in {elapsed:.1f} s")
    for page in pages:
        page.close()


def test_browser_motion_brush_paints_the_motion_mask(app_url, browser, tmp_path):
    from PIL import Image

    url, _ = app_url
    gray = tmp_path / "gray.png"
    Image.fromarray(np.full((192, 256, 3), 128, np.uint8)).save(gray)
    page = _open(browser, url)
    _upload(page, gray)
    page.locator("#canvas img").wait_for(state="visible", timeout=TIMEOUT_MS)
    _wait_idle(page)
    before = _canvas_src(page)
    page.get_by_text("motion brush: paint the region that may move").click()
    canvas = page.locator("#brush canvas").first
    canvas.wait_for(state="visible", timeout=TIMEOUT_MS)
    time.sleep(1.0)  # the editor draws the image it got when the accordion opened
    box = canvas.bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(cx - 20, cy)
    page.mouse.down()
    for dx in range(-20, 21, 4):
        page.mouse.move(cx + dx, cy, steps=2)
    page.mouse.up()
    import urllib.request
    from io import BytesIO

    def yellow_of(src):  # the motion mask's outline in the shown preview
        data = urllib.request.urlopen(src if src.startswith("http") else url + src).read()
        shown = np.asarray(Image.open(BytesIO(data)).convert("RGB")).astype(int)
        return (shown[..., 0] > 200) & (shown[..., 1] > 180) & (shown[..., 2] < 80)

    # the preview is redrawn more than once (the editor's own events on opening, then the stroke)
    deadline, yellow = time.time() + TIMEOUT_MS / 1000, None
    while time.time() < deadline:
        src = _canvas_src(page)
        if src != before:
            yellow = yellow_of(src)
            if yellow.sum() > 20:
                break
        time.sleep(0.5)
    assert yellow is not None and yellow.sum() > 20, "the painted region was never outlined in the preview"
    assert yellow[:, :16].sum() == 0  # around the stroke in the middle, not at the edge
    page.close()
