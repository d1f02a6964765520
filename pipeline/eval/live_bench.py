"""The Live tab in headless Chromium with a fake microphone: microphone -> frame playing, measured.

    python -m pipeline.eval.live_bench --seconds 20 --threads 1

Serves the app (`app.build_demo`, the saved model), opens it in Debian's Chromium through Playwright
with `--use-fake-device-for-media-stream --use-file-for-fake-audio-capture=WAV` (real speech: the
LibriVox sentences of Debian's pocketsphinx-testdata when installed, else espeak), presses record on
the Live tab, samples the live <video> every 40 ms for `--seconds`, then presses Stop. The capture
starts when the page's getUserMedia resolves (the fake device plays its file from the start then),
so the frame on screen at page time t, at stream time v, was spoken at capture_start + v: its
latency is t - capture_start - v. Prints one JSON object (the server's own figures line included).
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
                 "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                 "--autoplay-policy=no-user-gesture-required"]
LIBRIVOX = Path("/usr/share/pocketsphinx/test/data/librivox")

# Page-side instruments: when the microphone capture started, and the live video's clock.
INIT_JS = """
window.__gum = [];
const orig = navigator.mediaDevices.getUserMedia.bind(navigator.mediaDevices);
navigator.mediaDevices.getUserMedia = async (c) => { const s = await orig(c); window.__gum.push(performance.now()); return s; };
window.__samples = [];
window.__sample = () => {
  const v = [...document.querySelectorAll('video')].find(x => x.offsetParent !== null);
  if (!v) return;
  const b = v.buffered.length ? [v.buffered.start(0), v.buffered.end(v.buffered.length - 1)] : null;
  window.__samples.push([performance.now(), v.currentTime, v.paused, v.readyState, b]);
};
setInterval(() => window.__sample(), 40);
"""


def speech_file(folder: Path, seconds: float = 30.0) -> Path:
    """A 16-bit 16-kHz wav of real speech (LibriVox sentences) at least `seconds` long, else espeak's."""
    import soundfile as sf

    from ..media import load_audio, write_wav

    parts = [load_audio(p) for p in sorted(LIBRIVOX.glob("*.wav"))] if LIBRIVOX.is_dir() else []
    if not parts:
        parts = [load_audio(Path(__file__).resolve().parents[2] / "tests" / "data" / "speech_hello.wav")]
    wav = np.concatenate(parts)
    wav = np.tile(wav, int(np.ceil(seconds * 16000 / len(wav))))
    path = folder / "mic.wav"
    write_wav(path, wav)
    assert sf.info(str(path)).samplerate == 16000
    return path


def open_live_tab(browser, url: str):
    """A page on the app's Live tab with the instruments loaded; returns (page, record button)."""
    page = browser.new_page(viewport={"width": 1280, "height": 1200})
    page.add_init_script(INIT_JS)
    page.console = []
    page.on("console", lambda m: page.console.append(f"{m.type}: {m.text[:300]}"))
    page.goto(url)
    page.get_by_role("tab", name="Live").click()
    record = page.get_by_role("button", name="Record", exact=False).first
    record.wait_for()
    return page, record


def latencies(samples: list, capture_start: float, origin: float) -> np.ndarray:
    """Per sample while the video plays: page time - capture start - the frame's stream time (s)."""
    out = [(t - capture_start) / 1000 - (ct - origin) for t, ct, paused, ready, _ in samples if not paused and ct > origin]
    return np.asarray(out)


def measure(browser, url: str, seconds: float, stop_timeout_s: float = 10.0, registry=None) -> dict:
    """Record for `seconds` of page time after the first frame plays, press Stop; the figures (with the
    server's own timing of the session when its `LiveRegistry` is given)."""
    import resource

    page, record = open_live_tab(browser, url)
    cpu0 = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    record.click()
    t_click = time.perf_counter()
    page.wait_for_function("() => window.__samples.some(s => s[1] > 0 && !s[2])", timeout=120_000)
    page.wait_for_timeout(seconds * 1000)
    samples, gum = page.evaluate("() => window.__samples"), page.evaluate("() => window.__gum")
    t_stop = time.perf_counter()
    page.get_by_role("button", name="Stop live").click()
    page.get_by_text("Stopped ·").wait_for(timeout=stop_timeout_s * 1000)
    stop_s = time.perf_counter() - t_stop
    figures = page.locator("#live-figures").inner_text()
    cpu = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    server_cpu = [b.ru_utime + b.ru_stime - a.ru_utime - a.ru_stime for a, b in zip(cpu0, cpu)]
    sessions = list(registry._sessions.values()) if registry is not None else []
    timing = dict(sessions[-1].timing, audio_in_s=sessions[-1].figures.audio_s) if sessions else None
    if timing:  # CPU seconds per second of speech: the server (model, gradio) and its ffmpeg children
        timing.update(cpu_per_audio_s=server_cpu[0] / timing["audio_in_s"], ffmpeg_cpu_per_audio_s=server_cpu[1] / timing["audio_in_s"],
                      audio_in_per_capture_s=timing["audio_in_s"] / ((time.perf_counter() - t_click) or 1))
    first = next(s for s in samples if s[1] > 0 and not s[2])
    origin = first[4][0] if first[4] else 0.0  # the stream's first buffered time: frame 0 of the video
    lat = latencies(samples, gum[-1], origin)
    stalls = sum(1 for a, b in zip(samples, samples[1:]) if not a[2] and b[1] == a[1] and b[0] - a[0] > 30)
    page.close()
    return dict(first_frame_playing_s=(first[0] - gum[-1]) / 1000 - (first[1] - origin),
                first_playing_after_capture_s=(first[0] - gum[-1]) / 1000,
                latency_median_s=float(np.median(lat)), latency_p10_s=float(np.percentile(lat, 10)),
                latency_p90_s=float(np.percentile(lat, 90)), latency_last_s=float(lat[-1]),
                played_s=float(samples[-1][1] - origin), page_s=(samples[-1][0] - gum[-1]) / 1000,
                stalled_samples=stalls, video_origin=origin, stop_to_stopped_s=stop_s, server_figures=figures,
                server_timing=timing)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default="assets/model")
    ap.add_argument("--seconds", type=float, default=20.0, help="page time to record after the first frame plays")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    import torch
    from playwright.sync_api import sync_playwright

    import app
    from tests.conftest import served

    torch.set_num_threads(a.threads)
    demo = app.build_demo(checkpoint=a.checkpoint)
    demo.handlers.cache.get()  # loaded before the measurement
    with tempfile.TemporaryDirectory() as d, served(demo) as url, sync_playwright() as p:
        wav = speech_file(Path(d), a.seconds + 30)
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS + [f"--use-file-for-fake-audio-capture={wav}"])
        out = measure(browser, url, a.seconds, registry=demo.handlers.live_sessions)
        browser.close()
    print(json.dumps(dict(settings=vars(a), live=out), indent=1))


if __name__ == "__main__":
    main()
