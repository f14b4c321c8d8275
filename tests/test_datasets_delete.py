"""`ner datasets delete`: a dataset (or one version) and everything made from it go, in one transaction,
leaving no row that points at a deleted parent; the trained models that saw the data are named."""

from __future__ import annotations

import functools
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
            con.execute("INSERT INTO evaluation_reliability VALUES (?, 'raw', 9, 0.9, 1, 1, 0.95, 1)", [eid])
            con.execute("INSERT INTO evaluation_thresholds VALUES (?, 0.5, 1.0, 0.5, 0.667, 1)", [eid])
            con.execute("INSERT INTO evaluation_confusion VALUES (?, 'PER', 'O', 1)", [eid])
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
    for table in ("evaluation_reliability", "evaluation_thresholds", "evaluation_confusion"):
        assert _count(db, f"SELECT string_agg(eval_id) FROM {table}") == "ev2", table  # other's evaluation
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


# ------------------------------------------------------------------------ every copy of the texts
# The issue: after `ner datasets delete NAME --yes` a text of the deleted dataset survived in a review export
# made from it, in a prediction run over a file holding it under another doc id, in evaluation reports, in
# the refused review spool, in the seed's -output_path files, in DuckDB's spill files and in Prefect's
# artifact. Each copy below is made by the platform's own code; the checks grep the bytes of every file.
MARK = "档案标记Q7"  # in every text of dataset "cv", in no other


def _marked(n: int = 6) -> list[dict]:
    from tests.conftest import SAMPLE

    rows = [json.loads(line) for line in (SAMPLE / "test.jsonl").read_text(encoding="utf-8").splitlines()]
    return [{**r, "text": r["text"] + f"{MARK}{i}"} for i, r in enumerate(rows[:n])]  # entities keep offsets


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, tiny_encoder_dir) -> Path:
    """A model directory trained for one epoch on the sample corpus (labels PER, LOC, ORG, FIN)."""
    from flows.steps import train_step
    from ner_core.config import NERConfig
    from tests.conftest import SAMPLE

    root = tmp_path_factory.mktemp("tiny-model")
    db = root / "t.duckdb"
    ingest_dataset(db, "sample", {"train": SAMPLE / "train.jsonl", "dev": SAMPLE / "dev.jsonl"})
    cfg = NERConfig.model_validate(
        {
            "encoder": {"name": str(tiny_encoder_dir)},
            "data": {"dataset": "sample", "max_len": 64},
            "head": {"rnn_units": 16},
            "training": {"hard_epochs": 1, "batch_size": 32, "num_threads": 1, "seed": 3},
        }
    )
    return Path(train_step(str(db), cfg, str(root / "runs")).model_dir)


def _spill(db: Path) -> list[Path]:
    """Make DuckDB spill rows holding the texts into ``<db>.tmp`` and kill the process there: what a query
    stopped under its memory limit leaves behind."""
    import subprocess
    import sys
    import time

    script = (
        "import duckdb, sys, time\n"
        "con = duckdb.connect(sys.argv[1], read_only=True)\n"
        "con.execute(\"SET memory_limit = '32MB'\"); con.execute('SET threads = 1')\n"
        "con.execute(\"CREATE TEMP TABLE s AS SELECT text || repeat('x', 1500) || r.range AS t \"\n"
        "            \"FROM documents d, range(6000) r WHERE d.dataset = 'cv'\")\n"
        "print('spilled', flush=True); time.sleep(120)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script, str(db)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "spilled"
        time.sleep(0.2)
    finally:
        proc.kill()
        proc.wait()
    return [p for p in Path(f"{db}.tmp").iterdir() if p.stat().st_size]


@pytest.fixture
def traced(tmp_path, tiny_model, monkeypatch) -> dict:
    """Dataset "cv" (texts holding MARK) copied everywhere the platform copies a text, and dataset "other"
    with its own copies, which must stay."""
    import shutil

    from app import cli
    from flows import steps
    from ner_core.data.formats import read_file
    from storage import reviews
    from storage.datasets import load_documents
    from storage.footprint import review_spool
    from storage.review_export import export_reviews
    from storage.runs import create_run, finish_run
    from tests.conftest import SAMPLE

    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect-home"))  # no Prefect database here
    db, inputs, run_dir = tmp_path / "ner.duckdb", tmp_path / "inputs", tmp_path / "runs" / "r1"
    inputs.mkdir()
    cv = inputs / "cv.jsonl"
    cv.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in _marked()), encoding="utf-8")
    same = inputs / "same-texts.txt"  # the same texts under the file's own doc ids, and one more text
    same.write_text("".join(r["text"] + "\n" for r in _marked()) + "张三在北京\n", encoding="utf-8")
    ingest_dataset(db, "other", {"test": SAMPLE / "test.jsonl"})
    ingest_dataset(db, "cv", {"train": cv})  # train: a review export leaves test texts out
    model = run_dir / "model"
    shutil.copytree(tiny_model, model)
    cfg = '{"encoder": {"name": "enc"}, "head": {"type": "bilstm"}, "data": {"scheme": "BIOES"}}'
    create_run(db, "r1", dataset="other", dataset_version=1, config_json=cfg, run_dir=run_dir)
    finish_run(db, "r1", status="completed", model_dir=model)
    for ds, split, file in (("cv", "train", None), ("other", "test", None), (None, None, str(cv))):
        steps.evaluate_step(str(db), str(model), ds, split, run_id="r1", file=file)
    docs = read_file(same).documents
    steps.predict_step(str(db), str(model), docs, input_kind="file", input_ref=str(same), progress=False)
    cv_docs = load_documents(db, "cv", "train")
    pred = steps.predict_step(
        str(db), str(model), cv_docs, input_kind="dataset", input_ref="cv/train", progress=False
    ).pred_run_id
    done = [reviews.new_event(pred, d.doc_id, reviews.text_hash(d.text), "ann", "done") for d in cv_docs]
    reviews.record_events(db, done)
    export_reviews(db, pred, "cv-reviewed")
    # the spool: an addition refused for its overlap (the reason quotes the text), and pending decisions
    d0 = cv_docs[0]
    k = d0.text.index(MARK)
    ev = functools.partial(reviews.new_event, pred, d0.doc_id, reviews.text_hash(d0.text), "ann", "add")
    spool = reviews.ReviewSpool(review_spool(db))
    spool.submit(db, [ev(start=k, end=k + 4, label="PER"), ev(start=k + 2, end=k + 6, label="PER")])
    spool.add([ev(start=k + 4, end=k + 6, label="LOC")])
    other_pred = _other_prediction(db, model)
    spool.add([reviews.new_event(other_pred[0], other_pred[1], other_pred[2], "ann", "done")])
    # the seed's way: files out, recorded beside the database
    for data, out in ((cv, "seed-cv"), (SAMPLE / "test.jsonl", "seed-other")):
        argv = ["test", "-test_data", str(data), "-model_configs", str(model), "-output_path",
                str(tmp_path / out), "--db", str(db), "--no-prefect"]  # fmt: skip
        assert cli.main(argv) == 0
    # an export for an annotation tool holds the texts too (recorded beside the database like the seed's)
    out = str(tmp_path / "exported.jsonl")
    assert cli.main(["export", "--pred-run", pred, "--format", "doccano", "--out", out, "--db", str(db)]) == 0
    spilled = _spill(db)
    shutil.copyfile(db, f"{db}.rewrite")  # what a rewrite killed half-way leaves: a copy of the old file
    return {"db": db, "root": tmp_path, "inputs": inputs, "run_dir": run_dir, "spilled": spilled}


def _other_prediction(db: Path, model: Path) -> tuple[str, str, str]:
    """A prediction run over dataset "other": (pred_run_id, a doc_id, its text hash)."""
    from flows import steps
    from storage.datasets import load_documents
    from storage.reviews import text_hash

    docs = load_documents(db, "other", "test")[:2]
    pred = steps.predict_step(
        str(db), str(model), docs, input_kind="dataset", input_ref="other/test", progress=False
    )
    return pred.pred_run_id, docs[0].doc_id, text_hash(docs[0].text)


def _needles() -> list[bytes]:
    from storage.footprint import byte_forms
    from storage.reviews import text_hash

    texts = [r["text"] for r in _marked()]
    return [*byte_forms(MARK), *(text_hash(t).encode() for t in texts)]


def _traces(t: dict) -> dict[str, int]:
    """Every file below the test's folder (the user's input files aside) that holds MARK (any encoding) or
    a marked text's sha256, with the count."""
    from storage.footprint import files_below, hits

    files = [p for p in files_below(t["root"]) if t["inputs"] not in p.parents]
    return {str(p.relative_to(t["root"])): n for p, n in sorted(hits(files, _needles()).items())}


def test_the_plan_names_every_copy_of_the_texts(traced):
    db, root = traced["db"], traced["root"]
    before = _traces(traced)
    # each copy the issue names is there before the deletion (else this test would prove nothing)
    for where in ("ner.duckdb", "ner.duckdb.rewrite", "runs/r1/eval-cv-train.json",
                  "runs/r1/eval-cv-train.md", "runs/r1/eval-cv.jsonl.json", "runs/r1/eval-cv.jsonl.md",
                  "seed-cv/test_outputs.txt", "ner.duckdb.review-spool.jsonl",
                  "ner.duckdb.review-spool.jsonl.refused"):  # fmt: skip
        assert before.get(where), (where, before)
    assert any(k.startswith("ner.duckdb.tmp/") for k in before), before
    plan = plan_deletion(db, "cv")
    assert [(d["dataset"], d["version"], d["n_holding"]) for d in plan.derived_datasets] == [
        ("cv-reviewed", 1, 6)
    ]
    files = {str(Path(f["path"]).relative_to(root)) for f in plan.files}
    assert files == {
        "runs/r1/eval-cv-train.json", "runs/r1/eval-cv-train.md", "runs/r1/eval-cv.jsonl.json",
        "runs/r1/eval-cv.jsonl.md", "seed-cv/test_outputs.txt", "seed-cv/test_entities.jsonl",
        "seed-cv/test_report.txt", "seed-cv/test_report.json", "exported.jsonl",
    }  # fmt: skip
    assert plan.rows["evaluations"] == 2  # on cv v1, and on the file holding its texts
    assert list(plan.prediction_runs_trimmed.values()) == [6]  # the file run: its 7th text is not cv's
    spool = f"{db}.review-spool.jsonl"
    refused = Path(spool + ".refused").read_text(encoding="utf-8").splitlines()
    assert (
        plan.spool_lines == {spool: 1, spool + ".refused": len(refused)} and refused
    )  # "other"'s line stays
    assert f"{db}.rewrite" in plan.spill_files and all(str(p) in plan.spill_files for p in traced["spilled"])
    assert plan.sources == [str(traced["inputs"] / "cv.jsonl")] and plan.shared == {}
    text = "\n".join(plan.summary())
    assert "'cv-reviewed' v1 (review: 6 of its 6 documents hold its texts)" in text
    assert "runs/r1/eval-cv-train.md (evaluation report)" in text
    assert "test_outputs.txt (written by ner test -test_data)" in text
    assert "exported.jsonl (written by ner export --pred-run " in text
    assert _traces(traced) == before  # planning wrote nothing


def test_after_the_deletion_no_file_the_platform_wrote_holds_the_texts(traced):
    db, root = traced["db"], traced["root"]
    kept_files = [root / "runs/r1/eval-other-test.json", root / "seed-other/test_outputs.txt"]
    done = delete_dataset(db, "cv")
    assert _traces(traced) == {}
    assert done.done and not done.left, done.left
    assert [(d["name"], d["version"]) for d in list_datasets(db)] == [("other", 1)]
    assert all(p.is_file() for p in kept_files)  # what another dataset's data made stays
    assert _count(db, "SELECT count(*) FROM evaluations") == 1
    from storage.footprint import recorded_outputs, review_spool

    assert [Path(r["files"][0]).parent.name for r in recorded_outputs(db)] == ["seed-other"]
    pending = [json.loads(line) for line in review_spool(db).read_text(encoding="utf-8").splitlines()]
    assert [e["action"] for e in pending] == ["done"]  # the decision on "other" still waits
    assert not Path(f"{db}.rewrite").exists() and not any(Path(f"{db}.tmp").iterdir())
    assert not any(_orphans(db).values()), _orphans(db)


def test_keep_derived_keeps_the_derived_copies_and_names_them(traced):
    db, root = traced["db"], traced["root"]
    done = delete_dataset(db, "cv", keep_derived=True)
    text = "\n".join(done.summary())
    assert "derived datasets holding its texts, KEPT (--keep-derived):" in text
    assert "files holding its texts, KEPT (--keep-derived):" in text
    assert ("cv-reviewed", 1) in [(d["name"], d["version"]) for d in list_datasets(db)]
    assert (root / "runs/r1/eval-cv-train.json").is_file() and (root / "seed-cv/test_outputs.txt").is_file()
    # the export still holds the texts, so their predictions and the export's lineage stay
    assert _count(db, "SELECT count(*) FROM review_exports WHERE dataset = 'cv-reviewed'") == 6
    left = _traces(traced)
    assert "ner.duckdb.review-spool.jsonl.refused" not in left and not any(
        k.startswith("ner.duckdb.tmp/") for k in left
    )


def test_ner_datasets_delete_names_what_it_deletes_and_keeps(traced, capsys, monkeypatch):
    db = str(traced["db"])
    rc, out, err = _ner(["datasets", "delete", "cv", "--db", db], capsys, monkeypatch)
    assert rc == 1 and "derived datasets holding its texts, to delete:" in out
    assert (
        "review spool lines on its documents, to delete:" in out and "the files it was ingested from" in out
    )
    rc, out, err = _ner(["datasets", "delete", "cv", "--yes", "--db", db], capsys, monkeypatch)
    assert rc == 0 and "files holding its texts, deleted:" in out, err
    assert _traces(traced) == {}
    rc, out, err = _ner(["datasets", "delete", "--help"], capsys, monkeypatch)
    assert "--keep-derived" in out


@pytest.mark.slow  # a real Prefect flow run in a child process (Prefect's temporary server: ~30 s)
def test_prefect_artifact_quoting_the_texts_goes_from_prefects_database(traced):
    """`ner test` as a Prefect flow publishes the report (its error sentences) as the artifact
    run-report-cv: Prefect's database holds it in three rows (artifact, collection, event)."""
    import os
    import sqlite3
    import subprocess
    import sys
    import time

    from tests.conftest import REPO

    db = traced["db"]
    home = Path(os.environ["PREFECT_HOME"])  # the fixture's, in the test's folder
    env = {**os.environ, "PYTHONPATH": str(REPO), "PREFECT_HOME": str(home), "NER_NO_PREFECT": "0"}
    env.pop("PREFECT_API_URL", None)
    argv = [sys.executable, "-m", "app.cli", "test", "--dataset", "cv", "--split", "train",
            "--model-dir", str(traced["run_dir"] / "model"), "--db", str(db)]  # fmt: skip
    out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    deadline = time.monotonic() + 30  # the event reaches the database a moment after the run
    while time.monotonic() < deadline:
        with sqlite3.connect(home / "prefect.db") as con:
            n = con.execute("SELECT count(*) FROM events WHERE event LIKE 'prefect.artifact%'").fetchone()[0]
        if n >= 2:
            break
        time.sleep(0.5)
    assert any(k.startswith(f"{home.name}/prefect.db") for k in _traces(traced)), _traces(traced)
    done = delete_dataset(db, "cv")
    assert _traces(traced) == {}
    assert not done.left, done.left
    assert sorted(done.prefect_rows) == ["artifact", "artifact_collection", "events"], done.prefect_rows
    assert {k for rows in done.prefect_rows.values() for _, k in rows} >= {"run-report-cv"}


def test_a_prefect_database_out_of_reach_is_named_in_the_plan(filled, monkeypatch):
    from storage.footprint import review_spool
    from ui.review_state import spool_path

    assert str(review_spool(filled)) == spool_path(str(filled))  # the page's spool is the one cleaned
    monkeypatch.setenv("PREFECT_API_URL", "https://prefect.example.org/api")
    plan = plan_deletion(filled, "people")
    assert plan.prefect_database is None
    assert (
        "note: Prefect records not checked: PREFECT_API_URL is https://prefect.example.org/api"
        in "\n".join(plan.summary())
    )
    monkeypatch.delenv("PREFECT_API_URL")
    monkeypatch.setenv("PREFECT_SERVER_DATABASE_CONNECTION_URL", "postgresql+asyncpg://u@db/prefect")
    assert "names a postgresql+asyncpg database" in "\n".join(plan_deletion(filled, "people").notes)
