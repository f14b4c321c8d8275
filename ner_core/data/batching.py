"""From documents to model batches.

Spans -> tags in the run's scheme -> tag ids; texts -> one model position per character
(:class:`ner_core.data.alignment.CharAligner`); long texts -> chunks (training) or overlapping windows
(prediction); windows -> length-bucketed batches with dynamic padding.

Training never truncates: a text longer than ``max_len`` is cut into chunks at sentence ends where
possible, otherwise at a character that no entity spans, so every character is trained exactly once and
every chunk's tags are valid in the scheme. A tag sequence holds no overlapping entities, so a document whose
entities overlap (a nested dataset loaded for a span run) is tagged from its outermost spans
(:func:`ner_core.schemes.outermost`, the ingest's rules): the CRF trains on the outer ones.
Prediction uses overlapping windows (see
:mod:`ner_core.inference.tagger`).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import pairwise

import torch

from ner_core.documents import Document, Entity
from ner_core.schemes import outermost, spans_to_tags

SENTENCE_ENDS = frozenset("。！？!?；;\n")


@dataclass(frozen=True)
class Chunk:
    """A piece ``[start, end)`` of document ``doc_index`` that fits the model."""

    doc_index: int
    start: int
    end: int

    def __len__(self) -> int:
        return self.end - self.start


def _cut_points(text: str, entities: Sequence[Entity], max_len: int) -> list[int]:
    """Chunk boundaries for one text: each piece <= max_len, preferring sentence ends, never inside an entity
    unless an entity alone is longer than max_len."""
    n = len(text)
    if n <= max_len:
        return [0, n]
    inside = bytearray(n + 1)  # inside[i] = 1 when a cut at i would split an entity
    for e in entities:
        for i in range(e.start + 1, e.end):
            inside[i] = 1
    cuts = [0]
    start = 0
    while n - start > max_len:
        limit = start + max_len
        best = None
        # the last sentence end in (start, limit]
        for i in range(limit, start, -1):
            if text[i - 1] in SENTENCE_ENDS and not inside[i]:
                best = i
                break
        if best is None or best - start < max_len // 4:
            for i in range(limit, start, -1):
                if not inside[i]:
                    best = i
                    break
        if best is None or best <= start:
            best = limit  # an entity longer than max_len: cut it (tags are derived from clipped spans)
        cuts.append(best)
        start = best
    cuts.append(n)
    return cuts


def training_chunks(docs: Sequence[Document], max_len: int) -> list[Chunk]:
    """Split every document into chunks of at most ``max_len`` characters; empty texts are skipped."""
    if max_len < 1:
        raise ValueError(f"max_len must be positive, got {max_len}")
    chunks: list[Chunk] = []
    for i, doc in enumerate(docs):
        if not doc.text:
            continue
        cuts = _cut_points(doc.text, doc.entities, max_len)
        chunks.extend(Chunk(i, a, b) for a, b in pairwise(cuts) if b > a)
    return chunks


def chunk_entities(doc: Document, chunk: Chunk) -> list[Entity]:
    """Entities of ``doc`` clipped to ``chunk`` and shifted to chunk coordinates."""
    return _clipped(doc.entities, chunk)


def _clipped(entities: Sequence[Entity], chunk: Chunk) -> list[Entity]:
    out = []
    for e in entities:
        s, t = max(e.start, chunk.start), min(e.end, chunk.end)
        if s < t:
            out.append(Entity(start=s - chunk.start, end=t - chunk.start, label=e.label))
    return out


def sliding_windows(length: int, max_len: int, stride: int) -> list[tuple[int, int]]:
    """Overlapping windows ``[start, end)`` covering ``range(length)``; the last one ends at ``length``."""
    if max_len < 1 or stride < 1:
        raise ValueError(f"max_len and stride must be positive, got {max_len} and {stride}")
    if stride > max_len:
        raise ValueError(
            f"stride ({stride}) must not exceed max_len ({max_len}): characters would be skipped"
        )
    if length <= max_len:
        return [(0, length)]
    wins = []
    start = 0
    while True:
        end = start + max_len
        if end >= length:
            wins.append((length - max_len, length))
            break
        wins.append((start, end))
        start += stride
    # the final window may coincide with the previous one when the length is a multiple of the stride
    return list(dict.fromkeys(wins))


@dataclass
class EncodedChunk:
    chunk: Chunk
    char_ids: list[int]
    tag_ids: list[int] | None
    weight: float = 1.0  #: the loss weight of its document (a self-training silver document weighs less)


class TaggedDataset:
    """Documents encoded once: character ids and tag ids per chunk, ready for batching. ``weights``: each
    document's loss weight (default 1), carried by its chunks into the batches (:func:`collate`)."""

    def __init__(
        self,
        docs: Sequence[Document],
        aligner,
        tags: Sequence[str],
        scheme: str,
        max_len: int,
        weights: Sequence[float] | None = None,
    ):
        self.docs = list(docs)
        weights = check_weights(weights, len(self.docs))
        self.tags = list(tags)
        self.tag_to_id = {t: i for i, t in enumerate(self.tags)}
        self.scheme = scheme
        self.items: list[EncodedChunk] = []
        flat: dict[int, list[Entity]] = {}  # outermost entities per document, the CRF's view
        for chunk in training_chunks(self.docs, max_len):
            doc = self.docs[chunk.doc_index]
            if chunk.doc_index not in flat:
                flat[chunk.doc_index] = outermost(doc.entities)
            text = doc.text[chunk.start : chunk.end]
            seq = spans_to_tags(len(text), _clipped(flat[chunk.doc_index], chunk), scheme)
            try:
                tag_ids = [self.tag_to_id[t] for t in seq]
            except KeyError as exc:
                raise ValueError(
                    f"document {doc.doc_id!r}: tag {exc.args[0]} is not in the model's label set "
                    f"({len(self.tags)} tags); was the dataset ingested with other labels?"
                ) from None
            weight = weights[chunk.doc_index] if weights else 1.0
            self.items.append(EncodedChunk(chunk, aligner.char_ids(text), tag_ids, weight))
        self.cls_id, self.sep_id, self.pad_id = aligner.cls_id, aligner.sep_id, aligner.pad_id

    def __len__(self) -> int:
        return len(self.items)

    def batches(self, batch_size: int, *, shuffle: bool, seed: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        """Length-bucketed batches: sort by length inside pools of 50 batches, shuffle the batch order.

        The order depends only on ``seed`` (not on global RNG state), so a resumed run sees the same
        batches as an uninterrupted one.
        """
        for b in length_buckets(
            [len(it.char_ids) for it in self.items], batch_size, shuffle=shuffle, seed=seed
        ):
            yield collate([self.items[i] for i in b], self.cls_id, self.sep_id, self.pad_id)


def length_buckets(
    lengths: Sequence[int], batch_size: int, *, shuffle: bool, seed: int = 0
) -> list[list[int]]:
    """Indices of items of ``lengths`` in batches: sorted by length inside pools of 50 batches, the batch
    order shuffled; the order depends only on ``seed`` (a resumed run sees the same batches)."""
    idx = list(range(len(lengths)))
    rng = random.Random(seed)
    if shuffle:
        rng.shuffle(idx)
    pool = batch_size * 50
    batches: list[list[int]] = []
    for p in range(0, len(idx), pool):
        part = sorted(idx[p : p + pool], key=lambda i: lengths[i])
        batches.extend(part[b : b + batch_size] for b in range(0, len(part), batch_size))
    if shuffle:
        rng.shuffle(batches)
    return batches


def collate(
    items: Sequence[EncodedChunk],
    cls_id: int,
    sep_id: int,
    pad_id: int,
    *,
    pad_to: int = 1,
    max_chars: int | None = None,
) -> dict[str, torch.Tensor]:
    """Dynamic padding: input_ids/attention_mask (B, T+2) and tags (B, T), T = longest chunk in the batch,
    rounded up so that T+2 is a multiple of ``pad_to`` (1: no rounding) but never beyond ``max_chars`` (the
    window: a batch of full windows is not padded at all, whatever ``pad_to``). Rounding bounds the number
    of distinct shapes a reduced-precision CPU backend compiles and caches a kernel for (oneDNN's bf16
    primitives are per shape: unrounded, a long-running service's memory grows with every new length); the
    cap adds one shape, the window's own, which full windows have anyway. When an item's loss weight is not
    1 (a self-training silver document's), ``weight`` (B,) holds each item's; otherwise there is none."""
    longest = max(len(it.char_ids) for it in items)
    T = -(-(longest + 2) // pad_to) * pad_to - 2 if pad_to > 1 else longest
    if max_chars is not None:
        T = max(longest, min(T, max_chars))
    B = len(items)
    input_ids = torch.full((B, T + 2), pad_id, dtype=torch.long)  # (B, T+2)
    attention = torch.zeros((B, T + 2), dtype=torch.long)  # (B, T+2)
    tags = torch.zeros((B, T), dtype=torch.long)  # (B, T)
    for b, it in enumerate(items):
        n = len(it.char_ids)
        input_ids[b, 0] = cls_id
        input_ids[b, 1 : n + 1] = torch.tensor(it.char_ids, dtype=torch.long)
        input_ids[b, n + 1] = sep_id
        attention[b, : n + 2] = 1
        if it.tag_ids is not None:
            tags[b, :n] = torch.tensor(it.tag_ids, dtype=torch.long)
    out = {"input_ids": input_ids, "attention_mask": attention, "tags": tags}
    if any(it.weight != 1.0 for it in items):
        out["weight"] = torch.tensor([it.weight for it in items], dtype=torch.float32)  # (B,)
    return out


def check_weights(weights: Sequence[float] | None, n_docs: int) -> list[float] | None:
    """Per-document loss weights checked: one per document, each finite and >= 0 (``None``: all 1)."""
    if weights is None:
        return None
    out = [float(w) for w in weights]
    if len(out) != n_docs:
        raise ValueError(f"expected one loss weight per document ({n_docs}), got {len(out)}")
    if any(not (w >= 0.0 and w != float("inf")) for w in out):
        raise ValueError(f"document loss weights must be finite and >= 0, got {min(out)} .. {max(out)}")
    return out


def padding_share(batches: Iterable[dict[str, torch.Tensor]]) -> float:
    """Share of padded positions (attention mask 0) over all positions of ``batches`` (0.0 when empty)."""
    total = padded = 0
    for b in batches:
        mask = b["attention_mask"]  # (B, T+2)
        total += mask.numel()
        padded += mask.numel() - int(mask.sum())
    return padded / total if total else 0.0
