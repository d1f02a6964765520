"""The once-per-identity layers of a procedural portrait (see ``faces.py``): background, body,
hair, beard, shaded face, nose and open eyes in the "person" layer; glasses and moustache in the
overlay. Drawing helpers work on the supersampled canvas with cv2 (LINE_AA, 4 fractional bits)."""

from __future__ import annotations

import cv2
import numpy as np

_SHIFT = 4  # fractional bits for cv2 drawing coordinates


# ---------------------------------------------------------------- drawing helpers
def _fix(pts):
    return np.round(np.asarray(pts, np.float64) * (1 << _SHIFT)).astype(np.int32)


def _fill(img, pts, colour):
    cv2.fillPoly(img, [_fix(pts)], tuple(float(c) for c in colour), cv2.LINE_AA, _SHIFT)


def _line(img, pts, colour, thick):
    cv2.polylines(img, [_fix(pts)], False, tuple(float(c) for c in colour),
                  max(1, int(round(thick))), cv2.LINE_AA, _SHIFT)


def _arc(cx, cy, rx, ry, a0=0.0, a1=2 * np.pi, n=64):
    t = np.linspace(a0, a1, n)
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], 1)


class _Layer:
    """Premultiplied RGB + alpha canvas (float32) that shapes are composited onto."""

    def __init__(self, size):
        self.rgb = np.zeros((size, size, 3), np.float32)
        self.a = np.zeros((size, size), np.float32)

    def mask(self, *polys):
        m = np.zeros(self.a.shape, np.uint8)
        for p in polys:
            _fill(m, p, (255,))
        return m.astype(np.float32) / 255.0

    def add(self, mask, colour, opacity=1.0):
        m = (mask * opacity)[..., None]
        self.rgb = np.asarray(colour, np.float32) * m + self.rgb * (1 - m)
        self.a = m[..., 0] + self.a * (1 - m[..., 0])


class PersonLayers:
    """Mixin of ``FaceRenderer``: draws the layers that never change relative to the head."""

    def _background(self):
        n, (a, b) = self.size, (np.array(self.id.bg_a), np.array(self.id.bg_b))
        y, x = np.mgrid[0:n, 0:n].astype(np.float32) / max(n - 1, 1)
        t = {"vertical": y, "horizontal": x, "flat": np.zeros_like(x),
             "radial": np.clip(np.hypot(x - 0.5, y - 0.4) * 1.6, 0, 1)}[self.id.bg_mode]
        return (a * (1 - t[..., None]) + b * t[..., None]).astype(np.float32)

    def _face_outline(self, grow=1.0, n=96):
        t = np.linspace(0, 2 * np.pi, n, endpoint=False)
        e = 2.0 / self.id.square  # superellipse: squarer faces for larger `square`
        x = np.sign(np.cos(t)) * np.abs(np.cos(t)) ** e
        y = np.sign(np.sin(t)) * np.abs(np.sin(t)) ** e
        x = x * (1 - self.id.jaw * np.clip(y, 0, 1) ** 1.5)  # narrower towards the chin
        return np.stack([self.cx + grow * self.fw * x, self.cy + grow * self.fh * y], 1)

    def _person(self) -> _Layer:
        L, fw, fh, cx, cy = _Layer(self.S), self.fw, self.fh, self.cx, self.cy
        hair = np.array(self.id.hair_colour)
        self._hair_back(L, hair)
        body = _arc(cx, cy + 1.95 * fh, 2.1 * fw, 0.8 * fh)
        L.add(L.mask(body), self.id.shirt)
        neck = [(cx - 0.42 * fw, cy + 0.3 * fh), (cx + 0.42 * fw, cy + 0.3 * fh),
                (cx + 0.45 * fw, cy + 1.25 * fh), (cx - 0.45 * fw, cy + 1.25 * fh)]
        top = cy + 1.15 * fh
        collar = ([(cx - 0.5 * fw, top), (cx + 0.5 * fw, top), (cx, top + 0.45 * fh)]
                  if self.id.neckline == "v" else _arc(cx, top, 0.55 * fw, 0.16 * fh))
        L.add(L.mask(neck, collar), self.skin * 0.86)
        for s in (-1, 1):  # ears
            ex, ey = cx + s * 0.96 * fw, self.eye_y + 0.12 * fh
            L.add(L.mask(_arc(ex, ey, 0.13 * fw, 0.25 * fw)), self.skin * 0.93)
            L.add(L.mask(_arc(ex + s * 0.02 * fw, ey, 0.06 * fw, 0.15 * fw)), self.skin * 0.78)
        self.face_mask = L.mask(self._face_outline())
        L.add(self.face_mask, self.skin)
        self._beard(L, np.array(self.id.brow_colour) / 0.7)
        self._hair_front(L, hair)
        self._shade(L)
        self._nose(L)
        self._eyes(L)
        return L

    def _hair_back(self, L, hair):
        fw, fh, cx, cy, st = self.fw, self.fh, self.cx, self.cy, self.id.hair_style
        if st == "long":
            L.add(L.mask(np.vstack([_arc(cx, cy - 0.1 * fh, 1.18 * fw, 1.05 * fh, np.pi, 2 * np.pi),
                                    [(cx + 1.3 * fw, cy + 1.5 * fh), (cx - 1.3 * fw, cy + 1.5 * fh)]])),
                  self._hair_texture(hair, 11))
        elif st == "bob":
            L.add(L.mask(_arc(cx, cy - 0.05 * fh, 1.2 * fw, 0.95 * fh)), self._hair_texture(hair, 12))
        elif st == "afro":
            t = np.linspace(0, 2 * np.pi, 160)
            r = 1 + 0.04 * np.sin(17 * t)  # bumpy curls along the outline
            pts = np.stack([cx + 1.5 * fw * r * np.cos(t), cy - 0.25 * fh + 1.1 * fh * r * np.sin(t)], 1)
            L.add(L.mask(pts), self._hair_texture(hair, 13))
        elif st == "bun":
            L.add(L.mask(_arc(cx, cy - 1.08 * fh, 0.38 * fw, 0.32 * fw)), self._hair_texture(hair, 14))

    def _hair_front(self, L, hair):
        st, fw, fh, cx, cy = self.id.hair_style, self.fw, self.fh, self.cx, self.cy
        if st == "bald":
            return
        v = self.id.hair_volume if st != "buzz" else 1.02
        temple = self.eye_y - (0.02 if st in ("long", "bob") else 0.12) * fh
        outer = _arc(cx, cy - 0.02 * fh, v * 1.02 * fw, v * 1.04 * fh, np.pi, 2 * np.pi)
        xs = np.linspace(1, -1, 40)
        part = 0.35 if st == "sidepart" else 0.0  # lower fringe sweeping over one side
        yh = cy - self.id.hairline * fh + part * fh * 0.3 * np.clip(-xs, 0, 1) ** 0.7
        line = np.stack([cx + 0.97 * fw * xs, yh + (temple - yh) * np.abs(xs) ** 3], 1)
        start, end = [(cx - v * 1.02 * fw, temple)], [(cx + v * 1.02 * fw, temple)]
        cap = np.vstack([start, outer, end, line])
        colour = hair * 0.55 + self.skin * 0.45 if st == "buzz" else self._hair_texture(hair, 15)
        L.add(L.mask(cap), colour)

    def _hair_texture(self, hair, salt):
        """Flat hair colour with strands: thin lighter/darker curves (deterministic per identity)."""
        img = np.empty((self.S, self.S, 3), np.float32)
        img[:] = hair
        rng = np.random.default_rng([int(self.fw * 1000), salt])
        for _ in range(60):
            x0, y0 = rng.uniform(self.cx - 1.5 * self.fw, self.cx + 1.5 * self.fw), \
                rng.uniform(self.cy - 1.3 * self.fh, self.cy + 1.5 * self.fh)
            t = np.linspace(0, 1, 12)
            pts = np.stack([x0 + rng.uniform(-0.4, 0.4) * self.fw * t ** 1.5,
                            y0 + rng.uniform(0.2, 0.8) * self.fh * t], 1)
            _line(img, pts, np.clip(hair * rng.uniform(0.75, 1.3), 0, 255), self.ss * 0.6)
        return img

    def _beard(self, L, hair):
        kind, (mx, my), B = self.id.beard, self.mouth, self.B
        if kind in ("full", "stubble"):
            y, x = np.mgrid[0:self.S, 0:self.S].astype(np.float32)
            y0 = self.cy + 0.3 * self.fh - 0.45 * self.fh * ((x - self.cx) / self.fw) ** 2
            region = np.clip((y - y0) / (0.08 * self.fh), 0, 1) * L.mask(self._face_outline(1.04))
            L.add(region, hair * 0.9, 0.85 if kind == "full" else 0.3)
        elif kind == "goatee":
            L.add(L.mask(_arc(mx, my + 0.55 * B, 0.55 * B, 0.6 * B)), hair * 0.9, 0.9)

    def _shade(self, L):
        """Soft shadows (eye sockets, nose side, under chin), cheek blush and a key light."""
        S, fw, fh, cx, cy = self.S, self.fw, self.fh, self.cx, self.cy
        sig = 0.08 * fw
        dark = np.zeros((S, S), np.uint8)
        for s in (-1, 1):
            _fill(dark, _arc(cx + s * self.id.eye_spacing * fw, self.eye_y, 1.3 * self.ew,
                             1.7 * self.eh), (70,))
        nose_y = cy + self.id.nose_len * fh
        _fill(dark, [(cx + 0.05 * fw, self.eye_y), (cx + 0.12 * fw, self.eye_y),
                     (cx + 0.2 * fw, nose_y), (cx + 0.08 * fw, nose_y)], (150,))
        _fill(dark, _arc(cx, cy + 1.02 * fh, 0.5 * fw, 0.2 * fh), (255,))  # chin shadow on neck
        dark = cv2.GaussianBlur(dark.astype(np.float32) / 255, (0, 0), sig)[..., None]
        L.rgb *= 1 - 0.35 * dark
        blush = np.zeros((S, S), np.float32)
        for s in (-1, 1):
            _fill(blush, _arc(cx + s * 0.55 * fw, cy + 0.25 * fh, 0.2 * fw, 0.13 * fw), (1.0,))
        blush = cv2.GaussianBlur(blush, (0, 0), 2 * sig)[..., None] * self.face_mask[..., None]
        L.rgb += blush * np.array([12, -8, -6], np.float32) * L.a[..., None]
        y, x = np.mgrid[0:S, 0:S].astype(np.float32)
        r2 = ((x - cx) / fw) ** 2 + ((y - cy) / fh) ** 2
        light = 1.08 - 0.07 * (x - cx) / fw - 0.05 * (y - cy) / fh - 0.08 * r2
        L.rgb = np.clip(L.rgb * np.clip(light, 0.65, 1.15)[..., None], 0, 255)

    def _nose(self, L):
        cx, ny, nw = self.cx, self.cy + self.id.nose_len * self.fh, self.id.nose_w * self.fw * 1.4
        skin = L.rgb[int(ny), int(cx)]
        for s in (-1, 1):
            L.add(L.mask(_arc(cx + s * 0.42 * nw, ny + 0.02 * nw, 0.2 * nw, 0.1 * nw)), skin * 0.4)
        ala = np.zeros(L.a.shape, np.uint8)
        for s in (-1, 1):
            _line(ala, _arc(cx + s * 0.45 * nw, ny - 0.05 * nw, 0.22 * nw, 0.25 * nw,
                            np.pi * (0.8 if s < 0 else -0.2), np.pi * (1.5 if s < 0 else 0.5)),
                  (255,), 0.05 * nw)
        L.add(ala.astype(np.float32) / 255, skin * 0.7, 0.6)
        L.add(L.mask(_arc(cx, ny - 0.2 * nw, 0.15 * nw, 0.12 * nw)), np.minimum(skin * 1.15, 255), 0.5)

    def _eye_contours(self, s, n=24):
        """Upper and lower lid contours (n, 2) of eye ``s`` (-1 image-left, +1 image-right)."""
        ex = self.cx + s * self.id.eye_spacing * self.fw
        u = np.linspace(-1, 1, n)
        tilt = s * self.id.eye_tilt * u * self.ew  # outer corners up or down
        xs = ex + u * self.ew
        upper = self.eye_y - self.eh * (1 - u ** 2) ** 0.8 - tilt
        lower = self.eye_y + 0.7 * self.eh * (1 - u ** 2) ** 1.1 - tilt
        return np.stack([xs, upper], 1), np.stack([xs, lower], 1)

    def _eyes(self, L):
        self.lid_colour = []
        r = min(self.eh * 1.05, self.ew * 0.45)
        for s in (-1, 1):
            up, lo = self._eye_contours(s)
            ex = self.cx + s * self.id.eye_spacing * self.fw
            self.lid_colour.append(L.rgb[int(self.eye_y - 1.6 * self.eh), int(ex)] * 0.93)
            sclera = L.mask(np.vstack([up, lo[::-1]]))
            L.add(sclera, (238, 236, 232))
            ix, iy = ex + self.id.gaze[0] * self.ew * 0.4, self.eye_y + self.id.gaze[1] * self.eh * 0.3
            L.add(L.mask(_arc(ix, iy, r, r)) * sclera, np.array(self.id.iris) * 0.6)
            L.add(L.mask(_arc(ix, iy, 0.82 * r, 0.82 * r)) * sclera, self.id.iris)
            L.add(L.mask(_arc(ix, iy, 0.4 * r, 0.4 * r)) * sclera, (15, 12, 12))
            L.add(L.mask(_arc(ix + 0.3 * r, iy - 0.3 * r, 0.16 * r, 0.16 * r)) * sclera, (250, 250, 250))
            crease = np.zeros(L.a.shape, np.uint8)
            _line(crease, up + [0, -0.45 * self.eh], (255,), 0.015 * self.fw)
            L.add(crease.astype(np.float32) / 255, self.lid_colour[-1] * 0.78)

    def _overlay(self) -> _Layer:
        L, (mx, my), B = _Layer(self.S), self.mouth, self.B
        col, kind = np.array(self.id.glasses_colour), self.id.glasses
        if kind != "none":
            frame = np.zeros((self.S, self.S), np.uint8)
            rx, ry, th = 1.45 * self.ew, 1.35 * self.ew * (0.8 if kind == "rect" else 1.0), 0.03 * self.fw
            for s in (-1, 1):
                gx = self.cx + s * self.id.eye_spacing * self.fw
                lens = (_arc(gx, self.eye_y, rx, ry) if kind == "round" else
                        [(gx - rx, self.eye_y - ry), (gx + rx, self.eye_y - ry),
                         (gx + rx * 0.9, self.eye_y + ry), (gx - rx * 0.9, self.eye_y + ry)])
                L.add(L.mask(lens), (235, 240, 245), 0.12)
                _line(frame, np.vstack([lens, lens[:1]]), (255,), th)
                _line(frame, [(gx + s * rx, self.eye_y - 0.6 * ry), (self.cx + s * 1.0 * self.fw,
                                                                      self.eye_y)], (255,), th)
            _line(frame, _arc(self.cx, self.eye_y, self.id.eye_spacing * self.fw - rx, 0.3 * ry,
                              np.pi * 1.1, np.pi * 1.9), (255,), th)
            L.add(frame.astype(np.float32) / 255, col)
        if self.id.beard in ("full", "moustache", "goatee"):
            top = [(mx - 1.05 * B, my - 0.02 * B), (mx - 0.5 * B, my - 0.42 * B), (mx, my - 0.36 * B),
                   (mx + 0.5 * B, my - 0.42 * B), (mx + 1.05 * B, my - 0.02 * B),
                   (mx + 0.5 * B, my - 0.2 * B), (mx, my - 0.16 * B), (mx - 0.5 * B, my - 0.2 * B)]
            L.add(L.mask(top), np.array(self.id.brow_colour) * 1.1, 0.95)
        return L

    # ------------------------------------------------------------ per-frame parts
