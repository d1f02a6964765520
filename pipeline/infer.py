"""Command line: portrait + speech -> talking-head mp4.

    python -m pipeline.infer --image assets/examples/portrait_0.png --audio assets/examples/speech_0.wav --out out.mp4
    python -m pipeline.infer --init-random runs/random_tiny   # save a randomly initialised `tiny` pipeline

Prints where it wrote and the real-time factor (wall time / audio duration). User errors (missing
or unreadable files, bad parameters) print one line and exit with code 2, leaving no output file.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

DEFAULT_CHECKPOINT = Path(__file__).resolve().parent.parent / "assets" / "model"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="READ talking-head generation (image + audio -> mp4)")
    p.add_argument("--image", help="portrait image (PNG, JPEG, ...)")
    p.add_argument("--audio", help="speech audio (WAV, FLAC, OGG, MP3)")
    p.add_argument("--out", default="out.mp4", help="output mp4 path")
    p.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT), help="saved pipeline folder")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's)")
    p.add_argument("--cfg", choices=["joint", "split"], default=None, help="CFG mode")
    p.add_argument("--alpha", type=float, default=None, help="guidance scale alpha")
    p.add_argument("--beta", type=float, default=None, help="audio guidance scale beta (split)")
    p.add_argument("--shift", type=float, default=None, help="schedule shift")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    p.add_argument("--init-random", metavar="DIR", help="save a randomly initialised pipeline to DIR and exit")
    p.add_argument("--preset", default="tiny", help="preset for --init-random")
    return p.parse_args(argv)


def run(args) -> int:
    import torch

    from .errors import InputError
    from .media import write_mp4
    from .pipeline import TalkingHeadPipeline

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.init_random:
        TalkingHeadPipeline.from_config(args.preset).save_pretrained(args.init_random)
        print(f"wrote a randomly initialised {args.preset!r} pipeline to {args.init_random}")
        return 0
    try:
        if not args.image or not args.audio:
            raise InputError("both --image and --audio are required")
        if not Path(args.out).parent.exists():
            raise InputError(f"the output folder {Path(args.out).parent} does not exist")
        t0 = time.perf_counter()
        pipe = TalkingHeadPipeline.from_pretrained(args.checkpoint)
        t_load = time.perf_counter() - t0
        t0 = time.perf_counter()
        out = pipe(args.image, args.audio, num_inference_steps=args.steps, cfg_mode=args.cfg, alpha=args.alpha,
                   beta=args.beta, shift=args.shift, seed=args.seed)
        write_mp4(args.out, out.frames, out.audio, out.sample_rate, out.fps)
        elapsed = time.perf_counter() - t0
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for w in out.warnings:
        print(f"warning: {w}", file=sys.stderr)
    seconds = len(out.audio) / out.sample_rate
    stages = ", ".join(f"{k} {v:.2f}s" for k, v in out.timings.items())
    print(f"wrote {args.out}: {len(out.frames)} frames, {seconds:.2f} s of audio")
    print(f"real-time factor {elapsed / seconds:.3f} ({elapsed:.2f} s for {seconds:.2f} s; model load {t_load:.2f} s; {stages})")
    return 0


def main(argv=None):
    sys.exit(run(parse_args(argv)))


if __name__ == "__main__":
    main()
