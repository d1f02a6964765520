"""Image, audio and video I/O: whatever a user uploads in, browser-playable mp4 out.

Images: any format OpenCV reads (8/16-bit, grayscale, RGBA composited on white, huge ones
downscaled). Audio: soundfile (wav/flac/ogg/mp3), mixed to mono, resampled to 16 kHz with a
polyphase filter. Video: H.264 (yuv420p) + AAC through the ffmpeg binary of imageio-ffmpeg.
"""
from __future__ import annotations

import os
import subprocess
import tempfile
from fractions import Fraction
from pathlib import Path

import numpy as np

from .config import FPS, SAMPLE_RATE
from .errors import InputError

MAX_IMAGE_SIDE = 4096  # huge photos are downscaled before face detection


def _check_file(path, what: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise InputError(f"{what} file not found: {p}")
    if not p.is_file():
        raise InputError(f"{what} path is not a file: {p}")
    if p.stat().st_size == 0:
        raise InputError(f"{what} file is empty (0 bytes): {p}")
    return p


def to_rgb8(img: np.ndarray) -> np.ndarray:
    """Any OpenCV/PIL-style array (gray, BGR/RGB, alpha, 8/16-bit, float) -> RGB uint8 (H, W, 3).

    Arrays from OpenCV are BGR(A); call with the channel order already RGB(A).
    """
    img = np.asarray(img)
    if img.ndim == 2:
        img = img[:, :, None]
    if img.ndim != 3 or img.shape[2] not in (1, 2, 3, 4) or min(img.shape[:2]) < 1:
        raise InputError(f"unsupported image array of shape {img.shape}")
    if img.dtype == np.uint16:
        img = img.astype(np.float32) / 65535.0
    elif img.dtype != np.uint8:
        img = img.astype(np.float32)
        img = img / 255.0 if img.max() > 1.0 else img
    else:
        img = img.astype(np.float32) / 255.0
    color = img[:, :, :3] if img.shape[2] >= 3 else np.repeat(img[:, :, :1], 3, axis=2)
    if img.shape[2] in (2, 4):  # alpha: composite over white, like a browser shows it
        a = img[:, :, -1:]
        color = color * a + (1 - a)
    return np.clip(color * 255 + 0.5, 0, 255).astype(np.uint8)


def load_image(path) -> np.ndarray:
    """Read an image file -> RGB uint8 (H, W, 3)."""
    import cv2

    p = _check_file(path, "image")
    raw = cv2.imdecode(np.fromfile(p, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if raw is None:
        raise InputError(f"cannot read {p.name} as an image (use PNG, JPEG, WebP, BMP or TIFF)")
    if raw.ndim == 3 and raw.shape[2] >= 3:  # BGR(A) -> RGB(A)
        raw = raw[:, :, [2, 1, 0] + ([3] if raw.shape[2] == 4 else [])]
    return limit_size(to_rgb8(raw))


def limit_size(img: np.ndarray, max_side: int = MAX_IMAGE_SIDE) -> np.ndarray:
    import cv2

    h, w = img.shape[:2]
    if max(h, w) <= max_side:
        return img
    s = max_side / max(h, w)
    return cv2.resize(img, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)


def resample(audio: np.ndarray, rate: int, target: int = SAMPLE_RATE) -> np.ndarray:
    """Polyphase resampling (scipy) with an anti-aliasing filter."""
    if rate == target:
        return audio.astype(np.float32)
    from scipy.signal import resample_poly

    r = Fraction(target, rate).limit_denominator(1000)
    return resample_poly(audio, r.numerator, r.denominator).astype(np.float32)


def load_audio(path, target_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Read wav/flac/ogg/mp3 -> mono float32 at `target_rate`."""
    import soundfile as sf

    p = _check_file(path, "audio")
    try:
        data, rate = sf.read(str(p), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as e:
        raise InputError(f"cannot read {p.name} as audio (use WAV, FLAC, OGG or MP3): {e}") from None
    return prepare_audio(data, rate, target_rate)


def prepare_audio(data: np.ndarray, rate: int, target_rate: int = SAMPLE_RATE) -> np.ndarray:
    """(T,) or (T, channels) samples at `rate` -> mono float32 at `target_rate`, validated."""
    data = np.asarray(data)
    if data.dtype.kind == "i":  # e.g. int16 from a microphone component
        data = data.astype(np.float32) / np.iinfo(data.dtype).max
    data = data.astype(np.float32)
    mono = data.mean(axis=1) if data.ndim == 2 else data
    if mono.size == 0:
        raise InputError("the audio has no samples")
    if not np.all(np.isfinite(mono)):
        raise InputError("the audio contains invalid (NaN or infinite) samples")
    if not (1000 <= rate <= 384_000):
        raise InputError(f"unsupported audio sample rate {rate} Hz")
    return resample(mono, rate, target_rate)


def write_wav(path, audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    import soundfile as sf

    sf.write(str(path), np.clip(audio, -1, 1), sample_rate, subtype="PCM_16")


def write_mp4(path, frames: np.ndarray, audio: np.ndarray | None, sample_rate: int = SAMPLE_RATE, fps: int = FPS) -> Path:
    """Frames uint8 (T, H, W, 3) + mono audio -> H.264/AAC mp4, written atomically.

    The file appears only when ffmpeg has succeeded; the audio is cut or padded to the video's length.
    """
    import imageio_ffmpeg

    path = Path(path)
    frames = np.ascontiguousarray(frames, dtype=np.uint8)
    T, H, W, _ = frames.shape
    fd, tmp = tempfile.mkstemp(suffix=".mp4", dir=path.parent if path.parent.exists() else None)
    os.close(fd)
    with tempfile.TemporaryDirectory() as d:
        cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error",
               "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{W}x{H}", "-r", str(fps), "-i", "-"]
        if audio is not None:
            n = round(T / fps * sample_rate)
            a = np.zeros(n, np.float32)
            a[: min(n, len(audio))] = audio[:n]
            write_wav(Path(d) / "a.wav", a, sample_rate)
            cmd += ["-i", str(Path(d) / "a.wav"), "-c:a", "aac", "-b:a", "128k"]
        cmd += ["-c:v", "libx264", "-preset", "veryfast", "-crf", "18", "-pix_fmt", "yuv420p",
                "-movflags", "+faststart", "-f", "mp4", tmp]
        proc = subprocess.run(cmd, input=frames.tobytes(), capture_output=True)
    if proc.returncode != 0:
        Path(tmp).unlink(missing_ok=True)
        raise RuntimeError(f"ffmpeg failed: {proc.stderr.decode(errors='replace')[-500:]}")
    os.replace(tmp, path)
    return path


def probe(path) -> dict:
    """Codec names, frame count and durations of an mp4 (for tests and checks), via ffmpeg."""
    import imageio_ffmpeg

    out = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", str(path), "-map", "0:v:0",
                          "-f", "null", "-"], capture_output=True, text=True).stderr
    info = {"video": "h264" if "Video: h264" in out else None, "audio": "aac" if "Audio: aac" in out else None}
    frames = [ln for ln in out.splitlines() if "frame=" in ln]
    info["frames"] = int(frames[-1].split("frame=")[1].split()[0]) if frames else 0
    return info
