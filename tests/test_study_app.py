"""The Study tab through its API (`gradio_client`): whole studies, concurrency, isolation, restarts."""
from __future__ import annotations

import csv
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import gradio as gr
import pytest

from pipeline.study import load_study
from pipeline.study.design import participant_trials
from pipeline.study.report import table
from pipeline.study.service import DB_FILE
from pipeline.study.store import Store
from pipeline.study.ui import build_study_tab

from .test_study import ready_study

from .conftest import free_port, served  # noqa: E402

TOKEN = "test-token-0123456789"


@contextmanager
def serving(study_file: Path, token: str | None = TOKEN, busy: tuple | None = None):
    """The Study tab inside a Blocks of its own (as `app.py --study` nests it), on a free port.

    `busy`: events (started, release) for a "/generate"-like endpoint under the app's default
    concurrency limit of 1, which sets `started` and holds its slot until `release` is set.
    """
    def hold():
        busy[0].set()
        return "done" if busy[1].wait(120) else "timed out"

    with gr.Blocks() as demo:
        gr.Markdown("the demo's other tabs would be here")
        if busy is not None:
            gr.Button(visible=False).click(hold, None, gr.Textbox(), api_name="busy")
        build_study_tab(study_file, token=token)
    demo.queue(default_concurrency_limit=1)  # the app's CPU setting: study calls must not wait on it
    with served(demo) as url:
        yield url


def client(url: str):
    from gradio_client import Client

    return Client(url, verbose=False, download_files=False)


def scores_for(code: str, number: int) -> list[int]:
    """A deterministic, varied answer per participant and trial."""
    k = int(code[1:])
    return [(3 * k + 2 * number + j) % 5 + 1 for j in range(4)]


def run_participant(c, code: str, stop_after: int | None = None) -> dict:
    """Start (or resume) `code` and rate trials through the API until done or `stop_after` ratings.

    Returns {"session", "given": {trial number: scores}, "number": next trial (0: done), "message"}.
    """
    given = {}
    session, number, video, message = c.predict(code, api_name="/study_start")
    while number and (stop_after is None or len(given) < stop_after):
        assert video and message.startswith(f"### Video {int(number)} of")
        given[int(number)] = scores_for(code, int(number))
        session, number, video, message = c.predict(session, number, *given[int(number)], api_name="/study_rate")
    return {"session": session, "given": given, "number": number, "message": message}


def hand_means(study, codes) -> dict:
    """Hand-computed (condition, criterion) -> mean, from the same answers the clients submitted."""
    values = {}
    for k, code in enumerate(codes):
        for t in participant_trials(study, k):
            for j, crit in enumerate(study.criteria):
                values.setdefault((t.condition, crit.id), []).append(scores_for(code, t.position + 1)[j])
    return {key: statistics.mean(v) for key, v in values.items()}


def test_three_participants_and_the_report_means(tmp_path):
    path = ready_study(tmp_path)
    with serving(path) as url:
        for code in ("p1", "p2", "p3"):  # one after the other: ordinals 0, 1, 2
            done = run_participant(client(url), code)
            assert done["number"] == 0 and "Thank you" in done["message"] and len(done["given"]) == 4
    study = load_study(path)
    stats = table(study, Store(study.output / DB_FILE).ratings())
    expect = hand_means(study, ("p1", "p2", "p3"))
    assert {k: s.mean for k, s in stats.items()} == pytest.approx(expect)
    assert all(s.n == 6 for s in stats.values())  # 3 participants x 2 stimuli per pair
    proc = subprocess.run([sys.executable, "-m", "pipeline.study", "report", str(path)], capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr
    with open(study.output / "report" / "table.csv") as f:  # the report's own numbers
        written = {(r["condition"], r["criterion"]): float(r["mean"]) for r in csv.DictReader(f)}
    assert written == pytest.approx(expect) and len(written) == 8
    assert f"{expect['read_fast', 'lip_sync']:.2f} ± " in proc.stdout  # the Markdown table printed


def test_ten_participants_at_once_each_rating_stored_once(tmp_path):
    path = ready_study(tmp_path)
    errors, results = [], {}
    with serving(path) as url:
        clients = [client(url) for _ in range(10)]
        gate = threading.Barrier(10)

        def participant(k):
            try:
                gate.wait(timeout=60)
                results[k] = run_participant(clients[k], f"p{k}")
            except Exception as e:  # noqa: BLE001  (reported below with the participant)
                errors.append((k, repr(e)))

        threads = [threading.Thread(target=participant, args=(k,)) for k in range(10)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=240)
    assert not errors and len(results) == 10
    rows = Store(tmp_path / DB_FILE).ratings()
    assert len(rows) == 10 * 4 * 4
    assert len({(r["participant"], r["position"], r["criterion"]) for r in rows}) == 160
    for r in rows:
        assert r["score"] == scores_for(r["participant"], r["position"] + 1)[["lip_sync", "realness", "smooth",
                                                                               "v_qual"].index(r["criterion"])]
        assert r["client"] == "api"


def test_study_calls_never_wait_behind_a_generation(tmp_path):
    started, release = threading.Event(), threading.Event()
    with serving(ready_study(tmp_path), busy=(started, release)) as url:
        job = client(url).submit(api_name="/busy")
        try:
            assert started.wait(60), "the busy job never started"  # it holds the only default slot now
            done = run_participant(client(url), "p1")  # a whole session meanwhile
            assert done["number"] == 0 and not job.done()
        finally:
            release.set()
        assert job.result(timeout=60) == "done"


def test_sessions_are_isolated_and_the_admin_view_needs_the_token(tmp_path):
    from gradio_client.exceptions import AppError

    path = ready_study(tmp_path)
    with serving(path) as url:
        c = client(url)
        a = run_participant(c, "p1", stop_after=1)
        b_session, b_number, b_video, _ = c.predict("p2", api_name="/study_start")
        assert a["session"] != b_session and a["number"] == 2 and b_number == 1
        assert urllib.request.urlopen(b_video["url"]).status == 200 and str(tmp_path) not in b_video["url"]
        for forged in ("", "not-a-session", a["session"][:-1]):
            with pytest.raises(AppError, match="Unknown session"):
                c.predict(forged, 1, 3, 3, 3, 3, api_name="/study_rate")
        # a's session id moves only a's own sequence: b's first trial is still unrated
        c.predict(a["session"], 1, 1, 1, 1, 1, api_name="/study_rate")
        assert Store(tmp_path / DB_FILE).progress() == [("p1", 1, 4), ("p2", 0, 4)]
        for token in ("", "wrong", TOKEN.upper()):
            with pytest.raises(AppError, match="Wrong or missing token"):
                c.predict(token, api_name="/study_admin")
        report = c.predict(TOKEN, api_name="/study_admin")
        assert "| p1 | 1 / 4 |" in report and "Lip-Sync" in report
        # nothing in the study folder is reachable over HTTP (videos are served as copies elsewhere)
        video = next((tmp_path / "videos").iterdir())
        for secret in (tmp_path / DB_FILE, tmp_path / ".salt", path, video):
            with pytest.raises(urllib.error.HTTPError, match="403"):
                urllib.request.urlopen(f"{url}gradio_api/file={secret}")
    with serving(path, token=None) as url:  # no token configured: no admin view at all
        with pytest.raises(AppError, match="results view is off"):
            client(url).predict("", api_name="/study_admin")


@pytest.mark.slow
def test_server_killed_half_way_loses_nothing(tmp_path):
    """`python -m pipeline.study serve` killed (SIGKILL) mid-study, restarted: every participant continues."""
    path = ready_study(tmp_path)
    env = {**os.environ, "READ_STUDY_TOKEN": TOKEN}
    first = {}
    with study_server(path, env) as url:
        for code in ("p1", "p2", "p3"):
            first[code] = run_participant(client(url), code, stop_after=2)
    with study_server(path, env) as url:
        c = client(url)
        for code in ("p1", "p2", "p3"):
            session, number, _, _ = c.predict(code, api_name="/study_start")  # resume by code
            assert session == first[code]["session"] and number == 3
            session, number, _, _ = c.predict(session, 3, *scores_for(code, 3), api_name="/study_rate")
            session, number, _, _ = c.predict(session, 4, *scores_for(code, 4), api_name="/study_rate")
            assert number == 0
    study = load_study(path)
    stats = table(study, Store(study.output / DB_FILE).ratings())
    assert {k: s.mean for k, s in stats.items()} == pytest.approx(hand_means(study, ("p1", "p2", "p3")))


@contextmanager
def study_server(path: Path, env: dict, timeout: float = 120.0):
    """A `serve` subprocess; yields its URL once it answers; killed with SIGKILL (no clean shutdown)."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.study", "serve", str(path), "--port", str(port)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    url, deadline = f"http://127.0.0.1:{port}/", time.monotonic() + timeout
    try:
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"serve exited with {proc.returncode}: {proc.stderr.read().decode()[-2000:]}")
            try:
                urllib.request.urlopen(url + "config", timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError(f"serve did not answer within {timeout:.0f} s") from None
                time.sleep(0.2)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def test_the_browser_keeps_the_session_under_a_key_that_survives_restarts(tmp_path):
    """The saved session id is encrypted with a key from the study's salt, not gradio's per-process one."""
    def browser_state(path):
        with gr.Blocks() as demo:
            build_study_tab(path, token=TOKEN)
        (state,) = [b for b in demo.blocks.values() if isinstance(b, gr.BrowserState)]
        return state.storage_key, state.secret

    a = ready_study(tmp_path / "a")
    assert browser_state(a) == browser_state(a)  # a second server process on the same study: same key
    assert browser_state(ready_study(tmp_path / "b"))[1] != browser_state(a)[1]  # another study: another key


def test_app_has_a_study_tab_only_with_a_study(tmp_path):
    import app

    def api_names(demo):
        return {d.api_name for d in demo.fns.values() if d.api_name}

    never = lambda: pytest.fail("building the UI must not load a model")  # noqa: E731
    plain = app.build_demo(never, examples_dir=tmp_path)
    assert not {"study_start", "study_rate", "study_admin"} & api_names(plain)
    with_study = app.build_demo(never, examples_dir=tmp_path, study=ready_study(tmp_path / "s"), study_token=TOKEN)
    assert {"generate", "study_start", "study_rate", "study_admin"} <= api_names(with_study)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "study.toml").write_text("[[stimuli]]\nid = 's1'\n")
    proc = subprocess.run([sys.executable, "app.py", "--study", str(bad), "--no-warmup"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and "study.toml has" in proc.stderr and "Traceback" not in proc.stderr
