"""Photo renderer: a visitor's photo made to talk by warping it with READ's motion.

``PhotoRenderer(photo)`` finds the one usable face (FaceMesh, ``landmarks.py``), cuts a square
window around it (edge-padded past the photo's border) and prepares a piecewise-affine warp on
the mesh plus a fixed ring of points around the face (``warp.py``). ``render(motion)`` turns each
frame's parameters into control-point displacements, following the generator's own mouth
geometry (``data/faces.py``): the lower lip and jaw drop by 3/4 of the lip gap and the upper lip
rises by 1/4, the mouth corners move with width and roundness, the upper lids slide down to the
lower ones for a blink, and the face shifts with the head offset (fading to zero at the ring).
Where the lips part, the mouth interior is painted (``paint.py``). Outside the ring every pixel
is the photo's own.
"""
from __future__ import annotations

import numpy as np

from ..errors import InputError
from . import landmarks as lm
from .motion import Motion, driver_eye_distance
from .paint import paint_lashes, paint_mouth
from .warp import PiecewiseAffineWarp

WINDOW = 1.7  # output window side / face-mesh extent (forehead to chin): head, hair, some shoulders
RING_UP, RING_DOWN = 1.3, 1.6  # fixed ring, as a multiple of the face oval about its centre
GAP = 0.8  # lip gap at openness 1, in mouth half-widths (the generator draws 0.75)
MIN_FACE_PX = 40  # narrower faces (photo pixels) are refused: too few pixels to animate
MIN_YAW_RATIO = 0.35  # nose-to-cheek distance ratio under which a face is a profile
SEVERAL_AREA = 0.25  # a second face at least this share of the largest's area: "several faces"

NO_FACE = ("No face was found in the photo. Use a photo of one person seen from the front, with "
           "the face filling a good part of the picture.")
SEVERAL = ("The photo shows several faces. Photo mode animates one person: crop the photo to the "
           "face you want to animate.")
PROFILE = "The face is turned sideways. Photo mode needs a face seen from the front."
TINY = "The face is too small (under {px} pixels wide). Use a closer or larger photo."


def find_face(rgb: np.ndarray) -> lm.Face:
    """The single usable face of a photo, meshed. rgb: (H, W, 3) uint8.

    Raises InputError (one message each) for: no face, several faces, a profile, a tiny face.
    """
    faces = lm.detect_faces(rgb)
    if not faces:
        raise InputError(NO_FACE)
    area = np.array([(f.box[2] - f.box[0]) * (f.box[3] - f.box[1]) for f in faces])
    if (area >= SEVERAL_AREA * area.max()).sum() > 1:
        raise InputError(SEVERAL)
    face = lm.mesh_face(rgb, faces[int(area.argmax())])
    if face.presence < lm.MESH_SCORE:
        raise InputError(NO_FACE)
    p = face.points[:, :2]
    left, right = np.linalg.norm(p[lm.NOSE_TIP] - p[234]), np.linalg.norm(p[454] - p[lm.NOSE_TIP])
    if min(left, right) / max(left, right, 1e-6) < MIN_YAW_RATIO:
        raise InputError(PROFILE)
    if np.linalg.norm(p[454] - p[234]) < MIN_FACE_PX:
        raise InputError(TINY.format(px=MIN_FACE_PX))
    return face


def window_crop(rgb: np.ndarray, points: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Square window around the mesh, edge-padded, resized to size². Returns the window (size,
    size, 3) uint8 and the mesh (468, 2) in window pixels."""
    import cv2

    lo, hi = points.min(0), points.max(0)
    side = int(np.ceil(WINDOW * (hi - lo).max()))
    x0, y0 = np.round((lo + hi) / 2 - side / 2).astype(int)
    H, W = rgb.shape[:2]
    pad = max(0, -x0, -y0, x0 + side - W, y0 + side - H)
    src = np.pad(rgb, ((pad, pad), (pad, pad), (0, 0)), mode="edge") if pad else rgb
    crop = src[y0 + pad : y0 + pad + side, x0 + pad : x0 + pad + side]
    k = size / side
    out = cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA if k < 1 else cv2.INTER_CUBIC)
    return out, ((points - [x0, y0]) + 0.5) * k - 0.5


class PhotoRenderer:
    """Animate one photo. photo_rgb: (H, W, 3) uint8 RGB; size: output side in pixels, 256 – 512.

    head_motion: gain on the driver's head offset (0 keeps the head still; 1 follows the driver).
    Raises InputError for a photo without one usable face (see ``find_face``) or a bad size.
    Attributes: ``base`` (size, size, 3) uint8, the still window every frame starts from;
    ``points`` (468, 2) the mesh in window pixels; ``support`` (size, size) bool, the pixels the
    animation may change (inside the ring).
    """

    def __init__(self, photo_rgb: np.ndarray, size: int = 256, head_motion: float = 1.0):
        if not isinstance(size, (int, np.integer)) or not 256 <= size <= 512:
            raise InputError(f"photo-mode size must be a whole number of pixels from 256 to 512, got {size!r}")
        rgb = np.ascontiguousarray(np.asarray(photo_rgb)[..., :3], dtype=np.uint8)
        face = find_face(rgb)
        self.size = int(size)
        self.base, self.points = window_crop(rgb, face.points[:, :2], self.size)
        self._geometry()
        ring = self._ring()
        self.warp = PiecewiseAffineWarp(np.vstack([self.points, ring]), self.size)
        n = len(self.points)
        self.head_weight = self.warp.interpolate(np.r_[np.ones(n), np.zeros(len(ring))])  # (S, S)
        self.support = self.head_weight > 0
        ys, xs = np.nonzero(self.support)
        self.box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
        self.head_scale = head_motion * float(np.linalg.norm(self.eye_r - self.eye_l)) / driver_eye_distance()

    def _geometry(self) -> None:
        """Mouth frame (centre, axes u/v, half-width B), lip and eye index sets, colours."""
        p = self.points
        c0, c1 = p[61], p[291]
        self.centre, self.B = (c0 + c1) / 2, float(np.linalg.norm(c1 - c0)) / 2
        self.u = (c1 - c0) / (2 * self.B)
        self.v = np.array([-self.u[1], self.u[0]])  # points down the face
        rel = p - self.centre
        self.a, self.b = rel @ self.u / self.B, rel @ self.v / self.B  # (468,) mouth-local coords
        self.upper = np.unique(lm.LIPS_UPPER_OUTER + lm.LIPS_UPPER_INNER)
        self.lower = np.unique(lm.LIPS_LOWER_OUTER + lm.LIPS_LOWER_INNER)
        self.lips = np.union1d(self.upper, self.lower)
        self.eye_r, self.eye_l = p[lm.EYE_R_UPPER + lm.EYE_R_LOWER].mean(0), p[lm.EYE_L_UPPER + lm.EYE_L_LOWER].mean(0)
        lip_px = self.base[tuple(np.round(p[[0, 17, 14, 13]][:, ::-1]).astype(int).T)]
        self.lip_colour = lip_px.astype(np.float32).mean(0)
        cheeks = self.base[tuple(np.round(p[[50, 280, 101, 330]][:, ::-1]).astype(int).T)]
        self.brightness = float(np.clip(cheeks.astype(np.float32).mean() / 150, 0.6, 1.0))  # teeth/tongue tone

    def _ring(self) -> np.ndarray:
        """Fixed control points: the face oval scaled about its centre (more below, for the jaw)
        and the window border."""
        oval = self.points[lm.FACE_OVAL]
        centre = oval.mean(0)
        below = ((oval - centre) @ self.v) > 0
        ring = centre + (oval - centre) * np.where(below, RING_DOWN, RING_UP)[:, None]
        s = self.size - 1
        t = np.linspace(0, s, 5)
        border = np.vstack([np.stack([t, t * 0], 1), np.stack([t, t * 0 + s], 1),
                            np.stack([t * 0, t], 1)[1:-1], np.stack([t * 0 + s, t], 1)[1:-1]])
        return np.vstack([ring, border])

    def displacements(self, openness, width, roundness, blink) -> np.ndarray:
        """Mesh displacement (468, 2), window pixels, for one frame's expression (no head shift)."""
        o, w, r = (float(np.clip(x, 0, 1)) for x in (openness, width, roundness))
        a, b, B = self.a, self.b, self.B
        gap = o * GAP * B * (1 + 0.3 * r)
        prof = np.clip(1 - np.clip(a, -1, 1) ** 2, 0, 1) ** (0.9 - 0.4 * r)  # lip-gap profile (468,)
        near = np.exp(-(np.maximum(b, 0) / 0.6) ** 2)
        jaw = near * prof + (1 - near) * np.exp(-(a / 2.5) ** 2)  # 1 at the chin, lip profile at the lips
        down = np.where(b > 0, 0.75 * gap * jaw, -0.25 * gap * np.exp(-(a / 1.2) ** 2 - (b / 0.5) ** 2))
        down[self.lower] = 0.75 * gap * prof[self.lower]
        down[self.upper] = -0.25 * gap * prof[self.upper]
        down[lm.LIPS_UPPER_OUTER[1:-1]] -= 0.09 * r * B * np.sqrt(prof[lm.LIPS_UPPER_OUTER[1:-1]])
        down[lm.LIPS_LOWER_OUTER[1:-1]] += 0.12 * r * B * prof[lm.LIPS_LOWER_OUTER[1:-1]]
        scale = (0.82 + 0.36 * w) * (1 - 0.38 * r) - 1  # mouth width change (0 when relaxed)
        spread = np.exp(-(np.maximum(np.abs(a) - 1, 0) / 0.5) ** 2 - (b / 1.2) ** 2)
        spread[self.lips] = 1.0
        side = scale * np.clip(a, -1.5, 1.5) * B * spread
        d = side[:, None] * self.u + down[:, None] * self.v  # (468, 2)
        return d + self._blink(float(np.clip(blink, 0, 1)))

    def _blink(self, k: float) -> np.ndarray:
        """Upper lids slide 95 % of the way to the lower lids; the skin above follows at 35 %."""
        d = np.zeros_like(self.points)
        if k <= 0:
            return d
        for up, lo, crease in ((lm.EYE_R_UPPER, lm.EYE_R_LOWER, lm.EYE_R_CREASE),
                               (lm.EYE_L_UPPER, lm.EYE_L_LOWER, lm.EYE_L_CREASE)):
            move = 0.95 * k * (self.points[lo[1:-1]] - self.points[up[1:-1]])  # (7, 2)
            d[up[1:-1]] = move
            d[crease[1:-1]] = 0.35 * move
        return d

    def render_frame(self, openness=0.0, width=0.5, roundness=0.0, blink=0.0, head_offset=(0.0, 0.0)) -> np.ndarray:
        """One (size, size, 3) uint8 frame. openness/roundness/blink in [0, 1], width 0.5 relaxed,
        head_offset in driver pixels (x, y) at 128² (scaled to this face)."""
        import cv2

        disp = self.displacements(openness, width, roundness, blink)
        n_ring = len(self.warp.points) - len(self.points)
        bm = self.warp.backward_map(np.vstack([disp, np.zeros((n_ring, 2))]))
        x0, y0, x1, y1 = self.box
        maps = self.warp.grid.copy()
        if bm is not None:
            m, (bx0, by0, bx1, by1) = bm
            maps[by0:by1, bx0:bx1] = m
        head = np.asarray(head_offset, np.float32) * self.head_scale
        region = maps[y0:y1, x0:x1]
        if np.abs(head).max() > 1e-3:
            sample = self.warp.grid[y0:y1, x0:x1] - head * self.head_weight[y0:y1, x0:x1, None] - [x0, y0]
            region = cv2.remap(region, sample[..., 0].astype(np.float32), sample[..., 1].astype(np.float32),
                               cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        out = self.base.copy()
        warped = cv2.remap(self.base, region[..., 0], region[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        inside = self.support[y0:y1, x0:x1, None]  # edge pixels the rasteriser over-covers stay the photo's
        out[y0:y1, x0:x1] = np.where(inside, warped, out[y0:y1, x0:x1])
        moved = self.points + disp + head
        paint_mouth(out, moved, self.B, self.lip_colour, self.brightness, openness)
        paint_lashes(out, moved, blink)
        return out

    def render(self, motion: Motion) -> np.ndarray:
        """All frames of a ``Motion``: (T, size, size, 3) uint8."""
        frames = np.empty((len(motion), self.size, self.size, 3), np.uint8)
        for k in range(len(motion)):
            frames[k] = self.render_frame(**motion.frame(k))
        return frames
