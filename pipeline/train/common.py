"""Shared training plumbing: one training loop (`train`) that every trainer drives with a `Stage`
(build, batch, loss), plus accelerate set-up, safetensors checkpoints (model + optimizer + EMA), CSV
logs and loss plots. Checkpoints never use pickle: optimizer tensors go to safetensors, the rest to JSON.
"""
from __future__ import annotations

import argparse
import copy
import csv
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm


def base_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--data", required=True, help="folder made by `python -m pipeline.data.synthetic`")
    p.add_argument("--out", required=True, help="run folder: checkpoints, log.csv, loss.png")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save-every", type=int, default=200)
    p.add_argument("--save-minutes", type=float, default=0.0,
                   help="also save a checkpoint when this many minutes passed since the last (one process only)")
    p.add_argument("--val-every", type=int, default=100)
    p.add_argument("--mixed-precision", default="no", choices=["no", "fp16", "bf16"])
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave the default)")
    p.add_argument("--save-rank-params", action="store_true",
                   help="each process writes its final parameters to OUT/rank<i>.safetensors (multi-process check)")
    return p


def make_accelerator(args):
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    if args.threads:
        torch.set_num_threads(args.threads)
    # accelerate only sets up multi-process CPU training (gloo) when told it runs on the CPU
    acc = Accelerator(mixed_precision=args.mixed_precision, cpu=not torch.cuda.is_available())
    set_seed(args.seed, device_specific=False)
    return acc


def save_checkpoint(folder, model, optimizer, step: int, extra: dict | None = None, ema=None) -> None:
    """folder/{model, optimizer, ema}.safetensors + state.json, written to a temp folder then renamed."""
    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, str(tmp / "model.safetensors"))
    osd = optimizer.state_dict()
    tensors = {f"{i}.{k}": v.cpu() for i, st in osd["state"].items() for k, v in st.items() if torch.is_tensor(v)}
    scalars = {f"{i}.{k}": v for i, st in osd["state"].items() for k, v in st.items() if not torch.is_tensor(v)}
    save_file(tensors, str(tmp / "optimizer.safetensors"))
    if ema is not None:
        save_file({k: v.detach().contiguous().cpu() for k, v in ema.state_dict().items()}, str(tmp / "ema.safetensors"))
    meta = {"step": step, "param_groups": osd["param_groups"], "scalars": scalars, "extra": extra or {}}
    (tmp / "state.json").write_text(json.dumps(meta))
    if folder.exists():
        for f in folder.iterdir():
            f.unlink()
        folder.rmdir()
    tmp.rename(folder)


def load_checkpoint(folder, model, optimizer=None, ema=None) -> dict:
    """Restore what `save_checkpoint` wrote; returns state.json's dict (with 'step')."""
    folder = Path(folder)
    model.load_state_dict(load_file(str(folder / "model.safetensors")))
    if ema is not None:
        ema.load_state_dict(load_file(str(folder / "ema.safetensors")))
    meta = json.loads((folder / "state.json").read_text())
    if optimizer is not None:
        state: dict = {}
        for key, v in load_file(str(folder / "optimizer.safetensors")).items():
            i, name = key.split(".", 1)
            state.setdefault(int(i), {})[name] = v
        for key, v in meta["scalars"].items():
            i, name = key.split(".", 1)
            state.setdefault(int(i), {})[name] = v
        optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    return meta


def load_weights(folder, model, prefix: str = "") -> None:
    """Model weights only, from a training checkpoint (`save_checkpoint`) or a `save_pretrained` folder.

    prefix: load only the parameters whose names start with it (e.g. "encoder."), all of them; the
    rest of `model` keeps its initialisation. Raises KeyError when the folder lacks one of them.
    """
    folder = Path(folder)
    name = "model.safetensors" if (folder / "model.safetensors").exists() else "diffusion_pytorch_model.safetensors"
    state = load_file(str(folder / name))
    if not prefix:
        model.load_state_dict(state)
        return
    wanted = [k for k in model.state_dict() if k.startswith(prefix)]
    if missing := [k for k in wanted if k not in state]:
        raise KeyError(f"{folder} has no {missing[0]} (and {len(missing) - 1} more) for prefix {prefix!r}")
    model.load_state_dict({k: state[k] for k in wanted}, strict=False)


def load_vae(folder, like=None):
    """An `AutoencoderKLLTXVideo` from a `save_pretrained` folder, or from a VAE training checkpoint
    (its config in state.json; EMA weights when it has them). `like`: a VAE of the same architecture
    for older checkpoints that stored no config."""
    from diffusers import AutoencoderKLLTXVideo

    folder = Path(folder)
    if (folder / "config.json").exists():
        return AutoencoderKLLTXVideo.from_pretrained(folder).eval()
    config = json.loads((folder / "state.json").read_text()).get("extra", {}).get("vae_config")
    if config is None and like is None:
        raise ValueError(f"{folder} holds no VAE config: pass a VAE of its architecture as `like`")
    vae = copy.deepcopy(like) if config is None else AutoencoderKLLTXVideo.from_config(config)
    name = "ema.safetensors" if (folder / "ema.safetensors").exists() else "model.safetensors"
    vae.load_state_dict(load_file(str(folder / name)))
    return vae.eval()


class CSVLog:
    """Append-only CSV of losses (resumes cleanly: the header is written once)."""

    def __init__(self, path, fields: list[str]):
        self.path, self.fields = Path(path), ["step", "time"] + fields
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists():
            with self.path.open("w", newline="") as f:
                csv.writer(f).writerow(self.fields)
        self.t0 = self.saved_at = time.time()

    def write(self, step: int, **values) -> None:
        with self.path.open("a", newline="") as f:
            row = [step, round(time.time() - self.t0, 2)] + [values.get(k, "") for k in self.fields[2:]]
            csv.writer(f).writerow(row)


def plot_log(csv_path, png_path, title: str) -> None:
    """Loss curves (log scale) of every column of a CSVLog file."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(csv.DictReader(Path(csv_path).open()))
    fig, ax = plt.subplots(figsize=(7, 4))
    for key in rows[0].keys() - {"step", "time"} if rows else []:
        pts = [(int(r["step"]), float(r[key])) for r in rows if r[key] not in ("", None)]
        if pts and all(v > 0 for _, v in pts):
            ax.plot(*zip(*pts), label=key)
    ax.set_yscale("log"), ax.set_xlabel("step"), ax.set_title(title), ax.legend()
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)


def end_step(acc, args, step: int, log: CSVLog, row: dict, bar, validate, save) -> None:
    """After an optimiser step: validate every `val_every` steps, write the CSV row, and save a
    checkpoint every `save_every` steps and at the end (validation and files: main process only)."""
    if (step + 1) % args.val_every == 0 and acc.is_main_process:
        row.update(validate())
        bar.set_postfix({k: f"{v:.4g}" for k, v in row.items() if k.startswith("val")})
    if acc.is_main_process:
        log.write(step + 1, **row)
    timed = getattr(args, "save_minutes", 0) and acc.num_processes == 1 and time.time() - log.saved_at > 60 * args.save_minutes
    if (step + 1) % args.save_every == 0 or step + 1 == args.steps or timed:
        log.saved_at = time.time()
        acc.wait_for_everyone()
        if acc.is_main_process:
            save(step + 1)


def save_rank_params(acc, model, args) -> None:
    if args.save_rank_params:
        params = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(params, f"{args.out}/rank{acc.process_index}.safetensors")


def latest_checkpoint(out) -> Path | None:
    ckpt = Path(out) / "checkpoint"
    return ckpt if (ckpt / "state.json").exists() else None


def list_clips(data) -> list[Path]:
    clips = sorted(p for p in Path(data).glob("clip_*") if (p / "frames.npz").exists())
    if not clips:
        raise SystemExit(f"no clips in {data}: run `python -m pipeline.data.synthetic --out {data}` first")
    return clips


@dataclass
class Stage:
    """What a trainer supplies to `train`; the loop does the rest (resume, seeding, EMA, log, checkpoints).

    `model` is what checkpoints hold (`model.safetensors`); `wrapper` is what the optimiser steps through
    and accelerate prepares when the loss needs more than the model (e.g. a probe head). `batch(rand)`
    draws a batch on the CPU from `rand.np` / `rand.torch`; `loss(module, batch)` returns the loss and a
    dict of logged terms, under autocast. `validate()` and `finish()` run on the main process only.
    """

    title: str  # loss-plot title
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    batch: Callable
    loss: Callable
    fields: list[str]  # CSV columns after step and time: the loss terms, lr, then the validation keys
    validate: Callable | None = None
    finish: Callable | None = None
    wrapper: torch.nn.Module | None = None
    ema: torch.nn.Module | None = None  # a copy of `model`, updated after every step
    ema_decay: float = 0.999  # warmed up as min(decay, (1 + step) / (10 + step))
    warmup: int = 0  # linear learning-rate warm-up steps (0: constant learning rate)
    clip_grad: float | None = 1.0
    extra: dict = field(default_factory=dict)  # written into every checkpoint's state.json


@dataclass
class Random:
    """The two random streams of a run, re-seeded from the step on resume, and the current step."""

    np: np.random.Generator
    torch: torch.Generator
    step: int = 0


def to_device(batch, device):
    """Tensors (also inside tuples, lists and dicts) to `device`; other values unchanged."""
    if torch.is_tensor(batch):
        return batch.to(device)
    if isinstance(batch, (tuple, list)):
        return type(batch)(to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch


@torch.no_grad()
def ema_update(ema, model, decay: float, step: int) -> None:
    decay = min(decay, (1 + step) / (10 + step))  # warm-up: early EMAs forget the initialisation
    for pe, pm in zip(ema.parameters(), model.parameters()):
        pe.lerp_(pm, 1 - decay)


def _resume(stage: Stage, args):
    """Scheduler, then the latest checkpoint of `args.out` (model, optimizer, EMA): returns (start, sched)."""
    warm = max(stage.warmup, 1)
    sched = torch.optim.lr_scheduler.LambdaLR(stage.optimizer, lambda s: min(1.0, (s + 1) / warm))
    ckpt = latest_checkpoint(args.out)
    start = load_checkpoint(ckpt, stage.model, stage.optimizer, stage.ema)["step"] if ckpt else 0
    sched.last_epoch = start
    return start, sched


def train(stage: Stage, args, acc) -> None:
    """Run `stage` from the latest checkpoint in `args.out` to `args.steps`, then `finish` it."""
    start, sched = _resume(stage, args)
    module, opt = acc.prepare(stage.wrapper or stage.model, stage.optimizer)
    rand = Random(np.random.default_rng(args.seed + 1000 * start + acc.process_index),
                  torch.Generator().manual_seed(args.seed + 7919 * start + acc.process_index))
    log = CSVLog(f"{args.out}/log.csv", stage.fields)
    bar = tqdm(range(start, args.steps), initial=start, total=args.steps, disable=not acc.is_main_process)
    for step in bar:
        rand.step = step
        batch = to_device(stage.batch(rand), acc.device)
        with acc.autocast():
            loss, row = stage.loss(module, batch)
        acc.backward(loss)
        if stage.clip_grad:
            acc.clip_grad_norm_(module.parameters(), stage.clip_grad)
        opt.step(), sched.step(), opt.zero_grad(set_to_none=True)
        if stage.ema is not None:
            ema_update(stage.ema, stage.model, stage.ema_decay, step)
        row = dict(loss=loss.item(), **{k: float(v) for k, v in row.items()}, lr=sched.get_last_lr()[0])
        end_step(acc, args, step, log, row, bar, stage.validate or dict,
                 lambda s: save_checkpoint(f"{args.out}/checkpoint", stage.model, stage.optimizer, s,
                                           extra=stage.extra, ema=stage.ema))
    save_rank_params(acc, stage.model, args)
    if acc.is_main_process:
        if stage.finish is not None:
            stage.finish()
        plot_log(f"{args.out}/log.csv", f"{args.out}/loss.png", stage.title)
