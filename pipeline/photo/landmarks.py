"""Face detection and the 468-point face mesh on photos (MediaPipe FaceMesh, run with LiteRT).

Two plain Apache-2.0 tflite files from the ``mediapipe`` 0.10.21 wheel ship in
``assets/landmarks`` (see its README): ``face_detection_short_range.tflite`` (BlazeFace, 128²
input, 896 anchors) and ``face_landmark.tflite`` (192² face crop -> 468 × (x, y, z)). They run on
``ai-edge-litert``'s interpreter, so neither ``mediapipe`` nor its dependencies are installed.

Coordinates are image pixels (x right, y down). Point indices follow MediaPipe's canonical mesh.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ASSETS = Path(__file__).resolve().parents[2] / "assets" / "landmarks"
DETECTOR_FILE = ASSETS / "face_detection_short_range.tflite"
MESH_FILE = ASSETS / "face_landmark.tflite"
DETECT_SCORE = 0.5  # BlazeFace score threshold (MediaPipe's default)
MESH_SCORE = 0.5  # face-presence probability below which a mesh is rejected
CROP_SCALE = 1.5  # landmark crop side / face size, as MediaPipe's face-mesh graph uses

# Named points of the canonical mesh (image-left is the person's right).
LIPS_UPPER_OUTER = [61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291]
LIPS_LOWER_OUTER = [61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291]
LIPS_UPPER_INNER = [78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308]
LIPS_LOWER_INNER = [78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308]
EYE_R_UPPER = [33, 246, 161, 160, 159, 158, 157, 173, 133]  # image-left eye, corner to corner
EYE_R_LOWER = [33, 7, 163, 144, 145, 153, 154, 155, 133]
EYE_L_UPPER = [263, 466, 388, 387, 386, 385, 384, 398, 362]  # image-right eye, outer to inner
EYE_L_LOWER = [263, 249, 390, 373, 374, 380, 381, 382, 362]
EYE_R_CREASE = [130, 247, 30, 29, 27, 28, 56, 190, 243]  # skin ring just above each upper lid
EYE_L_CREASE = [359, 467, 260, 259, 257, 258, 286, 414, 463]
FACE_OVAL = [10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400,
             377, 152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109]
NOSE_TIP, CHIN, FOREHEAD = 1, 152, 10


@dataclass
class Face:
    """One detected face: detector box and score, and its mesh.

    box: (x0, y0, x1, y1) float pixels; score in [0, 1]; eyes: (2, 2) detector eye keypoints;
    points: (468, 3) float32 mesh (x, y in pixels; z in pixels, relative depth); presence in [0, 1].
    """

    box: np.ndarray
    score: float
    eyes: np.ndarray
    points: np.ndarray | None = None
    presence: float = 0.0


def _anchors() -> np.ndarray:
    """BlazeFace short-range anchors (896, 2): centres in [0, 1] (strides 8, 16, 16, 16)."""
    out = []
    for stride, per_cell in ((8, 2), (16, 6)):
        n = 128 // stride
        ys, xs = np.mgrid[0:n, 0:n]
        centres = np.stack([(xs + 0.5) / n, (ys + 0.5) / n], -1).reshape(-1, 1, 2)
        out.append(np.repeat(centres, per_cell, axis=1).reshape(-1, 2))
    return np.concatenate(out).astype(np.float32)


class _Models:
    """The two interpreters, loaded on first use; LiteRT interpreters are not thread-safe."""

    _lock = threading.Lock()
    _instance = None

    def __init__(self):
        from ai_edge_litert.interpreter import Interpreter

        for f in (DETECTOR_FILE, MESH_FILE):
            if not f.exists():
                raise FileNotFoundError(f"landmark model missing: {f} (see assets/landmarks/README.md)")
        self.det = Interpreter(model_path=str(DETECTOR_FILE), num_threads=1)
        self.mesh = Interpreter(model_path=str(MESH_FILE), num_threads=1)
        self.det.allocate_tensors(), self.mesh.allocate_tensors()
        self.anchors = _anchors()

    @classmethod
    def get(cls) -> "_Models":
        with cls._lock:
            if cls._instance is None:
                cls._instance = cls()
            return cls._instance

    def run(self, which, x: np.ndarray) -> list[np.ndarray]:
        it = self.det if which == "det" else self.mesh
        with self._lock:
            it.set_tensor(it.get_input_details()[0]["index"], x[None].astype(np.float32))
            it.invoke()
            outs = sorted(it.get_output_details(), key=lambda d: -int(np.prod(d["shape"])))
            return [it.get_tensor(d["index"])[0].copy() for d in outs]


def _letterbox(rgb: np.ndarray, side: int) -> tuple[np.ndarray, float, np.ndarray]:
    """Fit the image into side² (aspect kept, zero padding); returns image, scale, offset."""
    import cv2

    h, w = rgb.shape[:2]
    s = side / max(h, w)
    nw, nh = max(1, round(w * s)), max(1, round(h * s))
    small = cv2.resize(rgb, (nw, nh), interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
    out = np.zeros((side, side, 3), np.uint8)
    off = np.array([(side - nw) // 2, (side - nh) // 2])
    out[off[1] : off[1] + nh, off[0] : off[0] + nw] = small
    return out, s, off


def _nms(boxes: np.ndarray, scores: np.ndarray, iou: float = 0.3) -> list[int]:
    order, keep = list(np.argsort(-scores)), []
    while order:
        i = order.pop(0)
        keep.append(i)
        x0 = np.maximum(boxes[i, 0], boxes[order, 0]), np.maximum(boxes[i, 1], boxes[order, 1])
        x1 = np.minimum(boxes[i, 2], boxes[order, 2]), np.minimum(boxes[i, 3], boxes[order, 3])
        inter = np.clip(x1[0] - x0[0], 0, None) * np.clip(x1[1] - x0[1], 0, None)
        area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])  # noqa: E731
        ratio = inter / (area(boxes[i]) + area(boxes[order]) - inter + 1e-9)
        order = [j for j, r in zip(order, ratio) if r < iou]
    return keep


def detect_faces(rgb: np.ndarray, min_score: float = DETECT_SCORE) -> list[Face]:
    """All faces BlazeFace finds in an RGB uint8 (H, W, 3) image, best first (no mesh yet).

    The short-range model is made for faces filling a good part of the frame (selfie distance);
    small faces in a large picture are missed, which callers report as "no usable face".
    """
    m = _Models.get()
    img, s, off = _letterbox(rgb, 128)
    reg, cls = m.run("det", img.astype(np.float32) / 127.5 - 1)  # (896, 16), (896, 1)
    score = 1 / (1 + np.exp(-np.clip(cls[:, 0].astype(np.float64), -100, 100)))
    idx = np.flatnonzero(score >= min_score)
    if idx.size == 0:
        return []
    a = m.anchors[idx] * 128
    centre, size = a + reg[idx, 0:2], reg[idx, 2:4]
    boxes = np.concatenate([centre - size / 2, centre + size / 2], 1)
    eyes = a[:, None] + reg[idx, 4:8].reshape(-1, 2, 2)
    faces = []
    for k in _nms(boxes, score[idx]):
        back = lambda p: (p.reshape(-1, 2) - off) / s  # noqa: E731  letterbox -> image pixels
        faces.append(Face(back(boxes[k]).reshape(-1), float(score[idx][k]), back(eyes[k])))
    return faces


def _crop_transform(centre: np.ndarray, side: float, angle: float) -> np.ndarray:
    """2×3 affine taking image pixels to the 192² crop (rotated so the eyes are level)."""
    c, s = np.cos(angle), np.sin(angle)
    k = 192.0 / side
    rot = np.array([[c, s], [-s, c]]) * k
    return np.hstack([rot, (96.0 - rot @ centre)[:, None]])


def _mesh_once(rgb: np.ndarray, centre, side, angle) -> tuple[np.ndarray, float]:
    import cv2

    A = _crop_transform(np.asarray(centre, np.float64), side, angle)
    crop = cv2.warpAffine(rgb, A, (192, 192), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    pts, flag = _Models.get().run("mesh", crop.astype(np.float32) / 255.0)
    pts = pts.reshape(468, 3)
    Ainv = cv2.invertAffineTransform(A)
    xy = pts[:, :2] @ Ainv[:, :2].T + Ainv[:, 2]
    z = pts[:, 2:] * side / 192.0
    return np.hstack([xy, z]).astype(np.float32), float(1 / (1 + np.exp(-flag.reshape(-1)[0])))


def mesh_face(rgb: np.ndarray, face: Face, passes: int = 2) -> Face:
    """Fill ``face.points`` (468, 3) and ``face.presence``: a crop from the detector box, then a
    second crop re-centred on the first mesh (as MediaPipe's tracking does) for a tighter fit."""
    (x0, y0, x1, y1), eyes = face.box, face.eyes
    d = eyes[1] - eyes[0]  # detector keypoint 0 is image-left eye
    angle = float(np.arctan2(d[1], d[0]))
    centre, side = np.array([(x0 + x1) / 2, (y0 + y1) / 2]), max(x1 - x0, y1 - y0) * CROP_SCALE
    for _ in range(passes):
        pts, presence = _mesh_once(rgb, centre, side, angle)
        r, l = pts[33, :2], pts[263, :2]  # outer eye corners
        angle = float(np.arctan2(l[1] - r[1], l[0] - r[0]))
        lo, hi = pts[:, :2].min(0), pts[:, :2].max(0)
        centre, side = (lo + hi) / 2, float(max(hi - lo)) * CROP_SCALE
    face.points, face.presence = pts, presence
    return face
