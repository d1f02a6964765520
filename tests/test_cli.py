"""The CLI: a playable mp4 with sound, and user errors as one line + exit code 2, no file left."""
import subprocess
import sys

import pytest

from pipeline.infer import parse_args, run
from pipeline.media import probe, write_wav


@pytest.fixture(scope="module")
def model_dir(small_pipe, tmp_path_factory):
    d = tmp_path_factory.mktemp("model")
    small_pipe.save_pretrained(d)
    return d


@pytest.fixture
def inputs(tmp_path, portrait, speech_wav):
    import cv2

    cv2.imwrite(str(tmp_path / "face.png"), portrait)
    write_wav(tmp_path / "speech.wav", speech_wav)
    return tmp_path / "face.png", tmp_path / "speech.wav"


def test_cli_writes_mp4_and_reports_rtf(model_dir, inputs, tmp_path, capsys):
    out = tmp_path / "out.mp4"
    code = run(parse_args(["--image", str(inputs[0]), "--audio", str(inputs[1]), "--out", str(out),
                           "--checkpoint", str(model_dir), "--steps", "2", "--cfg", "joint"]))
    printed = capsys.readouterr().out
    assert code == 0 and "real-time factor" in printed and str(out) in printed
    info = probe(out)
    assert info["video"] == "h264" and info["audio"] == "aac" and info["frames"] > 25


@pytest.mark.parametrize("extra,words", [
    (["--steps", "0"], "--steps must be a whole number from 1 to 100 (got '0')"),
    (["--steps", "many"], "--steps must be a whole number"),
    (["--alpha", "nan"], "--alpha"),
    (["--threads", "-1"], "--threads must be a whole number from 0"),
    (["--seed", "-5"], "--seed"),
    (["--clip-latent-frames", "1"], "--clip-latent-frames"),
    (["--cfg", "both"], "--cfg must be one of joint, split"),
    (["--mode", "fast"], "--mode must be one of read, rest"),
    (["--audio", "/nonexistent/x.wav"], "not found"),
    (["--image", "/nonexistent/x.png"], "not found"),
])
def test_cli_user_errors_exit_2_without_output(model_dir, inputs, tmp_path, capsys, extra, words):
    out = tmp_path / "out.mp4"
    args = ["--image", str(inputs[0]), "--audio", str(inputs[1]), "--out", str(out), "--checkpoint", str(model_dir)]
    code = run(parse_args(args + extra))
    err = capsys.readouterr().err
    assert code == 2 and words in err and "Traceback" not in err
    assert not out.exists() and not list(tmp_path.glob("*.mp4"))


def test_cli_process_exit_code_and_no_traceback(model_dir, inputs, tmp_path):
    (tmp_path / "zero.wav").write_bytes(b"")
    proc = subprocess.run([sys.executable, "-m", "pipeline.infer", "--image", str(inputs[0]), "--audio",
                           str(tmp_path / "zero.wav"), "--out", str(tmp_path / "o.mp4"), "--checkpoint", str(model_dir)],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "empty" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "o.mp4").exists()


def test_cli_output_folder_refused_before_generating(model_dir, inputs, tmp_path, capsys):
    folder = tmp_path / "videos"
    folder.mkdir()
    code = run(parse_args(["--image", str(inputs[0]), "--audio", str(inputs[1]), "--out", str(folder),
                           "--checkpoint", str(model_dir)]))
    err = capsys.readouterr().err
    assert code == 2 and "is a folder" in err and len(err.strip().splitlines()) == 1
    assert list(tmp_path.rglob("*.mp4")) == [] and list(folder.iterdir()) == []


def test_cli_refuses_over_long_audio_from_its_header(model_dir, inputs, tmp_path, capsys, monkeypatch):
    """Over the model's limit (20 s here): refused before the audio is decoded or the model loaded."""
    import numpy as np

    from pipeline import media, pipeline

    long = tmp_path / "long.wav"
    write_wav(long, np.zeros(16000 * 25, np.float32))
    monkeypatch.setattr(media, "decode_audio", lambda *a, **k: pytest.fail("the audio was decoded"))
    monkeypatch.setattr(pipeline.TalkingHeadPipeline, "from_pretrained", lambda *a, **k: pytest.fail("model loaded"))
    code = run(parse_args(["--image", str(inputs[0]), "--audio", str(long), "--out", str(tmp_path / "o.mp4"),
                           "--checkpoint", str(model_dir)]))
    assert code == 2 and "the limit is 20 s" in capsys.readouterr().err
