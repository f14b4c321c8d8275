"""Issue 23, the SQL page cannot take the machine down: the page's queries run in a child process capped in
memory, result bytes and time (storage.sql_sandbox); the prediction flow's SQL source keeps its large
results (the BATCH profile); the guard reads the parse tree, not the text.

The attacks are the issue's own (bench/reliability/sql_limits.py), each in a fresh interpreter whose peak
resident memory, and that of the query's process, is their own high-water mark (VmHWM)."""

from __future__ import annotations

import dataclasses
import pickle
import re
import time

import duckdb
import pytest

from bench.reliability.harness import REPO
from bench.reliability.sql_limits import ATTACKS, measure
from storage.db import connect
from storage.query import SqlRejected, check_sql, query

#: what an interpreter with DuckDB holds before any query (the caller's, or the child's before its cap)
BASE_MB = 256
PAGE_CAP_MB = 512 + 256  # INTERACTIVE: DuckDB's memory_limit plus the child's headroom
GUARD_MB = 3072  # the measuring interpreter's own address-space cap: code without caps stops there


@pytest.fixture
def db(tmp_path):
    path = tmp_path / "q.duckdb"
    connect(path).close()
    return path


def test_a_large_caller_does_not_make_a_small_query_look_large(db):
    """The query's peak is its own process's: ``ru_maxrss`` from ``wait4`` would carry the resident size of
    the process that started it (a 2 GB test runner made every query read 2 GB)."""
    ballast = bytearray(1500 << 20)  # this process: 1.5 GB resident
    ballast[:: 1 << 12] = b"x" * len(ballast[:: 1 << 12])
    rows = query(db, "SELECT 42 AS answer")
    assert rows == [{"answer": 42}] and rows.peak_rss_mb is not None
    assert rows.peak_rss_mb < BASE_MB + 128, rows.peak_rss_mb
    del ballast


@pytest.mark.parametrize("name", list(ATTACKS))
def test_each_attack_of_the_issue_stays_under_the_page_memory_cap(name, tmp_path):
    sql, limit_s = ATTACKS[name]
    got = measure(REPO, sql, limit_s, tmp_path, guard_mb=GUARD_MB)
    # stopped by the cap with one line (a 200-row vector of 10 MB strings is 2 GB inside DuckDB before
    # any row reaches Python, so the third attack meets the memory cap before the result cap)
    assert got["ended"].startswith("QueryOutOfMemory: The query needed more than its memory cap of 768 MB")
    assert "\n" not in got["ended"]
    assert got["peak_rss_mb"] < PAGE_CAP_MB + BASE_MB, got


def test_a_result_past_the_byte_cap_is_stopped_with_one_line(db):
    with pytest.raises(SqlRejected, match=r"The result passed its size cap of 32 MB after \d+ rows") as info:
        query(db, "SELECT repeat('x', 1000000) AS s FROM range(200)", limit=200)
    assert "\n" not in str(info.value) and info.value.peak_rss_mb < PAGE_CAP_MB + BASE_MB
    # under the cap the rows come back, the row limit as before
    res = query(db, "SELECT i, repeat('x', 100000) AS s FROM range(300) t(i)", limit=200)
    assert len(res) == 200 and res.truncated and res[199]["i"] == 199 and len(res[0]["s"]) == 100000


def test_a_single_long_call_is_killed_at_the_deadline(db):
    from storage.query import INTERACTIVE, QueryTimeout

    # room for the 1.5 GB string, so that only the deadline stops it (the page's cap would stop it first)
    roomy = dataclasses.replace(INTERACTIVE, headroom_mb=4096)
    sql, limit_s = ATTACKS["one 1.5 GB string, 1 s limit"]
    t0 = time.monotonic()
    with pytest.raises(QueryTimeout, match=r"ran past its time limit of 1 s and was stopped") as info:
        query(db, sql, time_limit_s=limit_s, profile=roomy)
    # the attack runs about ten times its limit when nothing kills it; a generous margin, not a timing
    assert time.monotonic() - t0 < 5 * limit_s
    assert info.value.peak_rss_mb < roomy.cap_mb + BASE_MB
    assert query(db, "SELECT 42 AS x")[0]["x"] == 42  # the next query runs normally


@pytest.mark.parametrize(
    "sql, named",
    [
        ("INSTALL httpfs", "INSTALL"),
        ("force install httpfs", "FORCE INSTALL"),
        ("/* first */ INSTALL httpfs", "INSTALL"),
        ("LOAD httpfs", "LOAD"),
        ("CHECKPOINT", "CHECKPOINT"),
        ("USE memory", "USE"),
        ("UPDATE EXTENSIONS", "UPDATE EXTENSIONS"),
        ("WITH a AS (SELECT 1) INSERT INTO runs SELECT * FROM a", "INSERT"),
    ],
)
def test_a_refused_statement_is_named_as_written(sql, named):
    with pytest.raises(SqlRejected, match=rf"^Rejected: {named} statements are not allowed"):
        check_sql(sql)


@pytest.mark.parametrize(
    "sql, name",
    [
        ("SELECT \"read_text\"('secret.txt')", "read_text"),
        ("SELECT \"READ_BLOB\" ('secret.txt')", "read_blob"),
        ("SELECT * FROM \"read_csv\"('secret.csv')", "read_csv"),
        ("SELECT * FROM system.main.\"glob\"('*')", "glob"),
        ("SELECT 'secret.txt'.read_text()", "read_text"),
        ("SELECT * FROM \"query\"('SELECT 1')", "query"),
        ("WITH a AS (SELECT * FROM \"parquet_schema\"('x.parquet')) SELECT * FROM a", "parquet_schema"),
        ("EXPLAIN SELECT \"read_text\"('secret.txt')", "read_text"),
    ],
)
def test_quoted_function_names_are_refused_by_the_parsed_check(sql, name):
    with pytest.raises(SqlRejected, match=rf"^Rejected: {name}\(\.\.\.\) reads or writes files"):
        check_sql(sql)


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT '/tmp' AS a_path_as_a_value",
        "SELECT 'read_csv(x)' AS text_that_looks_like_a_call",
        "EXPLAIN SELECT 1",
        "SELECT * FROM range(3)",
    ],
)
def test_values_that_only_look_like_files_pass(sql):
    assert check_sql(sql) == sql


def test_each_profile_sets_duckdb_limits_and_the_flow_keeps_large_results(db):
    from flows.steps import _sql_documents
    from storage.query import BATCH, INTERACTIVE

    settings = (
        "SELECT current_setting('memory_limit') AS m, current_setting('threads') AS t, "
        "current_setting('max_temp_directory_size') AS x"
    )
    page = query(db, settings)[0]  # the default profile
    assert page == {"m": "512.0 MiB", "t": INTERACTIVE.threads, "x": "1.0 GiB"}
    with duckdb.connect() as con:  # DuckDB's own spelling of the batch memory limit
        con.execute(f"SET memory_limit = '{BATCH.memory_limit_mb}MiB'")
        batch_limit = con.execute("SELECT current_setting('memory_limit')").fetchone()[0]
    assert query(db, settings, profile=BATCH)[0] == {"m": batch_limit, "t": BATCH.threads, "x": "16.0 GiB"}
    # 30 documents of 1.2 MB each: past the page's 32 MB result cap, the flow's source takes them whole
    big = "SELECT 'd' || i AS doc_id, repeat('x', 1200000) AS text FROM range(30) t(i)"
    with pytest.raises(SqlRejected, match="size cap of 32 MB"):
        query(db, big)
    docs = _sql_documents(str(db), big)
    assert len(docs) == 30 and {len(d.text) for d in docs} == {1200000}


def test_frames_carry_plain_values_only():
    from datetime import UTC, date, datetime
    from decimal import Decimal
    from uuid import UUID

    from storage.sql_sandbox import safe_loads

    values = [
        1,
        "字",
        None,
        b"\x00",
        date(2026, 1, 2),
        datetime(2026, 1, 2, tzinfo=UTC),
        Decimal("1.5"),
        UUID(int=3),
    ]
    assert safe_loads(pickle.dumps(("rows", [tuple(values)]), protocol=5)) == ("rows", [tuple(values)])

    class Evil:
        def __reduce__(self):
            return (print, ("ran",))

    with pytest.raises(pickle.UnpicklingError, match=re.escape("refused builtins.print")):
        safe_loads(pickle.dumps(Evil()))
