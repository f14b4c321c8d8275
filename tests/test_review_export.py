"""The review loop's back half on a real DuckDB file: reviewed predictions exported as a dataset version
(gold = the corrected entities, versions without duplicates, no dev/test text in train, reviewer-added
labels), training data of ``--plus``, promotion history and rollback, lineage, the CLI commands, and (slow)
``retrain-from-reviews`` as real Prefect flow runs that promote only a higher entity F1."""

from __future__ import annotations

import json
from collections import namedtuple
from pathlib import Path

import duckdb
import pytest

from app import cli
from ner_core.config import NERConfig
from storage import reviews
from storage import runs as runs_db
from storage.datasets import ingest_dataset, list_datasets, load_documents, training_documents
from storage.db import migrate
from storage.predictions import finish_prediction_run, start_prediction_run, write_predictions
from storage.review_export import export_reviews, new_decisions
from storage.runs import model_lineage
from storage.schema import MIGRATIONS
from tests.conftest import SAMPLE

Ent = namedtuple("Ent", "start end label text confidence")

TRAIN = [
    {"text": "李四去上海出差", "entities": [{"start": 0, "end": 2, "label": "PER"}]},
    {"text": "王强在深圳", "entities": [{"start": 0, "end": 2, "label": "PER"}]},
    {
        "text": "北京的华为公司",
        "entities": [{"start": 0, "end": 2, "label": "LOC"}, {"start": 3, "end": 5, "label": "ORG"}],
    },
]
DEV = [{"text": "赵六在杭州", "entities": [{"start": 0, "end": 2, "label": "PER"}]}]
TEST = [{"text": "张三在北京工作", "entities": [{"start": 0, "end": 2, "label": "PER"}]}]
LABELS = ["LOC", "ORG", "PER"]
# the prediction run's documents: (doc_id, text, predicted entities)
PREDICTED = [
    ("d1", "李四去上海出差", [Ent(0, 2, "PER", "李四", 0.9), Ent(3, 5, "ORG", "上海", 0.4)]),
    ("d2", "王强在深圳", [Ent(0, 2, "PER", "王强", 0.8), Ent(3, 5, "ORG", "深圳", 0.3)]),
    ("d3", "张三在北京工作", [Ent(0, 2, "PER", "张三", 0.9)]),  # a test-split text: never exported
    ("d4", "ABC公司 2024年", []),
]
TEXTS = {d: t for d, t, _ in PREDICTED}


def _jsonl(path: Path, records: list[dict]) -> str:
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\n", encoding="utf-8")
    return str(path)


def _fake_run(db: str, run_id: str, tmp: Path, *, dataset: str = "base", plus: dict | None = None) -> str:
    model_dir = tmp / run_id / "model"
    model_dir.mkdir(parents=True)
    cfg = json.dumps({"encoder": {"name": "enc"}, "head": {"type": "bilstm"}, "data": {"scheme": "BIOES"}})
    plus_fields = {"plus_dataset": plus["dataset"], "plus_version": plus["version"]} if plus else {}
    runs_db.create_run(
        db, run_id, dataset=dataset, dataset_version=1, config_json=cfg, run_dir=tmp, **plus_fields
    )
    runs_db.finish_run(db, run_id, status="completed", model_dir=model_dir)
    return str(model_dir)


@pytest.fixture
def db(tmp_path) -> str:
    """Dataset ``base`` (v1; its test split holds d3's text), a run ``run-m`` trained on it, and its
    prediction run ``pr-1`` over d1..d4."""
    path = str(tmp_path / "review.duckdb")
    files = {
        s: _jsonl(tmp_path / f"{s}.jsonl", r) for s, r in (("train", TRAIN), ("dev", DEV), ("test", TEST))
    }
    ingest_dataset(path, "base", files)
    model_dir = _fake_run(path, "run-m", tmp_path)
    start_prediction_run(
        path,
        "pr-1",
        model_dir=model_dir,
        run_id="run-m",
        input_kind="texts",
        input_ref="t",
        config_json=None,
        replace=True,
    )
    write_predictions(path, "pr-1", PREDICTED)
    finish_prediction_run(path, "pr-1", status="completed", seconds=1.0)
    return path


def _ev(doc: str, action: str, who: str = "ann", **fields) -> dict:
    return reviews.new_event("pr-1", doc, reviews.text_hash(TEXTS[doc]), who, action, **fields)


def _first_reviews(db: str) -> None:
    reviews.record_events(
        db,
        [
            _ev("d1", "accept", start=0, end=2, label="PER"),
            _ev("d1", "relabel", start=3, end=5, label="ORG", new_label="LOC"),
            _ev("d1", "done"),
            _ev("d2", "reject", start=3, end=5, label="ORG"),
            _ev("d2", "done"),  # PER [0, 2) left as predicted: done means the reviewer saw and kept it
            _ev("d3", "accept", start=0, end=2, label="PER"),
            _ev("d3", "done"),
            _ev("d4", "add_label", label="PRODUCT"),  # d4 is not done: not exported yet
        ],
    )


def _gold(db: str, name: str, version: int) -> dict[str, list[tuple]]:
    return {
        d.doc_id: [(e.start, e.end, e.label) for e in d.entities]
        for d in load_documents(db, name, "train", version)
    }


def _export_events(db: str, name: str, version: int) -> set[str]:
    con = duckdb.connect(db, read_only=True)
    try:
        rows = con.execute(
            "SELECT event_id FROM review_exports WHERE dataset = ? AND version = ?", [name, version]
        ).fetchall()
    finally:
        con.close()
    return {r[0] for r in rows}


def test_export_stores_the_corrected_entities_as_gold_and_leaves_test_texts_out(db):
    _first_reviews(db)
    out = export_reviews(db, "pr-1", "reviews")
    assert out["created"] and out["version"] == 1 and out["split"] == "train"
    assert _gold(db, "reviews", 1) == {"d1": [(0, 2, "PER"), (3, 5, "LOC")], "d2": [(0, 2, "PER")]}
    assert out["left_out"] == out["left_out_leak"] == 1
    leak_lines = [ln for ln in out["message"].splitlines() if "left out" in ln]
    assert leak_lines == ["1 documents left out: they are in a dev/test split of a stored dataset (d3)"]
    assert out["left_out_docs"] == [{"doc_id": "d3", "reason": "in base v1 test"}]
    # the version's events: every event of d1 and d2, and the add_label; none of d3 (left out)
    con = duckdb.connect(db, read_only=True)
    expected = {
        r[0]
        for r in con.execute(
            "SELECT event_id FROM review_events WHERE doc_id IN ('d1', 'd2') OR action = 'add_label'"
        ).fetchall()
    }
    con.close()
    assert _export_events(db, "reviews", 1) == expected and out["events"] == 6
    # the reviewer-added label is in the version's label set even before any entity uses it
    assert out["labels"] == ["LOC", "ORG", "PER", "PRODUCT"] and out["added_labels"] == ["PRODUCT"]
    stored = next(d for d in list_datasets(db) if d["name"] == "reviews")
    assert stored["format"] == "review" and stored["labels"] == out["labels"]


def test_export_again_is_nothing_new_then_the_next_version_without_duplicates(db):
    _first_reviews(db)
    first = export_reviews(db, "pr-1", "reviews")
    again = export_reviews(db, "pr-1", "reviews")
    assert not again["created"] and again["version"] == 1
    assert again["message"].startswith("nothing new: dataset 'reviews' version 1 already holds")
    # a decision on the left-out test text alone is nothing new either
    reviews.record_events(db, [_ev("d3", "relabel", who="bob", start=0, end=2, label="PER", new_label="LOC")])
    assert not export_reviews(db, "pr-1", "reviews")["created"]
    assert new_decisions(db, "pr-1", "reviews") == 3  # d3's three: reviewed, in no export
    reviews.record_events(
        db,
        [
            _ev("d4", "add", who="bob", start=0, end=5, label="PRODUCT"),
            _ev("d4", "done", who="bob"),
            _ev("d1", "reject", who="bob", start=0, end=2, label="PER"),  # a later decision wins
        ],
    )
    second = export_reviews(db, "pr-1", "reviews")
    assert second["created"] and second["version"] == 2 and second["new_events"] == 3
    # version 2 = every document reviewed so far (d1, d2, d4), each once, with its current entities
    assert _gold(db, "reviews", 2) == {
        "d1": [(3, 5, "LOC")],
        "d2": [(0, 2, "PER")],
        "d4": [(0, 5, "PRODUCT")],
    }
    assert _export_events(db, "reviews", 1) < _export_events(db, "reviews", 2)
    assert _gold(db, "reviews", 1) == {"d1": [(0, 2, "PER"), (3, 5, "LOC")], "d2": [(0, 2, "PER")]}
    assert first["version"] == 1 and not export_reviews(db, "pr-1", "reviews")["created"]


def test_export_refuses_in_one_line(db, tmp_path):
    with pytest.raises(ValueError, match="has no reviewed document to export"):
        export_reviews(db, "pr-1", "reviews")
    _first_reviews(db)
    with pytest.raises(ValueError, match="no prediction run 'pr-x'"):
        export_reviews(db, "pr-x", "reviews")
    with pytest.raises(ValueError, match="ingested from files .* give the export another --name"):
        export_reviews(db, "pr-1", "base")
    with pytest.raises(ValueError, match="dataset name must be"):
        export_reviews(db, "pr-1", "bad name")
    # into a test split the leak rule does not apply: d3 is exported too
    out = export_reviews(db, "pr-1", "heldout", split="test")
    assert out["documents"] == 3 and out["left_out"] == 0


def test_plus_training_data_unites_labels_only_when_reviewers_added_them(db, tmp_path):
    _first_reviews(db)
    reviews.record_events(db, [_ev("d4", "add", start=0, end=5, label="PRODUCT"), _ev("d4", "done")])
    export_reviews(db, "pr-1", "reviews")
    data = training_documents(db, "base", None, "reviews")
    assert data.labels == ["LOC", "ORG", "PER", "PRODUCT"] and data.plus == {
        "dataset": "reviews",
        "version": 1,
    }
    # d1 and d2 have the texts of two base train documents: the reviewed annotation replaces them
    texts = [d.text for d in data.train]
    assert len(texts) == len(set(texts)) == 4  # base: 2 replaced + 北京的华为公司; plus: d1, d2, d4
    assert [d.text for d in data.dev] == ["赵六在杭州"]
    assert any("replaced by their reviewed version" in n for n in data.notes)
    # a dataset with labels nobody added explicitly is refused, and one lacking base labels too
    other = tmp_path / "other.jsonl"
    other.write_text(
        json.dumps({"text": "某某", "entities": [{"start": 0, "end": 2, "label": "FOO"}]}) + "\n"
    )
    ingest_dataset(db, "foo", {"train": str(other)})
    with pytest.raises(ValueError, match=r"lacks labels \['LOC', 'ORG', 'PER'\]"):
        training_documents(db, "base", None, "foo")
    wide = tmp_path / "wide.jsonl"
    wide.write_text(
        json.dumps(
            {
                "text": "北京的华为公司张三某",
                "entities": [
                    {"start": 0, "end": 2, "label": "LOC"},
                    {"start": 3, "end": 5, "label": "ORG"},
                    {"start": 7, "end": 9, "label": "PER"},
                    {"start": 9, "end": 10, "label": "FOO"},
                ],
            }
        )
        + "\n",
        "utf-8",
    )
    ingest_dataset(db, "wide", {"train": str(wide)})
    with pytest.raises(ValueError, match=r"has labels \['FOO'\] .* no reviewer added explicitly"):
        training_documents(db, "base", None, "wide")


def test_plus_training_data_leaves_out_the_bases_dev_and_test_texts(db, tmp_path):
    # any dataset can be the plus one; a text of the base's test split never goes into training
    leaky = tmp_path / "leaky.jsonl"
    leaky.write_text(
        "\n".join(json.dumps(r, ensure_ascii=False) for r in TEST + TRAIN) + "\n", encoding="utf-8"
    )
    ingest_dataset(db, "leaky", {"train": str(leaky)})
    data = training_documents(db, "base", None, "leaky")
    assert "张三在北京工作" not in {d.text for d in data.train}
    assert any("1 documents of 'leaky' left out" in n for n in data.notes)


def _ids(db: str) -> list[tuple]:
    return [(h["run_id"], h["previous_run_id"], h["reason"]) for h in runs_db.promotion_history(db)]


def test_promotions_are_recorded_and_rollback_walks_back(db, tmp_path, capsys):
    for r in ("run-a", "run-b", "run-c"):
        _fake_run(db, r, tmp_path)
    runs_db.promote_run(db, "run-a")
    runs_db.promote_run(db, "run-b", reason="retrain-from-reviews", comparison={"candidate_f1": 0.5})
    assert cli.main(["promote", "run-c", "--db", db]) == 0
    assert cli.main(["promote", "--rollback", "--db", db]) == 0
    assert "run run-b is the production model again (was run-c)" in capsys.readouterr().out
    assert runs_db.production_run(db)["run_id"] == "run-b"
    assert runs_db.rollback_production(db) == ("run-b", "run-a")
    with pytest.raises(ValueError, match="no earlier production model is recorded"):
        runs_db.rollback_production(db)
    assert _ids(db) == [
        ("run-a", None, "manual"),
        ("run-b", "run-a", "retrain-from-reviews"),
        ("run-c", "run-b", "manual"),
        ("run-b", "run-c", "rollback"),
        ("run-a", "run-b", "rollback"),
    ]
    assert json.loads(runs_db.promotion_history(db)[1]["comparison"]) == {"candidate_f1": 0.5}
    assert cli.main(["promote", "--rollback", "--db", db]) == 2
    err = capsys.readouterr().err
    assert "nothing to roll back to" in err and len(err.strip().splitlines()) == 1
    assert cli.main(["promote", "--db", db]) == 2
    assert "give a RUN_ID to promote, or --rollback" in capsys.readouterr().err


def test_lineage_names_the_dataset_versions_and_review_events(db, tmp_path, capsys):
    _first_reviews(db)
    export_reviews(db, "pr-1", "reviews")
    _fake_run(db, "run-r", tmp_path, plus={"dataset": "reviews", "version": 1})
    runs_db.promote_run(db, "run-r")
    lin = model_lineage(db, "run-r")
    assert [(d["role"], d["dataset"], d["version"], d["events"]) for d in lin["datasets"]] == [
        ("base", "base", 1, 0),
        ("plus", "reviews", 1, 6),
    ]
    assert lin["datasets"][1]["pred_runs"] == ["pr-1"] and lin["datasets"][1]["reviewers"] == ["ann"]
    assert {e["doc_id"] for e in lin["events"]} == {"d1", "d2", "d4"} and lin["is_production"]
    assert cli.main(["lineage", "run-r", "--db", db, "--events"]) == 0
    out = capsys.readouterr().out
    assert "plus  reviews v1 (review export of pr-1): 6 review events by ann" in out
    assert "base  base v1 (ingested): 0 review events" in out and out.count(" -> reviews v1") == 6
    assert cli.main(["lineage", "run-zz", "--db", db]) == 2
    assert "no run 'run-zz'" in capsys.readouterr().err


def test_a_plus_run_stored_before_migration_6_keeps_its_lineage(tmp_path):
    """A file at schema 5 with a --plus run as the previous code stored it (the plus dataset version slipped
    into the run's config JSON). Migrating moves it to the typed runs.plus_dataset / plus_version: the
    lineage is what the file answered before, the "already trained on" check and --resume find the plus
    version, and the stored config is the model's configuration alone."""
    from flows.steps import _stored_run

    db = str(tmp_path / "v5.duckdb")
    con = duckdb.connect(db)
    migrate(con, MIGRATIONS[:5])
    for name, fmt in (("base", "jsonl"), ("reviews", "review")):
        con.execute(
            "INSERT INTO datasets (name, version, format, policy, untyped_label, labels, n_documents, "
            "n_entities, n_characters, n_errors, n_warnings, fingerprint) "
            "VALUES (?, 1, ?, 'repair', 'ENT', ['PER'], 1, 1, 5, 0, 0, ?)",
            [name, fmt, name],
        )
    con.execute(
        "INSERT INTO review_events (event_id, pred_run_id, doc_id, doc_hash, reviewer, action, created_at) "
        "VALUES ('ev1', 'pr-1', 'd1', 'h', 'ann', 'done', now())"
    )
    con.execute("INSERT INTO review_exports VALUES ('reviews', 1, 'ev1')")
    cfg = NERConfig.model_validate({"data": {"dataset": "base"}, "encoder": {"name": "enc"}})
    old = json.dumps({**json.loads(cfg.to_json()), "plus": {"dataset": "reviews", "version": 1}}, indent=2)
    con.execute(
        "INSERT INTO runs (run_id, dataset, dataset_version, encoder, head, scheme, config, status, run_dir, "
        "started_at) VALUES ('run-old', 'base', 1, 'enc', 'bilstm', 'BIOES', ?, 'completed', 'r', now())",
        [old],
    )
    lineage_sql = "SELECT role, dataset, version, event_id FROM v_model_lineage ORDER BY role"
    before = con.execute(lineage_sql).fetchall()
    con.close()
    assert before == [("base", "base", 1, None), ("plus", "reviews", 1, "ev1")]
    lin = model_lineage(db, "run-old")  # an older file is migrated first
    assert [(d["role"], d["dataset"], d["version"], d["events"]) for d in lin["datasets"]] == [
        ("base", "base", 1, 0),
        ("plus", "reviews", 1, 1),
    ]
    with duckdb.connect(db, read_only=True) as con:
        assert con.execute(lineage_sql).fetchall() == before
    run = runs_db.get_run(db, "run-old")
    assert (run["plus_dataset"], run["plus_version"]) == ("reviews", 1)
    assert "plus" not in json.loads(run["config"])
    assert runs_db.trained_on(db, "base", 1, "reviews", 1) == "run-old"
    assert runs_db.trained_on(db, "base", 1, "reviews", 2) is None
    _, config, plus, plus_version = _stored_run(db, "run-old")  # what --resume continues with
    assert (plus, plus_version) == ("reviews", 1) and config == cfg
    with pytest.raises(ValueError, match="both or neither"):
        runs_db.create_run(
            db, "x", dataset="base", dataset_version=1, config_json="{}", run_dir="r", plus_dataset="p"
        )


def test_review_export_command(db, capsys):
    _first_reviews(db)
    assert (
        cli.main(["review", "export", "--no-prefect", "--db", db, "--pred-run", "pr-1", "--name", "rv"]) == 0
    )
    out = capsys.readouterr().out
    summary = json.loads(out[out.index("{") :])
    assert summary["version"] == 1 and summary["documents"] == 2 and summary["left_out_leak"] == 1
    assert "1 documents left out: they are in a dev/test split" in out
    rc = cli.main(["review", "export", "--no-prefect", "--db", db, "--pred-run", "nope", "--name", "rv"])
    err = capsys.readouterr().err
    assert rc == 2 and err.strip() == (
        "ner review: error: no prediction run 'nope' in the database; newest: pr-1 (`ner runs --predictions` "
        "lists them)"
    )


def test_train_plus_refuses_differing_labels_in_one_line(db, tmp_path, tiny_encoder_dir, capsys):
    other = tmp_path / "other.jsonl"
    other.write_text(
        json.dumps({"text": "某某", "entities": [{"start": 0, "end": 2, "label": "FOO"}]}) + "\n"
    )
    ingest_dataset(db, "foo", {"train": str(other)})
    argv = ["train", "--no-prefect", "--db", db, "--dataset", "base", "--plus", "foo"]
    rc = cli.main([*argv, "--encoder", str(tiny_encoder_dir), "--runs-root", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "lacks labels ['LOC', 'ORG', 'PER']" in err
    assert not (tmp_path / "runs").exists()
    assert [r["run_id"] for r in runs_db.list_runs(db)] == ["run-m"]  # nothing half-written
    assert cli.main([*argv, "--encoder", str(tiny_encoder_dir), "--resume", "x"]) == 2
    assert "drop --plus" in capsys.readouterr().err


# ------------------------------------------------------------------------------ retrain-from-reviews (slow)
def _train_cfg(enc: Path, epochs: int, good: bool) -> dict:
    lr = (1e-3, 1e-2, 1e-1) if good else (1e-6, 1e-6, 1e-6)  # not good: learns nothing, entity F1 0
    return {
        "data": {"dataset": "small", "max_len": 48},
        "encoder": {"name": str(enc)},
        "head": {"type": "bilstm", "rnn_units": 16},
        "training": {
            "max_epochs": epochs,
            "hard_epochs": epochs,
            "batch_size": 8,
            "learning_rate": lr[0],
            "head_learning_rate": lr[1],
            "crf_learning_rate": lr[2],
            "warmup_ratio": 0.0,
            "num_threads": 1,
        },
    }


def _simulated_reviews(db: str, records: list[dict], first: int = 0) -> int:
    """A reviewer who adds the gold entities to documents predicted without any (doc ids r<first>...),
    then marks each done; returns the number of events."""
    events = []
    for i, r in enumerate(records, start=first):
        doc, h = f"r{i:03d}", reviews.text_hash(r["text"])
        for e in r["entities"]:
            span = {k: e[k] for k in ("start", "end", "label")}
            events.append(reviews.new_event("pr-s", doc, h, "sim", "add", **span))
        events.append(reviews.new_event("pr-s", doc, h, "sim", "done"))
    return reviews.record_events(db, events)


@pytest.mark.slow  # three tiny trainings (~20 s) and Prefect flow runs on 2 shared cores
def test_retrain_from_reviews_promotes_only_a_higher_f1_and_records_the_comparison(
    tmp_path, tiny_encoder_dir
):
    from flows import steps
    from flows.review import export_reviews_flow, retrain_from_reviews_flow

    db = str(tmp_path / "loop.duckdb")
    train = [json.loads(x) for x in (SAMPLE / "train.jsonl").read_text(encoding="utf-8").splitlines()]
    test = (SAMPLE / "test.jsonl").read_text(encoding="utf-8").splitlines()
    files = {
        "train": _jsonl(tmp_path / "train.jsonl", train[:100]),
        "dev": _jsonl(tmp_path / "dev.jsonl", [json.loads(x) for x in test[:20]]),
        "test": _jsonl(tmp_path / "test.jsonl", [json.loads(x) for x in test[20:50]]),
    }
    ingest_dataset(db, "small", files)
    runs_root = str(tmp_path / "runs")
    weak = steps.train_step(db, NERConfig.model_validate(_train_cfg(tiny_encoder_dir, 1, False)), runs_root)
    runs_db.promote_run(db, weak.run_id)
    # a prediction run over 60 more training texts, predicted without entities, that a reviewer corrects
    start_prediction_run(
        db,
        "pr-s",
        model_dir=weak.model_dir,
        run_id=weak.run_id,
        input_kind="texts",
        input_ref="s",
        config_json=None,
        replace=True,
    )
    pool = train[100:160]
    write_predictions(db, "pr-s", [(f"r{i:03d}", r["text"], []) for i, r in enumerate(pool)])
    _simulated_reviews(db, pool[:40])

    good = NERConfig.model_validate(_train_cfg(tiny_encoder_dir, 6, True))
    first = retrain_from_reviews_flow(db, good, name="reviews", pred_run_id="pr-s", runs_root=runs_root)
    c = first.comparison
    assert first.status == "compared" and first.export.version == 1 and first.export.documents == 40
    assert c.promoted and c.production_run_id == weak.run_id and c.production_f1 == 0.0 < c.candidate_f1
    assert (c.dataset, c.dataset_version, c.split) == ("small", 1, "test")
    assert runs_db.production_run(db)["run_id"] == first.train.run_id == c.candidate_run_id
    last = runs_db.promotion_history(db)[-1]
    assert (last["run_id"], last["previous_run_id"], last["reason"]) == (
        first.train.run_id,
        weak.run_id,
        "retrain-from-reviews",
    )
    assert json.loads(last["comparison"]) == c.model_dump()
    lin = model_lineage(db, first.train.run_id)
    assert [(d["role"], d["dataset"], d["version"]) for d in lin["datasets"]] == [
        ("base", "small", 1),
        ("plus", "reviews", 1),
    ]
    assert len(lin["events"]) == sum(len(r["entities"]) + 1 for r in pool[:40])

    # no new review: the export is unchanged and that data was trained on already
    skipped = retrain_from_reviews_flow(db, good, name="reviews", pred_run_id="pr-s")
    assert skipped.status == "skipped" and f"run {first.train.run_id} already trained" in skipped.message
    # fewer new decisions than asked: nothing is exported or trained
    n_new = _simulated_reviews(db, pool[40:], first=40)
    few = retrain_from_reviews_flow(db, good, name="reviews", pred_run_id="pr-s", min_new_decisions=n_new + 1)
    assert few.status == "skipped" and few.new_decisions == n_new and few.export is None

    # a worse candidate (learns nothing) is compared on the same test split version and not promoted
    n_promotions = len(runs_db.promotion_history(db))
    bad = NERConfig.model_validate(_train_cfg(tiny_encoder_dir, 1, False))
    # (pred_run_id unset: the prediction run reviewed last)
    second = retrain_from_reviews_flow(db, bad, name="reviews", runs_root=runs_root, min_new_decisions=n_new)
    c2 = second.comparison
    assert second.export.version == 2 and second.export.documents == 60 and second.new_decisions == n_new
    assert not c2.promoted and c2.candidate_f1 < c2.production_f1 == c.candidate_f1
    assert c2.dataset_version == 1 and c2.production_run_id == first.train.run_id
    assert "not higher than" in c2.reason and len(runs_db.promotion_history(db)) == n_promotions
    assert runs_db.production_run(db)["run_id"] == first.train.run_id
    # the export alone, as a flow: nothing new now
    again = export_reviews_flow(db, "pr-s", "reviews")
    assert not again.created and again.version == 2


def test_train_plus_from_the_command_line_records_both_dataset_versions(
    db, tmp_path, tiny_encoder_dir, capsys
):
    _first_reviews(db)
    reviews.record_events(db, [_ev("d4", "add", start=0, end=5, label="PRODUCT"), _ev("d4", "done")])
    export_reviews(db, "pr-1", "reviews")
    argv = ["train", "--no-prefect", "--db", db, "--dataset", "base", "--plus", "reviews"]
    small = ["-max_epochs", "1", "-max_len", "16", "-rnn_units", "4", "-batch_size", "8"]
    rc = cli.main([*argv, *small, "--encoder", str(tiny_encoder_dir), "--runs-root", str(tmp_path / "runs")])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "train: 1 documents of 'base' v1 + 3 of 'reviews' v1" in out
    run_id = json.loads(out[out.index("{\n") :])["run_id"]
    run = runs_db.get_run(db, run_id)
    assert (run["dataset"], run["dataset_version"]) == ("base", 1)
    assert (run["plus_dataset"], run["plus_version"]) == ("reviews", 1)  # typed, what --resume reads back
    assert "plus" not in json.loads(run["config"])  # the config is the model's configuration alone
    assert NERConfig.model_validate_json(run["config"]).data.dataset == "base"
    labels = json.loads((Path(run["model_dir"]) / "labels.json").read_text(encoding="utf-8"))["labels"]
    assert labels == ["LOC", "ORG", "PER", "PRODUCT"]  # the reviewer-added label is learnt too
    assert [d["dataset"] for d in model_lineage(db, run_id)["datasets"]] == ["base", "reviews"]


def test_a_text_that_enters_a_test_split_later_leaves_the_next_export(db, tmp_path):
    _first_reviews(db)
    assert set(_gold(db, "reviews", export_reviews(db, "pr-1", "reviews")["version"])) == {"d1", "d2"}
    later = {
        "test": _jsonl(tmp_path / "later-test.jsonl", [TRAIN[0]]),
        "train": _jsonl(tmp_path / "t.jsonl", TEST),
    }
    ingest_dataset(db, "later", later)  # d1's text is now in a test split
    out = export_reviews(db, "pr-1", "reviews")
    assert out["created"] and out["version"] == 2 and set(_gold(db, "reviews", 2)) == {"d2"}
    assert {d["doc_id"] for d in out["left_out_docs"]} == {"d1", "d3"} and out["left_out_leak"] == 2
    # another dataset that holds d3's test text too changes nothing exported: no new export version
    ingest_dataset(db, "aaa", {"test": _jsonl(tmp_path / "aaa-test.jsonl", TEST)})
    again = export_reviews(db, "pr-1", "reviews")
    assert not again["created"] and again["version"] == 2
