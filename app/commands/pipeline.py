"""``ner pipeline``: ingest -> train -> test -> predict in one flow, then a summary with one SQL query over
the predicted entities (:func:`run_pipeline`, which ``ner demo`` runs on the bundled corpus)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from app.commands.config_options import add_config_args, build_config
from app.commands.shared import add_common
from ner_core.config import NERConfig

if TYPE_CHECKING:
    from flows.contracts import PipelineSummary


def add_parser(sub) -> None:
    sp = add_common(sub.add_parser("pipeline", help="ingest -> train -> test -> predict in one flow"))
    sp.add_argument("--train", required=True), sp.add_argument("--dev", required=True)
    sp.add_argument("--test", required=True)
    sp.add_argument("--predict-files", nargs="+", required=True)
    sp.add_argument("--runs-root", default="runs")
    add_config_args(sp)
    sp.set_defaults(func=cmd_pipeline)


def cmd_pipeline(args: argparse.Namespace) -> int:
    config = build_config(args)
    return run_pipeline(args, config, args.train, args.dev, args.test, args.predict_files)


def run_pipeline(args, config: NERConfig, train: str, dev: str, test: str, predict_files: list[str]) -> int:
    """The chain as a Prefect flow (or its steps with ``--no-prefect``) into ``args.db``, then its summary."""
    from flows import pipeline, steps

    for f in (train, dev, test, *predict_files):
        if not Path(f).exists():
            raise FileNotFoundError(f"{f}: no such file")
    chain = steps.run_pipeline if args.no_prefect else pipeline.pipeline_flow
    out = chain(args.db, config, train, dev, test, predict_files, args.runs_root)
    _print_summary(args.db, out)
    return 0


def _print_summary(db: str, out: PipelineSummary) -> None:
    from storage import predictions as predictions_db

    ev, pr, tr = out.evaluate, out.predict, out.train
    print()
    print(
        f"run {tr.run_id}: best epoch {tr.best_epoch} ({tr.stopped_reason}), "
        f"{tr.seconds} s, model in {tr.model_dir}"
    )
    print(
        f"test: entity F1 {ev.f1 * 100:.2f}  (P {ev.precision * 100:.2f}, R {ev.recall * 100:.2f}), "
        f"char accuracy {ev.char_accuracy * 100:.2f}, sentence accuracy {ev.sentence_accuracy * 100:.2f}"
    )
    print(
        f"predicted {pr.n_entities} entities in {pr.n_documents} documents "
        f"({pr.n_chars} characters) -> {db}, prediction run {pr.pred_run_id}"
    )
    print(f"\nSQL> {predictions_db.LABEL_EXAMPLES_SQL.replace('?', repr(pr.pred_run_id))};")
    for row in predictions_db.label_examples(db, pr.pred_run_id):
        examples = row["examples"] if len(row["examples"]) <= 60 else row["examples"][:60] + "…"
        print(f"  {row['label']:<6} {row['n']:>5}  {examples}")
    print(f"\nOpen the dashboard:  ner ui --db {db}    (or: make ui)")
