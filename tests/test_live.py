"""The Live tab's core (pipeline/live.py): microphone blocks in, mp4 segments out, Stop, errors, the registry."""
import threading

import numpy as np
import pytest

from pipeline import media
from pipeline.errors import InputError
from pipeline.live import LIVE_NUM_INFERENCE_STEPS, LiveRegistry, LiveSession, open_live, run


def mic_blocks(wav16k, rate=48000, block_s=0.25):
    """The 16-kHz test sentence as a browser would send it: int16 blocks at 48 kHz."""
    x = (np.clip(media.resample(wav16k, 16000, rate), -1, 1) * 32767).astype(np.int16)
    n = int(rate * block_s)
    return [x[i : i + n] for i in range(0, len(x), n)], len(x) / rate


def test_session_streams_segments_with_all_the_frames(small_pipe, speech_wav, portrait, tmp_path):
    blocks, seconds = mic_blocks(speech_wav)
    session = LiveSession()
    for b in blocks:
        session.feed(48000, b)
    session.finish()
    segs = list(session.segments(lambda: small_pipe.open_stream(portrait, seed=0), tmp_path, idle_s=5))
    assert segs and sum(s.num_frames for s in segs) == round(seconds * 25)
    assert [s.first_frame for s in segs] == list(np.cumsum([0] + [s.num_frames for s in segs[:-1]]))
    info = media.probe(segs[0].path)
    assert info["video"] == "h264" and info["audio"] == "aac" and info["frames"] == segs[0].num_frames
    lat = [x for s in segs for x in s.latency_s]
    assert lat and min(lat) >= 0 and "median" in segs[-1].status and session.ended.is_set()


def test_stop_from_another_thread_ends_the_session(small_pipe, speech_wav, portrait, tmp_path):
    blocks, _ = mic_blocks(speech_wav)
    session, got = LiveSession(), []
    session.feed(48000, blocks[0])

    def consume():
        for seg in session.segments(lambda: small_pipe.open_stream(portrait, seed=0), tmp_path, idle_s=30):
            got.append(seg)

    worker = threading.Thread(target=consume)
    worker.start()
    session.cancel()  # the microphone is still "on": no finish()
    worker.join(timeout=30)
    assert not worker.is_alive() and session.ended.is_set()
    before = session.blocks.qsize()
    session.feed(48000, blocks[1])
    assert session.blocks.qsize() == before  # the microphone's blocks are ignored once stopped


def test_no_audio_ends_with_one_message(small_pipe, portrait, tmp_path):
    with pytest.raises(InputError, match="No microphone audio"):
        list(LiveSession().segments(lambda: small_pipe.open_stream(portrait, seed=0), tmp_path, idle_s=0.2))


def test_run_words_every_failure_for_the_visitor(small_pipe, portrait, tmp_path):
    reg = LiveRegistry()
    with pytest.raises(InputError, match="No portrait"):
        list(run(reg, "a", lambda: small_pipe, None, tmp_path))
    (tmp_path / "notes.txt").write_text("not a picture")
    gen = run(reg, "a", lambda: small_pipe, str(tmp_path / "notes.txt"), tmp_path, idle_s=1)
    assert "Listening" in next(gen)[1]
    with pytest.raises(InputError) as bad_image:
        next(gen)
    assert "Traceback" not in str(bad_image.value)

    class Broken:
        def open_stream(self, *a, **k):
            raise RuntimeError("a bug")

    gen = run(reg, "b", Broken, portrait, tmp_path, idle_s=1)
    next(gen)
    with pytest.raises(InputError, match="internal error \\(RuntimeError\\)"):
        next(gen)


def test_registry_pairs_the_microphone_with_the_generator():
    reg = LiveRegistry()
    early = reg.for_audio("tab")  # the first block can come before the generator
    assert reg.for_video("tab") is early and early.started is False
    early.started = True
    assert reg.for_audio("tab") is early
    newer = reg.for_video("tab")  # a second generator for the same tab replaces (and stops) the first
    assert newer is not early and early.cancelled.is_set()
    newer.cancel()
    assert reg.for_audio("tab") is None  # after Stop, the still-recording microphone is ignored
    reg.close("tab")
    assert reg.get("tab") is None


def test_figures_say_when_microphone_audio_was_lost():
    from pipeline.live import Figures

    assert "only 30 % of the microphone's audio" in Figures(audio_s=3.0, span_s=10.0).line("Live")
    assert "%" not in Figures(audio_s=9.8, span_s=10.0, frames=245, latencies=[1.0, 2.0]).line("Live")


def test_live_runs_the_student_at_two_steps_and_the_read_dit_at_the_request_default(portrait):
    class Pipe:  # records what the Live tab asks the pipeline for
        def __init__(self, student):
            self.student, self.asked = student, None

        def open_stream(self, image, **kwargs):
            self.asked = kwargs

    with_student, without = Pipe(student=object()), Pipe(student=None)
    open_live(with_student, portrait)
    open_live(without, portrait)
    assert with_student.asked["num_inference_steps"] == LIVE_NUM_INFERENCE_STEPS == 2
    assert without.asked["num_inference_steps"] is None  # None: the model's own default
