"""Tagging with a span-decoder model (:mod:`ner_core.model.span`): windows, the window each span is read
from, the threshold, flat or nested output, and the document uncertainty.

A span is scored inside one window only (its start and end must both lie in it), so consecutive windows
overlap by at least the model's ``max_span_len`` characters: then every span the model scores at all lies
wholly inside some window (:func:`span_stride`). Of the windows that hold a span, the one where it sits
most centrally (largest distance from the span to the window's nearer edge; ties: the earlier window) is
the one whose score counts (:func:`owner_windows`): each span is judged once, with the most context on both
sides, whatever the other windows say of it. Tags are never used on this path.

Entities: every ``(start, end, label)`` whose probability ``sigmoid(score)`` reaches the threshold.
``overlap="allow"`` keeps them all (nested spans, one span with two labels); ``"flat"`` keeps a
non-overlapping subset greedily by probability (the highest first, then the earlier, then the shorter),
the rule of :func:`ner_core.model.span.decode_spans`. An entity's confidence is its span probability.

Uncertainty of a document: the summed binary entropy, in nats, of the scored spans whose probability lies
in ``[0.05, 0.95]`` (:data:`ENTROPY_BAND`): ``-sum (p ln p + (1 - p) ln (1 - p))``. Each span is a yes/no
question the model answers with ``p``; one near 0.5 adds up to ``ln 2``, one the model is sure of (almost
every cell of a text is a near-certain "no") adds nothing, so a long text is not uncertain merely for
having many cells. It is in the same unit as the CRF's summed token entropy, and is 0 for a text the model
is sure of everywhere, so the review queue orders documents of both decoders by it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

#: probabilities counted in a document's uncertainty (spans outside it are near-certain answers)
ENTROPY_BAND = (0.05, 0.95)
OVERLAP_MODES = ("allow", "flat")
_SPACE = re.compile(r"\s")

__all__ = [
    "ENTROPY_BAND",
    "OVERLAP_MODES",
    "ScoredSpans",
    "SpanSettings",
    "binary_entropy_sum",
    "entity_spans",
    "flat_subset",
    "logits_of",
    "owner_windows",
    "scored_entity_spans",
    "span_stride",
    "window_candidates",
]


@dataclass(frozen=True)
class SpanSettings:
    """How a span model's scores become entities: the threshold, allow|flat, and the model's span limit
    (the windows' overlap must be at least that)."""

    threshold: float
    overlap: str
    max_span_len: int

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"span threshold must lie strictly between 0 and 1, got {self.threshold!r}")
        if self.overlap not in OVERLAP_MODES:
            raise ValueError(f"overlap must be 'allow' or 'flat', got {self.overlap!r}")
        if not isinstance(self.max_span_len, int) or self.max_span_len < 1:
            raise ValueError(f"max_span_len must be a positive int, got {self.max_span_len!r}")


def span_stride(max_len: int, max_span_len: int, stride: int | None, default_overlap: int) -> int:
    """The stride of a span model's windows: given, or ``max_len - max(max_span_len, default_overlap)``
    (the CRF's overlap, but never less than the longest span). A window no longer than the span limit, or
    a given stride whose windows would overlap by fewer characters than it, is refused in one line."""
    if max_len <= max_span_len:
        raise ValueError(
            f"window of {max_len} characters must be longer than the model's max_span_len "
            f"({max_span_len}): spans that long could not lie inside overlapping windows"
        )
    if stride is None:
        return max_len - max(max_span_len, default_overlap)
    if max_len - stride < max_span_len:
        raise ValueError(
            f"stride {stride} leaves windows of {max_len} overlapping by {max_len - stride} characters, "
            f"fewer than the span model's max_span_len ({max_span_len}): spans across a window edge would "
            f"be lost; use a stride of at most {max_len - max_span_len}"
        )
    return stride


def owner_windows(starts: np.ndarray, length: int, first: np.ndarray, last: np.ndarray) -> np.ndarray:
    """For spans ``first..last`` (inclusive, text positions) the index of the window (``starts`` sorted,
    each ``length`` long) in which each sits most centrally, ties to the earlier window.

    The distance of span ``[i, j]`` to the nearer edge of window ``[s, s + n)`` is
    ``min(i - s, s + n - 1 - j) = (n - 1 - (j - i)) / 2 - |2s - (i + j - n + 1)| / 2``: largest for the
    window whose doubled start is nearest ``i + j - n + 1``, and never negative there when any window holds
    the span."""
    two_s = 2 * np.asarray(starts, dtype=np.int64)  # (m,) sorted
    target = first.astype(np.int64) + last.astype(np.int64) - length + 1  # (N,)
    right = np.searchsorted(two_s, target, side="left")  # (N,) two_s[right - 1] < target <= two_s[right]
    left = np.clip(right - 1, 0, len(two_s) - 1)
    right = np.clip(right, 0, len(two_s) - 1)
    take_left = (target - two_s[left]) <= (two_s[right] - target)  # ties: the earlier window
    return np.where(take_left, left, right)


@dataclass
class ScoredSpans:
    """One text's scored spans: label ids, starts, exclusive ends, probabilities and the scores (logits)
    they are the sigmoid of (each from its owner window), every span with probability at least the lower
    of the threshold and the entropy band's. ``logits`` may be left out (then read back from the
    probabilities, :func:`logits_of`)."""

    labels: np.ndarray
    starts: np.ndarray
    ends: np.ndarray
    probs: np.ndarray
    logits: np.ndarray | None = None

    @classmethod
    def empty(cls) -> ScoredSpans:
        z = np.zeros(0, dtype=np.int64)
        return cls(z, z.copy(), z.copy(), np.zeros(0, dtype=np.float64), np.zeros(0, dtype=np.float64))

    @classmethod
    def join(cls, parts: Sequence[ScoredSpans]) -> ScoredSpans:
        if not parts:
            return cls.empty()
        cat = [np.concatenate([getattr(p, f) for p in parts]) for f in ("labels", "starts", "ends", "probs")]
        logits = np.concatenate([p.score_logits() for p in parts])
        return cls(*cat, logits)

    def score_logits(self) -> np.ndarray:
        """The spans' logits: as scored, else read back from the probabilities."""
        return self.logits if self.logits is not None else logits_of(self.probs)


def window_candidates(
    band: torch.Tensor, char_mask: torch.Tensor, floor: float
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Per row of a window batch: the cells of the span-score band (``band[b, c, i, w]``, the span
    ``i..i+w``, :meth:`ner_core.model.network.NERModel.span_band`) with ``sigmoid(score) >= floor`` as
    ``(label, first, last, prob, logit)`` arrays (window positions, ``last`` inclusive; ``logit`` the
    float32 score, which a temperature divides). The comparison runs on the float32 scores, on the scores'
    device: only the few cells above the floor leave it."""
    scores = band.detach().float()  # (B, C, L, W)
    cut = math.log(floor / (1.0 - floor)) - 1e-4  # in logit space; the exact test is on the probability
    hits = (scores >= cut).nonzero()  # (N, 4): row, label, first, width (padding cells are masked scores)
    logits = scores[hits[:, 0], hits[:, 1], hits[:, 2], hits[:, 3]]  # (N,)
    probs = torch.sigmoid(logits).double()  # (N,)
    hits, probs, logits = hits.cpu().numpy(), probs.cpu().numpy(), logits.double().cpu().numpy()
    hits[:, 3] += hits[:, 2]  # width -> last
    # a cell of a padding position (or past the row) is never a span, whatever its score
    char_ok = np.pad(char_mask.cpu().numpy(), ((0, 0), (0, max(scores.shape[3] - 1, 0))))  # (B, L + W - 1)
    keep = (probs >= floor) & char_ok[hits[:, 0], hits[:, 2]] & char_ok[hits[:, 0], hits[:, 3]]
    hits, probs, logits = hits[keep], probs[keep], logits[keep]
    bounds = np.searchsorted(hits[:, 0], np.arange(scores.shape[0] + 1))  # rows come sorted from nonzero
    return [
        (hits[a:b, 1], hits[a:b, 2], hits[a:b, 3], probs[a:b], logits[a:b])
        for a, b in zip(bounds[:-1], bounds[1:], strict=True)
    ]


def entity_spans(
    text: str, scored: ScoredSpans, threshold: float, labels: Sequence[str]
) -> list[tuple[int, int, str, float]]:
    """The spans of ``scored`` at or above ``threshold`` as ``(start, end, label, prob)``, sorted by start,
    end and label; whitespace at a span's edges trimmed (an entity never begins or ends with a space), a
    span of whitespace alone dropped, and a span trimmed onto another of the same label kept once, with
    the higher probability."""
    return [x[:4] for x in scored_entity_spans(text, scored, threshold, labels)]


def scored_entity_spans(
    text: str, scored: ScoredSpans, threshold: float, labels: Sequence[str]
) -> list[tuple[int, int, str, float, float]]:
    """:func:`entity_spans` with each span's logit as a fifth item (of the kept span, the one with the
    highest probability, among equal probabilities the highest logit)."""
    hit = scored.probs >= threshold
    s, e, c, p = scored.starts[hit], scored.ends[hit], scored.labels[hit], scored.probs[hit]
    lg = scored.score_logits()[hit]
    if not len(s):
        return []
    space = np.zeros(len(text) + 1, dtype=bool)
    space[[m.start() for m in _SPACE.finditer(text)]] = True
    edge = np.flatnonzero(space[s] | space[e - 1])
    if len(edge):  # rare: trimmed one by one, then duplicates dropped
        s, e = s.copy(), e.copy()
        for k in edge.tolist():
            while s[k] < e[k] and space[s[k]]:
                s[k] += 1
            while e[k] > s[k] and space[e[k] - 1]:
                e[k] -= 1
        keep = s < e
        s, e, c, p, lg = s[keep], e[keep], c[keep], p[keep], lg[keep]
    rank = np.argsort(np.argsort(np.asarray(labels, dtype=object)))  # label id -> place by name
    order = np.lexsort((-lg, -p, rank[c], e, s))  # by start, end, label; the most probable first of equals
    s, e, c, p, lg = s[order], e[order], c[order], p[order], lg[order]
    first = np.ones(len(s), dtype=bool)
    first[1:] = (s[1:] != s[:-1]) | (e[1:] != e[:-1]) | (c[1:] != c[:-1])
    names = list(labels)
    return [
        (a, b, names[k], q, z)
        for a, b, k, q, z in zip(
            s[first].tolist(),
            e[first].tolist(),
            c[first].tolist(),
            p[first].tolist(),
            lg[first].tolist(),
            strict=True,
        )
    ]


def logits_of(probs: np.ndarray | Sequence[float]) -> np.ndarray:
    """The logits of probabilities (``+-inf`` at 1 and 0)."""
    p = np.asarray(probs, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return np.log(p) - np.log1p(-p)


def binary_entropy_sum(probs: np.ndarray) -> float:
    """Summed binary entropy (nats) of the probabilities inside :data:`ENTROPY_BAND`."""
    lo, hi = ENTROPY_BAND
    p = probs[(probs >= lo) & (probs <= hi)].astype(np.float64)
    return round(float(-(p * np.log(p) + (1.0 - p) * np.log1p(-p)).sum()), 6)


def flat_subset(spans: list[tuple[int, int, str, float]], label_order: dict[str, int]) -> list:
    """A non-overlapping subset of ``(start, end, label, prob)`` spans, greedily by probability: the
    highest first, then the earlier, then the shorter, then the label listed first."""
    kept: list[tuple[int, int, str, float]] = []
    taken: set[int] = set()
    for s in sorted(spans, key=lambda s: (-s[3], s[0], s[1] - s[0], label_order.get(s[2], 0))):
        if not taken.intersection(range(s[0], s[1])):
            kept.append(s)
            taken.update(range(s[0], s[1]))
    return kept
