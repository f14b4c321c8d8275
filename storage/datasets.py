"""Datasets in DuckDB: atomic, idempotent ingest and the read functions the rest of the platform uses.

:func:`ingest_dataset` plans a new dataset version with :mod:`ner_core.data.ingest` (arguments, splits,
parsing, validation, leakage checks, fingerprint) *before* it takes the write lock, then writes the
whole plan in one transaction through Arrow tables: either every row of the version is stored or none
is. Re-ingesting identical files with identical options returns the latest version unchanged
(``created=False``); changed files create version ``n + 1``. Nothing is stored when the plan raises
:class:`~ner_core.data.ingest.IngestError` (see :mod:`ner_core.data.ingest` for the policies).

:func:`training_documents` is what a run trains on: a dataset's train and dev splits, with a second
dataset's train split added (``ner train --plus``, e.g. a review export).

Nested entities: a stored version keeps the outer spans in ``gold_entities`` and the spans the ingest's
overlap repair dropped in ``dropped_spans`` (reason ``nested``, ``crossing`` or ``same_span``). The reads
return the outer (flat) entities, what a CRF run trains and is scored on; with ``nested=True`` they put
the ``nested`` and ``same_span`` spans back (:data:`ner_core.data.formats.overlaps.NESTED_REASONS`), what
a span decoder trains and is scored on, and leave the ``crossing`` ones out
(:func:`dropped_span_counts` counts them).
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from ner_core.data.formats import Problem, no_gc
from ner_core.data.formats.overlaps import NESTED_REASONS, with_spans
from ner_core.data.formats.problems import problem
from ner_core.data.ingest import IngestPlan, IngestReport, Row, plan_ingest, prepare_ingest
from ner_core.documents import Document, Entity
from storage.db import open_db, transaction


def text_sha1(text: str) -> str:
    """``documents.text_sha1`` of a text: sha1 of its UTF-8 bytes, hex (how texts are matched across
    datasets: re-ingest, leak checks)."""
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def _problem_from_row(row: tuple) -> Problem:
    file, line, record, code, severity, message = row
    return problem(file, line, record, code, severity, message)


def _stored_report(con: duckdb.DuckDBPyConnection, name: str, version: int) -> IngestReport:
    (labels,) = con.execute(
        "SELECT labels FROM datasets WHERE name = ? AND version = ?", [name, version]
    ).fetchone()
    counts = {
        split: {"documents": d, "entities": e, "characters": c}
        for split, d, e, c in con.execute(
            "SELECT split, n_documents, n_entities, n_characters FROM dataset_splits "
            "WHERE dataset = ? AND version = ? ORDER BY split",
            [name, version],
        ).fetchall()
    }
    files = [
        {"split": s, "path": p, "format": f, "sha256": h, "documents": n}
        for s, p, f, h, n in con.execute(
            "SELECT split, path, format, sha256, n_documents FROM dataset_files "
            "WHERE dataset = ? AND version = ? ORDER BY path",
            [name, version],
        ).fetchall()
    ]
    problems = [
        _problem_from_row(r)
        for r in con.execute(
            "SELECT file, line, record, code, severity, message FROM ingest_problems "
            "WHERE dataset = ? AND version = ? ORDER BY file, line NULLS FIRST, record",
            [name, version],
        ).fetchall()
    ]
    rejected = con.execute(
        "SELECT count(DISTINCT (file, coalesce(record, line))) FROM ingest_problems "
        "WHERE dataset = ? AND version = ? AND severity = 'error'",
        [name, version],
    ).fetchone()[0]
    return IngestReport(
        dataset=name,
        version=version,
        created=False,
        counts=counts,
        labels=list(labels),
        problems=problems,
        files=files,
        rejected=int(rejected),
    )


def _latest(con: duckdb.DuckDBPyConnection, name: str) -> tuple[int, str] | None:
    row = con.execute(
        "SELECT version, fingerprint FROM datasets WHERE name = ? ORDER BY version DESC LIMIT 1", [name]
    ).fetchone()
    return (int(row[0]), row[1]) if row else None


# --------------------------------------------------------------------------------------------- ingest


def ingest_dataset(
    db_path: str | Path,
    name: str,
    files: dict[str, str | Path] | list[str | Path],
    *,
    format: str | None = None,
    policy: str = "repair",
    untyped_label: str = "ENT",
    split_ratios: tuple | None = None,
    seed: int = 13,
    scheme: str | None = None,
    progress: bool = False,
    tag_column: int = -1,
) -> IngestReport:
    """Parse, validate and store ``files`` as a new version of dataset ``name`` (atomically).

    ``files`` is ``{split: path}``, or a list of paths whose split comes from the file name
    (train/dev/valid/test) or, with ``split_ratios`` (e.g. ``(0.8, 0.1, 0.1)``), from a seeded shuffle
    of all their records into train/dev[/test]. Raises :class:`~ner_core.data.ingest.IngestError` when
    nothing was stored.
    """
    t0 = time.perf_counter()
    request = prepare_ingest(
        name,
        files,
        format=format,
        policy=policy,
        untyped_label=untyped_label,
        split_ratios=split_ratios,
        seed=seed,
        scheme=scheme,
        tag_column=tag_column,
    )
    with open_db(db_path) as con:  # cheap check before parsing
        stored = _unchanged_report(con, request.dataset, request.fingerprint)
    if stored is None:
        plan = plan_ingest(request, progress=progress)
        report = store_plan(db_path, plan, progress=progress)
    else:
        report = stored
    report.seconds = time.perf_counter() - t0
    return report


def store_plan(db_path: str | Path, plan: IngestPlan, *, progress: bool = False) -> IngestReport:
    """Write ``plan`` as the next version of its dataset in one transaction; when the latest version
    already has the plan's fingerprint (another process stored the same files), return its report."""
    with no_gc():
        tables = _arrow_tables(plan.rows, plan.splits)
    if progress:
        print(
            f"ingest {plan.dataset}: writing {plan.n_documents:,} documents ...", file=sys.stderr, flush=True
        )
    with open_db(db_path) as con:
        with transaction(con):  # a failed COMMIT (full disk) raises DiskFullError from open_db
            latest = _latest(con, plan.dataset)
            if latest and latest[1] == plan.fingerprint:
                return _stored_report(con, plan.dataset, latest[0])  # nothing written: commits nothing
            version = (latest[0] if latest else 0) + 1
            for step in _WRITE_STEPS:
                step(con, plan.dataset, version, plan=plan, tables=tables)
    return plan.report(version, created=True)


def _unchanged_report(con: duckdb.DuckDBPyConnection, name: str, fingerprint: str) -> IngestReport | None:
    latest = _latest(con, name)
    if latest and latest[1] == fingerprint:
        return _stored_report(con, name, latest[0])
    return None


def _arrow_tables(rows: list[Row], splits: list[str]) -> dict[str, pa.Table]:
    n = len(rows)
    doc_ids = [r[0] for r in rows]
    texts = [r[1] for r in rows]
    docs = pa.table(
        {
            "split": pa.array(splits, pa.string()),
            "doc_id": pa.array(doc_ids, pa.string()),
            "ord": pa.array(range(n), pa.int64()),
            "text": pa.array(texts, pa.string()),
            "text_sha1": pa.array([text_sha1(t) for t in texts], pa.string()),
            "source": pa.array([r[4] for r in rows], pa.string()),
            "line": pa.array([r[3] for r in rows], pa.int64()),
        }
    )
    e_doc, e_start, e_end, e_label, e_text = [], [], [], [], []
    for doc_id, text, spans, _l, _s in rows:
        for s, e, lab in spans:
            e_doc.append(doc_id)
            e_start.append(s)
            e_end.append(e)
            e_label.append(lab)
            e_text.append(text[s:e])
    ents = pa.table(
        {
            "doc_id": pa.array(e_doc, pa.string()),
            "start": pa.array(e_start, pa.int32()),
            "end": pa.array(e_end, pa.int32()),
            "label": pa.array(e_label, pa.string()),
            "text": pa.array(e_text, pa.string()),
        }
    )
    return {"documents": docs, "entities": ents}


def _write_dataset_row(
    con, name: str, version: int, *, plan: IngestPlan, tables: dict[str, pa.Table]
) -> None:
    opts = plan.options
    con.execute(
        "INSERT INTO datasets (name, version, format, scheme, policy, untyped_label, labels, n_documents, "
        "n_entities, n_characters, n_errors, n_warnings, fingerprint, options) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            name,
            version,
            plan.format,
            plan.scheme,
            opts.policy,
            opts.untyped_label,
            plan.labels,
            plan.n_documents,
            plan.n_entities,
            plan.n_characters,
            plan.n_errors,
            plan.n_warnings,
            plan.fingerprint,
            json.dumps(opts.as_dict()),
        ],
    )


def _write_files_and_splits(
    con, name: str, version: int, *, plan: IngestPlan, tables: dict[str, pa.Table]
) -> None:
    for f in plan.files:
        con.execute(
            "INSERT INTO dataset_files VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [name, version, f.split, f.path, f.format, f.sha256, f.size, f.documents],
        )
    for split, c in plan.counts.items():
        con.execute(
            "INSERT INTO dataset_splits VALUES (?, ?, ?, ?, ?, ?)",
            [name, version, split, c["documents"], c["entities"], c["characters"]],
        )


def _write_documents(con, name: str, version: int, *, plan: IngestPlan, tables: dict[str, pa.Table]) -> None:
    docs = tables["documents"]  # noqa: F841 - read by DuckDB's replacement scan
    con.execute(
        "INSERT INTO documents (dataset, version, split, doc_id, ord, text, text_sha1, source, line) "
        "SELECT ?, ?, split, doc_id, ord, text, text_sha1, source, line FROM docs",
        [name, version],
    )


def _write_entities(con, name: str, version: int, *, plan: IngestPlan, tables: dict[str, pa.Table]) -> None:
    ents = tables["entities"]  # noqa: F841 - read by DuckDB's replacement scan
    con.execute(
        'INSERT INTO gold_entities (dataset, version, doc_id, start, "end", label, text) '
        'SELECT ?, ?, doc_id, start, "end", label, text FROM ents',
        [name, version],
    )


def _write_problems(con, name: str, version: int, *, plan: IngestPlan, tables: dict[str, pa.Table]) -> None:
    problems = plan.problems
    if not problems:
        return
    probs = pa.table(  # noqa: F841 - read by DuckDB's replacement scan
        {
            "file": pa.array([p.file for p in problems], pa.string()),
            "line": pa.array([p.line for p in problems], pa.int64()),
            "record": pa.array([p.record for p in problems], pa.int64()),
            "code": pa.array([p.code for p in problems], pa.string()),
            "severity": pa.array([p.severity for p in problems], pa.string()),
            "message": pa.array([p.message for p in problems], pa.string()),
        }
    )
    con.execute(
        "INSERT INTO ingest_problems (dataset, version, file, line, record, code, severity, message) "
        "SELECT ?, ?, file, line, record, code, severity, message FROM probs",
        [name, version],
    )


def _write_dropped_spans(
    con, name: str, version: int, *, plan: IngestPlan, tables: dict[str, pa.Table]
) -> None:
    if not plan.dropped:
        return
    cols = ("doc_id", "start", "end", "label", "reason", "kept_start", "kept_end", "kept_label")
    dropped = pa.table(dict(zip(cols, map(list, zip(*plan.dropped, strict=True)), strict=True)))  # noqa: F841 - replacement scan
    con.execute(
        'INSERT INTO dropped_spans (dataset, version, doc_id, start, "end", label, reason, kept_start, '
        'kept_end, kept_label) SELECT ?, ?, doc_id, start, "end", label, reason, kept_start, kept_end, '
        "kept_label FROM dropped",
        [name, version],
    )


# Executed in order inside one transaction; tests replace one with a failing step to check atomicity.
_WRITE_STEPS = [
    _write_dataset_row,
    _write_files_and_splits,
    _write_documents,
    _write_entities,
    _write_problems,
    _write_dropped_spans,
]


# ---------------------------------------------------------------------------------------------- reads


def _resolve_version(con: duckdb.DuckDBPyConnection, dataset: str, version: int | None) -> int:
    if version is None:
        row = con.execute("SELECT max(version) FROM datasets WHERE name = ?", [dataset]).fetchone()
        if row[0] is None:
            known = [r[0] for r in con.execute("SELECT DISTINCT name FROM datasets ORDER BY name").fetchall()]
            raise ValueError(f"dataset {dataset!r} not found; known datasets: {known}")
        return int(row[0])
    row = con.execute(
        "SELECT count(*) FROM datasets WHERE name = ? AND version = ?", [dataset, version]
    ).fetchone()
    if not row[0]:
        have = [
            r[0]
            for r in con.execute(
                "SELECT version FROM datasets WHERE name = ? ORDER BY version", [dataset]
            ).fetchall()
        ]
        raise ValueError(f"dataset {dataset!r} has no version {version}; versions: {have}")
    return version


def latest_version(db_path: str | Path, dataset: str) -> int:
    """Highest stored version of ``dataset``; ``ValueError`` when it does not exist."""
    with open_db(db_path, read_only=True) as con:
        return _resolve_version(con, dataset, None)


def list_datasets(db_path: str | Path) -> list[dict]:
    """One dict per dataset version (newest first within a name), with per-split counts."""
    with open_db(db_path, read_only=True) as con:
        cur = con.execute(
            "SELECT name, version, created_at, format, scheme, policy, untyped_label, labels, n_documents, "
            "n_entities, n_characters, n_errors, n_warnings FROM datasets ORDER BY name, version DESC"
        )
        cols = [d[0] for d in cur.description]
        out = [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]
        splits: dict[tuple[str, int], dict] = {}
        for ds, ver, split, nd, ne, nc in con.execute(
            "SELECT dataset, version, split, n_documents, n_entities, n_characters FROM dataset_splits"
        ).fetchall():
            splits.setdefault((ds, ver), {})[split] = {"documents": nd, "entities": ne, "characters": nc}
    for d in out:
        d["labels"] = list(d["labels"])
        d["splits"] = splits.get((d["name"], d["version"]), {})
    return out


def dataset_labels(db_path: str | Path, dataset: str, version: int | None = None) -> list[str]:
    """The entity labels fixed when the dataset version was ingested (sorted)."""
    with open_db(db_path, read_only=True) as con:
        v = _resolve_version(con, dataset, version)
        return list(
            con.execute(
                "SELECT labels FROM datasets WHERE name = ? AND version = ?", [dataset, v]
            ).fetchone()[0]
        )


def _check_split(con: duckdb.DuckDBPyConnection, dataset: str, v: int, split: str | None) -> None:
    if split is None:
        return
    have = [
        r[0]
        for r in con.execute(
            "SELECT split FROM dataset_splits WHERE dataset = ? AND version = ? ORDER BY split", [dataset, v]
        ).fetchall()
    ]
    if split not in have:
        raise ValueError(f"dataset {dataset!r} version {v} has no split {split!r}; splits: {have}")


def _has_dropped_spans(con: duckdb.DuckDBPyConnection) -> bool:
    """Files older than schema version 5 have no ``dropped_spans`` table (read-only opens do not migrate):
    nothing was dropped there."""
    sql = "SELECT count(*) FROM duckdb_tables() WHERE table_name = 'dropped_spans' AND schema_name = 'main'"
    return bool(con.execute(sql).fetchone()[0])


def _nested_spans(
    con: duckdb.DuckDBPyConnection, dataset: str, v: int, split: str | None
) -> dict[str, list[tuple[int, int, str]]]:
    """The dropped ``nested`` / ``same_span`` spans per doc_id (of ``split`` when given)."""
    if not _has_dropped_spans(con):
        return {}
    only_split = " AND d.split = ?" if split is not None else ""
    rows = con.execute(
        'SELECT s.doc_id, s.start, s."end", s.label FROM dropped_spans s JOIN documents d '
        "USING (dataset, version, doc_id) WHERE d.dataset = ? AND d.version = ? "
        f"AND s.reason IN ({', '.join('?' * len(NESTED_REASONS))}){only_split}",
        [dataset, v, *NESTED_REASONS, *([split] if split is not None else [])],
    ).fetchall()
    out: dict[str, list[tuple[int, int, str]]] = {}
    for doc_id, s, e, lab in rows:
        out.setdefault(doc_id, []).append((s, e, lab))
    return out


def _dropped_counts(
    con: duckdb.DuckDBPyConnection, dataset: str, v: int, splits: tuple[str, ...] | None
) -> dict[str, int]:
    counts = dict.fromkeys(("nested", "crossing", "same_span"), 0)
    if not _has_dropped_spans(con):
        return counts
    only = f" AND d.split IN ({', '.join('?' * len(splits))})" if splits else ""
    rows = con.execute(
        "SELECT s.reason, count(*) FROM dropped_spans s JOIN documents d USING (dataset, version, doc_id) "
        f"WHERE d.dataset = ? AND d.version = ?{only} GROUP BY s.reason",
        [dataset, v, *(splits or ())],
    ).fetchall()
    counts.update({reason: int(n) for reason, n in rows})
    return counts


def dropped_span_counts(
    db_path: str | Path, dataset: str, version: int | None = None, split: str | None = None
) -> dict[str, int]:
    """How many spans the ingest's overlap repair dropped, per reason (every reason present, 0 when none),
    over the version's documents or one ``split``; ``crossing`` ones are what a span run leaves out."""
    with open_db(db_path, read_only=True) as con:
        v = _resolve_version(con, dataset, version)
        _check_split(con, dataset, v, split)
        return _dropped_counts(con, dataset, v, None if split is None else (split,))


def load_documents(
    db_path: str | Path,
    dataset: str,
    split: str | None = None,
    version: int | None = None,
    *,
    nested: bool = False,
) -> list[Document]:
    """Documents with their gold entities, in input order; latest version unless ``version`` is given.

    ``nested=True`` adds the dropped ``nested`` and ``same_span`` spans to each document's entities (a
    span decoder's data: they may then overlap); ``crossing`` ones stay out (see the module docstring).
    """
    with open_db(db_path, read_only=True) as con:
        v = _resolve_version(con, dataset, version)
        _check_split(con, dataset, v, split)
        only_split = " AND d.split = ?" if split is not None else ""
        params: list[Any] = [dataset, v] + ([split] if split is not None else [])
        docs = con.execute(
            "SELECT doc_id, text, split, source, line FROM documents d WHERE d.dataset = ? AND d.version = ?"
            f"{only_split} ORDER BY ord",
            params,
        ).fetchall()
        ents = con.execute(
            'SELECT e.doc_id, e.start, e."end", e.label FROM gold_entities e JOIN documents d '
            f"USING (dataset, version, doc_id) WHERE d.dataset = ? AND d.version = ?{only_split} "
            'ORDER BY d.ord, e.start, e."end", e.label',
            params,
        ).fetchall()
        extra = _nested_spans(con, dataset, v, split) if nested else {}
    by_doc: dict[str, list[Entity]] = {}
    for doc_id, s, e, lab in ents:
        by_doc.setdefault(doc_id, []).append(Entity.model_construct(start=s, end=e, label=lab))
    out = [
        Document.model_construct(doc_id=i, text=t, entities=by_doc.get(i, []), split=sp, source=src, line=ln)
        for i, t, sp, src, ln in docs
    ]
    return [with_spans(d, extra[d.doc_id]) if d.doc_id in extra else d for d in out] if extra else out


def load_problems(db_path: str | Path, dataset: str, version: int | None = None) -> list[Problem]:
    """The problems recorded when the dataset version was ingested."""
    with open_db(db_path, read_only=True) as con:
        v = _resolve_version(con, dataset, version)
        return [
            _problem_from_row(r)
            for r in con.execute(
                "SELECT file, line, record, code, severity, message FROM ingest_problems "
                "WHERE dataset = ? AND version = ? ORDER BY file, line NULLS FIRST, record",
                [dataset, v],
            ).fetchall()
        ]


# ---------------------------------------------------------------------------------------------- training
@dataclass
class TrainingData:
    """What a run trains on: ``train`` (base train split + the ``plus`` dataset's train split), ``dev``
    (the base's), the label set, the plus dataset version (``{"dataset", "version"}`` or ``None``) and
    one line per adjustment made. ``dropped`` counts the base dataset's train and dev spans the ingest's
    overlap repair dropped, per reason (:func:`dropped_span_counts`): with ``nested=True`` the ``nested``
    and ``same_span`` ones are in the documents, the ``crossing`` ones left out."""

    train: list[Document]
    dev: list[Document]
    labels: list[str]
    plus: dict | None = None
    notes: tuple[str, ...] = ()
    dropped: dict[str, int] | None = None


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


def _combined(dataset: str, version: int, train: list[Document], plus: str, pv: int, extra, held_out):
    """(train documents, notes): ``train`` with the ``plus`` documents ``extra`` added, those whose text
    is held out (the base's dev/test) left out and the base's own copies of a reviewed text replaced."""
    kept = [d for d in extra if text_sha1(d.text) not in held_out]
    texts = {d.text for d in kept}
    base_kept = [d for d in train if d.text not in texts]
    notes = [f"train: {len(base_kept)} documents of {dataset!r} v{version} + {len(kept)} of {plus!r} v{pv}"]
    if len(kept) < len(extra):
        notes.append(
            f"{len(extra) - len(kept)} documents of {plus!r} left out: they are in {dataset!r}'s dev/test"
        )
    if len(base_kept) < len(train):
        notes.append(
            f"{len(train) - len(base_kept)} documents of {dataset!r} replaced by their reviewed version"
        )
    return base_kept + kept, tuple(notes)


def training_documents(
    db_path: str | Path,
    dataset: str,
    version: int | None = None,
    plus: str | None = None,
    plus_version: int | None = None,
    *,
    nested: bool = False,
) -> TrainingData:
    """The training data of ``dataset`` (its train and dev splits), with ``plus`` (latest version unless
    ``plus_version``) added to the train split.

    Labels: the union when ``plus`` only adds labels its reviewers added explicitly, else ``ValueError``.
    A ``plus`` document whose text is in the base's dev/test split is left out (it would leak into the
    evaluation); a base train document whose text a ``plus`` document also has is replaced by it (the
    reviewed annotation wins).

    ``nested=True`` (a span decoder's run) loads every document with its nested and same-span entities
    (:func:`load_documents`) and adds a note counting the ``crossing`` spans left out.
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
        dropped = _dropped_counts(con, dataset, version, ("train", "dev"))
    train = load_documents(db_path, dataset, "train", version, nested=nested)
    dev = load_documents(db_path, dataset, "dev", version, nested=nested)
    nested_notes = _nested_notes(dataset, version, dropped) if nested else ()
    if plus is None:
        return TrainingData(train, dev, labels, notes=nested_notes, dropped=dropped)
    extra = load_documents(db_path, plus, "train", plus_version, nested=nested)
    train, notes = _combined(dataset, version, train, plus, plus_version, extra, held_out)
    plus_info = {"dataset": plus, "version": plus_version}
    return TrainingData(train, dev, labels, plus_info, notes + nested_notes, dropped)


def _nested_notes(dataset: str, version: int, dropped: dict[str, int]) -> tuple[str, ...]:
    notes = []
    if dropped["nested"] or dropped["same_span"]:
        notes.append(
            f"nested entities of {dataset!r} v{version} (train + dev): {dropped['nested']} nested spans and "
            f"{dropped['same_span']} second labels of a span added to the outer ones"
        )
    if dropped["crossing"]:
        notes.append(
            f"{dropped['crossing']} crossing spans of {dataset!r} v{version} (train + dev) left out: "
            "they cut across a kept entity (stored in dropped_spans, not trained on)"
        )
    return tuple(notes)
