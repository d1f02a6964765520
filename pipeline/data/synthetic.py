"""Synthetic talking-face clips: the data the default model is trained on.

A clip = a procedural portrait (``faces``) speaking random English sentences with espeak-ng
(``tts``); the mouth follows the phonemes (``visemes``), not the loudness. Blinks, head sway and
nods, and brow raises are random motion the audio does not decide. Everything is drawn from the
clip seed, split into independent streams (identity / speech / motion), so ``render_portrait(s)``
shows the same person as ``render_clip(s, ...)`` and changing the length keeps the identity.

CLI::

    python -m pipeline.data.synthetic --out DIR --clips N --seconds S --seed K [--size 128]
        [--workers W] [--preview]

writes ``DIR/clip_{i:05d}/{frames.npz, audio.wav, gt.npz, meta.json[, preview.mp4]}`` and
``DIR/index.json``. Clip i uses ``clip_seed(seed, i)``, so clips do not depend on N.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass, field

import numpy as np

from . import faces, tts, visemes

from ..config import FPS, SAMPLE_RATE  # noqa: E402


@dataclass
class SyntheticClip:
    """One rendered clip: frames (T, H, W, 3) uint8 RGB, float32 audio, ground truth, metadata."""

    frames: np.ndarray
    audio: np.ndarray
    sample_rate: int = SAMPLE_RATE
    gt: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)


def clip_seed(seed: int, index: int) -> int:
    """Seed of clip ``index`` of a dataset made with ``seed`` (independent of the clip count)."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def _streams(seed: int):
    """Independent generators for identity, speech and motion."""
    return [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3)]


def _smooth_noise(rng, t, amplitude, freqs=(0.15, 0.6)):
    """Sum of 3 random slow sinusoids, normalised to peak ``amplitude`` at most."""
    f = rng.uniform(*freqs, 3)
    ph = rng.uniform(0, 2 * np.pi, 3)
    w = rng.uniform(0.5, 1.0, 3)
    return amplitude * (w[:, None] * np.sin(2 * np.pi * f[:, None] * t + ph[:, None])).sum(0) / w.sum()


def _events(rng, duration, gap):
    """Random event start times with gaps drawn uniformly from ``gap`` (seconds)."""
    starts, t = [], rng.uniform(0.3, gap[1])
    while t < duration:
        starts.append(t)
        t += rng.uniform(*gap)
    return starts


def sample_motion(rng: np.random.Generator, num_frames: int, size: int) -> dict[str, np.ndarray]:
    """Blinks (every 2-6 s, ~150 ms), brow raises, head sway and nods (a few pixels)."""
    t = (np.arange(num_frames) + 0.5) / FPS
    blink = np.zeros(num_frames)
    for b in _events(rng, t[-1] + 1, (2.0, 6.0)):
        d = rng.uniform(0.12, 0.18)
        x = (t - b) / d  # 0..1 over the blink: close fast (40 %), open slower
        env = np.where(x < 0.4, x / 0.4, (1 - x) / 0.6)
        blink = np.maximum(blink, np.clip(env, 0, 1) ** 0.7 * ((x >= 0) & (x <= 1)))
    brow = np.zeros(num_frames)
    for b in _events(rng, t[-1] + 1, (2.5, 9.0)):
        d, amp = rng.uniform(0.4, 1.2), rng.uniform(0.4, 1.0)
        x = np.clip((t - b) / d, 0, 1)
        brow = np.maximum(brow, amp * np.sin(np.pi * x) ** 2)  # smooth up and down
    px = size / 128.0
    offset = np.stack([_smooth_noise(rng, t, rng.uniform(1.0, 3.0) * px),
                       _smooth_noise(rng, t, rng.uniform(0.7, 2.0) * px, (0.2, 0.9))], 1)
    return {"blink": blink.astype(np.float32), "brow": brow.astype(np.float32),
            "head_offset": offset.astype(np.float32)}


def render_portrait(seed: int, size: int = 128) -> np.ndarray:
    """A neutral closed-mouth (size, size, 3) uint8 frame of the identity of ``seed``."""
    ident = faces.sample_identity(_streams(seed)[0])
    return faces.FaceRenderer(ident, size).render()


def render_clip(seed: int, seconds: float, size: int = 128) -> SyntheticClip:
    """Render one clip of round(seconds * 25) frames with audio of exactly the same length."""
    if seconds <= 0 or size < 32:
        raise ValueError(f"need seconds > 0 and size >= 32, got seconds={seconds}, size={size}")
    id_rng, speech_rng, motion_rng = _streams(seed)
    num_frames = max(1, int(round(seconds * FPS)))
    ident = faces.sample_identity(id_rng)
    renderer = faces.FaceRenderer(ident, size)
    speech, speech_meta = tts.speak_for(speech_rng, num_frames / FPS)
    gt = visemes.mouth_tracks(speech.phonemes, num_frames, FPS)
    gt.update(sample_motion(motion_rng, num_frames, size))
    frames = np.empty((num_frames, size, size, 3), np.uint8)
    boxes, eyes = np.empty((num_frames, 4), np.int32), np.empty((num_frames, 4), np.int32)
    for k in range(num_frames):
        mouth = (gt["openness"][k], gt["width"][k], gt["roundness"][k])
        off = tuple(gt["head_offset"][k])
        frames[k] = renderer.render(*mouth, blink=gt["blink"][k], brow=gt["brow"][k], offset=off)
        boxes[k] = renderer.mouth_box(*mouth, offset=off)
        eyes[k] = renderer.eyes_box(offset=off)
    gt["mouth_box"], gt["eyes_box"] = boxes, eyes
    phonemes = [[p.symbol, round(p.start, 4), round(p.end, 4)] for p in speech.phonemes]
    meta = {"seed": int(seed), "size": size, "fps": FPS, "num_frames": num_frames,
            "sample_rate": SAMPLE_RATE, "identity": faces.describe(ident), **speech_meta,
            "phonemes": phonemes}
    return SyntheticClip(frames, speech.audio, SAMPLE_RATE, gt, meta)


def write_clip(clip: SyntheticClip, folder: str, preview: bool = False) -> None:
    """Write frames.npz, audio.wav, gt.npz, meta.json (and preview.mp4) into ``folder``."""
    import soundfile as sf

    os.makedirs(folder, exist_ok=True)
    np.savez_compressed(os.path.join(folder, "frames.npz"), frames=clip.frames)
    sf.write(os.path.join(folder, "audio.wav"), clip.audio, clip.sample_rate, subtype="PCM_16")
    np.savez(os.path.join(folder, "gt.npz"), **clip.gt)
    with open(os.path.join(folder, "meta.json"), "w") as f:
        json.dump(clip.meta, f, indent=1)
    if preview:
        from pipeline.media import write_mp4  # lazy: only the preview needs video IO

        write_mp4(os.path.join(folder, "preview.mp4"), clip.frames, clip.audio, clip.sample_rate,
                  fps=FPS)


def _make_one(job):
    """Worker: render and write clip ``index``; returns its index entry and CPU seconds."""
    out, seed, index, seconds, size, preview = job
    cpu = time.process_time()
    s = clip_seed(seed, index)
    clip = render_clip(s, seconds, size)
    name = f"clip_{index:05d}"
    write_clip(clip, os.path.join(out, name), preview)
    entry = {"name": name, "seed": s, "num_frames": int(clip.frames.shape[0]),
             "seconds": clip.frames.shape[0] / FPS, "voice": clip.meta["voice"],
             "text": clip.meta["text"]}
    return entry, time.process_time() - cpu


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="Render synthetic talking-face clips.")
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--clips", type=int, default=8, help="number of clips")
    ap.add_argument("--first", type=int, default=0,
                    help="render clips first..clips-1 only: grow a data set (clip i does not depend on N)")
    ap.add_argument("--seconds", type=float, default=6.0, help="length of each clip")
    ap.add_argument("--seed", type=int, default=0, help="dataset seed")
    ap.add_argument("--size", type=int, default=128, help="frame size in pixels (square)")
    ap.add_argument("--workers", type=int, default=1, help="parallel processes")
    ap.add_argument("--preview", action="store_true", help="also write preview.mp4 per clip")
    args = ap.parse_args(argv)
    if args.clips < 1 or args.seconds <= 0 or args.size < 32 or args.workers < 1 or not 0 <= args.first < args.clips:
        ap.error("need --clips >= 1, 0 <= --first < --clips, --seconds > 0, --size >= 32 and --workers >= 1")
    os.makedirs(args.out, exist_ok=True)
    kept = []
    if args.first:
        with open(os.path.join(args.out, "index.json")) as f:
            old = json.load(f)
        if (old["seed"], old["size"], old["seconds"]) != (args.seed, args.size, args.seconds):
            ap.error(f"--first grows a data set made with the same --seed, --size and --seconds; "
                     f"{args.out} has {old['seed']}, {old['size']}, {old['seconds']}")
        kept = old["clips"][: args.first]
        if len(kept) < args.first:
            ap.error(f"{args.out} has {len(kept)} clips, fewer than --first {args.first}")
    jobs = [(args.out, args.seed, i, args.seconds, args.size, args.preview)
            for i in range(args.first, args.clips)]
    wall = time.perf_counter()
    if args.workers == 1:
        results = [_make_one(j) for j in jobs]
    else:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(args.workers) as pool:  # espeak state is per process
            results = pool.map(_make_one, jobs)
    wall = time.perf_counter() - wall
    entries, cpu = kept + [r[0] for r in results], sum(r[1] for r in results)
    index = {"seed": args.seed, "size": args.size, "fps": FPS, "sample_rate": SAMPLE_RATE,
             "seconds": args.seconds, "clips": entries}
    with open(os.path.join(args.out, "index.json"), "w") as f:
        json.dump(index, f, indent=1)
    minutes = sum(e["seconds"] for e in entries[len(kept):]) / 60
    print(f"wrote {len(entries) - len(kept)} clips ({minutes * 60:.1f} s of data, {args.size}px) to {args.out} "
          f"in {wall:.1f} s wall, {cpu:.1f} s CPU = {cpu / minutes:.1f} CPU s per minute of data")


if __name__ == "__main__":
    main()
