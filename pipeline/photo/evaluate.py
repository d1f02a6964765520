"""Photo-mode bars on held-out synthetic speech: motion fidelity, identity, speed, a seam picture.

    python -m pipeline.photo.evaluate --checkpoint assets/model --clips 8 --seconds 8 --seed 9001 \
        --seam docs/photo_seam.png

For every held-out clip (new identities and sentences: seed 9001 is the project's test set) the
clip's speech drives photo mode end to end: READ animates the driver portrait, the motion reader
reads the driver frames, the renderer warps the photo (Grace Hopper, public domain, shipped with
matplotlib). FaceMesh, run afresh on every *output* frame, reads the lip opening back; it is
correlated with the clip's ground-truth openness (bar ≥ 0.8, best lag 0 ± 1). ``driver="truth"``
rows replace READ's video with the driver rendered from the ground truth (the reader and warp
alone). Identity: PSNR of output frames against the still window outside the warp's ring, outside
the face oval, and inside the face but outside the mouth-and-jaw and eye regions.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

from . import landmarks as lm

INNER_PAIRS = [(82, 87), (13, 14), (312, 317)]  # upper / lower inner-lip points across the mouth


def grace_hopper() -> np.ndarray:
    """The public-domain Grace Hopper portrait shipped with matplotlib, (600, 512, 3) uint8 RGB."""
    import os

    import cv2
    import matplotlib

    path = os.path.join(matplotlib.get_data_path(), "sample_data", "grace_hopper.jpg")
    return cv2.cvtColor(cv2.imread(path), cv2.COLOR_BGR2RGB)


def track_mesh(frames: np.ndarray) -> np.ndarray:
    """FaceMesh on every frame (T, H, W, 3) uint8, each crop from the previous frame's mesh:
    (T, 468, 3). Raises ValueError when the first frame has no face."""
    faces = lm.detect_faces(frames[0])
    if not faces:
        raise ValueError("no face in the first frame")
    face, out = lm.mesh_face(frames[0], faces[0]), []
    for f in frames:
        p = face.points[:, :2]
        face = lm.mesh_face(f, lm.Face(np.r_[p.min(0), p.max(0)], 1.0, p[[33, 263]]), passes=1)
        out.append(face.points)
    return np.stack(out)


def lip_opening(points: np.ndarray) -> np.ndarray:
    """Inner-lip opening per frame from meshes (T, 468, ≥2): mean gap of three upper/lower point
    pairs divided by the distance between the eye centres (unitless, ~0 closed, ~0.3 wide open)."""
    gap = np.mean([np.linalg.norm(points[:, i, :2] - points[:, j, :2], axis=-1) for i, j in INNER_PAIRS], 0)
    eyes = [points[:, lm.EYE_R_UPPER + lm.EYE_R_LOWER, :2].mean(1), points[:, lm.EYE_L_UPPER + lm.EYE_L_LOWER, :2].mean(1)]
    return gap / np.linalg.norm(eyes[0] - eyes[1], axis=-1)


def region_masks(renderer) -> dict[str, np.ndarray]:
    """Boolean (S, S) masks on the output window: 'outside_ring' (the warp never reaches it),
    'outside_face' (outside the face oval), 'face_rest' (inside the oval, outside the eyes and the
    mouth-and-jaw region that the mouth moves by design)."""
    import cv2

    S, p = renderer.size, renderer.points
    def poly(idx, grow=1.0):
        m = np.zeros((S, S), np.uint8)
        pts = p[idx]
        c = pts.mean(0)
        cv2.fillPoly(m, [np.round(c + (pts - c) * grow).astype(np.int32)], 1)
        return m.astype(bool)
    oval = poly(lm.FACE_OVAL)
    below = ((np.stack(np.mgrid[0:S, 0:S][::-1], -1) - (p[1] + p[lm.LIPS_UPPER_OUTER[5]]) / 2) @ renderer.v) > 0
    mouth_jaw = poly(lm.LIPS_UPPER_OUTER + lm.LIPS_LOWER_OUTER[::-1], 1.6) | (oval & below)
    eyes = poly(lm.EYE_R_UPPER + lm.EYE_R_LOWER[::-1], 1.8) | poly(lm.EYE_L_UPPER + lm.EYE_L_LOWER[::-1], 1.8)
    return {"outside_ring": ~renderer.support, "outside_face": ~oval, "face_rest": oval & ~mouth_jaw & ~eyes}


def identity_psnr(frames: np.ndarray, still: np.ndarray, masks: dict) -> dict[str, float]:
    """Mean over frames of the PSNR (dB, capped at 99) against still (S, S, 3) or per-frame
    references (T, S, S, 3), per mask."""
    diff = (frames.astype(np.float32) - still.astype(np.float32)) ** 2  # (T, S, S, 3)
    out = {}
    for name, m in masks.items():
        mse = diff[:, m].mean(axis=(1, 2))
        out[name] = float(np.mean(np.minimum(99.0, 10 * np.log10(255.0 ** 2 / np.maximum(mse, 1e-12)))))
    return out


def generate_driver(pipe, wav: np.ndarray, **kwargs) -> np.ndarray:
    """READ's video of the driver portrait speaking wav (16 kHz float32): (T, 128, 128, 3) uint8."""
    from .motion import driver_portrait

    return pipe(driver_portrait(), wav, progress=False, **kwargs).frames


def driver_from_truth(gt: dict) -> np.ndarray:
    """The driver identity rendered with a clip's ground-truth motion: (T, 128, 128, 3) uint8."""
    from ..data import faces
    from ..data.synthetic import _streams
    from .motion import DRIVER_SEED, DRIVER_SIZE

    r = faces.FaceRenderer(faces.sample_identity(_streams(DRIVER_SEED)[0]), DRIVER_SIZE)
    return np.stack([r.render(gt["openness"][k], gt["width"][k], gt["roundness"][k], blink=gt["blink"][k],
                              brow=gt["brow"][k], offset=tuple(gt["head_offset"][k])) for k in range(len(gt["openness"]))])


def evaluate_clip(renderer, reader, driver: np.ndarray, truth: np.ndarray, masks: dict) -> dict:
    """One clip: driver frames -> motion -> photo frames -> FaceMesh read-back vs truth (T,)."""
    from ..eval.synthetic import lagged_correlation

    t0 = time.process_time()  # CPU time of this process: fair on a shared machine
    motion = reader.read(driver)
    t1 = time.process_time()
    frames = renderer.render(motion)
    t2 = time.process_time()
    opening = lip_opening(track_mesh(frames))
    n = min(len(opening), len(truth))
    lags = lagged_correlation(opening[:n], truth[:n])
    best = max(lags, key=lags.get)
    reader_r = lagged_correlation(motion.openness[:n], truth[:n])[0]
    shifted = np.stack([renderer.render_frame(head_offset=h) for h in motion.head_offset])  # still face, same head
    return {"correlation": lags[0], "best_lag": best, "best_correlation": lags[best], "reader_correlation": reader_r,
            "read_ms_per_frame": 1000 * (t1 - t0) / len(driver), "render_ms_per_frame": 1000 * (t2 - t1) / len(driver),
            **{f"psnr_{k}": v for k, v in identity_psnr(frames, renderer.base, masks).items()},
            **{f"psnr_{k}_head_compensated": v for k, v in identity_psnr(frames, shifted, masks).items()}}, frames


def seam_picture(renderer, frames: np.ndarray, path: str) -> None:
    """Save, for the frame that differs most from the still: still | frame | |frame − still| × 8
    with the ring (edge of the warp) in green; below, the same three zoomed 2× on the jaw and neck,
    where the warp's fade to zero is steepest."""
    import cv2

    k = int(np.argmax(np.abs(frames.astype(np.int16) - renderer.base).mean(axis=(1, 2, 3))))
    diff = np.clip(np.abs(frames[k].astype(np.int16) - renderer.base) * 8, 0, 255).astype(np.uint8)
    edge = cv2.morphologyEx(renderer.support.astype(np.uint8), cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) > 0
    diff[edge] = (0, 255, 0)
    row = np.hstack([renderer.base, frames[k], diff])
    S, chin = renderer.size, renderer.points[lm.CHIN].astype(int)
    x0, y0 = np.clip(chin - [S // 4, S // 8], 0, S - S // 2)
    zoom = np.hstack([cv2.resize(im[y0:y0 + S // 2, x0:x0 + S // 2], (S, S), interpolation=cv2.INTER_NEAREST)
                      for im in (renderer.base, frames[k], diff)])
    cv2.imwrite(path, cv2.cvtColor(np.vstack([row, zoom]), cv2.COLOR_RGB2BGR))


def bench(sizes=(256, 512), frames: int = 100) -> dict:
    """CPU ms per frame (process time, one OpenCV thread) of ``render_frame`` on random motion and
    of ``MotionReader.read`` per driver frame, on the Grace Hopper photo."""
    import cv2

    from .motion import MotionReader, driver_portrait
    from .render import PhotoRenderer

    cv2.setNumThreads(1)
    rng, out = np.random.default_rng(0), {}
    params = rng.uniform([0, 0.2, 0, 0, -2, -2], [1, 0.8, 1, 1, 2, 2], (frames, 6))
    for size in sizes:
        r = PhotoRenderer(grace_hopper(), size)
        t = time.process_time()
        for o, w, ro, b, hx, hy in params:
            r.render_frame(o, w, ro, b, (hx, hy))
        out[f"render_ms_{size}"] = 1000 * (time.process_time() - t) / frames
    reader, drv = MotionReader.load(), np.repeat(driver_portrait()[None], frames, 0)
    t = time.process_time()
    reader.read(drv)
    out["read_ms"] = 1000 * (time.process_time() - t) / frames
    return out


def end_to_end(checkpoint: str, wav_path: str = "assets/examples/speech_2.wav", size: int = 256) -> dict:
    """CPU seconds (this process, one torch thread) per second of speech: READ on the driver, the
    motion reader, the warp. A real-time factor on one core that a busy shared machine does not
    inflate (wall time would)."""
    from ..media import load_audio
    from ..pipeline import TalkingHeadPipeline
    from .motion import MotionReader
    from .render import PhotoRenderer

    pipe, wav = TalkingHeadPipeline.from_pretrained(checkpoint), load_audio(wav_path)
    renderer, reader = PhotoRenderer(grace_hopper(), size), MotionReader.load()
    generate_driver(pipe, wav[:16000], seed=0)  # warm-up: first-call costs are not per-video
    t0 = time.process_time()
    driver = generate_driver(pipe, wav, seed=0)
    t1 = time.process_time()
    renderer.render(reader.read(driver))
    t2 = time.process_time()
    seconds = len(wav) / 16000
    return {"seconds": seconds, "generation_rtf_cpu": (t1 - t0) / seconds, "reader_and_warp_rtf_cpu": (t2 - t1) / seconds,
            "total_rtf_cpu": (t2 - t0) / seconds}


def _jpeg(rgb: np.ndarray, quality: int) -> np.ndarray:
    import cv2

    ok, buf = cv2.imencode(".jpg", rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
    return cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1]


def domain_table() -> None:
    """Print the median detail (``domain.median_detail``) of the synthetic and photo sets behind
    ``is_photo``'s threshold (the table in ``domain.py``)."""
    import cv2
    from skimage import data

    from ..data.synthetic import render_portrait
    from .domain import DETAIL_MIN, median_detail

    gh, astro = grace_hopper(), data.astronaut()
    photos = {"grace_hopper": gh, "astronaut": astro, "cat": data.chelsea(), "coffee": data.coffee(),
              "gh_grey": np.repeat(gh.mean(-1, keepdims=True), 3, -1).astype(np.uint8),
              "gh_blur2": cv2.GaussianBlur(gh, (0, 0), 2), "astro_blur3": cv2.GaussianBlur(astro, (0, 0), 3),
              "gh_128px": cv2.resize(gh, (107, 128), interpolation=cv2.INTER_AREA), "astro_jpeg30": _jpeg(astro, 30)}
    synth = [render_portrait(s, n) for s in range(100, 160) for n in (128, 256)]
    for name, group in (("generator", synth), ("generator_jpeg90", [_jpeg(x, 90) for x in synth]),
                        ("generator_jpeg50", [_jpeg(x, 50) for x in synth])):
        print(f"{name}: max {max(median_detail(x) for x in group):.2f} (photo if >= {DETAIL_MIN})")
    for name, x in photos.items():
        print(f"{name}: {median_detail(x):.2f}")


def summarise(rows: list[dict]) -> dict:
    keys = [k for k in rows[0] if isinstance(rows[0][k], (int, float))]
    out = {k: float(np.mean([r[k] for r in rows])) for k in keys}
    out["correlation_min"] = float(min(r["correlation"] for r in rows))
    out["best_lags"] = [r["best_lag"] for r in rows]
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description="Photo-mode bars on held-out synthetic speech")
    p.add_argument("--checkpoint", default="assets/model")
    p.add_argument("--clips", type=int, default=8)
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--seed", type=int, default=9001)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--truth-only", action="store_true", help="skip READ: drive with the ground-truth render only")
    p.add_argument("--seam", default=None, help="save a seam-check picture here")
    p.add_argument("--reader", default=None, help="motion reader weights (default: the shipped ones)")
    p.add_argument("--domain", action="store_true", help="only print the is_photo measures behind its threshold")
    p.add_argument("--bench", action="store_true", help="only time the renderer, the reader and the whole photo path (CPU time)")
    args = p.parse_args(argv)
    import torch

    from ..data.synthetic import clip_seed, render_clip
    from .motion import MotionReader
    from .render import PhotoRenderer

    torch.set_num_threads(1)
    if args.bench:
        print(json.dumps(bench() | end_to_end(args.checkpoint, size=args.size), indent=1))
        return
    if args.domain:
        return domain_table()
    renderer = PhotoRenderer(grace_hopper(), args.size)
    reader = MotionReader.load(args.reader) if args.reader else MotionReader.load()
    masks = region_masks(renderer)
    pipe = None
    if not args.truth_only:
        from ..pipeline import TalkingHeadPipeline

        pipe = TalkingHeadPipeline.from_pretrained(args.checkpoint)
    rows = {"truth": [], "read": []}
    for i in range(args.clips):
        clip = render_clip(clip_seed(args.seed, i), args.seconds, 128)
        row, frames = evaluate_clip(renderer, reader, driver_from_truth(clip.gt), clip.gt["openness"], masks)
        rows["truth"].append(row)
        if pipe is not None:
            row, frames = evaluate_clip(renderer, reader, generate_driver(pipe, clip.audio, seed=0), clip.gt["openness"], masks)
            rows["read"].append(row)
        if i == 0 and args.seam:
            seam_picture(renderer, frames, args.seam)
    print(json.dumps({k: summarise(v) for k, v in rows.items() if v} | {"clips": args.clips, "seconds": args.seconds,
                      "seed": args.seed, "size": args.size}, indent=1))


if __name__ == "__main__":
    main()
