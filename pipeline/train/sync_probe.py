"""A latent lip-sync expert: a small network that reads the mouth's openness from one latent frame.

    python -m pipeline.train.sync_probe --data data/train --out runs/sync_probe
    python -m pipeline.train.sync_probe --data data/train --linear --heldout-clips 40   # measure only
    python -m pipeline.train.dit ... --sync-probe runs/sync_probe --sync-weight 4

Why. A constructed (principal-component) VAE holds the mouth's opening only *nonlinearly*: a ridge
probe reads it from unseen identities' latents at R2 0.18, the trained tiny VAE's (trained with a mouth
probe) at 0.91; this network reads it at 0.72 (docs/TRAINING.md §15). The flow-matching MSE treats the
few directions that carry the opening like the many that carry a beard's texture; an expert that
knows where the opening lives turns the audio's target into a direct loss on the DiT's clean-latent
estimate — Wav2Lip's pretrained lip-sync expert (Prajwal et al. 2020), here on latents, frozen, and
trained on the ground truth's openness (the generator's `gt.npz`) rather than on sync pairs.
"""
from __future__ import annotations

import argparse
import json

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from safetensors.torch import load_file

from ..config import TEMPORAL_COMPRESSION
from ..vae import first_video_frame
from .common import list_clips
from .pca_init import ridge


class LatentSyncProbe(ModelMixin, ConfigMixin):
    """One normalised latent frame (B, C, h, w) -> the openness of its 8 video frames (B, 8), in the
    generator's units (0 closed .. ~1 wide open); latent frame 0 stands for frame 0 alone (all 8 equal).

    1x1 conv (per cell) -> 3x3 conv (the mouth spans cells) -> linear over the grid.
    """

    @register_to_config
    def __init__(self, latent_channels: int = 128, hidden: int = 256, grid: tuple = (4, 4),
                 target_mean: float = 0.0, target_std: float = 1.0):
        super().__init__()
        h, w = grid
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(latent_channels, hidden, 1), torch.nn.GELU(),
            torch.nn.Conv2d(hidden, 64, 3, padding=1), torch.nn.GELU(),
            torch.nn.Flatten(), torch.nn.Linear(64 * h * w, TEMPORAL_COMPRESSION))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z) * self.config.target_std + self.config.target_mean


def openness_targets(openness: np.ndarray, num_latents: int) -> torch.Tensor:
    """Per-frame openness (T,) -> (num_latents, 8): latent k's frames (LTX's causal layout: latent 0 is
    frame 0, repeated; latent k >= 1 is frames 8k-7 .. 8k). Raises ValueError if the clip is too short."""
    if num_latents > 1 and len(openness) < first_video_frame(num_latents - 1) + TEMPORAL_COMPRESSION:
        raise ValueError(f"{len(openness)} frames do not cover {num_latents} latent frames")
    rows = [np.full(TEMPORAL_COMPRESSION, openness[0])]
    rows += [openness[first_video_frame(k) : first_video_frame(k) + TEMPORAL_COMPRESSION] for k in range(1, num_latents)]
    return torch.tensor(np.stack(rows), dtype=torch.float32)


def load_pairs(data):
    """Cached latents of every clip in `data` -> latent frames (N, C, h, w), targets (N, 8), clip index (N,)."""
    zs, ys, clip = [], [], []
    for i, d in enumerate(list_clips(data)):
        z = load_file(str(d / "latents.safetensors"))["latents"]  # (C, L, h, w), normalised
        ys.append(openness_targets(np.load(d / "gt.npz")["openness"], z.shape[1]))
        zs.append(z.movedim(1, 0))
        clip += [i] * z.shape[1]
    return torch.cat(zs), torch.cat(ys), torch.tensor(clip)


def fit(data, steps: int = 3000, heldout_clips: int = 0, noise: float = 0.1, seed: int = 0, hidden: int = 256):
    """Train a probe on the cached latents of `data` (the last `heldout_clips` clips kept out).
    Returns (probe in eval mode, {"heldout_r2", "heldout_r"} when clips were held out)."""
    torch.manual_seed(seed)
    z, y, clip = load_pairs(data)
    train = clip < clip.max() + 1 - heldout_clips
    probe = LatentSyncProbe(z.shape[1], hidden, grid=tuple(z.shape[2:]), target_mean=float(y[train].mean()),
                            target_std=float(y[train].std()))
    opt = torch.optim.AdamW(probe.parameters(), 1e-3, weight_decay=0.05)
    zt, yt = z[train], y[train]
    for _ in range(steps):
        i = torch.randint(len(zt), (256,))
        loss = F.mse_loss(probe(zt[i] + noise * torch.randn_like(zt[i])), yt[i]) / probe.config.target_std**2
        opt.zero_grad(), loss.backward(), opt.step()
    probe.eval().requires_grad_(False)
    if not heldout_clips:
        return probe, {}
    with torch.no_grad():
        return probe, scores(probe(z[~train]), y[~train])


def scores(pred: torch.Tensor, target: torch.Tensor) -> dict:
    """{"heldout_r2", "heldout_r"} of predicted against true openness (N, 8)."""
    p, t = pred.double(), target.double()
    r2 = 1 - float(((p - t) ** 2).sum() / ((t - t.mean()) ** 2).sum())
    return {"heldout_r2": r2, "heldout_r": float(np.corrcoef(p.flatten(), t.flatten())[0, 1])}


def linear_readability(data, heldout_clips: int, lam: float = 1000.0) -> dict:
    """How *linearly* the latents of `data` hold the openness: ridge regression on the whole latent frame
    (`pca_init.ridge`: standardised features, penalty `lam` on their weights, unpenalised bias) fitted on
    all but the last `heldout_clips` clips, scored on those (`scores`).
    Raises ValueError unless 0 < heldout_clips < the number of clips."""
    z, y, clip = load_pairs(data)
    if not 0 < heldout_clips <= int(clip.max()):
        raise ValueError(f"heldout_clips must be in 1..{int(clip.max())}, got {heldout_clips}")
    train = clip < clip.max() + 1 - heldout_clips
    x = z.flatten(1)
    weight, bias = ridge(x[train], y[train], lam=lam / int(train.sum()))  # ridge scales lam by the rows
    return scores(x[~train] @ weight.T + bias, y[~train])


def sync_loss(probe, x0_hat: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Mean weighted squared error (in the targets' standard deviations) of the expert's openness on
    clean-latent estimates x0_hat (B, C, f, h, w) against target (B, f, 8); weight (B, f) >= 0."""
    b, c, f, h, w = x0_hat.shape
    pred = probe(x0_hat.movedim(2, 1).reshape(b * f, c, h, w).float()).reshape(b, f, -1)
    err = ((pred - target) ** 2).mean(-1) / probe.config.target_std**2  # (B, f)
    return (err * weight).sum() / weight.sum().clamp_min(1e-8)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="clips with cached latents (`pipeline.train.cache latents`)")
    p.add_argument("--out", help="folder for the probe (save_pretrained)")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--heldout-clips", type=int, default=0, help="last clips kept out, for the printed R2")
    p.add_argument("--linear", action="store_true",
                   help="measure only: how linearly the latents hold the openness (ridge, `linear_readability`)")
    p.add_argument("--threads", type=int, default=0)
    a = p.parse_args(argv)
    if a.linear != (a.out is None) or (a.linear and not a.heldout_clips):
        p.error("give --out to train a probe, or --linear with --heldout-clips to measure")
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.linear:
        print(json.dumps(linear_readability(a.data, a.heldout_clips)))
        return
    probe, heldout = fit(a.data, a.steps, a.heldout_clips)
    probe.save_pretrained(a.out)
    print(json.dumps(heldout))


if __name__ == "__main__":
    main()
