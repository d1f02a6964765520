"""Reverse process of READ: Algorithm 1 (ANS inference) and Joint-/Split-CFG (eq. 16-17).

N latent frames are split into k clips of f frames overlapping by one. At step T_i -> T_{i+1},
clip 1 runs at [0, T_i, ..., T_i]; clip j > 1 first takes clip j-1's last frame, already advanced
to T_{i+1}, as its first (motion) frame and runs at [0, T_{i+1}, T_i, ..., T_i].

Clip j at step i needs only clip j-1's state after step i, so running clip by clip (`sample_clips`)
computes the same latents as Algorithm 1's step-by-step order (`sample_step_major`, kept as the
reference the tests compare against), and clip 1 is final after 1/k of the work.

The overlap rule is written here once: clip j's latents start at `j (f - 1)`; `sample_clips` yields
only the latents each clip adds (all of clip 0, then each later clip without its shared first frame),
so concatenating what it yields is the whole latent video.

Precision: the Euler state and the timesteps stay float32 on every device; only the network's
inputs are cast to its dtype (`guided_velocity`). bf16 spacing near t = 0.3 is 2^-9, which would
move the sinusoidal timestep embedding by up to ~1 rad at its fastest frequency.
"""
from __future__ import annotations

import math
from typing import Callable, Iterator

import torch

from .config import CFG_MODES, TEMPORAL_COMPRESSION, SamplingConfig
from .scheduler import clip_timesteps, euler_step


def num_clips(num_latent_frames: int, clip_frames: int) -> int:
    return max(1, math.ceil((num_latent_frames - 1) / (clip_frames - 1)))


def padded_latent_frames(num_latent_frames: int, clip_frames: int) -> int:
    """Latent frames covered by whole clips: 1 + k (f - 1) >= num_latent_frames."""
    return 1 + num_clips(num_latent_frames, clip_frames) * (clip_frames - 1)


def latents_for_video(num_frames: int, clip_frames: int) -> int:
    """Latent frames to sample for a video of `num_frames` frames: enough 1 + 8k latents to cover
    it (the last latent may overhang), rounded up to whole clips."""
    covering = 1 + -(-(num_frames - 1) // TEMPORAL_COMPRESSION)  # 1 + ceil((T - 1) / 8)
    return padded_latent_frames(max(1, covering), clip_frames)


def new_latent_start(clip: int, clip_frames: int) -> int:
    """Index of the first latent frame that clip `clip` adds (clip 0 adds from 0, clip j > 0 from
    j (f - 1) + 1: its first frame is the previous clip's last)."""
    return 0 if clip == 0 else clip * (clip_frames - 1) + 1


def cfg_branches(cfg_mode: str = "split", alpha: float = 2.0, beta: float = 6.0):
    """The CFG passes as (weights, drop_audio, drop_ref), one entry per pass (eq. 16-17):

    Joint (eq. 16): (1-a) S(Z, 0) + a S(Z, C, z_R)                     -- 2 passes (1 when a = 1)
    Split (eq. 17): (1-a-b) S(Z, 0) + a S(Z, 0, z_R) + b S(Z, C, z_R)  -- 3 passes
    Raises ValueError for another mode. READ's sampler and REST's streamer both batch these.
    """
    if cfg_mode == "joint":
        if alpha == 1.0:  # no guidance: one pass is enough
            return [1.0], [False], [False]
        return [1 - alpha, alpha], [True, False], [True, False]
    if cfg_mode == "split":
        return [1 - alpha - beta, alpha, beta], [True, True, False], [True, False, False]
    raise ValueError(f"cfg_mode must be one of {CFG_MODES}, got {cfg_mode!r}")


def cfg_velocity(model, z, t, audio, cfg_mode: str = "split", alpha: float = 2.0, beta: float = 6.0, text=None):
    """Guided velocity for z = [z_R, clip] (B, C, 1+f, H, W), t (B, 1+f), audio (B, f, M, Da):
    the `cfg_branches` passes as one batched forward."""
    weights, drop_audio, drop_ref = cfg_branches(cfg_mode, alpha, beta)
    if len(weights) == 1:
        return model(z, t, audio, text=text)
    n, B = len(weights), z.shape[0]
    flags = lambda f: torch.tensor(f, device=z.device).repeat_interleave(B)  # noqa: E731
    rep = lambda x: None if x is None else x.repeat(n, *([1] * (x.dim() - 1)))  # noqa: E731
    v = model(rep(z), rep(t), rep(audio), drop_audio=flags(drop_audio), drop_ref=flags(drop_ref), text=rep(text))
    return sum(w * vi for w, vi in zip(weights, v.chunk(n)))


VelocityFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def guided_velocity(model, settings: SamplingConfig) -> VelocityFn:
    """velocity_fn(z, t, audio) of `settings`' CFG for `sample_clips`: z is cast to the model's dtype
    for the forward, t stays float32, and the velocity comes back float32."""
    dtype = next(model.parameters()).dtype

    def velocity(z, t, audio):
        v = cfg_velocity(model, z.to(dtype), t.float(), audio.to(dtype), settings.cfg_mode, settings.alpha,
                         settings.beta)
        return v.float()

    return velocity


def _clip_step(velocity_fn: VelocityFn, z_ref, z, audio, t_i, t_next, guided_first: bool):
    """One Euler step of one clip. If guided_first, z's first frame is already at t_next."""
    B, f = z.shape[0], z.shape[2]
    t = clip_timesteps(t_next if guided_first else t_i, t_i, f).to(z.device).expand(B, -1)
    t_to = clip_timesteps(t_next, t_next, f).to(z.device).expand(B, -1)
    x = torch.cat([z_ref.to(z.dtype), z], dim=2)  # (B, C, 1+f, H, W)
    x = euler_step(x, velocity_fn(x, t, audio), t, t_to)  # reference: dt = 0, stays clean
    return x[:, :, 1:]


def sample_clips(
    velocity_fn: VelocityFn, noise, z_ref, audio, timesteps, clip_frames: int, callback=None,
    motion_guidance: bool = True,
) -> Iterator[tuple[int, int, torch.Tensor]]:
    """Clip-major ANS sampling. Yields (clip index, the final latents this clip adds (B, C, n, H, W)).

    noise (B, C, N, H, W) with N = 1 + k(f-1) (the Euler state keeps noise's dtype: pass float32);
    z_ref (B, C, 1, H, W); audio (B, N, M, Da);
    timesteps (steps+1,) from 1 to 0. callback(clip, step) is called after every step.
    motion_guidance=False is the ablation without ANS: every clip is sampled from its own noise and
    the reference alone (plain clip concatenation), its first frame dropped as usual.
    """
    f, N = clip_frames, noise.shape[2]
    assert N == padded_latent_frames(N, f), "noise must cover whole clips (padded_latent_frames)"
    prev = None  # trajectory of clip j-1's last frame: states after each step
    for j in range(num_clips(N, f)):
        s = j * (f - 1)
        z = noise[:, :, s : s + f].clone()
        traj = [z[:, :, -1].clone()]
        for i in range(len(timesteps) - 1):
            if prev is not None:
                z[:, :, 0] = prev[i + 1]
            z = _clip_step(velocity_fn, z_ref, z, audio[:, s : s + f], timesteps[i], timesteps[i + 1], prev is not None)
            traj.append(z[:, :, -1].clone())
            if callback is not None:
                callback(j, i)
        prev = traj if motion_guidance else None
        yield j, z if j == 0 else z[:, :, 1:]


def sample_step_major(velocity_fn: VelocityFn, noise, z_ref, audio, timesteps, clip_frames: int) -> torch.Tensor:
    """Algorithm 1 in its published order (all clips advance one step at a time). Returns (B, C, N, H, W)."""
    f, N = clip_frames, noise.shape[2]
    starts = [j * (f - 1) for j in range(num_clips(N, f))]
    clips = [noise[:, :, s : s + f].clone() for s in starts]
    for i in range(len(timesteps) - 1):
        for j, s in enumerate(starts):
            if j > 0:
                clips[j][:, :, 0] = clips[j - 1][:, :, -1]  # already advanced to T_{i+1}
            clips[j] = _clip_step(velocity_fn, z_ref, clips[j], audio[:, s : s + f], timesteps[i], timesteps[i + 1], j > 0)
    return torch.cat([clips[0]] + [c[:, :, 1:] for c in clips[1:]], dim=2)
