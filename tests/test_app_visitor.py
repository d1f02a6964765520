"""The demo as a visitor meets it: languages, Stop, figures from the click, notes while working,
file names (issue: visitor's flow). Handler-level with a fake pipeline, and through gradio_client."""
import time
from pathlib import Path

import numpy as np
import pytest

import app
from pipeline import app_support as sup
from pipeline import media, serving, speak
from pipeline.config import FPS
from pipeline.errors import InputError
from tests.test_app import ARGS, FakePipeline, client, no_progress, portrait, run, serving_threads, speech  # noqa: F401


@pytest.mark.parametrize("text, voice, language", [
    ("Hello there, nice to meet you.", "en-us+f2", "English"),
    ("你好，很高兴认识你。", "cmn+f2", "Chinese (Mandarin)"),
    ("مرحبا، سعيد بلقائك", "ar+f2", "Arabic"),
    ("こんにちは、漢字も", "ja+f2", "Japanese"),  # kana anywhere: Japanese, not Chinese
    ("Привет, как дела?", "ru+f2", "Russian"),
])
def test_the_voice_follows_the_script(text, voice, language):
    choice = speak.choose_voice(text, "en-us+f2")
    assert (choice.voice, choice.language) == (voice, language)
    assert (choice.note is None) == (language == "English")


def test_emoji_are_not_read_and_unknown_scripts_are_refused_by_name():
    assert speak.choose_voice("Hi 👋🎉 there").text.split() == ["Hi", "there"]
    with pytest.raises(InputError, match="no words"):
        speak.choose_voice("👋🎉🙂")
    with pytest.raises(InputError, match="Khmer"):
        speak.choose_voice("សួស្តី")


def test_chinese_text_is_spoken_in_chinese_and_the_figures_say_lip_sync_is_english(client):  # noqa: F811
    from gradio_client import handle_file

    path, line = client.predict(handle_file(portrait()), app.SOURCE_TEXT, None, "你好，很高兴认识你。",
                                api_name="/generate_video")
    assert media.probe(path)["video"] == "h264"
    assert "Chinese (Mandarin)" in line and "learned from English" in line


def test_two_calls_get_different_file_names_named_after_the_inputs(client):  # noqa: F811
    from gradio_client import handle_file

    names = [Path(client.predict(handle_file(portrait()), app.SOURCE_AUDIO, handle_file(speech(1.0)),
                                 api_name="/generate_video")[0]).name for _ in range(2)]
    assert names[0] != names[1]
    assert all(n.startswith(Path(portrait()).stem + "_speech_1s_") and n.endswith(".mp4") for n in names)


def test_figures_count_from_the_click_and_name_the_queue_wait():
    handlers = app.Handlers(serving.PipelineCache(FakePipeline))
    started = {"clicked_at": time.time() - 2.0, "folder": str(sup.request_dir())}
    kw = {**ARGS}
    out = list(handlers.stream(portrait(), kw.pop("source"), speech(1.0), *kw.values(), started,
                               progress=no_progress))
    line = out[-1][2]
    assert "after your click" in line and "waited 2." in line, line


def test_stop_offers_what_was_made_and_says_so(tmp_path):
    handlers = app.Handlers(serving.PipelineCache(FakePipeline))
    started = {"clicked_at": time.time(), "folder": str(sup.request_dir())}
    kw = {**ARGS}
    gen = handlers.stream(portrait(), kw.pop("source"), speech(5.0), *kw.values(), started, progress=no_progress)
    next(gen), next(gen)  # two chunks shown, then the visitor presses Stop
    gen.close()
    path, status = app.Handlers.stopped(started)
    assert status == "Stopped after chunk 2 of 5."
    assert media.probe(path) == {"video": "h264", "audio": "aac", "frames": 2 * FPS}
    assert app.Handlers.stopped({"folder": str(tmp_path)}) == (None, "Stopped before the first chunk was ready.")


def test_notes_while_the_visitor_works(tmp_path):
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image")
    assert sup.portrait_note(str(junk)).startswith("⚠️ Cannot read junk.png")
    assert sup.portrait_note(portrait()).endswith("✓")
    assert sup.audio_note(str(junk), 30).startswith("⚠️")
    assert sup.audio_note(speech(2.0), 30) == "2.0 s of speech ✓"
    assert "over the 1.5-s limit" in sup.audio_note(speech(2.0), 1.5)
    paragraph = "This is a normal sentence that a visitor might type. " * 11  # ~600 characters
    note = sup.text_note(paragraph, 165, 30)
    assert note.startswith("⚠️") and "limit 30 s" in note
    assert sup.text_note("Hello there.", 165, 30).startswith("≈ 1 s")
    assert "Chinese" in sup.text_note("你好", 165, 30)


def test_examples_do_not_flip_the_speech_source():
    """Only the visitor's own upload or recording switches the source back to audio: an example
    clicked in "Type text" mode fills the portrait (and the hidden audio) and keeps the text."""
    demo = app.build_demo(FakePipeline(), examples_dir=app.EXAMPLES_DIR)
    cfg = demo.get_config_file()
    comps = {c["id"]: c for c in cfg["components"]}
    audio = next(i for i, c in comps.items() if c["props"].get("label") == "Speech audio")
    source = next(i for i, c in comps.items() if c["props"].get("label") == "Speech")
    triggers = {t[1] for d in cfg["dependencies"] if source in d["outputs"] for t in d["targets"] if t[0] == audio}
    assert triggers == {"upload", "stop_recording"}


def test_mode_switch_reaches_the_pipeline_and_rest_streams_through_the_app(small_pipe):
    fake = FakePipeline()
    handlers = app.Handlers(serving.PipelineCache(lambda: fake))
    run(handlers, portrait(), speech(1.0), mode="REST")
    assert fake.calls[-1]["mode"] == "rest"
    real = app.Handlers(serving.PipelineCache(lambda: small_pipe))
    out = run(real, portrait(), speech(2.0), mode="REST", steps=2)
    assert media.probe(out[-1][1]) == {"video": "h264", "audio": "aac", "frames": 2 * FPS}
    assert "steps/s" not in out[-1][2] and "after" in out[-1][2]
