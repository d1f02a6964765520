"""User-study mode: blind, randomised rating sessions with durable results and a Table-4 report.

    spec     the study file (JSON/TOML): stimuli, conditions, criteria, attention checks
    design   balanced, seeded assignment (Williams Latin square over condition order per block)
    render   every (stimulus, condition) video once, under a salted hash name
    store    SQLite storage (WAL, one transaction per write)
    service  the participant flow and the token-guarded admin view, in plain Python
    report   mean, std, 95 % CI and n per condition x criterion; plot; raw CSV; Krippendorff's alpha
    ui       the thin Gradio "Study" tab over `service` (the only module that imports gradio)

Command line: `python -m pipeline.study {check,render,serve,report} STUDY` (docs/STUDY.md).
Nothing heavy is imported here.
"""
from .spec import Study, StudyError, load_study

__all__ = ["Study", "StudyError", "load_study"]
