"""READ's ablations redone in the synthetic domain -> docs/RESULTS.md with PNG plots.

    python -m pipeline.eval.report --checkpoint assets/model --ablations runs/ablations \
        --clips 8 --seconds 8 --seed 9001 --out docs/RESULTS.md

Every number comes from the held-out synthetic test set (seeds never used in training) through the
same code as `python -m pipeline.eval.synthetic` (mouth reader, lip-sync correlation, boundary ratio,
identity PSNR), and every runtime is end to end through `TalkingHeadPipeline.stream` (Whisper
included: the kept codes of repeated inputs are cleared before each clip).

Sections (each skipped with a note when its inputs are missing; results are kept in a JSON next to
the markdown so that one section can be re-run with `--only`):
- sweep: steps 4, 5, 6, 8, 10 x Joint / Split with the shipped model (READ Fig. 3)
- speech: full / without SpeechAE pretraining / without SpeechAE (READ Table 2)
- ans: with / without ANS, boundary ratio and a frame-difference heat map at a boundary (READ Fig. 2)
- length: 121 / 457 / 1017 frames (READ Table 3)

The ablation models live in `--ablations` as `full/`, `speech_scratch/`, `speech_linear/`,
`no_ans/` (complete pipelines exported by `python -m pipeline.train.dit`, all at the same budget;
docs/TRAINING.md has the commands).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from ..config import FPS
from .mouth import load_reader
from .synthetic import clip_seams, evaluate_clip

SWEEP_STEPS = (4, 5, 6, 8, 10)
LENGTHS = (121, 457, 1017)  # frames, as READ Table 3
ABLATIONS = {  # folder -> label
    "full": "full (pretrained SpeechAE, ANS)",
    "speech_scratch": "w/o SpeechAE pretraining",
    "speech_linear": "w/o SpeechAE (linear projection)",
    "no_ans": "w/o ANS (synchronous noise, plain concatenation)",
}
PAPER = {  # READ on HDTF (DESIGN.md): Sync-C
    "full": 8.658, "speech_scratch": 7.965, "speech_linear": 2.086, 121: 8.658, 457: 8.767, 1017: 8.677,
}


class TestSet:
    """The held-out clips, rendered once and shared by every section."""

    def __init__(self, clips: int, seconds: float, seed: int, size: int):
        from ..data.synthetic import clip_seed, render_clip

        self.seed, self.size, self._render, self._seed_of = seed, size, render_clip, clip_seed
        self.clips = [render_clip(clip_seed(seed, i), seconds, size) for i in range(clips)]

    def long(self, i: int, frames: int):
        return self._render(self._seed_of(self.seed, 20_000 + i), frames / FPS, self.size)


def evaluate(pipe, reader, clips, size, **settings) -> dict:
    """Mean metrics over clips, plus the end-to-end real-time factor (generation wall / audio seconds)."""
    rows = []
    for clip in clips:
        pipe.clear_cache()  # each clip as a new upload: Whisper is part of the runtime
        rows.append(evaluate_clip(pipe, reader, clip, size, **settings))
    out = {k: float(np.mean([r[k] for r in rows])) for k in rows[0] if k not in ("frames", "best_lag", "wall_s", "audio_s")}
    out.update(best_lag_median=float(np.median([r["best_lag"] for r in rows])), clips=len(rows),
               rtf=sum(r["wall_s"] for r in rows) / sum(r["audio_s"] for r in rows))
    return out


# ---------------------------------------------------------------- sections
def run_sweep(pipe, reader, test: TestSet, steps=SWEEP_STEPS) -> list[dict]:
    sc, rows = pipe.config.sampling, []
    for mode in ("joint", "split"):
        for n in steps:
            settings = dict(num_inference_steps=n, cfg_mode=mode, alpha=sc.alpha, beta=sc.beta)
            rows.append(dict(settings, **evaluate(pipe, reader, test.clips, test.size, **settings)))
            print(f"sweep {mode} {n}: {json.dumps({k: round(v, 3) for k, v in rows[-1].items() if isinstance(v, float)})}",
                  flush=True)
    return rows


def run_models(folders: dict, reader, test: TestSet, settings: dict) -> dict:
    from ..pipeline import TalkingHeadPipeline

    out = {}
    for name, folder in folders.items():
        pipe = TalkingHeadPipeline.from_pretrained(folder)
        out[name] = evaluate(pipe, reader, test.clips, test.size, **settings)
        print(f"model {name}: {json.dumps({k: round(v, 3) for k, v in out[name].items()})}", flush=True)
    return out


def boundary_heatmaps(folders: dict, test: TestSet, settings: dict, png: Path) -> dict:
    """|frame(b) - frame(b-1)| at the first DiT clip seam b, next to the same within a clip, per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..pipeline import TalkingHeadPipeline

    clip, maps = test.clips[0], {}
    for name, folder in folders.items():
        pipe = TalkingHeadPipeline.from_pretrained(folder)
        chunks = list(pipe.stream(clip.frames[0], clip.audio, progress=False, **settings))
        frames = np.concatenate([c.frames for c in chunks]).astype(np.float32)
        b = clip_seams(len(frames), settings.get("clip_latent_frames") or pipe.config.sampling.clip_latent_frames)[0]
        maps[name] = (np.abs(frames[b] - frames[b - 1]).mean(-1), np.abs(frames[b - 4] - frames[b - 5]).mean(-1), b)
    vmax = max(float(m[0].max()) for m in maps.values())
    fig, axes = plt.subplots(len(maps), 2, figsize=(6, 3 * len(maps)), squeeze=False)
    for row, (name, (at, within, b)) in zip(axes, maps.items()):
        for ax, img, title in zip(row, (at, within), (f"boundary (frames {b - 1}->{b})", f"within a clip ({b - 5}->{b - 4})")):
            im = ax.imshow(img, cmap="magma", vmin=0, vmax=vmax)
            ax.set_title(f"{ABLATIONS.get(name, name).split(' (')[0]}\n{title}", fontsize=8)
            ax.axis("off")
    fig.colorbar(im, ax=axes, shrink=0.6, label="mean |difference| (grey levels)")
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return {name: {"boundary_mean_diff": float(at.mean()), "within_mean_diff": float(within.mean())}
            for name, (at, within, _) in maps.items()}


def run_lengths(pipe, reader, test: TestSet, settings: dict, per_length: int, lengths=LENGTHS) -> list[dict]:
    keys = ("lipsync_correlation", "boundary_ratio", "identity_psnr_first_s", "identity_psnr_last_s", "rtf", "frames")
    rows = []
    for frames in lengths:
        per = []
        for i in range(per_length):
            pipe.clear_cache()
            r = evaluate_clip(pipe, reader, test.long(i, frames), test.size, **settings)
            per.append(dict(r, rtf=r["wall_s"] / r["audio_s"]))
        rows.append(dict(length=frames, clips=per_length, **{k: float(np.mean([p[k] for p in per])) for k in keys}))
        print(f"length {frames}: {json.dumps({k: round(v, 3) for k, v in rows[-1].items()})}", flush=True)
    return rows


# ---------------------------------------------------------------- plots and markdown
def plot_sweep(rows: list[dict], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.4))
    for mode, marker in (("joint", "o"), ("split", "s")):
        r = [x for x in rows if x["cfg_mode"] == mode]
        steps = [x["num_inference_steps"] for x in r]
        a.plot(steps, [x["rtf"] for x in r], marker=marker, label=f"{mode.title()}-CFG")
        b.plot(steps, [x["lipsync_correlation"] for x in r], marker=marker, label=f"{mode.title()}-CFG")
    a.set(xlabel="sampling steps", ylabel="real-time factor (wall / audio)", title="Runtime, 2-core CPU")
    b.set(xlabel="sampling steps", ylabel="lip-sync correlation", title="Lip-sync (held-out)")
    for ax in (a, b):
        ax.grid(alpha=0.3), ax.legend()
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)


def _fmt(x, nd=3):
    return "—" if x is None else f"{x:.{nd}f}"


def _runtime_note(results: dict, section: str) -> str:
    n = results.get("threads", {}).get(section)
    return " ".join(x for x in ((f"RTF measured with {n} torch thread(s)." if n else ""), results.get(f"{section}_note", "")) if x)


def markdown(results: dict, img_rel: str) -> str:
    env = results.get("environment", {})
    lines = ["# Results: READ's ablations in the synthetic domain", "",
             "Made by `python -m pipeline.eval.report` (see its docstring for the command and options); numbers "
             "from the held-out synthetic test set "
             f"({results['test']['clips']} clips x {results['test']['seconds']:g} s, seed {results['test']['seed']}), "
             f"runtimes end to end on {env.get('machine', 'this machine')} (torch threads per section below).",
             "Lip-sync: correlation of the mouth reader's openness on the generated video with the ground-truth "
             "openness of the audio (bar 0.7). Boundary ratio: frame change where one streamed chunk meets the next "
             "/ within chunks (bar 1.5); DiT clip-seam ratio: the same where one DiT clip meets the next (what ANS "
             "is for; the decoder's chunks are offset from the DiT's clips). Identity: PSNR outside the mouth box against the reference (dB).", ""]
    sweep = results.get("sweep")
    if sweep:
        lines += ["## Steps x CFG (READ Fig. 3)", "", f"![steps x CFG]({img_rel}/results_sweep.png)", "",
                  "| CFG | steps | RTF | lip-sync | best lag | boundary ratio | identity dB |", "|---|---:|---:|---:|---:|---:|---:|"]
        lines += [f"| {r['cfg_mode']} | {r['num_inference_steps']} | {_fmt(r['rtf'])} | {_fmt(r['lipsync_correlation'])} | "
                  f"{r['best_lag_median']:+.0f} | {_fmt(r['boundary_ratio'], 2)} | {_fmt(r['identity_psnr_first_s'], 1)} |"
                  for r in sweep]
        lines += ["", _runtime_note(results, "sweep"), ""]
    models = results.get("models")
    if models:
        lines += ["## SpeechAE and ANS ablations (READ Table 2, Fig. 2)", "",
                  f"All four DiTs trained by `python -m pipeline.train.dit` at the same budget ({results.get('ablation_budget', '?')}), "
                  f"sampled with {results.get('ablation_settings')}.", "",
                  "| model | lip-sync | best lag | boundary ratio | DiT clip-seam ratio | identity dB | RTF | paper Sync-C |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        lines += [f"| {ABLATIONS.get(k, k)} | {_fmt(m['lipsync_correlation'])} | {m['best_lag_median']:+.0f} | "
                  f"{_fmt(m['boundary_ratio'], 2)} | {_fmt(m.get('clip_seam_ratio'), 2)} | "
                  f"{_fmt(m['identity_psnr_first_s'], 1)} | {_fmt(m['rtf'])} | "
                  f"{PAPER.get(k, '—')} |" for k, m in models.items()]
        lines += ["", _runtime_note(results, "models"), ""]
    if results.get("heatmap"):
        lines += ["### Frame difference at a clip boundary (READ Fig. 2)", "",
                  f"![boundary heat map]({img_rel}/results_boundary.png)", "",
                  "| model | mean diff at the boundary | mean diff within a clip |", "|---|---:|---:|"]
        lines += [f"| {ABLATIONS.get(k, k)} | {v['boundary_mean_diff']:.2f} | {v['within_mean_diff']:.2f} |"
                  for k, v in results["heatmap"].items()]
        lines += [""]
    lengths = results.get("lengths")
    if lengths:
        lines += ["## Length (READ Table 3)", "",
                  f"Shipped model, {results.get('length_settings')}; {lengths[0]['clips']} clip(s) per length.", "",
                  "| frames | lip-sync | boundary ratio | identity dB, first s | identity dB, last s | RTF | paper Sync-C |",
                  "|---:|---:|---:|---:|---:|---:|---:|"]
        lines += [f"| {r['length']} | {_fmt(r['lipsync_correlation'])} | {_fmt(r['boundary_ratio'], 2)} | "
                  f"{_fmt(r['identity_psnr_first_s'], 1)} | {_fmt(r['identity_psnr_last_s'], 1)} | {_fmt(r['rtf'])} | "
                  f"{PAPER.get(r['length'], '—')} |" for r in lengths]
        lines += ["", _runtime_note(results, "lengths"), ""]
    lines += ["## Where the direction matches the paper", ""] + [f"- {c}" for c in compare(results)] + [""]
    return "\n".join(lines)


def compare(results: dict) -> list[str]:
    """Plain statements of which of READ's directions the numbers here reproduce."""
    out = []
    sweep = results.get("sweep") or []
    for mode in ("joint", "split"):
        r = sorted((x for x in sweep if x["cfg_mode"] == mode), key=lambda x: x["num_inference_steps"])
        if len(r) >= 2:
            lo, hi = r[0], r[-1]
            grows = hi["rtf"] > lo["rtf"]
            out.append(f"{mode.title()}-CFG: runtime grows with steps ({lo['rtf']:.3f} -> {hi['rtf']:.3f} RTF from "
                       f"{lo['num_inference_steps']} to {hi['num_inference_steps']} steps): "
                       f"{'matches' if grows else 'does not match'} the paper. Lip-sync {lo['lipsync_correlation']:.3f} -> "
                       f"{hi['lipsync_correlation']:.3f}: READ reports quality saturating at a few steps; here it "
                       f"{'rises' if hi['lipsync_correlation'] > lo['lipsync_correlation'] + 0.02 else 'falls' if hi['lipsync_correlation'] < lo['lipsync_correlation'] - 0.02 else 'stays within 0.02'}.")
    j = {x["num_inference_steps"]: x for x in sweep if x["cfg_mode"] == "joint"}
    s = {x["num_inference_steps"]: x for x in sweep if x["cfg_mode"] == "split"}
    both = sorted(set(j) & set(s))
    if both:
        slower = all(s[n]["rtf"] > j[n]["rtf"] for n in both)
        better = sum(s[n]["lipsync_correlation"] > j[n]["lipsync_correlation"] for n in both)
        out.append(f"Split-CFG costs more than Joint-CFG at every step count ({'yes' if slower else 'no'}: 3 passes vs 2) "
                   f"and has the higher lip-sync at {better} of {len(both)} step counts; READ uses Split as its default.")
    m = results.get("models") or {}
    if {"full", "speech_scratch", "speech_linear"} <= set(m):
        f, sc, li = (m[k]["lipsync_correlation"] for k in ("full", "speech_scratch", "speech_linear"))
        order = f >= sc >= li
        out.append(f"SpeechAE: full {f:.3f}, w/o pretraining {sc:.3f}, w/o SpeechAE {li:.3f}. READ's order is full > "
                   f"w/o pretraining > w/o SpeechAE (Sync-C 8.66 / 7.97 / 2.09): {'matches' if order else 'does not match'}"
                   f"{'' if order else ' here'}.")
    if {"full", "no_ans"} <= set(m):
        a, b = m["full"]["clip_seam_ratio"], m["no_ans"]["clip_seam_ratio"]
        verdict = ("matches READ Fig. 2 (visible seams without ANS)" if b - a > 0.1 else
                   "no clear difference (within 0.1), so READ Fig. 2's seams without ANS are not reproduced: here "
                   "the clean reference frame anchors every clip of a nearly still synthetic face" if abs(b - a) <= 0.1
                   else "does not match READ Fig. 2")
        out.append(f"ANS: ratio at the DiT clip seams {a:.2f} with ANS vs {b:.2f} without (plain concatenation): {verdict}.")
    lengths = results.get("lengths") or []
    if len(lengths) >= 2:
        ls = [r["lipsync_correlation"] for r in lengths]
        flat = max(ls) - min(ls) < 0.05
        out.append(f"Length: lip-sync {' / '.join(f'{x:.3f}' for x in ls)} for {' / '.join(str(r['length']) for r in lengths)} "
                   f"frames: {'flat within 0.05, as READ Table 3 (Sync-C 8.66 / 8.77 / 8.68)' if flat else 'not flat, unlike READ Table 3'}; "
                   f"identity PSNR at the end of the longest: {lengths[-1]['identity_psnr_last_s']:.1f} dB "
                   f"(first second {lengths[-1]['identity_psnr_first_s']:.1f}).")
    return out or ["(no section measured yet)"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default="assets/model", help="the shipped model (sweep and length sections)")
    p.add_argument("--ablations", default="runs/ablations", help="folder with full/, speech_scratch/, speech_linear/, no_ans/")
    p.add_argument("--clips", type=int, default=8)
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--seed", type=int, default=9001)
    p.add_argument("--length-clips", type=int, default=2, help="clips per length in the length section")
    p.add_argument("--steps", type=int, default=4, help="sampling steps for the ablation and length sections")
    p.add_argument("--cfg", choices=["joint", "split"], default="joint")
    p.add_argument("--sweep-steps", type=int, nargs="+", default=list(SWEEP_STEPS))
    p.add_argument("--lengths", type=int, nargs="+", default=list(LENGTHS), help="video lengths in frames")
    p.add_argument("--only", nargs="*", choices=["sweep", "models", "lengths"], help="re-run these sections only")
    p.add_argument("--out", default="docs/RESULTS.md")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave the default)")
    return p.parse_args(argv)


def run_ablation_models(results: dict, args, reader, test, settings: dict, img: Path) -> None:
    """The ablation section: every trained ablation model found under `args.ablations`."""
    import torch

    folders = {k: Path(args.ablations) / k / "pipeline" for k in ABLATIONS}
    folders = {k: v for k, v in folders.items() if (v / "pipeline.json").exists()}
    if not folders:
        print(f"no ablation models in {args.ablations}: section skipped")
        return
    results["models"], results["threads"]["models"] = run_models(folders, reader, test, settings), torch.get_num_threads()
    results["ablation_settings"] = f"{args.steps} steps {args.cfg.title()}-CFG"
    budget = Path(args.ablations) / "budget.txt"
    results["ablation_budget"] = budget.read_text().strip() if budget.exists() else "see docs/TRAINING.md"
    pair = {k: folders[k] for k in ("full", "no_ans") if k in folders}
    if len(pair) == 2:
        results["heatmap"] = boundary_heatmaps(pair, test, settings, img / "results_boundary.png")


def main(argv=None):
    import os
    import platform

    import torch

    from ..pipeline import TalkingHeadPipeline

    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    store = out.with_suffix(".json")
    results = json.loads(store.read_text()) if store.exists() and args.only else {}
    results.update(test=dict(clips=args.clips, seconds=args.seconds, seed=args.seed),
                   environment=dict(machine=f"{platform.machine()} CPU, {os.cpu_count()} cores"
                                    if not torch.cuda.is_available() else torch.cuda.get_device_name(),
                                    torch=torch.__version__))
    threads = results.setdefault("threads", {})  # per section: sections are often re-run on their own
    todo, reader = set(args.only or ["sweep", "models", "lengths"]), load_reader()
    pipe = TalkingHeadPipeline.from_pretrained(args.checkpoint)
    test = TestSet(args.clips, args.seconds, args.seed, pipe.config.height)
    settings, img = dict(num_inference_steps=args.steps, cfg_mode=args.cfg), out.parent / "img"
    if "sweep" in todo:
        results["sweep"], threads["sweep"] = run_sweep(pipe, reader, test, args.sweep_steps), torch.get_num_threads()
        plot_sweep(results["sweep"], img / "results_sweep.png")
    if "models" in todo:
        run_ablation_models(results, args, reader, test, settings, img)
    if "lengths" in todo:
        results["lengths"] = run_lengths(pipe, reader, test, settings, args.length_clips, args.lengths)
        threads["lengths"] = torch.get_num_threads()
        results["length_settings"] = f"{args.steps} steps {args.cfg.title()}-CFG"
    store.parent.mkdir(parents=True, exist_ok=True)
    store.write_text(json.dumps(results, indent=2))
    out.write_text(markdown(results, "img"))
    print(f"wrote {out} and {store}")


if __name__ == "__main__":
    main()
