"""Flow matching and the Asynchronous Noise Scheduler (ANS) timesteps.

Convention, written once for the whole project:

    Z(t) = (1 - t) * Z(0) + t * eps        t = 1 is pure noise, t = 0 is clean
    v    = eps - Z(0)                      the velocity the A2V-DiT predicts
    Euler step from t to t_next (< t):    Z <- Z + (t_next - t) * v_hat

ANS gives every latent frame its own t: the reference frame is always clean (t = 0) and the first
frame of a clip (the motion frame) is less noisy than the rest.
"""
from __future__ import annotations

import torch


def add_noise(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Z(t) for latents (B, C, F, H, W) and per-frame times t (B, F)."""
    t = t[:, None, :, None, None].to(x0.dtype)  # (B, 1, F, 1, 1)
    return (1 - t) * x0 + t * noise


def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    return noise - x0


def euler_step(z: torch.Tensor, v: torch.Tensor, t: torch.Tensor, t_next: torch.Tensor) -> torch.Tensor:
    """One Euler step; t and t_next are per frame (B, F) so frames can move different amounts."""
    dt = (t_next - t)[:, None, :, None, None].to(z.dtype)  # (B, 1, F, 1, 1)
    return z + dt * v


def logit_normal(shape, mu: float, sigma: float, generator=None, device=None) -> torch.Tensor:
    """t = sigmoid(N(mu, sigma)): most mass at mid noise levels (SD3 / LTX training)."""
    return torch.sigmoid(mu + sigma * torch.randn(shape, generator=generator, device=device))


def sample_async_timesteps(
    batch: int, num_frames: int, mu: float = 0.0, sigma: float = 1.0, generator=None, device=None,
    synchronous: bool = False,
) -> torch.Tensor:
    """ANS training timesteps (B, 1 + num_frames): [0, t1, t2, ..., t2] with t1 < t2.

    Two logit-normal draws per sample, sorted so that the motion frame gets the smaller one.
    synchronous=True is the ablation without ANS: one time for every clip frame (t1 = t2).
    """
    t = logit_normal((batch, 2), mu, sigma, generator, device).sort(dim=1).values  # (B, 2)
    t1, t2 = (t[:, 1:], t[:, 1:]) if synchronous else (t[:, :1], t[:, 1:])
    ref = torch.zeros_like(t1)
    return torch.cat([ref, t1, t2.expand(batch, num_frames - 1)], dim=1)  # (B, 1 + f)


def inference_timesteps(num_steps: int, shift: float = 1.0) -> torch.Tensor:
    """T_0 = 1 > T_1 > ... > T_N = 0, optionally shifted towards high noise (shift > 1)."""
    t = torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64)
    t = shift * t / (1 + (shift - 1) * t)
    return t.float()


def clip_timesteps(t_motion: float, t_rest: float, num_frames: int) -> torch.Tensor:
    """Per-frame times of one clip with its reference frame: [0, t_motion, t_rest, ..., t_rest]."""
    return torch.tensor([0.0, float(t_motion)] + [float(t_rest)] * (num_frames - 1))
