"""``ner review export``: the documents reviewed so far in a prediction run, corrected, stored as the next
version of a dataset (the review loop's way back into training). A span run's nested entities are kept (the
outermost as gold, the others in ``dropped_spans``, where a span-decoder training reads them; the printed
``nested`` counts them); a flat run's document whose entities overlap is left out, as before."""

from __future__ import annotations

import argparse

from app.commands.shared import Parser, add_common, print_json


def add_parser(sub) -> None:
    sp = sub.add_parser("review", help="the review loop: export reviewed predictions as gold")
    rsub = sp.add_subparsers(dest="action", required=True, parser_class=Parser)
    ex = add_common(
        rsub.add_parser(
            "export", help="store the documents reviewed so far, corrected, as the next dataset version"
        )
    )
    ex.add_argument("--pred-run", required=True, metavar="ID", help="the prediction run that was reviewed")
    ex.add_argument("--name", required=True, metavar="DATASET", help="dataset to store the export as")
    ex.add_argument(
        "--split",
        default="train",
        choices=["train", "dev", "test"],
        help="split of the exported documents (default %(default)s; train leaves out dev/test texts)",
    )
    ex.set_defaults(func=cmd_review_export)


def cmd_review_export(args: argparse.Namespace) -> int:
    from flows import review

    flow = review.export_step if args.no_prefect else review.export_reviews_flow
    out = flow(db_path=args.db, pred_run_id=args.pred_run, name=args.name, split=args.split)
    print_json(out)
    return 0
