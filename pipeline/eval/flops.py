"""DiT compute figures for the benchmark: counted FLOPs of one batched CFG forward (FlopCounterMode,
plus the CPU attention kernel's QK^T and PV, which torch's counter misses), the matmul peak measured
in the same process and dtype, the DiT efficiency (achieved / peak) and a short op profile.
"""
from __future__ import annotations

import time

import numpy as np

from ..config import FPS


def sync(device) -> None:
    """Wait for the GPU's queued work (timers must see finished work); nothing on a CPU."""
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def matmul_peak(dtype, device, size: int = 2048, budget_s: float = 1.0) -> float:
    """Best FLOP/s of a size x size matmul in `dtype` (at least 3 timed products, up to budget_s)."""
    import torch

    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    inner = 10 if torch.device(device).type == "cuda" else 1  # GPU: amortise the sync
    torch.mm(a, b)  # warm-up
    sync(device)
    best, start, n = 0.0, time.perf_counter(), 0
    while n < 3 or time.perf_counter() - start < budget_s:
        t0 = time.perf_counter()
        for _ in range(inner):
            a @ b
        sync(device)
        best, n = max(best, 2 * size**3 * inner / (time.perf_counter() - t0)), n + 1
    return best


def _dit_call(pipe, settings: dict):
    """One batched CFG forward of the DiT at the clip shape [z_R, f latent frames], as the sampler makes it."""
    import torch

    from .. import sampler, scheduler

    f, d, s = settings["clip_latent_frames"], pipe.dit.config, pipe.speech_ae.config
    g = torch.Generator().manual_seed(0)
    shape = (1, d.in_channels, 1 + f, pipe.config.height // 32, pipe.config.width // 32)
    z = torch.randn(shape, generator=g).to(pipe.device, pipe.dtype)
    audio = torch.randn((1, f, s.num_tokens, s.code_dim), generator=g).to(pipe.device, pipe.dtype)
    t = scheduler.clip_timesteps(0.5, 0.75, f)[None].to(pipe.device, pipe.dtype)
    cfg = settings["cfg_mode"], settings["alpha"], settings["beta"]
    return torch.no_grad()(lambda: sampler.cfg_velocity(pipe.dit, z, t, audio, *cfg))


def count_dit_flops(pipe, settings: dict) -> int:
    """FLOPs of one batched CFG forward. The CPU attention kernel has no formula in torch's
    counter: it gets the same count as the GPU kernels (QK^T and PV)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

    def cpu_sdpa(q, k, v, *args, out_shape=None, **kwargs):
        return sdpa_flop_count(q, k, v)

    mapping = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: cpu_sdpa}
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        _dit_call(pipe, settings)()
    return counter.get_total_flops()


def _category(op: str) -> str:
    op = op.removeprefix("aten::")
    if op in ("addmm", "mm", "bmm", "baddbmm", "matmul", "linear"):
        return "matmul"
    if "attention" in op or op.startswith("_softmax") or op == "softmax":
        return "attention"
    if "norm" in op:
        return "norm"
    if op in ("cat", "copy_", "clone", "contiguous", "repeat_interleave", "index", "_to_copy", "stack", "where",
              "expand", "repeat", "empty", "zeros_like", "fill_", "unbind", "reshape", "view", "_unsafe_view"):
        return "copy/layout"
    return "elementwise/other"


def profile_dit(pipe, settings: dict, forwards: int = 3, top: int = 8) -> dict:
    """Wall time of one forward (no profiler) and where it goes: top ops and op categories by self time."""
    from torch.profiler import ProfilerActivity, profile

    call, cuda = _dit_call(pipe, settings), pipe.device.type == "cuda"
    call()  # warm-up
    walls = []
    for _ in range(max(3, forwards)):
        t0 = time.perf_counter()
        call()
        sync(pipe.device)
        walls.append(time.perf_counter() - t0)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts) as prof:
        t0 = time.perf_counter()
        for _ in range(forwards):
            call()
        sync(pipe.device)
        wall = time.perf_counter() - t0
    attr = "self_device_time_total" if cuda else "self_cpu_time_total"
    events = [(e.key, getattr(e, attr) / 1e6, e.count) for e in prof.key_averages()]
    events = sorted((e for e in events if e[1] > 0), key=lambda e: -e[1])
    total = sum(e[1] for e in events)
    cats: dict = {}
    for name, s, _ in events:
        cats[_category(name)] = cats.get(_category(name), 0.0) + s / total
    return dict(
        forward_s=float(np.median(walls)), time_basis="device" if cuda else "cpu",
        ops_share_of_wall=total / wall,  # CPU: the rest is Python, dispatch and profiler overhead
        top_ops=[dict(op=n, share=s / total, ms_per_forward=1e3 * s / forwards, calls_per_forward=c / forwards)
                 for n, s, c in events[:top]],
        categories=dict(sorted(cats.items(), key=lambda kv: -kv[1])),
    )


def dit_figures(pipe, settings: dict, measured: dict, matmul_size: int = 2048) -> dict:
    """FLOPs per forward and per second of video, achieved FLOP/s, the matmul peak and the efficiency."""
    import torch

    flops = count_dit_flops(pipe, settings)
    forwards = measured["num_clips"] * settings["num_inference_steps"]
    video_s = measured["video_frames"] / FPS
    peaks = {"float32": matmul_peak(torch.float32, pipe.device, matmul_size)}
    if pipe.dtype != torch.float32:
        peaks[str(pipe.dtype).removeprefix("torch.")] = matmul_peak(pipe.dtype, pipe.device, matmul_size)
    achieved = flops * forwards / measured["components_s"]["dit"]
    profile = profile_dit(pipe, settings)
    return dict(
        dit_flops_per_forward=flops, dit_forwards=forwards, dit_forwards_per_video_second=forwards / video_s,
        dit_flops_per_video_second=flops * forwards / video_s, dit_achieved_flops=achieved,
        matmul_peak_flops=peaks, matmul_size=matmul_size,
        dit_efficiency=achieved / peaks[str(pipe.dtype).removeprefix("torch.")],
        dit_forward_share=measured["dit_forward_s"] / measured["components_s"]["dit"],
        dit_profile=profile,
    )


# ---------------------------------------------------------------- the whole benchmark
