"""A constructed starting point for an LTX VAE: a near-linear, PCA-like autoencoder, fitted layer by layer.

    python -m pipeline.train.pca_init --data data/train --out runs/vae_pca --channels 32,64,128,128

Why. On the synthetic faces a *linear* code of the LTX VAE's size — the top 128 principal components
of each 32 x 32 x 8-frame block — reconstructs held-out video at 27.9 dB and single frames at 28.4 dB,
while the trained tiny VAE sits at ~20 dB after hours on this CPU (docs/TRAINING.md §11): gradient
descent, not the code size, is what limits it. So the VAE is *built* to compute such a code and then
fine-tuned end to end (`pipeline.train.vae --init-from`), rather than trained from noise.

How. `AutoencoderKLLTXVideo` (unchanged class and compression) is run stage by stage on a sample of
training windows. Every stage's activation at a position holds one large constant channel (`CONST`)
and the principal-component codes of the pixel region that position stands for (level l: 4·2^l pixels
square, 2^l frames; the first latent frame stands for frame 0 alone, as LTX's causal layout has it).
The constant channel dominates every RMS and layer norm, so they act as fixed scales, and its offset
keeps SiLU near-linear; each residual branch starts at zero (identity, free to learn later). The
layers that move information — the encoder's `conv_in`, strided downsamplers, channel-changing
shortcuts and `conv_out`; the decoder's `conv_in`, shortcuts, depth-to-space upsamplers and
`conv_out` — get only the kernel taps that read their region's own children (or parent), fitted by
ridge least squares from the actual activations (so every norm and SiLU is accounted for exactly) to
the next stage's codes. The decoder is fitted on the encoder's actual latents.
"""
from __future__ import annotations

import argparse
import json

import numpy as np
import torch
import torch.nn.functional as F

from ..config import TINY_VAE, VAEConfig
from ..vae import build_vae, to_pixels
from .common import list_clips

CONST = 300.0  # the constant channel's value: dominates the norms (signals have unit scale)
MAX_ROWS = 150_000  # positions per least-squares fit
FIT_WINDOWS = 64  # windows the time-tap conv_out is fitted on (each gives T·H/4·W/4 rows)


def regions(x: torch.Tensor, level: int) -> torch.Tensor:
    """Pixel regions of one stage: x (B, 3, T, H, W), T = 1 + 8k -> (B, G, H/s, W/s, 3·τ·s·s) with
    τ = 2^level frames and s = 4·2^level pixels; group 0 is frame 0 repeated (the causal first frame)."""
    tau, s = 2**level, 4 * 2**level
    x = torch.cat([x[:, :, :1].expand(-1, -1, tau - 1, -1, -1), x], dim=2)
    b, c, t, h, w = x.shape
    r = x.reshape(b, c, t // tau, tau, h // s, s, w // s, s).permute(0, 2, 4, 6, 1, 3, 5, 7)
    return r.reshape(b, t // tau, h // s, w // s, -1)


class Codes:
    """Principal components of one level's regions; `__call__` -> stage activations (B, C, G, h, w):
    channel 0 = CONST, channels 1..C-1 = the top C-1 codes (the first has unit standard deviation).

    temporal_weight: each region's change over its frames (the mouth moving, a blink) is scaled by
    this before the principal components are taken, so that they keep motion that is small in pixel
    variance but is what lip-sync is read from (a weighted PCA; 1: plain PCA).
    """

    def __init__(self, x: torch.Tensor, level: int, components: int, temporal_weight: float = 1.0):
        self.level, self.temporal_weight = level, temporal_weight
        r = self.weighted(regions(x, level)).flatten(0, 3)
        self.mean = r.mean(0)
        q = min(components + 8, *r.shape)
        _, s, v = torch.pca_lowrank(r - self.mean, q=q, center=False, niter=4)
        self.basis = v[:, :components].contiguous()  # (D, components)
        self.scale = float(s[0]) / (len(r) - 1) ** 0.5

    def weighted(self, r: torch.Tensor) -> torch.Tensor:
        """Regions (..., 3·τ·s·s) with their deviation from their own temporal mean scaled."""
        tau = 2**self.level
        if tau == 1 or self.temporal_weight == 1.0:
            return r
        v = r.unflatten(-1, (3, tau, -1))
        mean = v.mean(dim=-2, keepdim=True)
        return (mean + self.temporal_weight * (v - mean)).flatten(-3)

    def __call__(self, x: torch.Tensor, channels: int) -> torch.Tensor:
        r = self.weighted(regions(x, self.level))
        codes = (r - self.mean) @ self.basis[:, : channels - 1] / self.scale  # (B, G, h, w, C-1)
        out = torch.cat([torch.full_like(codes[..., :1], CONST), codes], dim=-1)
        return out.permute(0, 4, 1, 2, 3).contiguous()


def ridge(features: torch.Tensor, targets: torch.Tensor, lam: float = 1e-6,
          changes: tuple[torch.Tensor, torch.Tensor, float] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Least squares with a bias: features (N, F), targets (N, O) -> weight (O, F), bias (O,). The
    features are standardised first, so that the small ridge term `lam` is the same for every one
    (a norm shrinks the signals ~100x beside the constant channel).

    changes (feature changes (M, F), target changes (M, O), weight mu): also fit mu·|ΔY - ΔX W|², the
    frame-to-frame change of the output to the truth's (the bias cancels in a change).
    """
    if len(features) > MAX_ROWS:  # a random subset is as good a fit and fits in memory
        keep = torch.randperm(len(features), generator=torch.Generator().manual_seed(0))[:MAX_ROWS]
        features, targets = features[keep], targets[keep]
    f = features.double()
    mean, std = f.mean(0), f.std(0).clamp_min(1e-12)
    a = torch.cat([(f - mean) / std, torch.ones(len(f), 1, dtype=torch.float64)], dim=1)
    gram, rhs = a.T @ a, a.T @ targets.double()
    if changes is not None:
        df, dy, mu = changes
        if len(df) > MAX_ROWS:
            pick = torch.randperm(len(df), generator=torch.Generator().manual_seed(1))[:MAX_ROWS]
            df, dy = df[pick], dy[pick]
        scale = mu * len(f) / len(df)  # mu per row, whatever the two row counts
        d = torch.cat([df.double() / std, torch.zeros(len(df), 1, dtype=torch.float64)], dim=1)
        gram, rhs = gram + scale * d.T @ d, rhs + scale * d.T @ dy.double()
    gram[:-1, :-1] += lam * len(f) * torch.eye(len(gram) - 1, dtype=torch.float64)
    sol = torch.linalg.solve(gram, rhs)  # (F + 1, O)
    weight = sol[:-1].T / std
    return weight.float(), (sol[-1] - weight @ mean).float()


def neighbourhood(h: torch.Tensor) -> torch.Tensor:
    """What a 3x3x3 conv's centre time slice reads at each position: (B, C, T, H, W) -> (B, 9·C, T, H, W),
    ordered (c, di, dj), space padded by zeros (LTXVideoCausalConv3d's rule). Time stays the centre tap:
    fitted on short windows, a temporal tap would only ever see the padding's copies at clip ends."""
    b, c, t, hh, ww = h.shape
    p = F.pad(h, (1, 1, 1, 1))
    taps = [p[:, :, :, di : di + hh, dj : dj + ww] for di in range(3) for dj in range(3)]
    return torch.stack(taps, dim=2).reshape(b, c * 9, t, hh, ww)


def time_window(h: torch.Tensor) -> list[torch.Tensor]:
    """What a 3-tap time kernel of the non-causal decoder reads at each frame, centre in space:
    [frame before, frame, frame after] of h (B, C, T, H, W), the ends repeated (its replicate padding)."""
    p = torch.cat([h[:, :, :1], h, h[:, :, -1:]], dim=2)
    return [p[:, :, k : k + h.shape[2]] for k in range(3)]


def rows(h: torch.Tensor) -> torch.Tensor:
    """(B, C, G, h, w) -> (B·G·h·w, C)."""
    return h.permute(0, 2, 3, 4, 1).reshape(-1, h.shape[1])


@torch.no_grad()
def set_taps(conv: torch.nn.Conv3d, weight: torch.Tensor, bias: torch.Tensor, offset: tuple[int, int, int]) -> None:
    """Zero the kernel, then put weight (O, I) at one tap (or (O, I, kt, kh, kw) from that tap on)."""
    conv.weight.zero_()
    w = weight.reshape(*weight.shape[:2], *([1] * 3)) if weight.dim() == 2 else weight
    t, i, j = offset
    conv.weight[:, :, t : t + w.shape[2], i : i + w.shape[3], j : j + w.shape[4]] = w
    conv.bias.copy_(bias)


def zero_branch(resnet) -> None:
    """A resnet block whose residual branch adds nothing (yet): conv2 = 0."""
    resnet.conv2.conv.weight.data.zero_()
    resnet.conv2.conv.bias.data.zero_()


def batched(fn, h: torch.Tensor, size: int = 32) -> torch.Tensor:
    return torch.cat([fn(h[i : i + size]) for i in range(0, len(h), size)])


def fit_shortcut(resnet, h: torch.Tensor, target: torch.Tensor) -> None:
    """A channel-changing resnet block (layer norm + 1x1 shortcut) fitted to map h to target."""
    zero_branch(resnet)
    normed = resnet.norm3(h.movedim(1, -1)).movedim(-1, 1)
    w, b = ridge(rows(normed), rows(target))
    set_taps(resnet.conv_shortcut.conv, w, b, (0, 0, 0))


def fit_downsampler(conv: torch.nn.Conv3d, h: torch.Tensor, target: torch.Tensor) -> None:
    """Strided causal 3x3x3 conv: parent (t, i, j) reads children (2t-1, 2t) x (2i, 2i+1) x (2j, 2j+1)
    (child -1 is the causal padding's copy of child 0): kernel taps 1..2 on each axis."""
    b, c, t, hh, ww = h.shape
    padded = torch.cat([h[:, :, :1], h], dim=2)  # (B, C, 2G, H, W)
    g = padded.reshape(b, c, t // 2 + 1, 2, hh // 2, 2, ww // 2, 2).permute(0, 2, 4, 6, 1, 3, 5, 7)
    w, bias = ridge(g.reshape(-1, c * 8), rows(target))
    set_taps(conv, w.reshape(-1, c, 2, 2, 2), bias, (1, 1, 1))


def fit_upsampler(conv: torch.nn.Conv3d, h: torch.Tensor, child: torch.Tensor, neighbours: bool = False,
                  time_taps: bool = False) -> None:
    """Depth-to-space 3x3x3 conv (centre tap): parent (t, i, j) -> children (2t + st - 1, 2i + sh, 2j + sw),
    output channel c·8 + st·4 + sh·2 + sw; the child (t=0, st=0) is dropped by the upsampler.

    neighbours: the parent's 8 spatial neighbours are read too (3x3 taps at the centre time).
    time_taps (with neighbours): so are the parents before and after in time (their centre taps; the
    decoder's non-causal padding repeats the end ones), so that a child at the edge of its parent's span
    is predicted from both sides of the boundary, as the truth is continuous there.
    """
    b, c, t, hh, ww = h.shape
    cc = child.shape[1]
    padded = torch.cat([child[:, :, :1], child], dim=2)  # a dummy child for (t=0, st=0)
    y = padded.reshape(b, cc, t, 2, hh, 2, ww, 2)
    x = neighbourhood(h) if neighbours else h
    if neighbours and time_taps:
        before, _, after = time_window(h)
        x = torch.cat([x, before, after], dim=1)
    x = rows(x)
    weight, bias = torch.zeros(cc * 8, x.shape[1]), torch.zeros(cc * 8)
    for st in range(2):
        for sh in range(2):
            for sw in range(2):
                target = rows(y[:, :, :, st, :, sh, :, sw])
                keep = torch.ones(b, t, hh, ww, dtype=torch.bool)
                if st == 0:
                    keep[:, 0] = False
                w, bb = ridge(x[keep.flatten()], target[keep.flatten()], lam=1e-4 if neighbours else 1e-6)
                k = st * 4 + sh * 2 + sw
                weight[k::8], bias[k::8] = w, bb
    if not neighbours:
        set_taps(conv, weight, bias, (1, 1, 1))
        return
    kernel = torch.zeros(cc * 8, c, 3, 3, 3)
    kernel[:, :, 1] = weight[:, : 9 * c].reshape(cc * 8, c, 3, 3)
    if time_taps:
        kernel[:, :, 0, 1, 1], kernel[:, :, 2, 1, 1] = weight[:, 9 * c : 10 * c], weight[:, 10 * c :]
    set_taps(conv, kernel, bias, (0, 0, 0))


def patchify(x: torch.Tensor, p: int = 4) -> torch.Tensor:
    """The LTX encoder's own patch order: (B, 3, T, H, W) -> (B, 3·p·p, T, H/p, W/p)."""
    b, c, t, h, w = x.shape
    return x.reshape(b, c, t, 1, h // p, p, w // p, p).permute(0, 1, 3, 7, 5, 2, 4, 6).flatten(1, 4)


@torch.no_grad()
def build_encoder(vae, x: torch.Tensor, codes: list[Codes], logvar: float) -> None:
    """Fit the encoder on windows x (B, 3, 1 + 8k, H, W)."""
    enc = vae.encoder
    h = patchify(x)
    target = codes[0](x, enc.conv_in.conv.out_channels)
    w, b = ridge(rows(h), rows(target))
    set_taps(enc.conv_in.conv, w, b, (2, 1, 1))  # causal: tap 2 is the frame itself
    h, level = batched(enc.conv_in, h), 0
    for block in enc.down_blocks:
        for r in block.resnets:
            zero_branch(r)
        if block.downsamplers is not None:
            level += 1
            conv = block.downsamplers[0].conv
            fit_downsampler(conv, h, codes[level](x, conv.out_channels))
            h = batched(block.downsamplers[0], h)
        if block.conv_out is not None:
            fit_shortcut(block.conv_out, h, codes[level](x, block.conv_out.conv_shortcut.conv.out_channels))
            h = batched(block.conv_out, h)
    for r in enc.mid_block.resnets:
        zero_branch(r)
    a = F.silu(enc.norm_out(h.movedim(1, -1)).movedim(-1, 1))
    latent = vae.config.latent_channels
    target = codes[3](x, latent + 1)[:, 1:]  # the top `latent` codes
    w, b = ridge(rows(a), rows(target))
    weight = torch.cat([w, torch.zeros(1, w.shape[1])])  # + the log-variance channel: a constant
    set_taps(enc.conv_out.conv, weight, torch.cat([b, torch.tensor([logvar])]), (2, 1, 1))


@torch.no_grad()
def latent_means(vae, x: torch.Tensor) -> torch.Tensor:
    """The encoder's posterior means of windows x, not normalised (what its decoder reads)."""
    return batched(lambda v: vae.encode(v).latent_dist.mode(), x, 16)


@torch.no_grad()
def build_decoder(vae, x: torch.Tensor, z: torch.Tensor, codes: list[Codes], time_taps: bool = False,
                  change_weight: float = 0.0, deep_time_taps: bool = False) -> None:
    """Fit the decoder to map latents z (the encoder's) back to the windows x.

    time_taps: `conv_out` also reads the frame before and after (its 3 time taps), so that a frame at the
    edge of one latent frame's 8 can blend with its neighbour's; fit on windows of several latent frames.
    change_weight (with time_taps): weight of matching the frame-to-frame change too (`ridge`'s changes),
    against the jump at latent-frame boundaries, where two blocks' independent code errors meet.
    deep_time_taps: the two deeper upsamplers read the parents before and after in time too
    (`fit_upsampler`), so the blend across a latent-frame boundary spans 4 frames, not 1.
    """
    dec = vae.decoder
    c_in, c_out = z.shape[1], dec.conv_in.conv.out_channels
    w, b = ridge(rows(neighbourhood(z)), rows(codes[3](x, c_out)), lam=1e-4)
    set_taps(dec.conv_in.conv, w.reshape(c_out, c_in, 1, 3, 3), b, (1, 0, 0))  # 3x3 taps: no tile stands alone
    h, level = batched(dec.conv_in, z), 3
    for r in dec.mid_block.resnets:
        zero_branch(r)
    for block in dec.up_blocks:
        if block.conv_in is not None:
            fit_shortcut(block.conv_in, h, codes[level](x, block.conv_in.conv_shortcut.conv.out_channels))
            h = batched(block.conv_in, h)
        if block.upsamplers is not None:
            level -= 1
            conv = block.upsamplers[0].conv.conv
            fit_upsampler(conv, h, codes[level](x, conv.out_channels // 8), neighbours=level >= 1,
                          time_taps=deep_time_taps)
            h = batched(block.upsamplers[0], h)
        for r in block.resnets:
            zero_branch(r)
    a = F.silu(dec.norm_out(h.movedim(1, -1)).movedim(-1, 1))
    if not time_taps:
        w, b = ridge(rows(a), rows(patchify(x)))
        set_taps(dec.conv_out.conv, w, b, (1, 1, 1))
        return
    a, x = a[:FIT_WINDOWS], x[:FIT_WINDOWS]  # rows enough for MAX_ROWS, and memory for the changes
    feats, pixels = torch.cat(time_window(a), dim=1), patchify(x)
    changes = None
    if change_weight:
        changes = (rows(feats.diff(dim=2)), rows(pixels.diff(dim=2)), change_weight)
    w, b = ridge(rows(feats), rows(pixels), lam=1e-4, changes=changes)
    c = a.shape[1]
    set_taps(dec.conv_out.conv, w.reshape(-1, 3, c).permute(0, 2, 1).reshape(-1, c, 3, 1, 1), b, (0, 1, 1))


def sample_windows(data, windows: int, frames: int = 9, seed: int = 0) -> torch.Tensor:
    """Random (1 + 8k)-frame windows of the clips in `data` -> (windows, 3, frames, H, W) in [-1, 1]."""
    rng, dirs, out = np.random.default_rng(seed), list_clips(data), []
    for i in range(windows):
        video = np.load(dirs[rng.integers(len(dirs))] / "frames.npz")["frames"]
        s = rng.integers(len(video) - frames + 1)
        out.append(to_pixels(video[s : s + frames]))
    return torch.stack(out)


def level_codes(vae, x: torch.Tensor, temporal_weight: float) -> list[Codes]:
    """The principal components of levels 0-3, as many as any stage (or the latent) of `vae` holds."""
    c = vae.config
    widest = max(*c.block_out_channels, *c.decoder_block_out_channels, c.latent_channels) + 1
    return [Codes(x, level, widest, temporal_weight) for level in range(4)]


def construct(data, channels=(32, 64, 128, 128), windows: int = 400, logvar: float = -8.0, seed: int = 0,
              temporal_weight: float = 1.0):
    """The constructed VAE (TINY_VAE's layout with `channels` for encoder and decoder)."""
    kwargs = dict(TINY_VAE, block_out_channels=tuple(channels), decoder_block_out_channels=tuple(channels))
    vae = build_vae(VAEConfig(kwargs=kwargs)).eval()
    x = sample_windows(data, windows, seed=seed)
    codes = level_codes(vae, x, temporal_weight)
    build_encoder(vae, x, codes, logvar)
    z = latent_means(vae, x)
    build_decoder(vae, x, z, codes)
    vae.latents_mean.copy_(z.mean(dim=(0, 2, 3, 4)))  # what `vae.normalize` gives the DiT: unit scale per channel
    vae.latents_std.copy_(z.std(dim=(0, 2, 3, 4)).clamp_min(1e-4))
    return vae


def refit_decoder(vae, data, windows: int = 400, temporal_weight: float = 1.0, seed: int = 0, frames: int = 9,
                  time_taps: bool = False, change_weight: float = 0.0, deep_time_taps: bool = False):
    """Fit the decoder of a saved (constructed) VAE again, its encoder — so the DiT's latents — unchanged."""
    x = sample_windows(data, windows, frames, seed=seed)
    build_decoder(vae, x, latent_means(vae, x), level_codes(vae, x, temporal_weight), time_taps, change_weight,
                  deep_time_taps)
    return vae


@torch.no_grad()
def psnr(vae, x: torch.Tensor) -> float:
    """PSNR (dB) of windows x through the VAE (posterior means), as the VAE trainer's validation."""
    from .vae import psnr as pixel_psnr

    return pixel_psnr(batched(lambda v: vae.decode(v).sample.clamp(-1, 1), latent_means(vae, x), 16), x)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--heldout", help="clips for the printed held-out PSNR")
    p.add_argument("--channels", default="32,64,128,128", help="block_out_channels of encoder and decoder")
    p.add_argument("--windows", type=int, default=400, help="9-frame training windows to fit on")
    p.add_argument("--temporal-weight", type=float, default=1.0, help="weight of motion in the codes (Codes)")
    p.add_argument("--refit-decoder", metavar="VAE", help="keep this constructed VAE's encoder, fit its decoder again")
    p.add_argument("--frames", type=int, default=9, help="frames per fitting window (1 + 8k) for --refit-decoder")
    p.add_argument("--time-taps", action="store_true",
                   help="with --refit-decoder: the decoder's conv_out reads the frames before and after too")
    p.add_argument("--change-weight", type=float, default=0.0,
                   help="with --time-taps: also fit the frame-to-frame change (against latent-boundary jumps)")
    p.add_argument("--deep-time-taps", action="store_true",
                   help="with --refit-decoder: the two deeper upsamplers read the latent frames before and after too")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    if a.refit_decoder:
        from diffusers import AutoencoderKLLTXVideo

        vae = refit_decoder(AutoencoderKLLTXVideo.from_pretrained(a.refit_decoder).eval(), a.data, a.windows,
                            a.temporal_weight, frames=a.frames, time_taps=a.time_taps, change_weight=a.change_weight,
                            deep_time_taps=a.deep_time_taps)
    else:
        vae = construct(a.data, tuple(int(c) for c in a.channels.split(",")), a.windows, temporal_weight=a.temporal_weight)
    vae.save_pretrained(f"{a.out}/vae")
    if a.heldout:
        x = sample_windows(a.heldout, 32, seed=1)
        print(json.dumps(dict(heldout_psnr_window=psnr(vae, x), heldout_psnr_frame=psnr(vae, x[:, :, :1]))))


if __name__ == "__main__":
    main()
