"""``ner runs``: the training runs, the production one marked."""

from __future__ import annotations

import argparse

from app.commands.shared import add_common


def add_parser(sub) -> None:
    sp = add_common(sub.add_parser("runs", help="list training runs"))
    sp.set_defaults(func=cmd_runs)


def cmd_runs(args: argparse.Namespace) -> int:
    from storage import runs as runs_db

    rows = runs_db.list_runs(args.db)
    if not rows:
        print(f"no training runs in {args.db}")
    for r in rows:
        f1 = f"{r['best_dev_f1'] * 100:.2f}" if r["best_dev_f1"] is not None else "-"
        star = " [production]" if r["is_production"] else ""
        print(
            f"{r['run_id']}  {r['status']:<9} {r['dataset']:<10} {r['head']:<6} {r['encoder']:<12} "
            f"epochs {r['n_epochs']:<3} dev F1 {f1}{star}"
        )
    return 0
