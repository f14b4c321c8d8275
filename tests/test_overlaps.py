"""Overlapping entities of span-format records: under repair the record is kept and one span of each
overlapping pair dropped (nested: the inner; crossing: the shorter, the later on a tie; one span with two
labels: the later), each reported and stored in ``dropped_spans``; strict still rejects the record."""

from __future__ import annotations

import json

import duckdb
import pytest

from ner_core.data.formats import read_file
from ner_core.data.formats.overlaps import resolve_overlaps
from storage.datasets import ingest_dataset, load_documents

TEXT = "北京大学的张三和李四在上海市工作"


def _write(tmp_path, records: list[list[tuple[int, int, str]]], name: str = "o.jsonl"):
    path = tmp_path / name
    rows = [
        {"text": TEXT, "entities": [{"start": s, "end": e, "label": lab} for s, e, lab in spans]}
        for spans in records
    ]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def _cluener(tmp_path):
    """The same nested pair in CLUENER's shape (inclusive ends)."""
    path = tmp_path / "c.json"
    obj = {"text": TEXT, "label": {"organization": {"北京大学": [[0, 3]]}, "address": {"北京": [[0, 1]]}}}
    path.write_text(json.dumps(obj, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


CASES = [
    # (spans in the record's order, kept, dropped (span, kept span, reason))
    ([(0, 4, "ORG"), (0, 2, "LOC"), (5, 7, "PER")], [(0, 4, "ORG"), (5, 7, "PER")],
     [((0, 2, "LOC"), (0, 4, "ORG"), "nested")]),
    ([(1, 3, "LOC"), (0, 4, "ORG")], [(0, 4, "ORG")], [((1, 3, "LOC"), (0, 4, "ORG"), "nested")]),
    ([(10, 14, "LOC"), (12, 16, "ORG"), (0, 4, "ORG")], [(0, 4, "ORG"), (10, 14, "LOC")],
     [((12, 16, "ORG"), (10, 14, "LOC"), "crossing")]),  # a tie: the earlier stays
    ([(11, 14, "LOC"), (12, 16, "ORG")], [(12, 16, "ORG")], [((11, 14, "LOC"), (12, 16, "ORG"), "crossing")]),
    ([(5, 7, "PER"), (5, 7, "ORG")], [(5, 7, "PER")], [((5, 7, "ORG"), (5, 7, "PER"), "same_span")]),
    ([(5, 7, "ORG"), (5, 7, "PER")], [(5, 7, "ORG")], [((5, 7, "PER"), (5, 7, "ORG"), "same_span")]),
]  # fmt: skip


@pytest.mark.parametrize("spans,kept,dropped", CASES)
def test_the_rules_pick_the_span_to_drop(spans, kept, dropped):
    assert resolve_overlaps(spans) == (kept, dropped)


def test_repair_keeps_the_record_and_reports_each_dropped_span(tmp_path):
    path = _write(tmp_path, [c[0] for c in CASES])
    res = read_file(path, policy="repair")
    assert [d.doc_id for d in res.documents] == [f"o:{i}" for i in range(1, 7)] and not res.errors
    assert [[(e.start, e.end, e.label) for e in d.entities] for d in res.documents] == [c[1] for c in CASES]
    warned = [p for p in res.problems if p.code == "overlap_dropped"]
    assert [(p.line, p.severity) for p in warned] == [(i, "warning") for i in range(1, 7)]
    assert warned[0].message == (
        "entities [0, 4) ORG and [0, 2) LOC overlap (nested): dropped [0, 2) LOC, kept the outer"
    )
    assert "[10, 14) LOC and [12, 16) ORG overlap (crossing)" in warned[2].message
    assert "one span with two labels: kept the first" in warned[4].message
    assert res.dropped[0] == (0, 0, 2, "LOC", "nested", 0, 4, "ORG")
    # CLUENER (inclusive ends in the file) follows the same rule
    c = read_file(_cluener(tmp_path), policy="repair")
    assert [(e.start, e.end, e.label) for e in c.documents[0].entities] == [(0, 4, "organization")]


def test_strict_still_rejects_an_overlapping_record(tmp_path):
    path = _write(tmp_path, [CASES[0][0], [(5, 7, "PER")]])
    res = read_file(path, policy="strict")
    assert [d.doc_id for d in res.documents] == ["o:2"] and not res.dropped
    (err,) = res.errors
    assert (err.code, err.line) == ("span_overlap", 1)
    assert not [p for p in res.problems if p.code == "overlap_dropped"]


def test_a_record_rejected_for_another_reason_leaves_no_dropped_span(tmp_path):
    bad = [(0, 4, "ORG"), (0, 2, "LOC"), (3, 99, "LOC")]  # overlap + out of range: rejected
    path = _write(tmp_path, [bad, [(5, 7, "PER")]])
    res = read_file(path, policy="repair")
    assert [d.doc_id for d in res.documents] == ["o:2"] and res.dropped == []


def test_the_ingest_stores_the_dropped_spans(tmp_path):
    db = tmp_path / "d.duckdb"
    train = _write(tmp_path, [c[0] for c in CASES], "corpus.train")
    dev = _write(tmp_path, [CASES[0][0]], "corpus.dev")  # colliding stems: the longer ids reach the table
    report = ingest_dataset(db, "ov", [train, dev], format="jsonl")
    assert report.created and report.rejected == 0
    with duckdb.connect(str(db), read_only=True) as con:
        rows = con.execute(
            'SELECT doc_id, start, "end", label, reason, kept_start, kept_end, kept_label FROM dropped_spans '
            "WHERE dataset = 'ov' AND version = 1 ORDER BY doc_id, start"
        ).fetchall()
    assert rows[0] == ("corpus.dev:1", 0, 2, "LOC", "nested", 0, 4, "ORG")
    assert [r[4] for r in rows[1:]] == ["nested", "nested", "crossing", "crossing", "same_span", "same_span"]
    assert {r[0] for r in rows} <= {d.doc_id for d in load_documents(db, "ov")}
    assert sum(p.code == "overlap_dropped" for p in report.problems) == len(rows) == 7
    with pytest.raises(Exception, match="nothing stored"):
        ingest_dataset(db, "strict", {"train": train}, format="jsonl", policy="strict")
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM dropped_spans WHERE dataset = 'strict'").fetchone()[0] == 0
