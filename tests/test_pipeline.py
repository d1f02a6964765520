"""End to end through TalkingHeadPipeline with small random components and the real Whisper."""
import json

import numpy as np
import pytest
import torch

from pipeline.config import FPS, SAMPLE_RATE
from pipeline.errors import InputError
from pipeline.media import probe, write_mp4
from pipeline.pipeline import TalkingHeadPipeline


def test_output_length_matches_audio(small_pipe, portrait, speech_wav):
    out = small_pipe(portrait, speech_wav, progress=False)
    expect = round(len(speech_wav) / SAMPLE_RATE * FPS)
    assert abs(len(out.frames) - expect) <= 1
    assert out.frames.shape[1:] == (64, 64, 3) and out.frames.dtype == np.uint8
    assert len(out.audio) == len(out.frames) * SAMPLE_RATE // FPS


def test_stream_equals_call_and_same_seed_same_video(small_pipe, portrait, speech_wav):
    clips = list(small_pipe.stream(portrait, speech_wav, seed=3, progress=False))
    assert len(clips) > 1 and [c.index for c in clips] == sorted(c.index for c in clips)
    assert all(c.start_frame == sum(len(p.frames) for p in clips[:i]) for i, c in enumerate(clips))
    whole = small_pipe(portrait, speech_wav, seed=3, progress=False)
    assert np.array_equal(np.concatenate([c.frames for c in clips]), whole.frames)
    assert np.array_equal(np.concatenate([c.audio for c in clips]), whole.audio)
    other = small_pipe(portrait, speech_wav, seed=4, progress=False)
    assert not np.array_equal(other.frames, whole.frames)
    g = torch.Generator().manual_seed(3)
    assert np.array_equal(small_pipe(portrait, speech_wav, generator=g, progress=False).frames, whole.frames)


def test_dit_ahead_of_the_decode_gives_the_same_frames(small_pipe, portrait, speech_wav, monkeypatch):
    """With a spare core the DiT samples clip j + 1 on a worker while clip j is decoded: same frames."""
    import pipeline.pipeline as pl
    from pipeline.ahead import run_ahead

    calls, frames = [], {}
    monkeypatch.setattr(pl, "run_ahead", lambda it: calls.append(1) or run_ahead(it))
    for spare in (False, True):
        monkeypatch.setattr(pl, "spare_core", lambda spare=spare: spare)
        frames[spare] = small_pipe(portrait, speech_wav, seed=3, progress=False).frames
    assert calls == [1]  # the overlapped path ran once, for the spare-core call
    assert np.array_equal(frames[False], frames[True])


def test_three_stages_with_a_refiner_give_the_frames_of_one_thread(small_pipe, portrait, speech_wav, monkeypatch):
    """With a refiner and a spare core READ runs DiT (worker) -> VAE decoder (second worker) -> refiner
    (calling thread): the same frames as one thread doing all three, and the refiner's time is counted."""
    import pipeline.pipeline as pl
    from pipeline.ahead import run_ahead
    from pipeline.refiner import FrameRefiner

    from .conftest import trained_looking

    refiner = trained_looking(FrameRefiner(hidden_channels=8, num_layers=2))
    calls, frames, timings = [], {}, {}
    monkeypatch.setattr(pl, "run_ahead", lambda it: calls.append(1) or run_ahead(it))
    monkeypatch.setattr(small_pipe, "refiner", refiner)
    for spare in (False, True):
        monkeypatch.setattr(pl, "spare_core", lambda spare=spare: spare)
        out = small_pipe(portrait, speech_wav, seed=3, progress=False)
        frames[spare], timings[spare] = out.frames, out.timings
    assert calls == [1, 1]  # the spare-core call ran the DiT and the decoder each on a worker
    assert np.array_equal(frames[False], frames[True])
    assert all(t["refine"] > 0 and t["decode"] > 0 for t in timings.values())


def test_repeated_inputs_reuse_whisper_codes_and_reference(small_pipe, portrait, speech_wav, monkeypatch):
    from pipeline import whisper

    calls, original = [], whisper.encode_speech_features
    monkeypatch.setattr(whisper, "encode_speech_features", lambda *a: calls.append(1) or original(*a))
    small_pipe.clear_cache()
    wav = speech_wav[:16000]
    first = small_pipe(portrait, wav, cfg_mode="joint", num_inference_steps=2, progress=False)
    again = small_pipe(portrait, wav, cfg_mode="joint", num_inference_steps=2, progress=False)
    assert len(calls) == 1 and np.array_equal(first.frames, again.frames)
    small_pipe(portrait, wav * 0.5, cfg_mode="joint", num_inference_steps=2, progress=False)  # other speech
    small_pipe.clear_cache()
    fresh = small_pipe(portrait, wav, cfg_mode="joint", num_inference_steps=2, progress=False)
    assert len(calls) == 3 and np.array_equal(fresh.frames, first.frames)


def test_save_load_roundtrip_identical(small_pipe, portrait, speech_wav, tmp_path):
    small_pipe.save_pretrained(tmp_path / "model")
    assert not list((tmp_path / "model").rglob("*.bin")) and list((tmp_path / "model").rglob("*.safetensors"))
    loaded = TalkingHeadPipeline.from_pretrained(tmp_path / "model")
    as_json = lambda c: json.loads(json.dumps(c.to_dict()))  # noqa: E731 (tuples come back as lists)
    assert as_json(loaded.config) == as_json(small_pipe.config)
    a = small_pipe(portrait, speech_wav[:16000], cfg_mode="joint", num_inference_steps=2, progress=False).frames
    b = loaded(portrait, speech_wav[:16000], cfg_mode="joint", num_inference_steps=2, progress=False).frames
    assert np.array_equal(a, b)


def test_mp4_has_h264_aac_and_all_frames(small_pipe, portrait, speech_wav, tmp_path):
    out = small_pipe(portrait, speech_wav, progress=False)
    path = write_mp4(tmp_path / "out.mp4", out.frames, out.audio, out.sample_rate, out.fps)
    info = probe(path)
    assert info["video"] == "h264" and info["audio"] == "aac" and info["frames"] == len(out.frames)


@pytest.mark.parametrize("kind", ["rgba", "gray", "16bit", "huge", "float"])
def test_unusual_images_work(small_pipe, speech_wav, kind, tmp_path):
    import cv2

    rng = np.random.default_rng(0)
    img = {
        "rgba": (rng.random((80, 60, 4)) * 255).astype(np.uint8),
        "gray": (rng.random((80, 60)) * 255).astype(np.uint8),
        "16bit": (rng.random((80, 60, 3)) * 65535).astype(np.uint16),
        "huge": np.full((5000, 4500, 3), 128, np.uint8),
        "float": rng.random((64, 64, 3)).astype(np.float32),
    }[kind]
    if kind in ("rgba", "16bit", "gray"):  # through a real file too
        path = tmp_path / "img.png"
        cv2.imwrite(str(path), img)
        img = str(path)
    x, crop, _ = small_pipe.preprocess_image(img)
    assert x.shape == (1, 3, 64, 64) and crop.shape == (64, 64, 3) and x.min() >= -1 and x.max() <= 1


def test_stereo_any_rate_and_formats(small_pipe, speech_wav, tmp_path):
    import soundfile as sf

    from pipeline.media import resample

    stereo44 = np.stack([resample(speech_wav, 16000, 44100)] * 2, axis=1)
    for name, fmt in [("a.wav", "WAV"), ("a.flac", "FLAC"), ("a.ogg", "OGG"), ("a.mp3", "MP3")]:
        sf.write(str(tmp_path / name), stereo44, 44100, format=fmt)
        speech = small_pipe.load_speech(tmp_path / name)
        assert abs(len(speech.whisper) - len(speech_wav)) < 0.03 * SAMPLE_RATE, name  # mp3 adds codec padding
        assert speech.sample_rate == 44100 and speech.samples.shape[1] == 2, name  # the original, for the video
    speech = small_pipe.load_speech((22050, (speech_wav[:22050] * 32767).astype(np.int16)))
    assert len(speech.whisper) == 16000 and speech.sample_rate == 22050


def test_chunks_carry_the_original_audio_for_exactly_their_frames(small_pipe, portrait, speech_wav):
    from pipeline.media import resample

    stereo = np.stack([resample(speech_wav, 16000, 44100), -0.5 * resample(speech_wav, 16000, 44100)], axis=1)
    chunks = list(small_pipe.stream(portrait, (44100, stereo), seed=0, progress=False))
    audio = np.concatenate([c.audio for c in chunks])
    assert all(c.sample_rate == 44100 and c.audio.shape == (len(c.frames) * 44100 // FPS, 2) for c in chunks)
    n = min(len(audio), len(stereo))
    assert np.abs(stereo).max() < 1 and np.allclose(audio[:n], stereo[:n], atol=1e-6)  # not resampled, not mixed


BAD_PARAMS = [
    dict(num_inference_steps=0), dict(num_inference_steps=-3), dict(num_inference_steps=2.5),
    dict(num_inference_steps=10_000), dict(cfg_mode="both"), dict(alpha=float("nan")), dict(alpha=-1.0),
    dict(beta=1e9), dict(shift=0.0), dict(seed=-1), dict(clip_latent_frames=1),
]


@pytest.mark.parametrize("kw", BAD_PARAMS, ids=lambda kw: f"{list(kw)[0]}={list(kw.values())[0]}")
def test_bad_parameters_name_the_problem(small_pipe, portrait, speech_wav, kw):
    with pytest.raises(InputError, match=list(kw)[0].split("_")[0]):
        list(small_pipe.stream(portrait, speech_wav, progress=False, **kw))


def test_bad_files(small_pipe, portrait, speech_wav, tmp_path):
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "junk.wav").write_bytes(b"RIFF\x00\x00junk" * 10)
    (tmp_path / "junk.png").write_bytes(b"not an image at all")
    cases = [
        (portrait, tmp_path / "missing.wav", "not found"),
        (portrait, tmp_path / "empty.wav", "empty"),
        (portrait, tmp_path / "junk.wav", "cannot read"),
        (tmp_path / "missing.png", speech_wav, "not found"),
        (tmp_path / "junk.png", speech_wav, "cannot read"),
        (portrait, np.zeros(0, np.float32), "no samples"),
        (portrait, np.zeros(300, np.float32), "shorter than one video frame"),
        (portrait, np.full(16000, np.nan, np.float32), "NaN"),
        (portrait, np.zeros(16000 * 21, np.float32), "limit"),
        (None, speech_wav, "no portrait"),
        (portrait, None, "no speech"),
    ]
    for image, audio, words in cases:
        with pytest.raises(InputError, match=words):
            small_pipe(image, audio, progress=False)
