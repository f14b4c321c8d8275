"""Overlapping entities of a span-format record under the ``repair`` policy: keep the record, drop spans.

A tag sequence cannot hold two overlapping entities, so one of each overlapping pair must go. The rules:

- a nested pair (one span inside the other): keep the outer (``nested``);
- crossing spans: keep the longer, the earlier on a tie (``crossing``);
- one span with two labels: keep the label listed first (``same_span``).

They follow from one order: longer spans first, then earlier starts, then the order the record lists them;
each span is kept unless it overlaps a span kept before it. A dropped span is reported as an
``overlap_dropped`` warning naming both spans, and the ingest stores it in ``dropped_spans`` so nested
annotations stay queryable. Under ``strict`` an overlap still rejects the record (``span_overlap``).

:func:`resolve_overlaps` and :func:`outermost` are defined in :mod:`ner_core.schemes` (beside
:func:`~ner_core.schemes.spans_to_tags`, so the top-level modules reach them) and re-exported here.
:func:`outermost` applies the same rules to :class:`~ner_core.documents.Entity` lists: it is what every
consumer of tags (CRF batching, character/sentence accuracy, the seed's tag outputs) calls first, since a
span decoder's predictions and a nested dataset's entities may overlap and a tag sequence cannot.
"""

from __future__ import annotations

from collections.abc import Iterable

from ner_core.data.formats.context import ParseResult, ReadContext, Span
from ner_core.documents import Document, Entity
from ner_core.schemes import has_overlaps, outermost, resolve_overlaps  # the rules live beside the tags

__all__ = [
    "NESTED_REASONS",
    "REASONS",
    "drop_overlaps",
    "has_overlaps",
    "nested_documents",
    "outermost",
    "resolve_overlaps",
    "with_spans",
]

REASONS = ("nested", "crossing", "same_span")
#: the dropped spans a span decoder trains and is scored on: an inner span, and a second label of one span
#: (the decoder is multi-label per span). ``crossing`` spans are left out: two annotations that cut across
#: each other are almost always an annotation slip, not two readings of the text.
NESTED_REASONS = ("nested", "same_span")
_KEPT = {
    "nested": "kept the outer",
    "crossing": "kept the longer (the earlier when as long)",
    "same_span": "one span with two labels: kept the first",
}


def drop_overlaps(ctx: ReadContext, spans: list[Span], line: int | None, record: int | None) -> list[Span]:
    """The kept spans of :func:`resolve_overlaps`; each dropped span becomes an ``overlap_dropped`` warning
    and waits in ``ctx.pending_dropped`` for the record's :meth:`ReadContext.add`."""
    kept, dropped = resolve_overlaps(spans)
    for (ds, de, dlab), (ks, ke, klab), reason in dropped:
        ctx.warn(
            line,
            record,
            "overlap_dropped",
            f"entities [{ks}, {ke}) {klab} and [{ds}, {de}) {dlab} overlap ({reason.replace('_', ' ')}): "
            f"dropped [{ds}, {de}) {dlab}, {_KEPT[reason]}",
        )
        ctx.pending_dropped.append((ds, de, dlab, reason, ks, ke, klab))
    return kept


def with_spans(doc: Document, spans: Iterable[Span]) -> Document:
    """``doc`` with ``spans`` (``(start, end, label)``) added to its entities, exact duplicates once,
    sorted by ``(start, end, label)``; the entities may then overlap (a span decoder's view)."""
    first: dict[tuple[int, int, str], Entity] = {(e.start, e.end, e.label): e for e in doc.entities}
    for s, e, lab in spans:
        first.setdefault((s, e, lab), Entity.model_construct(start=s, end=e, label=lab))
    ents = [first[k] for k in sorted(first)]
    return doc.model_copy(update={"entities": ents})


def nested_documents(parsed: ParseResult) -> tuple[list[Document], int]:
    """The documents of ``parsed`` with their dropped ``nested`` and ``same_span`` spans put back
    (:data:`NESTED_REASONS`), and the number of ``crossing`` spans left out."""
    extra: dict[int, list[Span]] = {}
    crossing = 0
    for index, s, e, lab, reason, *_kept in parsed.dropped:
        if reason in NESTED_REASONS:
            extra.setdefault(index, []).append((s, e, lab))
        else:
            crossing += 1
    docs = parsed.documents
    return [with_spans(d, extra[i]) if i in extra else d for i, d in enumerate(docs)], crossing
