"""What an export to an annotation tool reads: a prediction run's documents and entities.

The writers (:mod:`ner_core.data.formats.label_studio`, :mod:`ner_core.data.formats.doccano`) take the
documents as returned here; offsets are code points, as stored. Every entity is given, overlapping ones
too: a span run's nested entities (``decoder`` ``span``) reach the tool, which holds overlapping spans, and
come back through its reader.
"""

from __future__ import annotations

from pathlib import Path

from storage.db import open_db
from storage.predictions import unknown_prediction_run
from storage.reviews import run_decoder

__all__ = ["prediction_run_export"]


def prediction_run_export(db_path: str | Path, pred_run_id: str, *, wait_s: float = 10.0) -> dict:
    """A prediction run for export: ``{"pred_run_id", "labels", "documents", "decoder", "overlapping"}``.

    ``documents`` are ``{"doc_id", "text", "entities": [{"start", "end", "label", "text",
    "confidence"}]}``, most uncertain first when the run stored a per-document uncertainty (then by
    doc_id); ``labels`` are the run's training labels (when known) and every predicted label, sorted;
    ``decoder`` the run's (:func:`storage.reviews.run_decoder`); ``overlapping`` how many entities overlap
    an earlier one of their document (a span run's nested entities; all of them are in ``documents``).
    ``KeyError`` when the database has no such prediction run.
    """
    with open_db(db_path, read_only=True, wait_s=wait_s) as con:
        run = con.execute(
            "SELECT r.run_id, d.labels FROM prediction_runs p LEFT JOIN runs r ON r.run_id = p.run_id "
            "LEFT JOIN datasets d ON d.name = r.dataset AND d.version = r.dataset_version "
            "WHERE p.pred_run_id = ?",
            [pred_run_id],
        ).fetchone()
        if run is None:
            raise KeyError(unknown_prediction_run(con, pred_run_id, db_path))
        has_uncertainty = con.execute(
            "SELECT count(*) FROM information_schema.columns "
            "WHERE table_name = 'predicted_documents' AND column_name = 'uncertainty'"
        ).fetchone()[0]
        order = "uncertainty DESC NULLS LAST, doc_id" if has_uncertainty else "doc_id"
        docs = con.execute(
            f"SELECT doc_id, text FROM predicted_documents WHERE pred_run_id = ? ORDER BY {order}",
            [pred_run_id],
        ).fetchall()
        ents = con.execute(
            'SELECT doc_id, "start", "end", label, text, confidence FROM predicted_entities '
            'WHERE pred_run_id = ? ORDER BY doc_id, "start", "end"',
            [pred_run_id],
        ).fetchall()
        decoder = run_decoder(con, pred_run_id)
    by_doc: dict[str, list[dict]] = {doc_id: [] for doc_id, _ in docs}
    for doc_id, s, e, label, text, conf in ents:
        by_doc[doc_id].append({"start": s, "end": e, "label": label, "text": text, "confidence": conf})
    labels = set(run[1] or []) | {e[3] for e in ents}
    return {
        "pred_run_id": pred_run_id,
        "labels": sorted(labels),
        "documents": [{"doc_id": d, "text": t, "entities": by_doc[d]} for d, t in docs],
        "decoder": decoder,
        "overlapping": sum(_n_overlapping(es) for es in by_doc.values()),
    }


def _n_overlapping(ents: list[dict]) -> int:
    """How many of ``ents`` (sorted by start, end) overlap an earlier one."""
    n, end = 0, -1
    for e in ents:
        n += e["start"] < end
        end = max(end, e["end"])
    return n
