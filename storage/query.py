"""The one read-only query function: the dashboard's SQL page, the prediction flow's SQL source and the
demo's label summary all read through :func:`query`.

A query is checked before it runs (:func:`check_sql`, on DuckDB's parse tree: one SELECT-like statement,
no functions that read files, no tables named by a path or URL) and then runs on a read-only connection
with external access and extension loading disabled, its profile's limits set and the configuration
locked, so a file read that slips past the checks still fails in DuckDB itself.

Two profiles say what a query may take of the machine; the caller picks one:

- :data:`INTERACTIVE` (the default; the SQL page, the demo): SQL typed by whoever reaches the dashboard.
  It runs in a child process (:mod:`storage.sql_sandbox`) with a small memory limit, an address-space cap
  the kernel enforces, few threads, little spill, a cap on the bytes of its result, and it is killed at its
  deadline: DuckDB's own interrupt waits for the end of a vector, and one function call can run for
  seconds past it.
- :data:`BATCH` (the prediction flow's SQL source): SQL the operator wrote into a flow's configuration;
  its result (the documents to tag) may be large. It runs in-process with DuckDB's memory limit, threads
  and spill bounded and no result cap; its deadline interrupts the connection (a timer thread).

The deadline is :data:`DEFAULT_TIME_LIMIT_S`, or ``NER_QUERY_TIME_LIMIT_S`` in the environment, or the
caller's ``time_limit_s``; past it the caller gets :class:`QueryTimeout`, one line.

Also here, the reads that belong to no single table family: the tables and views a query can read
(:func:`relations_frame`, the SQL page's catalogue) and every entity label the database knows
(:func:`entity_labels`, over datasets, evaluations and predictions).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Iterator, Sequence
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb

from ner_core.settings import Settings, settings
from storage.db import DatabaseLockedError, open_db, read_frame
from storage.sql_sandbox import Outcome, Profile, configure, run_isolated

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "BATCH",
    "DEFAULT_TIME_LIMIT_S",
    "INTERACTIVE",
    "Profile",
    "QueryOutOfMemory",
    "QueryResult",
    "QueryTimeout",
    "QueryTooLarge",
    "SqlRejected",
    "check_sql",
    "entity_labels",
    "query",
    "relations_frame",
    "time_limit_from_env",
]


class SqlRejected(ValueError):
    """A statement refused before it ran, or a query that failed; the message says why.
    ``peak_rss_mb``: the peak resident memory of the process that ran it, when it ran in one of its own."""

    peak_rss_mb: float | None = None


class QueryTimeout(SqlRejected):
    """A query stopped because it ran past its time limit (``limit_s``)."""

    def __init__(self, limit_s: float) -> None:
        self.limit_s = limit_s
        super().__init__(
            f"The query ran past its time limit of {limit_s:g} s and was stopped; narrow it (a WHERE clause, "
            "a LIMIT, fewer joins) or raise NER_QUERY_TIME_LIMIT_S."
        )


class QueryOutOfMemory(SqlRejected):
    """A query stopped because it needed more memory than its profile allows (``cap_mb``)."""

    def __init__(self, cap_mb: float) -> None:
        self.cap_mb = cap_mb
        super().__init__(
            f"The query needed more than its memory cap of {cap_mb:g} MB and was stopped; narrow it (a WHERE "
            "clause, a LIMIT, fewer or shorter columns)."
        )


class QueryTooLarge(SqlRejected):
    """A query stopped because its result passed the profile's cap on result bytes (``cap_mb``)."""

    def __init__(self, cap_mb: float, rows: int) -> None:
        self.cap_mb = cap_mb
        super().__init__(
            f"The result passed its size cap of {cap_mb:g} MB after {rows} rows and was stopped; select "
            "fewer or shorter columns, or fewer rows (a LIMIT, a WHERE clause)."
        )


DEFAULT_TIME_LIMIT_S: float = Settings.model_fields["query_time_limit_s"].default
"""How long one guarded query may run (fetching its rows included) before it is stopped."""


def time_limit_from_env() -> float:
    """``NER_QUERY_TIME_LIMIT_S`` as seconds (> 0; read through :func:`ner_core.settings.settings`), or
    :data:`DEFAULT_TIME_LIMIT_S` when unset."""
    return settings().query_time_limit_s


def _half_the_memory_mb() -> int:
    try:
        return max(256, os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2 // (1 << 20))
    except (ValueError, OSError, AttributeError):
        return 4096


#: SQL typed on the dashboard: small and isolated, whatever it asks for (see the module's doc)
INTERACTIVE = Profile(
    "interactive", memory_limit_mb=512, threads=2, max_temp_mb=1024, max_result_mb=32, isolated=True
)
#: the prediction flow's SQL source: in-process and streaming, DuckDB bounded to half the memory
BATCH = Profile(
    "batch", memory_limit_mb=_half_the_memory_mb(), threads=os.cpu_count() or 1, max_temp_mb=16384
)


_ALLOWED = {"SELECT", "EXPLAIN"}
#: table and scalar functions that read files or run SQL text (which would escape this check), by name
_FILE_FUNCS = re.compile(
    r"read_\w+|glob|parquet_\w+|sniff_csv|iceberg_\w+|delta_scan|sqlite_\w+|postgres_\w+|mysql_\w+|"
    r"query_table|query|json_execute_serialized_sql|getenv"
)
_PATH_NAME = re.compile(r"[/\\:~]|\.\w+$")  # a table "name" that is a file path, a URL or a file name
_ONLY = "only a single read-only SELECT / WITH / SHOW / DESCRIBE query is allowed"


def _keywords(text: str) -> list[tuple[int, str]]:
    """The statement's keywords with their offsets (DuckDB's tokenizer: comments and strings skipped)."""
    found = []
    for pos, kind in duckdb.tokenize(text):
        if kind == duckdb.token_type.keyword:
            m = re.match(r"[A-Za-z_]+", text[pos:])
            if m:
                found.append((pos, m.group(0).upper()))
    return found


def _statement_name(text: str, kind: str) -> str:
    """What the user wrote: its first keyword (``INSTALL``, which DuckDB files under LOAD; ``FORCE
    INSTALL``; ``UPDATE EXTENSIONS``), or DuckDB's kind when the text starts with WITH or has no keyword."""
    words = [w for _, w in _keywords(text)[:2]]
    if not words or words[0] == "WITH":
        return kind
    return " ".join(words) if words[0] == "FORCE" or kind == "UNKNOWN" else words[0]


def _parse_tree(con: duckdb.DuckDBPyConnection, text: str, kind: str) -> dict:
    """The SELECT's parse tree as JSON (``json_serialize_sql``); for EXPLAIN, the tree of the statement
    it explains."""
    if kind == "EXPLAIN":
        keywords = _keywords(text)
        rest = next((pos for pos, w in keywords if w not in ("EXPLAIN", "ANALYZE", "ANALYSE")), None)
        try:
            inner = con.extract_statements(text[rest:]) if rest is not None else []
            if len(inner) != 1 or inner[0].type.name != "SELECT":
                raise ValueError
        except (duckdb.Error, ValueError):
            raise SqlRejected(
                "Rejected: EXPLAIN [ANALYZE] is allowed before one SELECT, without options."
            ) from None
        text = text[rest:]
    tree = json.loads(con.execute("SELECT json_serialize_sql(?)", [text]).fetchone()[0])
    if tree.get("error"):
        raise SqlRejected(f"Rejected: the query could not be checked: {tree.get('error_message')}")
    return tree


def _names(tree: Any) -> Iterator[tuple[str, str]]:
    """Every function (``function``, name) and table (``table``, name) the parse tree refers to."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if isinstance(node.get("function_name"), str):
                yield "function", node["function_name"]
            if node.get("type") == "BASE_TABLE" and isinstance(node.get("table_name"), str):
                yield "table", node["table_name"]
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


def check_sql(sql: str) -> str:
    """Return ``sql`` stripped if it is one read-only query; raise :class:`SqlRejected` otherwise.

    Accepted: a single SELECT / WITH / SHOW / DESCRIBE / SUMMARIZE / EXPLAIN statement (DuckDB parses
    all of these as SELECT or EXPLAIN). Rejected, named: anything else (INSERT, DROP, SET, ATTACH, COPY,
    INSTALL, LOAD, PRAGMA, ...), several statements. The functions and tables are read from DuckDB's parse
    tree, not from the text, so quoting or case cannot hide them: table functions and functions that read
    files or run SQL text (read_csv, read_text, glob, query, ...) and tables named by a file path, file
    name or URL are rejected.
    """
    if not isinstance(sql, str):
        raise ValueError(f"expected the SQL as a str, got {type(sql).__name__}")
    text = sql.strip().rstrip(";").strip()
    if not text:
        raise SqlRejected("Rejected: the query is empty; write one SELECT statement.")
    with closing(duckdb.connect(":memory:")) as con:
        try:
            statements = con.extract_statements(text)
        except duckdb.Error as exc:
            raise SqlRejected(f"Rejected: the query does not parse: {' '.join(str(exc).split())}") from None
        if len(statements) != 1:
            raise SqlRejected(f"Rejected: expected one statement, got {len(statements)}; {_ONLY}.")
        try:
            kind = statements[0].type.name
        except ValueError:  # a kind DuckDB's Python API has no name for (UPDATE EXTENSIONS)
            kind = "UNKNOWN"
        if kind not in _ALLOWED:
            name = _statement_name(text, kind)
            raise SqlRejected(
                f"Rejected: {name} statements are not allowed; {_ONLY} (queries here never write)."
            )
        tree = _parse_tree(con, text, kind)
    for what, name in _names(tree):
        if what == "function" and _FILE_FUNCS.fullmatch(name.lower()):
            raise SqlRejected(
                f"Rejected: {name}(...) reads or writes files, or runs SQL text; only the database's own "
                "tables and views can be queried."
            )
        if what == "table" and _PATH_NAME.search(name):
            raise SqlRejected(
                f"Rejected: the query names a file path or URL ({name}); only the database's own tables and "
                "views can be queried."
            )
    return text


class QueryResult(list):
    """The rows of a query as dicts keyed by column (a ``list``), plus ``columns``, ``truncated`` (more rows
    existed than the ``limit`` asked for) and ``peak_rss_mb`` (the child process's, for an isolated run)."""

    def __init__(
        self, rows: list[dict], columns: list[str], truncated: bool, peak_rss_mb: float | None = None
    ) -> None:
        super().__init__(rows)
        self.columns = columns
        self.truncated = truncated
        self.peak_rss_mb = peak_rss_mb


def query(
    db_path: str | Path,
    sql: str,
    params: Sequence[Any] = (),
    *,
    limit: int | None = None,
    wait_s: float = 10.0,
    time_limit_s: float | None = None,
    profile: Profile = INTERACTIVE,
) -> QueryResult:
    """Run one checked query read-only under ``profile`` (see the module's doc); at most ``limit`` rows
    come back.

    The query (its execution and the fetch) is stopped after ``time_limit_s`` seconds (None:
    :func:`time_limit_from_env`). Raises :class:`SqlRejected` for a refused statement or a query DuckDB
    could not run, and its kinds :class:`QueryTimeout` (past the time limit), :class:`QueryOutOfMemory`
    and :class:`QueryTooLarge` (past the profile's caps); ``FileNotFoundError`` for a missing database and
    :class:`storage.db.DatabaseLockedError` when a writer holds the file for longer than ``wait_s`` seconds.
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"expected limit as an int >= 1 or None, got {limit!r}")
    limit_s = time_limit_from_env() if time_limit_s is None else time_limit_s
    if isinstance(limit_s, bool) or not isinstance(limit_s, (int, float)) or not 0 < limit_s < float("inf"):
        raise ValueError(f"expected time_limit_s as seconds > 0 or None, got {time_limit_s!r}")
    text = check_sql(sql)
    if profile.isolated:
        out = run_isolated(
            str(db_path), text, list(params), limit=limit, limit_s=limit_s, wait_s=wait_s, profile=profile
        )
        cols, rows = out.columns, _isolated_rows(out, db_path, profile, limit_s, wait_s)
    else:
        cols, rows = _run_in_process(db_path, text, params, limit, limit_s, wait_s, profile)
    truncated = limit is not None and len(rows) > limit
    kept = rows[:limit] if limit is not None else rows
    peak = out.peak_rss_mb if profile.isolated else None
    return QueryResult([dict(zip(cols, r, strict=True)) for r in kept], cols, truncated, peak)


def _isolated_rows(
    out: Outcome, db_path: str | Path, profile: Profile, limit_s: float, wait_s: float
) -> list:
    """The rows of a child's run, or the one-line error its end calls for."""
    last = out.last or ("lost",)
    if out.ended == "exited" and last[0] == "end":
        return out.rows
    if last[0] == "missing":
        raise FileNotFoundError(last[1])
    if last[0] == "locked":
        raise DatabaseLockedError(db_path, last[1], last[2], wait_s, last[3])
    if last[0] == "too_large":
        exc: SqlRejected = QueryTooLarge(profile.max_result_mb, last[1])
    elif last[0] == "memory":
        exc = QueryOutOfMemory(profile.cap_mb)
    elif last[0] == "failed":
        exc = SqlRejected(f"The query failed: {' '.join(last[1].split())}")
    elif out.ended == "timeout":
        exc = QueryTimeout(limit_s)
    elif out.ended == "no_start":
        exc = SqlRejected(
            f"The query's process was not ready in time (it may wait {wait_s:g} s for a writer, plus its "
            "start-up) and was stopped."
        )
    else:  # the child died without a word: the kernel's cap met outside DuckDB, or a crash
        exc = SqlRejected(f"The query's process ended without an answer (exit status {out.exit_code}).")
    exc.peak_rss_mb = out.peak_rss_mb
    raise exc


def _run_in_process(
    db_path: str | Path, text: str, params: Sequence[Any], limit: int | None, limit_s: float, wait_s: float,
    profile: Profile,
) -> tuple[list[str], list[tuple]]:  # fmt: skip
    """Run on a connection of this process; a timer thread interrupts it at the deadline."""
    spill = Path(tempfile.mkdtemp(prefix="ner-sql-"))
    try:
        with open_db(db_path, read_only=True, wait_s=wait_s) as con:
            configure(con, profile, spill)
            timer = threading.Timer(limit_s, con.interrupt)
            timer.daemon = True
            timer.start()
            try:
                cur = con.execute(text, list(params))
                cols = [d[0] for d in cur.description] if cur.description else []
                return cols, cur.fetchall() if limit is None else cur.fetchmany(limit + 1)
            except duckdb.InterruptException:
                raise QueryTimeout(limit_s) from None
            except duckdb.OutOfMemoryException:
                raise QueryOutOfMemory(profile.memory_limit_mb) from None
            except duckdb.Error as exc:
                raise SqlRejected(f"The query failed: {' '.join(str(exc).split())}") from None
            finally:
                timer.cancel()
    finally:
        shutil.rmtree(spill, ignore_errors=True)


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
