"""Scoring a span model on a labelled split during training (dev F1 for early stopping, the precision
record): exact (start, end, label) set P/R/F1, valid for nested sets, and the character and sentence
accuracies from the outermost spans (:func:`ner_core.metrics.evaluate`).

Texts longer than the model's window are cut into consecutive pieces, at sentence ends where possible
(:func:`ner_core.data.batching.training_chunks` on the text alone: the gold entities do not steer the
cuts), and each piece is scored whole: an entity across a cut is lost, as it is in training. Prediction
for users (overlapping windows, a span taken where it sits most centrally) is
:class:`ner_core.inference.tagger.Tagger`'s.

Calibration: each predicted span keeps its logit, so :func:`evaluate_spans` reports the calibration of the
span probabilities at a given temperature and :func:`fit_spans` fits one
(:mod:`ner_core.inference.calibration`) from the same pass, without scoring the split again.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ner_core.data.alignment import CharAligner
from ner_core.data.batching import EncodedChunk, collate, training_chunks
from ner_core.documents import Document, Entity
from ner_core.inference.calibration import SpanConfidences, TemperatureFit, attach_fit
from ner_core.inference.temperature import sigmoid_at
from ner_core.metrics import EvaluationReport, calibration_report, entity_correctness, evaluate
from ner_core.model.network import NERModel
from ner_core.model.span import decode_spans
from ner_core.runtime.precision import autocast

__all__ = ["evaluate_spans", "fit_spans", "predict_span_scores", "predict_spans"]


def predict_spans(
    model: NERModel,
    tokenizer,
    texts: Sequence[str],
    *,
    max_len: int,
    batch_size: int = 32,
    device: str = "cpu",
    precision: str = "fp32",
) -> list[list[tuple[Entity, float]]]:
    """Every span of ``texts`` whose probability reaches the model's threshold, with that probability,
    resolved as the model's ``decoder.overlap`` says (``None`` counts as allow)."""
    scored = predict_span_scores(
        model, tokenizer, texts, max_len=max_len, batch_size=batch_size, device=device, precision=precision
    )
    return [[(e, p) for e, p, _z in row] for row in scored]


@torch.no_grad()
def predict_span_scores(
    model: NERModel,
    tokenizer,
    texts: Sequence[str],
    *,
    max_len: int,
    batch_size: int = 32,
    device: str = "cpu",
    precision: str = "fp32",
) -> list[list[tuple[Entity, float, float]]]:
    """:func:`predict_spans` with each span's logit (its score, the probability's pre-image) as well."""
    dec = model.config.decoder
    run = model
    if str(precision) == "int8":
        from ner_core.runtime.precision import int8_copy

        run, device = int8_copy(model, tokenizer), "cpu"
    was_training = run.training
    run.eval().to(device)
    aligner = CharAligner(tokenizer)
    docs = [Document(doc_id=str(i), text=t) for i, t in enumerate(texts)]
    chunks = training_chunks(docs, max_len)
    out: list[list[tuple[Entity, float, float]]] = [[] for _ in texts]
    for b in range(0, len(chunks), batch_size):
        part = chunks[b : b + batch_size]
        items = [EncodedChunk(c, aligner.char_ids(texts[c.doc_index][c.start : c.end]), None) for c in part]
        batch = collate(items, aligner.cls_id, aligner.sep_id, aligner.pad_id)
        with autocast("fp32" if str(precision) == "int8" else precision, torch.device(device).type):
            band, char_mask = run.span_band(  # only the cells a span can occupy
                batch["input_ids"].to(device), batch["attention_mask"].to(device)
            )
        rows = decode_spans(band, char_mask, dec.threshold, dec.overlap or "allow", band=True)
        scores = band.detach().float()  # (B, C, L, W): cell (i, w) is the span i..i+w
        for r, (c, spans) in enumerate(zip(part, rows, strict=True)):
            for s, e, label, p in spans:
                ent = Entity(start=c.start + s, end=c.start + e, label=model.labels[label])
                out[c.doc_index].append((ent, p, float(scores[r, label, s, e - 1 - s])))
    run.train(was_training)
    return out


def _scored_docs(model, tokenizer, docs, max_len, batch_size, device, precision):
    preds = predict_span_scores(
        model,
        tokenizer,
        [d.text for d in docs],
        max_len=max_len,
        batch_size=batch_size,
        device=device,
        precision=precision,
    )
    pred_ents = [[e for e, _p, _z in p] for p in preds]
    # character and sentence accuracy from the outermost spans, as for every span run
    report = evaluate(docs, pred_ents, scheme=model.config.data.scheme, outermost_tags=True)
    return preds, pred_ents, report


def evaluate_spans(
    model: NERModel,
    tokenizer,
    docs: Sequence[Document],
    *,
    max_len: int,
    batch_size: int = 32,
    device: str = "cpu",
    precision: str = "fp32",
    temperature: float | None = None,
    fitted_on: str = "none",
) -> EvaluationReport:
    """Tag ``docs`` with the span model at ``precision`` and score them against their gold entities; with
    a ``temperature`` (1.0: none) the report's ``calibration`` too (as
    :func:`ner_core.inference.evaluate.evaluate_model`)."""
    preds, pred_ents, report = _scored_docs(model, tokenizer, docs, max_len, batch_size, device, precision)
    if temperature is not None:
        correct = [c for row in entity_correctness([d.entities for d in docs], pred_ents) for c in row]
        raw = [round(p, 6) for row in preds for _e, p, _z in row]
        logits = np.array([z for row in preds for _e, _p, z in row], dtype=np.float64)
        cal = np.round(sigmoid_at(logits, temperature), 6).tolist() if temperature != 1.0 else raw
        report.calibration = calibration_report(
            raw,
            cal,
            correct,
            report.n_gold,
            temperature=temperature,
            fitted_on=fitted_on if temperature != 1.0 else "none",
            precision=str(precision),
        )
    return report


def fit_spans(
    model: NERModel,
    tokenizer,
    docs: Sequence[Document],
    *,
    max_len: int,
    batch_size: int = 32,
    device: str = "cpu",
    precision: str = "fp32",
    split: str = "dev",
) -> tuple[EvaluationReport, TemperatureFit]:
    """Score ``docs`` once (:func:`evaluate_spans`) and fit the temperature on the predicted spans' logits;
    the report's ``calibration`` is at the fitted temperature."""
    preds, pred_ents, report = _scored_docs(model, tokenizer, docs, max_len, batch_size, device, precision)
    confidences = SpanConfidences([z for row in preds for _e, _p, z in row])
    fit = attach_fit(report, docs, pred_ents, confidences, split=split, precision=str(precision))
    return report, fit
