"""The ablation report end to end on a small random model: every section measured, plotted, written."""
import dataclasses
import json

import numpy as np
import pytest

from pipeline.eval import report

pytestmark = pytest.mark.slow  # tens of seconds: `python -m pytest -m slow` (and .ci/run) runs it


def test_report_measures_every_section_and_writes_markdown(small_pipe, tmp_path):
    small_pipe.save_pretrained(tmp_path / "model")
    default = small_pipe.config.sampling
    for name, guided in (("full", True), ("no_ans", False)):
        small_pipe.config.sampling = dataclasses.replace(default, motion_guidance=guided)
        small_pipe.save_pretrained(tmp_path / "ablations" / name / "pipeline")
    small_pipe.config.sampling = default
    out = tmp_path / "docs" / "RESULTS.md"
    report.main(["--checkpoint", str(tmp_path / "model"), "--ablations", str(tmp_path / "ablations"), "--clips", "1",
                 "--seconds", "2", "--sweep-steps", "1", "2", "--lengths", "17", "41", "--length-clips", "1",
                 "--steps", "1", "--out", str(out)])
    results = json.loads(out.with_suffix(".json").read_text())
    assert [(r["cfg_mode"], r["num_inference_steps"]) for r in results["sweep"]] == [
        ("joint", 1), ("joint", 2), ("split", 1), ("split", 2)]
    for row in results["sweep"] + list(results["models"].values()) + results["lengths"]:
        assert row["rtf"] > 0 and np.isfinite(row["lipsync_correlation"])
    assert set(results["models"]) == {"full", "no_ans"} and set(results["heatmap"]) == {"full", "no_ans"}
    assert [r["length"] for r in results["lengths"]] == [17, 41]
    assert all(r["frames"] == r["length"] for r in results["lengths"])
    for png in ("results_sweep.png", "results_boundary.png"):
        assert (out.parent / "img" / png).stat().st_size > 1000
    text = out.read_text()
    for heading in ("Steps x CFG", "SpeechAE and ANS ablations", "Frame difference at a clip boundary", "Length",
                    "Where the direction matches the paper"):
        assert heading in text
    assert "ANS: ratio at the DiT clip seams" in text and "Split-CFG costs more" in text
    # one section again: the others are kept from the JSON
    report.main(["--checkpoint", str(tmp_path / "model"), "--ablations", str(tmp_path / "ablations"), "--clips", "1",
                 "--seconds", "2", "--lengths", "17", "--length-clips", "1", "--steps", "1", "--only", "lengths",
                 "--out", str(out)])
    again = json.loads(out.with_suffix(".json").read_text())
    assert again["sweep"] == results["sweep"] and [r["length"] for r in again["lengths"]] == [17]


def test_synthetic_evaluation_names_the_settings_it_resolved(small_pipe, tmp_path):
    """The summary says which sampling settings ran: overrides, else the checkpoint's own defaults."""
    from pipeline.eval import synthetic

    small_pipe.save_pretrained(tmp_path / "model")
    out = tmp_path / "eval.json"
    synthetic.main(["--checkpoint", str(tmp_path / "model"), "--clips", "1", "--seconds", "1", "--long-seconds", "0",
                    "--steps", "1", "--json", str(out)])
    summary = json.loads(out.read_text())
    sc = small_pipe.config.sampling
    assert summary["settings"] == dict(num_inference_steps=1, cfg_mode=sc.cfg_mode, alpha=sc.alpha, beta=sc.beta,
                                       mode="read")
    assert summary["rtf"] > 0


def test_clip_seams_are_where_the_sampler_starts_new_latents():
    from pipeline import sampler
    from pipeline.eval.synthetic import clip_seams

    for f, n_lat in ((5, 25), (3, 9), (16, 31)):
        n_lat = sampler.padded_latent_frames(n_lat, f)
        starts = [j * (f - 1) for j in range(1, sampler.num_clips(n_lat, f))]  # clip j's shared motion latent
        frames = 1 + 8 * (n_lat - 1)
        assert clip_seams(frames, f) == [1 + 8 * s for s in starts]  # first frame of clip j's first new latent
