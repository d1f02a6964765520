"""Command line: portrait + speech -> talking-head mp4.

    python -m pipeline.infer --image assets/examples/portrait_0.png --audio assets/examples/speech_0.wav --out out.mp4
    python -m pipeline.infer --init-random runs/random_tiny   # save a randomly initialised `tiny` pipeline

    python -m pipeline.infer --image portrait.png --audio talk.mp3 --out talk.mp4 --mode rest  # any length

The mp4 is written as the chunks come (H.264 + AAC); it appears only when complete. `--mode rest`
reads the audio in blocks: memory stays flat however long the file is; READ keeps its length limit.
Prints where it wrote and the real-time factor (wall time / audio duration). User errors (missing
or unreadable files, bad parameters, an output path that cannot be written) print one line and exit
with code 2 before any model is loaded, leaving no output file.
"""
from __future__ import annotations

import argparse
import json
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
    p.add_argument("--report", metavar="JSON", help="also write the figures (per-chunk seconds, peak RSS) as JSON")
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


def generate(args, settings: dict) -> dict:
    """Load, then generate and write the mp4 chunk by chunk as the pipeline streams it (`Mp4Writer`:
    one ffmpeg process, the file appears only when complete). REST reads the speech file in blocks, so
    neither the audio nor the video is ever held whole. Returns the figures `run` prints."""
    import resource

    from .config import FPS
    from .media_stream import Mp4Writer
    from .pipeline import TalkingHeadPipeline

    t0 = time.perf_counter()
    pipe = TalkingHeadPipeline.from_pretrained(args.checkpoint)
    t_load, t0, c0 = time.perf_counter() - t0, time.perf_counter(), time.process_time()
    stream = pipe.stream(args.image, args.audio, seed=args.seed, **settings)
    writer, frames, warnings, chunk_s, chunk_cpu_s, last = None, 0, [], [], [], (t0, c0)
    try:
        for chunk in stream:  # per chunk: its wall and CPU seconds, generation and writing together
            writer = writer or Mp4Writer(args.out, chunk.sample_rate, chunk.fps)
            writer.write(chunk.frames, chunk.audio)
            frames += len(chunk.frames)
            warnings += chunk.warnings
            now = (time.perf_counter(), time.process_time())
            chunk_s.append(now[0] - last[0])
            chunk_cpu_s.append(now[1] - last[1])
            last = now
        writer.close()
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    return dict(frames=frames, seconds=frames / FPS, elapsed_s=time.perf_counter() - t0, load_s=t_load,
                warnings=warnings, timings=stream.timings, chunk_s=chunk_s, chunk_cpu_s=chunk_cpu_s,
                peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


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
        out = generate(args, settings)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for w in out["warnings"]:
        print(f"warning: {w}", file=sys.stderr)
    seconds, elapsed = out["seconds"], out["elapsed_s"]
    stages = ", ".join(f"{k} {v:.2f}s" for k, v in out["timings"].items())
    print(f"wrote {args.out}: {out['frames']} frames, {seconds:.2f} s")
    print(f"real-time factor {elapsed / seconds:.3f} ({elapsed:.2f} s for {seconds:.2f} s; model load "
          f"{out['load_s']:.2f} s; {stages}; peak RSS {out['peak_rss_mb']:.0f} MB)")
    if args.report:
        from pathlib import Path

        Path(args.report).write_text(json.dumps(dict(out, audio=str(args.audio), mode=settings["mode"] or "read")))
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
