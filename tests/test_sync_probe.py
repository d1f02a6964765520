"""The latent lip-sync expert (pipeline.train.sync_probe) and its term in the DiT's loss."""
import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from pipeline.train.sync_probe import LatentSyncProbe, fit, linear_readability, openness_targets, sync_loss


def _clips(root, code="signed", n=40, n_lat=7, c=10, seed=0):
    """Clips whose latents carry their frames' openness at one cell: `signed`, with a sign that depends on
    the clip (its identity, shown at another cell) — a code only a nonlinear reader can read, like a
    constructed VAE's; `absent`: the openness is drawn independently of the latents."""
    rng = np.random.default_rng(seed)
    frames = 1 + 8 * (n_lat - 1)
    for i in range(n):
        d = root / f"clip_{i:05d}"
        d.mkdir(parents=True)
        op = rng.random(frames).astype(np.float32)
        targets = openness_targets(op, n_lat)  # (n_lat, 8)
        z = 0.1 * torch.randn(c, n_lat, 4, 4, generator=torch.Generator().manual_seed(seed * 100 + i))
        sign = 1.0 if i % 2 else -1.0
        z[:8, :, 2, 1] += sign * (targets.T - 0.5)
        z[8, :, 0, 0] += sign
        if code == "absent":
            op = rng.random(frames).astype(np.float32)
        save_file({"latents": z}, str(d / "latents.safetensors"))
        np.savez(d / "gt.npz", openness=op)
        np.savez(d / "frames.npz", frames=np.zeros((frames, 8, 8, 3), np.uint8))  # what list_clips looks for
        (d / "meta.json").write_text(json.dumps({"size": 128}))


def test_openness_targets_follow_the_causal_latent_layout():
    op = np.arange(25, dtype=np.float32)
    t = openness_targets(op, 4)
    assert t.shape == (4, 8)
    assert torch.equal(t[0], torch.zeros(8))  # latent 0: frame 0 alone
    assert torch.equal(t[1], torch.arange(1, 9).float())  # frames 1..8
    assert torch.equal(t[3], torch.arange(17, 25).float())
    with pytest.raises(ValueError, match="do not cover"):
        openness_targets(op[:20], 4)


def test_probe_reads_an_identity_dependent_code_that_a_linear_readout_cannot(tmp_path):
    torch.set_num_threads(1)
    _clips(tmp_path / "signed")
    _clips(tmp_path / "absent", code="absent")
    _, carried = fit(tmp_path / "signed", steps=600, heldout_clips=8, hidden=32)
    _, absent = fit(tmp_path / "absent", steps=300, heldout_clips=8, hidden=32)
    assert carried["heldout_r"] > 0.8
    assert absent["heldout_r"] < 0.3
    assert abs(linear_readability(tmp_path / "signed", heldout_clips=8)["heldout_r"]) < 0.3
    with pytest.raises(ValueError, match="heldout_clips"):
        linear_readability(tmp_path / "signed", heldout_clips=0)


def test_sync_term_reads_the_clean_latent_estimate_and_is_off_without_audio():
    """A model that predicts the exact velocity gives x0_hat = x0: the term is then the expert's error on
    the truth, weighted by 1 - t; samples whose audio is dropped add nothing."""
    from pipeline.scheduler import velocity_target
    from pipeline.train.dit import ans_loss

    torch.manual_seed(0)
    c, f = 16, 3
    z, ref = torch.randn(2, c, f, 4, 4), torch.randn(2, c, 1, 4, 4)
    t, noise = torch.rand(2, 1 + f), torch.randn(2, c, 1 + f, 4, 4)
    t[:, 0] = 0
    exact = lambda x, t, codes, drop_audio=None, drop_ref=None: velocity_target(torch.cat([ref, z], 2), noise)  # noqa: E731
    probe = LatentSyncProbe(c, hidden=8).eval().requires_grad_(False)
    openness = torch.rand(2, f, 8)
    off, on = torch.zeros(2, dtype=torch.bool), torch.ones(2, dtype=torch.bool)
    got = ans_loss(exact, z, ref, None, t, noise, off, off, openness=openness, sync=(probe, 0.5))
    want = 0.5 * sync_loss(probe, z, openness, 1 - t[:, 1:])
    torch.testing.assert_close(got, want)
    assert want > 0
    assert ans_loss(exact, z, ref, None, t, noise, on, off, openness=openness, sync=(probe, 0.5)) == 0


@pytest.mark.slow
def test_dit_trainer_trains_with_a_saved_expert(tmp_path):
    from pipeline.config import get_preset
    from pipeline.train import dit, sync_probe
    from tests.test_train import _fake_latent_clips

    torch.set_num_threads(1)
    data = tmp_path / "data"
    _fake_latent_clips(data, get_preset("tiny"))
    for d in sorted(data.iterdir()):  # the generator's openness beside its mouth boxes
        gt = dict(np.load(d / "gt.npz"))
        np.savez(d / "gt.npz", openness=np.random.default_rng(0).random(len(gt["mouth_box"])).astype(np.float32), **gt)
    sync_probe.main(["--data", str(data), "--out", str(tmp_path / "expert"), "--steps", "5"])
    out = tmp_path / "run"
    dit.main(["--data", str(data), "--out", str(out), "--steps", "2", "--sync-probe", str(tmp_path / "expert")])
    assert json.loads((out / "checkpoint" / "state.json").read_text())["step"] == 2
