"""JSON lines formats: ``cluener`` and ``jsonl``, one object ``{"text": ..., ...}`` per line.

``cluener``: ``"label": {type: {mention: [[start, end_inclusive], ...]}}``; ``jsonl``: ``"entities":
[{"start": s, "end": e, "label": l}, ...]``, half-open, with an optional ``"text"`` / ``"mention"`` each.
A line is one record, numbered from 1 (blank lines are skipped); a bad line rejects that record only.
"""

from __future__ import annotations

import json
from itertools import pairwise
from typing import Any

from ner_core.data.formats.context import ReadContext, decode_lines, short_repr
from ner_core.data.formats.overlaps import drop_overlaps
from ner_core.data.formats.registry import register


def _json_lines(ctx: ReadContext, data: bytes):
    record = 0
    for ln_no, line in enumerate(decode_lines(ctx, data), start=1):
        if line is None:
            record += 1
            ctx.rejected += 1
            continue
        if not line.strip():
            continue  # blank separator lines carry nothing
        record += 1
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            ctx.err(ln_no, record, "invalid_json", f"{exc.msg} (column {exc.colno})")
            ctx.rejected += 1
            continue
        except RecursionError:
            ctx.err(ln_no, record, "invalid_json", "JSON nested too deeply to read")
            ctx.rejected += 1
            continue
        if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
            ctx.err(
                ln_no, record, "bad_record", f"expected an object with a string 'text', got {short_repr(obj)}"
            )
            ctx.rejected += 1
            continue
        if not obj["text"].strip():
            ctx.err(ln_no, record, "empty_text", "the text is empty")
            ctx.rejected += 1
            continue
        yield ln_no, record, obj


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _check_spans(
    ctx: ReadContext, text: str, spans: list[tuple[int, int, str, str | None]], line: int, record: int
) -> list[tuple[int, int, str]] | None:
    """Validate ``(start, end, label, mention|None)``; return clean spans or ``None`` to reject."""
    n = len(text)
    out: list[tuple[int, int, str]] = []
    ok = True
    ctx.pending_dropped = []
    seen: set[tuple[int, int, str]] = set()
    for s, e, lab, mention in spans:
        if s < 0 or e > n or e <= s:
            ctx.err(
                line,
                record,
                "span_out_of_range",
                f"entity [{s}, {e}) {lab}{'' if mention is None else ' ' + repr(mention)} lies outside the "
                f"text (length {n}) or is empty",
            )
            ok = False
            continue
        if mention is not None and text[s:e] != mention:
            if ctx.policy == "repair" and mention:
                found = _nearest(text, mention, s)
                if found is not None:
                    ctx.warn(
                        line,
                        record,
                        "mention_mismatch",
                        f"entity [{s}, {e}) {lab}: text there is {text[s:e]!r}, mention is {mention!r}; "
                        f"moved to [{found}, {found + len(mention)})",
                    )
                    s, e = found, found + len(mention)
                else:
                    ctx.err(
                        line,
                        record,
                        "mention_mismatch",
                        f"entity [{s}, {e}) {lab}: text there is {text[s:e]!r}, mention {mention!r} "
                        f"does not occur in the text",
                    )
                    ok = False
                    continue
            else:
                ctx.err(
                    line,
                    record,
                    "mention_mismatch",
                    f"entity [{s}, {e}) {lab}: text there is {text[s:e]!r}, mention is {mention!r}",
                )
                ok = False
                continue
        key = (s, e, lab)
        if key in seen:
            ctx.warn(line, record, "duplicate_entity", f"entity [{s}, {e}) {lab} listed twice (kept once)")
            continue
        seen.add(key)
        out.append(key)
    if ok and ctx.policy == "repair":
        return drop_overlaps(ctx, out, line, record)  # nested / crossing / two labels: drop, warn, keep
    out.sort()
    for a, b in pairwise(out):
        if b[0] < a[1]:
            ctx.err(
                line,
                record,
                "span_overlap",
                f"entities [{a[0]}, {a[1]}) {a[2]} and [{b[0]}, {b[1]}) {b[2]} overlap",
            )
            ok = False
    return out if ok else None


def _nearest(text: str, mention: str, near: int) -> int | None:
    best = None
    i = text.find(mention)
    while i != -1:
        if best is None or abs(i - near) < abs(best - near):
            best = i
        i = text.find(mention, i + 1)
    return best


def _add_span_record(
    ctx: ReadContext, text: str, raw: list, ln_no: int, record: int, bad_shape: str | None
) -> None:
    """Store one span-format record, or reject it: ``bad_shape`` is the message for a malformed record;
    span problems are checked (and recorded) by :func:`_check_spans`."""
    if bad_shape is not None:
        ctx.err(ln_no, record, "bad_record", bad_shape)
        ctx.rejected += 1
        return
    spans = _check_spans(ctx, text, raw, ln_no, record)
    if spans is None:
        ctx.rejected += 1
        return
    ctx.add(ln_no, text, spans, ln_no, record)


@register("cluener")
def read_cluener(ctx: ReadContext, data: bytes) -> bool:
    for ln_no, record, obj in _json_lines(ctx, data):
        text = obj["text"]
        label = obj.get("label", {}) or {}
        raw: list[tuple[int, int, str, str | None]] = []
        bad = not isinstance(label, dict)
        if not bad:
            for typ, mentions in label.items():
                if not isinstance(mentions, dict):
                    bad = True
                    break
                for mention, positions in mentions.items():
                    if not isinstance(positions, list):
                        bad = True
                        break
                    for pos in positions:
                        if not (
                            isinstance(pos, list) and len(pos) == 2 and _is_int(pos[0]) and _is_int(pos[1])
                        ):
                            bad = True
                            break
                        raw.append((pos[0], pos[1] + 1, str(typ), mention))  # inclusive end -> half-open
        _add_span_record(
            ctx,
            text,
            raw,
            ln_no,
            record,
            "expected 'label' as {type: {mention: [[start, end_inclusive], ...]}}" if bad else None,
        )
    return True


@register("jsonl")
def read_jsonl(ctx: ReadContext, data: bytes) -> bool:
    for ln_no, record, obj in _json_lines(ctx, data):
        text = obj["text"]
        ents = obj.get("entities", []) or []
        raw: list[tuple[int, int, str, str | None]] = []
        bad = not isinstance(ents, list)
        for ent in ents if not bad else []:
            if not (
                isinstance(ent, dict)
                and _is_int(ent.get("start"))
                and _is_int(ent.get("end"))
                and isinstance(ent.get("label"), str)
                and ent["label"]
            ):
                bad = True
                break
            mention = ent.get("text", ent.get("mention"))
            raw.append(
                (ent["start"], ent["end"], ent["label"], mention if isinstance(mention, str) else None)
            )
        _add_span_record(
            ctx,
            text,
            raw,
            ln_no,
            record,
            "expected 'entities' as a list of {start: int, end: int, label: str} (half-open)"
            if bad
            else None,
        )
    return True
