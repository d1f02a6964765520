"""Per-clip caches next to the synthetic data: Whisper features, then VAE latents + SpeechAE codes.

    python -m pipeline.train.cache whisper --data data/train
    python -m pipeline.train.cache latents --data data/train --vae runs/vae/vae --speech-ae runs/speech_ae/speech_ae

Whisper is frozen and the DiT is trained on latents "cached once by the VAE", so both are
computed once per clip and stored as safetensors (`whisper.safetensors`, `latents.safetensors`).
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


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["whisper", "latents"])
    p.add_argument("--data", required=True)
    p.add_argument("--whisper", default=None, help="transformers Whisper folder/hub id (default: tiny.en from PyPI)")
    p.add_argument("--vae")
    p.add_argument("--speech-ae")
    p.add_argument("--preset", default="tiny")
    args = p.parse_args(argv)
    if args.what == "whisper":
        cache_whisper(args.data, args.whisper)
    else:
        cache_latents(args.data, args.vae, args.speech_ae, args.preset)


if __name__ == "__main__":
    main()
