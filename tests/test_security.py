"""Security checks of issue 16: the SQL guard's time limit, `ner ui` on a non-loopback address, and a
pickled training checkpoint that would run code."""

from __future__ import annotations

import time

import pytest

from storage.db import connect
from storage.query import DEFAULT_TIME_LIMIT_S, QueryTimeout, SqlRejected, query, time_limit_from_env

CROSS_JOIN = "SELECT count(*) FROM range(200000000) a, range(200000000) b WHERE a.range + b.range = -1"


def test_a_huge_cross_join_is_interrupted_at_the_time_limit(tmp_path):
    db = tmp_path / "g.duckdb"
    connect(db).close()
    t0 = time.monotonic()
    with pytest.raises(QueryTimeout, match=r"ran past its time limit of 1 s and was stopped") as info:
        query(db, CROSS_JOIN, time_limit_s=1.0)
    # the query ran (it was not refused up front) and was stopped, not left running for hours
    assert isinstance(info.value, SqlRejected) and info.value.limit_s == 1.0
    assert 0.9 <= time.monotonic() - t0 < 60
    assert "\n" not in str(info.value)
    # the timer does not outlive a fast query: a later query on the same file runs normally
    assert query(db, "SELECT 42 AS x", time_limit_s=1.0)[0]["x"] == 42
    time.sleep(1.1)  # past the earlier timer: nothing fires into a closed or reused connection


def test_the_time_limit_comes_from_the_environment_and_is_checked(tmp_path, monkeypatch):
    monkeypatch.delenv("NER_QUERY_TIME_LIMIT_S", raising=False)
    assert time_limit_from_env() == DEFAULT_TIME_LIMIT_S == 10.0
    monkeypatch.setenv("NER_QUERY_TIME_LIMIT_S", "0.5")
    assert time_limit_from_env() == 0.5
    db = tmp_path / "g.duckdb"
    connect(db).close()
    with pytest.raises(QueryTimeout, match="0.5 s"):
        query(db, CROSS_JOIN)
    monkeypatch.setenv("NER_QUERY_TIME_LIMIT_S", "soon")
    with pytest.raises(ValueError, match="NER_QUERY_TIME_LIMIT_S: expected a number of seconds > 0"):
        query(db, "SELECT 1")
    with pytest.raises(ValueError, match="expected time_limit_s as seconds > 0"):
        query(db, "SELECT 1", time_limit_s=0)
