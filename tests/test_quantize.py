"""int8 copies that keep accuracy (ner_core.runtime.quantize): what is quantised, what stays float, and that
per-channel weights and 8-bit activations really cut the error the old per-tensor, 7-bit path made."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from torch import nn

from ner_core.runtime.hardware import Hardware
from ner_core.runtime.quantize import (
    Int8Linear,
    QuantizeError,
    WeightOnlyInt8Linear,
    full_range_ok,
    group_of,
    int8_copy,
    quantizable,
)
from tests.model_helpers import LABELS, TEXTS, encode


def _model(tiny_encoder_dir, layers: int = 2):
    from ner_core.config import NERConfig
    from ner_core.model.encoder import load_encoder, make_tiny_encoder
    from ner_core.model.network import NERModel
    from ner_core.schemes import tag_set

    folder = tiny_encoder_dir
    if layers != 1:
        folder = make_tiny_encoder(tiny_encoder_dir.parent / f"tiny-{layers}", TEXTS, num_layers=layers)
    cfg = NERConfig.model_validate(
        {"data": {"max_len": 32}, "encoder": {"name": str(folder)}, "head": {"type": "bilstm"}}
    )
    torch.manual_seed(0)
    encoder, tokenizer = load_encoder(cfg.encoder)
    return NERModel(cfg, tag_set(LABELS, "BIOES"), encoder).eval(), tokenizer


def _rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    return float((got.float() - ref.float()).norm() / ref.float().norm())


def test_bert_linear_names_map_to_groups_and_layers():
    assert group_of("encoder.layer.3.attention.self.query") == ("attn_qkv", 3)
    assert group_of("encoder.layer.3.attention.self.value") == ("attn_qkv", 3)
    assert group_of("encoder.layer.0.attention.output.dense") == ("attn_out", 0)
    assert group_of("encoder.layer.11.intermediate.dense") == ("ffn_in", 11)
    assert group_of("encoder.layer.2.output.dense") == ("ffn_out", 2)
    assert group_of("pooler.dense") == ("pooler", None)
    # ALBERT's shared layers
    assert group_of("encoder.albert_layer_groups.0.albert_layers.0.ffn_output") == ("ffn_out", 0)
    assert group_of("embeddings.project") == ("other", None)


def test_the_copy_is_quantised_and_the_given_model_is_not(tiny_encoder_dir, one_thread):
    model, _ = _model(tiny_encoder_dir)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    q = int8_copy(model)
    names = [n for n, _, _ in quantizable(model.encoder)]
    assert len(names) == 2 * 6 + 1  # q, k, v, attention output, FFN in, FFN out per layer; the pooler
    assert all(isinstance(q.encoder.get_submodule(n), Int8Linear) for n in names)
    assert all(type(model.encoder.get_submodule(n)) is nn.Linear for n in names)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # the head and the classifier stay float
    assert type(q.classifier) is nn.Linear and not any(isinstance(m, Int8Linear) for m in q.head.modules())


def test_keep_float_by_group_by_layer_and_by_name(tiny_encoder_dir, one_thread):
    model, _ = _model(tiny_encoder_dir)
    q = int8_copy(model, keep_float=["ffn_out", "attn_qkv@1", "pooler.dense"])
    kept = {n for n, _, _ in quantizable(q.encoder)}  # only plain nn.Linear are listed
    assert kept == {
        "encoder.layer.0.output.dense",
        "encoder.layer.1.output.dense",
        "encoder.layer.1.attention.self.query",
        "encoder.layer.1.attention.self.key",
        "encoder.layer.1.attention.self.value",
        "pooler.dense",
    }
    assert isinstance(q.encoder.get_submodule("encoder.layer.0.attention.self.query"), Int8Linear)
    # a comma-separated string is the same request
    q2 = int8_copy(model, keep_float="ffn_out,attn_qkv@1,pooler.dense")
    assert {n for n, _, _ in quantizable(q2.encoder)} == kept


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"keep_float": ["ffn@1"]}, "keep_float entry 'ffn@1': expected GROUP@LAYER"),
        ({"keep_float": ["ffn_out@x"]}, "keep_float entry 'ffn_out@x'"),
        ({"activations": "int4"}, "activations must be 'dynamic' or 'bf16', got 'int4'"),
    ],
)
def test_bad_requests_are_refused_in_one_line(tiny_encoder_dir, kwargs, message):
    model, _ = _model(tiny_encoder_dir)
    with pytest.raises(QuantizeError, match=message):
        int8_copy(model, **kwargs)


def test_a_model_without_an_encoder_is_refused():
    with pytest.raises(QuantizeError, match="needs a model with an encoder module, got Linear"):
        int8_copy(nn.Linear(4, 4))


def _outlier_linear() -> nn.Linear:
    """A Linear like a BERT FFN output: a few weight rows far larger than the rest."""
    torch.manual_seed(1)
    lin = nn.Linear(256, 64)
    with torch.no_grad():
        lin.weight[:2] *= 60.0
    return lin


def test_per_channel_weights_cut_the_error_an_outlier_row_causes(one_thread):
    lin = _outlier_linear()
    x = torch.randn(8, 16, 256)
    with torch.no_grad():
        ref = lin(x)[..., 2:]  # the ordinary rows
        per_tensor = Int8Linear(lin, per_channel=False, reduce_range=False)(x)[..., 2:]
        per_channel = Int8Linear(lin, per_channel=True, reduce_range=False)(x)[..., 2:]
    assert _rel_err(per_channel, ref) < _rel_err(per_tensor, ref) / 10
    assert _rel_err(per_channel, ref) < 0.02


def test_8_bit_activations_halve_the_error_of_7_bit_ones(one_thread):
    torch.manual_seed(2)
    lin = nn.Linear(128, 64)
    x = torch.randn(4, 32, 128)
    x[..., 5] *= 30.0  # an outlier channel, as after a BERT LayerNorm
    with torch.no_grad():
        ref = lin(x)
        seven = _rel_err(Int8Linear(lin, reduce_range=True)(x), ref)
        eight = _rel_err(Int8Linear(lin, reduce_range=False)(x), ref)
    assert eight < 0.7 * seven


def test_8_bit_activations_only_where_the_cpu_accumulates_in_32_bits():
    assert full_range_ok(Hardware("cpu", frozenset({"avx512_bf16", "avx512_vnni"})))
    assert full_range_ok(Hardware("cpu", frozenset({"amx_int8", "amx_bf16"})))
    assert not full_range_ok(Hardware("cpu", frozenset({"avx_vnni"})))
    assert not full_range_ok(Hardware("cpu", frozenset()))


def test_the_7_or_8_bit_choice_follows_the_hardware_unless_given(tiny_encoder_dir, monkeypatch, one_thread):
    import ner_core.runtime.quantize as quantize

    model, _ = _model(tiny_encoder_dir, layers=1)
    monkeypatch.setattr(quantize, "full_range_ok", lambda hardware=None: False)
    q = int8_copy(model)
    assert q.encoder.encoder.layer[0].output.dense.reduce_range is True
    monkeypatch.setattr(quantize, "full_range_ok", lambda hardware=None: True)
    assert int8_copy(model).encoder.encoder.layer[0].output.dense.reduce_range is False
    assert int8_copy(model, full_range=False).encoder.encoder.layer[0].output.dense.reduce_range is True


def test_int8_weights_with_bf16_activations_stay_close_to_float(one_thread):
    lin = _outlier_linear()
    x = torch.randn(8, 16, 256)
    with torch.no_grad():
        got = WeightOnlyInt8Linear(lin)(x)
        ref = lin(x)
    assert got.dtype == torch.float32 and got.shape == ref.shape
    assert _rel_err(got, ref) < 0.02


def test_the_copys_emissions_stay_close_and_it_copies_and_pickles(tiny_encoder_dir, one_thread):
    model, tokenizer = _model(tiny_encoder_dir)
    ids, am = encode(tokenizer, TEXTS)
    with torch.inference_mode():
        ref, mask = model.emissions(ids, am)
        for kwargs in ({}, {"per_channel": False}, {"keep_float": ["ffn_out"]}, {"activations": "bf16"}):
            q = int8_copy(model, **kwargs)
            bf16 = kwargs.get("activations") == "bf16"
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                got, _ = q.emissions(ids, am)
            assert 0 < _rel_err(got[mask], ref[mask]) < 0.1, kwargs
        q = int8_copy(model)
        got, _ = q.emissions(ids, am)
        for twin in (copy.deepcopy(q), pickle.loads(pickle.dumps(q))):
            assert torch.equal(twin.emissions(ids, am)[0], got)


def test_smoothing_by_calibrated_input_ranges_cuts_the_error_an_outlier_channel_causes(one_thread):
    """SmoothQuant: an input channel 30x larger than the rest sets the dynamic step of every channel;
    dividing it out (into the weights) by the calibrated per-channel range makes the int8 product closer."""
    from ner_core.runtime.quantize import _smoothing

    torch.manual_seed(3)
    lin = nn.Linear(128, 64)
    x = torch.randn(4, 32, 128)
    x[..., 5] *= 30.0
    smooth = _smoothing("l", lin, x.reshape(-1, 128).abs().amax(0), 0.8)
    with torch.no_grad():
        ref = lin(x)
        plain = _rel_err(Int8Linear(lin, reduce_range=False)(x), ref)
        smoothed = _rel_err(Int8Linear(lin, reduce_range=False, smooth=smooth)(x), ref)
    assert smoothed < 0.6 * plain
    with pytest.raises(QuantizeError, match="activation range for l has shape \\(3,\\)"):
        _smoothing("l", lin, torch.ones(3), 0.8)


def test_activation_ranges_record_each_linears_largest_input_per_channel(tiny_encoder_dir, one_thread):
    from ner_core.runtime.quantize import activation_ranges, int8_copy, quantizable

    model, _ = _model(tiny_encoder_dir)
    ids = torch.randint(5, model.encoder.config.vocab_size, (2, 12))
    ranges = activation_ranges(model, [(ids, torch.ones_like(ids))])
    names = [n for n, _g, _l in quantizable(model.encoder)]
    assert sorted(ranges) == sorted(names)
    for n in names:
        lin = model.encoder.get_submodule(n)
        assert ranges[n].shape == (lin.in_features,) and (ranges[n] >= 0).all() and ranges[n].max() > 0
    copy = int8_copy(model, ranges=ranges, full_range=True)
    assert "smoothed" in repr(copy.encoder)
