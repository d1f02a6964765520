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
from .errors import AudioTooLong, InputError
from .serving import APP_MAX_SECONDS, APP_SETTINGS

OUTPUT_MAX_AGE_S = 3600  # per-request output folders older than this are removed
MAX_REQUEST_DIRS = 32  # and beyond this many, the oldest (a visitor downloads within minutes)
SOURCE_AUDIO, SOURCE_TEXT = "Upload or record", "Type text"
VOICE = "en-us+f2"
VOICES = ["en-us+f1", "en-us+f2", "en-us+f3", "en-us+f4", "en-us+m1", "en-us+m3", "en-us+m5", "en-us+m7"]
RATE = 165  # words per minute

# The app's inputs, in the order of the UI components and of the API endpoints' parameters.
# The API names them so (`steps` is the pipeline's `num_inference_steps`).
UI_FIELDS = ("image", "source", "audio", "text", "voice", "rate", "steps", "cfg_mode", "alpha", "beta", "seed",
             "clip_latent_frames", "shift", "max_seconds", "render", "mode")
UI_DEFAULTS = dict(APP_SETTINGS, steps=APP_SETTINGS["num_inference_steps"], source=SOURCE_AUDIO, text="",
                   voice=VOICE, rate=RATE, seed=0, max_seconds=APP_MAX_SECONDS)
RENDER_CHOICES = {"Auto": "auto", "Diffusion": "diffusion", "Photo": "photo"}  # UI label -> settings value
MODE_CHOICES = {"READ": "read", "REST": "rest"}
UI_LABELS = {"mode": "Mode", "render": "Render", "cfg_mode": "CFG mode", "rate": "Speaking rate", "num_inference_steps": "Steps", "alpha": "α", "beta": "β", "seed": "Seed",
             "clip_latent_frames": "Clip length", "shift": "Schedule shift", "max_seconds": "Maximum duration"}


def file_path(value):
    """A file input as the handler gets it: a path, a gradio file payload (`{"path": ...}`, as
    events with `preprocess=False` deliver uploads), or something else (an array), returned as is."""
    return value.get("path") if isinstance(value, dict) else value


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
        v["image"], v["audio"] = file_path(v["image"]), file_path(v["audio"])
        v["render"] = RENDER_CHOICES.get(v["render"], v["render"])
        v["mode"] = MODE_CHOICES.get(v["mode"], v["mode"])
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



def check_silence(wav: np.ndarray) -> None:
    """Refuse speech whose loudest sample is below `media.SILENCE_PEAK`."""
    from .media import SILENCE_PEAK

    if len(wav) == 0 or float(np.max(np.abs(wav))) < SILENCE_PEAK:
        raise InputError("The speech is silent. Record or upload audio in which someone speaks.")


def load_request_speech(request: GenerationRequest):
    """The request's speech as (`media.Speech`, note or None), text spoken first in its own language
    (the note says lip-sync was learned from English); checked for length and silence."""
    from .media import load_speech
    from .speak import speak_text

    source, note = request.audio, None
    if request.source == SOURCE_TEXT:
        source, choice = speak_text(request.text, request.voice, request.rate)
        note = choice.note
    try:
        speech = load_speech(source, max_seconds=request.max_seconds)
    except AudioTooLong as e:
        raise InputError(f"The speech is {e.seconds:.1f} s long; the limit is {e.limit:g} s. Trim it or raise the "
                         "maximum duration under Advanced.") from None
    check_silence(speech.whisper)
    return speech, note


@dataclass
class Update:
    """One step of a request for the UI: a new chunk's mp4, the whole video's mp4, a status line."""

    chunk: Path | None
    final: Path | None
    status: str
    warnings: tuple[str, ...] = ()


def generate(sample: Callable[..., Iterator], request: GenerationRequest, *, chunks: bool = True,
             progress: Callable[[float, str], None] | None = None, folder: Path | None = None,
             clicked_at: float | None = None) -> Iterator[Update]:
    """Run one request: speech in, `sample(image, speech, seed=..., **settings)` (the pipeline's
    `stream`, or a ZeroGPU-wrapped copy of it) for the chunks, each written as an mp4 into `folder`
    when `chunks`, then the whole video and the figures line. CPU work (speech synthesis, checks,
    encoding) stays outside `sample`. `clicked_at` (time.time() of the visitor's click) makes the
    figures count from the click and name the queue wait."""
    t0, wall0 = time.perf_counter(), time.time()
    report = progress or (lambda f, d: None)
    report(0.01, "Reading the speech")
    speech, note = load_request_speech(request)
    folder, whole = Path(folder or request_dir()), VideoAssembler()
    first_s, n_chunks, steps = None, 0, request.settings["num_inference_steps"]
    report(0.02, "Encoding the portrait and the speech")
    extra = {} if progress is None else {"callback_on_step_end": lambda done, total: report(
        done / total, f"Denoising clip {(done - 1) // steps + 1} of {total // steps} (step {(done - 1) % steps + 1} of {steps})")}
    stream = sample(request.image, speech, seed=request.seed, **request.settings, **extra)
    for chunk in stream:
        first_s = time.perf_counter() - t0 if first_s is None else first_s
        whole.add(chunk)
        n_chunks = chunk.num_chunks
        path = write_chunk(folder, chunk) if chunks else None
        warnings = tuple(chunk.warnings) + ((note,) if note and chunk.index == 0 else ())
        of = f" of {chunk.num_chunks}" if chunk.num_chunks else ""  # REST streams do not know their length
        last = chunk.num_chunks and chunk.index + 1 == chunk.num_chunks
        yield Update(path, None, f"Showing chunk {chunk.index + 1}{of}; "
                     + ("writing the whole video…" if last else "generating the next…"), warnings)
    report(1.0, "Writing the whole video")
    final = whole.write(folder / download_name(request, wall0))
    total = time.perf_counter() - t0
    sampling_s = getattr(stream, "timings", {}).get("dit", total)  # a ZeroGPU generator has no timings
    queued = None if clicked_at is None else max(0.0, wall0 - clicked_at)
    line = timing_line(first_s or total, total, whole.seconds, n_chunks * steps, sampling_s, queued)
    yield Update(None, final, line + (f" · {note}" if note else ""))


def download_name(request: GenerationRequest, when: float) -> str:
    """`<portrait>_<speech or text>_<date-time-ms>.mp4`, from the inputs' file names."""
    def stem(x, default):
        name = Path(str(x)).stem if isinstance(x, (str, Path)) else default
        return re.sub(r"[^A-Za-z0-9_-]+", "-", name)[:40].strip("-") or default

    speech = "text" if request.source == SOURCE_TEXT else stem(request.audio, "speech")
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(when)) + f"-{int(when * 1000) % 1000:03d}"
    return f"{stem(request.image, 'portrait')}_{speech}_{stamp}.mp4"


def stopped_video(folder) -> tuple[Path | None, str]:
    """After Stop: the chunks made so far joined into one playable mp4, and the status line."""
    from .media import concat_mp4

    done = sorted(Path(folder).glob("chunk_*.mp4")) if folder else []
    if not done:
        return None, "Stopped before the first chunk was ready."
    total = int(done[-1].stem.split("_of_")[-1]) if "_of_" in done[-1].stem else 0
    of = f" of {total}" if total else ""
    return concat_mp4(done, Path(folder) / "stopped.mp4"), f"Stopped after chunk {len(done)}{of}."


# ---------------------------------------------------------------- files and figures
def request_dir(root: Path | None = None, keep: int = MAX_REQUEST_DIRS) -> Path:
    """A fresh folder for one request's files. Folders over an hour old go, and beyond the newest
    `keep` the oldest go too, so the outputs of a busy server stay bounded."""
    root = Path(root or Path(tempfile.gettempdir()) / "read-app")
    root.mkdir(parents=True, exist_ok=True)
    now, folders = time.time(), []
    for old in root.iterdir():
        try:
            folders.append((old.stat().st_mtime, old))
        except FileNotFoundError:  # another request removed it first
            continue
    folders.sort()
    for i, (mtime, old) in enumerate(folders):
        if now - mtime > OUTPUT_MAX_AGE_S or i < len(folders) - (keep - 1):
            shutil.rmtree(old, ignore_errors=True)
    return Path(tempfile.mkdtemp(dir=root))


def write_chunk(folder: Path, chunk) -> Path:
    """One `VideoChunk` -> an H.264 + AAC mp4 of its frames and the audio they span."""
    from .media import write_mp4

    name = f"chunk_{chunk.index:04d}_of_{chunk.num_chunks:04d}.mp4"
    return write_mp4(folder / name, chunk.frames, chunk.audio, chunk.sample_rate, chunk.fps)


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


def timing_line(first_clip_s: float, total_s: float, video_s: float, denoise_steps: int, sampling_s: float,
                queued_s: float | None = None) -> str:
    """The figures a visitor sees under the video; with `queued_s`, times count from the click."""
    rtf = total_s / video_s if video_s > 0 else float("nan")
    sps = denoise_steps / sampling_s if sampling_s > 0 else float("nan")
    if queued_s is None:
        head = f"First clip after {first_clip_s:.2f} s"
    else:
        head = (f"First clip {queued_s + first_clip_s:.2f} s after your click (waited {queued_s:.2f} s in the queue, "
                f"then {first_clip_s:.2f} s of work)")
    speed = f" · {sps:.1f} steps/s" if denoise_steps else ""  # REST: chunk steps are not counted here
    return f"{head} · real-time factor {rtf:.2f} ({total_s:.1f} s for {video_s:.1f} s of video){speed}"


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


# ---------------------------------------------------------------- checks as the visitor works
def _read_upload(read: Callable, payload):
    """(read(path), None) for an upload, (None, a warning line) when `read` refuses it, (None, "") for none."""
    path = file_path(payload)
    if not path:
        return None, ""
    try:
        return read(path), None
    except InputError as e:
        return None, f"⚠️ {str(e)[0].upper()}{str(e)[1:]}."


def portrait_note(payload) -> str:
    """A line under the portrait right after upload: what is wrong with it, or its size when it is fine."""
    from .face import prepare_portrait
    from .image import load_image

    rgb, refused = _read_upload(load_image, payload)
    if rgb is None:
        return refused
    _, warnings = prepare_portrait(rgb, (128, 128))
    return "⚠️ " + " ".join(warnings) if warnings else f"Portrait {rgb.shape[1]}×{rgb.shape[0]} ✓"


def audio_note(payload, max_seconds: float) -> str:
    """A line under the audio right after upload or recording: its length, or what is wrong with it."""
    from .media import audio_duration

    seconds, refused = _read_upload(audio_duration, payload)
    if seconds is None:
        return refused
    if seconds > max_seconds:
        return f"⚠️ {seconds:.1f} s of audio: over the {max_seconds:g}-s limit. Trim it or raise the maximum duration."
    return f"{seconds:.1f} s of speech ✓"


def text_note(text: str, rate, max_seconds) -> str:
    """The estimated speaking time of typed text against the limit, and the voice's language."""
    from .speak import choose_voice, estimate_seconds

    if not text or not text.strip():
        return ""
    try:
        language = choose_voice(text).language
    except InputError as e:
        return f"⚠️ {e}"
    seconds, limit = estimate_seconds(text, int(rate or RATE)), float(max_seconds or APP_MAX_SECONDS)
    line = f"≈ {seconds:.0f} s of speech (limit {limit:g} s)"
    if seconds > limit:
        line = f"⚠️ {line}: shorten the text or raise the maximum duration under Advanced"
    if language != "English":
        line += f" · spoken with the {language} voice; lip-sync was learned from English speech"
    return line


def slider_range(name: str) -> tuple[float, float]:
    """The app's slider range of a parameter (a sub-range of what the pipeline accepts)."""
    return LIMITS[name].ui
