"""Measure REST streaming with a saved model: how the short-window Whisper features differ from READ's
30-s ones, first-chunk latency, time per chunk over a long stream, real-time factor, memory.

    python -m pipeline.eval.stream_bench --checkpoint assets/model --seconds 300 --threads 2
    python -m pipeline.eval.stream_bench --cli 10 600 --threads 1   # the CLI itself: peak RSS, per chunk

Audio is synthetic speech (espeak-ng, `data.tts`) repeated to the length asked. It is pushed in
20-ms blocks as fast as the machine allows; a chunk's latency is the compute from the block that
completed its audio (plus look-ahead) to its latents / its decoded frames. When the session decodes
on a worker thread (a core left free: `--threads 1` on 2 cores), a second pass replays the speech at
its own speed for the frame latencies. Prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from .. import speech, vae as vae_lib, whisper
from ..config import PipelineConfig
from ..rest import RestSession, RestSettings
from ..speech_stream import SpeechStream


def load_parts(checkpoint: str) -> dict:
    """DiT, speech encoder, VAE, Whisper encoder and feature extractor of a saved pipeline folder."""
    from diffusers import AutoencoderKLLTXVideo

    from ..dit import A2VDiT

    cfg = PipelineConfig.load(f"{checkpoint}/pipeline.json")
    parts = dict(cfg=cfg, dit=A2VDiT.from_pretrained(f"{checkpoint}/dit"),
                 ae=speech.load_speech_encoder(f"{checkpoint}/speech_ae"),
                 vae=AutoencoderKLLTXVideo.from_pretrained(checkpoint, subfolder="vae"),
                 whisper=whisper.load_whisper(cfg.speech.whisper, encoder_only=True), fe=whisper.load_feature_extractor())
    for m in ("dit", "ae", "vae"):
        parts[m].eval().requires_grad_(False)
    from ..student import for_rest, load_student  # REST runs the distilled student when the folder has one

    parts["dit"], cfg.sampling, _ = for_rest(load_student(checkpoint), parts["dit"], cfg.sampling)
    return parts


def test_speech(seconds: float, seed: int = 0) -> np.ndarray:
    """`seconds` of 16-kHz espeak speech: a 30-s piece repeated."""
    from ..data.tts import speak_for

    piece = speak_for(np.random.default_rng(seed), min(30.0, seconds))[0].audio
    return np.resize(piece, int(seconds * 16000)).astype(np.float32)


def _cos(a, b):
    return torch.nn.functional.cosine_similarity(a.flatten(1).float(), b.flatten(1).float(), dim=1)


@torch.no_grad()
def read_codes(parts, wav, num_latents):
    """READ's path (pipeline.encode_speech): 30-s Whisper windows over the padded clip, one encode."""
    s, frames = parts["cfg"].speech, vae_lib.video_frames(num_latents)
    padded = np.zeros(frames * 640, np.float32)
    padded[: min(len(wav), len(padded))] = wav[: len(padded)]
    feats = whisper.encode_speech_features(parts["whisper"], parts["fe"], padded).float()
    per_frame = speech.frame_features(feats, frames, s.feats_per_frame)  # (frames, Df)
    return per_frame, parts["ae"].encode(speech.frame_windows(per_frame, s.context_frames)[None])


def speech_stream(parts, group, window_s, lookahead_s):
    return SpeechStream(parts["whisper"], parts["fe"], parts["ae"], parts["cfg"].speech, group=group,
                        window_s=window_s, lookahead_s=lookahead_s)


def feature_drift(parts, wav, group=2, windows=(2.0, 4.0, 8.0), lookaheads=(0.0, 0.16, 0.32, 0.64)) -> list[dict]:
    """Cosine of the stream's per-frame features and codes against READ's, per (window, look-ahead)."""
    rows = []
    for w in windows:
        for la in lookaheads:
            st, feats, codes, t = speech_stream(parts, group, w, la), [], [], 0.0
            for i in range(0, len(wav), 320):
                t0 = time.perf_counter()
                out = st.push(wav[i : i + 320])
                t += time.perf_counter() - t0
                codes += out
                feats += [st.last_features[1]] if out else []
            codes += st.flush()
            feats.append(st.last_features[1])
            f, c = torch.cat(feats), torch.cat(codes, dim=1)[0]
            ref_f, ref_c = read_codes(parts, wav, c.shape[0])
            n = min(len(f), len(ref_f), st.num_frames)
            cf, cc = _cos(f[:n], ref_f[:n]), _cos(c, ref_c[0])
            rows.append(dict(window_s=w, lookahead_s=la, feature_cos_mean=float(cf.mean()), feature_cos_min=float(cf.min()),
                             code_cos_mean=float(cc.mean()), code_cos_min=float(cc.min()),
                             speech_s_per_group=t / max(1, len(codes))))
    return rows


def reference_latent(parts, image):
    """A path or an RGB uint8 array at the model's size -> z_R (1, C, 1, h, w)."""
    from PIL import Image

    cfg = parts["cfg"]
    rgb = image if isinstance(image, np.ndarray) else np.asarray(Image.open(image).convert("RGB").resize((cfg.width, cfg.height)))
    x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float() / 127.5 - 1
    return vae_lib.encode_image(parts["vae"], x)


def open_session(parts, image, settings: RestSettings, seed: int = 0, overlap_decode: bool | None = None) -> RestSession:
    return RestSession(parts["dit"], parts["ae"], parts["vae"], parts["whisper"], parts["fe"], parts["cfg"].speech,
                       reference_latent(parts, image), parts["cfg"].sampling, settings,
                       generator=torch.Generator().manual_seed(seed), overlap_decode=overlap_decode)


def _timed(obj, name: str, log: list, cpu: list, clock=time.process_time):
    """Wrap obj.name so that each call appends its wall seconds to log and its CPU seconds to cpu
    (process time: with one thread, what the call would take on an idle core of this machine; the
    calling thread's own time when the session decodes on a worker, one torch thread each)."""
    fn = getattr(obj, name)

    def wrapper(*a, **k):
        t0, c0 = time.perf_counter(), clock()
        out = fn(*a, **k)
        log.append(time.perf_counter() - t0)
        cpu.append(clock() - c0)
        return out

    setattr(obj, name, wrapper)


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


@torch.no_grad()
def run_stream(parts, wav, image, settings: RestSettings, block_s: float = 0.02, seed: int = 0,
               overlap_decode: bool | None = None, realtime: bool = False) -> dict:
    """Push `wav` in blocks through a `RestSession`; per chunk the DiT / decode seconds, per block the
    compute, and each frame's latency = when it is out - when its own audio has arrived. Blocks go in
    as fast as the machine allows and the latency comes from a simulated real-time replay (block k
    arrives at its end time and is processed once the previous one is done) - exact when the session
    works in line, but not when it decodes on a worker (the worker's progress runs on the real clock):
    `realtime` then pushes each block at its real arrival time and measures the latency on the clock."""
    t0 = time.perf_counter()
    session = open_session(parts, image, settings, seed, overlap_decode)
    open_s, dit, dec, speech_t, cpu = time.perf_counter() - t0, [], [], [], dict(dit=[], decode=[], speech=[])
    clock = time.thread_time if session.overlap_decode else time.process_time  # two threads at work
    _timed(session.streamer, "push", dit, cpu["dit"], clock)
    _timed(session.decoder, "push", dec, cpu["decode"], clock)
    _timed(session.speech, "push", speech_t, cpu["speech"], clock)
    n, blocks, rss, finish, lat = int(block_s * 16000), [], [], 0.0, []
    start = time.perf_counter()
    for i in range(0, len(wav) + 1, n):
        arrival = min(i + n, len(wav)) / 16000
        if realtime:
            time.sleep(max(0.0, start + arrival - time.perf_counter()))
        t1 = time.perf_counter()
        chunks = session.push_audio(wav[i : i + n], 16000) if i < len(wav) else session.close()
        compute = time.perf_counter() - t1
        finish = time.perf_counter() - start if realtime else max(arrival, finish) + compute
        lat += [finish - (c.start_frame + j + 1) / 25 for c in chunks for j in range(len(c.frames))]
        blocks.append(compute)
        if chunks:
            rss.append(_rss_mb())
    return dict(overlap_decode=session.overlap_decode, open_s=open_s, dit=dit, decode=dec, speech=speech_t, cpu=cpu, blocks=blocks, rss=rss, latency=lat,
                audio_s=len(wav) / 16000, frames=session.frames_out, settings=settings,
                ready0=session.speech.ready_sample(0) / 16000)  # chunk 0's audio + look-ahead, seconds


def summarise(run: dict) -> dict:
    st = run["settings"]
    dit, dec = np.array(run["dit"]), np.array(run["decode"])
    chunk = dit + dec[: len(dit)]  # DiT + decode per chunk (speech is per block, below)
    half, lat = len(chunk) // 2, np.array(run["latency"])
    speech_per_chunk = float(np.sum(run["speech"]) / len(dit))
    return dict(
        overlap_decode=run["overlap_decode"], chunks=len(dit), chunk_seconds=st.chunk_frames * 8 / 25, open_s=run["open_s"],
        first_chunk_compute_s=float(run["dit"][0] + run["decode"][0] + speech_per_chunk), first_chunk_audio_ready_s=run["ready0"],
        per_chunk_median_s=float(np.median(chunk)) + speech_per_chunk, per_chunk_p95_s=float(np.percentile(chunk, 95)) + speech_per_chunk,
        dit_median_s=float(np.median(dit)), decode_median_s=float(np.median(dec)), speech_per_chunk_s=speech_per_chunk,
        first_half_median_s=float(np.median(chunk[:half])), second_half_median_s=float(np.median(chunk[half:])),
        trend_ms_per_100_chunks=float(np.polyfit(np.arange(len(chunk)), chunk, 1)[0] * 1e5) if len(chunk) > 2 else 0.0,
        rtf=float(np.sum(run["blocks"]) / run["audio_s"]),
        frame_latency_median_s=float(np.median(lat)), frame_latency_max_s=float(lat.max()),
        first_frames_latency_s=float(lat[:9].max()),
        rss_mb_first_chunk=run["rss"][0], rss_mb_last=run["rss"][-1],
        rss_mb_by_tenth=[round(run["rss"][int(q * (len(run["rss"]) - 1))], 1) for q in np.linspace(0, 1, 11)],
        chunk_s_by_tenth=[round(float(np.median(p)), 3) for p in np.array_split(chunk, 10)] if len(chunk) >= 10 else [],
        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, frames_out=run["frames"],
        frames_expected=round(run["audio_s"] * 25), frames_returned=len(lat), cpu=_cpu_summary(run))


def _cpu_summary(run: dict) -> dict:
    """The same figures in CPU seconds (process time), a proxy for an idle machine when others load it."""
    c = run["cpu"]
    dit, dec = np.array(c["dit"]), np.array(c["decode"])
    speech_per_chunk = float(np.sum(c["speech"]) / len(dit))
    chunk = dit + dec[: len(dit)] + speech_per_chunk
    return dict(first_chunk_s=float(chunk[0]), per_chunk_median_s=float(np.median(chunk)),
                dit_median_s=float(np.median(dit)), decode_median_s=float(np.median(dec)), speech_per_chunk_s=speech_per_chunk,
                rtf=float((dit.sum() + dec.sum() + np.sum(c["speech"])) / run["audio_s"]),
                trend_ms_per_100_chunks=float(np.polyfit(np.arange(len(chunk)), chunk, 1)[0] * 1e5) if len(chunk) > 2 else 0.0)


def quality(checkpoint, clips=4, seconds=8.0, long_seconds=60.0, seed=9001) -> dict:
    """READ and REST (`mode="rest"`, the pipeline's default REST settings) on the same held-out synthetic
    clips with `eval.synthetic`'s metrics, and the identity of one long video's first and last second."""
    from ..data.synthetic import clip_seed, render_clip
    from ..pipeline import TalkingHeadPipeline
    from .mouth import load_reader
    from .synthetic import evaluate_clip, long_video_identity

    pipe = TalkingHeadPipeline.from_pretrained(checkpoint)
    size, reader, out = pipe.config.height, load_reader(), {}
    for mode in ("read", "rest"):
        rows = [evaluate_clip(pipe, reader, render_clip(clip_seed(seed, i), seconds, size), size, mode=mode) for i in range(clips)]
        out[mode] = {k: float(np.mean([r[k] for r in rows])) for k in rows[0] if k not in ("frames", "wall_s", "audio_s")}
        out[mode]["rtf"] = sum(r["wall_s"] for r in rows) / sum(r["audio_s"] for r in rows)
        if long_seconds:
            length = long_seconds if mode == "rest" else min(long_seconds, pipe.config.max_seconds)
            out[mode]["long_video"] = long_video_identity(pipe, lambda s: render_clip(clip_seed(seed, 10_000), s, size),
                                                          length, size, mode=mode)
    return out


def _trend(x) -> float:
    """Least-squares slope of x over its index, in ms per 100 items."""
    return float(np.polyfit(np.arange(len(x)), x, 1)[0] * 1e5) if len(x) > 2 else 0.0


def cli_run(seconds: float, checkpoint: str, image: str, threads: int, folder: Path) -> dict:
    """`python -m pipeline.infer --mode rest` on `seconds` of speech (a 16-bit wav), in its own process:
    its peak RSS (wait4's ru_maxrss: the process at its largest, the ffmpeg child apart), frames and
    codecs of the mp4, and its per-chunk seconds (wall and CPU, generation and writing) by tenth."""
    from ..media import probe, write_wav

    wav, out, report = (folder / f"speech_{seconds:g}s.wav", folder / f"rest_{seconds:g}s.mp4",
                        folder / f"rest_{seconds:g}s.json")
    write_wav(wav, test_speech(seconds))
    cmd = [sys.executable, "-m", "pipeline.infer", "--image", image, "--audio", str(wav), "--out", str(out),
           "--mode", "rest", "--threads", str(threads), "--checkpoint", checkpoint, "--report", str(report)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"the CLI failed with exit code {proc.returncode}")
    r, info = json.loads(report.read_text()), probe(out)
    wall, cpu = np.array(r["chunk_s"]), np.array(r["chunk_cpu_s"])
    return dict(audio_s=seconds, frames=r["frames"], frames_in_mp4=info["frames"], frames_expected=round(seconds * 25),
                codecs=[info["video"], info["audio"]], peak_rss_mb=usage.ru_maxrss / 1024, chunks=len(wall),
                rtf=r["elapsed_s"] / seconds, rtf_cpu=float(cpu.sum() / seconds), first_chunk_s=r["timings"].get("first_chunk"),
                chunk_cpu_median_s=float(np.median(cpu)), chunk_cpu_trend_ms_per_100=_trend(cpu[1:]),
                chunk_cpu_s_by_tenth=[round(float(np.median(q)), 3) for q in np.array_split(cpu, 10)] if len(cpu) >= 10 else [],
                chunk_wall_s_by_tenth=[round(float(np.median(q)), 3) for q in np.array_split(wall, 10)] if len(wall) >= 10 else [])


def cli_memory(lengths, checkpoint: str, image: str, threads: int) -> dict:
    """`cli_run` for each length; the peak-RSS ratio of the longest to the shortest."""
    with tempfile.TemporaryDirectory() as d:
        runs = [cli_run(s, checkpoint, image, threads, Path(d)) for s in sorted(lengths)]
    return dict(runs=runs, peak_rss_ratio=runs[-1]["peak_rss_mb"] / runs[0]["peak_rss_mb"])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default="assets/model")
    ap.add_argument("--image", default="assets/examples/portrait_0.png")
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--chunk", type=int, default=2)
    ap.add_argument("--context", type=int, default=2)
    ap.add_argument("--window", type=float, default=4.0)
    ap.add_argument("--lookahead", type=float, default=0.16)
    ap.add_argument("--holdback", type=int, default=15)
    ap.add_argument("--drift", action="store_true", help="also compare stream features with READ's (20 s of speech)")
    ap.add_argument("--quality", type=int, default=0, metavar="CLIPS", help="also READ vs REST on CLIPS held-out clips")
    ap.add_argument("--long-seconds", type=float, default=60.0, help="with --quality: the identity-drift video")
    ap.add_argument("--no-overlap", action="store_true",
                    help="decode in line even when a core is free (the session's default overlaps it with the DiT)")
    ap.add_argument("--cli", type=float, nargs="+", metavar="SECONDS",
                    help="instead: python -m pipeline.infer --mode rest on speech of these lengths (peak RSS, per chunk)")
    a = ap.parse_args(argv)
    if a.cli:
        print(json.dumps(dict(settings=vars(a), cli=cli_memory(a.cli, a.checkpoint, a.image, a.threads)), indent=1))
        return
    torch.set_num_threads(a.threads)
    parts = load_parts(a.checkpoint)
    out = dict(settings=vars(a))
    if a.drift:
        out["feature_drift"] = feature_drift(parts, test_speech(20.0))
    settings = RestSettings(a.chunk, a.context, a.window, a.lookahead, a.holdback)
    if a.quality:
        out["quality"] = quality(a.checkpoint, a.quality, long_seconds=a.long_seconds)
    wav, overlap = test_speech(a.seconds), False if a.no_overlap else None
    out["stream"] = summarise(run_stream(parts, wav, a.image, settings, overlap_decode=overlap))
    if out["stream"]["overlap_decode"]:  # the latency on the real clock (a second pass, at speech speed)
        paced = summarise(run_stream(parts, wav, a.image, settings, overlap_decode=overlap, realtime=True))
        out["stream"].update({k: paced[k] for k in ("frame_latency_median_s", "frame_latency_max_s", "first_frames_latency_s")})
    out["stream"]["frame_latency_from"] = "real-time replay" if out["stream"]["overlap_decode"] else "simulated replay"
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
