"""Review storage (storage/reviews.py, migration 4): append-only, idempotent review events; the current
entities after the latest decision; reviewer disagreements; the review queue's orders; refusals that write
nothing; code-point offsets; the spool with a real second process holding the DuckDB lock; reviewed
prediction runs never replaced; a database written by older code migrates."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from datetime import datetime, timedelta
from pathlib import Path

import duckdb
import pytest

from ner_core.inference.tagger import PredictedEntity
from storage import reviews
from storage.db import open_db
from storage.predictions import PredictionRunWriter, write_predictions
from storage.reviews import ReviewSpool, new_event, record_events, text_hash
from storage.schema import SCHEMA_VERSION

T0 = datetime(2026, 1, 1, 9, 0, 0)


def _at(minutes: int) -> str:
    return (T0 + timedelta(minutes=minutes)).isoformat()


def _write_run(db, run: str, docs: list[tuple], *, input_kind="texts", input_ref="x", replace=True) -> str:
    """Store a prediction run: ``docs`` = [(doc_id, text, [(start, end, label, confidence)], uncertainty)];
    returns the pred_run_id the writer used."""
    rows = [
        (d, t, [PredictedEntity(s, e, lb, t[s:e], c) for s, e, lb, c in ents], u) for d, t, ents, u in docs
    ]
    with PredictionRunWriter(
        db, run, model_dir="m", run_id=None, input_kind=input_kind, input_ref=input_ref, replace=replace
    ) as w:
        w.write(rows)
    return w.pred_run_id


TEXT = "张三在北京的华为工作"  # 张三 PER [0,2), 北京 LOC [3,5), 华为 ORG [6,8)
ENTS = [(0, 2, "PER", 0.9), (3, 5, "LOC", 0.6), (6, 8, "ORG", 0.3)]


@pytest.fixture(scope="module")
def _db_template(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("reviews") / "template.duckdb"
    _write_run(str(path), "p1", [("d1", TEXT, ENTS, 3.0), ("d2", "李四去了上海", [(0, 2, "PER", 0.8)], 1.0)])
    return path


@pytest.fixture
def db(tmp_path, _db_template) -> str:
    """A database with prediction run p1 (d1: TEXT with ENTS, d2), no review events: a copy of one file."""
    path = tmp_path / "r.duckdb"
    shutil.copyfile(_db_template, path)
    return str(path)


def _ev(action, doc="d1", text=TEXT, run="p1", reviewer="ann", at=0, **kw) -> dict:
    e = new_event(run, doc, text_hash(text), reviewer, action, **kw)
    e["created_at"] = _at(at)
    return e


def _n_events(db) -> int:
    with open_db(db, read_only=True) as con:
        return con.execute("SELECT count(*) FROM review_events").fetchone()[0]


def _current(db, doc="d1", run="p1") -> list[tuple]:
    return [(e["start"], e["end"], e["label"], e["state"]) for e in reviews.current_entities(db, run, doc)]


# ----------------------------------------------------------------------------------------- events
def test_events_are_append_only_and_idempotent_on_event_id(db):
    a = _ev("accept", start=0, end=2, label="PER")
    b = _ev("reject", start=6, end=8, label="ORG", at=1)
    assert record_events(db, [a, b]) == 2
    assert record_events(db, [a, b]) == 0  # a retried write: nothing new
    assert record_events(db, [dict(a), b, a]) == 0 and _n_events(db) == 2
    c = _ev("add", start=6, end=8, label="ORG", reviewer=" bob ")
    c["created_at"] = "2026-01-01T10:02:00+01:00"  # a zone: stored in UTC, as every timestamp
    assert record_events(db, [c, c]) == 1 and _n_events(db) == 3  # the same id twice in one batch: one row
    with open_db(db, read_only=True) as con:
        rows = con.execute(
            "SELECT event_id, reviewer, created_at FROM review_events ORDER BY created_at"
        ).fetchall()
    assert [r[0] for r in rows] == [a["event_id"], b["event_id"], c["event_id"]]
    assert rows[2][1] == "bob" and rows[0][2] == T0  # the decision's own time is kept
    assert rows[2][2] == T0 + timedelta(minutes=2)


def test_the_later_decision_wins_and_both_events_stay(db):
    record_events(db, [_ev("accept", reviewer="ann", at=1, start=3, end=5, label="LOC")])
    record_events(db, [_ev("relabel", reviewer="bob", at=2, start=3, end=5, label="LOC", new_label="ORG")])
    assert (3, 5, "ORG", "corrected") in _current(db)
    # recorded later but decided earlier (a spooled decision): it does not win
    record_events(db, [_ev("reject", reviewer="cat", at=0, start=3, end=5, label="LOC")])
    assert (3, 5, "ORG", "corrected") in _current(db)
    record_events(db, [_ev("reject", reviewer="ann", at=3, start=3, end=5, label="LOC")])
    assert [c for c in _current(db) if c[0] == 3] == []
    doc = reviews.document_for_review(db, "p1", "d1")
    assert [(e["reviewer"], e["action"]) for e in doc["events"]] == [
        ("cat", "reject"),
        ("ann", "accept"),
        ("bob", "relabel"),
        ("ann", "reject"),
    ]
    assert [(r["start"], r["label"], r["reviewer"]) for r in doc["rejected"]] == [(3, "LOC", "ann")]


def test_predicted_accepted_corrected_and_added_stay_distinct(db):
    record_events(
        db,
        [
            _ev("accept", start=0, end=2, label="PER"),
            _ev("adjust", start=3, end=5, label="LOC", new_start=3, new_end=4, at=1),
            _ev("reject", start=6, end=8, label="ORG", at=2),
            _ev("add", start=6, end=10, label="ORG", at=3),
            _ev("done", at=4),
        ],
    )
    assert _current(db) == [
        (0, 2, "PER", "accepted"),
        (3, 4, "LOC", "corrected"),
        (6, 10, "ORG", "added"),
    ]
    assert _current(db, "d2") == [(0, 2, "PER", "predicted")]  # a pre-annotation is never a reviewed one
    doc = reviews.document_for_review(db, "p1", "d1")
    assert doc["reviewed"] and [e["text"] for e in doc["entities"]] == ["张三", "北", "华为工作"]
    assert doc["entities"][1]["key_start"] == 3 and doc["entities"][1]["key_end"] == 5
    assert not reviews.document_for_review(db, "p1", "d2")["reviewed"]


def test_undo_cancels_the_event_it_names(db):
    rej = _ev("reject", start=0, end=2, label="PER")
    record_events(db, [rej])
    assert (0, 2, "PER", "predicted") not in _current(db)
    undo = _ev("undo", at=1, ref_event_id=rej["event_id"])
    record_events(db, [undo])
    assert (0, 2, "PER", "predicted") in _current(db)
    with pytest.raises(ValueError, match="an undo cannot be undone"):
        record_events(db, [_ev("undo", at=2, ref_event_id=undo["event_id"])])
    events = reviews.document_for_review(db, "p1", "d1")["events"]
    assert [(e["action"], e["undone"]) for e in events] == [("reject", True), ("undo", False)]


def test_disagreement_between_reviewers_is_listed(db):
    record_events(
        db,
        [
            _ev("accept", reviewer="ann", at=1, start=0, end=2, label="PER"),
            _ev("accept", reviewer="bob", at=2, start=0, end=2, label="PER"),  # agree: not listed
            _ev("accept", reviewer="ann", at=3, start=3, end=5, label="LOC"),
            _ev("relabel", reviewer="bob", at=4, start=3, end=5, label="LOC", new_label="ORG"),
            _ev("reject", reviewer="ann", at=5, start=6, end=8, label="ORG"),
            _ev("reject", reviewer="bob", at=6, start=6, end=8, label="ORG"),
        ],
    )
    rows = reviews.document_for_review(db, "p1", "d1")["disagreements"]
    assert [(r["start"], r["reviewer"], r["outcome"]) for r in rows] == [
        (3, "ann", "LOC[3,5)"),
        (3, "bob", "ORG[3,5)"),
    ]
    # ann changes her mind: no disagreement left
    record_events(db, [_ev("relabel", reviewer="ann", at=7, start=3, end=5, label="LOC", new_label="ORG")])
    assert reviews.document_for_review(db, "p1", "d1")["disagreements"] == []


# ----------------------------------------------------------------------------------------- the queue
def _queue_db(tmp_path) -> str:
    path = str(tmp_path / "q.duckdb")
    docs = [
        ("a", "甲公司发布了财报。", [(0, 3, "ORG", 0.5)], 9.0),
        ("a2", "甲公司 发布了财报!", [(0, 3, "ORG", 0.5)], 8.5),  # near-duplicate of a
        ("a3", "甲公司发布了财报2024", [(0, 3, "ORG", 0.5)], 8.0),  # near-duplicate of a
        ("b", "乙银行在上海开业", [(0, 3, "ORG", 0.9), (4, 6, "LOC", 0.9)], 5.0),
        ("c", "丙先生到了北京", [(0, 2, "PER", 0.7)], 1.0),
        ("d", "没有实体的句子", [], 0.2),
    ]
    _write_run(path, "p", docs)
    # the same documents written by older code: no uncertainty stored
    _write_run(path, "old", [(d, t, e, None) for d, t, e, _ in docs], input_ref="y")
    # a second model: disagrees on b (label) and c (span), agrees elsewhere
    other = {"b": [(0, 3, "LOC", 0.9), (4, 6, "LOC", 0.9)], "c": [(0, 3, "PER", 0.7)]}
    _write_run(path, "q", [(d, t, other.get(d, e), u) for d, t, e, u in docs], input_ref="z")
    return path


def _ids(rows) -> list[str]:
    return [r["doc_id"] for r in rows]


def test_queue_orders_and_reviewed_documents_leave_it(tmp_path):
    db = _queue_db(tmp_path)
    queue = reviews.review_queue(db, "p", "uncertain")
    # the most uncertain first; the near-duplicates of a wait behind every other text
    assert _ids(queue) == ["a", "b", "c", "d", "a2", "a3"]
    assert [r["near_duplicate"] for r in queue] == [False] * 4 + [True] * 2
    assert (
        queue[0]["uncertainty"] == 9.0
        and queue[0]["n_entities"] == 1
        and queue[0]["preview"] == "甲公司发布了财报。"
    )
    # rows without an uncertainty (older code): by their lowest entity confidence, documents without any last
    assert _ids(reviews.review_queue(db, "old", "uncertain")) == ["a", "c", "b", "d", "a2", "a3"]
    assert _ids(reviews.review_queue(db, "p", "uncertain", limit=2)) == ["a", "b"]
    dis = reviews.review_queue(db, "p", "disagree", compare_run="q")
    assert _ids(dis) == ["b", "c"] and [r["n_disagreements"] for r in dis] == [2, 2]
    shuffled = _ids(reviews.review_queue(db, "p", "random", seed=3))
    assert sorted(shuffled) == sorted(_ids(queue)) and shuffled == _ids(
        reviews.review_queue(db, "p", "random", seed=3)
    )
    assert any(_ids(reviews.review_queue(db, "p", "random", seed=s)) != shuffled for s in range(4, 9))
    assert _ids(reviews.review_queue(db, "p", "search", search="财报")) == ["a", "a2", "a3"]
    assert reviews.review_progress(db, "p") == {"reviewed": 0, "queued": 6, "skipped": 0, "total": 6}

    text_a = "甲公司发布了财报。"
    record_events(
        db, [_ev("accept", "a", text_a, "p", start=0, end=3, label="ORG"), _ev("done", "a", text_a, "p")]
    )
    record_events(db, [_ev("skip", "b", "乙银行在上海开业", "p")])
    assert _ids(reviews.review_queue(db, "p", "uncertain")) == [
        "a2",
        "c",
        "d",
        "a3",
        "b",
    ]  # a2 now leads its group
    assert "a" not in _ids(reviews.review_queue(db, "p", "search", search="财报"))
    assert _ids(reviews.review_queue(db, "p", "disagree", compare_run="q")) == ["c", "b"]  # skipped: last
    assert reviews.review_progress(db, "p") == {"reviewed": 1, "queued": 5, "skipped": 1, "total": 6}
    assert _ids(reviews.review_queue(db, "old", "uncertain"))[0] == "a"  # another run: its own reviews


def test_the_per_character_order_does_not_put_the_longest_document_first(tmp_path):
    """A summed entropy grows with the text: a long, mostly sure document outranks short, unsure ones."""
    db = str(tmp_path / "len.duckdb")
    long_text = "甲公司发布了财报。" * 200  # 1,800 characters, summed uncertainty 20 (0.011 per character)
    docs = [
        ("long", long_text, [(0, 3, "ORG", 0.9)], 20.0),
        ("short", "乙银行在上海开业", [(0, 3, "ORG", 0.5)], 4.0),  # 8 characters: 0.5 per character
        ("mid", "丙先生到了北京。" * 4, [(0, 2, "PER", 0.7)], 6.0),  # 32 characters: 0.19
        ("none", "丁没有熵", [], None),
    ]
    _write_run(db, "p", docs)
    assert _ids(reviews.review_queue(db, "p", "uncertain")) == ["long", "mid", "short", "none"]
    rows = reviews.review_queue(db, "p", "uncertain_per_char")
    assert _ids(rows) == ["short", "mid", "long", "none"]
    assert [r["n_chars"] for r in rows] == [8, 32, 1800, 4]
    assert rows[0]["uncertainty_per_char"] == pytest.approx(0.5) and rows[-1]["uncertainty_per_char"] is None


def test_reviewed_documents_are_listed_latest_first_and_an_undone_done_leaves_the_list(db):
    assert reviews.reviewed_documents(db, "p1") == []
    d2 = "李四去了上海"
    first, second = _ev("done", "d1", at=1), _ev("done", "d2", d2, at=2)
    record_events(db, [first, second])
    rows = reviews.reviewed_documents(db, "p1")
    assert [(r["doc_id"], r["n_chars"], r["reviewers"]) for r in rows] == [
        ("d2", 6, "ann"),
        ("d1", 10, "ann"),
    ]
    assert rows[1]["preview"] == TEXT and reviews.reviewed_documents(db, "p1", limit=1)[0]["doc_id"] == "d2"
    record_events(db, [_ev("undo", "d2", d2, at=3, ref_event_id=second["event_id"])])
    assert [r["doc_id"] for r in reviews.reviewed_documents(db, "p1")] == ["d1"]
    with pytest.raises(ValueError, match="expected limit >= 1"):
        reviews.reviewed_documents(db, "p1", limit=0)


def _evaluated_db(tmp_path) -> tuple[str, object]:
    """A stored dataset ``toy`` and an evaluation of its test split with two sentences in error (no model:
    the predictions are written into the report as an evaluation would)."""
    from ner_core.documents import Entity
    from ner_core.metrics import evaluate
    from storage.datasets import ingest_dataset, load_documents
    from storage.evaluations import save_evaluation

    db = str(tmp_path / "e.duckdb")
    files = {}
    for split, rows in {
        "train": [("张三在北京", [(0, 2, "PER")])],
        "test": [("李四在上海", [(0, 2, "PER"), (3, 5, "LOC")]), ("王五去广州", [(0, 2, "PER")]), ("好", [])],
    }.items():
        files[split] = tmp_path / f"{split}.jsonl"
        files[split].write_text(
            "".join(
                json.dumps({"text": t, "entities": [{"start": a, "end": b, "label": c} for a, b, c in e]})
                + "\n"
                for t, e in rows
            ),
            encoding="utf-8",
        )
    ingest_dataset(db, "toy", files)
    gold = load_documents(db, "toy", "test")
    pred = {
        "李四在上海": [
            Entity(start=0, end=2, label="PER"),
            Entity(start=3, end=5, label="ORG"),
        ],  # type error
        "王五去广州": [Entity(start=0, end=3, label="PER")],  # boundary error
        "好": [],
    }
    report = evaluate(gold, [pred[d.text] for d in gold])
    save_evaluation(db, "ev1", report, model_dir="m", dataset="toy", split="test", dataset_version=1)
    return db, report


def test_an_evaluation_is_reviewed_through_a_run_made_from_its_report(tmp_path):
    from storage.evaluations import save_evaluation

    db, report = _evaluated_db(tmp_path)
    run = reviews.evaluation_review_run(db, "ev1")
    assert run == "eval-ev1"
    assert reviews.evaluation_review_run(db, "ev1") == run  # found again, not written again
    with open_db(db, read_only=True) as con:
        assert con.execute("SELECT count(*) FROM prediction_runs").fetchone()[0] == 1
        kind, ref = con.execute("SELECT input_kind, input_ref FROM prediction_runs").fetchone()
    assert (kind, ref) == ("dataset", "toy/test")
    errors = [s.doc_id for s in report.error_sentences]
    assert len(errors) == 2 and [r["doc_id"] for r in reviews.review_queue(db, run, "random")] != []
    doc = reviews.document_for_review(db, run, errors[0])
    assert doc["text"] == "李四在上海" and not doc["changed"]
    assert [(e["start"], e["end"], e["label"]) for e in doc["predicted"]] == [(0, 2, "PER"), (3, 5, "ORG")]
    assert doc["labels"] == ["LOC", "ORG", "PER"]  # no training run stored: the dataset's and predicted
    fix = new_event(run, errors[0], text_hash("李四在上海"), "ann", "relabel", start=3, end=5, label="ORG")
    fix["new_label"] = "PER"
    assert record_events(db, [fix]) == 1

    save_evaluation(db, "ev1", report, model_dir="m", dataset="toy", split="test", dataset_version=1)
    again = reviews.evaluation_review_run(db, "ev1")  # a new report: the reviewed run stays as it is
    assert again == "eval-ev1-r2" and reviews.evaluation_review_run(db, "ev1") == again
    assert reviews.current_entities(db, run, errors[0])[1]["state"] == "corrected"
    with pytest.raises(KeyError, match="no evaluation 'ev9'"):
        reviews.evaluation_review_run(db, "ev9")


def test_an_evaluation_without_errors_or_with_a_broken_report_is_refused_in_one_line(tmp_path):
    db, report = _evaluated_db(tmp_path)
    with open_db(db) as con:
        con.execute(
            "UPDATE evaluations SET report = ?",
            [report.model_copy(update={"error_sentences": []}).model_dump_json()],
        )
    with pytest.raises(ValueError, match="stored no sentence with errors"):
        reviews.evaluation_review_run(db, "ev1")
    bad = json.loads(report.model_dump_json())
    bad["error_sentences"][0]["pred"] = [{"start": 0, "end": 99, "label": "PER"}]
    with open_db(db) as con:
        con.execute("UPDATE evaluations SET report = ?", [json.dumps(bad)])
    with pytest.raises(ValueError, match="outside its 5 characters") as err:
        reviews.evaluation_review_run(db, "ev1")
    assert "\n" not in str(err.value)
    bad["error_sentences"][0]["pred"] = [{"start": 3, "end": 1, "label": "PER"}]
    with open_db(db) as con:
        con.execute("UPDATE evaluations SET report = ?", [json.dumps(bad)])
    with pytest.raises(ValueError, match=r"error sentence 1: pred\.0"):
        reviews.evaluation_review_run(db, "ev1")


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"order": "best"}, "order must be one of uncertain, uncertain_per_char, disagree, random, search"),
        ({"order": "disagree"}, "needs compare_run"),
        ({"order": "search", "search": " "}, "needs a non-empty search text"),
        ({"order": "uncertain", "limit": 0}, "expected limit >= 1"),
    ],
)
def test_queue_rejects_bad_arguments(db, kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        reviews.review_queue(db, "p1", **kwargs)


def test_identical_mentions_in_unreviewed_documents(tmp_path):
    db = str(tmp_path / "m.duckdb")
    docs = [
        ("x1", "华为发布新机", [(0, 2, "ORG", 0.9)], 1.0),
        ("x2", "我买了华为手机", [(3, 5, "ORG", 0.9)], 1.0),
        ("x3", "华为在深圳", [(0, 2, "LOC", 0.9)], 1.0),
        ("x4", "华为很大", [(0, 2, "ORG", 0.9)], 1.0),
    ]
    _write_run(db, "p", docs)
    record_events(db, [_ev("done", "x4", "华为很大", "p")])
    rows = reviews.identical_mentions(db, "p", "华为", "ORG")
    assert [(r["doc_id"], r["key_start"], r["key_label"]) for r in rows] == [
        ("x1", 0, "ORG"),
        ("x2", 3, "ORG"),
    ]
    assert rows[1]["doc_hash"] == text_hash("我买了华为手机")
    assert [
        r["doc_id"] for r in reviews.identical_mentions(db, "p", "华为", None, include_reviewed=True)
    ] == [
        "x1",
        "x2",
        "x3",
        "x4",
    ]
    # applying a relabel to every identical mention
    events = [
        _ev(
            "relabel",
            r["doc_id"],
            dict((d, t) for d, t, *_ in docs)[r["doc_id"]],
            "p",
            start=r["key_start"],
            end=r["key_end"],
            label=r["key_label"],
            new_label="LOC",
        )
        for r in rows
    ]
    assert record_events(db, events) == 2
    assert reviews.identical_mentions(db, "p", "华为", "ORG") == []


# ----------------------------------------------------------------------------------------- refusals
def _one_line_refusal(db, events, needle):
    before = _n_events(db)
    with pytest.raises(ValueError) as err:
        record_events(db, events)
    assert needle in str(err.value) and "\n" not in str(err.value), str(err.value)
    assert _n_events(db) == before  # nothing half-written
    return str(err.value)


def test_a_decision_on_a_document_changed_by_a_later_ingest_is_refused(tmp_path):
    from storage.datasets import ingest_dataset, load_documents

    db = str(tmp_path / "c.duckdb")
    train, dev = tmp_path / "train.jsonl", tmp_path / "dev.jsonl"
    train.write_text(json.dumps({"text": "张三在北京", "entities": []}, ensure_ascii=False) + "\n", "utf-8")
    dev.write_text(json.dumps({"text": "李四在广州", "entities": []}, ensure_ascii=False) + "\n", "utf-8")
    ingest_dataset(db, "toy", {"train": train, "dev": dev})
    docs = load_documents(db, "toy")
    _write_run(
        db,
        "p",
        [(d.doc_id, d.text, [(0, 2, "PER", 0.9)], 1.0) for d in docs],
        input_kind="dataset",
        input_ref="toy/*",
    )
    dev.write_text(json.dumps({"text": "李四去广州", "entities": []}, ensure_ascii=False) + "\n", "utf-8")
    assert ingest_dataset(db, "toy", {"train": train, "dev": dev}).version == 2
    seen = reviews.document_for_review(db, "p", "dev:1")
    assert seen["text"] == "李四在广州" and "changed since it was predicted" in seen["changed"]
    ok = _ev("accept", "train:1", "张三在北京", "p", start=0, end=2, label="PER")
    stale = _ev("accept", "dev:1", "李四在广州", "p", at=1, start=0, end=2, label="PER")
    msg = _one_line_refusal(db, [ok, stale], "changed since it was predicted")
    assert msg.startswith("review event 2 (accept on document 'dev:1'") and "version 2" in msg
    assert record_events(db, [ok]) == 1  # the unchanged document takes decisions


def test_a_decision_on_another_text_than_the_stored_one_is_refused(db):
    _one_line_refusal(db, [_ev("accept", text=TEXT + "。", start=0, end=2, label="PER")], "doc_hash mismatch")


def test_overlapping_added_spans_are_refused(db):
    first = _ev("reject", start=6, end=8, label="ORG")
    add1 = _ev("add", at=1, start=6, end=10, label="ORG")
    add2 = _ev("add", at=2, start=8, end=10, label="LOC")
    msg = _one_line_refusal(db, [first, add1, add2], "overlaps the current entity ORG [6, 10)")
    assert msg.startswith("review event 3 (add")
    _one_line_refusal(
        db, [_ev("add", start=1, end=4, label="LOC")], "reject or adjust it first"
    )  # vs predicted
    assert record_events(db, [first, add1]) == 2


def test_an_empty_reviewer_is_refused(db):
    _one_line_refusal(
        db, [_ev("accept", reviewer="  ", start=0, end=2, label="PER")], "reviewer's name is empty"
    )
    with pytest.raises(ValueError, match="reviewer's name is empty"):
        ReviewSpool(Path(db).with_suffix(".spool")).add(_ev("done", reviewer=""))


@pytest.mark.parametrize(
    "event, needle",
    [
        (dict(action="accept", start=0, end=3, label="PER"), "no entity PER [0, 3)"),
        (
            dict(action="relabel", start=0, end=2, label="PER", new_label="GPE"),
            "label 'GPE' is not in the label set",
        ),
        (
            dict(action="add", start=8, end=12, label="ORG"),
            "is not a non-empty span of the 10-character text",
        ),
        (dict(action="adjust", start=0, end=2, label="PER"), "adjust needs new_start and new_end"),
        (dict(action="approve"), "action must be one of"),
        (dict(action="accept", start="0", end=2, label="PER"), "start must be an integer"),
        (dict(action="done", doc_id="nope"), "has no document 'nope'"),
    ],
)
def test_bad_events_are_refused_in_one_line(db, event, needle):
    base = _ev("done")
    for k in ("start", "end", "label", "new_start", "new_end", "new_label"):
        base.pop(k, None)
    _one_line_refusal(db, [{**base, **event}], needle)


def test_a_new_label_is_an_explicit_event(db):
    _one_line_refusal(
        db, [_ev("add", start=9, end=10, label="PRODUCT")], "add it first with an add_label event"
    )
    assert (
        record_events(
            db, [_ev("add_label", label="PRODUCT"), _ev("add", at=1, start=9, end=10, label="PRODUCT")]
        )
        == 2
    )
    assert reviews.review_labels(db, "p1") == {"model": ["LOC", "ORG", "PER"], "added": ["PRODUCT"]}


# ----------------------------------------------------------------------------------------- offsets
def test_offsets_are_code_points_after_an_emoji(tmp_path):
    """An emoji (and a ZWJ family: 5 code points, 8 UTF-16 units) before the entities: stored spans are
    Python code-point offsets and slice the right characters, in storage and in the view's mention."""
    db = str(tmp_path / "e.duckdb")
    text = "😀👩‍👩‍👧 张三在Café北京"
    s_per, s_loc = text.index("张三"), text.index("北京")
    assert (s_per, len(text[:s_per].encode("utf-16-le")) // 2) == (7, 11)  # browsers would count 11
    _write_run(db, "p", [("e", text, [(s_per, s_per + 2, "PER", 0.9)], 1.0)])
    add = _ev("add", "e", text, "p", at=1, start=s_loc, end=s_loc + 2, label="LOC")
    record_events(db, [_ev("add_label", "e", text, "p", label="LOC"), add])
    rows = reviews.current_entities(db, "p", "e")
    assert [(r["text"], text[r["start"] : r["end"]], r["state"]) for r in rows] == [
        ("张三", "张三", "predicted"),
        ("北京", "北京", "added"),
    ]
    with open_db(db, read_only=True) as con:
        assert con.execute(
            'SELECT "start", "end" FROM review_events WHERE action = ?', ["add"]
        ).fetchone() == (
            s_loc,
            s_loc + 2,
        )


# ----------------------------------------------------------------------------------------- the spool
_HOLDER = """
import sys, time, duckdb
con = duckdb.connect(sys.argv[1])  # read-write: DuckDB's file lock keeps every other process out
con.execute("SELECT count(*) FROM review_events").fetchone()
print("holding", flush=True)
time.sleep(60)
"""


def test_the_spool_keeps_decisions_while_another_process_holds_the_database(db, tmp_path):
    spool_path = tmp_path / "spool" / "ann.jsonl"
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(_HOLDER), db], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "holding"
        spool = ReviewSpool(spool_path)
        decisions = [
            _ev("accept", start=0, end=2, label="PER"),
            _ev("relabel", at=1, start=3, end=5, label="LOC", new_label="ORG"),
            _ev("done", at=2),
        ]
        assert spool.submit(db, decisions[:2], wait_s=0.2) == (0, 2)
        assert spool.submit(db, decisions[2], wait_s=0.2) == (0, 3)
        assert spool.pending() == 3
        # a page reload / a restarted dashboard: a new spool object on the same file sees them all
        again = ReviewSpool(spool_path)
        assert again.pending() == 3 and [e["event_id"] for e in again.events()] == [
            d["event_id"] for d in decisions
        ]
        assert again.flush(db, wait_s=0.2) == (0, 3)
    finally:
        holder.kill()
        holder.wait()
    assert again.flush(db) == (3, 0) and again.pending() == 0
    assert again.flush(db) == (0, 0)
    with open_db(db, read_only=True) as con:
        stored = con.execute("SELECT event_id, count(*) FROM review_events GROUP BY event_id").fetchall()
    assert sorted(stored) == sorted((d["event_id"], 1) for d in decisions)  # each exactly once
    assert _current(db) == [(0, 2, "PER", "accepted"), (3, 5, "ORG", "corrected"), (6, 8, "ORG", "predicted")]


def test_a_flush_interrupted_after_the_commit_never_duplicates(db, tmp_path, monkeypatch):
    spool = ReviewSpool(tmp_path / "s.jsonl")
    spool.add([_ev("accept", start=0, end=2, label="PER"), _ev("done", at=1)])
    monkeypatch.setattr(
        ReviewSpool, "_rewrite", lambda self, rows: (_ for _ in ()).throw(OSError("disk full"))
    )
    with pytest.raises(OSError):
        spool.flush(db)  # the events are stored, the spool still lists them
    monkeypatch.undo()
    assert spool.pending() == 2 and _n_events(db) == 2
    assert spool.flush(db) == (0, 0) and _n_events(db) == 2


def test_a_refused_spooled_event_is_set_aside_with_its_reason(db, tmp_path):
    spool = ReviewSpool(tmp_path / "s.jsonl")
    good = _ev("accept", start=0, end=2, label="PER")
    bad = _ev("accept", at=1, text="另一个文本", start=3, end=5, label="LOC")
    assert spool.submit(db, [bad, good]) == (1, 0)
    (refused,) = spool.refused()
    assert refused["event_id"] == bad["event_id"] and "doc_hash mismatch" in refused["refused_because"]


# ----------------------------------------------------------------------------------------- re-runs
def test_a_rerun_of_a_reviewed_prediction_run_makes_a_new_run_and_keeps_the_old_rows(db):
    record_events(db, [_ev("relabel", start=3, end=5, label="LOC", new_label="ORG")])
    changed = [("d1", TEXT, [(0, 3, "PER", 0.5)], 2.0), ("d2", "李四去了上海", [], 0.5)]
    assert _write_run(db, "p1", changed) == "p1-r2"  # same model, same input: a new run
    assert _current(db) == [
        (0, 2, "PER", "predicted"),
        (3, 5, "ORG", "corrected"),
        (6, 8, "ORG", "predicted"),
    ]
    assert _current(db, run="p1-r2") == [(0, 3, "PER", "predicted")]
    with open_db(db, read_only=True) as con:
        runs = con.execute(
            "SELECT pred_run_id, n_documents, config FROM prediction_runs ORDER BY 1"
        ).fetchall()
    assert [r[:2] for r in runs] == [("p1", 2), ("p1-r2", 2)] and json.loads(runs[1][2])[
        "reviewed_run"
    ] == "p1"
    assert _write_run(db, "p1", changed[:1]) == "p1-r2"  # the unreviewed new run is replaced as before
    assert reviews.review_progress(db, "p1-r2")["total"] == 1
    with pytest.raises(ValueError, match="has review events on document 'd1': its rows are never replaced"):
        write_predictions(db, "p1", [("d1", TEXT, [], 0.0)])
    assert _current(db)[1] == (3, 5, "ORG", "corrected")


# ----------------------------------------------------------------------------------------- migration
def test_a_database_written_by_older_code_migrates_and_can_be_reviewed(legacy_db):
    from tests.test_storage import LEGACY_PRED

    with duckdb.connect(legacy_db, read_only=True) as con:
        assert con.execute("SELECT max(version) FROM schema_version").fetchone()[0] == 3
        by_conf = [
            r[0]
            for r in con.execute(
                "SELECT doc_id FROM predicted_entities WHERE pred_run_id = ? GROUP BY doc_id "
                "ORDER BY min(confidence)",
                [LEGACY_PRED],
            ).fetchall()
        ]
        text = con.execute("SELECT text FROM predicted_documents WHERE doc_id = ?", [by_conf[0]]).fetchone()[
            0
        ]
        (s, e, label) = con.execute(
            'SELECT "start", "end", label FROM predicted_entities WHERE doc_id = ? ORDER BY "start" LIMIT 1',
            [by_conf[0]],
        ).fetchone()
    # a read migrates the file first (a short writer connection), then reads it
    queue = reviews.review_queue(legacy_db, LEGACY_PRED, "uncertain")
    assert _ids(queue) == by_conf and all(r["uncertainty"] is None for r in queue)
    with duckdb.connect(legacy_db, read_only=True) as con:
        assert con.execute("SELECT max(version) FROM schema_version").fetchone()[0] == SCHEMA_VERSION
    assert (
        record_events(legacy_db, [_ev("accept", by_conf[0], text, LEGACY_PRED, start=s, end=e, label=label)])
        == 1
    )
    assert reviews.current_entities(legacy_db, LEGACY_PRED, by_conf[0])[0]["state"] == "accepted"
    assert set(reviews.review_labels(legacy_db, LEGACY_PRED)["model"]) == {"FIN", "LOC", "ORG", "PER"}
