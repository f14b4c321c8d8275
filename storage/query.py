"""The one read-only query function: the dashboard's SQL page, the prediction flow's SQL source and the
command line all read through :func:`query`.

A query is checked before it runs (:func:`check_sql`: one SELECT-like statement, no table functions that
read files, no quoted paths or URLs) and then runs on a read-only connection with external access
disabled and the configuration locked, so a file read that slips past the checks still fails in DuckDB
itself. It runs under a time limit (:data:`DEFAULT_TIME_LIMIT_S`, or ``NER_QUERY_TIME_LIMIT_S`` in the
environment, or the caller's ``time_limit_s``): a timer thread interrupts the connection when the limit
passes, and the caller gets :class:`QueryTimeout`, one line, instead of a query left running.

Also here, the reads that belong to no single table family: the tables and views a query can read
(:func:`relations_frame`, the SQL page's catalogue) and every entity label the database knows
(:func:`entity_labels`, over datasets, evaluations and predictions).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb

from ner_core.settings import Settings, settings
from storage.db import open_db, read_frame

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "DEFAULT_TIME_LIMIT_S",
    "QueryResult",
    "QueryTimeout",
    "SqlRejected",
    "check_sql",
    "entity_labels",
    "query",
    "relations_frame",
    "time_limit_from_env",
]


class SqlRejected(ValueError):
    """A statement refused before it ran, or a query that failed; the message says why."""


class QueryTimeout(SqlRejected):
    """A query interrupted because it ran past its time limit (``limit_s``)."""

    def __init__(self, limit_s: float) -> None:
        self.limit_s = limit_s
        super().__init__(
            f"The query ran past its time limit of {limit_s:g} s and was stopped; narrow it (a WHERE clause, "
            "a LIMIT, fewer joins) or raise NER_QUERY_TIME_LIMIT_S."
        )


DEFAULT_TIME_LIMIT_S: float = Settings.model_fields["query_time_limit_s"].default
"""How long one guarded query may run (fetching its rows included) before it is interrupted."""


def time_limit_from_env() -> float:
    """``NER_QUERY_TIME_LIMIT_S`` as seconds (> 0; read through :func:`ner_core.settings.settings`), or
    :data:`DEFAULT_TIME_LIMIT_S` when unset."""
    return settings().query_time_limit_s


_ALLOWED = {"SELECT", "EXPLAIN"}
_FILE_FUNCS = re.compile(
    r"\b(read_\w+|glob|parquet_\w+|sniff_csv|iceberg_\w+|delta_scan|sqlite_\w+|postgres_\w+|mysql_\w+|"
    r"query_table|query)\s*\(",
    re.IGNORECASE,
)
_PATH_LITERAL = re.compile(r"'\s*(/|~|\.{1,2}/|[a-z][a-z0-9+.-]*://|[a-z]:\\)", re.IGNORECASE)
_ONLY = "only a single read-only SELECT / WITH / SHOW / DESCRIBE query is allowed"


def _strip_sql_comments(sql: str) -> str:
    sql = re.sub(r"/\*.*?\*/", " ", sql, flags=re.DOTALL)
    return re.sub(r"--[^\n]*", " ", sql)


def check_sql(sql: str) -> str:
    """Return ``sql`` stripped if it is one read-only query; raise :class:`SqlRejected` otherwise.

    Accepted: a single SELECT / WITH / SHOW / DESCRIBE / SUMMARIZE / EXPLAIN statement (DuckDB parses
    all of these as SELECT or EXPLAIN). Rejected: anything else (INSERT, DROP, SET, ATTACH, COPY, PRAGMA,
    ...), several statements, table functions that read files (read_csv, read_parquet, glob, ...) and
    quoted file paths or URLs.
    """
    if not isinstance(sql, str):
        raise ValueError(f"expected the SQL as a str, got {type(sql).__name__}")
    text = sql.strip().rstrip(";").strip()
    if not text:
        raise SqlRejected("Rejected: the query is empty; write one SELECT statement.")
    try:
        statements = duckdb.connect(":memory:").extract_statements(text)
    except duckdb.Error as exc:
        raise SqlRejected(f"Rejected: the query does not parse: {exc}") from None
    if len(statements) != 1:
        raise SqlRejected(f"Rejected: expected one statement, got {len(statements)}; {_ONLY}.")
    kind = statements[0].type.name
    if kind not in _ALLOWED:
        raise SqlRejected(f"Rejected: {kind} statements are not allowed; {_ONLY} (queries here never write).")
    code = _strip_sql_comments(text)
    m = _FILE_FUNCS.search(code)
    if m:
        raise SqlRejected(
            f"Rejected: {m.group(1)}(...) reads or writes files; only the database's own tables and views "
            "can be queried."
        )
    if _PATH_LITERAL.search(code):
        raise SqlRejected(
            "Rejected: the query names a file path or URL; only the database's own tables and views can be "
            "queried."
        )
    return text


class QueryResult(list):
    """The rows of a query as dicts keyed by column (a ``list``), plus ``columns`` and ``truncated``
    (more rows existed than the ``limit`` asked for)."""

    def __init__(self, rows: list[dict], columns: list[str], truncated: bool) -> None:
        super().__init__(rows)
        self.columns = columns
        self.truncated = truncated


def query(
    db_path: str | Path,
    sql: str,
    params: Sequence[Any] = (),
    *,
    limit: int | None = None,
    wait_s: float = 10.0,
    time_limit_s: float | None = None,
) -> QueryResult:
    """Run one checked query read-only with external access disabled; at most ``limit`` rows come back.

    The query (its execution and the fetch) is interrupted after ``time_limit_s`` seconds (None:
    :func:`time_limit_from_env`). Raises :class:`SqlRejected` for a refused statement or a query DuckDB
    could not run, :class:`QueryTimeout` (a ``SqlRejected``) for one past its time limit,
    ``FileNotFoundError`` for a missing database and :class:`storage.db.DatabaseLockedError` when a writer
    holds the file for longer than ``wait_s`` seconds.
    """
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise ValueError(f"expected limit as an int >= 1 or None, got {limit!r}")
    limit_s = time_limit_from_env() if time_limit_s is None else time_limit_s
    if isinstance(limit_s, bool) or not isinstance(limit_s, (int, float)) or not 0 < limit_s < float("inf"):
        raise ValueError(f"expected time_limit_s as seconds > 0 or None, got {time_limit_s!r}")
    text = check_sql(sql)
    with open_db(db_path, read_only=True, wait_s=wait_s) as con:
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
        timer = threading.Timer(limit_s, con.interrupt)
        timer.daemon = True
        timer.start()
        try:
            cur = con.execute(text, list(params))
            cols = [d[0] for d in cur.description] if cur.description else []
            rows = cur.fetchall() if limit is None else cur.fetchmany(limit + 1)
        except duckdb.InterruptException:
            raise QueryTimeout(limit_s) from None
        except duckdb.Error as exc:
            raise SqlRejected(f"The query failed: {exc}") from None
        finally:
            timer.cancel()
    truncated = limit is not None and len(rows) > limit
    kept = rows[:limit] if limit is not None else rows
    return QueryResult([dict(zip(cols, r, strict=True)) for r in kept], cols, truncated)


def relations_frame(db_path: str | Path, *, wait_s: float = 10.0) -> pd.DataFrame:
    """The tables and views of the ``main`` schema with their columns: ``name``, ``kind`` (table | view),
    ``columns`` (comma-separated, in order); views first, then by name."""
    return read_frame(
        db_path,
        """
        SELECT t.table_name AS name, lower(replace(t.table_type, 'BASE ', '')) AS kind,
               string_agg(c.column_name, ', ' ORDER BY c.ordinal_position) AS columns
        FROM information_schema.tables t
        JOIN information_schema.columns c USING (table_schema, table_name)
        WHERE t.table_schema = 'main'
        GROUP BY ALL ORDER BY kind DESC, name
        """,
        wait_s=wait_s,
    )


def entity_labels(db_path: str | Path, *, wait_s: float = 10.0) -> tuple[str, ...]:
    """Every entity label of the datasets, evaluations and predictions, sorted and distinct."""
    frame = read_frame(
        db_path,
        """
        SELECT DISTINCT label FROM (
            SELECT unnest(labels) AS label FROM datasets
            UNION ALL SELECT label FROM evaluation_types
            UNION ALL SELECT label FROM predicted_entities)
        ORDER BY label
        """,
        wait_s=wait_s,
    )
    return tuple(frame["label"].tolist())
