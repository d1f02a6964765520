"""REST's ID-Context cache and a chunk-wise sampler that runs the A2V-DiT as a stream.

READ samples a whole clip with full attention. REST (arXiv 2512.11229) generates chunk after chunk;
each chunk attends to itself plus a cache whose size never grows:

- **ID-Sink**: per DiT block, the keys/values of the reference frame, computed once per CFG branch
  (a branch that drops the reference uses the null reference). The idea of a fixed "sink" that every
  step attends to is StreamingLLM's (Xiao et al. 2023); Live Avatar keeps the reference in a cache
  of its own in the same way.
- **Context-Cache**: the keys/values of the last `context_frames` clean latent frames. They are
  written only when a chunk is finished (`commit`): one clean pass at t = 0 over [sink, window],
  the habit of Self-Forcing (Huang et al. 2025), whose inference re-runs a finished block at t = 0
  to write its cache. The window is the last K clean frames, recomputed as a whole, so the cache is
  a function of (reference, last K frames, their codes) only: nothing of chunk 3 survives in chunk
  100 000's cache, and the cached pass equals one masked forward over [reference, context, current]
  recomputed from scratch (`recompute`), which the tests check.
- **Re-based positions**: the sequence a chunk sees is always [sink at frame 0, context at 1 ... K,
  current at K+1 ... K+c] (CausVid instead keeps absolute frame positions, which grow). Keys are
  cached after RoPE at exactly these positions, so nothing extrapolates and nothing is re-rotated.

Memory follows gpt-fast's `KVCache`: one buffer per block, allocated once, slots [sink | context |
current]; denoising steps overwrite the current slots, a commit overwrites the context slots.
Chunk size, context length and their reasons: docs/STREAMING.md.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator

import torch

from .sampler import cfg_branches
from .scheduler import euler_step, inference_timesteps


@dataclass(frozen=True)
class ChunkLayout:
    """Sizes of the stream in latent frames (1 latent frame = 8 video frames = 0.32 s)."""

    chunk_frames: int = 2  # new latent frames per chunk (16 video frames, 0.64 s)
    context_frames: int = 2  # clean latent frames kept as context (the previous chunk)

    def __post_init__(self):
        if self.chunk_frames < 1 or self.context_frames < 0:
            raise ValueError(f"need chunk_frames >= 1 and context_frames >= 0, got {self}")

    def positions(self, context: int) -> tuple[list[int], list[int]]:
        """Frame positions of (context, current) when `context` context frames are valid; sink = 0."""
        return list(range(1, 1 + context)), list(range(1 + context, 1 + context + self.chunk_frames))


class IDContextCache:
    """Per-block key/value buffers (B, H, (1 + K + c) * n, Dh): slots [sink | context | current].

    `writers(region, frames)` gives one callable per block for `A2VDiT.forward(kv_cache=...)`: it
    writes the pass's keys/values into the region's slots and returns what the region attends to:
    the sink itself; the context: sink + context; the current chunk: sink + valid context + itself.
    """

    def __init__(self, dit, batch: int, tokens_per_frame: int, layout: ChunkLayout, dtype=None, device=None):
        self.n, self.layout = tokens_per_frame, layout
        heads = dit.blocks[0].attn.h
        head_dim = dit.config.hidden_size // heads
        size = (1 + layout.context_frames + layout.chunk_frames) * tokens_per_frame
        kw = dict(dtype=dtype or dit.dtype, device=device or dit.device)
        self.k = [torch.zeros(batch, heads, size, head_dim, **kw) for _ in dit.blocks]
        self.v = [torch.zeros(batch, heads, size, head_dim, **kw) for _ in dit.blocks]
        self.context_valid = 0  # clean context frames in the cache
        self.sink_written = False

    def spans(self, region: str, frames: int) -> tuple[tuple[int, int], list[tuple[int, int]]]:
        """Token slots a pass of `frames` frames writes, and the slot ranges it attends to."""
        n, K = self.n, self.layout.context_frames
        if region == "sink":
            return (0, n), [(0, n)]
        if region == "context":
            return (n, n + frames * n), [(0, n + frames * n)]
        if region == "current":
            lo = n + K * n
            keys = [(0, lo + frames * n)] if self.context_valid == K else [(0, n + self.context_valid * n), (lo, lo + frames * n)]
            return (lo, lo + frames * n), keys
        raise ValueError(f"region must be 'sink', 'context' or 'current', got {region!r}")

    def writers(self, region: str, frames: int) -> list:
        (lo, hi), keys = self.spans(region, frames)

        def writer(i):
            def update(k, v):  # (B, H, hi - lo, Dh) -> keys/values to attend over
                self.k[i][:, :, lo:hi], self.v[i][:, :, lo:hi] = k, v
                pick = lambda buf: torch.cat([buf[:, :, a:b] for a, b in keys], dim=2) if len(keys) > 1 else buf[:, :, keys[0][0]:keys[0][1]]  # noqa: E731
                return pick(self.k[i]), pick(self.v[i])
            return update

        return [writer(i) for i in range(len(self.k))]

    def region(self, name: str, layer: int, frames: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Views (B, H, tokens, Dh) of one block's keys and values in a region (for tests and inspection)."""
        frames = {"sink": 1, "context": self.context_valid, "current": self.layout.chunk_frames}[name] if frames is None else frames
        (lo, hi), _ = self.spans(name, frames)
        return self.k[layer][:, :, lo:hi], self.v[layer][:, :, lo:hi]


def block_mask(tokens_per_frame: int, context: int, chunk: int, device=None) -> torch.Tensor:
    """(S, S) bool attention mask of [reference, context, current] that the cache realises:
    the reference sees itself, the context sees the reference and itself, the current chunk sees all."""
    n = tokens_per_frame
    frame = torch.tensor([0] + [1] * context + [2] * chunk, device=device).repeat_interleave(n)  # (S,)
    return frame[None, :] <= frame[:, None]  # (S, S): key frame kind <= query frame kind


def masked_forward(dit, z_ref, context, context_codes, current, t, codes, drop_audio=None, drop_ref=None, kv_cache=None):
    """The student's chunk forward as training needs it (autograd on): one forward over [reference,
    context, current] with `block_mask` and the layout's positions (0, 1 ... L, L+1 ... L+c), which is
    what the cache computes chunk by chunk (`recompute` is this under no_grad; tests compare both).

    z_ref (B, C, 1, H, W); context (B, C, L, H, W) clean latents (L may be 0) with codes (B, L, M, Da);
    current (B, C, c, H, W) at time t (a float, or per sample (B,)) with codes (B, c, M, Da).
    Returns the velocity (B, C, c, H, W) of `current`.
    """
    B, L, c = z_ref.shape[0], context.shape[2], current.shape[2]
    p = getattr(dit, "module", dit).config.patch_size  # a DDP wrapper keeps the model in .module
    n = (z_ref.shape[3] // p) * (z_ref.shape[4] // p)
    t = torch.as_tensor(t, dtype=torch.float32, device=z_ref.device).reshape(-1, 1).expand(B, c)  # (B, c)
    times = torch.cat([t.new_zeros(B, L), t], dim=1)  # (B, L+c): context clean
    out = dit(torch.cat([context, current], dim=2), times, torch.cat([context_codes, codes], dim=1),
              drop_audio=drop_audio, drop_ref=drop_ref, reference=z_ref, attn_mask=block_mask(n, L, c, z_ref.device),
              kv_cache=kv_cache, frame_positions=range(1 + L + c))
    return out[:, :, L:]


@torch.no_grad()
def recompute(dit, z_ref, context, context_codes, current, t, codes, drop_audio=None, drop_ref=None):
    """The definition the cache must equal: `masked_forward` from scratch, also returning each block's
    (keys, values) (B, Hd, S, Dh) of the whole sequence, after RoPE.

    Shapes as in `masked_forward`; t a float. Returns (output for `current`, [(k, v) per block]).
    """
    records = []

    def record(k, v):
        records.append((k, v))
        return k, v

    out = masked_forward(dit, z_ref, context, context_codes, current, t, codes, drop_audio, drop_ref,
                         kv_cache=[record] * len(dit.blocks))
    return out, records


class ChunkStreamer:
    """The A2V-DiT as a stream: `push(codes)` returns the next chunk's clean latents.

    Each chunk starts from noise (from `generator`, or given), takes `len(timesteps) - 1` Euler steps
    (scheduler.py's convention) with CFG batched into one forward per step (`cfg_branches`), then
    `commit`s the finished latents to the Context-Cache. Cost and memory per chunk are constant.
    z_ref (B, C, 1, h, w) normalised reference latent; timesteps (steps + 1,) from 1 to 0. The model
    runs in its own dtype (bf16 on a GPU); latents, noise and the Euler state stay float32.
    """

    def __init__(self, dit, z_ref, timesteps=None, *, layout: ChunkLayout = ChunkLayout(), cfg_mode: str = "joint",
                 alpha: float = 1.5, beta: float = 6.0, generator: torch.Generator | None = None):
        if dit.text_proj is not None:
            raise NotImplementedError("streaming with text conditioning is not supported")
        self.dit, self.z_ref, self.layout, self.generator = dit, z_ref, layout, generator
        self.timesteps = inference_timesteps(4) if timesteps is None else timesteps
        weights, drop_audio, drop_ref = cfg_branches(cfg_mode, alpha, beta)
        B, dev = z_ref.shape[0], z_ref.device
        self.weights = weights
        self.drop_audio = torch.tensor(drop_audio, device=dev).repeat_interleave(B)  # (nb*B,)
        self.drop_ref = torch.tensor(drop_ref, device=dev).repeat_interleave(B)
        p = dit.config.patch_size
        self.n = (z_ref.shape[3] // p) * (z_ref.shape[4] // p)  # tokens per latent frame
        self.dtype = next(dit.parameters()).dtype  # the model's; the stream's state stays float32
        self.cache = IDContextCache(dit, len(weights) * B, self.n, layout, self.dtype, dev)
        self.context = self.context_codes = None  # last K clean latents (B, C, L, h, w), codes (B, L, M, Da)
        self.index = 0  # chunks produced so far
        self._write_sink()

    def _rep(self, x):  # (B, ...) -> (nb*B, ...): one copy per CFG branch
        return x.repeat(len(self.weights), *([1] * (x.dim() - 1)))

    @torch.no_grad()
    def _write_sink(self):
        """ID-Sink: the reference alone, once per CFG branch (null reference where it is dropped)."""
        ref = self._rep(self.z_ref).to(self.dtype)
        B = ref.shape[0]
        empty = ref[:, :, :0]  # (nb*B, C, 0, h, w): no clip frames in this pass
        audio = ref.new_zeros(B, 0, 1, self.dit.config.audio_dim)
        self.dit(empty, ref.new_zeros(B, 0), audio, drop_ref=self.drop_ref, reference=ref,
                 kv_cache=self.cache.writers("sink", 1), frame_positions=[0])
        self.cache.sink_written = True

    @torch.no_grad()
    def model_output(self, z, t: float, codes) -> torch.Tensor:
        """The DiT's output for every CFG branch (nb*B, C, c, h, w) for the current chunk z (B, C, c, h, w)
        at time t with codes (B, c, M, Da), attending to the cache. Overwrites the current slots."""
        c = z.shape[2]
        _, pos = self.layout.positions(self.cache.context_valid)
        times = z.new_full((z.shape[0] * len(self.weights), c), float(t))
        return self.dit(self._rep(z).to(self.dtype), times, self._rep(codes).to(self.dtype), drop_audio=self.drop_audio,
                        kv_cache=self.cache.writers("current", c), frame_positions=pos).float()

    def velocity(self, z, t: float, codes) -> torch.Tensor:
        """Guided velocity (B, C, c, h, w): the branches' outputs weighted as in eq. 16/17."""
        out = self.model_output(z, t, codes).chunk(len(self.weights))
        return sum(w * o for w, o in zip(self.weights, out))

    @torch.no_grad()
    def commit(self, latents, codes) -> None:
        """Make finished latents (B, C, c, h, w) with their codes context: one clean pass at t = 0 over
        [sink, last K clean frames] overwrites the Context-Cache."""
        K = self.layout.context_frames
        if K == 0:
            return
        latents = latents.float()
        ctx = latents if self.context is None else torch.cat([self.context, latents], dim=2)
        ctx_codes = codes if self.context_codes is None else torch.cat([self.context_codes, codes], dim=1)
        self.context, self.context_codes = ctx[:, :, -K:], ctx_codes[:, -K:]
        L = self.context.shape[2]
        times = latents.new_zeros(self.cache.k[0].shape[0], L)
        self.dit(self._rep(self.context).to(self.dtype), times, self._rep(self.context_codes).to(self.dtype), drop_audio=self.drop_audio,
                 kv_cache=self.cache.writers("context", L), frame_positions=range(1, 1 + L))
        self.cache.context_valid = L

    @torch.no_grad()
    def push(self, codes, noise=None) -> torch.Tensor:
        """Codes (B, c, M, Da) of the next c latent frames -> their clean latents (B, C, c, h, w).

        noise (B, C, c, h, w), default drawn from the streamer's generator. Raises ValueError when
        the codes do not cover exactly one chunk.
        """
        B, C, _, h, w = self.z_ref.shape
        c = self.layout.chunk_frames
        if codes.shape[:2] != (B, c):
            raise ValueError(f"codes must be (B={B}, chunk_frames={c}, M, Da), got {tuple(codes.shape)}")
        if noise is None:
            noise = torch.randn((B, C, c, h, w), generator=self.generator)
        z, ts = noise.to(self.z_ref.device, torch.float32), self.timesteps
        for i in range(len(ts) - 1):
            t, t_next = z.new_full((B, c), float(ts[i])), z.new_full((B, c), float(ts[i + 1]))
            z = euler_step(z, self.velocity(z, float(ts[i]), codes), t, t_next)
        self.commit(z, codes)
        self.index += 1
        return z


def stream_latents(dit, z_ref, code_chunks: Iterable[torch.Tensor], **kwargs) -> Iterator[torch.Tensor]:
    """Latents chunk by chunk for an iterable of code chunks (B, c, M, Da); kwargs go to `ChunkStreamer`."""
    streamer = ChunkStreamer(dit, z_ref, **kwargs)
    for codes in code_chunks:
        yield streamer.push(codes)
