"""The constructed (PCA) starting point of a VAE (`pipeline.train.pca_init`): the regions follow LTX's
causal latent layout, and the fitted AutoencoderKLLTXVideo computes the principal-component code it
was built from (encode ~ the code, decode(encode(x)) ~ the code's own reconstruction)."""
import numpy as np
import pytest
import torch

from pipeline.train import pca_init


def test_regions_follow_the_causal_latent_layout():
    """Latent frame 0 stands for frame 0 alone (repeated), latent k for frames 8k-7 ... 8k."""
    x = torch.arange(17, dtype=torch.float32)[None, None, :, None, None].expand(1, 3, 17, 32, 32)
    r = pca_init.regions(x, 3)  # (1, 3 groups, 1, 1, 3 * 8 * 32 * 32)
    frames = r[0, :, 0, 0].reshape(3, 3, 8, -1)[:, 0, :, 0]  # the frame index each of the 8 slots holds
    assert frames.tolist() == [[0] * 8, list(range(1, 9)), list(range(9, 17))]
    r1 = pca_init.regions(x[:, :, :9], 1)  # tau = 2: [0, 0], [1, 2], ..., [7, 8]
    assert r1.shape[1] == 5 and r1[0, 2, 0, 0].reshape(3, 2, -1)[0, :, 0].tolist() == [3.0, 4.0]


def _smooth_clips(root, clips=12, frames=40, size=128, seed=0):
    """Clips of slowly moving smooth colour fields (a few low frequencies): a linear code fits them."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for i in range(clips):
        waves = [(rng.uniform(0.5, 2.5, 2), rng.uniform(0, 6.3), rng.uniform(-0.1, 0.1), rng.uniform(0.2, 0.8, 3))
                 for _ in range(4)]
        video = np.zeros((frames, size, size, 3))
        for t in range(frames):
            for (fy, fx), phase, speed, colour in waves:
                video[t] += np.sin(2 * np.pi * (fy * yy + fx * xx) + phase + speed * t)[..., None] * colour
        d = root / f"clip_{i:05d}"
        d.mkdir(parents=True)
        np.savez(d / "frames.npz", frames=np.clip(127.5 + 40 * video, 0, 255).astype(np.uint8))


@pytest.mark.slow
def test_constructed_vae_computes_its_code_and_reconstructs(tmp_path):
    torch.manual_seed(0)
    _smooth_clips(tmp_path / "train")
    _smooth_clips(tmp_path / "heldout", clips=2, seed=1)
    torch.set_num_threads(1)
    vae = pca_init.construct(tmp_path / "train", channels=(8, 16, 32, 32), windows=150)
    x = pca_init.sample_windows(tmp_path / "heldout", 6, seed=3)
    assert pca_init.psnr(vae, x) > 30 and pca_init.psnr(vae, x[:, :, :1]) > 30
    with torch.no_grad():
        z = vae.encode(x).latent_dist
        assert z.mean.shape == (6, 128, 2, 4, 4) and torch.allclose(z.logvar, torch.full_like(z.logvar, -8.0))
        stats = z.mean.std(dim=(0, 2, 3, 4))
    assert torch.allclose(vae.latents_std[:4], stats[:4], rtol=0.5)  # per-channel scale recorded for the DiT
    for r in vae.encoder.down_blocks[0].resnets:  # residual branches start as identity, free to learn
        assert not r.conv2.conv.weight.any()
    # A decoder refitted with time taps in conv_out (windows of several latent frames) reads the frames
    # before and after, and still reconstructs; the encoder, so the latents, are unchanged.
    w = vae.encoder.conv_out.conv.weight.clone()
    pca_init.refit_decoder(vae, tmp_path / "train", windows=60, frames=17, time_taps=True)
    taps = vae.decoder.conv_out.conv.weight
    assert taps[:, :, 0].any() and taps[:, :, 2].any() and not taps[:, :, :, 0].any()  # time taps, centre in space
    assert torch.equal(vae.encoder.conv_out.conv.weight, w)
    assert pca_init.psnr(vae, x) > 30


def test_ridge_fits_the_changes_with_their_weight():
    """`changes`: the fit also matches target changes (no bias in them); mu 0 gives the plain fit and a
    large mu the changes' own solution."""
    g = torch.Generator().manual_seed(0)
    x, dx = torch.randn(500, 3, generator=g), torch.randn(400, 3, generator=g)
    w1, w2 = torch.tensor([[1.0, 2.0, -1.0]]), torch.tensor([[0.5, -1.0, 3.0]])
    y, dy = x @ w1.T + 4.0, dx @ w2.T  # levels with a bias, changes without
    plain, bias = pca_init.ridge(x, y)
    torch.testing.assert_close(plain, w1, atol=1e-4, rtol=0), torch.testing.assert_close(bias, torch.tensor([4.0]))
    torch.testing.assert_close(pca_init.ridge(x, y, changes=(dx, dy, 0.0))[0], w1, atol=1e-4, rtol=0)
    torch.testing.assert_close(pca_init.ridge(x, y, changes=(dx, dy, 1e6))[0], w2, atol=1e-3, rtol=0)
    mid = pca_init.ridge(x, y, changes=(dx, dy, 1.0))[0]
    assert (mid - w1).abs().max() > 0.1 and (mid - w2).abs().max() > 0.1


@pytest.mark.slow
def test_freezing_the_constant_channel_columns_keeps_a_constructed_vae_trainable(tmp_path):
    """The VAE trainer's --freeze-constant: only columns that read the constant channel are frozen, and
    Adam's first steps then cost far less reconstruction than with every weight free."""
    import copy

    from pipeline.train.vae import freeze_constant_inputs

    torch.manual_seed(0)
    _smooth_clips(tmp_path / "train", clips=6)
    torch.set_num_threads(1)
    built = pca_init.construct(tmp_path / "train", channels=(8, 16, 32, 32), windows=60)
    x = pca_init.sample_windows(tmp_path / "train", 4, seed=3)
    start = pca_init.psnr(built, x)

    def adam_steps(freeze):
        vae = copy.deepcopy(built).train()
        vae.encoder.requires_grad_(False)
        frozen = freeze_constant_inputs(vae, x[:2]) if freeze else 0
        before = {n: p.clone() for n, p in vae.decoder.named_parameters()}
        opt = torch.optim.Adam([p for p in vae.parameters() if p.requires_grad], lr=1e-5)
        for _ in range(3):
            z = vae.encode(x).latent_dist.mode()
            loss = torch.nn.functional.mse_loss(vae.decode(z).sample, x)
            opt.zero_grad(), loss.backward(), opt.step()
        return vae.eval(), frozen, before

    free, _, _ = adam_steps(False)
    kept, frozen, before = adam_steps(True)
    assert frozen > 0
    w0, w1 = before["mid_block.resnets.0.conv1.conv.weight"], kept.decoder.mid_block.resnets[0].conv1.conv.weight
    assert torch.equal(w1[:, 0], w0[:, 0]) and not torch.equal(w1[:, 1:], w0[:, 1:])  # channel 0 is the constant
    # measured: 47.7 dB built, 25.9 after 3 free steps, 39.6 with the constant's columns frozen
    assert pca_init.psnr(kept, x) > pca_init.psnr(free, x) + 10 and pca_init.psnr(kept, x) < start


@torch.no_grad()
def test_upsampler_time_taps_fit_a_kernel_that_reads_the_neighbouring_latent_frames():
    """A depth-to-space upsampler whose kernel reads the parents before and after in time (centre in
    space) and its 3x3 neighbours is recovered exactly by `fit_upsampler(time_taps=True)`; without
    time taps the same children are only approximated."""
    from pipeline.config import TINY_VAE, VAEConfig
    from pipeline.vae import build_vae

    kwargs = dict(TINY_VAE, block_out_channels=(4, 8, 8, 8), decoder_block_out_channels=(4, 8, 8, 8))
    up = build_vae(VAEConfig(kwargs=kwargs)).decoder.up_blocks[1].upsamplers[0]  # 8 -> 64 channels
    torch.manual_seed(0)
    kernel = torch.zeros_like(up.conv.conv.weight)
    kernel[:, :, 1] = torch.randn(64, 8, 3, 3) * 0.1
    kernel[:, :, 0, 1, 1], kernel[:, :, 2, 1, 1] = torch.randn(64, 8) * 0.1, torch.randn(64, 8) * 0.1
    up.conv.conv.weight.copy_(kernel)
    h = torch.randn(6, 8, 5, 4, 4)
    child = up(h)  # (6, 8, 9, 8, 8): the first child in time is dropped
    assert child.shape == (6, 8, 9, 8, 8)
    pca_init.fit_upsampler(up.conv.conv, h, child, neighbours=True, time_taps=True)
    assert torch.allclose(up(h), child, atol=1e-3)
    assert up.conv.conv.weight[:, :, 0, 1, 1].any() and not up.conv.conv.weight[:, :, 0, 0].any()
    pca_init.fit_upsampler(up.conv.conv, h, child, neighbours=True)
    assert (up(h) - child).abs().mean() > 0.05 and not up.conv.conv.weight[:, :, 0].any()
