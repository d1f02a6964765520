"""TalkingHeadPipeline: portrait + speech -> talking-head video, through the full READ method.

Stages (see `stream`): 1. check inputs  2. portrait -> z_R  3. speech -> Whisper -> SpeechAE codes
4. noise  5. ANS sampling clip by clip with CFG  6. streaming decode -> frames (+ audio span).
`stream` yields each clip as soon as it is final; `__call__` returns the whole video. The CLI, the
app, the benchmark and the evaluation all go through these two methods.
"""
from __future__ import annotations

import hashlib
import math
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from tqdm.auto import tqdm

from . import face, media, sampler, scheduler, speech
from . import vae as vae_lib
from .config import FPS, SAMPLE_RATE, PipelineConfig, get_preset
from .errors import InputError


class _Memo:
    """A small thread-safe LRU of results keyed by the bytes of their input.

    A visitor who changes the steps or the guidance and presses Generate again sends the same
    portrait and the same speech: their latents and SpeechAE codes are kept here, so the second
    generation starts sampling at once instead of re-running Whisper on a 30-s window.
    """

    def __init__(self, size: int = 16):
        self.size, self._items, self._lock = size, OrderedDict(), threading.Lock()

    @staticmethod
    def key(*parts) -> str:
        h = hashlib.sha1()
        for part in parts:
            h.update(np.ascontiguousarray(part).tobytes() if isinstance(part, np.ndarray) else repr(part).encode())
        return h.hexdigest()

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def get(self, key: str, compute):
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        value = compute()
        with self._lock:
            self._items[key] = value
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return value


@dataclass
class ClipOutput:
    index: int  # clip number, 0-based
    num_clips: int
    frames: np.ndarray  # (T, H, W, 3) uint8, the newly final frames
    audio: np.ndarray  # float32 mono, the samples these frames span
    start_frame: int  # index of frames[0] in the whole video
    sample_rate: int = SAMPLE_RATE
    fps: int = FPS
    warnings: list[str] = field(default_factory=list)


@dataclass
class TalkingHeadOutput:
    frames: np.ndarray  # (T, H, W, 3) uint8
    audio: np.ndarray  # float32 mono
    sample_rate: int = SAMPLE_RATE
    fps: int = FPS
    warnings: list[str] = field(default_factory=list)
    timings: dict = field(default_factory=dict)  # seconds per stage


def _check_number(name, value, lo, hi, integer=False):
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or not (lo <= value <= hi) or (integer and int(value) != value):
        kind = "an integer" if integer else "a number"
        raise InputError(f"{name} must be {kind} between {lo} and {hi}, got {value!r}")


class TalkingHeadPipeline:
    def __init__(self, vae, speech_ae, dit, config: PipelineConfig, whisper=None):
        self.vae, self.speech_ae, self.dit, self.config = vae, speech_ae, dit, config
        self._whisper, self._features = whisper, None
        self._lock = threading.Lock()  # lazy loading may be reached by several requests at once
        self._memo = _Memo()  # reference latents and speech codes of recent inputs
        for m in (vae, speech_ae, dit):
            m.eval().requires_grad_(False)

    # ---------------------------------------------------------------- building and saving
    @classmethod
    def from_config(cls, config: PipelineConfig | str = "tiny", seed: int = 0) -> "TalkingHeadPipeline":
        """Randomly initialised components (for development and tests) from a config or preset."""
        from .dit import build_dit

        config = get_preset(config) if isinstance(config, str) else config
        torch.manual_seed(seed)
        ae = speech.build_speech_ae(config.speech)
        dit = build_dit(config.dit)
        return cls(vae_lib.build_vae(config.vae), ae, dit, config)

    @classmethod
    def from_pretrained(cls, path, whisper: str | None = None, device=None, dtype=None) -> "TalkingHeadPipeline":
        """Load `save_pretrained` output: pipeline.json + vae/ + speech_ae/ + dit/ (safetensors).

        The frozen Whisper encoder is loaded too (from `whisper`, else the config's source), so the
        first request pays no loading time.
        """
        from diffusers import AutoencoderKLLTXVideo

        from .dit import A2VDiT

        path = Path(path)
        if not (path / "pipeline.json").is_file():
            raise InputError(f"{path} is not a saved pipeline (no pipeline.json in it)")
        config = PipelineConfig.load(path / "pipeline.json")
        if whisper is not None:
            config.speech.whisper = whisper
        vae_dir = config.vae.pretrained if config.vae.pretrained else path
        pipe = cls(
            AutoencoderKLLTXVideo.from_pretrained(vae_dir, subfolder="vae", torch_dtype=torch.float32),
            speech.load_speech_encoder(path / "speech_ae", torch_dtype=torch.float32),
            A2VDiT.from_pretrained(path / "dit", torch_dtype=torch.float32),
            config,
        )
        pipe = pipe.to(device, dtype) if (device or dtype) else pipe
        pipe.whisper  # noqa: B018 - load now, not in the first request
        return pipe

    def save_pretrained(self, path, fp16: bool = False) -> None:
        """safetensors + JSON; fp16 halves the size (weights are upcast again at load)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        variant_dtype = torch.float16 if fp16 else None
        for name, model in (("vae", self.vae), ("speech_ae", self.speech_ae), ("dit", self.dit)):
            if name == "vae" and self.config.vae.pretrained:
                continue  # real LTX weights stay where the user keeps them
            m = model.to(variant_dtype) if variant_dtype else model
            m.save_pretrained(path / name, safe_serialization=True)
            if variant_dtype:
                model.to(torch.float32)
        self.config.save(path / "pipeline.json")

    def to(self, device=None, dtype=None) -> "TalkingHeadPipeline":
        for m in (self.vae, self.speech_ae, self.dit):
            m.to(device=device, dtype=dtype)
        if self._whisper is not None:
            self._whisper.to(device=device)
        return self

    def clear_cache(self) -> None:
        """Forget the reference latents and speech codes kept for repeated inputs."""
        self._memo.clear()

    @property
    def device(self) -> torch.device:
        return next(self.dit.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.dit.parameters()).dtype

    @property
    def whisper(self):
        """Frozen Whisper encoder, loaded on first use (converted tiny.en weights by default)."""
        with self._lock:
            if self._whisper is None:
                from .whisper import load_feature_extractor, load_whisper

                self._features = load_feature_extractor()
                self._whisper = load_whisper(self.config.speech.whisper, encoder_only=True).to(self.device)
        return self._whisper

    # ---------------------------------------------------------------- stages
    def check_inputs(self, num_inference_steps, cfg_mode, alpha, beta, shift, clip_latent_frames):
        _check_number("num_inference_steps", num_inference_steps, 1, 100, integer=True)
        if cfg_mode not in sampler.CFG_MODES:
            raise InputError(f"cfg_mode must be 'joint' or 'split', got {cfg_mode!r}")
        _check_number("alpha (guidance scale)", alpha, 0.0, 20.0)
        _check_number("beta (audio guidance scale)", beta, 0.0, 20.0)
        _check_number("shift", shift, 0.1, 10.0)
        _check_number("clip_latent_frames", clip_latent_frames, 2, 64, integer=True)

    def preprocess_image(self, image) -> tuple[torch.Tensor, np.ndarray, list[str]]:
        """Path / array / PIL image -> (tensor (1, 3, H, W) in [-1, 1], cropped RGB, warnings)."""
        if image is None:
            raise InputError("no portrait image was given")
        if isinstance(image, (str, Path)):
            rgb = media.load_image(image)
        else:
            rgb = media.limit_size(media.to_rgb8(np.asarray(image)))
        size = (self.config.height, self.config.width)
        already = rgb.shape[:2] == size  # a portrait framed for the model: keep as is
        crop, warnings = (rgb, []) if already else face.prepare_portrait(rgb, size)
        x = torch.from_numpy(crop).permute(2, 0, 1)[None].float() / 127.5 - 1
        return x.to(self.device, self.dtype), crop, warnings

    def load_audio(self, audio) -> np.ndarray:
        """Path, (sample_rate, samples) or 16-kHz samples -> mono float32 16 kHz, validated."""
        if audio is None:
            raise InputError("no speech audio was given")
        if isinstance(audio, (str, Path)):
            wav = media.load_audio(audio)
        elif isinstance(audio, tuple):
            wav = media.prepare_audio(audio[1], int(audio[0]))
        else:
            wav = media.prepare_audio(np.asarray(audio), SAMPLE_RATE)
        seconds = len(wav) / SAMPLE_RATE
        if seconds < 1 / FPS:
            raise InputError(f"the audio is {seconds * 1000:.0f} ms long: shorter than one video frame (40 ms)")
        if seconds > self.config.max_seconds:
            raise InputError(f"the audio is {seconds:.1f} s long; the limit is {self.config.max_seconds:.0f} s")
        return wav

    @torch.no_grad()
    def encode_speech(self, wav: np.ndarray, num_latents: int) -> torch.Tensor:
        """16-kHz audio -> SpeechAE codes (1, num_latents, M, Dc), one group per latent frame."""
        from .whisper import encode_speech_features

        whisper = self.whisper  # also creates the feature extractor
        frames = vae_lib.video_frames(num_latents)
        padded = np.zeros(math.ceil(frames / FPS * SAMPLE_RATE), np.float32)  # silence after the end
        padded[: min(len(wav), len(padded))] = wav[: len(padded)]

        def compute():
            feats = encode_speech_features(whisper, self._features, padded).float()  # (T50, 384)
            s = self.config.speech
            x = speech.frame_windows(speech.frame_features(feats.cpu(), frames, s.feats_per_frame), s.context_frames)
            return self.speech_ae.encode(x[None].to(self.device, self.dtype))  # (1, N, M, Dc)

        return self._memo.get(self._memo.key("speech", padded, self.device, self.dtype), compute)

    @torch.no_grad()
    def encode_reference(self, x_ref: torch.Tensor) -> torch.Tensor:
        """Preprocessed portrait (1, 3, H, W) -> z_R (1, C, 1, h, w)."""
        key = self._memo.key("reference", x_ref.float().cpu().numpy(), self.device, self.dtype)
        return self._memo.get(key, lambda: vae_lib.encode_image(self.vae, x_ref).to(self.dtype))

    def prepare_latents(self, num_latents: int, generator: torch.Generator) -> torch.Tensor:
        c = self.vae.config.latent_channels
        h, w = self.config.height // 32, self.config.width // 32
        noise = torch.randn((1, c, num_latents, h, w), generator=generator)
        return noise.to(self.device, self.dtype)

    # ---------------------------------------------------------------- generation
    @torch.no_grad()
    def stream(
        self,
        image,
        audio,
        num_inference_steps: int | None = None,
        cfg_mode: str | None = None,
        alpha: float | None = None,
        beta: float | None = None,
        shift: float | None = None,
        clip_latent_frames: int | None = None,
        generator: torch.Generator | None = None,
        seed: int | None = None,
        progress: bool = True,
        timings: dict | None = None,
    ) -> Iterator[ClipOutput]:
        """Yield the video clip by clip, each as soon as its latents are final and decoded."""
        sc = self.config.sampling
        steps = sc.num_inference_steps if num_inference_steps is None else num_inference_steps
        cfg_mode = sc.cfg_mode if cfg_mode is None else cfg_mode
        alpha, beta = (sc.alpha if alpha is None else alpha), (sc.beta if beta is None else beta)
        shift = sc.shift if shift is None else shift
        f = sc.clip_latent_frames if clip_latent_frames is None else clip_latent_frames
        timings = {} if timings is None else timings
        # 1. Check inputs
        self.check_inputs(steps, cfg_mode, alpha, beta, shift, f)
        if seed is not None:
            _check_number("seed", seed, 0, 2**63 - 1, integer=True)
        wav = self.load_audio(audio)
        # 2. Portrait -> reference latent z_R
        t0 = time.perf_counter()
        x_ref, _, warnings = self.preprocess_image(image)
        z_ref = self.encode_reference(x_ref)  # (1, C, 1, h, w)
        # 3. Speech -> codes, on the padded latent grid
        num_frames = max(1, round(len(wav) / SAMPLE_RATE * FPS))
        n_lat = sampler.padded_latent_frames(vae_lib.latent_frames(num_frames + 7), f)
        t1 = time.perf_counter()
        codes = self.encode_speech(wav, n_lat)
        timings.update(reference=t1 - t0, speech=time.perf_counter() - t1)
        # 4. Noise, from the caller's generator or seed
        if generator is None:
            generator = torch.Generator().manual_seed(seed if seed is not None else 0)
        noise = self.prepare_latents(n_lat, generator)
        # 5.-6. ANS sampling clip by clip, streaming decode
        yield from self._sample_and_decode(noise, z_ref, codes, wav, num_frames, steps, cfg_mode, alpha, beta, shift, f,
                                           progress, timings, warnings)

    def _sample_and_decode(self, noise, z_ref, codes, wav, num_frames, steps, cfg_mode, alpha, beta, shift, f,
                           progress, timings, warnings):
        k = sampler.num_clips(noise.shape[2], f)
        ts = scheduler.inference_timesteps(steps, shift)
        velocity = lambda z, t, a: sampler.cfg_velocity(self.dit, z, t.to(z.dtype), a, cfg_mode, alpha, beta)  # noqa: E731
        decoder = vae_lib.StreamingDecoder(self.vae)
        bar = tqdm(total=k * steps, desc="Sampling", unit="step", disable=not progress)
        emitted, t_dit, t_dec = 0, 0.0, 0.0
        t_start = time.perf_counter()
        clips = sampler.sample_clips(velocity, noise, z_ref, codes, ts, f, callback=lambda j, i: bar.update(1),
                                     motion_guidance=self.config.sampling.motion_guidance)
        while True:
            t0 = time.perf_counter()
            item = next(clips, None)
            if item is None:
                break
            j, _, z = item
            t1 = time.perf_counter()
            pixels = decoder.push(z if j == 0 else z[:, :, 1:], final=(j == k - 1))
            t2 = time.perf_counter()
            t_dit, t_dec = t_dit + t1 - t0, t_dec + t2 - t1
            if pixels is None:
                continue
            frames = vae_lib.to_uint8(pixels)
            frames = frames[: max(0, num_frames - emitted)]
            if len(frames) == 0:
                continue
            timings.setdefault("first_clip", time.perf_counter() - t_start)
            a0, a1 = emitted * SAMPLE_RATE // FPS, (emitted + len(frames)) * SAMPLE_RATE // FPS
            audio = np.zeros(a1 - a0, np.float32)
            audio[: max(0, min(len(wav), a1) - a0)] = wav[a0:a1]
            yield ClipOutput(j, k, frames, audio, emitted, warnings=list(warnings) if emitted == 0 else [])
            emitted += len(frames)
        bar.close()
        timings.update(dit=t_dit, decode=t_dec)

    def __call__(self, image, audio, **kwargs) -> TalkingHeadOutput:
        """The whole video at once (same arguments as `stream`)."""
        timings: dict = {}
        t0 = time.perf_counter()
        clips = list(self.stream(image, audio, timings=timings, **kwargs))
        timings["total"] = time.perf_counter() - t0
        frames = np.concatenate([c.frames for c in clips])
        audio_out = np.concatenate([c.audio for c in clips])
        return TalkingHeadOutput(frames, audio_out, warnings=[w for c in clips for w in c.warnings], timings=timings)
