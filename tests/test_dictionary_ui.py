"""The Try-it page with a user dictionary, through Streamlit's AppTest on a real (untrained, tiny) model
directory: an uploaded dictionary forces and forbids entities and the forced ones are marked in the text
and the table; bad records, an unknown label and an over-size upload get the library's one-line messages
beside the control, never a traceback."""

from __future__ import annotations

import json

import pytest
from streamlit.testing.v1 import AppTest

from tests.test_predict import build_model_dir
from tests.ui_fixtures import APP, PAGES
from ui.app_pages.common import DICTIONARY_MARK

TEXT = "张三在北京大学读书，后来去了上海的星河科技公司。"
RUN_ID = "dict-ui-run"


@pytest.fixture(scope="module")
def db(tmp_path_factory, tiny_encoder_dir) -> str:
    """A database whose one completed run's model directory is a real (untrained) model."""
    from ner_core.config import NERConfig
    from storage import runs as runs_db

    tmp = tmp_path_factory.mktemp("dict-ui")
    model = build_model_dir(tmp / "model", tiny_encoder_dir)
    path = str(tmp / "ui.duckdb")
    config = NERConfig.model_validate({"data": {"dataset": "sample"}}).to_json()
    runs_db.create_run(path, RUN_ID, dataset="sample", dataset_version=None, config_json=config, run_dir=tmp)
    runs_db.finish_run(path, RUN_ID, status="completed", model_dir=model, best_epoch=1, best_dev_f1=0.1)
    return path


def _page(db: str, monkeypatch) -> AppTest:
    monkeypatch.setenv("NER_DB", db)
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    at.switch_page(PAGES["try_it"]).run()
    at.text_area(key="try_text").set_value(TEXT)
    return at


def _tag(at: AppTest) -> AppTest:
    at.button(key="try_tag").click().run()
    assert not at.exception, at.exception
    return at


def _jsonl(records) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")


def _errors(at: AppTest) -> str:
    """Every error's lines as shown: the page escapes Markdown and ends each line with a hard break."""
    lines = "\n".join(e.value for e in at.error).replace("\\", "").splitlines()
    return "\n".join(line.rstrip() for line in lines)


def _captions(at: AppTest) -> str:
    return "\n".join(c.value for c in at.caption).replace("\\", "")


def test_an_uploaded_dictionary_forces_and_forbids_and_the_page_marks_what_it_forced(db, monkeypatch):
    at = _tag(_page(db, monkeypatch))
    plain = at.dataframe[0].value
    assert "from dictionary" not in plain.columns  # no dictionary: the table as before
    victim = next(r for r in plain.itertuples() if r.text not in ("北京大学", "星河科技公司"))

    at.radio(key="try_dict_src").set_value("upload a file").run()
    from ner_core.inference.dictionary import MAX_FILE_BYTES

    assert at.file_uploader(key="try_dict_file").proto.max_upload_size_mb * 2**20 == MAX_FILE_BYTES
    records = [
        {"text": "北京大学", "label": "ORG", "mode": "force"},
        {"text": "星河科技公司", "label": "ORG", "mode": "force"},
        {"text": victim.text, "label": victim.label, "mode": "forbid"},
    ]
    at.file_uploader(key="try_dict_file").set_value(("terms.jsonl", _jsonl(records), "application/json"))
    at.run()
    assert not at.error and "3 entries read from terms.jsonl." in _captions(at)
    _tag(at)
    table = at.dataframe[0].value
    forced = table[table["from dictionary"]]
    assert sorted(forced["text"]) == ["北京大学", "星河科技公司"] and set(forced["label"]) == {"ORG"}
    assert not table[~table["from dictionary"]]["text"].isin(["北京大学", "星河科技公司"]).any()
    assert not ((table["text"] == victim.text) & (table["label"] == victim.label)).any()
    doc = next(h.value for h in at.html if "ner-text" in h.value)
    assert doc.count('data-dictionary="1"') == 2 and doc.count(f"ORG{DICTIONARY_MARK}</sup>") == 2
    assert doc.count('class="ent"') == len(table)
    assert "2 forced by the dictionary" in _captions(at)


def test_bad_typed_records_show_one_line_each_and_nothing_is_tagged(db, monkeypatch):
    at = _page(db, monkeypatch)
    at.radio(key="try_dict_src").set_value("type lines").run()
    at.text_area(key="try_dict_text").set_value("北京大学\tORG\n上海\tLOC\tmaybe\n星河\tORG\tforce\n").run()
    assert not at.exception
    assert _errors(at).splitlines() == [
        "typed lines:1: expected 3 or 4 tab-separated fields (text, label, mode[, priority]), got 2",
        "typed lines:2: mode must be 'force' or 'forbid', got 'maybe'",
    ]
    _tag(at)
    assert not at.dataframe and any("bad records" in w.value for w in at.warning)


def test_a_label_the_model_lacks_is_named_with_its_line_when_tagging(db, monkeypatch):
    at = _page(db, monkeypatch)
    at.radio(key="try_dict_src").set_value("type lines").run()
    at.text_area(key="try_dict_text").set_value('{"text": "北京", "label": "CITY", "mode": "force"}').run()
    assert not at.error  # well-formed: the model's labels are checked when it is loaded
    _tag(at)
    assert (
        _errors(at)
        == "typed lines:1: label 'CITY' is not one of the model's labels ['FIN', 'LOC', 'ORG', 'PER']"
    )
    assert not at.dataframe


def test_an_upload_over_the_librarys_size_limit_is_refused_in_one_line(db, monkeypatch):
    import ner_core.inference.dictionary as dictionary

    monkeypatch.setattr(dictionary, "MAX_FILE_BYTES", 64)  # the library's cap, made small for the test
    at = _page(db, monkeypatch)
    at.radio(key="try_dict_src").set_value("upload a file").run()
    big = "上海\tLOC\tforce\n".encode() * 5  # 90 bytes
    at.file_uploader(key="try_dict_file").set_value(("big.tsv", big, "text/tab-separated-values")).run()
    assert not at.exception
    assert _errors(at) == f"big.tsv: {len(big)} bytes, more than the limit of 64"
