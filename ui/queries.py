"""Read-only queries behind the dashboard, cached per database path and parameters.

Every function opens its own short-lived read-only connection (:func:`storage.db.open_db`) and closes it
before returning, so the dashboard never holds the DuckDB file between reruns and the flows can write
while it is open. Results are cached with ``st.cache_data(ttl=...)``; parameters are passed in (never read
from widgets inside), and callers must not mutate what a cached function returns.

Errors the pages turn into messages: ``FileNotFoundError`` (no database file),
:class:`storage.db.DatabaseLockedError` (a writer holds it), :class:`SqlRejected` (the SQL page's guard).

No DDL here: the schema lives in :mod:`storage.schema`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import streamlit as st

from storage.db import DatabaseLockedError, open_db
from storage.query import SqlRejected, check_sql, query

TTL_S = 30  # seconds a query result stays cached; the sidebar's Refresh button clears all caches
LOCK_WAIT_S = 1.0  # how long a read waits for a writer before DatabaseLockedError
ERROR_KINDS: tuple[str, ...] = ("boundary", "type", "boundary+type", "missed", "spurious")

__all__ = [
    "DbState",
    "all_labels",
    "SqlRejected",
    "SqlResult",
    "check_sql",
    "db_state",
    "epochs",
    "error_sentences",
    "evaluation",
    "evaluation_errors",
    "evaluation_types",
    "evaluations",
    "label_counts",
    "models",
    "predicted_document",
    "prediction_runs",
    "predicted_docs",
    "run_sql",
    "runs",
    "search_entities",
    "top_entities",
    "views",
]


def _check_path(db_path: str) -> str:
    if not isinstance(db_path, str) or not db_path:
        raise ValueError(f"expected the database path as a non-empty str, got {db_path!r}")
    return db_path


def _df(con: duckdb.DuckDBPyConnection, sql: str, params: Sequence[Any] = ()) -> pd.DataFrame:
    return con.execute(sql, list(params)).df()


def _read(db_path: str, sql: str, params: Sequence[Any] = ()) -> pd.DataFrame:
    with open_db(_check_path(db_path), read_only=True, wait_s=LOCK_WAIT_S) as con:
        return _df(con, sql, params)


# ------------------------------------------------------------------------------------------- state
@dataclass(frozen=True)
class DbState:
    """What the chrome shows before a page runs. ``state`` is ok | missing | locked | empty."""

    state: str
    message: str
    counts: dict[str, int]


def db_state(db_path: str) -> DbState:
    """Check that ``db_path`` exists, can be opened read-only now, and holds the schema and some rows.

    Not cached: it is one cheap query per rerun and must notice a database that appears or fills up.
    """
    path = Path(_check_path(db_path))
    if not path.exists():
        msg = (
            f"Database file {path} does not exist. Create it with `ner pipeline ...` (or `ner ingest ...`), "
            f"or start the dashboard with `ner ui --db PATH`."
        )
        return DbState("missing", msg, {})
    try:
        with open_db(path, read_only=True, wait_s=LOCK_WAIT_S) as con:
            tables = {
                r[0]
                for r in con.execute(
                    "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main'"
                ).fetchall()
            }
            needed = {"schema_version", "datasets", "runs", "prediction_runs"}
            if not needed <= tables:
                missing = ", ".join(sorted(needed - tables))
                return DbState(
                    "empty",
                    f"Database {path} has no NER schema yet (missing tables: {missing}). "
                    f"Run `ner pipeline ...` first.",
                    {},
                )
            counts = {
                t: int(con.execute(f"SELECT count(*) FROM {t}").fetchone()[0])
                for t in ("datasets", "runs", "evaluations", "prediction_runs")
            }
    except DatabaseLockedError as exc:
        return DbState("locked", f"The database is busy: {exc}", {})
    except duckdb.Error as exc:
        return DbState("missing", f"Database {path} could not be opened read-only: {exc}", {})
    if not any(counts.values()):
        return DbState(
            "empty",
            f"Database {path} is empty: no datasets, runs or predictions yet. "
            f"Run `ner pipeline ...` to fill it.",
            counts,
        )
    return DbState("ok", "", counts)


@st.cache_data(ttl=TTL_S, show_spinner=False)
def all_labels(db_path: str) -> tuple[str, ...]:
    """Every entity label the database knows (datasets, evaluations, predictions), sorted.

    Pages colour labels from this one set, so a label has the same colour on every page.
    """
    frame = _read(
        db_path,
        """
        SELECT DISTINCT label FROM (
            SELECT unnest(labels) AS label FROM datasets
            UNION ALL SELECT label FROM evaluation_types
            UNION ALL SELECT label FROM predicted_entities)
        ORDER BY label
    """,
    )
    return tuple(frame["label"].tolist())


# -------------------------------------------------------------------------------------------- runs
@st.cache_data(ttl=TTL_S, show_spinner=False)
def runs(db_path: str) -> pd.DataFrame:
    """One row per training run (newest first) with its best dev F1 and its latest test-split scores."""
    return _read(
        db_path,
        """
        SELECT s.run_id, s.dataset, s.encoder, s.head, s.scheme, s.status, s.started_at, s.seconds,
               s.n_epochs, s.best_epoch, s.best_dev_f1, e.f1 AS test_f1, e."precision" AS test_precision,
               e.recall AS test_recall, e.char_accuracy AS test_char_accuracy,
               e.sentence_accuracy AS test_sentence_accuracy, s.is_production, s.model_dir,
               r.stopped_reason, r.config
        FROM v_run_summary s
        JOIN runs r USING (run_id)
        LEFT JOIN (SELECT * FROM evaluations WHERE run_id IS NOT NULL
                   QUALIFY row_number() OVER (PARTITION BY run_id ORDER BY (split = 'test') DESC,
                                              created_at DESC) = 1) e USING (run_id)
        ORDER BY s.started_at DESC, s.run_id
    """,
    )


@st.cache_data(ttl=TTL_S, show_spinner=False)
def epochs(db_path: str, run_ids: tuple[str, ...]) -> pd.DataFrame:
    """Per-epoch rows of ``run_ids`` (a tuple, so it hashes), ordered by run and epoch."""
    if not isinstance(run_ids, tuple):
        raise ValueError(f"expected run_ids as a tuple of str, got {type(run_ids).__name__}")
    if not run_ids:
        return _read(db_path, "SELECT * FROM epochs WHERE false")
    return _read(
        db_path, "SELECT * FROM epochs WHERE list_contains(?, run_id) ORDER BY run_id, epoch", [list(run_ids)]
    )


@st.cache_data(ttl=TTL_S, show_spinner=False)
def models(db_path: str) -> pd.DataFrame:
    """Completed runs that have a model directory, production model first, then newest."""
    return _read(
        db_path,
        """
        SELECT run_id, dataset, head, encoder, best_dev_f1, is_production, model_dir
        FROM runs WHERE status = 'completed' AND model_dir IS NOT NULL
        ORDER BY is_production DESC, started_at DESC
    """,
    )


# ------------------------------------------------------------------------------------- evaluations
@st.cache_data(ttl=TTL_S, show_spinner=False)
def evaluations(db_path: str) -> pd.DataFrame:
    """Evaluation summaries (no report JSON), newest first."""
    return _read(
        db_path,
        """
        SELECT eval_id, run_id, dataset, dataset_version, split, created_at, scheme, n_sentences, n_chars,
               char_accuracy, sentence_accuracy, "precision", recall, f1, macro_precision, macro_recall,
               macro_f1, model_dir
        FROM evaluations ORDER BY created_at DESC, eval_id
    """,
    )


@st.cache_data(ttl=TTL_S, show_spinner=False)
def evaluation(db_path: str, eval_id: str) -> dict:
    """The stored :class:`ner_core.metrics.EvaluationReport` of ``eval_id`` as a plain dict."""
    with open_db(_check_path(db_path), read_only=True, wait_s=LOCK_WAIT_S) as con:
        row = con.execute("SELECT report FROM evaluations WHERE eval_id = ?", [eval_id]).fetchone()
    if row is None:
        raise KeyError(f"no evaluation {eval_id!r} in {db_path}")
    return json.loads(row[0]) if row[0] else {}


@st.cache_data(ttl=TTL_S, show_spinner=False)
def evaluation_types(db_path: str, eval_id: str) -> pd.DataFrame:
    """Per-label precision, recall, F1, support and predicted count."""
    return _read(
        db_path,
        'SELECT label, "precision", recall, f1, support, predicted FROM evaluation_types '
        "WHERE eval_id = ? ORDER BY label",
        [eval_id],
    )


@st.cache_data(ttl=TTL_S, show_spinner=False)
def evaluation_errors(db_path: str, eval_id: str) -> pd.DataFrame:
    """Error counts as a table: one row per label, one column per error kind, plus ``total``."""
    long = _read(db_path, "SELECT label, kind, n FROM evaluation_errors WHERE eval_id = ?", [eval_id])
    if long.empty:
        return pd.DataFrame(columns=["label", *ERROR_KINDS, "total"])
    wide = long.pivot_table(index="label", columns="kind", values="n", aggfunc="sum", fill_value=0)
    extra = sorted(set(wide.columns) - set(ERROR_KINDS))  # kinds a newer metrics module may add
    wide = wide.reindex(columns=[*ERROR_KINDS, *extra], fill_value=0).astype(int)
    wide["total"] = wide.sum(axis=1)
    return wide.reset_index().sort_values("label").reset_index(drop=True)


def error_sentences(report: dict, *, label: str | None = None, kind: str | None = None) -> list[dict]:
    """Sentences of ``report["error_sentences"]`` filtered by entity label and error kind.

    A sentence passes ``label`` when a gold or predicted entity carries it, and ``kind`` when the kind is
    in its ``kinds``. ``None`` means no filter. Returns the stored dicts (do not mutate them).
    """
    if not isinstance(report, dict):
        raise ValueError(f"expected the report as a dict, got {type(report).__name__}")
    if kind is not None and kind not in ERROR_KINDS:
        raise ValueError(f"expected an error kind in {ERROR_KINDS} or None, got {kind!r}")
    out = []
    for s in report.get("error_sentences", []):
        if kind is not None and kind not in s.get("kinds", []):
            continue
        entities = [*s.get("gold", []), *s.get("pred", [])]
        if label is not None and not any(e["label"] == label for e in entities):
            continue
        out.append(s)
    return out


# ------------------------------------------------------------------------------------- predictions
@st.cache_data(ttl=TTL_S, show_spinner=False)
def prediction_runs(db_path: str) -> pd.DataFrame:
    """Prediction runs, newest first."""
    return _read(
        db_path,
        """
        SELECT pred_run_id, run_id, status, input_kind, input_ref, started_at, seconds, n_documents, n_chars,
               n_entities, model_dir
        FROM prediction_runs ORDER BY started_at DESC, pred_run_id
    """,
    )


@st.cache_data(ttl=TTL_S, show_spinner=False)
def label_counts(db_path: str, pred_run_id: str) -> pd.DataFrame:
    """Entities and distinct mentions per label in one prediction run."""
    return _read(
        db_path,
        "SELECT label, n_entities, n_distinct FROM v_predicted_label_counts "
        "WHERE pred_run_id = ? ORDER BY n_entities DESC, label",
        [pred_run_id],
    )


@st.cache_data(ttl=TTL_S, show_spinner=False)
def top_entities(db_path: str, pred_run_id: str, label: str | None = None, limit: int = 50) -> pd.DataFrame:
    """Most frequent predicted mentions (optionally of one label)."""
    if limit < 1:
        raise ValueError(f"expected limit >= 1, got {limit}")
    return _read(
        db_path,
        """
        SELECT label, text, n, n_documents, round(mean_confidence, 3) AS mean_confidence
        FROM v_top_predicted_entities
        WHERE pred_run_id = ? AND (? IS NULL OR label = ?)
        ORDER BY n DESC, label, text LIMIT ?
    """,
        [pred_run_id, label, label, limit],
    )


@st.cache_data(ttl=TTL_S, show_spinner=False)
def search_entities(
    db_path: str, pred_run_id: str, text: str = "", labels: tuple[str, ...] = (), limit: int = 200
) -> pd.DataFrame:
    """Predicted entities whose mention or context contains ``text`` (case-insensitive), of ``labels``."""
    if not isinstance(labels, tuple):
        raise ValueError(f"expected labels as a tuple of str, got {type(labels).__name__}")
    if limit < 1:
        raise ValueError(f"expected limit >= 1, got {limit}")
    return _read(
        db_path,
        """
        SELECT doc_id, start, "end", label, text, round(confidence, 3) AS confidence, left_context,
               right_context
        FROM v_predicted_entities_in_context
        WHERE pred_run_id = ?
          AND (? = '' OR contains(lower(left_context || text || right_context), lower(?)))
          AND (len(?) = 0 OR list_contains(?, label))
        ORDER BY doc_id, start LIMIT ?
    """,
        [pred_run_id, text, text, list(labels), list(labels), limit],
    )


@st.cache_data(ttl=TTL_S, show_spinner=False)
def predicted_docs(
    db_path: str, pred_run_id: str, text: str = "", labels: tuple[str, ...] = (), limit: int = 500
) -> pd.DataFrame:
    """Documents of a prediction run whose text contains ``text`` and that have an entity of ``labels``."""
    if not isinstance(labels, tuple):
        raise ValueError(f"expected labels as a tuple of str, got {type(labels).__name__}")
    return _read(
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
    )


@st.cache_data(ttl=TTL_S, show_spinner=False)
def predicted_document(db_path: str, pred_run_id: str, doc_id: str) -> tuple[str, pd.DataFrame]:
    """(text, entities ordered by start) of one predicted document."""
    with open_db(_check_path(db_path), read_only=True, wait_s=LOCK_WAIT_S) as con:
        row = con.execute(
            "SELECT text FROM predicted_documents WHERE pred_run_id = ? AND doc_id = ?", [pred_run_id, doc_id]
        ).fetchone()
        if row is None:
            raise KeyError(f"no document {doc_id!r} in prediction run {pred_run_id!r}")
        ents = _df(
            con,
            'SELECT start, "end", label, text, confidence FROM predicted_entities '
            'WHERE pred_run_id = ? AND doc_id = ? ORDER BY start, "end"',
            [pred_run_id, doc_id],
        )
    return row[0], ents


# --------------------------------------------------------------------------------------------- SQL
@dataclass(frozen=True)
class SqlResult:
    frame: pd.DataFrame
    truncated: bool  # more rows existed than the limit


@st.cache_data(ttl=TTL_S, show_spinner=False)
def run_sql(db_path: str, sql: str, limit: int = 200) -> SqlResult:
    """One checked, read-only query (:func:`storage.query.query`); at most ``limit`` rows come back."""
    if not isinstance(limit, int) or limit < 1:
        raise ValueError(f"expected limit as an int >= 1, got {limit!r}")
    result = query(_check_path(db_path), sql, limit=limit, wait_s=LOCK_WAIT_S)
    return SqlResult(pd.DataFrame(list(result), columns=result.columns), result.truncated)


@st.cache_data(ttl=TTL_S, show_spinner=False)
def views(db_path: str) -> pd.DataFrame:
    """Tables and views the SQL page can query, with their columns."""
    return _read(
        db_path,
        """
        SELECT t.table_name AS name, lower(replace(t.table_type, 'BASE ', '')) AS kind,
               string_agg(c.column_name, ', ' ORDER BY c.ordinal_position) AS columns
        FROM information_schema.tables t
        JOIN information_schema.columns c USING (table_schema, table_name)
        WHERE t.table_schema = 'main'
        GROUP BY ALL ORDER BY kind DESC, name
    """,
    )
