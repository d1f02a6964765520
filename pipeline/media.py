"""Audio and video I/O: whatever speech a user uploads in, browser-playable mp4 out (images: image.py).

Audio: soundfile,
else the ffmpeg binary of imageio-ffmpeg (AAC, Opus, the audio track of a video); the duration is
read from the header before anything is decoded. `load_speech` keeps the original samples for the
output video and makes the 16-kHz mono copy Whisper needs. Video: H.264 (yuv420p) + AAC.
The catalogue of inputs and what happens to each is docs/INPUTS.md.
"""
from __future__ import annotations

import os
import re
import secrets
import subprocess
import tempfile
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

from .config import FPS, SAMPLE_RATE
from .errors import AudioTooLong, InputError

AUDIO_RATES = (1000, 384_000)  # sample rates accepted at all
SILENCE_PEAK = 1e-4  # audio whose loudest sample is below this is silence
AAC_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000, 64000, 88200, 96000)
AUDIO_FORMATS = "WAV, FLAC, MP3, OGG, M4A/AAC, WebM/Opus, or a video with sound"


def _check_file(path, what: str) -> Path:
    p = Path(path)  # messages name the file only: never a server-side folder
    if not p.exists():
        raise InputError(f"{what} file not found: {p.name}")
    if not p.is_file():
        raise InputError(f"{what} path is not a file: {p.name}")
    if p.stat().st_size == 0:
        raise InputError(f"{what} file is empty (0 bytes): {p.name}")
    return p


def _ffmpeg() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


# ---------------------------------------------------------------- audio: decoding
def _ffmpeg_info(p: Path) -> str:
    """ffmpeg's description of a file (stderr of `ffmpeg -i`): header only, nothing decoded."""
    return subprocess.run([_ffmpeg(), "-nostdin", "-hide_banner", "-i", str(p)], capture_output=True,
                          text=True, errors="replace").stderr


def _no_audio_error(p: Path, info: str) -> InputError:
    if re.search(r"Input #0, (image2|\w+_pipe)", info):
        return InputError(f"{p.name} is a picture, not a sound file: give the speech recording")
    if re.search(r"Stream #\S+.*: (Video|Data|Subtitle)", info):
        return InputError(f"{p.name} has no audio track")
    return InputError(f"cannot read {p.name} as audio (use {AUDIO_FORMATS})")


def audio_duration(path) -> float:
    """Seconds of audio in a file, from its header: soundfile's, else ffmpeg's (no decoding).

    A stream without a duration in its header (a browser's MediaRecorder WebM) is measured by
    reading its packets without decoding them. Raises `InputError` when the file is not audio.
    """
    import soundfile as sf

    p = _check_file(path, "audio")
    try:
        return float(sf.info(str(p)).duration)
    except (sf.LibsndfileError, RuntimeError, TypeError):
        pass
    info = _ffmpeg_info(p)
    if not re.search(r"Stream #\S+.*: Audio", info):
        raise _no_audio_error(p, info)
    seconds = _hms(info, "Duration: ")
    if seconds is None:  # "Duration: N/A": read the packets (stream copy, no decoding)
        out = subprocess.run([_ffmpeg(), "-nostdin", "-hide_banner", "-i", str(p), "-map", "0:a:0", "-c", "copy",
                              "-f", "null", "-"], capture_output=True, text=True, errors="replace").stderr
        seconds = _hms(out, "time=")
    if seconds is None:
        raise InputError(f"cannot tell how long {p.name} is: re-save it as WAV or MP3")
    return seconds


def _hms(text: str, key: str) -> float | None:
    """Seconds of the last `<key>HH:MM:SS.ss` in ffmpeg's output, or None."""
    found = re.findall(re.escape(key) + r"(\d+):(\d\d):(\d\d(?:\.\d+)?)", text)
    return int(found[-1][0]) * 3600 + int(found[-1][1]) * 60 + float(found[-1][2]) if found else None


def _parse_wav_stream(data: bytes) -> tuple[np.ndarray, int]:
    """A float32 WAV written by ffmpeg to a pipe (sizes unknown) -> ((T, C) float32, rate)."""
    pos, channels, rate = 12, 0, 0
    while pos + 8 <= len(data):
        tag, size = data[pos:pos + 4], int.from_bytes(data[pos + 4:pos + 8], "little")
        if tag == b"fmt ":
            channels = int.from_bytes(data[pos + 10:pos + 12], "little")
            rate = int.from_bytes(data[pos + 12:pos + 16], "little")
        elif tag == b"data":
            body = data[pos + 8:]
            body = body[: len(body) // (4 * channels) * 4 * channels] if channels else b""
            return np.frombuffer(body, "<f4").reshape(-1, max(channels, 1)).copy(), rate
        pos += 8 + size + (size & 1)
    raise ValueError("no data chunk")


def _decode_ffmpeg(p: Path, max_seconds: float | None) -> tuple[np.ndarray, int]:
    cmd = [_ffmpeg(), "-nostdin", "-hide_banner", "-loglevel", "error", "-i", str(p), "-map", "0:a:0", "-vn"]
    if max_seconds:  # a header that lies cannot make us decode more than the limit allows
        cmd += ["-t", f"{max_seconds + 1:.3f}"]
    proc = subprocess.run(cmd + ["-f", "wav", "-c:a", "pcm_f32le", "-"], capture_output=True)
    try:
        data, rate = _parse_wav_stream(proc.stdout)
    except ValueError:
        raise _no_audio_error(p, _ffmpeg_info(p)) from None
    return data, rate


def decode_audio(path, max_seconds: float | None = None) -> tuple[np.ndarray, int]:
    """Any audio file ffmpeg or soundfile reads -> (samples (T, C) float32, sample rate), unmodified."""
    import soundfile as sf

    p = _check_file(path, "audio")
    try:
        info = sf.info(str(p))
        frames = -1 if not max_seconds else int((max_seconds + 1) * info.samplerate)
        data, rate = sf.read(str(p), dtype="float32", always_2d=True, frames=frames)
    except (sf.LibsndfileError, RuntimeError, TypeError):
        data, rate = _decode_ffmpeg(p, max_seconds)
    return data, int(rate)


# ---------------------------------------------------------------- audio: mixing and the Speech object
# ITU-R BS.775 stereo downmix (Lo = L + 0.707 C + 0.707 Ls, ...) summed to mono and scaled so the
# centre has unit weight; LFE carries no speech. Channel order FL FR FC LFE BL BR (SL SR).
ITU_WEIGHTS = {6: (0.707, 0.707, 1.0, 0.0, 0.5, 0.5), 8: (0.707, 0.707, 1.0, 0.0, 0.5, 0.5, 0.5, 0.5)}


def downmix_gains(gram: np.ndarray) -> np.ndarray:
    """Gains (C,) of the mono mix `x @ gains`, from the channels' mean products `gram` (C, C) =
    x.T @ x / T (a stream passes its running mean: `media_stream.StreamDownmix`).
    1. Weights: 5.1 and 7.1 use `ITU_WEIGHTS` (LFE dropped); other layouts weigh channels equally.
    2. Polarity: a channel anti-correlated with the loudest one is inverted, so copies never cancel.
    3. Level: the mix is scaled to the loudest channel's RMS (a voice on one channel of many keeps
       its level); a mix still over 20 dB below that channel gives way to that channel alone."""
    gram = np.asarray(gram, np.float64)
    c = len(gram)
    w = np.asarray(ITU_WEIGHTS.get(c, (1.0,) * c), np.float64)
    rms = np.sqrt(np.maximum(np.diag(gram), 0)) * (w > 0)  # (C,)
    ref = int(np.argmax(rms))
    if rms[ref] == 0:
        return np.zeros(c, np.float32)
    v = w * np.where(gram[:, ref] < 0, -1.0, 1.0)  # (C,)
    level = float(np.sqrt(max(v @ gram @ v, 0.0)))
    if level < 0.1 * rms[ref]:
        return np.eye(c, dtype=np.float32)[ref]
    return (v * rms[ref] / level).astype(np.float32)


def downmix(samples: np.ndarray) -> np.ndarray:
    """(T, C) -> (T,) mono that cannot cancel a voice (for Whisper; the video keeps all channels);
    the rule is `downmix_gains`'."""
    x = np.asarray(samples, np.float32)
    if x.ndim == 1 or x.shape[1] == 1:
        return x.reshape(len(x)).copy()
    return x @ downmix_gains(x.T.astype(np.float64) @ x / max(len(x), 1))


def resample(audio: np.ndarray, rate: int, target: int = SAMPLE_RATE) -> np.ndarray:
    """Polyphase resampling (scipy) with an anti-aliasing filter, along the first axis."""
    if rate == target:
        return np.asarray(audio, np.float32)
    from scipy.signal import resample_poly

    r = Fraction(target, rate).limit_denominator(1000)
    return resample_poly(audio, r.numerator, r.denominator, axis=0).astype(np.float32)


@dataclass
class Speech:
    """One speech input: the original samples for the output video, a 16-kHz mono copy for Whisper."""

    samples: np.ndarray  # (T, C) float32 at `sample_rate`, within [-1, 1] (peak-normalised if it was not)
    sample_rate: int
    whisper: np.ndarray  # (T16,) float32 at 16 kHz, mono (`downmix`)
    warnings: list[str] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return len(self.samples) / self.sample_rate


def _as_float(data) -> np.ndarray:
    """Samples of any dtype -> (T, C) float32; 2-D arrays are (samples, channels)."""
    data = np.asarray(data)
    if data.dtype.kind == "i":  # e.g. int16 from a microphone component
        data = data.astype(np.float32) / np.iinfo(data.dtype).max
    elif data.dtype.kind == "u":  # 8-bit PCM is unsigned around 128
        mid = (np.iinfo(data.dtype).max + 1) / 2
        data = (data.astype(np.float32) - mid) / mid
    elif data.dtype.kind not in "fb":
        raise InputError(f"audio samples of type {data.dtype} are not numbers")
    data = data.astype(np.float32)
    if data.ndim == 1:
        data = data[:, None]
    if data.ndim != 2:
        raise InputError(f"audio array of shape {data.shape}: expected (samples,) or (samples, channels)")
    if data.shape[1] > data.shape[0]:  # (channels, samples): more channels than samples is never audio
        data = data.T
    return np.ascontiguousarray(data)


def make_speech(data, rate: int, max_seconds: float | None = None, min_seconds: float = 1 / FPS) -> Speech:
    """Samples (T,) or (T, C) at `rate` -> validated `Speech` (see `load_speech`)."""
    x = _as_float(data)
    rate = check_sample_rate(rate)
    if x.size == 0:
        raise InputError("the audio has no samples")
    seconds = len(x) / rate
    if seconds < min_seconds:
        raise InputError(f"the audio is {seconds * 1000:.0f} ms long: shorter than one video frame (40 ms)")
    if max_seconds is not None and seconds > max_seconds:
        raise AudioTooLong(seconds, max_seconds)
    if not np.all(np.isfinite(x)):
        raise InputError("the audio contains invalid (NaN or infinite) samples")
    warnings = []
    peak = float(np.max(np.abs(x)))
    if peak < SILENCE_PEAK:  # the app refuses it (app_support.check_silence); a file is still rendered
        warnings.append("The audio is silent: the portrait will not speak.")
    if peak > 1.0:  # float audio beyond full scale: scale it down, never clip it
        x = x / np.float32(peak)
        warnings.append(f"The audio peaks at {peak:.2f}, above full scale: it was turned down by "
                        f"{20 * np.log10(peak):.1f} dB instead of being clipped.")
    mono = resample(downmix(x), rate, SAMPLE_RATE)
    top = float(np.max(np.abs(mono))) if mono.size else 0.0
    if top > 1.0:  # the downmix's level match can exceed full scale: quietly fit it
        mono /= np.float32(top)
    return Speech(x, rate, mono, warnings)


def check_duration(path, max_seconds: float) -> float:
    """The file's duration from its header (nothing decoded); raises `AudioTooLong` over `max_seconds`
    (+ 50 ms for containers whose header rounds up)."""
    seconds = audio_duration(path)
    if seconds > max_seconds + 0.05:
        raise AudioTooLong(seconds, max_seconds)
    return seconds


def load_speech(source, sample_rate: int | None = None, max_seconds: float | None = None,
                min_seconds: float = 1 / FPS) -> Speech:
    """A path, a (sample_rate, samples) tuple, or samples at `sample_rate` (default 16 kHz) -> `Speech`.

    For a file, the duration is read from the header first and an over-long file is refused
    before anything is decoded. User errors raise `InputError` with one clear message.
    """
    if source is None:
        raise InputError("no speech audio was given")
    if isinstance(source, (str, os.PathLike)):
        p = _check_file(source, "audio")
        if max_seconds is not None:
            check_duration(p, max_seconds)
        data, rate = decode_audio(p, max_seconds)
    elif isinstance(source, tuple):
        rate, data = source
    else:
        data, rate = source, sample_rate or SAMPLE_RATE
    return make_speech(data, rate, max_seconds, min_seconds)


def load_audio(path, target_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Any audio file -> mono float32 at `target_rate` (the `Speech.whisper` copy)."""
    return resample(load_speech(path, min_seconds=0).whisper, SAMPLE_RATE, target_rate)


def prepare_audio(data: np.ndarray, rate: int, target_rate: int = SAMPLE_RATE) -> np.ndarray:
    """(T,) or (T, channels) samples at `rate` -> mono float32 at `target_rate`, validated."""
    return resample(make_speech(data, rate, min_seconds=0).whisper, SAMPLE_RATE, target_rate)


def audio_span(samples: np.ndarray, sample_rate: int, first_frame: int, num_frames: int, fps: int = FPS) -> np.ndarray:
    """The samples video frames [first_frame, first_frame + num_frames) span, zero-padded past the end:
    `[first_frame * sample_rate // fps, (first_frame + num_frames) * sample_rate // fps)`, so that
    consecutive spans tile the samples exactly at any rate."""
    a, b = first_frame * sample_rate // fps, (first_frame + num_frames) * sample_rate // fps
    x = np.asarray(samples, np.float32)
    out = np.zeros((b - a,) + x.shape[1:], np.float32)
    part = x[a:b]
    out[: len(part)] = part
    return out


# ---------------------------------------------------------------- output
def write_wav(path, audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    import soundfile as sf

    sf.write(str(path), np.clip(audio, -1, 1), sample_rate, subtype="PCM_16")


def check_output_path(path) -> Path:
    """Refuse an output path that cannot be written, before any work is done."""
    p = Path(path)
    if p.is_dir():
        raise InputError(f"the output {p.name or str(p)} is a folder: name a file, e.g. {p.name or 'out'}/out.mp4")
    if not p.parent.is_dir():
        raise InputError(f"the output folder {p.parent.name} does not exist")
    if not os.access(p.parent, os.W_OK):
        raise InputError(f"the output folder {p.parent.name} is not writable")
    return p


def temp_file_beside(path: Path) -> str:
    """A new, empty, hidden file named uniquely in `path`'s folder, created as any file the user writes
    is (0666 less the umask; `tempfile.mkstemp` would make it 0600), so renaming it onto `path` when
    it is complete publishes it with normal permissions. Returns its path."""
    for _ in range(100):
        name = path.parent / f".{path.stem}-{secrets.token_hex(4)}{path.suffix}"
        try:
            os.close(os.open(name, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            return str(name)
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name beside {path.name}")


def check_sample_rate(rate) -> int:
    """`rate` as an int; raises `InputError` unless it is a whole number of Hz in `AUDIO_RATES`."""
    if isinstance(rate, bool) or not isinstance(rate, (int, np.integer, float, np.floating)) or int(rate) != rate \
            or not AUDIO_RATES[0] <= rate <= AUDIO_RATES[1]:
        raise InputError(f"unsupported audio sample rate {rate} Hz: use a whole number of Hz between "
                         f"{AUDIO_RATES[0]} and {AUDIO_RATES[1]}")
    return int(rate)


def write_mp4(path, frames: np.ndarray, audio: np.ndarray | None, sample_rate: int = SAMPLE_RATE,
              fps: int = FPS) -> Path:
    """Frames uint8 (T, H, W, 3) + audio (T_a,) or (T_a, C) at any rate -> H.264/AAC mp4, atomically.

    The audio keeps its channels (more than 8 are `downmix`ed to mono) and its rate (a rate AAC
    lacks becomes the next AAC rate up); it is cut or zero-padded to the video's length. The file
    appears only when ffmpeg has succeeded; no temporary file is left on any exit (Ctrl-C included).
    """
    path = check_output_path(path)
    frames = np.ascontiguousarray(frames, dtype=np.uint8)
    T, H, W, _ = frames.shape
    tmp = temp_file_beside(path)
    try:
        with tempfile.TemporaryDirectory() as d:
            cmd = [_ffmpeg(), "-nostdin", "-y", "-loglevel", "error",
                   "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{W}x{H}", "-r", str(fps), "-i", "-"]
            if audio is not None:
                a = audio_span(_as_float(audio), sample_rate, 0, T, fps)  # (n, C)
                a = np.clip(a if a.shape[1] <= 8 else downmix(a)[:, None], -1, 1)  # AAC: at most 8 channels
                raw = Path(d) / "audio.f32"
                a.tofile(raw)
                rate = next((r for r in AAC_RATES if r >= sample_rate), AAC_RATES[-1])
                cmd += ["-f", "f32le", "-ar", str(sample_rate), "-ac", str(a.shape[1]), "-i", str(raw),
                        "-c:a", "aac", "-b:a", f"{96 if a.shape[1] == 1 else 64 * a.shape[1]}k", "-ar", str(rate)]
            cmd += ["-c:v", "libx264", "-preset", "veryfast", "-crf", "18", "-pix_fmt", "yuv420p",
                    "-movflags", "+faststart", "-f", "mp4", tmp]
            proc = subprocess.run(cmd, input=frames.tobytes(), capture_output=True)
        if proc.returncode != 0:
            raise RuntimeError(f"ffmpeg failed: {proc.stderr.decode(errors='replace')[-500:]}")
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


def concat_mp4(parts: list, path) -> Path:
    """Join mp4 files of the same codecs into one (ffmpeg's concat demuxer, no re-encoding), atomically."""
    path = Path(path)
    tmp = temp_file_beside(path)
    listing = path.with_suffix(".txt")
    try:
        listing.write_text("".join(f"file '{Path(p).resolve()}'\n" for p in parts))
        cmd = [_ffmpeg(), "-y", "-loglevel", "error", "-f", "concat", "-safe", "0", "-i", str(listing),
               "-c", "copy", "-movflags", "+faststart", tmp]
        proc = subprocess.run(cmd, capture_output=True)
        if proc.returncode != 0:
            raise RuntimeError(f"ffmpeg could not join the chunks: {proc.stderr.decode(errors='replace')[-300:]}")
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
        listing.unlink(missing_ok=True)
    return path


def probe(path) -> dict:
    """Codec names, frame count and durations of an mp4 (for tests and checks), via ffmpeg."""
    out = subprocess.run([_ffmpeg(), "-hide_banner", "-i", str(path), "-map", "0:v:0",
                          "-f", "null", "-"], capture_output=True, text=True).stderr
    info = {"video": "h264" if "Video: h264" in out else None, "audio": "aac" if "Audio: aac" in out else None}
    frames = [ln for ln in out.splitlines() if "frame=" in ln]
    info["frames"] = int(frames[-1].split("frame=")[1].split()[0]) if frames else 0
    return info
