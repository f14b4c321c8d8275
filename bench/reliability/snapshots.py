"""What a run left in the database, by content (never by generated ids or timestamps), and the checks
that nothing half-written is visible.

- a dataset: documents ``(doc_id, split, text)``, gold entities ``(doc_id, start, end, label, mention)``,
  problems ``(file, line, record, code, severity, message)`` of its latest version;
- a prediction run: documents ``doc_id`` and entities ``(doc_id, start, end, label, text)`` with their
  confidence (compared to 1e-6);
- a model: its predictions over the dev split, in the same form.

Reads go through storage's functions where one exists; the consistency checks are read-only SQL.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from storage.db import open_db

TOLERANCE = 1e-6


def dataset_content(db: Path, name: str) -> dict:
    from storage.datasets import load_documents, load_problems

    docs = load_documents(db, name)
    return {
        "docs": Counter((d.doc_id, d.split, d.text) for d in docs),
        "ents": Counter(
            (d.doc_id, e.start, e.end, e.label, d.text[e.start : e.end]) for d in docs for e in d.entities
        ),
        "problems": Counter(
            (p.file, p.line, p.record, p.code, p.severity, p.message) for p in load_problems(db, name)
        ),
    }


def versions(db: Path, name: str) -> list[int]:
    from storage.datasets import list_datasets

    return sorted(d["version"] for d in list_datasets(db) if d["name"] == name)


def counter_diff(ref: dict, got: dict) -> tuple[int, int]:
    """(rows of ``ref`` missing from ``got``, rows of ``got`` not in ``ref``), over every part."""
    lost = sum(sum((ref[k] - got.get(k, Counter())).values()) for k in ref)
    extra = sum(sum((got[k] - ref.get(k, Counter())).values()) for k in got)
    return lost, extra


_HALF_DATASET_SQL = {
    "documents without their dataset version": "SELECT count(*) FROM documents d WHERE NOT EXISTS "
    "(SELECT 1 FROM datasets s WHERE s.name = d.dataset AND s.version = d.version)",
    "gold entities without their document": "SELECT count(*) FROM gold_entities e WHERE NOT EXISTS "
    "(SELECT 1 FROM documents d WHERE (d.dataset, d.version, d.doc_id) = (e.dataset, e.version, e.doc_id))",
    "problems without their dataset version": "SELECT count(*) FROM ingest_problems p WHERE NOT EXISTS "
    "(SELECT 1 FROM datasets s WHERE s.name = p.dataset AND s.version = p.version)",
    "dataset versions whose document count is not their documents'": "SELECT count(*) FROM datasets s "
    "WHERE s.n_documents <> (SELECT count(*) FROM documents d WHERE d.dataset = s.name "
    "AND d.version = s.version)",
    "dataset versions whose entity count is not their entities'": "SELECT count(*) FROM datasets s "
    "WHERE s.n_entities <> (SELECT count(*) FROM gold_entities e WHERE e.dataset = s.name "
    "AND e.version = s.version)",
}

_HALF_PREDICTION_SQL = {
    "completed prediction runs whose document count is not their documents'": "SELECT count(*) FROM "
    "prediction_runs r WHERE r.status = 'completed' AND r.n_documents <> (SELECT count(*) FROM "
    "predicted_documents d WHERE d.pred_run_id = r.pred_run_id)",
    "completed prediction runs whose entity count is not their entities'": "SELECT count(*) FROM "
    "prediction_runs r WHERE r.status = 'completed' AND r.n_entities <> (SELECT count(*) FROM "
    "predicted_entities e WHERE e.pred_run_id = r.pred_run_id)",
    "predicted documents without their run": "SELECT count(*) FROM predicted_documents d WHERE NOT EXISTS "
    "(SELECT 1 FROM prediction_runs r WHERE r.pred_run_id = d.pred_run_id)",
    "predicted entities without their document": "SELECT count(*) FROM predicted_entities e WHERE NOT "
    "EXISTS (SELECT 1 FROM predicted_documents d WHERE (d.pred_run_id, d.doc_id) = "
    "(e.pred_run_id, e.doc_id))",
}


def half_written(db: Path) -> list[str]:
    """What is visible half-written: each check's name with its count, when not 0. Opening the file is
    the first check (a file that does not open is reported as such)."""
    checks = [(("datasets",), _HALF_DATASET_SQL), (("prediction_runs",), _HALF_PREDICTION_SQL)]
    try:
        with open_db(db, read_only=True, wait_s=5) as con:
            tables = {
                r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()
            }
            found = []
            for needed, sqls in checks:
                if not set(needed) <= tables:
                    continue
                for what, sql in sqls.items():
                    n = con.execute(sql).fetchone()[0]
                    if n:
                        found.append(f"{what}: {n}")
            return found
    except Exception as exc:  # the point of the check: any failure to open or read is a finding
        return [f"the database does not open or read: {type(exc).__name__}: {exc}"]


def prediction_runs(db: Path) -> list[dict]:
    from storage.db import rows

    with open_db(db, read_only=True, wait_s=5) as con:
        return rows(con, "SELECT pred_run_id, status, n_documents, n_entities FROM prediction_runs")


def prediction_content(db: Path, pred_run_id: str) -> dict:
    with open_db(db, read_only=True, wait_s=5) as con:
        sql = "SELECT doc_id FROM predicted_documents WHERE pred_run_id = ?"
        docs = {r[0] for r in con.execute(sql, [pred_run_id]).fetchall()}
        ents = {
            tuple(r[:5]): r[5]
            for r in con.execute(
                'SELECT doc_id, start, "end", label, text, confidence FROM predicted_entities '
                "WHERE pred_run_id = ?",
                [pred_run_id],
            ).fetchall()
        }
    return {"docs": docs, "ents": ents}


def compare_predictions(ref: dict, got: dict) -> tuple[int, int, float]:
    """(rows lost, rows extra, largest confidence difference) of two ``{"docs", "ents"}`` snapshots;
    an entity whose confidence differs by more than 1e-6 counts as lost."""
    lost = len(ref["docs"] - got["docs"]) + len(set(ref["ents"]) - set(got["ents"]))
    extra = len(got["docs"] - ref["docs"]) + len(set(got["ents"]) - set(ref["ents"]))
    worst = 0.0
    for k in set(ref["ents"]) & set(got["ents"]):
        diff = abs(float(ref["ents"][k]) - float(got["ents"][k]))
        worst = max(worst, diff)
        lost += diff > TOLERANCE
    return lost, extra, worst


def model_predictions(model_dir: Path, db: Path, split: str = "dev") -> dict:
    """A model's predictions over a stored split, in the form of :func:`prediction_content`."""
    import torch

    from ner_core.artifacts.modeldir import load_model_dir
    from ner_core.inference.tagger import Tagger
    from storage.datasets import load_documents

    torch.set_num_threads(1)
    docs = load_documents(db, "sample", split)
    tagger = Tagger.from_loaded(load_model_dir(model_dir))
    ents = {}
    for d, preds in zip(docs, tagger.predict([d.text for d in docs]), strict=True):
        for e in preds:
            ents[(d.doc_id, e.start, e.end, e.label, e.text)] = e.confidence
    return {"docs": {d.doc_id for d in docs}, "ents": ents}
