"""Nested entities through review and export: a span model's prediction run (its config names
``"decoder": "span"``) holds entities inside others; the storage rules, the review export, the Label Studio
and doccano exports, the shared highlighter and the Review page (Streamlit's AppTest) all carry every
level, while a CRF run (``"decoder": "crf"``, or no decoder: runs stored before the span decoder) keeps
the flat rules.

The database is real (DuckDB) and written through storage's own writer
(:class:`storage.predictions.PredictionRunWriter`), no training: tests/test_ui_browser_nested.py builds
the same one for Chromium.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import duckdb
import pytest
from streamlit.testing.v1 import AppTest

from storage.reviews import ReviewRefused, document_for_review, new_event, record_events, text_hash
from tests.ui_fixtures import APP

SPAN_RUN, CRF_RUN, LEGACY_RUN = "span-run", "crf-run", "legacy-run"
#: doc_id -> (text, uncertainty, [(start, end, label, confidence)]) of the span run; the CRF and legacy
#: runs hold the same texts with the outermost entities only (a CRF predicts no nested ones)
NESTED_DOCS = {
    "n-1": ("我在北京大学读书。", 2.0, [(2, 6, "ORG", 0.9), (2, 4, "LOC", 0.6)]),
    "n-2": ("北京市海淀区的学校很多。", 1.5, [(0, 6, "LOC", 0.8), (0, 3, "LOC", 0.7)]),
    "n-3": (
        "😀华为手机在上海卖得很好。",
        1.0,
        [(1, 5, "PRODUCT", 0.8), (1, 3, "ORG", 0.55), (6, 8, "LOC", 0.9)],
    ),
}
LABELS = ["LOC", "ORG", "PER", "PRODUCT"]


def _outermost(ents: list[tuple]) -> list[tuple]:
    return [e for e in ents if not any(o != e and o[0] <= e[0] and e[1] <= o[1] for o in ents)]


def build_nested_db(tmp: Path) -> str:
    """A database with three prediction runs of :data:`NESTED_DOCS`: the span run (nested entities,
    config ``decoder: span``), a CRF run (``decoder: crf``) and a legacy run (no decoder in its config), the
    last two with the outermost entities only; and a model directory holding just its label set."""
    from ner_core.inference.tagger import PredictedEntity
    from storage.db import connect
    from storage.predictions import PredictionRunWriter

    db = str(tmp / "nested.duckdb")
    connect(db).close()
    model = tmp / "model"
    model.mkdir(parents=True, exist_ok=True)
    (model / "labels.json").write_text(json.dumps({"labels": LABELS}), encoding="utf-8")
    for run, decoder in ((SPAN_RUN, "span"), (CRF_RUN, "crf"), (LEGACY_RUN, None)):
        rows = []
        for doc_id, (text, unc, ents) in NESTED_DOCS.items():
            kept = ents if decoder == "span" else _outermost(ents)
            rows.append(
                (doc_id, text, [PredictedEntity(s, e, lb, text[s:e], c) for s, e, lb, c in kept], unc)
            )
        with PredictionRunWriter(
            db,
            run,
            model_dir=str(model),
            run_id=None,
            input_kind="texts",
            input_ref=run,
            extra={"decoder": decoder} if decoder else None,
            replace=True,
        ) as w:
            w.write(rows)
    return db


@pytest.fixture
def nested_db(tmp_path) -> str:
    return build_nested_db(tmp_path)


def _ev(run: str, doc_id: str, action: str, **fields) -> dict:
    text = NESTED_DOCS[doc_id][0]
    return new_event(run, doc_id, text_hash(text), "ann", action, **fields)


def _current(db: str, run: str, doc_id: str) -> list[tuple]:
    with duckdb.connect(db, read_only=True) as con:
        return con.execute(
            'SELECT "start", "end", label, state FROM v_review_current WHERE pred_run_id = ? AND doc_id = ? '
            'ORDER BY "start", "end", label',
            [run, doc_id],
        ).fetchall()


# ------------------------------------------------------------------------------------------ storage
def test_the_decoder_is_read_from_the_run_config_and_absent_means_crf(nested_db):
    assert document_for_review(nested_db, SPAN_RUN, "n-1")["decoder"] == "span"
    assert document_for_review(nested_db, CRF_RUN, "n-1")["decoder"] == "crf"
    assert document_for_review(nested_db, LEGACY_RUN, "n-1")["decoder"] == "crf"
    doc = document_for_review(nested_db, SPAN_RUN, "n-1")
    assert [(e["start"], e["end"], e["label"]) for e in doc["entities"]] == [(2, 4, "LOC"), (2, 6, "ORG")]


def test_an_inner_span_is_added_in_a_span_run_and_refused_in_a_flat_one(nested_db):
    # 海淀区 inside 北京市海淀区: a span run takes it
    assert record_events(nested_db, [_ev(SPAN_RUN, "n-2", "add", start=3, end=6, label="LOC")]) == 1
    assert (3, 6, "LOC", "added") in _current(nested_db, SPAN_RUN, "n-2")
    # the same in a CRF run's document, and in a legacy run's: one line, nothing written
    for run in (CRF_RUN, LEGACY_RUN):
        with pytest.raises(
            ReviewRefused, match=r"span \[3, 6\) '海淀区' overlaps the current entity LOC \[0, 6\)"
        ):
            record_events(nested_db, [_ev(run, "n-2", "add", start=3, end=6, label="LOC")])
        assert (3, 6, "LOC", "added") not in _current(nested_db, run, "n-2")


def test_a_span_run_refuses_one_entity_twice_on_the_same_span(nested_db):
    # moving the inner LOC 北京 onto the outer's span with the outer's label would make ORG 北京大学 twice
    with pytest.raises(ReviewRefused, match=r"ORG \[2, 6\) '北京大学' is already a current entity"):
        record_events(
            nested_db,
            [
                _ev(
                    SPAN_RUN,
                    "n-1",
                    "adjust",
                    start=2,
                    end=4,
                    label="LOC",
                    new_start=2,
                    new_end=6,
                    new_label="ORG",
                )
            ],
        )
    # a second label on the same span is another entity: taken
    record_events(nested_db, [_ev(SPAN_RUN, "n-1", "add", start=2, end=6, label="LOC")])
    assert _current(nested_db, SPAN_RUN, "n-1") == [
        (2, 4, "LOC", "predicted"),
        (2, 6, "LOC", "added"),
        (2, 6, "ORG", "predicted"),
    ]


def test_an_evaluation_of_a_span_model_opens_with_its_nested_predictions(nested_db):
    from storage.reviews import evaluation_review_run

    sent = {"doc_id": "e-1", "text": "我在北京大学读书。", "gold": [], "pred": [], "kinds": ["spurious"]}
    sent["pred"] = [{"start": 2, "end": 6, "label": "ORG"}, {"start": 2, "end": 4, "label": "LOC"}]
    with duckdb.connect(nested_db) as con:
        con.execute(
            "INSERT INTO evaluations (eval_id, run_id, model_dir, dataset, split, created_at, report) "
            "VALUES ('ev1', NULL, 'm', 'ds', NULL, now(), ?)",
            [json.dumps({"error_sentences": [sent]})],
        )
    run = evaluation_review_run(nested_db, "ev1")
    doc = document_for_review(nested_db, run, "e-1")
    assert doc["decoder"] == "span" and len(doc["entities"]) == 2


# ------------------------------------------------------------------------------------------ exports
def _done(db: str, run: str, doc_id: str) -> None:
    record_events(db, [_ev(run, doc_id, "done")])


def test_the_review_export_keeps_a_span_runs_nested_entities(nested_db):
    from storage.review_export import export_reviews

    record_events(nested_db, [_ev(SPAN_RUN, "n-2", "add", start=3, end=6, label="LOC")])
    for doc_id in NESTED_DOCS:
        _done(nested_db, SPAN_RUN, doc_id)
    got = export_reviews(nested_db, SPAN_RUN, "gold-nested")
    assert got["left_out"] == 0 and got["documents"] == 3
    assert got["entities"] == 4 and got["nested"] == 4  # outer: 北京大学 北京市海淀区 华为手机 上海
    assert "4 more entities overlap another (nested; span runs)" in got["message"]
    with duckdb.connect(nested_db, read_only=True) as con:
        gold = con.execute(
            'SELECT doc_id, "start", "end", label FROM gold_entities WHERE dataset = ? ORDER BY ALL',
            ["gold-nested"],
        ).fetchall()
        inner = con.execute(
            'SELECT doc_id, "start", "end", label, reason, kept_start, kept_end, kept_label '
            "FROM dropped_spans WHERE dataset = 'gold-nested' ORDER BY ALL"
        ).fetchall()
    assert gold == [
        ("n-1", 2, 6, "ORG"),
        ("n-2", 0, 6, "LOC"),
        ("n-3", 1, 5, "PRODUCT"),
        ("n-3", 6, 8, "LOC"),
    ]
    assert inner == [
        ("n-1", 2, 4, "LOC", "nested", 2, 6, "ORG"),
        ("n-2", 0, 3, "LOC", "nested", 0, 6, "LOC"),
        ("n-2", 3, 6, "LOC", "nested", 0, 6, "LOC"),
        ("n-3", 1, 3, "ORG", "nested", 1, 5, "PRODUCT"),
    ]


def test_the_review_export_of_a_flat_run_still_leaves_overlapping_documents_out(tmp_path):
    """A run stored without a decoder whose rows overlap anyway (written directly): left out, as before."""
    from ner_core.inference.tagger import PredictedEntity
    from storage.predictions import PredictionRunWriter
    from storage.review_export import export_reviews

    db = build_nested_db(tmp_path)
    text = NESTED_DOCS["n-1"][0]
    with PredictionRunWriter(
        db,
        "flat-overlaps",
        model_dir=str(tmp_path / "model"),
        run_id=None,
        input_kind="texts",
        input_ref="x",
        replace=True,
    ) as w:
        w.write(
            [
                (
                    "n-1",
                    text,
                    [PredictedEntity(s, e, lb, text[s:e], c) for s, e, lb, c in NESTED_DOCS["n-1"][2]],
                )
            ]
        )
    for doc_id in ("n-1", "n-2"):
        _done(db, CRF_RUN, doc_id)
    _done(db, "flat-overlaps", "n-1")
    with pytest.raises(
        ValueError, match=r"1 left out \(entities overlap at ORG\[2,6\) \(a flat prediction run's document\)"
    ):
        export_reviews(db, "flat-overlaps", "gold-flat-bad")
    got = export_reviews(db, CRF_RUN, "gold-flat")
    assert got["left_out"] == 0 and got["nested"] == 0 and got["entities"] == 2


@pytest.mark.parametrize("fmt", ["label-studio", "doccano"])
def test_nested_spans_round_trip_through_label_studio_and_doccano(nested_db, tmp_path, fmt):
    """Exported (`ner export`), completed as the tool would (Label Studio: the predictions accepted as the
    annotation), read back by the format's reader: the same spans, the nested ones in ``dropped``, where
    the ingest stores them in dropped_spans."""
    from app.commands.export import export_prediction_run
    from ner_core.data.formats import read_file

    out = tmp_path / ("tasks.json" if fmt == "label-studio" else "tasks.jsonl")
    summary = export_prediction_run(nested_db, SPAN_RUN, fmt, out)
    assert summary["entities"] == 7 and summary["overlapping"] == 3
    if fmt == "label-studio":
        tasks = json.loads(out.read_text(encoding="utf-8"))
        for t in tasks:
            t["annotations"] = [{"result": t["predictions"][0]["result"], "was_cancelled": False}]
        out.write_text(json.dumps(tasks, ensure_ascii=False), encoding="utf-8")
    parsed = read_file(out, fmt.replace("-", "_"))
    assert not parsed.errors, parsed.errors
    got = {}
    for i, (_doc_id, text, spans, _line) in enumerate(parsed.records):
        got[text] = set(spans) | {(d[1], d[2], d[3]) for d in parsed.dropped if d[0] == i}
    want = {text: {(s, e, lb) for s, e, lb, _ in ents} for text, _, ents in NESTED_DOCS.values()}
    assert got == want


# ------------------------------------------------------------------------------------------ highlighter
def test_the_highlighter_shows_every_level_nested_and_escaped():
    from ui.app_pages.common import highlight_html, label_colours

    text = "<i>北京大学</i>的学生"
    out = highlight_html(
        text, [(3, 7, "ORG"), (3, 5, "LOC"), (3, 7, "PER")], label_colours(["ORG", "LOC", "PER"])
    )
    assert "<i>" not in out and "&lt;i&gt;" in out
    # every label shown, each inner element inside its outer one, levels counted from the outside
    assert re.findall(r'data-label="(\w+)" data-level="(\d)"', out) == [
        ("ORG", "1"),
        ("PER", "2"),
        ("LOC", "3"),
    ]
    assert re.findall(r">(\w+)</sup>", out) == ["LOC", "PER", "ORG"]
    assert 'title="LOC [3, 5) 北京 · inside PER [3, 7) 北京大学 · inside ORG [3, 7) 北京大学"' in out
    # stacked underlines: the outer one lowest
    pads = [int(p) for p in re.findall(r"padding:0 2px (\d+)px", out)]
    assert pads[0] > pads[1] > pads[2] == 0
    assert re.sub(r"<sup[^>]*>.*?</sup>|<[^>]+>", "", out).replace("&lt;", "<").replace("&gt;", ">") == text


def test_nesting_levels_count_the_entities_around_each():
    from ui.review_state import nesting_levels

    def ent(s, e, lb, state="predicted"):
        return {"key": (s, e, lb), "start": s, "end": e, "label": lb, "state": state}

    ents = [
        ent(0, 6, "LOC"),
        ent(0, 3, "LOC"),
        ent(1, 2, "X"),
        ent(0, 6, "ORG"),
        ent(7, 9, "PER", "rejected"),
    ]
    ents.append(ent(7, 8, "LOC"))
    assert nesting_levels(ents) == {
        "0:6:LOC": 1,
        "0:3:LOC": 2,
        "1:2:X": 3,
        "0:6:ORG": 1,
        "7:9:PER": 1,
        "7:8:LOC": 1,
    }


# ------------------------------------------------------------------------------------------ the page
def _page(db: str, monkeypatch, run: str, doc: str) -> AppTest:
    monkeypatch.setenv("NER_DB", db)
    at = AppTest.from_file(APP, default_timeout=60)
    at.switch_page("app_pages/review.py")
    at.query_params.update({"run": run, "reviewer": "ann", "doc": doc})
    at.run()
    assert not at.exception, at.exception
    return at


def _plain(markdown: str) -> str:
    return re.sub(r"\\(.)", r"\1", str(markdown)).replace("\u2060", "")


def _texts(elements) -> str:
    return "\n".join(_plain(e.value) for e in elements)


def _click_key(at: AppTest, prefix: str) -> AppTest:
    next(b for b in at.button if b.key and b.key.startswith(prefix)).click().run()
    assert not at.exception, at.exception
    return at


def test_the_review_page_shows_each_level_and_acts_on_each_span(nested_db, monkeypatch):
    at = _page(nested_db, monkeypatch, SPAN_RUN, "n-1")
    levels = at.get_by_key("review_levels")
    shown = _texts(levels.markdown)
    assert "Level 1** (outermost)" in shown and "Level 2** (inside 1 other entity)" in shown
    assert "ORG '北京大学' [2, 6) · predicted" in shown and "LOC '北京' [2, 4) · predicted" in shown
    table = next(d.value for d in at.dataframe if "mention" in d.value.columns)
    got = table[["level", "label", "mention"]].values.tolist()
    assert got == [[2, "LOC", "北京"], [1, "ORG", "北京大学"]]  # the level column: 1 the outermost
    # the picker shows the inner one a level in
    picker = next(s for s in at.selectbox if s.label == "Entity")
    assert "↳ LOC '北京' [2, 4) · predicted" in picker.options
    # accept the inner one, reject the outer one: entities are listed in (start, end, label) order, 0 = LOC
    _click_key(at, "review_lvl_acc_0_")
    _click_key(at, "review_lvl_rej_1_")
    with duckdb.connect(nested_db, read_only=True) as con:
        rows = con.execute(
            'SELECT action, "start", "end", label FROM review_events WHERE pred_run_id = ? '
            "ORDER BY created_at",
            [SPAN_RUN],
        ).fetchall()
    assert rows == [("accept", 2, 4, "LOC"), ("reject", 2, 6, "ORG")]
    assert _current(nested_db, SPAN_RUN, "n-1") == [(2, 4, "LOC", "accepted")]
    # relabel an inner span: Pick puts it in the panel
    at = _page(nested_db, monkeypatch, SPAN_RUN, "n-3")
    _click_key(at, "review_lvl_sel_0_")  # ORG 华为 inside PRODUCT 华为手机
    assert "**Selected:** ORG '华为' [1, 3)" in _texts(at.markdown)
    next(s for s in at.selectbox if s.label == "Label").set_value("LOC").run()
    next(b for b in at.button if _plain(b.label) == "Change label").click().run()
    assert (1, 3, "LOC", "corrected") in _current(nested_db, SPAN_RUN, "n-3")


def _add_typed(at: AppTest, start: int, end: int, label: str) -> AppTest:
    at.number_input(key="review_typed_s").set_value(start).run()
    at.number_input(key="review_typed_e").set_value(end).run()
    at.button(key="review_typed_go").click().run()
    at.selectbox(key="review_add_label").set_value(label).run()
    next(b for b in at.button if _plain(b.label) == "Add entity").click().run()
    assert not at.exception, at.exception
    return at


def test_an_inner_span_is_added_on_a_span_runs_page_and_refused_on_a_flat_ones(nested_db, monkeypatch):
    at = _page(nested_db, monkeypatch, SPAN_RUN, "n-2")
    _add_typed(at, 3, 6, "LOC")  # 海淀区 inside 北京市海淀区
    assert (3, 6, "LOC", "added") in _current(nested_db, SPAN_RUN, "n-2")
    assert "LOC '海淀区' [3, 6) · added" in _texts(at.get_by_key("review_levels").markdown)
    _add_typed(at, 3, 6, "LOC")  # once more: the same entity twice is refused beside the add panel
    assert "Not added: LOC [3, 6) is already an entity (added)" in _texts(
        at.get_by_key("review_add_panel").error
    )

    at = _page(nested_db, monkeypatch, CRF_RUN, "n-2")
    assert not [b for b in at.button if b.key and b.key.startswith("review_lvl_")]  # flat: no level list
    _add_typed(at, 3, 6, "LOC")
    assert "Not added: [3, 6) overlaps LOC [0, 6)" in _texts(at.get_by_key("review_add_panel").error)
    assert _current(nested_db, CRF_RUN, "n-2") == [(0, 6, "LOC", "predicted")]


def test_the_predictions_page_shows_the_nested_entities_of_a_span_run(nested_db, monkeypatch):
    monkeypatch.setenv("NER_DB", nested_db)
    at = AppTest.from_file(APP, default_timeout=60)
    at.switch_page("app_pages/predictions.py")
    at.run()
    at.selectbox(key="pred_run").set_value(SPAN_RUN).run()
    assert not at.exception, at.exception
    body = next(h.proto.body for h in at.get("html") if 'class="ner-text"' in h.proto.body)
    # the first document by the page's order is shown with both levels: 北京 LOC inside 北京大学 ORG
    assert re.findall(r'data-label="(\w+)" data-level="(\d)"', body) == [("ORG", "1"), ("LOC", "2")]


def test_ner_export_then_ner_ingest_keeps_every_nested_span(nested_db, tmp_path, capsys):
    """The commands a user runs: `ner export` (says how many entities overlap), the file back through
    `ner ingest`: gold_entities hold the outermost spans, dropped_spans the nested ones: all seven."""
    from app import cli

    out = tmp_path / "span.jsonl"
    argv = ["export", "--db", nested_db, "--pred-run", SPAN_RUN, "--format", "doccano", "--out", str(out)]
    assert cli.main(argv) == 0
    assert "3 documents, 7 entities (3 overlap another: nested) as doccano" in capsys.readouterr().out
    argv = ["ingest", "--db", nested_db, "--name", "back", "--train", str(out), "--no-prefect"]
    assert cli.main(argv) == 0
    with duckdb.connect(nested_db, read_only=True) as con:
        got = con.execute(
            'SELECT d.text, g."start", g."end", g.label FROM gold_entities g JOIN documents d '
            "USING (dataset, version, doc_id) WHERE dataset = 'back' UNION ALL "
            'SELECT d.text, s."start", s."end", s.label FROM dropped_spans s JOIN documents d '
            "USING (dataset, version, doc_id) WHERE dataset = 'back'"
        ).fetchall()
    want = {(text, s, e, lb) for text, _, ents in NESTED_DOCS.values() for s, e, lb, _ in ents}
    assert sorted(got) == sorted(want)
