"""A user dictionary through the Tagger: forced spans always come out (marked), forbidden ones never,
on texts longer than a window; the run's settings name the dictionary; bad labels are refused."""

from __future__ import annotations

import json

import pytest

from ner_core.config import PredictionConfig
from tests.test_predict import build_model_dir

TEXT = "张三在北京大学读书，后来去了上海的星河科技公司。" * 4  # 96 characters: several 40-char windows


@pytest.fixture(scope="module")
def loaded(tmp_path_factory, tiny_encoder_dir):
    from ner_core.artifacts.modeldir import load_model_dir

    return load_model_dir(build_model_dir(tmp_path_factory.mktemp("dict-model") / "model", tiny_encoder_dir))


def _write(path, records) -> str:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return str(path)


def _tagger(loaded, dictionary=None):
    from ner_core.inference.tagger import Tagger

    return Tagger.from_loaded(
        loaded, PredictionConfig(window=40, precision="fp32", device="cpu", dictionary=dictionary)
    )


def test_forced_spans_always_come_out_marked_and_forbidden_ones_never(loaded, tmp_path):
    plain = _tagger(loaded).predict([TEXT])[0]
    assert plain, "the untrained test model predicts some entities"
    victim = plain[0]
    force = _write(
        tmp_path / "d.jsonl",
        [
            {"text": "北京大学", "label": "ORG", "mode": "force"},
            {"text": "星河科技公司", "label": "ORG", "mode": "force"},
            {"text": victim.text, "label": victim.label, "mode": "forbid"},
        ],
    )
    tagger = _tagger(loaded, force)
    got = tagger.predict([TEXT])[0]
    spans = {(e.start, e.end, e.label) for e in got}
    for word in ("北京大学", "星河科技公司"):
        starts = [i for i in range(len(TEXT)) if TEXT.startswith(word, i)]
        assert len(starts) == 4  # one per repeat, across window boundaries
        assert all((s, s + len(word), "ORG") in spans for s in starts)
    forced = [e for e in got if e.from_dictionary]
    assert {e.text for e in forced} == {"北京大学", "星河科技公司"} and len(forced) == 8
    assert all(e.to_dict()["from_dictionary"] is True for e in forced)
    assert all("from_dictionary" not in e.to_dict() for e in got if not e.from_dictionary)
    assert not any(e.text == victim.text and e.label == victim.label for e in got)
    assert all(0.0 <= e.confidence <= 1.0 for e in got)
    # the stored run's settings name the dictionary (a run never resumes under another one)
    assert tagger.settings["dictionary"].startswith("3 entries, sha256 ")
    assert "dictionary" not in _tagger(loaded).settings


def test_a_dictionary_label_the_model_lacks_is_refused_naming_file_and_line(loaded, tmp_path):
    from ner_core.inference.dictionary import DictionaryError

    path = _write(tmp_path / "bad.jsonl", [{"text": "北京", "label": "CITY", "mode": "force"}])
    with pytest.raises(DictionaryError, match=r"bad.jsonl:1: label 'CITY' is not one of the model's labels"):
        _tagger(loaded, path)


def test_ner_predict_takes_a_dictionary(loaded, tmp_path, capsys):
    from app.cli import main

    path = _write(tmp_path / "d.jsonl", [{"text": "北京大学", "label": "ORG", "mode": "force"}])
    src = tmp_path / "in.txt"
    src.write_text(TEXT, encoding="utf-8")
    db = tmp_path / "p.duckdb"
    rc = main(
        ["predict", "--no-prefect", "--db", str(db), "--model-dir", str(loaded.path), "--window", "40",
         "--precision", "fp32", "--dictionary", path, str(src)]
    )  # fmt: skip
    assert rc == 0
    import duckdb

    with duckdb.connect(str(db), read_only=True) as con:
        rows = con.execute(
            "SELECT text, label, from_dictionary FROM predicted_entities WHERE text = '北京大学'"
        ).fetchall()
        others = con.execute(
            "SELECT DISTINCT from_dictionary FROM predicted_entities WHERE text <> '北京大学'"
        ).fetchall()
        config = json.loads(con.execute("SELECT config FROM prediction_runs").fetchone()[0])
    assert rows == [("北京大学", "ORG", True)] * 4  # stored as forced
    assert others == [(False,)]  # the model's own entities: false, not NULL
    assert "sha256" in json.dumps(config)
