"""JSON array formats: ``seed_json`` (``[text, "B I O ..."]`` pairs) and ``seed_texts`` (strings).

The whole file is one JSON array; a file that is not one (invalid JSON or UTF-8) is not read at all.
Records are numbered from 1 in array order, with the line their element starts on.
"""

from __future__ import annotations

import json
from typing import Any

from ner_core.data.formats.context import ReadContext, short_repr, type_untyped
from ner_core.data.formats.registry import register


def _read_json_array(ctx: ReadContext, data: bytes) -> list[tuple[int, int, Any]] | None:
    """Elements of a top-level JSON array with their (record, line); ``None`` (a fatal problem) if
    unreadable."""
    try:
        text = data.decode("utf-8").lstrip("\ufeff")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        ctx.err(
            line,
            None,
            "invalid_utf8",
            f"byte {data[exc.start : exc.start + 1]!r} is not UTF-8; file not read",
        )
        return None
    dec = json.JSONDecoder()
    n = len(text)
    ws = " \t\r\n"
    i = 0
    while i < n and text[i] in ws:
        i += 1
    if i >= n or text[i] != "[":
        ctx.err(text.count("\n", 0, i) + 1, None, "invalid_json", "expected a JSON array starting with '['")
        return None
    i += 1
    line, pos = 1, 0
    out: list[tuple[int, int, Any]] = []
    record = 0
    while True:
        while i < n and text[i] in ws:
            i += 1
        if i < n and text[i] == "]" and record == 0:
            i += 1
            break
        try:
            obj, end = dec.raw_decode(text, i)
        except json.JSONDecodeError as exc:
            ctx.err(exc.lineno, record + 1, "invalid_json", f"{exc.msg} (column {exc.colno}); file not read")
            return None
        except RecursionError:
            at = line + text.count("\n", pos, i)
            ctx.err(at, record + 1, "invalid_json", "element nested too deeply to read; file not read")
            return None
        record += 1
        line += text.count("\n", pos, i)
        pos = i
        out.append((record, line, obj))
        i = end
        while i < n and text[i] in ws:
            i += 1
        if i < n and text[i] == ",":
            i += 1
            continue
        if i < n and text[i] == "]":
            i += 1
            break
        ctx.err(
            text.count("\n", 0, i) + 1,
            record,
            "invalid_json",
            "expected ',' or ']' after an element; file not read",
        )
        return None
    while i < n and text[i] in ws:
        i += 1
    if i < n:
        ctx.err(
            text.count("\n", 0, i) + 1,
            None,
            "invalid_json",
            "extra content after the JSON array; file not read",
        )
        return None
    return out


@register("seed_json", tagged=True)
def read_seed_json(ctx: ReadContext, data: bytes) -> bool:
    items = _read_json_array(ctx, data)
    if items is None:
        return False
    for record, line, obj in items:
        if not (
            isinstance(obj, list) and len(obj) == 2 and isinstance(obj[0], str) and isinstance(obj[1], str)
        ):
            ctx.err(
                line, record, "bad_record", f"expected a [text, tags] pair of strings, got {short_repr(obj)}"
            )
            ctx.rejected += 1
            continue
        text, tag_str = obj
        if not text.strip():
            ctx.err(line, record, "empty_text", "the text is empty")
            ctx.rejected += 1
            continue
        tags = tag_str.split()
        if len(tags) != len(text):
            ctx.err(line, record, "length_mismatch", f"{len(text)} characters but {len(tags)} tags")
            ctx.rejected += 1
            continue
        tags = type_untyped(tags, ctx.untyped_label)
        spans = ctx.tag_spans(tags, record, lambda _p, _l=line: _l)
        if spans is None:
            ctx.rejected += 1
            continue
        ctx.add(record, text, spans, line, record)
    return True


@register("seed_texts")
def read_seed_texts(ctx: ReadContext, data: bytes) -> bool:
    items = _read_json_array(ctx, data)
    if items is None:
        return False
    for record, line, obj in items:
        if not isinstance(obj, str):
            ctx.err(line, record, "bad_record", f"expected a string, got {short_repr(obj)}")
            ctx.rejected += 1
        elif not obj.strip():
            ctx.err(line, record, "empty_text", "the text is empty")
            ctx.rejected += 1
        else:
            ctx.add(record, obj, [], line, record)
    return True
