"""The span decoder (Efficient GlobalPointer, ner_core.model.span) and NERModel with decoder span: rotary
encoding, masking, the circle loss against a plain formula, fp32 under bf16 autocast, targets."""

from __future__ import annotations

import math

import pytest
import torch

from ner_core.config import NERConfig
from ner_core.model.encoder import load_encoder
from ner_core.model.network import NERModel
from ner_core.model.span import MASKED, EfficientGlobalPointer, circle_loss, decode_spans, rope, span_mask
from tests.model_helpers import LABELS, TEXTS, encode

pytestmark = pytest.mark.usefixtures("one_thread")


def build_span(encoder_dir, head="bilstm", seed=0, **over):
    cfg = NERConfig().with_overrides(
        {
            "encoder.name": str(encoder_dir),
            "head.type": head,
            "head.rnn_units": 8,
            "head.cnn_filters": 8,
            "decoder.type": "span",
            "decoder.head_size": 8,
            **over,
        }
    )
    encoder, tokenizer = load_encoder(cfg.encoder)
    torch.manual_seed(seed)
    return NERModel(cfg, list(LABELS), encoder), tokenizer


# ------------------------------------------------------------------ RoPE
def test_rope_scores_depend_on_the_relative_position_only():
    torch.manual_seed(0)
    q, k = torch.randn(1, 1, 16), torch.randn(1, 1, 16)
    L = 9
    rq, rk = rope(q.expand(1, L, 16)), rope(k.expand(1, L, 16))
    s = torch.einsum("bmd,bnd->bmn", rq, rk)[0]  # (L, L)
    for i in range(L - 1):
        for j in range(L - 1):
            assert s[i + 1, j + 1].item() == pytest.approx(s[i, j].item(), abs=1e-4)
    # and it does depend on the distance (no rotation would make every cell equal)
    assert abs(s[0, 0].item() - s[0, 3].item()) > 1e-3
    # a rotation keeps the norm
    assert torch.allclose(rq.norm(dim=-1), q.norm(dim=-1).expand(1, L), atol=1e-5)


# ------------------------------------------------------------------ masking
def test_invalid_cells_are_masked_and_valid_ones_are_not():
    torch.manual_seed(0)
    gp = EfficientGlobalPointer(6, 3, head_size=4)
    h = torch.randn(2, 5, 6)
    cm = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=torch.bool)
    out = gp(h, cm, max_span_len=2)
    assert out.shape == (2, 3, 5, 5) and out.dtype == torch.float32
    for b in range(2):
        n = int(cm[b].sum())
        for i in range(5):
            for j in range(5):
                ok = i < n and j < n and 0 <= j - i < 2
                cell = out[b, :, i, j]
                assert bool((cell == MASKED).all()) != ok, (b, i, j)
    assert torch.sigmoid(out[out == MASKED]).max() == 0
    # no limit: every upper-triangle cell of the characters is scored
    assert span_mask(cm, None)[0].sum() == 15 and span_mask(cm, None)[1].sum() == 6


# ------------------------------------------------------------------ loss
def reference_loss(logits, gold, valid):
    """The circle loss written out cell by cell: log(1 + sum_neg e^s) + log(1 + sum_pos e^-s)."""
    B, C, L, _ = logits.shape
    out = torch.zeros(B, C, dtype=torch.float64)
    for b in range(B):
        for c in range(C):
            neg = pos = 0.0
            for i in range(L):
                for j in range(L):
                    if not valid[b, i, j]:
                        continue
                    s = float(logits[b, c, i, j])
                    if gold[b, c, i, j]:
                        pos += math.exp(-s)
                    else:
                        neg += math.exp(s)
            out[b, c] = math.log1p(neg) + math.log1p(pos)
    return out


def test_circle_loss_equals_the_reference_formula():
    torch.manual_seed(1)
    B, C, L = 2, 3, 5
    cm = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=torch.bool)
    valid = span_mask(cm, 3)
    logits = torch.randn(B, C, L, L) * 2
    logits = logits.masked_fill(~valid[:, None], MASKED)
    gold = (torch.rand(B, C, L, L) < 0.3) & valid[:, None]
    gold[0, 2] = False  # one (row, label) with no positive at all
    got = circle_loss(logits, gold, valid)
    want = reference_loss(logits, gold, valid)
    assert got.shape == (B, C)
    assert torch.allclose(got.double(), want, rtol=1e-5, atol=1e-6)
    assert torch.isfinite(got).all()
    none = circle_loss(logits, torch.zeros_like(gold), valid)
    assert torch.isfinite(none).all() and (none > 0).all()


def test_decode_spans_threshold_and_flat():
    logits = torch.full((1, 2, 4, 4), MASKED)
    logits[0, 0, 0, 3] = 3.0  # label 0, chars 0..3, p 0.95
    logits[0, 1, 0, 1] = 1.0  # label 1, chars 0..1 (nested), p 0.73
    logits[0, 1, 2, 2] = -1.0  # below 0.5
    cm = torch.ones(1, 4, dtype=torch.bool)
    allow = decode_spans(logits, cm, 0.5, "allow")[0]
    assert [(s, e, c) for s, e, c, _ in allow] == [(0, 2, 1), (0, 4, 0)]
    assert allow[1][3] == pytest.approx(torch.sigmoid(torch.tensor(3.0)).item())
    assert [(s, e, c) for s, e, c, _ in decode_spans(logits, cm, 0.5, "flat")[0]] == [(0, 4, 0)]
    assert [(s, e, c) for s, e, c, _ in decode_spans(logits, cm, 0.2, "allow")[0]] == [
        (0, 2, 1),
        (0, 4, 0),
        (2, 3, 1),
    ]


# ------------------------------------------------------------------ the model
@pytest.mark.parametrize("head", ["none", "bilstm", "bigru", "idcnn"])
def test_span_model_shapes_loss_and_no_crf(tiny_encoder_dir, head):
    model, tok = build_span(tiny_encoder_dir, head=head, **{"decoder.max_span_len": 3})
    assert model.labels == LABELS and model.decoder == "span"
    assert not hasattr(model, "crf") and not hasattr(model, "classifier") and hasattr(model, "span")
    ids, am = encode(tok, TEXTS)
    logits, cm = model.span_logits(ids, am)
    L = ids.shape[1] - 2
    assert logits.shape == (len(TEXTS), len(LABELS), L, L) and logits.dtype == torch.float32
    assert cm.tolist() == [[j < len(t) for j in range(L)] for t in TEXTS]
    assert bool((logits[:, :, 0, 3] == MASKED).all())  # 4 characters > max_span_len 3
    assert bool((logits[:, :, 1, 0] == MASKED).all())  # end before start
    # 张三 PER in row 0, 北京 LOC in row 0, 上海 LOC in row 1
    targets = torch.tensor([[0, 0, 0, 1], [0, 1, 3, 4], [1, 1, 3, 4]])
    loss = model(ids, am, targets)
    assert loss.dim() == 0 and torch.isfinite(loss) and loss.dtype == torch.float32
    loss.backward()
    assert model.span.proj.weight.grad is not None
    with pytest.raises(ValueError, match="no span the model scores"):
        model(ids, am, torch.tensor([[0, 0, 0, 3]]))  # longer than max_span_len
    with pytest.raises(ValueError, match="outside the batch"):
        model(ids, am, torch.tensor([[0, 5, 0, 1]]))
    with pytest.raises(ValueError, match="no tag emissions"):
        model.emissions(ids, am)


def test_span_loss_is_mean_over_row_label_pairs_of_rows_with_characters(tiny_encoder_dir):
    model, tok = build_span(tiny_encoder_dir, head="none")
    model.eval()
    ids, am = encode(tok, ["张三在北京", "李四"])
    targets = torch.tensor([[0, 0, 0, 1], [1, 0, 0, 1]])
    logits, cm = model.span_logits(ids, am)
    valid = span_mask(cm, None)
    gold = torch.zeros_like(logits, dtype=torch.bool)
    gold[0, 0, 0, 1] = gold[1, 0, 0, 1] = True
    want = reference_loss(logits.detach(), gold, valid).mean()
    assert model(ids, am, targets).item() == pytest.approx(want.item(), rel=1e-5)
    # an empty row ([CLS] [SEP]) adds nothing
    ids2, am2 = encode(tok, ["张三在北京", "李四", ""])
    assert model(ids2, am2, targets).item() == pytest.approx(want.item(), rel=1e-5)


def test_span_scores_stay_fp32_and_gradients_finite_under_bf16(tiny_encoder_dir):
    model, tok = build_span(tiny_encoder_dir, head="bilstm")
    ids, am = encode(tok, TEXTS)
    targets = torch.tensor([[0, 0, 0, 1], [1, 1, 3, 4]])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, _ = model.span_logits(ids, am)
        loss = model(ids, am, targets)
    assert logits.dtype == torch.float32 and loss.dtype == torch.float32
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert model.span.proj.weight.grad.abs().sum() > 0


def test_span_model_refuses_tags_and_puts_the_span_layer_in_the_head_group(tiny_encoder_dir):
    model, _ = build_span(tiny_encoder_dir)
    with pytest.raises(ValueError, match="not tags"):
        NERModel(model.config, ["O", "B-PER", "I-PER"], model.encoder)
    groups = {g["name"]: g for g in model.param_groups(model.config.training)}
    ids = {id(p) for g in ("head", "head_no_decay") for p in groups[g]["params"]}
    assert all(id(p) in ids for p in model.span.parameters())
    assert "crf" not in groups
