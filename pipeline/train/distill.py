"""REST's streaming student by Asynchronous Streaming Distillation (ASD), on the shared training loop.

    python -m pipeline.train.distill --data data/train --out runs/distill_asd --threads 1
    python -m pipeline.train.distill --data data/train --out runs/distill_plain --method plain --threads 1

Teacher: a saved READ pipeline (`--teacher`, default assets/model), frozen, full attention, its own CFG
(pipeline.json's: joint, alpha 1.5). Student: the same DiT architecture, initialised from the teacher's
DiT, run under ChunkStreamer's cache pattern ([ID-Sink, context, chunk] with `streaming.block_mask`,
positions re-based), one conditional pass per step (CFG distilled in), the teacher's step count.

One ASD step (a batch of B windows of one clip each; R drawn from 0 ... --rollout per step):
1. Roll the student out over R chunks without gradient, with `ChunkStreamer` itself (its own cache and
   commits, streamed speech codes), from an empty context as at the start of a stream: its context is
   now its own output, exactly as inference commits it (Self-Forcing's idea of training on one's own
   rollouts; CausVid/Self-Forcing also start the student from the teacher).
2. For chunk R: fresh noise; the student takes i of its own Euler steps (i drawn from 0 ... steps-1,
   no gradient), so the training input z at T_i is a point of its own sampling trajectory.
3. The teacher gives its guided velocity for [z_R, context at t = 0, chunk at T_i] with full attention
   (ANS: the clean context plays the motion frame), READ's codes for the same audio.
4. Loss = MSE(student's single-pass velocity under the mask, teacher's) + `--fm-weight` x the
   flow-matching loss on the ground truth (context = the true previous chunk, t logit-normal).
`--method plain` trains the comparison: the flow-matching term alone (same pattern, same steps).

The student sees codes made the streaming way (`speech_stream`, as at inference); the teacher READ's
30-s-window codes (what it was trained on). Both, and the latents, come from `--teacher`'s own VAE and
SpeechAE: `pipeline.train.cache distill` (run here automatically when a clip's cache is missing or was
made by another VAE/SpeechAE), so after a new VAE the same command re-distils. The run exports
OUT/student (EMA weights) and OUT/pipeline: the teacher's folder with the student in `student/` (fp16).
"""
from __future__ import annotations

import copy
import dataclasses
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from ..config import PipelineConfig
from ..sampler import cfg_branches
from ..scheduler import add_noise, euler_step, inference_timesteps, logit_normal, velocity_target
from ..streaming import ChunkLayout, ChunkStreamer, masked_forward
from ..student import StudentSettings, save_student
from .cache import DISTILL_FILE, cache_distill
from .common import Stage, base_parser, list_clips, make_accelerator, train


@dataclass(frozen=True)
class Plan:
    """The sizes and weights of one run (chosen in `parse_args`; docs/STREAMING.md gives the reasons)."""

    layout: ChunkLayout
    timesteps: tuple  # the student's sampling schedule T_0 = 1 > ... > T_S = 0
    teacher_cfg: tuple  # (mode, alpha, beta) of the teacher's guidance
    rollout: int  # most chunks rolled out before the supervised one
    fm_weight: float
    asd: bool  # False: flow matching only (the comparison student)
    mu: float = 0.0  # logit-normal times of the flow-matching term (the teacher's training schedule)
    sigma: float = 1.0


class StreamWindows:
    """Every clip's distillation cache (cache.cache_distill); windows start on chunk boundaries
    (even latent frames for 2-frame chunks), as a stream's chunks do, so the streamed codes match."""

    def __init__(self, clips):
        self.items = [load_file(str(d / DISTILL_FILE)) for d in clips]

    def batch(self, size: int, frames: int, chunk: int, rng):
        """(latents (B, C, frames, h, w), reference (B, C, 1, h, w), READ codes, streamed codes (B, frames, M, Dc))."""
        out = [[], [], [], []]
        for _ in range(size):
            it = self.items[rng.integers(len(self.items))]
            s = chunk * rng.integers((it["latents"].shape[1] - frames) // chunk + 1)
            out[0].append(it["latents"][:, s : s + frames])
            out[1].append(it["refs"][rng.integers(len(it["refs"]))][:, None])
            out[2].append(it["codes"][s : s + frames])
            out[3].append(it["stream_codes"][s : s + frames])
        return tuple(torch.stack(x).float() for x in out)


def draw_batch(data: StreamWindows, plan: Plan, batch_size: int):
    """batch(rand) for the loop: windows of (R + 1) chunks and every random number the step needs."""
    c = plan.layout.chunk_frames

    def batch(rand):
        R = int(rand.np.integers(plan.rollout + 1))
        z, ref, codes, scodes = data.batch(batch_size, (R + 1) * c, c, rand.np)
        g, shape = rand.torch, (batch_size,) + z.shape[1:2] + (c,) + z.shape[3:]
        return dict(z=z, ref=ref, codes=codes, scodes=scodes, R=R,
                    rollout_noise=[torch.randn(shape, generator=g) for _ in range(R if plan.asd else 0)],
                    noise=torch.randn(shape, generator=g), step=int(rand.np.integers(len(plan.timesteps) - 1)),
                    fm_t=logit_normal((batch_size,), plan.mu, plan.sigma, generator=g),
                    fm_noise=torch.randn(shape, generator=g))
    return batch


def context_of(b: dict, plan: Plan):
    """Index range [a, e) of the context frames before the supervised chunk (empty when R = 0)."""
    e = b["R"] * plan.layout.chunk_frames
    return max(0, e - plan.layout.context_frames), e


@torch.no_grad()
def rollout(student, b: dict, plan: Plan):
    """Steps 1-2: the student streams R chunks, then takes b['step'] Euler steps of chunk R. Returns
    (context (B, C, L, h, w), its streamed codes, z (B, C, c, h, w) at time t, t)."""
    c, ts = plan.layout.chunk_frames, plan.timesteps
    s = ChunkStreamer(student, b["ref"], torch.tensor(ts), layout=plan.layout, cfg_mode="joint", alpha=1.0)
    for r, noise in enumerate(b["rollout_noise"]):
        s.push(b["scodes"][:, r * c : (r + 1) * c], noise=noise)
    R, z = b["R"], b["noise"]
    codes = b["scodes"][:, R * c :]
    B = z.shape[0]
    for i in range(b["step"]):
        z = euler_step(z, s.velocity(z, ts[i], codes), z.new_full((B, c), ts[i]), z.new_full((B, c), ts[i + 1]))
    if s.context is None:
        return z[:, :, :0], codes[:, :0], z, ts[b["step"]]
    return s.context, s.context_codes, z, ts[b["step"]]


@torch.no_grad()
def teacher_velocity(teacher, z_ref, context, context_codes, current, t: float, codes, cfg, attn_mask=None):
    """Step 3: the teacher's guided velocity (B, C, c, h, w) for `current` at time t, READ's layout
    [z_R, context at t = 0, current at t], all CFG branches (`cfg_branches`, eq. 16-17) in one forward.
    attn_mask (S, S) bool: None is the teacher's own full attention (tests pass the student's mask)."""
    B, L, c = current.shape[0], context.shape[2], current.shape[2]
    weights, drop_audio, drop_ref = cfg_branches(*cfg)
    nb = len(weights)
    rep = lambda x: x.repeat(nb, *([1] * (x.dim() - 1)))  # noqa: E731
    x = torch.cat([z_ref, context, current], dim=2)  # (B, C, 1+L+c, h, w)
    times = torch.cat([x.new_zeros(B, 1 + L), x.new_full((B, c), float(t))], dim=1)  # (B, 1+L+c)
    flags = lambda f: torch.tensor(f, device=x.device).repeat_interleave(B)  # noqa: E731
    v = teacher(rep(x), rep(times), rep(torch.cat([context_codes, codes], dim=1)), drop_audio=flags(drop_audio),
                drop_ref=flags(drop_ref), attn_mask=attn_mask)
    return sum(w * o for w, o in zip(weights, v.float().chunk(nb)))[:, :, 1 + L :]


def fm_loss(module, b: dict, plan: Plan):
    """Flow matching on the ground truth under the chunk pattern: context = the true previous frames."""
    a, e = context_of(b, plan)
    c = plan.layout.chunk_frames
    x0, t = b["z"][:, :, e : e + c], b["fm_t"]
    xt = add_noise(x0, b["fm_noise"], t[:, None].expand(-1, c))
    v = masked_forward(module, b["ref"], b["z"][:, :, a:e], b["scodes"][:, a:e], xt, t, b["scodes"][:, e : e + c])
    return F.mse_loss(v.float(), velocity_target(x0, b["fm_noise"]))


def asd_loss(module, student, teacher, b: dict, plan: Plan):
    """Step 4: (loss, logged terms). `module` is what gradients flow through (the prepared student),
    `student` its unwrapped model for the no-gradient rollout."""
    fm = fm_loss(module, b, plan)
    if not plan.asd:
        return fm, {"fm": fm.detach()}
    a, e = context_of(b, plan)
    c = plan.layout.chunk_frames
    context, context_scodes, z, t = rollout(student, b, plan)
    target = teacher_velocity(teacher, b["ref"], context, b["codes"][:, a:e], z, t, b["codes"][:, e : e + c],
                              plan.teacher_cfg)
    v = masked_forward(module, b["ref"], context, context_scodes, z, t, b["scodes"][:, e : e + c])
    distill = F.mse_loss(v.float(), target)
    return distill + plan.fm_weight * fm, {"distill": distill.detach(), "fm": fm.detach()}


def parse_args(argv=None):
    p = base_parser("REST's streaming student by Asynchronous Streaming Distillation")
    p.set_defaults(steps=300, batch_size=8, lr=1e-4, val_every=100, save_every=100, save_minutes=5.0)
    p.add_argument("--teacher", default="assets/model", help="saved READ pipeline: teacher, initialisation, caches")
    p.add_argument("--method", choices=["asd", "plain"], default="asd",
                   help="asd: distillation + flow matching; plain: flow matching alone (the comparison)")
    p.add_argument("--student-steps", type=int, help="the student's sampling steps (default: the teacher's)")
    p.add_argument("--rollout", type=int, default=2, help="most chunks the student streams before the supervised one")
    p.add_argument("--fm-weight", type=float, default=0.25, help="weight of the ground-truth flow-matching term (asd)")
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--warmup", type=int, default=20)
    return p.parse_args(argv)


def make_plan(args, cfg: PipelineConfig) -> Plan:
    """The run's Plan from the arguments and the teacher's sampling config (its CFG, steps and shift)."""
    from ..rest import RestSettings

    s, rest = cfg.sampling, RestSettings()
    ts = inference_timesteps(args.student_steps or s.num_inference_steps, s.shift)
    return Plan(ChunkLayout(rest.chunk_frames, rest.context_frames), tuple(float(t) for t in ts),
                (s.cfg_mode, s.alpha, s.beta), args.rollout, args.fm_weight, args.method == "asd", s.train_mu, s.train_sigma)


def validation(data: StreamWindows, plan: Plan, student, teacher):
    """validate(): the losses of two fixed batches (R = 0 and R = plan.rollout; fixed noise), EMA weights."""
    fixed = []
    for R in sorted({0, plan.rollout}):
        z, ref, codes, scodes = data.batch(8, (R + 1) * plan.layout.chunk_frames, plan.layout.chunk_frames,
                                           np.random.default_rng(123 + R))
        g = torch.Generator().manual_seed(123 + R)
        shape = (8,) + z.shape[1:2] + (plan.layout.chunk_frames,) + z.shape[3:]
        fixed.append(dict(z=z, ref=ref, codes=codes, scodes=scodes, R=R, rollout_noise=[torch.randn(shape, generator=g) for _ in range(R)],
                          noise=torch.randn(shape, generator=g), step=1 % (len(plan.timesteps) - 1),
                          fm_t=logit_normal((8,), plan.mu, plan.sigma, generator=g), fm_noise=torch.randn(shape, generator=g)))
    asd = dataclasses.replace(plan, asd=True)

    @torch.no_grad()
    def validate():
        out = {}
        for b in fixed:
            _, terms = asd_loss(student, student, teacher, b, asd)
            out |= {f"val_distill_r{b['R']}": float(terms["distill"]), f"val_fm_r{b['R']}": float(terms["fm"])}
        return out
    return validate, [f"val_{k}_r{R}" for R in sorted({0, plan.rollout}) for k in ("distill", "fm")]


def export(args, plan: Plan, ema, step: int) -> None:
    """OUT/student (float32 EMA weights) and OUT/pipeline: the teacher's folder with the student (fp16)."""
    settings = StudentSettings(num_inference_steps=len(plan.timesteps) - 1, shift=_teacher_cfg(args).sampling.shift,
                               chunk_frames=plan.layout.chunk_frames, context_frames=plan.layout.context_frames,
                               method=args.method, teacher_cfg=plan.teacher_cfg, train_steps=step)
    save_student(ema, Path(args.out) / "student", settings, fp16=False)
    pipe = Path(args.out) / "pipeline"
    if pipe.exists():
        shutil.rmtree(pipe)
    shutil.copytree(args.teacher, pipe, ignore=shutil.ignore_patterns("student"))
    save_student(ema, pipe / "student", settings, fp16=True)


def _teacher_cfg(args) -> PipelineConfig:
    return PipelineConfig.load(Path(args.teacher) / "pipeline.json")


def main(argv=None):
    from ..dit import A2VDiT

    args = parse_args(argv)
    acc = make_accelerator(args)
    plan = make_plan(args, _teacher_cfg(args))
    if acc.is_main_process:
        cache_distill(args.data, args.teacher)
    acc.wait_for_everyone()
    teacher = A2VDiT.from_pretrained(Path(args.teacher) / "dit").eval().requires_grad_(False).to(acc.device)
    student = copy.deepcopy(teacher).train().requires_grad_(True)
    ema = copy.deepcopy(teacher)
    data = StreamWindows(list_clips(args.data))
    validate, val_fields = validation(data, plan, ema, teacher)
    opt = torch.optim.AdamW(student.parameters(), lr=args.lr, weight_decay=0.0)
    stage = Stage(f"REST student ({args.method})", student, opt, draw_batch(data, plan, args.batch_size),
                  lambda m, b: asd_loss(m, student, teacher, b, plan),
                  ["loss", "distill", "fm", "lr"] + val_fields, validate=validate,
                  finish=lambda: export(args, plan, ema, args.steps), ema=ema, ema_decay=args.ema, warmup=args.warmup,
                  extra=dict(method=args.method, teacher=str(args.teacher)))
    train(stage, args, acc)


if __name__ == "__main__":
    main()
