"""User-study mode, plain-Python core: study files, balanced assignment, rendering, storage, report.

The Gradio endpoints and the browser are tested in test_study_app.py and test_study_browser.py;
the helpers here (`make_study`, `FakePipeline`, `ready_study`) are shared with them.
"""
from __future__ import annotations

import itertools
import json
import statistics
import subprocess
import sys
import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from pipeline.study import StudyError, load_study
from pipeline.study.design import participant_trials, williams_rows
from pipeline.study.render import VIDEO_DIR, render, video_table
from pipeline.study.report import agreement, attention_results, table, write_report
from pipeline.study.service import AccessDenied, StudyService
from pipeline.study.stats import krippendorff_alpha, summarize
from pipeline.study.store import Store

TOML = """
title = "Test study"
seed = 3
{extra}

[[stimuli]]
id = "s1"
image = "in/face_1.png"
audio = "in/speech_1.wav"

[[stimuli]]
id = "s2"
image = "in/face_2.png"
audio = "in/speech_2.wav"

[[conditions]]
id = "read_fast"
label = "READ 2 steps"
settings = {{ num_inference_steps = 2, cfg_mode = "joint", alpha = 1.5 }}

[[conditions]]
id = "read_slow"
label = "READ 8 steps"
settings = {{ num_inference_steps = 8, cfg_mode = "split", alpha = 2.0, beta = 6.0 }}
{conditions}
"""
UPLOADED = """
[[conditions]]
id = "ground_truth"
label = "Ground truth"
video = "gt/{stimulus}.mp4"
"""


@dataclass
class FakeOutput:
    frames: np.ndarray
    audio: np.ndarray
    sample_rate: int = 16_000
    fps: int = 25


class FakePipeline:
    """`TalkingHeadPipeline.__call__`-shaped: a 1-s solid clip whose colour encodes the settings."""

    def __init__(self):
        self.calls = []

    def __call__(self, image, audio, **kwargs):
        self.calls.append(kwargs)
        shade = 40 * int(kwargs.get("num_inference_steps", 1)) % 256
        return FakeOutput(np.full((25, 32, 32, 3), shade, np.uint8), np.zeros(16_000, np.float32))


def make_study(folder: Path, *, uploaded=False, extra="", suffix=".toml") -> Path:
    """A study folder with two portraits, two 1-s speech files, the study file; returns the file."""
    import cv2

    from pipeline import media

    (folder / "in").mkdir(parents=True, exist_ok=True)
    for k in (1, 2):
        cv2.imwrite(str(folder / "in" / f"face_{k}.png"), np.full((48, 40, 3), 60 * k, np.uint8))
        media.write_wav(folder / "in" / f"speech_{k}.wav", 0.1 * np.sin(np.arange(16_000) / (5.0 * k)))
    if uploaded:
        (folder / "gt").mkdir(exist_ok=True)
        for k in (1, 2):  # another system's output, with a title that names it
            media.write_mp4(folder / "gt" / "raw.mp4", np.full((25, 30, 34, 3), 200, np.uint8),
                            np.zeros(16_000, np.float32))
            subprocess.run([_ffmpeg(), "-y", "-loglevel", "error", "-i", str(folder / "gt" / "raw.mp4"), "-c",
                            "copy", "-metadata", "title=baseline_system", str(folder / "gt" / f"s{k}.mp4")],
                           check=True)
    text = TOML.format(extra=extra, conditions=UPLOADED if uploaded else "")
    path = folder / f"study{suffix}"
    if suffix == ".json":
        import tomllib

        path.write_text(json.dumps(tomllib.loads(text)))
    else:
        path.write_text(text)
    return path


def _ffmpeg() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def ready_study(folder: Path, **kwargs) -> Path:
    """`make_study` + rendered with `FakePipeline`."""
    path = make_study(folder, **kwargs)
    render(load_study(path), pipeline_factory=lambda checkpoint: FakePipeline(), progress=False)
    return path


# ---------------------------------------------------------------- study files
def test_toml_and_json_study_files_read_the_same(tmp_path):
    a = load_study(make_study(tmp_path / "a", uploaded=True))
    b = load_study(make_study(tmp_path / "b", uploaded=True, suffix=".json"))
    assert [c.id for c in a.conditions] == [c.id for c in b.conditions] == ["read_fast", "read_slow", "ground_truth"]
    assert a.conditions[1].settings == b.conditions[1].settings == dict(num_inference_steps=8, cfg_mode="split",
                                                                         alpha=2.0, beta=6.0)
    assert [c.name for c in a.criteria] == ["Lip-Sync", "Realness", "Smooth", "V-Qual"]  # READ's Table 4
    assert a.num_trials == 6 and a.conditions[2].uploaded and a.output == (tmp_path / "a").resolve()
    assert load_study(tmp_path / "a").path.name == "study.toml"  # a folder works too


def test_the_documented_example_study_file_reads(tmp_path):
    text = Path("docs/STUDY.md").read_text().split("```toml\n")[1].split("```")[0]
    (tmp_path / "studies" / "pilot").mkdir(parents=True)
    (tmp_path / "studies" / "pilot" / "study.toml").write_text(text)
    study = load_study(tmp_path / "studies" / "pilot")
    assert study.num_trials == 3 * 2 + 2 and study.output == (tmp_path / "runs" / "pilot").resolve()
    assert study.conditions[1].checkpoint.resolve() == (tmp_path / "assets" / "model").resolve()


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.replace('id = "s2"', 'id = "s1"'), "stimulus id 's1' appears twice"),
    (lambda t: t.replace("[[conditions]]", "[[condition]]", 1), "unknown key 'condition'"),
    (lambda t: t + "\n[[criteria]]\nid = \"lip\"\n", "criterion 'lip' needs a 'question'"),
    (lambda t: t + "\n[attention]\nrepeats = 9\n", "attention.repeats must be an integer from 0 to 4"),
    (lambda t: t.replace('alpha = 1.5 }', 'alpha = [1] }'), "settings must be a table of numbers"),
    (lambda t: t.replace("seed = 3", "seed = 3 3"), "is not valid TOML"),
    (lambda t: t.replace('image = "in/face_1.png"\n', ""), "stimulus 's1' needs 'image' and 'audio'"),
])
def test_bad_study_files_give_one_clear_message(tmp_path, edit, message):
    path = make_study(tmp_path)
    path.write_text(edit(path.read_text()))
    with pytest.raises(StudyError, match=message.replace("(", r"\(").replace("[", r"\[")):
        load_study(path)


def test_cli_says_what_is_wrong_and_exits_2(tmp_path):
    path = make_study(tmp_path)
    path.write_text(path.read_text().replace('id = "s2"', 'id = "s 2"'))
    for command in ("check", "render", "report"):
        proc = subprocess.run([sys.executable, "-m", "pipeline.study", command, str(path)], capture_output=True,
                              text=True)
        assert proc.returncode == 2, proc.stderr
        assert "stimulus id 's 2' must be 1-64 letters" in proc.stderr and "Traceback" not in proc.stderr


# ---------------------------------------------------------------- balanced assignment
@pytest.mark.parametrize("k", [2, 3, 4, 5])
def test_williams_rows_balance_positions_and_neighbours(k):
    rows = williams_rows(k)
    assert all(sorted(r) == list(range(k)) for r in rows)
    for column in zip(*rows):  # every condition equally often at every place
        assert set(Counter(column).values()) == {len(rows) // k}
    pairs = Counter(p for r in rows for p in zip(r, r[1:]))  # every ordered pair of neighbours equally often
    assert len(pairs) == k * (k - 1) and len(set(pairs.values())) == 1


@pytest.mark.parametrize("conditions", [2, 3])
def test_assignment_is_balanced_complete_and_seeded(tmp_path, conditions):
    study = load_study(make_study(tmp_path, uploaded=conditions == 3))
    rows = len(williams_rows(conditions))
    people = [participant_trials(study, p) for p in range(2 * rows)]
    for trials in people:  # each participant: every pair exactly once, each block has every condition
        assert sorted((t.stimulus, t.condition) for t in trials) == sorted(
            itertools.product([s.id for s in study.stimuli], [c.id for c in study.conditions]))
        blocks = [trials[i:i + conditions] for i in range(0, len(trials), conditions)]
        assert all(len({t.condition for t in b}) == conditions for b in blocks)
    for position in range(study.num_trials):  # each condition equally often at each position
        counts = Counter(trials[position].condition for trials in people)
        assert set(counts.values()) == {2 * rows // conditions}, (position, counts)
    assert participant_trials(study, 1) == people[1]  # seeded: the same again
    assert len({tuple(t.stimulus for t in tr) for tr in people}) > 1  # stimulus orders differ


def test_attention_repeats_come_after_their_original(tmp_path):
    study = load_study(make_study(tmp_path, uploaded=True,
                                  extra='[attention]\nrepeats = 2\ncondition = "ground_truth"'))
    for p in range(6):
        trials = participant_trials(study, p)
        repeats = [t for t in trials if t.repeat_of is not None]
        assert len(trials) == 8 and len(repeats) == 2
        for t in repeats:
            first = trials[t.repeat_of]
            assert (first.stimulus, first.condition) == (t.stimulus, t.condition) and first.repeat_of is None
            assert t.condition == "ground_truth" and t.position > first.position


# ---------------------------------------------------------------- rendering
def test_render_is_resumable_and_file_names_hide_the_condition(tmp_path):
    study = load_study(make_study(tmp_path, uploaded=True))
    fake = FakePipeline()
    with pytest.raises(StudyError, match="not rendered yet"):
        video_table(study)
    first = render(study, pipeline_factory=lambda checkpoint: fake, progress=False)
    assert first["rendered"] == 6 and len(fake.calls) == 4  # 2 stimuli x 2 rendered conditions
    assert fake.calls[0] == dict(seed=3, num_inference_steps=2, cfg_mode="joint", alpha=1.5)
    again = render(study, pipeline_factory=lambda checkpoint: fake, progress=False)
    assert again["rendered"] == 0 and again["skipped"] == 6 and len(fake.calls) == 4
    files = sorted((tmp_path / VIDEO_DIR).iterdir())
    assert len(files) == 6 and all(len(f.stem) == 20 and set(f.stem) <= set("0123456789abcdef") for f in files)
    for f in files:
        assert not any(c.id in f.name or c.label in f.name for c in study.conditions)
    gt = video_table(study)["s1", "ground_truth"]
    probe = subprocess.run([_ffmpeg(), "-hide_banner", "-i", str(gt)], capture_output=True, text=True).stderr
    assert "h264" in probe and "aac" in probe and "baseline_system" not in probe  # re-encoded, title gone
    assert "32x30" in probe or "34x30" in probe


def test_a_bad_setting_or_missing_upload_is_named(tmp_path):
    study = load_study(make_study(tmp_path, uploaded=True))
    (tmp_path / "gt" / "s2.mp4").unlink()
    with pytest.raises(StudyError, match="stimulus 's2', condition 'ground_truth': uploaded video not found"):
        render(study, pipeline_factory=lambda checkpoint: FakePipeline(), progress=False)


def test_render_with_the_tiny_pipeline(tmp_path, small_pipe):
    """One real render: the tests' tiny random pipeline (conftest), 1 s of speech, 1 step."""
    from pipeline import media

    make_study(tmp_path)
    path = tmp_path / "one.toml"
    path.write_text('[[stimuli]]\nid = "s1"\nimage = "in/face_1.png"\naudio = "in/speech_1.wav"\n'
                    '[[conditions]]\nid = "read"\nsettings = { num_inference_steps = 1, cfg_mode = "joint" }\n')
    study = load_study(path)
    assert render(study, pipeline_factory=lambda checkpoint: small_pipe, progress=False)["rendered"] == 1
    info = media.probe(video_table(study)["s1", "read"])
    assert info["video"] == "h264" and info["audio"] == "aac" and info["frames"] >= 20


# ---------------------------------------------------------------- storage and the participant flow
def test_ten_threads_at_once_store_each_rating_exactly_once(tmp_path):
    store = Store(tmp_path / "r.sqlite")
    study = load_study(make_study(tmp_path))
    people = [store.enrol(f"p{k}", lambda o: participant_trials(study, o)) for k in range(10)]
    gate = threading.Barrier(10)
    outcomes = Counter()

    def participant(p):
        gate.wait(timeout=30)
        for position in range(study.num_trials):
            for _ in range(2):  # every trial submitted twice, as a double click would
                outcomes[store.rate(p.id, position, {"lip_sync": 1 + position % 5, "smooth": 3})] += 1

    threads = [threading.Thread(target=participant, args=(p,)) for p in people]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert outcomes == {"stored": 40, "already rated": 40}
    rows = store.ratings()
    assert len(rows) == 80 and len({(r["participant"], r["position"], r["criterion"]) for r in rows}) == 80


def test_service_flow_resume_double_rating_and_isolation(tmp_path):
    service = StudyService(ready_study(tmp_path), token="s3cret-token")
    a, b = service.start("alice"), service.start("bob")
    assert a.number == b.number == 1 and a.total == 4 and a.session != b.session
    assert Path(a.video).is_file() and Path(a.video).parent.name == VIDEO_DIR
    a2 = service.rate(a.session, 1, [5, 4, 3, 2])
    assert a2.number == 2
    again = service.rate(a.session, 1, [1, 1, 1, 1])  # the same trial again: first answer kept
    assert again.number == 2 and "already rated" in again.message
    skip = service.rate(a.session, 4, [1, 1, 1, 1])  # a later trial: refused, nothing stored
    assert skip.number == 2 and "not your next" in skip.message
    assert service.start("alice").session == a.session and service.resume(a.session).number == 2
    assert service.resume(b.session).number == 1  # bob untouched
    assert service.resume("forged") is None
    with pytest.raises(AccessDenied):
        service.rate("forged-session", 1, [3, 3, 3, 3])
    for bad in ([3, 3, 3], [3, 3, 3, None], [3, 3, 3, 6], [3, 3, 3, 2.5]):
        with pytest.raises(StudyError):
            service.rate(b.session, 1, bad)
    rows = service.store.ratings()
    assert [(r["participant"], r["criterion"], r["score"]) for r in rows] == [
        ("alice", "lip_sync", 5), ("alice", "realness", 4), ("alice", "smooth", 3), ("alice", "v_qual", 2)]
    with pytest.raises(AccessDenied):
        service.admin(None)
    with pytest.raises(AccessDenied):
        service.admin("s3cret-tokeN")
    assert "alice | 1 / 4" in service.admin("s3cret-token")


def test_codes_list_limits_who_can_start(tmp_path):
    service = StudyService(ready_study(tmp_path, extra='codes = ["p01", "p02"]'))
    assert service.start("p02").number == 1
    for code in ("p03", "", "../p01"):
        with pytest.raises(StudyError, match="code"):
            service.start(code)


# ---------------------------------------------------------------- report
def test_summary_and_krippendorff_alpha_known_values():
    s = summarize([1, 2, 3, 4, 5])
    assert (s.mean, round(s.std, 4), s.n) == (3.0, 1.5811, 5)
    assert round(s.ci_high - s.mean, 4) == round(2.7764 * 1.5811 / 5 ** 0.5, 4)  # t(0.975, 4) = 2.7764
    # Krippendorff (2011), "Computing Krippendorff's alpha-reliability": 4 coders x 12 units
    coders = ["1 2 3 3 2 1 4 1 2 . . .", "1 2 3 3 2 2 4 1 2 5 . 3", ". 3 3 3 2 3 4 2 2 5 1 .",
              "1 2 3 3 2 4 4 1 2 5 1 ."]
    values = [row.split() for row in coders]
    units = {u: [int(v[u]) for v in values if v[u] != "."] for u in range(12)}
    assert round(krippendorff_alpha(units, "interval"), 3) == 0.849
    assert round(krippendorff_alpha(units, "nominal"), 3) == 0.743


def test_report_tables_attention_and_files(tmp_path):
    service = StudyService(ready_study(tmp_path, uploaded=True, extra="[attention]\nrepeats = 1\nexclude_failed = true"))
    given = {}  # (code, position) -> scores
    for k, code in enumerate(("p1", "p2", "p3")):
        trials, view = participant_trials(service.study, k), service.start(code)
        while view.number:
            t = trials[view.number - 1]
            if t.repeat_of is None:
                scores = [(k + t.position + j) % 5 + 1 for j in range(4)]
            else:  # p1 and p2 give their first answer again; p3 the opposite
                first = given[code, t.repeat_of]
                scores = first if code != "p3" else [5 if s <= 2 else 1 for s in first]
            given[code, t.position] = scores
            view = service.rate(view.session, view.number, scores)
    ratings = service.store.ratings()
    assert attention_results(service.study, ratings) == {"p1": (1, 1), "p2": (1, 1), "p3": (1, 0)}
    stats = table(service.study, ratings)  # p3 failed: left out; repeats never count
    for cond in service.study.conditions:
        for j, crit in enumerate(service.study.criteria):
            hand = [given[code, t.position][j] for k, code in enumerate(("p1", "p2"))
                    for t in participant_trials(service.study, k) if t.repeat_of is None and t.condition == cond.id]
            got = stats[cond.id, crit.id]
            assert got.n == len(hand) == 4 and got.mean == pytest.approx(statistics.mean(hand))
            assert got.std == pytest.approx(statistics.stdev(hand))
    assert set(agreement(service.study, ratings)) == {"lip_sync", "realness", "smooth", "v_qual"}
    files = write_report(service.study, ratings)
    assert files["plot"].read_bytes()[:4] == b"\x89PNG"
    assert "| READ 8 steps |" in files["report"].read_text() and "| p3 | 1 | 0 |" in files["report"].read_text()
    assert len(files["ratings"].read_text().splitlines()) == 1 + 3 * 7 * 4  # every stored rating, repeats too
    assert len(files["table"].read_text().splitlines()) == 1 + 3 * 4


def test_codes_command_prints_a_codes_line_the_study_accepts(tmp_path, capsys):
    from pipeline.study.__main__ import main

    path = make_study(tmp_path)
    assert main(["codes", str(path), "-n", "3", "--url", "http://host:7860/"]) == 0
    line, *links = capsys.readouterr().out.splitlines()
    path.write_text(line + "\n" + path.read_text())
    study = load_study(path)
    assert len(study.codes) == 3 and links == [f"http://host:7860/?code={c}" for c in study.codes]
