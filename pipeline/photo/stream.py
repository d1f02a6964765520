"""Photo mode in the pipeline's streams: which portraits take it, and driver chunks -> photo chunks.

`TalkingHeadPipeline.stream` and `open_stream` ask `choose_renderer` per portrait; on the photo path
READ or REST animates `driver_portrait()` and every driver chunk goes through a `ChunkWarp`. A file's
stream generates the driver one chunk ahead on a worker thread while the photo is warped
(`warp_stream`); a live stream warps each chunk as `push_audio` returns it (`PhotoLive`).
"""
from __future__ import annotations

import dataclasses
import time

import numpy as np

from ..ahead import run_ahead
from ..errors import InputError
from .motion import driver_portrait

__all__ = ["PHOTO_SIZE", "ChunkWarp", "PhotoLive", "choose_renderer", "driver_portrait", "warp_stream"]

PHOTO_SIZE = 256  # output side, pixels (256-512; 256 keeps the warp within real time on a CPU)


def choose_renderer(rgb: np.ndarray, render: str, size: int = PHOTO_SIZE):
    """(PhotoRenderer or None, notes) for a loaded portrait `rgb` (H, W, 3) uint8 and `render` in
    {"auto", "diffusion", "photo"}: photo mode for a real photo (`render="auto"`, decided by
    `is_photo`, never by the VAE) or when asked for; a photo without a usable face (none, several,
    profile, tiny) falls back to the diffusion render with one note saying why (no exception)."""
    if render == "diffusion":
        return None, []
    from . import PhotoRenderer, is_photo

    if render == "auto" and not is_photo(rgb):
        return None, []
    try:
        return PhotoRenderer(rgb, size=size), []
    except InputError as e:
        return None, [f"Photo mode: {e} The portrait is rendered by the diffusion model instead."]


class ChunkWarp:
    """A driver chunk (frames (T, 128, 128, 3) uint8) -> the same chunk with the photo's frames
    (T, size, size, 3): per frame, the motion reader's mouth, blink and head parameters warp the photo;
    the audio and indices are kept. Chunks must come in order (the reader's blink schedule and head
    smoothing continue from chunk to chunk). Seconds spent are added to `timings["photo"]`."""

    def __init__(self, renderer, reader, timings: dict | None = None):
        self.renderer, self.reader, self.timings = renderer, reader, timings if timings is not None else {}

    def __call__(self, chunk):
        t0 = time.perf_counter()
        frames = self.renderer.render(self.reader.read(chunk.frames, start_frame=chunk.start_frame))
        self.timings["photo"] = self.timings.get("photo", 0.0) + time.perf_counter() - t0
        return dataclasses.replace(chunk, frames=frames)


def warp_stream(chunks, warp: ChunkWarp):
    """Driver chunks -> the photo's, the driver generated one chunk ahead on a worker thread while this
    thread warps (`ahead.run_ahead`): the two cores of a CPU Space share the work, the first chunk
    comes no later than in turn, and the frames are the same as in turn (tested)."""
    yield from map(warp, run_ahead(chunks))


class PhotoLive:
    """A live REST session on the driver whose chunks come out as the photo's: the same
    `push_audio(samples, sample_rate)` / `close()` as `rest.LiveStream`, each chunk warped in turn."""

    def __init__(self, live, warp: ChunkWarp):
        self.live, self.warp = live, warp

    def push_audio(self, samples, sample_rate: int) -> list:
        return [self.warp(c) for c in self.live.push_audio(samples, sample_rate)]

    def close(self) -> list:
        return [self.warp(c) for c in self.live.close()]
