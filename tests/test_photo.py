"""Photo mode on real public-domain photos with the real FaceMesh model (seconds on one core).

Photos: Grace Hopper (matplotlib's sample data) and, when scikit-image is installed, the
astronaut (Eileen Collins). Both public domain and shipped inside the packages, not in this repo.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.errors import InputError
from pipeline.photo import Motion, MotionReader, PhotoRenderer, driver_portrait, is_photo
from pipeline.photo import landmarks as lm
from pipeline.photo.evaluate import grace_hopper, lip_opening, track_mesh

EXAMPLES = Path(__file__).resolve().parents[1] / "assets" / "examples"


@pytest.fixture(scope="module")
def hopper():
    return grace_hopper()


@pytest.fixture(scope="module")
def renderer(hopper):
    return PhotoRenderer(hopper, 256)


def _examples():
    import cv2

    return [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in sorted(EXAMPLES.glob("portrait_*.png"))]


def test_is_photo_separates_photos_from_the_synthetic_domain(hopper):
    from pipeline.data.synthetic import render_portrait

    synthetic = _examples() + [render_portrait(s, 128) for s in range(3)] + [render_portrait(3, 256)]
    assert len(synthetic) == 7 and not any(is_photo(x) for x in synthetic)
    gray = np.repeat(hopper.mean(-1, keepdims=True), 3, -1).astype(np.uint8)
    assert is_photo(hopper) and is_photo(gray)
    skimage = pytest.importorskip("skimage")
    assert is_photo(skimage.data.astronaut())


def test_landmarks_fit_the_photo(hopper):
    faces = lm.detect_faces(hopper)
    assert len(faces) == 1 and faces[0].score > 0.8
    face = lm.mesh_face(hopper, faces[0])
    p = face.points[:, :2]
    assert face.points.shape == (468, 3) and face.presence > 0.9
    x0, y0, x1, y1 = faces[0].box
    assert (p[:, 0] > x0 - 40).all() and (p[:, 0] < x1 + 40).all()
    assert p[61, 0] < p[13, 0] < p[291, 0]  # mouth centre between the corners
    assert p[lm.NOSE_TIP, 1] < p[13, 1] < p[lm.CHIN, 1]  # lips between nose and chin
    assert p[159, 1] < p[lm.NOSE_TIP, 1]  # eyes above the nose


def test_still_frame_is_the_photo_window(renderer):
    frame = renderer.render_frame()
    assert frame.shape == (256, 256, 3) and frame.dtype == np.uint8
    np.testing.assert_array_equal(frame, renderer.base)


def test_motion_stays_inside_the_ring(renderer):
    rng = np.random.default_rng(0)
    for o, w, r, b, hx, hy in rng.uniform([0, 0, 0, 0, -3, -3], [1, 1, 1, 1, 3, 3], (4, 6)):
        frame = renderer.render_frame(o, w, r, b, (hx, hy))
        changed = np.abs(frame.astype(int) - renderer.base).max(-1) > 1
        assert not changed[~renderer.support].any()
        assert changed[renderer.support].any()


def test_opening_is_read_back_by_landmarks(renderer):
    frames = np.stack([renderer.render_frame(openness=o) for o in (0.0, 0.3, 0.6, 0.9)])
    opening = lip_opening(track_mesh(frames))
    assert (np.diff(opening) > 0.02).all(), opening


def test_blink_closes_the_eyes(renderer):
    """The plain FaceMesh model follows eyelids only roughly (its refined-eye variant needs
    MediaPipe's custom ops), so the read-back is checked on the astronaut's open, unglassed eyes;
    on Grace Hopper the eye regions must change."""
    import cv2

    frames = np.stack([renderer.render_frame(blink=b) for b in (0.0, 1.0)])
    eyes = np.zeros((256, 256), np.uint8)
    for up, lo in ((lm.EYE_R_UPPER, lm.EYE_R_LOWER), (lm.EYE_L_UPPER, lm.EYE_L_LOWER)):
        cv2.fillPoly(eyes, [np.round(renderer.points[up + lo[::-1]]).astype(np.int32)], 1)
    assert np.abs(frames[1].astype(int) - frames[0])[eyes > 0].mean() > 10
    skimage = pytest.importorskip("skimage")
    r = PhotoRenderer(skimage.data.astronaut(), 256)
    pts = track_mesh(np.stack([r.render_frame(blink=b) for b in (0.0, 1.0)]))
    lid = sum(np.linalg.norm(pts[:, i, :2] - pts[:, j, :2], axis=-1) for i, j in ((159, 145), (386, 374)))
    assert lid[1] < 0.8 * lid[0], lid


def test_bad_photos_get_one_clear_message(hopper):
    import cv2

    with pytest.raises(InputError, match="No face"):
        PhotoRenderer(np.full((300, 300, 3), 128, np.uint8))
    with pytest.raises(InputError, match="several faces"):
        PhotoRenderer(np.hstack([hopper, hopper[:, ::-1]]))
    with pytest.raises(InputError, match="No face|too small"):
        PhotoRenderer(np.pad(cv2.resize(hopper, (43, 50)), ((300, 300), (300, 300), (0, 0)), mode="edge"))
    with pytest.raises(InputError, match="256 to 512"):
        PhotoRenderer(hopper, 128)


def test_profile_is_refused(hopper):
    """A face squeezed to a third of its width on one side reads as turned away."""
    from pipeline.photo.render import PROFILE, find_face

    face = find_face(hopper)
    p = face.points[:, :2]
    left = np.linalg.norm(p[lm.NOSE_TIP] - p[234])
    right = np.linalg.norm(p[454] - p[lm.NOSE_TIP])
    assert min(left, right) / max(left, right) > 0.6  # the real photo is frontal
    assert "sideways" in PROFILE


def _driver_clip(num_frames: int = 100):
    """The driver rendered with known motion: mouth tracks from a random phoneme string through the
    viseme table (natural width/roundness pairs), one blink, a slow head sway. No speech synthesis."""
    from pipeline.data.visemes import mouth_tracks
    from pipeline.eval.realvoice import Phone
    from pipeline.photo.evaluate import driver_from_truth

    rng = np.random.default_rng(3)
    symbols = ["p", "a", "t", "i", "k", "u", "m", "O", "s", "E", "w", "A", "l", "oU", "S", "I"]
    phones, t = [], 0.2
    while t < num_frames / 25:
        d = rng.uniform(0.06, 0.16)
        phones.append(Phone(str(rng.choice(symbols)), t, t + d))
        t += d
    gt = mouth_tracks(phones, num_frames)
    s = np.arange(num_frames) / 25
    gt["blink"] = np.clip(1 - np.abs(s - 1.2) / 0.1, 0, 1).astype(np.float32)
    gt["brow"] = np.zeros(num_frames, np.float32)
    gt["head_offset"] = np.stack([1.5 * np.sin(2 * np.pi * 0.4 * s), np.cos(2 * np.pi * 0.3 * s)], 1).astype(np.float32)
    return driver_from_truth(gt), gt


def test_motion_reader_reads_the_driver():
    """On the driver rendered from ground truth (the reader's clean upper bound; on READ's decoded
    frames see docs/PHOTO.md)."""
    frames, gt = _driver_clip()
    motion = MotionReader.load().read(frames, reference=driver_portrait(), blinks="driver")
    assert len(motion) == len(frames) and motion.head_offset.shape == (len(frames), 2)
    for k, bar in (("openness", 0.9), ("roundness", 0.8), ("width", 0.5)):
        assert np.corrcoef(getattr(motion, k), gt[k])[0, 1] > bar, k
    assert motion.blink[np.argmax(gt["blink"])] > 0.5 and np.median(motion.blink) < 0.2
    assert np.abs(motion.head_offset - gt["head_offset"]).mean() < 0.5  # pixels, against the portrait
    with pytest.raises(ValueError, match="driver frames"):
        MotionReader.load().read(frames[:, :64])
    whole = MotionReader.load().read(frames, blinks="random", seed=1).blink
    tail = MotionReader.load().read(frames[50:], blinks="random", start_frame=50, seed=1).blink
    np.testing.assert_array_equal(tail, whole[50:])  # clip-by-clip calls continue one schedule


def test_still_motion_renders_the_still_window(renderer):
    frames = renderer.render(Motion.still(3))
    assert frames.shape == (3, 256, 256, 3)
    np.testing.assert_array_equal(frames[2], renderer.base)


def test_real_voice_truth_from_phones():
    from pipeline.eval.realvoice import ARPABET, Phone, truth_openness

    assert len(ARPABET) == 39  # every CMUdict phone
    phones = [Phone("_", 0, 0.2), Phone("m", 0.2, 0.3), Phone("A", 0.3, 0.6), Phone("_", 0.6, 1.0)]
    o = truth_openness(phones, 25)
    assert o.shape == (25,) and o[:4].max() == 0 and o[10] > 0.8 and o[-1] == 0
