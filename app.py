"""Gradio demo: a portrait and speech in, a talking head out, clip by clip as it is generated.

    python app.py                      # http://127.0.0.1:7860 with the model in assets/model
    python app.py --checkpoint runs/my_model --host 0.0.0.0 --port 8080 --share
    python app.py --study studies/pilot  # plus a Study tab for a user study (docs/STUDY.md)

This file only builds the UI. Requests become one `GenerationRequest` (checked there) and run through
`app_support.generate` over the pipeline's `stream`; the shared pipeline, devices, defaults and the
warm-up live in `pipeline/serving.py`. Importing it loads no model and does not import torch.
"""
from __future__ import annotations

import argparse
import inspect
import random
import shutil
import sys
import threading
import time

import gradio as gr

from pipeline import app_support as sup
from pipeline import live as live_lib
from pipeline.live_ui import build_live_tab
from pipeline import serving
from pipeline.errors import InputError

# UI defaults (the sampling ones live in serving.APP_SETTINGS, shared with the benchmark).
STEPS = serving.APP_SETTINGS["num_inference_steps"]
CFG_MODE = serving.APP_SETTINGS["cfg_mode"].capitalize()
ALPHA, BETA = serving.APP_SETTINGS["alpha"], serving.APP_SETTINGS["beta"]
SHIFT, CLIP_LATENT_FRAMES = serving.APP_SETTINGS["shift"], serving.APP_SETTINGS["clip_latent_frames"]
MAX_SECONDS, SEED, VOICE, VOICES, RATE = serving.APP_MAX_SECONDS, 0, sup.VOICE, sup.VOICES, sup.RATE
SOURCE_AUDIO, SOURCE_TEXT = sup.SOURCE_AUDIO, sup.SOURCE_TEXT
CPU_QUEUE = dict(default_concurrency_limit=1, max_size=16)  # 2 cores: one generation at a time
GPU_QUEUE = dict(default_concurrency_limit=2, max_size=32)
EXAMPLES_DIR = serving.EXAMPLES_DIR
OUT_SIZE = 128  # the default model's frames, shown at 2x

ABOUT = f"""
# READ talking head
Upload a portrait (or pick an example), give it speech — a file, your microphone, or typed text
for the built-in voice — and press **Generate**. Clips play as soon as they are decoded; the whole
video appears below when it is done.

**About the default model:** its diffusion model was trained only on a synthetic cartoon-face
domain, which it renders itself. A **photo of a real person** is animated in *photo mode*: READ
generates the talking motion on a synthetic driver face, and that motion (mouth, blinks, head)
drives a warp of your photo — the diffusion model does not draw photos until it has real-data
weights. "Render" under Advanced chooses (Auto decides per portrait).
The default settings ({STEPS} steps, {CFG_MODE} CFG, α = {ALPHA:g}) are cheaper than the paper's
(8 steps, Split CFG, α = 2, β = 6) so that generation keeps up with real time on a CPU.
"""


def portrait_input(**kwargs) -> gr.Image:
    """The portrait upload. Its events run with `preprocess=False`: handlers get the uploaded file
    itself (gradio does not open it with PIL first), so every format takes the CLI's path (16-bit,
    float TIFF, EXIF-rotated) and the pipeline's loader words every refusal."""
    return gr.Image(type="filepath", image_mode=None, **kwargs)


def on_zero_gpu(duration):
    """`@spaces.GPU(duration=...)` on a ZeroGPU Space, the function unchanged anywhere else."""
    if not serving.on_zero_gpu():
        return lambda fn: fn
    try:
        import spaces
    except ImportError:
        return lambda fn: fn
    return spaces.GPU(duration=duration)


def with_ui_signature(fn, extra: tuple[str, ...] = ()):
    """A handler with the named parameters of `sup.UI_FIELDS` (+ `extra` state inputs, + gradio's
    progress) calling `fn(*values, progress=...)`, so the API's parameter names come from the one
    list of fields."""
    fields = (*sup.UI_FIELDS, *extra)
    n = len(fields)

    def split(args, kwargs):
        values = list(args[:n]) + [kwargs.pop(f, None) for f in fields[len(args):n]]
        progress = args[n] if len(args) > n else kwargs.get("progress", gr.Progress())
        return tuple(values), progress

    if inspect.isgeneratorfunction(fn):
        def handler(*args, **kwargs):
            values, progress = split(args, kwargs)
            yield from fn(*values, progress=progress)
    else:
        def handler(*args, **kwargs):
            values, progress = split(args, kwargs)
            return fn(*values, progress=progress)
    params = [inspect.Parameter(f, inspect.Parameter.POSITIONAL_OR_KEYWORD) for f in fields]
    params.append(inspect.Parameter("progress", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=gr.Progress()))
    handler.__signature__ = inspect.Signature(params)
    handler.__name__ = handler.__qualname__ = fn.__name__
    return handler


class Handlers:
    """Event handlers. All request state lives in locals; only the pipeline cache is shared."""

    def __init__(self, cache: serving.PipelineCache, live: bool = True):
        self.cache, self.live = cache, live  # live: stream chunks (gradio needs ffmpeg + ffprobe for it)
        self.live_sessions = live_lib.LiveRegistry()  # the Live tab's sessions, by browser session
        self.sample = on_zero_gpu(self.gpu_seconds)(self._sample)  # the only part that needs a GPU

    def _sample(self, image, speech, seed=0, **settings):
        """The generation alone: yields picklable `VideoChunk`s (ZeroGPU runs it in its GPU worker)."""
        yield from self.cache.get().stream(image, speech, seed=seed, progress=False, **settings)

    @staticmethod
    def gpu_seconds(image, speech, seed=0, **settings) -> int:
        """ZeroGPU time to ask for, from the checked request's speech length and steps."""
        return serving.estimate_gpu_seconds(speech.seconds, settings.get("num_inference_steps", STEPS))

    def run(self, values: tuple, progress, chunks: bool, started: dict | None = None):
        """Check the request (no model touched), then generate: yields `sup.Update`s. `started`: the
        click's time and request folder, from `Handlers.start` (None for API calls)."""
        request = sup.GenerationRequest.from_ui(*values)
        if not self.cache.loaded:
            progress(0.0, desc="Loading the model")
        self.cache.get()
        shown, started = set(), started or {}
        step_progress = None if serving.on_zero_gpu() else (lambda f, d: progress(f, desc=d))
        for update in sup.generate(self.sample, request, chunks=chunks, progress=step_progress,
                                   folder=started.get("folder"), clicked_at=started.get("clicked_at")):
            for w in set(update.warnings) - shown:
                gr.Warning(w)
            shown |= set(update.warnings)
            yield update

    @staticmethod
    def start() -> dict:
        """At the click, before the queue: the click's server time and a folder for this request."""
        return {"clicked_at": time.time(), "folder": str(sup.request_dir())}

    def stream(self, *values, progress=gr.Progress()):
        """Yield (new chunk, whole video, figures) as chunks are decoded."""
        *values, started = values
        try:
            for u in self.run(tuple(values), progress, chunks=True, started=started):
                if u.final is None:
                    if self.live:
                        yield u.chunk, None, u.status  # None clears the previous request's whole video
                else:
                    yield (gr.skip() if self.live else None), str(u.final), u.status
        except InputError as e:
            raise gr.Error(str(e)) from None

    def video(self, *values, progress=gr.Progress()):
        """The whole video at once: (mp4 path, figures). For `gradio_client`."""
        try:
            *_, last = self.run(values, progress, chunks=False)
        except InputError as e:
            raise gr.Error(str(e)) from None
        return str(last.final), last.status

    @staticmethod
    def stopped(started: dict | None):
        """After Stop: what was made so far as one mp4, and a status line that says so."""
        path, status = sup.stopped_video((started or {}).get("folder"))
        return (str(path) if path else None), status


def speech_inputs():
    """The speech source switch, the audio input and the text-to-speech group, each with a note line."""
    source = gr.Radio([SOURCE_AUDIO, SOURCE_TEXT], value=SOURCE_AUDIO, label="Speech")
    audio = gr.Audio(sources=["upload", "microphone"], type="filepath", label="Speech audio")
    audio_note = gr.Markdown("", elem_id="audio-note")
    with gr.Group(visible=False) as text_group:
        text = gr.Textbox("", label="Text to speak", lines=2, placeholder="Hello! Nice to meet you.")
        text_note = gr.Markdown("", elem_id="text-note")
        with gr.Row():
            voice = gr.Dropdown(VOICES, value=VOICE, label="Voice")
            rate = gr.Slider(*sup.slider_range("rate"), value=RATE, step=5, label="Rate (words per minute)")
    return source, audio, audio_note, text_group, text, text_note, voice, rate


def sampling_inputs():
    """Steps, CFG, guidance scales, seed and the advanced settings, with the app's slider ranges."""
    with gr.Row():
        steps = gr.Slider(*sup.slider_range("num_inference_steps"), value=STEPS, step=1, label="Steps")
        cfg_mode = gr.Radio(["Joint", "Split"], value=CFG_MODE, label="CFG mode")
    with gr.Row():
        alpha = gr.Slider(*sup.slider_range("alpha"), value=ALPHA, step=0.1, label="α (guidance)")
        beta = gr.Slider(*sup.slider_range("beta"), value=BETA, step=0.1, label="β (audio guidance, Split only)",
                         interactive=CFG_MODE == "Split")
    with gr.Row():
        lo, hi = sup.slider_range("seed")
        seed = gr.Number(value=SEED, precision=0, minimum=lo, maximum=hi, label="Seed")
        dice = gr.Button("Random seed", size="sm")
    with gr.Accordion("Advanced", open=False):
        clip_frames = gr.Slider(*sup.slider_range("clip_latent_frames"), value=CLIP_LATENT_FRAMES, step=1,
                                label="Clip length (latent frames per DiT clip; each clip adds 8 × (n − 1) video frames)")
        shift = gr.Slider(*sup.slider_range("shift"), value=SHIFT, step=0.1, label="Schedule shift")
        max_seconds = gr.Slider(*sup.slider_range("max_seconds"), value=MAX_SECONDS, step=1,
                                label="Maximum duration (s)")
        render = gr.Radio(list(sup.RENDER_CHOICES), value="Auto", label="Render",
                          info="Auto: photo mode for a real photo, the diffusion model for the synthetic domain")
    mode = gr.Radio(list(sup.MODE_CHOICES), value="READ", label="Mode",
                    info="READ: whole clips with motion frames. REST: streaming chunk by chunk (ID-Context cache)")
    dice.click(lambda: random.randint(*sup.slider_range("seed")), None, seed, api_visibility="private")
    cfg_mode.change(lambda m: gr.update(interactive=m == "Split"), cfg_mode, beta, api_visibility="private")
    return steps, cfg_mode, alpha, beta, seed, clip_frames, shift, max_seconds, render, mode


def output_column(can_stream: bool):
    """The live video, the whole video for download, and the status / figures line."""
    with gr.Column():
        size = dict(height=2 * OUT_SIZE + 60, width=2 * OUT_SIZE, interactive=False)
        live = gr.Video(label=f"Live ({OUT_SIZE}×{OUT_SIZE} video, shown at 2×)", streaming=True, autoplay=True, **size)
        final = gr.Video(label="Whole video (download)", **size)
        info = gr.Markdown("" if can_stream else "Live preview is off: the server lacks FFmpeg (ffmpeg, ffprobe).")
    return live, final, info


def wire_notes(image, image_note, audio, audio_note, text, text_note, rate, max_seconds) -> None:
    """Explain a bad upload at once, and the typed text's speaking time against the limit as it is typed."""
    image.change(sup.portrait_note, image, image_note, api_visibility="private", preprocess=False)
    for event in (audio.change, max_seconds.change):
        event(sup.audio_note, [audio, max_seconds], audio_note, api_visibility="private", preprocess=False)
    for event in (text.change, rate.change, max_seconds.change):
        event(sup.text_note, [text, rate, max_seconds], text_note, api_visibility="private")


def generate_tab(handlers: Handlers, examples: list, can_stream: bool) -> None:
    """Portrait, speech, examples, Generate / Stop, settings; the live and whole video; the events."""
    started = gr.State(None)  # the click's time and this request's folder (Handlers.start)
    with gr.Row(equal_height=False):
        with gr.Column():
            image = portrait_input(label="Portrait", sources=["upload", "clipboard"], height=256)
            image_note = gr.Markdown("", elem_id="portrait-note")
            source, audio, audio_note, text_group, text, text_note, voice, rate = speech_inputs()
            if examples:  # right under the inputs: on a phone the columns stack, outputs come after
                gr.Examples(examples=[[img, wav] for img, wav in examples], inputs=[image, audio],
                            label="Examples (click one, then Generate)")
            else:
                gr.Markdown("No examples yet (put `portrait_<name>.png` + `speech_<name>.wav` in assets/examples).")
            with gr.Row():  # above the settings: portrait, speech, an example, Generate
                generate = gr.Button("Generate", variant="primary")
                stop = gr.Button("Stop generating", variant="stop")
            steps, cfg_mode, alpha, beta, seed, clip_frames, shift, max_seconds, render, mode = sampling_inputs()
        live, final, info = output_column(can_stream)
    api_only = gr.Button(visible=False)  # the non-streaming endpoint has no button of its own
    inputs = [image, source, audio, text, voice, rate, steps, cfg_mode, alpha, beta, seed, clip_frames, shift,
              max_seconds, render, mode]
    run = generate.click(handlers.start, None, started, queue=False, api_visibility="private").then(
        with_ui_signature(handlers.stream, ("started",)), [*inputs, started], [live, final, info],
        api_name="generate", preprocess=False)
    stop.click(handlers.stopped, started, [final, info], cancels=[run], api_visibility="private")
    api_only.click(with_ui_signature(handlers.video), inputs, [final, info], api_name="generate_video",
                   preprocess=False)
    wire_notes(image, image_note, audio, audio_note, text, text_note, rate, max_seconds)
    show = lambda s: (gr.update(visible=s == SOURCE_AUDIO), gr.update(visible=s == SOURCE_TEXT))  # noqa: E731
    source.change(show, source, [audio, text_group], api_visibility="private")
    to_audio = lambda a: gr.update(value=SOURCE_AUDIO) if a else gr.skip()  # noqa: E731
    for event in (audio.upload, audio.stop_recording):  # the visitor's own audio, not an example's
        event(to_audio, audio, source, api_visibility="private")


def build_demo(pipeline=None, *, checkpoint=serving.DEFAULT_CHECKPOINT, examples_dir=EXAMPLES_DIR,
               queue: dict | None = None, study=None, study_token: str | None = None) -> gr.Blocks:
    """The UI. `pipeline`: a pipeline-like object (has `stream`), a zero-argument factory that
    makes one, or None for the saved model at `checkpoint`. Nothing is loaded here. `study`: a
    study file or folder adds the Study tab (admin `study_token`); raises `InputError` if it is bad."""
    if pipeline is None:
        pipeline = serving.pretrained_factory(checkpoint)
    factory = (lambda: pipeline) if hasattr(pipeline, "stream") else pipeline
    can_stream = bool(shutil.which("ffmpeg") and shutil.which("ffprobe"))
    handlers = Handlers(serving.PipelineCache(factory), live=can_stream)
    examples = sup.find_examples(examples_dir)

    with gr.Blocks(title="READ talking head", delete_cache=(3600, 3600)) as demo:
        demo.handlers = handlers  # for tests and `main` (warm-up)
        gr.Markdown(ABOUT)
        with gr.Tab("Generate"):
            generate_tab(handlers, examples, can_stream)
        with gr.Tab("Live"):
            live = build_live_tab(handlers.live_sessions, handlers.cache.get, examples, portrait_input, OUT_SIZE)
        demo.unload(live.unload)
        if study is not None:  # `--study`: the Study tab (pipeline/study, docs/STUDY.md); none without it
            from pipeline.study.ui import build_study_tab

            build_study_tab(study, token=study_token)
    demo.queue(**(queue or CPU_QUEUE))
    return demo


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="READ talking-head demo (Gradio)")
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (0.0.0.0: all interfaces)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--share", action="store_true", help="also serve through a public gradio.live link")
    p.add_argument("--checkpoint", default=str(serving.DEFAULT_CHECKPOINT), help="saved pipeline folder")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: all cores but one)")
    p.add_argument("--no-warmup", action="store_true", help="load the model on the first request instead")
    p.add_argument("--study", help="user-study file or folder: adds a Study tab (docs/STUDY.md)")
    p.add_argument("--study-token-file", help="file holding the study's admin token (default: $READ_STUDY_TOKEN)")
    return p.parse_args(argv)


def warm_up(cache: serving.PipelineCache, examples_dir=EXAMPLES_DIR) -> None:
    try:
        serving.warm_up(cache.get(), sup.find_examples(examples_dir))
    except InputError as e:  # e.g. no model yet: every request will say so
        print(f"warning: {e}")


def main(argv=None):
    import os

    args = parse_args(argv)
    gpu = serving.has_gpu()
    if not gpu:
        serving.set_cpu_threads(args.threads)
    try:
        from pipeline.study.service import read_token

        token = read_token(args.study_token_file) if args.study else None
        demo = build_demo(checkpoint=args.checkpoint, queue=GPU_QUEUE if gpu else CPU_QUEUE, study=args.study,
                          study_token=token)
    except InputError as e:  # a bad study file, or its videos not rendered yet
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    cache = demo.handlers.cache
    if serving.on_zero_gpu():
        cache.get()  # ZeroGPU wants the model created at startup (it moves it to the GPU per call)
    elif not args.no_warmup:
        threading.Thread(target=warm_up, args=(cache,), daemon=True).start()
    on_spaces = bool(os.environ.get("SPACE_ID"))
    demo.launch(server_name="0.0.0.0" if on_spaces else args.host, server_port=args.port, share=args.share)


if __name__ == "__main__":
    main()
