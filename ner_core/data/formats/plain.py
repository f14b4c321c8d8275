"""The ``text`` format: plain text, one document per line (no entities)."""

from __future__ import annotations

from ner_core.data.formats.context import ReadContext, decode_lines
from ner_core.data.formats.registry import register


@register("text")
def read_text(ctx: ReadContext, data: bytes) -> bool:
    for ln_no, line in enumerate(decode_lines(ctx, data), start=1):
        if line is None:
            ctx.rejected += 1
            continue
        if line.endswith("\r"):
            line = line[:-1]
        if not line.strip():
            ctx.err(ln_no, ln_no, "empty_text", "blank line: no document")
            ctx.rejected += 1
            continue
        ctx.add(ln_no, line, [], ln_no, ln_no)
    return True
