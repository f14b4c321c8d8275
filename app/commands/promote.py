"""``ner promote RUN_ID``: mark a completed run as the production model; ``--rollback`` returns to the one
it replaced."""

from __future__ import annotations

import argparse

from app.commands.shared import CLIError, add_common


def add_parser(sub) -> None:
    sp = add_common(sub.add_parser("promote", help="mark a run as the production model (or roll back)"))
    sp.add_argument("run_id", nargs="?", help="the completed run to promote")
    sp.add_argument(
        "--rollback",
        action="store_true",
        help="return to the production model the current one replaced (repeat to go further back)",
    )
    sp.set_defaults(func=cmd_promote)


def cmd_promote(args: argparse.Namespace) -> int:
    from storage import runs as runs_db

    if args.rollback == bool(args.run_id):
        raise CLIError("give a RUN_ID to promote, or --rollback to return to the previous production model")
    if args.rollback:
        left, back = runs_db.rollback_production(args.db)
        print(f"rolled back: run {back} is the production model again (was {left})")
        return 0
    runs_db.promote_run(args.db, args.run_id)
    print(f"run {args.run_id} is now the production model")
    return 0
