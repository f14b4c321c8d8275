"""doccano sequence labelling: JSON lines out (:func:`write_doccano`) and in (the ``doccano`` format).

One object per line: ``{"text": ..., "label": [[start, end, "LABEL"], ...]}`` (doccano's import format
and its export without relations), or the export of a project with relations,
``{"text": ..., "entities": [{"id": 1, "label": "LABEL", "start_offset": s, "end_offset": e}, ...],
"relations": [...]}``. Both are read (relations are ignored); half-open spans. A ``label`` triple may
carry the mention as a fourth element. Other keys (``id``, ``doc_id``, ``Comments``...) are ignored.

Offsets: doccano's annotator (``doccano/v-annotator``) takes them from the browser's selection and from
JavaScript ``String.length``, that is in UTF-16 code units, not in Python's code points (doccano#2290;
its "count grapheme clusters as one character" project option is not covered here). The reader converts
them to code points and refuses an offset that falls inside a character; the writer writes UTF-16 units
by default (``offsets="codepoint"`` for tools that count like Python). Texts without characters outside
the Basic Multilingual Plane (such as emoji) have the same offsets in both units.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ner_core.data.formats.context import ReadContext
from ner_core.data.formats.json_lines import _check_spans, _is_int, _json_lines
from ner_core.data.formats.label_studio import write_atomic
from ner_core.data.formats.offsets import from_utf16, span_to_unit
from ner_core.data.formats.registry import register

__all__ = ["doccano_lines", "read_doccano", "write_doccano"]


def doccano_lines(docs: Iterable[Mapping[str, Any]], *, offsets: str = "utf16") -> list[str]:
    """One doccano JSON line per document: ``{"text", "label": [[start, end, label], ...], "doc_id"}``.

    ``docs``: ``{"doc_id", "text", "entities": [{"start", "end", "label"}, ...]}`` with code-point
    offsets; ``offsets`` is the unit written (``utf16``, doccano's, or ``codepoint``).
    """
    out = []
    for doc in docs:
        text = doc["text"]
        label = [[*span_to_unit(text, e["start"], e["end"], offsets), e["label"]] for e in doc["entities"]]
        out.append(json.dumps({"text": text, "label": label, "doc_id": doc["doc_id"]}, ensure_ascii=False))
    return out


def write_doccano(path: str | Path, docs: Iterable[Mapping[str, Any]], *, offsets: str = "utf16") -> int:
    """Write ``docs`` as a doccano JSONL file (see :func:`doccano_lines`); returns the number of lines."""
    lines = doccano_lines(docs, offsets=offsets)
    write_atomic(path, "".join(line + "\n" for line in lines))
    return len(lines)


def _raw_spans(obj: dict) -> list[tuple[int, int, str, str | None]] | None:
    """The record's spans as given, ``(start, end, label, mention|None)``; ``None`` when malformed."""
    raw: list[tuple[int, int, str, str | None]] = []
    if "entities" in obj and "label" not in obj:
        ents = obj["entities"]
        if not isinstance(ents, list):
            return None
        for ent in ents:
            if not (
                isinstance(ent, dict)
                and _is_int(ent.get("start_offset"))
                and _is_int(ent.get("end_offset"))
                and isinstance(ent.get("label"), str)
                and ent["label"]
            ):
                return None
            raw.append((ent["start_offset"], ent["end_offset"], ent["label"], None))
        return raw
    label = obj.get("label", [])
    if label is None:
        return raw
    if not isinstance(label, list):
        return None
    for item in label:
        if not (
            isinstance(item, list)
            and len(item) in (3, 4)
            and _is_int(item[0])
            and _is_int(item[1])
            and isinstance(item[2], str)
            and item[2]
            and (len(item) == 3 or isinstance(item[3], str))
        ):
            return None
        raw.append((item[0], item[1], item[2], item[3] if len(item) == 4 else None))
    return raw


def _from_utf16_spans(
    ctx: ReadContext, text: str, raw: list, line: int, record: int
) -> list[tuple[int, int, str, str | None]] | None:
    """``raw`` with UTF-16 unit offsets converted to code points; ``None`` (problem recorded) when an
    offset lies past the text or inside a character."""
    out = []
    for s, e, lab, mention in raw:
        cs, ce = from_utf16(text, s), from_utf16(text, e)
        if cs is None or ce is None:
            ctx.err(
                line,
                record,
                "span_out_of_range",
                f"entity [{s}, {e}) {lab}: offsets in UTF-16 units (doccano's) lie outside the text "
                f"({len(text.encode('utf-16-le')) // 2} units) or inside a character",
            )
            return None
        out.append((cs, ce, lab, mention))
    return out


_SHAPE = (
    "expected 'label' as [[start, end, label], ...] or 'entities' as "
    "[{start_offset: int, end_offset: int, label: str}, ...]"
)


@register("doccano")
def read_doccano(ctx: ReadContext, data: bytes) -> bool:
    for ln_no, record, obj in _json_lines(ctx, data):
        text = obj["text"]
        raw = _raw_spans(obj)
        if raw is None:
            ctx.err(ln_no, record, "bad_record", _SHAPE)
            ctx.rejected += 1
            continue
        converted = _from_utf16_spans(ctx, text, raw, ln_no, record)
        spans = None if converted is None else _check_spans(ctx, text, converted, ln_no, record)
        if spans is None:
            ctx.rejected += 1
            continue
        ctx.add(ln_no, text, spans, ln_no, record)
    return True
