"""LTX VAE: 1+8k frames <-> 1+k latents, and seamless clip-by-clip decoding."""
import pytest
import torch

from pipeline import vae as vae_lib
from pipeline.config import VAEConfig

from .conftest import SMALL_VAE


@pytest.fixture(scope="module")
def vae():
    torch.manual_seed(0)
    return vae_lib.build_vae(VAEConfig(kwargs=dict(SMALL_VAE))).eval()


@pytest.mark.parametrize("k", [0, 1, 3])
def test_frames_latents_roundtrip_shapes(vae, k):
    x = torch.rand(1, 3, 1 + 8 * k, 64, 64) * 2 - 1
    z = vae_lib.encode(vae, x)
    assert z.shape == (1, 16, 1 + k, 2, 2)
    assert vae_lib.decode(vae, z).shape == x.shape
    assert vae_lib.latent_frames(1 + 8 * k) == 1 + k and vae_lib.video_frames(1 + k) == 1 + 8 * k


def test_reference_image_is_a_one_frame_video(vae):
    img = torch.rand(2, 3, 64, 64) * 2 - 1
    assert vae_lib.encode_image(vae, img).shape == (2, 16, 1, 2, 2)
    # causal encoder: the first frame of a video encodes like the image alone
    video = torch.cat([img[:, :, None], torch.rand(2, 3, 8, 64, 64)], dim=2)
    assert torch.allclose(vae_lib.encode(vae, video)[:, :, :1], vae_lib.encode_image(vae, img), atol=1e-5)


def test_latent_normalisation_uses_the_vae_buffers(vae):
    z = torch.randn(1, 16, 2, 2, 2)
    vae.latents_mean.fill_(0.5), vae.latents_std.fill_(2.0)
    try:
        assert torch.allclose(vae_lib.normalize(vae, z), (z - 0.5) / 2.0)
        assert torch.allclose(vae_lib.denormalize(vae, vae_lib.normalize(vae, z)), z, atol=1e-6)
    finally:
        vae.latents_mean.zero_(), vae.latents_std.fill_(1.0)


def test_streaming_decode_bookkeeping(vae):
    """Whatever the context and hold-back, the chunks add up to exactly one-shot decoding's frame count;
    the final push, decoded with full left context, equals one-shot's last frames."""
    torch.manual_seed(1)
    z = torch.randn(1, 16, 13, 2, 2)  # 3 clips of 5 latent frames overlapping by one
    full = vae_lib.decode(vae, z)
    for context, holdback in [(1, 0), (2, 8), (2, 12), (13, 0)]:
        dec = vae_lib.StreamingDecoder(vae, context=context, holdback=holdback, first_holdback=min(holdback, 8))
        parts = [dec.push(z[:, :, :5]), dec.push(z[:, :, 5:9]), dec.push(z[:, :, 9:], final=True)]
        streamed = torch.cat([p for p in parts if p is not None], dim=2)
        assert streamed.shape == full.shape, (context, holdback)
    # last push decodes everything with full left context -> its frames equal one-shot's
    assert torch.allclose(parts[-1], full[:, :, -parts[-1].shape[2]:], atol=1e-5)
    # the defaults: a 1-s first chunk from a 5-latent clip, then chunks of >= 1 s
    dec = vae_lib.StreamingDecoder(vae)
    sizes = [dec.push(z[:, :, :5]).shape[2], dec.push(z[:, :, 5:9]).shape[2], dec.push(z[:, :, 9:], final=True).shape[2]]
    assert sizes == [25, 25, 47]


def test_streaming_decoder_pads_small_cpu_decodes_without_changing_what_it_emits(vae):
    """Padding a short decode (CPU speed: oneDNN only takes larger 3-D convolutions) keeps the frame
    count and order, and the emitted frames stay as close to one-shot decoding as without it."""
    torch.manual_seed(2)
    z = torch.randn(1, 16, 13, 2, 2)
    outs = {}
    for m in (0, 9):
        dec = vae_lib.StreamingDecoder(vae, min_latents=m)
        parts = [dec.push(z[:, :, :5]), dec.push(z[:, :, 5:9]), dec.push(z[:, :, 9:], final=True)]
        outs[m] = torch.cat([p for p in parts if p is not None], dim=2)
    full = vae_lib.decode(vae, z)
    assert outs[9].shape == outs[0].shape == full.shape
    err = {m: float((o - full).abs().mean()) for m, o in outs.items()}
    assert not torch.equal(outs[9], outs[0]) and err[9] < 1.5 * err[0], err


def test_zero_residual_branches_are_skipped_exactly_and_only_at_inference():
    """A block whose conv2 is all zero returns its shortcut alone: decode bit for bit the same; with
    gradients on, the branch still runs (its conv2 gets a gradient); a non-zero branch is never skipped."""
    torch.manual_seed(0)
    vae = vae_lib.build_vae(VAEConfig(kwargs=SMALL_VAE)).eval()
    blocks = [m for m in vae.decoder.modules() if type(m).__name__ == "LTXVideoResnetBlock3d"]
    for b in blocks[:-1]:  # all but one decoder block start at zero (as pca_init leaves them)
        b.conv2.conv.weight.data.zero_(), b.conv2.conv.bias.data.zero_()
    z = torch.randn(1, vae.config.latent_channels, 3, 2, 2)
    with torch.no_grad():
        want = vae.decode(z).sample
    assert vae_lib.skip_zero_residuals(vae) == len(blocks) - 1
    with torch.no_grad():
        assert torch.equal(vae.decode(z).sample, want)
    vae.decode(z).sample.square().mean().backward()
    assert blocks[0].conv2.conv.weight.grad.abs().sum() > 0  # trained, not skipped
    with torch.no_grad():
        blocks[0].conv2.conv.weight.add_(0.01)  # the branch learned something: it is computed again
        assert not torch.equal(vae.decode(z).sample, want)
