"""Lip-sync on real human voices: LibriVox sentences, both render paths.

    apt-get install pocketsphinx-testdata   # 5 LibriVox sentences with transcripts (~25 s)
    pip install pocketsphinx                # forced phone alignment, en-us model inside
    python -m pipeline.eval.realvoice --checkpoint assets/model

Ground truth: pocketsphinx aligns each transcript to its audio (ARPAbet phones, 10 ms frames);
the phones go through the project's viseme table (``data/visemes.py``, via ``ARPABET``) and its
co-articulation, giving per-video-frame mouth openness exactly as the synthetic data defines it.
Paths: *diffusion* (READ animates example portrait 0) and *photo* (READ animates the driver, the
motion reader reads it, the Grace Hopper photo is warped). The diffusion video is read by the
project's mouth reader (``eval/mouth.py``); the photo video by FaceMesh on every output frame
(``photo.evaluate.lip_opening``). FaceMesh cannot read the diffusion path: it finds no face in
READ's soft 128² cartoon frames. Correlations with the truth are printed
per sentence and on average, with the best lag (frames; > 0: video late).
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

TESTDATA = Path("/usr/share/pocketsphinx/test/data/librivox")  # Debian pocketsphinx-testdata
# ARPAbet (CMUdict) -> espeak-ng mnemonics of the viseme table; stress digits are dropped first.
ARPABET = {  # AH -> schwa: in running speech it is mostly unstressed
    "AA": "A", "AE": "a", "AH": "@", "AO": "O", "AW": "aU", "AY": "aI", "EH": "E", "ER": "3",
    "EY": "eI", "IH": "I", "IY": "i", "OW": "oU", "OY": "OI", "UH": "U", "UW": "u",
    "B": "b", "CH": "tS", "D": "d", "DH": "D", "F": "f", "G": "g", "HH": "h", "JH": "dZ", "K": "k",
    "L": "l", "M": "m", "N": "n", "NG": "N", "P": "p", "R": "r", "S": "s", "SH": "S", "T": "t",
    "TH": "T", "V": "v", "W": "w", "Y": "j", "Z": "z", "ZH": "Z",
}


@dataclass
class Phone:
    symbol: str  # espeak mnemonic ("_" for silence)
    start: float  # seconds
    end: float


def sentences(folder: Path = TESTDATA) -> list[tuple[Path, str]]:
    """(wav path, transcript) pairs of the LibriVox test data. Raises FileNotFoundError with the
    install command when the Debian package is missing."""
    tr = folder / "transcription"
    if not tr.exists():
        raise FileNotFoundError(f"{tr} not found: install it with `apt-get install pocketsphinx-testdata`")
    out = []
    for line in tr.read_text().splitlines():
        words, _, name = line.rpartition("(")
        text = " ".join(w for w in words.split() if w not in ("<s>", "</s>"))
        out.append((folder / f"{name.strip(' )')}.wav", text))
    return out


def align(wav16k: np.ndarray, text: str) -> list[Phone]:
    """Forced phone alignment of float32 16-kHz mono audio to its transcript (pocketsphinx)."""
    from pocketsphinx import Decoder

    pcm = (np.clip(wav16k, -1, 1) * 32767).astype(np.int16).tobytes()
    dec = Decoder(bestpath=False, loglevel="FATAL")
    dec.set_align_text(text)
    for _ in range(2):  # first pass: word alignment; second: phone alignment inside it
        dec.start_utt(), dec.process_raw(pcm, full_utt=True), dec.end_utt()
        if _ == 0:
            dec.set_alignment()
    phones = []
    for word in dec.get_alignment():
        for ph in word:
            sym = ARPABET.get("".join(c for c in ph.name if c.isalpha()), "_")
            phones.append(Phone(sym, ph.start / 100, (ph.start + ph.duration) / 100))
    return phones


def truth_openness(phones: list[Phone], num_frames: int) -> np.ndarray:
    """Per-frame ground-truth openness (num_frames,) in [0, 1] at 25 fps from aligned phones."""
    from ..data.visemes import mouth_tracks

    return mouth_tracks(phones, num_frames)["openness"]


def _scores(opening: np.ndarray, truth: np.ndarray) -> dict:
    from .synthetic import lagged_correlation

    n = min(len(opening), len(truth))
    lags = lagged_correlation(opening[:n], truth[:n])
    best = max(lags, key=lags.get)
    return {"r": round(lags[0], 3), "best_lag": best, "r_best": round(lags[best], 3)}


def evaluate_sentence(pipe, renderer, reader, mouth_reader, wav: np.ndarray, text: str) -> dict:
    """One sentence through both paths; returns correlations with the aligned truth.

    READ animates the driver portrait once (it is example portrait 0's identity): that video is
    the diffusion path's output and the photo path's driver.
    """
    from ..photo.evaluate import generate_driver, lip_opening, track_mesh
    from .mouth import read_openness

    truth = truth_openness(align(wav, text), max(1, round(len(wav) / 16000 * 25)))
    driver = generate_driver(pipe, wav, seed=0)
    photo = renderer.render(reader.read(driver))
    return {"seconds": round(len(wav) / 16000, 2), "text": text,
            "diffusion_mouth_reader": _scores(read_openness(mouth_reader, driver, reader.mouth_box), truth),
            "photo_facemesh": _scores(lip_opening(track_mesh(photo)), truth)}


def main(argv=None):
    p = argparse.ArgumentParser(description="Lip-sync on LibriVox sentences, diffusion and photo paths")
    p.add_argument("--checkpoint", default="assets/model")
    p.add_argument("--data", default=str(TESTDATA), help="folder with wavs and a transcription file")
    p.add_argument("--size", type=int, default=256, help="photo-mode output size")
    args = p.parse_args(argv)
    import torch

    from ..media import load_audio
    from ..photo.evaluate import grace_hopper
    from ..photo.motion import MotionReader
    from ..photo.render import PhotoRenderer
    from ..pipeline import TalkingHeadPipeline
    from .mouth import load_reader

    torch.set_num_threads(1)
    pipe = TalkingHeadPipeline.from_pretrained(args.checkpoint)
    renderer, reader, mouth_reader = PhotoRenderer(grace_hopper(), args.size), MotionReader.load(), load_reader()
    rows = [evaluate_sentence(pipe, renderer, reader, mouth_reader, load_audio(wav), text)
            for wav, text in sentences(Path(args.data))]
    keys = ("diffusion_mouth_reader", "photo_facemesh")
    mean = {k: {m: round(float(np.mean([r[k][m] for r in rows])), 3) for m in ("r", "r_best")} for k in keys}
    print(json.dumps({"sentences": rows, "mean": mean}, indent=1))


if __name__ == "__main__":
    main()
