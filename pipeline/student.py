"""REST's streaming student: an A2V-DiT distilled for the chunk pattern (`python -m pipeline.train.distill`).

A saved pipeline folder may hold one in `student/`: the DiT's `save_pretrained` files (config.json,
safetensors, fp16 when shipped) and `student.json`, the settings it was trained for. REST
(`mode="rest"`: the CLI, the evaluation, the app, `open_stream`) runs it when it is there and the
READ DiT under the same cache pattern when it is not. CFG is distilled into the student (Asynchronous
Streaming Distillation regresses its single conditional pass onto the teacher's guided velocity), so
it always runs one pass per step: joint CFG with alpha = 1 (`sampler.cfg_branches` gives one branch).
docs/STREAMING.md, "Distillation (issue 12)", has the losses, sizes and measurements.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

STUDENT_DIR = "student"  # subfolder of a saved pipeline
META_FILE = "student.json"


@dataclass(frozen=True)
class StudentSettings:
    """What a student was trained for. Steps and shift are the student's defaults (the trainer takes them
    from the teacher's pipeline.json: 4 steps, shift 1); chunk and context are REST's cache sizes."""

    num_inference_steps: int = 4
    shift: float = 1.0
    chunk_frames: int = 2
    context_frames: int = 2
    method: str = "asd"  # "asd" (distilled) or "plain" (flow matching only: the comparison)
    teacher_cfg: tuple = ("joint", 1.5, 6.0)  # the teacher's CFG that was distilled in (mode, alpha, beta)
    train_steps: int = 0


def save_student(dit, folder, settings: StudentSettings, fp16: bool = True) -> None:
    """dit -> folder/{config.json, diffusion_pytorch_model.safetensors} (fp16 copy by default) + student.json."""
    import copy

    import torch

    folder = Path(folder)
    model = copy.deepcopy(dit).to(torch.float16) if fp16 else dit
    model.save_pretrained(folder, safe_serialization=True)
    (folder / META_FILE).write_text(json.dumps(dataclasses.asdict(settings), indent=2))


def load_student(pipeline_folder, dtype=None):
    """(A2VDiT in eval mode, StudentSettings) from `pipeline_folder/student`, or None when there is none.
    Weights stored in fp16 are upcast to `dtype` (default float32). Raises ValueError for a student.json
    with unknown fields."""
    import torch

    from .dit import A2VDiT

    folder = Path(pipeline_folder) / STUDENT_DIR
    if not (folder / META_FILE).is_file():
        return None
    meta = json.loads((folder / META_FILE).read_text())
    unknown = set(meta) - {f.name for f in dataclasses.fields(StudentSettings)}
    if unknown:
        raise ValueError(f"{folder / META_FILE}: unknown fields {sorted(unknown)}")
    meta["teacher_cfg"] = tuple(meta.get("teacher_cfg", StudentSettings.teacher_cfg))
    dit = A2VDiT.from_pretrained(folder, torch_dtype=dtype or torch.float32).eval().requires_grad_(False)
    return dit, StudentSettings(**meta)


def for_rest(student, dit, settings, rest_settings=None):
    """(DiT, SamplingConfig, RestSettings) a REST session runs: the student (`load_student`'s pair) with
    its settings (`student_sampling`) and chunk sizes when there is one, else `dit` and the request's."""
    from .rest import RestSettings

    if student is None:
        return dit, settings, rest_settings or RestSettings()
    model, trained = student
    return model, student_sampling(settings, trained), rest_settings or RestSettings(trained.chunk_frames, trained.context_frames)


def student_sampling(settings, student: StudentSettings):
    """A request's `SamplingConfig` for the student: CFG is distilled in, so one conditional pass (joint,
    alpha 1); steps and shift stay the request's (their default is the model's, which the student was
    trained for)."""
    return dataclasses.replace(settings, cfg_mode="joint", alpha=1.0)
