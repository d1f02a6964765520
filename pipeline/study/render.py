"""`python -m pipeline.study render STUDY`: every (stimulus, condition) video once, into <output>/videos/.

File names are salted hashes (`videos/3f9c….mp4`): they carry no hint of the condition, and the
salt (`<output>/.salt`, random, made on first render) keeps anyone from recomputing them from the
condition names. The hash covers the condition's settings and sources, so editing a condition
renders it anew. Rendering is resumable: a finished file is never redone, and each file appears
only once complete (written to a temporary name, then renamed). Uploaded videos (other systems,
ground truth) are re-encoded the same way as renders: H.264 + AAC, no metadata (a file's title
or encoder tag could name the system).
"""
from __future__ import annotations

import hashlib
import json
import os
import secrets
import subprocess
import tempfile
from pathlib import Path
from typing import Callable

from ..errors import InputError
from .spec import Condition, Stimulus, Study, StudyError

VIDEO_DIR = "videos"
SALT_FILE = ".salt"


def study_salt(study: Study, create: bool = False) -> str | None:
    """The study's secret salt; made (and saved) when `create` and missing, else None when missing."""
    path = study.output / SALT_FILE
    if path.is_file():
        return path.read_text().strip()
    if not create:
        return None
    study.output.mkdir(parents=True, exist_ok=True)
    salt = secrets.token_hex(16)
    with open(path, "x") as f:  # "x": two renders started at once cannot both write one
        f.write(salt)
    return salt


def fingerprint(study: Study, stimulus: Stimulus, condition: Condition) -> str:
    """What the video depends on, as canonical JSON (settings, model, source files)."""
    if condition.uploaded:
        what = {"video": str(study.source_video(stimulus, condition))}
    else:
        what = {"image": str(stimulus.image), "audio": str(stimulus.audio), "settings": condition.settings,
                "checkpoint": str(condition.checkpoint), "seed": study.seed}
    return json.dumps(what, sort_keys=True)


def video_path(study: Study, stimulus: Stimulus, condition: Condition, salt: str) -> Path:
    """<output>/videos/<20 hex digits>.mp4 for this pair."""
    key = "\0".join((salt, stimulus.id, condition.id, fingerprint(study, stimulus, condition)))
    return study.output / VIDEO_DIR / f"{hashlib.sha256(key.encode()).hexdigest()[:20]}.mp4"


def video_table(study: Study) -> dict[tuple[str, str], Path]:
    """(stimulus id, condition id) -> video path. Raises `StudyError` when any video is missing."""
    salt = study_salt(study)
    table = {} if salt is None else {(s.id, c.id): video_path(study, s, c, salt)
                                     for s in study.stimuli for c in study.conditions}
    missing = len(study.stimuli) * len(study.conditions) - sum(p.is_file() for p in table.values())
    if missing:
        raise StudyError(f"{missing} of the study's videos are not rendered yet: run "
                         f"`python -m pipeline.study render {study.path.name}` first")
    return table


def render(study: Study, pipeline_factory: Callable | None = None, progress: bool = True) -> dict:
    """Render or re-encode every missing video. Returns {"rendered": n, "skipped": n, "folder": path}.

    `pipeline_factory(checkpoint: Path | None)` makes a pipeline (default: `from_pretrained`,
    the shipped model when None); each checkpoint is loaded once. Raises `StudyError` on user errors.
    """
    from tqdm.auto import tqdm

    salt = study_salt(study, create=True)
    (study.output / VIDEO_DIR).mkdir(parents=True, exist_ok=True)
    jobs = [(s, c, video_path(study, s, c, salt)) for c in study.conditions for s in study.stimuli]
    todo = [job for job in jobs if not job[2].is_file()]
    pipes: dict = {}
    for s, c, path in tqdm(todo, desc="rendering", unit="video", disable=not progress):
        try:
            if c.uploaded:
                reencode(study.source_video(s, c), path)
            else:
                if c.checkpoint not in pipes:
                    pipes[c.checkpoint] = (pipeline_factory or _pretrained)(c.checkpoint)
                render_one(pipes[c.checkpoint], s, c, path, study.seed)
        except InputError as e:
            raise StudyError(f"stimulus {s.id!r}, condition {c.id!r}: {e}") from None
    return {"rendered": len(todo), "skipped": len(jobs) - len(todo), "folder": study.output / VIDEO_DIR}


def _pretrained(checkpoint: Path | None):
    from ..infer import DEFAULT_CHECKPOINT
    from ..pipeline import TalkingHeadPipeline

    return TalkingHeadPipeline.from_pretrained(checkpoint or DEFAULT_CHECKPOINT)


def render_one(pipe, stimulus: Stimulus, condition: Condition, path: Path, seed: int) -> None:
    """One render condition: `pipe(image, audio, **settings)` -> mp4 at `path` (atomic)."""
    from ..media import write_mp4

    settings = {"seed": seed, **condition.settings}
    try:
        out = pipe(str(stimulus.image), str(stimulus.audio), **settings)
    except TypeError as e:
        if "unexpected keyword" not in str(e):
            raise
        raise StudyError(f"condition {condition.id!r}: a setting is not a pipeline argument ({e})") from None
    write_mp4(path, out.frames, out.audio, out.sample_rate, out.fps)


def reencode(src: Path, dst: Path) -> None:
    """Any video ffmpeg reads -> H.264 (yuv420p, even size) + AAC mp4 without metadata, atomically."""
    import imageio_ffmpeg

    if not Path(src).is_file():
        raise InputError(f"uploaded video not found: {src}")
    fd, tmp = tempfile.mkstemp(suffix=".mp4", dir=dst.parent)
    os.close(fd)
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-i", str(src), "-map", "0:v:0",
           "-map", "0:a:0?", "-map_metadata", "-1", "-map_chapters", "-1", "-c:v", "libx264", "-preset", "veryfast",
           "-crf", "18", "-pix_fmt", "yuv420p", "-vf", "scale=trunc(iw/2)*2:trunc(ih/2)*2", "-c:a", "aac",
           "-b:a", "128k", "-fflags", "+bitexact", "-movflags", "+faststart", "-f", "mp4", tmp]
    proc = subprocess.run(cmd, capture_output=True)
    if proc.returncode != 0:
        Path(tmp).unlink(missing_ok=True)
        raise InputError(f"cannot read {Path(src).name} as a video: {proc.stderr.decode(errors='replace')[-300:]}")
    os.replace(tmp, dst)
