"""Dashboard tests: query guards and rendering helpers (fast), and every page through Streamlit's AppTest
on a real database made by two tiny pipeline runs (slow: the fixture trains two small models)."""

from __future__ import annotations

import html
import re
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from tests.ui_crafted import PAYLOAD, add_crafted_rows
from tests.ui_fixtures import APP, PAGES
from ui import queries
from ui.app_pages.common import WORD_JOINER, fmt, highlight_html, label_colours, legend_html


def _fresh_db(path: Path) -> str:
    from storage.db import connect

    connect(path).close()  # applies the migrations: schema, no rows
    return str(path)


def _app(db: str | Path, monkeypatch, timeout: float = 60) -> AppTest:
    monkeypatch.setenv("NER_DB", str(db))
    at = AppTest.from_file(APP, default_timeout=timeout)
    at.run()
    return at


def _con(db: str):
    return duckdb.connect(db, read_only=True)


def _texts(elements) -> list[str]:
    return [e.value for e in elements]


def _strip_tags(s: str) -> str:
    return html.unescape(re.sub(r"<sup[^>]*>.*?</sup>|<[^>]+>", "", s))


def _shown(markdown: str) -> tuple[str, set[str]]:
    """What a Markdown element shows: its text (CommonMark, as Streamlit's renderer reads it; the invisible
    word joiners left in) and the kinds of inline token it makes (``link_open``, ``image``, ...)."""
    from markdown_it import MarkdownIt

    text, kinds = [], set()
    for block in MarkdownIt("commonmark").parse(markdown):
        for tok in block.children or []:
            kinds.add(tok.type)
            text.append(" " if tok.type in ("softbreak", "hardbreak") else tok.content)
    return "".join(text), kinds


def _markdown_shown(at: AppTest) -> list[str]:
    """The Markdown source of every element of the page that renders Markdown from the script's strings."""
    elements = (*at.caption, *at.markdown, *at.info, *at.warning, *at.error, *at.success)
    return [e.value for e in elements] + [x.label for x in at.expander]


def _assert_data_as_data(at: AppTest, data: str) -> str:
    """``data`` shows as itself in some Markdown element of ``at``, and no element makes a link or an image
    or keeps a Streamlit directive or bare URL of it; returns the element's visible text."""
    found = None
    for md in _markdown_shown(at):
        text, kinds = _shown(md)
        assert not kinds & {"link_open", "image", "html_inline"}, (md, kinds)
        assert not re.search(r"(?<!\\)(:red\[|:material/|\$x)", md), md  # Streamlit's own syntax
        assert "http://" not in text, text  # GFM would link it: a word joiner sits in it
        if data in text.replace(WORD_JOINER, ""):
            found = text
    assert found is not None, (data, _markdown_shown(at))
    return found


# ------------------------------------------------------------------------------------------- SQL
def test_run_sql_returns_a_frame_and_says_when_rows_were_cut(tmp_path):
    """The page's wrapper around storage.query.query (whose guard is tested in tests/test_storage.py)."""
    db = _fresh_db(tmp_path / "fresh.duckdb")
    res = queries.run_sql(db, "SELECT * FROM range(10) t(i)", 3)
    assert res.frame["i"].tolist() == [0, 1, 2] and res.truncated
    res = queries.run_sql(db, "SELECT * FROM range(3) t(i)", 3)
    assert len(res.frame) == 3 and not res.truncated
    assert list(queries.run_sql(db, "SELECT 1 AS a WHERE false", 3).frame.columns) == ["a"]
    with pytest.raises(queries.SqlRejected, match="DROP statements are not allowed"):
        queries.run_sql(db, "DROP TABLE runs", 3)
    with pytest.raises(ValueError, match="expected limit as an int >= 1, got 0"):
        queries.run_sql(db, "SELECT 1", 0)


# ---------------------------------------------------------------------------------------- rendering
def test_highlight_html_escapes_text_and_wraps_each_span():
    text = "<b>张伟</b>在北京&上海"
    spans = [(3, 5, "PER"), (10, 12, "LOC"), (13, 15, "LOC")]
    out = highlight_html(text, spans, label_colours(["PER", "LOC"]))
    assert "<b>" not in out and "&lt;b&gt;" in out and "&amp;" in out
    assert re.findall(r'data-label="(\w+)"[^>]*>([^<]+)<sup', out) == [
        ("PER", "张伟"),
        ("LOC", "北京"),
        ("LOC", "上海"),
    ]
    assert _strip_tags(out) == text


def test_highlight_html_cuts_crossing_spans_and_checks_bounds():
    out = highlight_html("中华人民共和国", [(0, 4, "LOC"), (2, 7, "ORG")], {"LOC": "#fff", "ORG": "#eee"})
    # ORG crosses LOC: cut into two pieces (one inside LOC) so the elements nest; both labels shown
    assert out.count('class="ent"') == 3 and _strip_tags(out) == "中华人民共和国"
    assert re.findall(r">(\w+)</sup>", out) == ["LOC", "ORG"]
    assert "background:#dddddd" not in out  # LOC has its colour
    with pytest.raises(ValueError, match=r"span \[2, 9\) PER lies outside the text \(length 4\)"):
        highlight_html("张伟来了", [(2, 9, "PER")], {})


def test_fmt_shows_a_dash_for_missing_values():
    assert [fmt(x) for x in (None, float("nan"), pd.NA, 0.5, 3, np.int32(2))] == [
        "-",
        "-",
        "-",
        "0.5000",
        "3",
        "2",
    ]
    runs = pd.DataFrame({"best_epoch": pd.array([2, None], dtype="Int32")})  # as DuckDB gives nullable ints
    assert [fmt(v) for v in runs["best_epoch"]] == ["2", "-"]


def test_label_colours_are_stable_and_legend_lists_labels():
    a = label_colours(["PER", "LOC", "ORG"])
    assert a == label_colours(["ORG", "PER", "LOC", "PER"]) and len(set(a.values())) == 3
    assert re.findall(r">(\w+)</span>", legend_html(a)) == ["LOC", "ORG", "PER"]


def test_error_sentences_filter_by_label_and_kind():
    report = {
        "error_sentences": [
            {
                "doc_id": "a",
                "text": "x",
                "gold": [{"start": 0, "end": 1, "label": "PER"}],
                "pred": [],
                "kinds": ["missed"],
            },
            {
                "doc_id": "b",
                "text": "y",
                "gold": [],
                "pred": [{"start": 0, "end": 1, "label": "LOC"}],
                "kinds": ["spurious"],
            },
        ]
    }
    assert [s["doc_id"] for s in queries.error_sentences(report)] == ["a", "b"]
    assert [s["doc_id"] for s in queries.error_sentences(report, label="LOC")] == ["b"]
    assert [s["doc_id"] for s in queries.error_sentences(report, kind="missed")] == ["a"]
    assert queries.error_sentences(report, label="PER", kind="spurious") == []
    with pytest.raises(ValueError, match="expected an error kind"):
        queries.error_sentences(report, kind="wrong")


# ------------------------------------------------------------------------------- database states
def test_missing_database_shows_a_clear_error(tmp_path, monkeypatch):
    at = _app(tmp_path / "nope.duckdb", monkeypatch)
    assert not at.exception
    assert any("does not exist" in e and "nope.duckdb" in e for e in (_shown(e)[0] for e in _texts(at.error)))
    assert _assert_data_as_data(at, str(tmp_path / "nope.duckdb"))  # the path is shown escaped


def test_empty_database_says_it_is_empty(tmp_path, monkeypatch):
    db = _fresh_db(tmp_path / "empty.duckdb")
    at = _app(db, monkeypatch)
    assert not at.exception
    assert any("is empty" in m for m in _texts(at.info))
    # the dashboard holds no connection between reruns: a writer gets the file at once
    from storage.db import connect

    connect(db, wait_s=0).close()
    plain = tmp_path / "plain.duckdb"
    duckdb.connect(str(plain)).close()  # a DuckDB file without the schema
    at = _app(plain, monkeypatch)
    assert any("no NER schema" in m for m in _texts(at.info))


def test_busy_database_shows_a_clear_warning(tmp_path, monkeypatch):
    db = _fresh_db(tmp_path / "busy.duckdb")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); print('ready', "
            "flush=True); time.sleep(60)",
            db,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "ready"
        t0 = time.monotonic()
        at = _app(db, monkeypatch)
        assert time.monotonic() - t0 < 20
        assert any("busy" in w and f"PID {holder.pid}" in w for w in _texts(at.warning)), _texts(at.warning)
    finally:
        holder.kill()
        holder.wait()


# ------------------------------------------------------------------------ hostile data, old paths
@pytest.fixture
def crafted(tmp_path) -> dict:
    """A database holding only :mod:`tests.ui_crafted`'s rows (no training: fast), its model directory an
    empty folder stored relative to the database's folder, as code before absolute paths stored it."""
    model = tmp_path / "elsewhere" / "model"
    model.mkdir(parents=True)
    db = tmp_path / "db" / "crafted.duckdb"
    db.parent.mkdir()
    return {**add_crafted_rows(db, model, tmp_path / "work"), "db": str(db), "model": str(model)}


def test_pages_show_ids_texts_and_url_parameters_as_data(crafted, monkeypatch):
    """Run ids, stopped reasons, SQL inputs, document texts and ?line= reach captions, warnings and labels
    escaped: no link, image, directive or bare URL made of them (the browser test checks the rendering)."""
    at = _app(crafted["db"], monkeypatch)
    assert not at.exception
    _assert_data_as_data(at, crafted["run_id"])  # the Runs page's comparison caption
    _assert_data_as_data(at, PAYLOAD)  # its stopped reason
    assert [c for c in _texts(at.caption) if c.startswith("1 run,")], _texts(at.caption)  # not "1 runs"
    at.switch_page(PAGES["predictions"]).run()
    assert not at.exception
    _assert_data_as_data(at, f"input SELECT 'd' AS doc_id, '{PAYLOAD}' AS text")
    _assert_data_as_data(at, "1 entity in this document")
    at.switch_page(PAGES["problems"])
    at.query_params["line"] = PAYLOAD
    at.run()
    assert not at.exception and at.number_input(key="prob_line").value == 0
    _assert_data_as_data(at, f"Ignored the link's line {PAYLOAD}: not a line number.")


def test_try_it_finds_a_model_stored_relative_to_the_database_folder(crafted, monkeypatch):
    """Code before absolute paths stored ``runs/<id>/model`` relative to the folder its command ran in: the
    page resolves it against the database's folder, whatever folder the dashboard started in."""
    at = _app(crafted["db"], monkeypatch)
    at.switch_page(PAGES["try_it"]).run()
    assert not at.exception and not Path(crafted["model_dir"]).is_absolute()
    assert at.selectbox(key="try_model").value == crafted["run_id"]
    assert _assert_data_as_data(at, f"model directory: {crafted['model']}") == _shown(at.caption[0].value)[0]


def test_runs_table_shows_the_scores_first(crafted, monkeypatch):
    at = _app(crafted["db"], monkeypatch)
    assert list(at.dataframe[0].value.columns[:5]) == [
        "run_id",
        "best_dev_f1",
        "test_f1",
        "test_precision",
        "test_recall",
    ]


def test_curves_show_one_epoch_runs_and_mark_best_and_early_stop(crafted, monkeypatch):
    """Each epoch is a point (a one-epoch run is one point, no line), the best epoch a diamond, an early
    stop a dashed rule at the epoch it stopped."""
    import json

    import pyarrow as pa

    from ner_core.config import NERConfig
    from storage import runs as runs_db

    db = crafted["db"]
    runs_db.create_run(
        db, "run-early", dataset="x", dataset_version=1, config_json=NERConfig().to_json(), run_dir="r"
    )
    for epoch, f1 in ((1, 0.2), (2, 0.5), (3, 0.4), (4, 0.3)):
        runs_db.record_epoch(db, "run-early", {"epoch": epoch, "train_loss": 5.0 - epoch, "dev_f1": f1})
    stop = "early stop: no dev F1 gain for 2 epochs"
    runs_db.finish_run(
        db, "run-early", status="completed", best_epoch=2, best_dev_f1=0.5, seconds=1.0, stopped_reason=stop
    )
    at = _app(db, monkeypatch)
    at.switch_page(PAGES["curves"]).run()
    assert not at.exception
    assert set(at.multiselect(key="curve_runs").value) == {"run-early", crafted["run_id"]}
    specs = [(c.proto, json.loads(c.proto.spec)) for c in at.get("vega_lite_chart")]
    chart, spec = next((c, s) for c, s in specs if s["layer"][0]["encoding"]["y"]["field"] == "dev_f1")
    layers = spec["layer"]
    tables = {d.name: pa.ipc.open_stream(d.data.data).read_all().to_pandas() for d in chart.datasets}
    line, best, rule = layers
    assert line["mark"]["type"] == "line" and line["mark"]["point"]  # points: one epoch shows
    points = tables[line["data"]["name"]]
    assert sorted(points.loc[points["run_id"] == crafted["run_id"], "epoch"]) == [1]
    assert best["mark"]["shape"] == "diamond" and best["transform"] == [{"filter": "datum.best"}]
    marked = points[points["best"]]
    best_epochs = sorted(zip(marked["run_id"], marked["epoch"], strict=True))
    assert best_epochs == [(crafted["run_id"], 1), ("run-early", 2)]
    stops = tables[rule["data"]["name"]]
    assert rule["mark"]["type"] == "rule" and "strokeDash" in rule["mark"]
    assert stops.loc[stops["run_id"] == "run-early", "stop_epoch"].tolist() == [4]


# ---------------------------------------------------------------- pages on the legacy database
def test_every_page_renders_the_legacy_database(legacy_db, monkeypatch):
    """The DuckDB file written by the code at commit 3cc253c (tests/fixtures/legacy-3cc253c): each page
    renders it without an exception and shows its runs, evaluation and predicted documents."""
    with _con(legacy_db) as con:
        run_ids = {r[0] for r in con.execute("SELECT run_id FROM runs").fetchall()}
        (eval_id,) = con.execute("SELECT eval_id FROM evaluations").fetchone()
        (pred_run_id,) = con.execute("SELECT pred_run_id FROM prediction_runs").fetchone()
        (production,) = con.execute("SELECT run_id FROM runs WHERE is_production").fetchone()
    app = _app(legacy_db, monkeypatch)
    assert not app.exception and [t.value for t in app.title] == ["Training runs"]
    assert set(app.dataframe[0].value["run_id"]) == run_ids
    shown = {
        "curves": lambda: set(app.dataframe[0].value["run_id"]) == run_ids,
        "evaluation": lambda: app.selectbox(key="eval_id").value == eval_id,
        "predictions": lambda: (
            app.selectbox(key="pred_run").value == pred_run_id
            and any("ner-text" in h for h in _texts(app.html))
        ),
        "try_it": lambda: app.selectbox(key="try_model").value == production,
        "sql": lambda: not app.error,
    }
    for name, check in shown.items():
        app.switch_page(PAGES[name]).run()
        assert not app.exception, (name, app.exception)
        assert check(), name
    app.button(key="sql_run").click().run()  # the default query, over the legacy views
    assert not app.exception and not app.error


# ------------------------------------------------------------------------- pages on a real database
@pytest.fixture
def app(ui_db, monkeypatch):
    return _app(ui_db["db"], monkeypatch)


@pytest.mark.slow
def test_runs_page_lists_every_run_and_compares_two(app, ui_db):
    assert not app.exception
    with _con(ui_db["db"]) as con:
        stored = dict(con.execute("SELECT run_id, best_dev_f1 FROM runs").fetchall())
    assert set(stored) == {t["run_id"] for t in ui_db["train"]}
    table = app.dataframe[0].value
    assert set(table["run_id"]) == set(stored)
    assert dict(zip(table["run_id"], table["best_dev_f1"], strict=True)) == pytest.approx(stored)
    assert {"test_f1", "head", "n_epochs"} <= set(table.columns)
    run_a, run_b = app.selectbox(key="run_a").value, app.selectbox(key="run_b").value
    assert {run_a, run_b} == set(stored)
    compare = app.dataframe[1].value.set_index("setting")
    assert compare.loc["best_dev_f1", "run A"] == f"{stored[run_a]:.4f}"
    assert compare.loc["head.type", "run A"] != compare.loc["head.type", "run B"]  # bilstm vs bigru
    app.toggle(key="only_diff").set_value(True).run()
    diff = app.dataframe[1].value
    assert diff["differs"].all() and "head.type" in set(diff["setting"])
    assert "data.max_len" not in set(diff["setting"])


@pytest.mark.slow
def test_curves_page_shows_the_stored_epochs(app, ui_db):
    app.switch_page(PAGES["curves"]).run()
    assert not app.exception
    assert [t.value for t in app.title] == ["Training curves"]
    ep = app.dataframe[0].value
    with _con(ui_db["db"]) as con:
        rows = con.execute(
            "SELECT run_id, epoch, train_loss, dev_f1 FROM epochs ORDER BY run_id, epoch"
        ).fetchall()
    got = sorted(zip(ep["run_id"], ep["epoch"], ep["train_loss"], ep["dev_f1"], strict=True))
    assert [r[:2] for r in got] == [r[:2] for r in rows]
    assert [r[2] for r in got] == pytest.approx([r[2] for r in rows])


@pytest.mark.slow
def test_evaluation_page_scores_errors_and_error_browser(app, ui_db):
    app.switch_page(PAGES["evaluation"]).run()
    assert not app.exception
    eval_id = app.selectbox(key="eval_id").value
    with _con(ui_db["db"]) as con:
        types = con.execute(
            "SELECT label, f1, support FROM evaluation_types WHERE eval_id = ? ORDER BY label", [eval_id]
        ).fetchall()
        n_err = dict(
            con.execute(
                "SELECT kind, sum(n) FROM evaluation_errors WHERE eval_id = ? GROUP BY kind", [eval_id]
            ).fetchall()
        )
        report = con.execute("SELECT report FROM evaluations WHERE eval_id = ?", [eval_id]).fetchone()[0]
    assert [r[0] for r in types] == ["FIN", "LOC", "ORG", "PER"]
    per_type = app.dataframe[0].value
    assert list(per_type["label"]) == [r[0] for r in types]
    assert list(per_type["support"]) == [r[2] for r in types]
    assert list(per_type["f1"]) == pytest.approx([r[1] for r in types])
    errors = app.dataframe[1].value
    for kind, n in n_err.items():
        assert errors[kind].sum() == n
    # error browser: gold spans highlighted with the Chinese mention, legend present
    import json

    sentences = json.loads(report)["error_sentences"]
    assert sentences
    htmls = _texts(app.html)
    assert any("ner-legend" in h and "PER" in h for h in htmls)
    first = sentences[0]
    g = first["gold"][0] if first["gold"] else first["pred"][0]
    mention = first["text"][g["start"] : g["end"]]
    assert re.search(r"[\u4e00-\u9fff]", mention)
    assert any(f'data-label="{g["label"]}"' in h and html.escape(mention) in h for h in htmls)
    # filter by kind: only sentences with that kind remain
    app.selectbox(key="err_kind").set_value("missed").run()
    n_missed = sum("missed" in s["kinds"] for s in sentences)
    assert any(c.startswith(f"{n_missed} sentences with errors match") for c in _texts(app.caption))
    app.selectbox(key="err_label").set_value("PER")
    app.selectbox(key="err_kind").set_value("(all)")
    app.run()
    n_per = sum(any(e["label"] == "PER" for e in s["gold"] + s["pred"]) for s in sentences)
    assert any(c.startswith(f"{n_per} sentences with errors match") for c in _texts(app.caption))


@pytest.mark.slow
def test_predictions_page_search_document_view_and_frequencies(app, ui_db):
    app.switch_page(PAGES["predictions"]).run()
    assert not app.exception
    with _con(ui_db["db"]) as con:
        pred_run_id = con.execute(
            "SELECT pred_run_id FROM prediction_runs ORDER BY n_entities DESC LIMIT 1"
        ).fetchone()[0]
    app.selectbox(key="pred_run").set_value(pred_run_id).run()
    with _con(ui_db["db"]) as con:
        counts = dict(
            con.execute(
                "SELECT label, count(*) FROM predicted_entities WHERE pred_run_id = ? GROUP BY label",
                [pred_run_id],
            ).fetchall()
        )
        ents = con.execute(
            'SELECT doc_id, start, "end", label, text FROM predicted_entities '
            "WHERE pred_run_id = ? ORDER BY doc_id, start",
            [pred_run_id],
        ).fetchall()
    assert ents, "the tiny model predicted no entity: the pipeline fixture's training is too weak"
    # entity frequencies equal DuckDB's
    freq = next(d.value for d in app.dataframe if "n_distinct" in d.value.columns)
    assert dict(zip(freq["label"], freq["n_entities"], strict=True)) == counts
    # search by an entity's text: every hit contains it; the document view highlights it
    doc_id, start, end, label, mention = ents[0]
    app.text_input(key="pred_text").set_value(mention).run()
    hits = app.dataframe[0].value
    assert len(hits) >= 1 and all(
        mention in (lc + t + rc)
        for lc, t, rc in zip(hits["left_context"], hits["text"], hits["right_context"], strict=True)
    )
    app.selectbox(key=f"pred_doc_{pred_run_id}").set_value(doc_id).run()
    htmls = _texts(app.html)
    assert any("ner-legend" in h for h in htmls)
    doc_html = next(h for h in htmls if "ner-text" in h)
    assert f'data-label="{label}"' in doc_html and html.escape(mention) in doc_html
    assert doc_html.count('class="ent"') == sum(1 for e in ents if e[0] == doc_id)
    # label filter keeps only that label
    app.multiselect(key="pred_labels").set_value([label]).run()
    assert set(app.dataframe[0].value["label"]) == {label}


@pytest.mark.slow
def test_try_it_page_tags_pasted_text(app, ui_db):
    app.switch_page(PAGES["try_it"]).run()
    assert not app.exception
    assert app.selectbox(key="try_model").value in {t["run_id"] for t in ui_db["train"]}
    sample = Path(sorted((Path(__file__).resolve().parents[1] / "sample_corpus" / "raw").glob("*.txt"))[0])
    text = sample.read_text(encoding="utf-8")[:200]
    app.text_area(key="try_text").set_value(text).run()
    app.button(key="try_tag").click().run()
    assert not app.exception
    doc_html = next(h for h in _texts(app.html) if "ner-text" in h)
    assert _strip_tags(doc_html) == text
    table = app.dataframe[0].value
    assert doc_html.count('class="ent"') == len(table)
    for row in table.itertuples():
        assert text[row.start : row.end] == row.text


@pytest.mark.slow
def test_sql_page_runs_selects_and_rejects_writes_and_file_reads(app, ui_db):
    app.switch_page(PAGES["sql"]).run()
    assert not app.exception

    def run(sql: str):
        app.text_area(key="sql_text").set_value(sql)
        app.button(key="sql_run").click().run()
        return _texts(app.error)

    with _con(ui_db["db"]) as con:
        n = con.execute("SELECT count(*) FROM predicted_entities").fetchone()[0]
    assert run("SELECT count(*) AS n FROM predicted_entities") == []
    assert app.dataframe[-1].value["n"].tolist() == [n]
    assert "rejected" not in " ".join(_texts(app.caption)).lower()
    errs = run("INSERT INTO runs (run_id) VALUES ('evil')")
    assert any("INSERT statements are not allowed" in e for e in errs)
    errs = run("DROP TABLE runs")
    assert any("DROP statements are not allowed" in e for e in errs)
    errs = run("SELECT * FROM read_csv('/etc/passwd')")
    assert any("read_csv(...) reads or writes files" in e for e in errs)
    with _con(ui_db["db"]) as con:  # nothing was written
        assert con.execute("SELECT count(*) FROM runs").fetchone()[0] == len(ui_db["train"])
    app.number_input(key="sql_limit").set_value(2)
    assert run("SELECT * FROM v_gold_entities") == []
    assert len(app.dataframe[-1].value) == 2
    assert any("limit reached" in c for c in _texts(app.caption))


@pytest.mark.slow
def test_refresh_button_clears_the_cache(app):
    app.button[0].click().run()
    assert not app.exception
    assert [t.value for t in app.title] == ["Training runs"]
