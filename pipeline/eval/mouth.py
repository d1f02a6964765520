"""Mouth reader: a small CNN that reads mouth openness from a video frame's mouth region.

Trained on rendered synthetic frames (where the openness is known), with jitter, blur and noise so
that it also reads decoded (slightly blurry) frames. Validated on held-out ground-truth frames.

    python -m pipeline.eval.mouth --data data/train --out assets/eval/mouth_reader.safetensors

then checks it on every clip of three held-out data sets (`check_seeds`, bar READER_BAR per clip).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

CROP_HW = (24, 32)  # mouth crops are resized to this (height, width)
MARGIN = 3  # pixels around the clip's union mouth box (covers head sway)
DEFAULT_WEIGHTS = Path(__file__).resolve().parents[2] / "assets" / "eval" / "mouth_reader.safetensors"


class MouthReader(nn.Module):
    def __init__(self, width: int = 32):
        super().__init__()
        w = width
        self.net = nn.Sequential(
            nn.Conv2d(3, w, 3, padding=1), nn.GELU(), nn.Conv2d(w, w, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.GELU(), nn.Conv2d(2 * w, 2 * w, 3, stride=2, padding=1), nn.GELU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * w, 1),
        )

    def forward(self, crops):  # (N, 3, 24, 32) in [0, 1] -> (N,) openness
        return self.net(crops - 0.5)[:, 0]


def clip_box(mouth_boxes: np.ndarray, size: int, margin: int = MARGIN) -> tuple[int, int, int, int]:
    """Union of a clip's per-frame mouth boxes (x0, y0, x1 exclusive, y1 exclusive) plus a margin."""
    x0, y0 = mouth_boxes[:, 0].min() - margin, mouth_boxes[:, 1].min() - margin
    x1, y1 = mouth_boxes[:, 2].max() + margin, mouth_boxes[:, 3].max() + margin
    return max(0, int(x0)), max(0, int(y0)), min(size, int(x1)), min(size, int(y1))


def crops(frames: np.ndarray, box, shift=(0, 0)) -> torch.Tensor:
    """Frames uint8 (T, H, W, 3) -> mouth crops (T, 3, 24, 32) in [0, 1]."""
    x0, y0, x1, y1 = box
    dx, dy = shift
    H, W = frames.shape[1:3]
    x0, x1 = np.clip([x0 + dx, x1 + dx], 0, W)
    y0, y1 = np.clip([y0 + dy, y1 + dy], 0, H)
    x = torch.from_numpy(np.ascontiguousarray(frames[:, y0:y1, x0:x1])).permute(0, 3, 1, 2).float() / 255
    return F.interpolate(x, size=CROP_HW, mode="bilinear", align_corners=False)


@torch.no_grad()
def read_openness(reader: MouthReader, frames: np.ndarray, box) -> np.ndarray:
    reader.eval()
    return torch.cat([reader(crops(frames[i : i + 256], box)) for i in range(0, len(frames), 256)]).numpy()


READER_BAR = 0.95  # the reader must read ground-truth frames of every clip at least this well


def reader_check(reader: MouthReader, frames: np.ndarray, mouth_boxes: np.ndarray, openness: np.ndarray) -> float:
    """Correlation of the reader's openness on one clip's ground-truth frames with the true openness:
    where it is below READER_BAR, lip-sync figures of that clip measure the reader, not the video."""
    n = min(len(frames), len(openness))
    pred = read_openness(reader, frames[:n], clip_box(mouth_boxes, frames.shape[1]))
    return float(np.corrcoef(pred, openness[:n])[0, 1]) if pred.std() > 0 else 0.0


def check_seeds(reader, seeds, clips: int, seconds: float, size: int = 128) -> dict:
    """`reader_check` on every clip of held-out data sets: per clip, the worst, and the clips below the bar."""
    from ..data.synthetic import clip_seed, render_clip

    per_clip = {}
    for seed in seeds:
        for i in range(clips):
            c = render_clip(clip_seed(seed, i), seconds, size)
            per_clip[f"{seed}/{i}"] = reader_check(reader, c.frames, c.gt["mouth_box"], c.gt["openness"])
    worst = min(per_clip, key=per_clip.get)
    return {"reader_gt_correlation_min": per_clip[worst], "worst_clip": worst,
            "failed_clips": [k for k, v in per_clip.items() if v < READER_BAR], "per_clip": per_clip}


def load_reader(path=DEFAULT_WEIGHTS) -> MouthReader:
    from safetensors.torch import load_file

    if not Path(path).exists():
        raise FileNotFoundError(f"no mouth reader at {path}: train one with `python -m pipeline.eval.mouth --data DIR --out {path}`")
    reader = MouthReader()
    reader.load_state_dict(load_file(str(path)))
    return reader.eval()


def _augment(x: torch.Tensor, g: torch.Generator, colour: bool = True) -> torch.Tensor:
    """Blur a random half and add noise: decoded frames are softer than rendered ones. With `colour`,
    also permute the colour channels of a random half and scale each channel: the reader must read the
    lips' shape, not their colour against the skin and beard (a grey beard around a closed mouth read
    as half open, correlation 0.29 on that clip)."""
    n = len(x)
    blur = torch.rand(n, generator=g) < 0.5
    k = torch.tensor([0.25, 0.5, 0.25])
    soft = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), (k[:, None] * k[None])[None, None].repeat(3, 1, 1, 1), groups=3)
    x = torch.where(blur[:, None, None, None], soft, x)
    if colour:
        perm = torch.stack([torch.randperm(3, generator=g) for _ in range(n)])  # (N, 3)
        swap = (torch.rand(n, generator=g) < 0.5)[:, None]
        perm = torch.where(swap, perm, torch.arange(3))
        x = x[torch.arange(n)[:, None], perm] * (0.75 + 0.5 * torch.rand(n, 3, 1, 1, generator=g))
    return (x + 0.02 * torch.randn(x.shape, generator=g)).clamp(0, 1)


def _dataset(clip_dirs, rng):
    xs, ys = [], []
    for d in clip_dirs:
        frames, gt = np.load(d / "frames.npz")["frames"], np.load(d / "gt.npz")
        box = clip_box(gt["mouth_box"], frames.shape[1])
        shift = tuple(rng.integers(-2, 3, size=2))  # jitter: generated heads sway differently
        xs.append(crops(frames, box, shift)), ys.append(torch.from_numpy(gt["openness"]).float())
    return torch.cat(xs), torch.cat(ys)


def train(data, out, steps: int = 3000, seed: int = 0, val_fraction: float = 0.1) -> dict:
    from safetensors.torch import save_file

    from ..train.common import list_clips

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    clips = list_clips(data)
    n_val = max(1, int(len(clips) * val_fraction))
    (xt, yt), (xv, yv) = _dataset(clips[n_val:], rng), _dataset(clips[:n_val], rng)
    reader, g = MouthReader(), torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(reader.parameters(), lr=2e-3)
    for step in range(steps):
        idx = torch.randint(len(xt), (128,), generator=g)
        loss = F.mse_loss(reader(_augment(xt[idx], g)), yt[idx])
        opt.zero_grad(), loss.backward(), opt.step()
    reader.eval()
    with torch.no_grad():
        pred = torch.cat([reader(xv[i : i + 512]) for i in range(0, len(xv), 512)])
    corr = float(np.corrcoef(pred.numpy(), yv.numpy())[0, 1])
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    save_file(reader.state_dict(), str(out))
    return {"val_clips": n_val, "val_frames": len(yv), "val_correlation": corr, "train_frames": len(yt)}


def main(argv=None):
    p = argparse.ArgumentParser(description="Train the mouth reader on synthetic ground truth")
    p.add_argument("--data", required=True)
    p.add_argument("--out", default=str(DEFAULT_WEIGHTS))
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--check-seeds", default="9002,9004,9009",
                   help="then check the reader on every clip of these held-out data sets ('' to skip)")
    p.add_argument("--check-clips", type=int, default=6)
    args = p.parse_args(argv)
    print(json.dumps(train(args.data, args.out, args.steps)))
    if args.check_seeds:
        seeds = [int(v) for v in args.check_seeds.split(",")]
        print(json.dumps(check_seeds(load_reader(args.out), seeds, args.check_clips, 8.0), indent=1))


if __name__ == "__main__":
    main()
