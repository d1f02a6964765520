"""Speech side of READ: frame-aligned Whisper windows and the SpeechAE (eq. 7-9).

Frozen Whisper-tiny features S run at 50 Hz, two per video frame. Each video frame gets a window
of its own and its neighbours' features. The SpeechAE encoder (linear dimension change + causal
1-D convolutions) compresses time exactly like the VAE -- the first frame alone, then 8 frames
-> 1 -- so code group k belongs to latent frame k; the decoder reconstructs S from the codes.
"""
from __future__ import annotations

import math
import threading
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin

from .config import FPS, SAMPLE_RATE, TEMPORAL_COMPRESSION
from .memo import Memo


def frame_features(feats: torch.Tensor, num_frames: int, feats_per_frame: int = 2) -> torch.Tensor:
    """50 Hz features (T50, D) -> per video frame (num_frames, feats_per_frame * D), edge-padded."""
    need = num_frames * feats_per_frame
    if feats.shape[0] < need:  # audio ends inside the last frame: repeat the last feature
        feats = torch.cat([feats, feats[-1:].expand(need - feats.shape[0], -1)], dim=0)
    return feats[:need].reshape(num_frames, -1)


def frame_windows(frames: torch.Tensor, context: int) -> torch.Tensor:
    """(..., T, Df) -> (..., T, (2c+1) Df): each frame with c neighbours on each side (edge-padded)."""
    T = frames.shape[-2]
    idx = torch.arange(T)[:, None] + torch.arange(-context, context + 1)[None]  # (T, 2c+1)
    return frames[..., idx.clamp(0, T - 1), :].flatten(-2)


class CausalConv1d(nn.Conv1d):
    """Conv1d that only looks back: left padding of kernel - stride, so output j sees inputs <= stride*j + stride-1."""

    def forward(self, x):
        pad = self.kernel_size[0] - self.stride[0]
        return super().forward(F.pad(x, (pad, 0), mode="replicate"))


class SpeechAE(ModelMixin, ConfigMixin):
    @register_to_config
    def __init__(self, window_dim: int = 3840, frame_dim: int = 768, hidden_dim: int = 256, num_tokens: int = 4, code_dim: int = 64):
        super().__init__()
        h = hidden_dim
        self.enc_in = nn.Sequential(nn.LayerNorm(window_dim), nn.Linear(window_dim, h), nn.GELU())
        self.down = nn.ModuleList(CausalConv1d(h, h, kernel_size=3, stride=2) for _ in range(3))  # 8 -> 1
        self.enc_out = nn.Linear(h, num_tokens * code_dim)
        self.dec_in = nn.Linear(num_tokens * code_dim, h)
        self.up = nn.ModuleList(CausalConv1d(h, h, kernel_size=3, stride=1) for _ in range(3))  # 1 -> 8
        self.dec_out = nn.Sequential(nn.GELU(), nn.Linear(h, frame_dim))

    def encode(self, windows: torch.Tensor) -> torch.Tensor:
        """(B, 1+8k, window_dim) -> codes (B, 1+k, num_tokens, code_dim). Code k sees frames <= 8k."""
        x = self.enc_in(windows).transpose(1, 2)  # (B, h, T)
        first = x[:, :, :1].expand(-1, -1, TEMPORAL_COMPRESSION - 1)
        x = torch.cat([first, x], dim=2)  # (B, h, 8(k+1)): the first frame forms a group alone
        for conv in self.down:
            x = F.gelu(conv(x))  # (B, h, T/2)
        codes = self.enc_out(x.transpose(1, 2))  # (B, 1+k, M*Dc)
        return codes.unflatten(-1, (self.config.num_tokens, self.config.code_dim))

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (B, 1+k, M, Dc) -> reconstructed frame features (B, 1+8k, frame_dim)."""
        x = self.dec_in(codes.flatten(-2)).transpose(1, 2)  # (B, h, 1+k)
        for conv in self.up:
            x = F.gelu(conv(x.repeat_interleave(2, dim=2)))  # (B, h, 2T)
        x = x[:, :, TEMPORAL_COMPRESSION - 1 :]  # the first code decodes to one frame
        return self.dec_out(x.transpose(1, 2))

    def forward(self, windows):
        codes = self.encode(windows)
        return codes, self.decode(codes)


def build_speech_ae(cfg) -> SpeechAE:
    """A freshly initialised SpeechAE of the size a `SpeechConfig` names."""
    return SpeechAE(cfg.window_dim, cfg.frame_dim, cfg.hidden_dim, cfg.num_tokens, cfg.code_dim)


class LinearSpeechEncoder(ModelMixin, ConfigMixin):
    """The ablation without SpeechAE (READ Table 2): each latent frame's codes are one linear map of
    the Whisper features of its own video frames (the first frame alone, then groups of 8), trained
    with the DiT. Same `encode` contract as `SpeechAE`, so the pipeline runs it unchanged."""

    @register_to_config
    def __init__(self, window_dim: int = 3840, frame_dim: int = 768, num_tokens: int = 4, code_dim: int = 64):
        super().__init__()
        self.proj = nn.Sequential(nn.LayerNorm(TEMPORAL_COMPRESSION * frame_dim),
                                  nn.Linear(TEMPORAL_COMPRESSION * frame_dim, num_tokens * code_dim))

    def encode(self, windows: torch.Tensor) -> torch.Tensor:
        """(B, 1+8k, window_dim) -> codes (B, 1+k, num_tokens, code_dim)."""
        c = self.config
        context = (c.window_dim // c.frame_dim) // 2
        x = windows[..., context * c.frame_dim : (context + 1) * c.frame_dim]  # each frame's own features
        x = torch.cat([x[:, :1].expand(-1, TEMPORAL_COMPRESSION - 1, -1), x], dim=1)  # (B, 8(k+1), Df)
        codes = self.proj(x.reshape(x.shape[0], -1, TEMPORAL_COMPRESSION * c.frame_dim))
        return codes.unflatten(-1, (c.num_tokens, c.code_dim))


def build_speech_encoder(cfg, kind: str = "speech_ae"):
    """'speech_ae' (the method) or 'linear' (its ablation), freshly initialised."""
    if kind == "linear":
        return LinearSpeechEncoder(cfg.window_dim, cfg.frame_dim, cfg.num_tokens, cfg.code_dim)
    return build_speech_ae(cfg)


def load_speech_encoder(folder, **kwargs):
    """A saved SpeechAE or LinearSpeechEncoder, by the class its config.json names."""
    import json
    from pathlib import Path

    name = json.loads((Path(folder) / "config.json").read_text()).get("_class_name")
    cls = LinearSpeechEncoder if name == "LinearSpeechEncoder" else SpeechAE
    return cls.from_pretrained(folder, **kwargs)


def speech_ae_loss(s: torch.Tensor, s_hat: torch.Tensor, alpha: float = 1.0, beta: float = 0.1, tau: float = 0.07):
    """alpha * MSE(S, S_hat) + beta * contrastive (eq. 7-9).

    The contrastive term is InfoNCE over all frames of the batch: s_hat_i should be closer (cosine
    similarity / tau) to its own s_i than to any other frame's s_j. Returns (loss, mse, contrastive).
    """
    mse = F.mse_loss(s_hat, s)
    a = F.normalize(s_hat.flatten(0, -2), dim=-1)  # (N, D)
    b = F.normalize(s.flatten(0, -2), dim=-1)
    logits = a @ b.t() / tau  # (N, N)
    contrastive = F.cross_entropy(logits, torch.arange(len(a), device=a.device))
    return alpha * mse + beta * contrastive, mse, contrastive


class SpeechEncoder:
    """Speech -> SpeechAE codes: the frozen Whisper encoder (loaded on first use), its log-mel front
    end, the frame windows and the SpeechAE, with a memo of recent results.

    `encode(wav, num_latents)` is the whole speech stage of the pipeline; REST's incremental speech
    path extends this object. Thread-safe: concurrent requests share one Whisper.
    """

    def __init__(self, speech_ae, config, whisper=None):
        self.speech_ae, self.config = speech_ae, config  # config: SpeechConfig
        self._whisper, self._features = whisper, None
        self._lock = threading.Lock()
        self.memo = Memo()

    @property
    def whisper(self):
        """Frozen Whisper encoder (converted tiny.en weights unless `config.whisper` names others)."""
        with self._lock:
            if self._whisper is None:
                from .whisper import load_whisper

                device = next(self.speech_ae.parameters()).device
                self._whisper = load_whisper(self.config.whisper, encoder_only=True).to(device)
        return self._whisper

    @property
    def feature_extractor(self):
        """Whisper's log-mel front end (stateless; shared by READ's encode and REST's sessions)."""
        with self._lock:
            if self._features is None:
                from .whisper import load_feature_extractor

                self._features = load_feature_extractor()
        return self._features

    def to(self, device=None, dtype=None) -> "SpeechEncoder":
        self.speech_ae.to(device=device, dtype=dtype)
        if self._whisper is not None:
            self._whisper.to(device=device)
        return self

    @torch.no_grad()
    def encode(self, wav: np.ndarray, num_latents: int, timings: dict | None = None) -> torch.Tensor:
        """16-kHz mono float32 audio -> codes (1, num_latents, M, Dc), one group per latent frame.

        The audio is cut or padded with silence to the `1 + 8 (num_latents - 1)` video frames the
        latents span. `timings` (optional) gains "whisper" and "speech_ae" seconds.
        """
        frames = 1 + TEMPORAL_COMPRESSION * (num_latents - 1)
        padded = np.zeros(math.ceil(frames / FPS * SAMPLE_RATE), np.float32)  # silence after the end
        padded[: min(len(wav), len(padded))] = wav[: len(padded)]
        param = next(self.speech_ae.parameters())
        timings = {} if timings is None else timings

        def compute():
            from .whisper import encode_speech_features

            whisper, features = self.whisper, self.feature_extractor
            t0 = time.perf_counter()
            feats = encode_speech_features(whisper, features, padded).float().cpu()  # (T50, 384)
            t1 = time.perf_counter()
            x = frame_windows(frame_features(feats, frames, self.config.feats_per_frame), self.config.context_frames)
            codes = self.speech_ae.encode(x[None].to(param.device, param.dtype))  # (1, N, M, Dc)
            timings.update(whisper=t1 - t0, speech_ae=time.perf_counter() - t1)
            return codes

        return self.memo.get(self.memo.key("speech", padded, param.device, param.dtype), compute)
