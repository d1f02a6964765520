"""Phoneme -> viseme mapping and co-articulation, producing per-frame mouth ground truth.

Each espeak-ng mnemonic maps to a target mouth pose (openness, width, roundness), all in 0..1
(width 0.5 is the relaxed mouth). Targets are held over each phoneme's span on a 200 Hz grid,
then smoothed with a Gaussian kernel (sigma 20 ms, i.e. ~50 ms FWHM), which is how neighbouring
sounds blend into each other (co-articulation). Bilabials (p, b, m) must really close the lips,
so after smoothing the openness is capped by an envelope that is 0 during the closure and ramps
back over 40 ms. Silence maps to a closed, relaxed mouth, so padding and pauses stay at 0.
"""

from __future__ import annotations

import numpy as np

# (openness, width, roundness)
CLOSED = (0.0, 0.5, 0.0)
_CONSONANTS = {
    "p": CLOSED, "b": CLOSED, "m": CLOSED,
    "f": (0.07, 0.5, 0.0), "v": (0.07, 0.5, 0.0),        # lower lip under the upper teeth
    "T": (0.16, 0.55, 0.0), "D": (0.16, 0.55, 0.0),      # tongue between the teeth
    "s": (0.12, 0.62, 0.0), "z": (0.12, 0.62, 0.0),
    "t": (0.16, 0.55, 0.0), "d": (0.16, 0.55, 0.0), "n": (0.16, 0.55, 0.0),
    "l": (0.22, 0.55, 0.0), "L": (0.22, 0.55, 0.0),
    "S": (0.18, 0.38, 0.6), "Z": (0.18, 0.38, 0.6),      # protruded lips
    "tS": (0.18, 0.38, 0.6), "dZ": (0.18, 0.38, 0.6),
    "r": (0.2, 0.4, 0.45), "w": (0.1, 0.2, 0.95), "j": (0.2, 0.65, 0.0),
    "k": (0.28, 0.5, 0.0), "g": (0.28, 0.5, 0.0), "N": (0.25, 0.5, 0.0),
    "h": (0.35, 0.5, 0.0), "x": (0.28, 0.5, 0.0), "?": (0.1, 0.5, 0.0),
}
_VOWELS = {
    "a": (0.85, 0.6, 0.0), "A": (0.9, 0.55, 0.05), "V": (0.65, 0.52, 0.05),
    "aa": (0.85, 0.6, 0.0), "E": (0.55, 0.66, 0.0), "e": (0.5, 0.66, 0.0),
    "i": (0.28, 0.85, 0.0), "I": (0.32, 0.78, 0.0),
    "@": (0.4, 0.5, 0.1), "3": (0.38, 0.48, 0.3),
    "0": (0.65, 0.38, 0.6), "O": (0.6, 0.35, 0.7), "o": (0.5, 0.3, 0.8),
    "u": (0.22, 0.2, 0.95), "U": (0.3, 0.28, 0.8),
}
# Diphthongs: (first part, second part); the first part holds 60 % of the span.
_DIPHTHONGS = {
    "aI": ("a", "I"), "aU": ("a", "U"), "OI": ("O", "I"), "eI": ("e", "I"),
    "oU": ("o", "U"), "e@": ("E", "@"), "i@": ("i", "@"), "U@": ("U", "@"), "A@": ("A", "@"),
    "O@": ("O", "@"), "o@": ("o", "@"), "aI@": ("a", "@"), "aU@": ("a", "@"),
}
_DEFAULT = (0.3, 0.5, 0.1)  # an unknown sound: mid pose rather than a guess
BILABIALS = {"p", "b", "m"}


def clean_symbol(sym: str) -> str:
    """Drop espeak stress/length marks (', ,, %, =) so 'oU and ,aI match the tables."""
    return sym.strip().lstrip("'%,=")


def is_silence(sym: str) -> bool:
    return clean_symbol(sym).startswith("_") or clean_symbol(sym) == ""


def viseme(sym: str) -> tuple[float, float, float]:
    """Target (openness, width, roundness) for one espeak mnemonic."""
    s = clean_symbol(sym)
    if is_silence(s):
        return CLOSED
    for table in (_CONSONANTS, _VOWELS):
        if s in table:
            return table[s]
    # Variants such as a#, @2, 3:, i:, u:, @L: strip trailing marks, then try the first letter.
    base = s.rstrip(":#0123456789;!")
    for key in (base, base[:1]):
        for table in (_CONSONANTS, _VOWELS):
            if key in table:
                return table[key]
    return _DEFAULT


def expand(phonemes) -> list[tuple[str, float, float]]:
    """Split diphthongs into two targets; returns (symbol, start, end) with stress removed."""
    out = []
    for p in phonemes:
        s = clean_symbol(p.symbol).rstrip(":")
        if s in _DIPHTHONGS:
            mid = p.start + 0.6 * (p.end - p.start)
            first, second = _DIPHTHONGS[s]
            out += [(first, p.start, mid), (second, mid, p.end)]
        else:
            out.append((clean_symbol(p.symbol), p.start, p.end))
    return out


def _gaussian(sigma_steps: float) -> np.ndarray:
    r = int(np.ceil(3 * sigma_steps))  # truncated: silence far from speech stays exactly closed
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma_steps) ** 2)
    return k / k.sum()


def mouth_tracks(phonemes, num_frames: int, fps: float = 25.0, rate: float = 200.0,
                 sigma_s: float = 0.02, release_s: float = 0.04) -> dict[str, np.ndarray]:
    """Per-frame float32 openness / width / roundness for a phoneme timeline.

    Frame k shows the instant (k + 0.5) / fps, the middle of its display interval.
    """
    n = int(np.ceil(num_frames / fps * rate)) + 1
    target = np.tile(np.array(CLOSED, np.float64), (n, 1))  # (n, 3): silence by default
    bilabial = np.zeros(n, bool)
    for sym, start, end in expand(phonemes):
        a, b = int(round(start * rate)), int(round(end * rate))
        a, b = max(a, 0), min(max(b, a + 1), n)
        if a >= n:
            continue
        target[a:b] = viseme(sym)
        bilabial[a:b] |= sym in BILABIALS
    kernel = _gaussian(sigma_s * rate)
    pad = len(kernel) // 2
    padded = np.pad(target, ((pad, pad), (0, 0)), mode="edge")
    smooth = np.stack([np.convolve(padded[:, c], kernel, mode="valid") for c in range(3)], 1)
    # Cap openness near bilabial closures: 0 inside, linear ramp to no cap over release_s.
    dist = _distance_to(bilabial) / rate
    smooth[:, 0] = np.minimum(smooth[:, 0], np.clip(dist / release_s, 0.0, 1.0))
    t = (np.arange(num_frames) + 0.5) / fps * rate  # frame times on the grid
    cols = [np.interp(t, np.arange(n), smooth[:, c]) for c in range(3)]
    names = ("openness", "width", "roundness")
    return {k: np.clip(v, 0.0, 1.0).astype(np.float32) for k, v in zip(names, cols)}


def _distance_to(mask: np.ndarray) -> np.ndarray:
    """Grid steps from each index to the nearest True entry (inf if none)."""
    idx = np.flatnonzero(mask)
    if idx.size == 0:
        return np.full(mask.shape, np.inf)
    pos = np.arange(mask.size)
    right = np.searchsorted(idx, pos).clip(0, idx.size - 1)
    left = (right - 1).clip(0, idx.size - 1)
    return np.minimum(np.abs(idx[right] - pos), np.abs(idx[left] - pos)).astype(np.float64)
