"""Pretrain the SpeechAE on frozen Whisper features with MSE + contrastive loss (eq. 7-9).

    python -m pipeline.train.cache whisper --data data/train
    python -m pipeline.train.speech_ae --data data/train --out runs/speech_ae --steps 1500

Windows of 1 + 8k video frames are cut from each clip's cached Whisper features; the encoder
compresses them to 1 + k code groups (the VAE's time grid), the decoder reconstructs each frame's
features. Validation also reports top-1 retrieval: how often a reconstructed frame is closest to
its own original among all frames of the batch (what the contrastive term optimises).
"""
from __future__ import annotations

import numpy as np
import torch

from ..config import get_preset
from ..speech import build_speech_ae, speech_ae_loss
from .cache import speech_windows
from .common import Stage, base_parser, list_clips, make_accelerator, train


class SpeechWindows:
    """All clips' windows in memory; batches of random (1 + 8k)-frame spans."""

    def __init__(self, clips, cfg):
        self.x = []
        for d in clips:
            n = len(np.load(d / "gt.npz")["openness"])
            self.x.append(speech_windows(d, n, cfg))  # (T, window_dim)
        self.cfg = cfg

    def batch(self, size: int, frames: int, rng):
        xs = []
        for _ in range(size):
            w = self.x[rng.integers(len(self.x))]
            s = rng.integers(len(w) - frames + 1)
            xs.append(w[s : s + frames])
        x = torch.stack(xs)  # (B, T, window_dim)
        c, fd = self.cfg.context_frames, self.cfg.frame_dim
        return x, x[..., c * fd : (c + 1) * fd]  # input windows, centre-frame target S


def main(argv=None):
    p = base_parser("Pretrain the SpeechAE")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--frames", type=int, default=33, help="frames per window (1 + 8k)")
    p.add_argument("--alpha", type=float, default=1.0, help="weight of the MSE term")
    p.add_argument("--beta", type=float, default=0.1, help="weight of the contrastive term")
    args = p.parse_args(argv)
    acc = make_accelerator(args)
    cfg = get_preset(args.preset)
    ae = build_speech_ae(cfg.speech)
    opt = torch.optim.AdamW(ae.parameters(), lr=args.lr, weight_decay=0.01)
    data = SpeechWindows(list_clips(args.data), cfg.speech)
    val = data.batch(16, args.frames, np.random.default_rng(123))
    tau = cfg.speech.temperature

    def loss(model, batch):
        x, s = batch
        _, s_hat = model(x)
        total, mse, con = speech_ae_loss(s, s_hat.float(), args.alpha, args.beta, tau)
        return total, dict(mse=mse.item(), contrastive=con.item())

    stage = Stage("SpeechAE", ae, opt, lambda rand: data.batch(args.batch_size, args.frames, rand.np), loss,
                  ["loss", "mse", "contrastive", "lr", "val_mse", "val_top1"], validate=lambda: validate(ae, *val),
                  finish=lambda: ae.save_pretrained(f"{args.out}/speech_ae"), clip_grad=None)
    train(stage, args, acc)


@torch.no_grad()
def validate(ae, x, s):
    ae.eval()
    _, s_hat = ae(x)
    ae.train()
    a = torch.nn.functional.normalize(s_hat.flatten(0, 1), dim=-1)
    b = torch.nn.functional.normalize(s.flatten(0, 1), dim=-1)
    top1 = (a @ b.t()).argmax(1).eq(torch.arange(len(a))).float().mean()
    return dict(val_mse=torch.nn.functional.mse_loss(s_hat, s).item(), val_top1=top1.item())


if __name__ == "__main__":
    main()
