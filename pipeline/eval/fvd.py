"""Fréchet Video Distance (Unterthiner et al. 2018, "Towards accurate generative models of video").

FVD is the Fréchet distance (`fid.frechet_distance`) between Gaussians fitted to I3D features of clips.
Reference: StyleGAN-V (Skorokhodov et al. 2022), `src/metrics/frechet_video_distance.py` and
`metric_utils.py`, the protocol LatentSync and most talking-head papers quote:
- the detector is StyleGAN-V's TorchScript port of the tf.hub Kinetics-400 I3D, `i3d_torchscript.pt`
  (https://www.dropbox.com/s/ge9e5ujwgetktms/i3d_torchscript.pt), loaded with `torch.jit.load`;
- each video gives one clip of 16 consecutive frames, fed as uint8 (B, 3, T, H, W) and called with
  `rescale=True, resize=True, return_features=True`: the detector itself maps [0, 255] to [-1, 1],
  resizes to 224² and returns the 400-d pre-softmax logits;
- mean and covariance as StyleGAN-V's FeatureStats: the covariance divides by N (ddof=0).
Differences: StyleGAN-V samples the real clips at a random offset in each video, here the clip starts at
`start` (0); the distance keeps pytorch-fid's guards (eps·I when sqrtm is not finite, an error on a large
imaginary part), and equals StyleGAN-V's wherever that one is finite.

    detector = load_i3d("assets/eval/i3d_torchscript.pt")
    score = fvd(videos_a, videos_b, detector)  # videos: uint8 (N, T >= 16, H, W, 3) RGB, or lists of such
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .fid import feature_statistics, frechet_distance

I3D_FILE = "i3d_torchscript.pt"
I3D_URL = "https://www.dropbox.com/s/ge9e5ujwgetktms/i3d_torchscript.pt"
DEFAULT_I3D = Path(__file__).resolve().parents[2] / "assets" / "eval" / I3D_FILE
NUM_FRAMES = 16  # StyleGAN-V's FVD_16; FVD_128 takes 128 frames
DETECTOR_KWARGS = dict(rescale=True, resize=True, return_features=True)  # StyleGAN-V's call


def load_i3d(path=DEFAULT_I3D, device="cpu") -> torch.jit.ScriptModule:
    """StyleGAN-V's I3D TorchScript module (TorchScript archive, not a pickled Python object)."""
    if not Path(path).exists():
        raise FileNotFoundError(f"no I3D detector at {path}: it expects {I3D_FILE}, StyleGAN-V's TorchScript "
                                f"I3D published at {I3D_URL}; download it and pass its path")
    return torch.jit.load(str(path), map_location=device).eval()


def clips(videos, num_frames: int = NUM_FRAMES, start: int = 0) -> np.ndarray:
    """One clip per video: frames [start, start + num_frames) -> uint8 (N, num_frames, H, W, 3)."""
    out = []
    for i, video in enumerate(videos):
        video = np.asarray(video)
        if video.ndim != 4 or video.shape[-1] != 3 or video.dtype != np.uint8:
            raise ValueError(f"video {i} must be uint8 (T, H, W, 3) RGB, got {video.dtype} {video.shape}")
        if len(video) < start + num_frames:
            raise ValueError(f"video {i} has {len(video)} frames; a clip needs {start + num_frames} "
                             "(StyleGAN-V discards shorter videos: leave them out)")
        out.append(video[start : start + num_frames])
    if len({c.shape for c in out}) > 1:
        raise ValueError("clips must share one frame size: resize the videos to a common size first")
    return np.stack(out)


@torch.no_grad()
def video_features(videos, detector, num_frames: int = NUM_FRAMES, batch_size: int = 8, start: int = 0) -> np.ndarray:
    """I3D features (N, 400) of one clip per video, through the detector's own rescale and resize."""
    x = clips(videos, num_frames, start)  # (N, T, H, W, 3) uint8
    device = next(iter(detector.parameters()), torch.empty(0)).device
    feats = []
    for i in range(0, len(x), batch_size):
        batch = torch.from_numpy(x[i : i + batch_size]).permute(0, 4, 1, 2, 3).contiguous()  # (B, 3, T, H, W)
        feats.append(detector(batch.to(device), **DETECTOR_KWARGS).double().cpu().numpy())
    return np.concatenate(feats)


def fvd(videos_a, videos_b, detector, num_frames: int = NUM_FRAMES, start: int = 0) -> float:
    """FVD between two video sets (each uint8 (N, T, H, W, 3) or a list of (T, H, W, 3))."""
    a, b = (video_features(v, detector, num_frames, start=start) for v in (videos_a, videos_b))
    return frechet_distance(*feature_statistics(a, ddof=0), *feature_statistics(b, ddof=0))
