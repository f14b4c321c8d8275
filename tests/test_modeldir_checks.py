"""Damaged or tampered model directories: one line naming the file and the problem, for each of a
truncated weights file, a configuration that disagrees with the weights, missing tokenizer files and an
edited label file (ner_core/artifacts/checks.py)."""

from __future__ import annotations

import json
import shutil

import pytest
from safetensors import safe_open

from ner_core.artifacts.checks import TAGS_DIGEST
from ner_core.artifacts.layout import ModelDirError
from ner_core.artifacts.modeldir import load_model_dir, save_model_dir
from tests.test_modeldir import build

pytestmark = pytest.mark.usefixtures("one_thread")
W = "model.safetensors"


@pytest.fixture(scope="module")
def saved(tiny_encoder_dir, tmp_path_factory):
    model, tok = build(tiny_encoder_dir)
    return save_model_dir(tmp_path_factory.mktemp("m") / "model", model, tok)


def _edit(rel, change):
    def damage(d):
        obj = json.loads((d / rel).read_text(encoding="utf-8"))
        change(obj)
        (d / rel).write_text(json.dumps(obj), encoding="utf-8")

    return damage


def _swap(tags, a="PER", b="LOC"):
    return [t.replace(a, "\0").replace(b, a).replace("\0", b) for t in tags]


DAMAGES = [
    # truncated weights: a cut in the data, in the header, an empty file
    ("cut_tail", lambda d: (d / W).write_bytes((d / W).read_bytes()[:-100]),
     r"model.safetensors is damaged or truncated: .*incomplete metadata"),
    ("cut_header", lambda d: (d / W).write_bytes((d / W).read_bytes()[:8]),
     "model.safetensors is damaged or truncated"),
    ("empty", lambda d: (d / W).write_bytes(b""), "model.safetensors is damaged or truncated"),
    # a configuration that disagrees with the weights
    ("rnn_units", _edit("ner_config.json", lambda o: o["head"].update(rnn_units=16)),
     r"model.safetensors does not match the configuration \(ner_config.json, encoder/config.json\): "
     r"head\.rnn\.weight_ih_l0 is "
     r"\[32, 32\] in the file, \[64, 32\] in the model the configuration builds \(\d+ more differences\)"),
    ("head", _edit("ner_config.json", lambda o: o["head"].update(type="idcnn")),
     r"classifier.weight is \[13, 16\] in the file, \[13, 8\]"),
    ("hidden", _edit("encoder/config.json", lambda o: o.update(hidden_size=64)),
     r"word_embeddings.weight is \[\d+, 32\] in the file, \[\d+, 64\]"),
    ("layers", _edit("encoder/config.json", lambda o: o.update(num_hidden_layers=2)),
     r"encoder.encoder.layer.1.\S+ is missing from the file"),
    ("scheme", _edit("ner_config.json", lambda o: o["data"].update(scheme="BIO")),
     "labels.json says scheme 'BIOES' but ner_config.json says 'BIO'"),
    # missing tokenizer files (transformers would otherwise load a tokenizer that is all [UNK])
    ("tok_vocab", lambda d: (d / "tokenizer" / "tokenizer.json").unlink(),
     r"tokenizer/ has no vocabulary file \(tokenizer.json or vocab.txt\)"),
    ("tok_config", lambda d: (d / "tokenizer" / "tokenizer_config.json").unlink(),
     "tokenizer/tokenizer_config.json is missing"),
    # a tampered label file
    ("reordered", _edit("labels.json", lambda o: o["tags"].reverse()),
     r"labels.json is not the tag list model.safetensors was saved with \(tags edited, reordered"),
    ("swapped", _edit("labels.json", lambda o: o.update(tags=_swap(o["tags"]))), "not the tag list"),
    ("renamed", _edit("labels.json", lambda o: o.update(tags=[t.replace("PER", "NAME") for t in o["tags"]],
                                                        labels=["LOC", "NAME", "ORG"])), "not the tag list"),
    ("added", _edit("labels.json", lambda o: o["tags"].append("S-PER2")), "its 'labels'"),
    ("dropped", _edit("labels.json", lambda o: o["tags"].remove("S-PER")), "not the tag list"),
    ("bad_tag", _edit("labels.json", lambda o: o["tags"].__setitem__(1, "Q-LOC")),
     r"labels.json is damaged: tag 'Q-LOC' has prefix 'Q'"),
    ("dup_tag", _edit("labels.json", lambda o: o["tags"].__setitem__(1, o["tags"][2])), "is listed twice"),
    ("no_o", _edit("labels.json", lambda o: o["tags"].remove("O")), "no 'O' tag"),
]  # fmt: skip


@pytest.mark.parametrize("name,damage,message", DAMAGES, ids=[d[0] for d in DAMAGES])
def test_each_damage_is_one_line_naming_the_file(saved, tmp_path, name, damage, message):
    d = tmp_path / "copy"
    shutil.copytree(saved, d)
    damage(d)
    with pytest.raises(ModelDirError, match=message) as info:
        load_model_dir(d)
    text = str(info.value)
    assert text.startswith(f"{d}: ") and "\n" not in text and len(text) < 400, text


def test_the_weights_carry_the_tags_digest_and_an_intact_copy_loads(saved, tmp_path):
    with safe_open(str(saved / W), framework="pt") as f:
        assert len(f.metadata()[TAGS_DIGEST]) == 64
    shutil.copytree(saved, tmp_path / "copy")
    assert load_model_dir(tmp_path / "copy").tags == json.loads((saved / "labels.json").read_text())["tags"]


def test_a_directory_saved_before_the_digest_is_checked_through_its_crf_masks(legacy_dir):
    model_dir = legacy_dir / "runs" / "20261201-152337-sample-bilstm-56603a" / "model"
    with safe_open(str(model_dir / W), framework="pt") as f:
        assert TAGS_DIGEST not in (f.metadata() or {})  # written by the code at 3cc253c
    load_model_dir(model_dir)  # intact: loads
    labels = json.loads((model_dir / "labels.json").read_text())
    labels["tags"] = labels["tags"][:1] + labels["tags"][1:][::-1]
    (model_dir / "labels.json").write_text(json.dumps(labels))
    with pytest.raises(ModelDirError, match="do not give the transitions model.safetensors was trained with"):
        load_model_dir(model_dir)
