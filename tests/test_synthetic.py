"""Synthetic talking-face data: determinism, shapes, mouth ground truth and rendering invariants."""

import json

import numpy as np
import pytest

from pipeline.data import faces, synthetic, visemes
from pipeline.data.tts import Phoneme

SECONDS, SIZE = 3.0, 64  # small and short: the whole file runs in a few seconds


@pytest.fixture(scope="module")
def clip():
    return synthetic.render_clip(11, SECONDS, SIZE)


def test_shapes_and_lengths(clip):
    T = round(SECONDS * 25)
    assert clip.frames.shape == (T, SIZE, SIZE, 3) and clip.frames.dtype == np.uint8
    assert clip.audio.dtype == np.float32 and clip.sample_rate == 16000
    assert clip.audio.shape == (T * 16000 // 25,)
    for key in ("openness", "width", "roundness", "blink"):
        assert clip.gt[key].shape == (T,) and clip.gt[key].dtype == np.float32
        assert 0.0 <= clip.gt[key].min() and clip.gt[key].max() <= 1.0
    assert clip.gt["head_offset"].shape == (T, 2)
    assert clip.gt["mouth_box"].shape == (T, 4)
    assert np.abs(clip.audio).max() > 0.05, "no speech in the audio"
    assert clip.gt["openness"].max() > 0.3, "the mouth never opens"


def test_deterministic_and_independent_of_count():
    a = synthetic.render_clip(5, 1.0, SIZE)
    b = synthetic.render_clip(5, 1.0, SIZE)
    assert np.array_equal(a.frames, b.frames) and np.array_equal(a.audio, b.audio)
    for k in a.gt:
        assert np.array_equal(a.gt[k], b.gt[k])
    assert synthetic.clip_seed(0, 3) == synthetic.clip_seed(0, 3) != synthetic.clip_seed(1, 3)


def test_mouth_closed_in_silence_and_on_bilabials(clip):
    phon = clip.meta["phonemes"]
    t = (np.arange(len(clip.gt["openness"])) + 0.5) / 25
    first, last = phon[0][1], max(p[2] for p in phon)
    silent = (t < first - 0.08) | (t > last + 0.08)
    assert silent.any(), "the clip has no silent padding"
    assert np.abs(clip.gt["openness"][silent]).max() < 1e-3
    bil = np.zeros_like(silent)
    for sym, a, b in phon:
        if visemes.clean_symbol(sym) in visemes.BILABIALS:
            bil |= (t >= a) & (t < b)
    assert bil.any(), "pick a seed whose sentence has p, b or m"
    assert clip.gt["openness"][bil].max() < 0.05


def test_visemes_follow_phonemes_not_loudness():
    seq = [Phoneme("m", 0.2, 0.35), Phoneme("'a", 0.35, 0.6), Phoneme("p", 0.6, 0.72),
           Phoneme("u:", 0.72, 1.0), Phoneme("i:", 1.0, 1.3)]
    g = visemes.mouth_tracks(seq, 40)
    at = lambda s: int(s * 25)  # noqa: E731
    assert g["openness"][at(0.28)] < 0.02 and g["openness"][at(0.66)] < 0.02  # m, p closed
    assert g["openness"][at(0.5)] > 0.6  # a open
    assert g["roundness"][at(0.88)] > 0.7 and g["width"][at(1.2)] > 0.7  # u rounded, i spread
    assert g["openness"][at(1.5):].max() == 0.0  # silence after speech


def test_identities_differ_across_seeds():
    imgs = [synthetic.render_portrait(s, SIZE).astype(np.float32) for s in range(4)]
    for i in range(4):
        for j in range(i + 1, 4):
            assert np.abs(imgs[i] - imgs[j]).mean() > 10
    assert np.array_equal(synthetic.render_portrait(2, SIZE), synthetic.render_portrait(2, SIZE))


def test_only_the_mouth_depends_on_openness():
    r = faces.FaceRenderer(faces.sample_identity(np.random.default_rng(7)), 128)
    off = (1.5, -0.7)
    closed = r.render(0.0, 0.5, 0.0, offset=off).astype(int)
    opened = r.render(0.9, 0.5, 0.0, offset=off).astype(int)
    x0, y0, x1, y1 = r.mouth_box(0.9, 0.5, 0.0, offset=off)
    inside = np.zeros(closed.shape[:2], bool)
    inside[y0:y1, x0:x1] = True
    diff = np.abs(closed - opened).max(-1)
    assert diff[inside].mean() > 10, "opening the mouth barely changes the mouth box"
    assert diff[~inside].max() <= 2, "pixels far from the mouth depend on openness"
    # The mouth box is big enough to see at 128 px: 20-35 % of the image width.
    assert 0.2 * 128 <= x1 - x0 <= 0.4 * 128
    # Head motion alone moves the background corner region only by the person's shift.
    moved = r.render(0.0, 0.5, 0.0, offset=(0.0, 0.0)).astype(int)
    assert np.array_equal(moved[:4, :4], closed[:4, :4])


def test_mouth_box_contains_mouth_every_frame(clip):
    boxes = clip.gt["mouth_box"]
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
    assert boxes.min() >= 0 and boxes.max() <= SIZE


def test_cli_writes_clips(tmp_path):
    synthetic.main(["--out", str(tmp_path), "--clips", "2", "--seconds", "1", "--seed", "4",
                    "--size", "64"])
    index = json.loads((tmp_path / "index.json").read_text())
    assert [c["name"] for c in index["clips"]] == ["clip_00000", "clip_00001"]
    import soundfile as sf

    audio, sr = sf.read(tmp_path / "clip_00001" / "audio.wav", dtype="int16")
    frames = np.load(tmp_path / "clip_00001" / "frames.npz")["frames"]
    assert sr == 16000 and audio.shape == (16000,) and frames.shape == (25, 64, 64, 3)
    again = synthetic.render_clip(synthetic.clip_seed(4, 1), 1.0, 64)
    assert np.array_equal(frames, again.frames)
    meta = json.loads((tmp_path / "clip_00001" / "meta.json").read_text())
    assert {"identity", "text", "voice", "rate", "pitch", "seed"} <= set(meta)


def test_cli_grows_a_data_set_to_what_one_run_makes(tmp_path):
    """`--first` renders only the new clips; the index equals a single run's, other settings refused."""
    common = ["--seconds", "0.5", "--seed", "4", "--size", "32"]
    synthetic.main(["--out", str(tmp_path / "grown"), "--clips", "1", *common])
    synthetic.main(["--out", str(tmp_path / "grown"), "--clips", "2", "--first", "1", *common])
    synthetic.main(["--out", str(tmp_path / "once"), "--clips", "2", *common])
    grown, once = (json.loads((tmp_path / d / "index.json").read_text()) for d in ("grown", "once"))
    assert grown == once and len(grown["clips"]) == 2
    with pytest.raises(SystemExit):  # another seed would mix two data sets
        synthetic.main(["--out", str(tmp_path / "grown"), "--clips", "3", "--first", "2", "--seconds", "0.5",
                        "--seed", "5", "--size", "32"])
