"""Example inputs shipped in assets/examples: held-out synthetic identities and their speech.

    python -m pipeline.data.examples --out assets/examples --count 3 --seed 777

Seed 777 is not used by training (seed 1) or the test set (seed 9001). Each example is the first
frame of a held-out clip (mouth closed) and that clip's espeak-ng speech.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from .synthetic import clip_seed, render_clip


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="assets/examples")
    p.add_argument("--count", type=int, default=3)
    p.add_argument("--seed", type=int, default=777)
    p.add_argument("--seconds", type=float, nargs="+", default=[4.0, 6.0, 10.0])
    p.add_argument("--size", type=int, default=128)
    args = p.parse_args(argv)
    import cv2

    from ..media import write_wav

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for i in range(args.count):
        seconds = args.seconds[min(i, len(args.seconds) - 1)]
        clip = render_clip(clip_seed(args.seed, i), seconds, args.size)
        cv2.imwrite(str(out / f"portrait_{i}.png"), cv2.cvtColor(clip.frames[0], cv2.COLOR_RGB2BGR))
        write_wav(out / f"speech_{i}.wav", clip.audio, clip.sample_rate)
        print(f"example {i}: {seconds:.0f} s, {clip.meta.get('voice')}: {clip.meta.get('text', '')[:60]}")


if __name__ == "__main__":
    main()
