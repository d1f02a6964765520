"""A frame refiner: a small residual CNN after the VAE decoder that restores what a linear code blurs.

Why. The default VAE is *constructed* (`pipeline.train.pca_init`): a near-linear principal-component code,
decoded by a near-linear decoder, so its reconstruction is the code's own projection — eyes, glasses'
edges and the lips come back soft (docs/TRAINING.md §13: no linear code of 128 channels holds the eyes
box at 22 dB). A nonlinear step after the decoder knows what these faces look like and puts the edges
back: decoder output -> refined frames, trained on (decode, truth) pairs (`pipeline.train.refiner`), the
way a codec's post-filter or a super-resolution network (EDSR, Lim et al. 2017: residual blocks, no
normalisation, a global skip) works. The LTX VAE itself is untouched, so real LTX weights load as before
and simply run without a refiner.

It works per frame on 4 x 4 pixel patches (`pixel_unshuffle`: the LTX decoder's own output layout, 48
channels at H/4 x W/4), so every 3 x 3 convolution sees 12 x 12 pixels and a 128^2 frame costs a few ms on
one thread. Per frame means clip-by-clip streaming decodes stay seam-free (`vae.StreamingDecoder`). The
output layer starts at zero: an untrained refiner is the identity.
"""
from __future__ import annotations

import time

from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin

REFINER_DIR = "refiner"  # a saved pipeline's subfolder


class FrameRefiner(ModelMixin, ConfigMixin):
    """Decoded frames (N, 3, H, W) in [-1, 1] -> refined frames, same shape and range (clamped).

    patch_size: pixels per side of a patch (H and W must be multiples of it); hidden_channels, num_layers:
    width and number of residual 3 x 3 conv layers. Raises ValueError on a frame size it cannot patch.
    """

    @register_to_config
    def __init__(self, patch_size: int = 4, hidden_channels: int = 96, num_layers: int = 6):
        super().__init__()
        c = 3 * patch_size * patch_size
        self.conv_in = torch.nn.Conv2d(c, hidden_channels, 3, padding=1)
        self.layers = torch.nn.ModuleList(torch.nn.Conv2d(hidden_channels, hidden_channels, 3, padding=1)
                                          for _ in range(num_layers))
        self.conv_out = torch.nn.Conv2d(hidden_channels, c, 3, padding=1)
        torch.nn.init.zeros_(self.conv_out.weight)  # the identity until trained
        torch.nn.init.zeros_(self.conv_out.bias)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        p = self.config.patch_size
        if frames.shape[-1] % p or frames.shape[-2] % p:
            raise ValueError(f"frame size {tuple(frames.shape[-2:])} is not a multiple of the patch size {p}")
        h = F.silu(self.conv_in(F.pixel_unshuffle(frames, p)))
        for layer in self.layers:
            h = h + F.silu(layer(h))
        return (frames + F.pixel_shuffle(self.conv_out(h), p)).clamp(-1, 1)

    def refine_video(self, video: torch.Tensor, frames_per_batch: int = 64) -> torch.Tensor:
        """Videos (B, 3, T, H, W) -> the same, every frame refined on its own (in batches of frames), run in
        the refiner's dtype and returned in the video's."""
        b, c, t, h, w = video.shape
        # channels-last frames: oneDNN's preferred layout for these convolutions (12 % faster on one thread)
        flat = video.movedim(2, 1).reshape(b * t, c, h, w).to(self.dtype).contiguous(memory_format=torch.channels_last)
        out = torch.cat([self(flat[i : i + frames_per_batch]) for i in range(0, len(flat), frames_per_batch)])
        return out.reshape(b, t, c, h, w).movedim(1, 2).to(video.dtype)


def load_refiner(folder) -> FrameRefiner | None:
    """The refiner saved in a pipeline folder (`folder/refiner/`), in eval mode, or None if it has none."""
    path = Path(folder) / REFINER_DIR
    if not (path / "config.json").is_file():
        return None
    refiner = FrameRefiner.from_pretrained(path, torch_dtype=torch.float32).eval().requires_grad_(False)
    return refiner.to(memory_format=torch.channels_last)  # weights in the layout refine_video feeds them


@torch.no_grad()
def refine_clips(refiner: FrameRefiner, videos, timings: dict):
    """Yield each video (B, 3, T, H, W) of `videos` refined frame by frame (`FrameRefiner.refine_video`),
    adding the seconds spent refining (not the wait for the next video) to `timings["refine"]`."""
    for video in videos:
        t0 = time.perf_counter()
        out = refiner.refine_video(video)
        timings["refine"] = timings.get("refine", 0.0) + time.perf_counter() - t0
        yield out
