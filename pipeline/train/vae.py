"""Train the tiny LTX VAE on synthetic clips (for real data, use the pretrained LTX VAE frozen).

    python -m pipeline.train.vae --data data/train --out runs/vae --steps 3000

The first steps train on single frames (one-frame videos, 4x the batch), which leaves the
initial mean-image plateau far sooner than video windows do; then on (1 + 8k)-frame windows.
Loss: MSE + a little L1 on pixels, an extra L1 on the mouth box (the detail lip-sync lives in) and a small
KL. Validation reports PSNR of the whole frame and of the mouth box separately. At the end the
latent statistics are written into the VAE's own `latents_mean` / `latents_std` buffers and the
VAE is saved with `save_pretrained` in `OUT/vae`.
"""
from __future__ import annotations

import json

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..config import get_preset
from ..vae import build_vae, encode
from .common import (CSVLog, base_parser, latest_checkpoint, list_clips, load_checkpoint, load_weights, make_accelerator,
                     plot_log, end_step, save_checkpoint, save_rank_params)


def load_clips(data, limit=None):
    """All clips in memory: frames uint8 (T, H, W, 3), mouth boxes (T, 4), openness (T,)."""
    out = []
    for d in list_clips(data)[:limit]:
        gt = np.load(d / "gt.npz")
        out.append((np.load(d / "frames.npz")["frames"], gt["mouth_box"], gt["openness"]))
    return out


def sample_batch(clips, batch, frames, rng):
    """Random windows of `frames` frames -> video (B, 3, T, H, W) in [-1, 1], mouth masks (B, 1, T, H, W)
    and mouth openness (B, T)."""
    xs, ms, os_ = [], [], []
    for _ in range(batch):
        video, boxes, openness = clips[rng.integers(len(clips))]
        s = rng.integers(len(video) - frames + 1)
        xs.append(video[s : s + frames])
        os_.append(openness[s : s + frames])
        m = np.zeros(video.shape[1:3], np.float32)
        b = boxes[s : s + frames]  # (T, 4) x0, y0, x1, y1: the union box of the window
        x0, y0, x1, y1 = b[:, 0].min(), b[:, 1].min(), b[:, 2].max(), b[:, 3].max()
        m[y0:y1, x0:x1] = 1
        ms.append(np.broadcast_to(m, (frames,) + m.shape))
    x = torch.from_numpy(np.stack(xs)).permute(0, 4, 1, 2, 3).float() / 127.5 - 1
    return x, torch.from_numpy(np.stack(ms))[:, None], torch.from_numpy(np.stack(os_)).float()


class VAEObjective(torch.nn.Module):
    """One forward for reconstruction, KL and the mouth probe, so DDP sees (and syncs) all of it.

    The mouth probe (a linear map from each latent frame to the openness of its 8 video frames,
    dropped after training) makes the encoder keep the mouth state: without it the tiny VAE spent
    its first thousands of steps on the face and head, and a linear probe on its latents found no
    openness information at all (correlation ~0).
    """

    def __init__(self, vae, sample: bool = True):
        super().__init__()
        self.vae, self.sample = vae, sample
        c = vae.config.latent_channels
        self.mouth_probe = torch.nn.Conv3d(c, 8, kernel_size=(1, 4, 4), stride=(1, 4, 4))  # per 4x4-token frame

    def forward(self, x):
        post = self.vae.encode(x).latent_dist
        z = post.sample() if self.sample else post.mode()
        probe = self.mouth_probe(post.mode()[:, :, 1:]).mean(dim=(3, 4))  # (B, 8, k): frames of latents 1..k
        return self.vae.decode(z).sample, post.kl().mean(), probe.transpose(1, 2).flatten(1)  # (B, 8k)


def psnr(a, b, mask=None):
    err = (a - b) ** 2 if mask is None else ((a - b) ** 2 * mask).sum() / (mask.sum() * a.shape[1])
    return float(10 * torch.log10(4 / err.mean()))  # pixel range [-1, 1] -> peak-to-peak 2


def main(argv=None):
    p = base_parser("Train the tiny LTX VAE")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--frames", type=int, default=17, help="frames per training window (1 + 8k)")
    p.add_argument("--mouth-weight", type=float, default=1.0)
    p.add_argument("--l1-weight", type=float, default=0.2)
    p.add_argument("--probe-weight", type=float, default=10.0, help="mouth-openness probe on the latents")
    p.add_argument("--vae-kwargs", help="JSON dict replacing the preset's AutoencoderKLLTXVideo kwargs")
    p.add_argument("--channels", help="comma-separated block_out_channels override, e.g. 32,32,64,64")
    p.add_argument("--init-from", help="checkpoint or save_pretrained folder to start from (weights only)")
    p.add_argument("--freeze-encoder", action="store_true", help="train the decoder only, on posterior means")
    p.add_argument("--deterministic", action="store_true", help="decode the posterior mean (no sampling noise)")
    p.add_argument("--image-steps", type=int, default=600, help="first steps on single frames (4x batch)")
    p.add_argument("--kl-weight", type=float, default=1e-6)
    args = p.parse_args(argv)
    acc = make_accelerator(args)
    cfg = get_preset(args.preset)
    if args.vae_kwargs:  # experiment with other AutoencoderKLLTXVideo settings
        cfg.vae.kwargs = json.loads(args.vae_kwargs)
    if args.channels:  # experiment with the VAE width (the preset stays the default)
        ch = tuple(int(c) for c in args.channels.split(","))
        cfg.vae.kwargs.update(block_out_channels=ch, decoder_block_out_channels=ch)
    vae = build_vae(cfg.vae)
    if args.init_from:  # weights only (no optimizer): a checkpoint folder or a save_pretrained folder
        load_weights(args.init_from, vae)
    if args.freeze_encoder:  # latents stay exactly as cached for the DiT; only the decoder improves
        vae.encoder.requires_grad_(False)
        args.deterministic, args.image_steps = True, 0
    opt = torch.optim.AdamW([p for p in vae.parameters() if p.requires_grad], lr=args.lr, weight_decay=0.0)
    start = load_checkpoint(latest_checkpoint(args.out), vae, opt)["step"] if latest_checkpoint(args.out) else 0
    model, opt = acc.prepare(VAEObjective(vae, sample=not args.deterministic), opt)
    clips = load_clips(args.data)
    rng = np.random.default_rng(args.seed + 1000 * start + acc.process_index)
    val_x, val_m, _ = sample_batch(clips[: max(1, len(clips) // 20)], 4, args.frames, np.random.default_rng(123))
    log = CSVLog(f"{args.out}/log.csv", ["loss", "l1", "mouth_l1", "kl", "probe", "val_psnr", "val_mouth_psnr"])
    bar = tqdm(range(start, args.steps), initial=start, total=args.steps, disable=not acc.is_main_process)
    for step in bar:
        image_phase = step < args.image_steps  # images first: leaves the mean-image plateau far sooner
        x, m, openness = sample_batch(clips, args.batch_size * (4 if image_phase else 1), 1 if image_phase else args.frames, rng)
        x, m, openness = x.to(acc.device), m.to(acc.device), openness.to(acc.device)
        with acc.autocast():
            rec, kl, probe = model(x)
        l1 = (rec - x).abs().mean()
        mouth = ((rec - x).abs() * m).sum() / (m.sum() * 3 + 1)
        probe_loss = F.mse_loss(probe.float(), openness[:, 1:]) if probe.numel() else torch.zeros((), device=x.device)
        loss = F.mse_loss(rec, x) + args.l1_weight * l1 + args.mouth_weight * mouth + args.kl_weight * kl
        loss = loss + args.probe_weight * probe_loss
        acc.backward(loss)
        acc.clip_grad_norm_(model.parameters(), 1.0)
        opt.step(), opt.zero_grad(set_to_none=True)
        row = dict(loss=loss.item(), l1=l1.item(), mouth_l1=mouth.item(), kl=kl.item(), probe=probe_loss.item())
        end_step(acc, args, step, log, row, bar, lambda: validate(vae, val_x, val_m),
                 lambda s: save_checkpoint(f"{args.out}/checkpoint", vae, opt, s))
    save_rank_params(acc, vae, args)
    if acc.is_main_process:
        finish(vae, clips, args)


@torch.no_grad()
def validate(vae, x, m):
    vae.eval()
    rec = vae.decode(vae.encode(x).latent_dist.mode()).sample.clamp(-1, 1)
    vae.train()
    return dict(val_psnr=psnr(rec, x), val_mouth_psnr=psnr(rec, x, m))


@torch.no_grad()
def finish(vae, clips, args):
    """Latent statistics into the VAE's buffers, then save_pretrained + the loss plot."""
    vae.eval()
    vae.latents_mean.zero_(), vae.latents_std.fill_(1.0)
    x, _, _ = sample_batch(clips, 16, args.frames, np.random.default_rng(7))
    z = torch.cat([encode(vae, x[i : i + 4]) for i in range(0, 16, 4)])  # un-normalised (buffers reset)
    vae.latents_mean.copy_(z.mean(dim=(0, 2, 3, 4)))
    vae.latents_std.copy_(z.std(dim=(0, 2, 3, 4)).clamp_min(1e-4))
    vae.save_pretrained(f"{args.out}/vae")
    plot_log(f"{args.out}/log.csv", f"{args.out}/loss.png", "VAE")


if __name__ == "__main__":
    main()
