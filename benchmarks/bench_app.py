"""Benchmark: ``flowctrl app`` with several users at once, measured in a real browser.

Starts the app on a free loopback port, opens headless Chromium (Debian's ``/usr/bin/chromium``,
driven by playwright) and, in each of N pages, uploads examples/astronaut.png, clicks one arrow and
presses Generate (49 frames at 512x512, warp backend). Prints the seconds from the click on Generate
until the page shows the finished video: first one user alone, then N users who press Generate at
the same moment (gradio's queue runs ``GENERATE_CONCURRENCY`` renders at a time, the rest wait).

    python benchmarks/bench_app.py                 # 1 user, then 4 at once
    python benchmarks/bench_app.py --users 8 --frames 25

Nothing here is asserted; tests/test_app_browser.py checks that simultaneous users get their own videos.
"""
from __future__ import annotations

import argparse
import os
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import List

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _prepare(browser, url: str, row: float):
    page = browser.new_page(viewport={"width": 1280, "height": 1600})
    page.goto(url)
    page.set_input_files('input[data-testid="upload image-upload-button"]', str(REPO / "examples/astronaut.png"))
    img = page.locator("#canvas img")
    img.wait_for(state="visible", timeout=60_000)
    for fx in (0.3, 0.6):
        box = img.bounding_box()
        page.mouse.click(box["x"] + fx * box["width"], box["y"] + row * box["height"])
        time.sleep(0.5)
    page.wait_for_function("() => document.querySelector('#sketch-list').innerText.includes('arrow 1:')",
                           timeout=60_000)
    return page


def _wait_video(page) -> None:
    page.wait_for_function("""() => { const v = document.querySelector('#result video');
                                      return v && v.readyState >= 1 && isFinite(v.duration); }""",
                           timeout=600_000)


def run_round(browser, url: str, users: int) -> List[float]:
    """Seconds from pressing Generate to a playable video, per user, all pressing at once."""
    pages = [_prepare(browser, url, 0.3 + 0.1 * i) for i in range(users)]
    starts = []
    for page in pages:
        starts.append(time.perf_counter())
        page.locator("#generate").click()
    done = []
    for page, start in zip(pages, starts):
        _wait_video(page)
        done.append(time.perf_counter() - start)
    for page in pages:
        page.close()
    return done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=4)
    parser.add_argument("--frames", type=int, default=49)
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    from flowctrl.app.ui import GENERATE_CONCURRENCY, build_demo, launch

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["GRADIO_TEMP_DIR"] = str(Path(tmp) / "gradio")
        demo = build_demo(default_frames=args.frames, default_fps=8, out_dir=tmp)
        port = _free_port()
        launch(demo, server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
        url = f"http://127.0.0.1:{port}"
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS, headless=True)
                alone = run_round(browser, url, 1)
                together = run_round(browser, url, args.users)
                browser.close()
        finally:
            demo.close()
    print(f"{args.frames} frames 512x512 per video, warp backend, {os.cpu_count()} CPUs, "
          f"{GENERATE_CONCURRENCY} renders at a time\n")
    print("| users at once | first video (s) | last video (s) | mean (s) |\n|---:|---:|---:|---:|")
    for n, times in ((1, alone), (args.users, together)):
        print(f"| {n} | {min(times):.1f} | {max(times):.1f} | {sum(times) / len(times):.1f} |")


if __name__ == "__main__":
    main()
