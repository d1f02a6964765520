"""Photo mode through the pipeline: render="auto" decides per portrait; a face-less photo falls back."""
from pathlib import Path

import matplotlib
import numpy as np
import pytest

from pipeline.media import load_speech

pytestmark = pytest.mark.slow  # tens of seconds: `python -m pytest -m slow` (and .ci/run) runs it

HOPPER = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
EXAMPLE = Path(__file__).resolve().parents[1] / "assets" / "examples" / "portrait_0.png"
FAST = dict(num_inference_steps=1, cfg_mode="joint", progress=False)


@pytest.fixture(scope="module")
def shipped():
    from pipeline import TalkingHeadPipeline

    return TalkingHeadPipeline.from_pretrained(Path(__file__).resolve().parents[1] / "assets" / "model")


@pytest.fixture(scope="module")
def speech():
    return load_speech(str(Path(__file__).resolve().parents[1] / "assets" / "examples" / "speech_0.wav"))


def test_auto_animates_a_real_photo_and_diffuses_the_synthetic_domain(shipped, speech):
    photo = shipped(str(HOPPER), speech, **FAST)
    synthetic = shipped(str(EXAMPLE), speech, **FAST)
    assert photo.frames.shape[1:] == (256, 256, 3) and synthetic.frames.shape[1:] == (128, 128, 3)
    assert len(photo.frames) == len(synthetic.frames) == round(speech.seconds * 25)
    assert np.array_equal(photo.audio, synthetic.audio)
    forced = shipped(str(HOPPER), speech, render="diffusion", **FAST)
    assert forced.frames.shape[1:] == (128, 128, 3)


def test_a_photo_without_a_face_falls_back_to_diffusion_with_a_note(shipped, speech):
    sky = np.zeros((300, 300, 3), np.uint8)
    sky[:] = np.linspace(80, 200, 300)[:, None, None].astype(np.uint8)
    out = shipped(sky + np.random.default_rng(0).integers(0, 20, sky.shape, dtype=np.uint8), speech,
                  render="photo", **FAST)
    assert out.frames.shape[1:] == (128, 128, 3)
    assert any(w.startswith("Photo mode:") and "diffusion model instead" in w for w in out.warnings), out.warnings


def test_the_warp_beside_the_generation_gives_the_serial_frames(shipped, speech):
    """Photo mode generates the driver on a worker thread while it warps: same frames as doing it in turn."""
    from pipeline.photo import MotionReader, PhotoRenderer, driver_portrait

    threaded = shipped(str(HOPPER), speech, render="photo", seed=3, **FAST)
    renderer, reader = PhotoRenderer(shipped.load_rgb(str(HOPPER)), size=256), MotionReader.load()
    serial = [renderer.render(reader.read(c.frames, start_frame=c.start_frame))
              for c in shipped.stream(driver_portrait(), speech, render="diffusion", seed=3, **FAST)]
    assert np.array_equal(threaded.frames, np.concatenate(serial))


def test_a_live_session_animates_a_real_photo_like_the_file_stream(shipped, speech):
    """open_stream takes photo mode for a real photo too: pushed in blocks, the same frames as
    stream(mode="rest") of the same audio (which warps beside the generation)."""
    whole = shipped(str(HOPPER), speech, mode="rest", seed=5, **FAST)
    live = shipped.open_stream(str(HOPPER), seed=5, num_inference_steps=1, cfg_mode="joint")
    x, rate, chunks = speech.samples, speech.sample_rate, []
    for i in range(0, len(x), 7000):
        chunks += live.push_audio(x[i:i + 7000], rate)
    chunks += live.close()
    frames = np.concatenate([c.frames for c in chunks])
    assert frames.shape[1:] == (256, 256, 3) and len(frames) == len(whole.frames)
    assert np.array_equal(frames, whole.frames)
