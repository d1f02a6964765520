"""Fidelity measurement (issue: a default model that keeps the face): the generator's eyes box, the
VAE figures of `eval.synthetic --vae-only`, candidate VAE loading, and the mouth reader's own check."""
import numpy as np
import pytest
import torch

from pipeline.config import FIDELITY_VAE, TINY_VAE, VAEConfig
from pipeline.vae import build_vae


def _changed(a, b):
    ys, xs = np.nonzero(np.abs(a.astype(int) - b.astype(int)).max(-1))
    return xs, ys


def _inside(xs, ys, box):
    x0, y0, x1, y1 = box
    return bool(((xs >= x0) & (xs < x1) & (ys >= y0) & (ys < y1)).all())


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_eyes_box_holds_every_pixel_a_blink_changes(seed):
    """The generator knows where it drew the eyes: closing them changes pixels inside eyes_box only,
    at any head offset, and the box is above the mouth box."""
    from pipeline.data import faces

    r = faces.FaceRenderer(faces.sample_identity(np.random.default_rng(seed)), 128)
    for off in [(0.0, 0.0), (2.5, -1.5)]:
        xs, ys = _changed(r.render(blink=0.0, offset=off), r.render(blink=1.0, offset=off))
        assert len(xs) > 20 and _inside(xs, ys, r.eyes_box(offset=off))
        assert r.eyes_box(offset=off)[3] <= r.mouth_box(0.0, 0.5, 0.0, offset=off)[1]


def test_render_clip_writes_an_eyes_box_per_frame():
    from pipeline.data.synthetic import render_clip

    clip = render_clip(5, 0.4, 64)
    assert clip.gt["eyes_box"].shape == clip.gt["mouth_box"].shape == (10, 4)
    assert clip.gt["eyes_box"].dtype == np.int32


class _Clip:
    def __init__(self, frames):
        n = len(frames)
        self.frames = frames
        self.gt = {"eyes_box": np.tile([4, 4, 28, 12], (n, 1)), "mouth_box": np.tile([8, 20, 24, 28], (n, 1))}


def test_vae_fidelity_encodes_the_reference_alone_and_windows_on_their_own():
    """vae_psnr_reference depends on the first frame only (it is encoded as a one-frame video); the
    window figures ignore frames after the last whole 17-frame window."""
    from pipeline.eval.synthetic import vae_fidelity

    torch.manual_seed(0)
    vae = build_vae(VAEConfig(kwargs=dict(TINY_VAE))).eval()
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (36, 32, 32, 3), dtype=np.uint8)
    a = vae_fidelity(vae, _Clip(frames))
    assert set(a) == {"vae_psnr_reference", "vae_psnr", "vae_psnr_eyes", "vae_psnr_mouth"}
    other = frames.copy()
    other[1:17] = 255 - other[1:17]  # the rest of the first window changes
    b = vae_fidelity(vae, _Clip(other))
    assert b["vae_psnr_reference"] == a["vae_psnr_reference"] and b["vae_psnr"] != a["vae_psnr"]
    tail = frames.copy()
    tail[34:] = 0  # frames 34, 35 are in no whole window (0-16, 17-33)
    c = vae_fidelity(vae, _Clip(tail))
    assert c == a


def test_load_vae_builds_the_checkpoint_config_and_prefers_its_ema(tmp_path):
    from pipeline.train.common import load_vae, save_checkpoint

    torch.manual_seed(0)
    kwargs = dict(FIDELITY_VAE, block_out_channels=(8, 8, 16, 16), decoder_block_out_channels=(8, 8, 16, 16))
    vae, ema = build_vae(VAEConfig(kwargs=kwargs)), build_vae(VAEConfig(kwargs=kwargs))
    opt = torch.optim.AdamW(vae.parameters())
    save_checkpoint(tmp_path / "ck", vae, opt, 5, extra={"vae_config": dict(vae.config)}, ema=ema)
    got = load_vae(tmp_path / "ck")
    assert got.config.block_out_channels == (8, 8, 16, 16) or list(got.config.block_out_channels) == [8, 8, 16, 16]
    for (k, p), q in zip(got.state_dict().items(), ema.state_dict().values()):
        assert torch.equal(p, q), k


def test_reader_check_reads_ground_truth_and_not_shuffled_truth():
    from pipeline.data.synthetic import render_clip
    from pipeline.eval.mouth import READER_BAR, load_reader, reader_check

    clip = render_clip(11, 3.0, 128)
    reader = load_reader()
    box, true = clip.gt["mouth_box"], clip.gt["openness"]
    assert reader_check(reader, clip.frames, box, true) >= READER_BAR
    assert reader_check(reader, clip.frames, box, np.random.default_rng(0).permutation(true)) < 0.5


def test_a_wider_decoder_takes_only_the_encoder_of_a_saved_vae(tmp_path):
    """`--init-encoder-only`: the encoder (so the latents the DiT was trained on) comes from the saved
    VAE, the wider decoder keeps its own initialisation; a folder without the encoder is refused."""
    from pipeline.train.common import load_weights

    torch.manual_seed(0)
    saved = build_vae(VAEConfig(kwargs=dict(TINY_VAE)))
    saved.save_pretrained(tmp_path / "tiny")
    wide = build_vae(VAEConfig(kwargs=dict(TINY_VAE, decoder_block_out_channels=(48, 96, 192, 192))))
    decoder_before = {k: v.clone() for k, v in wide.decoder.state_dict().items()}
    load_weights(tmp_path / "tiny", wide, prefix="encoder.")
    for k, v in saved.encoder.state_dict().items():
        assert torch.equal(wide.encoder.state_dict()[k], v), k
    assert all(torch.equal(wide.decoder.state_dict()[k], v) for k, v in decoder_before.items())
    x = torch.rand(1, 3, 1, 64, 64) * 2 - 1
    with torch.no_grad():
        assert torch.equal(wide.encode(x).latent_dist.mode(), saved.encode(x).latent_dist.mode())
    with pytest.raises(RuntimeError, match="size mismatch"):  # another encoder: torch's own refusal
        load_weights(tmp_path / "tiny", build_vae(VAEConfig(kwargs=dict(FIDELITY_VAE))), prefix="encoder.")
    from safetensors.torch import save_file

    (tmp_path / "decoder_only").mkdir()
    save_file({f"decoder.{k}": v.contiguous() for k, v in saved.decoder.state_dict().items()},
              str(tmp_path / "decoder_only" / "model.safetensors"))
    with pytest.raises(KeyError, match="encoder"):
        load_weights(tmp_path / "decoder_only", wide, prefix="encoder.")


def test_widened_decoder_starts_as_the_trained_one_and_its_copies_differ():
    """Net2WiderNet (`--widen-from`): a decoder of multiple widths decodes exactly as the small one (the
    depth-to-space groups and both norms included), the encoder is the small one's, and each copy of
    a channel reads its inputs with different weights, so training can tell the copies apart."""
    from pipeline.train.widen import widen_decoder

    torch.manual_seed(0)
    small = build_vae(VAEConfig(kwargs=dict(TINY_VAE))).eval()
    for p in small.decoder.parameters():  # a trained-looking decoder: no zero biases or unit norms
        p.data.add_(0.05 * torch.randn_like(p))
    small.latents_mean.normal_(), small.latents_std.uniform_(0.5, 2)
    wide = build_vae(VAEConfig(kwargs=dict(TINY_VAE, decoder_block_out_channels=(32, 64, 128, 128)))).eval()
    widen_decoder(small, wide, torch.Generator().manual_seed(1))
    z = torch.randn(2, 128, 3, 4, 4)
    with torch.no_grad():
        a, b = small.decode(z).sample, wide.decode(z).sample
    assert a.shape == (2, 3, 17, 128, 128) and a.abs().mean() > 0.05
    torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)
    assert torch.equal(wide.latents_std, small.latents_std)
    x = torch.rand(1, 3, 9, 64, 64) * 2 - 1
    with torch.no_grad():
        assert torch.equal(wide.encode(x).latent_dist.mode(), small.encode(x).latent_dist.mode())
    w = wide.decoder.up_blocks[3].resnets[0].conv1.conv.weight  # 32 inputs: copies 0-15 and 16-31
    assert not torch.allclose(w[:, :16], w[:, 16:])
    torch.testing.assert_close(w[:16, :16] + w[:16, 16:], small.decoder.up_blocks[3].resnets[0].conv1.conv.weight)


def test_widening_refuses_widths_that_are_not_multiples_or_change_the_structure():
    from pipeline.train.widen import widen_decoder

    small = build_vae(VAEConfig(kwargs=dict(TINY_VAE)))
    wide = build_vae(VAEConfig(kwargs=dict(TINY_VAE, decoder_block_out_channels=(24, 48, 96, 96))))
    with pytest.raises(ValueError, match="not an integer multiple"):
        widen_decoder(small, wide)
    unequal = build_vae(VAEConfig(kwargs=dict(TINY_VAE, decoder_block_out_channels=(32, 64, 128, 192))))
    with pytest.raises(ValueError, match="equal neighbours|equal width"):
        widen_decoder(small, unequal)
