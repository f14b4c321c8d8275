"""Nested entities through the data path: ``outermost`` (the ingest's overlap rules on Entity lists) before
every tag consumer (CRF batching, the seed's tag outputs, ``ner test``), every span reader keeping nested
spans through ingest (gold + ``dropped_spans``), the nested fixture (scripts/make_nested_corpus.py) and the
nested loaders ``load_documents`` / ``training_documents(nested=True)`` on real DuckDB files."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
from pathlib import Path

import duckdb
import pytest

from ner_core.data.formats import overlaps
from ner_core.data.formats.overlaps import with_spans
from ner_core.documents import Document, Entity
from ner_core.schemes import has_overlaps, outermost, resolve_overlaps, spans_to_tags
from storage.datasets import dropped_span_counts, ingest_dataset, load_documents, training_documents

REPO = Path(__file__).resolve().parents[1]
TEXT = "北京大学的张三和李四在上海市工作"


def E(s: int, e: int, lab: str) -> Entity:
    return Entity(start=s, end=e, label=lab)


def _keys(ents) -> list[tuple[int, int, str]]:
    return [(e.start, e.end, e.label) for e in ents]


def _corpus_module():
    spec = importlib.util.spec_from_file_location(
        "make_nested_corpus", REPO / "scripts" / "make_nested_corpus.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def nested_corpus(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("nested-corpus")
    splits = _corpus_module().write_corpus(out, seed=11, sizes={"train": 80, "dev": 20, "test": 20})
    return out, splits


# ------------------------------------------------------------------------------------------------ outermost
OUTERMOST_CASES = [
    # (entities, outermost): the ingest's rules, on Entity lists
    ([E(0, 4, "ORG"), E(0, 2, "LOC"), E(5, 7, "PER")], [(0, 4, "ORG"), (5, 7, "PER")]),  # nested: the outer
    ([E(10, 14, "LOC"), E(12, 16, "ORG")], [(10, 14, "LOC")]),  # crossing, as long: the earlier
    ([E(11, 14, "LOC"), E(12, 16, "ORG")], [(12, 16, "ORG")]),  # crossing: the longer
    ([E(5, 7, "PER"), E(5, 7, "ORG")], [(5, 7, "PER")]),  # one span, two labels: the first listed
    ([E(0, 9, "PRODUCT"), E(0, 6, "ORG"), E(0, 2, "LOC")], [(0, 9, "PRODUCT")]),  # three levels
    ([E(5, 7, "PER"), E(0, 2, "LOC"), E(5, 7, "PER")], [(0, 2, "LOC"), (5, 7, "PER")]),  # flat: all, sorted
    ([], []),
]


@pytest.mark.parametrize("ents, expected", OUTERMOST_CASES)
def test_outermost_follows_the_ingest_rules(ents, expected):
    assert _keys(outermost(ents)) == expected
    assert has_overlaps(ents) == (len(expected) < len({_keys([e])[0] for e in ents}))
    if ents:  # the same choice as the ingest's resolve_overlaps on the deduplicated spans
        assert _keys(outermost(ents)) == resolve_overlaps(list(dict.fromkeys(_keys(ents))))[0]
    spans_to_tags(20, outermost(ents), "BIOES")  # always taggable
    assert overlaps.outermost is outermost and overlaps.resolve_overlaps is resolve_overlaps  # one rule set


def test_with_spans_adds_each_span_once_sorted():
    doc = Document(doc_id="d", text=TEXT, entities=[E(0, 4, "ORG")])
    out = with_spans(doc, [(0, 2, "LOC"), (0, 4, "ORG"), (0, 2, "LOC")])
    assert _keys(out.entities) == [(0, 2, "LOC"), (0, 4, "ORG")] and _keys(doc.entities) == [(0, 4, "ORG")]


# ------------------------------------------------------------------------------------------------ batching
def test_crf_batching_tags_the_outermost_spans_of_a_nested_document(tiny_encoder_dir):
    """A nested document (a span run's data) reaches the CRF's batching: it trains on the outer spans
    instead of raising in spans_to_tags."""
    from ner_core.config import EncoderConfig
    from ner_core.data.alignment import CharAligner
    from ner_core.data.batching import TaggedDataset
    from ner_core.model.encoder import load_encoder
    from ner_core.schemes import tag_set

    nested = Document(doc_id="n", text=TEXT, entities=[E(0, 4, "ORG"), E(0, 2, "LOC"), E(11, 13, "LOC")])
    flat = Document(doc_id="f", text=TEXT, entities=[E(0, 4, "ORG"), E(11, 13, "LOC")])
    tags = tag_set(["LOC", "ORG", "PER"], "BIOES")
    aligner = CharAligner(load_encoder(EncoderConfig(name=str(tiny_encoder_dir)))[1])
    got = TaggedDataset([nested, flat], aligner, tags, "BIOES", max_len=8)  # chunks too: 16 chars > 8
    by_doc = {0: [], 1: []}
    for it in got.items:
        by_doc[it.chunk.doc_index].extend(tags[i] for i in it.tag_ids)
    assert by_doc[0] == by_doc[1] == spans_to_tags(len(TEXT), flat.entities, "BIOES")


# ------------------------------------------------------------------------------------------------ readers
def _ls_task(text: str, spans: list[tuple[int, int, list[str]]]) -> dict:
    result = [
        {"type": "labels", "value": {"start": s, "end": e, "text": text[s:e], "labels": labs}}
        for s, e, labs in spans
    ]
    return {"data": {"text": text}, "annotations": [{"result": result, "was_cancelled": False}]}


def _reader_files(tmp_path: Path) -> dict[str, Path]:
    """The same nested record (北京大学 ORG > 北京 LOC, 上海市 LOC > 上海 LOC, 张三 PER and ORG) in every
    span format that can carry overlapping spans."""
    files = {}
    loc = {"北京": [[0, 1]], "上海市": [[11, 13]], "上海": [[11, 12]]}
    org = {"北京大学": [[0, 3]], "张三": [[5, 6]]}  # 张三 under two types: one span, two labels
    cl = {"text": TEXT, "label": {"PER": {"张三": [[5, 6]]}, "ORG": org, "LOC": loc}}
    files["cluener"] = tmp_path / "n.cluener.json"
    files["cluener"].write_text(json.dumps(cl, ensure_ascii=False) + "\n", encoding="utf-8")
    ents = [(0, 4, "ORG"), (0, 2, "LOC"), (11, 14, "LOC"), (11, 13, "LOC"), (5, 7, "PER"), (5, 7, "ORG")]
    files["jsonl"] = tmp_path / "n.jsonl"
    rec = {"text": TEXT, "entities": [{"start": s, "end": e, "label": lab} for s, e, lab in ents]}
    files["jsonl"].write_text(json.dumps(rec, ensure_ascii=False) + "\n", encoding="utf-8")
    files["doccano"] = tmp_path / "n.doccano.jsonl"
    rec = {"text": TEXT, "label": [[s, e, lab] for s, e, lab in ents]}
    files["doccano"].write_text(json.dumps(rec, ensure_ascii=False) + "\n", encoding="utf-8")
    task = _ls_task(TEXT, [(0, 4, ["ORG"]), (0, 2, ["LOC"]), (11, 14, ["LOC"]), (11, 13, ["LOC"]),
                           (5, 7, ["PER", "ORG"])])  # fmt: skip
    files["label_studio"] = tmp_path / "n.ls.json"
    files["label_studio"].write_text(json.dumps([task], ensure_ascii=False), encoding="utf-8")
    return files


@pytest.mark.parametrize("fmt", ["cluener", "jsonl", "doccano", "label_studio"])
def test_every_span_reader_keeps_nested_spans_through_ingest(tmp_path, fmt):
    path = _reader_files(tmp_path)[fmt]
    db = tmp_path / "r.duckdb"
    report = ingest_dataset(db, "r", {"train": path}, format=fmt)
    assert report.created and report.rejected == 0
    (doc,) = load_documents(db, "r")
    assert _keys(doc.entities) == [(0, 4, "ORG"), (5, 7, "PER"), (11, 14, "LOC")]
    assert dropped_span_counts(db, "r") == {"nested": 2, "crossing": 0, "same_span": 1}
    expect_all = [(0, 2, "LOC"), (0, 4, "ORG"), (5, 7, "ORG"), (5, 7, "PER"), (11, 13, "LOC")]
    expect_all.append((11, 14, "LOC"))
    with duckdb.connect(str(db), read_only=True) as con:
        reasons = con.execute("SELECT label, reason, kept_label FROM dropped_spans ORDER BY start").fetchall()
    assert sorted(reasons) == [
        ("LOC", "nested", "LOC"), ("LOC", "nested", "ORG"), ("ORG", "same_span", "PER")]  # fmt: skip
    (full,) = load_documents(db, "r", nested=True)
    assert _keys(full.entities) == expect_all


# ------------------------------------------------------------------------------------------------ fixture
def test_the_nested_corpus_is_seeded_and_really_nested(tmp_path, nested_corpus):
    out, splits = nested_corpus
    mod = _corpus_module()
    again = mod.write_corpus(tmp_path / "again", seed=11, sizes={"train": 80, "dev": 20, "test": 20})
    assert again == splits
    for name in ("train", "dev", "test"):
        assert (out / f"{name}.jsonl").read_bytes() == (tmp_path / "again" / f"{name}.jsonl").read_bytes()
    docs = [d for split in splits.values() for d in split]
    mentions = {(d["text"][e["start"] : e["end"]], e["label"]) for d in docs for e in d["entities"]}
    for doc in docs:
        for e in doc["entities"]:
            assert e["end"] > e["start"] and doc["text"][e["start"] : e["end"]]
    stats = mod.nesting_stats(splits["train"])
    assert stats["nested"] >= 40 and stats["outer"] >= 80 and stats["PRODUCT"] > 0
    # real Chinese nesting: a place's organisation contains the place; a product contains its maker
    nested_pairs = set()
    for d in docs:
        spans = [(e["start"], e["end"], e["label"]) for e in d["entities"]]
        for s, e, lab in spans:
            for s2, e2, lab2 in spans:
                if (s2, e2) != (s, e) and s <= s2 and e2 <= e:
                    nested_pairs.add((lab, lab2))
    assert {("ORG", "LOC"), ("PRODUCT", "ORG"), ("PRODUCT", "LOC")} <= nested_pairs
    assert any(m.endswith("大学") and lab == "ORG" for m, lab in mentions)


def test_the_nested_corpus_through_ingest_and_the_nested_loaders(tmp_path, nested_corpus):
    out, splits = nested_corpus
    mod = _corpus_module()
    db = tmp_path / "n.duckdb"
    files = {name: out / f"{name}.jsonl" for name in ("train", "dev", "test")}
    report = ingest_dataset(db, "nested", files)
    assert report.created and report.rejected == 0
    for name, docs in splits.items():
        stats = mod.nesting_stats(docs)
        assert dropped_span_counts(db, "nested", split=name) == {
            "nested": stats["nested"], "crossing": 0, "same_span": 0}  # fmt: skip
        flat = load_documents(db, "nested", name)
        assert sum(len(d.entities) for d in flat) == stats["outer"]
        assert not any(has_overlaps(d.entities) for d in flat)  # the default is unchanged: outer spans only
        full = load_documents(db, "nested", name, nested=True)
        assert [d.doc_id for d in full] == [d.doc_id for d in flat]
        for doc, src in zip(full, docs, strict=True):  # every generated span is back
            assert doc.text == src["text"]
            assert _keys(doc.entities) == sorted((e["start"], e["end"], e["label"]) for e in src["entities"])
        assert [_keys(outermost(d.entities)) for d in full] == [_keys(d.entities) for d in flat]
    data = training_documents(db, "nested", nested=True)
    assert sum(map(len, (d.entities for d in data.train))) == mod.nesting_stats(splits["train"])["entities"]
    assert data.dropped == {"nested": sum(mod.nesting_stats(splits[s])["nested"] for s in ("train", "dev")),
                            "crossing": 0, "same_span": 0}  # fmt: skip
    assert any("nested spans" in n for n in data.notes)
    plain = training_documents(db, "nested")
    assert plain.notes == () and not any(has_overlaps(d.entities) for d in plain.train + plain.dev)


def test_nested_loading_leaves_crossing_spans_out_and_counts_them(tmp_path):
    rows = [
        [(0, 4, "ORG"), (0, 2, "LOC"), (5, 7, "PER"), (5, 7, "ORG")],  # nested + same span
        [(10, 14, "LOC"), (12, 16, "ORG")],  # crossing
    ]
    path = tmp_path / "x.train.jsonl"
    path.write_text(
        "".join(
            json.dumps({"text": TEXT, "entities": [{"start": s, "end": e, "label": lab} for s, e, lab in r]})
            + "\n"
            for r in rows
        ),
        encoding="utf-8",
    )
    dev = tmp_path / "x.dev.jsonl"
    dev.write_text(
        json.dumps({"text": "张三在北京", "entities": [{"start": 0, "end": 2, "label": "PER"}]}) + "\n"
    )
    db = tmp_path / "x.duckdb"
    ingest_dataset(db, "x", {"train": path, "dev": dev}, format="jsonl")
    docs = load_documents(db, "x", "train", nested=True)
    assert [_keys(d.entities) for d in docs] == [
        [(0, 2, "LOC"), (0, 4, "ORG"), (5, 7, "ORG"), (5, 7, "PER")],
        [(10, 14, "LOC")],  # the crossing ORG stays out
    ]
    data = training_documents(db, "x", nested=True)
    assert data.dropped == {"nested": 1, "crossing": 1, "same_span": 1}
    assert any(n.startswith("1 crossing spans of 'x' v1 (train + dev) left out") for n in data.notes)
    with pytest.raises(ValueError, match="no split 'test'"):
        dropped_span_counts(db, "x", split="test")


# ------------------------------------------------------------------------------------------------ commands
def _predict_every_gold_span(monkeypatch, docs_by_text: dict[str, list[tuple[int, int, str]]]) -> None:
    """Stand in for a span model: the tagger predicts each text's gold spans, nested ones included."""
    from ner_core.inference.tagger import PredictedEntity, Tagger

    def predict(self, texts, **_kw):
        return [
            [PredictedEntity(s, e, lab, t[s:e], 0.9) for s, e, lab in docs_by_text.get(t, [])] for t in texts
        ]

    monkeypatch.setattr(Tagger, "predict", predict)


def _run_cli(argv: list[str]) -> tuple[int, str, str]:
    from app import cli

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.main(argv)
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture
def cli_env(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NER_DB", str(tmp_path / "ner.duckdb"))
    monkeypatch.setenv("NER_NO_PREFECT", "1")
    return tmp_path


@pytest.mark.parametrize("span_model", [False, True])
def test_seed_test_outputs_tag_the_outermost_spans_and_say_so(
    cli_env, tiny_encoder_dir, nested_corpus, span_model_dir, monkeypatch, span_model
):
    from tests.test_predict import build_model_dir

    out, splits = nested_corpus
    model_dir = span_model_dir if span_model else build_model_dir(cli_env / "m", tiny_encoder_dir)
    docs = splits["test"]
    data = cli_env / "test.jsonl"
    # the models' labels are (FIN/)LOC/ORG/PER: keep the fixture's LOC/ORG/PER entities
    kept = [
        {"text": d["text"], "entities": [e for e in d["entities"] if e["label"] != "PRODUCT"]} for d in docs
    ]
    data.write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in kept), encoding="utf-8")
    spans = {d["text"]: [(e["start"], e["end"], e["label"]) for e in d["entities"]] for d in kept}
    _predict_every_gold_span(monkeypatch, spans)
    rc, stdout, err = _run_cli(["test", "-test_data", str(data), "-model_configs", str(model_dir)])
    assert rc == 0, err
    summary = json.loads(stdout[stdout.rindex("\n{") :])
    assert (
        "outermost entities" in summary["tags"]
        and "test_entities.jsonl holds every entity" in summary["tags"]
    )
    pairs = json.loads((cli_env / "test_outputs" / "test_outputs.txt").read_text(encoding="utf-8"))
    for text, tags in pairs:
        outer = outermost([E(*s) for s in spans[text]])
        assert tags.split(" ") == spans_to_tags(len(text), outer, "BIOES")
    lines = (cli_env / "test_outputs" / "test_entities.jsonl").read_text(encoding="utf-8").splitlines()
    assert sum(len(json.loads(ln)["entities"]) for ln in lines) == sum(map(len, spans.values()))
    report = json.loads((cli_env / "test_outputs" / "test_report.json").read_text(encoding="utf-8"))
    assert report["tags_from"] == "outermost spans" and report["char_accuracy"] == 1.0
    if span_model:  # the gold includes the file's nested spans: every prediction is right
        assert report["f1"] == 1.0 and {t["label"] for t in report["levels"]} == {"outer", "nested"}
    else:  # a CRF model's gold is the outer spans (what it can learn): the inner predictions are wrong
        assert report["recall"] == 1.0 and report["precision"] < 1.0


@pytest.fixture(scope="module")
def span_model_dir(tmp_path_factory, tiny_encoder_dir) -> Path:
    from tests.test_span_predict import build_span_model_dir

    return build_span_model_dir(tmp_path_factory.mktemp("span-model") / "model", tiny_encoder_dir)


@pytest.mark.parametrize("decoder", ["crf", "span"])
def test_ner_test_scores_nested_predictions_against_the_gold_of_the_model_kind(
    cli_env, tiny_encoder_dir, nested_corpus, span_model_dir, monkeypatch, decoder
):
    """``ner test`` on a stored split and on a file when the predictions nest: scored, no tag error; a span
    model is scored on the nested gold (every prediction right here), a CRF model on the outer spans (its
    inner predictions are wrong)."""
    from tests.test_predict import build_model_dir

    out, splits = nested_corpus
    model_dir = span_model_dir if decoder == "span" else build_model_dir(cli_env / "m", tiny_encoder_dir)
    db = cli_env / "ner.duckdb"
    ingest_dataset(db, "nested", {name: out / f"{name}.jsonl" for name in ("train", "dev", "test")})
    file = cli_env / "labelled.jsonl"  # the test models have no PRODUCT label: a file without it
    kept = [{"text": d["text"], "entities": [e for e in d["entities"] if e["label"] != "PRODUCT"]}
            for d in splits["test"]]  # fmt: skip
    file.write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in kept), encoding="utf-8")
    for data, docs in ((["--dataset", "nested"], splits["test"]), (["--file", str(file)], kept)):
        spans = {d["text"]: [(e["start"], e["end"], e["label"]) for e in d["entities"]] for d in docs}
        _predict_every_gold_span(monkeypatch, spans)
        argv = ["test", "--no-prefect", "--db", str(db), *data, "--model-dir", str(model_dir)]
        rc, stdout, err = _run_cli(argv)
        assert rc == 0, err
        assert "Character and sentence accuracy are computed from the outermost spans" in stdout
        summary = json.loads(stdout[stdout.rindex("\n{") :])
        assert summary["recall"] == 1.0 and summary["char_accuracy"] == 1.0
        if decoder == "span":
            assert summary["precision"] == 1.0 and "| nested | 1.0000 | 1.0000 |" in stdout
        else:
            assert summary["precision"] < 1.0


def test_a_database_from_before_dropped_spans_still_trains_and_loads(legacy_db):
    """A file written before schema version 5 has no dropped_spans table; read-only reads do not migrate."""
    with duckdb.connect(legacy_db, read_only=True) as con:
        tables = {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
    assert "gold_entities" in tables and "dropped_spans" not in tables
    plain = training_documents(legacy_db, "sample")
    nested = training_documents(legacy_db, "sample", nested=True)
    assert plain.dropped == nested.dropped == {"nested": 0, "crossing": 0, "same_span": 0}
    assert [d.entities for d in nested.train] == [d.entities for d in plain.train] and plain.train
    assert load_documents(legacy_db, "sample", "dev", nested=True) == plain.dev


def test_the_seed_decode_route_answers_nested_entities_with_outer_tags(span_model_dir, monkeypatch):
    """``POST /decode`` (the seed's answer: one tag per character) with a span model whose entities nest."""
    from fastapi.testclient import TestClient

    from app.serve import create_app

    text = "他在北京大学读书"
    _predict_every_gold_span(monkeypatch, {text: [(2, 6, "ORG"), (2, 4, "LOC")]})
    app = create_app(span_model_dir, batch_requests=False)
    with TestClient(app, base_url="http://127.0.0.1:8000") as client:
        answer = client.post("/decode", json={"text": text})
        nested = client.post("/predict", json={"texts": [text]})
    assert answer.status_code == 200, answer.text
    assert answer.json()["tags"] == "O O B-ORG I-ORG I-ORG E-ORG O O"
    (result,) = nested.json()["results"]  # /predict keeps every span
    assert [(e["start"], e["end"], e["label"]) for e in result["entities"]] == [(2, 6, "ORG"), (2, 4, "LOC")]
