"""The Live tab: a thin Gradio layer over `pipeline.live` (all session logic and state live there).

Microphone blocks stream in (`gr.Audio(streaming=True)`: Gradio's frontend sends one every 0.1 s),
the REST session's segments stream out (`gr.Video(streaming=True)`, served as HLS), Stop, and a
figures line. The recording waveform and the progress overlay are off: both are redrawn for the
whole stream and cost a visitor's CPU (docs/STREAMING.md measures it in Chromium).
"""
from __future__ import annotations

from typing import Callable

import gradio as gr

from . import app_support as sup
from . import live as live_lib
from .errors import InputError


class LiveHandlers:
    """The Live tab's events over `pipeline.live` (microphone blocks in, REST segments out)."""

    def __init__(self, sessions: live_lib.LiveRegistry, get_pipe: Callable[[], object]):
        self.sessions, self.get_pipe = sessions, get_pipe

    def video(self, image, request: gr.Request):
        """Recording started: (new segment or skip, figures line) until the microphone or Stop ends it."""
        try:
            for path, status in live_lib.run(self.sessions, request.session_hash, self.get_pipe, sup.file_path(image)):
                yield (path if path else gr.skip()), status
        except InputError as e:
            raise gr.Error(str(e)) from None

    def feed(self, chunk, request: gr.Request) -> None:
        """One microphone block, (sample rate, int16 samples): queued for the session's generator."""
        session = self.sessions.for_audio(request.session_hash) if chunk is not None else None
        if session is not None:
            session.feed(*chunk)

    def finish(self, request: gr.Request) -> None:
        """The microphone stopped: the session generates what it still owes, then ends."""
        if (session := self.sessions.get(request.session_hash)) is not None:
            session.finish()

    def stop(self, request: gr.Request) -> str:
        """Stop: the session ends now (its generator sees it within one push)."""
        session = self.sessions.get(request.session_hash)
        if session is None:
            return "Nothing to stop."
        session.cancel()
        return session.figures.line("Stopped")

    def unload(self, request: gr.Request) -> None:
        self.sessions.close(request.session_hash)


def build_live_tab(sessions: live_lib.LiveRegistry, get_pipe: Callable[[], object], examples: list,
                   image_input: Callable[..., gr.Image], out_size: int) -> LiveHandlers:
    """A portrait, the microphone streaming in, the talking head streaming out (REST), Stop, figures.
    Call inside a `gr.Tab`; `demo.unload(handlers.unload)` ends a closed page's session.
    `get_pipe()`: the shared pipeline; `image_input(**kwargs)`: the app's portrait component;
    `examples`: [(portrait path, speech path)]; `out_size`: the frames' side in pixels (shown at 2×)."""
    live = LiveHandlers(sessions, get_pipe)
    with gr.Row(equal_height=False):
        with gr.Column():
            image = image_input(label="Portrait", sources=["upload", "clipboard"], height=256,
                              value=examples[0][0] if examples else None)
            if examples:
                gr.Examples(examples=[[img] for img, _ in examples], inputs=[image], label="Example portraits")
            mic = gr.Audio(sources=["microphone"], streaming=True, type="numpy", label="Microphone (record, then speak)",
                           waveform_options=gr.WaveformOptions(show_recording_waveform=False))  # spares the visitor's CPU
            stop = gr.Button("Stop live", variant="stop")
        with gr.Column():
            video = gr.Video(label=f"Live ({out_size}×{out_size}, REST)", streaming=True, autoplay=True,
                             height=2 * out_size + 60, width=2 * out_size, interactive=False)
            figures = gr.Markdown("Press record and speak: the head follows your voice chunk by chunk.",
                                  elem_id="live-figures")
    private = dict(api_visibility="private", show_progress="hidden")  # no overlay redrawn for the whole stream
    mic.start_recording(live.video, image, [video, figures], preprocess=False, **private)
    mic.stream(live.feed, mic, None, stream_every=0.5, time_limit=3600, concurrency_limit=None, **private)  # 0.1-s blocks
    mic.stop_recording(live.finish, None, None, queue=False, **private)
    stop.click(live.stop, None, figures, queue=False, **private)
    return live
