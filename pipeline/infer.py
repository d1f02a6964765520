"""Command line: portrait + speech -> talking-head mp4.

    python -m pipeline.infer --image assets/examples/portrait_0.png --audio assets/examples/speech_0.wav --out out.mp4
    python -m pipeline.infer --init-random runs/random_tiny   # save a randomly initialised `tiny` pipeline

Prints where it wrote and the real-time factor (wall time / audio duration). User errors (missing
or unreadable files, bad parameters, an output path that cannot be written) print one line and exit
with code 2 before any model is loaded, leaving no output file.
"""
from __future__ import annotations

import argparse
import sys
import time

from .serving import DEFAULT_CHECKPOINT

# CLI option -> the limits-table / settings name it is checked as
NUMERIC = {"steps": "num_inference_steps", "alpha": "alpha", "beta": "beta", "shift": "shift",
           "clip_latent_frames": "clip_latent_frames", "seed": "seed", "threads": "threads"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="READ talking-head generation (image + audio -> mp4)")
    p.add_argument("--image", help="portrait image (PNG, JPEG, WebP, TIFF, ...)")
    p.add_argument("--audio", help="speech audio (WAV, FLAC, OGG, MP3, M4A, WebM, or a video's sound track)")
    p.add_argument("--out", default="out.mp4", help="output mp4 path")
    p.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT), help="saved pipeline folder")
    p.add_argument("--steps", default=None, help="denoising steps (default: the model's)")
    p.add_argument("--cfg", default=None, help="CFG mode: joint or split")
    p.add_argument("--alpha", default=None, help="guidance scale alpha")
    p.add_argument("--beta", default=None, help="audio guidance scale beta (split)")
    p.add_argument("--shift", default=None, help="schedule shift")
    p.add_argument("--clip-latent-frames", default=None, help="latent frames per DiT clip")
    p.add_argument("--mode", default=None, help="read (default) or rest")
    p.add_argument("--render", default=None, help="auto (default), diffusion or photo")
    p.add_argument("--seed", default=0)
    p.add_argument("--threads", default=0, help="torch CPU threads (0: default)")
    p.add_argument("--init-random", metavar="DIR", help="save a randomly initialised pipeline to DIR and exit")
    p.add_argument("--preset", default="tiny", help="preset for --init-random")
    return p.parse_args(argv)


def check_args(args) -> dict:
    """Every option checked against the one limits table before anything is loaded; returns the
    sampling settings for `pipeline.stream`. Raises `InputError`."""
    from .config import check_value
    from .errors import InputError
    from .media import check_output_path

    if not args.image or not args.audio:
        raise InputError("both --image and --audio are required")
    for opt, name in NUMERIC.items():
        value = getattr(args, opt)
        if value is not None:
            setattr(args, opt, check_value(name, value, "--" + opt.replace("_", "-")))
    check_output_path(args.out)
    settings = dict(num_inference_steps=args.steps, cfg_mode=args.cfg, alpha=args.alpha, beta=args.beta,
                    shift=args.shift, clip_latent_frames=args.clip_latent_frames, mode=args.mode, render=args.render)
    for name in ("cfg_mode", "mode", "render"):
        if settings[name] is not None:
            settings[name] = check_value(name, settings[name], "--" + {"cfg_mode": "cfg"}.get(name, name))
    return settings


def generate(args, settings: dict):
    """Load, check the speech (from its header first), generate and write the mp4."""
    from .media import write_mp4
    from .pipeline import TalkingHeadPipeline

    t0 = time.perf_counter()
    pipe = TalkingHeadPipeline.from_pretrained(args.checkpoint)
    t_load = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = pipe(args.image, args.audio, seed=args.seed, **settings)
    write_mp4(args.out, out.frames, out.audio, out.sample_rate, out.fps)
    return out, t_load, time.perf_counter() - t0


def run(args) -> int:
    import torch

    from .errors import InputError

    if args.init_random:
        from .pipeline import TalkingHeadPipeline

        TalkingHeadPipeline.from_config(args.preset).save_pretrained(args.init_random)
        print(f"wrote a randomly initialised {args.preset!r} pipeline to {args.init_random}")
        return 0
    try:
        settings = check_args(args)
        if args.threads:
            torch.set_num_threads(args.threads)
        if settings["mode"] != "rest":  # READ's length limit, from the header, before the model loads
            _check_length(args.audio, args.checkpoint)
        out, t_load, elapsed = generate(args, settings)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for w in out.warnings:
        print(f"warning: {w}", file=sys.stderr)
    seconds = len(out.frames) / out.fps
    stages = ", ".join(f"{k} {v:.2f}s" for k, v in out.timings.items())
    print(f"wrote {args.out}: {len(out.frames)} frames, {seconds:.2f} s")
    print(f"real-time factor {elapsed / seconds:.3f} ({elapsed:.2f} s for {seconds:.2f} s; model load {t_load:.2f} s; {stages})")
    return 0


def _check_length(audio, checkpoint) -> None:
    """Refuse audio over the model's limit from the file's header (no decoding, no model load)."""
    from pathlib import Path

    from .config import PipelineConfig
    from .media import check_duration

    config = Path(checkpoint) / "pipeline.json"
    if config.is_file():  # else loading will say that there is no model
        check_duration(audio, PipelineConfig.load(config).max_seconds)


def main(argv=None):
    sys.exit(run(parse_args(argv)))


if __name__ == "__main__":
    main()
