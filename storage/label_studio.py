"""Which stored prediction run answered Label Studio for a task (``ner serve --label-studio``).

The backend stores its answers for one Label Studio project as prediction runs of one model over the input
``label-studio project <id>``: the run ``pred_run_id`` (:func:`storage.predictions.prediction_run_id`) and,
once that run holds review events (a reviewed run is never added to), ``<id>-r2``, ``-r3``... Each task is
one document, ``doc_id`` ``task-<task id>``. A task's annotation becomes review events of the run that holds
its document; :func:`task_documents` finds it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from storage.db import read_current
from storage.db import rows as _rows

__all__ = ["task_documents"]


def task_documents(
    db_path: str | Path, pred_run_id: str, input_ref: str, doc_ids: Sequence[str], *, wait_s: float = 10.0
) -> dict[str, dict]:
    """``{doc_id: {"pred_run_id", "text"}}`` for the ``doc_ids`` stored in ``pred_run_id`` or one of its
    ``-rN`` successors over ``input_ref``; where several hold a document, the one started last. Documents
    not stored are left out (an empty dict when the database does not exist yet)."""
    if not doc_ids or (str(db_path) != ":memory:" and not Path(db_path).exists()):
        return {}
    with read_current(db_path, wait_s) as con:
        rows = _rows(
            con,
            "SELECT d.doc_id, d.pred_run_id, d.text FROM predicted_documents d "
            "JOIN prediction_runs p USING (pred_run_id) "
            "WHERE p.input_ref = ? AND (p.pred_run_id = ? OR starts_with(p.pred_run_id, ? || '-r')) "
            "AND list_contains(?, d.doc_id) ORDER BY p.started_at, p.pred_run_id",
            [input_ref, pred_run_id, pred_run_id, list(doc_ids)],
        )
    return {r["doc_id"]: {"pred_run_id": r["pred_run_id"], "text": r["text"]} for r in rows}
