"""Quality bars on a held-out synthetic test set (new seeds: new identities and sentences).

    python -m pipeline.eval.synthetic --checkpoint assets/model --clips 20 --seconds 8 --seed 9001

For every test clip, the pipeline (default settings unless overridden) animates the clip's first
frame with the clip's audio; the mouth reader reads the openness from the generated frames and is
compared with the ground-truth openness of that audio. Prints a JSON summary:
- reader_gt_correlation: the reader on the ground-truth frames (validates the reader, bar >= 0.95)
- lipsync_correlation (bar >= 0.7, goal >= 0.8) and its best lag in frames (bar: 0 +- 1)
- identity PSNR outside the mouth box against the reference, first second and last second of a
  long (default 40-s) video
- boundary_ratio: mean frame-to-frame change at clip boundaries / within clips (bar <= 1.5)

`--vae-only` measures the ceiling the VAE sets instead: the ground-truth clips are encoded and
decoded (no DiT, no audio) and the reader's openness on the reconstruction is correlated with the
truth (the lip-sync ceiling); beside it the fidelity figures: `vae_psnr_reference` (the clip's first
frame encoded alone, as the reference is), `vae_psnr`, `vae_psnr_eyes`, `vae_psnr_mouth` (17-frame
windows, whole frame and the generator's eyes and mouth boxes). `--vae PATH` measures a candidate
VAE: a training checkpoint (`OUT/checkpoint`, its EMA weights) or a `save_pretrained` folder. Both
modes decode as the pipeline does: through its frame refiner when it has one (`refiner/`); `--refiner
PATH` measures another, `--refiner none` the decoder alone.

Every clip's `reader_gt_correlation` checks the mouth reader on the ground-truth frames; clips below
0.95 are flagged and listed in `reader_failed_clips`, and `reader_gt_correlation_min` is the worst.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from ..config import SAMPLE_RATE
from ..vae import first_video_frame
from .mouth import READER_BAR, clip_box, load_reader, read_openness, reader_check

MAX_LAG = 5


def lagged_correlation(pred: np.ndarray, true: np.ndarray, max_lag: int = MAX_LAG) -> dict:
    """Correlation of pred[t + lag] with true[t] for lag in [-max_lag, max_lag]; lag > 0: video late."""
    out = {}
    for lag in range(-max_lag, max_lag + 1):
        a = pred[max(lag, 0) : len(pred) + min(lag, 0)]
        b = true[max(-lag, 0) : len(true) - max(lag, 0)]
        n = min(len(a), len(b))
        out[lag] = float(np.corrcoef(a[:n], b[:n])[0, 1]) if n > 2 and a[:n].std() > 0 and b[:n].std() > 0 else 0.0
    return out


def psnr(mse):
    """PSNR in dB of 8-bit images from their mean squared error (scalar or array)."""
    return 10 * np.log10(255.0**2 / np.maximum(mse, 1e-6))


def masked_psnr(frames: np.ndarray, ref: np.ndarray, box) -> np.ndarray:
    """Per-frame PSNR against the reference, outside the mouth box."""
    mask = np.ones(ref.shape[:2], bool)
    x0, y0, x1, y1 = box
    mask[y0:y1, x0:x1] = False
    return psnr(((frames.astype(np.float32) - ref.astype(np.float32)) ** 2)[:, mask].mean(axis=(1, 2)))


def boundary_ratio(frames: np.ndarray, starts: list[int]) -> float:
    """Mean |frame t+1 - frame t| across clip boundaries divided by the mean within clips."""
    diff = np.abs(np.diff(frames.astype(np.float32), axis=0)).mean(axis=(1, 2, 3))  # diff[t]: t -> t+1
    at = np.zeros(len(diff), bool)
    at[[s - 1 for s in starts if 0 < s <= len(diff)]] = True
    return float(diff[at].mean() / diff[~at].mean()) if at.any() and (~at).any() else float("nan")


def clip_seams(num_frames: int, clip_latent_frames: int) -> list[int]:
    """Video frames where each later DiT clip's new latent frames begin (the sampler's overlap rule)."""
    from ..sampler import new_latent_start

    seams, j = [], 1
    while (frame := first_video_frame(new_latent_start(j, clip_latent_frames))) < num_frames:
        seams.append(frame)
        j += 1
    return seams


def evaluate_clip(pipe, reader, clip, size, **kwargs) -> dict:
    """One clip generated from its first frame and its audio, against its ground truth.

    `wall_s` is the generation alone (not the scoring), for real-time factors. `boundary_ratio` is
    measured where one streamed chunk meets the next (what a viewer sees), `clip_seam_ratio` where
    one DiT clip meets the next (what ANS is for); they are different frames.
    """
    ref = clip.frames[0]
    box = clip_box(clip.gt["mouth_box"], size)
    f = kwargs.get("clip_latent_frames") or pipe.config.sampling.clip_latent_frames
    t0 = time.perf_counter()
    chunks = list(pipe.stream(ref, clip.audio, progress=False, **kwargs))
    wall = time.perf_counter() - t0
    frames = np.concatenate([c.frames for c in chunks])
    n = min(len(frames), len(clip.gt["openness"]))
    pred, true = read_openness(reader, frames[:n], box), clip.gt["openness"][:n]
    lags = lagged_correlation(pred, true)
    best = max(lags, key=lags.get)
    identity = masked_psnr(frames, ref, box)
    return {"lipsync_correlation": lags[0], "best_lag": best, "best_lag_correlation": lags[best],
            "reader_gt_correlation": reader_check(reader, clip.frames, clip.gt["mouth_box"], clip.gt["openness"]),
            "identity_psnr_first_s": float(identity[:25].mean()), "identity_psnr_last_s": float(identity[-25:].mean()),
            "boundary_ratio": boundary_ratio(frames, [c.start_frame for c in chunks]),
            "clip_seam_ratio": boundary_ratio(frames, clip_seams(len(frames), f)), "frames": n,
            "wall_s": wall, "audio_s": len(clip.audio) / SAMPLE_RATE}


WINDOW = 17  # frames per VAE window in the fidelity figures (1 + 8 * 2, the VAE trainer's windows)


def box_mse(err: np.ndarray, boxes: np.ndarray | None = None) -> float:
    """Mean of per-pixel squared errors (T, H, W, 3), inside the union of per-frame boxes (T, 4) if given."""
    if boxes is None:
        return float(err.mean())
    x0, y0 = boxes[:, :2].min(0)
    x1, y1 = boxes[:, 2:].max(0)
    return float(err[:, y0:y1, x0:x1].mean())


def vae_fidelity(vae, clip, window: int = WINDOW, refiner=None) -> dict:
    """Reconstruction PSNR: the first frame encoded alone (how the reference is encoded) and every whole
    `window`-frame window encoded and decoded on its own, on the whole frame and the eyes and mouth boxes.
    refiner: the pipeline's `refiner.FrameRefiner` after the decoder, as generation decodes (None: none)."""
    from .. import vae as vae_lib

    def roundtrip(frames):  # (N, T, H, W, 3) uint8 -> the same, through the VAE
        x = torch.stack([vae_lib.to_pixels(f) for f in frames]).to(vae.device, vae.dtype)
        rec = vae_lib.decode(vae, vae_lib.encode(vae, x), refiner)
        return np.stack([vae_lib.to_uint8(rec[i : i + 1]) for i in range(len(rec))])

    ref = clip.frames[:1].astype(np.float32)
    out = {"vae_psnr_reference": float(psnr(((roundtrip(clip.frames[None, :1])[0] - ref) ** 2).mean()))}
    starts = range(0, len(clip.frames) - window + 1, window)
    sums = {"vae_psnr": [], "vae_psnr_eyes": [], "vae_psnr_mouth": []}
    for i in range(0, len(starts), 4):  # 4 windows per batch
        group = starts[i : i + 4]
        rec = roundtrip(np.stack([clip.frames[s : s + window] for s in group]))
        for r, s in zip(rec, group):
            err = (r.astype(np.float32) - clip.frames[s : s + window].astype(np.float32)) ** 2
            sums["vae_psnr"].append(box_mse(err))
            sums["vae_psnr_eyes"].append(box_mse(err, clip.gt["eyes_box"][s : s + window]))
            sums["vae_psnr_mouth"].append(box_mse(err, clip.gt["mouth_box"][s : s + window]))
    return out | {k: float(psnr(np.mean(v))) for k, v in sums.items()}


def vae_reconstruction(vae, reader, clip, size, refiner=None) -> dict:
    """Encode + decode the ground-truth clip: how much lip motion the VAE itself keeps (the reader's
    correlation on the reconstruction), beside `vae_fidelity`'s PSNR figures."""
    from .. import vae as vae_lib

    n = vae_lib.video_frames(vae_lib.latent_frames(len(clip.frames)))  # whole latent frames only
    x = vae_lib.to_pixels(clip.frames[:n])[None]  # (1, 3, n, H, W)
    frames = vae_lib.to_uint8(vae_lib.decode(vae, vae_lib.encode(vae, x.to(vae.device, vae.dtype)), refiner))
    box = clip_box(clip.gt["mouth_box"], size)
    true = clip.gt["openness"][:n]
    lags = lagged_correlation(read_openness(reader, frames, box), true)
    err = (frames.astype(np.float32) - clip.frames[:n].astype(np.float32)) ** 2
    x0, y0, x1, y1 = box
    return {"lipsync_correlation": lags[0], "best_lag": max(lags, key=lags.get),
            "reader_gt_correlation": reader_check(reader, clip.frames, clip.gt["mouth_box"], clip.gt["openness"]),
            "psnr": float(psnr(err.mean())), "mouth_psnr": float(psnr(err[:, y0:y1, x0:x1].mean())), "frames": n,
            **vae_fidelity(vae, clip, refiner=refiner)}


def resolved_settings(pipe, overrides: dict) -> dict:
    """The sampling settings a run used: the overrides given, else the pipeline's own defaults
    (a trainer's export carries its preset's, which need not be the shipped model's)."""
    s = pipe.settings(**overrides)
    return dict(num_inference_steps=s.num_inference_steps, cfg_mode=s.cfg_mode, alpha=s.alpha, beta=s.beta, mode=s.mode)


def long_video_identity(pipe, clip_fn, seconds: float, size: int, **kwargs) -> dict:
    """Identity PSNR in the first and the last second of one long video."""
    clip = clip_fn(seconds)
    box = clip_box(clip.gt["mouth_box"], size)
    frames = pipe(clip.frames[0], clip.audio, progress=False, **kwargs).frames
    ps = masked_psnr(frames, clip.frames[0], box)
    return {"seconds": seconds, "identity_psnr_first_s": float(ps[:25].mean()), "identity_psnr_last_s": float(ps[-25:].mean())}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default="assets/model")
    p.add_argument("--clips", type=int, default=20)
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--seed", type=int, default=9001, help="test-set seed (training used other seeds)")
    p.add_argument("--long-seconds", type=float, default=40.0, help="length of the identity-drift video (0: skip)")
    p.add_argument("--steps", type=int), p.add_argument("--cfg", choices=["joint", "split"])
    p.add_argument("--alpha", type=float), p.add_argument("--beta", type=float)
    p.add_argument("--mode", choices=["read", "rest"], default="read", help="READ clips or REST streaming")
    p.add_argument("--vae-only", action="store_true", help="the VAE's own ceiling: encode + decode the ground truth")
    p.add_argument("--vae", help="with --vae-only: VAE weights (training checkpoint or save_pretrained folder) instead of the checkpoint's")
    p.add_argument("--refiner", help="a frame refiner folder (save_pretrained) instead of the checkpoint's own; "
                   "'none': the decoder alone")
    p.add_argument("--json", help="also write the summary here")
    args = p.parse_args(argv)
    if args.refiner not in (None, "none") and not (Path(args.refiner) / "config.json").is_file():
        p.error(f"--refiner {Path(args.refiner).name}: no saved refiner there (config.json); give its folder or 'none'")
    return args


def load_components(args):
    """The checkpoint's pipeline, with `--refiner`'s refiner if given, and the VAE to measure (`--vae`'s)."""
    from ..pipeline import TalkingHeadPipeline

    pipe = TalkingHeadPipeline.from_pretrained(args.checkpoint)
    vae = pipe.vae
    if args.vae:  # a candidate VAE: a training checkpoint or a save_pretrained folder, any LTX config
        from ..train.common import load_vae

        vae = load_vae(args.vae, like=pipe.vae).to(pipe.device)
    if args.refiner:
        from ..refiner import FrameRefiner

        pipe.refiner = None if args.refiner == "none" else FrameRefiner.from_pretrained(args.refiner).eval()
    return pipe, vae


def main(argv=None):
    from ..data.synthetic import clip_seed, render_clip

    args = parse_args(argv)
    pipe, vae = load_components(args)
    size, reader = pipe.config.height, load_reader()
    kw = dict(num_inference_steps=args.steps, cfg_mode=args.cfg, alpha=args.alpha, beta=args.beta, mode=args.mode)
    t0, rows = time.perf_counter(), []
    for i in range(args.clips):
        clip = render_clip(clip_seed(args.seed, i), args.seconds, size)
        rows.append(vae_reconstruction(vae, reader, clip, size, pipe.refiner) if args.vae_only
                    else evaluate_clip(pipe, reader, clip, size, **kw))
        flag = "  <- the reader fails on this clip's ground truth" if rows[-1]["reader_gt_correlation"] < READER_BAR else ""
        print(f"clip {i}: {json.dumps({k: round(v, 3) for k, v in rows[-1].items()})}{flag}", flush=True)
    summary = {k: float(np.mean([r[k] for r in rows])) for k in rows[0] if k not in ("frames", "wall_s", "audio_s")}
    summary["best_lag_median"] = float(np.median([r["best_lag"] for r in rows]))
    summary["reader_gt_correlation_min"] = min(r["reader_gt_correlation"] for r in rows)
    summary["reader_failed_clips"] = [i for i, r in enumerate(rows) if r["reader_gt_correlation"] < READER_BAR]
    if not args.vae_only:
        summary["rtf"] = sum(r["wall_s"] for r in rows) / sum(r["audio_s"] for r in rows)
    if args.long_seconds and not args.vae_only:
        summary["long_video"] = long_video_identity(pipe, lambda s: render_clip(clip_seed(args.seed, 10_000), s, size),
                                                    args.long_seconds, size, **kw)
    summary.update(clips=args.clips, seconds=args.seconds, seed=args.seed, wall_s=time.perf_counter() - t0,
                   settings="VAE reconstruction" if args.vae_only else resolved_settings(pipe, kw))
    print(json.dumps(summary, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2)


if __name__ == "__main__":
    main()
