"""Frames of the shipped model pinned by the weights they came from.

The test (`tests/test_pinned.py`) regenerates the first 3 s of the three examples at the app's
defaults and at the paper's (8 steps, Split-CFG) and compares every 6th frame with the pinned ones
(within 1 grey level). When the model changes on purpose (a retrained VAE or DiT), re-pin with

    python -m tests.pinned

which rewrites tests/data/pinned/frames.npz together with the hash of the weights it used.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "assets" / "model"
PINNED = ROOT / "tests" / "data" / "pinned" / "frames.npz"
SECONDS, EVERY = 3, 6
SETTINGS = {
    "app": dict(num_inference_steps=4, cfg_mode="joint", alpha=1.5, beta=6.0, shift=1.0, clip_latent_frames=5),
    "paper": dict(num_inference_steps=8, cfg_mode="split", alpha=2.0, beta=6.0, shift=1.0, clip_latent_frames=5),
}


def weights_hash(model: Path = MODEL) -> str:
    """SHA-256 over the relative paths and bytes of the safetensors files the pinned READ frames depend
    on: every one of the saved pipeline but the REST student's (`student/`, which READ never runs)."""
    h = hashlib.sha256()
    for p in sorted(q for q in model.rglob("*.safetensors") if q.relative_to(model).parts[0] != "student"):
        h.update(p.relative_to(model).as_posix().encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def generate(pipe) -> dict[str, np.ndarray]:
    """{"example<i>_<settings>": every 6th frame (T, H, W, 3) uint8} with seed 0, on one torch thread
    (restored after): Split-CFG frames move by several grey levels between thread counts (float
    summation order), and the pin command runs outside pytest's one-thread fixture."""
    import torch

    from pipeline.media import load_audio

    out, threads = {}, torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for i in range(3):
            wav = load_audio(ROOT / "assets" / "examples" / f"speech_{i}.wav")[: 16_000 * SECONDS]
            for name, settings in SETTINGS.items():
                frames = pipe(ROOT / "assets" / "examples" / f"portrait_{i}.png", wav, seed=0, progress=False,
                              **settings).frames
                out[f"example{i}_{name}"] = frames[::EVERY]
    finally:
        torch.set_num_threads(threads)
    return out


def main() -> None:
    from pipeline import TalkingHeadPipeline

    frames = generate(TalkingHeadPipeline.from_pretrained(MODEL))
    np.savez_compressed(PINNED, weights_sha256=np.array(weights_hash()), **frames)
    print(f"pinned {len(frames)} videos of the model with weights {weights_hash()[:12]}")


if __name__ == "__main__":
    main()
