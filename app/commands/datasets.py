"""``ner datasets list`` and ``ner datasets delete NAME [--version V] [--yes] [--keep-derived]``.

``delete`` shows what it would remove (:func:`storage.deletion.plan_deletion`): the rows per table and
prediction runs; the derived datasets (review exports) holding its texts; the files holding them
(evaluation reports in the run folders, the seed's ``-output_path`` files); the review spool's lines on its
documents; Prefect's artifact rows and events quoting it; DuckDB's spill files; then what is kept (other
datasets holding the same texts, the files it was ingested from, the trained models that saw it). It asks
for a confirmation unless ``--yes``, then deletes all of it, the database's rows in one transaction, and
rewrites the database file so no deleted text stays on disk (:func:`storage.deletion.delete_dataset`).
Without a terminal to answer and without ``--yes`` nothing is deleted.

Derived data is deleted by default; ``--keep-derived`` keeps the derived datasets, files and Prefect
records (the plan lists them as kept). Exit status 1 when something could not be removed (each named on a
``LEFT:`` line).
"""

from __future__ import annotations

import argparse
import sys

from app.commands.shared import add_db


def add_parser(sub) -> None:
    """``datasets`` with its ``list`` and ``delete`` actions, on the ``ner`` subparsers ``sub``."""
    sp = sub.add_parser("datasets", help="list the stored datasets, or delete one (personal data)")
    actions = sp.add_subparsers(dest="action", required=True, parser_class=type(sp))
    ls = actions.add_parser("list", help="every dataset version with its counts")
    add_db(ls)
    ls.set_defaults(func=cmd_datasets_list)
    rm = actions.add_parser(
        "delete",
        help="remove a dataset (or one version) and every copy of its texts: documents, gold entities, "
        "problems, predictions of the same texts (any input, any doc id), review events, derived datasets "
        "(review exports), evaluation reports and seed -output_path files holding them, review spool lines, "
        "Prefect artifacts quoting them, DuckDB spill files; names what it keeps (trained models that saw "
        "it, the files it was ingested from, other datasets holding the same texts)",
    )
    rm.add_argument("name", help="dataset name")
    rm.add_argument("--version", type=int, help="only this version (default: every version)")
    rm.add_argument("--yes", action="store_true", help="do not ask for a confirmation")
    rm.add_argument(
        "--no-rewrite",
        action="store_true",
        help="skip rewriting the database file afterwards (faster on a large file; the deleted bytes then "
        "stay in its free space until DuckDB reuses it)",
    )
    rm.add_argument(
        "--keep-derived",
        action="store_true",
        help="keep what was made from the data (derived datasets such as review exports, evaluation reports "
        "and -output_path files holding its texts, Prefect artifacts quoting them): listed as kept. By "
        "default they are deleted with it",
    )
    add_db(rm)
    rm.set_defaults(func=cmd_datasets_delete)


def _confirmed(question: str) -> bool:
    try:
        answer = input(question)
    except EOFError:  # no terminal: never delete on a missing answer
        return False
    return answer.strip().lower() in ("y", "yes")


def cmd_datasets_delete(args: argparse.Namespace) -> int:
    from storage.deletion import delete_dataset, plan_deletion

    plan = plan_deletion(args.db, args.name, args.version, keep_derived=args.keep_derived)
    print("\n".join(plan.summary()), flush=True)
    if not args.yes and not _confirmed("delete this? type 'yes' to confirm [y/N] "):
        print("nothing deleted (confirm at the prompt, or pass --yes)", file=sys.stderr)
        return 1
    done = delete_dataset(
        args.db, args.name, args.version, rewrite=not args.no_rewrite, keep_derived=args.keep_derived
    )
    print("\n".join(done.summary()))
    if not args.no_rewrite:
        print(f"{args.db} was rewritten: the deleted text no longer sits in the file's free space")
    if done.left:
        print(f"{len(done.left)} thing(s) could not be removed: see the LEFT: lines", file=sys.stderr)
        return 1
    return 0


def cmd_datasets_list(args: argparse.Namespace) -> int:
    from storage.datasets import list_datasets

    rows = list_datasets(args.db)
    if not rows:
        print(f"no datasets in {args.db}")
        return 0
    print(f"{'name':<24} {'version':>7} {'documents':>10} {'entities':>9} {'errors':>7}  created")
    for d in rows:
        print(
            f"{d['name']:<24} {d['version']:>7} {d['n_documents']:>10,} {d['n_entities']:>9,} "
            f"{d['n_errors']:>7,}  {d['created_at']:%Y-%m-%d %H:%M}"
        )
    return 0
