"""Evaluation reports in DuckDB: a summary row, per-type scores and error counts per evaluation, and, where
the report has them, its calibration (reliability bins, precision/recall at confidence thresholds) and its
(gold label, predicted label) counts.

The ``*_frame`` reads behind the dashboard return pandas DataFrames (:func:`storage.db.read_frame`; those
that read migration 7's columns and tables migrate an older file first, :func:`storage.db.read_current`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa

from storage.db import now as _now
from storage.db import open_db, read_current, read_frame, transaction
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
_RELIABILITY_SCHEMA = pa.schema(
    [
        ("eval_id", pa.string()),
        ("kind", pa.string()),
        ("bin", pa.int32()),
        ("lo", pa.float64()),
        ("hi", pa.float64()),
        ("n", pa.int64()),
        ("mean_confidence", pa.float64()),
        ("accuracy", pa.float64()),
    ]
)
_THRESHOLD_SCHEMA = pa.schema(
    [
        ("eval_id", pa.string()),
        ("threshold", pa.float64()),
        ("precision", pa.float64()),
        ("recall", pa.float64()),
        ("f1", pa.float64()),
        ("n_kept", pa.int64()),
    ]
)
_CONFUSION_SCHEMA = pa.schema(
    [("eval_id", pa.string()), ("gold_label", pa.string()), ("pred_label", pa.string()), ("n", pa.int64())]
)
# the tables keyed by eval_id that save_evaluation fills (and replaces), children first
_CHILD_TABLES = (
    "evaluation_types",
    "evaluation_errors",
    "evaluation_reliability",
    "evaluation_thresholds",
    "evaluation_confusion",
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
# the calibration's figures, stored in the evaluations columns of these names (NULL without calibration)
_CALIBRATION = {
    "temperature": "temperature",
    "ece_raw": "ece_raw",
    "ece_calibrated": "ece_calibrated",
    "calibration_precision": "precision",
}
_INSERT_EVALUATION = (
    "INSERT INTO evaluations (eval_id, run_id, model_dir, dataset, dataset_version, split, created_at, "
    + ", ".join(f'"{c}"' for c in (*_SUMMARY, *_CALIBRATION))
    + f", report) VALUES ({', '.join('?' * (8 + len(_SUMMARY) + len(_CALIBRATION)))})"
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


def _calibration_tables(eval_id: str, report) -> tuple[pa.Table, pa.Table, pa.Table]:
    """The report's reliability bins (raw and calibrated), threshold points and confusion cells as Arrow
    tables shaped like their DuckDB tables; empty where the report has none (an evaluation without
    confidences, or a report made before calibration was measured)."""
    cal = getattr(report, "calibration", None)
    bins = []
    if cal is not None:
        for kind, kind_bins in (("raw", cal.bins_raw), ("calibrated", cal.bins_calibrated)):
            bins += [
                {
                    "eval_id": eval_id,
                    "kind": kind,
                    "bin": i,
                    "lo": b.lo,
                    "hi": b.hi,
                    "n": b.n,
                    "mean_confidence": b.mean_confidence,
                    "accuracy": b.accuracy,
                }
                for i, b in enumerate(kind_bins)
            ]
    thresholds = [
        {
            "eval_id": eval_id,
            "threshold": t.threshold,
            "precision": t.precision,
            "recall": t.recall,
            "f1": t.f1,
            "n_kept": t.n_kept,
        }
        for t in (cal.thresholds if cal is not None else [])
    ]
    confusion = [
        {"eval_id": eval_id, "gold_label": c.gold, "pred_label": c.pred, "n": c.n}
        for c in getattr(report, "confusion", None) or []
    ]
    return (
        pa.Table.from_pylist(bins, schema=_RELIABILITY_SCHEMA),
        pa.Table.from_pylist(thresholds, schema=_THRESHOLD_SCHEMA),
        pa.Table.from_pylist(confusion, schema=_CONFUSION_SCHEMA),
    )


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
    """Store an :class:`ner_core.metrics.EvaluationReport`: summary row, per-type rows, error counts, and
    the report's calibration (``report.calibration``: its figures in the summary row, its reliability bins
    and threshold points) and confusion cells (``report.confusion``) where it has them.

    Replaces whatever ``eval_id`` had stored, in one transaction.
    """
    tables = (*_report_tables(eval_id, report), *_calibration_tables(eval_id, report))
    children = dict(zip(_CHILD_TABLES, tables, strict=True))
    summary = [getattr(report, name) for name in _SUMMARY]
    cal = getattr(report, "calibration", None)
    calibration = [None if cal is None else getattr(cal, name) for name in _CALIBRATION.values()]
    with open_db(db_path) as con, transaction(con):
        for table in ("evaluations", *_CHILD_TABLES):
            con.execute(f"DELETE FROM {table} WHERE eval_id = ?", [eval_id])
        con.execute(
            _INSERT_EVALUATION,
            [eval_id, run_id, str(model_dir), dataset, dataset_version, split, _now(), *summary, *calibration]
            + [report.model_dump_json()],
        )
        for table, rows in children.items():
            con.register("_rows", rows)
            con.execute(f"INSERT INTO {table} SELECT * FROM _rows")
            con.unregister("_rows")


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
def _current_frame(db_path: str | Path, sql: str, params: list, wait_s: float) -> pd.DataFrame:
    """``sql``'s rows as a DataFrame, read from the database at this code's schema (a file written by older
    code is migrated first: the calibration columns and tables are migration 7's)."""
    with read_current(db_path, wait_s=wait_s) as con:
        return con.execute(sql, params).df()


def evaluations_frame(db_path: str | Path, *, wait_s: float = 10.0) -> pd.DataFrame:
    """Evaluation summaries without the report JSON, newest first; the calibration figures (temperature,
    ECE raw and calibrated, the precision it ran in) last, missing for an evaluation without them."""
    return _current_frame(
        db_path,
        """
        SELECT eval_id, run_id, dataset, dataset_version, split, created_at, scheme, n_sentences, n_chars,
               char_accuracy, sentence_accuracy, "precision", recall, f1, macro_precision, macro_recall,
               macro_f1, model_dir, temperature, ece_raw, ece_calibrated, calibration_precision
        FROM evaluations ORDER BY created_at DESC, eval_id
        """,
        [],
        wait_s,
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


def reliability_frame(db_path: str | Path, eval_id: str, *, wait_s: float = 10.0) -> pd.DataFrame:
    """The reliability table of ``eval_id``: ``kind`` ('raw' then 'calibrated'), ``bin``, ``lo``, ``hi``,
    ``n``, ``mean_confidence``, ``accuracy``, by kind and bin; empty for an evaluation without calibration."""
    return _current_frame(
        db_path,
        "SELECT kind, bin, lo, hi, n, mean_confidence, accuracy FROM evaluation_reliability "
        "WHERE eval_id = ? ORDER BY kind = 'calibrated', bin",
        [eval_id],
        wait_s,
    )


def thresholds_frame(db_path: str | Path, eval_id: str, *, wait_s: float = 10.0) -> pd.DataFrame:
    """Precision, recall, F1 and entities kept (``n_kept``) of ``eval_id`` when only entities whose
    calibrated confidence is at least ``threshold`` are kept, by threshold; empty without calibration."""
    return _current_frame(
        db_path,
        'SELECT threshold, "precision", recall, f1, n_kept FROM evaluation_thresholds '
        "WHERE eval_id = ? ORDER BY threshold",
        [eval_id],
        wait_s,
    )


def confusion_frame(db_path: str | Path, eval_id: str, *, wait_s: float = 10.0) -> pd.DataFrame:
    """The (gold label, predicted label) counts of ``eval_id`` in long form: ``gold_label``, ``pred_label``,
    ``n``, one row per non-zero cell ('O': no entity on that span), by gold then predicted label."""
    return _current_frame(
        db_path,
        "SELECT gold_label, pred_label, n FROM evaluation_confusion WHERE eval_id = ? "
        "ORDER BY gold_label, pred_label",
        [eval_id],
        wait_s,
    )
