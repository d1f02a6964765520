"""Balanced, seeded assignment: which (stimulus, condition) a participant sees at each position.

Every participant rates every (stimulus, condition) pair once. The sequence is cut into blocks of
K = number of conditions trials; each block shows every condition once, in the order of one row of
a Williams Latin square (balanced for first-order carry-over). Participant p's block j uses row
(p + j) mod R (R = K rows for even K, 2K for odd K), so over every R consecutive participants each
condition appears exactly R/K times at each position. Stimuli follow a per-participant seeded
permutation pi: block j, condition c shows stimulus pi((j + c) mod N), which gives each pair
exactly once over the N blocks. Attention checks repeat a few trials later in the sequence.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from .spec import Study


@dataclass(frozen=True)
class Trial:
    position: int  # 0-based place in the participant's sequence
    stimulus: str
    condition: str
    repeat_of: int | None = None  # attention check: the position of the trial it repeats


def williams_rows(k: int) -> list[list[int]]:
    """Rows of a Williams design for k conditions: k rows (even k) or 2k rows (odd k).

    Each column holds every condition equally often, and each ordered pair of neighbours occurs
    equally often over the rows. Returns a list of permutations of range(k).
    """
    first, lo, hi = [0], 1, k - 1
    while len(first) < k:  # 0, 1, k-1, 2, k-2, ...
        first.append(lo)
        lo += 1
        if len(first) < k:
            first.append(hi)
            hi -= 1
    rows = [[(c + r) % k for c in first] for r in range(k)]
    return rows if k % 2 == 0 else rows + [row[::-1] for row in rows]


def participant_trials(study: Study, ordinal: int) -> list[Trial]:
    """The trial sequence of the participant who started `ordinal`-th (0-based), seeded by the study seed.

    Returns `study.num_trials` trials: N*K main trials then attention repeats inserted later on.
    """
    stimuli = [s.id for s in study.stimuli]
    conditions = [c.id for c in study.conditions]
    n, k = len(stimuli), len(conditions)
    rng = random.Random(f"{study.seed}:{ordinal}")
    perm = rng.sample(stimuli, n)
    rows = williams_rows(k)
    main = []
    for j in range(n):
        for c in rows[(ordinal + j) % len(rows)]:
            main.append((perm[(j + c) % n], conditions[c]))
    return _with_repeats(main, study, rng)


def _with_repeats(main: list[tuple[str, str]], study: Study, rng: random.Random) -> list[Trial]:
    """Insert `attention.repeats` copies of earlier trials, each at least K trials after its original."""
    att, k = study.attention, len(study.conditions)
    pool = [i for i, (_, c) in enumerate(main) if att.condition in (None, c)]
    originals = sorted(rng.sample(pool, att.repeats)) if att.repeats else []
    keyed = [(float(i), i, None) for i in range(len(main))]  # (sort key, main index, repeats index)
    for i in originals:
        after = rng.randint(min(i + k, len(main) - 1), len(main) - 1)
        keyed.append((after + 0.5, i, i))
    keyed.sort()
    position_of = {i: pos for pos, (_, i, rep) in enumerate(keyed) if rep is None}
    return [Trial(pos, *main[i], repeat_of=None if rep is None else position_of[rep])
            for pos, (_, i, rep) in enumerate(keyed)]
