"""Procedural 2-D portraits: fast per-frame rendering of an ``Identity`` (``identity.py``).

An ``Identity`` is a set of random factors (face shape, skin, hair style/colour, eyes, brows,
nose, lips, glasses/beard, clothes, background, head position/scale). ``FaceRenderer`` turns it
into frames, and says where it drew the mouth and the eyes (``mouth_box``, ``eyes_box``). For speed the work is split:

* once per identity, at ``ss``x supersampling: everything that never changes relative to the
  head (body, hair, face with soft shading, nose, open eyes) -> a premultiplied RGB + alpha
  "person" layer; glasses and moustache go to an overlay drawn above the moving parts;
* every frame: only a crop around brows, eyes and mouth is redrawn at the supersampled scale
  (brows, eyelids, lips/teeth/mouth interior), downsampled with INTER_AREA (the anti-aliasing)
  and pasted in; the person layer is then shifted by the head offset over a static background.

Premultiplied colour (shapes drawn over black plus an alpha drawn from the same shapes) keeps
downsampling and sub-pixel shifts linear, so edges get no dark fringe. Coordinates are pixels of
the supersampled canvas; cv2 draws with LINE_AA and 4 fractional bits so motion is sub-pixel.
"""

from __future__ import annotations

import cv2
import numpy as np

from .face_layers import PersonLayers, _Layer, _fill, _line
from .identity import Identity, describe, sample_identity  # noqa: F401  (re-exported)



class FaceRenderer(PersonLayers):
    """Renders one identity at ``size`` px; see the module docstring for the layering."""

    def __init__(self, ident: Identity, size: int, ss: int | None = None):
        self.id, self.size = ident, size
        self.ss = ss or max(2, 512 // size)
        S = self.S = size * self.ss
        self.fw = ident.face_w * S
        self.fh = self.fw * ident.aspect
        self.cx, self.cy = ident.cx * S, ident.cy * S
        self.eye_y = self.cy - 0.08 * self.fh
        self.ew = ident.eye_w * self.fw
        self.eh = self.ew * ident.eye_h
        self.mouth = (self.cx, self.cy + ident.mouth_y * self.fh)
        self.B = ident.mouth_w * self.fw  # relaxed mouth half-width
        self.skin = np.array(ident.skin, np.float32)
        self.bg = self._background()
        person, overlay = self._person(), self._overlay()
        self._set_crop(person, overlay)

    # ------------------------------------------------------------ static layers
    def _set_crop(self, person: _Layer, overlay: _Layer):
        """Fix the redrawn box (multiple of ss) and cache the static layers at output size."""
        ss, fw, (mx, my) = self.ss, self.fw, self.mouth
        x0, x1 = self.cx - 1.05 * fw, self.cx + 1.05 * fw
        y0 = self.eye_y - self.eh - 0.5 * fw  # above the highest raised brow
        y1 = my + 1.2 * self.B  # below the lowest open lower lip
        box = np.array([x0, y0, x1, y1]) / ss
        box = np.concatenate([np.floor(box[:2]), np.ceil(box[2:])]).clip(0, self.size).astype(int)
        self.crop = box  # output pixels: x0, y0, x1, y1
        bx0, by0, bx1, by1 = box * ss
        self._base = np.round(person.rgb[by0:by1, bx0:bx1]).astype(np.uint8)
        self._ov_rgb = overlay.rgb[by0:by1, bx0:bx1].copy()
        self._ov_a = overlay.a[by0:by1, bx0:bx1, None].copy()
        self._has_overlay = bool(self._ov_a.max() > 0)
        rgb = overlay.rgb + person.rgb * (1 - overlay.a[..., None])
        a = overlay.a + person.a * (1 - overlay.a)
        small = cv2.resize(np.dstack([rgb, a * 255]), (self.size, self.size),
                           interpolation=cv2.INTER_AREA)
        self._person_small = small.astype(np.float32)  # premultiplied RGB + alpha*255
        self._origin = np.array([bx0, by0], np.float64)

    def mouth_contours(self, openness, width, roundness):
        """Upper-outer, upper-inner, lower-inner, lower-outer lip contours, each (n, 2)."""
        (mx, my), B, k = self.mouth, self.B, self.id.lip_thick
        w = B * (0.82 + 0.36 * width) * (1 - 0.38 * roundness)
        gap = openness * B * 0.75 * (1 + 0.3 * roundness)
        u = np.linspace(-1, 1, 25)
        xs = mx + w * u
        p = (1 - u ** 2) ** (0.9 - 0.4 * roundness)  # rounder opening when lips are rounded
        corner = -self.id.smile * B * 0.1 * u ** 2 * (1 - roundness)  # corners up for a smile
        up_in = my + corner - 0.25 * gap * p
        lo_in = my + corner + 0.75 * gap * p
        bow = 1 - 0.3 * np.exp(-(u / 0.13) ** 2)  # cupid's bow dip at the centre
        thick = 1 + 0.45 * roundness  # pursed lips look fuller
        up_out = up_in - B * 0.2 * k * thick * np.sqrt(1 - u ** 2) * bow
        lo_out = lo_in + B * 0.27 * k * thick * (1 - u ** 2) ** 0.6
        return [np.stack([xs, y], 1) for y in (up_out, up_in, lo_in, lo_out)]

    def _draw_mouth(self, img, openness, width, roundness):
        up_out, up_in, lo_in, lo_out = (c - self._origin for c in
                                        self.mouth_contours(openness, width, roundness))
        lip = np.array(self.id.lip_colour)
        gap = lo_in[:, 1] - up_in[:, 1]
        _line(img, lo_out + [0, 0.04 * self.B], self.skin * 0.75, 0.06 * self.B)  # lip shadow
        if gap.max() > 0.02 * self.B:
            _fill(img, np.vstack([up_in, lo_in[::-1]]), (55, 18, 24))  # mouth interior
            mid = slice(4, 21)  # teeth span 70 % of the width, never outside the opening
            tongue = np.stack([lo_in[mid, 0], lo_in[mid, 1] - np.minimum(0.2 * self.B, 0.5 * gap[mid])], 1)
            _fill(img, np.vstack([lo_in[mid], tongue[::-1]]), (150, 60, 65))
            teeth = np.stack([up_in[mid, 0], up_in[mid, 1] + np.minimum(0.17 * self.B, 0.8 * gap[mid])], 1)
            _fill(img, np.vstack([up_in[mid], teeth[::-1]]), (236, 232, 222))
        _fill(img, np.vstack([up_out, up_in[::-1]]), lip * 0.88)
        _fill(img, np.vstack([lo_in, lo_out[::-1]]), lip)
        hi = lo_in[8:17] + [0, 0.35 * (lo_out[8:17, 1] - lo_in[8:17, 1]).mean()]
        _line(img, hi, np.minimum(lip * 1.25, 255), 0.05 * self.B)  # highlight on the lower lip
        _line(img, up_in, lip * 0.45, max(self.ss * 0.5, 0.03 * self.B))  # line between the lips

    def _draw_eyes_brows(self, img, blink, brow):
        for k, s in enumerate((-1, 1)):
            up, lo = (c - self._origin for c in self._eye_contours(s))
            c = self.id.lid_rest + (1 - self.id.lid_rest) * blink
            edge = up + c * (lo - up)
            _fill(img, np.vstack([up + [0, -0.3 * self.eh], edge[::-1]]), self.lid_colour[k])
            _line(img, edge, (30, 22, 22), 0.012 * self.S)  # lashes along the lid edge
            _line(img, lo[3:-3], self.lid_colour[k] * 0.7, 0.004 * self.S)
            ex = self.cx + s * self.id.eye_spacing * self.fw - self._origin[0]
            u = np.linspace(-1, 1, 16)
            y = (self.eye_y - self._origin[1] - self.eh - 0.14 * self.fw
                 - self.id.brow_arch * self.fw * (1 - u ** 2) - brow * 0.06 * self.fh)
            th = self.id.brow_thick * self.fw * (1 - 0.45 * (s * u + 1) / 2)  # thinner outside
            xs = ex + 1.2 * self.ew * u
            _fill(img, np.vstack([np.stack([xs, y - th / 2], 1), np.stack([xs, y + th / 2], 1)[::-1]]),
                  self.id.brow_colour)

    def render(self, openness=0.0, width=0.5, roundness=0.0, blink=0.0, brow=0.0,
               offset=(0.0, 0.0)) -> np.ndarray:
        """One (size, size, 3) uint8 RGB frame for the given face state."""
        img = self._base.copy()
        self._draw_eyes_brows(img, blink, brow)
        self._draw_mouth(img, openness, width, roundness)
        if self._has_overlay:
            img = np.round(self._ov_rgb + img * (1 - self._ov_a)).astype(np.uint8)
        x0, y0, x1, y1 = self.crop
        person = self._person_small.copy()
        person[y0:y1, x0:x1, :3] = cv2.resize(img, (x1 - x0, y1 - y0), interpolation=cv2.INTER_AREA)
        if offset[0] or offset[1]:
            shift = np.float32([[1, 0, offset[0]], [0, 1, offset[1]]])
            person = cv2.warpAffine(person, shift, (self.size, self.size), flags=cv2.INTER_LINEAR,
                                    borderMode=cv2.BORDER_REPLICATE)
        alpha = person[..., 3:] / 255.0
        return np.clip(person[..., :3] + self.bg * (1 - alpha) + 0.5, 0, 255).astype(np.uint8)

    def mouth_box(self, openness, width, roundness, offset=(0.0, 0.0), margin=1) -> np.ndarray:
        """int (x0, y0, x1, y1) output-pixel box holding every pixel the mouth state touches.

        x1, y1 are exclusive (``img[y0:y1, x0:x1]``); the box includes the shadow under the
        lower lip and ``margin`` pixels for anti-aliasing and the sub-pixel head shift.
        """
        contours = self.mouth_contours(openness, width, roundness)
        shadow = contours[3] + [0, 0.1 * self.B]
        return self._box(np.vstack(contours + [shadow]), offset, margin)

    def eyes_box(self, offset=(0.0, 0.0), margin=1) -> np.ndarray:
        """int (x0, y0, x1, y1) output-pixel box around both eyes, like ``mouth_box``: lids (open or
        closed), lashes, irises and the lid shading above them; brows and glasses frames are outside."""
        lids = [c for s in (-1, 1) for c in self._eye_contours(s)]
        pts = np.vstack(lids + [lids[0] + [0, -0.3 * self.eh], lids[2] + [0, -0.3 * self.eh]])
        w = 0.006 * self.S  # half the lash line drawn along the lid edge
        return self._box(np.vstack([pts + d for d in ([-w, 0], [w, 0], [0, -w], [0, w])]), offset, margin)

    def _box(self, pts, offset, margin) -> np.ndarray:
        """Supersampled points -> int (x0, y0, x1, y1) output pixels, x1/y1 exclusive, ``margin`` added."""
        pts = pts / self.ss + offset
        lo, hi = np.floor(pts.min(0)) - margin, np.floor(pts.max(0)) + 1 + margin
        return np.concatenate([lo, hi]).clip(0, self.size).astype(np.int32)
