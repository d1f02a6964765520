"""Is this portrait a real photo, or from the project's synthetic (procedurally drawn) domain?

The rule looks only at the picture's fine texture, never at a model (the VAE will change): the
generator paints flat colour regions with smooth shading, so half of its pixels have almost no
pixel-scale detail; a camera photo has sensor noise and skin, hair and fabric texture almost
everywhere. The measure is the median over pixels of |picture − Gaussian blur (σ = 1 px)|, at
256 px on the longer side. Measured (docs/PHOTO.md; grey levels):

===========================================  =================
picture                                       median detail
===========================================  =================
generator portraits (60 seeds, 128² + 256²)   ≤ 0.26
  … saved as JPEG quality 90 / 50             ≤ 0.48 / ≤ 0.57
Grace Hopper, astronaut, cat, coffee          2.06 – 2.40
  … blurred σ = 2 – 3 px, or only 128 px tall  0.71 – 1.05
===========================================  =================
"""
from __future__ import annotations

import numpy as np

ANALYSIS_SIDE = 256  # pictures are compared at this longer side
DETAIL_MIN = 0.64  # median detail (grey levels) from which a picture counts as a photo


def median_detail(rgb: np.ndarray) -> float:
    """Median over pixels of the mean-over-RGB |x − GaussianBlur(x, σ=1)|, in grey levels (0 – 255).

    rgb: (H, W, 3) uint8 RGB of any size; it is resized to ``ANALYSIS_SIDE`` px on its longer side.
    """
    import cv2

    rgb = np.ascontiguousarray(rgb[..., :3], dtype=np.uint8)
    s = ANALYSIS_SIDE / max(rgb.shape[:2])
    img = cv2.resize(rgb, None, fx=s, fy=s, interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
    img = img.astype(np.float32)
    return float(np.median(np.abs(img - cv2.GaussianBlur(img, (0, 0), 1.0)).mean(-1)))


def is_photo(rgb: np.ndarray) -> bool:
    """True for a real (camera) photo, False for the synthetic cartoon domain the model learnt.

    rgb: (H, W, 3) uint8 RGB, any size. Cost: a few ms. ``render="auto"`` uses it to choose the
    photo renderer over the diffusion render.
    """
    return median_detail(rgb) >= DETAIL_MIN

