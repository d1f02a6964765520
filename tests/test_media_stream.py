"""Audio and video as streams: a file read in blocks, an mp4 written as chunks come, REST's level and mix."""
import subprocess

import numpy as np
import pytest

from pipeline import media
from pipeline.errors import InputError
from pipeline.media_stream import Mp4Writer, StreamDownmix, audio_blocks, check_stream_file, float_block


@pytest.fixture
def stereo_wav(tmp_path):
    rng = np.random.default_rng(0)
    x = (0.3 * rng.standard_normal((44100 * 3 + 123, 2))).astype(np.float32)
    path = tmp_path / "stereo.wav"
    import soundfile as sf

    sf.write(str(path), x, 44100, subtype="FLOAT")
    return path, x


def test_blocks_of_a_wav_are_the_file(stereo_wav):
    path, x = stereo_wav
    blocks = list(audio_blocks(path, block_seconds=0.5))
    assert len(blocks) == 7 and all(rate == 44100 for _, rate in blocks)
    assert max(len(b) for b, _ in blocks) == 22050
    assert np.array_equal(np.concatenate([b for b, _ in blocks]), x)


def test_blocks_through_ffmpeg_match_its_whole_decoding(stereo_wav, tmp_path):
    path, _ = stereo_wav
    m4a = tmp_path / "speech.m4a"
    subprocess.run([media._ffmpeg(), "-y", "-loglevel", "error", "-i", str(path), "-c:a", "aac", str(m4a)], check=True)
    whole, rate = media.decode_audio(m4a)
    blocks = list(audio_blocks(m4a, block_seconds=0.25))
    assert {r for _, r in blocks} == {rate} and all(b.shape[1] == 2 for b, _ in blocks)
    assert np.array_equal(np.concatenate([b for b, _ in blocks]), whole)


def test_blocks_refuse_what_is_not_audio(tmp_path):
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "face.png")
    with pytest.raises(InputError, match="picture"):
        list(audio_blocks(tmp_path / "face.png"))
    with pytest.raises(InputError, match="picture"):
        check_stream_file(tmp_path / "face.png")
    media.write_wav(tmp_path / "tiny.wav", np.zeros(100, np.float32))
    with pytest.raises(InputError, match="shorter than one video frame"):
        check_stream_file(tmp_path / "tiny.wav")


def test_stream_downmix_is_downmix_on_one_block_and_never_cancels():
    rng = np.random.default_rng(1)
    voice = rng.standard_normal(16000).astype(np.float32) * 0.2
    x = np.stack([voice, -voice, 0.01 * rng.standard_normal(16000).astype(np.float32)], 1)  # inverted copy
    assert np.allclose(StreamDownmix()(x), media.downmix(x), atol=1e-5)
    mix = StreamDownmix()
    out = np.concatenate([mix(x[i : i + 320]) for i in range(0, len(x), 320)])
    assert np.sqrt(np.mean(out[1600:] ** 2)) > 0.15  # the voice keeps its level in every block
    assert np.array_equal(StreamDownmix()(voice), voice)  # mono passes through


def test_float_block_keeps_shape_and_scales_pcm():
    assert float_block(np.array([[32767, -32767]], np.int16)).tolist() == [[1.0, -1.0]]  # 1 sample, 2 channels
    assert float_block(np.array([128, 255], np.uint8))[0] == 0.0
    with pytest.raises(InputError, match="invalid"):
        float_block(np.array([0.0, np.nan], np.float32))


def test_mp4_writer_writes_chunks_with_their_audio(tmp_path):
    out = tmp_path / "v.mp4"
    with Mp4Writer(out, 44100) as w:
        for k in range(5):
            w.write(np.full((13, 32, 48, 3), 40 * k, np.uint8), 0.1 * np.ones((13 * 44100 // 25, 2), np.float32))
        assert not out.exists() and len(list(tmp_path.iterdir())) == 1  # only the hidden temporary file
        w.close()
    info = media.probe(out)
    assert info == {"video": "h264", "audio": "aac", "frames": 65}
    decoded, rate = media.decode_audio(out)
    assert rate == 44100 and decoded.shape[1] == 2 and abs(len(decoded) / rate - 2.6) < 0.05


def test_mp4_writer_leaves_nothing_on_error(tmp_path):
    out = tmp_path / "v.mp4"
    with pytest.raises(KeyError):
        with Mp4Writer(out, 16000) as w:
            w.write(np.zeros((8, 32, 32, 3), np.uint8), np.zeros(8 * 640, np.float32))
            raise KeyError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_finished_files_get_the_umask_permissions_not_the_temporary_files(tmp_path):
    """mkstemp makes 0600 files; a finished mp4 is readable as any file the user writes (0666 & ~umask)."""
    import os

    old = os.umask(0o022)
    try:
        with Mp4Writer(tmp_path / "streamed.mp4", 16000) as w:
            w.write(np.zeros((8, 32, 32, 3), np.uint8), np.zeros(8 * 640, np.float32))
        media.write_mp4(tmp_path / "whole.mp4", np.zeros((8, 32, 32, 3), np.uint8), np.zeros(8 * 640, np.float32))
        media.concat_mp4([tmp_path / "whole.mp4", tmp_path / "streamed.mp4"], tmp_path / "joined.mp4")
    finally:
        os.umask(old)
    assert {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()} == \
        {"streamed.mp4": 0o644, "whole.mp4": 0o644, "joined.mp4": 0o644}


@pytest.mark.parametrize("rate", [0, -16000, 500, 16000.5, 10**6, "16000"])
def test_a_live_session_refuses_a_bad_sample_rate_in_one_message(small_pipe, portrait, rate):
    live = small_pipe.open_stream(portrait, seed=0)
    with pytest.raises(InputError, match="unsupported audio sample rate"):
        live.push_audio(np.zeros(16000, np.int16), rate)
    assert len(live.push_audio(np.zeros(16000, np.int16), 48000)) >= 0  # the session still takes good audio


def test_rest_turns_down_over_full_scale_and_mixes_channels(small_pipe, speech_wav, portrait):
    loud = np.stack([3 * speech_wav, -3 * speech_wav], 1)  # stereo, one channel inverted, peak > 1
    live = small_pipe.open_stream(portrait, seed=0)
    chunks = [c for i in range(0, len(loud), 4000) for c in live.push_audio(loud[i : i + 4000], 16000)]
    chunks += live.close()
    audio = np.concatenate([c.audio for c in chunks])
    warnings = [w for c in chunks for w in c.warnings]
    assert any("above full scale" in w for w in warnings) and np.abs(audio).max() <= 1.0
    assert audio.shape[1] == 2 and sum(len(c.frames) for c in chunks) == round(len(loud) / 16000 * 25)
    heard = live.session.speech.audio  # Whisper's last window: the voice, not a mix that cancelled it
    assert np.sqrt(np.mean(heard ** 2)) > 0.3 * np.sqrt(np.mean(speech_wav ** 2))


@pytest.fixture(scope="module")
def model_dir(small_pipe, tmp_path_factory):
    d = tmp_path_factory.mktemp("model")
    small_pipe.save_pretrained(d)
    return d


def _cli(model_dir, image, audio, out, *extra):
    from pipeline.infer import parse_args, run

    return run(parse_args(["--image", str(image), "--audio", str(audio), "--out", str(out), "--checkpoint",
                           str(model_dir), "--mode", "rest", *extra]))


def test_cli_rest_streams_a_file_it_never_loads_whole(model_dir, portrait, speech_wav, tmp_path, monkeypatch):
    import cv2
    import soundfile as sf

    cv2.imwrite(str(tmp_path / "face.png"), portrait)
    long = np.tile(speech_wav, 10)[: 16000 * 25 + 321]  # 25.02 s: over the model's 20-s READ limit
    sf.write(str(tmp_path / "long.flac"), long, 16000)
    for name in ("decode_audio", "load_speech"):  # the whole-file readers
        monkeypatch.setattr(media, name, lambda *a, **k: pytest.fail("the whole file was decoded"))
    out = tmp_path / "out.mp4"
    assert _cli(model_dir, tmp_path / "face.png", tmp_path / "long.flac", out) == 0
    info = media.probe(out)
    assert info["video"] == "h264" and info["audio"] == "aac"
    assert abs(info["frames"] - round(len(long) / 16000 * 25)) <= 1


def test_cli_rest_error_mid_stream_leaves_no_file(model_dir, portrait, speech_wav, tmp_path, capsys):
    import cv2
    import soundfile as sf

    cv2.imwrite(str(tmp_path / "face.png"), portrait)
    bad = np.tile(speech_wav, 3).copy()
    bad[len(bad) // 2] = np.nan  # found only once the stream has reached it
    sf.write(str(tmp_path / "bad.wav"), bad, 16000, subtype="FLOAT")
    out = tmp_path / "out.mp4"
    assert _cli(model_dir, tmp_path / "face.png", tmp_path / "bad.wav", out) == 2
    assert "invalid" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.mp4")) and not list(tmp_path.glob(".*"))
