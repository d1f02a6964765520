"""The speed benchmark on a small random pipeline: every figure present, consistent, and reported."""
import json

import numpy as np
import pytest
import torch

from pipeline import serving
from pipeline.config import SAMPLE_RATE
from pipeline.eval import benchmark, flops


@pytest.fixture(scope="module")
def result(small_pipe):
    return benchmark.run_benchmark(small_pipe, seconds=1.0, repeats=1, model="small", matmul_size=1024)


def test_every_key_and_json(result):
    top = {"model", "audio_seconds", "repeats", "environment", "settings", "components_s", "end_to_end_s", "rtf",
           "first_clip_s", "first_clip_from_timings_s", "first_clip_same_inputs_s", "num_clips", "video_frames", "runs", "app_defaults",
           "dit_flops_per_forward", "dit_forwards", "dit_forwards_per_video_second", "dit_flops_per_video_second",
           "dit_achieved_flops", "matmul_peak_flops", "matmul_size", "dit_efficiency", "dit_forward_s",
           "dit_forward_share", "dit_profile", "peak_rss_mb", "cuda_peak_mb"}
    assert top <= set(result)
    assert set(result["components_s"]) == {k for k, _ in benchmark.COMPONENTS}
    assert {"end_to_end_s", "rtf", "first_clip_s", "components_s", "settings"} <= set(result["app_defaults"])
    assert {"torch", "threads", "device", "dtype"} <= set(result["environment"])
    assert set(result["settings"]) == set(benchmark.SETTING_KEYS)
    assert {"top_ops", "categories", "forward_s"} <= set(result["dit_profile"])
    assert 0 < len(result["dit_profile"]["top_ops"]) <= 8
    json.loads(json.dumps(result))  # JSON-ready as is


@pytest.mark.parametrize("which", ["settings", "app"])
def test_times_positive_and_parts_within_total(result, which):
    r = result if which == "settings" else result["app_defaults"]
    parts = dict(r["components_s"])  # a copy: the result is a module fixture
    assert parts.pop("refine") == 0  # the small pipeline has no frame refiner: nothing timed for it
    assert all(v > 0 for v in parts.values()), parts
    assert sum(parts.values()) <= r["end_to_end_s"] * 1.05 + 0.05
    assert 0 < r["first_clip_s"] <= r["end_to_end_s"]
    assert r["rtf"] == pytest.approx(r["end_to_end_s"] / result["audio_seconds"])
    assert r["video_frames"] == 25 and r["num_clips"] >= 1


def test_dit_flops_and_efficiency(result):
    assert result["dit_flops_per_forward"] > 0 and result["matmul_peak_flops"]["float32"] > 0
    peak = result["matmul_peak_flops"][result["environment"]["dtype"]]
    assert result["dit_efficiency"] == pytest.approx(result["dit_achieved_flops"] / peak)
    s = result["settings"]
    forwards = result["num_clips"] * s["num_inference_steps"]
    assert result["dit_achieved_flops"] == pytest.approx(
        result["dit_flops_per_forward"] * forwards / result["components_s"]["dit"])


def test_flops_include_attention_on_cpu(small_pipe):
    """torch's counter has no formula for the CPU attention kernel: the benchmark adds QK^T and PV."""
    from torch.utils.flop_counter import FlopCounterMode

    settings = benchmark.resolve_settings(small_pipe, cfg_mode="split")
    with FlopCounterMode(display=False) as plain:
        flops._dit_call(small_pipe, settings)()
    d, f, m = small_pipe.dit.config, settings["clip_latent_frames"], small_pipe.speech_ae.config.num_tokens
    n = (small_pipe.config.height // 32) * (small_pipe.config.width // 32)  # tokens per latent frame
    self_attn = 3 * 4 * ((1 + f) * n) ** 2 * d.hidden_size  # 3 CFG passes, all tokens attend to all
    audio_attn = 3 * f * 4 * n * m * d.hidden_size  # each clip frame's n tokens attend to its m codes
    extra = flops.count_dit_flops(small_pipe, settings) - plain.get_total_flops()
    assert extra == (self_attn + audio_attn) * d.depth


def test_markdown_row_per_component(result):
    table = benchmark.to_markdown(result)
    rows = table.splitlines()
    for _, label in benchmark.COMPONENTS:
        assert any(r.startswith(f"| {label} |") for r in rows), label
    assert any(r.startswith("| **End to end**") for r in rows) and "DiT efficiency" in table


def test_app_defaults_are_the_apps_own(result):
    """The benchmark's "app defaults" run uses the constants the app itself shows (serving.APP_SETTINGS)."""
    import app

    measured = result["app_defaults"]["settings"]
    assert measured == {k: serving.APP_SETTINGS[k] for k in benchmark.SETTING_KEYS}
    assert (app.STEPS, app.CFG_MODE.lower(), app.ALPHA) == (measured["num_inference_steps"], measured["cfg_mode"],
                                                           measured["alpha"])


def test_example_audio_cut_and_tiled():
    ten = benchmark.example_audio(10.0)
    assert len(benchmark.example_audio(1.0)) == SAMPLE_RATE
    longer = benchmark.example_audio(12.5)
    assert len(longer) == 12.5 * SAMPLE_RATE and np.array_equal(longer[len(ten):], ten[: len(longer) - len(ten)])


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU read-512 really runs")
def test_read_512_skips_cleanly_on_cpu(capsys):
    assert benchmark.main(["--preset", "read-512"]) == 0
    assert "skipped: read-512 needs a GPU" in capsys.readouterr().out
