"""Running a model over a labelled split and scoring it (the arithmetic is :mod:`ner_core.metrics`)."""

from __future__ import annotations

from collections.abc import Sequence

from ner_core.documents import Document, Entity
from ner_core.inference.tagger import Tagger, is_span_model
from ner_core.metrics import EvaluationReport, evaluate
from ner_core.model.network import NERModel


def evaluate_model(
    model: NERModel,
    tokenizer,
    docs: Sequence[Document],
    *,
    max_len: int,
    batch_size: int = 32,
    device: str = "cpu",
    precision: str = "fp32",
) -> EvaluationReport:
    """Tag ``docs`` (whole, windowed) at ``precision`` and score them against their gold entities. A span
    model's character and sentence accuracies come from the tags of its outermost entities (and the
    report says so)."""
    tagger = Tagger(
        model, tokenizer, max_len=max_len, batch_size=batch_size, device=device, precision=precision
    )
    preds = tagger.predict([d.text for d in docs], confidence=False)
    pred_ents = [[Entity(start=p.start, end=p.end, label=p.label) for p in ps] for ps in preds]
    span = True if is_span_model(model) else None
    return evaluate(docs, pred_ents, scheme=model.config.data.scheme, outermost_tags=span)
