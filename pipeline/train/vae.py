"""Train an LTX VAE (`tiny` or `fidelity` config) on synthetic clips (for real data, use the pretrained LTX VAE frozen).

    python -m pipeline.train.vae --data data/train --out runs/vae --steps 3000

Every step trains on a batch of single frames encoded alone (how the reference image is encoded:
make that frame excellent) and, after the first `--image-steps` steps, also on (1 + 8k)-frame video
windows. Single frames first leave the initial mean-image plateau far sooner than video windows do.
Loss: MSE + L1 on pixels, an extra L1 on the mouth box (the detail lip-sync lives in), optionally an
L1 on its frame-to-frame change (`--motion-weight`), a small KL and a mouth probe on the latents
(`VAEObjective`); the decoder sees the posterior mean unless
`--sample-posterior`. Validation (EMA weights, `--heldout` clips when
given) reports PSNR of single frames, of video windows and of their mouth box. At the end the latent
statistics are written into the VAE's own `latents_mean` / `latents_std` buffers and the VAE is saved
with `save_pretrained` in `OUT/vae`. Re-running with `--steps` equal to the checkpoint's step
exports that checkpoint without training.

A VAE constructed by `pipeline.train.pca_init` is fine-tuned with `--init-from <it> --freeze-constant`
(and usually `--freeze-encoder`, which keeps the DiT's latents and their statistics): the weights that
read its constant channel stay fixed, and a learning rate around 1e-5 keeps its reconstruction.
"""
from __future__ import annotations

import argparse
import copy
import json

import numpy as np
import torch
import torch.nn.functional as F

from ..config import FIDELITY_VAE, TINY_VAE, VAEConfig
from ..vae import build_vae, encode, to_pixels
from .common import Stage, base_parser, list_clips, load_vae, load_weights, make_accelerator, train
from .widen import widen_decoder

VAE_CONFIGS = {"tiny": TINY_VAE, "fidelity": FIDELITY_VAE}


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
    x = torch.stack([to_pixels(v) for v in xs])  # (B, 3, T, H, W)
    return x, torch.from_numpy(np.stack(ms))[:, None], torch.from_numpy(np.stack(os_)).float()


class VAEObjective(torch.nn.Module):
    """One forward for reconstruction, KL and the mouth probe, so DDP sees (and syncs) all of it.

    The mouth probe (a linear map from each latent frame to the openness of its 8 video frames,
    dropped after training) makes the encoder keep the mouth state: without it the tiny VAE spent
    its first thousands of steps on the face and head, and a linear probe on its latents found no
    openness information at all (correlation ~0). A single frame has no latent frame after the
    first, so its probe output is empty.
    """

    def __init__(self, vae, sample: bool = True):
        super().__init__()
        self.vae, self.sample = vae, sample
        c = vae.config.latent_channels
        self.mouth_probe = torch.nn.Conv3d(c, 8, kernel_size=(1, 4, 4), stride=(1, 4, 4))  # per 4x4-token frame

    def forward(self, x):
        post = self.vae.encode(x).latent_dist
        z = post.sample() if self.sample else post.mode()
        mean = post.mode()
        if mean.shape[2] > 1:
            grid = F.adaptive_avg_pool3d(mean[:, :, 1:], (mean.shape[2] - 1, 4, 4))  # a 4x4 grid at any size
            probe = self.mouth_probe(grid).mean(dim=(3, 4)).transpose(1, 2).flatten(1)  # (B, 8k)
        else:  # keep the probe in the graph (DDP expects every parameter to get a gradient)
            probe = mean.new_zeros(len(x), 0) + 0 * sum(p.sum() for p in self.mouth_probe.parameters())
        return self.vae.decode(z).sample, post.kl().mean(), probe


def psnr(a, b, mask=None):
    err = (a - b) ** 2 if mask is None else ((a - b) ** 2 * mask).sum() / (mask.sum() * a.shape[1])
    return float(10 * torch.log10(4 / err.mean()))  # pixel range [-1, 1] -> peak-to-peak 2


def reconstruction_loss(objective, x, m, openness, args):
    """Pixel MSE + L1 + mouth-box L1 + KL + mouth probe of one batch; returns (loss, logged terms)."""
    rec, kl, probe = objective(x)
    rec = rec.float()
    l1 = (rec - x).abs().mean()
    mouth = ((rec - x).abs() * m).sum() / (m.sum() * 3 + 1)
    probe_loss = F.mse_loss(probe.float(), openness[:, 1:]) if probe.numel() else rec.new_zeros(())
    loss = F.mse_loss(rec, x) + args.l1_weight * l1 + args.mouth_weight * mouth + args.kl_weight * kl
    if args.motion_weight and x.shape[2] > 1:  # frame-to-frame change inside the mouth box, against the truth's
        mt = m[:, :, 1:]
        motion = ((rec.diff(dim=2) - x.diff(dim=2)).abs() * mt).sum() / (mt.sum() * 3 + 1)
        loss = loss + args.motion_weight * motion
    return loss + args.probe_weight * probe_loss, dict(l1=l1.item(), mouth_l1=mouth.item(), kl=kl.item(), probe=probe_loss.item())


def parse_args(argv=None):
    p = base_parser("Train an LTX VAE on synthetic clips")
    p.add_argument("--config", choices=sorted(VAE_CONFIGS), default="tiny", help="AutoencoderKLLTXVideo preset")
    p.add_argument("--frames", type=int, default=17, help="frames per video window (1 + 8k)")
    p.add_argument("--image-batch", type=int, default=0, help="single frames per step (0: 4x --batch-size)")
    p.add_argument("--image-steps", type=int, default=600, help="first steps on single frames only")
    p.add_argument("--image-weight", type=float, default=1.0,
                   help="weight of the single-frame loss after the image phase (0: video windows only, the old recipe)")
    p.add_argument("--video-every", type=int, default=1, help="after the image phase, a video batch every N steps")
    p.add_argument("--mouth-weight", type=float, default=1.0)
    p.add_argument("--l1-weight", type=float, default=0.2)
    p.add_argument("--motion-weight", type=float, default=0.0,
                   help="L1 on the frame-to-frame change inside the mouth box (keeps the decoder from drawing a still, "
                        "average mouth over a latent frame's 8 video frames)")
    p.add_argument("--probe-weight", type=float, default=10.0, help="mouth-openness probe on the latents")
    p.add_argument("--kl-weight", type=float, default=1e-6)
    p.add_argument("--ema", type=float, default=0.0, help="EMA decay of the exported weights (0: no EMA)")
    p.add_argument("--warmup", type=int, default=0, help="linear learning-rate warm-up steps")
    p.add_argument("--heldout", help="clips never trained on, for the validation PSNR (default: 5%% of --data)")
    p.add_argument("--vae-kwargs", help="JSON dict replacing the config's AutoencoderKLLTXVideo kwargs")
    p.add_argument("--channels", help="comma-separated block_out_channels override, e.g. 32,32,64,64")
    p.add_argument("--init-from", help="checkpoint or save_pretrained folder to start from (weights only)")
    p.add_argument("--init-encoder-only", action="store_true",
                   help="take only the encoder from --init-from (a new decoder, e.g. wider, on the same latents)")
    p.add_argument("--widen-from", help="a trained VAE (checkpoint or save_pretrained folder) whose decoder this "
                   "one's wider decoder starts as (function-preserving, pipeline/train/widen.py); widths must be multiples")
    p.add_argument("--freeze-encoder", action="store_true", help="train the decoder only, on posterior means")
    p.add_argument("--freeze-constant", action="store_true",
                   help="a constructed VAE (pca_init): weights that read its constant channel stay as they are")
    p.add_argument("--sample-posterior", action="store_true",
                   help="decode a posterior sample, as a classic VAE does (default: the posterior mean, as every "
                        "shipped VAE was trained: their log-variance channel never learnt, std 1 against means "
                        "that spread ~0.17, so samples would drown the signal)")
    p.add_argument("--deterministic", action="store_true", help=argparse.SUPPRESS)  # the default now; old commands
    p.add_argument("--export-dtype", choices=["fp32", "fp16"], default="fp32", help="dtype of the exported OUT/vae")
    args = p.parse_args(argv)
    if args.freeze_encoder:  # latents stay exactly as cached for the DiT; only the decoder improves
        args.sample_posterior = False
    args.image_batch = args.image_batch or 4 * args.batch_size
    return args


def build(args):
    """The VAE of `--config` (with the overrides), its weights from `--init-from`, frozen parts frozen."""
    kwargs = json.loads(args.vae_kwargs) if args.vae_kwargs else dict(VAE_CONFIGS[args.config])
    if args.channels:  # experiment with the VAE width (the config stays the default)
        ch = tuple(int(c) for c in args.channels.split(","))
        kwargs.update(block_out_channels=ch, decoder_block_out_channels=ch)
    vae = build_vae(VAEConfig(kwargs=kwargs))
    if args.init_from:  # weights only (no optimizer): a checkpoint folder or a save_pretrained folder
        load_weights(args.init_from, vae, prefix="encoder." if args.init_encoder_only else "")
    if args.widen_from:
        widen_decoder(load_vae(args.widen_from).float(), vae, torch.Generator().manual_seed(args.seed))
    if args.freeze_encoder:
        vae.encoder.requires_grad_(False)
    return vae


def freeze_constant_inputs(vae, x: torch.Tensor, ratio: float = 1e-3) -> int:
    """Zero the gradient of every weight column that reads a constant input channel, found on batch x.

    A constructed VAE (`pipeline.train.pca_init`) carries one large constant channel through every stage.
    A weight reading it acts as a bias scaled by that constant, so Adam's first steps (every weight moves
    by ~lr) shift the outputs hundreds of times more through those columns than through the others;
    frozen, the columns keep their bias role and the layers' real biases still learn. Applies to 3-D
    convolutions (whole input channel) and norm weights (that channel's gain). Returns the count frozen.
    """
    from diffusers.models.normalization import RMSNorm

    found: dict[torch.nn.Parameter, torch.Tensor] = {}

    def hook(module, inputs, _output):
        h = inputs[0].detach().float()
        dim = 1 if isinstance(module, torch.nn.Conv3d) else -1  # norms see channels last
        flat = h.movedim(dim, 0).flatten(1)
        const = (flat.std(dim=1) < ratio * flat.mean(dim=1).abs()) & (flat.mean(dim=1).abs() > 1.0)
        if const.any() and module.weight.requires_grad:
            mask = torch.ones_like(module.weight)
            if isinstance(module, torch.nn.Conv3d):
                mask[:, const] = 0
            else:
                mask[const] = 0
            found[module.weight] = mask

    kinds = (torch.nn.Conv3d, torch.nn.LayerNorm, RMSNorm)
    handles = [m.register_forward_hook(hook) for m in vae.modules()
               if isinstance(m, kinds) and getattr(m, "weight", None) is not None]
    with torch.no_grad():
        vae.decode(vae.encode(x).latent_dist.mode())
    for h in handles:
        h.remove()
    for weight, mask in found.items():
        weight.register_hook(lambda g, mask=mask: g * mask)
    return len(found)


class VAEData:
    """Training clips and a fixed validation set (held-out clips when given)."""

    def __init__(self, args):
        self.args, self.clips = args, load_clips(args.data)
        val = load_clips(args.heldout) if args.heldout else self.clips[: max(1, len(self.clips) // 20)]
        self.val_video = sample_batch(val, 4, args.frames, np.random.default_rng(123))[:2]
        self.val_image = sample_batch(val, 8, 1, np.random.default_rng(124))[0]

    def batch(self, rand):
        """(single frames, masks, openness) and, after the image phase, a video batch too (else None)."""
        a, image_phase = self.args, rand.step < self.args.image_steps
        images = sample_batch(self.clips, a.image_batch, 1, rand.np) if image_phase or a.image_weight else None
        video = not image_phase and (rand.step % a.video_every == 0 or images is None)
        return images, sample_batch(self.clips, a.batch_size, a.frames, rand.np) if video else None


def main(argv=None):
    args = parse_args(argv)
    acc = make_accelerator(args)
    vae = build(args)
    objective = VAEObjective(vae, sample=args.sample_posterior)
    ema = copy.deepcopy(vae).requires_grad_(False) if args.ema else None
    opt = torch.optim.AdamW([p for p in objective.parameters() if p.requires_grad], lr=args.lr, weight_decay=0.0)
    data = VAEData(args)
    if args.freeze_constant:
        print(f"froze the constant-channel columns of {freeze_constant_inputs(vae, data.val_video[0][:2])} weights")

    def loss(module, b):
        images, video = b
        total, row = 0.0, {}
        if images is not None:  # single frames (one-frame videos): full weight in the image phase
            total, row = reconstruction_loss(module, *images, args)
            total = total * (args.image_weight if video is not None else 1.0)
        if video is not None:
            vloss, vrow = reconstruction_loss(module, *video, args)
            total, row = total + vloss, vrow | ({"image_l1": row["l1"]} if row else {})
        return total, row

    final = ema if ema is not None else vae
    stage = Stage("VAE", vae, opt, data.batch, loss,
                  ["loss", "l1", "image_l1", "mouth_l1", "kl", "probe", "lr", "val_psnr_image", "val_psnr", "val_mouth_psnr"],
                  validate=lambda: validate(final, data), finish=lambda: finish(final, data.clips, args),
                  wrapper=objective, ema=ema, ema_decay=args.ema, warmup=args.warmup,
                  extra={"vae_config": dict(vae.config)})
    train(stage, args, acc)


@torch.no_grad()
def validate(vae, data):
    """PSNR of single frames encoded alone, of video windows, and of their mouth box (mean latents)."""
    was = vae.training
    vae.eval()
    rec = lambda x: vae.decode(vae.encode(x).latent_dist.mode()).sample.clamp(-1, 1)  # noqa: E731
    (x, m), img = data.val_video, data.val_image
    video = rec(x)
    out = dict(val_psnr_image=psnr(rec(img), img), val_psnr=psnr(video, x), val_mouth_psnr=psnr(video, x, m))
    vae.train(was)
    return out


@torch.no_grad()
def finish(vae, clips, args):
    """Latent statistics into the VAE's buffers (kept as loaded when the encoder was frozen: the DiT's
    cached latents were normalised with them), then save_pretrained."""
    vae.eval()
    if not args.freeze_encoder:
        vae.latents_mean.zero_(), vae.latents_std.fill_(1.0)
        x, _, _ = sample_batch(clips, 16, args.frames, np.random.default_rng(7))
        z = torch.cat([encode(vae, x[i : i + 4]) for i in range(0, 16, 4)])  # un-normalised (buffers reset)
        vae.latents_mean.copy_(z.mean(dim=(0, 2, 3, 4)))
        vae.latents_std.copy_(z.std(dim=(0, 2, 3, 4)).clamp_min(1e-4))
    export = copy.deepcopy(vae).half() if args.export_dtype == "fp16" else vae  # fp16: half the file size
    export.save_pretrained(f"{args.out}/vae")


if __name__ == "__main__":
    main()
