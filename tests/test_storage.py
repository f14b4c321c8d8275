"""DuckDB layer: migrations, the writer lock with a real second process, atomic and idempotent ingest."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from ner_core.ingest import IngestError, plan_ingest, prepare_ingest
from storage import datasets as ds
from storage.datasets import (
    dataset_labels,
    ingest_dataset,
    latest_version,
    list_datasets,
    load_documents,
    load_problems,
    store_plan,
)
from storage.db import DatabaseLockedError, connect, migrate, open_db
from storage.schema import MIGRATIONS, SCHEMA_VERSION, check_migrations

BAD = Path(__file__).resolve().parent / "data" / "bad"
REPO = Path(__file__).resolve().parents[1]


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture()
def corpus(tmp_path):
    train = _jsonl(
        tmp_path / "train.jsonl",
        [
            {"text": "我在北京工作", "entities": [{"start": 2, "end": 4, "label": "LOC"}]},
            {
                "text": "张三去了上海",
                "entities": [{"start": 0, "end": 2, "label": "PER"}, {"start": 4, "end": 6, "label": "LOC"}],
            },
            {"text": "没有实体", "entities": []},
        ],
    )
    dev = _jsonl(
        tmp_path / "dev.jsonl",
        [
            {
                "text": "李四在广州",
                "entities": [{"start": 0, "end": 2, "label": "PER"}, {"start": 3, "end": 5, "label": "LOC"}],
            },
        ],
    )
    return {"train": train, "dev": dev}


def _count(db, table: str, where: str = "") -> int:
    with open_db(db, read_only=True) as con:
        return con.execute(f"SELECT count(*) FROM {table} {where}").fetchone()[0]


# ------------------------------------------------------------------------------------------ schema


def test_schema_version_matches_migrations(tmp_path):
    assert SCHEMA_VERSION == MIGRATIONS[-1][0]
    check_migrations()
    db = tmp_path / "a.duckdb"
    with open_db(db) as con:
        rows = con.execute("SELECT version FROM schema_version ORDER BY version").fetchall()
    assert [r[0] for r in rows] == [m[0] for m in MIGRATIONS]
    with open_db(db) as con:  # reopening applies nothing twice
        assert migrate(con) == []
        assert con.execute("SELECT count(*) FROM schema_version").fetchone()[0] == len(MIGRATIONS)


def test_appended_migration_is_applied_once_and_failed_one_rolls_back(tmp_path):
    db = tmp_path / "m.duckdb"
    extra = MIGRATIONS + [(len(MIGRATIONS) + 1, "extra", "CREATE TABLE extra_t (x INTEGER);")]
    broken = extra + [(len(extra) + 1, "broken", "CREATE TABLE half_t (x INTEGER); SELECT * FROM nope_t;")]
    with open_db(db) as con:
        assert migrate(con, extra) == [len(extra)]
        with pytest.raises(Exception, match="nope_t"):
            migrate(con, broken)
        tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
        assert "extra_t" in tables and "half_t" not in tables
        assert con.execute("SELECT max(version) FROM schema_version").fetchone()[0] == len(extra)


def test_check_migrations_rejects_gaps():
    with pytest.raises(ValueError, match="expected version 2"):
        check_migrations([(1, "a", "SELECT 1"), (3, "b", "SELECT 1")])
    with pytest.raises(ValueError, match="SQL is empty"):
        check_migrations([(1, "a", "  ")])


def test_read_only_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        connect(tmp_path / "missing.duckdb", read_only=True)
    with pytest.raises(ValueError, match="wait_s"):
        connect(tmp_path / "x.duckdb", wait_s=-1)


# -------------------------------------------------------------------------------------------- lock


def _holder(db: Path, hold_s: float) -> subprocess.Popen:
    code = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(REPO)!r})
        from storage.db import connect
        con = connect({str(db)!r})
        print("ready", flush=True)
        time.sleep({hold_s})
        con.close()
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    return proc


def test_second_writer_gets_locked_error_naming_pid(tmp_path):
    db = tmp_path / "lock.duckdb"
    proc = _holder(db, 30)
    try:
        t0 = time.monotonic()
        with pytest.raises(DatabaseLockedError) as info:
            connect(db, wait_s=0.5)
        assert time.monotonic() - t0 >= 0.5
        assert f"PID {proc.pid}" in str(info.value)
        assert str(db) in str(info.value)
        assert info.value.pid == proc.pid and "python" in (info.value.command or "")
    finally:
        proc.kill()
        proc.wait()


def test_second_writer_waits_until_lock_released(tmp_path):
    db = tmp_path / "wait.duckdb"
    proc = _holder(db, 1.0)
    try:
        with open_db(db, wait_s=20) as con:
            assert con.execute("SELECT max(version) FROM schema_version").fetchone()[0] == SCHEMA_VERSION
    finally:
        proc.wait()


# ------------------------------------------------------------------------------------------ ingest


def test_ingest_round_trip(tmp_path, corpus):
    db = tmp_path / "d.duckdb"
    rep = ingest_dataset(db, "toy", corpus)
    assert rep.created and rep.version == 1
    assert rep.counts == {
        "train": {"documents": 3, "entities": 3, "characters": 16},
        "dev": {"documents": 1, "entities": 2, "characters": 5},
    }
    assert rep.labels == ["LOC", "PER"]
    docs = load_documents(db, "toy")
    assert [d.doc_id for d in docs] == ["train:1", "train:2", "train:3", "dev:1"]
    assert [(e.start, e.end, e.label) for e in docs[1].entities] == [(0, 2, "PER"), (4, 6, "LOC")]
    assert docs[0].split == "train" and docs[3].split == "dev" and docs[0].line == 1
    assert [d.doc_id for d in load_documents(db, "toy", "dev")] == ["dev:1"]
    assert dataset_labels(db, "toy") == ["LOC", "PER"]
    assert latest_version(db, "toy") == 1
    (row,) = list_datasets(db)
    assert row["name"] == "toy" and row["n_entities"] == 5 and row["splits"]["dev"]["documents"] == 1
    with open_db(db, read_only=True) as con:
        assert con.execute(
            "SELECT mention FROM v_gold_entities WHERE doc_id = 'dev:1' ORDER BY start"
        ).fetchall() == [("李四",), ("广州",)]
        counts = dict(
            con.execute("SELECT label, n_entities FROM v_label_counts WHERE split = 'train'").fetchall()
        )
        assert counts == {"LOC": 2, "PER": 1}
    assert "version 1: stored" in rep.to_text()


def test_unknown_dataset_split_version(tmp_path, corpus):
    db = tmp_path / "d.duckdb"
    ingest_dataset(db, "toy", corpus)
    with pytest.raises(ValueError, match="not found; known datasets: \\['toy'\\]"):
        load_documents(db, "nope")
    with pytest.raises(ValueError, match="no split 'test'"):
        load_documents(db, "toy", "test")
    with pytest.raises(ValueError, match="no version 7"):
        load_documents(db, "toy", version=7)
    with pytest.raises(ValueError, match="dataset name"):
        ingest_dataset(db, "bad name", corpus)


def test_reingest_is_idempotent_and_change_makes_new_version(tmp_path, corpus):
    db = tmp_path / "d.duckdb"
    first = ingest_dataset(db, "toy", corpus)
    again = ingest_dataset(db, "toy", {"train": str(corpus["train"]), "dev": corpus["dev"]})
    assert not again.created and again.version == 1 and again.counts == first.counts
    assert _count(db, "documents") == 4 and _count(db, "gold_entities") == 5 and _count(db, "datasets") == 1
    _jsonl(corpus["dev"], [{"text": "王五在深圳", "entities": [{"start": 0, "end": 2, "label": "PER"}]}])
    third = ingest_dataset(db, "toy", corpus)
    assert third.created and third.version == 2
    assert [d.text for d in load_documents(db, "toy", "dev")] == ["王五在深圳"]
    assert [d.text for d in load_documents(db, "toy", "dev", version=1)] == ["李四在广州"]
    assert _count(db, "documents") == 8


def test_failure_mid_ingest_leaves_previous_version_intact(tmp_path, corpus, monkeypatch):
    db = tmp_path / "d.duckdb"
    ingest_dataset(db, "toy", corpus)
    before = {
        t: _count(db, t)
        for t in ("datasets", "dataset_files", "documents", "gold_entities", "ingest_problems")
    }

    def boom(con, name, version, **_):
        raise RuntimeError("disk full (simulated)")

    steps = list(ds._WRITE_STEPS)
    monkeypatch.setattr(ds, "_WRITE_STEPS", steps[:4] + [boom] + steps[4:])  # after documents and entities
    _jsonl(corpus["dev"], [{"text": "王五在深圳", "entities": []}])
    with pytest.raises(RuntimeError, match="simulated"):
        ingest_dataset(db, "toy", corpus)
    after = {t: _count(db, t) for t in before}
    assert after == before
    assert latest_version(db, "toy") == 1
    assert [d.text for d in load_documents(db, "toy", "dev")] == ["李四在广州"]


def test_strict_policy_stores_nothing_on_errors(tmp_path):
    db = tmp_path / "d.duckdb"
    for fname in ("invalid_transition.conll", "length_mismatch.json", "span_overlap.jsonl"):
        with pytest.raises(IngestError) as info:
            ingest_dataset(db, "strict", {"train": BAD / fname}, policy="strict")
        assert info.value.report.version is None and info.value.report.n_errors >= 1
    assert _count(db, "datasets") == 0 and _count(db, "documents") == 0 and _count(db, "ingest_problems") == 0


def test_fatal_file_stores_nothing_even_in_repair(tmp_path, corpus):
    db = tmp_path / "d.duckdb"
    with pytest.raises(IngestError) as info:
        ingest_dataset(db, "fatal", {"train": corpus["train"], "dev": BAD / "invalid_json.json"})
    (p,) = [p for p in info.value.report.problems if p.code == "invalid_json"]
    assert p.line == 4 and "NOTHING STORED" in info.value.report.to_text()
    assert _count(db, "documents") == 0 and _count(db, "datasets") == 0


def test_repair_stores_problems_with_lines(tmp_path):
    db = tmp_path / "d.duckdb"
    rep = ingest_dataset(
        db, "rep", {"train": BAD / "invalid_transition.conll", "dev": BAD / "unknown_tag.conll"}
    )
    assert rep.created and rep.rejected == 1
    stored = {(p.code, p.severity, p.line) for p in load_problems(db, "rep")}
    assert ("invalid_transition", "warning", 5) in stored and ("unknown_tag", "error", 4) in stored
    assert [d.doc_id for d in load_documents(db, "rep", "dev")] == ["unknown_tag:1"]
    again = ingest_dataset(
        db, "rep", {"train": BAD / "invalid_transition.conll", "dev": BAD / "unknown_tag.conll"}
    )
    assert not again.created and {(p.code, p.severity, p.line) for p in again.problems} == stored
    assert again.rejected == 1


def test_split_ratios_seeded(tmp_path):
    rows = [{"text": f"文本{i}号", "entities": []} for i in range(100)]
    f = _jsonl(tmp_path / "all.jsonl", rows)
    db = tmp_path / "d.duckdb"
    rep = ingest_dataset(db, "r", [f], split_ratios=(0.8, 0.1, 0.1), seed=5)
    assert {k: v["documents"] for k, v in rep.counts.items()} == {"train": 80, "dev": 10, "test": 10}
    dev_a = [d.doc_id for d in load_documents(db, "r", "dev")]
    db2 = tmp_path / "e.duckdb"
    ingest_dataset(db2, "r", [f], split_ratios=(0.8, 0.1, 0.1), seed=5)
    assert [d.doc_id for d in load_documents(db2, "r", "dev")] == dev_a
    other = ingest_dataset(db2, "r", [f], split_ratios=(0.8, 0.1, 0.1), seed=6)
    assert other.version == 2 and [d.doc_id for d in load_documents(db2, "r", "dev")] != dev_a
    with pytest.raises(ValueError, match="split_ratios"):
        ingest_dataset(db, "r", [f], split_ratios=(0.5, 0.6))


def test_list_of_files_split_from_names_and_leak_warning(tmp_path):
    a = _jsonl(
        tmp_path / "train.jsonl", [{"text": "同一句", "entities": []}, {"text": "别的", "entities": []}]
    )
    b = _jsonl(tmp_path / "test.jsonl", [{"text": "同一句", "entities": []}])
    db = tmp_path / "d.duckdb"
    rep = ingest_dataset(db, "leak", [a, b])
    assert set(rep.counts) == {"train", "test"}
    (leak,) = [p for p in rep.problems if p.code == "duplicate_across_splits"]
    assert leak.file == str(b) and leak.line == 1 and "train:1" in leak.message
    with pytest.raises(ValueError, match="cannot tell the split"):
        ingest_dataset(db, "x", [_jsonl(tmp_path / "misc.jsonl", [{"text": "a"}])])


def test_ingest_waits_for_lock_then_fails(tmp_path, corpus):
    db = tmp_path / "d.duckdb"
    proc = _holder(db, 30)
    try:
        with pytest.raises(DatabaseLockedError, match=f"PID {proc.pid}"):
            with open_db(db, wait_s=0.3):
                pass
    finally:
        proc.kill()
        proc.wait()
    assert ingest_dataset(db, "toy", corpus).created


def test_store_plan_persists_a_plan_once(tmp_path, corpus):
    """storage only persists what ner_core.ingest planned; a plan stored meanwhile by another process
    (same fingerprint) is reported unchanged instead of stored twice."""
    db = tmp_path / "d.duckdb"
    plan = plan_ingest(prepare_ingest("toy", corpus))
    first = store_plan(db, plan)
    assert first.created and first.version == 1 and first.counts == plan.counts
    docs = load_documents(db, "toy")
    assert [(d.doc_id, d.text, [(e.start, e.end, e.label) for e in d.entities]) for d in docs] == [
        (r[0], r[1], r[2]) for r in plan.rows
    ]
    again = store_plan(db, plan)
    assert not again.created and again.version == 1 and _count(db, "datasets") == 1
    assert not ingest_dataset(db, "toy", corpus).created
