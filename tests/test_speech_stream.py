"""Speech as a stream (pipeline/speech_stream.py): the codes a whole clip gives, whatever the blocks."""
import numpy as np
import pytest
import torch

from pipeline import speech_stream
from pipeline.config import SpeechConfig
from pipeline.speech import SpeechAE, frame_features, frame_windows
from pipeline.speech_stream import BlockResampler, SpeechStream

from .conftest import randomize

CFG = SpeechConfig(whisper_dim=3, context_frames=2, hidden_dim=8, num_tokens=2, code_dim=3)


def _local_features(encoder, fe, audio, first_position=0):
    """Stands in for Whisper: each 50-Hz feature depends on its own 20 ms only (window-independent)."""
    hops = torch.from_numpy(np.asarray(audio, np.float32)).reshape(-1, 320)
    return torch.stack([hops.mean(1), hops.std(1), hops.abs().max(1).values], dim=1)  # (n, 3)


@pytest.fixture
def stream_parts(monkeypatch):
    monkeypatch.setattr(speech_stream, "encode_window", _local_features)
    return randomize(SpeechAE(CFG.window_dim, CFG.frame_dim, CFG.hidden_dim, CFG.num_tokens, CFG.code_dim), std=0.3).eval()


def _whole_clip_codes(ae, wav, num_latents):
    """READ's path: features of the whole (silence-padded) audio, windows, one SpeechAE encode."""
    frames = 1 + 8 * (num_latents - 1)
    padded = np.zeros(frames * 640 + 4 * 640, np.float32)
    padded[: len(wav)] = wav
    feats = _local_features(None, None, padded)
    with torch.no_grad():
        return ae.encode(frame_windows(frame_features(feats, frames), CFG.context_frames)[None])


@pytest.mark.parametrize("group", [1, 2, 3])
def test_stream_codes_equal_whole_clip_codes(stream_parts, group):
    ae, rng = stream_parts, np.random.default_rng(0)
    wav = rng.standard_normal(int(3.3 * 16000)).astype(np.float32) * 0.1
    s = SpeechStream(None, None, ae, CFG, group=group, window_s=2.0, lookahead_s=0.2)
    out, i = [], 0
    while i < len(wav):
        b = int(rng.integers(100, 5000))
        out += s.push(wav[i : i + b], 16000)
        i += b
    out += s.flush()
    codes = torch.cat(out, dim=1)
    assert all(c.shape[1] == group for c in out) and s.num_frames == round(len(wav) / 640)
    assert codes.shape[1] >= 1 + (s.num_frames + 6) // 8  # covers every video frame
    torch.testing.assert_close(codes, _whole_clip_codes(ae, wav, codes.shape[1]), rtol=1e-5, atol=1e-6)


def test_groups_come_as_soon_as_their_audio_and_lookahead_arrive(stream_parts):
    s = SpeechStream(None, None, stream_parts, CFG, group=2, window_s=2.0, lookahead_s=0.32)
    need = s.ready_sample(0)  # latents 0-1 = video frames 0-8, windows to frame 10, + 0.32 s
    assert need == 11 * 640 + 5120
    assert s.push(np.zeros(need - 1, np.float32)) == [] and len(s.push(np.zeros(1, np.float32))) == 1
    assert s.ready_sample(1) - s.ready_sample(0) == 16 * 640  # then one group per 0.64 s


def test_block_rate_and_int16_input(stream_parts):
    """A 48-kHz int16 stereo stream gives the codes of its 16-kHz mono copy."""
    rng = np.random.default_rng(1)
    stereo = (rng.standard_normal((48000 * 2, 2)) * 3000).astype(np.int16)
    a = SpeechStream(None, None, stream_parts, CFG, window_s=2.0)
    out = [c for i in range(0, len(stereo), 4800) for c in a.push(stereo[i : i + 4800], 48000)] + a.flush()
    r = BlockResampler(48000)
    mono = np.concatenate([r.push(stereo.astype(np.float32).mean(1) / 32767), r.flush()])
    b = SpeechStream(None, None, stream_parts, CFG, window_s=2.0)
    ref = b.push(mono) + b.flush()
    assert len(out) == len(ref) and all(torch.allclose(x, y, atol=1e-5) for x, y in zip(out, ref))
    with pytest.raises(ValueError, match="sample rate changed"):
        a.push(np.zeros(10, np.float32), 44100)


@pytest.mark.parametrize("rate", [48000, 44100, 8000])
def test_block_resampler_equals_whole_signal_resampling(rate):
    from pipeline.media import resample

    rng = np.random.default_rng(2)
    x = rng.standard_normal(rate).astype(np.float32)
    r, out, i = BlockResampler(rate), [], 0
    while i < len(x):
        b = int(rng.integers(1, 2000))
        out.append(r.push(x[i : i + b]))
        i += b
    y = np.concatenate(out + [r.flush()])
    np.testing.assert_allclose(y, resample(x, rate), atol=1e-5)


def test_short_window_whisper_equals_the_padded_30s_forward():
    """encode_window (stem, cut positional table, layers) on a 30-s window = the HF forward."""
    from pipeline import whisper

    encoder, fe = whisper.load_whisper(encoder_only=True), whisper.load_feature_extractor()
    audio = np.random.default_rng(3).standard_normal(30 * 16000).astype(np.float32) * 0.05
    torch.testing.assert_close(speech_stream.encode_window(encoder, fe, audio),
                               whisper.encode_speech_features(encoder, fe, audio), rtol=1e-4, atol=1e-4)


def test_windows_keep_reads_positions_and_never_cross_its_30s_boundaries(stream_parts, monkeypatch):
    """A feature at absolute index j gets Whisper position j mod 1500, as in READ's 30-s windows; a group
    straddling a boundary takes its features from one window on each side (same codes as the whole clip)."""
    calls = []

    def recording(encoder, fe, audio, first_position=0):
        calls.append((len(audio), first_position))
        return _local_features(encoder, fe, audio)

    monkeypatch.setattr(speech_stream, "encode_window", recording)
    wav = np.random.default_rng(4).standard_normal(int(31.2 * 16000)).astype(np.float32) * 0.1
    s = SpeechStream(None, None, stream_parts, CFG, group=2, window_s=2.0, lookahead_s=0.32)
    codes = torch.cat([c for i in range(0, len(wav), 16000) for c in s.push(wav[i : i + 16000])] + s.flush(), dim=1)
    starts = [p for _, p in calls]
    assert all(0 <= p and p + n // 320 <= 1500 for n, p in calls)  # inside one 30-s window
    assert any(p + n // 320 == 1500 for n, p in calls) and any(p == 0 for p in starts[len(starts) // 2 :])  # wrapped
    torch.testing.assert_close(codes, _whole_clip_codes(stream_parts, wav, codes.shape[1]), rtol=1e-5, atol=1e-6)
