"""Prediction runs and their documents and entities in DuckDB; what a training run has not tagged yet.

A prediction run is written one way, by :class:`PredictionRunWriter` (start: resume or replace; one
transaction per batch of documents; completed or failed). Bulk rows go in through Arrow.

A prediction run with review events (``storage.reviews``) is never replaced, added to or deleted: the
reviews point at the entities the reviewer saw. Re-running the same model on the same input then writes a
new run, ``<id>-r2`` (``-r3``, ...: the first without review events), and the reviewed one keeps its rows.

The model directory is stored absolute and read back absolute (older relative ones:
:func:`storage.runs.stored_path`). :func:`unknown_prediction_run` is the message for an id not stored,
naming the closest ones.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa

from storage.db import now as _now
from storage.db import open_db, read_current, read_frame, transaction
from storage.db import rows as _rows
from storage.query import query
from storage.runs import frame_with_stored_paths, unknown_id, with_stored_paths

_DOC_SCHEMA = pa.schema(
    [
        ("pred_run_id", pa.string()),
        ("doc_id", pa.string()),
        ("text", pa.string()),
        ("n_entities", pa.int32()),
        ("uncertainty", pa.float64()),
    ]
)


_ENT_SCHEMA = pa.schema(
    [
        ("pred_run_id", pa.string()),
        ("doc_id", pa.string()),
        ("start", pa.int32()),
        ("end", pa.int32()),
        ("label", pa.string()),
        ("text", pa.string()),
        ("confidence", pa.float64()),
        ("confidence_calibrated", pa.float64()),  # NULL: the model directory has no temperature
        ("from_dictionary", pa.bool_()),  # forced by a user dictionary (PredictedEntity.from_dictionary)
    ]
)


_ENT_COLUMNS = ", ".join(f'"{c}"' for c in _ENT_SCHEMA.names)


def get_prediction_run(db_path: str | Path, pred_run_id: str) -> dict | None:
    """The ``prediction_runs`` row of ``pred_run_id`` (``None`` when there is none or no database yet)."""
    if str(db_path) != ":memory:" and not Path(db_path).exists():
        return None
    with open_db(db_path, read_only=True) as con:
        if not con.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = 'prediction_runs'"
        ).fetchone()[0]:
            return None
        rows = _rows(con, "SELECT * FROM prediction_runs WHERE pred_run_id = ?", [pred_run_id])
    return with_stored_paths(db_path, rows[0]) if rows else None


def list_prediction_runs(db_path: str | Path) -> list[dict]:
    """Every prediction run, newest first: ``pred_run_id``, ``run_id``, ``status``, ``input_kind``,
    ``input_ref``, ``started_at``, ``n_documents``, ``n_entities``, ``model_dir`` (absolute)."""
    with open_db(db_path, read_only=True) as con:
        rows = _rows(
            con,
            "SELECT pred_run_id, run_id, status, input_kind, input_ref, started_at, n_documents, n_entities, "
            "model_dir FROM prediction_runs ORDER BY started_at DESC, pred_run_id",
        )
    return [with_stored_paths(db_path, r) for r in rows]


def unknown_prediction_run(con, pred_run_id: str, db_path: str | Path) -> str:
    """The message for a prediction run id that the database (open as ``con``) does not hold: ``no
    prediction run '<id>' in <db>``, the closest stored ids (or the newest) and the command that lists
    them. Raise it as the caller's error type (``KeyError(...)``, ``ValueError(...)``)."""
    known = [
        r[0]
        for r in con.execute(
            "SELECT pred_run_id FROM prediction_runs ORDER BY started_at DESC, pred_run_id"
        ).fetchall()
    ]
    return unknown_id("prediction run", pred_run_id, known, db_path, "ner runs --predictions")


def start_prediction_run(
    db_path: str | Path,
    pred_run_id: str,
    *,
    model_dir: str | Path,
    run_id: str | None,
    input_kind: str,
    input_ref: str,
    config_json: str | None,
    replace: bool,
) -> set[str]:
    """Register a prediction run; returns the doc_ids already stored for it (for resuming).

    ``replace=True`` deletes the run's earlier rows first (same model, same input: rows are replaced,
    never duplicated); ``replace=False`` keeps them and returns their doc_ids so the caller skips them.
    A run with review events is never replaced: ``ValueError`` (see :func:`unreviewed_run_id`).
    """
    if not pred_run_id:
        raise ValueError(f"expected a non-empty pred_run_id, got {pred_run_id!r}")
    if input_kind not in ("file", "dataset", "sql", "texts"):
        raise ValueError(f"input_kind must be file, dataset, sql or texts, got {input_kind!r}")
    model_path = str(Path(model_dir).resolve())  # absolute: found from any folder
    with open_db(db_path) as con:
        if replace and _n_review_events(con, pred_run_id):
            raise ValueError(
                f"prediction run {pred_run_id} has review events: it is never replaced (PredictionRunWriter "
                f"writes a new run, {pred_run_id}-r2 or later, instead)"
            )
        with transaction(con):
            if replace:
                con.execute("DELETE FROM predicted_entities WHERE pred_run_id = ?", [pred_run_id])
                con.execute("DELETE FROM predicted_documents WHERE pred_run_id = ?", [pred_run_id])
            con.execute("DELETE FROM prediction_runs WHERE pred_run_id = ?", [pred_run_id])
            con.execute(
                "INSERT INTO prediction_runs (pred_run_id, model_dir, run_id, input_kind, input_ref, config, "
                "status, started_at) VALUES (?, ?, ?, ?, ?, ?, 'running', ?)",
                [pred_run_id, model_path, run_id, input_kind, input_ref, config_json, _now()],
            )
            done = {
                r[0]
                for r in con.execute(
                    "SELECT doc_id FROM predicted_documents WHERE pred_run_id = ?", [pred_run_id]
                ).fetchall()
            }
    return done


def write_predictions(db_path: str | Path, pred_run_id: str, docs: Sequence[tuple]) -> int:
    """Store one batch: ``docs`` = [(doc_id, text, [PredictedEntity, ...], uncertainty), ...] (the
    uncertainty, the document's summed CRF token entropy or a span model's summed binary span entropy,
    may be left out or ``None``), in one transaction. A span run's entities may overlap.

    Idempotent per document: rows of these doc_ids already stored for the run are replaced. Returns the
    number of entity rows written.
    """
    if not docs:
        return 0
    doc_rows = {k: [] for k in _DOC_SCHEMA.names}
    ent_rows = {k: [] for k in _ENT_SCHEMA.names}
    for row in docs:
        if len(row) not in (3, 4):
            raise ValueError(f"expected (doc_id, text, entities[, uncertainty]) rows, got {len(row)} fields")
        doc_id, text, ents = row[:3]
        doc_rows["pred_run_id"].append(pred_run_id)
        doc_rows["doc_id"].append(doc_id)
        doc_rows["text"].append(text)
        doc_rows["n_entities"].append(len(ents))
        doc_rows["uncertainty"].append(row[3] if len(row) == 4 else None)
        for e in ents:
            for k, v in zip(
                _ENT_SCHEMA.names,
                (
                    pred_run_id,
                    doc_id,
                    e.start,
                    e.end,
                    e.label,
                    e.text,
                    e.confidence,
                    getattr(e, "confidence_calibrated", None),
                    bool(getattr(e, "from_dictionary", False)),
                ),
                strict=True,
            ):
                ent_rows[k].append(v)
    doc_table = pa.table(doc_rows, schema=_DOC_SCHEMA)  # built before the connection: the write is short
    ent_table = pa.table(ent_rows, schema=_ENT_SCHEMA)
    with open_db(db_path) as con:
        with transaction(con):
            con.register("_docs", doc_table)
            reviewed = con.execute(
                "SELECT min(doc_id) FROM review_events "
                "WHERE pred_run_id = ? AND doc_id IN (SELECT doc_id FROM _docs)",
                [pred_run_id],
            ).fetchone()[0]
            if reviewed is not None:
                raise ValueError(
                    f"prediction run {pred_run_id} has review events on document {reviewed!r}: its rows are "
                    f"never replaced (write a new prediction run)"
                )
            con.execute(
                "DELETE FROM predicted_entities "
                "WHERE pred_run_id = ? AND doc_id IN (SELECT doc_id FROM _docs)",
                [pred_run_id],
            )
            con.execute(
                "INSERT OR REPLACE INTO predicted_documents "
                "(pred_run_id, doc_id, text, n_entities, uncertainty) "
                "SELECT pred_run_id, doc_id, text, n_entities, uncertainty FROM _docs"
            )
            con.register("_ents", ent_table)
            con.execute(f"INSERT INTO predicted_entities ({_ENT_COLUMNS}) SELECT * FROM _ents")
    return len(ent_rows["doc_id"])


def finish_prediction_run(db_path: str | Path, pred_run_id: str, *, status: str, seconds: float) -> dict:
    with open_db(db_path) as con:
        con.execute(
            "UPDATE prediction_runs SET status = ?, finished_at = ?, seconds = ?, "
            "n_documents = (SELECT count(*) FROM predicted_documents WHERE pred_run_id = ?), "
            "n_chars = (SELECT coalesce(sum(length(text)), 0) FROM predicted_documents "
            "WHERE pred_run_id = ?), "
            "n_entities = (SELECT count(*) FROM predicted_entities WHERE pred_run_id = ?) "
            "WHERE pred_run_id = ?",
            [status, _now(), seconds, pred_run_id, pred_run_id, pred_run_id, pred_run_id],
        )
        return _rows(con, "SELECT * FROM prediction_runs WHERE pred_run_id = ?", [pred_run_id])[0]


def _n_review_events(con, pred_run_id: str) -> int:
    return int(
        con.execute("SELECT count(*) FROM review_events WHERE pred_run_id = ?", [pred_run_id]).fetchone()[0]
    )


def unreviewed_run_id(db_path: str | Path, pred_run_id: str) -> str:
    """``pred_run_id`` itself, or when that run has review events the first of ``<id>-r2``, ``<id>-r3``,
    ... that has none: where a re-run of the same model on the same input writes its rows."""
    with open_db(db_path) as con:
        candidate, n = pred_run_id, 1
        while _n_review_events(con, candidate):
            n += 1
            candidate = f"{pred_run_id}-r{n}"
        return candidate


def prediction_run_id(model_dir: str, input_ref: str, precision: str | None = None) -> str:
    """Same model + same input + same precision -> same id, so a re-run replaces its rows instead of
    duplicating them (unless the run has review events: :class:`PredictionRunWriter` then writes
    ``<id>-r2``), and an fp32 and a bf16 run of one input are two runs.

    The model is identified by :func:`ner_core.artifacts.modeldir.model_identity` (its metadata file,
    written once per save, with a timestamp) or, failing that, its resolved path; the input by
    ``input_ref`` (file paths, ``dataset/split`` or the SQL text).
    ``precision`` ``None`` or ``"fp32"`` gives the id of runs stored before precision was part of it.
    """
    if not isinstance(input_ref, str) or not input_ref:
        raise ValueError(f"expected a non-empty input_ref string, got {input_ref!r}")
    from ner_core.artifacts.modeldir import model_identity  # lazy: it imports torch

    ident = model_identity(model_dir)
    if ident is None:
        ident = str(Path(model_dir).resolve())
    key = f"{ident}\n{input_ref}" + (f"\nprecision={precision}" if precision not in (None, "fp32") else "")
    return "pred-" + hashlib.sha1(key.encode()).hexdigest()[:12]


#: the value a setting had when a stored run's config does not name it (runs stored before the span
#: decoder were all CRF runs; runs stored before calibration had no temperature)
_STORED_DEFAULTS = {"quantize": "none", "precision": "fp32", "decoder": "crf", "temperature": 1.0}
#: the settings that turn a model's scores into entities or their calibrated confidence (may not change
#: within one run: a calibrated column of two temperatures would read as one)
_DECODING_KEYS = ("decoder", "span_threshold", "overlap", "max_span_len", "temperature")


def _stored_setting(stored: Mapping[str, Any], key: str) -> Any:
    """A stored run's setting; ``precision`` of a run stored with the retired ``quantize`` maps onto it."""
    if key == "precision" and key not in stored and stored.get("quantize") == "int8":
        return "int8"
    return stored.get(key, _STORED_DEFAULTS.get(key))


def _resumable(prev: dict | None, settings: Mapping[str, Any]) -> bool:
    """A run left ``running`` or ``failed`` whose stored config has the same ``settings``."""
    if prev is None or prev["status"] not in ("running", "failed"):
        return False
    stored = json.loads(prev["config"]) if prev.get("config") else {}
    return {k: _stored_setting(stored, k) for k in settings} == dict(settings)


class PredictionRunWriter:
    """The one way to write a prediction run: start it, store batches, finish it completed or failed.

    Use it as a context manager::

        with PredictionRunWriter(db, pred_run_id, model_dir=..., run_id=..., input_kind="file",
                                 input_ref=..., settings={...}) as run:
            for batch in batches_of([d for d in docs if d.doc_id not in run.done]):
                run.write(rows_of(batch))
        run.row  # the finished prediction_runs row

    Entering starts the run. ``replace=None`` resumes a run left ``running`` or ``failed`` under the same
    ``settings`` (the values that change the predictions: compared with the stored ones) and replaces the
    run's rows otherwise; ``True`` always replaces; ``False`` always resumes (keeps the stored rows).
    ``done`` holds the doc_ids already stored (empty after a replace), ``resumed`` says which it was.
    When the run ``pred_run_id`` has review events it is left as it is and the writer writes
    :func:`unreviewed_run_id` instead: ``pred_run_id`` then names that run, ``reviewed_run`` the kept one
    (``None`` otherwise; stored in the new run's config as ``reviewed_run``).
    The run's stored config is ``settings`` followed by ``extra`` (stored, never compared).
    Each :meth:`write` is one transaction. Leaving the block finishes the run as ``completed``; an
    exception finishes it as ``failed`` and propagates. ``seconds`` count from ``t0`` (a
    ``time.perf_counter()`` value; default: when the writer was made).
    """

    def __init__(
        self,
        db_path: str | Path,
        pred_run_id: str,
        *,
        model_dir: str | Path,
        run_id: str | None,
        input_kind: str,
        input_ref: str,
        settings: Mapping[str, Any] | None = None,
        extra: Mapping[str, Any] | None = None,
        replace: bool | None = None,
        t0: float | None = None,
    ) -> None:
        if replace is None and not settings:
            raise ValueError(
                "replace=None decides by comparing settings: give the settings, or replace=True/False"
            )
        self.db_path = db_path
        self.pred_run_id = pred_run_id
        self.model_dir = model_dir
        self.run_id = run_id
        self.input_kind = input_kind
        self.input_ref = input_ref
        self.settings = dict(settings or {})
        self.extra = dict(extra or {})
        self.replace = replace
        self.t0 = time.perf_counter() if t0 is None else t0
        self.done: set[str] = set()
        self.resumed = False
        self.row: dict | None = None
        self.reviewed_run: str | None = None

    def start(self) -> set[str]:
        """Register the run (resume or replace); returns the doc_ids already stored for it."""
        run_id = unreviewed_run_id(self.db_path, self.pred_run_id)
        if run_id != self.pred_run_id:  # a reviewed run is never replaced or added to: a new run instead
            self.reviewed_run, self.pred_run_id = self.pred_run_id, run_id
            self.extra["reviewed_run"] = self.reviewed_run
        replace = self.replace
        if replace is None:
            replace = not _resumable(get_prediction_run(self.db_path, self.pred_run_id), self.settings)
        elif not replace:
            self._check_same_decoding()
        self.done = start_prediction_run(
            self.db_path,
            self.pred_run_id,
            model_dir=self.model_dir,
            run_id=self.run_id,
            input_kind=self.input_kind,
            input_ref=self.input_ref,
            config_json=json.dumps({**self.settings, **self.extra}),
            replace=replace,
        )
        self.resumed = not replace
        return self.done

    def _check_same_decoding(self) -> None:
        """Adding documents to a stored run (``replace=False``) under another decoder, span threshold,
        overlap mode or span limit would leave rows of two settings under one config: refused."""
        prev = get_prediction_run(self.db_path, self.pred_run_id)
        if prev is None:
            return
        stored = json.loads(prev["config"]) if prev.get("config") else {}
        new = {**self.settings, **self.extra}
        for key in _DECODING_KEYS:
            was = _stored_setting(stored, key)
            if key in new and was != new[key]:
                raise ValueError(
                    f"prediction run {self.pred_run_id} was stored with {key} {was!r}: adding documents with "
                    f"{new[key]!r} would mix two settings in one run (tag them all again instead, which "
                    "replaces the run)"
                )

    def write(self, docs: Sequence[tuple[str, str, list]]) -> int:
        """Store one batch (see :func:`write_predictions`) in one transaction; entity rows written."""
        return write_predictions(self.db_path, self.pred_run_id, docs)

    def finish(self, status: str = "completed") -> dict:
        """Mark the run ``completed`` or ``failed``; returns its ``prediction_runs`` row."""
        self.row = finish_prediction_run(
            self.db_path, self.pred_run_id, status=status, seconds=time.perf_counter() - self.t0
        )
        return self.row

    def __enter__(self) -> PredictionRunWriter:
        self.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.finish("completed")
            return
        try:
            self.finish("failed")
        except Exception:  # a full disk or a lock fails this update too: the original error says more
            pass


def prediction_disagreements(db_path: str | Path, run_a: str, run_b: str) -> list[dict]:
    """Entities in one prediction run and not in the other (same doc_id, start, end and label), over the
    documents both runs tagged; each row says ``side`` = 'only_a' or 'only_b'. Uses the table macro
    ``predicted_disagreements(a, b)`` of the schema."""
    for name, v in (("run_a", run_a), ("run_b", run_b)):
        if not isinstance(v, str) or not v:
            raise ValueError(f"expected {name} to be a prediction run id, got {v!r}")
    with open_db(db_path, read_only=True) as con:
        return _rows(
            con,
            'SELECT * FROM predicted_disagreements(?, ?) ORDER BY doc_id, "start", side, "end", label',
            [run_a, run_b],
        )


def unpredicted_documents(db_path: str | Path, dataset: str, run_id: str, split: str | None = None) -> list:
    """Documents of ``dataset``'s latest version (one ``split`` or all) that no prediction run of the
    training run ``run_id`` has stored yet, in input order.

    A document counts as predicted when some prediction run with this ``run_id`` stored the same ``doc_id``
    with the same text (a re-ingested document whose text changed is predicted again). Returns
    :class:`ner_core.documents.Document` objects without gold entities.
    """
    from ner_core.documents import Document

    for what, value in (("dataset", dataset), ("run_id", run_id)):
        if not isinstance(value, str) or not value:
            raise ValueError(f"expected a non-empty {what} name, got {value!r}")
    if split is not None and (not isinstance(split, str) or not split):
        raise ValueError(f"expected a split name or None, got {split!r}")
    with open_db(db_path, read_only=True) as con:
        row = con.execute("SELECT max(version) FROM datasets WHERE name = ?", [dataset]).fetchone()
        if row is None or row[0] is None:
            raise ValueError(
                f"no dataset {dataset!r} in {db_path}: ingest it first (ner ingest --name {dataset})"
            )
        only_split = " AND d.split = ?" if split is not None else ""
        params: list[Any] = [dataset, row[0], *([split] if split is not None else []), run_id]
        rows = con.execute(
            "SELECT d.doc_id, d.text, d.split, d.source, d.line FROM documents d "
            f"WHERE d.dataset = ? AND d.version = ?{only_split} AND NOT EXISTS ("
            "  SELECT 1 FROM predicted_documents p JOIN prediction_runs r USING (pred_run_id) "
            "  WHERE r.run_id = ? AND p.doc_id = d.doc_id AND p.text = d.text) "
            "ORDER BY d.ord",
            params,
        ).fetchall()
    return [
        Document.model_construct(doc_id=i, text=t, entities=[], split=sp, source=src, line=ln)
        for i, t, sp, src, ln in rows
    ]


#: the query the demo prints with its answer: entities per label of one prediction run, with examples
LABEL_EXAMPLES_SQL = (
    "SELECT label, count(*) AS n, string_agg(DISTINCT text, '、') AS examples "
    "FROM predicted_entities WHERE pred_run_id = ? GROUP BY label ORDER BY n DESC"
)


def label_examples(db_path: str | Path, pred_run_id: str) -> list[dict]:
    """Rows of :data:`LABEL_EXAMPLES_SQL`: ``label``, ``n`` and the distinct mentions joined by 、."""
    return list(query(db_path, LABEL_EXAMPLES_SQL, [pred_run_id]))


# ---- reads for the dashboard
# Each returns a pandas DataFrame made by DuckDB's own conversion (storage.db.read_frame) on a short-lived
# read-only connection that waits at most wait_s seconds for a writer; those listing entity confidence read
# through read_current (a file written before the calibrated confidence is migrated first).
def prediction_runs_frame(db_path: str | Path, *, wait_s: float = 10.0):
    """Prediction runs from the view ``v_prediction_runs``, newest first (``model_dir`` absolute)."""
    frame = read_frame(
        db_path,
        """
        SELECT pred_run_id, run_id, status, input_kind, input_ref, started_at, seconds, n_documents, n_chars,
               n_entities, model_dir
        FROM v_prediction_runs ORDER BY started_at DESC, pred_run_id
        """,
        wait_s=wait_s,
    )
    return frame_with_stored_paths(db_path, frame)


def _current_frame(db_path: str | Path, sql: str, params: list, wait_s: float):
    """``sql``'s rows as a DataFrame from the database at this code's schema (a file written by older code
    is migrated first: ``confidence_calibrated`` is migration 7's)."""
    with read_current(db_path, wait_s=wait_s) as con:
        return con.execute(sql, params).df()


def _check_limit(limit: int) -> None:
    if limit < 1:
        raise ValueError(f"expected limit >= 1, got {limit}")


def label_counts_frame(db_path: str | Path, pred_run_id: str, *, wait_s: float = 10.0):
    """Entities and distinct mentions per label in one prediction run, most entities first."""
    return read_frame(
        db_path,
        "SELECT label, n_entities, n_distinct FROM v_predicted_label_counts "
        "WHERE pred_run_id = ? ORDER BY n_entities DESC, label",
        [pred_run_id],
        wait_s=wait_s,
    )


def top_entities_frame(
    db_path: str | Path, pred_run_id: str, label: str | None = None, limit: int = 50, *, wait_s: float = 10.0
):
    """The ``limit`` most frequent predicted mentions of a prediction run (of one ``label``, or all), their
    mean calibrated confidence last (missing where the model had no temperature)."""
    _check_limit(limit)
    return _current_frame(
        db_path,
        """
        SELECT label, text, n, n_documents, round(mean_confidence, 3) AS mean_confidence,
               round(mean_confidence_calibrated, 3) AS mean_confidence_calibrated
        FROM v_top_predicted_entities
        WHERE pred_run_id = ? AND (? IS NULL OR label = ?)
        ORDER BY n DESC, label, text LIMIT ?
        """,
        [pred_run_id, label, label, limit],
        wait_s,
    )


def entity_search_frame(
    db_path: str | Path,
    pred_run_id: str,
    text: str = "",
    labels: tuple[str, ...] | list[str] = (),
    limit: int = 200,
    *,
    wait_s: float = 10.0,
):
    """Predicted entities whose mention or 20-character context contains ``text`` (case-insensitive;
    ``""`` matches all), of ``labels`` (empty: any), by document and start, at most ``limit``; the
    calibrated confidence last (missing where the model had no temperature)."""
    _check_limit(limit)
    return _current_frame(
        db_path,
        """
        SELECT doc_id, start, "end", label, text, round(confidence, 3) AS confidence, left_context,
               right_context, round(confidence_calibrated, 3) AS confidence_calibrated
        FROM v_predicted_entities_in_context
        WHERE pred_run_id = ?
          AND (? = '' OR contains(lower(left_context || text || right_context), lower(?)))
          AND (len(?) = 0 OR list_contains(?, label))
        ORDER BY doc_id, start, "end", label LIMIT ?
        """,
        [pred_run_id, text, text, list(labels), list(labels), limit],
        wait_s,
    )


def predicted_docs_frame(
    db_path: str | Path,
    pred_run_id: str,
    text: str = "",
    labels: tuple[str, ...] | list[str] = (),
    limit: int = 500,
    *,
    wait_s: float = 10.0,
):
    """Documents of a prediction run whose text contains ``text`` (case-insensitive; ``""``: all) and that
    have an entity of ``labels`` (empty: any): ``doc_id``, ``n_entities``, ``n_chars``, ``preview`` (the
    first 60 characters), by doc_id, at most ``limit``."""
    return read_frame(
        db_path,
        """
        SELECT d.doc_id, d.n_entities, length(d.text) AS n_chars, left(d.text, 60) AS preview
        FROM predicted_documents d
        WHERE d.pred_run_id = ?
          AND (? = '' OR contains(lower(d.text), lower(?)))
          AND (len(?) = 0 OR EXISTS (SELECT 1 FROM predicted_entities e WHERE e.pred_run_id = d.pred_run_id
                                     AND e.doc_id = d.doc_id AND list_contains(?, e.label)))
        ORDER BY d.doc_id LIMIT ?
        """,
        [pred_run_id, text, text, list(labels), list(labels), limit],
        wait_s=wait_s,
    )


def predicted_document(db_path: str | Path, pred_run_id: str, doc_id: str, *, wait_s: float = 10.0):
    """``(text, entities)`` of one predicted document: the entities (``start``, ``end``, ``label``,
    ``text``, ``confidence``, ``confidence_calibrated``) come from the schema's ``document_entities(run,
    doc)`` table macro, ordered by start, end and label (a span run's entities may nest or share a span),
    as a DataFrame. ``KeyError`` when the run has no such document."""
    with read_current(db_path, wait_s=wait_s) as con:
        row = con.execute(
            "SELECT text FROM predicted_documents WHERE pred_run_id = ? AND doc_id = ?", [pred_run_id, doc_id]
        ).fetchone()
        if row is None:
            raise KeyError(f"no document {doc_id!r} in prediction run {pred_run_id!r}")
        ents = con.execute(
            'SELECT "start", "end", label, text, confidence, confidence_calibrated '
            "FROM document_entities(?, ?) "
            'ORDER BY "start", "end", label',
            [pred_run_id, doc_id],
        ).df()
    return row[0], ents
