"""Train the frame refiner (`pipeline.refiner.FrameRefiner`) on (VAE decode, truth) pairs.

    python -m pipeline.train.refiner --data data/train --generated assets/model \
        --out runs/refiner --heldout data/heldout_val
    cp -r runs/refiner/refiner <pipeline folder>/      # the pipeline loads it after its VAE decoder

Each clip of `--data` (the first `--clips`) is encoded and decoded once by the frozen VAE, as
`vae.decode` does at inference (whole latent frames). With `--generated PIPELINE` (its VAE replaces
`--vae`) each clip is also decoded from what that pipeline's DiT makes of it: its true latents noised to
one of the sampler's own times (0.75, 0.5 or 0.25) and denoised with the clip's audio and reference, as
SDEdit does (Meng et al. 2022) — so the refiner also learns to repair the DiT's errors (a mottled mouth)
while the target stays the truth frame for frame; `--sdedit-copies N` makes N such decodes of each clip,
each with its own start time and noise. With `--mouth-error-frames` half of a generated decode's frames
are drawn in proportion to its mouth box's squared error against the truth (online hard-example mining,
Shrivastava et al. 2016), so the frames where the DiT drew the wrong mouth are seen most. The refiner learns decode -> truth on 64 x 64 crops
of single frames, half of them around the eyes box, a quarter around the mouth box (the generator's
`gt.npz`; uniform crops where a clip has no boxes): the features a linear code blurs; three quarters of
a generated decode's crops are around the mouth, which is what the DiT gets wrong.
Loss: MSE + 0.1 L1. Validation (`--heldout`): PSNR of whole frames and of the eyes and mouth boxes,
after the refiner (`val_psnr*`) beside the decoder alone (`val_psnr*_decoder`, logged once per run).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import vae as vae_lib
from ..eval.synthetic import psnr
from ..refiner import FrameRefiner
from .common import Stage, base_parser, list_clips, load_vae, make_accelerator, train


@torch.no_grad()
def decoded_clips(vae, data, clips: int) -> list[dict]:
    """The first `clips` clips of `data`: {"decode", "truth": (T, H, W, 3) uint8, "eyes_box", "mouth_box":
    (T, 4) or None, "latents": (1, C, 1 + k, h, w) normalised, "folder"}, T = 1 + 8k the clip's whole
    latent frames, each clip encoded and decoded whole."""
    out = []
    for d in tqdm(list_clips(data)[:clips], desc=f"Decoding {Path(data).name}", unit="clip"):
        frames = np.load(d / "frames.npz")["frames"]
        n = vae_lib.video_frames(vae_lib.latent_frames(len(frames)))
        z = vae_lib.encode(vae, vae_lib.to_pixels(frames[:n])[None])
        gt = np.load(d / "gt.npz")
        boxes = {k: gt[k][:n] if k in gt.files else None for k in ("eyes_box", "mouth_box")}
        out.append({"decode": vae_lib.to_uint8(vae_lib.decode(vae, z)), "truth": frames[:n], "latents": z,
                    "folder": d} | boxes)
    return out


@torch.no_grad()
def sdedit_clips(pipe, clips: list[dict], seed: int = 0, copies: int = 1) -> list[dict]:
    """`decoded_clips`' clips decoded from what `pipe`'s DiT makes of them: the true latents noised to
    t0, one of the sampler's times (num_inference_steps at the pipeline's defaults, 0 < t0 < 1, drawn per
    decode), then sampled from t0 to 0 by `sampler.sample_clips` with the clip's audio (its audio.wav) and
    its first latent frame as the reference (SDEdit, Meng et al. 2022). `copies` (>= 1) decodes per clip,
    each with its own t0 and noise: len(clips) x copies dicts, same keys, "decode" replaced,
    "generated": True and "mouth_error": (T,) float32, the mean squared error (grey levels²) of each
    frame's mouth box against the truth (None where the clip has no boxes)."""
    from .. import sampler, scheduler

    if copies < 1:
        raise ValueError(f"copies must be >= 1, got {copies}")
    settings, rng, out = pipe.settings(), np.random.default_rng(seed), []
    times = scheduler.inference_timesteps(settings.num_inference_steps, settings.shift)
    velocity = sampler.guided_velocity(pipe.dit, settings)
    f = settings.clip_latent_frames
    for c in tqdm(clips, desc=f"SDEdit decodes x{copies}", unit="clip"):
        z = c["latents"]
        n = z.shape[2]
        pad = sampler.padded_latent_frames(n, f) - n  # whole clips: repeat the last latent frame
        z_in = torch.cat([z, z[:, :, -1:].expand(-1, -1, pad, -1, -1)], dim=2)
        codes = pipe.speech.encode(pipe.load_speech(c["folder"] / "audio.wav").whisper, z_in.shape[2], {})
        for _ in range(copies):
            k = int(rng.integers(1, len(times) - 1))  # start at times[k], strictly between 1 and 0
            noise = torch.randn(z_in.shape, generator=torch.Generator().manual_seed(int(rng.integers(2**31))))
            noised = scheduler.add_noise(z_in, noise, torch.full((1, z_in.shape[2]), float(times[k])))
            parts = [lat for _, lat in sampler.sample_clips(velocity, noised, z[:, :, :1], codes, times[k:], f)]
            decode = vae_lib.to_uint8(vae_lib.decode(pipe.vae, torch.cat(parts, dim=2)[:, :, :n]))
            out.append(c | {"decode": decode, "generated": True,
                            "mouth_error": box_errors(decode, c["truth"], c["mouth_box"])})
    return out


def box_errors(decode: np.ndarray, truth: np.ndarray, boxes: np.ndarray | None) -> np.ndarray | None:
    """Per-frame mean squared error (grey levels², float32 (T,)) of `decode` against `truth` (both
    (T, H, W, 3) uint8) inside each frame's box (T, 4) as x0, y0, x1, y1; None if `boxes` is None."""
    if boxes is None:
        return None
    se = np.square(decode.astype(np.float32) - truth)
    return np.asarray([cells.mean() for cells in in_boxes(se, boxes)], dtype=np.float32)


def in_boxes(se: np.ndarray, boxes: np.ndarray) -> list[np.ndarray]:
    """Each frame's squared errors (of (T, H, W, 3)) inside its own box (T, 4) as x0, y0, x1, y1."""
    return [se[t, y0:y1, x0:x1] for t, (x0, y0, x1, y1) in enumerate(boxes)]


def frame_weights(errors: np.ndarray, hard_fraction: float = 0.5) -> np.ndarray:
    """Sampling probabilities (T,) summing to 1: `1 - hard_fraction` spread uniformly over the frames,
    `hard_fraction` in proportion to `errors` (T,) >= 0 (online hard-example mining, Shrivastava et al.
    2016). All-zero errors give the uniform distribution."""
    errors = np.asarray(errors, dtype=np.float64)  # float32 sums miss numpy's tolerance for choice(p=)
    uniform = np.full(len(errors), 1.0 / len(errors))
    total = errors.sum()
    weights = uniform if total <= 0 else (1 - hard_fraction) * uniform + hard_fraction * errors / total
    return weights / weights.sum()


def crop_batch(clips: list[dict], size: int, crop: int, patch: int, rng) -> tuple[torch.Tensor, torch.Tensor]:
    """`size` random crops (crop x crop pixels, corners on the patch grid) of random frames -> decode and
    truth, each (size, 3, crop, crop) in [-1, 1]. Of a reconstruction's crops half are centred near the
    eyes box, a quarter near the mouth box (jittered by up to 12 px), the rest anywhere; of a generated
    clip's (`sdedit_clips`, there for the DiT's mouth) three quarters near the mouth, the rest the eyes.
    A clip with "frame_weights" (T,) draws its frame from them, others uniformly."""
    dec, tru = [], []
    for _ in range(size):
        c = clips[rng.integers(len(clips))]
        weights = c.get("frame_weights")
        f = rng.integers(len(c["truth"])) if weights is None else rng.choice(len(weights), p=weights)
        h, w = c["truth"].shape[1:3]
        u = rng.random()
        if c.get("generated"):
            box = c["mouth_box"] if u < 0.75 else c["eyes_box"]
        else:
            box = c["eyes_box"] if u < 0.5 else c["mouth_box"] if u < 0.75 else None
        if box is None:
            y0, x0 = rng.integers(0, h - crop + 1), rng.integers(0, w - crop + 1)
        else:
            bx0, by0, bx1, by1 = box[f]
            x0 = np.clip((bx0 + bx1) // 2 - crop // 2 + rng.integers(-12, 13), 0, w - crop)
            y0 = np.clip((by0 + by1) // 2 - crop // 2 + rng.integers(-12, 13), 0, h - crop)
        y0, x0 = int(y0) // patch * patch, int(x0) // patch * patch
        dec.append(vae_lib.to_pixels(c["decode"][f, y0 : y0 + crop, x0 : x0 + crop]))
        tru.append(vae_lib.to_pixels(c["truth"][f, y0 : y0 + crop, x0 : x0 + crop]))
    return torch.stack(dec), torch.stack(tru)


def box_psnr(se: np.ndarray, boxes: np.ndarray | None) -> float:
    """PSNR (`eval.synthetic.psnr`) of squared errors (T, H, W, 3), over every frame's own box (T, 4) if given."""
    if boxes is None:
        return float(psnr(se.mean()))
    return float(psnr(np.concatenate([cells.reshape(-1) for cells in in_boxes(se, boxes)]).mean()))


@torch.no_grad()
def heldout_psnr(refiner, clips: list[dict]) -> dict:
    """{"psnr", "psnr_eyes", "psnr_mouth"} of `refiner` (None: the decoder alone) on decoded clips."""
    sums: dict[str, list] = {"psnr": [], "psnr_eyes": [], "psnr_mouth": []}
    for c in clips:
        frames = c["decode"]
        if refiner is not None:
            frames = vae_lib.to_uint8(refiner.refine_video(vae_lib.to_pixels(frames)[None]))
        se = (frames.astype(np.float32) - c["truth"].astype(np.float32)) ** 2
        sums["psnr"].append(box_psnr(se, None))
        for key, box in (("psnr_eyes", c["eyes_box"]), ("psnr_mouth", c["mouth_box"])):
            if box is not None:
                sums[key].append(box_psnr(se, box))
    return {k: float(np.mean(v)) for k, v in sums.items() if v}


def refiner_loss(module, batch):
    """MSE + 0.1 L1 of the refined decode against the truth; logs both terms."""
    dec, tru = batch
    err = module(dec) - tru
    mse, l1 = err.square().mean(), err.abs().mean()
    return mse + 0.1 * l1, {"mse": mse.detach(), "l1": l1.detach()}


def training_pairs(args) -> tuple[list[dict], list[dict]]:
    """(training clips, held-out clips) as `decoded_clips` dicts; with --generated the training clips'
    SDEdit decodes are added to the training list."""
    pipe = None
    if args.generated:
        from ..pipeline import TalkingHeadPipeline

        pipe = TalkingHeadPipeline.from_pretrained(args.generated)
        vae = pipe.vae
    else:
        vae = load_vae(args.vae or "assets/model/vae").eval().requires_grad_(False)
        vae_lib.skip_zero_residuals(vae)
    clips = decoded_clips(vae, args.data, args.clips)
    if pipe is not None:
        generated = sdedit_clips(pipe, clips, args.seed, args.sdedit_copies)
        if args.mouth_error_frames:
            generated = [g | {"frame_weights": frame_weights(g["mouth_error"])} if g["mouth_error"] is not None
                         else g for g in generated]
        clips += generated
    return clips, decoded_clips(vae, args.heldout, args.clips) if args.heldout else []


def parse_args(argv=None):
    """The trainer's options (the shared loop's and the refiner's); exits 2 on inconsistent ones."""
    p = base_parser("Train the frame refiner after the VAE decoder")
    p.set_defaults(steps=3000, batch_size=16, lr=1e-3, val_every=250)
    p.add_argument("--vae", help="the frozen VAE (save_pretrained folder or checkpoint; default: the shipped "
                   "model's, or --generated's)")
    p.add_argument("--generated", help="a saved pipeline: also train on its DiT's SDEdit decodes (its VAE is used)")
    p.add_argument("--sdedit-copies", type=int, default=1,
                   help="with --generated: SDEdit decodes per training clip, each its own t0 and noise (each copy "
                   "holds the clip's frames in memory: 320 clips x 3 copies ~ 16 GB)")
    p.add_argument("--mouth-error-frames", action="store_true",
                   help="with --generated: draw half of a generated decode's frames in proportion to its mouth "
                   "box's error against the truth")
    p.add_argument("--clips", type=int, default=200, help="training clips decoded (~2 s each on one thread)")
    p.add_argument("--crop", type=int, default=64, help="crop side in pixels")
    p.add_argument("--hidden-channels", type=int, default=96)
    p.add_argument("--num-layers", type=int, default=6)
    p.add_argument("--heldout", help="clips for validation (never training clips), e.g. data/heldout_val")
    args = p.parse_args(argv)
    if args.vae and args.generated:
        p.error("--generated brings its pipeline's VAE: leave out --vae")
    if args.sdedit_copies < 1:
        p.error(f"--sdedit-copies must be >= 1, got {args.sdedit_copies}")
    if (args.sdedit_copies != 1 or args.mouth_error_frames) and not args.generated:
        p.error("--sdedit-copies and --mouth-error-frames act on --generated's decodes: give --generated PIPELINE")
    return args


def main(argv=None):
    args = parse_args(argv)
    acc = make_accelerator(args)
    clips, heldout = training_pairs(args)
    model = FrameRefiner(hidden_channels=args.hidden_channels, num_layers=args.num_layers)
    ema = FrameRefiner(**model.config).eval().requires_grad_(False)
    ema.load_state_dict(model.state_dict())
    patch = model.config.patch_size
    h, w = clips[0]["truth"].shape[1:3]
    crop = min(args.crop, h, w) // patch * patch
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    decoder_alone = {f"val_{k}_decoder": v for k, v in heldout_psnr(None, heldout).items()}
    keys = ["val_psnr", "val_psnr_eyes", "val_psnr_mouth"]

    def validate():
        row = {f"val_{k}": v for k, v in heldout_psnr(ema, heldout).items()}
        if decoder_alone:
            row |= decoder_alone
            decoder_alone.clear()  # logged once, beside the first validation
        return row

    def finish():
        ema.save_pretrained(f"{args.out}/refiner", safe_serialization=True)

    stage = Stage("frame refiner", model, opt, lambda rand: crop_batch(clips, args.batch_size, crop, patch, rand.np),
                  refiner_loss, ["mse", "l1", "lr"] + keys + [k + "_decoder" for k in keys],
                  validate=validate if heldout else None, finish=finish, ema=ema, warmup=100,
                  extra={"vae": args.generated or args.vae or "assets/model/vae", "generated": bool(args.generated),
                         "sdedit_copies": args.sdedit_copies, "mouth_error_frames": args.mouth_error_frames})
    train(stage, args, acc)


if __name__ == "__main__":
    main()
