"""The Review page's logic through Streamlit's AppTest, on a database holding two prediction runs written
directly (tests/ui_fixtures.py: build_review_db; no training), plus the pieces without Streamlit: the
replay of events (checked against the view v_review_current), the selection check, and JavaScript's
code-point iteration (node) that the span-selection component relies on.

The lock test: a real second process holds the database's write lock while decisions are made, the page
is reloaded (a new session) in between, the lock is released: every decision is written exactly once.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import parse_qs

import duckdb
import pytest
from streamlit.testing.v1 import AppTest

from storage.reviews import new_event, record_events, text_hash
from tests.ui_fixtures import APP, EMOJI_DOC, EMOJI_TEXT, PAGES, REVIEW_DOCS, REVIEW_RUN, build_review_db
from ui.components import checked_selection
from ui.review_state import overlapping, replay, spool_path, undo_target


@pytest.fixture
def review_db(tmp_path) -> str:
    return build_review_db(tmp_path)


def _page(db: str, monkeypatch, reviewer: str | None = "ann", **params) -> AppTest:
    monkeypatch.setenv("NER_DB", db)
    at = AppTest.from_file(APP, default_timeout=60)
    at.switch_page("app_pages/review.py")
    at.query_params["run"] = REVIEW_RUN
    if reviewer:
        at.query_params["reviewer"] = reviewer
    for k, v in params.items():
        at.query_params[k] = v
    at.run()
    assert not at.exception, at.exception
    return at


def _click(at: AppTest, label: str) -> AppTest:
    next(b for b in at.button if _plain(b.label) == label).click().run()
    assert not at.exception, at.exception
    return at


def _select(at: AppTest, label: str):
    return next(s for s in at.selectbox if s.label == label)


def _choose(at: AppTest, label: str, value: str) -> AppTest:
    _select(at, label).set_value(value).run()
    assert not at.exception, at.exception
    return at


def _pick(at: AppTest, ref: str) -> AppTest:
    """Select the entity named ``start:end:label`` (its key) in the panel's picker."""
    return _choose(at, "Entity", ref)


def _events(db: str) -> list[tuple]:
    with duckdb.connect(db, read_only=True) as con:
        return con.execute(
            'SELECT doc_id, action, "start", "end", label, new_label, reviewer FROM review_events '
            "ORDER BY created_at, event_id"
        ).fetchall()


def _current(db: str, doc_id: str = EMOJI_DOC) -> list[tuple]:
    with duckdb.connect(db, read_only=True) as con:
        return con.execute(
            'SELECT "start", "end", label, state FROM v_review_current WHERE pred_run_id = ? AND doc_id = ? '
            'ORDER BY "start"',
            [REVIEW_RUN, doc_id],
        ).fetchall()


def _plain(markdown: str) -> str:
    """Text the page escaped for Markdown (:func:`ui.app_pages.common.escape_markdown`) as it reads."""
    return re.sub(r"\\(.)", r"\1", str(markdown)).replace("\u2060", "")


def _texts(elements) -> str:
    return "\n".join(_plain(e.value) for e in elements)


# ------------------------------------------------------------------------------- without Streamlit
def test_replay_agrees_with_the_view_and_keeps_rejected_entities(review_db):
    """The page shows waiting decisions with replay(); it must give what v_review_current will."""
    h = text_hash(EMOJI_TEXT)

    def ev(who, action, **f):
        return new_event(REVIEW_RUN, EMOJI_DOC, h, who, action, **f)

    a1 = ev("ann", "accept", start=0, end=2, label="PER")
    events = [
        a1,
        ev("ann", "relabel", start=4, end=8, label="LOC", new_label="ORG"),
        ev(
            "bob", "adjust", start=4, end=8, label="LOC", new_start=4, new_end=6, new_label="ORG"
        ),  # later wins
        ev("ann", "reject", start=11, end=13, label="ORG"),
        ev("ann", "add", start=14, end=16, label="PER"),
        ev("ann", "reject", start=0, end=2, label="PER"),
    ]
    events.append(ev("ann", "undo", ref_event_id=events[-1]["event_id"]))  # the reject of 张伟 is undone
    assert record_events(review_db, events) == len(events)
    predicted = [
        {"start": s, "end": e, "label": lb, "confidence": c} for s, e, lb, c in REVIEW_DOCS[EMOJI_DOC][2]
    ]
    got = replay(predicted, events)
    assert [
        (x["start"], x["end"], x["label"], x["state"]) for x in got if x["state"] != "rejected"
    ] == _current(review_db)
    assert [(x["key"], x["state"]) for x in got if x["state"] == "rejected"] == [
        ((11, 13, "ORG"), "rejected")
    ]
    assert overlapping(got, 5, 7)["key"] == (4, 8, "LOC")
    assert overlapping(got, 11, 13) is None  # a rejected entity does not block an add
    assert undo_target(events, "ann")["event_id"] == events[4]["event_id"]  # not the undone reject
    assert undo_target(events, "carol") is None


def test_a_selection_is_checked_against_the_text_in_code_points():
    text = EMOJI_TEXT  # 😀 at code point 3
    sel = checked_selection(text, {"start": 14, "end": 16, "text": "王芳"})
    assert (sel.start, sel.end, sel.chars) == (14, 16, "王芳")
    assert checked_selection(text, {"start": 15, "end": 17, "text": "王芳"}) is None  # UTF-16 offsets
    assert checked_selection(text, {"start": 14, "end": 16, "text": "王"}) is None
    assert checked_selection(text, {"start": 0, "end": 99, "text": text}) is None
    assert checked_selection(text, None) is None


def test_javascript_iterates_the_texts_by_code_point_as_python_does(tmp_path):
    """The component gives each element of Array.from(text) its index: that must be Python's index."""
    node = shutil.which("node") or shutil.which("nodejs")
    if node is None:
        pytest.skip("node is not installed (the browser test covers the component too)")
    texts = [EMOJI_TEXT, "A😀b👍🏽c", "2024年𠀋字ｆｕｌｌ", "e\u0301 tab\tnew\nline"]
    script = tmp_path / "cp.mjs"
    script.write_text(
        "const texts = JSON.parse(process.argv[2]);\n"
        "console.log(JSON.stringify(texts.map((t) => ({cps: Array.from(t), units: t.length}))));\n",
        encoding="utf-8",
    )
    out = subprocess.run([node, str(script), json.dumps(texts)], capture_output=True, text=True, check=True)
    for text, got in zip(texts, json.loads(out.stdout), strict=True):
        assert got["cps"] == list(text)
    assert json.loads(out.stdout)[0]["units"] == len(EMOJI_TEXT) + 1  # the emoji is two UTF-16 units


# ---------------------------------------------------------------------------------------- the page
def test_the_reviewer_gives_a_name_once_and_an_empty_one_is_refused(review_db, monkeypatch):
    at = _page(review_db, monkeypatch, reviewer=None)
    assert "Document" not in _texts(at.subheader)
    _click(at, "Start reviewing")  # nothing typed
    assert "empty reviewer name is refused" in _texts(at.error)
    at.text_input(key="reviewer_input").input("  ann  ")
    _click(at, "Start reviewing")
    assert at.query_params["reviewer"] == "ann"  # a reload keeps it
    assert "Reviewing as **ann**" in _texts(at.caption)
    assert _texts(at.subheader) == f"Document {EMOJI_DOC}"  # the most uncertain document first
    assert "summed token entropy" in _texts(at.caption)
    assert "0 reviewed / 5 queued" in at.get("progress")[0].proto.text


def test_decisions_states_undo_and_accept_the_rest(review_db, monkeypatch):
    at = _page(review_db, monkeypatch)
    _pick(at, "0:2:PER")
    _click(at, "Accept [a]")
    _pick(at, "11:13:ORG")
    _click(at, "Reject [r]")
    _pick(at, "4:8:LOC")
    _choose(at, "Label", "ORG")
    _click(at, "Change label")
    at.number_input(key="review_typed_s").set_value(14).run()
    at.number_input(key="review_typed_e").set_value(16).run()
    _click(at, "Select")
    assert "Selected **王芳** [14, 16)" in _texts(at.markdown)
    at.selectbox(key="review_add_label").set_value("PER").run()
    _click(at, "Add entity")
    assert _current(review_db) == [
        (0, 2, "PER", "accepted"),
        (4, 8, "ORG", "corrected"),
        (14, 16, "PER", "added"),
    ]
    assert "1 accepted · 1 corrected · 1 added · 1 rejected" in _texts(at.caption)

    # an overlapping add is refused with one line and nothing is written
    n = len(_events(review_db))
    at.number_input(key="review_typed_s").set_value(15).run()
    at.number_input(key="review_typed_e").set_value(17).run()
    _click(at, "Select")
    _click(at, "Add entity")
    assert "overlaps PER [14, 16) '王芳'" in _texts(at.error) and len(_events(review_db)) == n

    _click(at, "Undo [u]")  # cancels the add
    assert _current(review_db)[-1] == (4, 8, "ORG", "corrected")
    assert _events(review_db)[-1][1] == "undo"
    _click(at, "Accept the rest and next [n]")  # nothing predicted is left: only the done
    assert _events(review_db)[-1][:2] == (EMOJI_DOC, "done")
    assert _texts(at.subheader) == "Document d-beijing-1"
    assert at.query_params["doc"] == "d-beijing-1"
    assert "1 reviewed / 4 queued" in at.get("progress")[0].proto.text
    _click(at, "Undo [u]")  # undoing the done brings the document back
    assert _texts(at.subheader) == f"Document {EMOJI_DOC}"
    assert "0 reviewed / 5 queued" in at.get("progress")[0].proto.text


def _number(at: AppTest, label: str):
    return next(n for n in at.number_input if n.label == label)


def _button(at: AppTest, label: str):
    return next(b for b in at.button if b.label == label)


def _other_reviewer(db: str, action: str, **fields) -> None:
    """A decision by bob, recorded directly (another session), and the page's cached reads dropped (as the
    sidebar's Refresh or the cache's expiry would)."""
    from ui import queries

    record_events(db, [new_event(REVIEW_RUN, EMOJI_DOC, text_hash(EMOJI_TEXT), "bob", action, **fields)])
    queries.review_document.clear()


def test_after_each_decision_the_panel_shows_the_entity_as_it_is_now(review_db, monkeypatch):
    """Use the selection as the boundaries, change the label, accept another entity: each time the panel's
    picker, label, Start/End and buttons hold the new state (widgets keyed by the entity alone kept the
    old span, and an enabled Fix boundaries then wrote it back)."""
    at = _page(review_db, monkeypatch)
    _pick(at, "4:8:LOC")
    at.number_input(key="review_typed_s").set_value(4).run()
    at.number_input(key="review_typed_e").set_value(6).run()
    _click(at, "Select")
    next(b for b in at.button if _plain(b.label).startswith("Use the selection [4, 6) '阿里'")).click().run()
    assert _current(review_db)[1] == (4, 6, "LOC", "corrected")
    assert (_number(at, "Start").value, _number(at, "End").value) == (4, 6)
    assert _button(at, "Fix boundaries").disabled  # nothing to fix: no action built from the old span
    assert _select(at, "Entity").value == "4:8:LOC"
    assert "LOC '阿里' [4, 6) · corrected" in _select(at, "Entity").options
    assert not any(
        _plain(b.label).startswith("Use the selection") for b in at.button
    )  # the selection was used

    _choose(at, "Label", "ORG")
    _click(at, "Change label")
    assert _current(review_db)[1] == (4, 6, "ORG", "corrected")  # the fixed span is kept
    assert _select(at, "Label").value == "ORG" and _button(at, "Change label").disabled
    assert "ORG '阿里' [4, 6) · corrected" in _select(at, "Entity").options
    assert (_number(at, "Start").value, _number(at, "End").value) == (4, 6)

    _pick(at, "0:2:PER")
    _click(at, "Accept [a]")
    bar = next(m for m in _texts(at.markdown).splitlines() if m.startswith("**Selected:**"))
    assert "张伟" in bar and bar.endswith("· accepted")
    assert (
        _button(at, "Accept [a]").disabled and "PER '张伟' [0, 2) · accepted" in _select(at, "Entity").options
    )


def test_a_button_drawn_before_another_decision_records_nothing(review_db, monkeypatch):
    """Bob moves the entity after ann's panel was drawn: ann's Fix boundaries (built for the old state)
    is refused beside the panel, bob's span stands, and the panel then shows it."""
    at = _page(review_db, monkeypatch)
    _pick(at, "4:8:LOC")
    _number(at, "End").set_value(7).run()
    assert not _button(at, "Fix boundaries").disabled
    _other_reviewer(review_db, "adjust", start=4, end=8, label="LOC", new_start=5, new_end=8)
    _click(at, "Fix boundaries")
    assert _events(review_db) == [(EMOJI_DOC, "adjust", 4, 8, "LOC", None, "bob")]
    assert _current(review_db)[1] == (5, 8, "LOC", "corrected")
    panel = at.get_by_key("review_entity_panel")
    assert "the entity changed since this button was drawn" in _texts(panel.error)
    assert (_number(at, "Start").value, _number(at, "End").value) == (5, 8)
    assert "were for the entity before it moved: it is now on [5, 8)" in _texts(at.caption)


def test_a_typed_offset_is_kept_while_other_widgets_change(review_db, monkeypatch):
    at = _page(review_db, monkeypatch)
    _pick(at, "4:8:LOC")
    _number(at, "End").set_value(6).run()
    _pick(at, "0:2:PER")  # another entity, and a decision on it
    _click(at, "Accept [a]")
    at.checkbox(key="review_apply_all").check().run()
    at.checkbox(key="review_apply_all").uncheck().run()
    _pick(at, "4:8:LOC")
    assert _number(at, "End").value == 6 and not _button(at, "Fix boundaries").disabled
    _click(at, "Fix boundaries")
    assert _current(review_db)[1] == (4, 6, "LOC", "corrected")
    assert (_number(at, "Start").value, _number(at, "End").value) == (4, 6)


def test_refusals_are_shown_beside_the_control_that_caused_them(review_db, monkeypatch):
    at = _page(review_db, monkeypatch)
    _pick(at, "4:8:LOC")
    at.number_input(key="review_typed_s").set_value(5).run()
    at.number_input(key="review_typed_e").set_value(12).run()
    _click(at, "Select")
    _click(at, "Add entity")  # overlaps 阿里巴巴 and 开会: said in the add panel, not at the top
    assert [c for c in at.main.children.values() if getattr(c, "type", None) == "error"] == []
    assert "Not added: [5, 12) overlaps LOC [4, 8)" in _texts(at.get_by_key("review_add_panel").error)
    _click(at, "Use the selection [5, 12) '里巴巴在杭州开' as its boundaries")  # overlaps 开会
    assert "Not changed: [5, 12) overlaps ORG [11, 13)" in _texts(at.get_by_key("review_entity_panel").error)
    top = [c for c in at.main.children.values() if getattr(c, "type", None) == "error"]
    assert top == [] and _events(review_db) == []  # none at the top of the page, nothing written
    _click(at, "Undo [u]")  # nothing to undo: said in the decision bar
    assert "Nothing to undo" in _texts(at.get_by_key("review_bar").error)


def test_accept_the_rest_asks_first_when_entities_were_never_on_screen(review_db, monkeypatch):
    """AppTest has no browser, so no entity was reported on screen: the page asks, names them, and
    accepts them all only when the reviewer confirms (the browser test scrolls a long text)."""
    at = _page(review_db, monkeypatch)
    _pick(at, "0:2:PER")
    _click(at, "Accept [a]")
    _click(at, "Accept the rest and next [n]")
    assert [e[1] for e in _events(review_db)] == ["accept"]  # nothing more written yet
    bar = _texts(at.get_by_key("review_bar").warning)
    assert "2 of the 2 entities this would accept were never on screen" in bar and "开会" in bar
    _click(at, "Cancel")
    assert "never on screen" not in _texts(at.warning) and _texts(at.subheader) == f"Document {EMOJI_DOC}"
    _click(at, "Accept the rest and next [n]")
    _click(at, "Accept all 2 and next")
    assert [e[1] for e in _events(review_db)] == ["accept", "accept", "accept", "done"]
    assert _texts(at.subheader) == "Document d-beijing-1"


def test_the_queue_orders_per_character_and_shows_each_length(review_db, monkeypatch):
    at = _page(review_db, monkeypatch)
    queue = at.dataframe[0].value
    assert queue["document"].tolist()[:2] == [EMOJI_DOC, "d-beijing-1"]  # summed: the longest text first
    assert queue["characters"].tolist()[:2] == [20, 8]
    at.radio(key="review_order").set_value("uncertain_per_char").run()
    queue = at.dataframe[0].value
    assert queue["document"].tolist() == ["d-beijing-1", EMOJI_DOC, "d-beijing-2b", "d-old", "d-beijing-2"]
    assert queue["per character"].tolist()[:2] == [5.0 / 8, 9.0 / 20]
    assert "divided by its length in characters" in _texts(at.caption)
    assert "queue position 2 of 5 · 20 characters · uncertainty 9.000 (0.4500 per character)" in _texts(
        at.caption
    )


def test_a_reviewed_document_is_listed_and_reopened(review_db, monkeypatch):
    text = REVIEW_DOCS["d-beijing-1"][0]
    record_events(review_db, [new_event(REVIEW_RUN, "d-beijing-1", text_hash(text), "bob", "done")])
    at = _page(review_db, monkeypatch)
    assert "1 reviewed / 4 queued" in at.get("progress")[0].proto.text
    reopen = at.selectbox(key=f"review_reopen_{REVIEW_RUN}")
    assert reopen.options == ["d-beijing-1 · 8 characters · bob · 李雷在北京工作。"]
    _click(at, "Reopen")
    assert _texts(at.subheader) == "Document d-beijing-1" and at.query_params["doc"] == "d-beijing-1"
    assert "already reviewed" in _texts(at.info)
    _pick(at, "3:5:ORG")
    _click(at, "Reject [r]")  # a decision on it still counts
    assert _current(review_db, "d-beijing-1") == [(0, 2, "PER", "predicted")]


def test_an_evaluation_link_opens_its_predictions_for_review(tmp_path, monkeypatch):
    """The Evaluation page's Review links name the evaluation: the Review page opens the run made from its
    report at that document, and decisions on it are recorded (no model runs, nothing trained)."""
    from tests.test_reviews_storage import _evaluated_db

    db, report = _evaluated_db(tmp_path)
    monkeypatch.setenv("NER_DB", db)
    at = AppTest.from_file(APP, default_timeout=60)
    at.switch_page("app_pages/evaluation.py")
    at.run()
    assert not at.exception, at.exception
    links = [x.proto for x in at.get("page_link") if x.proto.label == "Review"]
    doc_id = report.error_sentences[0].doc_id
    assert len(links) == 2 and parse_qs(links[0].query_string) == {"doc": [doc_id], "eval": ["ev1"]}

    at = AppTest.from_file(APP, default_timeout=60)
    at.switch_page("app_pages/review.py")
    for k, v in {"reviewer": "ann", "doc": doc_id, "eval": "ev1"}.items():
        at.query_params[k] = v
    at.run()
    assert not at.exception, at.exception
    assert _texts(at.subheader) == f"Document {doc_id}" and at.query_params["run"] == "eval-ev1"
    assert "eval" not in at.query_params
    _pick(at, "3:5:ORG")
    _choose(at, "Label", "LOC")
    _click(at, "Change label")
    with duckdb.connect(db, read_only=True) as con:
        got = con.execute("SELECT pred_run_id, doc_id, action, new_label FROM review_events").fetchall()
    assert got == [("eval-ev1", doc_id, "relabel", "LOC")]

    at.query_params["eval"] = "no-such-eval"
    at.run()
    assert "The evaluation's predictions cannot be opened: no evaluation 'no-such-eval' in " in _texts(
        at.error
    )


def test_relabel_every_identical_mention_and_add_a_label(review_db, monkeypatch):
    at = _page(review_db, monkeypatch, doc="d-beijing-1")
    _pick(at, "3:5:ORG")
    at.checkbox(key="review_apply_all").check().run()
    _choose(at, "Label", "LOC")
    _click(at, "Change label")
    assert "Applied to 3 identical mentions" in _texts(at.info)
    relabels = sorted(e[0] for e in _events(review_db) if e[1] == "relabel")
    assert relabels == ["d-beijing-1", "d-beijing-2", "d-beijing-2b"]
    assert _current(review_db, "d-beijing-2")[1] == (5, 7, "LOC", "corrected")

    at.text_input(key="review_new_label").input("CITY").run()
    _click(at, "Add label")
    assert "CITY" in at.selectbox(key="review_add_label").options
    assert [e[1:5] for e in _events(review_db)][-1] == ("add_label", None, None, "CITY")


def test_two_reviewers_disagree_and_the_later_decision_wins(review_db, monkeypatch):
    h = text_hash(EMOJI_TEXT)
    record_events(
        review_db, [new_event(REVIEW_RUN, EMOJI_DOC, h, "bob", "reject", start=0, end=2, label="PER")]
    )
    at = _page(review_db, monkeypatch)
    _pick(at, "0:2:PER")
    _click(at, "Accept [a]")
    assert "Reviewers disagree" in _texts(at.warning)
    table = at.dataframe[-1].value
    assert sorted(zip(table["reviewer"], table["action"], strict=True)) == [
        ("ann", "accept"),
        ("bob", "reject"),
    ]
    assert _current(review_db)[0] == (0, 2, "PER", "accepted")


def test_queue_orders_disagreements_and_search(review_db, monkeypatch):
    at = _page(review_db, monkeypatch)
    at.selectbox[1].set_value("pred-review-b").run()  # compare with the other run
    at.radio(key="review_order").set_value("disagree").run()
    assert "predicted other entities, most disagreements first" in _texts(at.caption)
    queue = at.dataframe[0].value
    assert set(queue["document"]) == {EMOJI_DOC, "d-beijing-1", "d-beijing-2", "d-beijing-2b"}
    at.radio(key="review_order").set_value("search").run()
    at.text_input(key="review_search").input("上海").run()
    assert at.dataframe[0].value["document"].tolist() == ["d-old"]


# --------------------------------------------------------------------------------- the lock test
_HOLDER = """
import sys, duckdb
con = duckdb.connect(sys.argv[1])  # a writer: the file is locked for every other process
con.execute("SELECT count(*) FROM review_events").fetchall()
print("locked", flush=True)
sys.stdin.read()  # hold until the test closes stdin
con.close()
"""


def test_decisions_wait_in_the_spool_while_another_process_holds_the_database(review_db, monkeypatch):
    from ui import queries

    monkeypatch.setattr(queries, "LOCK_WAIT_S", 0.2)  # each rerun waits this long for the lock: keep it short
    at = _page(review_db, monkeypatch)  # reads the document while the database is free
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, review_db], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        _pick(at, "0:2:PER")
        _click(at, "Accept [a]")
        _pick(at, "11:13:ORG")
        _click(at, "Reject [r]")
        assert "2 decisions waiting, the database is busy" in _texts(at.warning)
        assert "1 accepted" in _texts(at.caption) and "1 rejected" in _texts(at.caption)  # shown meanwhile
        spooled = [
            json.loads(x) for x in Path(spool_path(review_db)).read_text(encoding="utf-8").splitlines()
        ]
        assert [e["action"] for e in spooled] == ["accept", "reject"]

        at = _page(review_db, monkeypatch)  # a reload: a new session, the spool is on disk
        assert "2 decisions waiting, the database is busy" in _texts(at.warning)
        _pick(at, "4:8:LOC")
        _choose(at, "Label", "ORG")
        _click(at, "Change label")
        assert "3 decisions waiting, the database is busy" in _texts(at.warning)
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert _events(review_db) == []
    _click(at, "Retry now")
    assert "waiting" not in _texts(at.warning)
    at.run()  # a further rerun writes nothing twice
    assert [e[1] for e in _events(review_db)] == ["accept", "reject", "relabel"]
    assert _current(review_db) == [(0, 2, "PER", "accepted"), (4, 8, "ORG", "corrected")]
    assert Path(spool_path(review_db)).read_text(encoding="utf-8") == ""


# ------------------------------------------------------------------------------ ingest problems
def test_ingest_problems_are_browsed_by_code_file_and_line(tmp_path, monkeypatch):
    from storage.datasets import ingest_dataset

    db = build_review_db(tmp_path)
    lines = [
        {"text": "张伟在北京。", "entities": [{"start": 0, "end": 2, "label": "PER"}]},
        {"text": "张伟在北京。", "entities": []},  # duplicate_text (warning)
        {"text": "", "entities": []},  # empty_text (error)
        {"text": "上海很好。", "entities": [{"start": 0, "end": 9, "label": "LOC"}]},  # span_out_of_range
    ]
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines), encoding="utf-8")
    ingest_dataset(db, "probs", {"train": str(train)})
    monkeypatch.setenv("NER_DB", db)
    at = AppTest.from_file(APP, default_timeout=60)
    at.switch_page("app_pages/problems.py")
    at.query_params["dataset"] = "probs"
    at.run()
    assert not at.exception, at.exception
    by_code = at.dataframe[0].value
    assert set(by_code["code"]) == {"duplicate_text", "empty_text", "span_out_of_range"}
    at.multiselect(key="prob_codes_probs_1").select("empty_text").run()
    shown = at.dataframe[1].value
    assert shown["code"].tolist() == ["empty_text"] and shown["line"].tolist() == [3]
    assert shown["file"].iloc[0].endswith("train.jsonl")


def test_review_and_problems_pages_open_the_legacy_database(legacy_db, monkeypatch):
    """A database written before the review tables existed (tests/fixtures/legacy-3cc253c) is migrated
    on first use and reviewed like any other."""
    monkeypatch.setenv("NER_DB", legacy_db)
    at = AppTest.from_file(APP, default_timeout=60)
    at.query_params["reviewer"] = "ann"
    at.run()
    for name in ("review", "problems"):
        at.switch_page(PAGES[name]).run()
        assert not at.exception, (name, at.exception)
    at.switch_page(PAGES["review"]).run()
    assert _texts(at.subheader).startswith("Document ")
    assert at.get("progress")[0].proto.text.startswith("0 reviewed / ")


def test_a_link_opens_the_named_document_or_says_no_run_holds_it(review_db, monkeypatch):
    """The Evaluation page links an error's document here with ``doc`` (and ``run`` when one covers it)."""
    at = _page(review_db, monkeypatch, doc="d-old")
    assert _texts(at.subheader) == "Document d-old"
    assert "queue position 4 of 5 · 8 characters · uncertainty not stored" in _texts(at.caption)
    at = _page(review_db, monkeypatch, doc="test-000042")
    assert "No prediction run holds document 'test-000042'" in _texts(at.warning)
    assert _texts(at.subheader) == f"Document {EMOJI_DOC}"  # and the queue goes on, from its head


def test_the_page_reads_the_document_once_per_rerun(review_db, monkeypatch):
    """document_for_review brings the predicted entities with the events: the page replays those, and
    reads nothing else of the document (no second read of its predicted entities)."""
    import storage.predictions as predictions
    import storage.reviews as reviews

    calls: list[str] = []
    real_doc, real_predicted = reviews.document_for_review, predictions.predicted_document

    def doc(*a, **k):
        calls.append("document_for_review")
        return real_doc(*a, **k)

    def predicted(*a, **k):
        calls.append("predicted_document")
        return real_predicted(*a, **k)

    monkeypatch.setattr(reviews, "document_for_review", doc)
    monkeypatch.setattr(predictions, "predicted_document", predicted)
    at = _page(review_db, monkeypatch, doc=EMOJI_DOC)
    assert calls == ["document_for_review"]
    shown = [f"{lb} {EMOJI_TEXT[s:e]!r} [{s}, {e}) · predicted" for s, e, lb, _ in REVIEW_DOCS[EMOJI_DOC][2]]
    assert _select(at, "Entity").options[1:] == shown  # the predicted entities it got, replayed
