"""Plain helpers of the model and model-directory tests (their fixtures live in tests/conftest.py): a
tiny vocabulary's texts and labels, rows of [CLS] chars [SEP] written out without the aligner, and decoding
the way ner_core.inference.tagger decodes (the model's emissions, then its CRF)."""

from __future__ import annotations

import torch

#: Every character here is in the sample corpus, so the conftest's ``tiny_encoder_dir`` covers them.
TEXTS = ["张三在北京工作", "李四去上海", "ABC公司 2024年", "王强"]
LABELS = ["PER", "LOC", "ORG"]


def encode(tokenizer, texts, T=None):
    """[CLS] one id per char [SEP] + right pad, written out here so the test does not depend on alignment."""
    rows = [
        [tokenizer.cls_token_id]
        + [tokenizer.convert_tokens_to_ids(c.lower()) for c in t]
        + [tokenizer.sep_token_id]
        for t in texts
    ]
    T = T or max(len(r) for r in rows)
    ids = torch.full((len(rows), T), tokenizer.pad_token_id, dtype=torch.long)
    am = torch.zeros(len(rows), T, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        am[i, : len(r)] = 1
    return ids, am


@torch.no_grad()
def decode(model, ids, am):
    """Best tag ids per row as production gets them (:mod:`ner_core.inference.tagger`): the model's
    emissions, then
    its CRF over the rows that have characters; ``[]`` for a row without any."""
    em, cm = model.emissions(ids, am)  # (B, T-2, K), (B, T-2)
    out = [[] for _ in range(em.shape[0])]
    rows = cm[:, 0].nonzero().squeeze(1).tolist() if em.shape[1] else []
    if rows:
        for r, path in zip(rows, model.crf.decode(em[rows], cm[rows]), strict=True):
            out[r] = path
    return out


@torch.no_grad()
def marginals(model, ids, am):
    """Posterior tag probabilities ``(B, T-2, K)`` as production gets them: the CRF's marginals over the
    emissions of rows that have characters, 0 on padding and on empty rows; and the char_mask."""
    em, cm = model.emissions(ids, am)
    probs = torch.zeros(em.shape, dtype=torch.float32)
    rows = cm[:, 0] if em.shape[1] else cm.new_zeros(em.shape[0])
    if bool(rows.any()):
        probs[rows] = model.crf.marginals(em[rows], cm[rows])
    return probs, cm
