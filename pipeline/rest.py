"""A REST session: speech blocks in, video frames out, chunk after chunk, at constant cost and memory.

Three streams in a row, each with bounded state:
`speech_stream.SpeechStream` (audio -> SpeechAE codes of one chunk, once its audio + look-ahead is in)
-> `streaming.ChunkStreamer` (codes -> the chunk's latents under the ID-Context cache)
-> `vae.StreamingDecoder` (latents -> frames; it holds back frames its non-causal decoder has not
seen the future of, and its latents are trimmed here to what its next decode reads).
When torch leaves a CPU core free (`ahead.spare_core`) the decoder runs on a worker thread of its own,
one chunk behind the DiT, as READ's clips do: the same frames, in the same order, sooner.
The pipeline wraps this in `open_stream` / `stream(mode="rest")`; this module knows no files, no UI.
"""
from __future__ import annotations

import ctypes
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from . import vae as vae_lib
from .ahead import spare_core
from .config import FPS, SAMPLE_RATE
from .media import check_sample_rate
from .media_stream import StreamDownmix, StreamPeak, float_block
from .scheduler import inference_timesteps
from .speech_stream import SpeechStream
from .streaming import ChunkLayout, ChunkStreamer


@dataclass(frozen=True)
class RestSettings:
    """REST's own sizes (docs/STREAMING.md gives the reasons); sampling comes from `SamplingConfig`."""

    chunk_frames: int = 2  # latent frames per chunk: 16 video frames, 0.64 s
    context_frames: int = 2  # clean latent frames in the Context-Cache
    window_s: float = 4.0  # Whisper's rolling window
    lookahead_s: float = 0.16  # audio after a chunk's last feature before it is encoded
    holdback: int = 15  # video frames the decoder holds back (vae.StreamingDecoder)


@dataclass
class FrameChunk:
    """Newly final frames and the caller's audio for exactly them: samples
    [start_frame * rate // 25, (start_frame + T) * rate // 25) at the rate pushed (zeros past the end)."""

    start_frame: int  # index of frames[0] in the whole video
    frames: np.ndarray  # (T, H, W, 3) uint8
    audio: np.ndarray  # (n,) or (n, channels) float32
    sample_rate: int


class AudioSpans:
    """The caller's samples (any rate, any channels) kept only until the frames they span are out."""

    def __init__(self):
        self.buf, self.start, self.rate = None, 0, None  # start: absolute sample index of buf[0]

    def push(self, samples, rate: int) -> None:
        x = float_block(samples)
        self.rate = self.rate or int(rate)
        self.buf = x if self.buf is None else np.concatenate([self.buf, x])

    def take(self, first_frame: int, num_frames: int) -> np.ndarray:
        """Samples of frames [first_frame, first_frame + num_frames), zero-padded; earlier ones are dropped."""
        a, b = (first_frame * self.rate // FPS, (first_frame + num_frames) * self.rate // FPS) if self.rate else (0, 0)
        shape = () if self.buf is None else self.buf.shape[1:]
        out = np.zeros((b - a,) + shape, np.float32)
        part = self.buf[a - self.start : b - self.start] if self.buf is not None else out[:0]
        out[: len(part)] = part
        if self.buf is not None:
            self.buf, self.start = self.buf[b - self.start :], b
        return out


def release_free_heap() -> None:
    """Hand freed heap pages back to the OS (glibc's malloc_trim; a no-op elsewhere). The log-mel front
    end and Whisper allocate short-lived buffers of changing sizes per chunk; without this the heap
    fragments and RSS crept ~0.15 MB per chunk over a 5-minute stream (docs/STREAMING.md)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class RestSession:
    """`push_audio(samples, sample_rate)` -> newly final `FrameChunk`s; `close()` -> the rest, the
    video trimmed to round(duration x 25) frames like READ. z_ref (1, C, 1, h, w) normalised.

    sampling: any object with num_inference_steps, cfg_mode, alpha, beta, shift (`SamplingConfig`).
    overlap_decode: decode on a worker thread while the DiT samples the next chunk (None: when
        `ahead.spare_core()`). Frames are bit-identical either way; with the overlap a chunk's frames
        come out of the `push_audio` call after the one that sampled it (or of `close`).
    refiner: the pipeline's `refiner.FrameRefiner` after the decoder (None: the decoder's frames).
    """

    def __init__(self, dit, speech_ae, vae, whisper_encoder, feature_extractor, speech_cfg, z_ref, sampling,
                 settings: RestSettings = RestSettings(), generator: torch.Generator | None = None,
                 overlap_decode: bool | None = None, refiner=None):
        s = settings
        layout = ChunkLayout(s.chunk_frames, s.context_frames)
        self.speech = SpeechStream(whisper_encoder, feature_extractor, speech_ae, speech_cfg, group=s.chunk_frames,
                                   window_s=s.window_s, lookahead_s=s.lookahead_s)
        self.streamer = ChunkStreamer(dit, z_ref, inference_timesteps(sampling.num_inference_steps, sampling.shift),
                                      layout=layout, cfg_mode=sampling.cfg_mode, alpha=sampling.alpha,
                                      beta=sampling.beta, generator=generator)
        self.decoder = vae_lib.StreamingDecoder(vae, holdback=s.holdback, first_holdback=min(8, s.holdback),
                                                refiner=refiner)
        self.frames_out = 0
        self.audio = AudioSpans()
        self.level, self.mix = StreamPeak(), StreamDownmix()  # READ's peak rule and downmix, causally
        self.notes: list[str] = []  # warnings not yet handed out (`LiveStream` puts them on the next chunk)
        self.closed = False
        self.overlap_decode = spare_core() if overlap_decode is None else bool(overlap_decode)
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="rest-decode") if self.overlap_decode else None
        self._pending: deque[Future] = deque()  # decodes submitted to the worker, oldest first

    def _latents_to_frames(self, code_groups, final: bool) -> list[FrameChunk]:
        out = self._collect(wait=False)
        for i, codes in enumerate(code_groups):
            z = self.streamer.push(codes)  # (1, C, c, h, w)
            if self.streamer.index % 8 == 0:
                release_free_heap()
            last = final and i == len(code_groups) - 1
            if self._worker is None:
                out += [self._chunk(f) for f in self._decode(z, last)]
            else:
                self._pending.append(self._worker.submit(self._decode, z, last))
                out += self._collect(wait=False)
        return out + (self._collect(wait=True) if final else [])

    def _decode(self, z: torch.Tensor, final: bool) -> list[np.ndarray]:
        """Latents (1, C, c, h, w) -> the frames they make final, (T, H, W, 3) uint8 (none or one array)."""
        with torch.no_grad():
            pixels = self.decoder.push(z, final=final)
            self.decoder.trim()
        return [vae_lib.to_uint8(pixels)] if pixels is not None and pixels.shape[2] > 0 else []

    def _collect(self, wait: bool) -> list[FrameChunk]:
        """Chunks of the worker's finished decodes, in order (all of them, waiting, if `wait`)."""
        out = []
        while self._pending and (wait or self._pending[0].done()):
            out += [self._chunk(f) for f in self._pending.popleft().result()]
        return out

    def _chunk(self, frames: np.ndarray) -> FrameChunk:
        chunk = FrameChunk(self.frames_out, frames, self.audio.take(self.frames_out, len(frames)),
                           self.audio.rate or SAMPLE_RATE)
        self.frames_out += len(frames)
        return chunk

    @torch.no_grad()
    def push_audio(self, samples, sample_rate: int) -> list[FrameChunk]:
        """A block (T,) or (T, C) at `sample_rate` (int or float PCM). Audio beyond full scale is turned
        down from then on (`media_stream.StreamPeak`, with a note); channels are mixed for Whisper by
        `media.downmix`'s rule; the video keeps them. Raises `InputError` for invalid samples or a
        sample rate outside `media.AUDIO_RATES`, ValueError for a rate that changes, RuntimeError once closed."""
        if self.closed:
            raise RuntimeError("this stream is closed")
        sample_rate = check_sample_rate(sample_rate)
        x, note = self.level(float_block(samples))
        self.notes += [note] if note else []
        codes = self.speech.push(self.mix(x), sample_rate)  # checks the rate
        self.audio.push(x, sample_rate)
        return self._latents_to_frames(codes, final=False)

    @torch.no_grad()
    def close(self) -> list[FrameChunk]:
        """End of the audio: the remaining chunks (silence-padded), cut at the audio's last frame."""
        if self.closed:
            return []
        self.closed = True
        groups = self.speech.flush()
        chunks = self._latents_to_frames(groups, final=True)  # waits for the worker's decodes
        if not groups and self.decoder.latents is not None:  # everything was generated: release the hold-back
            chunks += [self._chunk(f) for f in self._decode(self.decoder.latents[:, :, :0], final=True)]
        if self._worker is not None:
            self._worker.shutdown()
        total, out = max(1, self.speech.num_frames), []
        for c in chunks:
            keep = max(0, min(len(c.frames), total - c.start_frame))
            if keep:
                n = (c.start_frame + keep) * c.sample_rate // FPS - c.start_frame * c.sample_rate // FPS
                out.append(FrameChunk(c.start_frame, c.frames[:keep], c.audio[:n], c.sample_rate))
        return out


class LiveStream:
    """What `TalkingHeadPipeline.open_stream` returns: `push_audio(samples, sample_rate)` gives the
    chunks that are final, `close()` the rest, each built by `make_chunk(index, num_chunks, frames,
    audio, start_frame, sample_rate, warnings=...)` (the pipeline's `VideoChunk`; num_chunks is 0:
    a live stream's length is not known). The first chunk carries `warnings`; a warning raised later
    (audio beyond full scale) rides on the next chunk out."""

    def __init__(self, session: RestSession, make_chunk, warnings=()):
        self.session, self.make_chunk, self._warnings, self._index = session, make_chunk, list(warnings), 0

    def _wrap(self, chunks: list[FrameChunk]) -> list:
        out, self._warnings = [], self._warnings + self.session.notes
        self.session.notes = []
        for c in chunks:
            out.append(self.make_chunk(self._index, 0, c.frames, c.audio, c.start_frame, c.sample_rate,
                                       warnings=self._warnings))
            self._warnings, self._index = [], self._index + 1
        return out

    def push_audio(self, samples, sample_rate: int) -> list:
        """A block (T,) or (T, channels), float or integer PCM, at one rate for the whole stream."""
        return self._wrap(self.session.push_audio(samples, sample_rate))

    def close(self) -> list:
        """End of the speech: the remaining chunks; the video has round(duration x 25) frames."""
        return self._wrap(self.session.close())
