"""Speed benchmark: seconds per stage, real-time factor, first-clip latency, memory, DiT efficiency.

    python -m pipeline.eval.benchmark --preset tiny --seconds 10 --steps 8 --cfg split --repeats 3
    python -m pipeline.eval.benchmark --checkpoint assets/model --json bench.json --markdown bench.md
    python -m pipeline.eval.benchmark --preset read-512       # GPU only: random weights, same FLOPs

Every timing goes through `TalkingHeadPipeline.stream`, the one sampling path; the stage split
comes from the `timings` it fills (reference, speech, dit, decode), Whisper is timed by wrapping
the function the pipeline calls, and `media.write_mp4` is the mux. A run is measured at the given
settings and at the app defaults (read from app.py's constants without importing gradio).

DiT efficiency = counted FLOPs of one batched CFG forward (FlopCounterMode) x forwards of the run
/ measured DiT seconds, over the peak of a large matmul measured in the same process and dtype.
Random weights cost the same FLOPs as trained ones, so `--preset` figures are valid speed figures.
"""
from __future__ import annotations

import argparse
import ast
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

from ..config import FPS, SAMPLE_RATE

ROOT = Path(__file__).resolve().parents[2]
APP_PY = ROOT / "app.py"
SPEECH = ROOT / "assets" / "examples" / "speech_2.wav"
PORTRAIT = ROOT / "assets" / "examples" / "portrait_2.png"
COMPONENTS = [  # (key, label) in pipeline order; the markdown table has one row each
    ("whisper", "Whisper encoder"), ("speech_ae", "SpeechAE"), ("reference", "Reference (VAE encode)"),
    ("dit", "DiT (all sampling)"), ("decode", "VAE decode"), ("mux", "mp4 mux"),
]
SETTING_KEYS = ("num_inference_steps", "cfg_mode", "alpha", "beta", "shift", "clip_latent_frames")
APP_CONSTANTS = {"STEPS": "num_inference_steps", "CFG_MODE": "cfg_mode", "ALPHA": "alpha", "BETA": "beta",
                 "SHIFT": "shift", "CLIP_LATENT_FRAMES": "clip_latent_frames"}


# ---------------------------------------------------------------- inputs and settings
def app_defaults(path: Path = APP_PY) -> dict:
    """The app's sampling defaults (STEPS, CFG_MODE, ALPHA, BETA, ...) as `stream` keyword arguments.

    Read by parsing app.py: the constants are literals, and parsing spares importing gradio.
    """
    found = {}
    for node in ast.parse(Path(path).read_text()).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            name = node.targets[0].id
            if name in APP_CONSTANTS:
                found[APP_CONSTANTS[name]] = ast.literal_eval(node.value)
    if "cfg_mode" in found:
        found["cfg_mode"] = found["cfg_mode"].lower()  # the UI says "Joint", the pipeline "joint"
    return found


def resolve_settings(pipe, **overrides) -> dict:
    """All sampling settings, the pipeline config's where `overrides` gives None."""
    sc = pipe.config.sampling
    return {k: getattr(sc, k) if overrides.get(k) is None else overrides[k] for k in SETTING_KEYS}


def example_audio(seconds: float, path: Path = SPEECH) -> np.ndarray:
    """`seconds` of the example speech at 16 kHz: cut when shorter than the file, tiled when longer."""
    from ..media import load_audio

    wav = load_audio(path)
    n = max(1, round(seconds * SAMPLE_RATE))
    return np.tile(wav, -(-n // len(wav)))[:n]


# ---------------------------------------------------------------- timing one generation
def _sync(device) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


@contextmanager
def _whisper_timer(store: dict):
    """Time the Whisper encoder (log-mel + encoder) inside `pipe.encode_speech` by wrapping the
    module function it calls; the rest of the speech stage is the SpeechAE."""
    from .. import whisper as whisper_mod

    original = whisper_mod.encode_speech_features

    def timed(*args, **kwargs):
        t0 = time.perf_counter()
        out = original(*args, **kwargs)
        _sync(out.device)
        store["whisper"] = store.get("whisper", 0.0) + time.perf_counter() - t0
        return out

    whisper_mod.encode_speech_features = timed
    try:
        yield
    finally:
        whisper_mod.encode_speech_features = original


@contextmanager
def _forward_hooks(pipe, store: dict):
    """Sum the DiT's forward seconds inside the sampling (the rest of the DiT stage is the sampler's
    own work); on a GPU, sync after each model forward so the stage timers see finished work."""
    cuda, hooks = pipe.device.type == "cuda", []

    def start(*_):
        store["_t"] = time.perf_counter()

    def stop(*_):
        _sync(pipe.device)
        store["dit_forward"] = store.get("dit_forward", 0.0) + time.perf_counter() - store.pop("_t")

    hooks += [pipe.dit.register_forward_pre_hook(start), pipe.dit.register_forward_hook(stop)]
    if cuda:
        hooks += [m.register_forward_hook(lambda *_: _sync("cuda")) for m in (pipe.vae.encoder, pipe.vae.decoder)]
    try:
        yield
    finally:
        for h in hooks:
            h.remove()


def time_generation(pipe, image, wav: np.ndarray, settings: dict, out_path: Path) -> dict:
    """One generation, audio in -> mp4 out, through `stream`: seconds per stage, first clip, total."""
    from ..media import write_mp4

    timings, clips, first = {}, [], None
    with _whisper_timer(timings), _forward_hooks(pipe, timings):
        t0 = time.perf_counter()
        for clip in pipe.stream(image, wav, timings=timings, progress=False, **settings):
            first = time.perf_counter() - t0 if first is None else first
            clips.append(clip)
        t1 = time.perf_counter()
        frames, audio = np.concatenate([c.frames for c in clips]), np.concatenate([c.audio for c in clips])
        write_mp4(out_path, frames, audio, clips[0].sample_rate, clips[0].fps)
        t2 = time.perf_counter()
    return dict(
        whisper=timings.get("whisper", 0.0), speech_ae=timings["speech"] - timings.get("whisper", 0.0),
        reference=timings["reference"], dit=timings["dit"], decode=timings["decode"], mux=t2 - t1,
        dit_forward=timings["dit_forward"], total=t2 - t0, first_clip=first,
        first_clip_from_timings=timings["reference"] + timings["speech"] + timings["first_clip"],
        num_clips=clips[0].num_clips, frames=len(frames),
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
                end_to_end_s=median["total"], rtf=median["total"] / seconds, first_clip_s=median["first_clip"],
                first_clip_from_timings_s=median["first_clip_from_timings"],
                first_clip_same_inputs_s=again["first_clip"],
                dit_forward_s=median["dit_forward"], num_clips=median["num_clips"], video_frames=median["frames"],
                runs=runs)


# ---------------------------------------------------------------- DiT FLOPs, peak, profile
def matmul_peak(dtype, device, size: int = 2048, budget_s: float = 1.0) -> float:
    """Best FLOP/s of a size x size matmul in `dtype` (at least 3 timed products, up to budget_s)."""
    import torch

    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    inner = 10 if torch.device(device).type == "cuda" else 1  # GPU: amortise the sync
    torch.mm(a, b)  # warm-up
    _sync(device)
    best, start, n = 0.0, time.perf_counter(), 0
    while n < 3 or time.perf_counter() - start < budget_s:
        t0 = time.perf_counter()
        for _ in range(inner):
            a @ b
        _sync(device)
        best, n = max(best, 2 * size**3 * inner / (time.perf_counter() - t0)), n + 1
    return best


def _dit_call(pipe, settings: dict):
    """One batched CFG forward of the DiT at the clip shape [z_R, f latent frames], as the sampler makes it."""
    import torch

    from .. import sampler, scheduler

    f, d, s = settings["clip_latent_frames"], pipe.dit.config, pipe.speech_ae.config
    g = torch.Generator().manual_seed(0)
    shape = (1, d.in_channels, 1 + f, pipe.config.height // 32, pipe.config.width // 32)
    z = torch.randn(shape, generator=g).to(pipe.device, pipe.dtype)
    audio = torch.randn((1, f, s.num_tokens, s.code_dim), generator=g).to(pipe.device, pipe.dtype)
    t = scheduler.clip_timesteps(0.5, 0.75, f)[None].to(pipe.device, pipe.dtype)
    cfg = settings["cfg_mode"], settings["alpha"], settings["beta"]
    return torch.no_grad()(lambda: sampler.cfg_velocity(pipe.dit, z, t, audio, *cfg))


def count_dit_flops(pipe, settings: dict) -> int:
    """FLOPs of one batched CFG forward. The CPU attention kernel has no formula in torch's
    counter: it gets the same count as the GPU kernels (QK^T and PV)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

    def cpu_sdpa(q, k, v, *args, out_shape=None, **kwargs):
        return sdpa_flop_count(q, k, v)

    mapping = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: cpu_sdpa}
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        _dit_call(pipe, settings)()
    return counter.get_total_flops()


def _category(op: str) -> str:
    op = op.removeprefix("aten::")
    if op in ("addmm", "mm", "bmm", "baddbmm", "matmul", "linear"):
        return "matmul"
    if "attention" in op or op.startswith("_softmax") or op == "softmax":
        return "attention"
    if "norm" in op:
        return "norm"
    if op in ("cat", "copy_", "clone", "contiguous", "repeat_interleave", "index", "_to_copy", "stack", "where",
              "expand", "repeat", "empty", "zeros_like", "fill_", "unbind", "reshape", "view", "_unsafe_view"):
        return "copy/layout"
    return "elementwise/other"


def profile_dit(pipe, settings: dict, forwards: int = 3, top: int = 8) -> dict:
    """Wall time of one forward (no profiler) and where it goes: top ops and op categories by self time."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    call, cuda = _dit_call(pipe, settings), pipe.device.type == "cuda"
    call()  # warm-up
    walls = []
    for _ in range(max(3, forwards)):
        t0 = time.perf_counter()
        call()
        _sync(pipe.device)
        walls.append(time.perf_counter() - t0)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts) as prof:
        t0 = time.perf_counter()
        for _ in range(forwards):
            call()
        _sync(pipe.device)
        wall = time.perf_counter() - t0
    attr = "self_device_time_total" if cuda else "self_cpu_time_total"
    events = [(e.key, getattr(e, attr) / 1e6, e.count) for e in prof.key_averages()]
    events = sorted((e for e in events if e[1] > 0), key=lambda e: -e[1])
    total = sum(e[1] for e in events)
    cats: dict = {}
    for name, s, _ in events:
        cats[_category(name)] = cats.get(_category(name), 0.0) + s / total
    return dict(
        forward_s=float(np.median(walls)), time_basis="device" if cuda else "cpu",
        ops_share_of_wall=total / wall,  # CPU: the rest is Python, dispatch and profiler overhead
        top_ops=[dict(op=n, share=s / total, ms_per_forward=1e3 * s / forwards, calls_per_forward=c / forwards)
                 for n, s, c in events[:top]],
        categories=dict(sorted(cats.items(), key=lambda kv: -kv[1])),
    )


def dit_figures(pipe, settings: dict, measured: dict, matmul_size: int = 2048) -> dict:
    """FLOPs per forward and per second of video, achieved FLOP/s, the matmul peak and the efficiency."""
    import torch

    flops = count_dit_flops(pipe, settings)
    forwards = measured["num_clips"] * settings["num_inference_steps"]
    video_s = measured["video_frames"] / FPS
    peaks = {"float32": matmul_peak(torch.float32, pipe.device, matmul_size)}
    if pipe.dtype != torch.float32:
        peaks[str(pipe.dtype).removeprefix("torch.")] = matmul_peak(pipe.dtype, pipe.device, matmul_size)
    achieved = flops * forwards / measured["components_s"]["dit"]
    profile = profile_dit(pipe, settings)
    return dict(
        dit_flops_per_forward=flops, dit_forwards=forwards, dit_forwards_per_video_second=forwards / video_s,
        dit_flops_per_video_second=flops * forwards / video_s, dit_achieved_flops=achieved,
        matmul_peak_flops=peaks, matmul_size=matmul_size,
        dit_efficiency=achieved / peaks[str(pipe.dtype).removeprefix("torch.")],
        dit_forward_share=measured["dit_forward_s"] / measured["components_s"]["dit"],
        dit_profile=profile,
    )


# ---------------------------------------------------------------- the whole benchmark
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
    defaults (None = read app.py). The model must be loaded already: loading is not timed.
    """
    import torch

    wav = example_audio(seconds)
    settings = resolve_settings(pipe, **(settings or {}))
    app = resolve_settings(pipe, **(app_defaults() if app_settings is None else app_settings))
    env = _environment(pipe)  # the load average before our own work: other jobs on the machine
    if pipe.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    main = measure(pipe, image, wav, settings, repeats)
    at_app = measure(pipe, image, wav, app, repeats)
    result = dict(model=model, audio_seconds=len(wav) / SAMPLE_RATE, repeats=repeats, environment=env, **main,
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
            f"{r['audio_seconds']:.1f} s of audio -> {r['video_frames']} frames in {r['num_clips']} clips; median "
            f"of {r['repeats']} runs; 1-min load average before the run: {env['load_average_1min']:.2f}.", ""]
    body = _stage_table(r) + [""] + _measure_table(r) + [""] + _profile_table(r)
    return "\n".join(head + body) + "\n"


# ---------------------------------------------------------------- command line
def parse_args(argv=None):
    from ..config import PRESETS
    from ..infer import DEFAULT_CHECKPOINT

    p = argparse.ArgumentParser(description="READ speed benchmark (stages, real-time factor, DiT efficiency)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", help=f"saved pipeline folder (default: {DEFAULT_CHECKPOINT} if present)")
    src.add_argument("--preset", choices=sorted(PRESETS), help="random weights of a preset: same FLOPs, valid speed figures")
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

    from ..app_support import pick_device
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
        result = run_benchmark(pipe, seconds=args.seconds, repeats=max(1, args.repeats), settings=settings, model=model)
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
