"""A2V-DiT invariants: adaLN-Zero identity at init, frame-local audio attention, per-token time, positions as input."""
import pytest
import torch

from pipeline.dit import A2VDiT, DiTBlock, rope_3d

from .conftest import randomize


def _dit(**kw):
    return A2VDiT(in_channels=4, hidden_size=16, depth=2, num_heads=2, audio_dim=6, rope_axes=(2, 2, 4), **kw)


def _inputs(B=2, F=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, 4, F, 2, 2, generator=g), torch.rand(B, F, generator=g), torch.randn(B, F - 1, 3, 6, generator=g)


def test_adaln_zero_block_is_identity_at_init():
    dit = _dit()
    block = dit.blocks[0]
    x = torch.randn(2, 16, 16)  # (B, S, D): 4 frames of 4 tokens
    mod = dit.t_mod(torch.randn(2, 16, 16)).unflatten(-1, (6, -1))  # zero-initialised -> zeros
    audio = torch.randn(2 * 3, 3, 16)
    out = block(x, mod, audio, 4, rope_3d(4, 2, 2, (2, 2, 4), "cpu"))
    assert torch.equal(out, x)
    # and the whole model predicts zero velocity at init, whatever the input
    assert torch.count_nonzero(dit(*_inputs())) == 0


def test_output_shape_and_patchify_roundtrip():
    dit = randomize(A2VDiT(in_channels=4, patch_size=2, hidden_size=16, depth=1, num_heads=2, audio_dim=6, rope_axes=(2, 2, 4)))
    x = torch.randn(2, 4, 3, 4, 6)
    assert torch.equal(dit.unpatchify(dit.patchify(x), 3, 4, 6), x)
    assert dit(x, torch.rand(2), torch.randn(2, 2, 3, 6)).shape == x.shape


def test_audio_cross_attention_is_frame_local():
    dit = randomize(_dit())
    x, t, audio = _inputs()
    with torch.no_grad():
        base = dit(x, t, audio)
        changed = audio.clone()
        changed[:, 1] += 3.0  # codes of clip frame 1 = latent frame 2 of the sequence
        # one block: only the tokens of that frame may change
        one = randomize(A2VDiT(in_channels=4, hidden_size=16, depth=1, num_heads=2, audio_dim=6, rope_axes=(2, 2, 4)))
        d = (one(x, t, changed) - one(x, t, audio)).abs().sum(dim=(0, 1, 3, 4))  # per frame
    assert d[2] > 1e-3 and d[0] == 0 and d[1] == 0 and d[3] == 0
    with torch.no_grad():  # deeper models mix frames through self-attention, as they should
        assert not torch.equal(dit(x, t, changed), base)


def test_per_token_timesteps_broadcast():
    dit = randomize(_dit())
    x, _, audio = _inputs()
    t = torch.tensor([[0.0, 0.2, 0.7, 0.7], [0.0, 0.5, 0.9, 0.9]])
    with torch.no_grad():
        per_frame = dit(x, t, audio)
        per_token = dit(x, t.repeat_interleave(4, dim=1), audio)
        scalar = dit(x, torch.tensor([0.3, 0.3]), audio)
        scalar_frames = dit(x, torch.full((2, 4), 0.3), audio)
    # float32 rounding of the per-token path differs by ~1e-6 on some CPUs: atol above that, far below any real gap
    assert torch.allclose(per_frame, per_token, atol=1e-5) and torch.allclose(scalar, scalar_frames, atol=1e-5)


def test_condition_dropout_removes_the_condition():
    dit = randomize(_dit())
    x, t, audio = _inputs()
    yes = torch.tensor([True, True])
    with torch.no_grad():
        a = dit(x, t, audio, drop_audio=yes)
        b = dit(x, t, audio * 5 + 1, drop_audio=yes)
        x2 = x.clone()
        x2[:, :, 0] += 2.0  # another reference
        c = dit(x, t, audio, drop_ref=yes)
        d = dit(x2, t, audio, drop_ref=yes)
        e = dit(x2, t, audio)
    assert torch.allclose(a, b)  # audio dropped: codes do not matter
    assert torch.allclose(c, d)  # reference dropped: its latent does not matter
    assert not torch.allclose(c, e)


def test_text_tokens_take_part_in_attention():
    dit = randomize(_dit(text_dim=5))
    x, t, audio = _inputs()
    with torch.no_grad():
        assert not torch.allclose(dit(x, t, audio, text=torch.randn(2, 3, 5)), dit(x, t, audio, text=torch.randn(2, 3, 5)))


def test_runs_in_bfloat16():
    dit = randomize(_dit()).to(torch.bfloat16)
    x, t, audio = _inputs()
    with torch.no_grad():
        out = dit(x.bfloat16(), t.bfloat16(), audio.bfloat16(), drop_audio=torch.tensor([True, False]))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()


def test_reference_can_enter_apart_from_the_clip():
    """[reference, clip] given apart = READ's layout with the reference at F=0 (what the ID-Sink needs)."""
    dit = randomize(_dit())
    x, t, audio = _inputs()
    t[:, 0] = 0.0
    flags = dict(drop_audio=torch.tensor([True, False]), drop_ref=torch.tensor([False, True]))
    with torch.no_grad():
        whole = dit(x, t, audio, **flags)
        apart = dit(x[:, :, 1:], t[:, 1:], audio, reference=x[:, :, :1], **flags)
    assert apart.shape == x[:, :, 1:].shape
    torch.testing.assert_close(apart, whole[:, :, 1:], rtol=1e-6, atol=1e-6)


def test_frame_positions_are_an_input_and_only_relative_positions_matter():
    dit = randomize(_dit())
    x, t, audio = _inputs()
    with torch.no_grad():
        base = dit(x, t, audio)
        default = dit(x, t, audio, frame_positions=[0, 1, 2, 3])
        shifted = dit(x, t, audio, frame_positions=[7, 8, 9, 10])  # RoPE: a common shift cancels
        spread = dit(x, t, audio, frame_positions=[0, 2, 4, 6])
    assert torch.equal(base, default)
    torch.testing.assert_close(shifted, base, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(spread, base, atol=1e-4)


def test_rope_tables_are_cached_per_layout():
    a, b = rope_3d(4, 2, 2, (2, 2, 4), "cpu"), rope_3d([0, 1, 2, 3], 2, 2, (2, 2, 4), "cpu")
    assert a[0] is b[0] and a[1] is b[1]
    assert rope_3d([1, 2], 2, 2, (2, 2, 4), "cpu")[0] is not a[0]


def test_timestep_shape_decides_per_frame_or_per_token():
    dit = randomize(_dit())
    x, _, audio = _inputs()
    t = torch.rand(2, 16)  # per token, not constant within a frame: embedded token by token
    with torch.no_grad():
        assert dit(x, t, audio).shape == x.shape
    with pytest.raises(ValueError, match="timestep must give"):
        dit(x, torch.rand(2, 5), audio)


def test_build_dit_takes_the_config_by_keyword():
    from pipeline.config import DiTConfig
    from pipeline.dit import build_dit

    cfg = DiTConfig(in_channels=4, hidden_size=16, depth=1, num_heads=2, audio_dim=6, rope_axes=(2, 2, 4), mlp_ratio=2.0)
    dit = build_dit(cfg)
    assert {k: dit.config[k] for k in ("in_channels", "hidden_size", "depth", "num_heads", "audio_dim", "mlp_ratio")} == \
        dict(in_channels=4, hidden_size=16, depth=1, num_heads=2, audio_dim=6, mlp_ratio=2.0)
    assert tuple(dit.config.rope_axes) == (2, 2, 4)
