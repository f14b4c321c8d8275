"""The dashboard's reads: Streamlit caching around the storage read functions.

The SQL lives with its table family in :mod:`storage` (runs and epochs in :mod:`storage.runs`, evaluations
in :mod:`storage.evaluations`, prediction runs, entities and documents in :mod:`storage.predictions`,
row counts in :mod:`storage.db`, the catalogue, the labels and the guarded query in :mod:`storage.query`).
Each of those opens its own short-lived read-only connection and closes it before returning, so the
dashboard never holds the DuckDB file between reruns and the flows can write while it is open; here the
results are cached with ``st.cache_data(ttl=...)``. Parameters are passed in (never read from widgets
inside), and callers must not mutate what a cached function returns.

Errors the pages turn into messages: ``FileNotFoundError`` (no database file),
:class:`storage.db.DatabaseLockedError` (a writer holds it), :class:`SqlRejected` (the SQL page's guard).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import duckdb
import pandas as pd
import streamlit as st

from ner_core.metrics import ERROR_KINDS
from storage import datasets as _datasets
from storage import evaluations as _evaluations
from storage import predictions as _predictions
from storage import reviews as _reviews
from storage import runs as _runs
from storage.db import DatabaseLockedError, row_counts
from storage.query import SqlRejected, entity_labels, query, relations_frame
from ui.app_pages.common import escape_markdown

TTL_S = 30  # seconds a query result stays cached; the sidebar's Refresh button clears all caches
LOCK_WAIT_S = 1.0  # how long a read waits for a writer before DatabaseLockedError

__all__ = [
    "DbState",
    "all_labels",
    "dataset_problems",
    "datasets",
    "SqlRejected",
    "SqlResult",
    "db_state",
    "epochs",
    "error_sentences",
    "evaluation",
    "evaluation_confusion",
    "evaluation_errors",
    "evaluation_reliability",
    "evaluation_thresholds",
    "evaluation_types",
    "evaluations",
    "label_counts",
    "models",
    "predicted_document",
    "prediction_runs",
    "predicted_docs",
    "review_document",
    "review_mentions",
    "review_progress",
    "review_queue",
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


def _check_tuple(what: str, value: object) -> tuple:
    """Cached functions take tuples (they hash); a list here is a caller's mistake."""
    if not isinstance(value, tuple):
        raise ValueError(f"expected {what} as a tuple of str, got {type(value).__name__}")
    return value


# ------------------------------------------------------------------------------------------- state
_NEEDED = ("schema_version", "datasets", "runs", "prediction_runs")  # tables the pages cannot do without
_COUNTED = ("datasets", "runs", "evaluations", "prediction_runs")  # what "empty" is judged by


@dataclass(frozen=True)
class DbState:
    """What the chrome shows before a page runs. ``state`` is ok | missing | locked | empty; ``message`` is
    Markdown, the path and DuckDB's words in it escaped (:func:`ui.app_pages.common.escape_markdown`)."""

    state: str
    message: str
    counts: dict[str, int]


def db_state(db_path: str) -> DbState:
    """Check that ``db_path`` exists, can be opened read-only now, and holds the schema and some rows.

    Not cached: it is one cheap query per rerun and must notice a database that appears or fills up.
    """
    path = Path(_check_path(db_path))
    shown = escape_markdown(path)
    if not path.exists():
        msg = (
            f"Database file {shown} does not exist. Create it with `ner pipeline ...` (or `ner ingest ...`), "
            f"or start the dashboard with `ner ui --db PATH`."
        )
        return DbState("missing", msg, {})
    try:
        found = row_counts(path, sorted({*_NEEDED, *_COUNTED}), wait_s=LOCK_WAIT_S)
    except DatabaseLockedError as exc:
        return DbState("locked", f"The database is busy: {escape_markdown(exc)}", {})
    except duckdb.Error as exc:
        msg = f"Database {shown} could not be opened read-only: {escape_markdown(exc)}"
        return DbState("missing", msg, {})
    missing = sorted(set(_NEEDED) - set(found))
    if missing:
        return DbState(
            "empty",
            f"Database {shown} has no NER schema yet (missing tables: {', '.join(missing)}). "
            f"Run `ner pipeline ...` first.",
            {},
        )
    counts = {t: found.get(t, 0) for t in _COUNTED}
    if not any(counts.values()):
        return DbState(
            "empty",
            f"Database {shown} is empty: no datasets, runs or predictions yet. "
            f"Run `ner pipeline ...` to fill it.",
            counts,
        )
    return DbState("ok", "", counts)


@st.cache_data(ttl=TTL_S, show_spinner=False)
def all_labels(db_path: str) -> tuple[str, ...]:
    """Every entity label the database knows (datasets, evaluations, predictions), sorted.

    Pages colour labels from this one set, so a label has the same colour on every page.
    """
    return entity_labels(_check_path(db_path), wait_s=LOCK_WAIT_S)


# -------------------------------------------------------------------------------------------- runs
@st.cache_data(ttl=TTL_S, show_spinner=False)
def runs(db_path: str) -> pd.DataFrame:
    """One row per training run (newest first) with its best dev F1 and its latest test-split scores."""
    return _runs.runs_frame(_check_path(db_path), wait_s=LOCK_WAIT_S)


@st.cache_data(ttl=TTL_S, show_spinner=False)
def epochs(db_path: str, run_ids: tuple[str, ...]) -> pd.DataFrame:
    """Per-epoch rows of ``run_ids`` (a tuple, so it hashes), ordered by run and epoch."""
    return _runs.epochs_frame(_check_path(db_path), _check_tuple("run_ids", run_ids), wait_s=LOCK_WAIT_S)


@st.cache_data(ttl=TTL_S, show_spinner=False)
def models(db_path: str) -> pd.DataFrame:
    """Completed runs that have a model directory, production model first, then newest."""
    return _runs.models_frame(_check_path(db_path), wait_s=LOCK_WAIT_S)


# ------------------------------------------------------------------------------------- evaluations
@st.cache_data(ttl=TTL_S, show_spinner=False)
def evaluations(db_path: str) -> pd.DataFrame:
    """Evaluation summaries (no report JSON), newest first."""
    return _evaluations.evaluations_frame(_check_path(db_path), wait_s=LOCK_WAIT_S)


@st.cache_data(ttl=TTL_S, show_spinner=False)
def evaluation(db_path: str, eval_id: str) -> dict:
    """The stored :class:`ner_core.metrics.EvaluationReport` of ``eval_id`` as a plain dict."""
    return _evaluations.evaluation_report(_check_path(db_path), eval_id, wait_s=LOCK_WAIT_S)


@st.cache_data(ttl=TTL_S, show_spinner=False)
def evaluation_types(db_path: str, eval_id: str) -> pd.DataFrame:
    """Per-label precision, recall, F1, support and predicted count."""
    return _evaluations.evaluation_types_frame(_check_path(db_path), eval_id, wait_s=LOCK_WAIT_S)


@st.cache_data(ttl=TTL_S, show_spinner=False)
def evaluation_errors(db_path: str, eval_id: str) -> pd.DataFrame:
    """Error counts as a table: one row per label, one column per error kind, plus ``total``."""
    long = _evaluations.evaluation_errors_frame(_check_path(db_path), eval_id, wait_s=LOCK_WAIT_S)
    if long.empty:
        return pd.DataFrame(columns=["label", *ERROR_KINDS, "total"])
    wide = long.pivot_table(index="label", columns="kind", values="n", aggfunc="sum", fill_value=0)
    extra = sorted(set(wide.columns) - set(ERROR_KINDS))  # kinds a newer metrics module may add
    wide = wide.reindex(columns=[*ERROR_KINDS, *extra], fill_value=0).astype(int)
    wide["total"] = wide.sum(axis=1)
    return wide.reset_index().sort_values("label").reset_index(drop=True)


@st.cache_data(ttl=TTL_S, show_spinner=False)
def evaluation_reliability(db_path: str, eval_id: str) -> pd.DataFrame:
    """Reliability bins (raw and calibrated) of ``eval_id``; empty for an evaluation without calibration."""
    return _evaluations.reliability_frame(_check_path(db_path), eval_id, wait_s=LOCK_WAIT_S)


@st.cache_data(ttl=TTL_S, show_spinner=False)
def evaluation_thresholds(db_path: str, eval_id: str) -> pd.DataFrame:
    """Precision, recall and F1 of ``eval_id`` against the calibrated confidence threshold."""
    return _evaluations.thresholds_frame(_check_path(db_path), eval_id, wait_s=LOCK_WAIT_S)


@st.cache_data(ttl=TTL_S, show_spinner=False)
def evaluation_confusion(db_path: str, eval_id: str) -> pd.DataFrame:
    """(gold label, predicted label) counts of ``eval_id`` in long form, 'O' for no entity."""
    return _evaluations.confusion_frame(_check_path(db_path), eval_id, wait_s=LOCK_WAIT_S)


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
    return _predictions.prediction_runs_frame(_check_path(db_path), wait_s=LOCK_WAIT_S)


@st.cache_data(ttl=TTL_S, show_spinner=False)
def label_counts(db_path: str, pred_run_id: str) -> pd.DataFrame:
    """Entities and distinct mentions per label in one prediction run."""
    return _predictions.label_counts_frame(_check_path(db_path), pred_run_id, wait_s=LOCK_WAIT_S)


@st.cache_data(ttl=TTL_S, show_spinner=False)
def top_entities(db_path: str, pred_run_id: str, label: str | None = None, limit: int = 50) -> pd.DataFrame:
    """Most frequent predicted mentions (optionally of one label)."""
    return _predictions.top_entities_frame(
        _check_path(db_path), pred_run_id, label, limit, wait_s=LOCK_WAIT_S
    )


@st.cache_data(ttl=TTL_S, show_spinner=False)
def search_entities(
    db_path: str, pred_run_id: str, text: str = "", labels: tuple[str, ...] = (), limit: int = 200
) -> pd.DataFrame:
    """Predicted entities whose mention or context contains ``text`` (case-insensitive), of ``labels``."""
    return _predictions.entity_search_frame(
        _check_path(db_path), pred_run_id, text, _check_tuple("labels", labels), limit, wait_s=LOCK_WAIT_S
    )


@st.cache_data(ttl=TTL_S, show_spinner=False)
def predicted_docs(
    db_path: str, pred_run_id: str, text: str = "", labels: tuple[str, ...] = (), limit: int = 500
) -> pd.DataFrame:
    """Documents of a prediction run whose text contains ``text`` and that have an entity of ``labels``."""
    return _predictions.predicted_docs_frame(
        _check_path(db_path), pred_run_id, text, _check_tuple("labels", labels), limit, wait_s=LOCK_WAIT_S
    )


@st.cache_data(ttl=TTL_S, show_spinner=False)
def predicted_document(db_path: str, pred_run_id: str, doc_id: str) -> tuple[str, pd.DataFrame]:
    """(text, entities ordered by start) of one predicted document."""
    return _predictions.predicted_document(_check_path(db_path), pred_run_id, doc_id, wait_s=LOCK_WAIT_S)


# ------------------------------------------------------------------------------------------ review
# The review reads take ``stamp``: the page passes a number it bumps after each write it makes, so a cached
# result never hides the page's own decisions; other reviewers' show up within TTL_S (or on Refresh).
@st.cache_data(ttl=TTL_S, show_spinner=False)
def review_queue(
    db_path: str,
    pred_run_id: str,
    order: str,
    compare_run: str | None = None,
    search: str | None = None,
    seed: int = 0,
    limit: int = 50,
    stamp: int = 0,
) -> pd.DataFrame:
    """The next documents to review (:func:`storage.reviews.review_queue`) as a frame."""
    rows = _reviews.review_queue(
        _check_path(db_path),
        pred_run_id,
        order,
        compare_run=compare_run,
        search=search,
        seed=seed,
        limit=limit,
        wait_s=LOCK_WAIT_S,
    )
    return pd.DataFrame(rows)


@st.cache_data(ttl=TTL_S, show_spinner=False)
def review_progress(db_path: str, pred_run_id: str, stamp: int = 0) -> dict:
    """``{"reviewed", "queued", "skipped", "total"}`` documents of the run."""
    return _reviews.review_progress(_check_path(db_path), pred_run_id, wait_s=LOCK_WAIT_S)


@st.cache_data(ttl=TTL_S, show_spinner=False)
def review_document(db_path: str, pred_run_id: str, doc_id: str, stamp: int = 0) -> dict:
    """One document with its predicted and current entities, events, disagreements and labels, in one read
    (:func:`storage.reviews.document_for_review`); ``KeyError`` when the run has no such document."""
    return _reviews.document_for_review(_check_path(db_path), pred_run_id, doc_id, wait_s=LOCK_WAIT_S)


def review_mentions(db_path: str, pred_run_id: str, text: str, label: str | None) -> list[dict]:
    """Current entities with this exact mention (and label) in documents not reviewed yet; not cached (read
    right before the page writes a decision for each)."""
    return _reviews.identical_mentions(_check_path(db_path), pred_run_id, text, label, wait_s=LOCK_WAIT_S)


# -------------------------------------------------------------------------------- datasets, problems
PROBLEM_COLUMNS = ["file", "line", "record", "code", "severity", "message"]


@st.cache_data(ttl=TTL_S, show_spinner=False)
def datasets(db_path: str) -> pd.DataFrame:
    """One row per dataset version (name, version, format, counts, n_errors, n_warnings), newest first."""
    rows = _datasets.list_datasets(_check_path(db_path))
    cols = ["name", "version", "created_at", "format", "n_documents", "n_entities", "n_errors", "n_warnings"]
    return pd.DataFrame([{c: r[c] for c in cols} for r in rows], columns=cols)


@st.cache_data(ttl=TTL_S, show_spinner=False)
def dataset_problems(db_path: str, dataset: str, version: int) -> pd.DataFrame:
    """The problems recorded when ``dataset`` version ``version`` was ingested, by file then line."""
    found = _datasets.load_problems(_check_path(db_path), dataset, int(version))
    return pd.DataFrame([p.model_dump() for p in found], columns=PROBLEM_COLUMNS)


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
    return relations_frame(_check_path(db_path), wait_s=LOCK_WAIT_S)
