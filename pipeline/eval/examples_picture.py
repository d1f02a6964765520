"""The three examples through one or more saved pipelines, side by side, as one PNG for the docs.

    python -m pipeline.eval.examples_picture --checkpoints runs/model_before assets/model \
        --labels before after --out docs/img/examples.png

One row per example (`assets/examples/portrait_<i>.png` with `speech_<i>.wav`): the input portrait as
the model sees it, then for each pipeline its VAE's reconstruction of that portrait encoded alone (the
reference latent z_R, decoded through the pipeline's frame refiner when it has one) with its PSNR, then
for each pipeline the generated frame `--frame` (READ at the app's defaults, seed 0). Prints the PSNRs
as JSON.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np

from .synthetic import psnr

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "assets" / "examples"


def _label(tile: np.ndarray, text: str) -> np.ndarray:
    """`tile` (H, W, 3) uint8 with a 14-px caption strip above it."""
    strip = np.full((14, tile.shape[1], 3), 255, np.uint8)
    cv2.putText(strip, text, (2, 10), cv2.FONT_HERSHEY_SIMPLEX, 0.3, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([strip, tile])


def example_row(pipes: dict, index: int, frame: int, settings: dict) -> tuple[np.ndarray, dict]:
    """One example through every pipeline -> (row image (14 + H, W x (1 + 2 len(pipes)), 3) uint8,
    {label: reference reconstruction PSNR in dB})."""
    import torch

    from .. import vae as vae_lib
    from ..media import load_audio

    first = next(iter(pipes.values()))
    x_ref, crop, _ = first.preprocess_image(EXAMPLES / f"portrait_{index}.png")
    recons, gens, figures = [], [], {}
    wav = load_audio(EXAMPLES / f"speech_{index}.wav")
    for label, pipe in pipes.items():
        with torch.no_grad():
            recon = vae_lib.to_uint8(vae_lib.decode(pipe.vae, pipe.encode_reference(x_ref), pipe.refiner))[0]
        figures[label] = float(psnr(np.square(recon.astype(np.float32) - crop).mean()))
        recons.append(_label(recon, f"{label} VAE {figures[label]:.1f} dB"))
        frames = pipe(EXAMPLES / f"portrait_{index}.png", wav, seed=0, progress=False, **settings).frames
        gens.append(_label(frames[min(frame, len(frames) - 1)], f"{label} frame {frame}"))
    return np.concatenate([_label(crop, f"example {index}")] + recons + gens, axis=1), figures


def main(argv=None) -> None:
    from ..pipeline import TalkingHeadPipeline
    from ..serving import APP_SETTINGS
    from .benchmark import SETTING_KEYS

    p = argparse.ArgumentParser(description="The three examples through saved pipelines, as one PNG")
    p.add_argument("--checkpoints", nargs="+", required=True, help="saved pipeline folders, in column order")
    p.add_argument("--labels", nargs="+", help="a short name per checkpoint (default: the folder names)")
    p.add_argument("--frame", type=int, default=40, help="which generated frame to show")
    p.add_argument("--out", required=True, help="the PNG to write")
    args = p.parse_args(argv)
    labels = args.labels or [Path(c).name for c in args.checkpoints]
    if len(labels) != len(args.checkpoints):
        p.error("give one --labels entry per checkpoint")
    pipes = {label: TalkingHeadPipeline.from_pretrained(c) for label, c in zip(labels, args.checkpoints)}
    settings = {k: v for k, v in APP_SETTINGS.items() if k in SETTING_KEYS}
    rows, figures = zip(*(example_row(pipes, i, args.frame, settings) for i in range(3)))
    picture = np.concatenate(rows)
    cv2.imwrite(args.out, cv2.cvtColor(cv2.resize(picture, None, fx=2, fy=2, interpolation=cv2.INTER_NEAREST),
                                       cv2.COLOR_RGB2BGR))
    print(json.dumps({"reference_psnr_db": list(figures), "out": args.out}, indent=1))


if __name__ == "__main__":
    main()
