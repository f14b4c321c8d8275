"""Readers for every input format, with validation that records each problem it finds.

Formats (:data:`FORMATS`), detected from the content by :func:`detect_format` or named explicitly:

``seed_json``  one JSON array of ``[text, "B I O ..."]`` pairs (one space-separated tag per character;
               untyped ``B``/``I``/``O`` get ``untyped_label``), the seed project's training files.
``seed_texts`` one JSON array of plain strings (texts to predict, no entities).
``conll``      one character and its tag per line, TAB or SPACE separated, blank line between sentences,
               extra columns allowed (``tag_column``); BIO (default) or IOB1 (``scheme="IOB1"``).
``bmes``       the same layout with BMES tags (B-/M-/E-/S-/O, Resume NER) or BIOES; converted to spans.
``cluener``    JSON lines ``{"text": ..., "label": {type: {mention: [[start, end_inclusive], ...]}}}``.
``jsonl``      JSON lines ``{"text": ..., "entities": [{"start": s, "end": e, "label": l}, ...]}``,
               half-open.
``text``       plain text, one document per line.
``label_studio`` a Label Studio JSON export: an array of tasks ``{"data": {"text": ...}, "annotations":
               [{"result": [{"type": "labels", "value": {"start", "end", "labels"}}]}]}``; each task's
               latest completed annotation is the gold (offsets: see
               :mod:`~ner_core.data.formats.label_studio`).
``doccano``    doccano sequence-labelling JSON lines ``{"text": ..., "label": [[start, end, label], ...]}``
               or ``"entities": [{"start_offset", "end_offset", "label"}]``, offsets in UTF-16 units.

The span formats (``cluener``, ``jsonl``, ``label_studio``, ``doccano``) can carry nested and overlapping
entities; under ``repair`` a record keeps its outer spans as entities and the others go, with a reason, to
``ParseResult.dropped`` (the ingest stores them in ``dropped_spans``; a span decoder trains on the nested
ones): see :mod:`~ner_core.data.formats.overlaps`. Tag formats are flat by nature.

Each format is read by the module of its family (:mod:`~ner_core.data.formats.json_arrays`,
:mod:`~ner_core.data.formats.conll`, :mod:`~ner_core.data.formats.json_lines`,
:mod:`~ner_core.data.formats.plain`,
:mod:`~ner_core.data.formats.label_studio`, :mod:`~ner_core.data.formats.doccano`; the last two also write),
which registers it by name in :mod:`~ner_core.data.formats.registry`. Every problem found is a
:class:`Problem`; :mod:`ner_core.data.formats.problems` lists the codes and their severities.

Tags are only validated here; span extraction, validation messages and repairs come from
:mod:`ner_core.schemes` (valid sequences through :func:`ner_core.schemes.fast_spans`).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal

# the reader modules register their formats on import, in this order
from ner_core.data.formats import json_arrays, conll, json_lines, plain, label_studio, doccano  # noqa: F401  # isort: skip
from ner_core.data.formats.context import ParseResult, ReadContext, Record, no_gc
from ner_core.data.formats.detect import detect_format
from ner_core.data.formats.problems import Problem
from ner_core.data.formats.registry import FormatReader, format_names, get_reader, register
from ner_core.schemes import Scheme

__all__ = [
    "FORMATS",
    "POLICIES",
    "FormatReader",
    "ParseResult",
    "Problem",
    "Record",
    "detect_format",
    "format_names",
    "get_reader",
    "no_gc",
    "read_file",
    "register",
]

FORMATS = format_names()  # the built-in formats; format_names() also lists any registered later
POLICIES = ("strict", "repair")


def read_file(
    path: str | Path,
    format: str | None = None,
    *,
    split: str | None = None,
    policy: Literal["strict", "repair"] = "repair",
    untyped_label: str = "ENT",
    tag_column: int = -1,
    scheme: Scheme | str | None = None,
) -> ParseResult:
    """Parse and validate one file into :class:`Document` objects.

    ``doc_id`` is ``f"{file stem}:{n}"`` with ``n`` the record number for JSON arrays and the (first) line
    number for line formats. Records with error-severity problems are left out; warnings keep them.
    """
    p = Path(path)
    if format is not None and format not in format_names():
        raise ValueError(f"format must be one of {format_names()} or None (detect), got {format!r}")
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
    if not isinstance(untyped_label, str) or not untyped_label or any(c.isspace() for c in untyped_label):
        raise ValueError(f"untyped_label must be a non-empty label without spaces, got {untyped_label!r}")
    if not isinstance(tag_column, int) or tag_column == 0:
        raise ValueError(
            f"tag_column must be a non-zero column index (0 is the character), got {tag_column!r}"
        )
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such file")
    fmt = format or detect_format(p)
    reader = get_reader(fmt)
    sch = _normalise_scheme(scheme, reader.default_scheme)
    if sch not in reader.schemes:
        needs = " or ".join(s.value for s in reader.schemes)
        raise ValueError(f"{p}: format {fmt!r} needs scheme {needs}, got {sch}")
    data = p.read_bytes()
    if scheme is None and reader.scheme_from_data is not None:
        sch = reader.scheme_from_data(data) or sch
    ctx = ReadContext(p, split, policy, untyped_label, sch, tag_column)
    with no_gc():
        ok = reader.read(ctx, data)
    labels = sorted({sp[2] for r in ctx.records for sp in r[2]})
    return ParseResult(
        records=ctx.records if ok else [],
        split=split,
        problems=ctx.problems,
        format=fmt,
        labels=labels,
        source=str(p),
        sha256=hashlib.sha256(data).hexdigest(),
        scheme=sch if reader.tagged else None,
        fatal=not ok,
        rejected=ctx.rejected,
        dropped=ctx.dropped if ok else [],
    )


def _normalise_scheme(scheme: Scheme | str | None, default: Scheme) -> Scheme:
    """``scheme`` by its name in any case (``"bio"``; no other alias), or ``default`` for ``None``."""
    if scheme is None:
        return default
    name = str(getattr(scheme, "value", scheme)).upper()
    if name not in Scheme.__members__:
        raise ValueError(f"scheme must be one of {tuple(s.value for s in Scheme)}, got {scheme!r}")
    return Scheme[name]
