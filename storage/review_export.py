"""Reviewed predictions become gold: a dataset version per export, the training data of ``--plus``, lineage.

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
- A document whose corrected entities overlap or leave the text is left out too (both counted).
- Labels: the label set of the model that predicted, plus the labels used, plus every label a reviewer
  added explicitly (``add_label`` events, kept as ``added_labels`` in the version's options).

:func:`training_documents` combines a base dataset with an export for training (``ner train --plus``) and
:func:`model_lineage` answers which dataset versions and review events made a model.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from ner_core.data.ingest import IngestOptions, IngestPlan, PlannedFile, check_dataset_name
from ner_core.documents import Document
from storage.datasets import _resolve_version, load_documents, store_plan
from storage.db import open_db
from storage.db import rows as _rows

__all__ = [
    "EXPORT_FORMAT",
    "LINEAGE_SQL",
    "TrainingData",
    "export_reviews",
    "model_lineage",
    "latest_reviewed_run",
    "new_decisions",
    "trained_on",
    "training_documents",
]

EXPORT_FORMAT = "review"  # datasets.format of a review export
_EVAL_SPLITS = ("dev", "test")

# The lineage rows: the view v_model_lineage (migration 4) holds the SQL.
LINEAGE_SQL = "SELECT * FROM v_model_lineage"


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


def _sha1(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


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
        raise ValueError(f"no prediction run {pred_run_id!r}")
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
    """The label set the reviewers chose from: each run's model directory's labels.json, else the labels
    of the dataset version the model was trained on; and the labels it predicted."""
    labels: set[str] = set()
    for model_dir, ds_labels in con.execute(
        "SELECT p.model_dir, d.labels FROM prediction_runs p "
        "LEFT JOIN runs r USING (run_id) LEFT JOIN datasets d ON d.name = r.dataset AND d.version = "
        "r.dataset_version WHERE list_contains(?, p.pred_run_id)",
        [runs],
    ).fetchall():
        path = Path(model_dir) / "labels.json"
        if path.is_file():
            labels.update(json.loads(path.read_text(encoding="utf-8")).get("labels") or [])
        elif ds_labels:
            labels.update(ds_labels)
    predicted = con.execute(
        "SELECT DISTINCT label FROM predicted_entities WHERE list_contains(?, pred_run_id)", [runs]
    ).fetchall()
    return sorted(labels | {r[0] for r in predicted})


def _eval_split_texts(con, texts: list[str]) -> dict[str, str]:
    """sha1 of each text in ``texts`` that is in a dev/test split of a stored dataset -> where."""
    cand = pa.table({"text_sha1": sorted({_sha1(t) for t in texts})})  # noqa: F841
    return {
        h: where
        for h, where in con.execute(
            "SELECT d.text_sha1, min(d.dataset || ' v' || d.version || ' ' || d.split) FROM documents d "
            "SEMI JOIN cand USING (text_sha1) WHERE list_contains(?, d.split) GROUP BY d.text_sha1",
            [list(_EVAL_SPLITS)],
        ).fetchall()
    }


def _span_problem(text: str, spans: list[tuple[int, int, str]]) -> str | None:
    prev_end = -1
    for s, e, lab in sorted(spans):
        if not (0 <= s < e <= len(text)):
            return f"entity {lab}[{s},{e}) lies outside the text of {len(text)} characters"
        if s < prev_end:
            return f"entities overlap at {lab}[{s},{e})"
        prev_end = e
    return None


# ---------------------------------------------------------------------------------------------- export
def _plan(con, pred_run_id: str, name: str, split: str) -> tuple[IngestPlan, list[str], dict]:
    """The export as an :class:`IngestPlan`, its event ids and what was left out."""
    runs = _export_runs(con, name, pred_run_id)
    reviewed = _reviewed(con, runs)
    ents = _current_entities(con, runs)
    leaks = _eval_split_texts(con, [r["text"] for r in reviewed]) if split == "train" else {}
    rows, left_out, leaked = [], [], []
    for r in reviewed:
        spans = ents.get((r["pred_run_id"], r["doc_id"]), [])
        where = leaks.get(_sha1(r["text"]))
        problem = f"in {where}" if where else _span_problem(r["text"], spans)
        if problem:
            left_out.append((r["doc_id"], problem))
            leaked += [r["doc_id"]] if where else []
            continue
        rows.append((r["doc_id"], r["text"], spans, None, f"review:{r['pred_run_id']}"))
    events = _events(con, [(row[4].removeprefix("review:"), row[0]) for row in rows], runs)
    added = _added_labels(con, runs)
    labels = sorted(set(_model_labels(con, runs)) | set(added) | {lab for r in rows for _, _, lab in r[2]})
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
    )
    return plan, events, {"left_out": left_out, "leaked": leaked, "added_labels": added, "runs": runs}


def export_reviews(db_path: str | Path, pred_run_id: str, name: str, split: str = "train") -> dict:
    """Store the documents reviewed so far (with their corrected entities as gold) as the next version of
    dataset ``name``, split ``split``; record its review events in ``review_exports``.

    Returns ``{"dataset", "version", "created", "split", "documents", "entities", "labels", "added_labels",
    "events", "new_events", "left_out", "left_out_leak", "left_out_docs", "message"}``; ``created`` is false
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


# ---------------------------------------------------------------------------------------------- training
@dataclass
class TrainingData:
    """What a run trains on: ``train`` (base train split + the ``plus`` dataset's train split), ``dev``
    (the base's), the label set, the plus dataset version (``{"dataset", "version"}`` or ``None``) and
    one line per adjustment made."""

    train: list[Document]
    dev: list[Document]
    labels: list[str]
    plus: dict | None = None
    notes: tuple[str, ...] = ()


def _reconciled_labels(base: str, bv: int, base_labels: list[str], plus: str, pv: int, row) -> list[str]:
    plus_labels, options = list(row[0]), json.loads(row[1]) if row[1] else {}
    added = set(options.get("added_labels") or []) if isinstance(options, dict) else set()
    missing = sorted(set(base_labels) - set(plus_labels))
    if missing:
        raise ValueError(
            f"dataset {plus!r} v{pv} lacks labels {missing} of {base!r} v{bv}: its documents were not "
            "annotated for them, so training on both would teach the model to miss them"
        )
    extra = sorted(set(plus_labels) - set(base_labels))
    unexplained = [lab for lab in extra if lab not in added]
    if unexplained:
        raise ValueError(
            f"dataset {plus!r} v{pv} has labels {unexplained} that {base!r} v{bv} lacks and no reviewer "
            "added explicitly (add_label): refusing to train on differing label sets"
        )
    return sorted(set(base_labels) | set(extra))


def training_documents(
    db_path: str | Path,
    dataset: str,
    version: int | None = None,
    plus: str | None = None,
    plus_version: int | None = None,
) -> TrainingData:
    """The training data of ``dataset`` (its train and dev splits), with ``plus`` (latest version unless
    ``plus_version``) added to the train split.

    Labels: the union when ``plus`` only adds labels its reviewers added explicitly, else ``ValueError``.
    A ``plus`` document whose text is in the base's dev/test split is left out (it would leak into the
    evaluation); a base train document whose text a ``plus`` document also has is replaced by it (the
    reviewed annotation wins).
    """
    with open_db(db_path, read_only=True) as con:
        version = _resolve_version(con, dataset, version)
        (base_labels,) = con.execute(
            "SELECT labels FROM datasets WHERE name = ? AND version = ?", [dataset, version]
        ).fetchone()
        if plus is None:
            labels = sorted(base_labels)
        else:
            plus_version = _resolve_version(con, plus, plus_version)
            row = con.execute(
                "SELECT labels, options FROM datasets WHERE name = ? AND version = ?", [plus, plus_version]
            ).fetchone()
            labels = _reconciled_labels(dataset, version, list(base_labels), plus, plus_version, row)
            held_out = {
                r[0]
                for r in con.execute(
                    "SELECT text_sha1 FROM documents WHERE dataset = ? AND version = ? "
                    "AND split IN ('dev', 'test')",
                    [dataset, version],
                ).fetchall()
            }
    train = load_documents(db_path, dataset, "train", version)
    dev = load_documents(db_path, dataset, "dev", version)
    if plus is None:
        return TrainingData(train, dev, labels)
    extra = load_documents(db_path, plus, "train", plus_version)
    kept = [d for d in extra if _sha1(d.text) not in held_out]
    texts = {d.text for d in kept}
    base_kept = [d for d in train if d.text not in texts]
    notes = [
        f"train: {len(base_kept)} documents of {dataset!r} v{version} + {len(kept)} of {plus!r} "
        f"v{plus_version}"
    ]
    if len(kept) < len(extra):
        notes.append(
            f"{len(extra) - len(kept)} documents of {plus!r} left out: they are in {dataset!r}'s dev/test"
        )
    if len(base_kept) < len(train):
        notes.append(
            f"{len(train) - len(base_kept)} documents of {dataset!r} replaced by their reviewed version"
        )
    return TrainingData(
        base_kept + kept, dev, labels, {"dataset": plus, "version": plus_version}, tuple(notes)
    )


# ---------------------------------------------------------------------------------------------- lineage
def model_lineage(db_path: str | Path, run_id: str) -> dict:
    """Which dataset versions and review events made run ``run_id``'s model.

    ``{"run_id", "model_dir", "is_production", "datasets": [{"role": "base"|"plus", "dataset", "version",
    "is_review_export", "events", "pred_runs", "reviewers"}], "events": [{"event_id", "pred_run_id",
    "doc_id", "reviewer", "action", "created_at", "dataset", "version"}], "promotions": [...]}``;
    ``KeyError`` for an unknown run.
    """
    with open_db(db_path, read_only=True) as con:
        run = _rows(con, "SELECT run_id, model_dir, is_production FROM runs WHERE run_id = ?", [run_id])
        if not run:
            raise KeyError(f"no run {run_id!r} in {db_path}")
        rows = _rows(
            con,
            f"SELECT * FROM ({LINEAGE_SQL}) WHERE run_id = ? ORDER BY role, created_at, event_id",
            [run_id],
        )
        promotions = _rows(
            con,
            "SELECT promoted_at, run_id, previous_run_id, reason, comparison FROM model_promotions "
            "WHERE run_id = ? OR previous_run_id = ? ORDER BY promoted_at",
            [run_id, run_id],
        )
    datasets: dict[tuple, dict] = {}
    events = []
    for r in rows:
        key = (r["role"], r["dataset"], r["version"])
        d = datasets.setdefault(
            key,
            {
                "role": r["role"],
                "dataset": r["dataset"],
                "version": r["version"],
                "is_review_export": bool(r["is_review_export"]),
                "events": 0,
                "pred_runs": set(),
                "reviewers": set(),
            },
        )
        if r["event_id"] is not None:
            d["events"] += 1
            d["pred_runs"].add(r["pred_run_id"])
            d["reviewers"].add(r["reviewer"])
            events.append(
                {
                    k: r[k]
                    for k in (
                        "event_id",
                        "pred_run_id",
                        "doc_id",
                        "reviewer",
                        "action",
                        "created_at",
                        "dataset",
                        "version",
                    )
                }
            )
    for d in datasets.values():
        d["pred_runs"], d["reviewers"] = sorted(d["pred_runs"]), sorted(d["reviewers"])
    return {**run[0], "datasets": list(datasets.values()), "events": events, "promotions": promotions}


def run_config_plus(config_json: str) -> tuple[dict, dict | None]:
    """A stored run configuration split into the :class:`~ner_core.config.NERConfig` part and the
    ``plus`` dataset version it trained on (``None`` without one)."""
    cfg = json.loads(config_json)
    return cfg, cfg.pop("plus", None)


def config_with_plus(config_json: str, plus: dict | None) -> str:
    """The run configuration to store: the model's ``config_json`` plus ``{"plus": {"dataset",
    "version"}}`` when the run trains on a second dataset."""
    if not plus:
        return config_json
    return json.dumps({**json.loads(config_json), "plus": plus}, indent=2, ensure_ascii=False)


def trained_on(db_path: str | Path, dataset: str, version: int, plus: str, plus_version: int) -> str | None:
    """A completed run that trained on exactly ``dataset`` v``version`` + ``plus`` v``plus_version``."""
    with open_db(db_path, read_only=True) as con:
        row = con.execute(
            "SELECT run_id FROM runs WHERE status = 'completed' AND dataset = ? AND dataset_version = ? "
            "AND json_extract_string(config, '$.plus.dataset') = ? "
            "AND CAST(json_extract(config, '$.plus.version') AS INTEGER) = ? "
            "ORDER BY started_at DESC LIMIT 1",
            [dataset, version, plus, plus_version],
        ).fetchone()
    return row[0] if row else None
