"""The rows of Prefect's local database that hold a text, and their removal.

An evaluation flow publishes its Markdown report as the artifact ``run-report-<dataset>`` (up to 20 error
sentences, each a whole text). Prefect keeps it three times in its SQLite database: the ``artifact`` row
(one per version), the ``artifact_collection`` row (the latest version of a key) and the event that
announced it (``events``, ``prefect.artifact*``, with its ``event_resources``); Prefect's API deletes the
first two but has no way to delete an event, so the rows are removed here, in the database file, with
SQLite's ``secure_delete`` on (freed bytes are zeroed), the write-ahead log truncated and the file
vacuumed, so the text is gone from the disk and not only from the tables.

Offline and local only: the database is ``$PREFECT_HOME/prefect.db`` (Prefect's default; ``ner prefect up``
and a flow run without a server both use it) or the SQLite file a ``PREFECT_SERVER_DATABASE_CONNECTION_URL``
/ ``PREFECT_API_DATABASE_CONNECTION_URL`` names. A server elsewhere (``PREFECT_API_URL`` not on this
machine) or a PostgreSQL database is not reached: :func:`prefect_database` says why, and the deletion's plan
says so. A running local server may keep its connections: SQLite serialises the writers, and a vacuum or a
checkpoint it blocks is reported, not forced.

Rows are matched on what they hold (:func:`storage.footprint.sha1_held`), not on their key: a report on a
file or on another dataset that quotes the text is found as well.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from urllib.parse import urlparse

from storage.footprint import prefect_home, sha1_held

__all__ = ["TABLES", "prefect_database", "purge_rows", "rows_holding"]

#: (table, the column that may hold a text, extra condition): where Prefect keeps an artifact's data
TABLES: tuple[tuple[str, str, str], ...] = (
    ("artifact", "data", ""),
    ("artifact_collection", "data", ""),
    ("events", "payload", "event LIKE 'prefect.artifact%'"),
)
_URL_VARS = ("PREFECT_SERVER_DATABASE_CONNECTION_URL", "PREFECT_API_DATABASE_CONNECTION_URL")
_LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", ""}


def prefect_database() -> tuple[Path | None, str]:
    """``(path, '')`` of the local Prefect SQLite database (which may not exist yet), or ``(None, why)``
    when Prefect keeps its data elsewhere."""
    api = os.environ.get("PREFECT_API_URL", "")
    if api and (urlparse(api).hostname or "") not in _LOCAL_HOSTS:
        return None, f"PREFECT_API_URL is {api}, not this machine: its artifacts are not reached from here"
    for var in _URL_VARS:
        url = os.environ.get(var)
        if url:
            if not url.startswith("sqlite"):
                return None, f"{var} names a {url.split(':', 1)[0]} database, not a local SQLite file"
            return Path(url.split(":///", 1)[-1]).expanduser(), ""
    return prefect_home() / "prefect.db", ""


def _present(con: sqlite3.Connection) -> set[str]:
    return {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def _key(table: str, key, value: str) -> str:
    """The artifact key a row is about (an event's payload names it), else the event's name."""
    if table == "events":
        try:
            payload = json.loads(value)
        except ValueError:
            payload = None
        if isinstance(payload, dict) and isinstance(payload.get("key"), str):
            return payload["key"]
    return str(key or "")


def candidate_rows(path: Path) -> Iterator[tuple[str, str, str, set[str]]]:
    """``(table, id, key or event name, sha1s of the strings it holds)`` of every row of :data:`TABLES`,
    read without writing (a read-only connection)."""
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)) as con:
        present = _present(con)
        for table, column, where in TABLES:
            if table not in present:
                continue
            name = "event" if table == "events" else "key"
            sql = f'SELECT id, {name}, "{column}" FROM {table}' + (f" WHERE {where}" if where else "")
            for row_id, key, value in con.execute(sql):
                if isinstance(value, bytes):
                    value = value.decode("utf-8", errors="replace")
                if isinstance(value, str):
                    yield table, str(row_id), _key(table, key, value), sha1_held(value)


def rows_holding(path: Path, gone: set[str]) -> dict[str, list[tuple[str, str]]]:
    """``table -> [(id, key)]`` of the rows holding a string whose sha1 is in ``gone``."""
    out: dict[str, list[tuple[str, str]]] = {}
    for table, row_id, key, held in candidate_rows(path):
        if held & gone:
            out.setdefault(table, []).append((row_id, key))
    return out


def purge_rows(path: Path, rows: dict[str, list[tuple[str, str]]], wait_s: float = 30.0) -> list[str]:
    """Delete ``rows`` (:func:`rows_holding`) in one transaction, the events' ``event_resources`` with
    them, then truncate the write-ahead log and vacuum; returns what could not be done (a busy server),
    in lines for a person (the rows themselves are deleted or an ``sqlite3.Error`` is raised)."""
    left: list[str] = []
    with closing(sqlite3.connect(path, timeout=wait_s, isolation_level=None)) as con:
        con.execute("PRAGMA secure_delete = ON")  # zero the freed bytes, in the file and in its log
        present = _present(con)
        con.execute("BEGIN IMMEDIATE")
        try:
            for table, found in rows.items():
                ids = [i for i, _ in found]
                marks = ",".join("?" * len(ids))
                if table == "events" and "event_resources" in present:
                    con.execute(f"DELETE FROM event_resources WHERE event_id IN ({marks})", ids)
                con.execute(f"DELETE FROM {table} WHERE id IN ({marks})", ids)
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        try:
            con.execute("VACUUM")  # a fresh file: no free page keeps an old copy
        except sqlite3.OperationalError as exc:
            left.append(f"{path}: VACUUM failed ({exc}): its free pages may still hold the text")
        busy = con.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        if busy and busy[0]:
            left.append(f"{path}: another connection kept its write-ahead log, which may still hold the text")
    return left
