"""The Live tab in headless Chromium with a fake microphone playing real speech (the shipped model)."""
from __future__ import annotations

import os
import urllib.request

import pytest

import app
from pipeline import media
from pipeline.eval import live_bench

from .conftest import CHROMIUM, served
from .test_app import NEEDS_FFPROBE, TMP, examples_dir, model_dir

pytestmark = pytest.mark.slow  # a minute or more: `python -m pytest -m slow tests/test_live_browser.py`

PLAYING = "() => window.__samples.some(s => s[1] > 0 && !s[2])"  # the live video has played a frame


@pytest.fixture(scope="module")
def fake_mic_browser():
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium); the browser test needs it")
    sync_api = pytest.importorskip("playwright.sync_api")
    wav = live_bench.speech_file(TMP, seconds=60)
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM,
                              args=live_bench.CHROMIUM_ARGS + [f"--use-file-for-fake-audio-capture={wav}"])
        yield b
        b.close()


@NEEDS_FFPROBE
def test_live_tab_streams_the_microphone_and_stops(fake_mic_browser):
    demo = app.build_demo(checkpoint=model_dir(), examples_dir=examples_dir())
    registry = demo.handlers.live_sessions
    demo.handlers.cache.get()  # loaded before the visitor comes, as `python app.py` warms up
    with served(demo) as url:
        page, record = live_bench.open_live_tab(fake_mic_browser, url)
        record.click()
        try:
            page.wait_for_function(PLAYING, timeout=180_000)
        except Exception:
            page.screenshot(path=str(TMP / "live_failed.png"), full_page=True)
            raise AssertionError(f"the live video never played; console {page.console[-20:]}; "
                                 f"screenshot {TMP / 'live_failed.png'}") from None
        page.get_by_text("microphone block received").wait_for(timeout=60_000)  # the figures line, with latency
        (session,) = registry._sessions.values()
        assert session.figures.frames > 0 and session.figures.audio_s > 0 and session.figures.latencies
        segment = media.probe(session.last_segment)
        assert segment["video"] == "h264" and segment["audio"] == "aac" and segment["frames"] > 0
        shot = TMP / "live_tab.png"
        page.screenshot(path=str(shot), full_page=True)
        print(f"\nscreenshot {shot}; {page.locator('#live-figures').inner_text()}")

        page.get_by_role("button", name="Stop live").click()
        page.get_by_text("Stopped ·").wait_for(timeout=10_000)
        assert session.ended.wait(timeout=10), (f"Stop did not end the session's generator within 10 s: started "
                                                f"{session.started}, cancelled {session.cancelled.is_set()}, "
                                                f"{session.timing}, sessions {registry._sessions}")
        (key,) = registry._sessions  # the microphone still records: its blocks are now dropped
        assert registry.for_audio(key) is None
        with urllib.request.urlopen(url, timeout=10) as r:  # the server keeps serving
            assert r.status == 200
        page.close()
