"""``ner runs``: the training runs, the production one marked; ``ner runs --predictions``: the prediction
runs (the ids ``ner export --pred-run`` and ``ner review export --pred-run`` take)."""

from __future__ import annotations

import argparse

from app.commands.shared import add_common

#: the longest input reference shown (file lists and SQL texts can be long)
INPUT_WIDTH = 60


def add_parser(sub) -> None:
    sp = add_common(sub.add_parser("runs", help="list training runs (--predictions: prediction runs)"))
    sp.add_argument(
        "--predictions",
        action="store_true",
        help="list the prediction runs instead: id, status, model run, input, documents, entities",
    )
    sp.set_defaults(func=cmd_runs)


def cmd_runs(args: argparse.Namespace) -> int:
    if args.predictions:
        return _prediction_runs(args.db)
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


def _prediction_runs(db: str) -> int:
    from storage import predictions as predictions_db

    rows = predictions_db.list_prediction_runs(db)
    if not rows:
        print(f"no prediction runs in {db}")
    for r in rows:
        ref = " ".join(str(r["input_ref"]).split())
        ref = ref if len(ref) <= INPUT_WIDTH else ref[: INPUT_WIDTH - 3] + "..."
        print(
            f"{r['pred_run_id']}  {r['status']:<9} model run {r['run_id'] or '-'}  "
            f"{_count(r['n_documents'], 'document')}, {_count(r['n_entities'], 'entity', 'entities')}  "
            f"{r['input_kind']}: {ref}"
        )
    return 0


def _count(n: int | None, one: str, many: str | None = None) -> str:
    """``1 document``, ``2 documents``; ``- documents`` while a run has not counted yet."""
    if n is None:
        return f"- {many or one + 's'}"
    return f"{n} {one if n == 1 else many or one + 's'}"
