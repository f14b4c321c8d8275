"""Training runs and their epochs in DuckDB; the production mark; lineage.

A run trained on a dataset version (``dataset``, ``dataset_version``) and, with ``ner train --plus``, on a
second one (``plus_dataset``, ``plus_version``: typed columns since migration 6; runs stored before had it
in their config JSON and were moved). :func:`model_lineage` answers which dataset versions and review
events made a run's model (view ``v_model_lineage``); :func:`trained_on` finds a run that trained on exactly
a base + plus pair.

Paths: model and run directories are stored absolute. Code before stored them as given, relative to the
folder the command ran in; every read here returns them absolute (:func:`stored_path`), so a dashboard or a
command started elsewhere finds them.

An unknown run id is a ``KeyError`` that names the closest stored ids (:func:`unknown_id`).

Every function opens a short-lived connection (:func:`storage.db.open_db`).
"""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Sequence
from pathlib import Path

from storage.db import now as _now
from storage.db import open_db, read_current, read_frame, rollback_quietly, transaction
from storage.db import rows as _rows
from storage.run_sources import read_for_record, run_sources, write_sources

# The lineage rows: the view v_model_lineage (migrations 4 and 6) holds the SQL.
LINEAGE_SQL = "SELECT * FROM v_model_lineage"
#: the columns of runs and prediction runs that hold a directory (read back with stored_path)
PATH_COLUMNS = ("model_dir", "run_dir")


def stored_path(db_path: str | Path, value):
    """A directory as stored in a row of ``db_path`` (``model_dir``, ``run_dir``), made absolute.

    Absolute values come back as they are. A relative one was stored by code before absolute paths,
    relative to the folder its command ran in: it resolves against the database file's folder or the nearest
    folder above it where it exists (``ner demo`` stored ``demo_out/runs/<id>/model`` beside
    ``demo_out/ner.duckdb``), else against the current directory where it exists (what that code did), else
    against the database's folder (so a message names a full path). Anything not a non-empty str
    (``None``) comes back unchanged.
    """
    if not isinstance(value, str) or not value or os.path.isabs(value):
        return value
    if str(db_path) == ":memory:":
        return os.path.abspath(value)
    folder = Path(db_path).resolve().parent
    for base in (folder, *folder.parents):
        candidate = os.path.normpath(os.path.join(base, value))
        if os.path.exists(candidate):
            return candidate
    here = os.path.abspath(value)
    return here if os.path.exists(here) else os.path.normpath(os.path.join(folder, value))


def with_stored_paths(db_path: str | Path, row: dict) -> dict:
    """``row`` with its :data:`PATH_COLUMNS` absolute (:func:`stored_path`); a new dict."""
    return {k: stored_path(db_path, v) if k in PATH_COLUMNS else v for k, v in row.items()}


def frame_with_stored_paths(db_path: str | Path, frame):
    """A DataFrame's :data:`PATH_COLUMNS` made absolute (:func:`stored_path`), in place; returns it."""
    for col in PATH_COLUMNS:
        if col in frame.columns:
            frame[col] = [stored_path(db_path, v) for v in frame[col]]
    return frame


def unknown_id(what: str, wanted: str, known: Sequence[str], db_path: str | Path, listing: str) -> str:
    """The message for an id that ``db_path`` does not hold: ``no <what> '<wanted>' in <db>``, then the
    closest of ``known`` (difflib's close matches; without one, the first three of ``known``, which callers
    order newest first) and the command that lists them all (``listing``)."""
    head = f"no {what} {wanted!r} in {db_path}"
    if not known:
        return f"{head}: it holds none yet"
    close = difflib.get_close_matches(str(wanted), list(known), n=3, cutoff=0.6)
    shown = ", ".join(close or list(known)[:3])
    return f"{head}; {'closest' if close else 'newest'}: {shown} (`{listing}` lists them)"


def _run_ids(con) -> list[str]:
    return [r[0] for r in con.execute("SELECT run_id FROM runs ORDER BY started_at DESC, run_id").fetchall()]


def _unknown_run(con, run_id: str, db_path: str | Path) -> KeyError:
    return KeyError(unknown_id("run", run_id, _run_ids(con), db_path, "ner runs"))


def create_run(
    db_path: str | Path,
    run_id: str,
    *,
    dataset: str,
    dataset_version: int | None,
    config_json: str,
    run_dir: str | Path,
    plus_dataset: str | None = None,
    plus_version: int | None = None,
) -> None:
    """Store a new run as ``running``: ``config_json`` is the model's configuration
    (:class:`~ner_core.config.NERConfig` JSON); ``plus_dataset`` / ``plus_version`` the second dataset
    version it trains on (``ner train --plus``), both or neither."""
    if (plus_dataset is None) != (plus_version is None):
        raise ValueError(
            f"expected plus_dataset and plus_version both or neither, got {plus_dataset!r}, {plus_version!r}"
        )
    cfg = json.loads(config_json)
    run_dir = Path(run_dir).resolve()  # absolute: the run is found from any folder
    with open_db(db_path) as con:
        con.execute(
            "INSERT OR REPLACE INTO runs (run_id, dataset, dataset_version, plus_dataset, plus_version, "
            "encoder, head, scheme, config, status, run_dir, started_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'running', ?, ?)",
            [
                run_id,
                dataset,
                dataset_version,
                plus_dataset,
                plus_version,
                cfg["encoder"]["name"],
                cfg["head"]["type"],
                cfg["data"]["scheme"],
                config_json,
                str(run_dir),
                _now(),
            ],
        )


def record_epoch(db_path: str | Path, run_id: str, stats: dict) -> None:
    cols = [
        "train_loss",
        "dev_f1",
        "dev_precision",
        "dev_recall",
        "dev_char_accuracy",
        "dev_sentence_accuracy",
        "learning_rate",
        "seconds",
        "sentences_per_second",
        "chars_per_second",
        "is_best",
    ]
    with open_db(db_path) as con:
        con.execute(
            f"INSERT OR REPLACE INTO epochs (run_id, epoch, {', '.join(cols)}) "
            f"VALUES (?, ?, {', '.join('?' for _ in cols)})",
            [run_id, stats["epoch"], *[stats.get(c) for c in cols]],
        )


def finish_run(
    db_path: str | Path,
    run_id: str,
    *,
    status: str,
    model_dir: str | Path | None = None,
    best_epoch: int | None = None,
    best_dev_f1: float | None = None,
    seconds: float | None = None,
    stopped_reason: str | None = None,
    error: str | None = None,
) -> None:
    """Record the run's end. A completed run's training sources beyond its datasets (adapt corpus,
    unlabeled texts, silver rounds, teacher: :mod:`storage.run_sources`) are read from its model directory
    and stored with it, in one transaction; a record that is refused is stored as its one-line problem."""
    completed = status == "completed"
    sources, problem = read_for_record(model_dir) if completed else ([], None)
    with open_db(db_path) as con, transaction(con):
        con.execute(
            "UPDATE runs SET status = ?, model_dir = ?, best_epoch = ?, best_dev_f1 = ?, seconds = ?, "
            "stopped_reason = ?, error = ?, finished_at = ? WHERE run_id = ?",
            [
                status,
                str(Path(model_dir).resolve()) if model_dir else None,
                best_epoch,
                best_dev_f1,
                seconds,
                stopped_reason,
                error,
                _now(),
                run_id,
            ],
        )
        if completed:
            write_sources(con, run_id, sources, problem)


def list_runs(db_path: str | Path) -> list[dict]:
    """Rows of ``v_run_summary``, newest first (directories absolute)."""
    with open_db(db_path, read_only=True) as con:
        rows = _rows(con, "SELECT * FROM v_run_summary ORDER BY started_at DESC")
    return [with_stored_paths(db_path, r) for r in rows]


def get_run(db_path: str | Path, run_id: str) -> dict:
    """The ``runs`` row of ``run_id`` (``plus_dataset`` and ``plus_version`` included: an older file is
    migrated first; directories absolute); ``KeyError`` for an unknown run, naming the closest ids."""
    with read_current(db_path) as con:
        rows = _rows(con, "SELECT * FROM runs WHERE run_id = ?", [run_id])
        if not rows:
            raise _unknown_run(con, run_id, db_path)
    return with_stored_paths(db_path, rows[0])


def resolve_model(
    db_path: str | Path | None, *, model_dir: str | Path | None = None, run_id: str | None = None
) -> tuple[str, str | None]:
    """``(model_dir, run_id)`` of the model to use: ``model_dir`` when given (with ``run_id`` as given, or
    ``None``), else the model of run ``run_id``, else the production run's (``ner promote RUN_ID``).

    One error per case: ``FileNotFoundError`` for a ``model_dir`` that is not a directory or a database
    file that does not exist, ``ValueError`` when no database is given, when no run was promoted or when
    the run has no model directory, ``KeyError`` for an unknown ``run_id``.
    """
    if model_dir:
        if not Path(model_dir).is_dir():
            raise FileNotFoundError(f"{model_dir}: no such model directory")
        return str(model_dir), run_id
    if not db_path:
        raise ValueError("no model given: pass --model-dir, or --db with --run RUN_ID or a promoted run")
    if str(db_path) != ":memory:" and not Path(db_path).exists():
        raise FileNotFoundError(f"{db_path}: no such database (give --model-dir or the right --db)")
    run = get_run(db_path, run_id) if run_id else production_run(db_path)
    if run is None:
        raise ValueError(
            f"no production run in {db_path}: pass --model-dir or --run, or promote a run with "
            "`ner promote RUN_ID`"
        )
    if not run.get("model_dir"):
        raise ValueError(f"run {run['run_id']} has no model directory (status {run['status']})")
    return str(run["model_dir"]), str(run["run_id"])


def epochs(db_path: str | Path, run_id: str) -> list[dict]:
    with open_db(db_path, read_only=True) as con:
        return _rows(con, "SELECT * FROM epochs WHERE run_id = ? ORDER BY epoch", [run_id])


def promote_run(
    db_path: str | Path, run_id: str, *, reason: str = "manual", comparison: dict | None = None
) -> str | None:
    """Mark ``run_id`` (a completed run with a model) as the production model (only one is) and record the
    promotion in ``model_promotions`` (with ``reason`` and the ``comparison`` that decided it, if any), in
    one transaction. Returns the run that was production before (``None``: none)."""
    with open_db(db_path) as con:
        row = con.execute("SELECT status, model_dir FROM runs WHERE run_id = ?", [run_id]).fetchone()
        if row is None:
            raise _unknown_run(con, run_id, db_path)
        if row[0] != "completed" or not row[1]:
            raise ValueError(
                f"run {run_id!r} is {row[0]} and has no model: only a completed run can be promoted"
            )
        return _set_production(con, run_id, reason, comparison)


def _set_production(con, run_id: str, reason: str, comparison: dict | None) -> str | None:
    con.execute("BEGIN")
    try:
        prev = con.execute("SELECT run_id FROM runs WHERE is_production").fetchone()
        prev_id = prev[0] if prev else None
        con.execute("UPDATE runs SET is_production = false WHERE is_production")
        con.execute("UPDATE runs SET is_production = true WHERE run_id = ?", [run_id])
        con.execute(
            "INSERT INTO model_promotions (promoted_at, run_id, previous_run_id, reason, comparison) "
            "VALUES (?, ?, ?, ?, ?)",
            [_now(), run_id, prev_id, reason, json.dumps(comparison) if comparison is not None else None],
        )
        con.execute("COMMIT")
    except BaseException:
        rollback_quietly(con)
        raise
    return prev_id


def rollback_production(db_path: str | Path) -> tuple[str, str]:
    """Return to the production model that the current one replaced; recorded as a promotion with reason
    ``rollback``. Rolling back again goes one step further back (the history is a stack: a rollback
    returns to the model that the current one's own promotion replaced). Returns ``(from_run, to_run)``;
    ``ValueError`` when there is no production run or no earlier production model to return to."""
    with open_db(db_path) as con:
        cur = con.execute("SELECT run_id FROM runs WHERE is_production").fetchone()
        if cur is None:
            raise ValueError(f"no production run in {db_path}: nothing to roll back")
        row = con.execute(
            "SELECT previous_run_id FROM model_promotions WHERE run_id = ? AND reason IS DISTINCT FROM "
            "'rollback' ORDER BY promoted_at DESC LIMIT 1",
            [cur[0]],
        ).fetchone()
        if row is None or row[0] is None:
            raise ValueError(
                f"run {cur[0]} is the production model and no earlier production model is recorded "
                "(model_promotions): nothing to roll back to"
            )
        target = con.execute("SELECT status, model_dir FROM runs WHERE run_id = ?", [row[0]]).fetchone()
        if target is None or target[0] != "completed" or not target[1]:
            raise ValueError(f"the previous production run {row[0]} no longer has a model: cannot roll back")
        _set_production(con, row[0], "rollback", None)
    return cur[0], row[0]


def promotion_history(db_path: str | Path) -> list[dict]:
    """Every promotion and rollback, oldest first (``comparison`` as stored JSON text)."""
    with open_db(db_path, read_only=True) as con:
        return _rows(con, "SELECT * FROM model_promotions ORDER BY promoted_at, rowid")


def production_run(db_path: str | Path) -> dict | None:
    """The production run's ``runs`` row (directories absolute), ``None`` when no run was promoted."""
    with open_db(db_path, read_only=True) as con:
        rows = _rows(con, "SELECT * FROM runs WHERE is_production")
    return with_stored_paths(db_path, rows[0]) if rows else None


# ---- reads for the dashboard
# Each returns a pandas DataFrame made by DuckDB's own conversion (storage.db.read_frame) on a short-lived
# read-only connection that waits at most wait_s seconds for a writer.
def runs_frame(db_path: str | Path, *, wait_s: float = 10.0):
    """One row per training run (newest first): :data:`v_run_summary`'s columns, the run's stopped
    reason and config JSON, and the scores of its latest evaluation on the test split (or, without one,
    its latest evaluation) as ``test_f1``, ``test_precision``, ``test_recall``, ``test_char_accuracy``,
    ``test_sentence_accuracy``. ``model_dir`` is absolute (:func:`stored_path`)."""
    frame = read_frame(
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
        wait_s=wait_s,
    )
    return frame_with_stored_paths(db_path, frame)


def epochs_frame(db_path: str | Path, run_ids: tuple[str, ...] | list[str], *, wait_s: float = 10.0):
    """Every ``epochs`` column of the runs in ``run_ids``, ordered by run and epoch (no rows, same
    columns, for no run)."""
    if not run_ids:
        return read_frame(db_path, "SELECT * FROM epochs WHERE false", wait_s=wait_s)
    return read_frame(
        db_path,
        "SELECT * FROM epochs WHERE list_contains(?, run_id) ORDER BY run_id, epoch",
        [list(run_ids)],
        wait_s=wait_s,
    )


def models_frame(db_path: str | Path, *, wait_s: float = 10.0):
    """Completed runs that have a model directory (absolute: :func:`stored_path`), the production model
    first, then the newest."""
    frame = read_frame(
        db_path,
        """
        SELECT run_id, dataset, head, encoder, best_dev_f1, is_production, model_dir
        FROM runs WHERE status = 'completed' AND model_dir IS NOT NULL
        ORDER BY is_production DESC, started_at DESC
        """,
        wait_s=wait_s,
    )
    return frame_with_stored_paths(db_path, frame)


# ---- lineage
def model_lineage(db_path: str | Path, run_id: str) -> dict:
    """Which dataset versions and review events made run ``run_id``'s model.

    ``{"run_id", "model_dir", "is_production", "datasets": [{"role": "base"|"plus", "dataset", "version",
    "is_review_export", "events", "pred_runs", "reviewers"}], "events": [{"event_id", "pred_run_id",
    "doc_id", "reviewer", "action", "created_at", "dataset", "version"}], "promotions": [...],
    "sources": {"recorded", "problem", "items"}}``: ``sources`` are the training sources beyond datasets
    (:func:`storage.run_sources.run_sources`; ``recorded`` false for a run stored before they were);
    ``KeyError`` for an unknown run.
    """
    with read_current(db_path) as con:
        run = _rows(con, "SELECT run_id, model_dir, is_production FROM runs WHERE run_id = ?", [run_id])
        if not run:
            raise _unknown_run(con, run_id, db_path)
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
        sources = run_sources(con, run_id)
    return {
        **with_stored_paths(db_path, run[0]),
        **_lineage_datasets(rows),
        "promotions": promotions,
        "sources": sources,
    }


#: what model_lineage tells of each review event behind the model
_EVENT_FIELDS = (
    "event_id",
    "pred_run_id",
    "doc_id",
    "reviewer",
    "action",
    "created_at",
    "dataset",
    "version",
)


def _lineage_datasets(rows: list[dict]) -> dict:
    """``{"datasets", "events"}`` of :func:`model_lineage` from the view's rows."""
    datasets: dict[tuple, dict] = {}
    events = []
    for r in rows:
        d = datasets.setdefault(
            (r["role"], r["dataset"], r["version"]),
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
            events.append({k: r[k] for k in _EVENT_FIELDS})
    for d in datasets.values():
        d["pred_runs"], d["reviewers"] = sorted(d["pred_runs"]), sorted(d["reviewers"])
    return {"datasets": list(datasets.values()), "events": events}


def trained_on(db_path: str | Path, dataset: str, version: int, plus: str, plus_version: int) -> str | None:
    """A completed run that trained on exactly ``dataset`` v``version`` + ``plus`` v``plus_version``."""
    with read_current(db_path) as con:
        row = con.execute(
            "SELECT run_id FROM runs WHERE status = 'completed' AND dataset = ? AND dataset_version = ? "
            "AND plus_dataset = ? AND plus_version = ? ORDER BY started_at DESC LIMIT 1",
            [dataset, version, plus, plus_version],
        ).fetchone()
    return row[0] if row else None
