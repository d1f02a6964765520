"""The app in a real browser: headless Chromium (the Debian build, never a download) via Playwright."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest

import app
from pipeline import media
from pipeline.config import SAMPLE_RATE

from .test_app import NEEDS_FFPROBE, TMP, FakePipeline, free_port, other_portrait, shared_server
from .test_app import serving_threads  # noqa: F401  (autouse fixture)

pytestmark = pytest.mark.slow  # tens of seconds: `python -m pytest -m slow` (and .ci/run) runs it

PLAYING = "() => [...document.querySelectorAll('video')].some(v => v.currentTime > 0 && !v.paused)"


def open_app(browser, url):
    page = browser.new_page(viewport={"width": 1280, "height": 1400})
    page.console = []
    page.on("console", lambda m: page.console.append(f"{m.type}: {m.text[:300]}"))
    page.goto(url)
    page.get_by_role("button", name="Generate").wait_for()
    return page


@NEEDS_FFPROBE
def test_example_streams_and_plays(browser):
    page = open_app(browser, shared_server())
    images = page.locator("img").count()  # the examples' thumbnails
    page.get_by_test_id("dataset-cell-0-0").click()  # first example: portrait + speech
    page.wait_for_function(f"() => document.querySelectorAll('img').length > {images}")  # portrait shown
    t0 = time.perf_counter()
    page.get_by_role("button", name="Generate").click()
    try:
        page.wait_for_function(PLAYING, timeout=60_000)
    except Exception:
        page.screenshot(path=str(TMP / "browser_failed.png"), full_page=True)
        videos = page.evaluate("() => [...document.querySelectorAll('video')].map(v => [v.currentTime, v.src])")
        raise AssertionError(f"the live video never played: videos {videos}; console {page.console[-20:]}; "
                             f"screenshot {TMP / 'browser_failed.png'}") from None
    first_playing = time.perf_counter() - t0
    page.get_by_text("after your click").wait_for(timeout=60_000)
    line = page.get_by_text("after your click").inner_text()
    shot = TMP / "browser.png"
    page.screenshot(path=str(shot), full_page=True)
    (TMP / "browser_timing.json").write_text(json.dumps({"click_to_playing_s": first_playing, "server": line}))
    print(f"\nclick -> live video playing: {first_playing:.2f} s; {line}; screenshot {shot}")
    srcs = page.evaluate("() => [...document.querySelectorAll('video')].map(v => v.src)")
    assert len(srcs) == 2 and all(srcs), "both the live and the whole video should be shown"
    page.close()


@NEEDS_FFPROBE
def test_stop_button_stops_the_work(browser, tmp_path):
    fake = FakePipeline(delay=0.3)
    demo = app.build_demo(fake, examples_dir=tmp_path)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        long = tmp_path / "long.wav"
        media.write_wav(long, 0.1 * np.sin(np.arange(20 * SAMPLE_RATE, dtype=np.float32) / 10))
        page = open_app(browser, f"http://127.0.0.1:{port}/")
        uploads = page.locator("input[type=file]")
        uploads.nth(0).set_input_files(other_portrait(tmp_path))
        uploads.nth(1).set_input_files(str(long))
        for what in ("Image", "Audio"):  # both uploaded: the drop zones are gone
            page.get_by_text(f"Drop {what} Here").wait_for(state="detached")
        page.get_by_role("button", name="Generate").click()
        deadline = time.time() + 30
        while fake.clips_made < 2 and time.time() < deadline:
            time.sleep(0.05)
        assert fake.calls, "Generate did not start the pipeline"
        page.get_by_role("button", name="Stop").click()
        assert fake.closed.wait(timeout=1.0), "Stop did not end the generation within 1 s"
        assert fake.clips_made < 10
        page.close()
    finally:
        demo.close()
