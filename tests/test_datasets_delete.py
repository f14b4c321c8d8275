"""`ner datasets delete`: a dataset (or one version) and everything made from it go, in one transaction,
leaving no row that points at a deleted parent; the trained models that saw the data are named."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pytest

from ner_core.inference.tagger import PredictedEntity
from storage.datasets import ingest_dataset, list_datasets
from storage.db import connect, open_db
from storage.deletion import delete_dataset, plan_deletion
from storage.predictions import PredictionRunWriter

# the review tables (migration 4 creates them; IF NOT EXISTS keeps the test valid either way)
REVIEW_TABLES = """
CREATE TABLE IF NOT EXISTS review_events (event_id VARCHAR PRIMARY KEY, pred_run_id VARCHAR, doc_id VARCHAR,
    doc_hash VARCHAR, reviewer VARCHAR NOT NULL, action VARCHAR NOT NULL, created_at TIMESTAMP);
CREATE TABLE IF NOT EXISTS review_exports (dataset VARCHAR, version INTEGER, event_id VARCHAR);
"""


def _jsonl(path: Path, texts: list[str]) -> Path:
    rows = [{"text": t, "entities": [{"start": 0, "end": 2, "label": "PER"}]} for t in texts]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def _predict(db: Path, pred_run_id: str, kind: str, ref: str, docs: list[tuple[str, str]]) -> None:
    with PredictionRunWriter(
        db, pred_run_id, model_dir="m", run_id="r1", input_kind=kind, input_ref=ref, replace=True
    ) as run:
        run.write([(d, t, [PredictedEntity(0, 2, "PER", t[:2], 0.9)]) for d, t in docs])


def _docs(db: Path, name: str, version: int) -> list[tuple[str, str]]:
    with open_db(db, read_only=True) as con:
        return con.execute(
            "SELECT doc_id, text FROM documents WHERE dataset = ? AND version = ? ORDER BY ord",
            [name, version],
        ).fetchall()


@pytest.fixture
def filled(tmp_path) -> Path:
    """people v1 (3 docs), people v2 (v1's first doc + a new one), other v1; predictions from each kind of
    input; a training run on people v1; an evaluation on people v1; review events and an export."""
    db = tmp_path / "d.duckdb"
    ingest_dataset(
        db, "people", {"train": _jsonl(tmp_path / "a.jsonl", ["张三在北京", "李四去上海", "王五来了"])}
    )
    (tmp_path / "v2").mkdir()  # same file name: the shared first document keeps its id in v2
    ingest_dataset(db, "people", {"train": _jsonl(tmp_path / "v2" / "a.jsonl", ["张三在北京", "赵六在广州"])})
    ingest_dataset(db, "other", {"train": _jsonl(tmp_path / "c.jsonl", ["孙七在深圳"])})
    v1, v2, other = _docs(db, "people", 1), _docs(db, "people", 2), _docs(db, "other", 1)
    _predict(db, "pred-ds1", "dataset", "people/*", v1)  # a dataset run while v1 was the latest
    _predict(db, "pred-ds2", "dataset", "people/train", v2)
    _predict(db, "pred-sql", "sql", "SELECT doc_id, text FROM documents", v1 + other)
    _predict(db, "pred-other", "dataset", "other/*", other)
    with open_db(db) as con:
        con.execute(REVIEW_TABLES)
        con.execute(
            "INSERT INTO review_events (event_id, pred_run_id, doc_id, doc_hash, reviewer, action, "
            "created_at) VALUES (?, 'pred-ds1', ?, 'h', 'ann', 'accept', now()), "
            "(?, 'pred-other', ?, 'h', 'ann', 'accept', now())",
            ["e1", v1[1][0], "e2", other[0][0]],
        )
        con.execute("INSERT INTO review_exports VALUES ('people', 2, 'e1'), ('other', 1, 'e2')")
        con.execute(
            "INSERT INTO runs (run_id, dataset, dataset_version, encoder, head, scheme, config, status, "
            "run_dir, model_dir, started_at) VALUES ('r1', 'people', 1, 'tiny', 'bilstm', 'BIO', '{}', "
            "'completed', 'runs/r1', 'runs/r1/model', now()), ('r2', 'other', 1, 'tiny', 'bilstm', 'BIO', "
            "'{}', 'completed', 'runs/r2', 'runs/r2/model', now())"
        )
        for eid, ds in (("ev1", "people"), ("ev2", "other")):
            con.execute(
                "INSERT INTO evaluations (eval_id, model_dir, dataset, dataset_version, created_at) "
                "VALUES (?, 'm', ?, 1, now())",
                [eid, ds],
            )
            con.execute("INSERT INTO evaluation_types (eval_id, label) VALUES (?, 'PER')", [eid])
            con.execute("INSERT INTO evaluation_errors VALUES (?, 'PER', 'missed', 1)", [eid])
    return db


def _orphans(db: Path) -> dict[str, int]:
    """Rows of every base table keyed by a dataset version, an evaluation, a prediction run or a review
    event whose parent row is gone (the trained runs are kept on purpose and not counted)."""
    out = {}
    with open_db(db, read_only=True) as con:
        cols: dict[str, set[str]] = {}
        for t, c in con.execute(
            "SELECT table_name, column_name FROM information_schema.columns JOIN information_schema.tables "
            "USING (table_schema, table_name) WHERE table_schema = 'main' AND table_type = 'BASE TABLE'"
        ).fetchall():
            cols.setdefault(t, set()).add(c)
        for t, have in cols.items():
            checks = []
            if {"dataset", "version"} <= have:
                checks.append(
                    "NOT EXISTS (SELECT 1 FROM datasets p WHERE p.name = x.dataset AND p.version = x.version)"
                )
            if {"dataset", "dataset_version"} <= have and t != "runs":
                checks.append(
                    "NOT EXISTS (SELECT 1 FROM datasets p WHERE p.name = x.dataset "
                    "AND p.version = x.dataset_version)"
                )
            if "eval_id" in have and t != "evaluations":
                checks.append("NOT EXISTS (SELECT 1 FROM evaluations p WHERE p.eval_id = x.eval_id)")
            if "pred_run_id" in have and t != "prediction_runs":
                checks.append(
                    "NOT EXISTS (SELECT 1 FROM prediction_runs p WHERE p.pred_run_id = x.pred_run_id)"
                )
            if {"pred_run_id", "doc_id"} <= have and t != "predicted_documents":
                checks.append(
                    "NOT EXISTS (SELECT 1 FROM predicted_documents p WHERE p.pred_run_id = x.pred_run_id "
                    "AND p.doc_id = x.doc_id)"
                )
            if {"dataset", "version", "doc_id"} <= have and t != "documents":
                checks.append(
                    "NOT EXISTS (SELECT 1 FROM documents p WHERE p.dataset = x.dataset "
                    "AND p.version = x.version AND p.doc_id = x.doc_id)"
                )
            if "event_id" in have and t != "review_events":
                checks.append("NOT EXISTS (SELECT 1 FROM review_events p WHERE p.event_id = x.event_id)")
            if checks:
                n = con.execute(f"SELECT count(*) FROM {t} x WHERE {' OR '.join(checks)}").fetchone()[0]
                out[t] = n
    return out


def _count(db: Path, sql: str, params=()) -> int:
    with open_db(db, read_only=True) as con:
        return con.execute(sql, list(params)).fetchone()[0]


def test_deleting_a_whole_dataset_removes_what_was_made_from_it_and_leaves_no_orphans(filled):
    db = filled
    before = _orphans(db)
    assert before and not any(before.values())  # the fixture itself is consistent
    plan = plan_deletion(db, "people")
    assert not plan.done and plan.versions == [1, 2] and plan.rows["documents"] == 5
    assert [m["run_id"] for m in plan.models] == ["r1"]
    assert (
        _count(db, "SELECT count(*) FROM documents WHERE dataset = 'people'") == 5
    )  # the plan wrote nothing

    done = delete_dataset(db, "people")
    assert done.done and done.rows == plan.rows
    assert done.prediction_runs_removed == ["pred-ds1", "pred-ds2"]
    assert done.prediction_runs_trimmed == {"pred-sql": 3}  # its copy of people's texts; other's doc stays
    assert not any(_orphans(db).values()), _orphans(db)
    for table, col in (("documents", "dataset"), ("gold_entities", "dataset"), ("ingest_problems", "dataset"),
                       ("dataset_files", "dataset"), ("evaluations", "dataset"), ("datasets", "name"),
                       ("review_exports", "dataset")):  # fmt: skip
        assert _count(db, f"SELECT count(*) FROM {table} WHERE {col} = 'people'") == 0, table
    assert [d["name"] for d in list_datasets(db)] == ["other"]
    # what belongs to the other dataset is untouched; the sql run keeps other's document, recounted
    assert _count(db, "SELECT count(*) FROM predicted_documents WHERE pred_run_id = 'pred-other'") == 1
    assert _count(db, "SELECT count(*) FROM review_events") == 1
    assert _count(db, "SELECT count(*) FROM review_exports") == 1
    assert _count(db, "SELECT count(*) FROM evaluation_types") == 1
    row = _count(
        db, "SELECT n_documents * 100 + n_entities FROM prediction_runs WHERE pred_run_id = 'pred-sql'"
    )
    assert row == 101
    # the trained models are kept, and named
    assert _count(db, "SELECT count(*) FROM runs") == 2
    text = "\n".join(done.summary())
    assert "run r1 (completed, dataset version 1): runs/r1/model" in text and "NOT deleted" in text


def test_deleting_one_version_keeps_what_another_version_still_holds(filled):
    db = filled
    shared_id = _docs(db, "people", 1)[0][0]  # 张三在北京 is in v1 and v2 under the same id
    done = delete_dataset(db, "people", version=1)
    assert done.versions == [1] and [m["run_id"] for m in done.models] == ["r1"]
    assert not any(_orphans(db).values()), _orphans(db)
    assert [(d["name"], d["version"]) for d in list_datasets(db)] == [("other", 1), ("people", 2)]
    # pred-ds1 tagged v1: the two documents only v1 had go, the shared one stays (v2 still holds it)
    kept = _count(db, "SELECT string_agg(doc_id) FROM predicted_documents WHERE pred_run_id = 'pred-ds1'")
    assert kept == shared_id and done.prediction_runs_trimmed == {"pred-ds1": 2, "pred-sql": 2}
    assert _count(db, "SELECT count(*) FROM predicted_documents WHERE pred_run_id = 'pred-ds2'") == 2
    assert _count(db, "SELECT count(*) FROM review_events WHERE event_id = 'e1'") == 0  # on a deleted doc
    assert _count(db, "SELECT count(*) FROM review_exports WHERE event_id = 'e1'") == 0
    assert _count(db, "SELECT count(*) FROM evaluations WHERE dataset = 'people'") == 0


def test_deletion_works_without_the_review_tables_and_is_one_transaction(tmp_path, monkeypatch):
    db = tmp_path / "d.duckdb"
    ingest_dataset(db, "people", {"train": _jsonl(tmp_path / "a.jsonl", ["张三在北京", "李四去上海"])})
    _predict(db, "pred-ds", "dataset", "people/*", _docs(db, "people", 1))
    with open_db(db, read_only=True) as con:
        tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    if "review_events" in tables:
        pytest.skip("this schema already has the review tables")
    # a failure half-way rolls everything back
    import storage.deletion as deletion

    broken = deletion._DELETES + (("no_such_table_x", "{t}.x = $name"),)
    monkeypatch.setattr(deletion, "_DELETES", broken)
    monkeypatch.setattr(deletion, "_tables", lambda con: {t for t, _ in broken})
    with pytest.raises(duckdb.Error):
        delete_dataset(db, "people")
    assert _count(db, "SELECT count(*) FROM documents") == 2
    assert _count(db, "SELECT count(*) FROM predicted_documents") == 2
    monkeypatch.undo()
    done = delete_dataset(db, "people")
    assert done.rows["documents"] == 2 and "review_events" not in done.rows
    assert _count(db, "SELECT count(*) FROM prediction_runs") == 0
    assert not any(_orphans(db).values())


def test_unknown_dataset_or_version_is_one_clear_line(filled):
    with pytest.raises(
        ValueError, match=r"dataset 'nobody' not found; known datasets: \['other', 'people'\]"
    ):
        plan_deletion(filled, "nobody")
    with pytest.raises(ValueError, match=r"dataset 'people' has no version 7; versions: \[1, 2\]"):
        delete_dataset(filled, "people", version=7)


def test_the_deleted_text_is_gone_from_the_file(tmp_path):
    db = tmp_path / "d.duckdb"
    secret = "机密简历" + "甲乙丙丁" * 64  # long and unique enough to find its bytes in the file
    ingest_dataset(db, "cv", {"train": _jsonl(tmp_path / "cv.jsonl", [secret])})
    ingest_dataset(db, "keep", {"train": _jsonl(tmp_path / "k.jsonl", ["张三在北京"])})
    connect(db).close()
    needle = "甲乙丙丁甲乙丙丁".encode()
    assert needle in db.read_bytes()
    delete_dataset(db, "cv")
    assert needle not in db.read_bytes()


# ------------------------------------------------------------------------------------- the command
def _ner(argv: list[str], capsys, monkeypatch, answer: str | None = None) -> tuple[int, str, str]:
    from app import cli

    def reply(_prompt: str) -> str:
        if answer is None:
            raise EOFError  # no terminal
        return answer

    monkeypatch.setattr("builtins.input", reply)
    try:
        rc = cli.main(argv)
    except SystemExit as exc:
        rc = exc.code
    out, err = capsys.readouterr()
    return rc, out, err


def test_ner_datasets_delete_asks_first_and_names_the_models(filled, capsys, monkeypatch):
    db = str(filled)
    rc, out, err = _ner(["datasets", "delete", "people", "--db", db], capsys, monkeypatch)  # no answer
    assert rc == 1 and "nothing deleted" in err and "documents: 5" in out
    assert "run r1 (completed, dataset version 1): runs/r1/model" in out
    rc, out, err = _ner(["datasets", "delete", "people", "--db", db], capsys, monkeypatch, answer="n")
    assert rc == 1 and _count(filled, "SELECT count(*) FROM documents WHERE dataset = 'people'") == 5
    argv = ["datasets", "delete", "people", "--version", "2", "--db", db]
    rc, out, err = _ner(argv, capsys, monkeypatch, answer="yes")
    assert rc == 0 and "version 2: rows deleted" in out and "was rewritten" in out
    assert [(d["name"], d["version"]) for d in list_datasets(filled)] == [("other", 1), ("people", 1)]
    rc, out, err = _ner(["datasets", "delete", "people", "--yes", "--db", db], capsys, monkeypatch)
    assert rc == 0 and "NOT deleted" in out
    rc, out, err = _ner(["datasets", "list", "--db", db], capsys, monkeypatch)
    assert rc == 0 and "other" in out and "people" not in out
    rc, out, err = _ner(["datasets", "delete", "people", "--yes", "--db", db], capsys, monkeypatch)
    assert rc == 2 and err.startswith("ner datasets: error: dataset 'people' not found")
    assert "Traceback" not in err
