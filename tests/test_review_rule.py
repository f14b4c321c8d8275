"""The one review rule (ner_core/review.py) and its SQL spelling agree: "per entity key the latest decision
wins", in one order of events (created_at, then arrival), with undo, adjust-then-relabel, added and rejected
entities.

The property test writes random histories (accept / reject / relabel / adjust / add / add_label / undo,
ties in created_at, three reviewers, event ids in no particular order) to a real DuckDB file through
``record_events`` (a batch it refuses writes nothing and is dropped), then holds the view's current entities
(``v_review_current``), its rejected keys (``v_review_latest``) and its reviewers' disagreements
(``v_review_disagreements``) equal to :func:`ner_core.review.replay` of the stored events; and a batch's
replay before it is written (as the page shows the spool's decisions) equal to the view after it is.
"""

from __future__ import annotations

import shutil
import tempfile
from datetime import datetime, timedelta
from pathlib import Path

import duckdb
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ner_core import review as rule
from ner_core.inference.tagger import PredictedEntity
from storage import reviews
from storage.db import migrate
from storage.predictions import PredictionRunWriter
from storage.reviews import ReviewRefused, record_events, text_hash
from storage.schema import MIGRATIONS

T0 = datetime(2026, 3, 1, 9, 0, 0)
RUN, DOC = "p1", "d1"
TEXT = "张三在北京的华为公司工作了十年"  # 张三 PER [0,2), 北京 LOC [3,5), 华为 ORG [6,8)
PREDICTED = [(0, 2, "PER", 0.9), (3, 5, "LOC", 0.6), (6, 8, "ORG", 0.3)]
#: keys a decision may name: the predicted ones, then spans nobody predicted (the last overlaps ORG)
KEYS = [(0, 2, "PER"), (3, 5, "LOC"), (6, 8, "ORG"), (9, 11, "PER"), (12, 15, "LOC"), (6, 10, "ORG")]
LABELS = ["LOC", "ORG", "PER", "PRODUCT"]  # PRODUCT only after an add_label


def _write_predictions(db: str) -> None:
    rows = [(DOC, TEXT, [PredictedEntity(s, e, lb, TEXT[s:e], c) for s, e, lb, c in PREDICTED], 1.0)]
    with PredictionRunWriter(
        db, RUN, model_dir="m", run_id=None, input_kind="texts", input_ref="x", replace=True
    ) as w:
        w.write(rows)


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("rule") / "template.duckdb"
    _write_predictions(str(path))
    return path


def _ev(eid: str, action: str, at: int, reviewer: str = "ann", **fields) -> dict:
    return {
        "event_id": eid,
        "pred_run_id": RUN,
        "doc_id": DOC,
        "doc_hash": text_hash(TEXT),
        "reviewer": reviewer,
        "action": action,
        "created_at": (T0 + timedelta(seconds=at)).isoformat(),
        **fields,
    }


def _key_fields(key) -> dict:
    return {"start": key[0], "end": key[1], "label": key[2]}


# ----------------------------------------------------------------------------------------- the pure rule
P = [{"start": s, "end": e, "label": lb, "confidence": c} for s, e, lb, c in PREDICTED]


def _states(ents) -> dict:
    return {e.key: (e.start, e.end, e.label, e.state, e.event_id) for e in ents}


def test_a_tie_in_created_at_goes_by_arrival_not_by_event_id():
    accept = {**_ev("z", "accept", 0, **_key_fields(KEYS[1])), "seq": 1}
    reject = {**_ev("a", "reject", 0, reviewer="bob", **_key_fields(KEYS[1])), "seq": 2}
    assert _states(rule.replay(P, [reject, accept]))[KEYS[1]][3:] == ("rejected", "a")
    assert _states(rule.replay(P, [{**accept, "seq": 3}, reject]))[KEYS[1]][3:] == ("accepted", "z")
    # not recorded yet (the spool's, a batch being checked): after every recorded event of that instant,
    # in the order given; an earlier created_at never wins over a later one
    spooled = _ev("0", "relabel", 0, **_key_fields(KEYS[1]), new_label="ORG")
    assert _states(rule.replay(P, [spooled, reject, accept]))[KEYS[1]] == (3, 5, "ORG", "corrected", "0")
    late = {**reject, "created_at": (T0 + timedelta(seconds=1)).isoformat()}
    assert _states(rule.replay(P, [spooled, late, accept]))[KEYS[1]][3:] == ("rejected", "a")
    second = _ev("00", "accept", 0, **_key_fields(KEYS[1]))
    assert _states(rule.replay(P, [spooled, second, reject]))[KEYS[1]][3:] == ("accepted", "00")


def test_created_at_with_a_zone_is_compared_in_utc():
    early = {**_ev("b", "reject", 0, **_key_fields(KEYS[0])), "created_at": "2026-03-01T10:00:30+01:00"}
    later = _ev("a", "accept", 10, **_key_fields(KEYS[0]))  # 09:00:10 UTC: earlier than 09:00:30
    assert _states(rule.replay(P, [later, early]))[KEYS[0]][3] == "rejected"
    with pytest.raises(ValueError, match="created_at"):
        rule.replay(P, [{**later, "created_at": None}])


def test_undo_cancels_the_event_it_names_and_is_no_decision():
    rej = _ev("e1", "reject", 0, **_key_fields(KEYS[0]))
    acc = _ev("e2", "accept", 1, reviewer="bob", **_key_fields(KEYS[2]))
    undo = _ev("e3", "undo", 2, ref_event_id="e1")
    got = _states(rule.replay(P, [rej, acc, undo]))
    assert got[KEYS[0]] == (0, 2, "PER", "predicted", None) and got[KEYS[2]][3] == "accepted"
    assert [e["event_id"] for e in rule.in_force([rej, acc, undo])] == ["e2"]
    assert rule.undo_target([rej, acc, undo], "ann") is None
    assert rule.undo_target([rej, acc, undo], "bob")["event_id"] == "e2"


def test_adjust_then_relabel_keeps_the_span_only_through_relabel_fields():
    adjust = _ev("e1", "adjust", 0, **_key_fields(KEYS[1]), new_start=3, new_end=4)
    ent = _states(rule.replay(P, [adjust]))[KEYS[1]]
    assert ent[:4] == (3, 4, "LOC", "corrected")
    # a plain relabel replaces the adjust: the entity is back on its key's span
    plain = _ev("e2", "relabel", 1, **_key_fields(KEYS[1]), new_label="ORG")
    assert _states(rule.replay(P, [adjust, plain]))[KEYS[1]][:3] == (3, 5, "ORG")
    action, fields = rule.relabel_fields(KEYS[1], (3, 4), "ORG")
    assert action == "adjust" and (fields["new_start"], fields["new_end"], fields["new_label"]) == (
        3,
        4,
        "ORG",
    )
    kept = _ev("e2", action, 1, **fields)
    assert _states(rule.replay(P, [adjust, kept]))[KEYS[1]][:4] == (3, 4, "ORG", "corrected")
    assert rule.relabel_fields(KEYS[1], (3, 5), "ORG") == (
        "relabel",
        {**_key_fields(KEYS[1]), "new_label": "ORG"},
    )
    # and the other way round: fixing the boundaries of a relabelled entity keeps its label
    action, fields = rule.adjust_fields(KEYS[1], "ORG", 3, 4)
    assert (action, fields["new_label"]) == ("adjust", "ORG")
    assert "new_label" not in rule.adjust_fields(KEYS[1], "LOC", 3, 4)[1]


def test_an_added_entity_stays_added_until_rejected():
    add = _ev("e1", "add", 0, **_key_fields(KEYS[3]))
    relabel = _ev("e2", "relabel", 1, reviewer="bob", **_key_fields(KEYS[3]), new_label="LOC")
    got = rule.replay(P, [add, relabel])
    assert [(e.start, e.end, e.label, e.state, e.added, e.confidence) for e in got if e.added] == [
        (9, 11, "LOC", "added", True, None)
    ]
    reject = _ev("e3", "reject", 2, **_key_fields(KEYS[3]))
    assert _states(rule.replay(P, [add, relabel, reject]))[KEYS[3]][3] == "rejected"
    # add on a predicted key is an acceptance
    assert _states(rule.replay(P, [_ev("e4", "add", 0, **_key_fields(KEYS[0]))]))[KEYS[0]][3] == "accepted"
    assert [e.key for e in rule.replay(P, [])] == KEYS[:3]  # by start, end, label


# ----------------------------------------------------------------------------------------- the property
@st.composite
def _event(draw, eid: str, earlier: list[str], added: list[tuple]) -> dict:
    """One event; a decision names a predicted key or one added before (else it is mostly refused)."""
    action = draw(
        st.sampled_from(["accept", "reject", "relabel", "adjust", "add", "add", "add_label", "undo"])
    )
    fields: dict = {}
    if action == "undo" and not earlier:
        action = "accept"
    if action == "undo":
        fields["ref_event_id"] = draw(st.sampled_from(earlier))
    elif action == "add_label":
        fields["label"] = "PRODUCT"
    else:
        key = draw(st.sampled_from(KEYS[3:] if action == "add" else KEYS[:3] + added))
        fields.update(_key_fields(key))
        if action == "add" and key not in added:
            added.append(key)
    if action == "relabel":
        fields["new_label"] = draw(st.sampled_from(LABELS))
    elif action == "adjust":  # the key's span, or one character less on either side: no new overlap
        s, e, _ = key
        fields["new_start"], fields["new_end"] = draw(st.sampled_from([(s, e), (s + 1, e), (s, e - 1)]))
        if draw(st.booleans()):
            fields["new_label"] = draw(st.sampled_from(LABELS))
    reviewer = draw(st.sampled_from(["ann", "bob", "cat"]))
    return _ev(eid, action, draw(st.integers(0, 1)), reviewer, **fields)  # two instants: many ties


@st.composite
def histories(draw) -> list[list[dict]]:
    """2 to 6 batches of 1 to 3 events; event ids are drawn (unique), so their order says nothing about
    arrival."""
    sizes = draw(st.lists(st.integers(1, 3), min_size=2, max_size=6))
    ids = iter(draw(st.lists(st.integers(0, 999), min_size=sum(sizes), max_size=sum(sizes), unique=True)))
    batches, made, added = [], [], []
    for size in sizes:
        batch = [draw(_event(f"e{next(ids):03d}", made, added)) for _ in range(size)]
        made += [e["event_id"] for e in batch]
        batches.append(batch)
    return batches


def _shown(ents) -> set[tuple]:
    """What the view and the replay must agree on, per current entity."""
    return {
        (e.key, e.start, e.end, e.label, e.state, e.reviewer, e.event_id)
        for e in ents
        if e.state != "rejected"
    }


_VIEW_CURRENT = """
    SELECT key_start, key_end, key_label, "start", "end", label, state, reviewer, event_id
    FROM v_review_current WHERE pred_run_id = ? AND doc_id = ?
"""


def _read(db: str) -> tuple[list[dict], set[tuple], set[tuple], set[tuple]]:
    """(the stored events, the view's current entities, rejected keys and disagreements), in one read."""
    with duckdb.connect(db, read_only=True) as con:
        cur = con.execute("SELECT * FROM review_events ORDER BY event_id")  # not arrival: replay orders
        cols = [d[0] for d in cur.description]
        events = [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]
        current = {(r[:3], *r[3:]) for r in con.execute(_VIEW_CURRENT, [RUN, DOC]).fetchall()}
        sql = 'SELECT "start", "end", label, event_id FROM v_review_latest WHERE action = \'reject\''
        rejected = set(con.execute(sql).fetchall())
        sql = 'SELECT "start", "end", label, reviewer, event_id FROM v_review_disagreements'
        disagreements = set(con.execute(sql).fetchall())
    return events, current, rejected, disagreements


def _outcome(key: tuple, e: dict) -> object:
    """What decision ``e`` alone makes of the entity ``key``: 'reject' or its (start, end, label)."""
    predicted = [{"start": key[0], "end": key[1], "label": key[2]}]
    (ent,) = [x for x in rule.replay(predicted, [e]) if x.key == key]
    return "reject" if ent.state == "rejected" else (ent.start, ent.end, ent.label)


def _disagreements(events: list[dict]) -> set[tuple]:
    """(key, reviewer, event_id) of each reviewer's latest decision on a key (the rule over that reviewer's
    decisions, anyone's undo included), where the reviewers' outcomes differ."""
    per: dict[tuple, dict[str, dict]] = {}
    for who in {e["reviewer"] for e in events}:
        mine = [e for e in events if e["reviewer"] == who or e["action"] == "undo"]
        for key, e in rule.latest_decisions(mine).items():
            per.setdefault(key, {})[who] = e
    return {
        (*key, who, e["event_id"])
        for key, by in per.items()
        if len({_outcome(key, e) for e in by.values()}) > 1
        for who, e in by.items()
    }


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(history=histories())
def test_the_view_agrees_with_the_replay_of_the_stored_events(template, history):
    with tempfile.TemporaryDirectory() as tmp:
        db = str(Path(tmp) / "r.duckdb")
        shutil.copyfile(template, db)
        events: list[dict] = []
        for batch in history:
            preview = rule.replay(P, [*events, *batch])  # as the page shows stored + spooled decisions
            try:
                record_events(db, batch, wait_s=5)
            except ReviewRefused:
                continue
            events, current, rejected, disagreements = _read(db)
            assert current == _shown(preview)
            ents = rule.replay(P, events)
            assert current == _shown(ents)
            assert rejected == {(*e.key, e.event_id) for e in ents if e.state == "rejected"}
            assert disagreements == _disagreements(events)
        doc = reviews.document_for_review(db, RUN, DOC)
        ents = rule.replay(P, events)
        got = {
            (e["key_start"], e["key_end"], e["key_label"], e["state"], e["event_id"]) for e in doc["entities"]
        }
        assert got == {(*e.key, e.state, e.event_id) for e in ents if e.state != "rejected"}
        assert [e["event_id"] for e in doc["events"]] == [e["event_id"] for e in rule.replay_order(events)]


# ----------------------------------------------------------------------------------------- older files
def test_events_stored_before_keep_their_winner_after_migrating(tmp_path):
    """A file at schema 5 (no seq): two decisions on one key with the same created_at, recorded by two
    batches, the later one with the smaller event_id. Its views let the later recorded one win; migration 6
    numbers the events in that order, so the winner stays; a new event of the same instant comes after."""
    db = str(tmp_path / "v5.duckdb")
    con = duckdb.connect(db)
    migrate(con, MIGRATIONS[:5])
    con.execute(
        "INSERT INTO prediction_runs (pred_run_id, model_dir, input_kind, input_ref, status, started_at) "
        "VALUES (?, 'm', 'texts', 'x', 'completed', ?)",
        [RUN, T0],
    )
    con.execute("INSERT INTO predicted_documents VALUES (?, ?, ?, 3, 1.0)", [RUN, DOC, TEXT])
    for s_, e_, lb, c in PREDICTED:
        con.execute(
            "INSERT INTO predicted_entities VALUES (?, ?, ?, ?, ?, ?, ?)",
            [RUN, DOC, s_, e_, lb, TEXT[s_:e_], c],
        )
    for eid, action, recorded in (("z", "accept", 1), ("a", "reject", 2)):
        con.execute(
            'INSERT INTO review_events (event_id, pred_run_id, doc_id, doc_hash, reviewer, action, "start", '
            "\"end\", label, created_at, recorded_at) VALUES (?, ?, ?, ?, ?, ?, 3, 5, 'LOC', ?, ?)",
            [eid, RUN, DOC, text_hash(TEXT), "ann", action, T0, T0 + timedelta(seconds=recorded)],
        )
    sql = 'SELECT "start", "end", label, state, event_id FROM v_review_current ORDER BY "start"'
    before = con.execute(sql).fetchall()
    con.close()
    assert (3, 5, "LOC") not in [b[:3] for b in before]  # the reject, recorded later, won
    assert [
        (c["start"], c["end"], c["label"], c["state"], c["event_id"])
        for c in reviews.current_entities(db, RUN, DOC)
    ] == before
    with duckdb.connect(db, read_only=True) as con:
        seqs = con.execute("SELECT event_id, seq FROM review_events ORDER BY seq").fetchall()
    assert [e for e, _ in seqs] == ["z", "a"] and all(s_ <= 0 for _, s_ in seqs)
    record_events(db, [_ev("b", "accept", 0, reviewer="bob", **_key_fields(KEYS[1]))])
    assert (3, 5, "LOC", "accepted") in [
        (c["start"], c["end"], c["label"], c["state"]) for c in reviews.current_entities(db, RUN, DOC)
    ]
