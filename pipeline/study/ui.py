"""The Study tab: a thin Gradio layer over `StudyService` (all logic and state live there).

Call `build_study_tab(study)` inside a `gr.Blocks` context. It adds a "Study" tab with the consent
page, one video at a time (autoplay, replay with the player), one 1-5 radio per criterion and Next,
and a token-guarded "Researcher" panel. Named endpoints, for `gradio_client` too:

    study_start(code) -> (session, trial number, video, message)
    study_rate(session, trial number, score_1, ..., score_k) -> (session, trial number, video, message)
    study_admin(token) -> Markdown (progress and results)

Trial number 0 means every trial is rated; -1 (page load only) means no session yet. The session
id is kept in the browser's local storage, so a reload resumes; a link with `?code=XYZ` fills in
the code. The study events form their own concurrency group without a limit: participants are
served in parallel (not one at a time like the generator) and never wait behind a generation.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import weakref
from pathlib import Path

import gradio as gr

from .render import study_salt
from .service import StudyService, TrialView, client_kind, read_token
from .spec import SCALE, SCALE_LABELS, Study, StudyError

CHOICES = [(f"{v} – {label}", v) for v, label in zip(range(SCALE[0], SCALE[1] + 1), SCALE_LABELS)]
FREE = dict(concurrency_limit=None, concurrency_id="study")  # rating is cheap: serve participants in parallel


def _client(request: gr.Request | None) -> str:
    return client_kind(request.headers.get("user-agent") if request is not None else None)


class StudyHandlers:
    """Event handlers: `StudyService` calls with its errors turned into `gr.Error`.

    Videos are handed to gradio as copies in a private temporary folder (which gradio may serve), so
    their URLs show neither the study's folder (whose name could hint at the systems compared) nor
    anything else in it; nothing of the study folder is ever served.
    """

    def __init__(self, service: StudyService):
        self.service = service
        self.served = Path(tempfile.mkdtemp(prefix="read-study-"))
        weakref.finalize(self, shutil.rmtree, self.served, True)

    def _serve(self, video: str | None) -> str | None:
        """The copy of `video` to hand to gradio (made once; same hashed name)."""
        if video is None:
            return None
        copy = self.served / Path(video).name
        if not copy.is_file():
            fd, tmp = tempfile.mkstemp(suffix=".mp4", dir=self.served)
            os.close(fd)
            shutil.copyfile(video, tmp)
            os.replace(tmp, copy)  # atomic: a concurrent request sees the old state or the whole file
        return str(copy)

    def _out(self, view: TrialView) -> tuple:
        return view.session, view.number, self._serve(view.video), view.message

    def start(self, code, request: gr.Request = None):
        try:
            return self._out(self.service.start(code, _client(request)))
        except StudyError as e:
            raise gr.Error(str(e)) from None

    def rate(self, request: gr.Request, session, number, *scores):  # gradio injects only positional requests
        try:
            return self._out(self.service.rate(session, number, scores, _client(request)))
        except StudyError as e:
            raise gr.Error(str(e)) from None

    def admin(self, token):
        try:
            return self.service.admin(token)
        except StudyError as e:
            raise gr.Error(str(e)) from None

    def on_load(self, saved, request: gr.Request = None):
        """A reload: the saved session's current trial (or the consent page), and ?code= filled in."""
        code = request.query_params.get("code", "") if request is not None else ""
        view = self.service.resume(saved) if saved else None
        return (*(self._out(view) if view else self.consent_page()), code)

    def consent_page(self) -> tuple:
        """Outputs for "no session": the consent page (also for the next participant on a shared computer)."""
        return "", -1, None, f"## {self.service.study.title}"


def _layout(number, criteria: int):
    """Which panel shows for a trial number (-1 consent, 0 done, >= 1 a trial); radios cleared."""
    number = -1 if number is None else int(number)
    return (gr.update(visible=number < 0), gr.update(visible=number > 0), gr.update(visible=number == 0),
            *([None] * criteria))


def build_study_tab(study: Study | str | Path, token: str | None = None) -> StudyService:
    """Add the "Study" tab to the enclosing `gr.Blocks`. `token`: admin token (default $READ_STUDY_TOKEN).

    Raises `StudyError` for a bad study file or videos not rendered yet. Returns the service.
    """
    from gradio.context import Context

    if Context.root_block is None:
        raise RuntimeError("build_study_tab adds a tab: call it inside `with gr.Blocks() as demo:`")
    service = StudyService(study, token or read_token())
    study, handlers = service.study, StudyHandlers(service)
    # the browser keeps the session id encrypted under a key made from the study's secret salt, so
    # that a reload after a server restart still resumes (gradio's default key changes per process)
    salt = hashlib.sha256(f"browser-state:{study_salt(study)}".encode()).hexdigest()
    key = "read-study-" + salt[:12]
    with gr.Tab("Study"):
        heading = gr.Markdown(f"## {study.title}")
        with gr.Column(visible=True) as consent_box:
            gr.Markdown(study.consent)
            code = gr.Textbox(label="Participant code", max_lines=1,
                              placeholder="the code you were given" if study.codes else "leave empty for a new one")
            agree = gr.Checkbox(label="I have read the above and agree to take part.")
            start = gr.Button("Start", variant="primary", interactive=False)
        with gr.Column(visible=False) as trial_box:
            video = gr.Video(autoplay=True, interactive=False, show_label=False, buttons=[], height=420)
            radios = [gr.Radio(CHOICES, label=c.question, info=c.name) for c in study.criteria]
            next_btn = gr.Button("Next", variant="primary")
        new_participant = gr.Button("New participant", visible=False, size="sm")  # shared lab computers
        session = gr.Textbox(visible=False, label="session")  # labels name the API parameters
        number = gr.Number(visible=False, precision=0, label="trial")
        saved = gr.BrowserState("", storage_key=key, secret=salt[12:44])
        with gr.Accordion("Researcher", open=False):
            token_box = gr.Textbox(type="password", label="Admin token", max_lines=1)
            show = gr.Button("Show results")
            results = gr.Markdown()
    ui = dict(heading=heading, consent_box=consent_box, code=code, agree=agree, start=start, trial_box=trial_box,
              video=video, radios=radios, next_btn=next_btn, session=session, number=number, saved=saved,
              token_box=token_box, show=show, results=results, new_participant=new_participant)
    _wire(handlers, Context.root_block, ui)
    return service


def _wire(handlers: StudyHandlers, root, ui: dict) -> None:
    """Connect the events; the layout and the browser's saved session follow each successful call."""
    outputs = [ui["session"], ui["number"], ui["video"], ui["heading"]]
    layout = [ui["consent_box"], ui["trial_box"], ui["new_participant"], *ui["radios"]]
    n = len(ui["radios"])

    def follow(event):  # one step: the panel shown and the session saved in the browser never disagree
        # gradio's BrowserState skips saving empty values: "-" stands for "no session"
        event.success(lambda k, s: (*_layout(k, n), s or "-"), [ui["number"], ui["session"]],
                      [*layout, ui["saved"]], api_visibility="private", **FREE)

    ui["agree"].change(lambda a: gr.update(interactive=bool(a)), ui["agree"], ui["start"],
                       api_visibility="private", **FREE)
    follow(ui["start"].click(handlers.start, ui["code"], outputs, api_name="study_start", **FREE))
    follow(ui["next_btn"].click(handlers.rate, [ui["session"], ui["number"], *ui["radios"]], outputs,
                                api_name="study_rate", **FREE))
    follow(root.load(handlers.on_load, ui["saved"], [*outputs, ui["code"]], api_visibility="private", **FREE))
    follow(ui["new_participant"].click(handlers.consent_page, None, outputs, api_visibility="private", **FREE))
    ui["show"].click(handlers.admin, ui["token_box"], ui["results"], api_name="study_admin", **FREE)
