"""Publish the demo as a Hugging Face Space.

    python -m pipeline.publish --prepare space_dir              # a Space folder, LFS rules included
    python -m pipeline.publish --space USER/NAME [--hardware zero-a10g] [--private]

This repository keeps its weights as ordinary git blobs (its CI clones it without LFS), while a
Space's git remote refuses large files outside Git LFS. `--prepare` writes a folder with the
files a Space needs and a `.gitattributes` that puts every binary and every file over 10 MB in LFS,
ready for `git push`; `--space` uploads that folder with `huggingface_hub.upload_folder`, which
stores large files through LFS itself (token from `HF_TOKEN` or `huggingface-cli login`).
See docs/DEPLOY.md.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SPACE_FILES = ("app.py", "requirements.txt", "packages.txt", "README.md", "pipeline/", "assets/", "docs/")
NOT_SHIPPED = ("assets/training/",)  # weights kept to resume training (docs/TRAINING.md); the app never loads them
BINARY = ("*.safetensors", "*.tflite", "*.wav", "*.png", "*.jpg", "*.jpeg", "*.npz", "*.mp4")
LFS_MIN_BYTES = 10 * 2**20  # the Hub's limit for a plain git blob


def space_files(root: Path = ROOT) -> list[str]:
    """The tracked files a Space needs (tests and CI stay behind), as paths relative to `root`."""
    listed = subprocess.run(["git", "ls-files", *SPACE_FILES], cwd=root, capture_output=True, text=True, check=True)
    return [f for f in listed.stdout.splitlines() if (root / f).is_file() and not f.startswith(NOT_SHIPPED)]


def gitattributes(root: Path, files: list[str]) -> str:
    """LFS rules: every binary kind, and any other file of 10 MB or more by name."""
    big = sorted(f for f in files if (root / f).stat().st_size >= LFS_MIN_BYTES
                 and not any(Path(f).match(p) for p in BINARY))
    return "".join(f"{p} filter=lfs diff=lfs merge=lfs -text\n" for p in (*BINARY, *big))


def prepare(out: Path, root: Path = ROOT) -> Path:
    """Copy the Space's files into `out` (which must not exist) with its `.gitattributes`."""
    out = Path(out)
    if out.exists():
        raise SystemExit(f"error: {out} exists; name a new folder")
    files = space_files(root)
    for f in files:
        (out / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / f, out / f)
    (out / ".gitattributes").write_text(gitattributes(root, files))
    return out


def publish(space: str, hardware: str | None = None, private: bool = False) -> str:
    """Create (or update) the Space and upload the prepared folder; returns its URL."""
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(space, repo_type="space", space_sdk="gradio", private=private, exist_ok=True)
    with tempfile.TemporaryDirectory() as d:
        folder = prepare(Path(d) / "space")
        api.upload_folder(folder_path=str(folder), repo_id=space, repo_type="space",
                          commit_message="Publish the READ talking-head demo")
    if hardware:
        api.request_space_hardware(space, hardware)
    return f"https://huggingface.co/spaces/{space}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Publish the demo as a Hugging Face Space")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--prepare", metavar="DIR", help="write a Space folder (with LFS rules) to DIR")
    what.add_argument("--space", metavar="USER/NAME", help="upload to this Space (created if missing)")
    p.add_argument("--hardware", help="e.g. cpu-basic, t4-small, zero-a10g (ZeroGPU needs a PRO or org account)")
    p.add_argument("--private", action="store_true")
    args = p.parse_args(argv)
    if args.prepare:
        print(f"wrote {prepare(Path(args.prepare))}")
    else:
        print(f"published {publish(args.space, args.hardware, args.private)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
