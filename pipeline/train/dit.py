"""Train the A2V-DiT with the ANS asynchronous forward process (eq. 11-15) on cached latents.

    python -m pipeline.train.cache latents --data data/train --vae runs/vae/vae --speech-ae runs/speech_ae/speech_ae
    python -m pipeline.train.dit --data data/train --out runs/dit --steps 4000 \
        --vae runs/vae/vae --speech-ae runs/speech_ae/speech_ae

Each sample is [z_R, z_1 ... z_f]: a reference frame of the clip encoded alone, and f consecutive
latent frames. Times are [0, t1, t2, ..., t2] with t1 < t2 (reference clean, motion frame less
noisy); the audio and/or the reference are dropped at random so Joint- and Split-CFG work. The loss
is the flow-matching velocity MSE on the clip frames. An EMA of the weights (decay warmed up as
min(ema, (1+step)/(10+step))) is what gets exported (`--export-weights raw` for the optimiser's);
with --vae and --speech-ae the run ends with a complete `TalkingHeadPipeline` in OUT/pipeline.

Ablations (READ Table 2 and Fig. 2), same script and budget:
- `--speech-encoder scratch`: a SpeechAE without pretraining, trained from scratch with the DiT on the
  cached Whisper features; `--speech-encoder linear`: no SpeechAE, a linear projection instead.
- `--no-ans`: synchronous noise (one time for all clip frames) and, in the exported pipeline, plain
  clip concatenation (no motion frame carried from clip to clip).

`--speech-encoder finetune` starts from the pretrained SpeechAE (`--speech-ae`) and trains it with the
DiT (the encoder's decoder is unused); `--init-dit` starts the DiT from a trained one. Together they
fine-tune a shipped model end to end (docs/TRAINING.md); `--grow-depth N` deepens the `--init-dit` DiT
first, its new blocks starting as the identity (`grow_depth`). `--sync-probe P` adds a frozen latent
lip-sync expert's error on the clean-latent estimate to the loss (`sync_probe`, docs/TRAINING.md §15).
"""
from __future__ import annotations

import copy
import dataclasses

import numpy as np
import torch
from safetensors.torch import load_file

from ..config import TEMPORAL_COMPRESSION, get_preset
from ..dit import A2VDiT, build_dit
from ..scheduler import add_noise, euler_step, sample_async_timesteps, velocity_target
from ..speech import build_speech_encoder, load_speech_encoder
from ..vae import first_video_frame, video_frames
from .cache import speech_windows
from .common import Stage, base_parser, list_clips, make_accelerator, train
from .sync_probe import LatentSyncProbe, openness_targets, sync_loss


class LatentWindows:
    """Cached latents, reference latents and speech codes of every clip; random f-frame windows.

    With `speech` (a SpeechConfig), the clips' whole Whisper windows are kept too, for a speech encoder
    trained with the DiT; the batch then carries (windows, first latent index) instead of codes.
    """

    def __init__(self, clips, speech=None, mouth_weight: float = 1.0, openness: bool = False):
        self.items = [load_file(str(d / "latents.safetensors")) for d in clips]
        self.mouth_weight = mouth_weight
        if openness or mouth_weight != 1.0:
            for d, it in zip(clips, self.items):
                gt = np.load(d / "gt.npz")
                if openness:  # the lip-sync expert's targets (sync_probe)
                    it["openness"] = openness_targets(gt["openness"], it["latents"].shape[1])
                if mouth_weight != 1.0:
                    it["mouth"] = mouth_mask(gt["mouth_box"], it["latents"].shape, frame_size(d))
        if speech is not None:
            for d, it in zip(clips, self.items):
                it["windows"] = speech_windows(d, video_frames(it["latents"].shape[1]), speech).half()

    def batch(self, size: int, f: int, rng):
        zs, refs, codes, windows, starts, masks, opens = [], [], [], [], [], [], []
        for _ in range(size):
            it = self.items[rng.integers(len(self.items))]
            s = rng.integers(it["latents"].shape[1] - f + 1)
            zs.append(it["latents"][:, s : s + f])
            if "mouth" in it:
                masks.append(it["mouth"][s : s + f])
            if "openness" in it:
                opens.append(it["openness"][s : s + f])
            refs.append(it["refs"][rng.integers(len(it["refs"]))][:, None])
            codes.append(it["codes"][s : s + f])
            if "windows" in it:
                windows.append(it["windows"].float())
                starts.append(int(s))
        audio = (torch.stack(windows), torch.tensor(starts)) if windows else torch.stack(codes)
        # (B,C,f,h,w) (B,C,1,h,w) (B,f,M,Dc) or windows, (B,1,f,h,w) or None, (B,f,8) or None
        return torch.stack(zs), torch.stack(refs), audio, self.loss_weight(masks), torch.stack(opens) if opens else None

    def loss_weight(self, masks: list[torch.Tensor]) -> torch.Tensor | None:
        """(B, 1, f, h, w) weights 1 outside, `mouth_weight` on the mouth's latent positions; None when off."""
        if not masks:
            return None
        return (1.0 + (self.mouth_weight - 1.0) * torch.stack(masks).float())[:, None]


def frame_size(clip) -> int:
    """The clip's frame side in pixels (meta.json `size`)."""
    import json

    return int(json.loads((clip / "meta.json").read_text())["size"])


def mouth_mask(boxes: np.ndarray, latent_shape, size: int) -> torch.Tensor:
    """Which latent positions show the mouth: (L, h, w) bool, L = latent frames of `latent_shape` (C, L, h, w).

    `boxes` (N, 4) are the generator's per-frame mouth boxes (x0, y0, x1, y1) in pixels of a `size`² frame.
    Latent frame 0 stands for frame 0 alone and latent k >= 1 for frames 8k-7 .. 8k (LTX's causal layout); a
    position is the mouth's when the box of any of its frames overlaps its cell.
    """
    _, L, h, w = latent_shape
    cell_h, cell_w = size / h, size / w
    mask = torch.zeros(L, h, w, dtype=torch.bool)
    for k in range(L):
        for x0, y0, x1, y1 in boxes[first_video_frame(k) : first_video_frame(k + 1)]:
            mask[k, int(y0 // cell_h) : int(np.ceil(y1 / cell_h)), int(x0 // cell_w) : int(np.ceil(x1 / cell_w))] = True
    return mask


class SpeechDiT(torch.nn.Module):
    """The DiT and a speech encoder trained together (fine-tuning, the SpeechAE ablations): one module, so
    that several processes keep both in sync. `audio` is (whole-clip windows, first latent index).

    The encoder is causal, so only the frames up to the batch's last needed latent frame are encoded.
    """

    def __init__(self, dit, encoder):
        super().__init__()
        self.dit, self.encoder = dit, encoder

    def forward(self, x, t, audio, drop_audio=None, drop_ref=None):
        windows, starts = audio
        f = x.shape[2] - 1
        last = int(starts.max()) + f - 1  # the last latent frame any sample needs
        codes = self.encoder.encode(windows[:, : 1 + TEMPORAL_COMPRESSION * last])  # (B, 1+last, M, Dc)
        idx = starts.to(codes.device)[:, None] + torch.arange(f, device=codes.device)  # (B, f)
        codes = codes[torch.arange(len(idx), device=codes.device)[:, None], idx]
        return self.dit(x, t, codes, drop_audio=drop_audio, drop_ref=drop_ref)


def ans_loss(model, z, ref, codes, t, noise, drop_audio, drop_ref, weight=None, openness=None, sync=None):
    """Velocity MSE under the asynchronous schedule t (B, 1+f); the reference is never noised.

    `weight` (B, 1, f, h, w), optional: a weighted mean over the clip frames' positions (the mouth weight).
    `sync` (frozen `LatentSyncProbe`, weight w), with `openness` (B, f, 8): + w x the expert's error on the
    clean-latent estimate x0 = x_t - t v of the samples that hear their audio, each frame weighted by 1 - t
    (at high noise the estimate is a blur the expert never saw).
    """
    x0 = torch.cat([ref, z], dim=2)  # (B, C, 1+f, h, w)
    xt = add_noise(x0, noise, t)
    v = model(xt, t, codes, drop_audio=drop_audio, drop_ref=drop_ref)
    err = (v[:, :, 1:].float() - velocity_target(x0, noise)[:, :, 1:]) ** 2
    loss = err.mean() if weight is None else (err * weight).sum() / (weight.sum() * err.shape[1])
    if sync is None or openness is None:
        return loss
    probe, w = sync
    x0_hat = euler_step(xt[:, :, 1:].float(), v[:, :, 1:].float(), t[:, 1:], torch.zeros_like(t[:, 1:]))  # to t = 0
    frame_weight = (1 - t[:, 1:]) * (~drop_audio)[:, None]  # (B, f)
    return loss + w * sync_loss(probe, x0_hat, openness, frame_weight)


def parse_args(argv=None):
    p = base_parser("Train the A2V-DiT with ANS")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--p-drop-audio", type=float, default=0.2)
    p.add_argument("--p-drop-ref", type=float, default=0.1)
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--vae", help="trained VAE folder: export a full pipeline at the end")
    p.add_argument("--speech-ae", help="trained SpeechAE folder: export a full pipeline at the end")
    p.add_argument("--speech-encoder", choices=["pretrained", "finetune", "scratch", "linear"], default="pretrained",
                   help="pretrained: cached codes of the frozen pretrained SpeechAE (the method); finetune: the "
                        "pretrained SpeechAE trained with the DiT; scratch / linear: ablations trained with the "
                        "DiT on the cached Whisper features")
    p.add_argument("--init-dit", help="start the DiT from this trained DiT folder (save_pretrained)")
    p.add_argument("--grow-depth", type=int, help="with --init-dit: deepen it to this many blocks, the new ones "
                                                  "starting as the identity (`grow_depth`)")
    p.add_argument("--heldout", help="clips never trained on (cached like --data): logs heldout_loss, which rises "
                                     "when the DiT starts to memorise the training clips")
    p.add_argument("--no-ans", action="store_true", help="ablation: synchronous noise, plain clip concatenation")
    p.add_argument("--mouth-weight", type=float, default=1.0,
                   help="loss weight of the latent positions that show the mouth (generator's mouth_box), others 1; "
                        "lip/face masks weighting the diffusion loss as in Hallo (Xu et al. 2024); 1: plain MSE")
    p.add_argument("--sync-probe", help="a trained `sync_probe` (latent lip-sync expert): adds its openness error "
                                        "on the DiT's clean-latent estimate to the loss (Wav2Lip's expert loss)")
    p.add_argument("--sync-weight", type=float, default=4.0,
                   help="weight of the --sync-probe loss (4: lip-sync +0.015, FM loss +3%%; 12 costs more, gains no more)")
    p.add_argument("--export-weights", choices=["ema", "raw"], default="ema",
                   help="which weights the run exports (raw: the optimiser's, for short runs where the EMA lags)")
    args = p.parse_args(argv)
    if args.speech_encoder == "finetune" and not args.speech_ae:
        p.error("--speech-encoder finetune starts from --speech-ae")
    if args.grow_depth and not args.init_dit:
        p.error("--grow-depth deepens a trained DiT: give --init-dit")
    return args


def build(args, cfg):
    """The DiT (fresh or --init-dit), wrapped with a trained speech encoder unless codes are cached."""
    dit = (A2VDiT.from_pretrained(args.init_dit) if args.init_dit else build_dit(cfg.dit)).train()
    if args.grow_depth:
        dit = grow_depth(dit, args.grow_depth).train()
    if args.speech_encoder == "finetune":
        return SpeechDiT(dit, load_speech_encoder(args.speech_ae)).train()
    if args.speech_encoder != "pretrained":
        kind = "linear" if args.speech_encoder == "linear" else "speech_ae"
        return SpeechDiT(dit, build_speech_encoder(cfg.speech, kind)).train()
    return dit


def grow_depth(dit: A2VDiT, depth: int) -> A2VDiT:
    """A deeper copy of a trained DiT that computes the same function (a function-preserving
    deepening, as Net2Net's identity layers, Chen et al. 2016).

    The old blocks keep their weights and order; the new ones are spread evenly between them, freshly
    initialised but with the output projections of their self-attention, audio cross-attention and MLP
    at zero, so each adds nothing until it trains (its gradients are not zero: those projections'
    inputs are not). The modulation is shared by all blocks, so zero gates would not do.
    Raises ValueError when `depth` is smaller than the DiT's depth.
    """
    old = dit.config.depth
    if depth < old:
        raise ValueError(f"grow_depth: depth {depth} is smaller than the DiT's {old}")
    kwargs = {k: v for k, v in dit.config.items() if not k.startswith("_")}
    deeper = A2VDiT(**(kwargs | {"depth": depth})).to(next(dit.parameters()).dtype)
    where = np.round(np.linspace(0, depth - 1, old)).astype(int)  # the old blocks' new places
    state = {k: v for k, v in dit.state_dict().items() if not k.startswith("blocks.")}
    for i, j in enumerate(where):
        state |= {f"blocks.{j}.{k}": v for k, v in dit.blocks[i].state_dict().items()}
    for j in sorted(set(range(depth)) - set(where.tolist())):
        block = deeper.blocks[j]
        for m in (block.attn.out, block.audio_attn.out, block.mlp[2]):
            torch.nn.init.zeros_(m.weight)
            torch.nn.init.zeros_(m.bias)
        state |= {f"blocks.{j}.{k}": v for k, v in block.state_dict().items()}
    deeper.load_state_dict(state)
    return deeper


def ans_batch(data, args, f, sc):
    """Draws (latents, reference, speech, times, noise, audio drop, reference drop) for one step."""
    def batch(rand):
        z, ref, codes, weight, openness = data.batch(args.batch_size, f, rand.np)
        B, g = z.shape[0], rand.torch
        t = sample_async_timesteps(B, f, sc.train_mu, sc.train_sigma, generator=g, synchronous=args.no_ans)
        noise = torch.randn((B,) + z.shape[1:2] + (f + 1,) + z.shape[3:], generator=g)
        drop_a = torch.rand(B, generator=g) < args.p_drop_audio
        drop_r = torch.rand(B, generator=g) < args.p_drop_ref
        return z, ref, codes, t, noise, drop_a, drop_r, weight, openness
    return batch


def main(argv=None):
    args = parse_args(argv)
    acc = make_accelerator(args)
    cfg = get_preset(args.preset)
    cfg.sampling = dataclasses.replace(cfg.sampling, motion_guidance=not args.no_ans)  # frozen settings
    f, sc = cfg.sampling.clip_latent_frames, cfg.sampling
    dit = build(args, cfg)
    ema = copy.deepcopy(dit).requires_grad_(False)
    opt = torch.optim.AdamW(dit.parameters(), lr=args.lr, weight_decay=0.0)
    speech_cfg = cfg.speech if args.speech_encoder != "pretrained" else None  # whisper windows for a trained encoder
    data = LatentWindows(list_clips(args.data), speech_cfg, args.mouth_weight, openness=bool(args.sync_probe))
    sync = (LatentSyncProbe.from_pretrained(args.sync_probe).eval().requires_grad_(False), args.sync_weight) \
        if args.sync_probe else None
    val = validation_batch(data, f, sc, args.no_ans)
    heldout = validation_batch(LatentWindows(list_clips(args.heldout), speech_cfg), f, sc, args.no_ans) if args.heldout else None
    stage = Stage("A2V-DiT (ANS)", dit, opt, ans_batch(data, args, f, sc), lambda m, b: (ans_loss(m, *b, sync=sync), {}),
                  ["loss", "lr", "val_loss", "val_loss_noaudio"] + (["heldout_loss"] if heldout else []),
                  validate=lambda: validate(ema, val, heldout), finish=lambda: finish(cfg, args, ema, dit),
                  ema=ema, ema_decay=args.ema, warmup=args.warmup)
    train(stage, args, acc)


def finish(cfg, args, ema, dit):
    """Save the exported weights (EMA or raw), and a complete pipeline when the parts are given."""
    final = ema if args.export_weights == "ema" else dit
    final_dit, encoder = (final.dit, final.encoder) if isinstance(final, SpeechDiT) else (final, None)
    final_dit.save_pretrained(f"{args.out}/dit")
    if encoder is not None:
        encoder.save_pretrained(f"{args.out}/speech_encoder")
    if args.vae and (args.speech_ae or encoder is not None):
        export(cfg, args.vae, encoder if encoder is not None else args.speech_ae, final_dit, f"{args.out}/pipeline")


def validation_batch(data, f, sc, synchronous=False):
    """A fixed batch with fixed times and noise, so val_loss curves are comparable across steps."""
    z, ref, codes, _, _ = data.batch(16, f, np.random.default_rng(123))  # unweighted: comparable across runs
    g = torch.Generator().manual_seed(123)
    t = sample_async_timesteps(16, f, sc.train_mu, sc.train_sigma, generator=g, synchronous=synchronous)
    noise = torch.randn((16,) + z.shape[1:2] + (f + 1,) + z.shape[3:], generator=g)
    return z, ref, codes, t, noise


@torch.no_grad()
def validate(model, val, heldout=None):
    """Fixed-batch losses on training clips (with and without audio) and, if given, on held-out clips."""
    z, ref, codes, t, noise = val
    no, yes = torch.zeros(len(z), dtype=torch.bool), torch.ones(len(z), dtype=torch.bool)
    out = dict(val_loss=ans_loss(model, z, ref, codes, t, noise, no, no).item(),
               val_loss_noaudio=ans_loss(model, z, ref, codes, t, noise, yes, no).item())
    if heldout is not None:
        z, ref, codes, t, noise = heldout
        out["heldout_loss"] = ans_loss(model, z, ref, codes, t, noise, no[: len(z)], no[: len(z)]).item()
    return out


def export(cfg, vae_dir, speech_ae, dit, out):
    """A complete pipeline: the VAE folder, the speech encoder (a folder or a module) and the DiT."""
    from diffusers import AutoencoderKLLTXVideo

    from ..pipeline import TalkingHeadPipeline

    encoder = load_speech_encoder(speech_ae) if isinstance(speech_ae, (str, bytes)) else copy.deepcopy(speech_ae)
    pipe = TalkingHeadPipeline(AutoencoderKLLTXVideo.from_pretrained(vae_dir), encoder, copy.deepcopy(dit), cfg)
    pipe.save_pretrained(out)


if __name__ == "__main__":
    main()
