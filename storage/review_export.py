"""Reviewed predictions become gold: a dataset version per export.

:func:`export_reviews` stores every document reviewed so far (a ``done`` event, see ``v_reviewed_documents``)
with its corrected entities (``v_review_current``) as the next version of a dataset, through the same code
path as an ingest (:func:`storage.datasets.store_plan`: one transaction, the fingerprint decides whether
anything is new), and records in ``review_exports`` which review events made that version.

- Gold: a document's entities after every decision (later wins); an entity left without a decision on a
  document marked done was seen and kept by the reviewer, so it is gold too.
- Cumulative: a version holds the reviewed documents of every prediction run exported into the dataset
  so far plus the given one; a document reviewed in two runs (same ``doc_id``) is taken from the run
  where it was reviewed last. Exporting with no new review event stores nothing (``created`` false).
- Leak check: into a ``train`` split, a document whose text is in a dev or test split of any stored
  dataset (any version) is left out: it would leak into the evaluation that decides promotion.
- A document whose corrected entities leave the text is left out too (counted); so is one whose entities
  overlap when it was reviewed in a flat (CRF) prediction run. A span run's document (its config's
  ``decoder`` is ``span``, :func:`storage.reviews.run_decoder`) keeps its overlapping entities, stored as
  an ingest stores a nested record: the outermost spans in ``gold_entities``, the others in
  ``dropped_spans`` with their reason (nested | crossing | same_span, the rules of
  :func:`ner_core.data.formats.overlaps.resolve_overlaps`), where a span-decoder training reads them.
- Labels: the label set of the model that predicted, plus the labels used, plus every label a reviewer
  added explicitly (``add_label`` events, kept as ``added_labels`` in the version's options).

Training on a base dataset plus an export (``ner train --plus``) is
:func:`storage.datasets.training_documents`; which dataset versions and review events made a model is
:func:`storage.runs.model_lineage`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from ner_core.data.formats.overlaps import resolve_overlaps
from ner_core.data.ingest import IngestOptions, IngestPlan, PlannedFile, check_dataset_name
from storage.datasets import store_plan, text_sha1
from storage.db import open_db
from storage.db import rows as _rows
from storage.predictions import unknown_prediction_run
from storage.reviews import run_decoder

__all__ = [
    "EXPORT_FORMAT",
    "export_reviews",
    "latest_reviewed_run",
    "new_decisions",
]

EXPORT_FORMAT = "review"  # datasets.format of a review export
_EVAL_SPLITS = ("dev", "test")


@dataclass(frozen=True)
class _ExportOptions(IngestOptions):
    """The stored ``options`` of an export version: where it came from, what was left out and why."""

    pred_runs: tuple[str, ...] = ()
    split: str = "train"
    added_labels: tuple[str, ...] = ()
    n_events: int = 0
    left_out: tuple[tuple[str, str], ...] = ()  # (doc_id, reason)

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": "review-export",
            "pred_runs": list(self.pred_runs),
            "split": self.split,
            "added_labels": list(self.added_labels),
            "n_events": self.n_events,
            "left_out": [{"doc_id": d, "reason": r} for d, r in self.left_out],
        }


# ---------------------------------------------------------------------------------------------- reads
def _export_runs(con, name: str, pred_run_id: str) -> list[str]:
    """The prediction runs exported into ``name`` before, plus ``pred_run_id``."""
    fmt = con.execute("SELECT format FROM datasets WHERE name = ? ORDER BY version DESC LIMIT 1", [name])
    row = fmt.fetchone()
    if row is not None and row[0] != EXPORT_FORMAT:
        raise ValueError(
            f"dataset {name!r} was ingested from files (format {row[0]}), not exported from reviews: "
            "give the export another --name"
        )
    if (
        con.execute("SELECT count(*) FROM prediction_runs WHERE pred_run_id = ?", [pred_run_id]).fetchone()[0]
        == 0
    ):
        raise ValueError(unknown_prediction_run(con, pred_run_id, "the database"))
    earlier = con.execute(
        "SELECT DISTINCT e.pred_run_id FROM review_exports x JOIN review_events e USING (event_id) "
        "WHERE x.dataset = ?",
        [name],
    ).fetchall()
    return sorted({r[0] for r in earlier} | {pred_run_id})


def _reviewed(con, runs: list[str]) -> list[dict]:
    """Reviewed documents of ``runs``, one per doc_id (the run where it was reviewed last wins)."""
    return _rows(
        con,
        "SELECT r.pred_run_id, r.doc_id, d.text FROM v_reviewed_documents r "
        "JOIN predicted_documents d USING (pred_run_id, doc_id) WHERE list_contains(?, r.pred_run_id) "
        "QUALIFY row_number() OVER (PARTITION BY r.doc_id "
        "ORDER BY r.reviewed_at DESC, r.pred_run_id DESC) = 1 "
        "ORDER BY r.pred_run_id, r.doc_id",
        [runs],
    )


def _current_entities(con, runs: list[str]) -> dict[tuple[str, str], list[tuple[int, int, str]]]:
    out: dict[tuple[str, str], list[tuple[int, int, str]]] = {}
    for run, doc, s, e, lab in con.execute(
        'SELECT pred_run_id, doc_id, "start", "end", label FROM v_review_current '
        'WHERE reviewed AND list_contains(?, pred_run_id) ORDER BY pred_run_id, doc_id, "start", "end"',
        [runs],
    ).fetchall():
        out.setdefault((run, doc), []).append((int(s), int(e), lab))
    return out


def _events(con, keys: list[tuple[str, str]], runs: list[str]) -> list[str]:
    """Every review event of the exported documents (undone ones and undos included: they are their
    history), plus the runs' add_label events (in force), sorted. Left-out documents' events are not
    behind the version: a decision on them alone makes nothing new."""
    if not keys:
        docs = pa.table({"pred_run_id": pa.array([], pa.string()), "doc_id": pa.array([], pa.string())})
    else:
        docs = pa.table({"pred_run_id": [k[0] for k in keys], "doc_id": [k[1] for k in keys]})  # noqa: F841
    ids = con.execute(
        "SELECT event_id FROM review_events SEMI JOIN docs USING (pred_run_id, doc_id) "
        "UNION SELECT event_id FROM v_review_effective WHERE action = 'add_label' "
        "AND list_contains(?, pred_run_id) ORDER BY 1",
        [runs],
    ).fetchall()
    return [r[0] for r in ids]


def _added_labels(con, runs: list[str]) -> list[str]:
    return sorted(
        r[0]
        for r in con.execute(
            "SELECT DISTINCT label FROM v_review_effective WHERE action = 'add_label' AND label IS NOT NULL "
            "AND list_contains(?, pred_run_id)",
            [runs],
        ).fetchall()
    )


def _model_labels(con, runs: list[str]) -> list[str]:
    """The label set the reviewers chose from: each run's model directory's saved labels
    (:func:`ner_core.artifacts.modeldir.saved_labels`), else the labels of the dataset version the model
    was trained on; and the labels it predicted."""
    from ner_core.artifacts.modeldir import saved_labels  # lazy: it imports torch

    labels: set[str] = set()
    for model_dir, ds_labels in con.execute(
        "SELECT p.model_dir, d.labels FROM prediction_runs p "
        "LEFT JOIN runs r USING (run_id) LEFT JOIN datasets d ON d.name = r.dataset AND d.version = "
        "r.dataset_version WHERE list_contains(?, p.pred_run_id)",
        [runs],
    ).fetchall():
        labels.update(saved_labels(model_dir) or ds_labels or [])
    predicted = con.execute(
        "SELECT DISTINCT label FROM predicted_entities WHERE list_contains(?, pred_run_id)", [runs]
    ).fetchall()
    return sorted(labels | {r[0] for r in predicted})


def _eval_split_texts(con, texts: list[str]) -> dict[str, str]:
    """sha1 of each text in ``texts`` that is in a dev/test split of a stored dataset -> where."""
    cand = pa.table({"text_sha1": sorted({text_sha1(t) for t in texts})})  # noqa: F841
    return {
        h: where
        for h, where in con.execute(
            "SELECT d.text_sha1, min(d.dataset || ' v' || d.version || ' ' || d.split) FROM documents d "
            "SEMI JOIN cand USING (text_sha1) WHERE list_contains(?, d.split) GROUP BY d.text_sha1",
            [list(_EVAL_SPLITS)],
        ).fetchall()
    }


def _span_problem(text: str, spans: list[tuple[int, int, str]], nested: bool = False) -> str | None:
    """Why the document cannot be exported (``None`` when it can); ``nested``: overlaps are allowed (a
    span run's document)."""
    prev_end = -1
    for s, e, lab in sorted(spans):
        if not (0 <= s < e <= len(text)):
            return f"entity {lab}[{s},{e}) lies outside the text of {len(text)} characters"
        if s < prev_end and not nested:
            return f"entities overlap at {lab}[{s},{e}) (a flat prediction run's document)"
        prev_end = max(prev_end, e)
    return None


def _split_nested(doc_id: str, spans: list[tuple[int, int, str]]) -> tuple[list, list[tuple]]:
    """(the outermost spans, the others as ``IngestPlan.dropped`` rows with their reason)."""
    kept, dropped = resolve_overlaps(sorted(set(spans)))
    return kept, [(doc_id, *d, reason, *k) for d, k, reason in dropped]


# ---------------------------------------------------------------------------------------------- export
def _plan(con, pred_run_id: str, name: str, split: str) -> tuple[IngestPlan, list[str], dict]:
    """The export as an :class:`IngestPlan`, its event ids and what was left out."""
    runs = _export_runs(con, name, pred_run_id)
    reviewed = _reviewed(con, runs)
    ents = _current_entities(con, runs)
    leaks = _eval_split_texts(con, [r["text"] for r in reviewed]) if split == "train" else {}
    nested = {run for run in runs if run_decoder(con, run) == "span"}
    rows, left_out, leaked, dropped = [], [], [], []
    for r in reviewed:
        spans = ents.get((r["pred_run_id"], r["doc_id"]), [])
        where = leaks.get(text_sha1(r["text"]))
        problem = f"in {where}" if where else _span_problem(r["text"], spans, r["pred_run_id"] in nested)
        if problem:
            left_out.append((r["doc_id"], problem))
            leaked += [r["doc_id"]] if where else []
            continue
        if r["pred_run_id"] in nested:
            spans, inner = _split_nested(r["doc_id"], spans)
            dropped += inner
        rows.append((r["doc_id"], r["text"], spans, None, f"review:{r['pred_run_id']}"))
    events = _events(con, [(row[4].removeprefix("review:"), row[0]) for row in rows], runs)
    added = _added_labels(con, runs)
    used = {lab for r in rows for _, _, lab in r[2]} | {d[3] for d in dropped}
    labels = sorted(set(_model_labels(con, runs)) | set(added) | used)
    options = _ExportOptions(
        format=EXPORT_FORMAT,
        pred_runs=tuple(runs),
        split=split,
        added_labels=tuple(added),
        n_events=len(events),
        left_out=tuple(left_out),
    )
    # what makes the content: the events, the split, the label set and which documents were left out (not
    # why: a later ingest may name another dataset version as the reason without changing anything)
    content = {"events": events, "split": split, "runs": runs, "labels": labels, "added": added}
    content["left_out"] = sorted(d for d, _ in left_out)
    fingerprint = hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()
    per_run: dict[str, list] = {}
    for row in rows:
        per_run.setdefault(row[4], []).append(row)
    files = [
        PlannedFile(
            split, src, EXPORT_FORMAT, hashlib.sha256("\n".join(events).encode()).hexdigest(), 0, len(rs)
        )
        for src, rs in sorted(per_run.items())
    ]
    counts = {
        split: {
            "documents": len(rows),
            "entities": sum(len(r[2]) for r in rows),
            "characters": sum(len(r[1]) for r in rows),
        }
    }
    plan = IngestPlan(
        name,
        fingerprint,
        options,
        files,
        rows,
        [split] * len(rows),
        [],
        labels,
        counts,
        EXPORT_FORMAT,
        None,
        0,
        dropped,
    )
    facts = {"left_out": left_out, "leaked": leaked, "added_labels": added, "runs": runs, "nested": dropped}
    return plan, events, facts


def export_reviews(db_path: str | Path, pred_run_id: str, name: str, split: str = "train") -> dict:
    """Store the documents reviewed so far (with their corrected entities as gold) as the next version of
    dataset ``name``, split ``split``; record its review events in ``review_exports``.

    Returns ``{"dataset", "version", "created", "split", "documents", "entities", "labels", "added_labels",
    "events", "new_events", "left_out", "left_out_leak", "left_out_docs", "nested", "message"}``
    (``entities``: the outermost ones; ``nested``: the other entities of span runs' documents, stored in
    ``dropped_spans``); ``created`` is false
    (and ``version`` the latest one) when no review event is new. ``ValueError`` (one line) for an unknown
    prediction run, a bad name, a name that belongs to an ingested dataset, or nothing reviewed yet.
    """
    check_dataset_name(name)
    if split not in ("train", "dev", "test"):
        raise ValueError(f"split must be train, dev or test, got {split!r}")
    with open_db(db_path, read_only=True) as con:
        plan, events, facts = _plan(con, pred_run_id, name, split)
        before = set(
            r[0]
            for r in con.execute("SELECT event_id FROM review_exports WHERE dataset = ?", [name]).fetchall()
        )
    if not plan.rows:
        why = (
            f"; {len(facts['left_out'])} left out ({facts['left_out'][0][1]}, ...)"
            if facts["left_out"]
            else ""
        )
        raise ValueError(
            f"prediction run {pred_run_id!r} has no reviewed document to export (a document counts once a "
            f"reviewer marked it done){why}"
        )
    report = store_plan(db_path, plan)
    _record_events(db_path, name, report.version, events)
    return _result(plan, report, events, before, facts)


def _record_events(db_path: str | Path, name: str, version: int, events: list[str]) -> None:
    """Idempotent: the rows a crash between the two transactions left out are added by the next export."""
    ev = pa.table({"event_id": pa.array(events, pa.string())})  # noqa: F841
    with open_db(db_path) as con:
        con.execute(
            "INSERT INTO review_exports (dataset, version, event_id) SELECT ?, ?, event_id FROM ev "
            "ANTI JOIN (SELECT event_id FROM review_exports WHERE dataset = ? AND version = ?) "
            "USING (event_id)",
            [name, version, name, version],
        )


def _result(plan: IngestPlan, report, events: list[str], before: set[str], facts: dict) -> dict:
    left_out, leaked = facts["left_out"], facts["leaked"]
    n_new = len(set(events) - before)
    c = plan.counts[plan.splits[0]]
    if report.created:
        msg = (
            f"dataset {plan.dataset!r} version {report.version}: {c['documents']} reviewed documents "
            f"({c['entities']} entities) in split {plan.splits[0]} from {len(events)} review events "
            f"({n_new} new)"
        )
    else:
        msg = (
            f"nothing new: dataset {plan.dataset!r} version {report.version} already holds these "
            f"{len(events)} review events (no new version)"
        )
    lines = [msg]
    if leaked:
        lines.append(
            f"{len(leaked)} documents left out: they are in a dev/test split of a stored dataset "
            f"({', '.join(leaked[:5])}{', ...' if len(leaked) > 5 else ''})"
        )
    if facts["nested"]:
        reasons = sorted({d[4] for d in facts["nested"]})
        lines.append(
            f"{len(facts['nested'])} more entities overlap another ({', '.join(reasons)}; span runs): "
            f"kept in dropped_spans, where a span-decoder training reads them"
        )
    if len(left_out) > len(leaked):
        other = [f"{d}: {why}" for d, why in left_out if d not in set(leaked)]
        lines.append(f"{len(other)} documents left out for their spans ({'; '.join(other[:3])})")
    return {
        "dataset": plan.dataset,
        "version": report.version,
        "created": report.created,
        "split": plan.splits[0],
        "documents": c["documents"],
        "entities": c["entities"],
        "labels": list(plan.labels),
        "added_labels": facts["added_labels"],
        "pred_runs": facts["runs"],
        "events": len(events),
        "new_events": n_new,
        "left_out": len(left_out),
        "left_out_leak": len(leaked),
        "left_out_docs": [{"doc_id": d, "reason": r} for d, r in left_out],
        "nested": len(facts["nested"]),
        "message": "\n".join(lines),
    }


def new_decisions(db_path: str | Path, pred_run_id: str, name: str) -> int:
    """Review events on reviewed documents of ``pred_run_id`` that no version of ``name`` holds yet."""
    with open_db(db_path, read_only=True) as con:
        return int(
            con.execute(
                "SELECT count(*) FROM review_events e "
                "SEMI JOIN v_reviewed_documents USING (pred_run_id, doc_id) "
                "WHERE e.pred_run_id = ? AND e.event_id NOT IN "
                "(SELECT event_id FROM review_exports WHERE dataset = ?)",
                [pred_run_id, name],
            ).fetchone()[0]
        )


def latest_reviewed_run(db_path: str | Path) -> str | None:
    """The prediction run with the most recent ``done`` event, or ``None``."""
    with open_db(db_path, read_only=True) as con:
        row = con.execute(
            "SELECT pred_run_id FROM v_reviewed_documents ORDER BY reviewed_at DESC LIMIT 1"
        ).fetchone()
    return row[0] if row else None
