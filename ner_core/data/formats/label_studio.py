"""Label Studio: tasks with pre-annotations out (:func:`write_label_studio`), completed annotations in
(the ``label_studio`` format).

A Label Studio JSON export is one JSON array of tasks::

    [{"id": 7, "data": {"text": "..."},
      "annotations": [{"result": [{"from_name": "label", "to_name": "text", "type": "labels",
                                   "value": {"start": 0, "end": 3, "text": "...", "labels": ["ORG"]}}],
                       "was_cancelled": false, "updated_at": "2024-05-01T10:00:00Z"}],
      "predictions": [{"model_version": "...", "result": [...]}]}]

Reading: the annotations are the gold. Each task's latest annotation that was not cancelled is taken
(by ``updated_at``, then ``created_at``, then position); a task without one (only predictions, or
only cancelled annotations) is skipped with an ``unannotated`` warning. Results of another type than
``labels`` (relations, choices, ...) are ignored; a result with several labels gives one entity each
(one span with two labels: under ``repair`` the first is kept and the others go to ``dropped_spans`` as
``same_span``, like every overlap, see :mod:`~ner_core.data.formats.overlaps`; ``strict`` refuses the
record). Records are numbered from 1 in array order.

Offsets: Label Studio's ``Text`` tag counts code points, like Python (its own end-to-end test
``web/libs/editor/tests/integration/e2e/ner/emoji.cy.ts``, "Should calculate offsets by code points
in text"); versions before the 2022 fix (label-studio#1559, label-studio-frontend#308) counted UTF-16
units. The writer writes code points by default (``offsets="utf16"`` for those old versions). The
reader decides the unit once per task, never per span (a span read in the wrong unit can land on
another occurrence of its mention, or two adjacent spans on one): a span *decides* when its
``value.text`` is found at its offsets in one unit only, never by slicing past the end of the text.
A task is read in the unit its deciding spans agree on; a task without one (no character outside the
BMP, no ``value.text``, or only spans that fit both) in the unit the whole file's deciding spans agree
on, else in code points. A task whose spans decide for both units is refused (``mention_mismatch``):
one export counts one way.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

from ner_core.data.formats.context import ReadContext, short_repr
from ner_core.data.formats.json_arrays import _read_json_array
from ner_core.data.formats.json_lines import _check_spans, _is_int
from ner_core.data.formats.offsets import has_astral, span_to_unit, utf16_table
from ner_core.data.formats.registry import register

__all__ = ["label_config", "read_label_studio", "write_atomic", "write_label_studio"]

FROM_NAME = "label"  # the <Labels name=...> of label_config()
TO_NAME = "text"  # the <Text name=...> of label_config(), and the task's data key


# ------------------------------------------------------------------------------------------- writing
def write_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder, renamed over ``path``
    once complete: a failed write leaves no half-written file."""
    p = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, p)
    finally:
        Path(tmp).unlink(missing_ok=True)  # gone after the rename; a failed write leaves nothing


def label_studio_tasks(
    docs: Iterable[Mapping[str, Any]], *, model_version: str, offsets: str = "codepoint"
) -> list[dict]:
    """Label Studio tasks with ``docs``' entities as predictions.

    ``docs``: ``{"doc_id", "text", "entities": [{"start", "end", "label", "confidence"?}, ...]}`` with
    code-point offsets; ``offsets`` is the unit written (``codepoint`` or ``utf16``).
    """
    tasks = []
    for doc in docs:
        text = doc["text"]
        result = []
        scores = []
        for i, ent in enumerate(doc["entities"]):
            s, e = span_to_unit(text, ent["start"], ent["end"], offsets)
            item: dict[str, Any] = {
                "id": f"p{i}",
                "from_name": FROM_NAME,
                "to_name": TO_NAME,
                "type": "labels",
                "value": {
                    "start": s,
                    "end": e,
                    "text": text[ent["start"] : ent["end"]],
                    "labels": [ent["label"]],
                },
            }
            conf = ent.get("confidence")
            if conf is not None:
                item["score"] = float(conf)
                scores.append(float(conf))
            result.append(item)
        prediction: dict[str, Any] = {"model_version": model_version, "result": result}
        if scores:
            prediction["score"] = min(scores)  # Label Studio sorts tasks by it: least sure first
        tasks.append({"data": {TO_NAME: text, "doc_id": doc["doc_id"]}, "predictions": [prediction]})
    return tasks


def write_label_studio(
    path: str | Path, docs: Iterable[Mapping[str, Any]], *, model_version: str, offsets: str = "codepoint"
) -> int:
    """Write ``docs`` as a Label Studio JSON task file (see :func:`label_studio_tasks`); returns the
    number of tasks. Import it into a project whose labelling config is :func:`label_config`."""
    tasks = label_studio_tasks(docs, model_version=model_version, offsets=offsets)
    write_atomic(path, json.dumps(tasks, ensure_ascii=False, indent=1) + "\n")
    return len(tasks)


def label_config(labels: Iterable[str]) -> str:
    """The Label Studio labelling config (XML) matching the written tasks: one ``Labels`` control named
    ``label`` over a ``Text`` object named ``text`` reading ``$text``."""
    items = "\n".join(f"    <Label value={quoteattr(lab)}/>" for lab in labels)
    return (
        "<View>\n"
        f'  <Labels name="{FROM_NAME}" toName="{TO_NAME}">\n{items}\n  </Labels>\n'
        f'  <Text name="{TO_NAME}" value="${TO_NAME}"/>\n'
        "</View>\n"
    )


# ------------------------------------------------------------------------------------------- reading
def _task_text(task: Any) -> str | None:
    """The task's text: ``data.text``, or the one string value of ``data``."""
    if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
        return None
    data = task["data"]
    if isinstance(data.get(TO_NAME), str):
        return data[TO_NAME]
    strings = [v for v in data.values() if isinstance(v, str)]
    return strings[0] if len(strings) == 1 else None


def _latest_annotation(annotations: list) -> dict | None:
    """The latest annotation that was not cancelled (``None`` if there is none)."""
    done = [
        (str(a.get("updated_at") or a.get("created_at") or ""), i, a)
        for i, a in enumerate(annotations)
        if isinstance(a, dict) and not a.get("was_cancelled")
    ]
    return max(done, key=lambda t: (t[0], t[1]))[2] if done else None


RawSpan = tuple[int, int, str, "str | None"]  # (start, end, label, mention|None) in the file's unit


def _cp(table: list[int | None], unit: int) -> int | None:
    """Code-point offset of UTF-16 offset ``unit`` by :func:`utf16_table`; ``None`` outside or inside."""
    return table[unit] if 0 <= unit < len(table) else None


def _fits(text: str, table: list[int | None], s: int, e: int, mention: str, unit: str) -> bool:
    """Whether ``mention`` is at ``[s, e)`` of ``text`` counted in ``unit``; never slices past the end."""
    if unit == "utf16":
        cs, ce = _cp(table, s), _cp(table, e)
        return cs is not None and ce is not None and cs < ce and text[cs:ce] == mention
    return 0 <= s < e <= len(text) and text[s:e] == mention


def _deciding(text: str, raw: list[RawSpan]) -> dict[str, RawSpan]:
    """The units that some span of ``raw`` fits in alone, each with its first such span."""
    out: dict[str, RawSpan] = {}
    if not has_astral(text):  # both units count the same: nothing to decide
        return out
    table = utf16_table(text)
    for span in raw:
        s, e, _, mention = span
        if mention is None:
            continue
        cp, u16 = _fits(text, table, s, e, mention, "codepoint"), _fits(text, table, s, e, mention, "utf16")
        if cp != u16:
            out.setdefault("codepoint" if cp else "utf16", span)
    return out


def _in_code_points(text: str, raw: list[RawSpan], unit: str) -> list[RawSpan]:
    """``raw`` in code points; a UTF-16 offset that splits a character is kept as given (the span checks
    then report it, or the mention check does)."""
    if unit != "utf16" or not has_astral(text):
        return raw
    table = utf16_table(text)
    out = []
    for s, e, lab, mention in raw:
        cs, ce = _cp(table, s), _cp(table, e)
        out.append((s, e, lab, mention) if cs is None or ce is None else (cs, ce, lab, mention))
    return out


def _result_spans(result: Any) -> list[RawSpan] | None:
    """The ``labels`` results as ``(start, end, label, mention|None)`` in the file's unit; ``None`` for a
    malformed one."""
    if not isinstance(result, list):
        return None
    raw: list[RawSpan] = []
    for item in result:
        if not isinstance(item, dict):
            return None
        value = item.get("value")
        if item.get("type", "labels") != "labels" and not (isinstance(value, dict) and "labels" in value):
            continue  # a relation, choice, text area...: not an entity
        if not isinstance(value, dict):
            return None
        labels = value.get("labels")
        if not (
            _is_int(value.get("start"))
            and _is_int(value.get("end"))
            and isinstance(labels, list)
            and labels
            and all(isinstance(lab, str) and lab for lab in labels)
        ):
            return None
        mention = value.get("text") if isinstance(value.get("text"), str) else None
        raw.extend((value["start"], value["end"], lab, mention) for lab in labels)
    return raw


_SHAPE = (
    "expected a task {data: {text: str}, annotations: [{result: [{type: 'labels', value: "
    "{start: int, end: int, labels: [str, ...]}}, ...]}, ...]}"
)


def _task_unit(
    ctx: ReadContext, line: int, record: int, decided: dict[str, RawSpan], default: str
) -> str | None:
    """The unit a task is read in (see the module doc); ``None`` after reporting a task that mixes both."""
    if len(decided) < 2:
        return next(iter(decided), default)
    (cs, ce, clab, cm), (us, ue, ulab, um) = decided["codepoint"], decided["utf16"]
    ctx.err(
        line,
        record,
        "mention_mismatch",
        f"entity [{cs}, {ce}) {clab} {cm!r} fits only in code points, entity [{us}, {ue}) {ulab} {um!r} "
        "only in UTF-16 units: one task cannot mix the two (a Label Studio export counts one way)",
    )
    return None


@register("label_studio")
def read_label_studio(ctx: ReadContext, data: bytes) -> bool:
    items = _read_json_array(ctx, data)
    if items is None:
        return False
    tasks = []  # (record, line, task, text, annotations, annotation, raw spans, deciding spans)
    file_units: set[str] = set()
    for record, line, task in items:
        text = _task_text(task)
        annotations = task.get("annotations", []) if isinstance(task, dict) else None
        ann = _latest_annotation(annotations) if isinstance(annotations, list) else None
        raw = _result_spans(ann.get("result")) if ann is not None else None
        decided = _deciding(text, raw) if text is not None and raw is not None else {}
        file_units.update(decided)
        tasks.append((record, line, task, text, annotations, ann, raw, decided))
    file_unit = next(iter(file_units)) if len(file_units) == 1 else "codepoint"
    for record, line, task, text, annotations, ann, raw, decided in tasks:
        if text is None or not isinstance(annotations, list):
            ctx.err(line, record, "bad_record", f"{_SHAPE}, got {short_repr(task)}")
            ctx.rejected += 1
            continue
        if not text.strip():
            ctx.err(line, record, "empty_text", "the text is empty")
            ctx.rejected += 1
            continue
        if ann is None:
            ctx.warn(
                line, record, "unannotated", "no completed annotation (predictions are not gold): skipped"
            )
            continue
        if raw is None:
            ctx.err(
                line, record, "bad_record", f"{_SHAPE}; annotation result is {short_repr(ann.get('result'))}"
            )
            ctx.rejected += 1
            continue
        unit = _task_unit(ctx, line, record, decided, file_unit)
        spans = None
        if unit is not None:
            spans = _check_spans(ctx, text, _in_code_points(text, raw, unit), line, record)
        if spans is None:
            ctx.rejected += 1
            continue
        ctx.add(record, text, spans, line, record)
    return True
