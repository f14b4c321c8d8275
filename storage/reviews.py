"""Review of prediction runs: append-only review events, the review queue, and a spool that never loses one.

A reviewer's decisions are rows of ``review_events`` (schema migration 4), never updated or deleted. Each
names the prediction run, the document, the sha256 of the text the reviewer saw (``doc_hash``), the
reviewer, the action and the entity acted on by its *key*: the predicted span ``[start, end)`` and label
(or, for ``add``, the added span and label). Offsets are Python code points, as everywhere in storage.

Actions: ``accept``, ``reject``, ``relabel`` (``new_label``), ``adjust`` (``new_start``, ``new_end``, and
optionally ``new_label``) and ``add`` decide on one entity; ``add_label`` introduces a label outside the
model's label set (``label`` names it); ``done`` marks the document reviewed (it leaves the queue);
``skip`` sends it to the back of the queue; ``undo`` cancels the event named by ``ref_event_id``.

The current entities of a document are the predicted ones after the latest decision on each key (over all
reviewers; every event stays), plus the added ones, minus the rejected ones, each with a ``state``:
``predicted`` (no decision yet), ``accepted``, ``corrected`` (relabelled or adjusted) or ``added``. The rule
and the one order of events (``created_at``, then arrival: the ``seq`` each event gets when it is recorded,
in batch order) are :mod:`ner_core.review`'s; the view ``v_review_current`` spells them in SQL (migration
6), :func:`record_events` checks a batch with them, :func:`document_for_review` replays them in Python.
``v_review_disagreements`` lists the entities on which two reviewers' latest decisions differ;
``v_reviewed_documents`` the documents with a ``done``.

:func:`record_events` is idempotent on ``event_id`` (a client-made uuid) and all-or-nothing: a decision
on a document whose text changed since it was predicted, an empty reviewer, an added or adjusted span
overlapping another current entity (in a flat run's document: see below), an unknown entity or label... is
refused with one :class:`ReviewRefused` line and nothing is written.

Flat and span runs: a prediction run's stored config names its ``decoder`` (``crf`` or ``span``; absent:
``crf``, as runs stored before the span decoder; :func:`run_decoder`). A CRF model predicts no overlapping
entities and a CRF dataset cannot hold them, so in a ``crf`` run's document an added or adjusted span may
not overlap another current entity. A span model predicts nested entities and trains on them, so a
``span`` run's document may hold overlapping ones (an inner span added inside an outer one); there only a
second current entity on the very same span with the same label is refused (it would be one entity twice).

:class:`ReviewSpool` keeps decisions in a JSONL file (fsync'd) while another process holds the database,
and :meth:`ReviewSpool.flush` writes each exactly once when it can.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import duckdb
import pyarrow as pa
from pydantic import ValidationError

from ner_core import review as rule
from storage.db import DatabaseLockedError, open_db, rollback_quietly
from storage.db import now as _now
from storage.db import read_current as _read
from storage.db import rows as _rows

__all__ = [
    "ACTIONS",
    "ENTITY_ACTIONS",
    "ORDERS",
    "ReviewRefused",
    "ReviewSpool",
    "DECODERS",
    "current_entities",
    "document_for_review",
    "identical_mentions",
    "new_event",
    "record_events",
    "review_labels",
    "evaluation_review_run",
    "review_progress",
    "review_queue",
    "reviewed_documents",
    "run_decoder",
    "text_hash",
]

#: every action a review event may have
ACTIONS = ("accept", "reject", "relabel", "adjust", "add", "add_label", "done", "skip", "undo")
#: the actions that decide on one entity (they carry its key: start, end, label)
ENTITY_ACTIONS = rule.DECISIONS
#: the orders of :func:`review_queue`
ORDERS = ("uncertain", "uncertain_per_char", "disagree", "random", "search")
#: the decoders a prediction run's config may name (``prediction_runs.config``'s ``decoder``)
DECODERS = ("crf", "span")

_FIELDS = (
    "event_id",
    "pred_run_id",
    "doc_id",
    "doc_hash",
    "reviewer",
    "action",
    "start",
    "end",
    "label",
    "new_start",
    "new_end",
    "new_label",
    "ref_event_id",
    "created_at",
)

_INT_FIELDS = ("start", "end", "new_start", "new_end")
#: the Arrow schema review events are inserted through
_ARROW = pa.schema(
    [
        (f, pa.int32() if f in _INT_FIELDS else pa.timestamp("us") if f == "created_at" else pa.string())
        for f in _FIELDS
    ]
)

#: near-duplicate key of a text: lower-cased NFC text without spaces, punctuation, symbols and digits
_NEAR_DUP_KEY = (
    r"coalesce(nullif(regexp_replace(lower(nfc_normalize(d.text)), '[\s\p{Z}\p{P}\p{S}\p{N}]+', '', 'g'),"
    " ''), d.doc_id)"
)


class ReviewRefused(ValueError):
    """A review event that cannot be recorded; ``index`` is its position in the batch (0-based)."""

    def __init__(self, index: int, event: Mapping[str, Any], problem: str):
        self.index = index
        self.event_id = event.get("event_id") if isinstance(event, Mapping) else None
        what = event.get("action") if isinstance(event, Mapping) else None
        where = ""
        if isinstance(event, Mapping) and event.get("doc_id") is not None:
            where = f" on document {event.get('doc_id')!r} of prediction run {event.get('pred_run_id')!r}"
        super().__init__(f"review event {index + 1} ({what or '?'}{where}) refused: {problem}")


def text_hash(text: str) -> str:
    """The ``doc_hash`` of a text: sha256 of its UTF-8 bytes, hex (DuckDB's ``sha256(text)`` agrees)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def new_event(
    pred_run_id: str,
    doc_id: str,
    doc_hash: str,
    reviewer: str,
    action: str,
    **fields: Any,
) -> dict:
    """A review event dict with a fresh ``event_id`` and ``created_at`` (UTC now); ``fields`` are the
    optional ones: ``start``, ``end``, ``label``, ``new_start``, ``new_end``, ``new_label``,
    ``ref_event_id``."""
    unknown = set(fields) - set(_FIELDS)
    if unknown:
        raise ValueError(f"unknown review event fields {sorted(unknown)}; expected some of {list(_FIELDS)}")
    return {
        "event_id": uuid.uuid4().hex,
        "pred_run_id": pred_run_id,
        "doc_id": doc_id,
        "doc_hash": doc_hash,
        "reviewer": reviewer,
        "action": action,
        "created_at": _now().isoformat(),
        **fields,
    }


# ------------------------------------------------------------------------------------------ recording
def _int_or_none(event: Mapping, key: str, index: int) -> int | None:
    v = event.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise ReviewRefused(index, event, f"{key} must be an integer code-point offset, got {v!r}")
    return v


def _timestamp(event: Mapping, index: int) -> datetime:
    v = event.get("created_at")
    if v is None:
        return _now()
    if isinstance(v, str):
        try:
            v = datetime.fromisoformat(v)
        except ValueError:
            raise ReviewRefused(index, event, f"created_at {v!r} is not an ISO timestamp") from None
    if isinstance(v, datetime):  # stored as UTC without a zone, as storage.db.now() gives
        return v if v.tzinfo is None else v.astimezone(UTC).replace(tzinfo=None)
    raise ReviewRefused(index, event, f"created_at must be a datetime or ISO text, got {type(v).__name__}")


def _normalise(index: int, event: Any) -> dict:
    """The event's fields checked for shape (not against the database) and completed."""
    if not isinstance(event, Mapping):
        raise ReviewRefused(index, {}, f"expected a dict, got {type(event).__name__}")
    unknown = set(event) - set(_FIELDS)
    if unknown:
        raise ReviewRefused(index, event, f"unknown fields {sorted(unknown)}")
    reviewer = event.get("reviewer")
    if not isinstance(reviewer, str) or not reviewer.strip():
        raise ReviewRefused(index, event, "the reviewer's name is empty: give a name before deciding")
    for key in ("pred_run_id", "doc_id", "doc_hash"):
        if not isinstance(event.get(key), str) or not event[key]:
            raise ReviewRefused(index, event, f"{key} must be a non-empty string, got {event.get(key)!r}")
    action = event.get("action")
    if action not in ACTIONS:
        raise ReviewRefused(index, event, f"action must be one of {', '.join(ACTIONS)}, got {action!r}")
    out = {k: event.get(k) for k in _FIELDS}
    out["reviewer"] = reviewer.strip()
    out["event_id"] = str(event.get("event_id") or uuid.uuid4().hex)
    for key in ("start", "end", "new_start", "new_end"):
        out[key] = _int_or_none(event, key, index)
    for key in ("label", "new_label", "ref_event_id"):
        if out[key] is not None and (not isinstance(out[key], str) or not out[key].strip()):
            raise ReviewRefused(index, event, f"{key} must be a non-empty string, got {out[key]!r}")
    out["created_at"] = _timestamp(event, index)
    if action in ENTITY_ACTIONS and (out["start"] is None or out["end"] is None or out["label"] is None):
        raise ReviewRefused(index, event, "an entity decision needs the entity's start, end and label")
    if action == "relabel" and out["new_label"] is None:
        raise ReviewRefused(index, event, "relabel needs new_label")
    if action == "adjust" and (out["new_start"] is None or out["new_end"] is None):
        raise ReviewRefused(index, event, "adjust needs new_start and new_end")
    if action == "add_label" and out["label"] is None:
        raise ReviewRefused(index, event, "add_label needs label (the new label's name)")
    if action == "undo" and out["ref_event_id"] is None:
        raise ReviewRefused(index, event, "undo needs ref_event_id (the event it cancels)")
    return out


class _Doc:
    """What a batch of events is checked against for one (prediction run, document)."""

    def __init__(self, text: str, predicted: list[tuple[int, int, str]], events: list[dict]):
        self.text = text
        self.hash = text_hash(text)
        self.predicted = predicted
        self.events = events  # stored ones, then the batch's accepted ones, in order

    def state(self) -> dict[tuple[int, int, str], tuple[int, int, str] | None]:
        """key -> current (start, end, label), or None when rejected (:func:`ner_core.review.replay`; the
        batch's events, not recorded yet, come after the stored ones of the same ``created_at``)."""
        predicted = [{"start": a, "end": b, "label": lb} for a, b, lb in self.predicted]
        return {
            e.key: None if e.state == "rejected" else (e.start, e.end, e.label)
            for e in rule.replay(predicted, self.events)
        }


def _run_labels(con: duckdb.DuckDBPyConnection, pred_run_id: str) -> tuple[list[str], list[str]]:
    """(the model's labels: the training dataset's label set, or failing that, for a run over a stored
    dataset, that dataset's latest label set, plus the run's predicted labels; the labels added by
    add_label events)."""
    row = con.execute(
        "SELECT ds.labels FROM prediction_runs p JOIN runs r USING (run_id) "
        "JOIN datasets ds ON ds.name = r.dataset AND ds.version = coalesce(r.dataset_version, "
        "(SELECT max(version) FROM datasets WHERE name = r.dataset)) WHERE p.pred_run_id = ?",
        [pred_run_id],
    ).fetchone()
    if not (row and row[0]):  # e.g. an evaluation's run of a model no training run is stored for
        row = con.execute(
            "SELECT ds.labels FROM prediction_runs p JOIN datasets ds ON p.input_kind = 'dataset' "
            "AND ds.name = regexp_extract(p.input_ref, '^(.*)/[^/]*$', 1) WHERE p.pred_run_id = ? "
            "ORDER BY ds.version DESC LIMIT 1",
            [pred_run_id],
        ).fetchone()
    predicted = [
        r[0]
        for r in con.execute(
            "SELECT DISTINCT label FROM predicted_entities WHERE pred_run_id = ? ORDER BY label",
            [pred_run_id],
        ).fetchall()
    ]
    model = sorted(set(row[0]) | set(predicted)) if row and row[0] else predicted
    added = [
        r[0]
        for r in con.execute(
            "SELECT DISTINCT label FROM v_review_effective WHERE pred_run_id = ? AND action = 'add_label' "
            "ORDER BY label",
            [pred_run_id],
        ).fetchall()
    ]
    return model, [a for a in added if a not in model]


#: per (pred_run_id, doc_id) of ``_keys``: the dataset and latest version holding another text under the
#: doc_id than the run predicted (only runs that read a stored dataset: input_ref is ``dataset/split``)
_CHANGED_SQL = """
    SELECT k.pred_run_id, k.doc_id, cur.dataset, cur.version
    FROM _keys k
    JOIN prediction_runs p USING (pred_run_id)
    JOIN predicted_documents d USING (pred_run_id, doc_id)
    JOIN documents cur ON p.input_kind = 'dataset'
                      AND cur.dataset = regexp_extract(p.input_ref, '^(.*)/[^/]*$', 1)
                      AND cur.doc_id = k.doc_id
                      AND cur.version = (SELECT max(version) FROM datasets WHERE name = cur.dataset)
    WHERE cur.text <> d.text
"""


def _changed_message(dataset: str, version: int) -> str:
    return (
        f"the document changed since it was predicted (dataset {dataset!r} version {version} holds another "
        f"text under this doc_id): predict it again and review the new run"
    )


def _with_keys(con: duckdb.DuckDBPyConnection, keys: Sequence[tuple[str, str]]) -> None:
    con.register(
        "_keys",
        pa.table(
            {"pred_run_id": [k[0] for k in keys], "doc_id": [k[1] for k in keys]},
            schema=pa.schema([("pred_run_id", pa.string()), ("doc_id", pa.string())]),
        ),
    )


def _changed_since_predicted(con: duckdb.DuckDBPyConnection, pred_run_id: str, doc_id: str) -> str:
    """A one-line reason when the run read a stored dataset whose latest version holds another text under
    ``doc_id`` (ingested again since), else ''."""
    _with_keys(con, [(pred_run_id, doc_id)])
    try:
        rows = con.execute(_CHANGED_SQL).fetchall()
    finally:
        con.unregister("_keys")
    return _changed_message(rows[0][2], rows[0][3]) if rows else ""


def _load_docs(
    con: duckdb.DuckDBPyConnection, keys: Sequence[tuple[str, str]]
) -> tuple[dict[tuple[str, str], _Doc], dict[tuple[str, str], str]]:
    """The documents ``keys`` (pred_run_id, doc_id) as stored, with their predicted entity keys and
    review events, in a few queries; and the one-line reason for each one changed by a later ingest."""
    _with_keys(con, keys)
    try:
        texts = con.execute(
            "SELECT pred_run_id, doc_id, text FROM predicted_documents "
            "SEMI JOIN _keys USING (pred_run_id, doc_id)"
        ).fetchall()
        docs = {(r, d): _Doc(t, [], []) for r, d, t in texts}
        for r, d, a, b, lb in con.execute(
            'SELECT pred_run_id, doc_id, "start", "end", label FROM predicted_entities '
            "SEMI JOIN _keys USING (pred_run_id, doc_id)"
        ).fetchall():
            docs[(r, d)].predicted.append((a, b, lb))
        for ev in _rows(
            con,
            "SELECT * FROM review_events SEMI JOIN _keys USING (pred_run_id, doc_id) "
            "ORDER BY created_at, seq, event_id",
        ):
            docs[(ev["pred_run_id"], ev["doc_id"])].events.append(ev)
        changed = {(r, d): _changed_message(ds, v) for r, d, ds, v in con.execute(_CHANGED_SQL).fetchall()}
    finally:
        con.unregister("_keys")
    return docs, changed


def _check_span(doc: _Doc, start: int, end: int, what: str) -> str:
    if not 0 <= start < end <= len(doc.text):
        return f"{what} [{start}, {end}) is not a non-empty span of the {len(doc.text)}-character text"
    return ""


def _overlap(doc: _Doc, state: dict, key: tuple[int, int, str]) -> str:
    cur = state.get(key)
    if cur is None:
        return ""
    for other_key, other in state.items():
        if other_key != key and other is not None and other[0] < cur[1] and cur[0] < other[1]:
            return (
                f"span [{cur[0]}, {cur[1]}) {doc.text[cur[0] : cur[1]]!r} overlaps the current entity "
                f"{other[2]} [{other[0]}, {other[1]}) {doc.text[other[0] : other[1]]!r}: "
                "reject or adjust it first"
            )
    return ""


def _duplicate(doc: _Doc, state: dict, key: tuple[int, int, str]) -> str:
    """A span run's rule: no two current entities on the same span with the same label."""
    cur = state.get(key)
    if cur is None:
        return ""
    for other_key, other in state.items():
        if other_key != key and other == cur:
            return (
                f"{cur[2]} [{cur[0]}, {cur[1]}) {doc.text[cur[0] : cur[1]]!r} is already a current entity "
                f"(named {other_key[2]} [{other_key[0]}, {other_key[1]})): decide on that one"
            )
    return ""


def run_decoder(con: duckdb.DuckDBPyConnection, pred_run_id: str) -> str:
    """``crf`` or ``span``: the decoder prediction run ``pred_run_id``'s stored config names; a config
    without one (runs stored before the span decoder), an unreadable one or an unknown run is ``crf``."""
    row = con.execute(
        "SELECT json_extract_string(config, '$.decoder') FROM prediction_runs WHERE pred_run_id = ?",
        [pred_run_id],
    ).fetchone()
    return row[0] if row and row[0] in DECODERS else "crf"


def _problem(doc: _Doc, ev: dict, labels: set[str], decoder: str = "crf") -> str:
    """Why ``ev`` cannot follow ``doc.events`` ('' when it can); ``decoder``: the run's (overlapping
    entities are refused in a ``crf`` run's document only)."""
    if ev["doc_hash"] != doc.hash:
        return (
            "the document's text differs from the one the reviewer saw (doc_hash mismatch: it changed since "
            "it was shown): reload it"
        )
    action = ev["action"]
    if action == "undo":
        ref = next((e for e in doc.events if e["event_id"] == ev["ref_event_id"]), None)
        if ref is None:
            return f"undo names event {ev['ref_event_id']!r}, which is not an event of this document"
        if ref["action"] == "undo":
            return "an undo cannot be undone: record the decision again"
        return ""
    if action == "add_label":
        return ""
    if action not in ENTITY_ACTIONS:
        return ""
    key = (ev["start"], ev["end"], ev["label"])
    bad = _check_span(doc, ev["start"], ev["end"], "entity")
    if bad:
        return bad
    state = doc.state()
    if action != "add" and key not in state:
        return (
            f"no entity {ev['label']} [{ev['start']}, {ev['end']}) in this document "
            f"(decisions name an entity by its predicted or added span and label)"
        )
    new_label = ev["new_label"] if action in ("relabel", "adjust") else ev["label"]
    if action == "add" or new_label is not None and new_label != ev["label"]:
        if (new_label or ev["label"]) not in labels:
            return (
                f"label {new_label or ev['label']!r} is not in the label set {sorted(labels)} "
                f"(add it first with an add_label event)"
            )
    if action == "adjust":
        bad = _check_span(doc, ev["new_start"], ev["new_end"], "new span")
        if bad:
            return bad
    doc.events.append(ev)  # tentatively: the overlap rule looks at the state after the decision
    try:
        return (_duplicate if decoder == "span" else _overlap)(doc, doc.state(), key)
    finally:
        doc.events.pop()


def _validate(con: duckdb.DuckDBPyConnection, events: list[tuple[int, dict]]) -> None:
    docs, changed = _load_docs(con, sorted({(ev["pred_run_id"], ev["doc_id"]) for _, ev in events}))
    labels: dict[str, set[str]] = {}
    decoders: dict[str, str] = {}
    for index, ev in events:
        run, doc_id = ev["pred_run_id"], ev["doc_id"]
        if (run, doc_id) not in docs:
            raise ReviewRefused(index, ev, f"prediction run {run!r} has no document {doc_id!r}")
        if (run, doc_id) in changed:
            raise ReviewRefused(index, ev, changed[(run, doc_id)])
        if run not in labels:
            model, added = _run_labels(con, run)
            labels[run] = set(model) | set(added)
            decoders[run] = run_decoder(con, run)
        doc = docs[(run, doc_id)]
        problem = _problem(doc, ev, labels[run], decoders[run])
        if problem:
            raise ReviewRefused(index, ev, problem)
        doc.events.append(ev)
        if ev["action"] == "add_label":
            labels[run].add(ev["label"])


def record_events(db: str | Path, events: Sequence[Mapping[str, Any]], *, wait_s: float = 10.0) -> int:
    """Append review events in one transaction; returns how many were new.

    Each event is a dict with ``pred_run_id``, ``doc_id``, ``doc_hash``, ``reviewer``, ``action`` and, as
    the action needs, ``start``, ``end``, ``label``, ``new_start``, ``new_end``, ``new_label``,
    ``ref_event_id``; ``event_id`` (default: a new uuid) and ``created_at`` (datetime or ISO text, UTC;
    default: now) complete it; each new event gets the next ``seq`` (review_event_seq), in batch order: its
    place among events of the same ``created_at`` (:mod:`ner_core.review`). An ``event_id`` already stored
    (or repeated in the batch) is skipped: a retried write never duplicates. The events are checked in
    order, each against the stored events and the batch's earlier ones; the first that cannot be recorded
    raises :class:`ReviewRefused` (a ``ValueError``, one line) and nothing is written.
    :class:`storage.db.DatabaseLockedError` after ``wait_s`` seconds when another process holds the
    database.
    """
    if isinstance(events, Mapping) or not isinstance(events, Sequence):
        raise ValueError(f"expected a list of review event dicts, got {type(events).__name__}")
    batch = [_normalise(i, e) for i, e in enumerate(events)]
    if not batch:
        return 0
    with open_db(db, wait_s=wait_s) as con:
        con.execute("BEGIN")
        try:
            ids = [e["event_id"] for e in batch]
            stored = {
                r[0]
                for r in con.execute(
                    "SELECT event_id FROM review_events WHERE list_contains(?, event_id)", [ids]
                ).fetchall()
            }
            new: list[tuple[int, dict]] = []
            for i, e in enumerate(batch):
                if e["event_id"] not in stored:
                    stored.add(e["event_id"])
                    new.append((i, e))
            _validate(con, new)
            if new:
                _insert(con, [e for _, e in new])
            con.execute("COMMIT")
        except BaseException:
            rollback_quietly(con)
            raise
    return len(new)


def _q(field: str) -> str:
    return f'"{field}"' if field in ("start", "end") else field


def _insert(con: duckdb.DuckDBPyConnection, events: list[dict]) -> None:
    """Insert checked events with one ``recorded_at`` and increasing ``seq`` values in their order."""
    seqs = sorted(
        r[0]
        for r in con.execute("SELECT nextval('review_event_seq') FROM range(?)", [len(events)]).fetchall()
    )
    table = pa.table({f: [e[f] for e in events] for f in _FIELDS}, schema=_ARROW)
    con.register("_new", table.append_column("seq", pa.array(seqs, pa.int64())))
    cols = ", ".join(_q(f) for f in _FIELDS)
    con.execute(
        f"INSERT INTO review_events ({cols}, seq, recorded_at) SELECT {cols}, seq, ? FROM _new", [_now()]
    )
    con.unregister("_new")


# ------------------------------------------------------------------------------------------ reading
_DOCS = f"""
    SELECT d.doc_id, left(d.text, 80) AS preview, length(d.text) AS n_chars, d.n_entities, d.uncertainty,
           d.uncertainty / nullif(length(d.text), 0) AS uncertainty_per_char,
           (SELECT min(e.confidence) FROM predicted_entities e
            WHERE e.pred_run_id = d.pred_run_id AND e.doc_id = d.doc_id) AS min_confidence,
           EXISTS (SELECT 1 FROM v_review_effective s WHERE s.pred_run_id = d.pred_run_id
                   AND s.doc_id = d.doc_id AND s.action = 'skip') AS skipped,
           {_NEAR_DUP_KEY} AS near_dup_key, d.text
    FROM predicted_documents d
    WHERE d.pred_run_id = $run
      AND NOT EXISTS (SELECT 1 FROM v_reviewed_documents r
                      WHERE r.pred_run_id = d.pred_run_id AND r.doc_id = d.doc_id)
"""

_BY_UNCERTAINTY = "uncertainty DESC NULLS LAST, min_confidence ASC NULLS LAST, doc_id"
_BY_UNCERTAINTY_PER_CHAR = "uncertainty_per_char DESC NULLS LAST, min_confidence ASC NULLS LAST, doc_id"


def _near_dup_queue(by: str) -> str:
    """The queue most uncertain first by ``by``; of the texts sharing a near-duplicate key only the first
    is in the front part."""
    return f"""
        WITH q AS ({_DOCS}), r AS (
            SELECT *, row_number() OVER (PARTITION BY near_dup_key ORDER BY {by}) > 1 AS near_duplicate
            FROM q)
        SELECT * EXCLUDE (text, near_dup_key) FROM r
        ORDER BY skipped, near_duplicate, {by} LIMIT $limit"""


_QUEUE_SQL = {
    # near-duplicates: only the most uncertain text of each near-duplicate key is in the front part
    "uncertain": _near_dup_queue(_BY_UNCERTAINTY),
    "uncertain_per_char": _near_dup_queue(_BY_UNCERTAINTY_PER_CHAR),
    "disagree": f"""
        WITH q AS ({_DOCS}), dis AS (
            SELECT doc_id, count(*) AS n_disagreements FROM predicted_disagreements($run, $other)
            GROUP BY doc_id)
        SELECT q.* EXCLUDE (text, near_dup_key), dis.n_disagreements FROM q JOIN dis USING (doc_id)
        ORDER BY skipped, n_disagreements DESC, {_BY_UNCERTAINTY} LIMIT $limit""",
    "random": f"""
        WITH q AS ({_DOCS})
        SELECT * EXCLUDE (text, near_dup_key) FROM q
        ORDER BY skipped, hash(doc_id || ':' || $seed), doc_id LIMIT $limit""",
    "search": f"""
        WITH q AS ({_DOCS})
        SELECT * EXCLUDE (text, near_dup_key) FROM q
        WHERE contains(lower(text), lower($search))
        ORDER BY skipped, {_BY_UNCERTAINTY} LIMIT $limit""",
}


def review_queue(
    db: str | Path,
    pred_run_id: str,
    order: str = "uncertain",
    *,
    compare_run: str | None = None,
    search: str | None = None,
    seed: int = 0,
    limit: int = 50,
    wait_s: float = 10.0,
) -> list[dict]:
    """The next documents to review of a prediction run: those without a ``done`` event, at most ``limit``.

    ``order``:

    - ``uncertain``: the highest ``uncertainty`` first (the document's summed token entropy of the CRF
      marginals, stored at prediction time); rows without it (written by older code) come after, by their
      lowest entity confidence. Near-duplicates do not crowd the top: of the texts sharing one key (the
      lower-cased NFC text without spaces, punctuation, symbols and digits) only the most uncertain is
      in the front part; the others (``near_duplicate`` true) follow all of those. A sum grows with the
      text, so this order puts long documents first.
    - ``uncertain_per_char``: as ``uncertain``, by the uncertainty per character (``uncertainty_per_char``,
      the sum over the text's length in code points): the documents that are uncertain throughout, whatever
      their length.
    - ``disagree``: only documents where ``compare_run`` predicted other entities (same doc_id), the most
      disagreements first (``n_disagreements``).
    - ``random``: a shuffle fixed by ``seed``.
    - ``search``: documents whose text contains ``search`` (case-insensitive), most uncertain first.

    Skipped documents (a ``skip`` event) come last in every order. Each row: ``doc_id``, ``preview`` (the
    first 80 characters), ``n_chars``, ``n_entities``, ``uncertainty``, ``uncertainty_per_char``,
    ``min_confidence``, ``skipped``, and ``near_duplicate`` (the uncertain orders) or ``n_disagreements``
    (disagree).
    """
    if order not in ORDERS:
        raise ValueError(f"order must be one of {', '.join(ORDERS)}, got {order!r}")
    if not isinstance(limit, int) or limit < 1:
        raise ValueError(f"expected limit >= 1, got {limit!r}")
    params: dict[str, Any] = {"run": pred_run_id, "limit": limit}
    if order == "disagree":
        if not isinstance(compare_run, str) or not compare_run:
            raise ValueError("order 'disagree' needs compare_run: the prediction run to compare with")
        if compare_run == pred_run_id:
            raise ValueError(f"compare_run must be another prediction run than {pred_run_id!r}")
        params["other"] = compare_run
    elif order == "random":
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"expected an integer seed, got {seed!r}")
        params["seed"] = str(seed)
    elif order == "search":
        if not isinstance(search, str) or not search.strip():
            raise ValueError("order 'search' needs a non-empty search text")
        params["search"] = search.strip()
    with _read(db, wait_s) as con:
        cur = con.execute(_QUEUE_SQL[order], params)
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]


def reviewed_documents(
    db: str | Path, pred_run_id: str, *, limit: int = 50, wait_s: float = 10.0
) -> list[dict]:
    """The run's reviewed documents (a ``done`` in force), the latest reviewed first, at most ``limit``:
    ``doc_id``, ``preview`` (the first 80 characters), ``n_chars``, ``reviewed_at``, ``reviewers``. The
    queue leaves them out; this is how a reviewer finds one again to reopen it."""
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"expected limit >= 1, got {limit!r}")
    with _read(db, wait_s) as con:
        return _rows(
            con,
            "SELECT r.doc_id, left(d.text, 80) AS preview, length(d.text) AS n_chars, r.reviewed_at, "
            "r.reviewers FROM v_reviewed_documents r JOIN predicted_documents d USING (pred_run_id, doc_id) "
            "WHERE r.pred_run_id = ? ORDER BY r.reviewed_at DESC, r.doc_id LIMIT ?",
            [pred_run_id, limit],
        )


def review_progress(db: str | Path, pred_run_id: str, *, wait_s: float = 10.0) -> dict:
    """``{"reviewed", "queued", "skipped", "total"}``: documents of the run with a ``done`` event, without
    one (``skipped``: of those, the ones sent to the back of the queue), all."""
    with _read(db, wait_s) as con:
        total, reviewed, skipped = con.execute(
            """
            SELECT count(*), count(r.doc_id),
                   count(*) FILTER (WHERE r.doc_id IS NULL AND EXISTS (
                       SELECT 1 FROM v_review_effective s WHERE s.pred_run_id = d.pred_run_id
                       AND s.doc_id = d.doc_id AND s.action = 'skip'))
            FROM predicted_documents d LEFT JOIN v_reviewed_documents r USING (pred_run_id, doc_id)
            WHERE d.pred_run_id = ?
            """,
            [pred_run_id],
        ).fetchone()
    return {"reviewed": reviewed, "queued": total - reviewed, "skipped": skipped, "total": total}


_CURRENT = """
    SELECT "start", "end", label, text, confidence, state, key_start, key_end, key_label, last_action,
           reviewer, decided_at, event_id
    FROM v_review_current WHERE pred_run_id = ? AND doc_id = ? ORDER BY "start", "end", label
"""


def current_entities(db: str | Path, pred_run_id: str, doc_id: str, *, wait_s: float = 10.0) -> list[dict]:
    """The document's current entities (view ``v_review_current``), by start: ``start``, ``end``,
    ``label``, ``text`` (the mention), ``confidence`` (the prediction's; None for added), ``state``
    (predicted | accepted | corrected | added), ``key_start``, ``key_end``, ``key_label`` (how a decision
    names this entity), ``last_action``, ``reviewer``, ``decided_at``, ``event_id`` (of the decision in
    force; None while predicted)."""
    with _read(db, wait_s) as con:
        return _rows(con, _CURRENT, [pred_run_id, doc_id])


_PREDICTED = """
    SELECT "start", "end", label, text, confidence FROM predicted_entities
    WHERE pred_run_id = ? AND doc_id = ? ORDER BY "start", "end", label
"""


def _replayed(text: str, predicted: list[dict], events: list[dict]) -> tuple[list[dict], list[dict]]:
    """(current entities as :func:`current_entities` gives them, rejected keys) of a document, replayed by
    :func:`ner_core.review.replay` (the view ``v_review_current`` agrees)."""
    current, rejected = [], []
    for e in rule.replay(predicted, events):
        if e.state == "rejected":
            s, t, label = e.key
            row = {"start": s, "end": t, "label": label, "text": text[s:t], "reviewer": e.reviewer}
            rejected.append({**row, "event_id": e.event_id, "decided_at": e.decided_at})
            continue
        current.append(
            {
                "start": e.start,
                "end": e.end,
                "label": e.label,
                "text": text[e.start : e.end],
                "confidence": e.confidence,
                "state": e.state,
                "key_start": e.key[0],
                "key_end": e.key[1],
                "key_label": e.key[2],
                "last_action": e.action,
                "reviewer": e.reviewer,
                "decided_at": e.decided_at,
                "event_id": e.event_id,
            }
        )
    return current, rejected


def document_for_review(db: str | Path, pred_run_id: str, doc_id: str, *, wait_s: float = 10.0) -> dict:
    """Everything the Review page shows of one document, in one read. ``KeyError`` when the run has no such
    document.

    Returns ``{"pred_run_id", "doc_id", "text", "doc_hash", "uncertainty", "reviewed", "changed",
    "predicted", "entities", "rejected", "events", "disagreements", "labels", "added_labels"}``:
    ``predicted``: the run's entities of the document (``start``, ``end``, ``label``, ``text``,
    ``confidence``), what the page replays the events over; ``entities`` as :func:`current_entities`;
    ``rejected``: the keys (``start``, ``end``, ``label``, ``text``, ``reviewer``, ``event_id``,
    ``decided_at``) whose latest decision is a reject; ``events``: every event of the document in the
    order of :mod:`ner_core.review` (``created_at``, then ``seq``) with ``undone`` (bool);
    ``disagreements``: rows of ``v_review_disagreements`` (one per reviewer: ``start``, ``end``, ``label``,
    ``reviewer``, ``action``, ``new_*``, ``outcome``, ``created_at``); ``changed``: '' or the one-line
    reason a decision would be refused because a later ingest changed the text; ``labels``: the model's
    label set; ``added_labels``: the ones added by ``add_label`` events; ``decoder``: the run's
    (:func:`run_decoder`: ``span`` when its entities may overlap).
    """
    with _read(db, wait_s) as con:
        row = con.execute(
            "SELECT d.text, d.uncertainty, r.doc_id IS NOT NULL FROM predicted_documents d "
            "LEFT JOIN v_reviewed_documents r USING (pred_run_id, doc_id) "
            "WHERE d.pred_run_id = ? AND d.doc_id = ?",
            [pred_run_id, doc_id],
        ).fetchone()
        if row is None:
            raise KeyError(f"no document {doc_id!r} in prediction run {pred_run_id!r}")
        text, uncertainty, reviewed = row
        predicted = _rows(con, _PREDICTED, [pred_run_id, doc_id])
        events = _rows(
            con,
            "SELECT e.*, e.event_id IN (SELECT ref_event_id FROM review_events u WHERE u.action = 'undo' "
            "AND u.pred_run_id = e.pred_run_id AND u.doc_id = e.doc_id) AS undone FROM review_events e "
            "WHERE pred_run_id = ? AND doc_id = ? ORDER BY created_at, seq, event_id",
            [pred_run_id, doc_id],
        )
        disagreements = _rows(
            con,
            "SELECT * EXCLUDE (pred_run_id, doc_id) FROM v_review_disagreements WHERE pred_run_id = ? "
            'AND doc_id = ? ORDER BY "start", "end", label, created_at',
            [pred_run_id, doc_id],
        )
        changed = _changed_since_predicted(con, pred_run_id, doc_id)
        model, added = _run_labels(con, pred_run_id)
        decoder = run_decoder(con, pred_run_id)
    entities, rejected = _replayed(text, predicted, events)
    return {
        "pred_run_id": pred_run_id,
        "doc_id": doc_id,
        "text": text,
        "doc_hash": text_hash(text),
        "uncertainty": uncertainty,
        "reviewed": bool(reviewed),
        "changed": changed,
        "predicted": predicted,
        "entities": entities,
        "rejected": rejected,
        "events": events,
        "disagreements": disagreements,
        "labels": model,
        "added_labels": added,
        "decoder": decoder,
    }


def identical_mentions(
    db: str | Path,
    pred_run_id: str,
    text: str,
    label: str | None,
    *,
    include_reviewed: bool = False,
    wait_s: float = 10.0,
) -> list[dict]:
    """Current entities of the run whose mention is exactly ``text`` with ``label`` (None: any label), in
    documents not reviewed yet (``include_reviewed``: in all): for "apply to every identical mention".

    Each row: ``doc_id``, ``doc_hash`` (for the events), ``start``, ``end``, ``label``, ``text``, ``state``,
    ``key_start``, ``key_end``, ``key_label``; by doc_id and start."""
    if not isinstance(text, str) or not text:
        raise ValueError(f"expected a non-empty mention text, got {text!r}")
    with _read(db, wait_s) as con:
        return _rows(
            con,
            """
            SELECT c.doc_id, sha256(d.text) AS doc_hash, c."start", c."end", c.label, c.text, c.state,
                   c.key_start, c.key_end, c.key_label
            FROM v_review_current c JOIN predicted_documents d USING (pred_run_id, doc_id)
            WHERE c.pred_run_id = ? AND c.text = ? AND (? IS NULL OR c.label = ?) AND (? OR NOT c.reviewed)
            ORDER BY c.doc_id, c."start"
            """,
            [pred_run_id, text, label, label, include_reviewed],
        )


def review_labels(db: str | Path, pred_run_id: str, *, wait_s: float = 10.0) -> dict:
    """``{"model": [...], "added": [...]}``: the labels a reviewer may choose for this run (the training
    dataset's label set, or the run's predicted labels when no training run is stored) and those added by
    ``add_label`` events."""
    with _read(db, wait_s) as con:
        model, added = _run_labels(con, pred_run_id)
    return {"model": model, "added": added}


# ------------------------------------------------------------------------------------------ evaluations
class _EvalEntity(NamedTuple):
    """An entity as :func:`storage.predictions.write_predictions` takes it; an evaluation stored none of
    the model's confidences."""

    start: int
    end: int
    label: str
    text: str
    confidence: float | None = None


def _report_decoder(report: Mapping[str, Any]) -> str | None:
    """The decoder an evaluation report names (``decoder``, or ``config.decoder`` as a string or as a
    ``{"type": ...}`` mapping); ``None`` when it names none (reports stored before the span decoder)."""
    for got in (report.get("decoder"), (report.get("config") or {}).get("decoder")):
        got = got.get("type") if isinstance(got, Mapping) else got
        if got in DECODERS:
            return got
    return None


def _error_documents(eval_id: str, report: Mapping[str, Any]) -> tuple[list[tuple], str]:
    """(the report's sentences with errors as prediction rows ``(doc_id, text, entities, None)``, the
    decoder). A span model's predictions may overlap: the decoder is the report's, else ``span`` when
    some sentence's predictions overlap (a CRF predicts none), else ``crf``. A sentence whose predicted
    spans leave its text, or overlap in a CRF model's report, refuses the whole evaluation in one line."""
    from ner_core.metrics import ErrorSentence

    named = _report_decoder(report) if isinstance(report, Mapping) else None
    out, seen, overlaps = [], set(), False
    for i, raw in enumerate(report.get("error_sentences") or []):
        try:
            sent = ErrorSentence.model_validate(raw)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(x) for x in err["loc"]) or "the sentence"
            raise ValueError(
                f"evaluation {eval_id!r}: error sentence {i + 1}: {where}: {err['msg']}"
            ) from None
        if sent.doc_id in seen:
            continue
        seen.add(sent.doc_id)
        ents, end = [], 0
        for e in sorted(sent.pred, key=lambda x: (x.start, x.end)):
            overlap = e.start < end
            if e.end > len(sent.text) or overlap and named == "crf":
                raise ValueError(
                    f"evaluation {eval_id!r}: document {sent.doc_id!r} has a predicted span [{e.start}, "
                    f"{e.end}) outside its {len(sent.text)} characters or overlapping another"
                )
            overlaps |= overlap
            ents.append(_EvalEntity(e.start, e.end, e.label, sent.text[e.start : e.end]))
            end = max(end, e.end)
        out.append((sent.doc_id, sent.text, ents, None))
    return out, named or ("span" if overlaps else "crf")


def evaluation_review_run(db: str | Path, eval_id: str, *, wait_s: float = 10.0) -> str:
    """The prediction run to review an evaluation's predictions in; returns its ``pred_run_id``.

    An evaluation scores a split without storing a prediction run, so its error browser had nothing to
    open. Its stored report holds the model's predictions of every sentence with an error: those become
    a prediction run ``eval-<eval_id>`` (input ``dataset/split``, so a later ingest that changes a text is
    caught as for any dataset run; no confidences or uncertainty), written the first time it is asked for
    (no model runs) and found again afterwards. When the evaluation is stored again (same id, new report),
    the run is written again; one with review events is kept and the new one is ``eval-<eval_id>-r2``.
    ``KeyError`` for an unknown evaluation; ``ValueError`` (one line) when its report holds no sentence
    with errors or a malformed one.
    """
    from storage.predictions import PredictionRunWriter

    with _read(db, wait_s) as con:
        row = con.execute(
            "SELECT run_id, model_dir, dataset, split, created_at, report FROM evaluations WHERE eval_id = ?",
            [eval_id],
        ).fetchone()
        if row is None:
            raise KeyError(f"no evaluation {eval_id!r} in {db}")
        run_id, model_dir, dataset, split, created_at, report = row
        found = con.execute(
            "SELECT pred_run_id FROM prediction_runs WHERE (pred_run_id = $id OR starts_with(pred_run_id, "
            "$id || '-r')) AND status = 'completed' AND json_extract_string(config, '$.evaluation') = $eval "
            "AND json_extract_string(config, '$.evaluated_at') = $at ORDER BY started_at DESC LIMIT 1",
            {"id": f"eval-{eval_id}", "eval": eval_id, "at": created_at.isoformat()},
        ).fetchone()
    if found:
        return found[0]
    docs, decoder = _error_documents(eval_id, json.loads(report) if report else {})
    if not docs:
        raise ValueError(f"evaluation {eval_id!r} stored no sentence with errors: nothing to review")
    kind, ref = ("dataset", f"{dataset}/{split}") if split else ("file", dataset)
    with PredictionRunWriter(
        db,
        f"eval-{eval_id}",
        model_dir=model_dir,
        run_id=run_id,
        input_kind=kind,
        input_ref=ref,
        settings={"evaluation": eval_id, "evaluated_at": created_at.isoformat()},
        extra={"source": "the evaluation report's sentences with errors", "decoder": decoder},
        replace=True,
    ) as writer:
        writer.write(docs)
    return writer.pred_run_id


# ------------------------------------------------------------------------------------------ the spool
class ReviewSpool:
    """Decisions kept on disk until the database takes them: a JSONL file, one event per line.

    :meth:`add` appends (and fsyncs) events, each with its ``event_id`` and ``created_at`` fixed then, so a
    page refresh or a restarted dashboard finds them (:meth:`pending`, :meth:`events`). :meth:`flush` writes
    them with :func:`record_events` in one transaction, waiting at most ``wait_s`` for another process's
    lock; on success the spool is rewritten without them (atomically, by rename). A crash between the two
    leaves them in the spool, and the next flush skips them by ``event_id``: never lost, never duplicated.
    An event the database refuses (:class:`ReviewRefused`) is moved, with the reason, to ``<path>.refused``
    (see :meth:`refused`) so it cannot block the ones after it. An OS file lock serialises sessions sharing
    one spool.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.refused_path = self.path.with_name(self.path.name + ".refused")
        self._lock_path = self.path.with_name(self.path.name + ".lock")

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self._lock_path, "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _read_lines(self, path: Path) -> list[dict]:
        if not path.exists():
            return []
        out = []
        for line in path.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # a torn last line of a crash mid-append: its add() never returned
                continue
        return out

    def _append(self, path: Path, rows: Sequence[Mapping]) -> None:
        with open(path, "a", encoding="utf-8") as fh:
            for r in rows:
                fh.write(json.dumps(r, ensure_ascii=False, default=str) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def _rewrite(self, rows: Sequence[Mapping]) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            for r in rows:
                fh.write(json.dumps(r, ensure_ascii=False, default=str) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)

    def add(self, events: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> list[str]:
        """Append events (a dict or a list) to the spool; returns their event_ids. Shapes are checked as
        :func:`record_events` does (an empty reviewer is refused here, before anything is spooled)."""
        batch = [events] if isinstance(events, Mapping) else list(events)
        rows = []
        for i, e in enumerate(batch):
            ev = _normalise(i, e)
            ev["created_at"] = ev["created_at"].isoformat()
            rows.append(ev)
        with self._locked():
            self._append(self.path, rows)
        return [r["event_id"] for r in rows]

    def events(self) -> list[dict]:
        """The events waiting in the spool, oldest first."""
        with self._locked():
            return self._read_lines(self.path)

    def pending(self) -> int:
        """How many events are waiting in the spool."""
        return len(self.events())

    def refused(self) -> list[dict]:
        """Events the database refused, each with ``refused_because`` (one line)."""
        with self._locked():
            return self._read_lines(self.refused_path)

    def flush(self, db: str | Path, *, wait_s: float = 0.5) -> tuple[int, int]:
        """Write the spooled events; returns ``(written, waiting)``: newly stored events, and events still
        in the spool (all of them while another process holds the database past ``wait_s``)."""
        with self._locked():
            queued = self._read_lines(self.path)
            written = 0
            while queued:
                try:
                    written += record_events(db, queued, wait_s=wait_s)
                except DatabaseLockedError:
                    break
                except ReviewRefused as exc:
                    bad = queued.pop(exc.index)
                    self._append(self.refused_path, [{**bad, "refused_because": str(exc)}])
                    self._rewrite(queued)
                    continue
                queued = []
                self._rewrite(queued)
            return written, len(queued)

    def submit(
        self, db: str | Path, events: Mapping | Sequence[Mapping], *, wait_s: float = 0.5
    ) -> tuple[int, int]:
        """:meth:`add` then :meth:`flush`: how the page records a decision. Returns ``(written, waiting)``."""
        self.add(events)
        return self.flush(db, wait_s=wait_s)
