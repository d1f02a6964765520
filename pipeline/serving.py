"""Serving concerns shared by the app, the CLI and the benchmark: the default checkpoint, the app's
default settings, the one shared pipeline, device and dtype choice, CPU threads, ZeroGPU detection
and time requests, and the warm-up. Nothing here imports gradio or loads a model at import.
"""
from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Callable

import numpy as np

from .config import SAMPLE_RATE
from .errors import InputError

DEFAULT_CHECKPOINT = Path(__file__).resolve().parent.parent / "assets" / "model"
EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "assets" / "examples"

# The app's sampling defaults. Cheaper than the paper's (8 steps, Split CFG, alpha 2, beta 6) so that
# the demo keeps up with real time on a CPU; retune them for each trained model (docs/RESULTS.md:
# the paper's Split alpha 2 beta 6 over-guides the shipped model; Joint alpha 1.5 balances lip-sync
# and seams; beta, Split's audio guidance, is 1.5: beta 6 falls to lip-sync 0.44 and identity 8.5 dB on
# the fidelity model, docs/TRAINING.md §17). `resolve_settings(config.sampling, **APP_SETTINGS)`.
APP_SETTINGS = dict(num_inference_steps=4, cfg_mode="joint", alpha=1.5, beta=1.5, shift=1.0, clip_latent_frames=5,
                    mode="read", render="auto")
APP_MAX_SECONDS = 30.0  # the app's default length limit (the model's own is PipelineConfig.max_seconds)

# ZeroGPU time requests. No GPU was measured for this project yet (docs/DEPLOY.md): these are
# conservative figures, far above the CPU's (a 10-s clip at 4 steps takes ~4.5 s on 2 CPU cores).
GPU_BASE_S = 10.0  # moving the model to the GPU, Whisper, VAE encode/decode of one request
GPU_PER_STEP_SECOND_S = 0.05  # DiT seconds per denoising step per second of video
GPU_MAX_S = 120.0  # ZeroGPU's documented per-call default for a free visitor is 60 s; keep the cap low


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


def truthy_env(name: str) -> bool:
    """An environment flag parsed the way the `spaces` package parses its own: 1, t or true."""
    return os.environ.get(name, "").strip().lower() in ("1", "t", "true")


def on_zero_gpu() -> bool:
    """True on a ZeroGPU Space (`SPACES_ZERO_GPU`, parsed as `spaces` parses it)."""
    return truthy_env("SPACES_ZERO_GPU")


def native_bf16(capability: tuple[int, int]) -> bool:
    """bf16 runs natively from compute capability 8.0 (Ampere); `torch.cuda.is_bf16_supported()`
    also says yes where it is only emulated (e.g. a T4, 7.5), which is slow."""
    return tuple(capability) >= (8, 0)


def pick_device() -> tuple[str, object]:
    """(device, dtype): a GPU in bf16 where it is native, fp16 elsewhere; else the CPU as saved (fp32)."""
    import torch

    if torch.cuda.is_available():
        return "cuda", torch.bfloat16 if native_bf16(torch.cuda.get_device_capability()) else torch.float16
    return "cpu", None


def has_gpu() -> bool:
    """True on a CUDA machine or a ZeroGPU Space, without importing torch where it is not loaded."""
    if on_zero_gpu():
        return True
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return torch.cuda.is_available()


def set_cpu_threads(threads: int = 0) -> int:
    """Torch intra-op threads for serving on a CPU; 0: all cores but one.

    The spare core runs the web server and the ffmpeg processes that re-encode every streamed chunk
    while the next clip is generated (docs/DEPLOY.md has the measurement).
    """
    import torch

    from .ahead import cpu_cores

    threads = threads or max(1, cpu_cores() - 1)
    torch.set_num_threads(threads)
    return threads


def pretrained_factory(checkpoint) -> Callable[[], object]:
    """A factory that loads a saved pipeline onto the best device (GPU: half precision)."""

    def load():
        from .pipeline import TalkingHeadPipeline

        path = Path(checkpoint)
        if not (path / "pipeline.json").is_file():
            raise InputError("No model found: train one or start the app with --checkpoint (see README).")
        device, dtype = pick_device()
        return TalkingHeadPipeline.from_pretrained(path, device=None if device == "cpu" else device, dtype=dtype)

    return load


def estimate_gpu_seconds(audio_seconds: float, steps: int) -> int:
    """A ZeroGPU time request (s): a fixed part plus a cost linear in video seconds x steps, capped."""
    return int(min(GPU_MAX_S, GPU_BASE_S + GPU_PER_STEP_SECOND_S * max(1.0, audio_seconds) * max(1, steps)))


def warm_up(pipe, examples: list[tuple[str, str]] = (), size: int = 64) -> None:
    """One tiny generation so the first visitor does not pay for lazy loads (Whisper, kernels); then
    the examples' portrait latents and speech codes, which the pipeline keeps for repeated inputs,
    so that a visitor who picks an example sees its first clip after sampling alone."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
    wav = (0.1 * rng.standard_normal(SAMPLE_RATE // 2)).astype(np.float32)
    fast = dict(num_inference_steps=1, cfg_mode="joint", progress=False)
    for _ in pipe.stream(image, wav, **fast):
        pass
    for portrait, speech in examples:
        next(iter(pipe.stream(portrait, speech, **fast)), None)
