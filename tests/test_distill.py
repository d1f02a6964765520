"""REST's streaming student (pipeline/student.py, pipeline/train/distill.py): invariants on tiny models."""
import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from pipeline.dit import A2VDiT
from pipeline.scheduler import inference_timesteps
from pipeline.streaming import ChunkLayout, ChunkStreamer, block_mask, masked_forward
from pipeline.train.distill import Plan, rollout, teacher_velocity

from .conftest import randomize, small_config

C, M, DA = 4, 3, 6


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: torch on one thread


def _dit(seed=3):
    return randomize(A2VDiT(in_channels=C, hidden_size=16, depth=2, num_heads=2, audio_dim=DA, rope_axes=(2, 2, 4)), seed=seed)


def _batch(R, B=2, c=2, seed=0, step=1):
    g = torch.Generator().manual_seed(seed)
    frames = (R + 1) * c
    codes = torch.randn(B, frames, M, DA, generator=g)
    return dict(z=torch.randn(B, C, frames, 2, 2, generator=g), ref=torch.randn(B, C, 1, 2, 2, generator=g),
                codes=codes, scodes=codes.clone(), R=R, step=step,
                rollout_noise=[torch.randn(B, C, c, 2, 2, generator=g) for _ in range(R)],
                noise=torch.randn(B, C, c, 2, 2, generator=g))


def _plan(**kw):
    kw = dict(layout=ChunkLayout(2, 2), timesteps=tuple(inference_timesteps(4).tolist()), teacher_cfg=("joint", 1.0, 6.0),
              rollout=3, fm_weight=0.25, asd=True) | kw
    return Plan(**kw)


def test_trainable_chunk_forward_equals_the_cached_pass():
    """The student's gradient forward (masked_forward) gives what its ChunkStreamer computes under the
    ID-Context cache after real commits, and gradients reach the weights."""
    dit, g = _dit().eval(), torch.Generator().manual_seed(1)
    s = ChunkStreamer(dit, torch.randn(1, C, 1, 2, 2, generator=g), inference_timesteps(2), cfg_mode="joint", alpha=1.0)
    for _ in range(3):
        s.push(torch.randn(1, 2, M, DA, generator=g), noise=torch.randn(1, C, 2, 2, 2, generator=g))
    z, codes = torch.randn(1, C, 2, 2, 2, generator=g), torch.randn(1, 2, M, DA, generator=g)
    cached = s.model_output(z, 0.4, codes)
    v = masked_forward(dit, s.z_ref, s.context, s.context_codes, z, 0.4, codes)
    torch.testing.assert_close(v, cached, rtol=1e-5, atol=1e-5)
    v.square().mean().backward()
    assert dit.blocks[0].attn.q.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("R", [0, 1, 3])
def test_distillation_target_is_the_student_itself_for_a_cfg_free_teacher_under_the_mask(R):
    """Student = teacher, no guidance, same codes, the teacher given the student's mask: the target equals
    the student's velocity on its own rolled-out context (layouts, times, codes and positions line up).
    With the teacher's own full attention, or its guidance, the target differs."""
    dit, plan = _dit().eval(), _plan()
    b = _batch(R)
    context, ctx_codes, z, t = rollout(dit, b, plan)
    L, c = context.shape[2], 2
    assert L == min(2, 2 * R) and ctx_codes.shape[1] == L and t == plan.timesteps[1]
    e = R * c
    student = masked_forward(dit, b["ref"], context, ctx_codes, z, t, b["scodes"][:, e:])
    mask = block_mask(4, L, c)
    same = teacher_velocity(dit, b["ref"], context, b["codes"][:, e - L : e], z, t, b["codes"][:, e:], ("joint", 1.0, 6.0), mask)
    torch.testing.assert_close(same, student, rtol=1e-5, atol=1e-5)
    full = teacher_velocity(dit, b["ref"], context, b["codes"][:, e - L : e], z, t, b["codes"][:, e:], ("joint", 1.0, 6.0))
    guided = teacher_velocity(dit, b["ref"], context, b["codes"][:, e - L : e], z, t, b["codes"][:, e:], ("joint", 1.5, 6.0), mask)
    assert (full - student).abs().max() > 1e-3 and (guided - student).abs().max() > 1e-3


def test_rollout_context_is_what_inference_commits():
    """The rollout's context is the last chunk a ChunkStreamer (one pass, alpha 1) streams from the same
    codes and noise, and a rollout of 0 steps leaves the supervised chunk at pure noise (t = 1)."""
    dit, plan = _dit().eval(), _plan()
    b = _batch(2, step=0)
    context, _, z, t = rollout(dit, b, plan)
    s = ChunkStreamer(dit, b["ref"], torch.tensor(plan.timesteps), cfg_mode="joint", alpha=1.0)
    last = [s.push(b["scodes"][:, r * 2 : (r + 1) * 2], noise=b["rollout_noise"][r]) for r in range(2)][-1]
    torch.testing.assert_close(context, last)
    assert t == 1.0 and torch.equal(z, b["noise"])


def _teacher_folder(tmp_path):
    from pipeline.pipeline import TalkingHeadPipeline

    pipe = TalkingHeadPipeline.from_config(small_config(cfg_mode="joint", alpha=1.5), seed=0)
    randomize(pipe.dit, seed=1)
    pipe.save_pretrained(tmp_path / "teacher")
    return tmp_path / "teacher", pipe


def test_pipeline_runs_the_student_when_its_folder_has_one_and_the_read_dit_otherwise(tmp_path, portrait):
    from pipeline.pipeline import TalkingHeadPipeline
    from pipeline.student import StudentSettings, save_student

    folder, pipe = _teacher_folder(tmp_path)
    plain = TalkingHeadPipeline.from_pretrained(folder, whisper=None)
    live = plain._live(portrait, plain.settings(mode="rest"), None, 0)
    assert plain.student is None and live.session.streamer.dit is plain.dit and len(live.session.streamer.weights) == 2
    student = randomize(A2VDiT.from_config(pipe.dit.config), seed=7)
    save_student(student, folder / "student", StudentSettings(num_inference_steps=2))
    loaded = TalkingHeadPipeline.from_pretrained(folder)
    dit, settings = loaded.student
    assert settings.num_inference_steps == 2 and dit.dtype == torch.float32
    torch.testing.assert_close(dit.blocks[0].attn.q.weight, student.blocks[0].attn.q.weight.half().float())
    live = loaded._live(portrait, loaded.settings(mode="rest"), None, 0)
    assert live.session.streamer.dit is dit and live.session.streamer.weights == [1.0]  # CFG distilled: one pass
    loaded.save_pretrained(tmp_path / "again")
    assert (tmp_path / "again" / "student" / "student.json").is_file()


def _fake_distill_clips(root, teacher, cfg, n=2, n_lat=9, seed=0):
    from pipeline.train.cache import DISTILL_FILE, teacher_fingerprint

    rng = np.random.default_rng(seed)
    c, h, s = cfg.vae.kwargs["latent_channels"], cfg.height // 32, cfg.speech
    randn = lambda *shape: torch.from_numpy(rng.standard_normal(shape).astype(np.float32))  # noqa: E731
    for i in range(n):
        d = root / f"clip_{i:05d}"
        d.mkdir(parents=True)
        np.savez(d / "frames.npz", frames=np.zeros((1 + 8 * (n_lat - 1), 8, 8, 3), np.uint8))
        save_file({"latents": randn(c, n_lat, h, h), "refs": randn(4, c, h, h), "codes": randn(n_lat, s.num_tokens, s.code_dim),
                   "stream_codes": randn(n_lat, s.num_tokens, s.code_dim)}, str(d / DISTILL_FILE),
                  metadata={"teacher": teacher_fingerprint(teacher)})


@pytest.mark.parametrize("method", ["asd", "plain"])
def test_distill_trainer_runs_with_its_defaults_and_exports_a_pipeline_with_the_student(tmp_path, method):
    from pipeline.student import load_student
    from pipeline.train import distill

    folder, pipe = _teacher_folder(tmp_path)
    _fake_distill_clips(tmp_path / "data", folder, pipe.config)
    out = tmp_path / "run"
    distill.main(["--data", str(tmp_path / "data"), "--out", str(out), "--teacher", str(folder), "--steps", "3",
                  "--method", method, "--val-every", "2"])
    assert json.loads((out / "checkpoint" / "state.json").read_text())["step"] == 3
    rows = (out / "log.csv").read_text().splitlines()
    assert len(rows) == 1 + 3 and "val_distill_r2" in rows[0]
    dit, settings = load_student(out / "pipeline")
    assert settings.method == method and settings.num_inference_steps == 2 and settings.teacher_cfg == ("joint", 1.5, 6.0)
    assert (out / "pipeline" / "dit").is_dir() and (out / "loss.png").is_file()
