"""What the Gradio app needs besides widgets: the request object, the generation driver, output
files and the figures line.

Nothing here imports gradio, and nothing heavy is imported at module load: `import app` stays
light. User errors are raised as `InputError` with a message a visitor understands; the app turns
them into `gr.Error`.
"""
from __future__ import annotations

import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from .config import FPS, LIMITS, SAMPLE_RATE, check_value
from .errors import InputError
from .serving import APP_MAX_SECONDS, APP_SETTINGS

SILENCE_PEAK = 1e-4  # a recording whose loudest sample is below this is silence
OUTPUT_MAX_AGE_S = 3600  # per-request output folders older than this are removed
SOURCE_AUDIO, SOURCE_TEXT = "Upload or record", "Type text"
VOICE = "en-us+f2"
VOICES = ["en-us+f1", "en-us+f2", "en-us+f3", "en-us+f4", "en-us+m1", "en-us+m3", "en-us+m5", "en-us+m7"]
RATE = 165  # words per minute

# The app's inputs, in the order of the UI components and of the API endpoints' parameters.
# The API names them so (`steps` is the pipeline's `num_inference_steps`).
UI_FIELDS = ("image", "source", "audio", "text", "voice", "rate", "steps", "cfg_mode", "alpha", "beta", "seed",
             "clip_latent_frames", "shift", "max_seconds")
UI_DEFAULTS = dict(APP_SETTINGS, steps=APP_SETTINGS["num_inference_steps"], source=SOURCE_AUDIO, text="",
                   voice=VOICE, rate=RATE, seed=0, max_seconds=APP_MAX_SECONDS)
UI_LABELS = {"cfg_mode": "CFG mode", "rate": "Speaking rate", "num_inference_steps": "Steps", "alpha": "α", "beta": "β", "seed": "Seed",
             "clip_latent_frames": "Clip length", "shift": "Schedule shift", "max_seconds": "Maximum duration"}


@dataclass(frozen=True)
class GenerationRequest:
    """One visitor's request, built once from the UI values (`from_ui`) and checked there."""

    image: object  # a file path (the original upload) or an array
    source: str  # SOURCE_AUDIO or SOURCE_TEXT
    audio: object  # a file path or (sample_rate, samples); None for text
    text: str
    voice: str
    rate: int  # words per minute of the text-to-speech voice
    settings: dict  # sampling settings for `pipeline.stream` (num_inference_steps, cfg_mode, ...)
    seed: int
    max_seconds: float

    @classmethod
    def from_ui(cls, *values, **named) -> "GenerationRequest":
        """Values in `UI_FIELDS` order (or by name). Raises `InputError` naming the first problem;
        the model is not touched."""
        v = dict(zip(UI_FIELDS, values), **named)
        v = {k: (UI_DEFAULTS.get(k) if v.get(k) is None and k not in ("image", "audio") else v.get(k))
             for k in UI_FIELDS}
        v["num_inference_steps"] = v.pop("steps")
        v.update({k: named.get(k) or APP_SETTINGS[k] for k in ("mode", "render")})  # no control of their own yet
        if v["image"] is None:
            raise InputError("No portrait. Upload an image or pick one of the examples.")
        if v["source"] not in (SOURCE_AUDIO, SOURCE_TEXT):
            raise InputError(f"Speech source must be {SOURCE_AUDIO!r} or {SOURCE_TEXT!r}.")
        if v["source"] == SOURCE_AUDIO and v["audio"] is None:
            raise InputError("No speech. Upload or record audio, or choose 'Type text'.")
        if v["source"] == SOURCE_TEXT and not (v["text"] and str(v["text"]).strip()):
            raise InputError("The text box is empty. Type a sentence for the voice to speak.")
        checked = {k: check_value(k, v[k], UI_LABELS.get(k, k.replace("_", " ").capitalize()))
                   for k in ("rate", "seed", "max_seconds", "cfg_mode", *APP_SETTINGS)}
        settings = {k: checked[k] for k in APP_SETTINGS}
        return cls(v["image"], v["source"], v["audio"], str(v["text"] or ""), str(v["voice"]), checked["rate"],
                   settings, checked["seed"], checked["max_seconds"])

    def speech_seconds(self) -> float:
        """Length of the speech from the text or the file header, without decoding (max_seconds if unknown)."""
        if self.source == SOURCE_TEXT:
            return len(self.text.split()) / max(self.rate, 1) * 60
        from .media import audio_duration

        try:
            return audio_duration(self.audio) if isinstance(self.audio, (str, Path)) else self.max_seconds
        except InputError:
            return self.max_seconds


def check_silence(wav: np.ndarray) -> None:
    """Refuse speech whose loudest sample is below `SILENCE_PEAK`."""
    if len(wav) == 0 or float(np.max(np.abs(wav))) < SILENCE_PEAK:
        raise InputError("The speech is silent. Record or upload audio in which someone speaks.")


def speak_text(text: str | None, voice: str, rate: int) -> np.ndarray:
    """Typed text -> 16-kHz speech with the built-in espeak-ng voice."""
    from .data import tts

    if not text or not text.strip():
        raise InputError("The text box is empty. Type a sentence for the voice to speak.")
    try:
        return tts.speak(text, voice=voice, rate=rate)
    except ValueError as e:  # unknown voice
        raise InputError(f"Cannot speak with voice {voice!r}: {e}") from None


def load_request_speech(request: GenerationRequest, max_seconds_default: float | None = None):
    """The request's speech as `media.Speech` (text spoken first), checked for length and silence."""
    from .media import load_speech

    source = (speak_text(request.text, request.voice, request.rate) if request.source == SOURCE_TEXT
              else request.audio)
    try:
        speech = load_speech(source, max_seconds=request.max_seconds)
    except InputError as e:
        if "limit" not in str(e):
            raise
        raise InputError(f"{str(e).split(':')[0].replace('the audio', 'The speech')}. Trim it or raise the maximum "
                         "duration under Advanced.") from None
    check_silence(speech.whisper)
    return speech


@dataclass
class Update:
    """One step of a request for the UI: a new chunk's mp4, the whole video's mp4, a status line."""

    chunk: Path | None
    final: Path | None
    status: str
    warnings: tuple[str, ...] = ()


def generate(sample: Callable[..., Iterator], request: GenerationRequest, *, chunks: bool = True,
             progress: Callable[[float, str], None] = lambda f, d: None) -> Iterator[Update]:
    """Run one request: speech in, `sample(image, speech, seed=..., **settings)` (the pipeline's
    `stream`, or a ZeroGPU-wrapped copy of it) for the chunks, each written as an mp4 when
    `chunks`, then the whole video and the figures line. CPU work (speech synthesis, checks,
    encoding) stays outside `sample`."""
    t0 = time.perf_counter()
    progress(0.01, "Reading the speech")
    speech = load_request_speech(request)
    folder, whole = request_dir(), VideoAssembler()
    first_s, n_clips = None, 0
    progress(0.02, "Encoding the portrait and the speech")
    stream = sample(request.image, speech, seed=request.seed, **request.settings)
    for clip in stream:
        first_s = time.perf_counter() - t0 if first_s is None else first_s
        whole.add(clip)
        n_clips = clip.num_chunks
        progress((clip.index + 1) / max(clip.num_chunks, 1), f"Chunk {clip.index + 1} of {clip.num_chunks}")
        chunk = write_chunk(folder, clip) if chunks else None
        yield Update(chunk, None, f"Generating… chunk {clip.index + 1} of {clip.num_chunks}", tuple(clip.warnings))
    progress(1.0, "Writing the whole video")
    total = time.perf_counter() - t0
    final = whole.write(folder / "talking_head.mp4")
    sampling_s = getattr(stream, "timings", {}).get("dit", total)  # a ZeroGPU generator has no timings
    line = timing_line(first_s or total, total, whole.seconds, n_clips * request.settings["num_inference_steps"],
                       sampling_s)
    yield Update(None, final, line)


# ---------------------------------------------------------------- files and figures
def request_dir(root: Path | None = None) -> Path:
    """A fresh folder for one request's files; folders of requests over an hour old are removed."""
    root = Path(root or Path(tempfile.gettempdir()) / "read-app")
    root.mkdir(parents=True, exist_ok=True)
    now = time.time()
    for old in root.iterdir():
        try:
            if now - old.stat().st_mtime > OUTPUT_MAX_AGE_S:
                shutil.rmtree(old, ignore_errors=True)
        except FileNotFoundError:  # another request removed it first
            pass
    return Path(tempfile.mkdtemp(dir=root))


def write_chunk(folder: Path, chunk) -> Path:
    """One `VideoChunk` -> an H.264 + AAC mp4 of its frames and the audio they span."""
    from .media import write_mp4

    return write_mp4(folder / f"chunk_{chunk.index:04d}.mp4", chunk.frames, chunk.audio, chunk.sample_rate, chunk.fps)


class VideoAssembler:
    """Collect chunks as they stream, then write the whole video as one mp4."""

    def __init__(self):
        self.frames: list[np.ndarray] = []
        self.audio: list[np.ndarray] = []
        self.sample_rate = SAMPLE_RATE

    def add(self, chunk) -> None:
        self.frames.append(chunk.frames)
        self.audio.append(chunk.audio)
        self.sample_rate = chunk.sample_rate

    @property
    def seconds(self) -> float:
        return sum(len(f) for f in self.frames) / FPS

    def write(self, path: Path) -> Path:
        from .media import write_mp4

        return write_mp4(path, np.concatenate(self.frames), np.concatenate(self.audio), self.sample_rate)


def timing_line(first_clip_s: float, total_s: float, video_s: float, denoise_steps: int, sampling_s: float) -> str:
    """The figures a visitor sees under the video."""
    rtf = total_s / video_s if video_s > 0 else float("nan")
    sps = denoise_steps / sampling_s if sampling_s > 0 else float("nan")
    return (f"First clip after {first_clip_s:.2f} s · real-time factor {rtf:.2f} "
            f"({total_s:.1f} s for {video_s:.1f} s of video) · {sps:.1f} steps/s")


def find_examples(folder) -> list[tuple[str, str]]:
    """(portrait, speech) pairs from `portrait_<name>.<ext>` + `speech_<name>.<ext>`; none is fine."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    pick = lambda prefix, exts: {  # noqa: E731
        re.sub(f"^{prefix}_", "", p.stem): p for p in sorted(folder.glob(f"{prefix}_*")) if p.suffix.lower() in exts}
    images = pick("portrait", {".png", ".jpg", ".jpeg", ".webp"})
    speech = pick("speech", {".wav", ".flac", ".mp3", ".ogg"})
    return [(str(images[k]), str(speech[k])) for k in sorted(images) if k in speech]


def slider_range(name: str) -> tuple[float, float]:
    """The app's slider range of a parameter (a sub-range of what the pipeline accepts)."""
    return LIMITS[name].ui
