"""From documents to span-decoder batches: the training chunks of :mod:`ner_core.data.batching` (cut at
sentence ends, never inside an entity where avoidable), and as targets the gold spans themselves, which may
nest or share a span with two labels, instead of tags (a tag sequence cannot hold them).

A batch is ``input_ids`` / ``attention_mask`` ``(B, T+2)`` as the CRF's, and ``targets`` ``(N, 4)``:
``[row, label_id, start, end_inclusive]`` in character positions of the row, what
:meth:`ner_core.model.network.NERModel.forward` takes for a span model. A span the model does not score
(longer than ``max_span_len``, or cut by a chunk boundary because an entity was longer than the chunk) is
no target; :attr:`SpanDataset.excluded` counts them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from ner_core.data.batching import (
    Chunk,
    EncodedChunk,
    check_weights,
    collate,
    length_buckets,
    training_chunks,
)
from ner_core.documents import Document, Entity
from ner_core.schemes import has_overlaps

__all__ = ["SpanDataset", "SpanStats", "count_longer", "has_overlaps", "span_stats"]


@dataclass(frozen=True)
class SpanStats:
    """What a span run's training data holds: its entity count, the longest entity (characters), how
    many entities are longer than a limit, and whether any two entities of one document overlap."""

    entities: int
    longest: int
    nested: bool


def count_longer(docs: Sequence[Document], max_span_len: int) -> int:
    """How many of ``docs``' entities (exact duplicates once) are longer than ``max_span_len``."""
    return sum(1 for d in docs for e in _unique(d.entities) if e.end - e.start > max_span_len)


def _unique(entities: Sequence[Entity]) -> list[Entity]:
    seen: set[tuple[int, int, str]] = set()
    out = []
    for e in entities:
        key = (e.start, e.end, e.label)
        if key not in seen:
            seen.add(key)
            out.append(e)
    return out


def span_stats(docs: Sequence[Document]) -> SpanStats:
    """:class:`SpanStats` of ``docs`` (exact duplicates counted once)."""
    ents = [_unique(d.entities) for d in docs]
    return SpanStats(
        entities=sum(len(e) for e in ents),
        longest=max((x.end - x.start for e in ents for x in e), default=0),
        nested=any(has_overlaps(e) for e in ents),
    )


@dataclass
class SpanChunk:
    """A chunk's character ids and its targets ``(label_id, start, end_inclusive)``."""

    encoded: EncodedChunk
    spans: list[tuple[int, int, int]]


class SpanDataset:
    """Documents encoded once for a span model: character ids and gold spans per chunk.

    Args:
        docs: documents whose entities may overlap.
        aligner: a :class:`ner_core.data.alignment.CharAligner`.
        labels: the model's labels, index = label id.
        max_len: characters per chunk.
        max_span_len: the longest span that is a target (``None``: every one).
        weights: each document's loss weight (``None``: all 1), carried into the batches' ``weight``.
    """

    def __init__(
        self,
        docs: Sequence[Document],
        aligner,
        labels: Sequence[str],
        max_len: int,
        max_span_len: int | None = None,
        weights: Sequence[float] | None = None,
    ) -> None:
        self.docs = list(docs)
        weights = check_weights(weights, len(self.docs))
        self.labels = list(labels)
        label_id = {x: i for i, x in enumerate(self.labels)}
        self.items: list[SpanChunk] = []
        self.excluded = 0  #: gold spans that are no target (too long, or cut by a chunk boundary)
        for chunk in training_chunks(self.docs, max_len):
            doc = self.docs[chunk.doc_index]
            spans = []
            for e in _unique(doc.entities):
                if e.label not in label_id:
                    raise ValueError(
                        f"document {doc.doc_id!r}: label {e.label!r} is not in the model's labels "
                        f"{self.labels}; was the dataset ingested with other labels?"
                    )
                if e.end <= chunk.start or e.start >= chunk.end:
                    continue
                inside = chunk.start <= e.start and e.end <= chunk.end
                if not inside or (max_span_len is not None and e.end - e.start > max_span_len):
                    self.excluded += 1
                    continue
                spans.append((label_id[e.label], e.start - chunk.start, e.end - 1 - chunk.start))
            text = doc.text[chunk.start : chunk.end]
            weight = weights[chunk.doc_index] if weights else 1.0
            self.items.append(SpanChunk(EncodedChunk(chunk, aligner.char_ids(text), None, weight), spans))
        self.cls_id, self.sep_id, self.pad_id = aligner.cls_id, aligner.sep_id, aligner.pad_id

    def __len__(self) -> int:
        return len(self.items)

    @property
    def chunks(self) -> list[Chunk]:
        return [it.encoded.chunk for it in self.items]

    def batches(self, batch_size: int, *, shuffle: bool, seed: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        """Length-bucketed batches as :meth:`ner_core.data.batching.TaggedDataset.batches` makes them (the
        order depends only on ``seed``), with ``targets`` ``(N, 4)`` in place of ``tags``."""
        lengths = [len(it.encoded.char_ids) for it in self.items]
        batches = length_buckets(lengths, batch_size, shuffle=shuffle, seed=seed)
        for b in batches:
            yield self.collate([self.items[i] for i in b])

    def collate(self, items: Sequence[SpanChunk]) -> dict[str, torch.Tensor]:
        out = collate([it.encoded for it in items], self.cls_id, self.sep_id, self.pad_id)
        del out["tags"]
        rows = [[r, c, s, e] for r, it in enumerate(items) for c, s, e in it.spans]
        out["targets"] = torch.tensor(rows, dtype=torch.long).reshape(-1, 4)
        return out
