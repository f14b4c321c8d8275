"""Evaluation reports in DuckDB: a summary row, per-type scores and error counts per evaluation."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from storage.db import now as _now
from storage.db import open_db
from storage.db import rows as _rows


def save_evaluation(
    db_path: str | Path,
    eval_id: str,
    report,
    *,
    model_dir: str | Path,
    dataset: str,
    split: str | None,
    run_id: str | None = None,
    dataset_version: int | None = None,
) -> None:
    """Store an :class:`ner_core.metrics.EvaluationReport`: summary row, per-type rows, error counts."""
    types = pa.Table.from_pylist(
        [
            {
                "eval_id": eval_id,
                "label": t.label,
                "precision": t.precision,
                "recall": t.recall,
                "f1": t.f1,
                "support": t.support,
                "predicted": t.predicted,
            }
            for t in report.per_type
        ],
        schema=pa.schema(
            [
                ("eval_id", pa.string()),
                ("label", pa.string()),
                ("precision", pa.float64()),
                ("recall", pa.float64()),
                ("f1", pa.float64()),
                ("support", pa.int32()),
                ("predicted", pa.int32()),
            ]
        ),
    )
    errors = pa.Table.from_pylist(
        [
            {"eval_id": eval_id, "label": label, "kind": kind, "n": n}
            for label, kinds in report.errors.items()
            for kind, n in kinds.items()
        ],
        schema=pa.schema(
            [("eval_id", pa.string()), ("label", pa.string()), ("kind", pa.string()), ("n", pa.int32())]
        ),
    )
    with open_db(db_path) as con:
        con.execute("BEGIN")
        for table in ("evaluations", "evaluation_types", "evaluation_errors"):
            con.execute(f"DELETE FROM {table} WHERE eval_id = ?", [eval_id])
        con.execute(
            "INSERT INTO evaluations (eval_id, run_id, model_dir, dataset, dataset_version, split, "
            'created_at, scheme, n_sentences, n_chars, char_accuracy, sentence_accuracy, "precision", '
            "recall, f1, macro_precision, macro_recall, macro_f1, report) "
            f"VALUES ({', '.join('?' * 19)})",
            [
                eval_id,
                run_id,
                str(model_dir),
                dataset,
                dataset_version,
                split,
                _now(),
                report.scheme,
                report.n_sentences,
                report.n_chars,
                report.char_accuracy,
                report.sentence_accuracy,
                report.precision,
                report.recall,
                report.f1,
                report.macro_precision,
                report.macro_recall,
                report.macro_f1,
                report.model_dump_json(),
            ],
        )
        con.register("_types", types)
        con.execute("INSERT INTO evaluation_types SELECT * FROM _types")
        con.register("_errors", errors)
        con.execute("INSERT INTO evaluation_errors SELECT * FROM _errors")
        con.execute("COMMIT")


def evaluations(db_path: str | Path, run_id: str | None = None) -> list[dict]:
    with open_db(db_path, read_only=True) as con:
        if run_id is None:
            return _rows(con, "SELECT * EXCLUDE (report) FROM evaluations ORDER BY created_at DESC")
        return _rows(
            con,
            "SELECT * EXCLUDE (report) FROM evaluations WHERE run_id = ? ORDER BY created_at DESC",
            [run_id],
        )
