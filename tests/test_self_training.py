"""Self-training (issue 26): which tagged documents become silver, that a silver document's loss weight
scales its loss, an end-to-end run through ``ner train --unlabeled`` that records its silver data and,
killed in its second round, resumes to the uninterrupted run's model; old configurations read it as off."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from ner_core.documents import Document, Entity
from tests.conftest import SAMPLE

LABELS = ["FIN", "LOC", "ORG", "PER"]
SILVER_FIELDS = (
    "unlabeled",
    "unlabeled_dataset",
    "silver_min_confidence",
    "silver_max_uncertainty",
    "silver_weight",
    "self_train_rounds",
)


def _records(split: str) -> list[dict]:
    with open(SAMPLE / f"{split}.jsonl", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def _ent(start, end, confidence, calibrated=None):
    return SimpleNamespace(
        start=start, end=end, label="PER", confidence=confidence, confidence_calibrated=calibrated
    )


# ------------------------------------------------------------------ selection rules
def test_silver_selection_rules_on_tagger_outputs():
    from ner_core.training.self_training import select_silver, text_hash
    from storage.datasets import text_sha1

    long_text = "今天天气很好" * 20  # 120 characters
    texts = [
        "张三去北京开会",  # 0: every entity above the threshold -> silver
        "李四和王五吃饭",  # 1: one entity below it
        "赵六在上海",  # 2: raw confidence below, calibrated above: the raw one decides
        long_text,  # 3: no entity, 0.6 nats over 120 characters = 0.005 a character -> silver
        "好的",  # 4: no entity, 0.05 nats over 2 characters = 0.025 a character
        "没有实体的句子",  # 5: no entity, no uncertainty computed
        "开发集里的句子",  # 6: in dev, however sure
        "训练集里的句子",  # 7: in the gold training data
        "张三去北京开会",  # 8: a second copy of 0
    ]
    preds = [
        SimpleNamespace(entities=[_ent(0, 2, 0.95), _ent(3, 5, 0.9)], uncertainty=0.3),
        SimpleNamespace(entities=[_ent(0, 2, 0.95), _ent(3, 5, 0.85)], uncertainty=0.3),
        SimpleNamespace(entities=[_ent(0, 2, 0.5, calibrated=0.99)], uncertainty=0.1),
        SimpleNamespace(entities=[], uncertainty=0.6),
        SimpleNamespace(entities=[], uncertainty=0.05),
        SimpleNamespace(entities=[], uncertainty=None),
        SimpleNamespace(entities=[_ent(0, 2, 0.99)], uncertainty=0.0),
        SimpleNamespace(entities=[_ent(0, 2, 0.99)], uncertainty=0.0),
        SimpleNamespace(entities=[_ent(0, 2, 0.99), _ent(3, 5, 0.99)], uncertainty=0.0),
    ]
    assert text_hash(texts[6]) == text_sha1(texts[6])  # the hash DuckDB stores, as the review export uses
    sel = select_silver(
        texts,
        preds,
        min_confidence=0.9,
        max_uncertainty=0.01,
        held_out={text_sha1(texts[6])},
        train_hashes={text_sha1(texts[7])},
        round_no=2,
    )
    assert [d.doc_id for d in sel.docs] == ["silver2:0", "silver2:3"]
    assert [(e.start, e.end, e.label) for e in sel.docs[0].entities] == [(0, 2, "PER"), (3, 5, "PER")]
    assert sel.docs[1].entities == []
    assert sel.counts == {
        "with_entities": 1,
        "without_entities": 1,
        "in_dev_test": 1,
        "in_other_dev_test": 0,
        "in_train": 1,
        "duplicate": 1,
        "low_confidence": 2,
        "uncertain_no_entity": 2,
    }
    assert sel.hashes == [text_sha1(texts[0]), text_sha1(long_text)]
    with pytest.raises(ValueError, match="one prediction per text"):
        select_silver(texts[:2], preds[:1], min_confidence=0.9, max_uncertainty=0.01)


# ------------------------------------------------------------------ the weight scales the loss
def _docs(records: list[dict], prefix: str) -> list[Document]:
    return [
        Document(doc_id=f"{prefix}{i}", text=r["text"], entities=[Entity(**e) for e in r["entities"]])
        for i, r in enumerate(records)
    ]


def _short() -> list[dict]:
    """Training records of one chunk each (at most 40 characters), with entities."""
    return [r for r in _records("train") if len(r["text"]) <= 40 and r["entities"]]


def _model_and_batch(encoder_dir, decoder: str, weight: float, silver: list[Document] | None = None):
    from ner_core.config import NERConfig
    from ner_core.data.alignment import CharAligner
    from ner_core.data.batching import TaggedDataset, collate
    from ner_core.data.span_batching import SpanDataset
    from ner_core.model.encoder import load_encoder
    from ner_core.model.network import NERModel
    from ner_core.schemes import tag_set

    config = NERConfig.model_validate(
        {"encoder": {"name": str(encoder_dir)}, "head": {"type": "bigru", "rnn_units": 8},
         "decoder": {"type": decoder}, "data": {"max_len": 48}}
    )  # fmt: skip
    encoder, tok = load_encoder(config.encoder)
    torch.manual_seed(0)
    span = decoder == "span"
    model = NERModel(config, LABELS if span else tag_set(LABELS, "BIOES"), encoder).eval()  # no dropout
    recs = _short()
    gold = _docs(recs[:3], "g")
    silver = silver if silver is not None else _docs(recs[3:5], "s")
    docs, weights = gold + silver, [1.0] * 3 + [weight] * 2
    al = CharAligner(tok)
    ds = SpanDataset(docs, al, LABELS, 48, None, weights) if span else TaggedDataset(
        docs, al, tag_set(LABELS, "BIOES"), "BIOES", 48, weights
    )  # fmt: skip
    batch = ds.collate(ds.items) if span else collate(ds.items, ds.cls_id, ds.sep_id, ds.pad_id)  # in order
    return model, batch, ds


def _rows(batch, ds, rows):
    """The sub-batch of ``rows`` as the dataset would collate those items alone, same width."""
    from ner_core.training.loop import _rows_of

    idx = torch.tensor(rows)
    gold = batch["tags"] if "tags" in batch else batch["targets"]
    return batch["input_ids"][idx], batch["attention_mask"][idx], _rows_of(gold, idx, len(ds), batch)


@pytest.mark.parametrize("decoder", ["crf", "span"])
def test_a_silver_documents_weight_scales_its_loss(tiny_encoder_dir, decoder, one_thread):
    from ner_core.training.loop import weighted_loss

    model, batch, ds = _model_and_batch(tiny_encoder_dir, decoder, 0.5)
    assert batch["weight"].tolist() == [1.0, 1.0, 1.0, 0.5, 0.5]
    per_row = [float(model(*_rows(batch, ds, [i])).detach()) for i in range(5)]
    expected = (sum(per_row[:3]) + 0.5 * sum(per_row[3:])) / 5
    assert float(weighted_loss(model, batch).detach()) == pytest.approx(expected, rel=1e-5)
    # all weights 1: no weight in the batch, one plain call as before self-training
    _, plain, _ = _model_and_batch(tiny_encoder_dir, decoder, 1.0)
    assert "weight" not in plain
    assert float(weighted_loss(model, plain).detach()) == pytest.approx(sum(per_row) / 5, rel=1e-5)


def _grads(model, loss) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_a_weight_of_zero_is_training_without_the_silver_documents(tiny_encoder_dir, one_thread):
    """At weight 0 the silver rows add nothing: the gradient is the gold rows' alone (scaled by their share
    of the batch), whatever the silver documents say."""
    from ner_core.training.loop import weighted_loss

    model, batch, ds = _model_and_batch(tiny_encoder_dir, "crf", 0.0)
    with_silver = _grads(model, weighted_loss(model, batch))
    gold_only = _grads(model, model(*_rows(batch, ds, [0, 1, 2])) * (3 / 5))
    assert with_silver.keys() == gold_only.keys()
    assert all(torch.allclose(with_silver[k], gold_only[k], atol=1e-6) for k in gold_only)
    # other silver labels (every entity dropped) change nothing at weight 0 ...
    blank = [d.model_copy(update={"entities": []}) for d in _docs(_short()[3:5], "s")]
    _, other, _ = _model_and_batch(tiny_encoder_dir, "crf", 0.0, silver=blank)
    assert torch.equal(batch["input_ids"], other["input_ids"]) and not torch.equal(
        batch["tags"], other["tags"]
    )
    again = _grads(model, weighted_loss(model, other))
    assert all(torch.allclose(with_silver[k], again[k], atol=1e-6) for k in again)
    # ... and at weight 0.5 they do
    _, half, _ = _model_and_batch(tiny_encoder_dir, "crf", 0.5)
    _, half_blank, _ = _model_and_batch(tiny_encoder_dir, "crf", 0.5, silver=blank)
    k = "classifier.weight"
    assert not torch.allclose(
        _grads(model, weighted_loss(model, half))[k], _grads(model, weighted_loss(model, half_blank))[k]
    )


# ------------------------------------------------------------------ old configurations
def test_old_configurations_read_self_training_as_off_and_a_plain_one_saves_none_of_it(tmp_path):
    from ner_core.config import NERConfig
    from tests.conftest import LEGACY

    old = next((LEGACY / "runs").glob("*/config.json"))
    tc = NERConfig.from_file(old).training
    assert not tc.self_training and tc.unlabeled is None and tc.unlabeled_dataset is None
    assert not set(SILVER_FIELDS) & set(json.loads(NERConfig.from_file(old).to_json())["training"])
    assert not set(SILVER_FIELDS) & set(json.loads(NERConfig().to_json())["training"])
    on = NERConfig.model_validate({"training": {"unlabeled": ["a.txt"], "silver_weight": 0.3}})
    saved = json.loads(on.to_json())["training"]
    # on: every silver setting is written, defaults too, so a resume keeps them whatever defaults become
    assert set(SILVER_FIELDS) - {"unlabeled_dataset"} <= set(saved) and saved["silver_min_confidence"] == 0.9
    assert NERConfig.model_validate_json(on.to_json()) == on
    with pytest.raises(ValueError, match="silver_weight applies to self-training only: add --unlabeled"):
        NERConfig.model_validate({"training": {"silver_weight": 0.3}})
    with pytest.raises(ValueError, match="files .* or a dataset, not both"):
        NERConfig.model_validate({"training": {"unlabeled": ["a.txt"], "unlabeled_dataset": "d"}})


def test_the_self_training_flags_of_ner_train_show_their_defaults(capsys):
    from app.cli import main

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for flag in ("--unlabeled", "--silver_min_confidence", "--silver_max_uncertainty", "--silver_weight"):
        assert flag in out, flag
    assert "--self_train_rounds" in out and "(default: 0.9)" in out and "(default: 0.5)" in out


def test_the_self_train_flow_refuses_a_configuration_without_unlabeled_texts(tmp_path):
    from flows.self_train import self_train_flow
    from ner_core.config import NERConfig

    with pytest.raises(ValueError, match="self-train needs unlabeled texts"):
        self_train_flow.fn(str(tmp_path / "ner.duckdb"), NERConfig())


# ------------------------------------------------------------------ end to end, killed and resumed
@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> dict:
    """24 train, 6 dev, 6 test documents; unlabeled: 12 other train texts, 2 dev texts, 1 test text, 1 gold
    training text and a repeat."""
    d = tmp_path_factory.mktemp("self-train-data")
    train, dev, test = _records("train"), _records("dev"), _records("test")
    files = {"train": train[:24], "dev": dev[:6], "test": test[:6]}
    for split, recs in files.items():
        (d / f"{split}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs))
    unlabeled = [r["text"] for r in train[24:36]] + [dev[0]["text"], dev[1]["text"], test[0]["text"]]
    unlabeled += [train[0]["text"], train[24]["text"]]
    (d / "unlabeled.txt").write_text("\n".join(unlabeled) + "\n", encoding="utf-8")
    return {"dir": d, "files": {k: str(d / f"{k}.jsonl") for k in files}, "unlabeled": d / "unlabeled.txt"}


def test_ner_train_unlabeled_self_trains_records_its_silver_and_resumes_after_a_kill(
    tiny_encoder_dir, tiny_data, tmp_path, capsys
):
    import signal
    import time

    from app.cli import main
    from flows import steps
    from flows.contracts import TrainSummary
    from flows.self_train import self_train_markdown
    from storage import runs as runs_db
    from storage.datasets import text_sha1
    from tests.test_training import _ner

    db = str(tmp_path / "ner.duckdb")
    steps.ingest_step(db, "tiny", tiny_data["files"])
    common = ["train", "--no-prefect", "--db", db, "--dataset", "tiny", "--encoder", str(tiny_encoder_dir)]
    common += ["--head", "bigru", "--rnn_units", "16", "--max_len", "48", "--hard_epochs", "2"]
    common += ["--batch_size", "8", "--learning_rate", "1e-3", "--num_threads", "1", "--precision", "fp32"]
    common += ["--unlabeled", str(tiny_data["unlabeled"]), "--silver_min_confidence", "1e-6"]
    common += ["--silver_max_uncertainty", "100", "--silver_weight", "0.5"]
    assert main([*common, "--runs-root", str(tmp_path / "full")]) == 0
    out = capsys.readouterr()
    full = json.loads(out.out[out.out.index("{") :])
    assert "self-training round 1: 12 silver of 17 unlabeled texts" in out.out
    run_dir = Path(full["run_dir"])
    record = json.loads((run_dir / "self-train" / "silver-1.json").read_text())
    assert record["counts"]["in_dev_test"] == 3 and record["counts"]["in_train"] == 1
    assert record["counts"]["duplicate"] == 1 and record["selected"] == 12
    assert record["teacher"] == "self-train/round-0/model"
    hashes = (run_dir / record["silver_hashes"]).read_text().split()
    dev_test = {text_sha1(r["text"]) for r in _records("dev")[:6] + _records("test")[:6]}
    assert len(hashes) == 12 and not set(hashes) & dev_test
    lineage = json.loads((run_dir / "model" / "metrics.json").read_text())["self_training"]
    corpus = lineage["unlabeled"]
    assert corpus["source"]["files"][0]["path"] == str(tiny_data["unlabeled"].resolve())
    assert len(corpus["source"]["files"][0]["sha256"]) == 64 and corpus["texts"] == 17
    assert lineage["rounds"] == [record] and lineage["settings"]["silver_weight"] == 0.5
    epochs = [e["epoch"] for e in runs_db.epochs(db, full["run_id"])]
    assert epochs == [1, 2, 3, 4]  # the teacher's 2, then the student's numbered on
    assert full["best_epoch"] in (3, 4)
    report = self_train_markdown(TrainSummary(**full))  # the self-train flow's artifact
    assert "| 1 | `self-train/round-0/model` | 12 |" in report and "3 in_dev_test" in report

    # kill -9 in the second round, after its first checkpoint; --resume ends at the same model
    killed = _ner(*common, "--runs-root", str(tmp_path / "killed"))
    deadline, ckpt = time.time() + 600, None
    while time.time() < deadline and ckpt is None and killed.poll() is None:
        ckpt = next(iter((tmp_path / "killed").glob("*/checkpoint.json")), None)  # the last round's
        time.sleep(0.1)
    assert ckpt is not None, killed.communicate()[0]
    killed.send_signal(signal.SIGKILL)
    killed.communicate(timeout=60)
    part = ckpt.parent
    assert not (part / "history.json").exists() and (part / "self-train/round-0/history.json").exists()
    assert main(["train", "--no-prefect", "--db", db, "--resume", part.name]) == 0
    assert "round 0: finished before" in capsys.readouterr().err
    assert json.loads((part / "self-train/silver-1.json").read_text()) == record
    a, b = (
        load_file(str(run_dir / "model/model.safetensors")),
        load_file(str(part / "model/model.safetensors")),
    )
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_unlabeled_dataset_texts_come_from_the_version_the_run_started_with(tiny_data, tmp_path):
    from flows import steps
    from ner_core.config import NERConfig

    db = str(tmp_path / "ner.duckdb")
    steps.ingest_step(db, "raw", {"train": tiny_data["files"]["dev"]})
    steps.ingest_step(db, "raw", {"train": tiny_data["files"]["test"]})  # version 2
    config = NERConfig.model_validate({"training": {"unlabeled_dataset": "raw"}})
    texts, source = steps._unlabeled_texts(db, config, None)
    assert source == {"dataset": "raw", "version": 2}
    assert texts == [r["text"] for r in _records("test")[:6]]
    texts, source = steps._unlabeled_texts(db, config, {"dataset": "raw", "version": 1})  # a resume's
    assert source["version"] == 1 and texts == [r["text"] for r in _records("dev")[:6]]
