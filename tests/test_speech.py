"""SpeechAE: the VAE's time grid, causality, and the eq. 7-9 loss."""
import pytest
import torch

from pipeline.speech import SpeechAE, frame_features, frame_windows, speech_ae_loss

from .conftest import randomize


def _ae():
    return randomize(SpeechAE(window_dim=12, frame_dim=4, hidden_dim=8, num_tokens=2, code_dim=3), std=0.3)


@pytest.mark.parametrize("k", [0, 1, 4])
def test_time_grid_matches_vae(k):
    ae = _ae()
    codes = ae.encode(torch.randn(2, 1 + 8 * k, 12))
    assert codes.shape == (2, 1 + k, 2, 3)
    assert ae.decode(codes).shape == (2, 1 + 8 * k, 4)


def test_encoder_is_causal_on_the_vae_grid():
    """Code k sees frames <= 8k only: changing frame t leaves codes k < ceil(t / 8) unchanged."""
    ae = _ae()
    x = torch.randn(1, 33, 12)
    with torch.no_grad():
        base = ae.encode(x)
        for t in [0, 1, 8, 9, 20, 32]:
            y = x.clone()
            y[:, t] += torch.randn(12)  # not a constant shift: LayerNorm would remove that
            diff = (ae.encode(y) - base).abs().sum(dim=(0, 2, 3))  # per code group
            first = (t + 7) // 8  # the group frame t belongs to
            assert torch.all(diff[:first] == 0), t
            assert diff[first] > 0, t


def test_frame_alignment_and_windows():
    feats = torch.arange(10.0)[:, None].repeat(1, 3)  # (T50=10, D=3): value = feature index
    fr = frame_features(feats, 6)  # frames 5 needs features 10, 11 (edge-padded)
    assert fr.shape == (6, 6)
    assert fr[2, 0] == 4 and fr[2, 3] == 5  # video frame i <-> features 2i, 2i+1
    assert fr[5, 0] == 9 and fr[5, 3] == 9
    w = frame_windows(fr, 1)
    assert w.shape == (6, 18)
    assert torch.equal(w[2, 6:12], fr[2]) and torch.equal(w[2, :6], fr[1]) and torch.equal(w[0, :6], fr[0])


def test_contrastive_loss_prefers_matching_frames():
    s = torch.randn(2, 9, 16)
    good = speech_ae_loss(s, s + 0.01 * torch.randn_like(s))
    shuffled = speech_ae_loss(s, s[:, torch.randperm(9)])
    assert good[2] < shuffled[2] and good[1] < shuffled[1]
    total, mse, con = speech_ae_loss(s, s * 0.5, alpha=2.0, beta=0.5)
    assert torch.isclose(total, 2.0 * mse + 0.5 * con)
