"""The visitor's flow in headless Chromium: Stop, examples in text mode, the text's speaking time,
a bad upload explained at once, and the phone layout (issue: the demo as a visitor meets it)."""
from __future__ import annotations

import numpy as np
import pytest

import app
from pipeline import media
from pipeline.config import SAMPLE_RATE

from .test_app import NEEDS_FFPROBE, FakePipeline, examples_dir, free_port, other_portrait
from .test_app import serving_threads  # noqa: F401  (autouse fixture)
from .test_browser import open_app

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fake_server():
    fake = FakePipeline(delay=0.3)
    demo = app.build_demo(fake, examples_dir=examples_dir())
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    yield fake, f"http://127.0.0.1:{port}/"
    demo.close()


@NEEDS_FFPROBE
def test_stop_says_so_and_offers_what_was_made(browser, fake_server, tmp_path):
    fake, url = fake_server
    long = tmp_path / "long.wav"
    media.write_wav(long, 0.1 * np.sin(np.arange(20 * SAMPLE_RATE, dtype=np.float32) / 10))
    page = open_app(browser, url)
    uploads = page.locator("input[type=file]")
    uploads.nth(0).set_input_files(other_portrait(tmp_path))
    uploads.nth(1).set_input_files(str(long))
    page.get_by_text("20.0 s of speech").wait_for(timeout=30_000)  # the audio note, right after upload
    page.get_by_role("button", name="Generate").click()
    page.get_by_text("Showing chunk 2 of").wait_for(timeout=60_000)
    page.get_by_role("button", name="Stop generating").click()
    page.get_by_text("Stopped after chunk").wait_for(timeout=10_000)
    srcs = page.evaluate("() => [...document.querySelectorAll('video')].map(v => v.src).filter(Boolean)")
    assert any("stopped" in s for s in srcs), srcs
    assert not page.get_by_text("Showing chunk").is_visible()
    page.close()


def test_text_mode_examples_bad_uploads_and_speaking_time(browser, fake_server, tmp_path):
    _, url = fake_server
    page = open_app(browser, url)
    page.get_by_label("Type text").check()
    box = page.get_by_label("Text to speak")
    box.fill("This is a normal sentence that a visitor might type. " * 11)
    page.get_by_text("limit 30 s").wait_for(timeout=10_000)  # the estimate, before Generate
    assert page.get_by_text("⚠️ ≈").is_visible()
    page.get_by_test_id("dataset-cell-0-0").click()  # an example, in text mode
    page.wait_for_timeout(0)
    page.get_by_text("Portrait").first.wait_for()
    assert box.input_value().startswith("This is a normal sentence"), "the example threw the typed text away"
    assert page.get_by_label("Type text").is_checked()
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image at all")
    page.locator("input[type=file]").nth(0).set_input_files(str(junk))
    page.get_by_text("Cannot read junk.png").wait_for(timeout=10_000)
    page.close()


def test_on_a_phone_the_examples_come_right_after_the_inputs(browser, fake_server):
    _, url = fake_server
    page = browser.new_page(viewport={"width": 390, "height": 844})
    page.goto(url)
    page.get_by_role("button", name="Generate").wait_for()
    examples = page.get_by_test_id("dataset-cell-0-0").bounding_box()
    live = page.get_by_text("Live (128×128").first.bounding_box()
    speech = page.get_by_text("Speech audio").first.bounding_box()
    assert examples["y"] < live["y"], (examples, live)
    assert examples["y"] < 2400 and examples["y"] > speech["y"]
    page.close()
