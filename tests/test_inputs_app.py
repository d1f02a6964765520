"""The whole input catalogue (docs/INPUTS.md) through ONE running app, over HTTP with `gradio_client`.

Each image kind goes in with short good speech, each audio kind with a good portrait. A kind that
works must come back as an mp4 (for audio: at the upload's rate and channels); a kind that must be
refused must come back as one clear line from the app (a `gr.Error`, not gradio's generic
exception text) that names no server-side folder. Then the same server must still serve a normal
request.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import soundfile as sf

import app
from pipeline import media
from pipeline.config import FPS
from tests.conftest import served
from tests.test_media import CATALOGUE, VOICE, _pil, portrait, voice

pytestmark = pytest.mark.slow
GENERIC = "raised an exception"  # gradio's text for an exception that is not a gr.Error


@pytest.fixture(scope="module")
def server(small_pipe, tmp_path_factory):
    """One app over the small random-weights pipeline for the whole module."""
    demo = app.build_demo(small_pipe, examples_dir=tmp_path_factory.mktemp("no-examples"))
    with served(demo) as url:
        yield url


@pytest.fixture(scope="module")
def client(server):
    from gradio_client import Client

    return Client(server, verbose=False)


def generate(client, image: Path, audio: Path) -> str:
    from gradio_client import handle_file

    video, _ = client.predict(handle_file(str(image)), app.SOURCE_AUDIO, handle_file(str(audio)), steps=1,
                              cfg_mode="Joint", api_name="/generate_video")
    return video


def check_case(client, case, folder: Path, good_image: Path, short_speech: Path) -> str | None:
    """None when the app does what the catalogue says, else what went wrong."""
    path = case.make(folder)
    image, audio = (path, short_speech) if case.kind == "image" else (good_image, path)
    try:
        video = generate(client, image, audio)
    except Exception as e:  # gradio_client's AppError carries the gr.Error message
        message = str(e).strip()
        if (case.app or case.expect) != "error":
            return f"refused ({message})"
        if not message or "\n" in message or GENERIC in message or tempfile.gettempdir() in message:
            return f"unclear message {message!r}"
        return None
    if (case.app or case.expect) == "error":
        return "accepted, expected a message"
    info = media.probe(video)
    if info["video"] != "h264" or info["audio"] != "aac" or info["frames"] < 1:
        return f"bad video {info}"
    if case.kind == "audio":  # the video carries the upload's own audio, not Whisper's 16-kHz mono copy
        (src, src_rate), (out, out_rate) = media.decode_audio(path), media.decode_audio(video)
        if out.shape[1] != (src.shape[1] if src.shape[1] <= 8 else 1) or out_rate < min(src_rate, 96000):
            return f"audio {out_rate} Hz x {out.shape[1]} for an upload of {src_rate} Hz x {src.shape[1]}"
    return None


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("inputs")
    short = d / "short.wav"
    sf.write(short, voice()[:8000], 16000)  # 0.5 s: the image kinds need no more
    return _pil("good.png", portrait(64, 64))(d), short


def test_the_catalogue_through_one_app(client, inputs, tmp_path):
    problems = [f"{c.name}: {p}" for k, c in enumerate(CATALOGUE)
                if (p := check_case(client, c, _folder(tmp_path, k), *inputs))]
    assert not problems, "\n".join(problems)

    video = generate(client, inputs[0], VOICE)  # the server still serves a normal request
    frames = round(media.audio_duration(VOICE) * FPS)
    assert media.probe(video) == {"video": "h264", "audio": "aac", "frames": frames}


def _folder(root: Path, k: int) -> Path:
    folder = root / f"case{k}"
    folder.mkdir()
    return folder

