"""The whole pipeline on the sample corpus with a tiny random encoder: ingest -> train -> evaluate ->
predict into a real DuckDB file, once through the plain steps and once as a real Prefect flow run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from flows.contracts import FilesSource
from ner_core.config import PredictionConfig
from tests.conftest import REPO, SAMPLE

RAW = sorted(str(p) for p in (SAMPLE / "raw").glob("*.txt"))
SPLITS = {s: str(SAMPLE / f"{s}.jsonl") for s in ("train", "dev", "test")}


def tiny_config(encoder_dir: Path, **training):
    from ner_core.config import NERConfig

    return NERConfig.model_validate(
        {
            "data": {"dataset": "sample", "max_len": 64},
            "encoder": {"name": str(encoder_dir)},
            "head": {"type": "bilstm", "rnn_units": 32},
            "training": {
                "max_epochs": 3,
                "batch_size": 16,
                "learning_rate": 1e-3,
                "head_learning_rate": 3e-3,
                "crf_learning_rate": 3e-2,
                "warmup_ratio": 0.0,
                **training,
            },
        }
    )


@pytest.fixture(scope="module")
def pipeline_db(tmp_path_factory, tiny_encoder_dir):
    from flows import steps

    tmp = tmp_path_factory.mktemp("pipe")
    db = str(tmp / "ner.duckdb")
    out = steps.run_pipeline(
        db,
        tiny_config(tiny_encoder_dir),
        SPLITS["train"],
        SPLITS["dev"],
        SPLITS["test"],
        RAW,
        str(tmp / "runs"),
    )
    docs, _, _ = steps.load_prediction_input(db, FilesSource(files=RAW))
    return {"db": db, "tmp": tmp, **dict(out), "docs": docs}


def test_ingest_counts_match_the_corpus(pipeline_db):
    counts = pipeline_db["ingest"].counts
    for split, path in SPLITS.items():
        n_lines = sum(1 for line in open(path, encoding="utf-8") if line.strip())
        assert counts[split]["documents"] == n_lines
    assert sorted(pipeline_db["ingest"].labels) == ["FIN", "LOC", "ORG", "PER"]


def test_training_rows_and_loss_goes_down(pipeline_db):
    con = duckdb.connect(pipeline_db["db"], read_only=True)
    run_id = pipeline_db["train"].run_id
    status, model_dir, best_epoch = con.execute(
        "SELECT status, model_dir, best_epoch FROM runs WHERE run_id = ?", [run_id]
    ).fetchone()
    losses = [
        r[0]
        for r in con.execute(
            "SELECT train_loss FROM epochs WHERE run_id = ? ORDER BY epoch", [run_id]
        ).fetchall()
    ]
    con.close()
    assert status == "completed" and Path(model_dir, "model.safetensors").exists()
    assert len(losses) == 3 and 1 <= best_epoch <= 3
    assert losses[-1] < losses[0] * 0.8, losses


def test_evaluation_is_stored_with_all_reports(pipeline_db):
    ev = pipeline_db["evaluate"]
    assert 0.0 <= ev.f1 <= 1.0 and 0.0 < ev.char_accuracy <= 1.0
    con = duckdb.connect(pipeline_db["db"], read_only=True)
    f1, n = con.execute("SELECT f1, n_sentences FROM evaluations WHERE eval_id = ?", [ev.eval_id]).fetchone()
    labels = {
        r[0]
        for r in con.execute("SELECT label FROM evaluation_types WHERE eval_id = ?", [ev.eval_id]).fetchall()
    }
    con.close()
    assert f1 == pytest.approx(ev.f1) and n == 80
    assert labels == {"FIN", "LOC", "ORG", "PER"}
    run_dir = Path(pipeline_db["train"].run_dir)
    assert json.loads((run_dir / "eval-sample-test.json").read_text(encoding="utf-8"))["n_sentences"] == 80
    assert "| PER" in (run_dir / "eval-sample-test.md").read_text(encoding="utf-8")


def test_predictions_cover_every_document_and_offsets_match(pipeline_db):
    pr = pipeline_db["predict"]
    con = duckdb.connect(pipeline_db["db"], read_only=True)
    docs = dict(
        con.execute(
            "SELECT doc_id, text FROM predicted_documents WHERE pred_run_id = ?", [pr.pred_run_id]
        ).fetchall()
    )
    ents = con.execute(
        'SELECT doc_id, "start", "end", label, text, confidence FROM predicted_entities '
        "WHERE pred_run_id = ?",
        [pr.pred_run_id],
    ).fetchall()
    con.close()
    # a plain-text file is one document, tagged whole
    assert len(docs) == len(RAW)
    expected = {d.doc_id for d in pipeline_db["docs"]}
    assert set(docs) == expected and len(docs) == pr.n_documents
    assert any(len(t) > 2000 for t in docs.values())
    assert len(ents) == pr.n_entities
    for doc_id, s, e, label, text, conf in ents:
        assert docs[doc_id][s:e] == text and label in {"FIN", "LOC", "ORG", "PER"}
        assert 0.0 <= conf <= 1.0


def test_predicting_again_replaces_rows_and_resume_skips_done_documents(pipeline_db):
    from flows import steps

    db, tr, docs = pipeline_db["db"], pipeline_db["train"], pipeline_db["docs"]
    again = steps.predict_step(db, tr.model_dir, docs, input_kind="file", input_ref="again")
    again2 = steps.predict_step(db, tr.model_dir, docs, input_kind="file", input_ref="again")
    assert again.pred_run_id == again2.pred_run_id
    assert again2.n_entities == again.n_entities
    resumed = steps.predict_step(db, tr.model_dir, docs, input_kind="file", input_ref="again", replace=False)
    assert resumed.skipped_already_done == len(docs) and resumed.n_entities == again.n_entities
    con = duckdb.connect(db, read_only=True)
    n = con.execute(
        "SELECT count(*) FROM predicted_entities WHERE pred_run_id = ?", [again.pred_run_id]
    ).fetchone()[0]
    con.close()
    assert n == again.n_entities


def test_model_directory_loads_alone_and_tags_mixed_text(pipeline_db, tmp_path):
    import shutil

    from ner_core.artifacts.modeldir import load_model_dir
    from ner_core.inference.tagger import Tagger

    copy = tmp_path / "copied-model"
    shutil.copytree(pipeline_db["train"].model_dir, copy)
    tagger = Tagger.from_loaded(load_model_dir(copy), PredictionConfig(window=16, stride=8))
    text = "张伟在北京的ABC资本工作，2023年买了余额宝😀 iPhone 15。"
    tags, probs = tagger.tag_texts([text])[0]
    assert len(tags) == len(probs) == len(text)


def test_prefect_pipeline_flow_real_run(tmp_path, tiny_encoder_dir):
    """A real Prefect flow run (temporary local server) of the pipeline flow with its subflows."""
    from prefect import get_client  # noqa: F401  (imported to fail early if prefect is broken)

    from flows.pipeline import pipeline_flow

    db = str(tmp_path / "ner.duckdb")
    state = pipeline_flow(
        db,
        tiny_config(tiny_encoder_dir, max_epochs=1),
        SPLITS["train"],
        SPLITS["dev"],
        SPLITS["test"],
        RAW,
        str(tmp_path / "runs"),
        return_state=True,
    )
    assert state.is_completed(), state
    out = state.result()
    con = duckdb.connect(db, read_only=True)
    n = con.execute(
        "SELECT count(*) FROM predicted_entities WHERE pred_run_id = ?", [out.predict.pred_run_id]
    ).fetchone()[0]
    n_runs = con.execute("SELECT count(*) FROM runs WHERE status = 'completed'").fetchone()[0]
    con.close()
    assert n == out.predict.n_entities and n_runs == 1


def test_cli_bad_input_gives_one_clear_line(tmp_path):
    ner = [sys.executable, "-m", "app.cli"]
    r = subprocess.run([*ner, "train", "--head", "transformer"], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 2 and "invalid choice: 'transformer'" in r.stderr
    r = subprocess.run(
        [
            *ner,
            "ingest",
            "--name",
            "x",
            "--train",
            str(tmp_path / "missing.jsonl"),
            "--no-prefect",
            "--db",
            str(tmp_path / "x.duckdb"),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert r.returncode == 2 and "missing.jsonl: no such file" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run(
        [*ner, "train", "--no-prefect", "--db", str(tmp_path / "x.duckdb"), "--cnn_kernel_size", "4"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert r.returncode == 2 and "cnn_kernel_size must be odd" in r.stderr and "Traceback" not in r.stderr


def test_evaluating_a_file_equals_evaluating_the_stored_split(pipeline_db):
    from flows import steps

    tr = pipeline_db["train"]
    out = steps.evaluate_step(
        pipeline_db["db"], tr.model_dir, None, None, run_id=tr.run_id, file=SPLITS["test"]
    )
    assert out.n_sentences == 80
    assert out.f1 == pytest.approx(pipeline_db["evaluate"].f1)
    assert out.char_accuracy == pytest.approx(pipeline_db["evaluate"].char_accuracy)
    assert Path(tr.run_dir, "eval-test.jsonl.json").exists()


def test_predicted_spans_are_trimmed_of_whitespace(pipeline_db):
    from ner_core.artifacts.modeldir import load_model_dir
    from ner_core.inference.tagger import Tagger

    tagger = Tagger.from_loaded(load_model_dir(pipeline_db["train"].model_dir))
    text = "李超 在 上海"
    tags = ["B-PER", "I-PER", "E-PER", "O", "S-LOC", "B-LOC", "E-LOC"]
    probs = [0.9, 0.8, 0.3, 1.0, 0.5, 0.7, 0.6]
    tagger.tag_texts = lambda texts, **kw: [(tags, probs)]
    tagger.temperature = 1.0  # raw confidences only: the trained model's temperature would tag past tag_texts
    ents = tagger.predict([text])[0]
    assert [(e.start, e.end, e.label, e.text, e.confidence) for e in ents] == [
        (0, 2, "PER", "李超", 0.8),
        (5, 7, "LOC", "上海", 0.6),
    ]
