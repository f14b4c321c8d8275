"""``ner lineage RUN_ID [--events]``: the dataset versions and review events that made a run's model, and
its promotions."""

from __future__ import annotations

import argparse

from app.commands.shared import add_common


def add_parser(sub) -> None:
    sp = add_common(
        sub.add_parser("lineage", help="which dataset versions and review events made a run's model")
    )
    sp.add_argument("run_id")
    sp.add_argument("--events", action="store_true", help="list every review event too")
    sp.set_defaults(func=cmd_lineage)


def cmd_lineage(args: argparse.Namespace) -> int:
    from storage.runs import model_lineage

    lin = model_lineage(args.db, args.run_id)
    star = " [production]" if lin["is_production"] else ""
    print(f"run {lin['run_id']}{star}: model {lin['model_dir'] or '-'}")
    for d in lin["datasets"]:
        src = f"review export of {', '.join(d['pred_runs']) or '-'}" if d["is_review_export"] else "ingested"
        who = f" by {', '.join(d['reviewers'])}" if d["reviewers"] else ""
        print(f"  {d['role']:<5} {d['dataset']} v{d['version']} ({src}): {d['events']} review events{who}")
    for p in lin["promotions"]:
        what = "promoted" if p["run_id"] == lin["run_id"] else f"replaced by {p['run_id']}"
        print(f"  {p['promoted_at']:%Y-%m-%d %H:%M:%S} {what} ({p['reason']})")
    if args.events:
        for e in lin["events"]:
            print(
                f"    {e['created_at']:%Y-%m-%d %H:%M:%S} {e['reviewer']:<12} {e['action']:<9} "
                f"{e['doc_id']} ({e['pred_run_id']}) -> {e['dataset']} v{e['version']}"
            )
    return 0
