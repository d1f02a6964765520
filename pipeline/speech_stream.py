"""Speech as a stream (REST): audio blocks in, SpeechAE codes out, a few latent frames at a time.

READ runs Whisper on 30-s windows over the whole file. A stream cannot wait for 30 s, so:

1. `BlockResampler` turns blocks at any rate (a browser microphone: 48 or 44.1 kHz) into 16-kHz
   mono without seams: polyphase filtering over the block plus a kept history, holding back the
   few output samples whose filter still needs future input.
2. `encode_window` runs the Whisper encoder on a *short* mel window: its conv stem, a slice of the
   positional table, its layers (the HF `forward` insists on 30 s; the layers do not). A few seconds
   cost a fraction of the padded 30 s. The slice is the one READ uses for the same audio (READ cuts
   the audio into 30-s windows from 0; a feature at absolute index j sits at position j mod 1500),
   and a window never crosses a 30-s boundary: with positions starting at 0 instead, the features
   of a 4-s window matched READ's at mean cosine 0.58; aligned, 0.93 (docs/STREAMING.md).
3. `SpeechStream` emits the codes of `group` latent frames as soon as their audio plus a fixed
   look-ahead has arrived. Each group's Whisper window ends exactly `lookahead` after the last
   feature the group needs, so the codes depend on the audio only, never on how it was cut into
   blocks. The causal SpeechAE is re-run on a bounded tail (its receptive field is two latent
   frames), which gives the codes a whole-clip `encode` gives.

Video frame f (25 fps) owns the 50-Hz features 2f, 2f+1; its SpeechAE window spans frames f-c ... f+c
(c = `SpeechConfig.context_frames`); latent frame 0 is video frame 0, latent k >= 1 is frames 8k-7 ... 8k.
"""
from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import torch

from . import speech as speech_lib
from .config import FPS, SAMPLE_RATE, TEMPORAL_COMPRESSION

SAMPLES_PER_FRAME = SAMPLE_RATE // FPS  # 640
SAMPLES_PER_FEATURE = SAMPLES_PER_FRAME // 2  # 320: Whisper's 50-Hz feature hop
WHISPER_POSITIONS = 1500  # features per 30-s window: READ's windows start every 30 s from 0


class BlockResampler:
    """Stateful polyphase resampling to 16 kHz: equal to resampling the whole signal at once,
    except within the filter's reach of its very start. `push(block)` returns the output samples
    that are final; `flush()` the rest (the signal's end treated as zeros, like scipy)."""

    def __init__(self, rate: int, target: int = SAMPLE_RATE, half_taps: int = 10):
        r = Fraction(target, int(rate)).limit_denominator(1000)
        self.up, self.down = r.numerator, r.denominator
        self.reach = half_taps * max(self.up, self.down) // self.up + self.down  # input samples the filter spans
        self.half_taps = half_taps
        self.buf = np.zeros(0, np.float32)  # input kept from `start` on
        self.start = 0  # absolute input index of buf[0], a multiple of `down`
        self.emitted = 0  # output samples returned so far

    def _run(self, final: bool) -> np.ndarray:
        from scipy.signal import resample_poly

        if self.up == self.down == 1:
            out, self.buf = self.buf, self.buf[:0]
            self.emitted += len(out)
            return out
        y = resample_poly(self.buf, self.up, self.down, window=("kaiser", 5.0), padtype="constant")
        first = self.emitted - self.start * self.up // self.down  # output index in y of the next new sample
        end_in = self.start + len(self.buf) - (0 if final else self.reach)
        end = len(y) if final else max(first, end_in * self.up // self.down - self.start * self.up // self.down)
        out = y[first:end].astype(np.float32)
        self.emitted += len(out)
        keep_from = max(0, (self.emitted * self.down // self.up - 2 * self.reach) // self.down * self.down)
        self.buf, self.start = self.buf[keep_from - self.start:], keep_from
        return out

    def push(self, block: np.ndarray) -> np.ndarray:
        self.buf = np.concatenate([self.buf, np.asarray(block, np.float32)])
        return self._run(final=False)

    def flush(self) -> np.ndarray:
        return self._run(final=True)


def to_mono(samples) -> np.ndarray:
    """A block (T,) or (T, C), float or integer PCM -> (T,) float32 (channels averaged)."""
    x = np.asarray(samples)
    if x.dtype.kind == "i":
        x = x.astype(np.float32) / np.iinfo(x.dtype).max
    x = x.astype(np.float32)
    return x if x.ndim == 1 else x.mean(axis=1)


@torch.no_grad()
def encode_window(encoder, feature_extractor, audio_16k: np.ndarray, first_position: int = 0) -> torch.Tensor:
    """Whisper encoder states (len / 320, D) for a short window (a multiple of 320 samples).

    The log-mel is computed on the window alone (its dynamic-range floor follows the window's own
    peak, as it does for each 30-s window in READ), then the conv stem, the positional table from
    `first_position` (first_position + len / 320 <= 1500), the layers and the final norm.
    """
    n = len(audio_16k) // SAMPLES_PER_FEATURE
    param = next(encoder.parameters())
    mel = feature_extractor(np.asarray(audio_16k, np.float32), sampling_rate=SAMPLE_RATE, padding="longest",
                            return_tensors="pt").input_features[:, :, : 2 * n]  # (1, 80, 2n)
    x = torch.nn.functional.gelu(encoder.conv1(mel.to(param.device, param.dtype)))
    x = torch.nn.functional.gelu(encoder.conv2(x)).permute(0, 2, 1)  # (1, n, D)
    x = x + encoder.embed_positions.weight[first_position : first_position + n]
    for layer in encoder.layers:
        x = layer(x, None)
        x = x[0] if isinstance(x, tuple) else x
    return encoder.layer_norm(x)[0]  # (n, D)


class SpeechStream:
    """Audio blocks in, SpeechAE codes of `group` latent frames out, as soon as their audio has arrived.

    Group g (latents g*group ... (g+1)*group - 1) is ready once the audio reaches `ready_sample(g)`:
    the end of the last 50-Hz feature its SpeechAE windows need, plus `lookahead_s` for Whisper's
    bidirectional attention. Its features come from one `encode_window` call over the `window_s`
    seconds that end there (two when the group straddles one of READ's 30-s window boundaries). Memory is bounded: only the window's audio and the last latents'
    frame features are kept.
    """

    def __init__(self, whisper_encoder, feature_extractor, speech_ae, speech_cfg, *, group: int = 2,
                 window_s: float = 4.0, lookahead_s: float = 0.16):
        self.encoder, self.fe, self.ae, self.cfg = whisper_encoder, feature_extractor, speech_ae, speech_cfg
        self.group, self.ctx = group, speech_cfg.context_frames
        self.lookahead = round(lookahead_s * SAMPLE_RATE / SAMPLES_PER_FEATURE) * SAMPLES_PER_FEATURE
        self.window = round(window_s * SAMPLE_RATE / SAMPLES_PER_FEATURE) * SAMPLES_PER_FEATURE
        if self.window < self.ready_sample(1) - self.ready_sample(0) + self.lookahead:
            raise ValueError(f"window_s={window_s} is too short for groups of {group} latent frames")
        self.resampler: BlockResampler | None = None
        self.audio, self.audio_start, self.total = np.zeros(0, np.float32), 0, 0  # 16 kHz, absolute indices
        self.feats, self.feat_start = None, 0  # per-video-frame features (T, frame_dim) from frame feat_start
        self.last_features = None  # (first video frame, (frames, frame_dim)) added by the last group, to inspect
        self.next_group = 0

    def ready_sample(self, g: int) -> int:
        """16-kHz samples needed before group g can be encoded."""
        last_frame = TEMPORAL_COMPRESSION * ((g + 1) * self.group - 1) + self.ctx  # newest frame in a window
        return (last_frame + 1) * SAMPLES_PER_FRAME + self.lookahead

    @property
    def num_frames(self) -> int:
        """Video frames the audio received so far spans (25 fps, rounded like READ)."""
        return round(self.total / SAMPLES_PER_FRAME)

    def push(self, samples, sample_rate: int = SAMPLE_RATE) -> list[torch.Tensor]:
        """Append a block (T,) or (T, C) at `sample_rate`; return the code groups now ready,
        each (1, group, M, Dc). Raises ValueError if the rate changes within the stream."""
        if self.resampler is None:
            self.resampler = BlockResampler(sample_rate)
        elif Fraction(SAMPLE_RATE, int(sample_rate)) != Fraction(self.resampler.up, self.resampler.down):
            raise ValueError(f"the sample rate changed within the stream (now {sample_rate} Hz)")
        return self._append(self.resampler.push(to_mono(samples)))

    def flush(self) -> list[torch.Tensor]:
        """End of the stream: the remaining groups, the audio padded with silence (READ pads the same way)."""
        rest = self.resampler.flush() if self.resampler is not None else np.zeros(0, np.float32)
        frames = max(1, round((self.total + len(rest)) / SAMPLES_PER_FRAME))
        latents = 1 + (frames + TEMPORAL_COMPRESSION - 2) // TEMPORAL_COMPRESSION
        out = self._append(rest)
        received = self.total
        missing = self.ready_sample(math.ceil(latents / self.group) - 1) - self.total
        out += self._append(np.zeros(max(0, missing), np.float32))
        self.total = received  # the padding is not audio
        return out

    def _append(self, audio_16k: np.ndarray) -> list[torch.Tensor]:
        self.audio = np.concatenate([self.audio, audio_16k])
        self.total += len(audio_16k)
        out = []
        while self.total >= self.ready_sample(self.next_group):
            out.append(self._encode_group(self.next_group))
            self.next_group += 1
        return out

    @torch.no_grad()
    def _encode_group(self, g: int) -> torch.Tensor:
        """Whisper over the window ending at ready_sample(g), then the SpeechAE over a bounded tail."""
        T, D = TEMPORAL_COMPRESSION, self.cfg.feats_per_frame
        k0, k1 = g * self.group, (g + 1) * self.group - 1
        first = 0 if self.feats is None else self.feat_start + len(self.feats)  # first video frame without features
        last = T * k1 + self.ctx  # newest video frame the group's windows need
        new = self._features(D * first, D * (last + 1), self.ready_sample(g)).reshape(last + 1 - first, -1)  # (frames, Df)
        self.feats = new if self.feats is None else torch.cat([self.feats, new])
        self.last_features = (first, new)
        fs = 0 if k0 < 2 else T * (k0 - 2)  # tail start: the end frame of latent k0 - 2 (receptive field: 2 latents)
        lo = max(0, fs - self.ctx)
        frames = self.feats[lo - self.feat_start : last + 1 - self.feat_start]
        windows = speech_lib.frame_windows(frames, self.ctx)[fs - lo : T * k1 + 1 - lo]  # frames fs ... 8 k1
        p = next(self.ae.parameters())
        codes = self.ae.encode(windows[None].to(p.device, p.dtype))  # (1, 1 + k1 - fs/8, M, Dc)
        codes = codes[:, k0 - fs // T :]
        keep = max(0, T * (k1 - 1) - self.ctx)  # what the next group's tail needs
        self.feats, self.feat_start = self.feats[keep - self.feat_start :], keep
        start = max(0, D * (last + 1) * SAMPLES_PER_FEATURE - self.window)  # the earliest a later window starts
        self.audio, self.audio_start = self.audio[start - self.audio_start :], start
        return codes

    def _features(self, f0: int, f1: int, end: int) -> torch.Tensor:
        """50-Hz features [f0, f1) from windows of at most `window` samples ending at sample `end`,
        one per 30-s segment of READ's windowing the features fall in. Returns (f1 - f0, D) on the CPU."""
        seg, out = WHISPER_POSITIONS, []
        while f0 < f1:
            s = f0 // seg
            stop = min(end, (s + 1) * seg * SAMPLES_PER_FEATURE)  # a window never crosses a segment boundary
            start = max(stop - self.window, s * seg * SAMPLES_PER_FEATURE)
            feats = encode_window(self.encoder, self.fe, self.audio[start - self.audio_start : stop - self.audio_start],
                                  first_position=start // SAMPLES_PER_FEATURE - s * seg)
            upto = min(f1, (s + 1) * seg)
            out.append(feats.float().cpu()[f0 - start // SAMPLES_PER_FEATURE : upto - start // SAMPLES_PER_FEATURE])
            f0 = upto
        return torch.cat(out)
