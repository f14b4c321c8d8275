"""DuckDB layer: migrations, the writer lock with a real second process, the read-only query guard, the
dashboard's reads (also on a database written by the code at commit 3cc253c), atomic and idempotent
ingest."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import duckdb
import pytest

from ner_core.data.ingest import IngestError, plan_ingest, prepare_ingest
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
from storage.db import DatabaseLockedError, connect, current_version, migrate, open_db, row_counts
from storage.evaluations import (
    evaluation_errors_frame,
    evaluation_report,
    evaluation_types_frame,
    evaluations_frame,
    save_evaluation,
)
from storage.predictions import (
    entity_search_frame,
    label_counts_frame,
    predicted_docs_frame,
    predicted_document,
    prediction_runs_frame,
    top_entities_frame,
)
from storage.query import BATCH, INTERACTIVE, SqlRejected, check_sql, entity_labels, query, relations_frame
from storage.runs import epochs_frame, models_frame, runs_frame
from storage.schema import MIGRATIONS, SCHEMA_VERSION, check_migrations
from storage.sql_sandbox import configure

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


# --------------------------------------------------------------------------------------- SQL guard
@pytest.mark.parametrize(
    "sql",
    [
        "SELECT 1",
        "select * from v_run_summary;",
        "WITH a AS (SELECT 1 AS x) SELECT x FROM a",
        "SHOW TABLES",
        "DESCRIBE runs",
        "-- note\nSELECT label FROM evaluation_types",
        "SELECT 'a/b' AS path_like_but_relative",
    ],
)
def test_check_sql_accepts_single_read_only_queries(sql):
    assert check_sql(sql) == sql.strip().rstrip(";").strip()


@pytest.mark.parametrize(
    "sql, why",
    [
        ("INSERT INTO runs (run_id) VALUES ('x')", "INSERT statements are not allowed"),
        ("DROP TABLE runs", "DROP statements are not allowed"),
        ("UPDATE runs SET status = 'x'", "UPDATE statements are not allowed"),
        ("SET enable_external_access = true", "SET statements are not allowed"),
        ("ATTACH 'other.duckdb' AS o", "ATTACH statements are not allowed"),
        ("COPY runs TO 'out.csv'", "COPY statements are not allowed"),
        ("SELECT 1; DROP TABLE runs", "expected one statement, got 2"),
        ("SELECT * FROM read_csv('/etc/passwd')", "read_csv(...) reads or writes files"),
        ("SELECT * FROM READ_PARQUET ('x.parquet')", "read_parquet(...) reads or writes files"),
        ("SELECT * FROM glob('*')", "glob(...) reads or writes files"),
        ("SELECT * FROM '/etc/passwd'", "names a file path or URL (/etc/passwd)"),
        ("SELECT * FROM 'https://example.com/x.csv'", "names a file path or URL"),
        ("SELECT * FROM 'secret.csv'", "names a file path or URL (secret.csv)"),
        ("   ", "the query is empty"),
        ("SELEC 1", "does not parse"),
    ],
)
def test_check_sql_rejects_writes_files_and_several_statements(sql, why):
    with pytest.raises(SqlRejected, match=re.escape(why)):
        check_sql(sql)


def test_query_limits_rows_and_blocks_file_access_inside_duckdb(tmp_path, monkeypatch):
    db = tmp_path / "fresh.duckdb"
    connect(db).close()  # the schema, no rows
    res = query(db, "SELECT * FROM range(10) t(i)", limit=3)
    assert [r["i"] for r in res] == [0, 1, 2] and res.columns == ["i"] and res.truncated
    res = query(db, "SELECT * FROM range(3) t(i)", limit=3)
    assert len(res) == 3 and not res.truncated
    assert len(query(db, "SELECT * FROM range(10) t(i) WHERE i >= ?", [4])) == 6  # no limit, parameters
    # past the checks (as if one missed a file name), the configured connection itself refuses to read it
    (tmp_path / "secret.csv").write_text("a,b\n1,2\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SqlRejected, match=re.escape("names a file path or URL (secret.csv)")):
        query(db, "SELECT * FROM 'secret.csv'", limit=5)
    for profile in (INTERACTIVE, BATCH):
        with open_db(db, read_only=True) as con:
            configure(con, profile, tmp_path / "spill")  # DuckDB allows its spill folder; not this one
            with pytest.raises(duckdb.PermissionException, match="disabled by configuration"):
                con.execute("SELECT * FROM 'secret.csv'").fetchall()
            with pytest.raises(duckdb.InvalidInputException, match="configuration has been locked"):
                con.execute("SET enable_external_access = true")
    with pytest.raises(ValueError, match="expected limit as an int >= 1 or None, got 0"):
        query(db, "SELECT 1", limit=0)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        query(tmp_path / "missing.duckdb", "SELECT 1")


# ------------------------------------------------------------------------------- dashboard reads
# of a predicted document's entities
ENTITY_COLUMNS = ["start", "end", "label", "text", "confidence", "confidence_calibrated"]


def _fill_reads_db(db: Path) -> None:
    """Two runs (one evaluated on dev and test, one failed), one prediction run over two documents."""
    with open_db(db) as con:
        con.execute(
            """
            INSERT INTO runs (run_id, dataset, encoder, head, scheme, config, status, run_dir, model_dir,
                              started_at, best_epoch, best_dev_f1, stopped_reason, is_production) VALUES
            ('r1', 'toy', 'enc', 'bilstm', 'BIOES', '{"a": 1}', 'completed', 'd1', 'd1/model',
             TIMESTAMP '2026-01-01 10:00:00', 2, 0.5, 'finished 2 epochs', true),
            ('r2', 'toy', 'enc', 'bigru', 'BIO', '{"a": 2}', 'failed', 'd2', NULL,
             TIMESTAMP '2026-01-02 10:00:00', NULL, NULL, NULL, false);
            INSERT INTO epochs (run_id, epoch, train_loss, dev_f1) VALUES
                ('r1', 2, 0.5, 0.5), ('r1', 1, 0.9, 0.2), ('r2', 1, 1.0, 0.0);
            INSERT INTO evaluations (eval_id, run_id, model_dir, dataset, split, created_at, f1, "precision",
                                     report) VALUES
                ('r1-test', 'r1', 'd1/model', 'toy', 'test', TIMESTAMP '2026-01-01 11:00:00', 0.4, 0.3,
                 '{"error_sentences": [{"doc_id": "x"}]}'),
                ('r1-dev', 'r1', 'd1/model', 'toy', 'dev', TIMESTAMP '2026-01-01 12:00:00', 0.6, 0.7, NULL);
            INSERT INTO evaluation_types VALUES ('r1-test', 'PER', 0.3, 0.5, 0.4, 2, 3),
                                                ('r1-test', 'LOC', 1.0, 1.0, 1.0, 1, 1);
            INSERT INTO evaluation_errors VALUES ('r1-test', 'PER', 'missed', 1),
                                                 ('r1-test', 'PER', 'type', 2);
            INSERT INTO prediction_runs (pred_run_id, model_dir, run_id, input_kind, input_ref, status,
                                         started_at, n_documents, n_entities) VALUES
                ('p1', 'd1/model', 'r1', 'texts', 'two', 'completed', TIMESTAMP '2026-01-03 10:00:00', 2, 3);
            INSERT INTO predicted_documents (pred_run_id, doc_id, text, n_entities) VALUES
                ('p1', 'd1', '张三在北京见了李四', 3), ('p1', 'd2', '没有实体', 0);
            INSERT INTO predicted_entities (pred_run_id, doc_id, "start", "end", label, text, confidence)
            VALUES ('p1', 'd1', 7, 9, 'PER', '李四', 0.8),
                ('p1', 'd1', 0, 2, 'PER', '张三', 0.91234), ('p1', 'd1', 3, 5, 'LOC', '北京', 0.7);
            """
        )


def test_dashboard_reads_of_runs_and_evaluations(tmp_path):
    db = tmp_path / "reads.duckdb"
    _fill_reads_db(db)
    runs = runs_frame(db, wait_s=0)
    assert runs["run_id"].tolist() == ["r2", "r1"]  # newest first
    r1 = runs.set_index("run_id").loc["r1"]
    assert (r1["n_epochs"], r1["test_f1"], r1["test_precision"]) == (2, 0.4, 0.3)  # the test split wins
    assert r1["config"] == '{"a": 1}' and r1["stopped_reason"] == "finished 2 epochs" and r1["is_production"]
    assert runs.set_index("run_id")["test_f1"].isna().loc["r2"]
    ep = epochs_frame(db, ("r1",), wait_s=0)
    assert list(zip(ep["run_id"], ep["epoch"], ep["train_loss"], strict=True)) == [
        ("r1", 1, 0.9),
        ("r1", 2, 0.5),
    ]
    none = epochs_frame(db, (), wait_s=0)
    assert none.empty and {"run_id", "epoch", "dev_f1", "is_best"} <= set(none.columns)
    assert models_frame(db, wait_s=0)["run_id"].tolist() == ["r1"]  # completed with a model only
    ev = evaluations_frame(db, wait_s=0)
    assert ev["eval_id"].tolist() == ["r1-dev", "r1-test"] and "report" not in ev.columns
    assert evaluation_report(db, "r1-test", wait_s=0) == {"error_sentences": [{"doc_id": "x"}]}
    assert evaluation_report(db, "r1-dev", wait_s=0) == {}
    with pytest.raises(KeyError, match="no evaluation 'nope'"):
        evaluation_report(db, "nope", wait_s=0)
    types = evaluation_types_frame(db, "r1-test", wait_s=0)
    assert list(zip(types["label"], types["support"], types["predicted"], strict=True)) == [
        ("LOC", 1, 1),
        ("PER", 2, 3),
    ]
    errs = evaluation_errors_frame(db, "r1-test", wait_s=0)
    assert sorted(zip(errs["label"], errs["kind"], errs["n"], strict=True)) == [
        ("PER", "missed", 1),
        ("PER", "type", 2),
    ]
    assert list(evaluation_types_frame(db, "nope", wait_s=0).columns)[:2] == ["label", "precision"]


def test_dashboard_reads_of_predictions_labels_and_catalogue(tmp_path):
    db = tmp_path / "reads.duckdb"
    _fill_reads_db(db)
    pr = prediction_runs_frame(db, wait_s=0)
    assert pr["pred_run_id"].tolist() == ["p1"] and pr.loc[0, "n_entities"] == 3
    counts = label_counts_frame(db, "p1", wait_s=0)
    assert counts[["label", "n_entities", "n_distinct"]].values.tolist() == [["PER", 2, 2], ["LOC", 1, 1]]
    top = top_entities_frame(db, "p1", "PER", 1, wait_s=0)
    assert top[["label", "text", "n"]].values.tolist() == [["PER", "张三", 1]]
    assert top_entities_frame(db, "p1", None, 50, wait_s=0)["mean_confidence"].tolist() == [0.7, 0.912, 0.8]
    hits = entity_search_frame(db, "p1", "北京", (), 200, wait_s=0)  # in the mention or its context
    assert hits["text"].tolist() == ["张三", "北京", "李四"]
    assert entity_search_frame(db, "p1", "", ("LOC",), 200, wait_s=0)["text"].tolist() == ["北京"]
    assert entity_search_frame(db, "p1", "", (), 1, wait_s=0)["start"].tolist() == [0]
    hit = entity_search_frame(db, "p1", "李四", (), 200, wait_s=0).iloc[-1]
    assert (hit["left_context"], hit["right_context"], hit["confidence"]) == ("张三在北京见了", "", 0.8)
    docs = predicted_docs_frame(db, "p1", "", (), 500, wait_s=0)
    assert docs[["doc_id", "n_entities", "n_chars"]].values.tolist() == [["d1", 3, 9], ["d2", 0, 4]]
    assert predicted_docs_frame(db, "p1", "", ("LOC",), 500, wait_s=0)["doc_id"].tolist() == ["d1"]
    text, ents = predicted_document(db, "p1", "d1", wait_s=0)
    assert text == "张三在北京见了李四" and list(ents.columns) == ENTITY_COLUMNS
    spans = list(zip(ents["start"], ents["end"], ents["label"], strict=True))
    assert spans == [(0, 2, "PER"), (3, 5, "LOC"), (7, 9, "PER")]  # by start, from document_entities()
    assert predicted_document(db, "p1", "d2", wait_s=0)[1].empty
    with pytest.raises(KeyError, match="no document 'd3' in prediction run 'p1'"):
        predicted_document(db, "p1", "d3", wait_s=0)
    for bad in (
        lambda: top_entities_frame(db, "p1", None, 0),
        lambda: entity_search_frame(db, "p1", limit=0),
    ):
        with pytest.raises(ValueError, match="expected limit >= 1, got 0"):
            bad()
    assert entity_labels(db, wait_s=0) == ("LOC", "PER")
    rel = relations_frame(db, wait_s=0).set_index("name")
    assert rel.loc["runs", "kind"] == "table" and rel.loc["v_prediction_runs", "kind"] == "view"
    assert rel.loc["epochs", "columns"].startswith("run_id, epoch, train_loss")
    assert row_counts(db, ["runs", "epochs", "no_such_table"], wait_s=0) == {"runs": 2, "epochs": 3}


def test_saved_evaluation_reads_back_and_saving_again_replaces_it(tmp_path):
    from ner_core.documents import Document, Entity
    from ner_core.metrics import evaluate

    db = tmp_path / "eval.duckdb"
    gold = [
        Document(
            doc_id="a",
            text="张三在北京",
            entities=[Entity(start=0, end=2, label="PER"), Entity(start=3, end=5, label="LOC")],
        )
    ]
    report = evaluate(gold, [[Entity(start=0, end=2, label="PER"), Entity(start=2, end=3, label="ORG")]])
    for _ in range(2):  # the second save replaces the first
        save_evaluation(db, "e1", report, model_dir=tmp_path / "m", dataset="toy", split="test", run_id="r1")
    (row,) = evaluations_frame(db, wait_s=0).to_dict("records")
    assert row["run_id"] == "r1" and row["model_dir"] == str(tmp_path / "m") and row["split"] == "test"
    figures = ("scheme", "n_sentences", "n_chars", "char_accuracy", "precision", "recall", "f1", "macro_f1")
    assert {k: row[k] for k in figures} == {k: getattr(report, k) for k in figures}
    assert evaluation_report(db, "e1", wait_s=0) == report.model_dump(mode="json")
    types = evaluation_types_frame(db, "e1", wait_s=0)
    assert types[["label", "support", "predicted"]].values.tolist() == [
        ["LOC", 1, 0],
        ["ORG", 0, 1],
        ["PER", 1, 1],
    ]
    errs = evaluation_errors_frame(db, "e1", wait_s=0)
    stored = {(r.label, r.kind): r.n for r in errs.itertuples()}
    assert stored == {(lb, k): n for lb, kinds in report.errors.items() for k, n in kinds.items()}
    assert stored[("LOC", "missed")] == 1 and stored[("ORG", "spurious")] == 1


# --------------------------------------------------------------------------- the legacy database
LEGACY_RUN = "20261201-152337-sample-bilstm-56603a"  # completed, promoted, evaluated, predicted
LEGACY_FAILED = "20261201-152339-sample-bilstm-7b9f2c"  # interrupted after epoch 1 of 4
LEGACY_PRED = "pred-bf1bc1119c2a"  # the completed run on two raw texts: 21 entities
LEGACY_LABELS = ["FIN", "LOC", "ORG", "PER"]


def test_legacy_database_opens_and_the_dashboard_reads_return_its_rows(legacy_db):
    """A DuckDB file written by the code at commit 3cc253c (tests/fixtures/legacy-3cc253c): today's storage
    opens it as a writer (pending migrations would apply) and the dashboard's reads see its rows."""
    with open_db(legacy_db) as con:
        assert current_version(con) == SCHEMA_VERSION
    with duckdb.connect(legacy_db, read_only=True) as con:  # what the file holds, read without storage
        stored_runs = con.execute(
            "SELECT run_id, status, best_dev_f1 FROM runs ORDER BY started_at DESC"
        ).fetchall()
        stored_eval = con.execute(
            'SELECT eval_id, f1, "precision", char_accuracy FROM evaluations'
        ).fetchall()
        doc_text = con.execute(
            "SELECT text FROM predicted_documents WHERE doc_id = '01_finance_news'"
        ).fetchone()[0]
        doc_ents = con.execute(
            'SELECT "start", "end", label, text FROM predicted_entities '
            "WHERE doc_id = '01_finance_news' ORDER BY \"start\""
        ).fetchall()
    runs = runs_frame(legacy_db, wait_s=0)
    listed = [(r.run_id, r.status) for r in runs.itertuples()]
    assert listed == [r[:2] for r in stored_runs] == [(LEGACY_FAILED, "failed"), (LEGACY_RUN, "completed")]
    done = runs.set_index("run_id").loc[LEGACY_RUN]
    assert done["is_production"] and done["n_epochs"] == 4
    # stored relative by that code; read back absolute, against the database's folder
    assert done["model_dir"] == str(Path(legacy_db).resolve().parent / "runs" / LEGACY_RUN / "model")
    assert (done["best_dev_f1"], done["test_f1"]) == (stored_runs[1][2], stored_eval[0][1])
    epochs = epochs_frame(legacy_db, (LEGACY_RUN, LEGACY_FAILED), wait_s=0)
    assert epochs[["run_id", "epoch"]].values.tolist() == [
        [LEGACY_RUN, 1],
        [LEGACY_RUN, 2],
        [LEGACY_RUN, 3],
        [LEGACY_RUN, 4],
        [LEGACY_FAILED, 1],
    ]
    assert models_frame(legacy_db, wait_s=0)["run_id"].tolist() == [LEGACY_RUN]
    ev = evaluations_frame(legacy_db, wait_s=0)
    assert [tuple(r) for r in ev[["eval_id", "f1", "precision", "char_accuracy"]].values] == stored_eval
    (eval_id,) = ev["eval_id"]
    assert eval_id == f"{LEGACY_RUN}-sample-v1-test" and ev.loc[0, "n_sentences"] == 80
    report = evaluation_report(legacy_db, eval_id, wait_s=0)
    assert report["n_sentences"] == 80 and [t["label"] for t in report["per_type"]] == LEGACY_LABELS
    types = evaluation_types_frame(legacy_db, eval_id, wait_s=0)
    assert list(zip(types["label"], types["support"], strict=True)) == [
        ("FIN", 49),
        ("LOC", 73),
        ("ORG", 87),
        ("PER", 43),
    ]
    n_errors = sum(n for kinds in report["errors"].values() for n in kinds.values())
    assert evaluation_errors_frame(legacy_db, eval_id, wait_s=0)["n"].sum() == n_errors == 81
    pr = prediction_runs_frame(legacy_db, wait_s=0)
    assert pr[["pred_run_id", "run_id", "status", "n_documents"]].values.tolist() == [
        [LEGACY_PRED, LEGACY_RUN, "completed", 2]
    ]
    docs = predicted_docs_frame(legacy_db, LEGACY_PRED, "", (), 500, wait_s=0)
    assert docs["doc_id"].tolist() == ["01_finance_news", "02_general_news"]
    text, ents = predicted_document(legacy_db, LEGACY_PRED, "01_finance_news", wait_s=0)
    assert text == doc_text and text.startswith("凌云科技有限公司 CEO 程亦凡")
    assert list(ents.columns) == ENTITY_COLUMNS and len(doc_ents) == 13
    assert [tuple(r) for r in ents[["start", "end", "label", "text"]].values] == doc_ents
    assert entity_labels(legacy_db, wait_s=0) == tuple(LEGACY_LABELS)


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
    """storage only persists what ner_core.data.ingest planned; a plan stored meanwhile by another process
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
