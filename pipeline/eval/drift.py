"""Drift over one long stream: does a REST stream keep its identity and its lip-sync for minutes?

    python -m pipeline.eval.drift --checkpoint assets/model --seconds 300            # the folder's student
    python -m pipeline.eval.drift --checkpoint runs/read_dit --seconds 300           # a folder without one

One held-out synthetic clip (`eval.synthetic`'s long-video clip: test seed, index 10 000) of `--seconds`
is generated through `pipe.stream(mode="rest")` from its first frame. Prints JSON: identity PSNR outside
the mouth box against the reference (`eval.synthetic.masked_psnr`) in the first and the last `--window`
seconds and per minute, and the mouth reader's lip-sync (correlation at lag 0, `lagged_correlation`)
per minute and overall. The bar of issue 12: last 10 s within 0.5 dB of the first 10 s.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch


def identity_drift(pipe, seconds: float = 300.0, window: float = 10.0, seed: int = 9001, **settings) -> dict:
    """Figures of one long stream (seconds > 2 * window). settings: `pipe.stream`'s (mode defaults to rest).
    Identity in dB, lip-sync as a Pearson correlation in [-1, 1]; the clip's frames are 25 per second."""
    from ..data.synthetic import clip_seed, render_clip
    from .mouth import clip_box, load_reader, read_openness
    from .synthetic import lagged_correlation, masked_psnr

    settings.setdefault("mode", "rest")
    size = pipe.config.height
    clip = render_clip(clip_seed(seed, 10_000), seconds, size)
    box, ref = clip_box(clip.gt["mouth_box"], size), clip.frames[0]
    t0 = time.perf_counter()
    frames = np.concatenate([c.frames for c in pipe.stream(ref, clip.audio, progress=False, **settings)])
    wall = time.perf_counter() - t0
    ps = masked_psnr(frames, ref, box)
    n, w = min(len(frames), len(clip.gt["openness"])), int(window * 25)
    openness = read_openness(load_reader(), frames[:n], box)
    minutes = range(0, n, 60 * 25)
    sync = [lagged_correlation(openness[m : m + 1500], clip.gt["openness"][m : m + 1500], 0)[0] for m in minutes]
    return {"seconds": seconds, "frames": len(frames), "identity_first_window_db": float(ps[:w].mean()),
            "identity_last_window_db": float(ps[-w:].mean()), "identity_drift_db": float(ps[-w:].mean() - ps[:w].mean()),
            "identity_by_minute_db": [round(float(ps[m : m + 1500].mean()), 2) for m in minutes],
            "lipsync_by_minute": [round(s, 3) for s in sync],
            "lipsync": lagged_correlation(openness, clip.gt["openness"][:n], 0)[0], "window_s": window, "wall_s": wall}


def main(argv=None):
    from ..pipeline import TalkingHeadPipeline

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default="assets/model")
    p.add_argument("--seconds", type=float, default=300.0)
    p.add_argument("--window", type=float, default=10.0, help="seconds compared at the start and the end")
    p.add_argument("--seed", type=int, default=9001)
    p.add_argument("--mode", choices=["read", "rest"], default="rest")
    p.add_argument("--steps", type=int)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--json", help="also write the result here")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    pipe = TalkingHeadPipeline.from_pretrained(a.checkpoint)
    out = identity_drift(pipe, a.seconds, a.window, a.seed, mode=a.mode, num_inference_steps=a.steps)
    out["student"] = None if pipe.student is None else pipe.student[1].method
    print(json.dumps(out, indent=1))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
