"""Configuration dataclasses and the model presets.

Every saved pipeline stores its `PipelineConfig` as JSON next to the weights, so a checkpoint
always says what it is. Presets live here, in code; defaults never read files.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

FPS = 25  # video frame rate of the whole method (LTX-Video and the paper use 25 fps)
SAMPLE_RATE = 16_000  # Whisper's input rate
TEMPORAL_COMPRESSION = 8  # VAE: 8 video frames -> 1 latent frame (the first frame alone)
SPATIAL_COMPRESSION = 32  # VAE: 32x32 pixels -> 1 latent token


@dataclass
class VAEConfig:
    """Keyword arguments of `diffusers.AutoencoderKLLTXVideo` (its defaults = the real LTX VAE)."""

    pretrained: str | None = None  # folder or hub id with a `vae` subfolder (real LTX weights)
    kwargs: dict = field(default_factory=dict)  # overrides of the diffusers defaults


@dataclass
class SpeechConfig:
    """Frozen Whisper-tiny features -> SpeechAE codes, one group of tokens per latent frame."""

    whisper: str | None = None  # transformers folder / hub id; None = converted tiny.en (PyPI)
    whisper_dim: int = 384  # Whisper-tiny encoder width
    feats_per_frame: int = 2  # Whisper runs at 50 Hz, video at 25 fps
    context_frames: int = 2  # neighbouring video frames on each side in a frame's window
    hidden_dim: int = 256  # SpeechAE width after the linear dimension change
    num_tokens: int = 4  # speech tokens per latent frame (keys of the audio cross-attention)
    code_dim: int = 64  # width of one speech token
    temperature: float = 0.07  # tau of the contrastive loss (eq. 9)

    @property
    def window_dim(self) -> int:
        return (2 * self.context_frames + 1) * self.feats_per_frame * self.whisper_dim

    @property
    def frame_dim(self) -> int:
        return self.feats_per_frame * self.whisper_dim


@dataclass
class DiTConfig:
    """A2V-DiT size. `in_channels` must equal the VAE latent channels."""

    in_channels: int = 128
    patch_size: int = 1  # latent tokens per patch side (LTX uses 1: the VAE already patchifies)
    hidden_size: int = 256
    depth: int = 6
    num_heads: int = 4
    mlp_ratio: float = 4.0
    audio_dim: int = 64  # = SpeechConfig.code_dim
    text_dim: int | None = None  # text conditioning (full attention) when set; off in `tiny`
    rope_axes: tuple[int, int, int] = (16, 24, 24)  # head-dim split over (frame, height, width)


MODES = ("read", "rest")  # READ: whole clips with motion frames; REST: chunk-wise streaming (ID-Context cache)
RENDERS = ("auto", "diffusion", "photo")  # who draws the frames: the VAE, or photo mode's warp of a real photo
CFG_MODES = ("joint", "split")


@dataclass(frozen=True)
class SamplingConfig:
    """Sampling settings: the model's defaults in `PipelineConfig.sampling`, one request's resolved
    values from `resolve_settings` (the paper's defaults: 8 steps, Split-CFG, alpha 2, beta 6).

    Frozen: a resolved request travels as one value from the caller through the sampler.
    """

    num_inference_steps: int = 8
    cfg_mode: str = "split"  # "joint" (eq. 16, 2 passes) or "split" (eq. 17, 3 passes)
    alpha: float = 2.0  # guidance scale of the reference (and audio, in Joint)
    beta: float = 6.0  # audio guidance scale (Split only)
    shift: float = 1.0  # timestep shift of the inference schedule (SD3-style)
    clip_latent_frames: int = 5  # f: latent frames per clip, overlapping by one
    mode: str = "read"  # one of MODES
    render: str = "auto"  # one of RENDERS
    train_mu: float = 0.0  # logit-normal location of training timesteps
    train_sigma: float = 1.0  # logit-normal scale of training timesteps
    motion_guidance: bool = True  # False only for the ablation without ANS (see sampler.sample_clips)


@dataclass(frozen=True)
class Limit:
    """Valid range of one numeric parameter (what the pipeline, API and CLI accept) and the
    narrower range the app's sliders offer."""

    lo: float
    hi: float
    ui_lo: float
    ui_hi: float
    integer: bool = False
    label: str = ""

    @property
    def ui(self) -> tuple[float, float]:
        return self.ui_lo, self.ui_hi


# The one limits table. Keys are the parameter names of `resolve_settings`, the app and the CLI.
LIMITS: dict[str, Limit] = {
    "num_inference_steps": Limit(1, 100, 1, 50, True, "Steps"),
    "alpha": Limit(0.0, 20.0, 0.0, 10.0, False, "α (guidance scale)"),
    "beta": Limit(0.0, 20.0, 0.0, 10.0, False, "β (audio guidance scale)"),
    "shift": Limit(0.1, 10.0, 0.1, 10.0, False, "Schedule shift"),
    "clip_latent_frames": Limit(2, 64, 2, 16, True, "Clip length (latent frames)"),
    "seed": Limit(0, 2**63 - 1, 0, 2**31 - 1, True, "Seed"),
    "max_seconds": Limit(1.0, 120.0, 1.0, 120.0, False, "Maximum duration (s)"),
    "rate": Limit(80, 300, 80, 300, True, "Speaking rate (words per minute)"),
    "threads": Limit(0, 256, 0, 256, True, "Threads"),
}
SETTING_NAMES = ("num_inference_steps", "cfg_mode", "alpha", "beta", "shift", "clip_latent_frames", "mode", "render")
CHOICES = {"cfg_mode": CFG_MODES, "mode": MODES, "render": RENDERS}


def check_value(name: str, value, label: str | None = None):
    """`value` checked against `LIMITS[name]` (or `CHOICES[name]`); returns it as int/float/str.

    Raises `InputError` with one sentence naming the parameter (`label`, default its API name), its
    range and the value given.
    Strings of numbers (from a form or a CLI) are accepted; bools, NaN and infinities are not.
    """
    import math

    from .errors import InputError

    if name in CHOICES:
        text = str(value).lower() if isinstance(value, str) else value
        if text not in CHOICES[name]:
            raise InputError(f"{label or name} must be one of {', '.join(CHOICES[name])} (got {value!r}).")
        return text
    lim = LIMITS[name]
    try:
        x = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        x = math.nan
    if not math.isfinite(x) or not lim.lo <= x <= lim.hi or (lim.integer and x != int(x)):
        kind = "a whole number" if lim.integer else "a number"
        raise InputError(f"{label or name} must be {kind} from {lim.lo:g} to {lim.hi:g} (got {value!r}).")
    return int(x) if lim.integer else x


def resolve_settings(defaults: SamplingConfig, **given) -> SamplingConfig:
    """`defaults` with every setting in `given` that is not None, each validated once.

    `given` keys: `SETTING_NAMES`. Raises `InputError` for an unknown name or an invalid value.
    """
    from .errors import InputError

    unknown = set(given) - set(SETTING_NAMES)
    if unknown:
        raise InputError(f"unknown setting(s) {sorted(unknown)}; valid: {', '.join(SETTING_NAMES)}")
    values = {k: check_value(k, v) for k, v in given.items() if v is not None}
    return dataclasses.replace(defaults, **values)


@dataclass
class PipelineConfig:
    preset: str = "tiny"
    height: int = 128
    width: int = 128
    max_seconds: float = 120.0  # longest audio accepted
    vae: VAEConfig = field(default_factory=VAEConfig)
    speech: SpeechConfig = field(default_factory=SpeechConfig)
    dit: DiTConfig = field(default_factory=DiTConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "PipelineConfig":
        sub = {"vae": VAEConfig, "speech": SpeechConfig, "dit": DiTConfig, "sampling": SamplingConfig}
        kw = {k: (sub[k](**v) if k in sub else v) for k, v in d.items()}
        if "dit" in kw and isinstance(kw["dit"].rope_axes, list):
            kw["dit"].rope_axes = tuple(kw["dit"].rope_axes)
        return cls(**kw)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))

    @classmethod
    def load(cls, path: str | Path) -> "PipelineConfig":
        return cls.from_dict(json.loads(Path(path).read_text()))


# The 3.58 M-parameter LTX VAE with the real VAE's 32x32x8 compression (DESIGN.md).
TINY_VAE = dict(
    latent_channels=128,
    block_out_channels=(16, 32, 64, 64),
    decoder_block_out_channels=(16, 32, 64, 64),
    layers_per_block=(1, 1, 1, 1, 1),
    decoder_layers_per_block=(1, 1, 1, 1, 1),
    spatio_temporal_scaling=(True, True, True, False),
    decoder_spatio_temporal_scaling=(True, True, True, False),
    patch_size=4,
    patch_size_t=1,
    timestep_conditioning=False,
    encoder_causal=True,
    decoder_causal=False,
)

# Same class and 32x32x8 compression, 29.3 M parameters: 48 channels at the full-detail end (the
# 4x4 patchify makes 48; the tiny VAE squeezed them into 16) and 192 in the deep blocks, where few
# positions make width cheap. Decodes 121 frames at 128^2 in ~4-6x the tiny VAE's time (docs/TRAINING.md).
FIDELITY_VAE = dict(
    TINY_VAE,
    block_out_channels=(48, 96, 192, 192),
    decoder_block_out_channels=(48, 96, 192, 192),
)


def tiny() -> PipelineConfig:
    """CPU default: tiny LTX VAE at 128x128, small DiT. Sized to train and run on 2 cores."""
    return PipelineConfig(preset="tiny", height=128, width=128, vae=VAEConfig(kwargs=dict(TINY_VAE)))


def read_512() -> PipelineConfig:
    """Paper scale: real LTX VAE config, Whisper-tiny, LTX-2B-sized DiT, 512x512, 121 frames."""
    return PipelineConfig(
        preset="read-512",
        height=512,
        width=512,
        vae=VAEConfig(kwargs={}),
        speech=SpeechConfig(hidden_dim=1024, num_tokens=8, code_dim=256),
        dit=DiTConfig(hidden_size=2048, depth=28, num_heads=32, audio_dim=256, rope_axes=(16, 24, 24)),
        sampling=SamplingConfig(clip_latent_frames=16),  # 121 frames = 1 + 15*8 -> 16 latent frames
    )


PRESETS = {"tiny": tiny, "read-512": read_512}


def get_preset(name: str) -> PipelineConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]()
