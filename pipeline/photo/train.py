"""Train the photo-mode motion reader on the generator's ground truth.

    python -m pipeline.data.synthetic --out data/motion --clips 240 --seconds 6 --seed 1301
    python -m pipeline.photo.train --data data/motion --vae assets/model/vae \
        --out assets/landmarks/motion_reader.safetensors

Each clip gives mouth and eye crops from the boxes of its own identity (``motion.face_boxes``)
with a random shift (the generated head sways) and the per-frame openness, width, roundness and
blink. With ``--vae``, half of the clips are first encoded and decoded by the shipped VAE, so the
reader learns the soft decoded look of generated frames; the rest get blur and noise. The first
10 % of clips are held out and the per-parameter correlation on them is printed (on decoded
frames when ``--vae`` is given).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .motion import EYES_HW, MOUTH_HW, MotionNet, crop, face_boxes

TARGETS = ("openness", "width", "roundness", "blink")


def _vae_roundtrip(vae, frames: np.ndarray, refiner=None) -> np.ndarray:
    """(T, H, W, 3) uint8 -> the same frames encoded and decoded (first 1 + 8k frames kept), through the
    frame refiner after the decoder when one is given (as the pipeline decodes)."""
    from .. import vae as vae_lib

    n = 1 + 8 * ((len(frames) - 1) // 8)
    z = vae_lib.encode(vae, vae_lib.to_pixels(frames[:n])[None])
    return vae_lib.to_uint8(vae_lib.decode(vae, z, refiner))


def _clip_tensors(d: Path, rng, vae=None, refiner=None):
    """One clip -> (mouth crops, eye crops, targets (T, 4)), decoded by the VAE when given."""
    frames, gt = np.load(d / "frames.npz")["frames"], np.load(d / "gt.npz")
    seed = json.loads((d / "meta.json").read_text())["seed"]
    if vae is not None:
        frames = _vae_roundtrip(vae, frames, refiner)
    mouth_box, eye_box = face_boxes(seed, frames.shape[1])
    shift = tuple(int(v) for v in rng.integers(-2, 3, size=2))
    y = np.stack([gt[k][: len(frames)] for k in TARGETS], 1)
    return crop(frames, mouth_box, MOUTH_HW, shift), crop(frames, eye_box, EYES_HW, shift), torch.from_numpy(y).float()


def _dataset(clips, rng, vae=None, vae_share: float = 0.5, refiner=None):
    parts = [_clip_tensors(d, rng, vae if vae is not None and rng.random() < vae_share else None, refiner)
             for d in clips]
    return [torch.cat(p) for p in zip(*parts)]


def _augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Blur a random half and add noise: decoded frames are softer than rendered ones."""
    blur = torch.rand(len(x), generator=g) < 0.5
    k = torch.tensor([0.25, 0.5, 0.25])
    kernel = (k[:, None] * k[None])[None, None].repeat(3, 1, 1, 1)
    soft = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel, groups=3)
    x = torch.where(blur[:, None, None, None], soft, x)
    return (x + 0.02 * torch.randn(x.shape, generator=g)).clamp(0, 1)


def _correlations(net: MotionNet, m, e, y) -> dict[str, float]:
    with torch.no_grad():
        pred = torch.cat([net(m[i:i + 512], e[i:i + 512]) for i in range(0, len(m), 512)]).numpy()
    y = y.numpy()
    return {k: float(np.corrcoef(pred[:, c], y[:, c])[0, 1]) for c, k in enumerate(TARGETS)}


def train(data, out, vae_path=None, steps: int = 3000, seed: int = 0, val_fraction: float = 0.1,
          refiner_path=None) -> dict:
    """Train ``MotionNet`` on the clips under ``data``; save safetensors to ``out``; return the
    held-out correlations per parameter and the data sizes."""
    from safetensors.torch import save_file

    from ..train.common import list_clips

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    vae = None
    if vae_path:
        from diffusers import AutoencoderKLLTXVideo

        from ..vae import skip_zero_residuals

        vae = AutoencoderKLLTXVideo.from_pretrained(vae_path).eval()
        skip_zero_residuals(vae)  # a constructed VAE: the same decodes, 2.7x faster
    clips = list_clips(data)
    n_val = max(1, int(len(clips) * val_fraction))
    refiner = None
    if refiner_path:
        from ..refiner import FrameRefiner

        refiner = FrameRefiner.from_pretrained(refiner_path).eval()
    mt, et, yt = _dataset(clips[n_val:], rng, vae, refiner=refiner)
    mv, ev, yv = _dataset(clips[:n_val], rng, vae, vae_share=1.0 if vae is not None else 0.0, refiner=refiner)
    net, g = MotionNet(), torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps, pct_start=0.1)
    for _ in range(steps):
        idx = torch.randint(len(yt), (128,), generator=g)
        loss = F.mse_loss(net(_augment(mt[idx], g), _augment(et[idx], g)), yt[idx])
        opt.zero_grad(), loss.backward(), opt.step(), sched.step()
    net.eval()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(out))
    return {"val_clips": n_val, "val_frames": len(yv), "train_frames": len(yt),
            "val_correlation": _correlations(net, mv, ev, yv)}


def main(argv=None):
    from .motion import WEIGHTS

    p = argparse.ArgumentParser(description="Train the photo-mode motion reader on synthetic ground truth")
    p.add_argument("--data", required=True, help="clips written by python -m pipeline.data.synthetic")
    p.add_argument("--vae", default=None, help="shipped VAE folder: train half the clips on decoded frames")
    p.add_argument("--refiner", default=None, help="with --vae: the pipeline's frame refiner after the decoder")
    p.add_argument("--out", default=str(WEIGHTS))
    p.add_argument("--steps", type=int, default=3000)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    print(json.dumps(train(args.data, args.out, args.vae, args.steps, refiner_path=args.refiner), indent=1))


if __name__ == "__main__":
    main()
