"""The study file (JSON or TOML): stimuli, conditions, criteria, attention checks, consent text.

A study file names portrait + speech pairs (stimuli) and what to show for each (conditions): a
render of this project with keyword settings for `TalkingHeadPipeline.__call__`, or an uploaded
video per stimulus (another system's output, ground truth). Paths are relative to the file's
folder. Everything is checked on load; all problems come back as one `StudyError` whose message
lists each of them, so a researcher fixes the file in one go. See docs/STUDY.md for the format.
"""
from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError

STUDY_FILE_NAMES = ("study.toml", "study.json")  # looked for when STUDY is a folder
ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
SCALE = (1, 5)
SCALE_LABELS = ("very poor", "poor", "fair", "good", "excellent")
MAX_CRITERIA = 8
DEFAULT_CONSENT = """## Welcome, and thank you for taking part
You will watch short videos of talking faces, one at a time, with sound (use headphones if you
can). After each video, rate it on each question from 1 (very poor) to 5 (excellent) and press
**Next**. You may replay a video as often as you like. There are no right or wrong answers.

Your answers are stored without your name; only the participant code links them. You may stop at
any time; with the same code you can come back and continue where you left off.
"""


class StudyError(InputError):
    """A study file, study folder or participant request that is wrong; the message says how to fix it."""


@dataclass(frozen=True)
class Criterion:
    id: str  # column name in the CSV files, e.g. "lip_sync"
    name: str  # table heading, e.g. "Lip-Sync"
    question: str  # what the participant reads


# READ's Table 4 columns, with wording a participant understands.
READ_CRITERIA = (
    Criterion("lip_sync", "Lip-Sync", "How well do the lip movements match the speech?"),
    Criterion("realness", "Realness", "How real and natural does the face look?"),
    Criterion("smooth", "Smooth", "How smooth is the motion (no jitter, jumps or flicker)?"),
    Criterion("v_qual", "V-Qual", "How good is the picture quality (sharpness, no artefacts)?"),
)


@dataclass(frozen=True)
class Stimulus:
    id: str
    image: Path | None  # portrait; needed only when some condition renders
    audio: Path | None  # speech; likewise
    videos: dict = field(default_factory=dict)  # condition id -> uploaded video for this stimulus


@dataclass(frozen=True)
class Condition:
    id: str  # never shown to participants
    label: str  # report heading
    settings: dict  # keyword arguments of TalkingHeadPipeline.__call__ (render conditions)
    video: str | None = None  # uploaded videos: a path pattern with {stimulus}, relative to the study file
    checkpoint: Path | None = None  # saved pipeline for this condition (render conditions)

    @property
    def uploaded(self) -> bool:
        return self.video is not None


@dataclass(frozen=True)
class Attention:
    repeats: int = 0  # trials shown a second time, later in the sequence
    condition: str | None = None  # repeat only trials of this condition (e.g. ground truth)
    tolerance: int = 1  # a repeat passes when every score is within this of the first rating
    exclude_failed: bool = False  # the report leaves out participants who failed a check


@dataclass(frozen=True)
class Study:
    path: Path  # the study file
    title: str
    seed: int
    stimuli: tuple[Stimulus, ...]
    conditions: tuple[Condition, ...]
    criteria: tuple[Criterion, ...]
    attention: Attention
    consent: str  # Markdown shown before the first video
    codes: tuple[str, ...]  # accepted participant codes; empty: any code (or none) starts a session
    output: Path  # videos/, ratings.sqlite, report/

    @property
    def num_trials(self) -> int:
        """Trials per participant: every (stimulus, condition) pair once, plus the attention repeats."""
        return len(self.stimuli) * len(self.conditions) + self.attention.repeats

    def source_video(self, stimulus: Stimulus, condition: Condition) -> Path:
        """The uploaded video to show for (stimulus, condition); only for uploaded conditions."""
        if condition.id in stimulus.videos:
            return stimulus.videos[condition.id]
        return self.path.parent / condition.video.format(stimulus=stimulus.id)


def find_study_file(path) -> Path:
    """STUDY as given on a command line (a study file, or a folder holding study.toml/.json) -> the file."""
    p = Path(path)
    if p.is_dir():
        for name in STUDY_FILE_NAMES:
            if (p / name).is_file():
                return p / name
        raise StudyError(f"{p} has no {' or '.join(STUDY_FILE_NAMES)}; give the study file itself")
    if not p.is_file():
        raise StudyError(f"study file not found: {p}")
    if p.suffix.lower() not in (".toml", ".json"):
        raise StudyError(f"{p.name}: a study file must end in .toml or .json")
    return p


def read_raw(path: Path) -> dict:
    """Parse JSON or TOML into a dict; syntax errors become a `StudyError` with the position."""
    text = path.read_text(encoding="utf-8")
    try:
        raw = tomllib.loads(text) if path.suffix.lower() == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as e:
        raise StudyError(f"{path.name} is not valid {path.suffix[1:].upper()}: {e}") from None
    if not isinstance(raw, dict):
        raise StudyError(f"{path.name}: the top level must be a table/object with 'stimuli' and 'conditions'")
    return raw


def load_study(path) -> Study:
    """Read and check a study file (or a folder with study.toml/study.json). Raises `StudyError`."""
    file = find_study_file(path)
    raw, problems = read_raw(file), []
    known = {"title", "seed", "checkpoint", "consent", "codes", "output", "stimuli", "conditions",
             "criteria", "attention"}
    problems += [f"unknown key {k!r} (known: {', '.join(sorted(known))})" for k in raw if k not in known]
    base = file.parent
    checkpoint = _path(raw.get("checkpoint"), base, "checkpoint", problems)
    conditions = _conditions(raw.get("conditions"), base, checkpoint, problems)
    stimuli = _stimuli(raw.get("stimuli"), base, conditions, problems)
    criteria = _criteria(raw.get("criteria"), problems)
    attention = _attention(raw.get("attention"), conditions, len(stimuli), problems)
    codes = _list_of_ids(raw.get("codes", []), "codes", problems)
    seed = raw.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool):
        problems.append(f"seed must be an integer (got {seed!r})")
    for key in ("title", "consent", "output"):
        if key in raw and not isinstance(raw[key], str):
            problems.append(f"{key} must be a string")
    if problems:
        listed = "\n".join(f"  - {p}" for p in problems)
        raise StudyError(f"{file.name} has {len(problems)} problem{'s' * (len(problems) > 1)}:\n{listed}")
    return Study(path=file, title=str(raw.get("title", file.stem)), seed=seed, stimuli=tuple(stimuli),
                 conditions=tuple(conditions), criteria=tuple(criteria), attention=attention,
                 consent=str(raw.get("consent", DEFAULT_CONSENT)), codes=tuple(codes),
                 output=(base / str(raw.get("output", "."))).resolve())


def _path(value, base: Path, what: str, problems: list) -> Path | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        problems.append(f"{what} must be a path string")
        return None
    return base / value


def _table_list(value, what: str, problems: list) -> list[dict]:
    if not isinstance(value, list) or not value:
        problems.append(f"'{what}' must be a non-empty list of tables ([[{what}]] in TOML)")
        return []
    if not all(isinstance(v, dict) for v in value):
        problems.append(f"every entry of '{what}' must be a table/object")
        return []
    return value


def _check_id(entry: dict, what: str, seen: set, problems: list) -> str:
    key = entry.get("id")
    if not isinstance(key, str) or not ID.match(key):
        problems.append(f"{what} id {key!r} must be 1-64 letters, digits, '_', '-' or '.'")
    elif key in seen:
        problems.append(f"{what} id {key!r} appears twice")
    seen.add(key)
    return str(key)


def _conditions(value, base: Path, checkpoint: Path | None, problems: list) -> list[Condition]:
    out, seen = [], set()
    for entry in _table_list(value, "conditions", problems):
        cid = _check_id(entry, "condition", seen, problems)
        extra = set(entry) - {"id", "label", "settings", "video", "checkpoint"}
        if extra:
            problems.append(f"condition {cid!r}: unknown key(s) {', '.join(sorted(extra))}")
        settings, video = entry.get("settings", {}), entry.get("video")
        if not isinstance(settings, dict) or not all(
                isinstance(v, (int, float, str, bool)) for v in settings.values()):
            problems.append(f"condition {cid!r}: settings must be a table of numbers, strings or booleans")
            settings = {}
        if video is not None and (not isinstance(video, str) or settings):
            problems.append(f"condition {cid!r}: 'video' is a path pattern like \"gt/{{stimulus}}.mp4\" "
                            "and cannot be combined with 'settings'")
        own = _path(entry.get("checkpoint"), base, f"condition {cid!r}: checkpoint", problems)
        out.append(Condition(id=cid, label=str(entry.get("label", cid)), settings=dict(settings),
                             video=video, checkpoint=own or checkpoint))
    return out


def _stimuli(value, base: Path, conditions: list[Condition], problems: list) -> list[Stimulus]:
    out, seen = [], set()
    renders = any(not c.uploaded for c in conditions)
    uploaded = {c.id for c in conditions if c.uploaded}
    for entry in _table_list(value, "stimuli", problems):
        sid = _check_id(entry, "stimulus", seen, problems)
        extra = set(entry) - {"id", "image", "audio", "videos"}
        if extra:
            problems.append(f"stimulus {sid!r}: unknown key(s) {', '.join(sorted(extra))}")
        image = _path(entry.get("image"), base, f"stimulus {sid!r}: image", problems)
        audio = _path(entry.get("audio"), base, f"stimulus {sid!r}: audio", problems)
        if renders and (image is None or audio is None):
            problems.append(f"stimulus {sid!r} needs 'image' and 'audio' (some conditions are rendered)")
        videos = entry.get("videos", {})
        if not isinstance(videos, dict) or not set(videos) <= uploaded:
            problems.append(f"stimulus {sid!r}: 'videos' maps uploaded condition ids ({sorted(uploaded)}) to files")
            videos = {}
        videos = {k: _path(v, base, f"stimulus {sid!r}: videos.{k}", problems) for k, v in videos.items()}
        for c in conditions:
            if c.uploaded and c.video == "" and c.id not in videos:
                problems.append(f"stimulus {sid!r} has no video for condition {c.id!r}")
        out.append(Stimulus(id=sid, image=image, audio=audio, videos=videos))
    return out


def _criteria(value, problems: list) -> list[Criterion]:
    if value is None:
        return list(READ_CRITERIA)
    out, seen = [], set()
    for entry in _table_list(value, "criteria", problems):
        cid = _check_id(entry, "criterion", seen, problems)
        question = entry.get("question")
        if not isinstance(question, str) or not question.strip():
            problems.append(f"criterion {cid!r} needs a 'question' (the wording participants read)")
        out.append(Criterion(id=cid, name=str(entry.get("name", cid)), question=str(question)))
    if len(out) > MAX_CRITERIA:
        problems.append(f"at most {MAX_CRITERIA} criteria (got {len(out)})")
    return out


def _attention(value, conditions: list[Condition], num_stimuli: int, problems: list) -> Attention:
    if value is None:
        return Attention()
    if not isinstance(value, dict) or set(value) - {"repeats", "condition", "tolerance", "exclude_failed"}:
        problems.append("attention must be a table with repeats, condition, tolerance, exclude_failed")
        return Attention()
    att = Attention(**value)
    pool = num_stimuli * (1 if att.condition else max(len(conditions), 1))
    if not isinstance(att.repeats, int) or not 0 <= att.repeats <= pool:
        problems.append(f"attention.repeats must be an integer from 0 to {pool} (the trials it can repeat)")
    if att.condition is not None and att.condition not in {c.id for c in conditions}:
        problems.append(f"attention.condition {att.condition!r} is not a condition id")
    if not isinstance(att.tolerance, int) or not 0 <= att.tolerance <= SCALE[1] - SCALE[0]:
        problems.append("attention.tolerance must be an integer from 0 to 4")
    if not isinstance(att.exclude_failed, bool):
        problems.append("attention.exclude_failed must be true or false")
    return att


def _list_of_ids(value, what: str, problems: list) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and ID.match(v) for v in value):
        problems.append(f"{what} must be a list of ids (letters, digits, '_', '-', '.')")
        return []
    if len(set(value)) != len(value):
        problems.append(f"{what} has duplicates")
    return list(value)
