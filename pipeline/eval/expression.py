"""E-FID (expression FID): the Fréchet distance between Gaussians fitted to facial-expression features.

Reference: EMO (Tian et al. 2024, "Emote Portrait Alive"), which introduced E-FID for talking heads: the
expression parameters of a 3-D face reconstruction (Deep3DFaceRecon, Deng et al. 2019: 64 expression
coefficients per frame) of every frame of the generated and of the real videos, and the FID of the two
sets (`fid.frechet_distance` with pytorch-fid's statistics, ddof=1).

The reconstruction network is not shipped here, so the extractor is pluggable: any
`ExpressionExtractor`, frames uint8 (N, H, W, 3) RGB -> expression features (N, D). A value is
comparable with a paper's only when the extractor is the paper's (D3DFR expression coefficients).

    score = e_fid(generated_frames, real_frames, extractor)
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from .fid import feature_statistics, frechet_distance

ExpressionExtractor = Callable[[np.ndarray], np.ndarray]  # frames uint8 (N, H, W, 3) -> (N, D)


def e_fid_from_features(features_a, features_b) -> float:
    """E-FID of two expression-feature sets (N_a, D) and (N_b, D)."""
    a, b = np.asarray(features_a, np.float64), np.asarray(features_b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"expression features must be (N, D) with one D, got {a.shape} and {b.shape}")
    return frechet_distance(*feature_statistics(a), *feature_statistics(b))


def e_fid(frames_a: np.ndarray, frames_b: np.ndarray, extractor: ExpressionExtractor) -> float:
    """E-FID between two frame sets under `extractor` (e.g. D3DFR expression coefficients)."""
    return e_fid_from_features(extractor(frames_a), extractor(frames_b))
