"""Sharded batch prediction on a Dask LocalCluster (2 workers, threads) gives the same rows as the
single-process run; shards keep order; incremental prediction tags only documents not yet tagged."""

from __future__ import annotations

import duckdb
import pytest

from flows.contracts import DatasetSource, FilesSource
from ner_core.config import PredictionConfig
from ner_core.documents import Document
from tests.conftest import SAMPLE

RAW = sorted(str(p) for p in (SAMPLE / "raw").glob("*.txt"))
SPLITS = {s: str(SAMPLE / f"{s}.jsonl") for s in ("train", "dev", "test")}


def _docs(lengths):
    return [Document(doc_id=f"d{i}", text="字" * n) for i, n in enumerate(lengths)]


@pytest.mark.parametrize(
    "lengths,n", [([5] * 10, 3), ([100, 1, 1, 1], 2), ([1, 2, 3], 5), ([7], 1), ([3000, 5, 5, 5, 5, 5], 4)]
)
def test_shards_keep_order_cover_everything_and_are_non_empty(lengths, n):
    from flows.dask_predict import shard_documents

    docs = _docs(lengths)
    shards = shard_documents(docs, n)
    assert [d.doc_id for s in shards for d in s] == [d.doc_id for d in docs]
    assert all(shards) and len(shards) <= min(n, len(docs))


def test_shards_balance_characters():
    from flows.dask_predict import shard_documents

    shards = shard_documents(_docs([10] * 40), 4)
    assert [len(s) for s in shards] == [10, 10, 10, 10]


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_shard_count_is_checked(bad):
    from flows.dask_predict import shard_documents

    with pytest.raises(ValueError, match="expected n_shards to be a positive int"):
        shard_documents(_docs([3]), bad)


def test_no_documents_no_shards():
    from flows.dask_predict import shard_documents

    assert shard_documents([], 3) == []


# ----------------------------------------------------------------------------------------- with a model
def tiny_config(encoder_dir):
    from ner_core.config import NERConfig

    return NERConfig.model_validate(
        {
            "data": {"dataset": "sample", "max_len": 64},
            "encoder": {"name": str(encoder_dir)},
            "head": {"type": "bilstm", "rnn_units": 16},
            # near-zero learning rates: the model stays random and tags many spans, a strong comparison
            "training": {
                "max_epochs": 1,
                "batch_size": 32,
                "learning_rate": 1e-7,
                "head_learning_rate": 1e-7,
                "crf_learning_rate": 1e-7,
                "warmup_ratio": 0.0,
                "best_fit": False,
            },
        }
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_encoder_dir):
    from flows import steps

    tmp = tmp_path_factory.mktemp("dask")
    db = str(tmp / "ner.duckdb")
    # the 80 test documents as train, dev and test: one quick epoch (file stems must differ)
    small = {s: tmp / f"{s}.jsonl" for s in ("train", "dev")}
    for path in small.values():
        path.write_text(open(SPLITS["test"], encoding="utf-8").read(), encoding="utf-8")
    steps.ingest_step(
        db, "sample", {"train": str(small["train"]), "dev": str(small["dev"]), "test": SPLITS["test"]}
    )
    tr = steps.train_step(db, tiny_config(tiny_encoder_dir), str(tmp / "runs"))
    return {"db": db, "tmp": tmp, "train": tr}


def _rows(db, pred_run_id):
    con = duckdb.connect(db, read_only=True)
    ents = con.execute(
        'SELECT doc_id, "start", "end", label, text, confidence FROM predicted_entities '
        'WHERE pred_run_id = ? ORDER BY doc_id, "start", "end", label',
        [pred_run_id],
    ).fetchall()
    docs = con.execute(
        "SELECT doc_id, text, n_entities, uncertainty FROM predicted_documents "
        "WHERE pred_run_id = ? ORDER BY doc_id",
        [pred_run_id],
    ).fetchall()
    con.close()
    return docs, ents


#: equality with the single-process run is exact arithmetic: fp32 (bf16 results move with batch composition)
FP32 = PredictionConfig(precision="fp32")


def _same(a, b):
    (docs_a, ents_a), (docs_b, ents_b) = a, b
    assert [d[:3] for d in docs_a] == [d[:3] for d in docs_b]
    assert None not in [d[3] for d in docs_a + docs_b]  # both paths store the document's uncertainty
    assert [d[3] for d in docs_a] == pytest.approx([d[3] for d in docs_b], abs=1e-4)
    assert [e[:5] for e in ents_a] == [e[:5] for e in ents_b]
    assert [e[5] for e in ents_a] == pytest.approx([e[5] for e in ents_b], abs=1e-5)


@pytest.fixture(scope="module")
def untrained_model_dir(tmp_path_factory, tiny_encoder_dir):
    from tests.test_predict import build_model_dir

    return str(build_model_dir(tmp_path_factory.mktemp("dask-model") / "model", tiny_encoder_dir))


def _tag_shards(model_dir, docs, n_shards):
    from flows.dask_predict import shard_documents, tag_shard

    return [tag_shard(model_dir, [(d.doc_id, d.text) for d in s]) for s in shard_documents(docs, n_shards)]


def test_shard_writer_and_predict_step_store_identical_rows(tmp_path, untrained_model_dir):
    """The Dask path's writer and the plain step write through the same protocol: same run, same rows."""
    from flows import steps
    from flows.dask_predict import store_shard_rows
    from storage.predictions import get_prediction_run

    docs = _docs([40, 5, 300, 17, 90]) + [Document(doc_id="raw", text=open(RAW[0], encoding="utf-8").read())]
    plain_db, dask_db = str(tmp_path / "plain.duckdb"), str(tmp_path / "dask.duckdb")
    single = steps.predict_step(
        plain_db,
        untrained_model_dir,
        docs,
        input_kind="texts",
        input_ref="same",
        batch_docs=2,
        progress=False,
        options=FP32,  # the shards' workers tag in fp32 when no precision is set
    )
    out = store_shard_rows(
        dask_db,
        untrained_model_dir,
        _tag_shards(untrained_model_dir, docs, 3),
        input_kind="texts",
        input_ref="same",
        run_id=None,
    )
    assert out.pred_run_id == single.pred_run_id
    assert (out.n_documents, out.n_entities, out.n_chars) == (
        single.n_documents,
        single.n_entities,
        single.n_chars,
    )
    _same(_rows(dask_db, out.pred_run_id), _rows(plain_db, single.pred_run_id))
    assert get_prediction_run(dask_db, out.pred_run_id)["status"] == "completed"


def test_shard_writer_marks_a_failed_write_and_adds_to_a_run_without_replacing(
    tmp_path, untrained_model_dir, monkeypatch
):
    from flows.dask_predict import store_shard_rows
    from storage import predictions as predictions_db

    db, docs = str(tmp_path / "p.duckdb"), _docs([30, 40, 50, 60])
    shard_rows = _tag_shards(untrained_model_dir, docs, 2)
    first = store_shard_rows(
        db, untrained_model_dir, shard_rows[:1], input_kind="texts", input_ref="r", run_id=None
    )
    real_write = predictions_db.write_predictions

    def fail(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(predictions_db, "write_predictions", fail)
    with pytest.raises(RuntimeError, match="disk full"):
        store_shard_rows(
            db,
            untrained_model_dir,
            shard_rows[1:],
            input_kind="texts",
            input_ref="r",
            run_id=None,
            replace=False,
        )
    row = predictions_db.get_prediction_run(db, first.pred_run_id)
    assert row["status"] == "failed" and row["n_documents"] == first.n_documents
    monkeypatch.setattr(predictions_db, "write_predictions", real_write)
    out = store_shard_rows(
        db, untrained_model_dir, shard_rows[1:], input_kind="texts", input_ref="r", run_id=None, replace=False
    )
    assert out.n_documents == len(docs)


@pytest.mark.slow  # trains a tiny model (> 20 s on 2 shared cores)
def test_dask_flow_on_local_cluster_equals_single_process(trained):
    from flows import steps
    from flows.dask_predict import run_dask_predict

    db, tr = trained["db"], trained["train"]
    source = FilesSource(files=RAW)
    docs, kind, ref = steps.load_prediction_input(db, source)
    single = steps.predict_step(
        db, tr.model_dir, docs, input_kind=kind, input_ref=ref, run_id=tr.run_id, options=FP32
    )
    expected = _rows(db, single.pred_run_id)
    assert expected[1], "the tiny model should find some entities in the raw texts"

    state = run_dask_predict(
        db,
        source,
        tr.model_dir,
        tr.run_id,
        n_shards=3,
        n_workers=2,
        processes=False,
        return_state=True,
        options=FP32,
    )
    assert state.is_completed(), state
    out = state.result()
    assert out.pred_run_id == single.pred_run_id and 2 <= out.n_shards <= 3
    assert out.n_documents == single.n_documents and out.n_entities == single.n_entities
    _same(_rows(db, out.pred_run_id), expected)


@pytest.mark.slow  # trains a tiny model (> 20 s on 2 shared cores)
def test_plain_dask_client_equals_single_process(trained):
    from flows import steps
    from flows.dask_predict import predict_sharded

    db, tr = trained["db"], trained["train"]
    docs, _, _ = steps.load_prediction_input(db, DatasetSource(dataset="sample", split="test"))
    single = steps.predict_step(
        db, tr.model_dir, docs, input_kind="dataset", input_ref="plain-single", options=FP32
    )
    out = predict_sharded(
        db,
        tr.model_dir,
        docs,
        input_kind="dataset",
        input_ref="plain-dask",
        n_shards=2,
        n_workers=2,
        options=FP32,
    )
    assert out.n_documents == len(docs) == single.n_documents
    _same(_rows(db, out.pred_run_id), _rows(db, single.pred_run_id))


@pytest.mark.slow  # trains a tiny model (> 20 s on 2 shared cores)
def test_incremental_prediction_tags_only_new_documents(trained, tmp_path):
    from flows.steps import ingest_step
    from storage.predictions import unpredicted_documents
    from storage.runs import promote_run

    db, tr = trained["db"], trained["train"]
    promote_run(db, tr.run_id)
    # a fresh dataset of 5 documents, then the same 5 plus 3 new ones as a new version
    lines = open(SPLITS["test"], encoding="utf-8").read().splitlines()
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()  # same file name: doc ids are "<stem>:<line>"
    first = tmp_path / "a" / "incoming.jsonl"
    first.write_text("\n".join(lines[:5]) + "\n", encoding="utf-8")
    ingest_step(db, "incoming", {"test": str(first)})
    assert len(unpredicted_documents(db, "incoming", tr.run_id)) == 5

    from flows.pipeline import predict_new_task

    out1 = predict_new_task.fn(db, tr.model_dir, tr.run_id, "incoming", None)
    assert out1.n_new_documents == 5 and out1.n_documents == 5
    assert unpredicted_documents(db, "incoming", tr.run_id) == []
    again = predict_new_task.fn(db, tr.model_dir, tr.run_id, "incoming", None)
    assert again.n_new_documents == 0

    second = tmp_path / "b" / "incoming.jsonl"
    second.write_text("\n".join(lines[:8]) + "\n", encoding="utf-8")
    ingest_step(db, "incoming", {"test": str(second)})
    new = unpredicted_documents(db, "incoming", tr.run_id)
    assert len(new) == 3
    out2 = predict_new_task.fn(db, tr.model_dir, tr.run_id, "incoming", "test")
    assert out2.n_new_documents == 3
    con = duckdb.connect(db, read_only=True)
    n_docs = con.execute(
        "SELECT count(*) FROM predicted_documents WHERE pred_run_id = ?", [out2.pred_run_id]
    ).fetchone()[0]
    con.close()
    # the "incoming/test" run holds the 3 new ones; the 5 earlier ones stay in "incoming/*"
    assert n_docs == 3 and unpredicted_documents(db, "incoming", tr.run_id) == []


@pytest.mark.slow  # trains a tiny model (> 20 s on 2 shared cores)
def test_unpredicted_documents_checks_inputs(trained):
    from storage.predictions import unpredicted_documents

    with pytest.raises(ValueError, match="no dataset 'nope'"):
        unpredicted_documents(trained["db"], "nope", "run")
    with pytest.raises(ValueError, match="expected a non-empty run_id"):
        unpredicted_documents(trained["db"], "sample", "")


def test_workers_tag_on_the_cpu_unless_a_device_is_saved_and_store_the_plain_settings_names(
    tmp_path, untrained_model_dir, monkeypatch
):
    """A model that saves no device tags on a worker's CPU (never 'auto', which would take a GPU); the
    options given are stored under the names predict_step stores (the window as max_len)."""
    import json

    from flows.dask_predict import predict_sharded, tag_shard
    from ner_core.config import PredictionConfig
    from ner_core.inference.tagger import Tagger
    from storage.predictions import get_prediction_run

    devices = []
    real_init = Tagger.__init__

    def spy(self, model, tokenizer, **kw):
        devices.append(kw["device"])
        real_init(self, model, tokenizer, **kw)

    monkeypatch.setattr(Tagger, "__init__", spy)
    tag_shard(untrained_model_dir, [("a", "张三在北京")])
    tag_shard(untrained_model_dir, [("a", "张三在北京")], PredictionConfig(device="auto"))
    assert devices == ["cpu", "auto"]
    db = str(tmp_path / "d.duckdb")
    out = predict_sharded(
        db,
        untrained_model_dir,
        _docs([30, 12]),
        input_kind="texts",
        input_ref="w",
        n_shards=2,
        n_workers=1,
        options=PredictionConfig(window=20, stride=10),
    )
    stored = json.loads(get_prediction_run(db, out.pred_run_id)["config"])
    assert (stored["max_len"], stored["stride"]) == (20, 10) and "window" not in stored
