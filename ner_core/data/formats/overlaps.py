"""Overlapping entities of a span-format record under the ``repair`` policy: keep the record, drop spans.

A tag sequence cannot hold two overlapping entities, so one of each overlapping pair must go. The rules:

- a nested pair (one span inside the other): keep the outer (``nested``);
- crossing spans: keep the longer, the earlier on a tie (``crossing``);
- one span with two labels: keep the label listed first (``same_span``).

They follow from one order: longer spans first, then earlier starts, then the order the record lists them;
each span is kept unless it overlaps a span kept before it. A dropped span is reported as an
``overlap_dropped`` warning naming both spans, and the ingest stores it in ``dropped_spans`` so nested
annotations stay queryable. Under ``strict`` an overlap still rejects the record (``span_overlap``).
"""

from __future__ import annotations

from ner_core.data.formats.context import ReadContext, Span

__all__ = ["REASONS", "drop_overlaps", "resolve_overlaps"]

REASONS = ("nested", "crossing", "same_span")
_KEPT = {
    "nested": "kept the outer",
    "crossing": "kept the longer (the earlier when as long)",
    "same_span": "one span with two labels: kept the first",
}


def _reason(dropped: Span, kept: Span) -> str:
    if dropped[:2] == kept[:2]:
        return "same_span"
    if kept[0] <= dropped[0] and dropped[1] <= kept[1]:
        return "nested"
    return "crossing"


def resolve_overlaps(spans: list[Span]) -> tuple[list[Span], list[tuple[Span, Span, str]]]:
    """Split ``spans`` (in the record's order, no exact duplicates) into the kept spans (sorted) and the
    dropped ones as ``(dropped, kept span it overlaps, reason)`` in the record's order."""
    order = sorted(range(len(spans)), key=lambda i: (spans[i][0] - spans[i][1], spans[i][0], i))
    kept: list[Span] = []
    dropped: dict[int, tuple[Span, Span, str]] = {}
    for i in order:
        s, e, _lab = span = spans[i]
        blocker = next((k for k in kept if k[0] < e and s < k[1]), None)
        if blocker is None:
            kept.append(span)
        else:
            dropped[i] = (span, blocker, _reason(span, blocker))
    return sorted(kept), [dropped[i] for i in sorted(dropped)]


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
