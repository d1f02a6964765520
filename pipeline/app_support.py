"""What the Gradio app needs besides widgets: the shared pipeline, request checks, files, figures.

Nothing here imports gradio, and nothing heavy is imported at module load: `import app` stays
light. User errors are raised as `InputError` with a message a visitor understands; the app turns
them into `gr.Error`.
"""
from __future__ import annotations

import math
import os
import re
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .config import FPS, SAMPLE_RATE
from .errors import InputError

SILENCE_PEAK = 1e-4  # a recording whose loudest sample is below this is silence
OUTPUT_MAX_AGE_S = 3600  # per-request output folders older than this are removed


# ---------------------------------------------------------------- the shared pipeline
class PipelineCache:
    """Create the pipeline once, on first use, from any thread; every request shares it."""

    def __init__(self, factory: Callable[[], object]):
        self._factory, self._pipe, self._lock = factory, None, threading.Lock()

    @property
    def loaded(self) -> bool:
        return self._pipe is not None

    def get(self):
        if self._pipe is None:
            with self._lock:
                if self._pipe is None:  # another thread may have built it while we waited
                    self._pipe = self._factory()
        return self._pipe


def pick_device() -> tuple[str, object]:
    """(device, dtype): a GPU in bf16 (fp16 where bf16 is missing), else the CPU as saved (fp32)."""
    import torch

    if torch.cuda.is_available():
        return "cuda", torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return "cpu", None


def has_gpu() -> bool:
    """True on a CUDA machine or a ZeroGPU Space, without importing torch where it is not loaded."""
    if os.environ.get("SPACES_ZERO_GPU"):
        return True
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return torch.cuda.is_available()


def set_cpu_threads(threads: int = 0) -> int:
    """Torch intra-op threads for serving on a CPU; 0: all cores but one.

    The spare core runs the web server and the ffmpeg processes that re-encode every streamed chunk
    while the next clip is generated. Measured here (2 cores, other work running): 2 threads made a
    4-step generation 10-25x slower than 1 thread, because a thread that loses its core stalls
    every small kernel's barrier.
    """
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = threads or max(1, cores - 1)
    torch.set_num_threads(threads)
    return threads


def pretrained_factory(checkpoint) -> Callable[[], object]:
    """A factory that loads a saved pipeline onto the best device (GPU: half precision)."""

    def load():
        from .pipeline import TalkingHeadPipeline

        path = Path(checkpoint)
        if not (path / "pipeline.json").is_file():
            raise InputError(f"No model at {path}: train one or start the app with --checkpoint (see README).")
        device, dtype = pick_device()
        return TalkingHeadPipeline.from_pretrained(path, device=None if device == "cpu" else device, dtype=dtype)

    return load


def warm_up(pipe, examples: list[tuple[str, str]] = (), size: int = 64) -> None:
    """One tiny generation so the first visitor does not pay for lazy loads (Whisper, kernels); then
    the examples' portrait latents and speech codes, which the pipeline keeps for repeated inputs,
    so that a visitor who picks an example sees its first clip after sampling alone."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
    wav = (0.1 * rng.standard_normal(SAMPLE_RATE // 2)).astype(np.float32)
    for _ in pipe.stream(image, wav, num_inference_steps=1, cfg_mode="joint", progress=False):
        pass
    for portrait, speech in examples:
        next(iter(pipe.stream(portrait, speech, num_inference_steps=1, cfg_mode="joint", progress=False)), None)


# ---------------------------------------------------------------- request checks
@dataclass
class Limits:
    """Ranges of the sampling controls; the UI sliders and the request checks both use them."""

    steps: tuple[int, int] = (1, 50)
    alpha: tuple[float, float] = (0.0, 10.0)
    beta: tuple[float, float] = (0.0, 10.0)
    clip_latent_frames: tuple[int, int] = (2, 16)
    shift: tuple[float, float] = (0.1, 10.0)
    max_seconds: tuple[float, float] = (1.0, 120.0)
    rate: tuple[int, int] = (80, 300)
    seed: tuple[int, int] = (0, 2**31 - 1)


def check_number(label: str, value, bounds, integer: bool = False) -> float | int:
    lo, hi = bounds
    try:
        x = float(value)
    except (TypeError, ValueError):
        x = math.nan
    if not math.isfinite(x) or not lo <= x <= hi or (integer and x != int(x)):
        kind = "a whole number" if integer else "a number"
        raise InputError(f"{label} must be {kind} from {lo:g} to {hi:g} (got {value!r}).")
    return int(x) if integer else x


def check_audio(wav: np.ndarray, max_seconds: float) -> float:
    """Reject silence and audio over the limit; return the duration in seconds."""
    seconds = len(wav) / SAMPLE_RATE
    if seconds > max_seconds:
        raise InputError(f"The speech is {seconds:.1f} s long; the limit is {max_seconds:g} s. "
                         "Trim it or raise the maximum duration under Advanced.")
    if len(wav) == 0 or float(np.max(np.abs(wav))) < SILENCE_PEAK:
        raise InputError("The speech is silent. Record or upload audio in which someone speaks.")
    return seconds


def speak_text(text: str | None, voice: str, rate: int) -> np.ndarray:
    """Typed text -> 16-kHz speech with the built-in espeak-ng voice."""
    from .data import tts

    if not text or not text.strip():
        raise InputError("The text box is empty. Type a sentence for the voice to speak.")
    try:
        return tts.speak(text, voice=voice, rate=rate)
    except ValueError as e:  # unknown voice
        raise InputError(f"Cannot speak with voice {voice!r}: {e}") from None


def estimate_gpu_seconds(audio_seconds: float, steps: int, base: float = 20.0, per_step_second: float = 0.25,
                         cap: float = 300.0) -> int:
    """A ZeroGPU time request: model load and warm-up plus a cost linear in audio length x steps."""
    return int(min(cap, base + per_step_second * max(1.0, audio_seconds) * max(1, steps)))


def audio_seconds_of(path) -> float | None:
    """Duration of an audio file from its header (no decoding), or None when it cannot be read."""
    import soundfile as sf

    try:
        return sf.info(str(path)).duration
    except (sf.LibsndfileError, RuntimeError, TypeError, OSError):
        return None


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


def write_chunk(folder: Path, clip) -> Path:
    """One `ClipOutput` -> an H.264 + AAC mp4 of its frames and the audio they span."""
    from .media import write_mp4

    return write_mp4(folder / f"clip_{clip.index:04d}.mp4", clip.frames, clip.audio, clip.sample_rate, clip.fps)


class VideoAssembler:
    """Collect clips as they stream, then write the whole video as one mp4."""

    def __init__(self):
        self.frames: list[np.ndarray] = []
        self.audio: list[np.ndarray] = []

    def add(self, clip) -> None:
        self.frames.append(clip.frames)
        self.audio.append(clip.audio)

    @property
    def seconds(self) -> float:
        return sum(len(f) for f in self.frames) / FPS

    def write(self, path: Path) -> Path:
        from .media import write_mp4

        return write_mp4(path, np.concatenate(self.frames), np.concatenate(self.audio))


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
