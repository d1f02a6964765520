"""Identity of a procedural portrait: the random factors ``faces.FaceRenderer`` draws.

An ``Identity`` is a set of random factors (face shape, skin, hair style/colour, eyes, brows,
nose, lips, glasses/beard, clothes, background, head position/scale), drawn independently by
``sample_identity``; ``describe`` makes it JSON-ready for meta.json.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

SKIN_TONES = np.array([[255, 226, 204], [240, 200, 165], [224, 172, 130], [198, 138, 95],
                       [160, 104, 70], [118, 76, 50], [80, 54, 38]], np.float32)
HAIR_COLOURS = [(25, 22, 22), (58, 40, 28), (100, 68, 42), (135, 60, 32), (212, 178, 112),
                (170, 72, 38), (150, 150, 150), (228, 226, 220), (55, 80, 165), (200, 95, 145)]
IRIS_COLOURS = [(95, 60, 35), (130, 105, 50), (70, 120, 75), (70, 125, 185), (120, 132, 145),
                (48, 34, 26)]
HAIR_STYLES = ["short", "long", "bob", "bun", "afro", "sidepart", "bald", "buzz"]


@dataclass
class Identity:
    """Random factors of one portrait; sizes are fractions of the image or of the face."""

    # head position and scale (fractions of the image), face shape
    cx: float
    cy: float
    face_w: float
    aspect: float
    jaw: float
    square: float
    # skin and hair
    skin: list
    hair_style: str
    hair_colour: list
    hairline: float
    hair_volume: float
    # eyes (sizes relative to the face half-width)
    eye_spacing: float
    eye_w: float
    eye_h: float
    eye_tilt: float
    lid_rest: float
    iris: list
    gaze: list
    # brows, nose, lips
    brow_colour: list
    brow_thick: float
    brow_arch: float
    nose_len: float
    nose_w: float
    lip_colour: list
    lip_thick: float
    mouth_w: float
    mouth_y: float
    smile: float
    # accessories, clothes, background
    glasses: str
    glasses_colour: list
    beard: str
    shirt: list
    neckline: str
    bg_a: list
    bg_b: list
    bg_mode: str


def _rand_colour(rng, lo=40, hi=220):
    return [float(v) for v in rng.uniform(lo, hi, 3)]


def sample_identity(rng: np.random.Generator) -> Identity:
    """Draw every factor independently from ``rng``."""
    t = rng.uniform(0, len(SKIN_TONES) - 1)
    i = int(t)
    skin = SKIN_TONES[i] * (1 - (t - i)) + SKIN_TONES[min(i + 1, 6)] * (t - i)
    skin = np.clip(skin * rng.uniform(0.95, 1.05, 3), 0, 255)
    hair_i = int(rng.integers(len(HAIR_COLOURS)))
    hair = np.array(HAIR_COLOURS[hair_i]) * rng.uniform(0.85, 1.15)
    lips = skin * [0.78, 0.52, 0.55] + rng.uniform(0, 0.35) * (np.array([200, 40, 70]) - skin * 0.5)
    natural = hair_i < 8  # the last two hair colours are dyed: brows and beard stay brown
    brow = hair * 0.7 if natural and hair.mean() < 150 else np.array([100, 75, 55.0])
    pick = lambda seq: str(seq[rng.integers(len(seq))])  # noqa: E731
    return Identity(
        cx=rng.uniform(0.45, 0.55), cy=rng.uniform(0.43, 0.5), face_w=rng.uniform(0.24, 0.3),
        aspect=rng.uniform(1.18, 1.4), jaw=rng.uniform(0.1, 0.45), square=rng.uniform(2.0, 2.9),
        skin=skin.tolist(), hair_style=pick(HAIR_STYLES), hair_colour=np.clip(hair, 0, 255).tolist(),
        hairline=rng.uniform(0.46, 0.62), hair_volume=rng.uniform(1.03, 1.12),
        eye_spacing=rng.uniform(0.36, 0.44), eye_w=rng.uniform(0.17, 0.22),
        eye_h=rng.uniform(0.38, 0.56), eye_tilt=rng.uniform(-0.12, 0.12),
        lid_rest=rng.uniform(0.0, 0.25), iris=list(IRIS_COLOURS[rng.integers(6)]),
        gaze=rng.uniform(-0.25, 0.25, 2).tolist(), brow_colour=np.clip(brow, 0, 255).tolist(),
        brow_thick=rng.uniform(0.035, 0.075), brow_arch=rng.uniform(0.0, 0.07),
        nose_len=rng.uniform(0.2, 0.3), nose_w=rng.uniform(0.12, 0.2),
        lip_colour=np.clip(lips, 0, 255).tolist(), lip_thick=rng.uniform(0.7, 1.3),
        mouth_w=rng.uniform(0.42, 0.52), mouth_y=rng.uniform(0.5, 0.56),
        smile=rng.uniform(-0.3, 1.0), glasses=pick(["none", "none", "round", "rect"]),
        glasses_colour=_rand_colour(rng, 10, 160),
        beard=pick(["none"] * 4 + ["stubble", "full", "moustache", "goatee"]),
        shirt=_rand_colour(rng), neckline=pick(["v", "crew"]), bg_a=_rand_colour(rng, 30, 235),
        bg_b=_rand_colour(rng, 30, 235), bg_mode=pick(["vertical", "horizontal", "radial", "flat"]))


def describe(ident: Identity) -> dict:
    """JSON-ready identity parameters (for meta.json)."""
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(ident).items()}
