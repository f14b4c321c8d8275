"""Entity confidence under a temperature: the arithmetic the tagger and the fit share.

A temperature ``T > 0`` divides every score the model turns into probabilities by ``T``:

* CRF: the emissions and the CRF's start, transition and end scores, then forward-backward again
  (:func:`scaled_marginals`). The scheme's removed moves stay ``-inf`` (``-inf / T`` is ``-inf``), so a
  forbidden path still gets probability 0; the Viterbi path, the argmax of the summed scores, is the same
  for every ``T`` and is never recomputed here: the tagger's entities do not change, only the number
  beside them. Entity confidence is then, as without a temperature, the minimum over the entity's
  characters of the marginal of its Viterbi tag.
* Span decoder: ``sigmoid(logit / T)`` of each predicted span (:func:`sigmoid_at`); which spans are
  entities is still decided by the raw probability and the threshold.

``T = 1`` is the model itself (not calibrated); ``T > 1`` flattens an overconfident model's probabilities.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from ner_core.artifacts.calibration_file import check_temperature
from ner_core.inference.dictionary import DictionaryPlan, decode_with_dictionary
from ner_core.model.crf import ConstrainedCRF

__all__ = ["scaled_crf", "scaled_marginals", "sigmoid_at"]


def scaled_crf(crf: ConstrainedCRF, t: float) -> ConstrainedCRF:
    """A copy of ``crf`` whose start, transition and end scores are divided by ``t`` (its constraint masks
    kept: removed moves stay removed)."""
    t = check_temperature(t)
    out = copy.deepcopy(crf)
    with torch.no_grad():
        for p in (out.crf.start_transitions, out.crf.transitions, out.crf.end_transitions):
            p.div_(t)
    return out


@torch.no_grad()
def scaled_marginals(
    crf: ConstrainedCRF,
    emissions: Tensor,
    mask: Tensor,
    t: float,
    *,
    scaled: ConstrainedCRF | None = None,
    plans: Sequence[DictionaryPlan | None] | None = None,
    tags: Sequence[str] | None = None,
    scheme: str | None = None,
) -> Tensor:
    """Marginals ``(B, T, K)`` of ``emissions / t`` under ``crf``'s scores divided by ``t`` (``scaled``:
    :func:`scaled_crf` of it, made once by a caller that runs many batches). With user-dictionary
    ``plans`` (and the model's ``tags`` and ``scheme``) the marginals are conditioned on the same forced
    and forbidden spans as the tagger's raw ones (:func:`decode_with_dictionary`)."""
    t = check_temperature(t)
    if t == 1.0 and scaled is None:
        scaled = crf
    scaled = scaled if scaled is not None else scaled_crf(crf, t)
    em = emissions.float() / t
    if plans is None or not any(plans):
        return scaled.marginals(em, mask)
    if tags is None or scheme is None:
        raise ValueError("dictionary plans need the model's tags and scheme")
    _paths, marg = decode_with_dictionary(scaled, em, mask, plans, tags, scheme, confidence=True)
    assert marg is not None
    return marg


def sigmoid_at(logits: np.ndarray | Sequence[float], t: float) -> np.ndarray:
    """``sigmoid(logit / t)`` in float64, without overflow for large logits of either sign."""
    t = check_temperature(t)
    z = np.asarray(logits, dtype=np.float64) / t
    out = np.empty_like(z)
    pos = z >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-z[pos]))
    ez = np.exp(z[~pos])
    out[~pos] = ez / (1.0 + ez)
    return out
