"""Removing a dataset (or one version of it) and everything made from its documents, in one transaction.

Personal data (resumes, social posts) must be removable. :func:`delete_dataset` deletes, for dataset
``name`` (every version, or one):

- the version rows and what the ingest stored: ``datasets``, ``dataset_files``, ``dataset_splits``,
  ``documents``, ``gold_entities``, ``ingest_problems``, ``dropped_spans``;
- evaluations measured on those versions (``evaluations`` and their per-type and error rows): they are
  derived from the data and point at it;
- predictions made from the documents: a predicted document whose ``(doc_id, text)`` equals a deleted
  document's and that no remaining dataset document still holds, whatever the prediction run's input
  (a ``dataset``, ``sql`` or ``file`` run that read the same documents holds the same text); when every
  version goes, also every prediction run whose input is the dataset (``input_kind = 'dataset'``,
  ``input_ref = 'name/<split>'``). Their entities go with them, and a prediction run left with no document
  goes whole; one left with some keeps its row, its counts updated to what it still holds;
- review events on those predicted documents, and review-export lineage rows of the deleted versions or
  of the deleted events (the ``review_events`` / ``review_exports`` tables, where the file has them).

DuckDB leaves deleted rows' bytes in the file's free blocks until they are reused, so by default the file
is then rewritten (:func:`rewrite_file`: every table, view and macro copied into a fresh file that replaces
it): the deleted text is gone from the disk, not only from the tables. Run it while no other process uses
the database.

Trained models (``runs``) that saw the data are not deleted: :attr:`DeletionPlan.models` lists them, since
their weights may still hold what they learned. :func:`plan_deletion` computes the same plan read-only,
for a confirmation prompt.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pyarrow as pa

from storage.db import open_db, rollback_quietly
from storage.db import rows as _rows

__all__ = ["DeletionPlan", "delete_dataset", "plan_deletion", "rewrite_file"]

# predicted documents made from the deleted documents: same (doc_id, text), not held by a kept document
_DOOMED_PAIRS = """
WITH gone AS (SELECT doc_id, text FROM documents WHERE dataset = $name AND list_contains($versions, version)),
kept AS (SELECT doc_id, text FROM documents
         WHERE NOT (dataset = $name AND list_contains($versions, version)))
SELECT p.pred_run_id, p.doc_id FROM predicted_documents p
WHERE EXISTS (SELECT 1 FROM gone g WHERE g.doc_id = p.doc_id AND g.text = p.text)
  AND NOT EXISTS (SELECT 1 FROM kept k WHERE k.doc_id = p.doc_id AND k.text = p.text)
UNION
SELECT p.pred_run_id, p.doc_id FROM predicted_documents p JOIN prediction_runs r USING (pred_run_id)
WHERE $whole AND r.input_kind = 'dataset' AND starts_with(r.input_ref, $name || '/')
"""
_PAIR = (
    "EXISTS (SELECT 1 FROM _doomed_pairs d WHERE d.pred_run_id = {t}.pred_run_id AND d.doc_id = {t}.doc_id)"
)
_RUN = "list_contains($runs, {t}.pred_run_id)"
_VERSION = "{t}.dataset = $name AND list_contains($versions, {t}.version)"
_EVAL = "{t}.dataset = $name AND list_contains($versions, {t}.dataset_version)"
_EVAL_CHILD = (
    "{t}.eval_id IN (SELECT eval_id FROM evaluations WHERE dataset = $name "
    "AND list_contains($versions, dataset_version))"
)
# (table, WHERE clause): executed in this order (children before the rows their clause reads)
_DELETES: tuple[tuple[str, str], ...] = (
    (
        "review_exports",
        f"{_VERSION} OR {{t}}.event_id IN (SELECT event_id FROM review_events WHERE "
        + _PAIR.format(t="review_events")
        + " OR "
        + _RUN.format(t="review_events")
        + ")",
    ),
    ("review_events", f"{_PAIR} OR {_RUN}"),
    ("predicted_entities", f"{_PAIR} OR {_RUN}"),
    ("predicted_documents", f"{_PAIR} OR {_RUN}"),
    ("prediction_runs", _RUN),
    ("evaluation_types", _EVAL_CHILD),
    ("evaluation_errors", _EVAL_CHILD),
    ("evaluations", _EVAL),
    ("dropped_spans", _VERSION),
    ("ingest_problems", _VERSION),
    ("gold_entities", _VERSION),
    ("documents", _VERSION),
    ("dataset_splits", _VERSION),
    ("dataset_files", _VERSION),
    ("datasets", "{t}.name = $name AND list_contains($versions, {t}.version)"),
)
# the parameters each clause may name (DuckDB refuses unused named parameters)
_PARAMS = ("name", "versions", "runs")


@dataclass
class DeletionPlan:
    """What deleting ``dataset`` (``versions``; every version when ``whole``) removes or removed."""

    dataset: str
    versions: list[int]
    whole: bool
    rows: dict[str, int] = field(default_factory=dict)  # table -> rows deleted
    prediction_runs_removed: list[str] = field(default_factory=list)
    prediction_runs_trimmed: dict[str, int] = field(default_factory=dict)  # pred_run_id -> documents removed
    models: list[dict] = field(default_factory=list)  # runs that trained on the data: kept
    done: bool = False

    def summary(self) -> list[str]:
        """The plan as lines for a person: what goes, and which trained models saw the data (kept)."""
        what = "every version" if self.whole else f"version {', '.join(map(str, self.versions))}"
        verb = "deleted" if self.done else "to delete"
        lines = [f"dataset {self.dataset!r}, {what}: rows {verb}:"]
        lines += [f"  {t}: {n:,}" for t, n in self.rows.items() if n]
        if self.prediction_runs_removed:
            lines.append(f"  prediction runs removed whole: {', '.join(self.prediction_runs_removed)}")
        for run, n in self.prediction_runs_trimmed.items():
            lines.append(f"  prediction run {run}: {n:,} of its documents removed, the rest kept")
        if not self.models:
            lines.append("no trained model saw this data.")
            return lines
        lines.append(
            f"{len(self.models)} trained model(s) saw this data and are NOT deleted (their weights may still "
            "hold what they learned; delete the model directories and runs yourself if that matters):"
        )
        for m in self.models:
            prod = ", production" if m["is_production"] else ""
            lines.append(
                f"  run {m['run_id']} ({m['status']}{prod}, dataset version {m['dataset_version']}): "
                f"{m['model_dir'] or 'no model directory'}"
            )
        return lines


def _versions(con: duckdb.DuckDBPyConnection, name: str, version: int | None) -> list[int]:
    have = [
        r[0]
        for r in con.execute(
            "SELECT version FROM datasets WHERE name = ? ORDER BY version", [name]
        ).fetchall()
    ]
    if not have:
        known = [r[0] for r in con.execute("SELECT DISTINCT name FROM datasets ORDER BY name").fetchall()]
        raise ValueError(f"dataset {name!r} not found; known datasets: {known}")
    if version is None:
        return have
    if version not in have:
        raise ValueError(f"dataset {name!r} has no version {version}; versions: {have}")
    return [version]


def _tables(con: duckdb.DuckDBPyConnection) -> set[str]:
    return {
        r[0]
        for r in con.execute(
            "SELECT table_name FROM information_schema.tables "
            "WHERE table_schema = 'main' AND table_type = 'BASE TABLE'"
        ).fetchall()
    }


def _clause(table: str, template: str) -> tuple[str, list[str]]:
    sql = template.format(t=table)
    return sql, [p for p in _PARAMS if f"${p}" in sql]


def _plan(con: duckdb.DuckDBPyConnection, name: str, version: int | None) -> tuple[DeletionPlan, dict]:
    versions = _versions(con, name, version)
    whole = version is None
    params = {"name": name, "versions": versions, "whole": whole}
    pairs = con.sql(_DOOMED_PAIRS, params=params).to_arrow_table()
    con.register("_doomed_pairs", pairs)
    per_run = con.execute(
        "SELECT d.pred_run_id, count(*) AS n, (SELECT count(*) FROM predicted_documents p "
        "WHERE p.pred_run_id = d.pred_run_id) AS total FROM _doomed_pairs d GROUP BY ALL ORDER BY 1"
    ).fetchall()
    removed = [r for r, n, total in per_run if n == total]
    if whole:
        removed += [
            r[0]
            for r in con.execute(
                "SELECT pred_run_id FROM prediction_runs WHERE input_kind = 'dataset' "
                "AND starts_with(input_ref, ? || '/') ORDER BY 1",
                [name],
            ).fetchall()
        ]
    removed = sorted(set(removed))
    plan = DeletionPlan(name, versions, whole)
    plan.prediction_runs_removed = removed
    plan.prediction_runs_trimmed = {r: n for r, n, _total in per_run if r not in removed}
    values = {"name": name, "versions": versions, "runs": removed}
    present = _tables(con)
    for table, template in _DELETES:
        if table in present:
            sql, names = _clause(table, template)
            plan.rows[table] = con.execute(
                f"SELECT count(*) FROM {table} WHERE {sql}", {k: values[k] for k in names}
            ).fetchone()[0]
    plan.models = _rows(
        con,
        "SELECT run_id, status, model_dir, is_production, dataset_version FROM runs "
        "WHERE dataset = ? AND (? OR dataset_version IS NULL OR list_contains(?, dataset_version)) "
        "ORDER BY started_at, run_id",
        [name, whole, versions],
    )
    return plan, values


def plan_deletion(db_path: str | Path, name: str, version: int | None = None) -> DeletionPlan:
    """What :func:`delete_dataset` would remove, computed read-only (``ValueError`` for an unknown
    dataset or version)."""
    with open_db(db_path, read_only=True) as con:
        return _plan(con, name, version)[0]


def delete_dataset(
    db_path: str | Path, name: str, version: int | None = None, *, rewrite: bool = True
) -> DeletionPlan:
    """Delete dataset ``name`` (``version``, or every version) and everything made from it, in one
    transaction, then (``rewrite``) rewrite the file so no deleted byte stays on disk; return what was
    deleted (:class:`DeletionPlan`, ``done=True``)."""
    if version is not None and (isinstance(version, bool) or not isinstance(version, int)):
        raise ValueError(f"expected version as an int or None, got {version!r}")
    with open_db(db_path) as con:
        con.execute("BEGIN TRANSACTION")
        try:
            plan, values = _plan(con, name, version)
            present = _tables(con)
            for table, template in _DELETES:
                if table in present:
                    sql, names = _clause(table, template)
                    con.execute(f"DELETE FROM {table} WHERE {sql}", {k: values[k] for k in names})
            _recount_trimmed_runs(con, list(plan.prediction_runs_trimmed))
            con.execute("COMMIT")
        except BaseException:
            rollback_quietly(con)
            raise
        con.execute("CHECKPOINT")  # write the deletion through to the file now, not at some later point
    plan.done = True
    if rewrite:
        rewrite_file(db_path)
    return plan


def rewrite_file(db_path: str | Path) -> None:
    """Copy every table, view and macro of ``db_path`` into a fresh file and put it in its place, so the
    bytes of deleted rows (left in free blocks by DuckDB) are gone. The copy is written beside the file and
    replaces it atomically; an interruption leaves the original untouched."""
    path = Path(db_path)
    tmp = path.with_name(path.name + ".rewrite")
    for leftover in (tmp, tmp.with_name(tmp.name + ".wal")):
        leftover.unlink(missing_ok=True)
    with open_db(path) as con:
        current = con.execute("SELECT current_database()").fetchone()[0].replace('"', '""')
        con.execute(f"ATTACH '{str(tmp).replace(chr(39), chr(39) * 2)}' AS _rewritten")
        try:
            con.execute(f'COPY FROM DATABASE "{current}" TO _rewritten')
        finally:
            con.execute("DETACH _rewritten")
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _recount_trimmed_runs(con: duckdb.DuckDBPyConnection, runs: list[str]) -> None:
    if not runs:
        return
    con.register("_trimmed", pa.table({"pred_run_id": pa.array(runs, pa.string())}))
    con.execute(
        """
        UPDATE prediction_runs r SET
            n_documents = (SELECT count(*) FROM predicted_documents d WHERE d.pred_run_id = r.pred_run_id),
            n_chars = (SELECT coalesce(sum(length(d.text)), 0) FROM predicted_documents d
                       WHERE d.pred_run_id = r.pred_run_id),
            n_entities = (SELECT count(*) FROM predicted_entities e WHERE e.pred_run_id = r.pred_run_id)
        WHERE r.pred_run_id IN (SELECT pred_run_id FROM _trimmed)
        """
    )
