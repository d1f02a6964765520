"""The Live tab's core (no gradio here): microphone blocks in, short video segments out, and the figures.

A browser's microphone reaches the server as a `.stream` event, one call per block of ~0.25-0.5 s
(`feed`: it only queues the block with its arrival time, so it never holds the event up). A second
event, a generator (`LiveSession.segments`), owns the REST session (`pipe.open_stream`): it pushes
the queued blocks, writes each group of newly final frames as a short H.264 + AAC mp4 and yields it
for `gr.Video(streaming=True)`, which re-muxes the segments to MPEG-TS and serves them as HLS.
Sessions are keyed by the browser session (`LiveRegistry`), so the two events find each other.
"""
from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from .config import FPS
from .errors import InputError

IDLE_TIMEOUT_S = 30.0  # no microphone audio for this long ends a session
POLL_S = 0.05  # how often a waiting session looks at its queue and its stop flag
# The REST student at 2 steps scored as well as at 4 (docs/STREAMING.md, Distillation) and halves the DiT's share.
LIVE_NUM_INFERENCE_STEPS = 2
MAX_PENDING = 200  # microphone blocks kept for a session no generator has claimed yet (~50-100 s)


@dataclass
class Segment:
    """One streamed piece: its mp4, the frames it holds and the figures line after it."""

    path: Path
    first_frame: int  # index of its first frame in the session's video
    num_frames: int
    latency_s: list[float]  # per frame whose audio had arrived: seconds from that audio's arrival to this segment
    status: str


@dataclass
class Figures:
    """What the figures line reports: audio in, frames out, and mic-to-sent latencies (seconds)."""

    audio_s: float = 0.0
    frames: int = 0
    latencies: list[float] = field(default_factory=list)
    span_s: float = 0.0  # wall time from the first block's arrival to the last one's end

    def line(self, state: str) -> str:
        lat = np.asarray(self.latencies[-2000:])  # the recent ones (bounded)
        head = f"{state} · {self.audio_s:.1f} s of speech in, {self.frames} frames out ({self.frames / FPS:.1f} s)"
        if self.span_s > 2 and self.audio_s < 0.9 * self.span_s:  # a microphone streams without pause
            head += (f" · ⚠️ only {100 * self.audio_s / self.span_s:.0f} % of the microphone's audio reached the "
                     "server (too busy: Gradio drops blocks it cannot take in time)")
        if not lat.size:
            return head
        return (f"{head} · microphone block received → its frames sent: median {np.median(lat):.2f} s, "
                f"last {lat[-1]:.2f} s · the browser's HLS player adds its buffering on top (docs/STREAMING.md)")


class LiveSession:
    """One visitor's live stream. `feed` (any thread) queues microphone blocks; `finish` ends the
    audio (the rest is generated); `cancel` stops at once; `segments` (one thread) runs the generation."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock, self.blocks = clock, queue.Queue()  # (sample_rate, samples, arrival) or None at the end
        self.cancelled, self.ended = threading.Event(), threading.Event()
        self.started = False  # a `segments` loop has claimed it
        self.last_segment: Path | None = None  # the newest segment's mp4
        self.figures = Figures()
        self.timing = dict(push_s=0.0, write_s=0.0, segments=0)  # where a session's time went (seconds)
        self._lock = threading.Lock()  # the arrivals: appended by the worker, read by the consumer
        self._arrivals: list[tuple[int, float]] = []  # (samples received up to here, arrival time), pruned
        self._received, self._rate, self._first_arrival = 0, None, None

    @property
    def finished(self) -> bool:
        return self.ended.is_set() or self.cancelled.is_set()

    def feed(self, sample_rate: int, samples) -> None:
        """A microphone block (T,) or (T, C) int16 or float at `sample_rate`; ignored once finished, and
        beyond `MAX_PENDING` blocks while no generator has claimed the session (memory stays bounded)."""
        if self.finished or samples is None or not len(samples):
            return
        if self.started or self.blocks.qsize() < MAX_PENDING:
            self.blocks.put((int(sample_rate), np.asarray(samples), self.clock()))

    def finish(self) -> None:
        """The microphone stopped: generate what its audio still owes, then end."""
        self.blocks.put(None)

    def cancel(self) -> None:
        """Stop now (the Stop button): nothing more is generated."""
        self.cancelled.set()
        self.blocks.put(None)

    def _take(self, idle_s: float) -> tuple[list, bool]:
        """The queued blocks (waiting for at least one), and whether the audio has ended."""
        waited, items = 0.0, []
        while not items and not self.cancelled.is_set():
            try:
                items.append(self.blocks.get(timeout=POLL_S))
            except queue.Empty:
                waited += POLL_S
                if waited >= idle_s:
                    raise InputError(f"No microphone audio for {idle_s:.0f} s: the live session ended. "
                                     "Press record to start again.") from None
        while True:
            try:
                items.append(self.blocks.get_nowait())
            except queue.Empty:
                break
        end = self.cancelled.is_set() or any(i is None for i in items)
        return [i for i in items[: items.index(None) if None in items else len(items)]], end

    def _push(self, live, items) -> list:
        chunks = []
        for rate, samples, arrival in items:
            if self.cancelled.is_set():  # Stop: leave the backlog
                break
            if self._rate not in (None, rate):
                raise InputError(f"The microphone's sample rate changed ({self._rate} → {rate} Hz): start again.")
            with self._lock:
                self._rate, self._received = rate, self._received + len(samples)
                self._arrivals.append((self._received, arrival))
                if self._first_arrival is None:  # when the first block began, by its length
                    self._first_arrival = arrival - len(samples) / rate
            self.figures.audio_s = self._received / rate
            self.figures.span_s = arrival - self._first_arrival
            chunks += live.push_audio(samples, rate)
        return chunks

    def _latencies(self, first: int, count: int, sent: float) -> list[float]:
        """Seconds from the arrival of each frame's last audio sample to `sent` (frames whose audio
        had not all arrived, i.e. the silence the end is padded with, are left out)."""
        out = []
        for f in range(first, first + count):
            need = (f + 1) * (self._rate or 1) // FPS
            arrival = next((t for n, t in self._arrivals if n >= need), None)
            if arrival is not None:
                out.append(sent - arrival)
        keep = next((i for i, (n, _) in enumerate(self._arrivals) if n >= (first + count) * (self._rate or 1) // FPS), None)
        self._arrivals = self._arrivals[keep or 0 :] if keep is not None else self._arrivals[-1:]
        return out

    def _generate(self, live, idle_s: float) -> None:
        """The worker thread: microphone blocks -> chunks on `self.chunks`, then None (errors kept)."""
        try:
            end = False
            while not end and not self.cancelled.is_set():
                items, end = self._take(idle_s)
                t0 = self.clock()
                chunks = self._push(live, items)
                chunks += live.close() if end and not self.cancelled.is_set() else []
                self.timing["push_s"] += self.clock() - t0
                for c in chunks:
                    self.chunks.put(c)
        except Exception as e:  # noqa: BLE001 - handed to the consumer, which raises it
            self.error = e
        finally:
            self.chunks.put(None)

    def _ready(self) -> tuple[list, bool]:
        """The chunks generated so far (waiting for one), and whether the worker has finished."""
        items = [self.chunks.get()]
        while True:
            try:
                items.append(self.chunks.get_nowait())
            except queue.Empty:
                break
        return [c for c in items if c is not None], None in items

    def segments(self, open_stream: Callable[[], object], folder: Path, idle_s: float = IDLE_TIMEOUT_S) -> Iterator[Segment]:
        """Run the session: `open_stream()` (a `rest.LiveStream`), then a worker thread pushes the
        microphone's blocks as they come while this generator writes all the chunks ready so far as one
        segment and yields it (a slow consumer gets fewer, longer segments; generation never waits for
        it), until `finish`, `cancel` or `idle_s` without audio. Raises `InputError` (one message for
        the visitor) for a bad portrait or audio; a bug in the worker is raised here as it was."""
        from .media import write_mp4

        self.started, self.chunks, self.error, worker = True, queue.Queue(), None, None
        try:
            worker = threading.Thread(target=self._generate, args=(open_stream(), idle_s), daemon=True)
            worker.start()
            done = False
            while not done:
                chunks, done = self._ready()
                if chunks and not self.cancelled.is_set():
                    yield self._segment(chunks, Path(folder), write_mp4)
            if self.error is not None:
                raise self.error
        finally:
            if worker is not None and worker.is_alive():  # closed early (the page went away): stop the worker
                self.cancel()
            self.ended.set()

    def _segment(self, chunks: list, folder: Path, write_mp4) -> Segment:
        t1 = self.clock()
        first, frames = chunks[0].start_frame, np.concatenate([c.frames for c in chunks])
        path = write_mp4(folder / f"live_{first:07d}.mp4", frames, np.concatenate([c.audio for c in chunks]),
                         chunks[0].sample_rate)
        sent, self.last_segment = self.clock(), path
        with self._lock:
            lat = self._latencies(first, len(frames), sent)
        self.figures.frames += len(frames)
        self.figures.latencies = (self.figures.latencies + lat)[-2000:]
        self.timing.update(write_s=self.timing["write_s"] + sent - t1, segments=self.timing["segments"] + 1)
        return Segment(path, first, len(frames), lat, self.figures.line("Live"))


class LiveRegistry:
    """The live sessions by browser session, so the microphone's event and the video's generator meet."""

    def __init__(self):
        self._sessions: dict[str, LiveSession] = {}
        self._lock = threading.Lock()

    def for_audio(self, key: str) -> LiveSession | None:
        """The session microphone blocks go to: the current one, a new one if it has ended (the next
        recording's first blocks can come before its generator), none after Stop (the browser may
        still be recording: its blocks are dropped until the next recording starts)."""
        with self._lock:
            s = self._sessions.get(key)
            if s is not None and s.cancelled.is_set():
                return None
            if s is None or s.finished:
                s = self._sessions[key] = LiveSession()
            return s

    def for_video(self, key: str) -> LiveSession:
        """The session a new generator runs: one audio already waits in, else a new one (an older
        running one is cancelled: one live stream per browser tab)."""
        with self._lock:
            s = self._sessions.get(key)
            if s is None or s.finished or s.started:
                if s is not None:
                    s.cancel()
                s = self._sessions[key] = LiveSession()
            return s

    def get(self, key: str) -> LiveSession | None:
        """The session filed under `key` (running, ended or stopped), or None."""
        with self._lock:
            return self._sessions.get(key)

    def close(self, key: str) -> None:
        """The browser session went away: cancel its live session and forget it."""
        with self._lock:
            s = self._sessions.pop(key, None)
        if s is not None:
            s.cancel()


def open_live(pipe, image):
    """The pipeline's live session for `image`: with a REST student, at `LIVE_NUM_INFERENCE_STEPS`."""
    steps = LIVE_NUM_INFERENCE_STEPS if getattr(pipe, "student", None) is not None else None
    return pipe.open_stream(image, seed=0, num_inference_steps=steps)


def run(registry: LiveRegistry, key: str, get_pipe: Callable[[], object], image, folder: Path | None = None,
        idle_s: float = IDLE_TIMEOUT_S) -> Iterator[tuple[str | None, str]]:
    """The Live tab's generator: (new segment's mp4 path or None, figures line), from "Listening" to
    "Ended" (the microphone stopped) or "Stopped" (Stop). `get_pipe()` gives the shared pipeline.
    Every failure is raised as one `InputError` for the visitor (a bug is logged with its traceback).
    A Stopped session stays filed (its microphone's late blocks are dropped) until the next recording."""
    import logging

    from .app_support import request_dir

    if image is None:
        raise InputError("No portrait. Upload one or pick an example, then press record.")
    session = registry.for_video(key)
    try:
        yield None, "Listening… speak into the microphone."
        for seg in session.segments(lambda: open_live(get_pipe(), image), folder or request_dir(), idle_s):
            yield str(seg.path), seg.status
        yield None, session.figures.line("Stopped" if session.cancelled.is_set() else "Ended")
    except InputError:
        raise
    except Exception as e:  # a bug: the visitor gets one line, the log the traceback, the server goes on
        logging.getLogger(__name__).exception("live session failed")
        raise InputError(f"The live session stopped on an internal error ({type(e).__name__}). "
                         "Press record to start again.") from e
    finally:
        session.ended.set()
