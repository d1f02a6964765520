"""TalkingHeadPipeline: portrait + speech -> talking-head video, through the full READ method.

Stages (see `stream`): 1. resolve and check the settings  2. speech in  3. portrait -> z_R
4. speech -> Whisper -> SpeechAE codes  5. noise  6. ANS sampling clip by clip with CFG
7. streaming decode -> video chunks (+ the audio they span). `stream` yields each chunk as soon as
it is final; `__call__` returns the whole video. The CLI, the app, the benchmark, the study mode and
the evaluation all go through these two methods.
"""
from __future__ import annotations

import copy
import itertools
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from tqdm.auto import tqdm

from . import face, image as image_io, media, media_stream, rest, sampler, scheduler, speech
from . import refiner as refiner_lib, student as student_lib
from .ahead import run_ahead, spare_core
from . import vae as vae_lib
from .photo import stream as photo_stream
from .config import FPS, SAMPLE_RATE, PipelineConfig, SamplingConfig, check_value, get_preset, resolve_settings
from .errors import AudioTooLong, InputError
from .memo import Memo


@dataclass
class VideoChunk:
    """One piece of the video as the streaming decoder releases it (not a DiT clip: the decoder's
    hold-back shifts chunk boundaries off the clip boundaries).

    Audio contract: `audio` is the caller's audio for exactly these frames, samples
    `[start_frame * sample_rate // fps, (start_frame + len(frames)) * sample_rate // fps)` at the
    chunk's own `sample_rate` (zero-padded past the end of the speech), shape (n,) or (n, channels).
    """

    index: int  # chunk number, 0-based
    num_chunks: int  # how many chunks the video will have
    frames: np.ndarray  # (T, H, W, 3) uint8, the newly final frames
    audio: np.ndarray  # float32, the samples these frames span
    start_frame: int  # index of frames[0] in the whole video
    sample_rate: int = SAMPLE_RATE
    fps: int = FPS
    warnings: list[str] = field(default_factory=list)


@dataclass
class TalkingHeadOutput:
    frames: np.ndarray  # (T, H, W, 3) uint8
    audio: np.ndarray  # float32, (n,) or (n, channels), n = T * sample_rate // fps
    sample_rate: int = SAMPLE_RATE
    fps: int = FPS
    warnings: list[str] = field(default_factory=list)
    timings: dict = field(default_factory=dict)  # seconds per stage


class VideoStream:
    """What `TalkingHeadPipeline.stream` returns: an iterator of `VideoChunk`s whose `timings`
    (seconds per stage: reference, whisper, speech_ae, dit, decode; first_chunk from the call)
    fill in as it runs. `close()` stops the generation (e.g. a visitor's Stop)."""

    def __init__(self, chunks: Iterator[VideoChunk], timings: dict, settings: SamplingConfig, num_frames: int):
        self._chunks, self.timings, self.settings, self.num_frames = chunks, timings, settings, num_frames

    def __iter__(self) -> "VideoStream":
        return self

    def __next__(self) -> VideoChunk:
        return next(self._chunks)

    def close(self) -> None:
        self._chunks.close()


def _generator(generator: torch.Generator | None, seed: int | None) -> torch.Generator:
    """The caller's generator, else a CPU generator seeded with `seed` (default 0)."""
    return generator or torch.Generator().manual_seed(seed if seed is not None else 0)


def _timed(iterable, timings: dict, key: str):
    """Yield from `iterable`, adding the seconds spent producing each item to `timings[key]`."""
    it = iter(iterable)
    while True:
        t0 = time.perf_counter()
        try:
            item = next(it)
        except StopIteration:
            return
        finally:
            timings[key] = timings.get(key, 0.0) + time.perf_counter() - t0
        yield item


class TalkingHeadPipeline:
    def __init__(self, vae, speech_ae, dit, config: PipelineConfig, whisper=None):
        self.vae, self.dit, self.config = vae, dit, config
        self.speech = speech.SpeechEncoder(speech_ae, config.speech, whisper)
        self._memo = Memo()  # reference latents of recent portraits
        self.student = None  # REST's distilled DiT and its StudentSettings (pipeline/student.py), if any
        self.refiner = None  # a refiner.FrameRefiner after the VAE decoder, if the pipeline has one
        for m in (vae, speech_ae, dit):
            m.eval().requires_grad_(False)

    @property
    def speech_ae(self):
        return self.speech.speech_ae

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
        """Load `save_pretrained` output: pipeline.json + vae/ + speech_ae/ + dit/ (+ student/: REST's DiT;
        + refiner/: the `refiner.FrameRefiner` after the VAE decoder).

        The frozen Whisper encoder is loaded too (from `whisper`, else the config's source), so the
        first request pays no loading time. Raises `InputError` when `path` holds no saved pipeline.
        """
        from diffusers import AutoencoderKLLTXVideo

        from .dit import A2VDiT

        path = Path(path)
        if not (path / "pipeline.json").is_file():
            raise InputError(f"{path.name or path} is not a saved pipeline (no pipeline.json in it)")
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
        pipe.student = student_lib.load_student(path)
        pipe.refiner = refiner_lib.load_refiner(path)
        vae_lib.skip_zero_residuals(pipe.vae)  # a constructed VAE's zero branches: exact, faster
        pipe = pipe.to(device, dtype) if (device or dtype) else pipe
        pipe.speech.whisper  # noqa: B018 - load now, not in the first request
        return pipe

    def save_pretrained(self, path, fp16: bool = False) -> None:
        """safetensors + JSON; fp16 halves the size (weights are upcast again at load). The live
        models keep their device and dtype: fp16 copies are saved."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        for name, model in (("vae", self.vae), ("speech_ae", self.speech_ae), ("dit", self.dit)):
            if name == "vae" and self.config.vae.pretrained:
                continue  # real LTX weights stay where the user keeps them
            m = copy.deepcopy(model).to(torch.float16) if fp16 else model
            m.save_pretrained(path / name, safe_serialization=True)
        if self.refiner is not None:
            m = copy.deepcopy(self.refiner).to(torch.float16) if fp16 else self.refiner
            m.save_pretrained(path / refiner_lib.REFINER_DIR, safe_serialization=True)
        if self.student is not None:
            student_lib.save_student(self.student[0], path / student_lib.STUDENT_DIR, self.student[1], fp16=fp16)
        self.config.save(path / "pipeline.json")

    def to(self, device=None, dtype=None) -> "TalkingHeadPipeline":
        extra = ((self.student[0],) if self.student is not None else ()) + ((self.refiner,) if self.refiner is not None else ())
        for m in (self.vae, self.dit) + extra:
            m.to(device=device, dtype=dtype)
        self.speech.to(device, dtype)
        return self

    def clear_cache(self) -> None:
        """Forget the reference latents and speech codes kept for repeated inputs."""
        self._memo.clear()
        self.speech.memo.clear()

    @property
    def device(self) -> torch.device:
        return next(self.dit.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.dit.parameters()).dtype

    # ---------------------------------------------------------------- stages
    @staticmethod
    def load_rgb(image) -> np.ndarray:
        """Path / array / PIL image -> upright RGB uint8 (H, W, 3), huge ones downscaled. Raises `InputError`."""
        if image is None:
            raise InputError("no portrait image was given")
        if isinstance(image, (str, Path)):
            return image_io.load_image(image)
        return image_io.limit_size(image_io.to_rgb8(np.asarray(image)))

    def preprocess_image(self, image) -> tuple[torch.Tensor, np.ndarray, list[str]]:
        """Path / array / PIL image -> (tensor (1, 3, H, W) float32 in [-1, 1], cropped RGB, warnings)."""
        rgb = self.load_rgb(image)
        size = (self.config.height, self.config.width)
        already = rgb.shape[:2] == size  # a portrait framed for the model: keep as is
        crop, warnings = (rgb, []) if already else face.prepare_portrait(rgb, size)
        return vae_lib.to_pixels(crop)[None], crop, warnings

    def load_speech(self, audio, max_seconds: float | None = None) -> media.Speech:
        """Path, (sample_rate, samples) or 16-kHz samples -> `media.Speech` (the original samples for
        the video, a 16-kHz mono copy for Whisper), validated.

        Raises `InputError` for no audio, unreadable audio, audio shorter than one video frame, or
        longer than `max_seconds` (default: the config's limit; a file is refused from its header,
        before it is decoded).
        """
        return media.load_speech(audio, max_seconds=max_seconds or self.config.max_seconds)

    @torch.no_grad()
    def encode_reference(self, x_ref: torch.Tensor) -> torch.Tensor:
        """Preprocessed portrait (1, 3, H, W) in [-1, 1] -> z_R (1, C, 1, h, w) float32."""
        key = self._memo.key("reference", x_ref.float().cpu().numpy(), self.device, self.vae.dtype)
        return self._memo.get(key, lambda: vae_lib.encode_image(self.vae, x_ref.to(self.device)).float())

    def prepare_latents(self, num_latents: int, generator: torch.Generator) -> torch.Tensor:
        """Gaussian noise (1, C, num_latents, H/32, W/32), float32 on the pipeline's device."""
        c = self.vae.config.latent_channels
        h, w = self.config.height // 32, self.config.width // 32
        return torch.randn((1, c, num_latents, h, w), generator=generator).to(self.device)

    def settings(self, settings: SamplingConfig | None = None, **given) -> SamplingConfig:
        """The resolved settings of one request: `settings` (default: the model's), then `given`."""
        return resolve_settings(settings or self.config.sampling, **given)

    # ---------------------------------------------------------------- generation
    def stream(self, image, audio, *, settings: SamplingConfig | None = None, generator: torch.Generator | None = None,
               seed: int | None = None, progress: bool = True, max_seconds: float | None = None,
               callback_on_step_end: Callable[[int, int], None] | None = None, **given) -> VideoStream:
        """The video chunk by chunk, each as soon as its latents are final and decoded.

        `audio`: a path, (sample_rate, samples), 16-kHz samples, or a `media.Speech` already loaded.
        `given`: any of `config.SETTING_NAMES` (num_inference_steps, cfg_mode, alpha, beta, shift,
        clip_latent_frames, mode, render); None keeps the default. Everything is checked before this
        returns (`InputError` for a bad value, image or audio); generation runs as it is iterated.
        `callback_on_step_end(steps_done, total_steps)` is called after every denoising step.
        """
        # 1. Resolve and check the settings
        settings = self.settings(settings, **given)
        if seed is not None:
            seed = check_value("seed", seed)
        # 2. Speech in (checked here, before any model work); REST has no length limit and reads a file
        #    in blocks as it generates (its header is checked here), never whole
        if settings.mode == "rest" and isinstance(audio, (str, Path)):
            speech_in, seconds = audio, media_stream.check_stream_file(audio)
            if max_seconds is not None and seconds > max_seconds:
                raise AudioTooLong(seconds, max_seconds)
        else:
            if isinstance(audio, media.Speech):
                speech_in = audio
            else:
                speech_in = media.load_speech(audio, max_seconds=max_seconds) if settings.mode == "rest" else \
                    self.load_speech(audio, max_seconds)
            seconds = speech_in.seconds
        if seconds > self.config.max_seconds and settings.mode == "read":
            raise AudioTooLong(seconds, self.config.max_seconds)
        num_frames = max(1, round(seconds * FPS))
        timings: dict = {}
        rgb = self.load_rgb(image)  # decoded once: the photo-mode rule and the diffusion render share it
        renderer, notes = photo_stream.choose_renderer(rgb, settings.render)
        driver = rgb if renderer is None else photo_stream.driver_portrait()
        if settings.mode == "rest":  # chunk-wise under the ID-Context cache (docs/STREAMING.md)
            chunks = self._rest_chunks(driver, speech_in, settings, generator, seed, timings, notes)
        else:
            chunks = self._generate(driver, speech_in, num_frames, settings, generator, seed, progress,
                                    callback_on_step_end, timings, notes)
        if renderer is not None:
            chunks = photo_stream.warp_stream(chunks, self._photo_warp(renderer, timings))
        return VideoStream(chunks, timings, settings, num_frames)

    # ---------------------------------------------------------------- photo mode (pipeline/photo/stream.py)
    def _photo_warp(self, renderer, timings: dict) -> photo_stream.ChunkWarp:
        from .photo import MotionReader

        self._motion_reader = getattr(self, "_motion_reader", None) or MotionReader.load()  # loaded once
        return photo_stream.ChunkWarp(renderer, self._motion_reader, timings)

    def open_stream(self, image, *, settings: SamplingConfig | None = None, generator: torch.Generator | None = None,
                    seed: int | None = None, rest_settings: rest.RestSettings | None = None, **given):
        """REST: a live session (`rest.LiveStream`, or `photo.stream.PhotoLive` for a real photo) for
        speech that arrives in blocks (a microphone). The portrait is encoded and the ID-Sink written
        now; then `push_audio(samples, sample_rate)` -> `VideoChunk`s and `close()`. A real photo takes
        photo mode as in `stream` (256² frames). `given`: as in `stream`. Raises `InputError` for a bad
        image, setting or seed."""
        settings = self.settings(settings, **given)
        seed = check_value("seed", seed) if seed is not None else None
        rgb = self.load_rgb(image)
        renderer, notes = photo_stream.choose_renderer(rgb, settings.render)  # a real photo: photo mode
        if renderer is None:
            return self._live(rgb, settings, generator, seed, rest_settings, notes)
        live = self._live(photo_stream.driver_portrait(), settings, generator, seed, rest_settings, notes)
        return photo_stream.PhotoLive(live, self._photo_warp(renderer, {}))

    @torch.no_grad()
    def _live(self, image, settings, generator, seed, rest_settings=None, warnings=()) -> rest.LiveStream:
        x_ref, _, image_warnings = self.preprocess_image(image)
        dit, settings, rest_settings = student_lib.for_rest(self.student, self.dit, settings, rest_settings)
        session = rest.RestSession(dit, self.speech_ae, self.vae, self.speech.whisper,
                                   self.speech.feature_extractor, self.config.speech, self.encode_reference(x_ref),
                                   settings, rest_settings or rest.RestSettings(), _generator(generator, seed),
                                   refiner=self.refiner)
        return rest.LiveStream(session, VideoChunk, list(warnings) + image_warnings)

    def _rest_chunks(self, image, speech_in, settings, generator, seed, timings, notes=()):
        """`stream(mode="rest")`: the speech pushed through a live session block by block: a file (a path)
        read as it goes (`media_stream.audio_blocks`: flat memory at any length), or a loaded
        `media.Speech` 16 frames of audio at a time."""
        t0 = time.perf_counter()
        if isinstance(speech_in, media.Speech):
            x, rate, step = speech_in.samples, speech_in.sample_rate, speech_in.sample_rate * 16 // FPS
            blocks, warnings = ((x[i : i + step], rate) for i in range(0, len(x), step)), speech_in.warnings
        else:
            blocks, warnings = media_stream.audio_blocks(speech_in), []
        live = self._live(image, settings, generator, seed, warnings=warnings + list(notes))
        for samples, rate in itertools.chain(blocks, [(None, None)]):
            for chunk in (live.push_audio(samples, rate) if samples is not None else live.close()):
                timings.setdefault("first_chunk", time.perf_counter() - t0)
                yield chunk

    @torch.no_grad()
    def _generate(self, image, speech_in, num_frames, settings, generator, seed, progress, callback, timings,
                  notes=()):
        t_start = time.perf_counter()
        # 3. Portrait -> reference latent z_R
        x_ref, _, warnings = self.preprocess_image(image)
        warnings = speech_in.warnings + list(notes) + warnings
        z_ref = self.encode_reference(x_ref)  # (1, C, 1, h, w)
        t1 = time.perf_counter()
        # 4. Speech -> codes, on the latent grid of whole clips
        f = settings.clip_latent_frames
        n_lat = sampler.latents_for_video(num_frames, f)
        codes = self.speech.encode(speech_in.whisper, n_lat, timings)  # (1, n_lat, M, Dc)
        timings.update(reference=t1 - t_start, speech=time.perf_counter() - t1)
        # 5. Noise, from the caller's generator or seed
        generator = _generator(generator, seed)
        noise = self.prepare_latents(n_lat, generator)
        # 6.-7. ANS sampling clip by clip, streaming decode
        k, steps = sampler.num_clips(n_lat, f), settings.num_inference_steps
        bar = tqdm(total=k * steps, desc="Sampling", unit="step", disable=not progress)

        def on_step(j, i):
            bar.update(1)
            if callback is not None:
                callback(j * steps + i + 1, k * steps)

        clips = sampler.sample_clips(sampler.guided_velocity(self.dit, settings), noise, z_ref, codes,
                                     scheduler.inference_timesteps(steps, settings.shift), f, callback=on_step,
                                     motion_guidance=settings.motion_guidance)
        clips = _timed(clips, timings, "dit")
        spare = spare_core()
        if spare:  # the DiT samples clip j + 1 on a worker while the next stage decodes clip j
            clips = run_ahead(clips)
        decoded = vae_lib.decode_clips(vae_lib.StreamingDecoder(self.vae), clips, k, timings)
        if self.refiner is not None:  # per frame, so refining after StreamingDecoder adds no seam
            if spare:  # a third stage: the decoder on a second worker, the refiner on this thread
                decoded = run_ahead(decoded)
            decoded = refiner_lib.refine_clips(self.refiner, decoded, timings)
        emitted, index = 0, 0
        for pixels in decoded:
            frames = vae_lib.to_uint8(pixels)[: max(0, num_frames - emitted)]
            if len(frames) == 0:
                continue
            timings.setdefault("first_chunk", time.perf_counter() - t_start)
            audio = media.audio_span(speech_in.samples, speech_in.sample_rate, emitted, len(frames))
            yield VideoChunk(index, k, frames, audio, emitted, speech_in.sample_rate,
                             warnings=list(warnings) if emitted == 0 else [])
            emitted, index = emitted + len(frames), index + 1
        bar.close()

    def __call__(self, image, audio, **kwargs) -> TalkingHeadOutput:
        """The whole video at once (same arguments as `stream`)."""
        t0 = time.perf_counter()
        stream = self.stream(image, audio, **kwargs)
        chunks = list(stream)
        timings = dict(stream.timings, total=time.perf_counter() - t0)
        return TalkingHeadOutput(np.concatenate([c.frames for c in chunks]), np.concatenate([c.audio for c in chunks]),
                                 chunks[0].sample_rate, chunks[0].fps, [w for c in chunks for w in c.warnings], timings)
