"""Per-clip caches next to the synthetic data: Whisper features, then VAE latents + SpeechAE codes.

    python -m pipeline.train.cache whisper --data data/train
    python -m pipeline.train.cache latents --data data/train --vae runs/vae/vae --speech-ae runs/speech_ae/speech_ae
    python -m pipeline.train.cache distill --data data/train --teacher assets/model

Whisper is frozen and the DiT is trained on latents "cached once by the VAE", so both are
computed once per clip and stored as safetensors (`whisper.safetensors`, `latents.safetensors`).
`distill` caches what REST's distillation needs (`distill.safetensors`): latents and codes made by a
saved pipeline's own VAE and SpeechAE, codes both READ's way and the streaming way, stamped with the
pipeline's fingerprint so that a new VAE or SpeechAE makes them stale (`pipeline.train.distill`
rebuilds stale ones itself).
"""
from __future__ import annotations

import argparse

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ..config import get_preset
from ..media import load_audio
from ..speech import frame_features, frame_windows
from .common import list_clips

REFS_PER_CLIP = 4  # frames of each clip encoded alone, as reference images


@torch.no_grad()
def cache_whisper(data, whisper=None):
    from ..whisper import encode_speech_features, load_feature_extractor, load_whisper

    model, fe = load_whisper(whisper, encoder_only=True), load_feature_extractor()
    for d in tqdm(list_clips(data), desc="whisper"):
        if not (d / "whisper.safetensors").exists():
            feats = encode_speech_features(model, fe, load_audio(d / "audio.wav"))
            save_file({"features": feats.half().contiguous()}, str(d / "whisper.safetensors"))


def speech_windows(d, num_frames: int, cfg) -> torch.Tensor:
    """Cached Whisper features of clip folder d -> SpeechAE input windows (num_frames, window_dim)."""
    feats = load_file(str(d / "whisper.safetensors"))["features"].float()
    return frame_windows(frame_features(feats, num_frames, cfg.feats_per_frame), cfg.context_frames)


@torch.no_grad()
def cache_latents(data, vae_dir, speech_ae_dir, preset="tiny", seed=0):
    from diffusers import AutoencoderKLLTXVideo

    from ..speech import SpeechAE
    from ..vae import encode, encode_image, latent_frames, to_pixels, video_frames

    vae = AutoencoderKLLTXVideo.from_pretrained(vae_dir).eval()
    ae = SpeechAE.from_pretrained(speech_ae_dir).eval()
    cfg = get_preset(preset).speech
    rng = np.random.default_rng(seed)
    for d in tqdm(list_clips(data), desc="latents"):
        frames = np.load(d / "frames.npz")["frames"]
        T = video_frames(latent_frames(len(frames)))  # whole latent frames only
        x = to_pixels(frames[:T])[None]  # (1, 3, T, H, W)
        pick = np.sort(rng.choice(len(frames), REFS_PER_CLIP, replace=False))
        refs = to_pixels(frames[pick]).transpose(0, 1)  # (n, 3, H, W)
        codes = ae.encode(speech_windows(d, T, cfg)[None])[0]
        save_file({"latents": encode(vae, x)[0].contiguous(), "refs": encode_image(vae, refs)[:, :, 0].contiguous(),
                   "ref_frames": torch.from_numpy(pick), "codes": codes.contiguous()}, str(d / "latents.safetensors"))


DISTILL_FILE = "distill.safetensors"


def teacher_fingerprint(folder) -> str:
    """Hash (16 hex digits) of a saved pipeline's VAE and SpeechAE weight files: what its caches depend on."""
    import hashlib
    from pathlib import Path

    h = hashlib.sha256()
    for part in ("vae", "speech_ae"):
        for f in sorted((Path(folder) / part).glob("*.safetensors")):
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


def distill_cache_ok(d, fingerprint: str) -> bool:
    """True when clip folder d holds a distillation cache made by the pipeline with this fingerprint."""
    from safetensors import safe_open

    f = d / DISTILL_FILE
    if not f.exists():
        return False
    with safe_open(str(f), "pt") as g:
        return (g.metadata() or {}).get("teacher") == fingerprint


@torch.no_grad()
def stream_codes(parts, audio_16k: np.ndarray, num_latents: int, rest=None) -> torch.Tensor:
    """Codes (num_latents, M, Dc) of one clip made the way a REST session makes them
    (`speech_stream.SpeechStream`: short Whisper windows, look-ahead, groups of `chunk_frames`)."""
    from ..rest import RestSettings
    from ..speech_stream import SpeechStream

    rest = rest or RestSettings()
    s = SpeechStream(parts["whisper"], parts["fe"], parts["ae"], parts["cfg"].speech, group=rest.chunk_frames,
                     window_s=rest.window_s, lookahead_s=rest.lookahead_s)
    groups = s.push(audio_16k) + s.flush()
    return torch.cat(groups, dim=1)[0, :num_latents].float()  # (N, M, Dc)


@torch.no_grad()
def cache_distill(data, teacher, seed=0):
    """Per clip, with the saved pipeline `teacher`'s VAE and SpeechAE: latents (C, N, h, w), reference
    latents (4, C, h, w), READ's codes (N, M, Dc: 30-s Whisper windows, `whisper.safetensors`) and the
    streamed codes (N, M, Dc: `stream_codes`). Clips whose cache is current are skipped."""
    from diffusers import AutoencoderKLLTXVideo

    from ..config import PipelineConfig
    from ..speech import load_speech_encoder
    from ..vae import encode, encode_image, latent_frames, to_pixels, video_frames
    from ..whisper import load_feature_extractor, load_whisper

    fp = teacher_fingerprint(teacher)
    clips = [d for d in list_clips(data) if not distill_cache_ok(d, fp)]
    if not clips:
        return
    if any(not (d / "whisper.safetensors").exists() for d in clips):
        cache_whisper(data)
    cfg = PipelineConfig.load(f"{teacher}/pipeline.json")
    parts = dict(cfg=cfg, vae=AutoencoderKLLTXVideo.from_pretrained(teacher, subfolder="vae").eval(),
                 ae=load_speech_encoder(f"{teacher}/speech_ae").eval(), fe=load_feature_extractor(),
                 whisper=load_whisper(cfg.speech.whisper, encoder_only=True))
    rng = np.random.default_rng(seed)
    for d in tqdm(clips, desc="distill cache"):
        frames = np.load(d / "frames.npz")["frames"]
        T = video_frames(latent_frames(len(frames)))
        pick = np.sort(rng.choice(len(frames), REFS_PER_CLIP, replace=False))
        z = encode(parts["vae"], to_pixels(frames[:T])[None])[0]  # (C, N, h, w)
        refs = encode_image(parts["vae"], to_pixels(frames[pick]).transpose(0, 1))[:, :, 0]
        codes = parts["ae"].encode(speech_windows(d, T, cfg.speech)[None])[0]
        streamed = stream_codes(parts, load_audio(d / "audio.wav"), z.shape[1])
        save_file({"latents": z.contiguous(), "refs": refs.contiguous(), "codes": codes.contiguous(),
                   "stream_codes": streamed.contiguous()}, str(d / DISTILL_FILE), metadata={"teacher": fp})


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["whisper", "latents", "distill"])
    p.add_argument("--data", required=True)
    p.add_argument("--whisper", default=None, help="transformers Whisper folder/hub id (default: tiny.en from PyPI)")
    p.add_argument("--vae")
    p.add_argument("--speech-ae")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--teacher", default="assets/model", help="distill: the saved pipeline whose VAE and SpeechAE make the cache")
    args = p.parse_args(argv)
    if args.what == "whisper":
        cache_whisper(args.data, args.whisper)
    elif args.what == "distill":
        cache_distill(args.data, args.teacher)
    else:
        cache_latents(args.data, args.vae, args.speech_ae, args.preset)


if __name__ == "__main__":
    main()
