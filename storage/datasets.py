"""Datasets in DuckDB: atomic, idempotent ingest and the read functions the rest of the platform uses.

``ingest_dataset`` parses and validates every file (:mod:`ner_core.formats`) *before* it takes the write
lock, then writes a whole new dataset version in one transaction through Arrow tables: either every row
of the version is stored or none is. Re-ingesting identical files with identical options returns the
latest version unchanged (``created=False``); changed files create version ``n + 1``.

Policies: ``repair`` stores the valid records and records every problem (rejected records included) in
``ingest_problems``; ``strict`` stores nothing when any file has an error-severity problem. A file that
cannot be read at all (invalid JSON array, invalid UTF-8 in a JSON array) stores nothing under either
policy. Both raise :class:`IngestError`, whose ``report`` lists the problems.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from ner_core.documents import Document, Entity
from ner_core.formats import FORMATS, POLICIES, ParseResult, Problem, no_gc, read_file
from storage.db import open_db

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_SPLIT_NAMES = {
    "train": "train",
    "dev": "dev",
    "valid": "dev",
    "validation": "dev",
    "val": "dev",
    "test": "test",
}
_RATIO_SPLITS = {2: ("train", "dev"), 3: ("train", "dev", "test")}
_REPORT_MAX_LISTED = 20


class IngestError(ValueError):
    """Nothing was stored; ``report`` carries the problems that stopped the ingest."""

    def __init__(self, message: str, report: "IngestReport"):
        super().__init__(message)
        self.report = report


@dataclass
class IngestReport:
    dataset: str
    version: int | None
    created: bool
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # split -> documents/entities/characters
    labels: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    files: list[dict[str, Any]] = field(default_factory=list)  # path, split, format, sha256, documents
    rejected: int = 0
    seconds: float = 0.0

    @property
    def n_errors(self) -> int:
        return sum(1 for p in self.problems if p.severity == "error")

    @property
    def n_warnings(self) -> int:
        return sum(1 for p in self.problems if p.severity == "warning")

    def to_text(self) -> str:
        """A human-readable summary: version, counts per split, labels, problems by code, first problems."""
        if self.version is None:
            head = f"dataset {self.dataset!r}: NOTHING STORED"
        elif self.created:
            head = f"dataset {self.dataset!r} version {self.version}: stored"
        else:
            head = f"dataset {self.dataset!r} version {self.version}: unchanged (identical files already ingested)"
        lines = [head]
        for f in self.files:
            lines.append(
                f"  file {f['path']} [{f['format']}] -> {f.get('split') or 'ratio split'}: "
                f"{f['documents']} documents, sha256 {f['sha256'][:12]}"
            )
        if self.counts:
            lines.append(f"  {'split':<8}{'documents':>12}{'entities':>12}{'characters':>14}")
            for split, c in self.counts.items():
                lines.append(f"  {split:<8}{c['documents']:>12,}{c['entities']:>12,}{c['characters']:>14,}")
        lines.append(f"  labels: {', '.join(self.labels) if self.labels else '(none)'}")
        lines.append(
            f"  problems: {self.n_errors} errors ({self.rejected} records rejected), "
            f"{self.n_warnings} warnings"
        )
        by_code = Counter((p.severity, p.code) for p in self.problems)
        for (sev, code), n in sorted(by_code.items()):
            lines.append(f"    {sev:<8}{code:<24}{n:>8,}")
        for p in self.problems[:_REPORT_MAX_LISTED]:
            lines.append(f"    {p}")
        if len(self.problems) > _REPORT_MAX_LISTED:
            where = "table ingest_problems" if self.version is not None else "IngestError.report.problems"
            lines.append(f"    ... {len(self.problems) - _REPORT_MAX_LISTED} more (all of them in {where})")
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------- helpers


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _normalise_files(files: Any, split_ratios: tuple | None) -> list[tuple[str | None, Path]]:
    if isinstance(files, (str, Path)):
        files = [files]
    if isinstance(files, dict):
        if not files:
            raise ValueError("files must name at least one file, got an empty dict")
        if split_ratios is not None:
            raise ValueError("split_ratios applies to a list of files, got a dict split -> path")
        out = []
        for split, path in files.items():
            if not isinstance(split, str) or not _NAME_RE.match(split):
                raise ValueError(f"split names must be simple words such as 'train', got {split!r}")
            out.append((split, Path(path)))
    elif isinstance(files, (list, tuple)):
        if not files:
            raise ValueError("files must name at least one file, got an empty list")
        out = []
        for path in files:
            p = Path(path)
            if split_ratios is not None:
                out.append((None, p))
                continue
            split = _SPLIT_NAMES.get(p.stem.lower()) or next(
                (
                    v
                    for k, v in _SPLIT_NAMES.items()
                    if re.search(rf"(^|[^a-z]){k}([^a-z]|$)", p.name.lower())
                ),
                None,
            )
            if split is None:
                raise ValueError(
                    f"cannot tell the split of {p} from its name: pass a dict split -> path or split_ratios"
                )
            out.append((split, p))
        splits = [s for s, _ in out if s is not None]
        if len(set(splits)) != len(splits):
            raise ValueError(f"two files map to the same split: {[(s, str(p)) for s, p in out]}; pass a dict")
    else:
        raise ValueError(f"files must be a dict split -> path or a list of paths, got {type(files).__name__}")
    for _, p in out:
        if not p.is_file():
            raise FileNotFoundError(f"{p}: no such file")
    return out


def _check_ratios(split_ratios: tuple | None) -> tuple[float, ...] | None:
    if split_ratios is None:
        return None
    r = tuple(float(x) for x in split_ratios)
    if len(r) not in _RATIO_SPLITS or any(x < 0 for x in r) or abs(sum(r) - 1.0) > 1e-6:
        raise ValueError(
            f"split_ratios must be 2 or 3 non-negative numbers summing to 1 (train, dev[, test]), got {split_ratios!r}"
        )
    return r


def _fingerprint(entries: list[tuple[str | None, str]], options: dict[str, Any]) -> str:
    payload = json.dumps(
        {"files": sorted([s or "", h] for s, h in entries), "options": options}, sort_keys=True
    )
    return hashlib.sha256(payload.encode()).hexdigest()


def _problem_from_row(row: tuple) -> Problem:
    file, line, record, code, severity, message = row
    return Problem.model_construct(
        file=file, line=line, record=record, code=code, severity=severity, message=message
    )


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
    of all their records into train/dev[/test]. Raises :class:`IngestError` when nothing was stored.
    """
    t0 = time.perf_counter()
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ValueError(
            f"dataset name must be letters, digits, '_', '.', '-' (not starting with one), got {name!r}"
        )
    if format is not None and format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS} or None (detect), got {format!r}")
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
    ratios = _check_ratios(split_ratios)
    entries = _normalise_files(files, ratios)
    hashes = [(split, _sha256(p)) for split, p in entries]
    options = {
        "format": format,
        "policy": policy,
        "untyped_label": untyped_label,
        "scheme": scheme,
        "split_ratios": list(ratios) if ratios else None,
        "seed": seed if ratios else None,
        "tag_column": tag_column,
    }
    fingerprint = _fingerprint(hashes, options)

    with open_db(db_path) as con:  # cheap check before parsing
        latest = _latest(con, name)
        if latest and latest[1] == fingerprint:
            rep = _stored_report(con, name, latest[0])
            rep.seconds = time.perf_counter() - t0
            return rep

    results: list[ParseResult] = []
    for split, path in entries:
        if progress:
            print(f"ingest {name}: reading {path} ...", file=sys.stderr, flush=True)
        results.append(
            read_file(
                path,
                format,
                split=split,
                policy=policy,
                untyped_label=untyped_label,
                tag_column=tag_column,
                scheme=scheme,
            )
        )
    problems = [p for r in results for p in r.problems]
    report = IngestReport(
        dataset=name,
        version=None,
        created=False,
        problems=problems,
        rejected=sum(r.rejected for r in results),
    )
    report.files = [
        {"split": s, "path": r.source, "format": r.format, "sha256": r.sha256, "documents": len(r.records)}
        for (s, _), r in zip(entries, results)
    ]
    fatal = [r.source for r in results if r.fatal]
    if fatal:
        raise IngestError(
            f"dataset {name!r}: nothing stored, cannot read {fatal}:\n{report.to_text()}", report
        )
    if policy == "strict" and report.n_errors:
        raise IngestError(
            f"dataset {name!r}: nothing stored (policy strict, {report.n_errors} errors):\n"
            f"{report.to_text()}",
            report,
        )

    # rows in input order; the split of each record
    rows: list[tuple[str, str, list, int | None, str]] = []  # (doc_id, text, spans, line, source)
    splits: list[str] = []
    for (split, _), r in zip(entries, results):
        for rec in r.records:
            rows.append((rec[0], rec[1], rec[2], rec[3], r.source))
            splits.append(split or "")
    if ratios:
        names = _RATIO_SPLITS[len(ratios)]
        order = list(range(len(rows)))
        random.Random(seed).shuffle(order)
        bounds, acc = [], 0.0
        for x in ratios:
            acc += x
            bounds.append(round(acc * len(rows)))
        k = 0
        for pos, idx in enumerate(order):
            while pos >= bounds[k]:
                k += 1
            splits[idx] = names[k]
    ids = Counter(r[0] for r in rows)
    dup_ids = [i for i, n in ids.items() if n > 1]
    if dup_ids:
        raise ValueError(
            f"dataset {name!r}: document ids collide across files (same file stem?): {dup_ids[:5]}; "
            f"rename the files"
        )
    if not rows:
        raise IngestError(f"dataset {name!r}: nothing stored, no valid record:\n{report.to_text()}", report)

    # texts in more than one split: leakage between train and evaluation data
    first_split: dict[str, tuple[str, str]] = {}
    for (doc_id, text, _sp, line, source), split in zip(rows, splits):
        seen = first_split.setdefault(text, (split, doc_id))
        if seen[0] != split:
            problems.append(
                Problem.model_construct(
                    file=source,
                    line=line,
                    record=None,
                    code="duplicate_across_splits",
                    severity="warning",
                    message=f"{doc_id} ({split}) has the same text as {seen[1]} ({seen[0]})",
                )
            )

    with no_gc():
        tables = _arrow_tables(rows, splits)
    labels = sorted({sp[2] for r in rows for sp in r[2]})
    counts: dict[str, dict[str, int]] = {}
    for (_i, text, spans, _l, _s), split in zip(rows, splits):
        c = counts.setdefault(split, {"documents": 0, "entities": 0, "characters": 0})
        c["documents"] += 1
        c["entities"] += len(spans)
        c["characters"] += len(text)
    counts = {k: counts[k] for k in sorted(counts, key=lambda s: (["train", "dev", "test"] + [s]).index(s))}
    fmt_used = sorted({r.format for r in results})
    schemes_used = sorted({r.scheme for r in results if r.scheme})
    file_rows = [(s, r) for (s, _), r in zip(entries, results)]
    meta = {
        "format": fmt_used[0] if len(fmt_used) == 1 else "mixed",
        "scheme": ",".join(schemes_used) or None,
        "labels": labels,
        "n_documents": len(rows),
        "n_entities": sum(len(r[2]) for r in rows),
        "n_characters": sum(len(r[1]) for r in rows),
        "n_errors": sum(1 for p in problems if p.severity == "error"),
        "n_warnings": sum(1 for p in problems if p.severity == "warning"),
    }
    if progress:
        print(f"ingest {name}: writing {len(rows):,} documents ...", file=sys.stderr, flush=True)

    with open_db(db_path) as con:
        con.execute("BEGIN TRANSACTION")
        try:
            latest = _latest(con, name)
            if latest and latest[1] == fingerprint:  # another process stored the same files meanwhile
                con.execute("ROLLBACK")
                rep = _stored_report(con, name, latest[0])
                rep.seconds = time.perf_counter() - t0
                return rep
            version = (latest[0] if latest else 0) + 1
            for step in _WRITE_STEPS:
                step(
                    con,
                    name,
                    version,
                    tables=tables,
                    problems=problems,
                    meta=meta,
                    options=options,
                    fingerprint=fingerprint,
                    counts=counts,
                    files=file_rows,
                    policy=policy,
                    untyped_label=untyped_label,
                )
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
    report.version = version
    report.created = True
    report.counts = counts
    report.labels = labels
    report.problems = problems
    report.seconds = time.perf_counter() - t0
    return report


def _arrow_tables(rows: list[tuple], splits: list[str]) -> dict[str, pa.Table]:
    n = len(rows)
    doc_ids = [r[0] for r in rows]
    texts = [r[1] for r in rows]
    docs = pa.table(
        {
            "split": pa.array(splits, pa.string()),
            "doc_id": pa.array(doc_ids, pa.string()),
            "ord": pa.array(range(n), pa.int64()),
            "text": pa.array(texts, pa.string()),
            "text_sha1": pa.array([hashlib.sha1(t.encode("utf-8")).hexdigest() for t in texts], pa.string()),
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


def _write_dataset_row(con, name, version, *, meta, options, fingerprint, policy, untyped_label, **_):
    con.execute(
        "INSERT INTO datasets (name, version, format, scheme, policy, untyped_label, labels, n_documents, "
        "n_entities, n_characters, n_errors, n_warnings, fingerprint, options) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            name,
            version,
            meta["format"],
            meta["scheme"],
            policy,
            untyped_label,
            meta["labels"],
            meta["n_documents"],
            meta["n_entities"],
            meta["n_characters"],
            meta["n_errors"],
            meta["n_warnings"],
            fingerprint,
            json.dumps(options),
        ],
    )


def _write_files_and_splits(con, name, version, *, files, counts, **_):
    for split, r in files:
        size = Path(r.source).stat().st_size
        con.execute(
            "INSERT INTO dataset_files VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [name, version, split, r.source, r.format, r.sha256, size, len(r.records)],
        )
    for split, c in counts.items():
        con.execute(
            "INSERT INTO dataset_splits VALUES (?, ?, ?, ?, ?, ?)",
            [name, version, split, c["documents"], c["entities"], c["characters"]],
        )


def _write_documents(con, name, version, *, tables, **_):
    docs = tables["documents"]  # noqa: F841 - read by DuckDB's replacement scan
    con.execute(
        "INSERT INTO documents (dataset, version, split, doc_id, ord, text, text_sha1, source, line) "
        "SELECT ?, ?, split, doc_id, ord, text, text_sha1, source, line FROM docs",
        [name, version],
    )


def _write_entities(con, name, version, *, tables, **_):
    ents = tables["entities"]  # noqa: F841 - read by DuckDB's replacement scan
    con.execute(
        'INSERT INTO gold_entities (dataset, version, doc_id, start, "end", label, text) '
        'SELECT ?, ?, doc_id, start, "end", label, text FROM ents',
        [name, version],
    )


def _write_problems(con, name, version, *, problems, **_):
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


# Executed in order inside one transaction; tests replace one with a failing step to check atomicity.
_WRITE_STEPS = [
    _write_dataset_row,
    _write_files_and_splits,
    _write_documents,
    _write_entities,
    _write_problems,
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
        out = [dict(zip(cols, row)) for row in cur.fetchall()]
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


def load_documents(
    db_path: str | Path, dataset: str, split: str | None = None, version: int | None = None
) -> list[Document]:
    """Documents with their gold entities, in input order; latest version unless ``version`` is given."""
    with open_db(db_path, read_only=True) as con:
        v = _resolve_version(con, dataset, version)
        if split is not None:
            have = [
                r[0]
                for r in con.execute(
                    "SELECT split FROM dataset_splits WHERE dataset = ? AND version = ? ORDER BY split",
                    [dataset, v],
                ).fetchall()
            ]
            if split not in have:
                raise ValueError(f"dataset {dataset!r} version {v} has no split {split!r}; splits: {have}")
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
    by_doc: dict[str, list[Entity]] = {}
    for doc_id, s, e, lab in ents:
        by_doc.setdefault(doc_id, []).append(Entity.model_construct(start=s, end=e, label=lab))
    return [
        Document.model_construct(doc_id=i, text=t, entities=by_doc.get(i, []), split=sp, source=src, line=ln)
        for i, t, sp, src, ln in docs
    ]


def load_problems(db_path: str | Path, dataset: str, version: int | None = None) -> list[Problem]:
    """The problems recorded when the dataset version was ingested."""
    with open_db(db_path, read_only=True) as con:
        v = _resolve_version(con, dataset, version)
        return [
            _problem_from_row(r)
            for r in con.execute(
                "SELECT file, line, record, code, severity, message FROM ingest_problems WHERE dataset = ? AND "
                "version = ? ORDER BY file, line NULLS FIRST, record",
                [dataset, v],
            ).fetchall()
        ]
