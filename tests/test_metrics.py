"""Standard metrics (FID, FVD, Sync-C/D, E-FID) on cases with known answers; random-weight networks only.

Checked once against the references (not importable here): FIDInceptionV3 against pytorch-fid 0.3.0's
fid_inception_v3 (same parameter names and shapes, identical pool3 features for shared random weights),
`sync.mfcc` against python_speech_features 0.6 (identical), SyncNet + `sync.evaluate` against
syncnet_python's S and SyncNetInstance.evaluate (same offset, confidence and distances).
"""
import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

from pipeline.eval import expression, fid, fvd, sync


def gaussian_features(n, mean, std, seed):
    """n samples whose sample mean and (ddof=1) std are exactly `mean`, `std` per dimension."""
    x = np.random.default_rng(seed).normal(size=(n, len(mean)))
    x = (x - x.mean(0)) / x.std(0, ddof=1)
    return x * np.asarray(std) + np.asarray(mean)


def tiny_cnn_extractor(seed=0) -> fid.FeatureExtractor:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.Conv2d(8, 6, 3, stride=2),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return lambda frames: fid.extract_features(net, frames)


def without_batch_counters(module):  # old checkpoints (syncnet_v2.model, pt_inception) have none
    return {k: v for k, v in module.state_dict().items() if not k.endswith("num_batches_tracked")}


# ---------------------------------------------------------------- Fréchet distance / FID
def test_frechet_distance_of_identical_statistics_is_zero():
    mu, sigma = fid.feature_statistics(np.random.default_rng(0).normal(size=(200, 8)))
    assert abs(fid.frechet_distance(mu, sigma, mu, sigma)) < 1e-6


def test_frechet_distance_matches_the_closed_form_for_diagonal_and_rotated_gaussians():
    mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([0.5, 1.0, 1.0])
    var1, var2 = np.array([1.0, 4.0, 0.25]), np.array([2.0, 1.0, 0.25])
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(var1 + var2 - 2 * np.sqrt(var1 * var2))
    assert fid.frechet_distance(mu1, np.diag(var1), mu2, np.diag(var2)) == pytest.approx(expected, rel=1e-9)
    q, _ = np.linalg.qr(np.random.default_rng(1).normal(size=(3, 3)))  # FD is invariant under a common rotation
    rotated = fid.frechet_distance(q @ mu1, q @ np.diag(var1) @ q.T, q @ mu2, q @ np.diag(var2) @ q.T)
    assert rotated == pytest.approx(expected, rel=1e-7)
    assert fid.frechet_distance(1.0, 4.0, 3.0, 1.0) == pytest.approx(2.0**2 + (2.0 - 1.0) ** 2)  # 1-D: Δμ² + Δσ²


@pytest.mark.filterwarnings("ignore::scipy.linalg.LinAlgWarning")  # scipy warns on singular input, rightly
def test_frechet_distance_with_singular_covariances_and_bad_shapes():
    zero = np.zeros((4, 4))
    assert fid.frechet_distance(np.ones(4), zero, np.zeros(4), zero) == pytest.approx(4.0, abs=1e-9)
    few = [fid.feature_statistics(np.random.default_rng(s).normal(size=(3, 6))) for s in (0, 1)]  # rank 2 of 6
    d = fid.frechet_distance(*few[0], *few[1])
    assert np.isfinite(d) and d > 0
    with pytest.raises(ValueError, match="mismatched"):
        fid.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_frechet_distance_guards_of_pytorch_fid(monkeypatch):
    real_sqrtm, calls = scipy.linalg.sqrtm, []

    def failing_once(a):  # what older scipy returns for a singular product
        calls.append(a)
        return np.full_like(a, np.nan) if len(calls) == 1 else real_sqrtm(a)

    monkeypatch.setattr(scipy.linalg, "sqrtm", failing_once)
    s1, s2, eps = np.diag([1.0, 0.0]), np.diag([0.0, 1.0]), 1e-2
    d = fid.frechet_distance(np.zeros(2), s1, np.zeros(2), s2, eps=eps)
    assert len(calls) == 2 and d == pytest.approx(2 - 4 * np.sqrt((1 + eps) * eps))  # eps·I added to both
    monkeypatch.setattr(scipy.linalg, "sqrtm", lambda a: np.eye(len(a)) * (1 + 0.5j))
    with pytest.raises(ValueError, match="imaginary"):
        fid.frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), np.eye(2))


def test_feature_statistics_are_numpy_mean_and_covariance():
    x = np.random.default_rng(2).normal(size=(50, 4))
    mu, sigma = fid.feature_statistics(x)
    np.testing.assert_allclose(mu, x.mean(0))
    np.testing.assert_allclose(sigma, np.cov(x, rowvar=False))
    np.testing.assert_allclose(fid.feature_statistics(x, ddof=0)[1], np.cov(x, rowvar=False, bias=True))
    with pytest.raises(ValueError, match="N >= 2"):
        fid.feature_statistics(x[:1])


def test_fid_with_a_random_cnn_extractor():
    frames = (np.random.default_rng(3).random((24, 20, 20, 3)) * 200).astype(np.uint8)
    extractor = tiny_cnn_extractor()
    assert abs(fid.fid(frames, frames, extractor)) < 1e-6
    assert abs(fid.fid(frames, frames[::-1], extractor)) < 1e-6  # a set: order does not matter
    assert fid.fid(frames, frames + 50, extractor) > 1e-4


def test_inception_is_pytorch_fids_network_and_loads_from_safetensors(tmp_path):
    net = fid.FIDInceptionV3()
    assert sum(p.numel() for p in net.parameters()) == 21_785_568  # pytorch-fid's fid_inception_v3 without fc
    state = without_batch_counters(net)
    assert state["Mixed_7c.branch3x3dbl_3b.conv.weight"].shape == (384, 384, 3, 1)
    state["fc.weight"], state["fc.bias"] = torch.zeros(1008, 2048), torch.zeros(1008)  # in the published file
    save_file(state, tmp_path / fid.INCEPTION_FILE)
    extractor = fid.load_inception(tmp_path / fid.INCEPTION_FILE)
    feats = extractor((np.random.default_rng(4).random((1, 40, 30, 3)) * 255).astype(np.uint8))
    assert feats.shape == (1, 2048) and np.isfinite(feats).all() and (feats >= 0).all()  # pool of ReLUs


def test_inception_loader_names_the_file_it_needs(tmp_path):
    with pytest.raises(FileNotFoundError, match="pt_inception-2015-12-05.*mseitzer/pytorch-fid"):
        fid.load_inception(tmp_path / "missing.safetensors")


# ---------------------------------------------------------------- FVD
class TinyI3D(nn.Module):
    """Stand-in for StyleGAN-V's i3d_torchscript.pt: same call signature, same rescale / resize duties."""

    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv3d(3, 8, 3, stride=2), nn.Linear(8, 6)

    def forward(self, x, rescale: bool = False, resize: bool = False, return_features: bool = False):
        if not (rescale and resize and return_features and x.dtype == torch.uint8):
            raise RuntimeError("not called as StyleGAN-V calls the I3D")
        x = F.interpolate(x.float() / 127.5 - 1, size=(x.shape[2], 16, 16), mode="trilinear", align_corners=False)
        return self.fc(torch.relu(self.conv(x)).mean((2, 3, 4)))  # (B, 6) "logits"


@pytest.fixture(scope="module")
def i3d(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("i3d") / fvd.I3D_FILE
    torch.jit.script(TinyI3D()).save(str(path))
    return fvd.load_i3d(path)


def test_fvd_through_a_scripted_detector(i3d):
    rng = np.random.default_rng(5)
    videos = (rng.random((10, 18, 24, 24, 3)) * 255).astype(np.uint8)
    assert abs(fvd.fvd(videos, videos, i3d)) < 1e-6
    assert fvd.fvd(videos, videos // 2, i3d) > 1e-3
    with torch.no_grad():  # by hand: the first 16 frames, (B, 3, T, H, W), population covariance
        feats = i3d(torch.from_numpy(videos[:, :16]).permute(0, 4, 1, 2, 3), True, True, True).double().numpy()
    expected = fid.frechet_distance(*fid.feature_statistics(feats, ddof=0), *fid.feature_statistics(feats[:5], ddof=0))
    assert fvd.fvd(videos, list(videos[:5]), i3d) == pytest.approx(expected, rel=1e-6)


def test_fvd_input_errors(i3d, tmp_path):
    with pytest.raises(ValueError, match="has 8 frames; a clip needs 16"):
        fvd.video_features(np.zeros((2, 8, 16, 16, 3), np.uint8), i3d)
    with pytest.raises(ValueError, match="uint8"):
        fvd.video_features(np.zeros((2, 16, 16, 16, 3), np.float32), i3d)
    with pytest.raises(FileNotFoundError, match="i3d_torchscript.pt.*dropbox"):
        fvd.load_i3d(tmp_path / "none.pt")


# ---------------------------------------------------------------- Sync-C / Sync-D
@pytest.mark.parametrize("k", [-3, 0, 4])
def test_sync_scores_recover_a_known_shift(k):
    T, D, V = 30, 16, 6
    z = np.random.default_rng(6).normal(size=(T + 2 * abs(k), D)).astype(np.float32)
    video = z[abs(k) : abs(k) + T]  # v_t
    audio = z[abs(k) + k : abs(k) + k + T]  # a_t = v_(t+k): the video lags the audio by k frames
    res = sync.sync_scores(video, audio, vshift=V)
    assert res.offset == k and res.dists.shape == (T, 2 * V + 1) and res.mean_dists.shape == (2 * V + 1,)
    unmatched = [t for t in range(T) if not 0 <= t - k < T]  # windows whose partner is the zero padding
    expected_d = sum(np.linalg.norm(video[t]) for t in unmatched) / T
    assert res.sync_d == pytest.approx(expected_d, abs=1e-4)
    assert res.sync_c == pytest.approx(float(np.median(res.mean_dists)) - res.sync_d, abs=1e-5) and res.sync_c > 1


@pytest.mark.parametrize("k", [2, -3])
def test_evaluate_recovers_a_shift_through_windows_and_mfcc(k):
    """Frames flash and audio bursts carry one random bit sequence, the video k frames late."""
    rng = np.random.default_rng(7)
    n, spf = 60, sync.SAMPLE_RATE // sync.FPS
    bits = rng.integers(0, 2, n + 2 * abs(k))
    shown = bits[abs(k) : abs(k) + n]  # frame t shows bit s_t: white or black
    frames = np.broadcast_to((shown * 255).astype(np.uint8)[:, None, None, None], (n, 16, 16, 3)).copy()
    loud = bits[abs(k) + k : abs(k) + k + n]  # audio of frame m carries bit s_(m+k)
    audio = (rng.normal(size=n * spf) * np.repeat(np.where(loud, 0.3, 0.001), spf)).astype(np.float32)
    quiet_c0, loud_c0 = (sync.mfcc(sync.to_int16_scale(rng.normal(size=4000) * s))[:, 0].mean() for s in (0.001, 0.3))
    threshold = (quiet_c0 + loud_c0) / 2
    # MFCC frame 4j + 1 of a window lies inside the window's video frame j
    embed_audio = lambda mel: (mel[:, 0, 0, 1::4] > threshold).float()  # (B, 5)
    embed_video = lambda win: (win.mean((1, 3, 4)) > 127.5).float()  # (B, 5)
    res = sync.evaluate(frames, audio, embed_video, embed_audio, vshift=6)
    assert res.offset == k and res.dists.shape == (n - sync.WINDOW, 13) and res.sync_c > 0.5


def test_mfcc_matches_python_speech_features():
    t = np.arange(800) / 16000
    x = np.rint(8000 * np.sin(2 * np.pi * 440 * t) + 3000 * np.sin(2 * np.pi * 1234 * t))
    m = sync.mfcc(x)
    reference = [19.7850547917, 24.5856977055, -9.1337950021, -18.8422824991, -3.7770771787, 1.1248269974,
                 -20.454252298, -40.9911474245, -23.7527780694, 19.527903435, 45.0848838485, 29.6643297288,
                 -1.2812561107]  # python_speech_features 0.6: mfcc(x, 16000)[2]
    assert m.shape == (4, 13)
    np.testing.assert_allclose(m[2], reference, rtol=1e-9, atol=1e-8)
    np.testing.assert_array_equal(sync.to_int16_scale(np.array([1.0, -1.0, 0.5, -2.0])), [32767, -32768, 16384, -32768])


def test_syncnet_random_weights_shapes_and_loader(tmp_path):
    torch.manual_seed(0)
    net = sync.SyncNet()
    assert sum(p.numel() for p in net.parameters()) == 13_631_616  # syncnet_python's S
    save_file(without_batch_counters(net), tmp_path / sync.SYNCNET_FILE)
    net = sync.load_syncnet(tmp_path / sync.SYNCNET_FILE)
    rng = np.random.default_rng(8)
    frames = (rng.random((7, 40, 40, 3)) * 255).astype(np.uint8)  # resized to 224 inside
    audio = (rng.normal(size=7 * 640) * 0.1).astype(np.float32)
    res = sync.sync_metrics(frames, audio, net, vshift=3)
    assert res.dists.shape == (2, 7) and res.mean_dists.shape == (7,)  # the reference's len - 5 windows
    assert -3 <= res.offset <= 3 and res.sync_c >= 0 and res.sync_d > 0
    with torch.no_grad():
        assert net.forward_aud(torch.zeros(2, 1, 13, 20)).shape == (2, 1024)
    with pytest.raises(ValueError, match="16000 Hz"):
        sync.sync_metrics(frames, audio, net, sample_rate=22050)
    with pytest.raises(FileNotFoundError, match="syncnet_v2.safetensors.*syncnet_v2.model"):
        sync.load_syncnet(tmp_path / "none.safetensors")


# ---------------------------------------------------------------- E-FID
def test_e_fid_known_answers():
    a = gaussian_features(300, [0.0, 1.0, 2.0, 0.0, -1.0], [1.0, 0.5, 2.0, 1.0, 0.1], seed=9)
    assert abs(expression.e_fid_from_features(a, a)) < 1e-6
    delta = np.array([1.0, -2.0, 0.5, 0.0, 3.0])
    # equal covariances: FD = ||Δμ||²
    assert expression.e_fid_from_features(a, a + delta) == pytest.approx(delta @ delta, rel=1e-7)
    frames = (np.random.default_rng(12).random((20, 8, 8, 3)) * 255).astype(np.uint8)
    mouth_brightness = lambda f: f[:, 4:, :, :].reshape(len(f), -1, 3).mean(1)  # a toy expression extractor
    assert abs(expression.e_fid(frames, frames, mouth_brightness)) < 1e-6
    with pytest.raises(ValueError, match="one D"):
        expression.e_fid_from_features(a, a[:, :3])
