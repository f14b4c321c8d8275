"""Training the span decoder: span targets from nested documents, max_span_len and overlap fixed from the
training data, a tiny model that learns inner entities a CRF cannot output, and span model directories
(label file, format version, round trip, refusals)."""

from __future__ import annotations

import json
import logging
import random
import shutil

import pytest
import torch

from ner_core.config import NERConfig
from ner_core.data.alignment import CharAligner
from ner_core.data.span_batching import SpanDataset, has_overlaps, span_stats
from ner_core.documents import Document, Entity
from ner_core.model.encoder import load_encoder, make_tiny_encoder

pytestmark = pytest.mark.usefixtures("one_thread")

CITIES = ["北京", "上海", "南京", "天津", "广州", "杭州", "武汉", "西安", "成都", "重庆"]
PEOPLE = ["张三", "李四", "王五", "赵六"]


def nested_docs(n: int, seed: int) -> list[Document]:
    """Sentences where a university (ORG) contains its city (LOC), plus cities and people on their own."""
    rng = random.Random(seed)
    docs = []
    for i in range(n):
        city, person = rng.choice(CITIES), rng.choice(PEOPLE)
        kind = i % 3
        if kind == 0:  # 张三在北京大学读书: PER, ORG 北京大学 containing LOC 北京
            text = f"{person}在{city}大学读书"
            ents = [(0, 2, "PER"), (3, 7, "ORG"), (3, 5, "LOC")]
        elif kind == 1:  # 北京大学很有名
            text = f"{city}大学很有名"
            ents = [(0, 4, "ORG"), (0, 2, "LOC")]
        else:  # 李四去北京旅游
            text = f"{person}去{city}旅游"
            ents = [(0, 2, "PER"), (3, 5, "LOC")]
        entities = [Entity(start=s, end=e, label=x) for s, e, x in ents]
        docs.append(Document(doc_id=f"d{seed}-{i}", text=text, entities=entities))
    return docs


def outer_only(doc: Document) -> Document:
    keep = [
        e
        for e in doc.entities
        if not any(o != e and o.start <= e.start and e.end <= o.end for o in doc.entities)
    ]
    return doc.model_copy(update={"entities": keep})


def is_nested(e: Entity, doc: Document) -> bool:
    return any(o != e and o.start <= e.start and e.end <= o.end for o in doc.entities)


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory):
    texts = [d.text for d in nested_docs(60, 0)] + ["".join(CITIES + PEOPLE) + "在大学读书很有名去旅游"]
    return make_tiny_encoder(tmp_path_factory.mktemp("span-enc"), texts, hidden_size=32)


def config(encoder_dir, decoder="span", **training):
    return NERConfig.model_validate(
        {
            "data": {"max_len": 16, "dataset": "nested-toy"},
            "encoder": {"name": str(encoder_dir), "dropout_rate": 0.0},
            "head": {"type": "bilstm", "rnn_units": 16, "dropout_rate": 0.0},
            "decoder": {"type": decoder, **({"head_size": 16} if decoder == "span" else {})},
            "training": {
                "batch_size": 8,
                "learning_rate": 2e-3,
                "head_learning_rate": 1e-2,
                "crf_learning_rate": 5e-2,
                "warmup_ratio": 0.0,
                "precision": "fp32",
                **training,
            },
        }
    )


# ------------------------------------------------------------------ data
def test_span_dataset_targets_keep_nested_spans_and_count_excluded(encoder_dir):
    _, tok = load_encoder(NERConfig().encoder.model_copy(update={"name": str(encoder_dir)}))
    doc = nested_docs(1, 0)[0]  # 张三在X大学读书
    ds = SpanDataset([doc], CharAligner(tok), ["LOC", "ORG", "PER"], max_len=16, max_span_len=3)
    batch = next(ds.batches(4, shuffle=False))
    assert "tags" not in batch and batch["input_ids"].shape == (1, len(doc.text) + 2)
    # PER 0..1, LOC 3..4 (inside the ORG); the ORG (4 characters) is longer than 3: excluded, counted
    assert sorted(batch["targets"].tolist()) == [[0, 0, 3, 4], [0, 2, 0, 1]]
    assert ds.excluded == 1
    stats = span_stats(nested_docs(6, 0))
    assert stats.longest == 4 and stats.nested and stats.entities == 14
    assert not has_overlaps([Entity(start=0, end=2, label="A"), Entity(start=2, end=4, label="B")])
    assert has_overlaps([Entity(start=0, end=2, label="A"), Entity(start=0, end=2, label="B")])
    with pytest.raises(ValueError, match="label 'PER' is not in the model's labels"):
        SpanDataset([doc], CharAligner(tok), ["LOC", "ORG"], max_len=16)


def test_resolve_decoder_takes_the_longest_entity_and_the_nesting(encoder_dir):
    from ner_core.training.loop import resolve_decoder

    cfg, notes = resolve_decoder(config(encoder_dir), nested_docs(9, 0))
    assert cfg.decoder.max_span_len == 4 and cfg.decoder.overlap == "allow"
    assert "max_span_len 4 (the training data's longest entity)" in notes[0]
    assert "0 of 21 gold training entities are longer" in notes[0]
    given = config(encoder_dir).with_overrides({"decoder.max_span_len": 2})
    cfg, notes = resolve_decoder(given, nested_docs(9, 0))
    assert cfg.decoder.max_span_len == 2 and "6 of 21 gold training entities are longer" in notes[0]
    flat = [outer_only(d) for d in nested_docs(9, 0)]
    assert resolve_decoder(config(encoder_dir), flat)[0].decoder.overlap == "flat"
    crf = config(encoder_dir, decoder="crf")
    assert resolve_decoder(crf, flat) == (crf, [])


# ------------------------------------------------------------------ learning nesting
def nested_recall(docs, preds) -> float:
    gold = {(d.doc_id, e.start, e.end, e.label) for d in docs for e in d.entities if is_nested(e, d)}
    got = {(d.doc_id, e.start, e.end, e.label) for d, p in zip(docs, preds, strict=True) for e in p}
    return len(gold & got) / len(gold)


def test_a_span_model_learns_inner_entities_the_crf_cannot(encoder_dir, tmp_path, caplog):
    from ner_core.artifacts.modeldir import load_model_dir
    from ner_core.inference.evaluate import evaluate_model
    from ner_core.inference.tagger import Tagger
    from ner_core.training.loop import train
    from ner_core.training.span_eval import predict_spans

    train_docs, dev_docs = nested_docs(30, 1), nested_docs(15, 2)
    labels = ["LOC", "ORG", "PER"]
    caplog.set_level(logging.INFO, logger="ner_core.training.loop")
    res = train(
        config(encoder_dir, hard_epochs=8), train_docs, dev_docs, labels, tmp_path / "span", progress=False
    )
    assert any("max_span_len 4 (the training data's longest entity)" in r.message for r in caplog.records)
    loaded = load_model_dir(res.model_dir)
    assert loaded.decoder == "span" and loaded.labels == labels
    assert loaded.config.decoder.max_span_len == 4 and loaded.config.decoder.overlap == "allow"
    # predicted from span_logits + the saved threshold, directly
    preds = [
        [e for e, _ in p]
        for p in predict_spans(loaded.model, loaded.tokenizer, [d.text for d in dev_docs], max_len=16)
    ]
    span_recall = nested_recall(dev_docs, preds)
    assert span_recall >= 0.9, span_recall
    assert res.best_dev_f1 is not None and res.best_dev_f1 > 0.8
    # the CRF, trained on the outer entities as a CRF run is, outputs flat entities only
    crf = train(
        config(encoder_dir, decoder="crf", hard_epochs=8),
        [outer_only(d) for d in train_docs],
        [outer_only(d) for d in dev_docs],
        labels,
        tmp_path / "crf",
        progress=False,
    )
    crf_model = load_model_dir(crf.model_dir)
    assert (
        evaluate_model(crf_model.model, crf_model.tokenizer, [outer_only(d) for d in dev_docs], max_len=16).f1
        > 0.5
    )
    tagger = Tagger(crf_model.model, crf_model.tokenizer, max_len=16)
    crf_preds = [
        [Entity(start=e.start, end=e.end, label=e.label) for e in p]
        for p in tagger.predict([d.text for d in dev_docs])
    ]
    crf_recall = nested_recall(dev_docs, crf_preds)
    assert span_recall > crf_recall + 0.5, (span_recall, crf_recall)


# ------------------------------------------------------------------ model directories
def build_span_model(encoder_dir, seed=0):
    from ner_core.model.network import NERModel

    cfg = config(encoder_dir).with_overrides({"decoder.max_span_len": 4, "decoder.overlap": "allow"})
    encoder, tok = load_encoder(cfg.encoder)
    torch.manual_seed(seed)
    return NERModel(cfg, ["LOC", "ORG", "PER"], encoder).eval(), tok


def test_span_model_directory_round_trip_gives_identical_logits(encoder_dir, tmp_path):
    from ner_core.artifacts import layout
    from ner_core.artifacts.modeldir import load_model_dir, save_model_dir, saved_labels
    from tests.model_helpers import encode

    model, tok = build_span_model(encoder_dir)
    d = save_model_dir(tmp_path / "m", model, tok)
    assert (d / layout.SPAN_LABELS).is_file() and not (d / layout.LABELS).exists()
    assert json.loads((d / layout.META).read_text())["format_version"] == layout.SPAN_FORMAT_VERSION == 2
    assert json.loads((d / layout.SPAN_LABELS).read_text())["labels"] == ["LOC", "ORG", "PER"]
    assert saved_labels(d) == ["LOC", "ORG", "PER"]
    loaded = load_model_dir(d)
    assert loaded.model.decoder == "span" and loaded.labels == ["LOC", "ORG", "PER"]
    ids, am = encode(tok, [x.text for x in nested_docs(4, 3)])
    with torch.no_grad():
        a, cm_a = model.span_logits(ids, am)
        b, cm_b = loaded.model.span_logits(ids, am)
    assert torch.equal(a, b) and torch.equal(cm_a, cm_b)


def test_crf_directories_keep_version_1_and_a_config_older_code_reads(encoder_dir, tmp_path):
    from ner_core.artifacts import layout
    from ner_core.artifacts.modeldir import save_model_dir
    from ner_core.model.network import NERModel
    from ner_core.schemes import tag_set

    cfg = config(encoder_dir, decoder="crf")
    encoder, tok = load_encoder(cfg.encoder)
    d = save_model_dir(tmp_path / "crf", NERModel(cfg, tag_set(["LOC"], "BIOES"), encoder), tok)
    assert json.loads((d / layout.META).read_text())["format_version"] == 1
    saved = json.loads((d / layout.CONFIG).read_text())
    assert "decoder" not in saved  # code from before the span decoder forbids unknown keys
    assert NERConfig.model_validate(saved) == cfg


@pytest.mark.parametrize(
    "damage,message",
    [
        (lambda d: (d / "span_labels.json").unlink(), "missing span_labels.json"),
        (
            lambda d: (d / "span_labels.json").write_text(
                json.dumps({"labels": ["ORG", "LOC", "PER"], "scheme": "BIOES"})
            ),
            "is not the tag list model.safetensors was saved with",
        ),
        (lambda d: (d / "span_labels.json").write_text('{"labels": ["O", "LOC"]}'), "'O' is no entity label"),
        (lambda d: (d / "span_labels.json").write_text('{"labels": []}'), "span_labels.json is damaged"),
        (
            lambda d: (d / "meta.json").write_text(json.dumps({"format_version": 1})),
            "format_version 1 does not go with ner_config.json's decoder 'span'",
        ),
        (
            lambda d: (d / "meta.json").write_text(json.dumps({"format_version": 7})),
            "written by a newer version of this software",
        ),
    ],
)
def test_damaged_span_directories_are_refused_in_one_line(encoder_dir, tmp_path, damage, message):
    from ner_core.artifacts.layout import ModelDirError
    from ner_core.artifacts.modeldir import load_model_dir, save_model_dir

    model, tok = build_span_model(encoder_dir)
    d = save_model_dir(tmp_path / "m", model, tok)
    damage(d)
    with pytest.raises(ModelDirError, match=message) as info:
        load_model_dir(d)
    assert "\n" not in str(info.value)


def test_a_symlinked_span_label_file_is_refused(encoder_dir, tmp_path):
    from ner_core.artifacts.layout import ModelDirError
    from ner_core.artifacts.modeldir import load_model_dir, save_model_dir

    model, tok = build_span_model(encoder_dir)
    d = save_model_dir(tmp_path / "m", model, tok)
    outside = tmp_path / "elsewhere.json"
    shutil.move(d / "span_labels.json", outside)
    (d / "span_labels.json").symlink_to(outside)
    with pytest.raises(ModelDirError, match="span_labels.json"):
        load_model_dir(d)
    (d / "span_labels.json").unlink()
    (d / "span_labels.json").write_text(json.dumps({"labels": ["LOC"] * 10, "pad": "x" * (2 << 20)}))
    with pytest.raises(ModelDirError, match="span_labels.json"):
        load_model_dir(d)


# ------------------------------------------------------------------ ner train flags
@pytest.mark.parametrize(
    "argv,needles",
    [
        (["--decoder", "span", "-crf_only"], ["--crf_only is the seed's flag for a CRF model", "--head"]),
        (["--decoder", "span", "-model_type", "rnn"], ["-model_type is the seed's flag for a CRF model"]),
        (["--max_span_len", "5"], ["decoder.max_span_len applies to the span decoder only"]),
        (["--decoder", "span", "--span_head_size", "7"], ["head_size must be even"]),
        (["--decoder", "span", "--overlap", "nested"], ["invalid choice: 'nested'"]),
    ],
)
def test_span_flags_of_ner_train_refuse_in_one_line(argv, needles, capsys, tmp_path):
    from tests.test_cli import _one_line_error, run

    rc, _, err = run(["train", *argv, "--no-prefect", "--db", str(tmp_path / "x.duckdb")], capsys)
    _one_line_error(rc, err, *needles)


def test_span_flags_of_ner_train_reach_the_config():
    from app import cli
    from app.commands.config_options import build_config

    args = cli.build_parser().parse_args(
        ["train", "--decoder", "span", "--max_span_len", "6", "--overlap", "flat", "--span_threshold", "0.4"]
    )
    dec = build_config(args).decoder
    assert (dec.type, dec.max_span_len, dec.overlap, dec.threshold) == ("span", 6, "flat", 0.4)
    assert build_config(cli.build_parser().parse_args(["train"])).decoder.type == "crf"


def test_ner_train_decoder_span_trains_on_the_nested_spans_of_an_ingested_corpus(capsys, tmp_path):
    """``ner train --decoder span`` end to end (files ingested, then trained without Prefect): the run
    loads the nested spans (so overlap resolves to allow), says its span limit, and saves a span model."""
    from ner_core.artifacts.modeldir import load_model_dir
    from tests.test_cli import run
    from tests.test_nested_data import _corpus_module

    corpus = tmp_path / "corpus"
    _corpus_module().write_corpus(corpus, seed=3, sizes={"train": 40, "dev": 10, "test": 10})
    texts = [
        json.loads(line)["text"]
        for split in ("train", "dev", "test")
        for line in (corpus / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    enc = make_tiny_encoder(tmp_path / "enc", texts)
    argv = ["train", "--no-prefect", "--db", str(tmp_path / "n.duckdb"), "--encoder", str(enc)]
    argv += ["--dataset", "nested", "--decoder", "span", "--head", "none", "-max_epochs", "1"]
    argv += ["-max_len", "48", "-save_path", str(tmp_path / "runs")]
    for split in ("train", "dev", "test"):
        argv += [f"-{split}_data", str(corpus / f"{split}.jsonl")]
    rc, out, err = run(argv, capsys)
    assert rc == 0, err
    assert "span decoder: max_span_len" in err and "the training data's longest entity" in err
    assert "overlap allow (the training data has nested or overlapping entities)" in err
    trained = json.loads(out[out.index("{") :])
    loaded = load_model_dir(trained["model_dir"])
    assert loaded.decoder == "span" and loaded.labels == ["LOC", "ORG", "PER", "PRODUCT"]
    assert loaded.config.decoder.overlap == "allow" and loaded.config.decoder.max_span_len >= 4


def test_a_span_run_stopped_after_an_epoch_resumes_to_the_same_model(encoder_dir, tmp_path):
    from safetensors.torch import load_file

    from ner_core.artifacts.layout import WEIGHTS
    from ner_core.training.loop import train

    train_docs, dev_docs = nested_docs(16, 4), nested_docs(4, 5)
    cfg = config(encoder_dir, hard_epochs=2, batch_size=4)
    whole = train(cfg, train_docs, dev_docs, ["LOC", "ORG", "PER"], tmp_path / "whole", progress=False)

    class Killed(Exception):
        pass

    def kill(stats):
        raise Killed

    with pytest.raises(Killed):
        train(
            cfg, train_docs, dev_docs, ["LOC", "ORG", "PER"], tmp_path / "cut", progress=False, on_epoch=kill
        )
    resumed = train(
        cfg, train_docs, dev_docs, ["LOC", "ORG", "PER"], tmp_path / "cut", resume=True, progress=False
    )
    assert [h.epoch for h in resumed.history] == [1, 2]
    assert [h.train_loss for h in resumed.history] == [h.train_loss for h in whole.history]
    a, b = load_file(str(whole.model_dir / WEIGHTS)), load_file(str(resumed.model_dir / WEIGHTS))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_span_run_trains_in_bf16_and_records_its_dev_f1_per_precision(encoder_dir, tmp_path):
    from ner_core.artifacts.modeldir import read_precision_record
    from ner_core.training.loop import train

    cfg = config(encoder_dir, hard_epochs=1, precision="bf16")
    res = train(
        cfg, nested_docs(12, 6), nested_docs(4, 7), ["LOC", "ORG", "PER"], tmp_path / "r", progress=False
    )
    assert res.precision == "bf16" and all(h.train_loss == h.train_loss > 0 for h in res.history)
    record = read_precision_record(res.model_dir)
    assert record is not None and record.trained_in == "bf16" and "fp32" in record.dev_f1
    assert all(0.0 <= f <= 1.0 for f in record.dev_f1.values())
