"""Running a model over a labelled split and scoring it (the arithmetic is :mod:`ner_core.metrics`)."""

from __future__ import annotations

from collections.abc import Sequence

from ner_core.documents import Document, Entity
from ner_core.inference.calibration import calibration_of
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
    temperature: float | None = None,
    fitted_on: str = "none",
) -> EvaluationReport:
    """Tag ``docs`` (whole, windowed) at ``precision`` and score them against their gold entities. A span
    model's character and sentence accuracies come from the tags of its outermost entities (and the
    report says so).

    ``temperature`` (the model directory's, :func:`ner_core.inference.calibration.stored_temperature`;
    1.0 where it has none) also tags with confidences and fills ``report.calibration``: the expected
    calibration error of the raw confidences and at that temperature on ``docs``, ``fitted_on`` saying
    where the temperature came from. ``None`` (the training loop's per-epoch dev score) skips that."""
    tagger = Tagger(
        model,
        tokenizer,
        max_len=max_len,
        batch_size=batch_size,
        device=device,
        precision=precision,
        temperature=1.0 if temperature is None else temperature,
    )
    preds = tagger.predict([d.text for d in docs], confidence=temperature is not None)
    pred_ents = [[Entity(start=p.start, end=p.end, label=p.label) for p in ps] for ps in preds]
    span = True if is_span_model(model) else None
    report = evaluate(docs, pred_ents, scheme=model.config.data.scheme, outermost_tags=span)
    if temperature is not None:
        report.calibration = calibration_of(
            docs,
            preds,
            n_gold=report.n_gold,
            temperature=tagger.temperature,
            fitted_on=fitted_on,
            precision=tagger.precision.value,
        )
    return report
