"""The Review page's logic without Streamlit: review events, replaying them over predicted entities, the
label set, undo targets. Storage stays the source of truth (``v_review_current``); :func:`replay` is the same
rule applied in Python so the page can show decisions still waiting in the spool (the database busy) and
the entities a reviewer rejected (struck through), which the view leaves out.

The rule (``storage/schema.py``, migration 4): an entity is named by its key, the span and label it had
when predicted (or when added); an ``undo`` cancels the event it names; per key the latest decision wins
(by ``created_at``, then ``event_id``) whoever made it; accept/add -> accepted (added for an added key),
relabel/adjust -> corrected, reject -> rejected (not in the current entities).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path

DECISIONS = ("accept", "reject", "relabel", "adjust", "add")  # storage.reviews.ENTITY_ACTIONS
STATES = ("predicted", "accepted", "corrected", "added", "rejected")

__all__ = [
    "DECISIONS",
    "STATES",
    "effective",
    "model_labels",
    "overlapping",
    "replay",
    "spool_path",
    "undo_target",
]


def spool_path(db_path: str) -> str:
    """Where the page spools decisions while the database is busy: beside the database file."""
    return f"{db_path}.review-spool.jsonl"


def _when(e: dict) -> tuple:
    """Sort key: ``created_at`` (a datetime from DuckDB, ISO text from the spool), then ``event_id``."""
    at = e.get("created_at")
    if isinstance(at, str):
        try:
            at = datetime.fromisoformat(at)
        except ValueError:
            at = None
    if isinstance(at, datetime) and at.tzinfo is not None:
        at = at.astimezone(UTC).replace(tzinfo=None)
    return (at or datetime.min, str(e.get("event_id") or ""))


def effective(events: Iterable[dict]) -> list[dict]:
    """The events still in force, oldest first: undo events and the events they cancel are left out."""
    events = list(events)
    undone = {e.get("ref_event_id") for e in events if e.get("action") == "undo"}
    return sorted((e for e in events if e.get("action") != "undo" and e["event_id"] not in undone), key=_when)


def replay(predicted: Sequence[dict], events: Iterable[dict]) -> list[dict]:
    """The entities of one document after ``events``: predicted ones (dicts with ``start``, ``end``,
    ``label`` and optionally ``confidence``) plus added ones, each with ``key`` (start, end, label),
    ``state`` (predicted | accepted | corrected | added | rejected), ``reviewer`` and ``event_id`` of the
    deciding event. Rejected ones stay in the list (state ``rejected``). Ordered by start, end."""
    by_key: dict[tuple, dict] = {}
    for p in predicted:
        key = (int(p["start"]), int(p["end"]), str(p["label"]))
        by_key[key] = {
            "key": key,
            "start": key[0],
            "end": key[1],
            "label": key[2],
            "state": "predicted",
            "confidence": p.get("confidence"),
            "added": False,
            "reviewer": None,
            "event_id": None,
        }
    for e in effective(events):
        if e["action"] not in DECISIONS:
            continue
        key = (int(e["start"]), int(e["end"]), str(e["label"]))
        ent = by_key.get(key)
        if ent is None:  # a decision on a key nobody predicted: an added entity (later decisions refine it)
            ent = by_key[key] = {"key": key, "confidence": None, "added": True}
        ent.update(start=key[0], end=key[1], label=key[2], reviewer=e.get("reviewer"), event_id=e["event_id"])
        act = e["action"]
        if act == "reject":
            ent["state"] = "rejected"
        elif act in ("accept", "add"):
            ent["state"] = "added" if ent["added"] else "accepted"
        else:  # relabel | adjust
            ent["label"] = e.get("new_label") or key[2]
            if act == "adjust":
                ent["start"], ent["end"] = int(e["new_start"]), int(e["new_end"])
            ent["state"] = "added" if ent["added"] else "corrected"
    return sorted(by_key.values(), key=lambda x: (x["start"], x["end"], x["label"]))


def overlapping(entities: Iterable[dict], start: int, end: int, *, skip: tuple | None = None) -> dict | None:
    """The first entity that is not rejected and overlaps ``[start, end)`` (``skip``: a key to ignore)."""
    for ent in entities:
        if ent["state"] == "rejected" or ent["key"] == skip:
            continue
        if ent["start"] < end and start < ent["end"]:
            return ent
    return None


def undo_target(events: Iterable[dict], reviewer: str) -> dict | None:
    """The latest event still in force that ``reviewer`` made (the one an undo cancels), or ``None``."""
    mine = [e for e in effective(events) if e.get("reviewer") == reviewer]
    return mine[-1] if mine else None


def model_labels(model_dir: str | None) -> list[str]:
    """The label set a model directory saved (``labels.json``'s ``labels``); [] when it cannot be read."""
    if not model_dir:
        return []
    try:
        data = json.loads((Path(model_dir) / "labels.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    labels = data.get("labels") if isinstance(data, dict) else None
    return sorted({str(x) for x in labels if isinstance(x, str) and x}) if isinstance(labels, list) else []
