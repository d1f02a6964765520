"""Motion reader: per-frame face motion read from READ's generated driver video.

Photo mode has READ animate a fixed synthetic *driver* portrait (``driver_portrait``), then reads
from each generated 128² frame what the face does and hands it to the photo renderer:

- mouth openness, width, roundness (0 – 1, the generator's own viseme units, ``data/visemes.py``)
  and blink (0 open – 1 closed): a small CNN (``MotionNet``) on a mouth crop and an eye crop. It
  grows the project's mouth reader (``eval/mouth.py``) to four outputs and is trained on the
  generator's ground truth (``python -m pipeline.photo.train``);
- head offset (x, y), driver pixels against the driver portrait: template matching over the
  face (no learning needed: the generator shifts the whole head rigidly).

Weights: ``assets/landmarks/motion_reader.safetensors`` (safetensors; no pickle).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

WEIGHTS = Path(__file__).resolve().parents[2] / "assets" / "landmarks" / "motion_reader.safetensors"
DRIVER_SEED = 981238343  # = data.synthetic.clip_seed(777, 0): the identity of assets/examples/portrait_0
DRIVER_SIZE = 128  # the shipped model's frame size
MOUTH_HW, EYES_HW = (24, 32), (16, 48)  # crop sizes (height, width) the network sees
SWAY = 3  # pixels added around the crops: the generated head sways by a few pixels
HEAD_SMOOTH = 1.5  # frames (Gaussian sigma): heads sway slowly; removes matching jitter


@dataclass
class Motion:
    """Per-frame motion, T frames. All float32 arrays of shape (T,), head_offset (T, 2).

    openness, roundness, blink in [0, 1]; width in [0, 1] with 0.5 relaxed; head_offset in driver
    pixels (x right, y down) relative to the driver portrait, at ``DRIVER_SIZE``.
    """

    openness: np.ndarray
    width: np.ndarray
    roundness: np.ndarray
    blink: np.ndarray
    head_offset: np.ndarray

    def __len__(self) -> int:
        return len(self.openness)

    def frame(self, k: int) -> dict:
        """Frame k's parameters as floats (head_offset a 2-tuple)."""
        return {"openness": float(self.openness[k]), "width": float(self.width[k]),
                "roundness": float(self.roundness[k]), "blink": float(self.blink[k]),
                "head_offset": tuple(float(v) for v in self.head_offset[k])}

    @classmethod
    def still(cls, num_frames: int) -> "Motion":
        """A closed, relaxed, unmoving face for num_frames frames."""
        z = np.zeros(num_frames, np.float32)
        return cls(z, z + 0.5, z.copy(), z.copy(), np.zeros((num_frames, 2), np.float32))


class MotionNet(nn.Module):
    """Mouth crop (N, 3, 24, 32) and eye crop (N, 3, 16, 48) in [0, 1] -> (N, 4):
    openness, width, roundness, blink (unclamped; ``MotionReader`` clips to [0, 1])."""

    def __init__(self, width: int = 32):
        super().__init__()
        self.mouth, self.eyes = self._branch(width), self._branch(width // 2)
        self.head_mouth, self.head_eyes = nn.Linear(2 * width, 3), nn.Linear(width, 1)

    @staticmethod
    def _branch(w: int) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(3, w, 3, padding=1), nn.GELU(), nn.Conv2d(w, w, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.GELU(), nn.Conv2d(2 * w, 2 * w, 3, stride=2, padding=1),
            nn.GELU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, mouth: torch.Tensor, eyes: torch.Tensor) -> torch.Tensor:
        m = self.head_mouth(self.mouth(mouth - 0.5))  # (N, 3)
        e = self.head_eyes(self.eyes(eyes - 0.5))  # (N, 1)
        return torch.cat([m, e], 1)  # (N, 4)


def face_boxes(seed: int, size: int = DRIVER_SIZE) -> tuple[tuple, tuple]:
    """Mouth and eye crop boxes (x0, y0, x1, y1), pixels, x1/y1 exclusive, of identity ``seed``:
    every mouth pose (widest, roundest, most open) and both eyes, plus ``SWAY``."""
    from ..data import faces
    from ..data.synthetic import _streams

    r = faces.FaceRenderer(faces.sample_identity(_streams(seed)[0]), size)
    poses = [(0, 0.5, 0), (1, 1, 0), (1, 0, 1), (0.6, 0.5, 0.5)]
    m = np.array([r.mouth_box(*p, margin=1) for p in poses])
    mouth = (m[:, 0].min(), m[:, 1].min(), m[:, 2].max(), m[:, 3].max())
    eyes = np.vstack([np.vstack(r._eye_contours(s)) for s in (-1, 1)]) / r.ss
    lo, hi = eyes.min(0) - [1, 1 + r.eh / r.ss], eyes.max(0) + 1
    return _grow(mouth, SWAY, size), _grow((*np.floor(lo), *np.ceil(hi)), SWAY, size)


def _grow(box, m: int, size: int) -> tuple[int, int, int, int]:
    x0, y0, x1, y1 = box
    return max(0, int(x0) - m), max(0, int(y0) - m), min(size, int(x1) + m), min(size, int(y1) + m)


def crop(frames: np.ndarray, box, hw: tuple[int, int], shift=(0, 0)) -> torch.Tensor:
    """Frames uint8 (T, H, W, 3) -> crops (T, 3, h, w) float in [0, 1], box shifted by ``shift``."""
    x0, y0, x1, y1 = box
    H, W = frames.shape[1:3]
    x0, x1 = np.clip([x0 + shift[0], x1 + shift[0]], 0, W)
    y0, y1 = np.clip([y0 + shift[1], y1 + shift[1]], 0, H)
    x = torch.from_numpy(np.ascontiguousarray(frames[:, y0:y1, x0:x1])).permute(0, 3, 1, 2).float() / 255
    return F.interpolate(x, size=hw, mode="bilinear", align_corners=False)


def head_offsets(frames: np.ndarray, reference: np.ndarray, box, radius: int = 4) -> np.ndarray:
    """Head shift (T, 2) of each frame against ``reference`` (H, W, 3), pixels (x, y), within
    ±``radius``: normalised cross-correlation of the blurred grey face ``box`` (cv2.matchTemplate),
    sub-pixel by a parabola through the peak. Robust on READ's soft decoded frames, where phase
    correlation jumped by tens of pixels; 0.03 – 0.1 px error on the driver rendered from truth."""
    import cv2

    x0, y0, x1, y1 = box
    grey = lambda im: cv2.GaussianBlur(cv2.cvtColor(im, cv2.COLOR_RGB2GRAY).astype(np.float32), (0, 0), 1.0)  # noqa: E731
    template, r, out = grey(reference)[y0:y1, x0:x1], radius, []
    for f in frames:
        g = cv2.copyMakeBorder(grey(f), r, r, r, r, cv2.BORDER_REPLICATE)
        res = cv2.matchTemplate(g[y0:y1 + 2 * r, x0:x1 + 2 * r], template, cv2.TM_CCOEFF_NORMED)  # (2r+1, 2r+1)
        iy, ix = np.unravel_index(int(np.argmax(res)), res.shape)
        dx = _parabola(res[iy, ix - 1], res[iy, ix], res[iy, ix + 1]) if 0 < ix < 2 * r else 0.0
        dy = _parabola(res[iy - 1, ix], res[iy, ix], res[iy + 1, ix]) if 0 < iy < 2 * r else 0.0
        out.append((ix - r + dx, iy - r + dy))
    return np.array(out, np.float32).reshape(-1, 2)


def _parabola(a: float, b: float, c: float) -> float:
    """Sub-sample offset of the peak of a parabola through (−1, a), (0, b), (1, c)."""
    d = a - 2 * b + c
    return 0.0 if d >= 0 else float(0.5 * (a - c) / d)


def _smooth(x: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing along time of (T, C), edges held."""
    if sigma <= 0 or len(x) < 2:
        return x
    r = int(np.ceil(3 * sigma))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    pad = np.pad(x, ((r, r), (0, 0)), mode="edge")
    return np.stack([np.convolve(pad[:, c], k, mode="valid") for c in range(x.shape[1])], 1).astype(np.float32)


def random_blinks(num_frames: int, seed: int = 0, fps: int = 25) -> np.ndarray:
    """Blink track (num_frames,) in [0, 1] with the generator's statistics (``sample_motion``: a
    blink every 2 – 6 s lasting 120 – 180 ms, closing in 40 % of it). Each blink's gap and length
    are drawn in turn from ``seed``, so a longer track starts with the same blinks."""
    rng, t = np.random.default_rng(seed), (np.arange(num_frames) + 0.5) / fps
    blink, start = np.zeros(num_frames), rng.uniform(0.3, 6.0)
    while start < num_frames / fps:
        d = rng.uniform(0.12, 0.18)
        x = (t - start) / d
        env = np.where(x < 0.4, x / 0.4, (1 - x) / 0.6)
        blink = np.maximum(blink, np.clip(env, 0, 1) ** 0.7 * ((x >= 0) & (x <= 1)))
        start += rng.uniform(2.0, 6.0)
    return blink.astype(np.float32)


@lru_cache(maxsize=1)
def driver_portrait() -> np.ndarray:
    """The driver READ animates in photo mode: (128, 128, 3) uint8, example portrait 0's identity."""
    from ..data.synthetic import render_portrait

    return render_portrait(DRIVER_SEED, DRIVER_SIZE)


@lru_cache(maxsize=1)
def driver_eye_distance() -> float:
    """Distance between the driver's eye centres at ``DRIVER_SIZE``, pixels: the scale that turns
    a head offset read on the driver into pixels on another face."""
    from ..data import faces
    from ..data.synthetic import _streams

    ident = faces.sample_identity(_streams(DRIVER_SEED)[0])
    return 2 * ident.eye_spacing * ident.face_w * DRIVER_SIZE


class MotionReader:
    """Reads ``Motion`` from generated driver frames. ``MotionReader.load()`` uses the shipped
    weights; ``read(frames)`` expects frames of ``driver_portrait()`` animated by READ."""

    def __init__(self, net: MotionNet, seed: int = DRIVER_SEED):
        self.net = net.eval()
        self.mouth_box, self.eye_box = face_boxes(seed)
        self.face_box = (self.eye_box[0], self.eye_box[1], self.mouth_box[2], self.mouth_box[3])

    @classmethod
    def load(cls, path=WEIGHTS, seed: int = DRIVER_SEED) -> "MotionReader":
        from safetensors.torch import load_file

        if not Path(path).exists():
            raise FileNotFoundError(f"no motion reader at {path}: train one with `python -m pipeline.photo.train`")
        net = MotionNet()
        net.load_state_dict(load_file(str(path)))
        return cls(net, seed)

    @torch.no_grad()
    def read(self, frames: np.ndarray, reference: np.ndarray | None = None, blinks: str = "random",
             start_frame: int = 0, seed: int = 0) -> Motion:
        """frames: (T, 128, 128, 3) uint8 of the driver; reference: the driver portrait (default
        ``driver_portrait()``) for the head offset.

        blinks: "driver" reads them from the frames; "random" (default) draws them with the
        generator's own timing (every 2 – 6 s, ~150 ms) from ``seed``, because the shipped VAE
        decodes no eyes to read (docs/PHOTO.md). ``start_frame``: index of frames[0] in the whole
        video, so clip-by-clip calls continue one blink schedule. Raises ValueError for frames of
        another size or an unknown ``blinks``.
        """
        if frames.ndim != 4 or frames.shape[1:] != (DRIVER_SIZE, DRIVER_SIZE, 3):
            raise ValueError(f"driver frames must be (T, {DRIVER_SIZE}, {DRIVER_SIZE}, 3), got {frames.shape}")
        if blinks not in ("driver", "random"):
            raise ValueError(f"blinks must be 'driver' or 'random', got {blinks!r}")
        ref = driver_portrait() if reference is None else reference
        out = torch.cat([self.net(crop(frames[i:i + 256], self.mouth_box, MOUTH_HW),
                                  crop(frames[i:i + 256], self.eye_box, EYES_HW))
                         for i in range(0, len(frames), 256)]).clamp(0, 1).numpy()
        offset = _smooth(head_offsets(frames, ref, self.face_box), HEAD_SMOOTH)
        if blinks == "random":
            out[:, 3] = random_blinks(start_frame + len(frames), seed)[start_frame:]
        return Motion(*(out[:, c].astype(np.float32) for c in range(4)), offset)
