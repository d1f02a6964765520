"""`python -m pipeline.study report STUDY`: a table like READ's Table 4, a plot, the raw ratings.

Writes into <output>/report/:
  report.md    per condition x criterion "mean ± std" (best in bold), then mean, std, 95 % CI, n;
               attention checks; inter-rater agreement (Krippendorff's alpha, interval metric)
  table.csv    condition, criterion, mean, std, ci_low, ci_high, n (one row per pair)
  ratings.csv  every stored rating: participant, position, stimulus, condition, criterion, score, times
  plot.png     mean with 95 % CI per criterion, one bar per condition
Attention repeats are left out of the means (they are second ratings of a pair); with
`attention.exclude_failed` so are all ratings of participants who failed a check.
"""
from __future__ import annotations

import csv
import math
from collections import defaultdict
from pathlib import Path

from .spec import Study
from .stats import Summary, krippendorff_alpha, summarize

TABLE_FIELDS = ("condition", "label", "criterion", "mean", "std", "ci_low", "ci_high", "n")
RATING_FIELDS = ("participant", "ordinal", "position", "stimulus", "condition", "repeat_of", "criterion", "score",
                 "shown", "rated", "client")


def attention_results(study: Study, ratings: list[dict]) -> dict[str, tuple[int, int]]:
    """participant code -> (checks answered, checks passed): every score of a repeat within tolerance of the first."""
    score = {(r["participant"], r["position"], r["criterion"]): r["score"] for r in ratings}
    trials = {(r["participant"], r["position"]): r["repeat_of"] for r in ratings if r["repeat_of"] is not None}
    out = defaultdict(lambda: [0, 0])
    for (code, pos), first in trials.items():
        diffs = [abs(score[code, pos, c.id] - score[code, first, c.id]) for c in study.criteria
                 if (code, first, c.id) in score and (code, pos, c.id) in score]
        out[code][0] += 1
        out[code][1] += bool(diffs) and max(diffs) <= study.attention.tolerance
    return {k: (v[0], v[1]) for k, v in out.items()}


def counted(study: Study, ratings: list[dict]) -> list[dict]:
    """The ratings that enter the table: no attention repeats, no failed participants if so configured."""
    failed = set()
    if study.attention.exclude_failed:
        failed = {code for code, (n, ok) in attention_results(study, ratings).items() if ok < n}
    return [r for r in ratings if r["repeat_of"] is None and r["participant"] not in failed]


def table(study: Study, ratings: list[dict]) -> dict[tuple[str, str], Summary]:
    """(condition id, criterion id) -> `Summary` of the counted ratings; pairs without ratings are absent."""
    scores = defaultdict(list)
    for r in counted(study, ratings):
        scores[r["condition"], r["criterion"]].append(r["score"])
    return {key: summarize(v) for key, v in scores.items()}


def agreement(study: Study, ratings: list[dict]) -> dict[str, float]:
    """criterion id -> Krippendorff's alpha (interval); units are (stimulus, condition), raters participants."""
    units = defaultdict(lambda: defaultdict(list))
    for r in counted(study, ratings):
        units[r["criterion"]][r["stimulus"], r["condition"]].append(r["score"])
    return {c.id: krippendorff_alpha(units[c.id]) for c in study.criteria}


def _fmt(x: float, digits: int = 2) -> str:
    return "–" if math.isnan(x) else f"{x:.{digits}f}"


def markdown_report(study: Study, ratings: list[dict]) -> str:
    """The whole report as Markdown (also the admin view's text)."""
    stats = table(study, ratings)
    people = sorted({r["participant"] for r in counted(study, ratings)})
    lines = [f"# {study.title}: ratings", "",
             f"{len(people)} participants, {len(study.stimuli)} stimuli; scores from 1 (very poor) to 5 "
             "(excellent); mean ± standard deviation, best in **bold**.", ""]
    lines += _main_table(study, stats) + [""] + _long_table(study, stats) + [""]
    att = attention_results(study, ratings)
    if att:
        lines += ["## Attention checks", "", "| participant | checks | passed |", "|---|---|---|"]
        lines += [f"| {code} | {n} | {ok} |" for code, (n, ok) in sorted(att.items())]
        lines += ["", "Failed participants are " + ("left out of the tables." if study.attention.exclude_failed
                                                     else "included (set attention.exclude_failed to leave them out)."), ""]
    alphas = agreement(study, ratings)
    lines += ["## Inter-rater agreement", "", "Krippendorff's alpha (interval), units = (stimulus, condition): "
              + ", ".join(f"{c.name} {_fmt(alphas[c.id], 3)}" for c in study.criteria), ""]
    return "\n".join(lines)


def _main_table(study: Study, stats: dict) -> list[str]:
    best = {k.id: max((s.mean for (c, crit), s in stats.items() if crit == k.id), default=None) for k in study.criteria}
    head = "| method | " + " | ".join(f"{c.name} ↑" for c in study.criteria) + " |"
    lines = [head, "|---" * (len(study.criteria) + 1) + "|"]
    for cond in study.conditions:
        cells = []
        for crit in study.criteria:
            s = stats.get((cond.id, crit.id))
            cell = "–" if s is None else f"{s.mean:.2f} ± {_fmt(s.std)}"
            cells.append(f"**{cell}**" if s is not None and s.mean == best[crit.id] else cell)
        lines.append(f"| {cond.label} | " + " | ".join(cells) + " |")
    return lines


def _long_table(study: Study, stats: dict) -> list[str]:
    lines = ["| method | criterion | mean | std | 95 % CI | n |", "|---|---|---|---|---|---|"]
    for cond in study.conditions:
        for crit in study.criteria:
            s = stats.get((cond.id, crit.id))
            if s is not None:
                lines.append(f"| {cond.label} | {crit.name} | {s.mean:.3f} | {_fmt(s.std, 3)} | "
                             f"[{_fmt(s.ci_low, 3)}, {_fmt(s.ci_high, 3)}] | {s.n} |")
    return lines


def write_csvs(study: Study, ratings: list[dict], folder: Path) -> tuple[Path, Path]:
    """table.csv and ratings.csv in `folder`. Returns their paths."""
    stats = table(study, ratings)
    with open(folder / "table.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(TABLE_FIELDS)
        for cond in study.conditions:
            for crit in study.criteria:
                s = stats.get((cond.id, crit.id))
                if s is not None:
                    w.writerow([cond.id, cond.label, crit.id, s.mean, s.std, s.ci_low, s.ci_high, s.n])
    with open(folder / "ratings.csv", "w", newline="") as f:
        w = csv.DictWriter(f, RATING_FIELDS)
        w.writeheader()
        w.writerows(ratings)
    return folder / "table.csv", folder / "ratings.csv"


def plot(study: Study, ratings: list[dict], path: Path) -> Path:
    """Grouped bars: per criterion, the mean of each condition with its 95 % CI as an error bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stats = table(study, ratings)
    k = len(study.conditions)
    width = 0.8 / k
    fig, ax = plt.subplots(figsize=(1.6 + 1.5 * len(study.criteria), 3.6))
    for i, cond in enumerate(study.conditions):
        got = [stats.get((cond.id, c.id)) for c in study.criteria]
        means = [s.mean if s else math.nan for s in got]
        err = [0.0 if s is None or math.isnan(s.ci_low) else s.mean - s.ci_low for s in got]
        xs = [j + (i - (k - 1) / 2) * width for j in range(len(study.criteria))]
        ax.bar(xs, means, width, yerr=err, capsize=3, label=cond.label)
    ax.set_xticks(range(len(study.criteria)), [c.name for c in study.criteria])
    ax.set_ylim(1, 5.3)  # intervals may reach past 5: they are Student's t, not clipped to the scale
    ax.set_ylabel("mean rating (95 % CI)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_title(study.title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(study: Study, ratings: list[dict], folder: Path | None = None) -> dict[str, Path]:
    """report.md, table.csv, ratings.csv and plot.png into `folder` (default <output>/report)."""
    folder = Path(folder) if folder else study.output / "report"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.md").write_text(markdown_report(study, ratings) + "\n")
    table_csv, ratings_csv = write_csvs(study, ratings, folder)
    return {"report": folder / "report.md", "table": table_csv, "ratings": ratings_csv,
            "plot": plot(study, ratings, folder / "plot.png")}
