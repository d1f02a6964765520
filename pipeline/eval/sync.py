"""Sync-C and Sync-D: SyncNet lip-sync confidence and distance (Chung & Zisserman 2016, "Out of time").

Reference: joonson/syncnet_python, `SyncNetInstance.evaluate` with `SyncNetModel.S` and `syncnet_v2.model`,
run as LatentSync's eval does (vshift=15). Video at 25 fps, audio at 16 kHz:
- video: face crops resized to 224² (cv2 bilinear), BGR, 0..255 floats; window t = frames t..t+4 as
  (3, 5, 224, 224) for the 3-D conv lip stream;
- audio: int16 samples -> python_speech_features MFCC (13 coefficients at 100 Hz, `mfcc` below);
  window t = MFCC frames 4t..4t+19 as (1, 13, 20); min(len(video), len(audio) // 640) - 5 windows;
- dists[t, j] = ||v_t - a_(t+j-vshift)||, the audio embeddings zero-padded by vshift at both ends;
  mdist[j] = mean over t; Sync-D = min mdist, Sync-C = median mdist - min mdist,
  offset = vshift - argmin mdist.
Sign: offset k > 0 when the audio of window t matches the video of window t + k, i.e. the video lags the
sound by k frames (as `synthetic.lagged_correlation`: lag > 0, video late).
Not reproduced: the reference's face detection and tracking (S3FD, run_pipeline.py) and its JPEG round
trip of frames: pass face crops.

Weights: `syncnet_v2.model` (http://www.robots.ox.ac.uk/~vgg/software/lipsync/data/syncnet_v2.model,
fetched by syncnet_python's download_model.sh), a state dict; convert it once where torch can read it:

    python -c "import torch; from safetensors.torch import save_file; sd = torch.load('syncnet_v2.model', map_location='cpu', weights_only=True); save_file({k: v.contiguous() for k, v in sd.items()}, 'syncnet_v2.safetensors')"

    result = sync_metrics(face_frames, audio_16k, load_syncnet("assets/eval/syncnet_v2.safetensors"))
    result.sync_c, result.sync_d, result.offset
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import scipy.fft
import torch
import torch.nn as nn
import torch.nn.functional as F

VSHIFT = 15  # offsets -15..15 video frames are searched
WINDOW = 5  # video frames per window (0.2 s)
MFCC_PER_FRAME = 4  # 100 Hz MFCC / 25 fps
SAMPLE_RATE, FPS, CROP = 16_000, 25, 224
SYNCNET_FILE = "syncnet_v2.safetensors"
SYNCNET_SOURCE = "syncnet_v2.model from http://www.robots.ox.ac.uk/~vgg/software/lipsync/data/syncnet_v2.model"
DEFAULT_SYNCNET = Path(__file__).resolve().parents[2] / "assets" / "eval" / SYNCNET_FILE

Embed = Callable[[torch.Tensor], torch.Tensor]  # a batch of windows (B, ...) -> embeddings (B, D)


# ---------------------------------------------------------------- MFCC (python_speech_features 0.6)
def _mel_filterbank(nfilt: int, nfft: int, sample_rate: int) -> np.ndarray:
    hz2mel, mel2hz = (lambda hz: 2595 * np.log10(1 + hz / 700.0)), (lambda mel: 700 * (10 ** (mel / 2595.0) - 1))
    bins = np.floor((nfft + 1) * mel2hz(np.linspace(hz2mel(0), hz2mel(sample_rate / 2), nfilt + 2)) / sample_rate)
    fb = np.zeros((nfilt, nfft // 2 + 1))
    for j in range(nfilt):
        lo, mid, hi = bins[j], bins[j + 1], bins[j + 2]
        for i in range(int(lo), int(mid)):
            fb[j, i] = (i - lo) / (mid - lo)
        for i in range(int(mid), int(hi)):
            fb[j, i] = (hi - i) / (hi - mid)
    return fb


def mfcc(signal: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """python_speech_features.mfcc with its defaults -> (frames, 13).

    25 ms rectangular frames every 10 ms (zero-padded at the end), pre-emphasis 0.97, 512-point power
    spectrum, 26 mel filters over 0..sr/2, log, DCT-II (ortho), 13 cepstra, lifter 22, c0 replaced by
    the log frame energy.
    """
    x = np.asarray(signal, np.float64)
    x = np.append(x[0], x[1:] - 0.97 * x[:-1])
    win, step, nfft = int(np.floor(0.025 * sample_rate + 0.5)), int(np.floor(0.01 * sample_rate + 0.5)), 512
    n = 1 if len(x) <= win else 1 + int(np.ceil((len(x) - win) / step))
    x = np.concatenate([x, np.zeros((n - 1) * step + win - len(x))])
    frames = x[np.arange(win)[None] + step * np.arange(n)[:, None]]  # (n, win)
    pspec = np.abs(np.fft.rfft(frames, nfft)) ** 2 / nfft  # (n, 257)
    tiny = np.finfo(float).eps
    energy = np.where(pspec.sum(1) == 0, tiny, pspec.sum(1))
    feat = pspec @ _mel_filterbank(26, nfft, sample_rate).T
    cep = scipy.fft.dct(np.log(np.where(feat == 0, tiny, feat)), type=2, axis=1, norm="ortho")[:, :13]
    cep *= 1 + 11 * np.sin(np.pi * np.arange(13) / 22)  # lifter, L = 22
    cep[:, 0] = np.log(energy)
    return cep


def to_int16_scale(audio: np.ndarray) -> np.ndarray:
    """Float audio in [-1, 1] -> int16 values as ffmpeg's pcm_s16le writes them (the reference reads those)."""
    audio = np.asarray(audio)
    if np.issubdtype(audio.dtype, np.integer):
        return audio.astype(np.float64)
    return np.clip(np.rint(audio.astype(np.float64) * 32768), -32768, 32767)


# ---------------------------------------------------------------- the computation
@dataclass
class SyncResult:
    offset: int  # video frames; > 0: the video lags the audio
    sync_c: float  # confidence: median - min of the mean distances
    sync_d: float  # min of the mean distances
    mean_dists: np.ndarray  # (2 vshift + 1,) mean distance per offset index j (offset = vshift - j)
    dists: np.ndarray  # (T, 2 vshift + 1) per window


def sync_scores(video_emb, audio_emb, vshift: int = VSHIFT) -> SyncResult:
    """The reference's calc_pdist + evaluate on embeddings (T, D) of the same windows."""
    v, a = torch.as_tensor(video_emb).float(), torch.as_tensor(audio_emb).float()
    if v.ndim != 2 or v.shape != a.shape:
        raise ValueError(f"video and audio embeddings must both be (T, D), got {tuple(v.shape)} and {tuple(a.shape)}")
    a = F.pad(a, (0, 0, vshift, vshift))  # (T + 2 vshift, D)
    idx = torch.arange(len(v))[:, None] + torch.arange(2 * vshift + 1)[None]  # (T, 2 vshift + 1)
    dists = F.pairwise_distance(v[:, None].expand(-1, 2 * vshift + 1, -1), a[idx])  # (T, 2 vshift + 1)
    mdist = dists.mean(0)
    minval, minidx = torch.min(mdist, 0)
    return SyncResult(offset=int(vshift - minidx), sync_c=float(torch.median(mdist) - minval), sync_d=float(minval),
                      mean_dists=mdist.numpy(), dists=dists.numpy())


def _prepare(frames: np.ndarray, audio: np.ndarray, sample_rate: int):
    """Frames -> BGR uint8 (N, 224, 224, 3); audio -> MFCC (13, F); number of windows."""
    import cv2

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 (N, H, W, 3) RGB face crops at {FPS} fps, "
                         f"got {frames.dtype} {frames.shape}")
    if np.ndim(audio) != 1:
        raise ValueError(f"audio must be mono (samples,), got shape {np.shape(audio)}: average the channels first")
    if sample_rate != SAMPLE_RATE:
        raise ValueError(f"audio must be {SAMPLE_RATE} Hz (got {sample_rate}): resample it (pipeline.media.resample)")
    if frames.shape[1:3] != (CROP, CROP):
        frames = np.stack([cv2.resize(f, (CROP, CROP)) for f in frames])
    n = min(len(frames), len(audio) // (SAMPLE_RATE // FPS)) - WINDOW  # the reference's lastframe
    if n < 1:
        raise ValueError(f"need more than {WINDOW} frames of video with audio, "
                         f"got {len(frames)} frames and {len(audio)} samples")
    return np.ascontiguousarray(frames[..., ::-1]), mfcc(to_int16_scale(audio)).T, n


def evaluate(frames, audio, embed_video: Embed, embed_audio: Embed, sample_rate: int = SAMPLE_RATE,
             vshift: int = VSHIFT, batch_size: int = 20) -> SyncResult:
    """Sync scores of a talking-face clip under any pair of window embeddings.

    frames: uint8 (N, H, W, 3) RGB face crops at 25 fps; audio: 16 kHz, float in [-1, 1] or int16.
    embed_video gets (B, 3, 5, 224, 224) BGR 0..255 floats, embed_audio (B, 1, 13, 20) MFCC windows.
    """
    bgr, cc, n = _prepare(frames, audio, sample_rate)
    cc = torch.from_numpy(cc).float()  # (13, F)
    v_emb, a_emb = [], []
    for i in range(0, n, batch_size):
        ts = range(i, min(n, i + batch_size))
        win = torch.from_numpy(np.stack([bgr[t : t + WINDOW] for t in ts])).float()  # (B, 5, 224, 224, 3)
        v_emb.append(torch.as_tensor(embed_video(win.permute(0, 4, 1, 2, 3))).float())  # (B, D)
        mel = torch.stack([cc[:, MFCC_PER_FRAME * t : MFCC_PER_FRAME * t + 4 * WINDOW] for t in ts])[:, None]
        a_emb.append(torch.as_tensor(embed_audio(mel)).float())  # (B, D)
    return sync_scores(torch.cat(v_emb), torch.cat(a_emb), vshift)


# ---------------------------------------------------------------- SyncNet v2 (syncnet_python's S)
def _conv_bn_relu(conv, bn, cin, cout, kernel, **kw):
    return [conv(cin, cout, kernel_size=kernel, **kw), bn(cout), nn.ReLU(inplace=True)]


def _fc(dim):
    return nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, dim))


class SyncNet(nn.Module):
    """syncnet_python's `S`: lip stream on (B, 3, 5, 224, 224), audio stream on (B, 1, 13, 20) -> (B, 1024)."""

    def __init__(self, dim: int = 1024):
        super().__init__()
        a = lambda cin, cout, k, p=1: _conv_bn_relu(nn.Conv2d, nn.BatchNorm2d, cin, cout, k, padding=p)
        self.netcnnaud = nn.Sequential(
            *a(1, 64, 3), nn.MaxPool2d(1, 1), *a(64, 192, 3), nn.MaxPool2d(3, (1, 2)),
            *a(192, 384, 3), *a(384, 256, 3), *a(256, 256, 3), nn.MaxPool2d(3, 2), *a(256, 512, (5, 4), 0))
        v = lambda cin, cout, k, **kw: _conv_bn_relu(nn.Conv3d, nn.BatchNorm3d, cin, cout, k, **kw)
        self.netcnnlip = nn.Sequential(
            *v(3, 96, (5, 7, 7), stride=(1, 2, 2), padding=0), nn.MaxPool3d((1, 3, 3), (1, 2, 2)),
            *v(96, 256, (1, 5, 5), stride=(1, 2, 2), padding=(0, 1, 1)), nn.MaxPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1)),
            *v(256, 256, (1, 3, 3), padding=(0, 1, 1)), *v(256, 256, (1, 3, 3), padding=(0, 1, 1)),
            *v(256, 256, (1, 3, 3), padding=(0, 1, 1)), nn.MaxPool3d((1, 3, 3), (1, 2, 2)),
            *v(256, 512, (1, 6, 6), padding=0))
        self.netfcaud, self.netfclip = _fc(dim), _fc(dim)

    def forward_aud(self, x):  # (B, 1, 13, 20) MFCC -> (B, dim)
        return self.netfcaud(self.netcnnaud(x).flatten(1))  # conv output (B, 512, 1, 1)

    def forward_lip(self, x):  # (B, 3, 5, 224, 224) BGR 0..255 -> (B, dim)
        return self.netfclip(self.netcnnlip(x).flatten(1))  # conv output (B, 512, 1, 1, 1)


def load_syncnet(path=DEFAULT_SYNCNET, device="cpu") -> SyncNet:
    """SyncNet v2 from a safetensors conversion of syncnet_v2.model (see module doc)."""
    from safetensors.torch import load_file

    if not Path(path).exists():
        raise FileNotFoundError(f"no SyncNet weights at {path}: it expects {SYNCNET_FILE}, a safetensors conversion of "
                                f"{SYNCNET_SOURCE} (conversion command in pipeline/eval/sync.py)")
    with torch.device("meta"):  # no random init: every tensor comes from the file
        net = SyncNet()
    net.load_state_dict(load_file(str(path)), assign=True)
    return net.to(device).eval()


@torch.no_grad()
def sync_metrics(frames, audio, net: SyncNet, sample_rate: int = SAMPLE_RATE, vshift: int = VSHIFT,
                 batch_size: int = 20) -> SyncResult:
    """Sync-C / Sync-D / offset of face-crop frames (25 fps) against 16 kHz audio under SyncNet."""
    net.eval()
    device = next(net.parameters()).device
    return evaluate(frames, audio, lambda x: net.forward_lip(x.to(device)).cpu(),
                    lambda x: net.forward_aud(x.to(device)).cpu(), sample_rate, vshift, batch_size)
