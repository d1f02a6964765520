"""Image input: any file a visitor or a phone produces -> upright RGB uint8.

Formats OpenCV or PIL read (PNG, JPEG, WebP, BMP, TIFF, GIF, AVIF; 8/16-bit, float, grayscale,
alpha composited on white); the EXIF orientation is applied first (all eight values); huge images
are refused from their header or downscaled.
"""
from __future__ import annotations

import io

import numpy as np

from .errors import InputError
from .media import _check_file

MAX_IMAGE_SIDE = 4096  # huge photos are downscaled before face detection
MAX_IMAGE_PIXELS = 100_000_000  # refused from the header: decoding would need gigabytes


def to_rgb8(img: np.ndarray) -> np.ndarray:
    """Any OpenCV/PIL-style array (gray, BGR/RGB, alpha, 8/16-bit, float) -> RGB uint8 (H, W, 3).

    Arrays from OpenCV are BGR(A); call with the channel order already RGB(A).
    """
    img = np.asarray(img)
    if img.ndim == 2:
        img = img[:, :, None]
    if img.ndim != 3 or img.shape[2] not in (1, 2, 3, 4) or min(img.shape[:2]) < 1:
        raise InputError(f"unsupported image array of shape {img.shape}")
    if img.dtype == np.uint16:
        img = img.astype(np.float32) / 65535.0
    elif img.dtype != np.uint8:
        img = np.nan_to_num(img.astype(np.float32))
        img = img / 255.0 if img.max() > 1.0 else img
    else:
        img = img.astype(np.float32) / 255.0
    color = img[:, :, :3] if img.shape[2] >= 3 else np.repeat(img[:, :, :1], 3, axis=2)
    if img.shape[2] in (2, 4):  # alpha: composite over white, like a browser shows it
        a = img[:, :, -1:]
        color = color * a + (1 - a)
    return np.clip(color * 255 + 0.5, 0, 255).astype(np.uint8)


def exif_orient(img: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF Orientation value (1-8) to a stored (H, W, ...) array: the image as viewers show it.

    Same transforms as PIL's `ImageOps.exif_transpose`; works on any dtype (16-bit stays 16-bit).
    """
    ops = {2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
           5: lambda a: a.swapaxes(0, 1), 6: lambda a: np.rot90(a, -1),
           7: lambda a: a.swapaxes(0, 1)[::-1, ::-1], 8: lambda a: np.rot90(a, 1)}
    return np.ascontiguousarray(ops[orientation](img)) if orientation in ops else img


def _image_header(data: bytes) -> tuple[str | None, float, int]:
    """(format, pixel count, EXIF orientation) from the header only (PIL opens lazily)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.format, im.size[0] * im.size[1], int(im.getexif().get(0x0112, 1) or 1)
    except Image.DecompressionBombError:
        return None, float("inf"), 1
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, TypeError):
        return None, 0, 1


def _pil_decode(data: bytes) -> np.ndarray | None:
    """PIL's decoding, as stored (no orientation): 16-bit and float kept, other modes -> RGB(A) uint8."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.seek(0)  # an animation: its first frame
            if im.mode.startswith("I;16") or im.mode == "I":
                return np.clip(np.asarray(im), 0, 65535).astype(np.uint16)
            if im.mode in ("F", "L", "LA", "RGB", "RGBA"):
                return np.asarray(im)
            has_alpha = "A" in im.getbands() or "transparency" in im.info
            return np.asarray(im.convert("RGBA" if has_alpha else "RGB"))
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError):
        return None


def _cv2_decode(data: bytes) -> np.ndarray | None:
    """OpenCV's decoding at full bit depth, RGB(A) order; IMREAD_UNCHANGED ignores EXIF orientation."""
    import cv2

    try:
        raw = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error:  # e.g. a header whose size OpenCV refuses
        return None
    if raw is not None and raw.ndim == 3 and raw.shape[2] >= 3:  # BGR(A) -> RGB(A)
        raw = raw[:, :, [2, 1, 0] + ([3] if raw.shape[2] == 4 else [])]
    return raw


def load_image(path) -> np.ndarray:
    """Read an image file -> RGB uint8 (H, W, 3), upright as a viewer shows it.

    Order: header (size check, EXIF orientation) -> decode as stored at full bit depth -> orientation
    -> 8-bit RGB -> size limit. OpenCV decodes (PIL when it cannot), except TIFF: both libraries
    apply a TIFF's orientation while decoding (OpenCV fails on values 5-8), so PIL decodes it, once.
    """
    p = _check_file(path, "image")
    data = p.read_bytes()
    fmt, pixels, orientation = _image_header(data)
    if pixels > MAX_IMAGE_PIXELS:
        raise InputError(f"{p.name} is too large to read (over {MAX_IMAGE_PIXELS // 1_000_000} megapixels): "
                         "resize it first")
    raw = None if fmt == "TIFF" else _cv2_decode(data)
    if fmt == "TIFF":
        raw, orientation = _pil_decode(data), 1
    if raw is None:
        raw = _pil_decode(data)
    if raw is None:
        kind = "a HEIC/HEIF photo, which is not supported: export it as JPEG" if data[4:12] in (
            b"ftypheic", b"ftypheix", b"ftypmif1", b"ftyphevc") else "an image (use PNG, JPEG, WebP, BMP or TIFF)"
        raise InputError(f"cannot read {p.name} as {kind}")
    return limit_size(to_rgb8(exif_orient(raw, orientation)))


def limit_size(img: np.ndarray, max_side: int = MAX_IMAGE_SIDE) -> np.ndarray:
    import cv2

    h, w = img.shape[:2]
    if max(h, w) <= max_side:
        return img
    s = max_side / max(h, w)
    return cv2.resize(img, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
