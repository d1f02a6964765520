"""Image and audio inputs as visitors and phones make them (docs/INPUTS.md), at the loader level.

Every input is made here, in a tmp folder, with numpy / PIL / soundfile / the shipped ffmpeg binary.
`CATALOGUE` is the table of docs/INPUTS.md in code: `tests/test_inputs_app.py` drives the same
cases through one running app.
"""
from __future__ import annotations

import io
import subprocess
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import soundfile as sf
from PIL import Image, ImageOps

from pipeline import image as image_io
from pipeline import media
from pipeline.errors import InputError

VOICE = Path(__file__).parent / "data" / "speech_hello.wav"  # 2.5 s of speech, 16 kHz mono
MAX_SECONDS = 20.0  # the limit the audio cases are loaded with (the app's default is the same or more)
TOO_LONG_SECONDS = 130.0  # over every allowed limit (`Limits.max_seconds` tops out at 120 s)


def ff(*args) -> None:
    """Run the shipped ffmpeg binary (the one the product decodes and encodes with)."""
    subprocess.run([media._ffmpeg(), "-nostdin", "-v", "error", "-y", *map(str, args)], check=True)


def voice() -> np.ndarray:
    return sf.read(VOICE, dtype="float32")[0]


def tone(hz: float, seconds: float, rate: int, amp: float = 0.3) -> np.ndarray:
    return (amp * np.sin(2 * np.pi * hz * np.arange(round(seconds * rate)) / rate)).astype(np.float32)


def portrait(h: int = 48, w: int = 40) -> np.ndarray:
    """An RGB picture whose every corner differs, so a wrong rotation or flip shows."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([255 * x // w, 255 * y // h, 128 + 0 * x], -1).astype(np.uint8)


# ---------------------------------------------------------------- the catalogue
@dataclass
class Case:
    name: str  # the row of docs/INPUTS.md
    kind: str  # "image" or "audio"
    make: Callable[[Path], Path]  # writes the input into a folder, returns its path
    expect: str = "ok"  # at the loader: "ok", "warn" (works, with a warning) or "error" (one InputError)
    match: str = ""  # a words of the message
    app: str | None = None  # what the app answers when it differs from the loader ("error": the silent case)


def _pil(name, array, fmt=None, **kw):
    def make(d: Path) -> Path:
        p = d / name
        Image.fromarray(array() if callable(array) else array).save(p, fmt, **kw)
        return p
    return make


def _cv2(name, array):
    def make(d: Path) -> Path:
        import cv2

        p = d / name
        cv2.imwrite(str(p), array)
        return p
    return make


def _bytes(name, data: Callable[[Path], bytes]):
    def make(d: Path) -> Path:
        p = d / name
        p.write_bytes(data(d))
        return p
    return make


def _sf(name, samples: Callable[[], np.ndarray], rate: int, **kw):
    def make(d: Path) -> Path:
        p = d / name
        sf.write(p, samples(), rate, **kw)
        return p
    return make


def _ffmpeg_audio(name, *out_args, video=False, rate=16000):
    """The voice encoded by ffmpeg (`out_args`: codec options), optionally beside a video track."""
    def make(d: Path) -> Path:
        p = d / name
        src = ["-f", "lavfi", "-i", "testsrc=s=64x64:r=25:d=2.5"] if video else []
        ff(*src, "-i", VOICE, *(["-ar", str(rate)] if rate != 16000 else []), *out_args, p)
        return p
    return make


def _piped_webm(d: Path) -> Path:
    """Like a browser's MediaRecorder: WebM written to a pipe, so no duration in its header."""
    p = d / "recording.webm"
    with open(p, "wb") as f:
        subprocess.run([media._ffmpeg(), "-v", "error", "-i", str(VOICE), "-c:a", "libopus", "-f", "webm", "-"],
                       stdout=f, check=True)
    return p


def _png_bomb(d: Path) -> bytes:
    """A 1x1 PNG whose header claims 100000 x 100000 pixels."""
    b = io.BytesIO()
    Image.new("RGB", (1, 1)).save(b, "PNG")
    data = bytearray(b.getvalue())
    ihdr = bytearray(data[12:29])  # b"IHDR" + 13 bytes
    ihdr[4:12] = (100_000).to_bytes(4, "big") * 2
    data[12:29] = ihdr
    data[29:33] = zlib.crc32(bytes(ihdr)).to_bytes(4, "big")
    return bytes(data)


def _jpeg_bytes(d: Path) -> bytes:
    b = io.BytesIO()
    Image.fromarray(portrait(64, 64)).save(b, "JPEG")
    return b.getvalue()


def _oriented(o: int, fmt="JPEG", array=portrait):
    """`array` stored as a camera would store it for EXIF Orientation `o` (viewers show `array()`)."""
    def make(d: Path) -> Path:
        stored = STORE[o](array())
        exif = Image.Exif()
        exif[0x0112] = o
        p = d / f"orientation_{o}.{fmt.lower()}"
        Image.fromarray(np.ascontiguousarray(stored)).save(p, fmt, exif=exif)
        return p
    return make


# The inverse of each orientation: how a camera stores an upright picture under that tag.
STORE = {1: lambda a: a, 2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
         5: lambda a: a.swapaxes(0, 1), 6: lambda a: np.rot90(a, 1), 7: lambda a: a[::-1, ::-1].swapaxes(0, 1),
         8: lambda a: np.rot90(a, -1)}


def _rgba():
    a = np.dstack([portrait(), np.full(portrait().shape[:2], 255, np.uint8)])
    a[:10, :, 3] = 0  # a transparent band: white after compositing
    return a


def _gray16():
    return (np.arange(48 * 40).reshape(48, 40) * 31).astype(np.uint16)


def _stereo(left, right):
    return lambda: np.stack([left(), right()], 1)


def _surround_centre():
    x = np.zeros((len(voice()), 6), np.float32)
    x[:, 2] = voice()
    return x


def _nan():
    x = voice().copy()
    x[100] = np.nan
    return x


def _channels(n):
    return lambda: np.repeat(voice()[:, None], n, 1)


CATALOGUE = [
    # images
    Case("JPEG", "image", _pil("portrait.jpg", portrait())),
    Case("PNG", "image", _pil("portrait.png", portrait())),
    Case("WebP", "image", _pil("portrait.webp", portrait())),
    Case("BMP", "image", _pil("portrait.bmp", portrait())),
    Case("TIFF", "image", _pil("portrait.tiff", portrait())),
    Case("AVIF", "image", _pil("portrait.avif", portrait())),
    Case("GIF, animated (first frame)", "image", lambda d: _gif(d)),
    Case("phone JPEG, EXIF Orientation 6", "image", _oriented(6)),
    Case("phone JPEG, EXIF Orientation 3", "image", _oriented(3)),
    Case("phone JPEG, EXIF Orientation 8", "image", _oriented(8)),
    Case("8-bit grayscale", "image", _pil("gray.png", portrait()[:, :, 0])),
    Case("16-bit grayscale PNG", "image", _pil("gray16.png", _gray16)),
    Case("16-bit grayscale TIFF, Orientation 6", "image", _oriented(6, "TIFF", _gray16)),
    Case("16-bit RGB PNG", "image", _cv2("rgb16.png", portrait().astype(np.uint16) * 257)),
    Case("32-bit float TIFF", "image", _cv2("float.tiff", portrait().astype(np.float32) / 255)),
    Case("RGBA with transparency", "image", _pil("alpha.png", _rgba)),
    Case("gray + alpha", "image", _pil("gray_alpha.png", lambda: _rgba()[:, :, [0, 3]])),
    Case("palette PNG", "image", lambda d: _palette(d)),
    Case("CMYK JPEG", "image", lambda d: _cmyk(d)),
    Case("huge (6000 x 400)", "image", _pil("huge.png", np.zeros((400, 6000, 3), np.uint8))),
    Case("pixel bomb (header claims 100000 x 100000)", "image", _bytes("bomb.png", _png_bomb), "error",
         "too large"),
    Case("tiny (1 x 1)", "image", _pil("tiny.png", np.zeros((1, 1, 3), np.uint8))),
    Case("PNG named .jpg", "image", _pil("wrong_extension.jpg", portrait(), "PNG")),
    Case("HEIC (iPhone)", "image", _bytes("photo.heic", lambda d: b"\0\0\0\x18ftypheic" + bytes(200)), "error",
         "HEIC"),
    Case("truncated JPEG", "image", _bytes("truncated.jpg", lambda d: _jpeg_bytes(d)[:300]), "error",
         "cannot read truncated.jpg"),
    Case("not an image (random bytes)", "image", _bytes("noise.png", lambda d: np.random.default_rng(0).bytes(999)),
         "error", "cannot read noise.png"),
    Case("audio file as the portrait", "image", lambda d: _sf("speech.wav", voice, 16000)(d), "error",
         "cannot read speech.wav"),
    Case("empty image file (0 bytes)", "image", _bytes("empty.png", lambda d: b""), "error", "empty"),
    # audio
    Case("WAV, 16-bit, 16 kHz mono", "audio", _sf("speech.wav", voice, 16000)),
    Case("WAV, 24-bit, 44.1 kHz stereo", "audio", _ffmpeg_audio("speech24.wav", "-ac", "2", "-c:a", "pcm_s24le",
                                                                   rate=44100)),
    Case("WAV, 32-bit float", "audio", _sf("float.wav", voice, 16000, subtype="FLOAT")),
    Case("WAV, 8-bit unsigned", "audio", _sf("u8.wav", voice, 16000, subtype="PCM_U8")),
    Case("FLAC", "audio", _ffmpeg_audio("speech.flac")),
    Case("OGG Vorbis", "audio", _ffmpeg_audio("speech.ogg", "-c:a", "libvorbis", rate=44100)),
    Case("MP3", "audio", _ffmpeg_audio("speech.mp3", "-c:a", "libmp3lame", rate=44100)),
    Case("M4A / AAC (voice memo)", "audio", _ffmpeg_audio("memo.m4a", "-c:a", "aac", rate=48000)),
    Case("WebM / Opus (browser recording)", "audio", _ffmpeg_audio("speech.webm", "-c:a", "libopus", rate=48000)),
    Case("WebM from a MediaRecorder (no duration in header)", "audio", _piped_webm),
    Case("Ogg Opus (.opus voice note)", "audio", _ffmpeg_audio("note.opus", "-c:a", "libopus", rate=48000)),
    Case("MP4 video with sound", "audio", _ffmpeg_audio("clip.mp4", "-c:v", "libx264", "-c:a", "aac", "-shortest",
                                                         video=True)),
    Case("MOV video with sound", "audio", _ffmpeg_audio("clip.mov", "-c:v", "libx264", "-c:a", "aac", "-shortest",
                                                         video=True)),
    Case("MP3 named .wav", "audio", _ffmpeg_audio("wrong_extension.wav", "-c:a", "libmp3lame", "-f", "mp3")),
    Case("8 kHz (telephone)", "audio", _ffmpeg_audio("phone.wav", rate=8000)),
    Case("96 kHz", "audio", _ffmpeg_audio("studio.wav", rate=96000)),
    Case("stereo, phase-inverted channels", "audio", _sf("inverted.wav", _stereo(voice, lambda: -voice()), 16000)),
    Case("stereo, voice on the left only", "audio", _sf("left.wav", _stereo(voice, lambda: 0 * voice()), 16000)),
    Case("5.1, voice on the centre", "audio", _sf("surround.wav", _surround_centre, 16000)),
    Case("12 channels", "audio", _sf("twelve.wav", _channels(12), 16000)),
    Case("float beyond full scale (peak 4.0)", "audio",
         _sf("loud.wav", lambda: 4 * voice() / np.abs(voice()).max(), 16000, subtype="FLOAT"), "warn", "peaks at 4.00"),
    Case("clipped at full scale (16-bit)", "audio", _sf("clipped.wav", lambda: np.clip(8 * voice(), -1, 1), 16000)),
    Case("NaN samples", "audio", _sf("nan.wav", _nan, 16000, subtype="FLOAT"), "error", "NaN"),
    Case("silent", "audio", _sf("silent.wav", lambda: np.zeros(16000, np.float32), 16000), "warn", "silent",
         app="error"),
    Case("too short (20 ms)", "audio", _sf("blip.wav", lambda: voice()[:320], 16000), "error", "shorter than one"),
    Case("too long (130 s)", "audio", _sf("long.wav", lambda: np.zeros(int(TOO_LONG_SECONDS * 8000), np.float32),
                                          8000), "error", "the limit is"),
    Case("header only, no samples", "audio", _sf("no_samples.wav", lambda: np.zeros(0, np.float32), 16000),
         "error", "no samples"),
    Case("empty audio file (0 bytes)", "audio", _bytes("empty.wav", lambda d: b""), "error", "empty"),
    Case("not audio (random bytes)", "audio", _bytes("noise.wav", lambda d: np.random.default_rng(0).bytes(999)),
         "error", "cannot read noise.wav as audio"),
    Case("image file as the speech", "audio", _pil("portrait.png", portrait()), "error",
         "portrait.png is a picture"),
    Case("video without sound", "audio",
         lambda d: (ff("-f", "lavfi", "-i", "testsrc=s=64x64:r=25:d=1", "-c:v", "libx264", d / "mute.mp4"),
                    d / "mute.mp4")[1], "error", "has no audio track"),
]


def _gif(d: Path) -> Path:
    frames = [Image.fromarray(portrait()), Image.fromarray(255 - portrait())]
    frames[0].save(d / "animated.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return d / "animated.gif"


def _palette(d: Path) -> Path:
    Image.fromarray(_rgba()).convert("P").save(d / "palette.png", transparency=0)
    return d / "palette.png"


def _cmyk(d: Path) -> Path:
    Image.fromarray(portrait()).convert("CMYK").save(d / "cmyk.jpg", quality=95)
    return d / "cmyk.jpg"


def load(case: Case, path: Path):
    if case.kind == "image":
        return image_io.load_image(path), []
    speech = media.load_speech(path, max_seconds=MAX_SECONDS)
    return speech, speech.warnings


@pytest.mark.parametrize("case", CATALOGUE, ids=[c.name for c in CATALOGUE])
def test_catalogue_at_the_loader(case, tmp_path):
    path = case.make(tmp_path)
    if case.expect == "error":
        with pytest.raises(InputError, match=case.match) as e:
            load(case, path)
        assert str(tmp_path) not in str(e.value) and "\n" not in str(e.value)
        return
    out, warnings = load(case, path)
    assert (len(warnings) > 0) == (case.expect == "warn")
    assert all(case.match in w for w in warnings)
    if case.kind == "image":
        assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3
        assert max(out.shape[:2]) <= image_io.MAX_IMAGE_SIDE
    else:
        assert out.whisper.dtype == np.float32 and out.whisper.ndim == 1 and np.all(np.isfinite(out.whisper))
        assert out.samples.ndim == 2 and np.abs(out.samples).max() <= 1.0
        assert abs(len(out.whisper) / media.SAMPLE_RATE - out.seconds) < 0.01


def test_catalogue_is_documented():
    assert len({c.name for c in CATALOGUE}) == len(CATALOGUE), "catalogue names must be unique"
    doc = (Path(__file__).parent.parent / "docs" / "INPUTS.md").read_text()
    rows = [ln for ln in doc.splitlines() if ln.startswith("| ") and not ln.startswith("| Input")]
    assert len(rows) >= 30
    missing = [c.name for c in CATALOGUE if f"| {c.name} |" not in doc]
    assert not missing, f"rows missing from docs/INPUTS.md: {missing}"


# ---------------------------------------------------------------- images
@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_gives_the_upright_picture(orientation, tmp_path):
    jpeg = _oriented(orientation)(tmp_path)
    reference = np.asarray(ImageOps.exif_transpose(Image.open(jpeg)).convert("RGB")).astype(int)
    got = image_io.load_image(jpeg).astype(int)
    assert got.shape == portrait().shape and np.abs(got - reference).max() <= 1  # PIL agrees
    assert np.abs(got - portrait()).mean() < 3  # upright (JPEG loss only)
    png = image_io.load_image(_oriented(orientation, "PNG")(tmp_path))
    assert np.array_equal(png, portrait())


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
@pytest.mark.parametrize("orientation", [1, 3, 6, 7])
def test_16bit_grayscale_keeps_its_values_with_orientation(fmt, orientation, tmp_path):
    got = image_io.load_image(_oriented(orientation, fmt, _gray16)(tmp_path))
    expected = np.round(_gray16() / 65535 * 255).astype(np.uint8)
    assert np.array_equal(got[:, :, 0], expected) and np.array_equal(got[:, :, 0], got[:, :, 2])


def test_alpha_is_composited_on_white_and_huge_is_downscaled(tmp_path):
    rgba = image_io.load_image(_pil("a.png", _rgba)(tmp_path))
    assert (rgba[:10] == 255).all() and np.array_equal(rgba[10:], portrait()[10:])
    huge = image_io.load_image(_pil("h.png", np.zeros((400, 6000, 3), np.uint8))(tmp_path))
    assert huge.shape == (273, 4096, 3)
    first = image_io.load_image(_gif(tmp_path)).astype(int)  # the first frame (the second is the negative)
    assert np.abs(first - portrait()).mean() < 8


def test_messages_name_the_file_never_its_folder(tmp_path):
    for call in (image_io.load_image, media.load_speech, media.audio_duration):
        with pytest.raises(InputError) as e:
            call(tmp_path / "missing.wav")
        assert "missing.wav" in str(e.value) and str(tmp_path) not in str(e.value)


# ---------------------------------------------------------------- audio decoding and duration
def test_ffmpeg_formats_decode_to_the_same_speech(tmp_path):
    ref = media.load_speech(VOICE)
    for make in (_ffmpeg_audio("v.m4a", "-c:a", "aac", rate=44100), _ffmpeg_audio("v.webm", "-c:a", "libopus"),
                 _ffmpeg_audio("v.mov", "-c:v", "libx264", "-c:a", "aac", "-shortest", video=True)):
        s = media.load_speech(make(tmp_path))
        n = min(len(s.whisper), len(ref.whisper))
        level = np.sqrt(np.mean(s.whisper[:n] ** 2) / np.mean(ref.whisper[:n] ** 2))
        assert abs(s.seconds - ref.seconds) < 0.1 and 0.7 < level < 1.4


def test_audio_duration_reads_headers_only(tmp_path):
    webm = _piped_webm(tmp_path)
    assert "Duration: N/A" in media._ffmpeg_info(webm)  # what a browser's recorder produces
    assert abs(media.audio_duration(webm) - 2.536) < 0.05
    assert abs(media.audio_duration(VOICE) - 2.536) < 1e-3


def test_twenty_minute_files_are_refused_before_decoding(tmp_path, monkeypatch):
    wav = tmp_path / "long.wav"
    sf.write(wav, np.zeros(20 * 60 * 8000, np.int16), 8000)
    ff("-i", VOICE, "-c:a", "aac", "-b:a", "24k", tmp_path / "short.m4a")
    ff("-stream_loop", 480, "-i", tmp_path / "short.m4a", "-c", "copy", tmp_path / "long.m4a")  # ~20 min, no encode

    def no_decoding(*a, **k):
        raise AssertionError("decoded an over-long file")

    monkeypatch.setattr(media, "decode_audio", no_decoding)
    for path in (wav, tmp_path / "long.m4a"):
        t0 = time.perf_counter()
        assert 20 <= media.audio_duration(path) / 60 < 21.5
        with pytest.raises(InputError, match="the limit is 120 s"):
            media.load_speech(path, max_seconds=120)
        assert time.perf_counter() - t0 < 1.0


# ---------------------------------------------------------------- downmix, level, original samples
def rms_db(x) -> float:
    return 10 * np.log10(np.mean(np.square(x, dtype=np.float64)))


@pytest.mark.parametrize("mix", ["same", "inverted", "left only", "5.1 centre", "5.1 centre + ambience"])
def test_downmix_keeps_the_voice_level(mix):
    v = voice()
    noise = 0.01 * np.random.default_rng(0).standard_normal((len(v), 6)).astype(np.float32)
    x = {"same": lambda: np.stack([v, v], 1), "inverted": lambda: np.stack([v, -v], 1),
         "left only": lambda: np.stack([v, 0 * v], 1), "5.1 centre": _surround_centre,
         "5.1 centre + ambience": lambda: _surround_centre() + noise}[mix]()
    mono = media.downmix(x)
    assert abs(rms_db(mono) - rms_db(v)) < 1.0  # a naive mean: -inf, -6 dB and -15.6 dB
    assert np.corrcoef(np.abs(mono), np.abs(v))[0, 1] > 0.95


def test_float_beyond_full_scale_is_scaled_not_clipped():
    v = voice()
    s = media.load_speech((16000, 4 * v / np.abs(v).max()))
    assert len(s.warnings) == 1 and "12.0 dB" in s.warnings[0]
    assert np.allclose(s.samples[:, 0], v / np.abs(v).max(), atol=1e-6)  # the shape of the wave is kept
    assert np.abs(s.whisper).max() <= 1.0
    assert media.load_speech((16000, v)).warnings == []


def test_speech_keeps_the_original_rate_and_channels_for_the_video(tmp_path):
    rate = 44100
    left, right = tone(12000, 1.0, rate), tone(440, 1.0, rate)  # 12 kHz: gone from a 16-kHz copy
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], 1), rate)
    s = media.load_speech(path)
    assert (s.sample_rate, s.samples.shape, s.whisper.shape) == (rate, (rate, 2), (16000,))
    out = media.write_mp4(tmp_path / "out.mp4", np.zeros((20, 32, 32, 3), np.uint8), s.samples, s.sample_rate)
    back, back_rate = media.decode_audio(out)
    assert back_rate == rate and back.shape[1] == 2 and abs(len(back) - 0.8 * rate) < 2048  # cut to 20 frames
    spectrum = np.abs(np.fft.rfft(back[4096:4096 + 16384], axis=0))  # (F, 2)
    hz = np.fft.rfftfreq(16384, 1 / rate)[spectrum.argmax(0)]
    assert abs(hz[0] - 12000) < 10 and abs(hz[1] - 440) < 10
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4", "stereo.wav"]


@pytest.mark.parametrize("channels, rate", [(1, 8000), (6, 48000), (12, 22050), (2, 192000), (1, 11000)])
def test_write_mp4_takes_any_channels_and_rate(channels, rate, tmp_path):
    audio = np.repeat(tone(300, 0.5, rate)[:, None], channels, 1)
    out = media.write_mp4(tmp_path / "o.mp4", np.zeros((25, 32, 32, 3), np.uint8), audio, rate)  # padded to 1 s
    back, back_rate = media.decode_audio(out)
    assert media.probe(out) == {"video": "h264", "audio": "aac", "frames": 25}
    assert back.shape[1] == (channels if channels <= 8 else 1) and back_rate in media.AAC_RATES
    assert back_rate >= min(rate, 96000) and abs(len(back) / back_rate - 1.0) < 0.05


@pytest.mark.parametrize("failure", ["ffmpeg error", "interrupt"])
def test_write_mp4_leaves_no_temporary_file(failure, tmp_path, monkeypatch):
    run = subprocess.run
    seen, seen_cmds = [], []

    def broken(cmd, *a, **k):
        seen.append(Path(cmd[-1]))
        seen_cmds.append(cmd)
        if failure == "interrupt":
            raise KeyboardInterrupt
        return run([*cmd[:-1], "-bad-option", cmd[-1]], *a, **k)

    monkeypatch.setattr(media.subprocess, "run", broken)
    with pytest.raises(KeyboardInterrupt if failure == "interrupt" else RuntimeError):
        media.write_mp4(tmp_path / "o.mp4", np.zeros((5, 32, 32, 3), np.uint8), tone(300, 0.2, 16000))
    assert list(tmp_path.iterdir()) == [] and seen and not seen[0].exists()
    raw_audio = [Path(a) for a in seen_cmds[0] if str(a).endswith(".f32")]
    assert raw_audio and not raw_audio[0].parent.exists()  # the audio's temporary folder is gone too


def test_output_path_is_checked_before_any_work(tmp_path):
    with pytest.raises(InputError, match="is a folder"):
        media.check_output_path(tmp_path)
    with pytest.raises(InputError, match="does not exist"):
        media.check_output_path(tmp_path / "nowhere" / "out.mp4")
    assert media.check_output_path(tmp_path / "out.mp4") == tmp_path / "out.mp4"


def test_arrays_from_microphones_and_apis():
    v = voice()
    pcm = (np.stack([v, v], 1) * 32767).astype(np.int16)  # gradio's (rate, int16 (T, C))
    s = media.load_speech((16000, pcm))
    assert s.samples.shape == (len(v), 2) and np.allclose(s.whisper, v, atol=1e-3)
    assert media.load_speech(pcm.T.copy(), 16000).samples.shape == (len(v), 2)  # (C, T) is turned round
    assert np.allclose(media.prepare_audio(v, 16000), v) and np.allclose(media.load_audio(VOICE), v, atol=1e-4)
    with pytest.raises(InputError, match="sample rate"):
        media.load_speech((500, v))


def test_silent_audio_is_rendered_with_a_warning():
    """The app refuses silence (app_support.check_silence); a file or API call renders it and says so."""
    assert any("silent" in w for w in media.load_speech((16000, np.zeros(8000, np.int16))).warnings)
    assert not any("silent" in w for w in media.load_speech((16000, voice())).warnings)


def test_audio_span_cuts_and_pads_to_frames():
    x = np.arange(48000 * 2, dtype=np.float32).reshape(-1, 2)  # 1 s at 48 kHz, stereo
    assert media.audio_span(x, 48000, 0, 5).shape == (9600, 2)
    tail = media.audio_span(x, 48000, 20, 10)  # frames 20..29: 0.4 s, the last 0.2 s past the end
    assert tail.shape == (19200, 2) and tail[0, 0] == x[38400, 0] and not tail[9600:].any()
    odd = np.arange(11111, dtype=np.float32)  # 11111 Hz: frames do not fall on whole samples
    spans = [media.audio_span(odd, 11111, f, 7) for f in range(0, 25, 7)]
    assert np.array_equal(np.concatenate(spans)[: len(odd)], odd)  # consecutive spans tile exactly


def test_stream_peak_is_causal_and_never_clips():
    from pipeline.media_stream import StreamPeak

    level = StreamPeak()
    quiet, loud = tone(300, 0.1, 16000, 0.5), tone(300, 0.1, 16000, 3.0)
    out1, note1 = level(quiet)
    out2, note2 = level(np.stack([loud, loud], 1))
    out3, note3 = level(quiet)
    assert np.array_equal(out1, quiet) and note1 is None  # nothing changes before a loud sample
    assert np.abs(out2).max() <= 1.0 and "turned down" in note2 and note3 is None  # warned once
    assert np.allclose(out3, quiet / 3.0, atol=1e-3)  # the gain holds after the loud part
