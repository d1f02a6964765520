"""The Gradio app: wiring, every user error, and end to end through `gradio_client`.

Model: `assets/model` when it is there, else a randomly initialised `tiny` pipeline saved in a tmp
dir (same sizes, so the speed figures hold). Portraits: `assets/examples` when shipped, else
rendered synthetic faces; speech of exact lengths is spoken with espeak-ng into tmp.
"""
from __future__ import annotations

import functools
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import gradio as gr
import numpy as np
import pytest

import app
from pipeline import app_support as sup
from pipeline import image as image_io
from pipeline import media, serving
from pipeline.config import FPS, SAMPLE_RATE
from pipeline.serving import DEFAULT_CHECKPOINT

TMP = Path(tempfile.mkdtemp(prefix="test-app-"))
ARGS = dict(source=app.SOURCE_AUDIO, text="", voice=app.VOICE, rate=app.RATE, steps=app.STEPS,
            cfg_mode=app.CFG_MODE, alpha=app.ALPHA, beta=app.BETA, seed=0,
            clip_latent_frames=app.CLIP_LATENT_FRAMES, shift=app.SHIFT, max_seconds=app.MAX_SECONDS, render="Auto",
            mode="READ")


# ---------------------------------------------------------------- shared, built once per session
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@functools.cache
def model_dir() -> Path:
    if (DEFAULT_CHECKPOINT / "pipeline.json").is_file():
        return DEFAULT_CHECKPOINT
    from pipeline.pipeline import TalkingHeadPipeline

    path = TMP / "model"
    TalkingHeadPipeline.from_config("tiny").save_pretrained(path)
    return path


def write_speech(path: Path, seconds: float) -> str:
    """A spoken sentence cut or padded to exactly `seconds`, as a wav file."""
    from pipeline.data.tts import speak

    wav = speak("Hello there! This is the talking head demo, speaking a short test sentence for you.")
    n = round(seconds * SAMPLE_RATE)
    media.write_wav(path, np.pad(wav, (0, max(0, n - len(wav))))[:n])
    return str(path)


@functools.cache
def speech(seconds: float) -> str:
    return write_speech(TMP / f"speech_{seconds:g}s.wav", seconds)


@functools.cache
def examples_dir() -> Path:
    if sup.find_examples(app.EXAMPLES_DIR):
        return app.EXAMPLES_DIR
    import cv2

    from pipeline.data.synthetic import render_portrait

    folder = TMP / "examples"
    folder.mkdir(exist_ok=True)
    for k, seconds in enumerate((2.0, 3.0)):
        cv2.imwrite(str(folder / f"portrait_{k}.png"), render_portrait(k, 128)[:, :, ::-1])
        write_speech(folder / f"speech_{k}.wav", seconds)
    return folder


def portrait() -> str:
    return sup.find_examples(examples_dir())[0][0]


def other_portrait(folder: Path) -> str:
    """A picture no other test uploads. Servers of one process share gradio's content-addressed cache,
    and a closing demo (`delete_cache`) deletes the files it received: the shared server's too."""
    import cv2

    path = folder / "other_portrait.png"
    cv2.imwrite(str(path), np.random.default_rng(7).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    return str(path)


@functools.cache
def shared_pipeline():
    """The model as `python app.py` serves it, warmed up."""
    from pipeline.pipeline import TalkingHeadPipeline

    pipe = TalkingHeadPipeline.from_pretrained(model_dir())
    serving.warm_up(pipe, sup.find_examples(examples_dir()))
    return pipe


@functools.cache
def shared_server() -> str:
    """The app over the shared model, served on 127.0.0.1 for the whole session. Returns its URL."""
    demo = app.build_demo(shared_pipeline(), examples_dir=examples_dir())
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    return f"http://127.0.0.1:{port}/"


@pytest.fixture(scope="module", autouse=True)
def serving_threads():
    """The CPU thread policy of `python app.py` while this module runs; restored afterwards."""
    import torch

    before = torch.get_num_threads()
    serving.set_cpu_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def client():
    from gradio_client import Client

    return Client(shared_server(), verbose=False)


# ---------------------------------------------------------------- fakes
class FakePipeline:
    """Pipeline-shaped: instant solid-colour chunks of 1 s each, carrying the speech's own audio."""

    def __init__(self, delay=0.0, warnings=()):
        self.delay, self.warnings, self.calls, self.clips_made = delay, list(warnings), [], 0
        self.closed = threading.Event()  # set when the consumer closes (or drops) the generation

    def stream(self, image, speech, **kw):
        self.calls.append(dict(image=image, audio=speech, **kw))
        return self._chunks(speech)

    def _chunks(self, speech):
        from pipeline.pipeline import VideoChunk

        n = max(1, int(np.ceil(speech.seconds)))
        try:
            for j in range(n):
                time.sleep(self.delay)
                self.clips_made += 1
                frames = np.full((FPS, 32, 32, 3), 40 * j % 255, np.uint8)
                audio = media.audio_span(speech.samples, speech.sample_rate, j * FPS, FPS)
                yield VideoChunk(j, n, frames, audio, j * FPS, speech.sample_rate,
                                 warnings=self.warnings if j == 0 else [])
        finally:
            self.closed.set()


def no_progress(*args, **kwargs):
    pass


def run(handlers, image, audio, **overrides):
    """Drain the streaming handler; return its outputs."""
    kw = {**ARGS, **overrides}
    return list(handlers.stream(image, kw.pop("source"), audio, *kw.values(), None, progress=no_progress))


# ---------------------------------------------------------------- import and wiring
def test_import_app_loads_no_model_and_no_torch():
    code = "import sys, app; assert 'torch' not in sys.modules, 'import app imported torch'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(app.__file__).parent)


def test_build_demo_wires_every_control():
    made = []
    demo = app.build_demo(lambda: made.append(1), examples_dir=examples_dir())
    assert made == [], "build_demo must not create the pipeline"
    cfg = demo.get_config_file()
    comps = {c["id"]: c for c in cfg["components"]}
    label = lambda i: comps[i]["props"].get("label") or comps[i]["props"].get("value")  # noqa: E731
    deps = {d["api_name"]: d for d in cfg["dependencies"]}
    gen, vid = deps["generate"], deps["generate_video"]
    names = ["Portrait", "Speech", "Speech audio", "Text to speak", "Voice", "Rate (words per minute)", "Steps",
             "CFG mode", "α (guidance)", "β (audio guidance, Split only)", "Seed",
             "Clip length (latent frames per DiT clip; each clip adds 8 × (n − 1) video frames)", "Schedule shift",
             "Maximum duration (s)", "Render", "Mode"]
    assert [label(i) for i in gen["inputs"][:-1]] == names and vid["inputs"] == gen["inputs"][:-1]
    assert comps[gen["inputs"][-1]]["type"] == "state"  # the click's time and folder (Handlers.start)
    assert [label(i) for i in gen["outputs"]] == ["Live (128×128 video, shown at 2×)", "Whole video (download)", ""]
    assert gen["api_visibility"] == vid["api_visibility"] == "public"
    live = comps[gen["outputs"][0]]["props"]
    assert live["streaming"] and live["autoplay"]
    audio = comps[gen["inputs"][2]]["props"]
    assert audio["sources"] == ["upload", "microphone"] and audio["type"] == "filepath"
    assert comps[gen["inputs"][0]]["type"] == "image"
    stop = next(c for c in comps.values() if c["props"].get("value") == "Stop generating")
    stop_deps = [d for d in cfg["dependencies"] if (stop["id"], "click") in map(tuple, d["targets"])]
    assert any(gen["id"] in d["cancels"] for d in stop_deps), "Stop must cancel Generate"
    assert any(c["type"] == "dataset" for c in comps.values()), "examples gallery missing"
    assert any(c["type"] == "accordion" and c["props"].get("label") == "Advanced" for c in comps.values())
    about = next(str(c["props"].get("value")) for c in comps.values() if "About the default model" in str(c["props"].get("value")))
    assert "synthetic cartoon-face" in about and "photo mode" in about  # says plainly what renders what
    import inspect

    fns = demo.fns
    for dep, name in ((gen, "stream"), (vid, "video")):
        fn = fns[dep["id"]].fn
        state = ["started"] if name == "stream" else []
        assert fn.__name__ == name and list(inspect.signature(fn).parameters) == [*sup.UI_FIELDS, *state, "progress"]


def test_build_demo_without_examples(tmp_path):
    cfg = app.build_demo(FakePipeline(), examples_dir=tmp_path).get_config_file()
    assert not any(c["type"] == "dataset" for c in cfg["components"])


def test_warm_up_keeps_the_examples_speech_codes(monkeypatch):
    from pipeline import whisper

    pipe = shared_pipeline()
    calls, original = [], whisper.encode_speech_features
    monkeypatch.setattr(whisper, "encode_speech_features", lambda *a: calls.append(1) or original(*a))
    portrait, speech = sup.find_examples(examples_dir())[0]
    next(iter(pipe.stream(portrait, speech, num_inference_steps=1, progress=False)))
    assert calls == []  # the example's Whisper pass was done at start-up


def test_find_examples_pairs_by_name(tmp_path):
    for name in ("portrait_a.png", "speech_a.wav", "portrait_b.jpg", "speech_c.wav", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    assert sup.find_examples(tmp_path) == [(str(tmp_path / "portrait_a.png"), str(tmp_path / "speech_a.wav"))]
    assert sup.find_examples(tmp_path / "missing") == []


def test_pipeline_cache_creates_once_across_threads():
    made, release = [], threading.Event()

    def factory():
        release.wait(5)  # every thread is inside get() before the first factory call returns
        made.append(1)
        return object()

    cache = serving.PipelineCache(factory)
    got = []
    threads = [threading.Thread(target=lambda: got.append(cache.get())) for _ in range(8)]
    [t.start() for t in threads]
    release.set()
    [t.join(10) for t in threads]
    assert made == [1] and len(got) == 8 and len({id(g) for g in got}) == 1


def test_zero_gpu_flag_is_parsed_like_spaces(monkeypatch):
    for value, expected in (("1", True), ("true", True), ("T", True), ("0", False), ("false", False), ("", False),
                            ("no", False)):
        monkeypatch.setenv("SPACES_ZERO_GPU", value)
        assert serving.on_zero_gpu() is expected, value
    f = lambda: 1  # noqa: E731
    monkeypatch.setenv("SPACES_ZERO_GPU", "false")
    assert app.on_zero_gpu(app.Handlers.gpu_seconds)(f) is f


def test_gpu_time_request_grows_with_speech_and_stays_within_the_cap():
    short = media.load_speech(speech(2.0))
    long = media.load_speech(np.zeros(100 * SAMPLE_RATE, np.float32) + 0.1)
    a = app.Handlers.gpu_seconds(None, short, num_inference_steps=4)
    b = app.Handlers.gpu_seconds(None, long, num_inference_steps=50)
    assert 0 < a < b <= serving.GPU_MAX_S


def test_under_zero_gpu_only_the_generation_is_decorated(monkeypatch):
    """ZeroGPU simulated: `spaces.GPU` wraps `Handlers._sample` alone, and a bad request never reaches it."""
    import types

    entered = []

    def gpu(duration):
        def wrap(fn):
            def run(*args, **kwargs):
                entered.append(duration(*args, **kwargs))
                yield from fn(*args, **kwargs)
            return run
        return wrap

    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    monkeypatch.setitem(sys.modules, "spaces", types.SimpleNamespace(GPU=gpu))
    handlers = app.Handlers(serving.PipelineCache(FakePipeline))
    with pytest.raises(gr.Error, match="No portrait"):
        run(handlers, None, speech(2.0))
    with pytest.raises(gr.Error, match="Steps must be"):
        run(handlers, portrait(), speech(2.0), steps=0)
    assert entered == []
    out = run(handlers, portrait(), speech(2.0))
    assert len(entered) == 1 and 0 < entered[0] <= serving.GPU_MAX_S and Path(out[-1][1]).is_file()


# ---------------------------------------------------------------- every user error, at handler level
@pytest.fixture
def handlers():
    return app.Handlers(serving.PipelineCache(FakePipeline))


def test_streams_chunks_then_whole_video(handlers):
    out = run(handlers, portrait(), speech(2.0))
    chunks = [o[0] for o in out[:-1]]
    assert len(chunks) == 2 and all(media.probe(c) == {"video": "h264", "audio": "aac", "frames": FPS} for c in chunks)
    final, line = out[-1][1], out[-1][2]
    assert media.probe(final) == {"video": "h264", "audio": "aac", "frames": 2 * FPS}
    assert line.startswith("First clip after") and "real-time factor" in line and "steps/s" in line


def test_without_ffmpeg_only_the_whole_video_comes(handlers):
    handlers.live = False
    out = run(handlers, portrait(), speech(2.0))
    assert len(out) == 1 and media.probe(out[0][1])["frames"] == 2 * FPS


def test_text_source_speaks_the_text(handlers):
    out = run(handlers, portrait(), None, source=app.SOURCE_TEXT, text="Hello, nice to meet you.", voice="en-us+m3")
    wav = handlers.cache.get().calls[0]["audio"].whisper
    assert 0.8 < len(wav) / SAMPLE_RATE < 4 and np.abs(wav).max() > 0.1
    assert Path(out[-1][1]).is_file()


@pytest.mark.parametrize("image, audio, overrides, message", [
    (None, "speech", {}, "No portrait"),
    ("portrait", None, {}, "No speech"),
    ("portrait", None, dict(source=app.SOURCE_TEXT, text="   "), "text box is empty"),
    ("portrait", "speech", dict(steps=0), "Steps must be a whole number from 1 to 100"),
    ("portrait", "speech", dict(steps=2.5), "Steps must be a whole number"),
    ("portrait", "speech", dict(alpha=-1.0), "α must be a number from 0 to 20"),
    ("portrait", "speech", dict(beta=float("nan")), "β must be"),
    ("portrait", "speech", dict(cfg_mode="Both"), "CFG mode must be one of joint, split"),
    ("portrait", "speech", dict(seed=-3), "Seed must be"),
    ("portrait", "speech", dict(clip_latent_frames=1), "Clip length must be"),
    ("portrait", "speech", dict(shift=0.0), "Schedule shift must be"),
    ("portrait", "speech", dict(max_seconds=500), "Maximum duration must be"),
    ("portrait", "speech", dict(rate="fast"), "Speaking rate must be"),
    ("portrait", "speech", dict(max_seconds=1.5), "The speech is 2.0 s long; the limit is 1.5 s"),
])
def test_user_errors_become_gr_error(handlers, image, audio, overrides, message):
    image = portrait() if image == "portrait" else image
    audio = speech(2.0) if audio == "speech" else audio
    with pytest.raises(gr.Error, match=message):
        run(handlers, image, audio, **overrides)
    assert not handlers.cache.loaded or handlers.cache.get().calls == [], "nothing may be generated"


def test_audio_problems_become_gr_error(handlers, tmp_path):
    junk, empty, silent = tmp_path / "junk.wav", tmp_path / "empty.wav", tmp_path / "silent.wav"
    junk.write_bytes(b"this is not audio" * 20)
    media.write_wav(empty, np.zeros(0, np.float32))
    media.write_wav(silent, np.zeros(SAMPLE_RATE, np.float32))
    for path, message in [(junk, "cannot read junk.wav as audio"), (empty, "no samples"), (silent, "silent"),
                          (tmp_path / "gone.wav", "not found")]:
        with pytest.raises(gr.Error, match=message):
            run(handlers, portrait(), str(path))


def test_model_limit_becomes_gr_error(small_pipe, tmp_path):
    """The app's own limit (30 s by default) and the model's (`config.max_seconds`, 20 s here) both hold."""
    handlers = app.Handlers(serving.PipelineCache(lambda: small_pipe))
    with pytest.raises(gr.Error, match="the limit is 20 s"):
        run(handlers, portrait(), write_speech(tmp_path / "long.wav", 25.0), max_seconds=30)


def test_unreadable_image_and_no_face_with_a_real_pipeline(small_pipe, tmp_path):
    handlers = app.Handlers(serving.PipelineCache(lambda: small_pipe))
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"\x89PNG not really" * 10)
    with pytest.raises(gr.Error, match="cannot read junk.png as an image"):
        run(handlers, str(junk), speech(2.0))
    noise = tmp_path / "noise.png"
    import cv2

    cv2.imwrite(str(noise), (np.random.default_rng(0).random((90, 70, 3)) * 255).astype(np.uint8))
    with pytest.warns(UserWarning, match="No face was detected"):
        out = run(handlers, str(noise), speech(1.0), steps=1)
    assert media.probe(out[-1][1])["frames"] == FPS


def test_file_inputs_arrive_unprocessed_and_16_bit_keeps_its_values(handlers, tmp_path):
    """Events run with preprocess=False: a file arrives as gradio's payload and is read by the
    pipeline's own loader, so a 16-bit grayscale portrait is not turned white by an 8-bit conversion."""
    import cv2

    demo = app.build_demo(FakePipeline(), examples_dir=examples_dir())
    assert all(not fn.preprocess for fn in demo.fns.values() if fn.name in ("stream", "video", "portrait_note"))
    deep = tmp_path / "deep.png"
    cv2.imwrite(str(deep), (np.linspace(0, 65535, 64 * 64).reshape(64, 64)).astype(np.uint16))
    out = run(handlers, {"path": str(deep), "orig_name": "deep.png"}, {"path": speech(1.0)})
    seen = handlers.cache.get().calls[0]["image"]
    assert seen == str(deep) and image_io.load_image(seen).mean() == pytest.approx(127.5, abs=2)
    assert Path(out[-1][1]).name.startswith("deep_")


# ---------------------------------------------------------------- end to end over HTTP
def test_generate_video_endpoint(client):
    from gradio_client import handle_file

    path, line = client.predict(handle_file(portrait()), app.SOURCE_AUDIO, handle_file(speech(2.0)),
                                api_name="/generate_video")
    assert media.probe(path) == {"video": "h264", "audio": "aac", "frames": 2 * FPS}
    assert line.startswith("First clip after")


NEEDS_FFPROBE = pytest.mark.skipif(not shutil.which("ffprobe"), reason="gradio streams video through ffmpeg + "
                                   "ffprobe on PATH (apt-get install ffmpeg)")


@NEEDS_FFPROBE
def test_streaming_endpoint_yields_several_chunks(client):
    from gradio_client import handle_file

    job = client.submit(handle_file(portrait()), app.SOURCE_AUDIO, handle_file(speech(4.0)), api_name="/generate")
    outputs = list(job)
    playlists = [o[0] for o in outputs if isinstance(o[0], str)]
    assert len(playlists) >= 2, "a 4-s clip must stream in more than one chunk"
    segments = [float(ln.split(":")[1].rstrip(",")) for ln in Path(playlists[-1]).read_text().splitlines()
                if ln.startswith("#EXTINF")]
    assert len(segments) >= 2 and all(s >= 1.0 for s in segments[:-1])
    assert sum(segments) == pytest.approx(4.0, abs=0.05)
    assert media.probe(outputs[-1][1]) == {"video": "h264", "audio": "aac", "frames": 4 * FPS}


def test_errors_reach_the_client_and_the_server_keeps_serving(client):
    from gradio_client import handle_file

    with pytest.raises(Exception, match="No portrait"):
        client.predict(None, app.SOURCE_AUDIO, handle_file(speech(2.0)), api_name="/generate_video")
    with pytest.raises(Exception, match="cannot read .* as an image"):
        client.predict(handle_file(speech(2.0)), app.SOURCE_AUDIO, handle_file(speech(2.0)), api_name="/generate_video")
    path, _ = client.predict(handle_file(portrait()), app.SOURCE_TEXT, None, "Hi there.", api_name="/generate_video")
    assert media.probe(path)["video"] == "h264"


def test_two_clients_at_once_get_their_own_video():
    from gradio_client import Client, handle_file

    jobs = [Client(shared_server(), verbose=False).submit(
        handle_file(portrait()), app.SOURCE_AUDIO, handle_file(speech(seconds)), seed=seed, api_name="/generate_video")
        for seconds, seed in ((1.0, 1), (2.0, 2))]
    frames = [media.probe(job.result()[0])["frames"] for job in jobs]
    assert frames == [FPS, 2 * FPS]


@NEEDS_FFPROBE
def test_cancel_stops_the_pipeline():
    """Cancelling the event (what Stop does) stops iterating the lazy clip generator: no more compute."""
    from gradio_client import Client, handle_file

    fake = FakePipeline(delay=0.3)
    demo = app.build_demo(fake, examples_dir=TMP / "none")
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        long = TMP / "long.wav"
        media.write_wav(long, 0.1 * np.sin(np.arange(20 * SAMPLE_RATE, dtype=np.float32) / 10))
        job = Client(f"http://127.0.0.1:{port}/", verbose=False).submit(
            handle_file(other_portrait(TMP)), app.SOURCE_AUDIO, handle_file(str(long)), api_name="/generate")
        deadline = time.monotonic() + 60
        while fake.clips_made < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert fake.clips_made >= 2, "the generation did not start"
        job.cancel()
        assert fake.closed.wait(timeout=1.0), "Stop did not end the generation within 1 s"
        assert fake.clips_made < 10
    finally:
        demo.close()
