"""CoNLL-style formats: ``conll`` (BIO or IOB1 tags) and ``bmes`` (BMES or BIOES tags).

One character and its tag per line, TAB or SPACE separated, a blank line between sentences; extra
columns are allowed (``tag_column`` picks the tag). A sentence is one record, numbered from 1; its
document's line is the sentence's first line.
"""

from __future__ import annotations

import re

from ner_core import schemes
from ner_core.data.formats.context import ReadContext, decode_lines, type_untyped
from ner_core.data.formats.registry import register
from ner_core.schemes import Scheme


def _bioes_without_m(data: bytes) -> Scheme | None:
    """BIOES for a ``bmes`` file with ``I-`` tags and no ``M-`` tag."""
    return Scheme.BIOES if re.search(rb"[ \t]I-", data) and not re.search(rb"[ \t]M-", data) else None


@register(
    "bmes",
    tagged=True,
    default_scheme=Scheme.BMES,
    schemes=(Scheme.BMES, Scheme.BIOES),
    scheme_from_data=_bioes_without_m,
)
@register("conll", tagged=True)
def read_conll(ctx: ReadContext, data: bytes) -> bool:
    """Sentences split at blank lines. Clean blocks (``c<sep>tag`` lines) take a C-speed path: the block
    is flattened with one ``split`` and sliced into characters and tags; anything else goes line by line."""
    tag_column = ctx.tag_column
    try:
        text = data.decode("utf-8").lstrip("\ufeff")
    except UnicodeDecodeError:
        _lines(ctx, decode_lines(ctx, data), 1, tag_column, [0])
        return True
    if "\r" in text:
        text = text.replace("\r\n", "\n")
    if _WS_LINE_RE.search(text):  # whitespace-only lines are sentence breaks too
        text = _WS_LINE_RE.sub("", text)
    fast = tag_column in (-1, 1)
    counter = [0]
    start = 1
    for piece in text.split("\n\n"):
        n_lines = piece.count("\n") + 1
        block = piece.strip("\n")
        if block:
            first = start + len(piece) - len(piece.lstrip("\n"))
            if not (fast and _block_fast(ctx, block, first, counter)):
                _lines(ctx, block.split("\n"), first, tag_column, counter)
        start += n_lines + 1
    return True


_WS_LINE_RE = re.compile(r"(?m)^[ \t]+$")


def _block_fast(ctx: ReadContext, block: str, first_line: int, counter: list[int]) -> bool:
    """Handle a block of exactly two-column, one-character lines; ``False`` when it is not one."""
    n = block.count("\n") + 1
    sep = "\t" if "\t" in block else " "
    flat = block.replace("\n", sep).split(sep)
    if len(flat) != 2 * n:
        return False
    chars = flat[0::2]
    tags = flat[1::2]
    text = "".join(chars)
    if len(text) != n or "" in tags:
        return False
    counter[0] += 1
    record = counter[0]
    odd = [t for t in set(tags) if len(t) == 1 and t != "O"]
    if odd:
        tags = type_untyped(tags, ctx.untyped_label)
    spans = ctx.tag_spans(tags, record, lambda p: first_line + p)
    if spans is None:
        ctx.rejected += 1
        return True
    if not text.strip():
        ctx.err(first_line, record, "empty_text", "the sentence has only whitespace characters")
        ctx.rejected += 1
        return True
    ctx.add(first_line, text, spans, first_line, record)
    return True


def _lines(
    ctx: ReadContext, lines: list[str | None], first_no: int, tag_column: int, counter: list[int]
) -> None:
    """Line-by-line reading (blank lines separate sentences); ``counter[0]`` numbers the sentences."""
    chars: list[str] = []
    tags: list[str] = []
    first_line = 0
    broken = False  # the current sentence has an error line
    multi = False

    def flush() -> None:
        nonlocal chars, tags, broken, multi
        if not chars and not broken:
            return
        if broken:
            ctx.rejected += 1
        else:
            _finish(ctx, counter[0], first_line, chars, tags, multi)
        chars, tags, broken, multi = [], [], False, False

    for ln_no, line in enumerate(lines, start=first_no):
        if line is None:  # invalid UTF-8 (already recorded)
            if not chars and not broken:
                counter[0] += 1
                first_line = ln_no
            broken = True
            continue
        if line.endswith("\r"):
            line = line[:-1]
        if not line.strip(" \t"):
            flush()
            continue
        if not chars and not broken:
            counter[0] += 1
            first_line = ln_no
        record = counter[0]
        if "\t" in line:
            parts = line.split("\t")
        elif line.startswith("  "):  # the character is a space
            parts = [" "] + [x for x in line[2:].split(" ") if x]
        else:
            parts = [x for x in line.split(" ") if x]
        ch = parts[0]
        try:
            tag = parts[tag_column] if len(parts) >= 2 else ""
        except IndexError:
            tag = ""
        if len(parts) >= 2 and tag_column == -len(parts):
            tag = ""
        if not tag:
            if ch in ("0", "O") and len(parts) <= 2:
                ctx.warn(
                    ln_no,
                    record,
                    "missing_char",
                    f"line {line!r} has no character: read as a space tagged O (a whitespace lost upstream)",
                )
                chars.append(" ")
                tags.append("O")
                continue
            ctx.err(
                ln_no,
                record,
                "missing_tag",
                f"expected 'char<sep>tag' with the tag in column {tag_column}, got {line!r}; "
                "sentence rejected",
            )
            broken = True
            continue
        if not ch:
            ctx.warn(ln_no, record, "missing_char", f"line {line!r} has no character: read as a space")
            ch = " "
        if len(ch) != 1:
            multi = True
        chars.append(ch)
        tags.append(tag)
    flush()


def _finish(
    ctx: ReadContext, record: int, first_line: int, chars: list[str], tags: list[str], multi: bool
) -> None:
    if multi:
        ctx.warn(
            first_line,
            record,
            "multi_char_token",
            "tokens longer than one character: their tag is spread over the characters",
        )
        new_tags: list[str] = []
        for ch, t in zip(chars, tags, strict=True):
            new_tags.extend(schemes.spread_tag(t, len(ch), ctx.scheme))
        tags = new_tags
        line_of = lambda _p: first_line  # noqa: E731 - token lines no longer map 1:1 to positions
    else:
        line_of = lambda p: first_line + p  # noqa: E731
    text = "".join(chars)
    tags = type_untyped(tags, ctx.untyped_label)
    spans = ctx.tag_spans(tags, record, line_of)
    if spans is None:
        ctx.rejected += 1
        return
    if not text.strip():
        ctx.err(first_line, record, "empty_text", "the sentence has only whitespace characters")
        ctx.rejected += 1
        return
    ctx.add(first_line, text, spans, first_line, record)
