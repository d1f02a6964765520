"""Temporal VAE: LTX-Video's `AutoencoderKLLTXVideo` (32x32 pixels x 8 frames per latent token).

A clip of 1 + 8k frames <-> 1 + k latent frames; latent frame 0 <-> video frame 0, latent frame
k >= 1 <-> video frames 8k-7 ... 8k. The encoder is causal in time, so the reference image is
encoded alone as a one-frame video. The decoder is *not* causal: `StreamingDecoder` decodes clip by
clip with left context and one latent frame of look-ahead, and drops the duplicated frames.
"""
from __future__ import annotations

import time

import numpy as np
import torch
from diffusers import AutoencoderKLLTXVideo

from .config import TEMPORAL_COMPRESSION, VAEConfig


def build_vae(cfg: VAEConfig) -> AutoencoderKLLTXVideo:
    """Real LTX weights when `cfg.pretrained` names them, else a fresh model from the preset."""
    if cfg.pretrained:
        return AutoencoderKLLTXVideo.from_pretrained(cfg.pretrained, subfolder="vae")
    return AutoencoderKLLTXVideo(**cfg.kwargs)


def skip_zero_residuals(vae: AutoencoderKLLTXVideo) -> int:
    """Let every resnet block whose residual branch is exactly zero (its `conv2` weights and bias all 0,
    no noise injection) return its shortcut alone at inference: the same output, bit for bit, without
    computing a branch that adds nothing. The constructed VAE (`pipeline.train.pca_init`) starts every
    branch at zero; its decoder runs ~2.7x faster this way. Blocks stay whole (state dict, save, load);
    with gradients enabled, or once a branch is non-zero, the block runs in full. Returns the count."""
    from diffusers.models.autoencoders.autoencoder_kl_ltx import LTXVideoResnetBlock3d

    count = 0
    for block in vae.modules():
        if (isinstance(block, LTXVideoResnetBlock3d) and block.per_channel_scale1 is None
                and block.per_channel_scale2 is None and _branch_is_zero(block)):
            block.forward = _shortcut_forward.__get__(block)
            count += 1
    return count


def _branch_is_zero(block) -> bool:
    conv = block.conv2.conv
    return not conv.weight.any() and (conv.bias is None or not conv.bias.any())


def _shortcut_forward(self, inputs, temb=None, generator=None):
    """LTXVideoResnetBlock3d.forward when its branch adds 0: norm3 and conv_shortcut of the input only."""
    if torch.is_grad_enabled() or not _branch_is_zero(self):
        return type(self).forward(self, inputs, temb, generator)
    if self.norm3 is not None:
        inputs = self.norm3(inputs.movedim(1, -1)).movedim(-1, 1)
    return self.conv_shortcut(inputs) if self.conv_shortcut is not None else inputs


def latent_frames(num_frames: int) -> int:
    """Latent frames of a 1 + 8k frame video."""
    return 1 + (num_frames - 1) // TEMPORAL_COMPRESSION


def first_video_frame(latent: int) -> int:
    """The first video frame latent frame `latent` decodes to (latent 0 -> frame 0, k >= 1 -> 8k - 7)."""
    return 0 if latent == 0 else TEMPORAL_COMPRESSION * latent - (TEMPORAL_COMPRESSION - 1)


def video_frames(num_latents: int) -> int:
    return 1 + TEMPORAL_COMPRESSION * (num_latents - 1)


def _stats(vae, z):
    mean = vae.latents_mean.view(1, -1, 1, 1, 1).to(z)
    std = vae.latents_std.view(1, -1, 1, 1, 1).to(z)
    return mean, std, vae.config.scaling_factor


def normalize(vae, z):
    mean, std, s = _stats(vae, z)
    return (z - mean) * s / std


def denormalize(vae, z):
    mean, std, s = _stats(vae, z)
    return z * std / s + mean


@torch.no_grad()
def encode(vae, video: torch.Tensor, sample: bool = False, generator=None) -> torch.Tensor:
    """Pixels (B, 3, 1+8k, H, W) in [-1, 1] -> normalised latents (B, C, 1+k, H/32, W/32)."""
    dist = vae.encode(video.to(vae.dtype)).latent_dist
    z = dist.sample(generator) if sample else dist.mode()
    return normalize(vae, z.float())


def encode_image(vae, image: torch.Tensor) -> torch.Tensor:
    """Reference image (B, 3, H, W) in [-1, 1] -> z_R (B, C, 1, h, w): a one-frame video."""
    return encode(vae, image[:, :, None])


@torch.no_grad()
def decode(vae, z: torch.Tensor, refiner=None) -> torch.Tensor:
    """Normalised latents (B, C, n, h, w) -> pixels (B, 3, 1+8(n-1), H, W) in [-1, 1]; every frame then
    through `refiner` (a `refiner.FrameRefiner`) when one is given."""
    x = vae.decode(denormalize(vae, z).to(vae.dtype), return_dict=False)[0].float().clamp(-1, 1)
    if refiner is None:
        return x
    return refiner.refine_video(x)


def to_pixels(rgb) -> torch.Tensor:
    """uint8 RGB (..., H, W, 3) numpy -> float32 tensor in [-1, 1] with the channel axis first:
    an image (H, W, 3) -> (3, H, W), a video (T, H, W, 3) -> (3, T, H, W). The inverse of `to_uint8`."""
    return torch.from_numpy(np.ascontiguousarray(rgb)).movedim(-1, 0).float() / 127.5 - 1


def to_uint8(pixels: torch.Tensor):
    """Decoded pixels (B, 3, T, H, W) in [-1, 1] -> the first video as (T, H, W, 3) uint8 numpy."""
    return ((pixels[0].permute(1, 2, 3, 0).float() + 1) * 127.5).round().clamp(0, 255).byte().cpu().numpy()


class StreamingDecoder:
    """Decode a growing latent sequence clip by clip without seams.

    Each `push` decodes the latents from `context` latent frames before the first frame not yet
    emitted (the decoder's left receptive field) to the newest, and holds back the last `holdback`
    video frames until more latents arrive (its right receptive field: the decoder is not causal).
    The first push holds back only `first_holdback`, so that a first clip of 5 latent frames still
    makes a 1-s chunk (33 - 8 = 25 frames); 15 is the most that keeps the second one at 1 s too
    (65 - 15 - 25). Context frames are decoded but dropped. A `refiner` (`refiner.FrameRefiner`) refines
    the emitted frames, each on its own, so a streamed video equals `decode(vae, z, refiner)` of the whole.

    On CPU a non-final decode of fewer than `min_latents` latent frames is padded by repeating its
    last latent frame (the held-back frames see it instead of the next clip's): PyTorch runs small
    3-D convolutions on its slow native kernel instead of oneDNN (`use_mkldnn` asks N*C*D*H > 20480).
    The measurements behind these sizes (seam ratios per hold-back, decode times) are in
    docs/TRAINING.md.
    """

    def __init__(self, vae, context: int = 2, holdback: int = 15, first_holdback: int = 8, min_latents: int = 6,
                 refiner=None):
        assert context >= 1, "the first decoded latent yields one frame only: keep one of context"
        self.vae, self.context, self.min_latents, self.refiner = vae, context, min_latents, refiner
        self.holdback, self.first_holdback = holdback, first_holdback
        self.latents: torch.Tensor | None = None
        self.emitted = 0  # video frames emitted so far

    def push(self, new: torch.Tensor, final: bool = False) -> torch.Tensor | None:
        """Append latents (B, C, n, h, w); return newly final pixels (B, 3, T, H, W) or None."""
        T = TEMPORAL_COMPRESSION
        self.latents = new if self.latents is None else torch.cat([self.latents, new], dim=2)
        total = self.latents.shape[2]
        hold = 0 if final else self.first_holdback if self.emitted == 0 else self.holdback
        end = 1 + T * (total - 1) - hold  # emit video frames [emitted, end)
        if end <= self.emitted:
            return None
        first_latent = 0 if self.emitted == 0 else 1 + (self.emitted - 1) // T  # the latent of frame `emitted`
        start = max(0, first_latent - self.context)
        window = self.latents[:, :, start:total]
        pad = self.min_latents - window.shape[2] if not final and window.device.type == "cpu" else 0
        if pad > 0:
            window = torch.cat([window, window[:, :, -1:].expand(-1, -1, pad, -1, -1)], dim=2)
        frames = decode(self.vae, window)
        offset = T * start  # video frame g is frame g - offset of a decode that starts at latent `start`
        out = frames[:, :, self.emitted - offset : end - offset]
        self.emitted = end
        if self.refiner is not None:  # per frame: only the emitted ones, seams unaffected
            with torch.no_grad():
                out = self.refiner.refine_video(out)
        return out

    def trim(self) -> None:
        """Drop latents no later `push` reads again (all before `context` latents ahead of the first
        frame not yet emitted), shifting the frame count to match, so memory stays flat over an endless
        stream (REST). The latent kept first becomes "frame 0"'s: `push`'s index arithmetic holds."""
        if self.latents is None or self.emitted == 0:
            return
        drop = 1 + (self.emitted - 1) // TEMPORAL_COMPRESSION - self.context
        if drop > 0:
            self.latents = self.latents[:, :, drop:]
            self.emitted -= TEMPORAL_COMPRESSION * drop


def decode_clips(decoder: StreamingDecoder, clips, num_clips: int, timings: dict):
    """Yield the newly final pixels (B, 3, T, H, W) in [-1, 1] that `decoder` makes of each (index, latents)
    item of `clips` (index `num_clips - 1` is the last and flushes it), adding the seconds spent in
    `decoder.push` (not the wait for the next clip) to `timings["decode"]`."""
    for j, latents in clips:
        t0 = time.perf_counter()
        pixels = decoder.push(latents, final=(j == num_clips - 1))
        timings["decode"] = timings.get("decode", 0.0) + time.perf_counter() - t0
        if pixels is not None:
            yield pixels
