"""The span decoder's faster paths give the dense path's results: RoPE tables computed once per
(length, dim, device, dtype); the banded scores ``(B, C, L, W)`` (only the cells a span can occupy), which
prediction and the loss read, equal the dense ``(B, C, L, L)`` scores on every valid span, in fp32 and
under bf16 autocast (span scores fp32); the banded circle loss and its gradients equal the dense loss's;
and the tagger, reading the band, finds the spans and probabilities that decoding the dense scores finds."""

from __future__ import annotations

import pytest
import torch

from ner_core.model import span as span_mod
from ner_core.model.span import (
    MASKED,
    EfficientGlobalPointer,
    band_mask,
    band_width,
    circle_loss,
    decode_spans,
    rope,
    span_mask,
    to_band,
)
from tests.model_helpers import LABELS, TEXTS, encode
from tests.test_span_model import build_span

pytestmark = pytest.mark.usefixtures("one_thread")

PRECISIONS = ["fp32", "bf16"]


def _autocast(precision: str):
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")


def _dense_rope(x: torch.Tensor) -> torch.Tensor:
    """RoPE written out with its tables computed on every call (the formula, no cache)."""
    _, L, D = x.shape
    inv = torch.pow(10000.0, -torch.arange(0, D, 2, dtype=torch.float32) / D)
    angle = torch.arange(L, dtype=torch.float32)[:, None] * inv[None, :]
    cos, sin = angle.cos(), angle.sin()
    even, odd = x[..., 0::2], x[..., 1::2]
    return torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1).flatten(-2)


def _assert_band_equals_dense(band, dense, char_mask, max_span_len):
    """Every valid span's probability in the band equals the dense one's (1e-5), the band holds every
    valid dense cell, and every other band cell is masked."""
    L = dense.shape[-1]
    W = band_width(L, max_span_len)
    assert band.shape == dense.shape[:-1] + (W,) and band.dtype == torch.float32
    valid_dense = span_mask(char_mask, max_span_len)  # (B, L, L)
    valid_band = band_mask(char_mask, W, max_span_len)  # (B, L, W)
    assert int(valid_band.sum()) == int(valid_dense.sum())  # the band loses no span
    b, i, j = valid_dense.nonzero(as_tuple=True)
    want = torch.sigmoid(dense[b, :, i, j])  # (N, C)
    got = torch.sigmoid(band[b, :, i, j - i])
    assert torch.allclose(got, want, atol=1e-5, rtol=0)
    assert bool((band.permute(0, 2, 3, 1)[~valid_band] == MASKED).all())  # (N, C) cells that are no span


# ------------------------------------------------------------------ RoPE tables
def test_rope_tables_are_computed_once_and_give_the_formula():
    span_mod._ROPE_TABLES.clear()
    torch.manual_seed(0)
    x = torch.randn(2, 7, 8)
    assert torch.allclose(rope(x), _dense_rope(x), atol=1e-6)
    first = span_mod._rope_tables(7, 8, x.device, x.dtype)
    assert span_mod._rope_tables(7, 8, x.device, x.dtype)[0] is first[0]  # cached, not recomputed
    assert span_mod._rope_tables(9, 8, x.device, x.dtype)[0].shape == (9, 4)  # another length: its own


def test_rope_tables_made_under_inference_mode_still_train():
    span_mod._ROPE_TABLES.clear()
    with torch.inference_mode():
        rope(torch.randn(1, 5, 4))  # the tables are first made here
    x = torch.randn(1, 5, 4, requires_grad=True)
    rope(x).sum().backward()  # an inference tensor saved for backward would raise here
    assert x.grad is not None and torch.isfinite(x.grad).all()


# ------------------------------------------------------------------ band == dense
@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("max_span_len", [None, 1, 3, 12])
def test_band_scores_equal_the_dense_scores(precision, max_span_len):
    torch.manual_seed(0)
    gp = EfficientGlobalPointer(6, 3, head_size=4)
    h = torch.randn(3, 9, 6)
    cm = torch.tensor([[1] * 9, [1] * 5 + [0] * 4, [1] + [0] * 8], dtype=torch.bool)
    with _autocast(precision):
        dense, band = gp(h, cm, max_span_len), gp.band(h, cm, max_span_len)
    assert dense.dtype == band.dtype == torch.float32
    _assert_band_equals_dense(band, dense, cm, max_span_len)
    assert torch.equal(to_band(dense, band.shape[-1]), band)


def _formula_scores(gp: EfficientGlobalPointer, h: torch.Tensor, cm: torch.Tensor, limit) -> torch.Tensor:
    """The dense scores of the module's doc written out: RoPE on the interleaved projection (no reordered
    rows), the per-label start and end biases, every cell that is no span masked."""
    x = gp.proj(gp.norm(h.float()))
    q, k = _dense_rope(x[..., 0::2]), _dense_rope(x[..., 1::2])
    bias = gp.bias(x).transpose(1, 2) / 2
    s = torch.einsum("bmd,bnd->bmn", q, k) / gp.head_size**0.5
    logits = s[:, None] + bias[:, 0::2, :, None] + bias[:, 1::2, None, :]
    return logits.masked_fill(~span_mask(cm, limit)[:, None], MASKED)


@pytest.mark.parametrize("max_span_len", [None, 3])
def test_band_and_dense_scores_equal_the_formula(max_span_len):
    torch.manual_seed(1)
    gp = EfficientGlobalPointer(10, 4, head_size=8)
    h = torch.randn(2, 11, 10)
    cm = torch.tensor([[1] * 11, [1] * 6 + [0] * 5], dtype=torch.bool)
    with torch.no_grad():
        want = _formula_scores(gp, h, cm, max_span_len)
        assert torch.allclose(gp(h, cm, max_span_len), want, atol=1e-5, rtol=0)
        _assert_band_equals_dense(gp.band(h, cm, max_span_len), want, cm, max_span_len)


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("max_span_len", [None, 3])
def test_model_span_band_equals_span_logits(tiny_encoder_dir, precision, max_span_len):
    model, tok = build_span(tiny_encoder_dir, head="bilstm", **{"decoder.max_span_len": max_span_len})
    model.eval()
    ids, am = encode(tok, TEXTS)
    with torch.inference_mode(), _autocast(precision):
        dense, cm = model.span_logits(ids, am)
        band, cm_band = model.span_band(ids, am)
    assert torch.equal(cm, cm_band)
    _assert_band_equals_dense(band, dense, cm, max_span_len)


# ------------------------------------------------------------------ the loss
@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("max_span_len", [None, 3])
def test_banded_loss_and_gradients_equal_the_dense_loss(tiny_encoder_dir, precision, max_span_len):
    model, tok = build_span(tiny_encoder_dir, head="bilstm", **{"decoder.max_span_len": max_span_len})
    model.eval()  # no dropout: both passes see the same features
    ids, am = encode(tok, TEXTS + [""])  # an empty row adds nothing
    targets = torch.tensor([[0, 0, 0, 1], [0, 1, 3, 4], [1, 1, 3, 4], [1, 1, 3, 3], [2, 2, 0, 2]])
    with _autocast(precision):
        dense, cm = model.span_logits(ids, am)
        valid = span_mask(cm, max_span_len)
        gold = torch.zeros_like(dense, dtype=torch.bool)
        gold[targets[:, 0], targets[:, 1], targets[:, 2], targets[:, 3]] = True
        want = circle_loss(dense, gold, valid)[cm[:, 0]].mean()
    want.backward()
    want_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    with _autocast(precision):
        got = model(ids, am, targets)  # the banded loss
    got.backward()
    assert got.dtype == torch.float32 and got.item() == pytest.approx(want.item(), rel=1e-6, abs=1e-6)
    got_grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert got_grads.keys() == want_grads.keys() and want_grads
    for name, g in want_grads.items():
        assert torch.allclose(got_grads[name], g, atol=1e-5, rtol=1e-4), name


def test_banded_loss_refuses_what_the_dense_loss_refused(tiny_encoder_dir):
    model, tok = build_span(tiny_encoder_dir, head="none", **{"decoder.max_span_len": 3})
    ids, am = encode(tok, TEXTS)
    for bad in ([0, 0, 0, 3], [0, 0, 3, 2], [3, 0, 1, 2], [1, 0, 4, 6]):  # too long, end < start, padding
        with pytest.raises(ValueError, match="no span the model scores"):
            model(ids, am, torch.tensor([bad]))


# ------------------------------------------------------------------ the tagger reads the band
@pytest.mark.parametrize("max_span_len", [None, 4])
def test_tagger_reading_the_band_finds_the_dense_decoding(tiny_encoder_dir, max_span_len):
    from ner_core.inference.tagger import Tagger

    model, tok = build_span(tiny_encoder_dir, head="bilstm", **{"decoder.max_span_len": max_span_len})
    model.eval()
    texts = ["张三在北京工作", "李四去上海"]  # no spaces: nothing to trim
    ids, am = encode(tok, texts)
    with torch.inference_mode():
        dense, cm = model.span_logits(ids, am)
    want = decode_spans(dense, cm, 0.5, "allow")
    tagger = Tagger(model, tok, max_len=16, span_threshold=0.5, overlap="allow")
    got = tagger.predict(texts)
    for row, ents in zip(want, got, strict=True):
        assert row, "an untrained model scores about half the spans above 0.5"
        found = {(e.start, e.end, LABELS.index(e.label)): e.confidence for e in ents}
        assert sorted(found) == [(s, e, c) for s, e, c, _ in row]
        for s, e, c, p in row:
            assert found[(s, e, c)] == pytest.approx(p, abs=1e-5)


@pytest.mark.parametrize("overlap", ["allow", "flat"])
@pytest.mark.parametrize("max_span_len", [None, 4])
def test_decoding_the_band_finds_the_dense_decoding(tiny_encoder_dir, overlap, max_span_len):
    model, tok = build_span(tiny_encoder_dir, head="bilstm", **{"decoder.max_span_len": max_span_len})
    model.eval()
    ids, am = encode(tok, TEXTS)
    with torch.inference_mode():
        dense, cm = model.span_logits(ids, am)
        band, _ = model.span_band(ids, am)
    want = decode_spans(dense, cm, 0.5, overlap)
    got = decode_spans(band, cm, 0.5, overlap, band=True)
    assert any(want) and [[s[:3] for s in r] for r in got] == [[s[:3] for s in r] for r in want]
    for g, w in zip(sum(got, []), sum(want, []), strict=True):
        assert g[3] == pytest.approx(w[3], abs=1e-5)
