"""Gradio demo: a portrait and speech in, a talking head out, clip by clip as it is generated.

    python app.py                      # http://127.0.0.1:7860 with the model in assets/model
    python app.py --checkpoint runs/my_model --host 0.0.0.0 --port 8080 --share

This file only builds the UI and calls the pipeline (`TalkingHeadPipeline.stream`, `load_audio`);
request checks, output files and figures live in `pipeline/app_support.py`. Importing it loads
no model and does not import torch: the pipeline is created on the first request (or at launch),
once, and shared by all visitors. Everything else is per request.
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import time
from pathlib import Path

import gradio as gr

from pipeline import app_support as sup
from pipeline.errors import InputError
from pipeline.infer import DEFAULT_CHECKPOINT

# App defaults. Cheaper than the paper's (8 steps, Split CFG, alpha 2, beta 6) so that the demo
# keeps up with real time on a CPU; retune them for each trained model (docs/RESULTS.md: the paper's
# Split alpha 2 beta 6 over-guides the shipped model; Joint alpha 1.5 balances lip-sync and seams).
STEPS = 4
CFG_MODE = "Joint"
ALPHA = 1.5
BETA = 6.0
SHIFT = 1.0
CLIP_LATENT_FRAMES = 5  # 5 latent frames = 32 new video frames per clip (1.28 s)
MAX_SECONDS = 30.0
SEED = 0
VOICE = "en-us+f2"
VOICES = ["en-us+f1", "en-us+f2", "en-us+f3", "en-us+f4", "en-us+m1", "en-us+m3", "en-us+m5", "en-us+m7"]
RATE = 165  # words per minute
CPU_QUEUE = dict(default_concurrency_limit=1, max_size=16)  # 2 cores: one generation at a time
GPU_QUEUE = dict(default_concurrency_limit=2, max_size=32)
EXAMPLES_DIR = Path(__file__).resolve().parent / "assets" / "examples"
LIMITS = sup.Limits()
SOURCE_AUDIO, SOURCE_TEXT = "Upload or record", "Type text"

ABOUT = f"""
# READ talking head
Upload a portrait (or pick an example), give it speech — a file, your microphone, or typed text
for the built-in voice — and press **Generate**. Clips play as soon as they are decoded; the whole
video appears below when it is done.

**About the default model:** it was trained only on a synthetic cartoon-face domain. Photos of
real people are outside what it learned, so expect poor results on them.
The default settings ({STEPS} steps, {CFG_MODE} CFG, α = {ALPHA:g}) are cheaper than the paper's
(8 steps, Split CFG, α = 2, β = 6) so that generation keeps up with real time on a CPU.
"""


def portrait_input(**kwargs) -> gr.Image:
    """`gr.Image` that says in words when an upload is not an image (instead of a bare PIL error).

    Wrapped on the instance: a subclass of a gradio component makes gradio write a .pyi stub
    next to this file on import.
    """
    image = gr.Image(**kwargs)
    preprocess = image.preprocess

    def checked(payload):
        try:
            return preprocess(payload)
        except (OSError, ValueError, SyntaxError) as e:  # PIL: UnidentifiedImageError is an OSError
            raise gr.Error("Cannot read the portrait as an image. Upload a PNG, JPEG or WebP picture.") from e

    image.preprocess = checked
    return image


def on_zero_gpu(duration):
    """`@spaces.GPU(duration=...)` on a ZeroGPU Space, the function unchanged anywhere else."""
    if not os.environ.get("SPACES_ZERO_GPU"):
        return lambda fn: fn
    try:
        import spaces
    except ImportError:
        return lambda fn: fn
    return spaces.GPU(duration=duration)


def gpu_seconds(image, source, audio, text, voice, rate, steps, *args, **kwargs) -> int:
    """ZeroGPU time to ask for, from the request's speech length (same arguments as the handler)."""
    if source == SOURCE_TEXT:
        seconds = len((text or "").split()) / max(float(rate or RATE), 1.0) * 60
    else:
        seconds = sup.audio_seconds_of(audio) if audio else None
    return sup.estimate_gpu_seconds(seconds or MAX_SECONDS, int(steps or STEPS))


class Handlers:
    """Event handlers. All request state lives in locals; only the pipeline cache is shared."""

    def __init__(self, cache: sup.PipelineCache, live: bool = True):
        self.cache, self.live = cache, live  # live: stream chunks (gradio needs ffmpeg + ffprobe for it)

    def stream(self, image, source, audio, text, voice, rate, steps, cfg_mode, alpha, beta, seed,
               clip_latent_frames, shift, max_seconds, progress=gr.Progress()):
        """Yield (new chunk, whole video, figures) as clips are decoded."""
        args = (image, source, audio, text, voice, rate, steps, cfg_mode, alpha, beta, seed,
                clip_latent_frames, shift, max_seconds)
        try:
            yield from self._generate(*args, progress=progress, chunks=self.live)
        except InputError as e:
            raise gr.Error(str(e)) from None

    def video(self, image, source, audio, text, voice, rate, steps, cfg_mode, alpha, beta, seed,
              clip_latent_frames, shift, max_seconds, progress=gr.Progress()):
        """The whole video at once: (mp4 path, figures). For `gradio_client`."""
        args = (image, source, audio, text, voice, rate, steps, cfg_mode, alpha, beta, seed,
                clip_latent_frames, shift, max_seconds)
        try:
            *_, (_, final, info) = self._generate(*args, progress=progress, chunks=False)
        except InputError as e:
            raise gr.Error(str(e)) from None
        return final, info

    def _check(self, image, source, audio, text, voice, rate, steps, cfg_mode, alpha, beta, seed,
               clip_latent_frames, shift, max_seconds) -> dict:
        """Everything that can be checked before the model is touched; raises `InputError`."""
        if image is None:
            raise InputError("No portrait. Upload an image or pick one of the examples.")
        if source not in (SOURCE_AUDIO, SOURCE_TEXT):
            raise InputError(f"Speech source must be {SOURCE_AUDIO!r} or {SOURCE_TEXT!r}.")
        if source == SOURCE_AUDIO and audio is None:
            raise InputError("No speech. Upload or record audio, or choose 'Type text'.")
        if source == SOURCE_TEXT and not (text and text.strip()):
            raise InputError("The text box is empty. Type a sentence for the voice to speak.")
        if cfg_mode not in ("Joint", "Split"):
            raise InputError(f"CFG mode must be Joint or Split (got {cfg_mode!r}).")
        return dict(
            rate=sup.check_number("Speaking rate", rate, LIMITS.rate, integer=True),
            num_inference_steps=sup.check_number("Steps", steps, LIMITS.steps, integer=True),
            cfg_mode=cfg_mode.lower(),
            alpha=sup.check_number("α", alpha, LIMITS.alpha),
            beta=sup.check_number("β", beta, LIMITS.beta),
            seed=sup.check_number("Seed", seed, LIMITS.seed, integer=True),
            clip_latent_frames=sup.check_number("Clip length", clip_latent_frames, LIMITS.clip_latent_frames,
                                                integer=True),
            shift=sup.check_number("Schedule shift", shift, LIMITS.shift),
            max_seconds=sup.check_number("Maximum duration", max_seconds, LIMITS.max_seconds),
        )

    def _generate(self, image, source, audio, text, voice, rate, steps, cfg_mode, alpha, beta, seed,
                  clip_latent_frames, shift, max_seconds, progress, chunks: bool):
        t0 = time.perf_counter()
        kw = self._check(image, source, audio, text, voice, rate, steps, cfg_mode, alpha, beta, seed,
                         clip_latent_frames, shift, max_seconds)
        rate, max_seconds = kw.pop("rate"), kw.pop("max_seconds")
        if not self.cache.loaded:
            progress(0.0, desc="Loading the model")
        pipe = self.cache.get()
        if source == SOURCE_TEXT:
            progress(0.01, desc="Speaking the text")
            wav = pipe.load_audio(sup.speak_text(text, voice, rate))
        else:
            progress(0.01, desc="Reading the speech")
            wav = pipe.load_audio(audio)
        sup.check_audio(wav, max_seconds)
        progress(0.02, desc="Encoding the portrait and the speech")
        folder, whole, timings = sup.request_dir(), sup.VideoAssembler(), {}
        first_s, n_clips = None, 0
        for clip in pipe.stream(image, wav, timings=timings, progress=False, **kw):
            if first_s is None:
                for w in clip.warnings:
                    gr.Warning(w)
            whole.add(clip)
            chunk = sup.write_chunk(folder, clip) if chunks else None
            first_s = time.perf_counter() - t0 if first_s is None else first_s
            n_clips = clip.num_clips
            progress((clip.index + 1) / clip.num_clips, desc=f"Clip {clip.index + 1} of {clip.num_clips}")
            if chunks:
                # None clears the previous request's whole video while this one streams
                yield chunk, None, f"Generating… clip {clip.index + 1} of {clip.num_clips}"
        progress(1.0, desc="Writing the whole video")
        final = whole.write(folder / "talking_head.mp4")
        line = sup.timing_line(first_s, time.perf_counter() - t0, whole.seconds,
                               n_clips * kw["num_inference_steps"], timings.get("dit", 0.0))
        yield (gr.skip() if chunks else None), str(final), line


def build_demo(pipeline=None, *, checkpoint=DEFAULT_CHECKPOINT, examples_dir=EXAMPLES_DIR,
               queue: dict | None = None) -> gr.Blocks:
    """The UI. `pipeline`: a pipeline-like object (has `stream`), a zero-argument factory that
    makes one, or None for the saved model at `checkpoint`. Nothing is loaded here."""
    if pipeline is None:
        pipeline = sup.pretrained_factory(checkpoint)
    factory = (lambda: pipeline) if hasattr(pipeline, "stream") else pipeline
    can_stream = bool(shutil.which("ffmpeg") and shutil.which("ffprobe"))
    handlers = Handlers(sup.PipelineCache(factory), live=can_stream)
    examples = sup.find_examples(examples_dir)

    with gr.Blocks(title="READ talking head", delete_cache=(3600, 3600)) as demo:
        demo.handlers = handlers  # for tests and `main` (warm-up)
        gr.Markdown(ABOUT)
        with gr.Row():
            with gr.Column():
                image = portrait_input(label="Portrait", type="filepath", sources=["upload", "clipboard"],
                                      height=256)
                source = gr.Radio([SOURCE_AUDIO, SOURCE_TEXT], value=SOURCE_AUDIO, label="Speech")
                audio = gr.Audio(sources=["upload", "microphone"], type="filepath", label="Speech audio")
                with gr.Group(visible=False) as text_group:
                    text = gr.Textbox("", label="Text to speak", lines=2, placeholder="Hello! Nice to meet you.")
                    with gr.Row():
                        voice = gr.Dropdown(VOICES, value=VOICE, label="Voice")
                        rate = gr.Slider(*LIMITS.rate, value=RATE, step=5, label="Rate (words per minute)")
                with gr.Row():
                    steps = gr.Slider(*LIMITS.steps, value=STEPS, step=1, label="Steps")
                    cfg_mode = gr.Radio(["Joint", "Split"], value=CFG_MODE, label="CFG mode")
                with gr.Row():
                    alpha = gr.Slider(*LIMITS.alpha, value=ALPHA, step=0.1, label="α (guidance)")
                    beta = gr.Slider(*LIMITS.beta, value=BETA, step=0.1, label="β (audio guidance, Split only)",
                                     interactive=CFG_MODE == "Split")
                with gr.Row():
                    seed = gr.Number(value=SEED, precision=0, minimum=LIMITS.seed[0], maximum=LIMITS.seed[1],
                                     label="Seed")
                    dice = gr.Button("Random seed", size="sm")
                with gr.Accordion("Advanced", open=False):
                    clip_frames = gr.Slider(*LIMITS.clip_latent_frames, value=CLIP_LATENT_FRAMES, step=1,
                                            label="Clip length (latent frames per clip; 1 = 8 video frames)")
                    shift = gr.Slider(*LIMITS.shift, value=SHIFT, step=0.1, label="Schedule shift")
                    max_seconds = gr.Slider(*LIMITS.max_seconds, value=MAX_SECONDS, step=1,
                                            label="Maximum duration (s)")
                with gr.Row():
                    generate = gr.Button("Generate", variant="primary")
                    stop = gr.Button("Stop", variant="stop")
            with gr.Column():
                live = gr.Video(label="Live", streaming=True, autoplay=True, interactive=False)
                final = gr.Video(label="Whole video (download)", interactive=False)
                info = gr.Markdown("" if can_stream else "Live preview is off: the server lacks FFmpeg (ffmpeg, ffprobe).")
        if examples:
            gr.Examples(examples=[[img, wav] for img, wav in examples], inputs=[image, audio],
                        label="Examples (click one, then Generate)")
        else:
            gr.Markdown(f"No examples yet (put `portrait_<name>.png` + `speech_<name>.wav` in {examples_dir}).")
        api_only = gr.Button(visible=False)  # the non-streaming endpoint has no button of its own

        inputs = [image, source, audio, text, voice, rate, steps, cfg_mode, alpha, beta, seed, clip_frames, shift,
                  max_seconds]
        stream_fn = on_zero_gpu(gpu_seconds)(handlers.stream)
        video_fn = on_zero_gpu(gpu_seconds)(handlers.video)
        run = generate.click(stream_fn, inputs, [live, final, info], api_name="generate")
        stop.click(None, None, None, cancels=[run], api_visibility="private")
        api_only.click(video_fn, inputs, [final, info], api_name="generate_video")
        show = lambda s: (gr.update(visible=s == SOURCE_AUDIO), gr.update(visible=s == SOURCE_TEXT))  # noqa: E731
        source.change(show, source, [audio, text_group], api_visibility="private")
        audio.change(lambda a: gr.update(value=SOURCE_AUDIO) if a else gr.skip(), audio, source,
                     api_visibility="private")
        cfg_mode.change(lambda m: gr.update(interactive=m == "Split"), cfg_mode, beta, api_visibility="private")
        dice.click(lambda: random.randint(*LIMITS.seed), None, seed, api_visibility="private")
    demo.queue(**(queue or CPU_QUEUE))
    return demo


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="READ talking-head demo (Gradio)")
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (0.0.0.0: all interfaces)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--share", action="store_true", help="also serve through a public gradio.live link")
    p.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT), help="saved pipeline folder")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: all cores but one)")
    p.add_argument("--no-warmup", action="store_true", help="load the model on the first request instead")
    return p.parse_args(argv)


def warm_up(cache: sup.PipelineCache, examples_dir=EXAMPLES_DIR) -> None:
    try:
        sup.warm_up(cache.get(), sup.find_examples(examples_dir))
    except InputError as e:  # e.g. no model yet: every request will say so
        print(f"warning: {e}")


def main(argv=None):
    args = parse_args(argv)
    on_spaces = bool(os.environ.get("SPACE_ID"))
    gpu = sup.has_gpu()
    if not gpu:
        sup.set_cpu_threads(args.threads)
    demo = build_demo(checkpoint=args.checkpoint, queue=GPU_QUEUE if gpu else CPU_QUEUE)
    cache = demo.handlers.cache
    if os.environ.get("SPACES_ZERO_GPU"):
        cache.get()  # ZeroGPU wants the model created at startup (it moves it to the GPU per call)
    elif not args.no_warmup:
        import threading

        threading.Thread(target=warm_up, args=(cache,), daemon=True).start()
    demo.launch(server_name="0.0.0.0" if on_spaces else args.host, server_port=args.port, share=args.share)


if __name__ == "__main__":
    main()
