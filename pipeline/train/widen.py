"""Function-preserving widening of an LTX VAE decoder (Net2WiderNet, Chen et al. 2016, "Net2Net").

A decoder whose block widths are integer multiples of a trained one's starts *as* the trained one:
every hidden channel c of width C becomes the copies c, c + C, c + 2C, ...; a layer reading widened
channels splits each of its input weights among the copies at random (the shares sum to the old
weight), so the wider decoder computes exactly the old function while the copies, with unequal
outgoing weights, receive different gradients and can specialise. The RMS and layer norms of
`AutoencoderKLLTXVideo`'s decoder see the same statistics over duplicated channels, SiLU is
element-wise and the residual sums add copies to copies, so nothing else changes. The depth-to-space
upsamplers' convolutions emit (C, stride_t * stride_h * stride_w) groups; whole groups are copied.

Why: a wider decoder trained from scratch spent its first thousands of steps relearning what the
shipped one knows (one latent frame -> eight video frames with the mouth in motion; docs/TRAINING.md
§10); widened, it keeps the shipped decoder's latents, quality and timing from step 0 and only adds
capacity. The encoder is copied unchanged, so the DiT's latents stay valid.
"""
from __future__ import annotations

import torch


def _source_rows(new: int, old: int, group: int = 1) -> torch.Tensor:
    """Old channel index of each new one: copy k of channel c sits at c + k * old (in `group`-sized blocks)."""
    if new % old:
        raise ValueError(f"cannot widen {old // group} channels to {new // group}: not an integer multiple")
    idx = torch.arange(new)
    return (idx // group) % (old // group) * group + idx % group


@torch.no_grad()
def widen_decoder(small, wide, generator: torch.Generator | None = None, share: tuple[float, float] = (0.25, 0.75)) -> None:
    """Copy `small` (a trained AutoencoderKLLTXVideo) into `wide`, whose decoder widths are multiples of it.

    small, wide: the same config except `decoder_block_out_channels`, each an integer multiple, with
        equal neighbours kept equal (e.g. (16, 32, 64, 64) -> (32, 64, 128, 128), not (32, 64, 128, 192)).
    share: range of the random share of an input weight that each copy but the last receives (the
        last gets the rest), which breaks the copies' symmetry without changing the output.
    Raises ValueError when a width is not a multiple or the parameter names differ.
    After this call `wide.decode(z)` equals `small.decode(z)` up to float rounding; the encoder and the
    latent statistics are `small`'s.
    """
    wide.encoder.load_state_dict(small.encoder.state_dict())
    wide.latents_mean.copy_(small.latents_mean), wide.latents_std.copy_(small.latents_std)
    old, new = dict(small.decoder.named_parameters()), dict(wide.decoder.named_parameters())
    if old.keys() != new.keys():
        raise ValueError("the two decoders differ in structure, not only in width: neighbouring blocks of equal "
                         "width must stay equal (a block between two widths gains a resnet in its input)")
    for name, p_new in new.items():
        p = old[name]
        group = 8 if ".upsamplers." in name else 1  # (C, 2, 2, 2) output groups before depth-to-space
        if p.shape[0] != p_new.shape[0]:  # emits widened channels (or a norm's affine over them): copies
            p = p[_source_rows(p_new.shape[0], p.shape[0], group)]
        if p.dim() > 1 and p.shape[1] != p_new.shape[1]:  # reads widened channels: split among the copies
            p = _split_inputs(p, p_new.shape[1], generator, share)
        p_new.copy_(p)


def _split_inputs(weight: torch.Tensor, new: int, generator, share) -> torch.Tensor:
    """(O, I, ...) -> (O, new, ...): input column c's weight shared at random among its copies."""
    old = weight.shape[1]
    copies = new // old
    src = weight[:, _source_rows(new, old)]
    lo, hi = share
    fractions = lo + (hi - lo) * torch.rand(copies - 1, *weight.shape, generator=generator)  # (k-1, O, I, ...)
    remaining, parts = torch.ones_like(weight), []
    for f in fractions:  # copy k gets f_k of what the copies before it left
        parts.append(remaining * f)
        remaining = remaining * (1 - f)
    parts.append(remaining)
    return src * torch.cat(parts, dim=1).to(src.dtype)
