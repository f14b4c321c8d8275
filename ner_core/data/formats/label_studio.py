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
(they overlap, so the record is refused). Records are numbered from 1 in array order.

Offsets: Label Studio's ``Text`` tag counts code points, like Python (its own end-to-end test
``web/libs/editor/tests/integration/e2e/ner/emoji.cy.ts``, "Should calculate offsets by code points
in text"); versions before the 2022 fix (label-studio#1559, label-studio-frontend#308) counted UTF-16
units. The writer writes code points by default (``offsets="utf16"`` for those old versions). The
reader takes each span in code points when ``value.text`` is found there, and converts it from UTF-16
units when it is found there instead; a span without ``value.text`` is taken in code points.
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
from ner_core.data.formats.offsets import from_utf16, span_to_unit
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


def _code_points(text: str, s: int, e: int, mention: str | None) -> tuple[int, int]:
    """``[s, e)`` in code points: as given when ``mention`` is there (or absent), else converted from
    UTF-16 units when that finds ``mention``; unchanged otherwise (the mention check reports it)."""
    if mention is None or text[s:e] == mention:
        return s, e
    cs, ce = from_utf16(text, s), from_utf16(text, e)
    if cs is not None and ce is not None and text[cs:ce] == mention:
        return cs, ce
    return s, e


def _result_spans(text: str, result: Any) -> list[tuple[int, int, str, str | None]] | None:
    """The ``labels`` results as ``(start, end, label, mention|None)``; ``None`` for a malformed one."""
    if not isinstance(result, list):
        return None
    raw: list[tuple[int, int, str, str | None]] = []
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
        s, e = _code_points(text, value["start"], value["end"], mention)
        raw.extend((s, e, lab, mention) for lab in labels)
    return raw


_SHAPE = (
    "expected a task {data: {text: str}, annotations: [{result: [{type: 'labels', value: "
    "{start: int, end: int, labels: [str, ...]}}, ...]}, ...]}"
)


@register("label_studio")
def read_label_studio(ctx: ReadContext, data: bytes) -> bool:
    items = _read_json_array(ctx, data)
    if items is None:
        return False
    for record, line, task in items:
        text = _task_text(task)
        annotations = task.get("annotations", []) if isinstance(task, dict) else None
        if text is None or not isinstance(annotations, list):
            ctx.err(line, record, "bad_record", f"{_SHAPE}, got {short_repr(task)}")
            ctx.rejected += 1
            continue
        if not text.strip():
            ctx.err(line, record, "empty_text", "the text is empty")
            ctx.rejected += 1
            continue
        ann = _latest_annotation(annotations)
        if ann is None:
            ctx.warn(
                line, record, "unannotated", "no completed annotation (predictions are not gold): skipped"
            )
            continue
        raw = _result_spans(text, ann.get("result"))
        if raw is None:
            ctx.err(
                line, record, "bad_record", f"{_SHAPE}; annotation result is {short_repr(ann.get('result'))}"
            )
            ctx.rejected += 1
            continue
        spans = _check_spans(ctx, text, raw, line, record)
        if spans is None:
            ctx.rejected += 1
            continue
        ctx.add(record, text, spans, line, record)
    return True
