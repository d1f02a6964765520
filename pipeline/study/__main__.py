"""Command line of the user-study mode.

    python -m pipeline.study check  STUDY     # read the study file, print what it describes
    python -m pipeline.study render STUDY     # every (stimulus, condition) video once; resumable
    python -m pipeline.study serve  STUDY     # the Study tab alone (`python app.py --study STUDY` adds it to the demo)
    python -m pipeline.study report STUDY     # report.md, table.csv, ratings.csv, plot.png in <output>/report
    python -m pipeline.study codes  STUDY -n 18 --url http://HOST:7860/   # fresh participant codes and links

STUDY is a study file (.toml or .json) or a folder holding study.toml / study.json. A bad study
file, missing inputs or a missing render print one message and exit with code 2.
"""
from __future__ import annotations

import argparse
import sys

from ..errors import InputError
from .spec import StudyError, load_study


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m pipeline.study", description="READ user-study mode")
    sub = p.add_subparsers(dest="command", required=True)
    for name, text in (("check", "read the study file and print a summary"),
                       ("render", "render / re-encode every video the study shows (resumable)"),
                       ("serve", "serve the participant pages (the Study tab alone)"),
                       ("report", "write the results table, plot and raw ratings"),
                       ("codes", "print fresh participant codes (for the study file's `codes`) and links")):
        cmd = sub.add_parser(name, help=text, description=text)
        cmd.add_argument("study", help="study file (.toml/.json) or a folder with study.toml / study.json")
    sub.choices["render"].add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    sub.choices["report"].add_argument("--out", help="report folder (default: <output>/report)")
    sub.choices["codes"].add_argument("-n", type=int, default=10, help="how many codes")
    sub.choices["codes"].add_argument("--url", help="the study's address, to print links with ?code=")
    serve = sub.choices["serve"]
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=7860)
    serve.add_argument("--study-token-file", help="file whose first line is the admin token "
                                                  "(default: $READ_STUDY_TOKEN)")
    return p.parse_args(argv)


def check(args) -> int:
    study = load_study(args.study)
    kinds = ", ".join(f"{c.id} ({'uploaded' if c.uploaded else 'rendered'})" for c in study.conditions)
    print(f"{study.title}: {len(study.stimuli)} stimuli x {len(study.conditions)} conditions "
          f"[{kinds}], {len(study.criteria)} criteria, {study.num_trials} trials per participant "
          f"({study.attention.repeats} attention repeats); output folder {study.output}")
    return 0


def render(args) -> int:
    from .render import render as run

    study = load_study(args.study)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    done = run(study)
    print(f"rendered {done['rendered']} video(s), {done['skipped']} already there; in {done['folder']}")
    return 0


def serve(args) -> int:
    import gradio as gr

    from .service import read_token
    from .ui import build_study_tab

    token = read_token(args.study_token_file)
    with gr.Blocks(title="READ user study") as demo:
        build_study_tab(args.study, token=token)
    demo.queue(default_concurrency_limit=None)
    if not token:
        print("note: no admin token ($READ_STUDY_TOKEN or --study-token-file): the results view is off")
    demo.launch(server_name=args.host, server_port=args.port)
    return 0


def report(args) -> int:
    from .report import write_report
    from .service import DB_FILE
    from .store import Store

    study = load_study(args.study)
    if not (study.output / DB_FILE).is_file():
        raise StudyError(f"no ratings yet: {study.output / DB_FILE} does not exist (serve the study first)")
    paths = write_report(study, Store(study.output / DB_FILE).ratings(), args.out)
    print(paths["report"].read_text())
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def codes(args) -> int:
    import secrets

    study = load_study(args.study)
    alphabet = "abcdefghjkmnpqrstuvwxyz23456789"  # no 0/o, 1/l/i: codes are read aloud and typed
    new = []
    while len(new) < args.n:
        code = "".join(secrets.choice(alphabet) for _ in range(8))
        if code not in study.codes and code not in new:
            new.append(code)
    print("codes = [" + ", ".join(f'"{c}"' for c in study.codes + tuple(new)) + "]")
    for c in new:
        print(f"{args.url.rstrip('/')}/?code={c}" if args.url else c)
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        commands = {"check": check, "render": render, "serve": serve, "report": report, "codes": codes}
        return commands[args.command](args)
    except InputError as e:  # StudyError included
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
