"""Fréchet Inception Distance (Heusel et al. 2017, "GANs trained by a two time-scale update rule").

FID = ||mu_a - mu_b||² + Tr(S_a + S_b - 2 (S_a S_b)^½) between Gaussians fitted to two feature sets.
Reference: pytorch-fid 0.3.0 (`fid_score.calculate_frechet_distance`, `calculate_activation_statistics`:
np.cov, ddof=1) with the FID InceptionV3 (`inception.fid_inception_v3`, 2048-d pool3 features; images in
[0, 1] resized to 299² bilinear, align_corners=False, then scaled to [-1, 1]). `FIDInceptionV3` below is
that network written out (torchvision's InceptionV3 with pytorch-fid's TF patches: average pools that
ignore padding, a max pool in Mixed_7c); parameter names match, so its weights load unchanged.

Weights: `pt_inception-2015-12-05-6726825d.pth` from github.com/mseitzer/pytorch-fid/releases (v0.1.1).
Nothing here loads pickle, so convert it once where torch can read it:

    python -c "import torch; from safetensors.torch import save_file; sd = torch.load('pt_inception-2015-12-05-6726825d.pth', map_location='cpu', weights_only=True); save_file({k: v.contiguous() for k, v in sd.items()}, 'pt_inception-2015-12-05.safetensors')"

    extractor = load_inception("assets/eval/pt_inception-2015-12-05.safetensors")
    score = fid(frames_a, frames_b, extractor)  # frames: uint8 (N, H, W, 3) RGB
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import scipy.linalg
import torch
import torch.nn as nn
import torch.nn.functional as F

FeatureExtractor = Callable[[np.ndarray], np.ndarray]  # frames uint8 (N, H, W, 3) RGB -> features (N, D)

INCEPTION_FILE = "pt_inception-2015-12-05.safetensors"
INCEPTION_SOURCE = ("pt_inception-2015-12-05-6726825d.pth from https://github.com/mseitzer/pytorch-fid/releases/"
                    "download/fid_weights/pt_inception-2015-12-05-6726825d.pth")
DEFAULT_INCEPTION = Path(__file__).resolve().parents[2] / "assets" / "eval" / INCEPTION_FILE


# ---------------------------------------------------------------- the distance
def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), as pytorch-fid computes it.

    sqrtm of the product; if that is not finite (singular product) eps·I is added to both covariances;
    a small imaginary part from round-off is dropped, a large one (> 1e-3 on the diagonal) is an error.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
        raise ValueError(f"mismatched statistics: means {mu1.shape} vs {mu2.shape}, "
                         f"covariances {sigma1.shape} vs {sigma2.shape}")
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        offset = np.eye(len(sigma1)) * eps
        covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"sqrtm has an imaginary component {np.abs(covmean.imag).max():.3g}: "
                             "the covariances are degenerate (too few samples for the feature size?)")
        covmean = covmean.real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def feature_statistics(features, ddof: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and covariance (D, D) of features (N, D). ddof=1 is np.cov (pytorch-fid); StyleGAN-V uses 0."""
    x = np.asarray(features, np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"features must be (N >= 2, D), got {x.shape}")
    return x.mean(axis=0), np.cov(x, rowvar=False, ddof=ddof).reshape(x.shape[1], x.shape[1])


def fid(frames_a: np.ndarray, frames_b: np.ndarray, extractor: FeatureExtractor) -> float:
    """FID between two frame sets (uint8 (N, H, W, 3)) under `extractor` (e.g. `load_inception()`)."""
    return frechet_distance(*feature_statistics(extractor(frames_a)), *feature_statistics(extractor(frames_b)))


# ---------------------------------------------------------------- FID InceptionV3 (pytorch-fid)
class BasicConv2d(nn.Module):
    def __init__(self, cin, cout, kernel, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


def _chain(x, *layers):
    for layer in layers:
        x = layer(x)
    return x


def _avg_pool(x):  # TF's average pool ignores the zero padding (pytorch-fid's patch)
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):  # Mixed_5b..5d
    def __init__(self, cin, pool_features):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 64, 1)
        self.branch5x5_1, self.branch5x5_2 = BasicConv2d(cin, 48, 1), BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2, self.branch3x3dbl_3 = BasicConv2d(64, 96, 3, padding=1), BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(cin, pool_features, 1)

    def forward(self, x):
        return torch.cat([self.branch1x1(x), _chain(x, self.branch5x5_1, self.branch5x5_2),
                          _chain(x, self.branch3x3dbl_1, self.branch3x3dbl_2, self.branch3x3dbl_3),
                          self.branch_pool(_avg_pool(x))], 1)


class InceptionB(nn.Module):  # Mixed_6a: grid reduction
    def __init__(self, cin):
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2, self.branch3x3dbl_3 = BasicConv2d(64, 96, 3, padding=1), BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x):
        return torch.cat([self.branch3x3(x), _chain(x, self.branch3x3dbl_1, self.branch3x3dbl_2, self.branch3x3dbl_3),
                          F.max_pool2d(x, 3, stride=2)], 1)


class InceptionC(nn.Module):  # Mixed_6b..6e: factorised 7x7
    def __init__(self, cin, c7):
        super().__init__()
        row, col = dict(kernel=(1, 7), padding=(0, 3)), dict(kernel=(7, 1), padding=(3, 0))
        self.branch1x1 = BasicConv2d(cin, 192, 1)
        self.branch7x7_1, self.branch7x7_2 = BasicConv2d(cin, c7, 1), BasicConv2d(c7, c7, **row)
        self.branch7x7_3 = BasicConv2d(c7, 192, **col)
        self.branch7x7dbl_1, self.branch7x7dbl_2 = BasicConv2d(cin, c7, 1), BasicConv2d(c7, c7, **col)
        self.branch7x7dbl_3, self.branch7x7dbl_4 = BasicConv2d(c7, c7, **row), BasicConv2d(c7, c7, **col)
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, **row)
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def forward(self, x):
        return torch.cat([self.branch1x1(x), _chain(x, self.branch7x7_1, self.branch7x7_2, self.branch7x7_3),
                          _chain(x, self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3,
                                 self.branch7x7dbl_4, self.branch7x7dbl_5),
                          self.branch_pool(_avg_pool(x))], 1)


class InceptionD(nn.Module):  # Mixed_7a: grid reduction
    def __init__(self, cin):
        super().__init__()
        self.branch3x3_1, self.branch3x3_2 = BasicConv2d(cin, 192, 1), BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x):
        return torch.cat([_chain(x, self.branch3x3_1, self.branch3x3_2),
                          _chain(x, self.branch7x7x3_1, self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4),
                          F.max_pool2d(x, 3, stride=2)], 1)


class InceptionE(nn.Module):  # Mixed_7b (average pool) and Mixed_7c (max pool: the FID network's quirk)
    def __init__(self, cin, max_pool: bool):
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = BasicConv2d(cin, 320, 1)
        self.branch3x3_1 = BasicConv2d(cin, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1, self.branch3x3dbl_2 = BasicConv2d(cin, 448, 1), BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def forward(self, x):
        a = self.branch3x3_1(x)
        d = _chain(x, self.branch3x3dbl_1, self.branch3x3dbl_2)
        pool = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _avg_pool(x)
        return torch.cat([self.branch1x1(x), self.branch3x3_2a(a), self.branch3x3_2b(a),
                          self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d), self.branch_pool(pool)], 1)


class FIDInceptionV3(nn.Module):
    """pytorch-fid's InceptionV3 up to pool3: images (N, 3, H, W) in [0, 1] -> features (N, 2048)."""

    MIXED = ("Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e",
             "Mixed_7a", "Mixed_7b", "Mixed_7c")

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.Mixed_5b, self.Mixed_5c, self.Mixed_5d = InceptionA(192, 32), InceptionA(256, 64), InceptionA(288, 64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b, self.Mixed_6c = InceptionC(768, 128), InceptionC(768, 160)
        self.Mixed_6d, self.Mixed_6e = InceptionC(768, 160), InceptionC(768, 192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b, self.Mixed_7c = InceptionE(1280, max_pool=False), InceptionE(2048, max_pool=True)

    def forward(self, x):
        x = 2 * F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False) - 1  # (N, 3, 299, 299)
        x = F.max_pool2d(_chain(x, self.Conv2d_1a_3x3, self.Conv2d_2a_3x3, self.Conv2d_2b_3x3), 3, stride=2)
        x = F.max_pool2d(_chain(x, self.Conv2d_3b_1x1, self.Conv2d_4a_3x3), 3, stride=2)  # (N, 192, 35, 35)
        x = _chain(x, *(getattr(self, name) for name in self.MIXED))  # (N, 2048, 8, 8)
        return x.mean(dim=(2, 3))  # (N, 2048) pool3


@torch.no_grad()
def extract_features(net: nn.Module, frames: np.ndarray, batch_size: int = 50) -> np.ndarray:
    """Frames uint8 (N, H, W, 3) -> net features (N, D); frames enter as [0, 1] floats (ToTensor's scaling)."""
    net.eval()
    device = next(net.parameters()).device
    out = []
    for i in range(0, len(frames), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(frames[i : i + batch_size])).to(device)
        out.append(net(x.permute(0, 3, 1, 2).float() / 255).double().cpu().numpy())
    return np.concatenate(out)


def load_inception(path=DEFAULT_INCEPTION, device="cpu", batch_size: int = 50) -> FeatureExtractor:
    """The FID feature extractor from a safetensors conversion of pytorch-fid's weights (see module doc)."""
    from safetensors.torch import load_file

    if not Path(path).exists():
        raise FileNotFoundError(f"no FID Inception weights at {path}: it expects {INCEPTION_FILE}, a safetensors "
                                f"conversion of {INCEPTION_SOURCE} (conversion command in pipeline/eval/fid.py)")
    state = {k: v for k, v in load_file(str(path)).items() if not k.startswith("fc.")}  # logits are not used
    with torch.device("meta"):  # no random init: every tensor comes from the file
        net = FIDInceptionV3()
    net.load_state_dict(state, assign=True)
    net = net.to(device).eval()
    return lambda frames: extract_features(net, frames, batch_size)
