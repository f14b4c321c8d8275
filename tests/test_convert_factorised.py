"""bert4keras-era TF checkpoints (factorised-embedding BERT, ELECTRA, RoFormer) converted and proved on an
independent numpy forward pass; NEZHA and RoFormer-V2 refused by name.

TensorFlow cannot run here, so (see tests/fixtures/tf-bert4keras/README.md) each checkpoint is written in
tmp_path by ``bench.tf_bundle_writer`` (proved byte-identical to TensorFlow's own Saver on the shared
fixtures by tests/test_tf_checkpoint.py) from random N(0, 0.2) weights under the variable names the
family's TF code and bert4keras use, and the expected outputs come from :func:`forward` below: the
published equations of each family in plain numpy, written without reference to transformers.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.tf_bundle_writer import write_bundle
from ner_core.artifacts.tf import convert as tf_convert
from ner_core.artifacts.tf.convert import cached_conversion, convert_checkpoint
from ner_core.artifacts.tf.reader import TFCheckpointError

LAYERS, HIDDEN, HEADS, INTER, EMB, POSITIONS = 4, 32, 4, 64, 16, 64
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [chr(0x4E00 + i) for i in range(59)]
LAYER_DENSE = {  # TF scope under layer_N -> (in, out)
    "attention/self/query": (HIDDEN, HIDDEN),
    "attention/self/key": (HIDDEN, HIDDEN),
    "attention/self/value": (HIDDEN, HIDDEN),
    "attention/output/dense": (HIDDEN, HIDDEN),
    "intermediate/dense": (HIDDEN, INTER),
    "output/dense": (INTER, HIDDEN),
}


# ------------------------------------------------------------------------------------------------ fixtures


def _dense(rng, scope: str, n_in: int, n_out: int) -> dict[str, np.ndarray]:
    return {f"{scope}/kernel": _normal(rng, (n_in, n_out)), f"{scope}/bias": _normal(rng, (n_out,))}


def _norm(rng, scope: str, n: int) -> dict[str, np.ndarray]:
    return {f"{scope}/gamma": 1 + _normal(rng, (n,)), f"{scope}/beta": _normal(rng, (n,))}


def _normal(rng, shape) -> np.ndarray:
    return (rng.standard_normal(shape) * 0.2).astype(np.float32)


def make_weights(family: str, seed: int = 0) -> dict[str, np.ndarray]:
    """The encoder's variables as the family's TF code names them (random N(0, 0.2); gamma around 1).

    ``bert_factorised``: bert4keras' BERT with ``embedding_size`` (RoBERTa-tiny / SimBERT-small layout);
    ``electra``: Google's ELECTRA discriminator; ``roformer``: RoFormer v1 (no position table);
    ``brightmart``: brightmart's albert_zh (word embeddings projected by ``word_embeddings_2``, no bias,
    before the hidden-size positions and segments are added; one shared layer)."""
    rng = np.random.default_rng(seed)
    root = "electra" if family == "electra" else "bert"
    width = HIDDEN if family == "brightmart" else EMB  # what positions, segments and LayerNorm see
    w = {
        f"{root}/embeddings/word_embeddings": _normal(rng, (len(VOCAB), EMB)),
        f"{root}/embeddings/token_type_embeddings": _normal(rng, (2, width)),
    }
    if family != "roformer":
        w[f"{root}/embeddings/position_embeddings"] = _normal(rng, (POSITIONS, width))
    w.update(_norm(rng, f"{root}/embeddings/LayerNorm", width))
    if family == "brightmart":
        w["bert/embeddings/word_embeddings_2"] = _normal(rng, (EMB, HIDDEN))
    else:
        w.update(_dense(rng, _projection(family), EMB, HIDDEN))
    for layer in _layer_scopes(family):
        for scope, (n_in, n_out) in LAYER_DENSE.items():
            w.update(_dense(rng, f"{layer}/{scope}", n_in, n_out))
        w.update(_norm(rng, f"{layer}/attention/output/LayerNorm", HIDDEN))
        w.update(_norm(rng, f"{layer}/output/LayerNorm", HIDDEN))
    w.update(_dense(rng, f"{root}/pooler/dense", HIDDEN, HIDDEN))
    return w


def _projection(family: str) -> str:
    return "electra/embeddings_project" if family == "electra" else "bert/encoder/embedding_hidden_mapping_in"


def _layer_scopes(family: str) -> list[str]:
    """The TF scope of each layer's weights, in order (brightmart: one scope for all)."""
    if family == "brightmart":
        return ["bert/encoder/layer_shared"]
    root = "electra" if family == "electra" else "bert"
    return [f"{root}/encoder/layer_{n}" for n in range(LAYERS)]


def _extras(family: str, weights: dict[str, np.ndarray]) -> list[tuple[str, np.ndarray]]:
    """What a pre-training checkpoint carries beside the encoder: heads, Adam slots, the step."""
    rng = np.random.default_rng(1)
    if family == "electra":
        heads = {
            "generator/embeddings_project/kernel": _normal(rng, (EMB, HIDDEN // 4)),
            "generator/encoder/layer_0/attention/self/query/kernel": _normal(rng, (8, 8)),
            "generator_predictions/output_bias": _normal(rng, (len(VOCAB),)),
            "discriminator_predictions/dense/kernel": _normal(rng, (HIDDEN, HIDDEN)),
            "discriminator_predictions/dense_prediction/bias": _normal(rng, (1,)),
        }
    else:
        heads = {
            "cls/predictions/transform/dense/kernel": _normal(rng, (HIDDEN, EMB)),
            "cls/predictions/output_bias": _normal(rng, (len(VOCAB),)),
        }
    slots = {f"{n}/{s}": np.zeros_like(a) for n, a in list(weights.items())[:3] for s in ("adam_m", "adam_v")}
    return [*heads.items(), *slots.items(), ("global_step", np.int64(1000))]


def write_checkpoint(folder: Path, family: str, weights, config_extra=None, *, extras=True) -> tuple:
    """A checkpoint folder in the release layout: (config, prefix, vocab)."""
    folder.mkdir(parents=True)
    tensors = list(weights.items()) + (_extras(family, weights) if extras else [])
    prefix = write_bundle(folder / "bert_model.ckpt", tensors)
    config = {
        "vocab_size": len(VOCAB),
        "hidden_size": HIDDEN,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "intermediate_size": INTER,
        "hidden_act": "gelu",
        "max_position_embeddings": POSITIONS,
        "type_vocab_size": 2,
        "embedding_size": EMB,
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "initializer_range": 0.02,
        **(config_extra or {}),
    }
    (folder / "bert_config.json").write_text(json.dumps(config, indent=2))
    (folder / "vocab.txt").write_text("".join(f"{t}\n" for t in VOCAB), encoding="utf-8")
    return folder / "bert_config.json", prefix, folder / "vocab.txt"


# ------------------------------------------------------------------------------------------------ numpy


def gelu(x: np.ndarray, kind: str) -> np.ndarray:
    """GELU (Hendrycks & Gimpel 2016): x * Phi(x) exactly (erf), or its tanh approximation."""
    if kind == "erf":
        return 0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def layer_norm(x: np.ndarray, w, scope: str) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + 1e-12) * w[f"{scope}/gamma"] + w[f"{scope}/beta"]


def dense(x: np.ndarray, w, scope: str) -> np.ndarray:
    return x @ w[f"{scope}/kernel"] + w[f"{scope}/bias"]


def rotate(x: np.ndarray) -> np.ndarray:
    """RoFormer's rotary position embedding (Su et al. 2021, eq. 34) on ``x`` (batch, heads, seq, d): the
    pair (x[2i], x[2i+1]) at position m turned by the angle m * 10000**(-2i/d), as complex numbers."""
    d, seq = x.shape[-1], x.shape[-2]
    theta = 10000.0 ** (-2.0 * np.arange(d // 2) / d)
    turn = np.exp(1j * np.arange(seq)[:, None] * theta[None, :])  # (seq, d/2)
    z = (x[..., 0::2] + 1j * x[..., 1::2]) * turn
    out = np.empty_like(x)
    out[..., 0::2], out[..., 1::2] = z.real, z.imag
    return out


def attention(x: np.ndarray, mask: np.ndarray, w, scope: str, rotary: bool) -> np.ndarray:
    """Multi-head scaled dot-product self-attention (Vaswani et al. 2017), padded keys masked."""
    b, s, _ = x.shape
    d = HIDDEN // HEADS

    def heads(t):
        return t.reshape(b, s, HEADS, d).transpose(0, 2, 1, 3)

    q, k, v = (heads(dense(x, w, f"{scope}/self/{n}")) for n in ("query", "key", "value"))
    if rotary:
        q, k = rotate(q), rotate(k)
    scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(d) + (1.0 - mask[:, None, None, :]) * -1e9
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    ctx = (probs @ v).transpose(0, 2, 1, 3).reshape(b, s, HIDDEN)
    return dense(ctx, w, f"{scope}/output/dense")


def forward(w, family: str, ids, types, mask, act: str = "tanh") -> tuple[np.ndarray, np.ndarray]:
    """(sequence output, pooled output) of the published forward pass, in float64: embeddings (word +
    segment [+ learned position]) -> LayerNorm over embedding_size -> projection to hidden_size -> post-LN
    Transformer layers (RoFormer: rotary q and k) -> pooler tanh(dense(first token)). brightmart's
    albert_zh projects the word embeddings first, normalises over hidden_size and reuses one layer."""
    w = {k: v.astype(np.float64) for k, v in w.items()}
    root = "electra" if family == "electra" else "bert"
    x = w[f"{root}/embeddings/word_embeddings"][ids]
    if family == "brightmart":  # brightmart's embedding_lookup_factorized: project, then add
        x = x @ w["bert/embeddings/word_embeddings_2"]
    x = x + w[f"{root}/embeddings/token_type_embeddings"][types]
    if family != "roformer":
        x = x + w[f"{root}/embeddings/position_embeddings"][: ids.shape[1]][None]
    x = layer_norm(x, w, f"{root}/embeddings/LayerNorm")
    if family != "brightmart":
        x = dense(x, w, _projection(family))
    mask = mask.astype(np.float64)
    scopes = _layer_scopes(family)
    for n in range(LAYERS):
        layer = scopes[min(n, len(scopes) - 1)]
        a = attention(x, mask, w, f"{layer}/attention", rotary=family == "roformer")
        x = layer_norm(x + a, w, f"{layer}/attention/output/LayerNorm")
        h = dense(gelu(dense(x, w, f"{layer}/intermediate/dense"), act), w, f"{layer}/output/dense")
        x = layer_norm(x + h, w, f"{layer}/output/LayerNorm")
    return x, np.tanh(dense(x[:, 0], w, f"{root}/pooler/dense"))


def _inputs():
    rng = np.random.default_rng(7)
    ids = rng.integers(5, len(VOCAB), size=(3, 20))
    ids[:, 0] = 2
    mask = np.ones_like(ids)
    mask[1, 14:] = 0
    mask[2, 9:] = 0
    ids[mask == 0] = 0
    types = np.zeros_like(ids)
    types[:, 10:] = 1
    return ids, types, mask


def _hf_outputs(out: Path):
    from transformers import AutoModel

    model = AutoModel.from_pretrained(out).eval()
    ids, types, mask = _inputs()
    with torch.no_grad():
        got = model(
            input_ids=torch.from_numpy(ids),
            token_type_ids=torch.from_numpy(types),
            attention_mask=torch.from_numpy(mask),
        )
    pooled = got.pooler_output.numpy() if getattr(got, "pooler_output", None) is not None else None
    return model, got.last_hidden_state.numpy(), pooled


def _diff(a: np.ndarray, b: np.ndarray) -> float:
    real = _inputs()[2] == 1
    return float(np.abs(a[real] - b[real]).max())


def test_numpy_rotary_keeps_norms_and_depends_only_on_relative_position():
    """The reference's rotary map is what the paper says: a rotation (norms kept) whose q.k depends on
    the positions only through their difference."""
    rng = np.random.default_rng(3)
    q, k = rng.standard_normal((2, 1, 1, 1, 8))
    seq = np.repeat(q, 12, axis=-2), np.repeat(k, 12, axis=-2)
    rq, rk = rotate(seq[0])[0, 0], rotate(seq[1])[0, 0]
    assert np.allclose(np.linalg.norm(rq, axis=-1), np.linalg.norm(q))
    assert np.isclose(rq[2] @ rk[5], rq[6] @ rk[9]) and not np.isclose(rq[2] @ rk[5], rq[2] @ rk[6])


# ------------------------------------------------------------------------------------------------ families


@pytest.fixture(scope="module")
def factorised(tmp_path_factory):
    """A factorised-embedding BERT checkpoint, its weights, and its conversion with the defaults."""
    root = tmp_path_factory.mktemp("factorised")
    weights = make_weights("bert_factorised")
    files = write_checkpoint(root / "ckpt", "bert_factorised", weights)
    report = convert_checkpoint(*files, root / "hf", albert=False)  # the CLI's default: no -albert
    return files, weights, root / "hf", report


def test_factorised_bert_becomes_albert_with_one_group_per_layer_and_matches(factorised):
    _, weights, out, report = factorised
    model, seq, pooled = _hf_outputs(out)
    assert type(model).__name__ == "AlbertModel"
    assert model.config.num_hidden_groups == LAYERS and model.config.inner_group_num == 1
    assert model.config.embedding_size == EMB and model.config.hidden_act == "gelu_new"
    want_seq, want_pooled = forward(weights, "bert_factorised", *_inputs(), act="tanh")
    assert _diff(seq, want_seq) <= 1e-5 and np.abs(pooled - want_pooled).max() <= 1e-5
    assert (report.family, report.model_type, report.gelu) == ("bert_factorised", "albert", "tanh")
    assert report.mapped == len(weights)  # every encoder variable, each once
    assert report.skipped == {"optimizer_slots": 6, "global_step": 1, "pretraining_heads": 2, "other": 0}
    saved = json.loads((out / "conversion_report.json").read_text())
    assert saved["gelu"] == "tanh" and saved["family"] == "bert_factorised"


def test_gelu_erf_is_what_bert4keras_computes_and_differs_from_tanh(factorised, tmp_path):
    files, weights, tanh_out, _ = factorised
    report = convert_checkpoint(*files, tmp_path / "erf", gelu="erf")
    assert report.gelu == "erf" and report.hidden_act == "gelu"
    model, seq, _ = _hf_outputs(tmp_path / "erf")
    assert model.config.hidden_act == "gelu"
    erf_seq, _ = forward(weights, "bert_factorised", *_inputs(), act="erf")
    tanh_seq, _ = forward(weights, "bert_factorised", *_inputs(), act="tanh")
    assert _diff(seq, erf_seq) <= 1e-5
    assert _diff(seq, tanh_seq) > 1e-4  # 10x the bound: the two activations are told apart here
    with pytest.raises(TFCheckpointError, match="gelu 'exact' is not one of tanh, erf"):
        convert_checkpoint(*files, tmp_path / "x", gelu="exact")


def test_factorised_bert_with_albert_flag_is_explained(factorised, tmp_path):
    files = factorised[0]
    with pytest.raises(TFCheckpointError, match=r"factorised embeddings .*not ALBERT's shared.*drop -albert"):
        convert_checkpoint(*files, tmp_path / "out", albert=True)
    config = json.loads(files[0].read_text())
    del config["embedding_size"]
    files[0].with_name("no_emb.json").write_text(json.dumps(config))
    with pytest.raises(
        TFCheckpointError,
        match=r"no_emb\.json: missing or non-positive embedding_size "
        r"\(the checkpoint has bert/encoder/embedding_hidden_mapping_in/kernel",
    ):
        convert_checkpoint(files[0].with_name("no_emb.json"), *files[1:], tmp_path / "out")


def test_electra_discriminator_converts_and_skips_the_generator(tmp_path):
    weights = make_weights("electra")
    files = write_checkpoint(tmp_path / "ckpt", "electra", weights)
    report = convert_checkpoint(*files, tmp_path / "hf")
    model, seq, pooled = _hf_outputs(tmp_path / "hf")
    assert type(model).__name__ == "ElectraModel" and pooled is None
    assert _diff(seq, forward(weights, "electra", *_inputs())[0]) <= 1e-5
    assert report.family == "electra" and report.skipped["pretraining_heads"] == 5
    assert report.skipped["pooler"] == 2  # ElectraModel has no pooler
    assert report.mapped == len(weights) - 2
    with pytest.raises(
        TFCheckpointError,
        match=r"holds ELECTRA variables \(electra/encoder/layer_N/\.\.\.\), "
        "not roformer",
    ):
        convert_checkpoint(*files, tmp_path / "x", family="roformer")


@pytest.fixture(scope="module")
def roformer(tmp_path_factory):
    root = tmp_path_factory.mktemp("roformer")
    weights = make_weights("roformer")
    return write_checkpoint(root / "ckpt", "roformer", weights), weights


def test_roformer_is_refused_unless_named_then_matches_the_rotary_forward(roformer, tmp_path):
    files, weights = roformer
    with pytest.raises(TFCheckpointError) as info:
        convert_checkpoint(*files, tmp_path / "guess")
    msg = str(info.value)
    assert "bert/encoder/layer_N/... without bert/embeddings/position_embeddings" in msg
    assert "RoFormer or NEZHA" in msg and "--family roformer" in msg and "\n" not in msg
    assert not (tmp_path / "guess").exists()

    report = convert_checkpoint(*files, tmp_path / "hf", family="roformer")
    model, seq, _ = _hf_outputs(tmp_path / "hf")
    assert type(model).__name__ == "RoFormerModel" and report.family == "roformer"
    assert _diff(seq, forward(weights, "roformer", *_inputs())[0]) <= 1e-5
    assert list(report.computed) == ["encoder.embed_positions.weight"] and report.skipped["pooler"] == 2
    with pytest.raises(TFCheckpointError, match="holds bert/embeddings/position_embeddings .*not RoFormer"):
        bert = write_checkpoint(tmp_path / "bert", "bert_factorised", make_weights("bert_factorised"))
        convert_checkpoint(*bert, tmp_path / "x", family="roformer")


def test_roformer_is_recognised_by_its_config_model_type(roformer, tmp_path):
    files, weights = roformer
    config = json.loads(files[0].read_text())
    files[0].with_name("roformer_config.json").write_text(json.dumps({**config, "model_type": "roformer"}))
    report = convert_checkpoint(files[0].with_name("roformer_config.json"), *files[1:], tmp_path / "hf")
    assert report.model_type == "roformer"


@pytest.mark.parametrize(
    ("extra", "family", "pattern"),
    [
        (
            {"max_relative_position": 64, "use_relative_position": True},
            None,
            r"NEZHA \(bert_config\.json sets max_relative_position, use_relative_position; variables "
            r"bert/encoder/layer_N/\.\.\.\): transformers 5 has no NEZHA model",
        ),
        ({}, "nezha", r"NEZHA \(--family nezha; .*no NEZHA model"),
    ],
)
def test_nezha_is_refused_by_what_identifies_it(roformer, tmp_path, extra, family, pattern):
    _, weights = roformer
    files = write_checkpoint(tmp_path / "ckpt", "roformer", weights, extra)
    with pytest.raises(TFCheckpointError, match=pattern):
        convert_checkpoint(*files, tmp_path / "out", family=family)


def test_roformer_v2_without_biases_or_layernorm_is_refused(tmp_path):
    weights = {
        k: v for k, v in make_weights("roformer").items() if not k.endswith(("/bias", "/gamma", "/beta"))
    }
    files = write_checkpoint(tmp_path / "ckpt", "roformer", weights, extras=False)
    with pytest.raises(
        TFCheckpointError,
        match=r"RoFormer-V2 layout \(bert/encoder/layer_0/attention/self/"
        r"query/kernel without a bias and no LayerNorm variables\)",
    ):
        convert_checkpoint(*files, tmp_path / "out", family="roformer")


@pytest.mark.parametrize("family", ["bert_factorised", "electra", "roformer"])
def test_converted_folders_load_through_the_platforms_checks(tmp_path, family):
    from ner_core.config import EncoderConfig
    from ner_core.data.alignment import CharAligner
    from ner_core.model.encoder import load_encoder

    files = write_checkpoint(tmp_path / "ckpt", family, make_weights(family))
    convert_checkpoint(*files, tmp_path / "hf", family="roformer" if family == "roformer" else None)
    model, tokenizer = load_encoder(EncoderConfig(name=str(tmp_path / "hf")))
    enc = CharAligner(tokenizer).encode([VOCAB[7] + VOCAB[9] + "x"])
    assert enc["input_ids"][0, :4].tolist() == [2, 7, 9, 1]  # [CLS], two characters, [UNK]


# ------------------------------------------------------------------------------------------------ CLI, cache


def _parser():
    from app.commands import convert_checkpoint as convert

    p = argparse.ArgumentParser(prog="ner")
    convert.add_parser(p.add_subparsers(dest="command", required=True))
    return p


def test_cli_gelu_and_family_flags(factorised, roformer, tmp_path, capsys):
    (config, prefix, vocab), _, _, _ = factorised
    argv = ["convert-checkpoint", "-bert_config", str(config), "-bert_checkpoint", str(prefix)]
    args = _parser().parse_args(
        [*argv, "-bert_vocab", str(vocab), "--gelu", "erf", "--out", str(tmp_path / "a")]
    )
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert (
        "converted albert (bert_factorised) checkpoint" in out and "hidden_act gelu (GELU: --gelu erf)" in out
    )
    args = _parser().parse_args([*argv, "-bert_vocab", str(vocab), "--out", str(tmp_path / "b")])
    assert args.func(args) == 0 and "hidden_act gelu_new (GELU: --gelu tanh)" in capsys.readouterr().out

    config, prefix, vocab = roformer[0]
    argv = ["convert-checkpoint", "-bert_config", str(config), "-bert_checkpoint", str(prefix)]
    args = _parser().parse_args([*argv, "-bert_vocab", str(vocab), "--out", str(tmp_path / "c")])
    assert args.func(args) == 2 and "--family roformer" in capsys.readouterr().err
    args = _parser().parse_args(
        [*argv, "-bert_vocab", str(vocab), "--family", "roformer", "--out", str(tmp_path / "c")]
    )
    assert args.func(args) == 0 and "converted roformer checkpoint" in capsys.readouterr().out


def test_cache_keys_on_gelu_and_keeps_the_default_key(factorised, tmp_path, monkeypatch):
    files = factorised[0]
    root = tmp_path / "cache"
    tanh = cached_conversion(*files, cache_root=root)
    assert cached_conversion(*files, gelu="tanh", cache_root=root) == tanh
    erf = cached_conversion(*files, gelu="erf", cache_root=root)
    assert erf != tanh
    assert json.loads((erf / "config.json").read_text())["hidden_act"] == "gelu"
    assert json.loads((tanh / "config.json").read_text())["hidden_act"] == "gelu_new"
    # the default's key is the one earlier versions computed: their cached folders are reused
    import hashlib

    h = hashlib.sha256(b"tf-convert-v1\0")
    for p in (Path(f"{files[1]}.index"), files[0], files[2]):
        data = p.read_bytes()
        h.update(len(data).to_bytes(8, "little") + data)
    assert tanh.name == h.hexdigest()[:32]
    monkeypatch.setattr(tf_convert, "convert_checkpoint", lambda *a, **k: pytest.fail("converted again"))
    with pytest.raises(TFCheckpointError, match="drop -albert"):  # still checked when cached
        cached_conversion(*files, albert=True, cache_root=root)


def test_seed_train_flags_pass_gelu_and_family_to_the_conversion(roformer, tmp_path, monkeypatch):
    from app.cli import build_parser
    from app.commands.config_options import _seed_encoder

    monkeypatch.setenv("NER_CACHE_DIR", str(tmp_path / "cache"))
    config, prefix, vocab = roformer[0]
    argv = ["train", "-bert_config", str(config), "-bert_checkpoint", str(prefix), "-bert_vocab", str(vocab)]
    args = build_parser().parse_args([*argv, "-family", "roformer", "-gelu", "erf"])
    folder = Path(_seed_encoder(args))
    report = json.loads((folder / "conversion_report.json").read_text())
    assert (report["family"], report["gelu"], report["hidden_act"]) == ("roformer", "erf", "gelu")
    assert folder.parent == tmp_path / "cache" / "converted"
    with pytest.raises(TFCheckpointError, match="--family roformer"):
        _seed_encoder(build_parser().parse_args(argv))  # not named: refused, not guessed


def test_brightmart_albert_zh_converts_with_the_projection_folded_in(tmp_path):
    weights = make_weights("brightmart")
    files = write_checkpoint(tmp_path / "ckpt", "brightmart", weights)
    report = convert_checkpoint(*files, tmp_path / "hf", albert=True)  # the seed's users gave -albert
    model, seq, pooled = _hf_outputs(tmp_path / "hf")
    assert type(model).__name__ == "AlbertModel" and model.config.num_hidden_groups == 1
    assert model.config.embedding_size == HIDDEN
    want_seq, want_pooled = forward(weights, "brightmart", *_inputs())
    assert _diff(seq, want_seq) <= 1e-5 and np.abs(pooled - want_pooled).max() <= 1e-5
    assert report.family == "brightmart_albert" and report.mapped == len(weights)
    assert report.computed["embeddings.word_embeddings.weight"] == (
        "bert/embeddings/word_embeddings @ bert/embeddings/word_embeddings_2"
    )
    assert convert_checkpoint(*files, tmp_path / "noflag").family == "brightmart_albert"  # detected


def test_brightmart_pre_ln_and_oversized_products_are_refused(tmp_path):
    weights = make_weights("brightmart")
    files = write_checkpoint(tmp_path / "preln", "brightmart", weights, {"ln_type": "preln"})
    with pytest.raises(TFCheckpointError, match=r"brightmart's albert_zh layout .*ln_type 'preln'"):
        convert_checkpoint(*files, tmp_path / "out")
    # a tall, one-column word table times a wide projection declares a product far beyond the file
    rng = np.random.default_rng(0)
    weights["bert/embeddings/word_embeddings"] = _normal(rng, (200_000, 1))
    weights["bert/embeddings/word_embeddings_2"] = _normal(rng, (1, HIDDEN))
    files = write_checkpoint(tmp_path / "tall", "brightmart", weights, {"vocab_size": 200_000})
    with pytest.raises(TFCheckpointError, match=r"embeddings\.word_embeddings\.weight .*more than 4 times"):
        convert_checkpoint(*files, tmp_path / "out")
    assert not (tmp_path / "out").exists()
