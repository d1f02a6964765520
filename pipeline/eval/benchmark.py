"""Speed benchmark: seconds per stage, real-time factor, first-clip latency, memory, DiT efficiency.

    python -m pipeline.eval.benchmark --preset tiny --seconds 10 --steps 8 --cfg split --repeats 3
    python -m pipeline.eval.benchmark --checkpoint assets/model --json bench.json --markdown bench.md
    python -m pipeline.eval.benchmark --preset read-512       # GPU only: random weights, same FLOPs

Every timing goes through `TalkingHeadPipeline.stream`, the one sampling path; the stage split
comes from the `timings` its `VideoStream` fills (reference, whisper, speech_ae, dit, decode, refine), and
`media_stream.Mp4Writer` writes the mp4 as the chunks come, as the CLI does ("mp4 mux": the time spent
handing chunks to ffmpeg and finishing the file). A run is measured at the given settings and at the
app defaults (`serving.APP_SETTINGS`, the constants the app itself uses).

DiT efficiency = counted FLOPs of one batched CFG forward (FlopCounterMode) x forwards of the run
/ measured DiT seconds, over the peak of a large matmul measured in the same process and dtype.
Random weights cost the same FLOPs as trained ones, so `--preset` figures are valid speed figures.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ..config import SAMPLE_RATE
from ..serving import APP_SETTINGS
from .flops import dit_figures, sync

ROOT = Path(__file__).resolve().parents[2]
SPEECH = ROOT / "assets" / "examples" / "speech_2.wav"
PORTRAIT = ROOT / "assets" / "examples" / "portrait_2.png"
COMPONENTS = [  # (key, label) in pipeline order; the markdown table has one row each
    ("whisper", "Whisper encoder"), ("speech_ae", "SpeechAE"), ("reference", "Reference (VAE encode)"),
    ("dit", "DiT (all sampling)"), ("decode", "VAE decode"),
    ("refine", "Frame refiner (a pipeline's refiner/)"), ("mux", "mp4 writing (as chunks come)"),
]
SETTING_KEYS = ("num_inference_steps", "cfg_mode", "alpha", "beta", "shift", "clip_latent_frames")


# ---------------------------------------------------------------- inputs and settings
def resolve_settings(pipe, **overrides) -> dict:
    """All sampling settings as a JSON-ready dict: the pipeline config's where `overrides` gives None."""
    resolved = pipe.settings(**{k: v for k, v in overrides.items() if k in SETTING_KEYS})
    return {k: getattr(resolved, k) for k in SETTING_KEYS}


def example_audio(seconds: float, path: Path = SPEECH) -> np.ndarray:
    """`seconds` of the example speech at 16 kHz: cut when shorter than the file, tiled when longer."""
    from ..media import load_audio

    wav = load_audio(path)
    n = max(1, round(seconds * SAMPLE_RATE))
    return np.tile(wav, -(-n // len(wav)))[:n]


# ---------------------------------------------------------------- timing one generation
@contextmanager
def _forward_hooks(pipe, store: dict):
    """Sum the DiT's forward seconds inside the sampling (the rest of the DiT stage is the sampler's
    own work); on a GPU, sync after each model forward so the stage timers see finished work."""
    cuda, hooks = pipe.device.type == "cuda", []

    def start(*_):
        store["_t"] = time.perf_counter()

    def stop(*_):
        sync(pipe.device)
        store["dit_forward"] = store.get("dit_forward", 0.0) + time.perf_counter() - store.pop("_t")

    hooks += [pipe.dit.register_forward_pre_hook(start), pipe.dit.register_forward_hook(stop)]
    if cuda:
        hooks += [m.register_forward_hook(lambda *_: sync("cuda")) for m in (pipe.vae.encoder, pipe.vae.decoder)]
    try:
        yield
    finally:
        for h in hooks:
            h.remove()


def time_generation(pipe, image, wav: np.ndarray, settings: dict, out_path: Path) -> dict:
    """One generation, audio in -> mp4 out, through `stream`, the mp4 written chunk by chunk as the CLI
    writes it (`media_stream.Mp4Writer`: ffmpeg encodes beside the generation): seconds per stage,
    first clip, total."""
    from ..media_stream import Mp4Writer

    hooked, first, writer, mux, frames = {}, None, None, 0.0, 0
    with _forward_hooks(pipe, hooked):
        t0 = time.perf_counter()
        stream = pipe.stream(image, wav, progress=False, **settings)
        try:
            for clip in stream:
                first = time.perf_counter() - t0 if first is None else first
                t1 = time.perf_counter()
                writer = writer or Mp4Writer(out_path, clip.sample_rate, clip.fps)
                writer.write(clip.frames, clip.audio)
                mux, frames, num_clips = mux + time.perf_counter() - t1, frames + len(clip.frames), clip.num_chunks
            t1 = time.perf_counter()
            writer.close()
        except BaseException:
            if writer is not None:
                writer.abort()
            raise
        t2 = time.perf_counter()
    timings = stream.timings
    return dict(
        whisper=timings.get("whisper", 0.0), speech_ae=timings.get("speech_ae", 0.0),
        reference=timings["reference"], dit=timings["dit"], decode=timings["decode"],
        refine=timings.get("refine", 0.0), mux=mux + t2 - t1,
        photo=timings.get("photo", 0.0), dit_forward=hooked["dit_forward"], total=t2 - t0, first_clip=first,
        first_clip_from_timings=timings["first_chunk"], num_clips=num_clips, frames=frames,
    )


def measure(pipe, image, wav: np.ndarray, settings: dict, repeats: int) -> dict:
    """`repeats` generations after a short warm-up; the run with the median total, plus all runs."""
    with tempfile.TemporaryDirectory() as d:
        warm = dict(settings, num_inference_steps=1)  # lazy loads, kernel choice for these shapes
        list(pipe.stream(image, wav[: 2 * SAMPLE_RATE], progress=False, **warm))
        runs = []
        for i in range(repeats):  # each run as a new upload: no kept Whisper codes or reference latents
            pipe.clear_cache()
            runs.append(time_generation(pipe, image, wav, settings, Path(d) / f"run{i}.mp4"))
        again = time_generation(pipe, image, wav, settings, Path(d) / "again.mp4")  # same inputs, new settings
    median = sorted(runs, key=lambda r: r["total"])[(len(runs) - 1) // 2]
    seconds = len(wav) / SAMPLE_RATE
    return dict(settings=settings, components_s={k: median[k] for k, _ in COMPONENTS},
                photo_s=median["photo"], end_to_end_s=median["total"], rtf=median["total"] / seconds,
                first_clip_s=median["first_clip"],
                first_clip_from_timings_s=median["first_clip_from_timings"],
                first_clip_same_inputs_s=again["first_clip"],
                dit_forward_s=median["dit_forward"], num_clips=median["num_clips"], video_frames=median["frames"],
                runs=runs)


def _environment(pipe) -> dict:
    import torch

    cuda = pipe.device.type == "cuda"
    return dict(torch=torch.__version__, threads=torch.get_num_threads(), device=str(pipe.device),
                device_name=torch.cuda.get_device_name() if cuda else platform.processor() or platform.machine(),
                dtype=str(pipe.dtype).removeprefix("torch."), cpu_count=os.cpu_count(),
                load_average_1min=os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan"),
                python=platform.python_version())


def peak_rss_mb() -> float:
    """Process RSS high-water mark (ru_maxrss: KiB on Linux, bytes on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024


def run_benchmark(pipe, *, seconds: float = 10.0, repeats: int = 3, settings: dict | None = None,
                  app_settings: dict | None = None, image=PORTRAIT, model: str = "", matmul_size: int = 2048) -> dict:
    """All figures for `seconds` of the example speech, as a JSON-ready dict.

    settings: `stream` keyword arguments (None = the model's defaults); app_settings: the app's
    defaults (None = `serving.APP_SETTINGS`). The model must be loaded already: loading is not timed.
    """
    import torch

    wav = example_audio(seconds)
    settings = resolve_settings(pipe, **(settings or {}))
    app = resolve_settings(pipe, **(APP_SETTINGS if app_settings is None else app_settings))
    env = _environment(pipe)  # the load average before our own work: other jobs on the machine
    if pipe.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    main = measure(pipe, image, wav, settings, repeats)
    at_app = measure(pipe, image, wav, app, repeats)
    result = dict(model=model, image=Path(image).name, audio_seconds=len(wav) / SAMPLE_RATE, repeats=repeats,
                  environment=env, **main,
                  app_defaults=at_app)
    result.update(dit_figures(pipe, settings, main, matmul_size))
    result["peak_rss_mb"] = peak_rss_mb()
    result["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20 if pipe.device.type == "cuda" else None
    return result


# ---------------------------------------------------------------- report
def _label(s: dict) -> str:
    cfg = f"α {s['alpha']:g}" + (f", β {s['beta']:g}" if s["cfg_mode"] == "split" else "")
    return f"{s['num_inference_steps']} steps, {s['cfg_mode']} CFG ({cfg}), f = {s['clip_latent_frames']}"


def _stage_table(r: dict) -> list[str]:
    a = r["app_defaults"]
    lines = [f"| Component | {_label(r['settings'])} (s) | share | app defaults: {_label(a['settings'])} (s) |",
             "|---|---:|---:|---:|"]
    for key, label in COMPONENTS:
        x, y = r["components_s"][key], a["components_s"][key]
        lines.append(f"| {label} | {x:.3f} | {x / r['end_to_end_s']:.0%} | {y:.3f} |")
    if r["photo_s"] or a["photo_s"]:  # photo mode: motion reader + warp, on the other thread (not in the sum)
        lines.append(f"| Photo warp, beside the DiT | {r['photo_s']:.3f} | | {a['photo_s']:.3f} |")
    return lines + [
        f"| **End to end** (audio in -> mp4 out) | {r['end_to_end_s']:.3f} | 100% | {a['end_to_end_s']:.3f} |",
        f"| Real-time factor (wall / audio) | {r['rtf']:.3f} | | {a['rtf']:.3f} |",
        f"| First clip (call -> first yield) | {r['first_clip_s']:.3f} | | {a['first_clip_s']:.3f} |",
        f"| First clip, same portrait and speech again | {r['first_clip_same_inputs_s']:.3f} | "
        f"| {a['first_clip_same_inputs_s']:.3f} |",
    ]


def _measure_table(r: dict) -> list[str]:
    g = lambda x: f"{x / 1e9:.2f}"  # noqa: E731
    peaks = ", ".join(f"{k} {v / 1e9:.0f}" for k, v in r["matmul_peak_flops"].items())
    cuda = [] if r["cuda_peak_mb"] is None else [f"| CUDA max allocated | {r['cuda_peak_mb']:.0f} MB |"]
    return ["| Measure | Value |", "|---|---:|", f"| Peak RSS | {r['peak_rss_mb']:.0f} MB |", *cuda,
            f"| DiT GFLOP per batched CFG forward | {g(r['dit_flops_per_forward'])} |",
            f"| DiT forwards per second of video | {r['dit_forwards_per_video_second']:.2f} |",
            f"| DiT GFLOP per second of video | {g(r['dit_flops_per_video_second'])} |",
            f"| DiT achieved GFLOP/s | {g(r['dit_achieved_flops'])} |",
            f"| Matmul peak GFLOP/s ({r['matmul_size']}²) | {peaks} |",
            f"| **DiT efficiency** (goal ≥ 0.5) | {r['dit_efficiency']:.3f} |",
            f"| DiT forwards' share of the DiT stage (rest: sampler) | {r['dit_forward_share']:.0%} |",
            f"| One forward in the sampling; alone | {r['dit_forward_s'] / r['dit_forwards'] * 1e3:.1f} ms; "
            f"{r['dit_profile']['forward_s'] * 1e3:.1f} ms |"]


def _profile_table(r: dict) -> list[str]:
    p = r["dit_profile"]
    cats = ", ".join(f"{k} {v:.0%}" for k, v in p["categories"].items())
    return [f"DiT forward, top ops by self {p['time_basis']} time (ops cover {p['ops_share_of_wall']:.0%} of the "
            f"profiled wall time); by category: {cats}", "",
            "| Op | share | ms / forward | calls / forward |", "|---|---:|---:|---:|"] + [
            f"| {o['op']} | {o['share']:.0%} | {o['ms_per_forward']:.2f} | {o['calls_per_forward']:.0f} |"
            for o in p["top_ops"]]


def to_markdown(r: dict) -> str:
    env = r["environment"]
    head = [f"### READ benchmark: {r['model']} on {env['device']} ({env['device_name']}), {env['dtype']}, "
            f"{env['threads']} threads, torch {env['torch']}", "",
            f"{r['image']}, {r['audio_seconds']:.1f} s of audio -> {r['video_frames']} frames in {r['num_clips']} clips; "
            f"median of {r['repeats']} runs; 1-min load average before the run: {env['load_average_1min']:.2f}.", ""]
    body = _stage_table(r) + [""] + _measure_table(r) + [""] + _profile_table(r)
    return "\n".join(head + body) + "\n"


# ---------------------------------------------------------------- command line
def parse_args(argv=None):
    from ..config import PRESETS
    from ..serving import DEFAULT_CHECKPOINT

    p = argparse.ArgumentParser(description="READ speed benchmark (stages, real-time factor, DiT efficiency)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", help=f"saved pipeline folder (default: {DEFAULT_CHECKPOINT} if present)")
    src.add_argument("--preset", choices=sorted(PRESETS), help="random weights of a preset: same FLOPs, valid speed figures")
    p.add_argument("--image", default=str(PORTRAIT),
                   help="portrait (default: example 2); a real photo takes photo mode (render auto)")
    p.add_argument("--seconds", type=float, default=10.0, help="audio length (the example speech, tiled if longer)")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's)")
    p.add_argument("--cfg", choices=["joint", "split"], default=None, help="CFG mode (default: the model's)")
    p.add_argument("--alpha", type=float, default=None)
    p.add_argument("--beta", type=float, default=None)
    p.add_argument("--repeats", type=int, default=3, help="timed runs per setting; the median is reported")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default="auto",
                   help="auto: fp32 on CPU, bf16 (or fp16) on a GPU, like the app")
    p.add_argument("--json", help="also write the figures here")
    p.add_argument("--markdown", help="also write the tables here")
    args = p.parse_args(argv)
    if not args.preset and not args.checkpoint:
        args.checkpoint = str(DEFAULT_CHECKPOINT) if (DEFAULT_CHECKPOINT / "pipeline.json").is_file() else None
        args.preset = None if args.checkpoint else "tiny"
    return args


def load_pipeline(args):
    """(pipeline, model name), or (None, reason) when this machine cannot run it."""
    import torch

    from ..serving import pick_device
    from ..config import PipelineConfig, get_preset
    from ..pipeline import TalkingHeadPipeline

    device, dtype = pick_device()
    dtype = dtype if args.dtype == "auto" else getattr(torch, args.dtype)
    if args.checkpoint:
        config = PipelineConfig.load(Path(args.checkpoint) / "pipeline.json")
    else:
        config = get_preset(args.preset)
    if config.preset == "read-512" and device == "cpu":
        return None, "read-512 needs a GPU"
    if args.checkpoint:
        pipe = TalkingHeadPipeline.from_pretrained(args.checkpoint, device=device, dtype=dtype)
        return pipe, f"{args.checkpoint} ({config.preset})"
    with torch.device(device):  # build on the device: random init of a 2-B model on the CPU is slow
        pipe = TalkingHeadPipeline.from_config(config)
    return (pipe.to(dtype=dtype) if dtype else pipe), f"{args.preset} (random weights)"


def main(argv=None) -> int:
    import torch

    from ..errors import InputError

    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.checkpoint and not (Path(args.checkpoint) / "pipeline.json").is_file():
        print(f"error: no saved pipeline at {args.checkpoint}; pass --preset tiny for random weights", file=sys.stderr)
        return 2
    pipe, model = load_pipeline(args)
    if pipe is None:
        print(f"skipped: {model}")
        return 0
    settings = dict(num_inference_steps=args.steps, cfg_mode=args.cfg, alpha=args.alpha, beta=args.beta)
    try:
        result = run_benchmark(pipe, seconds=args.seconds, repeats=max(1, args.repeats), settings=settings, model=model,
                               image=args.image)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    table = to_markdown(result)
    print(table)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    if args.markdown:
        Path(args.markdown).write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
