"""Removing a dataset (or one version of it) and every copy of its texts, in the database and beside it.

Personal data (resumes, social posts) must be removable. :func:`delete_dataset` deletes, for dataset
``name`` (every version, or one):

- the version rows and what the ingest stored: ``datasets``, ``dataset_files``, ``dataset_splits``,
  ``documents``, ``gold_entities``, ``ingest_problems``, ``dropped_spans``;
- derived datasets: versions of another dataset made by the platform from other data (:data:`DERIVED_FORMATS`:
  review exports; silver data, adaptation corpora, teacher targets and Label Studio imports join here) that
  hold one of the deleted texts. They go whole, with what was made from them in turn (their evaluations,
  the prediction runs over them); a review export is rebuilt from the review events that remain by
  exporting again. They are found by their texts, before anything is deleted, so an export whose lineage
  rows (``review_exports``) are gone is found too;
- the texts that go ("gone"): the texts of the deleted versions that no remaining dataset version holds.
  A dataset ingested from its own files that holds the same text keeps it (the plan names it), and so does
  what was made from it;
- evaluations measured on the deleted versions, and any evaluation whose stored report quotes a gone text
  (an evaluation on a file holding it): their per-type, error, reliability, threshold and confusion rows
  with them;
- predictions of a gone text, whatever the prediction run's input and the document's id there (a file run
  over the same text under another id holds the same text); when every version goes, also every prediction
  run whose input is the dataset (``input_kind = 'dataset'``, ``input_ref = 'name/<split>'``). Their
  entities go with them, and a prediction run left with no document goes whole; one left with some keeps
  its row, its counts updated to what it still holds;
- review events on those predicted documents, and review-export lineage rows of the deleted versions or of
  the deleted events;
- outside the database (:mod:`storage.footprint` lists where the platform writes): evaluation reports
  (``eval-*.json`` / ``.md`` in the run folders), self-training rounds' silver files (found through the
  runs' recorded training sources) and recorded command outputs (the seed's ``-output_path``
  files) that hold a gone text, deleted whole; the review spool's lines (pending and refused) on a deleted
  document, the files rewritten without them; Prefect's artifact rows and events holding a gone text
  (:mod:`storage.prefect_records`); DuckDB's spill files (``<db>.tmp``) and a killed rewrite's copy
  (``<db>.rewrite``).

``keep_derived`` keeps the derived datasets, files and Prefect records (the plan names them as kept; a text
a kept derived dataset holds is not gone, so its predictions and the events an export was made from stay);
refused spool lines on the texts, spill files and the dataset's own rows go either way.

The things outside the database go first, inside the database's write transaction: a kill before the
commit leaves the dataset in place and a second run finds whatever is left. DuckDB leaves deleted rows'
bytes in the file's free blocks until they are reused, so by default the file is then rewritten
(:func:`rewrite_file`: every table, view and macro copied into a fresh file that replaces it): the deleted
text is gone from the disk, not only from the tables. Run it while no other process uses the database.

Trained models (``runs``) that saw the data are not deleted: :attr:`DeletionPlan.models` lists them (those
that adapted, self-trained or were distilled on its texts too, by their recorded sources), since
their weights may still hold what they learned; neither are the files the dataset was ingested from (the
user's own). :func:`plan_deletion` computes the same plan read-only, for a confirmation prompt.
"""

from __future__ import annotations

import json
import os
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pyarrow as pa

from storage import footprint, prefect_records
from storage.db import open_db, rollback_quietly
from storage.db import rows as _rows
from storage.reviews import ReviewSpool

__all__ = [
    "DERIVED_FORMATS",
    "DeletionPlan",
    "delete_dataset",
    "plan_deletion",
    "report_folders",
    "rewrite_file",
]

#: ``datasets.format`` of the versions the platform makes from other data (review exports, ...)
DERIVED_FORMATS: tuple[str, ...] = ("review",)

# The plan as temporary tables, made in this order ($keep: keep the derived versions)
_SETUP: tuple[str, ...] = (
    # the versions asked for, then the derived versions holding one of their texts
    "CREATE OR REPLACE TEMP TABLE _del_versions AS SELECT name AS dataset, version, false AS derived "
    "FROM datasets WHERE name = $name AND list_contains($versions, version)",
    "CREATE OR REPLACE TEMP TABLE _asked_texts AS SELECT DISTINCT d.text FROM documents d "
    "SEMI JOIN _del_versions v ON v.dataset = d.dataset AND v.version = d.version",
    """CREATE OR REPLACE TEMP TABLE _derived AS
       SELECT s.name AS dataset, s.version, s.format, s.n_documents, count(*) AS n_holding
       FROM datasets s JOIN documents d ON d.dataset = s.name AND d.version = s.version
       SEMI JOIN _asked_texts t ON t.text = d.text
       WHERE list_contains($formats, s.format) AND s.name <> $name  -- its own versions are not derived
       GROUP BY ALL""",
    "INSERT INTO _del_versions SELECT dataset, version, true FROM _derived WHERE NOT $keep",
    # the texts that go: no remaining version holds them
    """CREATE OR REPLACE TEMP TABLE _gone AS
       SELECT t.text, sha1(t.text) AS sha1, sha256(t.text) AS sha256,
              sha1(replace(replace(t.text, chr(13), ' '), chr(10), ' ')) AS sha1_one_line
       FROM _asked_texts t
       WHERE NOT EXISTS (SELECT 1 FROM documents d WHERE d.text = t.text AND NOT EXISTS (
           SELECT 1 FROM _del_versions v WHERE v.dataset = d.dataset AND v.version = d.version))""",
    "CREATE OR REPLACE TEMP TABLE _gone_keys AS SELECT sha1 AS k FROM _gone UNION SELECT sha1_one_line "
    "FROM _gone UNION SELECT sha256 FROM _gone",
    # the keys of every text asked for: what --keep-derived names as kept outside the database
    "CREATE OR REPLACE TEMP TABLE _asked_keys AS SELECT sha1(text) AS k FROM _asked_texts "
    "UNION SELECT sha1(replace(replace(text, chr(13), ' '), chr(10), ' ')) FROM _asked_texts "
    "UNION SELECT sha256(text) FROM _asked_texts",
    """CREATE OR REPLACE TEMP TABLE _whole AS SELECT v.dataset FROM _del_versions v GROUP BY v.dataset
       HAVING count(*) = (SELECT count(*) FROM datasets s WHERE s.name = v.dataset)""",
)
# after _SETUP and _kept_lineage (see _LINEAGE): the predicted documents and evaluations that go
_SETUP_DOOMED: tuple[str, ...] = (
    # predicted documents of a gone text, and every document of a run over a dataset that goes whole but
    # those a kept version's lineage names (--keep-derived: the export and the events it was made from stay)
    """CREATE OR REPLACE TEMP TABLE _doomed_pairs AS
       SELECT p.pred_run_id, p.doc_id FROM predicted_documents p SEMI JOIN _gone g ON g.text = p.text
       UNION
       SELECT p.pred_run_id, p.doc_id FROM predicted_documents p JOIN prediction_runs r USING (pred_run_id)
       WHERE r.input_kind = 'dataset'
         AND EXISTS (SELECT 1 FROM _whole w WHERE starts_with(r.input_ref, w.dataset || '/'))
         AND NOT EXISTS (SELECT 1 FROM _kept_lineage k WHERE k.pred_run_id = p.pred_run_id
                                                         AND k.doc_id = p.doc_id)""",
    # evaluations on a deleted version, or whose stored report quotes a gone text
    """CREATE OR REPLACE TEMP TABLE _doomed_evals AS
       SELECT e.eval_id FROM evaluations e SEMI JOIN _del_versions v
           ON v.dataset = e.dataset AND v.version = e.dataset_version
       UNION
       SELECT eval_id FROM (
           SELECT eval_id, unnest(json_extract_string(report, '$.error_sentences[*].text')) AS t
           FROM evaluations WHERE report IS NOT NULL) SEMI JOIN _gone g ON g.text = t""",
)
_PAIR = (
    "EXISTS (SELECT 1 FROM _doomed_pairs d WHERE d.pred_run_id = {t}.pred_run_id AND d.doc_id = {t}.doc_id)"
)
_RUN = "{t}.pred_run_id IN (SELECT pred_run_id FROM _removed_runs)"
_VERSION = "EXISTS (SELECT 1 FROM _del_versions v WHERE v.dataset = {t}.dataset AND v.version = {t}.version)"
_EVAL = "{t}.eval_id IN (SELECT eval_id FROM _doomed_evals)"
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
    ("evaluation_types", _EVAL),
    ("evaluation_errors", _EVAL),
    ("evaluation_reliability", _EVAL),
    ("evaluation_thresholds", _EVAL),
    ("evaluation_confusion", _EVAL),
    ("evaluations", _EVAL),
    ("dropped_spans", _VERSION),
    ("ingest_problems", _VERSION),
    ("gold_entities", _VERSION),
    ("documents", _VERSION),
    ("dataset_splits", _VERSION),
    ("dataset_files", _VERSION),
    (
        "datasets",
        "EXISTS (SELECT 1 FROM _del_versions v WHERE v.dataset = {t}.name AND v.version = {t}.version)",
    ),
)
# the parameters a clause may name (DuckDB refuses unused named parameters)
_PARAMS = ("name",)


@dataclass
class DeletionPlan:
    """What deleting ``dataset`` (``versions``; every version when ``whole``) removes or removed, in the
    database and beside it; ``keep_derived``: the derived datasets, files and Prefect records are kept."""

    dataset: str
    versions: list[int]
    whole: bool
    keep_derived: bool = False
    rows: dict[str, int] = field(default_factory=dict)  # table -> rows deleted
    prediction_runs_removed: list[str] = field(default_factory=list)
    prediction_runs_trimmed: dict[str, int] = field(default_factory=dict)  # pred_run_id -> documents removed
    derived_datasets: list[dict] = field(
        default_factory=list
    )  # dataset, version, format, n_documents, n_holding
    files: list[dict] = field(default_factory=list)  # path, kind: files holding a gone text
    spool_lines: dict[str, int] = field(default_factory=dict)  # spool file -> its lines on deleted documents
    prefect_database: str | None = None
    prefect_rows: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # table -> [(id, key)]
    spill_files: list[str] = field(default_factory=list)  # DuckDB's, and a killed rewrite's copy
    shared: dict[str, int] = field(default_factory=dict)  # dataset -> texts its kept versions hold too
    sources: list[str] = field(default_factory=list)  # the files the dataset was ingested from (kept)
    models: list[dict] = field(default_factory=list)  # runs that trained on the data: kept
    notes: list[str] = field(default_factory=list)  # what was not looked at, and why
    left: list[str] = field(default_factory=list)  # what could not be removed (after a deletion)
    done: bool = False

    def summary(self) -> list[str]:
        """The plan as lines for a person: what goes (rows, derived datasets, files, spool lines, Prefect
        records, spill files), what is kept, and which trained models saw the data (kept)."""
        what = "every version" if self.whole else f"version {', '.join(map(str, self.versions))}"
        verb = "deleted" if self.done else "to delete"
        lines = [f"dataset {self.dataset!r}, {what}: rows {verb}:"]
        lines += [f"  {t}: {n:,}" for t, n in self.rows.items() if n]
        if self.prediction_runs_removed:
            lines.append(f"  prediction runs removed whole: {', '.join(self.prediction_runs_removed)}")
        for run, n in self.prediction_runs_trimmed.items():
            lines.append(f"  prediction run {run}: {n:,} of its documents removed, the rest kept")
        lines += self._derived_lines(verb) + self._beside_lines(verb) + self._kept_lines()
        return (
            lines
            + self._model_lines()
            + [f"note: {n}" for n in self.notes]
            + [f"LEFT: {x}" for x in self.left]
        )

    def _derived_lines(self, verb: str) -> list[str]:
        head = "KEPT (--keep-derived)" if self.keep_derived else verb
        lines = []
        if self.derived_datasets:
            lines.append(f"derived datasets holding its texts, {head}:")
            lines += [
                f"  {d['dataset']!r} v{d['version']} ({d['format']}: {d['n_holding']:,} of its "
                f"{d['n_documents']:,} documents hold its texts)"
                + ("" if self.keep_derived else "; a review export is rebuilt by exporting again")
                for d in self.derived_datasets
            ]
        if self.files:
            lines.append(f"files holding its texts, {head}:")
            lines += [f"  {f['path']} ({f['kind']})" for f in self.files]
        if self.prefect_rows:
            keys = sorted({k for rows in self.prefect_rows.values() for _, k in rows})
            counts = ", ".join(f"{t}: {len(r)}" for t, r in self.prefect_rows.items())
            lines.append(
                f"Prefect records holding its texts ({self.prefect_database}), {head}: {counts} "
                f"({', '.join(keys)})"
            )
        return lines

    def _beside_lines(self, verb: str) -> list[str]:
        lines = [
            f"review spool lines on its documents, {verb}: {p}: {n:,}" for p, n in self.spool_lines.items()
        ]
        if self.spill_files:
            lines.append(f"spill and leftover copies of the database, {verb}: {', '.join(self.spill_files)}")
        return lines

    def _kept_lines(self) -> list[str]:
        lines = []
        if self.shared:
            held = ", ".join(f"{d!r} ({n:,})" for d, n in self.shared.items())
            lines.append(
                "other dataset versions hold some of its texts too and are kept (delete them as well if "
                "they are copies): " + held
            )
        if self.sources:
            lines.append(f"the files it was ingested from are yours and are kept: {', '.join(self.sources)}")
        return lines

    def _model_lines(self) -> list[str]:
        if not self.models:
            return ["no trained model saw this data."]
        lines = [
            f"{len(self.models)} trained model(s) saw this data and are NOT deleted (their weights may still "
            "hold what they learned; delete the model directories and runs yourself if that matters):"
        ]
        for m in self.models:
            prod = ", production" if m["is_production"] else ""
            ds = "" if m["dataset"] == self.dataset else f" of {m['dataset']!r}"
            lines.append(
                f"  run {m['run_id']} ({m['status']}{prod}, dataset version {m['dataset_version']}{ds}): "
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


def _columns(con: duckdb.DuckDBPyConnection, table: str) -> set[str]:
    return {
        r[0]
        for r in con.execute(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_schema = 'main' AND table_name = ?",
            [table],
        ).fetchall()
    }


def _clause(table: str, template: str) -> tuple[str, list[str]]:
    sql = template.format(t=table)
    return sql, [p for p in _PARAMS if f"${p}" in sql]


# the predicted documents whose review events made a version that stays (none without the review tables)
_LINEAGE = """CREATE OR REPLACE TEMP TABLE _kept_lineage AS
    SELECT DISTINCT e.pred_run_id, e.doc_id FROM review_exports x JOIN review_events e USING (event_id)
    WHERE NOT EXISTS (SELECT 1 FROM _del_versions v WHERE v.dataset = x.dataset AND v.version = x.version)"""
_NO_LINEAGE = (
    "CREATE OR REPLACE TEMP TABLE _kept_lineage AS "
    "SELECT NULL::VARCHAR AS pred_run_id, NULL::VARCHAR AS doc_id WHERE false"
)


def _setup(con: duckdb.DuckDBPyConnection, name: str, versions: list[int], keep: bool) -> None:
    values = {"name": name, "versions": versions, "formats": list(DERIVED_FORMATS), "keep": keep}
    lineage = _LINEAGE if {"review_exports", "review_events"} <= _tables(con) else _NO_LINEAGE
    for sql in (*_SETUP, lineage, *_SETUP_DOOMED):
        con.execute(sql, {k: v for k, v in values.items() if f"${k}" in sql})


def _plan_runs(con: duckdb.DuckDBPyConnection, plan: DeletionPlan) -> None:
    """Which prediction runs go whole (every document doomed, or an empty run over a dataset that goes
    whole) and which keep some documents; the first as the temporary table ``_removed_runs``."""
    per_run = con.execute(
        "SELECT d.pred_run_id, count(*) AS n, (SELECT count(*) FROM predicted_documents p "
        "WHERE p.pred_run_id = d.pred_run_id) AS total FROM _doomed_pairs d GROUP BY ALL ORDER BY 1"
    ).fetchall()
    removed = {r for r, n, total in per_run if n == total}
    removed |= {  # a run over a dataset that goes whole and holds no document (all its documents are doomed)
        r[0]
        for r in con.execute(
            "SELECT r.pred_run_id FROM prediction_runs r WHERE r.input_kind = 'dataset' "
            "AND EXISTS (SELECT 1 FROM _whole w WHERE starts_with(r.input_ref, w.dataset || '/')) "
            "AND NOT EXISTS (SELECT 1 FROM predicted_documents p WHERE p.pred_run_id = r.pred_run_id)"
        ).fetchall()
    }
    plan.prediction_runs_removed = sorted(removed)
    plan.prediction_runs_trimmed = {r: n for r, n, _total in per_run if r not in removed}
    con.execute(
        "CREATE OR REPLACE TEMP TABLE _removed_runs AS SELECT unnest($runs::VARCHAR[]) AS pred_run_id",
        {"runs": plan.prediction_runs_removed},
    )


def _plan_models(con: duckdb.DuckDBPyConnection, plan: DeletionPlan) -> None:
    """The runs that trained on the data: on a deleted version as their dataset or ``--plus`` one, or on its
    texts as a training source (``run_sources``: adapted, self-trained or distilled on it)."""
    plus = (
        " OR EXISTS (SELECT 1 FROM _del_versions v "
        "WHERE v.dataset = r.plus_dataset AND v.version = r.plus_version)"
        if {"plus_dataset", "plus_version"} <= _columns(con, "runs")
        else ""
    )
    sources = (
        " OR EXISTS (SELECT 1 FROM run_sources s JOIN _del_versions v ON v.dataset = s.source_dataset "
        "AND (v.version = s.source_version OR s.source_version IS NULL) WHERE s.run_id = r.run_id)"
        if "run_sources" in _tables(con)
        else ""
    )
    plan.models = _rows(
        con,
        "SELECT run_id, status, model_dir, is_production, dataset, dataset_version FROM runs r "
        "WHERE EXISTS (SELECT 1 FROM _del_versions v WHERE v.dataset = r.dataset "
        f"AND (v.version = r.dataset_version OR r.dataset_version IS NULL)){plus}{sources} "
        "ORDER BY started_at, run_id",
    )


def _plan_rows(con: duckdb.DuckDBPyConnection, plan: DeletionPlan) -> None:
    """The database's part of the plan: rows per table, prediction runs, derived datasets, models, and
    what is kept (other datasets holding the same texts, the source files)."""
    _plan_runs(con, plan)
    present = _tables(con)
    for table, template in _DELETES:
        if table in present:
            sql, names = _clause(table, template)
            params = {k: plan.dataset for k in names}
            plan.rows[table] = con.execute(f"SELECT count(*) FROM {table} WHERE {sql}", params).fetchall()[0][
                0
            ]
    plan.derived_datasets = _rows(con, "SELECT * FROM _derived ORDER BY dataset, version")
    _plan_models(con, plan)
    plan.shared = dict(
        con.execute(
            "SELECT d.dataset, count(DISTINCT d.text) FROM documents d "
            "SEMI JOIN _asked_texts t ON t.text = d.text WHERE NOT EXISTS "
            "(SELECT 1 FROM _del_versions v WHERE v.dataset = d.dataset AND v.version = d.version) "
            "AND NOT EXISTS (SELECT 1 FROM _derived x WHERE x.dataset = d.dataset AND x.version = d.version) "
            "GROUP BY 1 ORDER BY 1"
        ).fetchall()
    )
    plan.sources = [
        r[0]
        for r in con.execute(
            "SELECT DISTINCT f.path FROM dataset_files f JOIN _del_versions v "
            "ON v.dataset = f.dataset AND v.version = f.version WHERE NOT v.derived ORDER BY 1"
        ).fetchall()
    ]


# ---------------------------------------------------------------------------------- beside the database
def _resolved(db_path: str | Path, value) -> Path | None:
    """A directory stored in a row, absolute: as stored, else against the database's folder (or one above
    it) or the current one, where it exists (code before absolute paths stored them relative)."""
    if not isinstance(value, str) or not value:
        return None
    p = Path(value)
    if p.is_absolute():
        return p
    folder = Path(db_path).resolve().parent
    return next((b / p for b in (folder, *folder.parents, Path.cwd()) if (b / p).exists()), None)


def _report_folders(con: duckdb.DuckDBPyConnection, db_path: str | Path) -> list[Path]:
    found = con.execute(
        "SELECT run_dir, model_dir FROM runs UNION ALL SELECT NULL, model_dir FROM evaluations "
        "UNION ALL SELECT NULL, model_dir FROM prediction_runs"
    ).fetchall()
    out = set()
    for run_dir, model_dir in found:
        model = _resolved(db_path, model_dir)
        for p in (_resolved(db_path, run_dir), model.parent if model else None):
            if p is not None and p.is_dir():
                out.add(p.resolve())
    return sorted(out)


def _silver_groups(con: duckdb.DuckDBPyConnection, db_path: str | Path) -> list[list[Path]]:
    """Each self-training round's silver documents and their hash list (the texts a model tagged), found
    through the run's recorded sources (``run_sources``, migration 8); a name that leads out of its run
    folder (the record came from a model directory) is ignored."""
    if "run_sources" not in _tables(con):
        return []
    found = con.execute(
        "SELECT r.run_dir, s.name, json_extract_string(s.detail, '$.silver_hashes') FROM run_sources s "
        "JOIN runs r USING (run_id) WHERE s.kind = 'silver_round' AND s.name IS NOT NULL ORDER BY 1, 2"
    ).fetchall()
    out = []
    for run_dir, *names in found:
        base = _resolved(db_path, run_dir)
        if base is None or not base.is_dir():
            continue
        base = base.resolve()
        files = [(base / n).resolve() for n in names if n]
        files = [f for f in files if base in f.parents and f.is_file()]
        if files:
            out.append(files)
    return out


def report_folders(db_path: str | Path) -> list[Path]:
    """The run folders of ``db_path`` that exist: every ``runs.run_dir`` and the folder above every model
    directory a run, an evaluation or a prediction run names (where evaluation reports are written)."""
    with open_db(db_path, read_only=True) as con:
        return _report_folders(con, db_path)


def _matching(con: duckdb.DuckDBPyConnection, held: list[set[str]], keys: str = "_gone_keys") -> set[int]:
    """The indexes of ``held`` (sets of sha1 / sha256 hex) that name a gone text (``keys``
    ``_asked_keys``: a text asked for)."""
    idx = [i for i, hs in enumerate(held) for _ in hs]
    hashes = [h for hs in held for h in hs]
    con.register(
        "_candidates", pa.table({"i": pa.array(idx, pa.int64()), "k": pa.array(hashes, pa.string())})
    )
    try:
        return {
            r[0]
            for r in con.execute(
                f"SELECT DISTINCT i FROM _candidates c SEMI JOIN {keys} g ON g.k = c.k"
            ).fetchall()
        }
    finally:
        con.unregister("_candidates")


def _keys(plan: DeletionPlan) -> str:
    """What derived copies outside the database are matched on: the gone texts, or with --keep-derived
    (nothing derived goes) every text asked for, to name what is kept."""
    return "_asked_keys" if plan.keep_derived else "_gone_keys"


def _plan_files(con: duckdb.DuckDBPyConnection, db_path: str | Path, plan: DeletionPlan) -> None:
    """Evaluation reports in the run folders and recorded outputs that hold a gone text: a report's JSON and
    Markdown go together, and so do the files one command wrote."""
    groups = [(g, "evaluation report") for g in footprint.report_groups(_report_folders(con, db_path))]
    groups += [(g, "silver data") for g in _silver_groups(con, db_path)]
    for row in footprint.recorded_outputs(db_path):
        files = [Path(f) for f in row["files"] if isinstance(f, str) and os.path.isfile(f)]
        groups.append((files, f"written by {row.get('kind') or 'a command'}"))
    held: list[set[str]] = []
    for files, _kind in groups:
        hs: set[str] = set()
        for f in files:
            try:
                hs |= footprint.file_sha1_held(f)
            except OSError as exc:
                plan.notes.append(f"{f} could not be read ({exc.strerror}): not checked")
        held.append(hs)
    seen: set[str] = set()
    for i in sorted(_matching(con, held, _keys(plan))):
        files, kind = groups[i]
        for f in files:
            if str(f) not in seen:
                seen.add(str(f))
                plan.files.append({"path": str(f), "kind": kind})


def _spool_files(db_path: str | Path) -> list[Path]:
    spool = footprint.review_spool(db_path)
    return [spool, spool.with_name(spool.name + ".refused"), spool.with_name(spool.name + ".tmp")]


def _spool_split(con: duckdb.DuckDBPyConnection, path: Path) -> tuple[list[str], int]:
    """The lines of spool file ``path`` to keep, and how many go: events on a doomed predicted document or
    on a gone text (its ``doc_hash``); in the refused file, which the database never takes, on any text
    asked for; a line that is not an event (torn by a crash) goes too."""
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines() if path.is_file() else []
    events: list[dict | None] = []
    for line in lines:
        try:
            ev = json.loads(line)
        except ValueError:
            ev = None
        events.append(ev if isinstance(ev, dict) else None)
    held = [{str(e.get("doc_hash"))} if e else set() for e in events]
    doomed = _matching(con, held, "_asked_keys" if path.name.endswith(".refused") else "_gone_keys")
    pairs = pa.table(
        {
            "i": pa.array(range(len(events)), pa.int64()),
            "pred_run_id": pa.array([str(e.get("pred_run_id")) if e else None for e in events], pa.string()),
            "doc_id": pa.array([str(e.get("doc_id")) if e else None for e in events], pa.string()),
        }
    )
    con.register("_spooled", pairs)
    try:
        doomed |= {
            r[0]
            for r in con.execute(
                "SELECT i FROM _spooled SEMI JOIN _doomed_pairs USING (pred_run_id, doc_id)"
            ).fetchall()
        }
    finally:
        con.unregister("_spooled")
    keep = [
        line
        for i, (line, e) in enumerate(zip(lines, events, strict=True))
        if e is not None and i not in doomed
    ]
    return keep, len(lines) - len(keep)


def _plan_beside(con: duckdb.DuckDBPyConnection, db_path: str | Path, plan: DeletionPlan) -> None:
    """The spool lines on deleted documents, DuckDB's spill files and a killed rewrite's copy."""
    for path in _spool_files(db_path):
        n = _spool_split(con, path)[1]
        if n:
            plan.spool_lines[str(path)] = n
    temp = con.execute("SELECT current_setting('temp_directory')").fetchall()[0][0]
    dirs = {footprint.spill_dir(db_path), *([Path(temp)] if temp else [])}
    spilled = [p for d in sorted(dirs) for p in footprint.files_below(d)]
    base = Path(db_path)
    leftovers = [base.with_name(base.name + s) for s in (".rewrite", ".rewrite.wal")]
    plan.spill_files = [str(p) for p in spilled + [p for p in leftovers if p.is_file()]]


def _plan_prefect(con: duckdb.DuckDBPyConnection, plan: DeletionPlan) -> None:
    path, why = prefect_records.prefect_database()
    if path is None:
        plan.notes.append(f"Prefect records not checked: {why}")
        return
    plan.prefect_database = str(path)
    if not path.is_file():
        return
    try:
        rows = list(prefect_records.candidate_rows(path))
    except sqlite3.Error as exc:
        plan.notes.append(
            f"Prefect's database {path} could not be read ({exc}): its artifacts are not checked"
        )
        return
    for i in sorted(_matching(con, [held for *_, held in rows], _keys(plan))):
        table, row_id, key, _ = rows[i]
        plan.prefect_rows.setdefault(table, []).append((row_id, key))


def _plan(
    con: duckdb.DuckDBPyConnection, db_path: str | Path, name: str, version: int | None, keep_derived: bool
) -> DeletionPlan:
    versions = _versions(con, name, version)
    _setup(con, name, versions, keep_derived)
    plan = DeletionPlan(name, versions, version is None, keep_derived)
    _plan_rows(con, plan)
    _plan_files(con, db_path, plan)
    _plan_beside(con, db_path, plan)
    _plan_prefect(con, plan)
    return plan


def plan_deletion(
    db_path: str | Path, name: str, version: int | None = None, *, keep_derived: bool = False
) -> DeletionPlan:
    """What :func:`delete_dataset` would remove, computed read-only (``ValueError`` for an unknown
    dataset or version)."""
    with open_db(db_path, read_only=True) as con:
        return _plan(con, db_path, name, version, keep_derived)


# ---------------------------------------------------------------------------------- the deletion
def _remove_outside(con: duckdb.DuckDBPyConnection, db_path: str | Path, plan: DeletionPlan) -> None:
    """The files, Prefect rows and spool lines of the plan (the derived ones unless ``keep_derived``);
    what cannot be removed is noted in ``plan.left``."""
    if not plan.keep_derived:
        for f in plan.files:
            try:
                Path(f["path"]).unlink(missing_ok=True)
            except OSError as exc:
                plan.left.append(f"{f['path']}: not deleted ({exc.strerror})")
        footprint.forget_outputs(db_path)
        if plan.prefect_rows:
            try:
                plan.left += prefect_records.purge_rows(Path(plan.prefect_database), plan.prefect_rows)
            except sqlite3.Error as exc:
                plan.left.append(f"Prefect's database {plan.prefect_database}: rows not deleted ({exc})")
    spool = ReviewSpool(footprint.review_spool(db_path))
    with spool._locked():  # the page's own lock: no event is appended while the files are rewritten
        for path in _spool_files(db_path):
            keep, n = _spool_split(con, path)
            if n:
                _write_lines(path, keep)


def _write_lines(path: Path, lines: list[str]) -> None:
    tmp = path.with_name(path.name + ".filtered")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.writelines(line + "\n" for line in lines)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _clear_spill(plan: DeletionPlan) -> None:
    for p in plan.spill_files:
        try:
            Path(p).unlink(missing_ok=True)
        except OSError as exc:
            plan.left.append(f"{p}: not deleted ({exc.strerror})")


def delete_dataset(
    db_path: str | Path,
    name: str,
    version: int | None = None,
    *,
    rewrite: bool = True,
    keep_derived: bool = False,
) -> DeletionPlan:
    """Delete dataset ``name`` (``version``, or every version) and every copy of its texts (see the module
    docstring), the database's rows in one transaction, then (``rewrite``) rewrite the file so no deleted
    byte stays on disk; return what was deleted (:class:`DeletionPlan`, ``done=True``; ``left`` names what
    could not be removed)."""
    if version is not None and (isinstance(version, bool) or not isinstance(version, int)):
        raise ValueError(f"expected version as an int or None, got {version!r}")
    with open_db(db_path) as con:
        con.execute("BEGIN TRANSACTION")
        try:
            plan = _plan(con, db_path, name, version, keep_derived)
            _remove_outside(con, db_path, plan)
            present = _tables(con)
            for table, template in _DELETES:
                if table in present:
                    sql, names = _clause(table, template)
                    con.execute(f"DELETE FROM {table} WHERE {sql}", {k: name for k in names})
            _recount_trimmed_runs(con, list(plan.prediction_runs_trimmed))
            con.execute("COMMIT")
        except BaseException:
            rollback_quietly(con)
            raise
        con.execute("CHECKPOINT")  # write the deletion through to the file now, not at some later point
        _clear_spill(plan)  # while this process holds the database, no other one is spilling into it
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
