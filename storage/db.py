"""DuckDB connections: migrations on open, bounded retry on the single-writer lock.

DuckDB allows one process to write a database file, or several to read it. A second writer (or a reader
while a writer holds the file) gets an IO error whose text names the holder's PID; :func:`connect` retries
for ``wait_s`` seconds and then raises :class:`DatabaseLockedError` naming that process. Open short-lived
connections (:func:`open_db`) and close them promptly.
"""

from __future__ import annotations

import errno
import re
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb

from storage.schema import MIGRATIONS, check_migrations

if TYPE_CHECKING:
    import pandas as pd

_LOCK_RE = re.compile(r"Conflicting lock is held in (?P<cmd>.*?) \(PID (?P<pid>\d+)\)")
_RETRY_SLEEP_S = 0.1  # the longest pause between a writer's attempts on a locked file
_FIRST_RETRY_S = 0.005  # the first pause; each next one doubles, up to the cap
_READ_RETRY_CAP_S = 0.05  # readers (the dashboard) retry sooner: a writer's transactions are short
#: what a write that ran out of space says: the OS (ENOSPC; EFBIG under a file-size limit) through DuckDB
_DISK_FULL = ("No space left on device", "Errno 28", "File too large", "Errno 27")


class DatabaseLockedError(RuntimeError):
    """Another process holds the database; ``pid`` and ``command`` name it when DuckDB said so."""

    def __init__(self, path: str | Path, pid: int | None, command: str | None, waited_s: float, detail: str):
        self.path = str(path)
        self.pid = pid
        self.command = command
        holder = f"PID {pid} ({command})" if pid is not None else f"another process ({detail})"
        super().__init__(
            f"database {self.path} is locked by {holder}; waited {waited_s:.1f} s. DuckDB allows one writing "
            f"process or several readers: close the other process (dashboard, flow, notebook) or retry later."
        )


class DiskFullError(RuntimeError):
    """A write to the database failed for want of space; the transaction was rolled back."""

    def __init__(self, path: str | Path, detail: str):
        self.path = str(path)
        self.detail = " ".join(detail.split())
        cause = "No space left on device" if "File too large" not in detail else "File too large"
        super().__init__(
            f"database {self.path}: the disk is full ({cause}); the write was rolled back and the earlier "
            f"data is intact: free some space and run it again. DuckDB said: {self.detail}"
        )


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` (an ``OSError`` or DuckDB's error text) says a write ran out of space."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EFBIG):
        return True
    text = str(exc)
    return any(marker in text for marker in _DISK_FULL)


@contextmanager
def transaction(con: duckdb.DuckDBPyConnection) -> Iterator[duckdb.DuckDBPyConnection]:
    """``with transaction(con):`` — BEGIN, then COMMIT on success or ROLLBACK on any exception.

    A ROLLBACK that itself fails (a failed COMMIT has already ended the transaction, as on a full disk) is
    ignored, so the original error is the one that propagates.
    """
    con.execute("BEGIN TRANSACTION")
    try:
        yield con
        con.execute("COMMIT")
    except BaseException:
        rollback_quietly(con)
        raise


def rollback_quietly(con: duckdb.DuckDBPyConnection) -> None:
    """ROLLBACK, ignoring the error a ROLLBACK gives when a failed COMMIT has already ended the
    transaction (as on a full disk), so that the caller re-raises the error that matters."""
    try:
        con.execute("ROLLBACK")
    except duckdb.Error:
        pass


def _holder(message: str) -> tuple[int | None, str | None]:
    m = _LOCK_RE.search(message)
    if not m:
        return None, None
    pid = int(m.group("pid"))
    cmd = m.group("cmd")
    try:  # the full command line is more telling than the interpreter path
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        full = " ".join(" ".join(p.decode("utf-8", "replace") for p in raw.split(b"\0") if p).split())
        if full:
            cmd = full if len(full) <= 200 else full[:197] + "..."
    except OSError:
        pass
    return pid, cmd


def _is_lock_error(exc: Exception) -> bool:
    text = str(exc)
    return "Could not set lock" in text or "Conflicting lock" in text


def current_version(con: duckdb.DuckDBPyConnection) -> int:
    """Highest applied migration (0 for a fresh file without ``schema_version``)."""
    exists = con.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = 'schema_version'"
    ).fetchone()[0]
    if not exists:
        return 0
    return int(con.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()[0])


def migrate(
    con: duckdb.DuckDBPyConnection, migrations: list[tuple[int, str, str]] | None = None
) -> list[int]:
    """Apply pending migrations, one transaction each; return the versions applied."""
    migrations = MIGRATIONS if migrations is None else migrations
    check_migrations(migrations)
    con.execute(
        "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, "
        "description VARCHAR NOT NULL, applied_at TIMESTAMP NOT NULL DEFAULT current_timestamp)"
    )
    have = current_version(con)
    if have > migrations[-1][0]:
        raise RuntimeError(
            f"database schema is version {have}, newer than this code's {migrations[-1][0]}: update the code"
        )
    applied = []
    for version, description, sql in migrations:
        if version <= have:
            continue
        with transaction(con):
            con.execute(sql)
            con.execute(
                "INSERT INTO schema_version (version, description) VALUES (?, ?)", [version, description]
            )
        applied.append(version)
    return applied


def connect(path: str | Path, read_only: bool = False, *, wait_s: float = 10.0) -> duckdb.DuckDBPyConnection:
    """Open ``path``; writers get pending migrations applied.

    Retries on DuckDB's lock error for up to ``wait_s`` seconds, then raises :class:`DatabaseLockedError`.
    ``read_only`` on a missing file raises ``FileNotFoundError``.
    """
    if wait_s < 0:
        raise ValueError(f"wait_s must be >= 0 seconds, got {wait_s}")
    p = Path(path)
    if str(path) != ":memory:":
        if read_only and not p.exists():
            raise FileNotFoundError(f"database {p} does not exist (opened read-only; ingest a dataset first)")
        if not read_only:
            p.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    pause, cap = _FIRST_RETRY_S, (_READ_RETRY_CAP_S if read_only else _RETRY_SLEEP_S)
    while True:
        try:
            con = duckdb.connect(str(path), read_only=read_only)
            break
        except duckdb.IOException as exc:
            if not _is_lock_error(exc):
                raise
            waited = time.monotonic() - t0
            if waited >= wait_s:
                pid, cmd = _holder(str(exc))
                raise DatabaseLockedError(p, pid, cmd, waited, str(exc)) from None
            time.sleep(min(pause, max(0.0, wait_s - waited)))
            pause = min(pause * 2, cap)
    if not read_only:
        try:
            if _schema_version(con) != MIGRATIONS[-1][0]:  # one cheap query when the schema is current
                migrate(con)
        except Exception:
            con.close()
            raise
    return con


def _schema_version(con: duckdb.DuckDBPyConnection) -> int:
    """The highest applied migration, or -1 when the file has no ``schema_version`` table yet."""
    try:
        return int(con.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()[0])
    except duckdb.CatalogException:
        return -1


@contextmanager
def open_db(
    path: str | Path, read_only: bool = False, wait_s: float = 10.0
) -> Iterator[duckdb.DuckDBPyConnection]:
    """``with open_db(path) as con:`` — a short-lived connection, closed on exit.

    A write that fails for want of space raises :class:`DiskFullError` naming ``path`` (one line).
    """
    try:
        con = connect(path, read_only=read_only, wait_s=wait_s)
        try:
            yield con
        finally:
            con.close()
    except (duckdb.Error, OSError) as exc:
        if is_disk_full(exc):
            raise DiskFullError(path, str(exc)) from exc
        raise


@contextmanager
def read_current(path: str | Path, wait_s: float = 10.0) -> Iterator[duckdb.DuckDBPyConnection]:
    """``with read_current(path) as con:`` — a short read-only connection to a database at this code's
    schema: an older file is migrated once by a short writer connection first (for reads that need a
    column or view a later migration made)."""
    with open_db(path, read_only=True, wait_s=wait_s) as con:
        if current_version(con) >= MIGRATIONS[-1][0]:
            yield con
            return
    connect(path, wait_s=wait_s).close()
    with open_db(path, read_only=True, wait_s=wait_s) as con:
        yield con


def now() -> datetime:
    """The current UTC time without a zone (DuckDB ``TIMESTAMP``)."""
    return datetime.now(UTC).replace(tzinfo=None)


def rows(con: duckdb.DuckDBPyConnection, sql: str, params: Sequence[Any] = ()) -> list[dict]:
    """The rows of ``sql`` as dicts keyed by column name."""
    cur = con.execute(sql, list(params))
    cols = [d[0] for d in cur.description]
    return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]


def read_frame(
    path: str | Path, sql: str, params: Sequence[Any] = (), *, wait_s: float = 10.0
) -> pd.DataFrame:
    """The rows of ``sql`` as a pandas DataFrame (DuckDB's own conversion), on a short-lived read-only
    connection. The dashboard's reads return these: column types and the columns of an empty result
    come from DuckDB."""
    with open_db(path, read_only=True, wait_s=wait_s) as con:
        return con.execute(sql, list(params)).df()


def row_counts(path: str | Path, tables: Sequence[str], *, wait_s: float = 10.0) -> dict[str, int]:
    """Rows in each of ``tables`` that exists in the file's ``main`` schema; absent tables are left out.

    Opens ``path`` read-only (``FileNotFoundError`` when it is missing, :class:`DatabaseLockedError` when a
    writer holds it for longer than ``wait_s``).
    """
    with open_db(path, read_only=True, wait_s=wait_s) as con:
        present = {
            r[0]
            for r in con.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main'"
            ).fetchall()
        }
        return {
            t: int(con.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0]) for t in tables if t in present
        }
