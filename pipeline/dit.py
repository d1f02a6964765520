"""A2V-DiT: the audio-to-video diffusion transformer of READ.

Tokens are patchified video latents of the sequence [z_R, z_1 ... z_f] (reference frame first).
Each block: adaLN-Zero modulated self-attention over all tokens (3-D RoPE; optional text tokens
join the keys/values: full attention), frame-level audio cross-attention (the tokens of latent
frame k attend only to the speech codes C_k), and an MLP. The timestep is per token, because ANS
gives different frames different noise levels; a (B,) or (B, F) timestep is broadcast to tokens.
Predicts the flow-matching velocity (see `scheduler.py` for the convention).

Ready for a KV cache (REST, `streaming.py`): frame positions are an input (RoPE tables are cached
per layout, gpt-fast's `input_pos` habit), the reference can enter apart from the clip, each
block's self-attention can hand its keys/values to a per-layer cache, and an attention mask can be
given. None of this changes READ's computation: the defaults reproduce it bit for bit.
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin


def modulate(x, shift, scale):
    return x * (1 + scale) + shift


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of t in [0, 1] (scaled to [0, 1000] like DiT), any leading shape."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device) / half)
    args = 1000.0 * t[..., None].float() * freqs  # (..., half)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def rope_3d(frames, height: int, width: int, axes: tuple[int, int, int], device) -> tuple:
    """cos/sin (S, head_dim) for tokens laid out (frame, height, width), one band per axis.

    `frames` is a count (positions 0 ... frames-1) or a sequence of frame positions (REST re-bases
    them so they never grow). Tables are cached per layout: the same tensors come back, read only.
    """
    positions = tuple(range(frames)) if isinstance(frames, int) else tuple(int(f) for f in frames)
    return _rope_table(positions, height, width, tuple(axes), str(torch.device(device)))


@lru_cache(maxsize=32)
def _rope_table(positions: tuple, height: int, width: int, axes: tuple, device: str) -> tuple:
    grids = torch.meshgrid(
        torch.tensor(positions, device=device), torch.arange(height, device=device),
        torch.arange(width, device=device), indexing="ij",
    )
    angles = []
    for pos, dim in zip(grids, axes):
        inv = 1.0 / (10000 ** (torch.arange(0, dim, 2, device=device).float() / dim))  # (dim/2,)
        angles.append(pos.reshape(-1, 1).float() * inv)  # (S, dim/2)
    ang = torch.cat(angles, dim=-1).repeat_interleave(2, dim=-1)  # (S, head_dim)
    return ang.cos(), ang.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs of x (B, H, S, Dh)."""
    x1, x2 = x[..., 0::2], x[..., 1::2]
    rotated = torch.stack([-x2, x1], dim=-1).flatten(-2)  # (B, H, S, Dh)
    return x * cos + rotated * sin


KVCache = Callable[[torch.Tensor, torch.Tensor], tuple]  # (k, v) of this pass -> keys/values to attend over


class Attention(nn.Module):
    """Multi-head attention with RMS-normalised queries/keys (LTX does the same for stability)."""

    def __init__(self, dim: int, num_heads: int, kv_dim: int | None = None):
        super().__init__()
        self.h = num_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(kv_dim or dim, 2 * dim)
        self.q_norm = nn.RMSNorm(dim // num_heads, eps=1e-6)
        self.k_norm = nn.RMSNorm(dim // num_heads, eps=1e-6)
        self.out = nn.Linear(dim, dim)

    def heads(self, x):  # (B, S, D) -> (B, H, S, Dh)
        return x.unflatten(-1, (self.h, -1)).transpose(1, 2)

    def forward(self, x, context=None, rope=None, extra_kv=None, cache: KVCache | None = None, mask=None):
        """x (B, S, D) -> (B, S, D). cache: gets this pass's rotated keys/values (B, H, S, Dh) and
        returns the ones to attend over (gpt-fast's `KVCache.update`); mask (S, Sk) bool, True = attend."""
        q = self.q_norm(self.heads(self.q(x)))  # (B, H, S, Dh)
        k, v = self.kv(x if context is None else context).chunk(2, dim=-1)
        k, v = self.k_norm(self.heads(k)), self.heads(v)  # (B, H, Sk, Dh)
        if rope is not None:  # cos/sin are fp32: keep q, k in v's dtype (bf16/fp16 on a GPU)
            cos, sin = (r.to(q.dtype) for r in rope)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache(k, v)  # (B, H, Sk', Dh): cached sink/context + this pass
        if extra_kv is not None:  # text tokens: extra keys/values without position
            tk, tv = self.kv(extra_kv).chunk(2, dim=-1)
            k = torch.cat([k, self.k_norm(self.heads(tk))], dim=2)
            v = torch.cat([v, self.heads(tv)], dim=2)
            if mask is not None:  # every query may see the text
                mask = torch.cat([mask, mask.new_ones(mask.shape[0], tk.shape[1])], dim=1)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, H, S, Dh)
        return self.out(o.transpose(1, 2).flatten(2))  # (B, S, D)


class DiTBlock(nn.Module):
    """adaLN-Zero block with per-token modulation and frame-local audio cross-attention."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, audio_dim: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.audio_attn = Attention(dim, num_heads, kv_dim=dim)
        self.norm3 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))
        self.table = nn.Parameter(torch.zeros(6, dim))  # this block's share of the modulation

    def forward(self, x, mod, audio, frame_tokens, rope, text=None, cache=None, mask=None, ref_tokens=None):
        # x (B, S, D); mod (B, S, 6, D); audio (B*F', M, D) for the F' frames after the leading
        # `ref_tokens` reference tokens (default: one frame's worth, READ's layout)
        ref_tokens = frame_tokens if ref_tokens is None else ref_tokens
        shift1, scale1, gate1, shift2, scale2, gate2 = (mod + self.table).unbind(dim=2)
        x = x + gate1 * self.attn(modulate(self.norm1(x), shift1, scale1), rope=rope, extra_kv=text, cache=cache, mask=mask)
        x = x + self.cross_audio(self.norm2(x), audio, frame_tokens, ref_tokens)
        return x + gate2 * self.mlp(modulate(self.norm3(x), shift2, scale2))

    def cross_audio(self, x, audio, n, ref_tokens=None):
        """Tokens of latent frame k attend only to the codes of frame k; the reference gets none."""
        B, S, D = x.shape
        r = n if ref_tokens is None else ref_tokens
        if S == r:  # the reference alone (the ID-Sink pass): no audio
            return torch.zeros_like(x)
        video = x[:, r:].reshape(-1, n, D)  # (B*F', n, D): one row per latent frame
        out = self.audio_attn(video, context=audio).reshape(B, S - r, D)
        return torch.cat([torch.zeros_like(x[:, :r]), out], dim=1)  # (B, S, D)


class A2VDiT(ModelMixin, ConfigMixin):
    _supports_gradient_checkpointing = False

    @register_to_config
    def __init__(
        self,
        in_channels: int = 128,
        patch_size: int = 1,
        hidden_size: int = 256,
        depth: int = 6,
        num_heads: int = 4,
        mlp_ratio: float = 4.0,
        audio_dim: int = 64,
        text_dim: int | None = None,
        rope_axes: tuple[int, int, int] = (16, 24, 24),
    ):
        super().__init__()
        D, p = hidden_size, patch_size
        assert sum(rope_axes) == D // num_heads and all(a % 2 == 0 for a in rope_axes), "rope_axes: even parts of the head dim"
        self.x_embed = nn.Linear(in_channels * p * p, D)
        self.t_embed = nn.Sequential(nn.Linear(256, D), nn.SiLU(), nn.Linear(D, D))
        self.t_mod = nn.Sequential(nn.SiLU(), nn.Linear(D, 6 * D))  # shared by blocks (PixArt/LTX)
        self.ref_embed = nn.Parameter(torch.zeros(D))  # marks the reference frame's tokens
        self.null_ref = nn.Parameter(torch.zeros(D))  # replaces the reference when it is dropped
        self.null_audio = nn.Parameter(torch.zeros(audio_dim))  # replaces codes when dropped
        self.audio_proj = nn.Linear(audio_dim, D)
        self.text_proj = nn.Linear(text_dim, D) if text_dim else None
        self.blocks = nn.ModuleList(DiTBlock(D, num_heads, mlp_ratio, D) for _ in range(depth))
        self.norm_out = nn.LayerNorm(D, elementwise_affine=False, eps=1e-6)
        self.out_table = nn.Parameter(torch.zeros(2, D))
        self.t_out = nn.Sequential(nn.SiLU(), nn.Linear(D, 2 * D))
        self.proj_out = nn.Linear(D, in_channels * p * p)
        self.initialize_weights()

    def initialize_weights(self):
        def _basic(m):
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

        self.apply(_basic)
        nn.init.normal_(self.t_embed[0].weight, std=0.02)
        nn.init.normal_(self.t_embed[2].weight, std=0.02)
        nn.init.normal_(self.null_audio, std=0.02)
        nn.init.normal_(self.null_ref, std=0.02)
        # adaLN-Zero: modulation, audio output and final projection start at zero -> identity.
        for m in [self.t_mod[1], self.t_out[1], self.proj_out] + [b.audio_attn.out for b in self.blocks]:
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)

    def patchify(self, x):  # (B, C, F, H, W) -> (B, F*h*w, C*p*p)
        p = self.config.patch_size
        B, C, Fr, H, W = x.shape
        x = x.reshape(B, C, Fr, H // p, p, W // p, p).permute(0, 2, 3, 5, 1, 4, 6)
        return x.reshape(B, Fr * (H // p) * (W // p), C * p * p)

    def unpatchify(self, x, Fr, H, W):  # inverse of patchify
        p, C = self.config.patch_size, self.config.in_channels
        x = x.reshape(x.shape[0], Fr, H // p, W // p, C, p, p).permute(0, 4, 1, 2, 5, 3, 6)
        return x.reshape(x.shape[0], C, Fr, H, W)

    def conditioning(self, t, B, Fr, n):
        """Modulation for every token from a (B,) / () time, per-frame (B, F) or per-token (B, F*n) times.

        The shape alone decides (no data-dependent branch): per-frame times (what the sampler and the
        trainer pass; ANS times are constant within a frame) are embedded per frame and repeated
        over the frame's n tokens. Returns (B, S, 6, D), (B, S, 2, D).
        """
        t = t.reshape(B, -1) if t.dim() > 0 else t.expand(B)[:, None]
        if t.shape[1] == 1:
            t = t.expand(B, Fr)
        if t.shape[1] not in (Fr, Fr * n):
            raise ValueError(f"timestep must give 1, {Fr} (per frame) or {Fr * n} (per token) times, got {t.shape[1]}")
        c = self.t_embed(timestep_embedding(t, 256).to(self.x_embed.weight.dtype))  # (B, F or S, D)
        mod, out = self.t_mod(c).unflatten(-1, (6, -1)), self.t_out(c).unflatten(-1, (2, -1))
        if t.shape[1] == Fr:  # per frame -> per token
            mod, out = mod.repeat_interleave(n, dim=1), out.repeat_interleave(n, dim=1)
        return mod, out

    def embed(self, latents, reference=None, drop_ref=None, with_reference: bool = True):
        """Tokens (B, S, D) of [reference, latents] (or of latents alone, reference at F=0 when it is
        None); the reference's tokens get `ref_embed`, or the null reference where drop_ref (B,) is set."""
        if reference is not None:
            latents = torch.cat([reference, latents], dim=2)
        x = self.x_embed(self.patchify(latents))  # (B, S, D)
        if not with_reference:
            return x
        B, n = x.shape[0], x.shape[1] // latents.shape[2]
        ref = self.ref_embed.expand(B, n, -1)
        if drop_ref is not None:
            ref = torch.where(drop_ref[:, None, None], self.null_ref.expand(B, n, -1), ref + x[:, :n])
        else:
            ref = ref + x[:, :n]
        return torch.cat([ref, x[:, n:]], dim=1)

    def forward(self, latents, timestep, audio, drop_audio=None, drop_ref=None, text=None, *,
                reference=None, frame_positions: Sequence[int] | None = None, attn_mask=None,
                kv_cache: Sequence[KVCache] | None = None):
        """Velocity with the shape of `latents` (B, C, F, H, W). Three layouts:

        - READ (default): the reference is latents[:, :, 0]; timestep (B,), (B, F) or (B, F*h*w)
          covers it; audio (B, F-1, M, Da) holds the codes of the other frames.
        - `reference` (B, C, 1, H, W) given: the sequence is [reference, latents], the reference at
          t = 0; timestep (B,) or (B, F) and audio (B, F, M, Da) cover `latents` only, as does the output.
        - `kv_cache` given, `reference` not: no reference in this pass (the cache's ID-Sink holds it);
          timestep and audio cover `latents`; `frame_positions` is required.
        frame_positions: frame index of each frame of the sequence (default 0, 1, ...); REST re-bases
        them. attn_mask (S, S_keys) bool, True = may attend. kv_cache: one `KVCache` per block.
        drop_audio / drop_ref (B,) bool: use the learned null condition (for CFG).
        """
        B, _, Fr, H, W = latents.shape
        p = self.config.patch_size
        n = (H // p) * (W // p)  # tokens per latent frame
        has_ref = kv_cache is None or reference is not None
        if frame_positions is None and not has_ref:
            raise ValueError("frame_positions must be given when the reference is not in the sequence")
        x = self.embed(latents, reference, drop_ref, has_ref)  # (B, S, D)
        if reference is not None:  # the reference enters at t = 0
            t = timestep if timestep.dim() == 2 else timestep.reshape(-1, 1).expand(B, Fr)  # (B, F)
            timestep = torch.cat([t.new_zeros(B, 1), t], dim=1)  # (B, 1+F)
        Fs = Fr + (reference is not None)  # frames in the sequence
        if drop_audio is not None:
            audio = torch.where(drop_audio[:, None, None, None], self.null_audio.expand_as(audio), audio)
        a = self.audio_proj(audio).flatten(0, 1)  # (B*F', M, D)
        mod, mod_out = self.conditioning(timestep, B, Fs, n)  # (B, S, 6, D), (B, S, 2, D)
        rope = rope_3d(Fs if frame_positions is None else frame_positions, H // p, W // p, self.config.rope_axes, x.device)
        txt = self.text_proj(text) if (text is not None and self.text_proj is not None) else None
        for i, block in enumerate(self.blocks):
            cache = None if kv_cache is None else kv_cache[i]
            x = block(x, mod, a, n, rope, txt, cache=cache, mask=attn_mask, ref_tokens=n if has_ref else 0)
        if reference is not None:  # the output covers `latents` only
            x, mod_out = x[:, n:], mod_out[:, n:]
        shift, scale = (mod_out + self.out_table).unbind(dim=2)
        x = self.proj_out(modulate(self.norm_out(x), shift, scale))  # (B, S, C*p*p)
        return self.unpatchify(x, Fr, H, W)


def build_dit(cfg) -> A2VDiT:
    """A freshly initialised A2V-DiT of the size a `DiTConfig` names."""
    return A2VDiT(in_channels=cfg.in_channels, patch_size=cfg.patch_size, hidden_size=cfg.hidden_size, depth=cfg.depth,
                  num_heads=cfg.num_heads, mlp_ratio=cfg.mlp_ratio, audio_dim=cfg.audio_dim, text_dim=cfg.text_dim,
                  rope_axes=tuple(cfg.rope_axes))
