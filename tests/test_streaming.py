"""REST's ID-Context cache: invariants of the mechanism (pipeline/streaming.py), on a tiny DiT."""
import pytest
import torch

from pipeline.dit import A2VDiT
from pipeline.scheduler import inference_timesteps
from pipeline.streaming import ChunkLayout, ChunkStreamer, block_mask, cfg_branches, recompute

from .conftest import randomize

C, M, DA = 4, 3, 6  # latent channels, speech tokens per frame, code width


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: torch on one thread


def _dit(depth=2):
    return randomize(A2VDiT(in_channels=C, hidden_size=16, depth=depth, num_heads=2, audio_dim=DA, rope_axes=(2, 2, 4)), seed=3).eval()


def _ref(B=1, seed=0):
    return torch.randn(B, C, 1, 2, 2, generator=torch.Generator().manual_seed(seed))


def _codes(chunks, c=2, B=1, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, c, M, DA, generator=g) for _ in range(chunks)]


def _streamer(dit, layout=ChunkLayout(), steps=2, seed=0, **kw):
    kw.setdefault("cfg_mode", "split")
    return ChunkStreamer(dit, _ref(), inference_timesteps(steps), layout=layout,
                         generator=torch.Generator().manual_seed(seed), **kw)


@pytest.mark.parametrize("layout", [ChunkLayout(2, 2), ChunkLayout(1, 3), ChunkLayout(2, 0)])
def test_cached_pass_equals_masked_forward_from_scratch(layout):
    """Outputs and every block's keys/values of the cached pass equal one forward over
    [reference, context, current] with the block mask, recomputed from scratch (float32)."""
    dit, g = _dit(), torch.Generator().manual_seed(5)
    s = _streamer(dit, layout)
    for chunk, codes in enumerate(_codes(4, layout.chunk_frames)):
        z = torch.randn(1, C, layout.chunk_frames, 2, 2, generator=g)
        cached = s.model_output(z, 0.6, codes)  # (nb, C, c, 2, 2), one row per CFG branch
        L = s.cache.context_valid
        ctx = s.context if L else z[:, :, :0]
        ctx_codes = s.context_codes if L else codes[:, :0]
        want, kv = recompute(dit, s._rep(s.z_ref), s._rep(ctx), s._rep(ctx_codes), s._rep(z), 0.6, s._rep(codes),
                             s.drop_audio, s.drop_ref)
        torch.testing.assert_close(cached, want, rtol=1e-5, atol=1e-6)
        n, c = s.n, layout.chunk_frames
        for i, (k, v) in enumerate(kv):
            spans = {"sink": (0, n), "context": (n, n + L * n), "current": (n + L * n, n + (L + c) * n)}
            for name, (lo, hi) in spans.items():
                ck, cv = s.cache.region(name, i)
                torch.testing.assert_close(ck, k[:, :, lo:hi], rtol=1e-5, atol=1e-6, msg=f"chunk {chunk} block {i} {name}")
                torch.testing.assert_close(cv, v[:, :, lo:hi], rtol=1e-5, atol=1e-6)
        s.push(codes)


def test_block_mask_sees_what_the_cache_holds():
    m = block_mask(1, 2, 1)  # [ref, ctx, ctx, cur]
    assert m.tolist() == [[True, False, False, False], [True, True, True, False],
                          [True, True, True, False], [True, True, True, True]]


def test_cache_shapes_constant_and_sink_never_changes():
    s = _streamer(_dit(), ChunkLayout(2, 2))
    shapes = [t.shape for t in s.cache.k + s.cache.v]
    sink = [[x.clone() for x in s.cache.region("sink", i)] for i in range(len(s.cache.k))]
    codes = _codes(12)
    s.push(codes[0])
    after_one = ([t.shape for t in s.cache.k + s.cache.v], s.context.shape, s.context_codes.shape)
    for c in codes[1:]:
        s.push(c)
    assert after_one == ([t.shape for t in s.cache.k + s.cache.v], s.context.shape, s.context_codes.shape)
    assert [t.shape for t in s.cache.k + s.cache.v] == shapes
    for i, (k0, v0) in enumerate(sink):
        k, v = s.cache.region("sink", i)
        assert torch.equal(k, k0) and torch.equal(v, v0)


def test_same_inputs_same_chunk_at_index_2_and_500():
    """Positions are re-based: chunk 500 sees the layout chunk 2 sees, so equal inputs give equal output."""
    dit = _dit(depth=1)
    early, late = _streamer(dit, steps=1, cfg_mode="joint", alpha=1.0), _streamer(dit, steps=1, cfg_mode="joint", alpha=1.0)
    for codes in _codes(2):
        early.push(codes)
    for codes in _codes(500, seed=7):
        late.push(codes)
    assert (early.index, late.index) == (2, 500)
    window, window_codes = torch.randn(1, C, 2, 2, 2), _codes(1, seed=9)[0]
    for s in (early, late):  # the same clean context
        s.commit(window, window_codes)
    codes, noise = _codes(1, seed=11)[0], torch.randn(1, C, 2, 2, 2)
    assert torch.equal(early.push(codes, noise.clone()), late.push(codes, noise.clone()))


def test_changes_after_chunk_j_leave_earlier_chunks_unchanged():
    dit, j = _dit(), 2
    codes = _codes(5)
    changed = [c.clone() for c in codes]
    changed[j + 1] += 1.0
    base = [o for s in [_streamer(dit)] for o in map(s.push, codes)]
    other_audio = [o for s in [_streamer(dit)] for o in map(s.push, changed)]
    s = _streamer(dit)
    other_noise = [s.push(c, None if k <= j else torch.randn(1, C, 2, 2, 2)) for k, c in enumerate(codes)]
    for k in range(j + 1):
        assert torch.equal(base[k], other_audio[k]) and torch.equal(base[k], other_noise[k])
    assert not torch.allclose(base[j + 1], other_audio[j + 1]) and not torch.allclose(base[j + 1], other_noise[j + 1])


def test_same_seed_same_stream_other_seed_other_stream():
    dit, codes = _dit(), _codes(4)
    a, b, c = (_streamer(dit, seed=s) for s in (0, 0, 1))
    outs = [[s.push(x) for x in codes] for s in (a, b, c)]
    assert all(torch.equal(x, y) for x, y in zip(outs[0], outs[1]))
    assert not torch.allclose(outs[0][0], outs[2][0])


def test_errors():
    with pytest.raises(ValueError, match="cfg_mode"):
        cfg_branches("both")
    with pytest.raises(ValueError, match="chunk_frames"):
        ChunkLayout(0, 2)
    with pytest.raises(ValueError, match="codes must be"):
        _streamer(_dit()).push(_codes(1, c=3)[0])


def _session_parts(monkeypatch):
    """Tiny VAE/SpeechAE/DiT (conftest.small_config) and a window-independent stand-in for Whisper."""
    import numpy as np

    from pipeline import speech, speech_stream, vae as vae_lib
    from pipeline.dit import build_dit

    from .conftest import small_config

    cfg = small_config()

    def features(encoder, fe, audio, first_position=0):  # (n, whisper_dim): each 50-Hz feature from its own 20 ms
        hops = torch.from_numpy(np.asarray(audio, np.float32)).reshape(-1, 320)
        return hops[:, :: 320 // 8].repeat(1, cfg.speech.whisper_dim // 8 + 1)[:, : cfg.speech.whisper_dim]

    monkeypatch.setattr(speech_stream, "encode_window", features)
    torch.manual_seed(0)
    parts = dict(dit=randomize(build_dit(cfg.dit), seed=1).eval(), speech_ae=speech.build_speech_ae(cfg.speech).eval(),
                 vae=vae_lib.build_vae(cfg.vae).eval())
    z_ref = torch.randn(1, cfg.dit.in_channels, 1, 2, 2)
    return cfg, parts, z_ref


def _run_session(cfg, parts, z_ref, wav, block, rate=16000, overlap_decode=None):
    from pipeline.rest import RestSession

    s = RestSession(parts["dit"], parts["speech_ae"], parts["vae"], None, None, cfg.speech, z_ref, cfg.sampling,
                    generator=torch.Generator().manual_seed(0), overlap_decode=overlap_decode)
    out, sizes = [], []
    for i in range(0, len(wav), block):
        out += s.push_audio(wav[i : i + block], rate)
        sizes.append(s.decoder.latents.shape[2] if s.decoder.latents is not None else 0)
    out += s.close()
    return out, sizes


def test_session_frames_length_and_flat_decoder_memory(monkeypatch):
    import numpy as np

    from pipeline import vae as vae_lib

    cfg, parts, z_ref = _session_parts(monkeypatch)
    wav = np.random.default_rng(0).standard_normal(int(2.3 * 16000)).astype(np.float32) * 0.1
    out, sizes = _run_session(cfg, parts, z_ref, wav, 1600)
    frames = np.concatenate([c.frames for c in out])
    assert len(frames) == round(len(wav) / 640) and [c.start_frame for c in out] == list(np.cumsum([0] + [len(c.frames) for c in out[:-1]]))
    assert max(sizes) <= 6  # the decoder keeps a few latents, not the whole stream
    audio = np.concatenate([c.audio for c in out])  # the pushed samples, exactly the frames' span
    assert np.array_equal(audio, np.pad(wav, (0, max(0, len(frames) * 640 - len(wav))))[: len(frames) * 640])
    again, _ = _run_session(cfg, parts, z_ref, wav, 7000)  # other block sizes: the same video
    assert np.array_equal(np.concatenate([c.frames for c in again]), frames)
    monkeypatch.setattr(vae_lib.StreamingDecoder, "trim", lambda self: None)  # trimming changes no frame
    untrimmed, _ = _run_session(cfg, parts, z_ref, wav, 1600)
    assert np.array_equal(np.concatenate([c.frames for c in untrimmed]), frames)


def test_decode_on_a_worker_gives_the_same_chunks_as_decoding_in_line(monkeypatch):
    """`overlap_decode`: the decoder runs on its own thread one chunk behind the DiT; the chunks (frames,
    start frames, audio) are exactly those of the in-line session, and every frame comes out by close()."""
    import threading

    import numpy as np

    from pipeline import vae as vae_lib

    cfg, parts, z_ref = _session_parts(monkeypatch)
    wav = np.random.default_rng(1).standard_normal(int(3.1 * 16000)).astype(np.float32) * 0.1
    inline, _ = _run_session(cfg, parts, z_ref, wav, 1600, overlap_decode=False)
    threads, push = set(), vae_lib.StreamingDecoder.push

    def recording_push(self, *args, **kwargs):
        threads.add(threading.current_thread().name)
        return push(self, *args, **kwargs)

    monkeypatch.setattr(vae_lib.StreamingDecoder, "push", recording_push)
    overlapped, _ = _run_session(cfg, parts, z_ref, wav, 1600, overlap_decode=True)
    assert any(name.startswith("rest-decode") for name in threads)
    assert [c.start_frame for c in overlapped] == [c.start_frame for c in inline]
    for a, b in zip(overlapped, inline, strict=True):
        assert np.array_equal(a.frames, b.frames) and np.array_equal(a.audio, b.audio)
    assert sum(len(c.frames) for c in overlapped) == round(len(wav) / 640)


def test_bfloat16_model_float32_stream():
    dit = _dit().to(torch.bfloat16)
    s = _streamer(dit)
    out = [s.push(c) for c in _codes(3)]
    assert s.cache.k[0].dtype == torch.bfloat16 and all(o.dtype == torch.float32 and torch.isfinite(o).all() for o in out)


def test_audio_spans_tile_the_pushed_samples_at_any_rate():
    import numpy as np

    from pipeline.rest import AudioSpans

    x = (np.random.default_rng(0).standard_normal((44100, 2)) * 1000).astype(np.int16)
    spans = AudioSpans()
    for i in range(0, len(x), 3000):
        spans.push(x[i : i + 3000], 44100)
    parts = [spans.take(f, n) for f, n in [(0, 1), (1, 7), (8, 16), (24, 30)]]  # 54 frames: past the end
    got = np.concatenate(parts)
    assert got.shape == (54 * 44100 // 25, 2) and np.array_equal(got[: len(x)], x / np.float32(32767))
    assert not got[len(x):].any() and len(spans.buf) == 0


def test_pipeline_rest_mode_equals_a_live_session(small_pipe, speech_wav, portrait):
    """`stream(mode="rest")` and `open_stream` + `push_audio` give the same video (same seed, other
    blocks), round(duration x 25) frames, and the caller's audio for exactly those frames."""
    import numpy as np

    out = small_pipe(portrait, (16000, speech_wav), mode="rest", seed=3)
    assert len(out.frames) == round(len(speech_wav) / 640) and len(out.audio) == len(out.frames) * 640
    live = small_pipe.open_stream(portrait, seed=3)
    chunks = [c for i in range(0, len(speech_wav), 4800) for c in live.push_audio(speech_wav[i : i + 4800], 16000)]
    chunks += live.close()
    assert [c.index for c in chunks] == list(range(len(chunks)))
    assert np.array_equal(np.concatenate([c.frames for c in chunks]), out.frames)
