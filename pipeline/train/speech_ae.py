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
from tqdm.auto import tqdm

from ..config import get_preset
from ..speech import build_speech_ae, speech_ae_loss
from .cache import speech_windows
from .common import (CSVLog, base_parser, latest_checkpoint, list_clips, load_checkpoint, make_accelerator, plot_log,
                     end_step, save_checkpoint, save_rank_params)


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
    ckpt = latest_checkpoint(args.out)
    start = load_checkpoint(ckpt, ae, opt)["step"] if ckpt else 0
    model, opt = acc.prepare(ae, opt)
    clips = list_clips(args.data)
    data = SpeechWindows(clips, cfg.speech)
    rng = np.random.default_rng(args.seed + 1000 * start + acc.process_index)
    val = data.batch(16, args.frames, np.random.default_rng(123))
    log = CSVLog(f"{args.out}/log.csv", ["loss", "mse", "contrastive", "val_mse", "val_top1"])
    bar = tqdm(range(start, args.steps), initial=start, total=args.steps, disable=not acc.is_main_process)
    tau = cfg.speech.temperature
    for step in bar:
        x, s = (t.to(acc.device) for t in data.batch(args.batch_size, args.frames, rng))
        with acc.autocast():
            _, s_hat = model(x)
        loss, mse, con = speech_ae_loss(s, s_hat.float(), args.alpha, args.beta, tau)
        acc.backward(loss)
        opt.step(), opt.zero_grad(set_to_none=True)
        row = dict(loss=loss.item(), mse=mse.item(), contrastive=con.item())
        end_step(acc, args, step, log, row, bar, lambda: validate(ae, *val),
                 lambda s: save_checkpoint(f"{args.out}/checkpoint", ae, opt, s))
    save_rank_params(acc, ae, args)
    if acc.is_main_process:
        ae.save_pretrained(f"{args.out}/speech_ae")
        plot_log(f"{args.out}/log.csv", f"{args.out}/loss.png", "SpeechAE")


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
