"""Painting on the warped photo: the mouth interior when the lips part, lashes on closed lids.

Colours follow the generator's mouth (``data/faces.py``: dark cavity, upper teeth over the middle
70 % of the opening, tongue at the bottom) with the photo's own lip colour and brightness.
Shapes are anti-aliased (cv2 LINE_AA, 4 fractional bits) so edges do not crawl between frames.
"""
from __future__ import annotations

import numpy as np

from . import landmarks as lm

SHIFT = 4  # fractional bits for cv2 drawing
MIN_GAP = 0.6  # pixels: a thinner opening is not painted (the warped lip line is enough)
TEETH = np.array([226, 220, 206], np.float32)
TONGUE = np.array([165, 72, 78], np.float32)


def _fix(pts: np.ndarray) -> np.ndarray:
    return np.round(np.asarray(pts) * (1 << SHIFT)).astype(np.int32)


def _mask(shape, poly: np.ndarray) -> np.ndarray:
    import cv2

    m = np.zeros(shape, np.uint8)
    cv2.fillPoly(m, [_fix(poly)], 255, cv2.LINE_AA, SHIFT)
    return m.astype(np.float32) / 255


def _soft(mask: np.ndarray) -> np.ndarray:
    """Soften a mask's edge by ~1 px (teeth and tongue have no hard outline)."""
    import cv2

    return cv2.GaussianBlur(mask, (0, 0), 0.7)


def paint_mouth(img: np.ndarray, moved: np.ndarray, B: float, lip_colour, bright: float, openness: float) -> None:
    """Paint the opening between the moved inner lips into img (S, S, 3) uint8, in place.

    moved: (468, 2) mesh after the frame's motion; B: mouth half-width at rest, pixels;
    lip_colour: (3,) RGB; bright: 0.6 – 1, the face's brightness (teeth and tongue follow it).
    """
    up, lo = moved[lm.LIPS_UPPER_INNER], moved[lm.LIPS_LOWER_INNER]  # (11, 2), corner to corner
    gap = np.linalg.norm(lo - up, axis=1)  # (11,)
    if openness <= 0 or gap.max() < MIN_GAP:
        return
    poly = np.vstack([up, lo[-2:0:-1]])
    x0, y0 = np.maximum(np.floor(poly.min(0)).astype(int) - 2, 0)
    x1, y1 = np.minimum(np.ceil(poly.max(0)).astype(int) + 3, img.shape[1::-1])
    if x1 <= x0 or y1 <= y0:
        return
    off = np.array([x0, y0])
    shape = (y1 - y0, x1 - x0)
    inside = _mask(shape, poly - off)[..., None]  # (h, w, 1)
    region = img[y0:y1, x0:x1].astype(np.float32)
    # cavity, darker towards the corners
    ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    centre, u = (moved[61] + moved[291]) / 2, moved[291] - moved[61]
    half = max(np.linalg.norm(u) / 2, 1.0)
    ax = ((xs - centre[0]) * u[0] + (ys - centre[1]) * u[1]) / (2 * half * half)  # -1 .. 1 along the mouth
    cavity = np.asarray(lip_colour, np.float32) * 0.32 * (1 - 0.45 * np.clip(np.abs(ax), 0, 1) ** 2)[..., None]
    layer = np.broadcast_to(cavity, region.shape).copy()
    mid = slice(2, 9)  # teeth and tongue over the middle ~70 % of the opening
    down = (lo - up) / np.maximum(gap, 1e-6)[:, None]  # unit vectors upper -> lower lip
    t = np.minimum(0.17 * B, 0.8 * gap)[mid, None]
    teeth = _soft(_mask(shape, np.vstack([up[mid], (up[mid] + down[mid] * t)[::-1]]) - off))
    fade = np.clip(1 - np.abs(ax) ** 3, 0, 1) * teeth  # teeth fade into shadow at the corners
    shade = 1 - 0.3 * np.clip(np.abs(ax), 0, 1)
    layer += fade[..., None] * (TEETH * bright * shade[..., None] - layer)
    g = np.minimum(0.14 * B, 0.35 * gap)[mid, None]
    tongue = _soft(_mask(shape, np.vstack([lo[mid], (lo[mid] - down[mid] * g)[::-1]]) - off))
    layer += (0.7 * tongue)[..., None] * (TONGUE * bright - layer)
    img[y0:y1, x0:x1] = np.clip(region + inside * (layer - region) + 0.5, 0, 255).astype(np.uint8)


def paint_lashes(img: np.ndarray, moved: np.ndarray, blink: float) -> None:
    """Darken the upper-lid edge as the lid closes (lashes meet), in place. blink in [0, 1]."""
    import cv2

    alpha = 0.6 * float(np.clip((blink - 0.3) / 0.7, 0, 1))
    if alpha <= 0:
        return
    for lid in (lm.EYE_R_UPPER, lm.EYE_L_UPPER):
        pts = moved[lid]
        x0, y0 = np.maximum(np.floor(pts.min(0)).astype(int) - 3, 0)
        x1, y1 = np.minimum(np.ceil(pts.max(0)).astype(int) + 4, img.shape[1::-1])
        if x1 <= x0 or y1 <= y0:
            continue
        width = max(1, int(round(0.05 * np.linalg.norm(pts[-1] - pts[0]))))
        m = np.zeros((y1 - y0, x1 - x0), np.uint8)
        cv2.polylines(m, [_fix(pts - [x0, y0])], False, 255, width, cv2.LINE_AA, SHIFT)
        w = (alpha * m.astype(np.float32) / 255)[..., None]
        region = img[y0:y1, x0:x1].astype(np.float32)
        img[y0:y1, x0:x1] = np.clip(region * (1 - w) + np.array([30, 22, 22]) * w + 0.5, 0, 255).astype(np.uint8)
