"""Training sources beyond datasets in storage (issue 26): migration 8's run_sources, filled from the model
directory when a run completes, shown by ``ner lineage``; the self-training leak check against every stored
dataset's dev and test texts; untrusted lineage records refused in one line."""

from __future__ import annotations

import json
import os
from pathlib import Path

import duckdb
import pytest

from tests.test_self_training import _records

SHA = "ab" * 32


def _jsonl(path: Path, recs: list[dict]) -> str:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs), encoding="utf-8")
    return str(path)


def _lineage_cli(db: str, run_id: str, capsys) -> str:
    from app.cli import main

    capsys.readouterr()
    assert main(["lineage", "--db", db, run_id]) == 0
    return capsys.readouterr().out


def _stored_run(db: str, run_id: str, model_dir: Path, *, status: str = "completed") -> None:
    from ner_core.config import NERConfig
    from storage import runs as runs_db

    runs_db.create_run(db, run_id, dataset="sample", dataset_version=1, config_json=NERConfig().to_json(),
                       run_dir=model_dir.parent)  # fmt: skip
    runs_db.finish_run(db, run_id, status=status, model_dir=model_dir, best_epoch=1, best_dev_f1=0.5)


def _model_dir(root: Path, metrics: dict, encoder: str = "m3e-small") -> Path:
    """The two files of a model directory the lineage reads: its configuration (the encoder it names) and
    metrics.json (what the trainer recorded)."""
    from ner_core.artifacts.layout import CONFIG, METRICS

    model = root / "model"
    model.mkdir(parents=True)
    (model / CONFIG).write_text(json.dumps({"encoder": {"name": encoder}}), encoding="utf-8")
    (model / METRICS).write_text(json.dumps(metrics), encoding="utf-8")
    return model


# ------------------------------------------------------------------ old databases
def test_a_database_from_before_migrates_and_its_runs_say_not_recorded(tmp_path, capsys):
    from storage.db import migrate
    from storage.runs import model_lineage
    from storage.schema import MIGRATIONS

    db = str(tmp_path / "old.duckdb")
    con = duckdb.connect(db)
    migrate(con, MIGRATIONS[:7])
    con.execute(
        "INSERT INTO runs (run_id, dataset, dataset_version, encoder, head, scheme, config, status, run_dir, "
        "model_dir, started_at) VALUES ('old-run', 'sample', 1, 'e', 'bigru', 'BIOES', '{}', 'completed', "
        "'/r', '/r/model', now())"
    )
    con.close()
    lin = model_lineage(db, "old-run")
    assert lin["sources"] == {"recorded": False, "problem": None, "items": []}
    with duckdb.connect(db, read_only=True) as con:
        assert con.execute("SELECT max(version) FROM schema_version").fetchone()[0] == 8
        assert con.execute("SELECT count(*) FROM run_sources").fetchone()[0] == 0
        view = con.execute("SELECT run_id, recorded, kind FROM v_model_sources").fetchall()
    assert view == [("old-run", False, None)]
    assert "training sources: not recorded (the run was stored before" in _lineage_cli(db, "old-run", capsys)


# ------------------------------------------------------------------ recorded from the model directory
def test_completed_run_records_adapt_corpus_self_training_rounds_and_teacher(tmp_path, capsys):
    from ner_core.training.adapt import ADAPT_RECORD
    from storage.runs import model_lineage

    encoder = tmp_path / "adapted"
    encoder.mkdir()
    (encoder / ADAPT_RECORD).write_text(json.dumps({
        "source_encoder": "m3e-small", "masking": "word", "steps": 40, "seconds": 12.5, "corpus_texts": 900,
        "corpus_sha256": SHA, "stopped_reason": "time budget", "source": {"dataset": "raw", "version": 2,
        "split": "train", "db": "/x/ner.duckdb"}}))  # fmt: skip
    rounds = [
        {"round": k, "teacher": f"self-train/round-{k - 1}/model", "selected": 10 + k,
         "counts": {"with_entities": 8, "without_entities": 2 + k, "in_dev_test": 1, "in_other_dev_test": 3},
         "silver": f"self-train/silver-{k}.jsonl", "silver_sha256": SHA, "silver_hashes": f"silver-{k}.sha1",
         "silver_hashes_sha256": SHA}
        for k in (1, 2)
    ]  # fmt: skip
    metrics = {
        "best_epoch": 3,
        "self_training": {
            "unlabeled": {"source": {"files": [{"path": "/data/u.txt", "sha256": SHA}]}, "texts": 40,
                          "sha256": SHA},
            "rounds": rounds, "settings": {"silver_weight": 0.5, "self_train_rounds": 2}, "round": 2,
        },
        "distillation": {"teacher": "run-big", "teacher_dir": "/runs/run-big/model", "teacher_sha256": SHA,
                         "alpha": 0.5, "temperature": 2.0, "unlabeled": None},
    }  # fmt: skip
    db = str(tmp_path / "ner.duckdb")
    _stored_run(db, "run-1", _model_dir(tmp_path / "r1", metrics, encoder=str(encoder)))
    src = model_lineage(db, "run-1")["sources"]
    assert src["recorded"] and src["problem"] is None
    items = src["items"]
    assert [i["kind"] for i in items] == [
        "adapt_corpus",
        "unlabeled",
        "silver_round",
        "silver_round",
        "teacher",
    ]
    adapt, unlabeled, r1, r2, teacher = items
    assert (adapt["name"], adapt["n_docs"], adapt["source_dataset"], adapt["source_version"]) == (
        "dataset raw v2 (train)", 900, "raw", 2)  # fmt: skip
    assert adapt["detail"]["encoder"] == str(encoder) and adapt["fingerprint"] == SHA
    assert (unlabeled["name"], unlabeled["n_docs"], unlabeled["source_dataset"]) == ("/data/u.txt", 40, None)
    assert unlabeled["detail"]["settings"]["silver_weight"] == 0.5
    assert (r2["name"], r2["n_docs"], r2["detail"]["round"]) == ("self-train/silver-2.jsonl", 12, 2)
    assert r1["detail"]["counts"]["in_other_dev_test"] == 3
    assert (teacher["name"], teacher["fingerprint"], teacher["detail"]["temperature"]) == (
        "run-big",
        SHA,
        2.0,
    )
    out = _lineage_cli(db, "run-1", capsys)
    assert "adapt dataset raw v2 (train): 900 texts, sha256 abababababab; encoder m3e-small" in out
    assert "silver round 1: 11 documents in self-train/silver-1.jsonl" in out and "3 in_other_dev_test" in out
    assert "teacher run-big, sha256 abababababab (alpha 0.5, temperature 2.0" in out
    # a plain run: recorded, none; a failed run: not recorded
    _stored_run(db, "run-2", _model_dir(tmp_path / "r2", {"best_epoch": 1}))
    assert "training sources: none beyond the datasets" in _lineage_cli(db, "run-2", capsys)
    with duckdb.connect(db, read_only=True) as con:
        assert con.execute("SELECT count(*) FROM v_model_sources WHERE run_id = 'run-1'").fetchone()[0] == 5
        assert con.execute("SELECT recorded FROM v_model_sources WHERE run_id = 'run-2'").fetchall() == [
            (True,)
        ]


@pytest.mark.parametrize(
    "metrics, says",
    [
        ({"self_training": {"rounds": [{"selected": "many"}]}}, "rounds[0].selected: expected a whole"),
        ({"self_training": {"rounds": [{}] * 1001}}, "self_training.rounds: expected a list of at most"),
        ({"self_training": {"unlabeled": {"source": {"files": ["x" * 5000]}}}}, "files[0]: expected text"),
        ({"distillation": {"teacher": "t", "alpha": float("nan")}}, "distillation.alpha: expected a finite"),
        ({"distillation": {"alpha": 0.5}}, "distillation.teacher: expected text"),
        ([1, 2], "expected a JSON object"),
    ],
)  # fmt: skip
def test_a_lineage_record_that_is_not_what_the_trainers_write_is_refused_in_one_line(
    tmp_path, capsys, metrics, says
):
    from ner_core.artifacts.layout import METRICS
    from storage.runs import get_run, model_lineage

    db = str(tmp_path / "ner.duckdb")
    model = _model_dir(tmp_path / "r", {})
    (model / METRICS).write_text(json.dumps(metrics), encoding="utf-8")
    _stored_run(db, "bad", model)  # the run itself is recorded as completed
    assert get_run(db, "bad")["status"] == "completed"
    src = model_lineage(db, "bad")["sources"]
    assert src["recorded"] and src["items"] == []
    assert src["problem"].startswith(f"{model / METRICS}: ") and says in src["problem"]
    assert "\n" not in src["problem"]
    assert f"training sources: not recorded: {model / METRICS}" in _lineage_cli(db, "bad", capsys)


def test_a_metrics_file_that_leaves_its_folder_or_is_too_big_is_not_read(tmp_path):
    from ner_core.artifacts.layout import METRICS
    from storage.runs import model_lineage

    db = str(tmp_path / "ner.duckdb")
    outside = tmp_path / "secret.json"
    outside.write_text(json.dumps({"self_training": {"rounds": []}}), encoding="utf-8")
    model = _model_dir(tmp_path / "a", {})
    (model / METRICS).unlink()
    os.symlink(outside, model / METRICS)
    _stored_run(db, "link", model)
    assert "outside the folder" in model_lineage(db, "link")["sources"]["problem"]
    model = _model_dir(tmp_path / "b", {})
    with open(model / METRICS, "wb") as fh:  # sparse: big by its size, not by the disk it takes
        fh.truncate(64 * 1024 * 1024)
    _stored_run(db, "big", model)
    assert "more than the" in model_lineage(db, "big")["sources"]["problem"]


# ------------------------------------------------------------------ the leak check and a real run
def test_silver_is_never_a_dev_or_test_text_of_another_stored_dataset(tiny_encoder_dir, tmp_path, capsys):
    """A real self-training run (one round, adapted encoder): unlabeled texts that are another stored
    dataset's test texts are left out as in_other_dev_test, counted in the model's lineage and in storage."""
    from flows import steps
    from ner_core.config import NERConfig
    from storage.datasets import text_sha1
    from storage.runs import model_lineage

    train, dev, test = _records("train"), _records("dev"), _records("test")
    d = tmp_path / "data"
    d.mkdir()
    db = str(tmp_path / "ner.duckdb")
    steps.ingest_step(db, "tiny", {"train": _jsonl(d / "train.jsonl", train[:24]),
                                   "dev": _jsonl(d / "dev.jsonl", dev[:6]),
                                   "test": _jsonl(d / "test.jsonl", test[:6])})  # fmt: skip
    other_test = train[24:27]  # another benchmark's test split holds three of the unlabeled texts
    steps.ingest_step(db, "other", {"train": _jsonl(d / "o-train.jsonl", train[40:44]),
                                    "test": _jsonl(d / "o-test.jsonl", other_test)})  # fmt: skip
    unlabeled = d / "unlabeled.txt"
    unlabeled.write_text("\n".join(r["text"] for r in train[24:34]) + "\n", encoding="utf-8")
    config = NERConfig.model_validate({
        "encoder": {"name": str(tiny_encoder_dir)}, "data": {"dataset": "tiny", "max_len": 48},
        "head": {"type": "bigru", "rnn_units": 16},
        "training": {"hard_epochs": 1, "batch_size": 8, "num_threads": 1, "precision": "fp32",
                     "unlabeled": [str(unlabeled)], "self_train_rounds": 1, "silver_min_confidence": 1e-6,
                     "silver_max_uncertainty": 100.0, "adapt_seconds": 0.5},
    })  # fmt: skip
    out = steps.train_step(db, config, str(tmp_path / "runs"))
    run_dir = Path(out.run_dir)
    record = json.loads((run_dir / "self-train" / "silver-1.json").read_text(encoding="utf-8"))
    assert record["counts"]["in_other_dev_test"] == 3 and record["selected"] == 7
    silver = set((run_dir / record["silver_hashes"]).read_text(encoding="utf-8").split())
    assert not silver & {text_sha1(r["text"]) for r in other_test}
    items = model_lineage(db, out.run_id)["sources"]["items"]
    assert [i["kind"] for i in items] == ["adapt_corpus", "unlabeled", "silver_round"]
    assert items[0]["source_dataset"] == "tiny" and items[0]["n_docs"] == 24  # adapted on the train split
    assert items[1]["name"] == str(unlabeled.resolve()) and items[1]["n_docs"] == 10
    assert items[2]["n_docs"] == 7 and items[2]["detail"]["counts"]["in_other_dev_test"] == 3
    text = _lineage_cli(db, out.run_id, capsys)
    assert "silver round 1: 7 documents" in text and "3 in_other_dev_test" in text


def test_distillation_never_uses_a_dev_or_test_text_of_another_stored_dataset(tiny_encoder_dir, tmp_path):
    """A real distillation (a one-epoch teacher, a one-epoch student): unlabeled texts that are another
    stored dataset's test texts are not distilled on, counted in the lineage's left_out and in storage."""
    from flows import steps
    from ner_core.config import NERConfig
    from storage.runs import model_lineage

    train, dev, test = _records("train"), _records("dev"), _records("test")
    d = tmp_path / "data"
    d.mkdir()
    db = str(tmp_path / "ner.duckdb")
    steps.ingest_step(db, "tiny", {"train": _jsonl(d / "train.jsonl", train[:16]),
                                   "dev": _jsonl(d / "dev.jsonl", dev[:4]),
                                   "test": _jsonl(d / "test.jsonl", test[:4])})  # fmt: skip
    steps.ingest_step(db, "other", {"train": _jsonl(d / "o-train.jsonl", train[40:42]),
                                    "test": _jsonl(d / "o-test.jsonl", train[24:27])})  # fmt: skip
    unlabeled = d / "unlabeled.txt"
    unlabeled.write_text("\n".join(r["text"] for r in train[24:30] + dev[:1]) + "\n", encoding="utf-8")
    settings = {
        "encoder": {"name": str(tiny_encoder_dir)}, "data": {"dataset": "tiny", "max_len": 48},
        "head": {"type": "bigru", "rnn_units": 16},
        "training": {"hard_epochs": 1, "batch_size": 8, "num_threads": 1, "precision": "fp32"},
    }  # fmt: skip
    teacher = steps.train_step(db, NERConfig.model_validate(settings), str(tmp_path / "teacher"))
    settings["training"] |= {"teacher": teacher.run_id, "unlabeled": [str(unlabeled)]}
    out = steps.train_step(db, NERConfig.model_validate(settings), str(tmp_path / "runs"))
    lineage = json.loads(Path(out.model_dir, "metrics.json").read_text(encoding="utf-8"))["distillation"]
    # 7 texts: 3 in other's test split, 1 in tiny's own dev split, 3 distilled on
    assert lineage["unlabeled"]["texts"] == 3
    assert lineage["unlabeled"]["left_out"] == {"in_dev_test": 4, "duplicate": 0}
    items = {i["kind"]: i for i in model_lineage(db, out.run_id)["sources"]["items"]}
    assert sorted(items) == ["teacher", "unlabeled"] and items["unlabeled"]["n_docs"] == 3
    assert items["unlabeled"]["detail"]["left_out"]["in_dev_test"] == 4


def test_select_silver_counts_excluded_texts_apart_from_its_own_dev_test():
    from types import SimpleNamespace

    from ner_core.training.self_training import select_silver, text_hash

    texts = ["甲乙丙", "丁戊己", "庚辛壬", "癸子丑"]
    preds = [SimpleNamespace(entities=[], uncertainty=0.0) for _ in texts]
    own, other = {text_hash(texts[0])}, {text_hash(texts[0]), text_hash(texts[2])}
    sel = select_silver(texts, preds, min_confidence=0.9, max_uncertainty=0.1, held_out=own, exclude=other)
    assert [d.text for d in sel.docs] == [texts[1], texts[3]]
    assert sel.counts["in_dev_test"] == 1 and sel.counts["in_other_dev_test"] == 1


# ------------------------------------------------------------------ deletion
def test_deleting_an_unlabeled_dataset_names_the_model_and_removes_its_silver_files(tmp_path):
    """A run self-trained on a stored dataset's texts: deleting that dataset lists the run among the models
    that saw the data and deletes the silver files holding its texts, but never a file a record names
    outside the run folder."""
    from flows import steps
    from storage.deletion import delete_dataset, plan_deletion
    from storage.runs import model_lineage

    db = str(tmp_path / "ner.duckdb")
    texts = [r["text"] for r in _records("train")[:4]]
    steps.ingest_step(db, "raw", {"train": _jsonl(tmp_path / "raw.jsonl", [{"text": t} for t in texts])})
    run_dir = tmp_path / "runs" / "st"
    (run_dir / "self-train").mkdir(parents=True)
    silver = run_dir / "self-train" / "silver-1.jsonl"
    _jsonl(silver, [{"doc_id": "silver1:0", "text": texts[0], "entities": []}])
    (run_dir / "self-train" / "silver-1.sha1").write_text("x\n", encoding="utf-8")
    outside = _jsonl(tmp_path / "users-own.jsonl", [{"text": texts[1]}])  # the user's file, not ours
    rounds = [{"round": 1, "selected": 1, "silver": "self-train/silver-1.jsonl",
               "silver_hashes": "self-train/silver-1.sha1"},
              {"round": 2, "selected": 1, "silver": "../../users-own.jsonl"}]  # fmt: skip
    metrics = {"self_training": {"unlabeled": {"source": {"dataset": "raw", "version": 1}, "texts": 4},
                                 "rounds": rounds}}  # fmt: skip
    _stored_run(db, "st", _model_dir(run_dir, metrics))
    plan = plan_deletion(db, "raw")
    assert [m["run_id"] for m in plan.models] == ["st"]
    assert {f["path"] for f in plan.files if f["kind"] == "silver data"} == {
        str(silver.resolve()),
        str((run_dir / "self-train" / "silver-1.sha1").resolve()),
    }
    delete_dataset(db, "raw")
    assert not silver.exists() and Path(outside).is_file()
    assert len(model_lineage(db, "st")["sources"]["items"]) == 3  # the lineage says what the model saw
