"""Flow matching, ANS timesteps, Algorithm 1 order-independence and the CFG formulas."""
import pytest
import torch

from pipeline import sampler, scheduler
from pipeline.dit import A2VDiT

from .conftest import randomize


def test_async_timesteps_reference_clean_motion_less_noisy():
    t = scheduler.sample_async_timesteps(256, 5, generator=torch.Generator().manual_seed(0))
    assert t.shape == (256, 6)
    assert torch.all(t[:, 0] == 0)
    assert torch.all(t[:, 1] < t[:, 2])
    assert torch.all(t[:, 2:] == t[:, 2:3])
    assert 0 < t.min() or t[:, 1:].min() > 0


def test_synchronous_timesteps_for_the_no_ans_ablation():
    t = scheduler.sample_async_timesteps(64, 5, generator=torch.Generator().manual_seed(0), synchronous=True)
    assert torch.all(t[:, 0] == 0) and torch.all(t[:, 1:] == t[:, 1:2]) and t[:, 1:].min() > 0


def test_flow_matching_convention():
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 4, 3, 2, 2, generator=g), torch.randn(2, 4, 3, 2, 2, generator=g)
    t = torch.tensor([[0.0, 0.3, 1.0]] * 2)
    zt = scheduler.add_noise(x0, eps, t)
    assert torch.equal(zt[:, :, 0], x0[:, :, 0]) and torch.allclose(zt[:, :, 2], eps[:, :, 2])
    # the exact velocity carries Z(t) to Z(0) in one Euler step (straight paths)
    z0 = scheduler.euler_step(zt, scheduler.velocity_target(x0, eps), t, torch.zeros_like(t))
    assert torch.allclose(z0, x0, atol=1e-6)


def test_inference_timesteps():
    ts = scheduler.inference_timesteps(8, shift=3.0)
    assert ts[0] == 1 and ts[-1] == 0 and len(ts) == 9 and torch.all(ts[1:] < ts[:-1])


@pytest.mark.parametrize("n,f,k,padded", [(1, 5, 1, 5), (5, 5, 1, 5), (6, 5, 2, 9), (13, 5, 3, 13), (14, 3, 7, 15)])
def test_clip_layout(n, f, k, padded):
    assert sampler.num_clips(n, f) == k and sampler.padded_latent_frames(n, f) == padded


def _setup(N=9, f=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    dit = randomize(A2VDiT(in_channels=4, hidden_size=16, depth=1, num_heads=2, audio_dim=6, rope_axes=(2, 2, 4)))
    noise = torch.randn(1, 4, N, 2, 2, generator=g)
    z_ref = torch.randn(1, 4, 1, 2, 2, generator=g)
    audio = torch.randn(1, N, 2, 6, generator=g)
    return dit, noise, z_ref, audio


@pytest.mark.parametrize("mode", ["joint", "split"])
def test_clip_major_equals_step_major(mode):
    dit, noise, z_ref, audio = _setup()
    fn = lambda z, t, a: sampler.cfg_velocity(dit, z, t, a, mode, 2.0, 3.0)  # noqa: E731
    ts = scheduler.inference_timesteps(4, shift=2.0)
    with torch.no_grad():
        clips = [z for _, z in sampler.sample_clips(fn, noise, z_ref, audio, ts, 3)]
        clip_major = torch.cat(clips, dim=2)  # each clip yields only the latents it adds
        step_major = sampler.sample_step_major(fn, noise, z_ref, audio, ts, 3)
    assert clip_major.shape == noise.shape
    assert torch.allclose(clip_major, step_major, atol=1e-6)
    starts = [sum(c.shape[2] for c in clips[:j]) for j in range(len(clips))]
    assert starts == [sampler.new_latent_start(j, 3) for j in range(len(clips))]


def test_without_motion_guidance_clips_are_independent():
    """The no-ANS ablation: clip 2 ignores clip 1 (plain concatenation); with ANS it follows it."""
    dit, noise, z_ref, audio = _setup()
    fn = lambda z, t, a: sampler.cfg_velocity(dit, z, t, a, "joint", 2.0, 3.0)  # noqa: E731
    ts = scheduler.inference_timesteps(3)
    other = noise.clone()
    other[:, :, :2] += 1.0  # clip 1's own frames (f = 3: latents 0, 1; latent 2 is shared with clip 2)
    with torch.no_grad():
        for guided in (True, False):
            a = [z for _, z in sampler.sample_clips(fn, noise, z_ref, audio, ts, 3, motion_guidance=guided)]
            b = [z for _, z in sampler.sample_clips(fn, other, z_ref, audio, ts, 3, motion_guidance=guided)]
            assert torch.equal(a[1], b[1]) != guided


def test_reference_is_clean_at_every_call_and_times_follow_algorithm_1():
    dit, noise, z_ref, audio = _setup()
    seen = []

    def fn(z, t, a):
        seen.append((z[:, :, 0].clone(), t.clone()))
        return dit(z, t, a)

    ts = scheduler.inference_timesteps(3)
    with torch.no_grad():
        list(sampler.sample_clips(fn, noise, z_ref, audio, ts, 3))
    assert len(seen) == 3 * 4  # steps x clips
    for i, (ref, t) in enumerate(seen):
        assert torch.equal(ref, z_ref[:, :, 0])
        step, clip = i % 3, i // 3
        expect_motion = ts[step + 1] if clip > 0 else ts[step]
        assert t[0, 0] == 0 and torch.isclose(t[0, 1], expect_motion) and torch.all(t[0, 2:] == ts[step])


class _ConstModel(torch.nn.Module):
    """Velocity = 1 (no condition), 10 (reference only), 100 (reference + audio)."""

    def forward(self, z, t, audio, drop_audio=None, drop_ref=None, text=None):
        val = torch.where(drop_ref, 1.0, torch.where(drop_audio, 10.0, 100.0))
        return val[:, None, None, None, None].expand_as(z).clone()


def test_cfg_formulas_match_hand_computation():
    z, t, a = torch.zeros(2, 1, 3, 1, 1), torch.zeros(2, 3), torch.zeros(2, 2, 1, 1)
    a_, b_ = 2.0, 6.0
    joint = sampler.cfg_velocity(_ConstModel(), z, t, a, "joint", a_, b_)
    split = sampler.cfg_velocity(_ConstModel(), z, t, a, "split", a_, b_)
    assert torch.allclose(joint, torch.full_like(z, (1 - a_) * 1 + a_ * 100))  # eq. 16
    assert torch.allclose(split, torch.full_like(z, (1 - a_ - b_) * 1 + a_ * 10 + b_ * 100))  # eq. 17
    with pytest.raises(ValueError):
        sampler.cfg_velocity(_ConstModel(), z, t, a, "triple", a_, b_)


def test_cfg_batched_equals_separate_passes():
    dit, noise, z_ref, audio = _setup()
    z = torch.cat([z_ref, noise[:, :, :3]], dim=2)
    t = torch.tensor([[0.0, 0.4, 0.7, 0.7]])
    a = audio[:, :3]
    yes, no = torch.tensor([True]), torch.tensor([False])
    with torch.no_grad():
        u, r, c = dit(z, t, a, yes, yes), dit(z, t, a, yes, no), dit(z, t, a, no, no)
        split = sampler.cfg_velocity(dit, z, t, a, "split", 2.0, 6.0)
    assert torch.allclose(split, -7 * u + 2 * r + 6 * c, atol=1e-5)
