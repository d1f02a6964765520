"""The participant flow and the admin view, in plain Python (the Gradio tab is a thin layer over it).

A participant starts with a code (given by the researcher, or a fresh random one) and gets a
secret session id; every later call carries that id and reaches only that participant's trials.
`rate` stores the scores of the participant's next unrated trial and returns the one after;
a repeated or stale submission stores nothing and returns where the participant stands. The
admin view needs the study's secret token. All state is in the SQLite store: a server restart
or a reload resumes where the participant left off.
"""
from __future__ import annotations

import hmac
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from .design import participant_trials
from .render import video_table
from .spec import SCALE, Study, StudyError, load_study
from .store import Store

DB_FILE = "ratings.sqlite"
TOKEN_ENV = "READ_STUDY_TOKEN"


class AccessDenied(StudyError):
    """A request without the right token or session; says nothing about what exists."""


@dataclass(frozen=True)
class TrialView:
    """What the participant is shown next."""

    session: str  # secret session id ("" before a session exists)
    number: int  # 1-based trial number; 0 when every trial is rated
    total: int  # trials in the session
    video: str | None  # mp4 path; None when done
    message: str  # Markdown heading or note


def read_token(token_file=None) -> str | None:
    """The admin token: the first line of `token_file` if given, else $READ_STUDY_TOKEN, else None."""
    if token_file:
        path = Path(token_file)
        if not path.is_file():
            raise StudyError(f"token file not found: {path}")
        lines = path.read_text().strip().splitlines()
        token = lines[0].strip() if lines else ""
    else:
        token = os.environ.get(TOKEN_ENV, "").strip()
    if token_file and len(token) < 8:
        raise StudyError(f"the token in {token_file} is too short: use at least 8 characters")
    return token or None


def client_kind(user_agent: str | None) -> str:
    """A coarse, non-personal client label from a User-Agent: browser family (+ mobile), or an API client."""
    ua = user_agent or ""
    if any(key in ua.lower() for key in ("gradio", "python", "httpx", "curl")):  # gradio_client: "gradio (https://...)"
        return "api"
    family = next((name for key, name in (("Edg/", "edge"), ("Firefox/", "firefox"), ("Chrom", "chrome"),
                                          ("Safari/", "safari")) if key in ua), "other")
    return family + ("-mobile" if "Mobile" in ua else "")


class StudyService:
    """One study's participant sessions and admin view. Thread-safe (state lives in SQLite)."""

    def __init__(self, study: Study | str | Path, token: str | None = None):
        self.study = study if isinstance(study, Study) else load_study(study)
        self.videos = video_table(self.study)  # raises StudyError until `render` has run
        self.store = Store(self.study.output / DB_FILE)
        self.token = token
        self.criteria = [c.id for c in self.study.criteria]

    # ------------------------------------------------------------ participants
    def start(self, code: str | None = "", client: str = "") -> TrialView:
        """Begin or resume the session of participant `code`; a blank code gets a new random one."""
        code = (code or "").strip()
        if not code:
            if self.study.codes:
                raise StudyError("Please type the participant code you were given.")
            code = "p-" + secrets.token_hex(4)
        elif self.study.codes and code not in self.study.codes or not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", code):
            raise StudyError("This participant code is not valid for this study. Check it and try again.")
        trials = lambda ordinal: participant_trials(self.study, ordinal)  # noqa: E731
        participant = self.store.enrol(code, trials, client)
        return self._view(participant.id, participant.session, note=f"Your participant code is **{code}**. "
                          "Keep it to continue later.")

    def resume(self, session: str | None) -> TrialView | None:
        """Where the participant with this session id stands, or None for an unknown id."""
        participant = self.store.participant(session=session) if session else None
        return self._view(participant.id, participant.session) if participant else None

    def rate(self, session: str, number: int, scores, client: str = "") -> TrialView:
        """Store `scores` (one per criterion, in study order, integers 1-5) for trial `number` (1-based).

        Returns the next trial (or number 0 when done). Raises `AccessDenied` for an unknown session
        and `StudyError` for missing or out-of-range scores. A trial that is already rated keeps its
        first scores; the reply says so and shows the participant's current trial.
        """
        participant = self.store.participant(session=session) if session else None
        if participant is None:
            raise AccessDenied("Unknown session. Start again with your participant code.")
        scores = self._check_scores(scores)
        try:
            position = int(number) - 1
        except (TypeError, ValueError):
            raise StudyError(f"trial number must be an integer (got {number!r})") from None
        outcome = self.store.rate(participant.id, position, dict(zip(self.criteria, scores)), client)
        note = {"stored": "", "already rated": f"Video {number} was already rated; your first answer is kept.",
                "not yet": f"Video {number} is not your next video; here is your next one."}[outcome]
        return self._view(participant.id, participant.session, note=note)

    def _check_scores(self, scores) -> list[int]:
        scores = list(scores or [])
        if len(scores) != len(self.criteria) or any(s is None or s == "" for s in scores):
            raise StudyError(f"Please answer all {len(self.criteria)} questions before pressing Next.")
        try:
            values = [int(s) for s in scores]
        except (TypeError, ValueError):
            raise StudyError(f"Scores must be whole numbers from {SCALE[0]} to {SCALE[1]}.") from None
        if any(not SCALE[0] <= v <= SCALE[1] or v != float(s) for v, s in zip(values, scores)):
            raise StudyError(f"Scores must be whole numbers from {SCALE[0]} to {SCALE[1]}.")
        return values

    def _view(self, participant: int, session: str, note: str = "") -> TrialView:
        trial, total = self.store.next_trial(participant)
        if trial is None:
            return TrialView(session, 0, total, None, "## Thank you! You have rated every video.\n"
                             "You may close this page.")
        self.store.mark_shown(participant, trial.position)
        video = self.videos.get((trial.stimulus, trial.condition))
        if video is None:  # the study file lost a stimulus or condition after this session began
            raise StudyError("This video is no longer part of the study; please tell the researcher.")
        heading = f"### Video {trial.position + 1} of {total}"
        return TrialView(session, trial.position + 1, total, str(video), heading + (f"\n\n{note}" if note else ""))

    # ------------------------------------------------------------ researcher
    def check_token(self, token: str | None) -> None:
        """Raise `AccessDenied` unless `token` is the study's admin token (constant-time compare)."""
        if not self.token:
            raise AccessDenied(f"The results view is off: start the server with ${TOKEN_ENV} or a token file.")
        if not token or not hmac.compare_digest(str(token).encode(), self.token.encode()):
            raise AccessDenied("Wrong or missing token.")

    def admin(self, token: str | None) -> str:
        """Progress and the results table as Markdown, for the holder of the admin token."""
        from .report import markdown_report

        self.check_token(token)
        rows = self.store.progress()
        done = sum(rated == total for _, rated, total in rows)
        lines = [f"**{len(rows)} participants**, {done} finished.", "",
                 "| participant | rated |", "|---|---|"]
        lines += [f"| {code} | {rated} / {total} |" for code, rated, total in rows]
        return "\n".join(lines) + "\n\n" + markdown_report(self.study, self.store.ratings())
