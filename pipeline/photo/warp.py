"""Piecewise-affine image warp on a triangulated set of control points.

The control points are the face mesh's points plus a ring of fixed points around the face and
the window's border. A frame moves some points; every triangle with a moved corner maps affinely
from its moved (destination) shape back to its source shape, and every other pixel keeps its
own value. Because the ring never moves, the displacement falls linearly to zero between the face
and the ring and is exactly zero outside it: the warp is continuous (no seam) and the picture
outside the ring is the photo, pixel for pixel.

Cost per frame: one ``cv2.fillConvexPoly`` per moved triangle (a few µs each) to label the
destination pixels, one vectorised affine over those pixels and one ``cv2.remap``.
"""
from __future__ import annotations

import numpy as np

MOVED = 0.05  # pixels: a control point that moves less than this counts as still


class PiecewiseAffineWarp:
    """Warp of a (S, S, 3) uint8 image driven by control-point displacements.

    points: (N, 2) float source control points in image pixels (x, y). Triangulated once
    (Delaunay); ``warp(image, disp)`` takes disp (N, 2) pixels and returns the warped image.
    """

    def __init__(self, points: np.ndarray, size: int):
        from scipy.spatial import Delaunay

        self.points = np.asarray(points, np.float64)
        self.size = size
        self.tris = Delaunay(self.points).simplices.astype(np.int32)  # (M, 3)
        ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
        self.grid = np.stack([xs, ys], -1)  # (S, S, 2) identity map
        self._label = np.zeros((size, size), np.int32)

    def backward_map(self, disp: np.ndarray) -> tuple[np.ndarray, tuple[int, int, int, int]] | None:
        """Source coordinates (h, w, 2) float32 for the bounding box (x0, y0, x1, y1) of the moved
        triangles, or None when nothing moves. disp: (N, 2) pixels; moves under ``MOVED`` count
        as none (an invisible step of at most ``MOVED`` px at the edge of the moving region)."""
        import cv2

        moved = np.abs(disp).max(1) > MOVED  # (N,)
        active = np.flatnonzero(moved[self.tris].any(1))
        if active.size == 0:
            return None
        disp = np.where(moved[:, None], disp, 0.0)
        tri_d = (self.points + disp)[self.tris[active]]  # (K, 3, 2) destination triangles
        tri_s = self.points[self.tris[active]]  # (K, 3, 2) source triangles
        both = np.concatenate([tri_d, tri_s], 1).reshape(-1, 2)
        x0, y0 = np.clip(np.floor(both.min(0)).astype(int), 0, self.size)
        x1, y1 = np.clip(np.ceil(both.max(0)).astype(int) + 1, 0, self.size)
        coef = np.zeros((len(active) + 1, 6), np.float32)  # row 0: identity for unlabelled pixels
        coef[0] = (1, 0, 0, 0, 1, 0)
        coef[1:] = _affines(tri_d, tri_s)
        label = self._label[y0:y1, x0:x1]
        label[:] = 0
        fix = np.round((tri_d - [x0, y0]) * 16).astype(np.int32)
        for k in range(len(fix)):
            cv2.fillConvexPoly(label, fix[k], k + 1, cv2.LINE_8, 4)
        c = coef.take(label, axis=0)  # (h, w, 6)
        xy = self.grid[y0:y1, x0:x1]
        x, y = xy[..., 0], xy[..., 1]
        out = np.stack([c[..., 0] * x + c[..., 1] * y + c[..., 2], c[..., 3] * x + c[..., 4] * y + c[..., 5]], -1)
        return out, (int(x0), int(y0), int(x1), int(y1))

    def interpolate(self, values: np.ndarray) -> np.ndarray:
        """Piecewise-linear interpolation of per-point values (N,) over the triangulation:
        (S, S) float32, 0 where no triangle covers a pixel. Run once (loops over all triangles)."""
        import cv2

        label = np.zeros((self.size, self.size), np.int32)
        for k, t in enumerate(self.tris):
            cv2.fillConvexPoly(label, np.round(self.points[t] * 16).astype(np.int32), k + 1, cv2.LINE_8, 4)
        out = np.zeros((self.size, self.size), np.float32)
        inside = label > 0
        tri = self.tris[label[inside] - 1]  # (P, 3)
        a, b, c = (self.points[tri[:, i]] for i in range(3))
        p = self.grid[inside].astype(np.float64)
        v0, v1, v2 = b - a, c - a, p - a
        den = v0[:, 0] * v1[:, 1] - v1[:, 0] * v0[:, 1]
        den = np.where(np.abs(den) < 1e-12, 1e-12, den)
        l1 = (v2[:, 0] * v1[:, 1] - v1[:, 0] * v2[:, 1]) / den
        l2 = (v0[:, 0] * v2[:, 1] - v2[:, 0] * v0[:, 1]) / den
        val = values[tri]
        out[inside] = (1 - l1 - l2) * val[:, 0] + l1 * val[:, 1] + l2 * val[:, 2]
        return out


def _affines(dst: np.ndarray, src: np.ndarray) -> np.ndarray:
    """Per-triangle affine (K, 6) = (a, b, c, d, e, f) with src = (a x + b y + c, d x + e y + f)
    for (x, y) in dst. dst, src: (K, 3, 2). Degenerate destination triangles get the identity."""
    e1, e2 = dst[:, 1] - dst[:, 0], dst[:, 2] - dst[:, 0]  # (K, 2)
    f1, f2 = src[:, 1] - src[:, 0], src[:, 2] - src[:, 0]
    det = e1[:, 0] * e2[:, 1] - e2[:, 0] * e1[:, 1]
    ok = np.abs(det) > 1e-9
    det = np.where(ok, det, 1.0)
    inv = np.stack([e2[:, 1], -e2[:, 0], -e1[:, 1], e1[:, 0]], 1).reshape(-1, 2, 2) / det[:, None, None]
    M = np.stack([f1, f2], 2) @ inv  # (K, 2, 2): src offsets = M @ dst offsets
    t = src[:, 0] - np.einsum("kij,kj->ki", M, dst[:, 0])
    out = np.concatenate([M[:, 0], t[:, :1], M[:, 1], t[:, 1:]], 1)
    out[~ok] = (1, 0, 0, 0, 1, 0)
    return out
