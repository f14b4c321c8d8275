"""Fitting the entity-confidence temperature on a labelled split, and the calibration part of a report.

Is a predicted entity with confidence ``p`` correct (exactly a gold entity: start, end and label) with
probability ``p``? A model trained to the likelihood of its training data is usually overconfident on new
text. One number per model and precision corrects most of that: a temperature ``T`` that divides the
scores before they become probabilities (:mod:`ner_core.inference.temperature`: the CRF's emissions and
transition scores, or the span decoder's logits), fitted on a split the model did not train on.

The fit: the predicted entities of the split (the tagger's, exactly: whitespace-trimmed spans, confidence
the minimum over the entity's characters of its Viterbi tag's marginal), each correct or not, and ``T``
minimising their binary negative log-likelihood ``-mean(y ln c_T + (1 - y) ln(1 - c_T))`` (``c_T``
clipped to ``[1e-6, 1 - 1e-6]``, the resolution of the six decimals a confidence is stored with, so an
entity the model calls certain costs at most ``ln 1e6``, and not the float32 rounding of its marginal).
The search is bounded and one-dimensional, over ``ln T`` in ``[ln 0.05, ln 20]``
(:data:`ner_core.artifacts.calibration_file.T_BOUNDS`): a grid of :data:`GRID_POINTS` points, ``T = 1``
among them, then golden-section steps between the best grid point's neighbours. The best point evaluated
is returned, so the fitted ``T`` never has a higher NLL than ``T = 1``. A grid first because the NLL of a
minimum over characters need not be convex in ``T``; the bounds because a split of only right (or only
wrong) entities drives ``T`` to zero (or infinity). Such a split, or one with fewer than
:data:`MIN_ENTITIES` predicted entities, gets no temperature (``fitted`` is False, ``T = 1``).

The encoder runs once: a CRF model's stitched emissions of every text are cached
(:meth:`ner_core.inference.tagger.Tagger.stitched_emissions`) and each candidate ``T`` only runs
forward-backward again on them (:class:`CRFConfidences`); a span model's candidates only rescale the
predicted spans' logits (:class:`SpanConfidences`).

Which split: see :mod:`ner_core.training.precision_record` (dev; none without one).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ner_core.artifacts.calibration_file import T_BOUNDS, read_calibration
from ner_core.documents import Document, Entity
from ner_core.inference.tagger import PredictedEntity, Tagger, crf_batches, padded
from ner_core.inference.temperature import scaled_crf, sigmoid_at
from ner_core.metrics import (
    CalibrationReport,
    EvaluationReport,
    calibration_report,
    entity_correctness,
    evaluate,
    expected_calibration_error,
)

__all__ = [
    "GRID_POINTS",
    "MIN_ENTITIES",
    "CRFConfidences",
    "SpanConfidences",
    "TemperatureFit",
    "attach_fit",
    "binary_nll",
    "calibration_of",
    "fit_crf",
    "fit_temperature",
    "stored_temperature",
]

log = logging.getLogger(__name__)

#: predicted entities a fit needs at least (with right and wrong ones among them)
MIN_ENTITIES = 10
#: points of the first, coarse pass over ln T (about 0.25 apart), T = 1 added
GRID_POINTS = 25
#: golden-section steps after the grid (the bracket shrinks to 0.618^n of two grid steps)
GOLDEN_STEPS = 14
_EPS = 1e-6


@dataclass(frozen=True)
class TemperatureFit:
    """A fitted temperature and what it did on the split it was fitted on."""

    temperature: float
    n_entities: int
    n_correct: int
    nll_raw: float
    nll_calibrated: float
    ece_raw: float
    ece_calibrated: float
    fitted: bool
    reason: str = ""  # why no temperature was fitted


def binary_nll(conf: Sequence[float] | np.ndarray, correct: Sequence[bool] | np.ndarray) -> float:
    """Mean binary negative log-likelihood of correctness flags under confidences (clipped to
    ``[1e-6, 1 - 1e-6]``); 0.0 for no entity."""
    c = np.clip(np.asarray(conf, dtype=np.float64), _EPS, 1.0 - _EPS)
    y = np.asarray(correct, dtype=bool)
    if not len(c):
        return 0.0
    return float(-np.mean(np.where(y, np.log(c), np.log1p(-c))))


def _minimise(f: Callable[[float], float], lo: float, hi: float) -> float:
    """The best point found of ``f`` over ``[lo, hi]``: a grid (0 among its points), then golden-section
    steps between the best grid point's neighbours."""
    grid = sorted({*np.linspace(lo, hi, GRID_POINTS).tolist(), 0.0})
    seen = {u: f(u) for u in grid}
    i = min(range(len(grid)), key=lambda k: (seen[grid[k]], abs(grid[k])))
    a, b = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    g = (math.sqrt(5.0) - 1.0) / 2.0
    c, d = b - g * (b - a), a + g * (b - a)
    for u in (c, d):
        seen.setdefault(u, f(u))
    for _ in range(GOLDEN_STEPS):
        if seen[c] <= seen[d]:
            b, d = d, c
            c = b - g * (b - a)
            seen.setdefault(c, f(c))
        else:
            a, c = c, d
            d = a + g * (b - a)
            seen.setdefault(d, f(d))
    return min(seen, key=lambda u: (seen[u], abs(u)))  # ties: the temperature nearest 1


def fit_temperature(confidence_at: Callable[[float], np.ndarray], correct: Sequence[bool]) -> TemperatureFit:
    """The temperature minimising the binary NLL of ``correct`` under ``confidence_at(T)`` (the predicted
    entities' confidences at ``T``; see the module docstring for the search and when nothing is fitted)."""
    y = np.asarray(correct, dtype=bool)
    raw = np.asarray(confidence_at(1.0), dtype=np.float64)
    if len(raw) != len(y):
        raise ValueError(f"expected one correctness flag per entity, got {len(y)} for {len(raw)}")
    n, k = len(y), int(y.sum())
    nll_raw, ece_raw = binary_nll(raw, y), expected_calibration_error(raw.tolist(), y.tolist())
    reason = ""
    if n < MIN_ENTITIES:
        reason = f"{n} predicted entities, fewer than the {MIN_ENTITIES} a fit needs"
    elif k in (0, n):
        reason = f"all {n} predicted entities are {'right' if k else 'wrong'}: nothing to calibrate against"
    if reason:
        return TemperatureFit(1.0, n, k, nll_raw, nll_raw, ece_raw, ece_raw, False, reason)
    u = _minimise(lambda v: binary_nll(confidence_at(math.exp(v)), y), *map(math.log, T_BOUNDS))
    t = float(min(max(math.exp(u), T_BOUNDS[0]), T_BOUNDS[1]))
    cal = np.asarray(confidence_at(t), dtype=np.float64)
    ece_cal = expected_calibration_error(cal.tolist(), y.tolist())
    return TemperatureFit(t, n, k, nll_raw, binary_nll(cal, y), ece_raw, ece_cal, True)


class SpanConfidences:
    """A span model's predicted entities' confidences at any temperature: ``sigmoid(logit / T)``."""

    def __init__(self, logits: Sequence[float] | np.ndarray) -> None:
        self.logits = np.asarray(logits, dtype=np.float64)

    def __call__(self, t: float) -> np.ndarray:
        return sigmoid_at(self.logits, t)


class CRFConfidences:
    """A CRF model's predicted entities' confidences at any temperature, from each text's cached stitched
    emissions: forward-backward of the scaled scores, the marginal of the (unchanged) Viterbi tag, the
    minimum over the entity's characters (the tagger's rule).

    Args:
        crf: the model's :class:`~ner_core.model.crf.ConstrainedCRF`.
        stitched: per text its emissions ``(L, K)``.
        paths: per text its Viterbi tag ids ``(L,)``.
        spans: per text its entities' ``(start, end)``; the confidences come out in this order.
        where: the device the CRF runs on.
    """

    def __init__(self, crf, stitched, paths, spans, where: torch.device | str = "cpu") -> None:
        keep = [i for i, s in enumerate(spans) if s]  # texts without an entity add nothing
        self.crf = crf
        self.stitched = [stitched[i] for i in keep]
        self.paths = [np.asarray(paths[i], dtype=np.int64) for i in keep]
        self.spans = [list(spans[i]) for i in keep]
        self.where = torch.device(where)
        self.n = sum(len(s) for s in self.spans)
        first = np.cumsum([0, *(len(s) for s in self.spans)])
        self._first = first[:-1].tolist()

    @torch.no_grad()
    def __call__(self, t: float) -> np.ndarray:
        crf = self.crf if t == 1.0 else scaled_crf(self.crf, t)
        out = np.empty(self.n, dtype=np.float64)
        K = self.crf.num_tags
        for rows in crf_batches([len(em) for em in self.stitched]):
            em, mask = padded(self.stitched, rows, K, self.where)
            marg = crf.marginals(em / t, mask).cpu().numpy()  # (R, T, K)
            for r, i in enumerate(rows):
                path = self.paths[i]
                chosen = marg[r, np.arange(len(path)), path].astype(np.float64)  # (L,)
                for j, (s, e) in enumerate(self.spans[i]):
                    out[self._first[i] + j] = chosen[s:e].min()
        return out


def attach_fit(
    report: EvaluationReport,
    docs: Sequence[Document],
    entities: Sequence[Sequence[Entity]],
    confidence_at: Callable[[float], np.ndarray],
    *,
    split: str,
    precision: str,
) -> TemperatureFit:
    """Fit the temperature on the split's predicted ``entities`` (in the order ``confidence_at`` gives
    their confidences) and put the calibration at that temperature into ``report``."""
    correct = [c for row in entity_correctness([d.entities for d in docs], entities) for c in row]
    fit = fit_temperature(confidence_at, correct)
    raw = np.round(confidence_at(1.0), 6).tolist()
    cal = np.round(confidence_at(fit.temperature), 6).tolist() if fit.fitted else raw
    report.calibration = calibration_report(
        raw,
        cal,
        correct,
        report.n_gold,
        temperature=fit.temperature,
        fitted_on=split if fit.fitted else "none",
        precision=precision,
    )
    return fit


def fit_crf(
    tagger: Tagger, docs: Sequence[Document], *, split: str = "dev"
) -> tuple[EvaluationReport, TemperatureFit]:
    """Tag ``docs`` once with a CRF model's ``tagger`` (no user dictionary: the model is calibrated, not a
    user's choices), score them, fit the temperature on its predicted entities and return the report (its
    ``calibration`` at the fitted temperature) and the fit. The tagger's own temperature is not used."""
    if tagger.span is not None:
        raise ValueError("fit_crf takes a CRF model's tagger; a span model is fitted on its span logits")
    if tagger.dictionary is not None:
        raise ValueError("fit the temperature without a user dictionary: it calibrates the model alone")
    texts = [d.text for d in docs]
    stitched = tagger.stitched_emissions(texts)
    with torch.inference_mode():
        tagged = tagger._decode(stitched, True)
    ids = {t: i for i, t in enumerate(tagger.tags)}
    preds = [tagger._entities(t, r.tags, r.probs, True) for t, r in zip(texts, tagged, strict=True)]
    paths = [[ids[t] for t in r.tags] for r in tagged]
    spans = [[(e.start, e.end) for e in ps] for ps in preds]
    entities = [[Entity(start=e.start, end=e.end, label=e.label) for e in ps] for ps in preds]
    report = evaluate(docs, entities, scheme=tagger.scheme)
    confidences = CRFConfidences(tagger.model.crf, stitched, paths, spans, tagger.crf_device())
    fit = attach_fit(report, docs, entities, confidences, split=split, precision=tagger.precision.value)
    return report, fit


def calibration_of(
    docs: Sequence[Document],
    preds: Sequence[Sequence[PredictedEntity]],
    *,
    n_gold: int,
    temperature: float,
    fitted_on: str,
    precision: str,
) -> CalibrationReport:
    """The calibration of a tagger's predictions ``preds`` of ``docs`` (raw confidence, and calibrated
    where the tagger had a temperature, else the raw one again)."""
    entities = [[Entity(start=p.start, end=p.end, label=p.label) for p in ps] for ps in preds]
    correct = [c for row in entity_correctness([d.entities for d in docs], entities) for c in row]
    raw = [p.confidence for ps in preds for p in ps]
    cal = [
        p.confidence if p.confidence_calibrated is None else p.confidence_calibrated
        for ps in preds
        for p in ps
    ]
    return calibration_report(
        raw,
        cal,
        correct,
        n_gold,
        temperature=temperature,
        fitted_on=fitted_on if temperature != 1.0 else "none",
        precision=precision,
    )


def stored_temperature(model_dir: str | Path | None, precision: str) -> tuple[float, str]:
    """The model directory's temperature for ``precision`` (else fp32's) and the split it was fitted on;
    ``(1.0, "none")`` without one (:class:`~ner_core.artifacts.layout.ModelDirError` for a refused file)."""
    record = read_calibration(model_dir)
    t = record.temperature_for(precision) if record is not None else None
    return (1.0, "none") if t is None else (t, record.split)
