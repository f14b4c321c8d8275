"""Evaluation reports in DuckDB: a summary row, per-type scores and error counts per evaluation.

The ``*_frame`` reads behind the dashboard return pandas DataFrames (:func:`storage.db.read_frame`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa

from storage.db import now as _now
from storage.db import open_db, read_frame, transaction
from storage.db import rows as _rows

if TYPE_CHECKING:
    import pandas as pd


_TYPE_SCHEMA = pa.schema(
    [
        ("eval_id", pa.string()),
        ("label", pa.string()),
        ("precision", pa.float64()),
        ("recall", pa.float64()),
        ("f1", pa.float64()),
        ("support", pa.int32()),
        ("predicted", pa.int32()),
    ]
)
_ERROR_SCHEMA = pa.schema(
    [("eval_id", pa.string()), ("label", pa.string()), ("kind", pa.string()), ("n", pa.int32())]
)
# the report's summary figures, stored in the evaluations columns of the same names
_SUMMARY = (
    "scheme",
    "n_sentences",
    "n_chars",
    "char_accuracy",
    "sentence_accuracy",
    "precision",
    "recall",
    "f1",
    "macro_precision",
    "macro_recall",
    "macro_f1",
)
_INSERT_EVALUATION = (
    "INSERT INTO evaluations (eval_id, run_id, model_dir, dataset, dataset_version, split, created_at, "
    + ", ".join(f'"{c}"' for c in _SUMMARY)
    + f", report) VALUES ({', '.join('?' * (8 + len(_SUMMARY)))})"
)


def _report_tables(eval_id: str, report) -> tuple[pa.Table, pa.Table]:
    """The report's per-type scores and error counts as Arrow tables shaped like their DuckDB tables."""
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
        schema=_TYPE_SCHEMA,
    )
    errors = pa.Table.from_pylist(
        [
            {"eval_id": eval_id, "label": label, "kind": kind, "n": n}
            for label, kinds in report.errors.items()
            for kind, n in kinds.items()
        ],
        schema=_ERROR_SCHEMA,
    )
    return types, errors


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
    """Store an :class:`ner_core.metrics.EvaluationReport`: summary row, per-type rows, error counts.

    Replaces whatever ``eval_id`` had stored, in one transaction.
    """
    types, errors = _report_tables(eval_id, report)
    summary = [getattr(report, name) for name in _SUMMARY]
    with open_db(db_path) as con, transaction(con):
        for table in ("evaluations", "evaluation_types", "evaluation_errors"):
            con.execute(f"DELETE FROM {table} WHERE eval_id = ?", [eval_id])
        con.execute(
            _INSERT_EVALUATION,
            [eval_id, run_id, str(model_dir), dataset, dataset_version, split, _now(), *summary]
            + [report.model_dump_json()],
        )
        con.register("_types", types)
        con.execute("INSERT INTO evaluation_types SELECT * FROM _types")
        con.register("_errors", errors)
        con.execute("INSERT INTO evaluation_errors SELECT * FROM _errors")


def evaluations(db_path: str | Path, run_id: str | None = None) -> list[dict]:
    with open_db(db_path, read_only=True) as con:
        if run_id is None:
            return _rows(con, "SELECT * EXCLUDE (report) FROM evaluations ORDER BY created_at DESC")
        return _rows(
            con,
            "SELECT * EXCLUDE (report) FROM evaluations WHERE run_id = ? ORDER BY created_at DESC",
            [run_id],
        )


# ---- reads for the dashboard
def evaluations_frame(db_path: str | Path, *, wait_s: float = 10.0) -> pd.DataFrame:
    """Evaluation summaries without the report JSON, newest first."""
    return read_frame(
        db_path,
        """
        SELECT eval_id, run_id, dataset, dataset_version, split, created_at, scheme, n_sentences, n_chars,
               char_accuracy, sentence_accuracy, "precision", recall, f1, macro_precision, macro_recall,
               macro_f1, model_dir
        FROM evaluations ORDER BY created_at DESC, eval_id
        """,
        wait_s=wait_s,
    )


def evaluation_report(db_path: str | Path, eval_id: str, *, wait_s: float = 10.0) -> dict:
    """The stored :class:`ner_core.metrics.EvaluationReport` of ``eval_id`` as a plain dict (``{}`` when
    none was stored); ``KeyError`` when there is no such evaluation."""
    with open_db(db_path, read_only=True, wait_s=wait_s) as con:
        row = con.execute("SELECT report FROM evaluations WHERE eval_id = ?", [eval_id]).fetchone()
    if row is None:
        raise KeyError(f"no evaluation {eval_id!r} in {db_path}")
    return json.loads(row[0]) if row[0] else {}


def evaluation_types_frame(db_path: str | Path, eval_id: str, *, wait_s: float = 10.0) -> pd.DataFrame:
    """Per-label precision, recall, F1, support and predicted count of ``eval_id``, by label."""
    return read_frame(
        db_path,
        'SELECT label, "precision", recall, f1, support, predicted FROM evaluation_types '
        "WHERE eval_id = ? ORDER BY label",
        [eval_id],
        wait_s=wait_s,
    )


def evaluation_errors_frame(db_path: str | Path, eval_id: str, *, wait_s: float = 10.0) -> pd.DataFrame:
    """Error counts of ``eval_id`` in long form: ``label``, ``kind``, ``n``, one row per stored pair."""
    return read_frame(
        db_path, "SELECT label, kind, n FROM evaluation_errors WHERE eval_id = ?", [eval_id], wait_s=wait_s
    )
