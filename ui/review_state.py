"""The Review page's logic without Streamlit: the spool's place, replaying events over predicted entities
in the page's shape, overlap and undo targets.

Storage stays the source of truth (``v_review_current``). The rule itself (keys, undo, the latest decision
wins, the one order of events) is :mod:`ner_core.review`'s; :func:`replay` applies it to the stored events
plus those still waiting in the spool (the database busy), so the page shows a decision as soon as it is
made, with the same winner the database gives it once written, and the rejected entities (struck through),
which the view leaves out.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import asdict

from ner_core import review as rule

DECISIONS = rule.DECISIONS
STATES = rule.STATES
effective = rule.in_force
undo_target = rule.undo_target

__all__ = [
    "DECISIONS",
    "STATES",
    "effective",
    "entity_digest",
    "entity_ref",
    "nesting_levels",
    "never_seen",
    "overlapping",
    "replay",
    "spool_path",
    "state_digest",
    "undo_target",
]


def spool_path(db_path: str) -> str:
    """Where the page spools decisions while the database is busy: beside the database file."""
    return f"{db_path}.review-spool.jsonl"


def replay(predicted: Sequence[dict], events: Iterable[dict]) -> list[dict]:
    """:func:`ner_core.review.replay` as the page's dicts: ``key`` (start, end, label), ``start``, ``end``,
    ``label``, ``state`` (predicted | accepted | corrected | added | rejected), ``confidence``, ``added``,
    ``action``, ``reviewer``, ``event_id`` and ``decided_at`` of the deciding event. Rejected ones stay in
    the list. Ordered by start, end, label. ``events``: the stored ones, then the spool's."""
    return [asdict(e) for e in rule.replay(predicted, events)]


def overlapping(entities: Iterable[dict], start: int, end: int, *, skip: tuple | None = None) -> dict | None:
    """The first entity that is not rejected and overlaps ``[start, end)`` (``skip``: a key to ignore)."""
    for ent in entities:
        if ent["state"] == "rejected" or ent["key"] == skip:
            continue
        if ent["start"] < end and start < ent["end"]:
            return ent
    return None


def entity_ref(ent: dict) -> str:
    """``"start:end:label"`` of the entity's key: how the page names an entity across decisions (a decision
    changes its span, label and state, never its key)."""
    return "{}:{}:{}".format(*ent["key"])


def _digest(parts: Iterable) -> str:
    return hashlib.sha1(repr(list(parts)).encode("utf-8")).hexdigest()[:12]


def _facts(ent: dict) -> tuple:
    return (entity_ref(ent), ent["start"], ent["end"], ent["label"], ent["state"], ent.get("event_id"))


def entity_digest(ent: dict) -> str:
    """A short digest of what the entity is now (span, label, state and the deciding event): it changes
    with every decision on the entity, the same before and after the spool is written. The page keys the
    entity's widgets by it, so a decision gives fresh widgets showing the new state, and refuses an action
    whose button was drawn for another digest (built from a stale state)."""
    return _digest(_facts(ent))


def state_digest(entities: Iterable[dict]) -> str:
    """:func:`entity_digest` over a whole document: changes with any decision on any of its entities."""
    return _digest(_facts(e) for e in entities)


def never_seen(entities: Iterable[dict], seen: Iterable[str]) -> list[dict]:
    """The entities still only predicted whose :func:`entity_ref` is not in ``seen`` (what the browser
    reported as having been on screen): "accept the rest" would accept them unseen."""
    shown = set(seen)
    return [e for e in entities if e["state"] == "predicted" and entity_ref(e) not in shown]


def nesting_levels(entities: Sequence[dict]) -> dict[str, int]:
    """:func:`entity_ref` -> nesting level: 1 for an entity inside no other, else 1 + how many spans of
    other entities enclose it (they hold its span and are longer; rejected ones enclose nothing). Entities
    on the same span (two labels) share a level. A flat document's entities are all on level 1."""
    live = {(e["start"], e["end"]) for e in entities if e["state"] != "rejected"}
    return {
        entity_ref(e): 1
        + sum(s <= e["start"] and e["end"] <= t and (s, t) != (e["start"], e["end"]) for s, t in live)
        for e in entities
    }
