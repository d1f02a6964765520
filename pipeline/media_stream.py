"""Audio and video as streams (REST): a file read in blocks, never whole; an mp4 written as frames come.

`audio_blocks` reads what soundfile reads (WAV, FLAC, OGG, MP3) with `soundfile.blocks`, anything
else through imageio-ffmpeg's binary decoding to a pipe. `StreamDownmix` is `media.downmix`'s rule on
the running channel statistics. `Mp4Writer` feeds one ffmpeg process (video on stdin, audio on a
second pipe) and renames its temporary file only when ffmpeg has finished: a failed or interrupted
run leaves no file. Memory stays flat however long the stream is.
"""
from __future__ import annotations

import os
import queue
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Iterator

import numpy as np

from .config import FPS
from .errors import InputError
from .media import AAC_RATES, temp_file_beside, _check_file, _ffmpeg, _no_audio_error, _ffmpeg_info, audio_duration, \
    check_output_path, downmix, downmix_gains

BLOCK_SECONDS = 0.64  # one REST chunk of audio per block


def check_stream_file(path) -> float:
    """A speech file's duration in seconds from its header (nothing decoded), for a stream of any
    length. Raises `InputError` for a missing, empty or non-audio file or one shorter than a frame."""
    seconds = audio_duration(path)
    if seconds < 1 / FPS:
        raise InputError(f"the audio is {seconds * 1000:.0f} ms long: shorter than one video frame (40 ms)")
    return seconds


def audio_blocks(path, block_seconds: float = BLOCK_SECONDS) -> Iterator[tuple[np.ndarray, int]]:
    """A file as blocks of (samples (T, C) float32, sample rate), in order, ~`block_seconds` each.
    At most one block is in memory. Raises `InputError` when the file cannot be read as audio."""
    import soundfile as sf

    p = _check_file(path, "audio")
    try:
        rate = sf.info(str(p)).samplerate
    except (sf.LibsndfileError, RuntimeError, TypeError):
        yield from _ffmpeg_blocks(p, block_seconds)
        return
    for block in sf.blocks(str(p), blocksize=max(1, int(rate * block_seconds)), dtype="float32", always_2d=True):
        yield block, int(rate)


def _read_exactly(stream, n: int) -> bytes:
    data = b""
    while len(data) < n:
        part = stream.read(n - len(data))
        if not part:
            break
        data += part
    return data


def _wav_header(stream) -> tuple[int, int]:
    """(channels, rate) from the head of a float32 WAV on a pipe, read up to its data chunk."""
    if _read_exactly(stream, 12)[:4] != b"RIFF":
        raise ValueError("not a WAV stream")
    channels = rate = 0
    while True:
        head = _read_exactly(stream, 8)
        if len(head) < 8:
            raise ValueError("no data chunk")
        tag, size = head[:4], int.from_bytes(head[4:], "little")
        if tag == b"data":
            return channels, rate
        body = _read_exactly(stream, size + (size & 1))
        if tag == b"fmt ":
            channels, rate = int.from_bytes(body[2:4], "little"), int.from_bytes(body[4:8], "little")


def _ffmpeg_blocks(p: Path, block_seconds: float) -> Iterator[tuple[np.ndarray, int]]:
    """Blocks decoded by ffmpeg to a float32 WAV on a pipe (AAC, Opus, a video's sound track, ...)."""
    cmd = [_ffmpeg(), "-nostdin", "-hide_banner", "-loglevel", "error", "-i", str(p), "-map", "0:a:0", "-vn",
           "-f", "wav", "-c:a", "pcm_f32le", "-"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        try:
            channels, rate = _wav_header(proc.stdout)
        except ValueError:
            raise _no_audio_error(p, _ffmpeg_info(p)) from None
        size = 4 * channels * max(1, int(rate * block_seconds))
        while data := _read_exactly(proc.stdout, size):
            data = data[: len(data) // (4 * channels) * 4 * channels]
            yield np.frombuffer(data, "<f4").reshape(-1, channels).copy(), rate
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()


def float_block(samples) -> np.ndarray:
    """A block (T,) or (T, C) of float or integer PCM -> float32 of the same shape in [-1, 1] for PCM.
    Never transposes (a block may have fewer samples than channels). Raises `InputError` for
    samples that are not numbers, NaN or infinite."""
    x = np.asarray(samples)
    if x.dtype.kind == "i":
        x = x.astype(np.float32) / np.iinfo(x.dtype).max
    elif x.dtype.kind == "u":
        mid = (np.iinfo(x.dtype).max + 1) / 2
        x = (x.astype(np.float32) - mid) / mid
    elif x.dtype.kind not in "fb":
        raise InputError(f"audio samples of type {x.dtype} are not numbers")
    x = x.astype(np.float32)
    if x.ndim not in (1, 2):
        raise InputError(f"an audio block of shape {x.shape}: expected (samples,) or (samples, channels)")
    if not np.all(np.isfinite(x)):
        raise InputError("the audio contains invalid (NaN or infinite) samples")
    return x


class StreamPeak:
    """Causal level control for audio that arrives in chunks (REST): divides by the running peak.

    The gain stays 1 until a sample beyond full scale arrives; from that sample on, every sample is
    divided by the largest magnitude seen so far, so nothing is ever clipped and nothing waits for
    the future. Returns the chunk and, the first time the gain drops, a warning.
    """

    def __init__(self):
        self.peak = 1.0

    def __call__(self, chunk: np.ndarray) -> tuple[np.ndarray, str | None]:
        x = np.asarray(chunk, np.float32)
        mag = np.abs(x).reshape(len(x), -1).max(axis=1) if x.size else np.zeros(0, np.float32)  # (T,)
        running = np.maximum.accumulate(np.maximum(mag, self.peak))  # (T,)
        first = self.peak == 1.0 and running.size and running[-1] > 1.0
        self.peak = float(running[-1]) if running.size else self.peak
        out = x / running.reshape((-1,) + (1,) * (x.ndim - 1)) if x.size else x
        note = (f"The audio went above full scale (peak {self.peak:.2f}): it is being turned down "
                "instead of clipped.") if first else None
        return out.astype(np.float32), note


class StreamDownmix:
    """`media.downmix` for a stream: each block (T, C) -> (T,) mono with `media.downmix_gains` of the
    channels' running mean products (all blocks so far), so a voice on one channel or phase-inverted
    copies are handled as for a whole file. Mono passes through unchanged."""

    def __init__(self):
        self.gram, self.count = None, 0  # sum of x.T @ x (C, C), samples seen

    def __call__(self, block: np.ndarray) -> np.ndarray:
        x = np.asarray(block, np.float32)
        if x.ndim == 1 or x.shape[1] == 1:
            return x.reshape(len(x))
        g = x.T.astype(np.float64) @ x
        self.gram = g if self.gram is None else self.gram + g
        self.count += len(x)
        return x @ downmix_gains(self.gram / max(self.count, 1))


class Mp4Writer:
    """Frames and their audio in, chunk by chunk; an H.264 (yuv420p) + AAC mp4 out, like `media.write_mp4`.

    `write(frames (T, H, W, 3) uint8, audio (n,) or (n, C) float at `sample_rate`)`; `close()` (or leaving
    a `with` block normally) finishes and moves the temporary file (same folder) onto `path`; `abort()`
    (or leaving a `with` block by an exception) removes it. One ffmpeg process runs for the whole video:
    memory stays flat.
    """

    def __init__(self, path, sample_rate: int, fps: int = FPS):
        self.path, self.rate, self.fps = check_output_path(path), int(sample_rate), fps
        self.proc, self.tmp, self.frames, self.closed = None, None, 0, False
        self._audio: queue.Queue | None = None
        self._feeder: threading.Thread | None = None
        self._errors: list[BaseException] = []

    def _start(self, height: int, width: int, channels: int) -> None:
        self.tmp = temp_file_beside(self.path)
        read_end, write_end = os.pipe()
        aac_rate = next((r for r in AAC_RATES if r >= self.rate), AAC_RATES[-1])
        cmd = [_ffmpeg(), "-nostdin", "-y", "-loglevel", "error",
               "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-r", str(self.fps), "-i", "pipe:0",
               "-f", "f32le", "-ar", str(self.rate), "-ac", str(channels), "-i", f"pipe:{read_end}",
               "-map", "0:v:0", "-map", "1:a:0", "-c:a", "aac", "-b:a", f"{96 if channels == 1 else 64 * channels}k",
               "-ar", str(aac_rate), "-c:v", "libx264", "-preset", "veryfast", "-crf", "18", "-pix_fmt", "yuv420p",
               "-movflags", "+faststart", "-f", "mp4", self.tmp]
        self._log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=self._log, pass_fds=(read_end,))
        os.close(read_end)
        self._audio = queue.Queue(maxsize=64)  # bounded: a stalled ffmpeg blocks the writer, not memory
        self._feeder = threading.Thread(target=self._feed, args=(os.fdopen(write_end, "wb"),), daemon=True)
        self._feeder.start()

    def _feed(self, pipe) -> None:
        """The audio pipe's writer (a thread: ffmpeg reads both inputs at its own pace)."""
        with pipe:
            while (data := self._audio.get()) is not None:
                try:
                    pipe.write(data)
                except (BrokenPipeError, OSError) as e:
                    self._errors.append(e)
                    return

    def write(self, frames: np.ndarray, audio: np.ndarray) -> None:
        """Append frames and exactly their audio (cut or zero-padded to len(frames) * rate / fps)."""
        frames = np.ascontiguousarray(frames, dtype=np.uint8)
        a = np.asarray(audio, np.float32)
        a = a[:, None] if a.ndim == 1 else (a if a.shape[1] <= 8 else downmix(a)[:, None])  # AAC: <= 8 channels
        if self.proc is None:
            self._start(frames.shape[1], frames.shape[2], a.shape[1])
        n = (self.frames + len(frames)) * self.rate // self.fps - self.frames * self.rate // self.fps
        out = np.zeros((n, a.shape[1]), np.float32)
        out[: min(n, len(a))] = a[:n]
        self._audio.put(np.clip(out, -1, 1).tobytes())
        try:
            self.proc.stdin.write(frames.tobytes())
        except BrokenPipeError:
            raise RuntimeError(f"ffmpeg failed: {self._stderr()}") from None
        self.frames += len(frames)

    def _stderr(self) -> str:
        self._log.seek(0)
        return self._log.read().decode(errors="replace")[-500:]

    def close(self) -> Path:
        """Finish the file and move it onto `path`. Raises RuntimeError (no file left) if ffmpeg failed
        or no frame was written."""
        if self.closed:
            return self.path
        if self.proc is None:
            raise RuntimeError("no frames were written")
        try:
            self._audio.put(None)
            self.proc.stdin.close()
            self._feeder.join()
            if self.proc.wait() != 0 or self._errors:
                raise RuntimeError(f"ffmpeg failed: {self._stderr()}")
            os.replace(self.tmp, self.path)
            self.closed = True
        finally:
            self.abort()
        return self.path

    def abort(self) -> None:
        """Stop ffmpeg and remove the temporary file (nothing appears at `path`)."""
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()
            if self.proc.stdin and not self.proc.stdin.closed:
                try:
                    self.proc.stdin.close()
                except BrokenPipeError:
                    pass
            if self._feeder.is_alive():  # unblock it: ffmpeg is gone, so its writes fail at once
                try:
                    self._audio.put_nowait(None)
                except queue.Full:
                    pass
                self._feeder.join(timeout=5)
            self._log.close()
        if self.tmp:
            Path(self.tmp).unlink(missing_ok=True)

    def __enter__(self) -> "Mp4Writer":
        return self

    def __exit__(self, kind, value, tb) -> None:
        if kind is not None:
            self.abort()
        elif not self.closed:  # a `with` block left normally finishes the file, as `open` does
            self.close()
