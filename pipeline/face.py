"""Portrait preprocessing: find the face (OpenCV Haar cascade), square crop with margin, resize."""
from __future__ import annotations

import numpy as np

FACE_MARGIN = 1.9  # crop side / detected face side: head, hair and a bit of shoulders, like training data


def detect_face(rgb: np.ndarray) -> tuple[int, int, int, int] | None:
    """Largest frontal face (x, y, w, h) or None. Runs on a <= 640-px copy for speed."""
    import cv2

    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    s = min(1.0, 640 / max(gray.shape))
    small = cv2.resize(gray, None, fx=s, fy=s, interpolation=cv2.INTER_AREA) if s < 1 else gray
    cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
    faces = cascade.detectMultiScale(small, scaleFactor=1.1, minNeighbors=5, minSize=(24, 24))
    if len(faces) == 0:
        return None
    x, y, w, h = max(faces, key=lambda f: f[2] * f[3])
    return tuple(int(round(v / s)) for v in (x, y, w, h))


def square_crop(rgb: np.ndarray, box: tuple[int, int, int, int] | None, margin: float = FACE_MARGIN) -> np.ndarray:
    """Square crop around `box` (edge-padded where it leaves the image), or the centre square."""
    H, W = rgb.shape[:2]
    if box is None:
        side = min(H, W)
        cx, cy = W / 2, H / 2
    else:
        x, y, w, h = box
        side = int(max(w, h) * margin)
        cx, cy = x + w / 2, y + h / 2
    x0, y0 = int(round(cx - side / 2)), int(round(cy - side / 2))
    pad = max(0, -x0, -y0, x0 + side - W, y0 + side - H)
    if pad:
        rgb = np.pad(rgb, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
        x0, y0 = x0 + pad, y0 + pad
    return rgb[y0 : y0 + side, x0 : x0 + side]


def prepare_portrait(rgb: np.ndarray, size: tuple[int, int], detect: bool = True) -> tuple[np.ndarray, list[str]]:
    """RGB uint8 -> (model-size RGB uint8, warnings). No face found: centre crop and a warning."""
    import cv2

    warnings = []
    box = detect_face(rgb) if detect else None
    if detect and box is None:
        warnings.append("No face was detected in the portrait; using a centre crop instead.")
    crop = square_crop(rgb, box)
    interp = cv2.INTER_AREA if crop.shape[0] > size[0] else cv2.INTER_CUBIC
    return cv2.resize(crop, (size[1], size[0]), interpolation=interp), warnings
